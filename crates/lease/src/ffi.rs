//! The few items of sanlock's client library imgtx uses, declared by hand from sanlock 3.8's
//! `sanlock.h`, `sanlock_resource.h`, `sanlock_admin.h` and `sanlock_rv.h` (LGPL-2.1+).
//!
//! Layouts are `#[repr(C)]` copies of the C structs; the tests at the bottom pin their sizes
//! and offsets to what the headers give on a 64-bit Linux.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

/// `SANLK_NAME_LEN`: lockspace and resource names, no terminating NUL required.
pub(crate) const NAME_LEN: usize = 48;
/// `SANLK_PATH_LEN`: disk paths, terminating NUL included.
pub(crate) const PATH_LEN: usize = 1024;

/// `SANLK_RES_LVER`: the resource's `lver` field is set (acquire fails if it moved on).
pub(crate) const RES_LVER: u32 = 0x1;
/// `SANLK_RES_ALIGN1M`.
pub(crate) const RES_ALIGN1M: u32 = 0x10;
/// `SANLK_RES_SECTOR512`.
pub(crate) const RES_SECTOR512: u32 = 0x100;
/// `SANLK_ACQUIRE_OWNER_NOWAIT`: fail instead of waiting for a failed owner's lease to expire.
pub(crate) const ACQUIRE_OWNER_NOWAIT: u32 = 0x8;
/// `SANLK_LSF_ADD`: the lockspace is still being joined.
pub(crate) const LSF_ADD: u32 = 0x1;
/// `SANLK_LSF_REM`: the lockspace is being left.
pub(crate) const LSF_REM: u32 = 0x2;
/// `SANLK_HOST_MASK` and the host states in `sanlk_host.flags`.
pub(crate) const HOST_MASK: u32 = 0xF;
pub(crate) const HOST_FREE: u32 = 2;
pub(crate) const HOST_LIVE: u32 = 3;
pub(crate) const HOST_FAIL: u32 = 4;
pub(crate) const HOST_DEAD: u32 = 5;

/// `SANLK_ACQUIRE_LVER`: the lease version was not the one required.
pub(crate) const ACQUIRE_LVER: c_int = -240;
/// `SANLK_ACQUIRE_IDLIVE`: held by another host whose delta lease is live.
pub(crate) const ACQUIRE_IDLIVE: c_int = -243;
/// `SANLK_ACQUIRE_OWNED`: held by another host.
pub(crate) const ACQUIRE_OWNED: c_int = -244;
/// `SANLK_ACQUIRE_OTHER`: held by another process of this host.
pub(crate) const ACQUIRE_OTHER: c_int = -245;
/// `SANLK_ACQUIRE_OWNED_RETRY`: held by a host whose lease has not expired yet (NOWAIT).
pub(crate) const ACQUIRE_OWNED_RETRY: c_int = -247;
/// `SANLK_LEADER_MAGIC`: no lease at that place.
pub(crate) const LEADER_MAGIC: c_int = -223;
/// `SANLK_LEADER_LOCKSPACE`: the lease belongs to another lockspace.
pub(crate) const LEADER_LOCKSPACE: c_int = -226;

/// `struct sanlk_disk`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Disk {
    pub path: [c_char; PATH_LEN],
    pub offset: u64,
    pub pad1: u32,
    pub pad2: u32,
}

/// `struct sanlk_resource`, without its trailing `disks[]`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Resource {
    pub lockspace_name: [c_char; NAME_LEN],
    pub name: [c_char; NAME_LEN],
    pub lver: u64,
    pub data64: u64,
    pub data32: u32,
    pub unused: u32,
    pub flags: u32,
    pub num_disks: u32,
}

/// A `struct sanlk_resource` with its one disk: the C flexible array member `disks[0]`
/// starts right after the fixed part, at offset 128, where `disk` is.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Resource1 {
    pub res: Resource,
    pub disk: Disk,
}

impl std::fmt::Debug for Resource1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name: Vec<u8> = self
            .res
            .name
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        f.debug_struct("Resource1")
            .field("name", &String::from_utf8_lossy(&name))
            .field("lver", &self.res.lver)
            .finish_non_exhaustive()
    }
}

/// `struct sanlk_lockspace`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Lockspace {
    pub name: [c_char; NAME_LEN],
    pub host_id: u64,
    pub flags: u32,
    pub host_id_disk: Disk,
}

/// `struct sanlk_host`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Host {
    pub host_id: u64,
    pub generation: u64,
    pub timestamp: u64,
    pub io_timeout: u32,
    pub flags: u32,
}

/// The client library's file name (LGPL-2.1+; Debian package `libsanlock-client1`).
pub(crate) const LIBRARY: &str = "libsanlock_client.so.1";

/// The functions of sanlock's client library, the part of sanlock that talks to the local
/// daemon over its socket. It is loaded on first use, not linked: imgtx builds and runs
/// without sanlock, and only a command that names a lockspace needs it.
pub(crate) struct Lib {
    pub register: unsafe extern "C" fn() -> c_int,
    pub acquire: unsafe extern "C" fn(
        sock: c_int,
        pid: c_int,
        flags: u32,
        res_count: c_int,
        res_args: *mut *mut Resource,
        opt_in: *mut c_void,
    ) -> c_int,
    pub release: unsafe extern "C" fn(
        sock: c_int,
        pid: c_int,
        flags: u32,
        res_count: c_int,
        res_args: *mut *mut Resource,
    ) -> c_int,
    pub get_lockspaces:
        unsafe extern "C" fn(lss: *mut *mut Lockspace, lss_count: *mut c_int, flags: u32) -> c_int,
    pub get_hosts: unsafe extern "C" fn(
        ls_name: *const c_char,
        host_id: u64,
        hss: *mut *mut Host,
        hss_count: *mut c_int,
        flags: u32,
    ) -> c_int,
    pub write_resource: unsafe extern "C" fn(
        res: *mut Resource,
        max_hosts: c_int,
        num_hosts: c_int,
        flags: u32,
    ) -> c_int,
    pub read_resource_owners: unsafe extern "C" fn(
        res: *mut Resource,
        flags: u32,
        hss: *mut *mut Host,
        hss_count: *mut c_int,
    ) -> c_int,
    pub strerror: unsafe extern "C" fn(rv: c_int) -> *const c_char,
    // Last: the function pointers above are valid only while the library stays loaded,
    // which it does for the life of the process (the value lives in a static).
    _library: libloading::Library,
}

static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();

/// The loaded library, or why it cannot be loaded (the same answer for the whole process).
pub(crate) fn lib() -> std::result::Result<&'static Lib, &'static str> {
    LIB.get_or_init(load).as_ref().map_err(String::as_str)
}

fn load() -> std::result::Result<Lib, String> {
    // SAFETY: loading runs the library's initialisers; libsanlock_client has none beyond
    // libc's. Each symbol is read with the signature sanlock's headers give it (see the
    // declarations above), and the library is kept loaded as long as the pointers live.
    unsafe {
        let library = libloading::Library::new(LIBRARY).map_err(|e| e.to_string())?;
        macro_rules! sym {
            ($name:literal) => {
                *library
                    .get($name)
                    .map_err(|e| format!("{}: {e}", String::from_utf8_lossy($name)))?
            };
        }
        Ok(Lib {
            register: sym!(b"sanlock_register"),
            acquire: sym!(b"sanlock_acquire"),
            release: sym!(b"sanlock_release"),
            get_lockspaces: sym!(b"sanlock_get_lockspaces"),
            get_hosts: sym!(b"sanlock_get_hosts"),
            write_resource: sym!(b"sanlock_write_resource"),
            read_resource_owners: sym!(b"sanlock_read_resource_owners"),
            strerror: sym!(b"sanlock_strerror"),
            _library: library,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layouts_match_the_c_headers() {
        assert_eq!(size_of::<Disk>(), 1040);
        assert_eq!(size_of::<Resource>(), 128);
        assert_eq!(offset_of!(Resource, lver), 96);
        assert_eq!(offset_of!(Resource, flags), 120);
        assert_eq!(offset_of!(Resource1, disk), 128);
        assert_eq!(offset_of!(Lockspace, host_id), 48);
        assert_eq!(offset_of!(Lockspace, host_id_disk), 64);
        assert_eq!(size_of::<Lockspace>(), 1104);
        assert_eq!(size_of::<Host>(), 32);
    }
}
