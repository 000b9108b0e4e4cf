//! A small safe wrapper over sanlock's client library (`libsanlock_client`), for leases on
//! shared storage: which hosts of a lockspace are alive, and one process at a time holding
//! a resource lease.
//!
//! [`Sanlock::connect`] checks that the local sanlock daemon answers and that this host has
//! joined the named lockspace (the administrator's `sanlock client add_lockspace`); the
//! daemon is found the standard way, by libsanlock itself, through `$SANLOCK_RUN_DIR`
//! (default `/run/sanlock`). [`Sanlock::acquire`] registers this process with the daemon
//! (once) and acquires the resource lease kept in a lease file, creating and initialising
//! that file first if it does not exist, race-free against other hosts ([`publish`]). The
//! lease is held until the [`Held`] guard drops, or until the process exits: the daemon
//! releases the leases of a process whose connection closes. [`Sanlock::host_status`] says
//! whether another host's delta lease is live.
//!
//! ```no_run
//! # fn main() -> lease::Result<()> {
//! let sanlock = lease::Sanlock::connect("imgtx")?;
//! let held = sanlock.acquire("/shared/.vm.qcow2.imgtx.lease".as_ref(), None)?;
//! // ... write the image while `held` lives ...
//! drop(held);
//! # Ok(())
//! # }
//! ```
//!
//! It is not a lease protocol: every decision (who holds a lease, whether a host is dead)
//! is sanlock's. It does not join or leave lockspaces, run the daemon, or fence anything:
//! those are the administrator's and the daemon's (with `wdmd`). One resource lease per
//! lease file, at offset 0, 512-byte sectors and 1 MiB alignment.

#![deny(missing_docs)]

mod error;
mod ffi;
mod file;

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// sanlock's client library, loaded on first use.
fn lib() -> Result<&'static ffi::Lib> {
    ffi::lib().map_err(|reason| Error::NoLibrary {
        library: ffi::LIBRARY,
        reason,
    })
}

pub use error::{Code, Error, Result};
pub use file::{publish, Published};

/// The size of the lease area at the start of a lease file: one resource lease at 512-byte
/// sectors and 1 MiB alignment.
pub const LEASE_AREA_LEN: u64 = 1 << 20;
/// The size of a lease file: the lease area, then one 4 KiB block naming the lease.
pub const LEASE_FILE_LEN: u64 = LEASE_AREA_LEN + 4096;
/// The first bytes of the naming block.
///
/// sanlock refuses to read or acquire a resource lease without its name, and the name must
/// differ between the leases one host holds at once; so each lease file gets a random name,
/// kept right after its lease area: `MAGIC` (8 bytes), then the name (48 bytes, NUL-padded).
const NAME_MAGIC: &[u8; 8] = b"IMGTXLS1";

/// What sanlock says about a host of the lockspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStatus {
    /// Its delta lease is being renewed: it is alive.
    Live,
    /// Its renewals stopped recently; it may still be alive and killing its lease holders.
    Failing,
    /// Its lease expired long enough ago that its watchdog has fired: it is dead.
    Dead,
    /// It holds no delta lease (it left the lockspace cleanly, or never joined).
    Free,
    /// This daemon has not watched the lockspace long enough to say, or does not know the
    /// host.
    Unknown,
}

/// A resource lease as read from its lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lockspace it belongs to.
    pub lockspace: String,
    /// The resource's name.
    pub name: String,
    /// Its version: it grows every time the lease is acquired.
    pub lver: u64,
    /// The sanlock host ids that hold it now, as the lease area says (a holder that
    /// released it is not listed).
    pub owners: Vec<u64>,
}

/// A connection to the local sanlock daemon, as a member of one lockspace.
#[derive(Debug, Clone)]
pub struct Sanlock {
    lockspace: String,
    host_id: u64,
    inner: Arc<Mutex<Registration>>,
}

/// This process's registration with the daemon and the leases it holds, shared by every
/// [`Held`] guard. libsanlock asks threaded clients to serialize the calls made on one
/// registered connection; the mutex does.
#[derive(Debug, Default)]
struct Registration {
    sock: Option<OwnedFd>,
    held: HashMap<PathBuf, (usize, Box<ffi::Resource1>)>,
}

/// A resource lease this process holds; dropping the last guard of a lease releases it.
#[derive(Debug)]
pub struct Held {
    path: PathBuf,
    inner: Arc<Mutex<Registration>>,
}

impl Sanlock {
    /// Connects to the local daemon as a member of `lockspace`.
    ///
    /// # Errors
    /// [`Error::Unreachable`] when the daemon does not answer; [`Error::NotJoined`] when
    /// this host is not (yet, or any longer) a member of `lockspace`.
    pub fn connect(lockspace: &str) -> Result<Self> {
        name_field(lockspace, "lockspace name")?;
        let mut lss: *mut ffi::Lockspace = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: both out-pointers point at live locals; on success libsanlock stores a
        // malloc'ed array of `count` lockspaces in `lss`, which is freed below.
        let rv = unsafe { (lib()?.get_lockspaces)(&mut lss, &mut count, 0) };
        let list = take_array(lss, count);
        if rv < 0 && list.is_empty() {
            return Err(Error::Unreachable {
                run_dir: run_dir(),
                source: Code(rv),
            });
        }
        let found = list
            .iter()
            .find(|ls| field_str(&ls.name) == lockspace)
            .ok_or_else(|| Error::NotJoined {
                name: lockspace.to_owned(),
                joining: false,
            })?;
        if found.flags & (ffi::LSF_ADD | ffi::LSF_REM) != 0 {
            return Err(Error::NotJoined {
                name: lockspace.to_owned(),
                joining: found.flags & ffi::LSF_ADD != 0,
            });
        }
        tracing::debug!(
            lockspace,
            host_id = found.host_id,
            "joined sanlock lockspace"
        );
        Ok(Self {
            lockspace: lockspace.to_owned(),
            host_id: found.host_id,
            inner: Arc::default(),
        })
    }

    /// The lockspace.
    pub fn lockspace(&self) -> &str {
        &self.lockspace
    }

    /// This host's id in the lockspace.
    pub fn host_id(&self) -> u64 {
        self.host_id
    }

    /// What the local daemon says about host `host_id` of the lockspace.
    ///
    /// # Errors
    /// [`Error::Daemon`] when the daemon cannot answer.
    pub fn host_status(&self, host_id: u64) -> Result<HostStatus> {
        let name = CString::new(self.lockspace.as_str()).expect("checked in connect");
        let mut tries = 0;
        let (rv, hosts) = loop {
            let mut hss: *mut ffi::Host = std::ptr::null_mut();
            let mut count: c_int = 0;
            // SAFETY: `name` is NUL-terminated and outlives the call; the out-pointers point
            // at live locals; on success libsanlock stores a malloc'ed array, freed below.
            let rv = unsafe { (lib()?.get_hosts)(name.as_ptr(), host_id, &mut hss, &mut count, 0) };
            let hosts = take_array(hss, count);
            // -EAGAIN: the daemon has not read the other hosts' leases yet since it joined
            // the lockspace (it does at its next renewal, 2 io_timeouts later at most).
            if rv != -nix::libc::EAGAIN || tries == 6 {
                break (rv, hosts);
            }
            tries += 1;
            std::thread::sleep(std::time::Duration::from_millis(500));
        };
        if rv == -nix::libc::ENOENT || rv == -nix::libc::EAGAIN {
            return Ok(HostStatus::Unknown);
        }
        if rv < 0 {
            return Err(Error::Daemon {
                action: format!("report host {host_id} of lockspace {}", self.lockspace),
                source: Code(rv),
            });
        }
        let Some(h) = hosts.iter().find(|h| h.host_id == host_id) else {
            return Ok(HostStatus::Unknown);
        };
        Ok(match h.flags & ffi::HOST_MASK {
            ffi::HOST_LIVE => HostStatus::Live,
            ffi::HOST_FAIL => HostStatus::Failing,
            ffi::HOST_DEAD => HostStatus::Dead,
            ffi::HOST_FREE => HostStatus::Free,
            _ => HostStatus::Unknown,
        })
    }

    /// Creates the lease file `path` with an initialised lease of this lockspace, unless it
    /// exists; race-free against other hosts doing the same (see [`publish`]). The resource
    /// gets a random name, so that leases of different files never share one.
    ///
    /// # Errors
    /// [`Error::Io`] for the file; [`Error::Daemon`] when the daemon cannot write the lease.
    pub fn ensure_lease_file(&self, path: &Path) -> Result<Published> {
        publish(path, LEASE_FILE_LEN, |tmp| {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(|e| Error::Io {
                action: "get random bytes for a lease name for",
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            })?;
            let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let name = format!("imgtx-{name}");
            let mut block = NAME_MAGIC.to_vec();
            block.extend_from_slice(name.as_bytes());
            std::fs::OpenOptions::new()
                .write(true)
                .open(tmp)
                .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &block, LEASE_AREA_LEN))
                .map_err(|source| Error::Io {
                    action: "name the lease in",
                    path: tmp.to_path_buf(),
                    source,
                })?;
            let mut res = resource(tmp, Some(&self.lockspace), Some(&name))?;
            // SAFETY: `res` is a sanlk_resource followed by exactly `num_disks` (1) disk, as
            // the call expects; libsanlock only reads it.
            let rv = unsafe { (lib()?.write_resource)(&mut res.res, 0, 0, 0) };
            if rv < 0 {
                return Err(Error::Daemon {
                    action: format!("initialise a lease in {}", tmp.display()),
                    source: Code(rv),
                });
            }
            Ok(())
        })
    }

    /// Reads the lease in `path`: its name, version and holders.
    ///
    /// # Errors
    /// [`Error::Unusable`] when the file holds no lease, or one of another lockspace;
    /// [`Error::Daemon`] when the daemon cannot read it.
    pub fn read(&self, path: &Path) -> Result<LeaseInfo> {
        // sanlock compares the lockspace name with the leader record's (an empty one too), so
        // a lease of another lockspace reads as `SANLK_LEADER_LOCKSPACE`.
        let name = lease_name(path)?;
        let mut res = resource(path, Some(&self.lockspace), Some(&name))?;
        let mut hss: *mut ffi::Host = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: `res` is a sanlk_resource with its one disk; libsanlock fills the fixed
        // part in and stores a malloc'ed array of owners in `hss`, freed below.
        let rv = unsafe { (lib()?.read_resource_owners)(&mut res.res, 0, &mut hss, &mut count) };
        let owners = take_array(hss, count);
        if rv == ffi::LEADER_MAGIC {
            return Err(Error::Unusable {
                path: path.to_path_buf(),
                reason: "it holds no sanlock lease".into(),
            });
        }
        if rv == ffi::LEADER_LOCKSPACE {
            return Err(Error::Unusable {
                path: path.to_path_buf(),
                reason: format!(
                    "its lease belongs to another lockspace than {:?}",
                    self.lockspace
                ),
            });
        }
        if rv < 0 {
            return Err(Error::Daemon {
                action: format!("read lease {}", path.display()),
                source: Code(rv),
            });
        }
        let info = LeaseInfo {
            lockspace: field_str(&res.res.lockspace_name),
            name: field_str(&res.res.name),
            lver: res.res.lver,
            owners: owners.iter().map(|h| h.host_id).collect(),
        };
        if info.lockspace != self.lockspace {
            return Err(Error::Unusable {
                path: path.to_path_buf(),
                reason: format!(
                    "its lease belongs to lockspace {:?}, not {:?}",
                    info.lockspace, self.lockspace
                ),
            });
        }
        Ok(info)
    }

    /// Acquires the lease in `path` for this process, creating the lease file first if it
    /// does not exist. With `lver`, only if the lease is still at that version (nobody
    /// acquired it since it was read). A lease this process holds already is held once
    /// more (the guard counts). Never waits: a lease held by another host, or by a host
    /// whose lease has not expired yet, is [`Error::Busy`].
    ///
    /// # Errors
    /// [`Error::Busy`]; [`Error::VersionChanged`]; [`Error::Unreachable`] when this process
    /// cannot register with the daemon; [`Error::Daemon`], [`Error::Unusable`],
    /// [`Error::Io`]. Nothing is held after an error.
    pub fn acquire(&self, path: &Path, lver: Option<u64>) -> Result<Held> {
        let mut reg = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((count, _)) = reg.held.get_mut(path) {
            *count += 1;
            return Ok(self.guard(path));
        }
        self.ensure_lease_file(path)?;
        let info = self.read(path)?;
        let mut res = resource(path, Some(&self.lockspace), Some(&info.name))?;
        if let Some(v) = lver {
            res.res.lver = v;
            res.res.flags |= ffi::RES_LVER;
        }
        let sock = match &reg.sock {
            Some(s) => s.as_raw_fd(),
            None => {
                // SAFETY: no arguments; returns a new socket descriptor or -errno.
                let fd = unsafe { (lib()?.register)() };
                if fd < 0 {
                    return Err(Error::Unreachable {
                        run_dir: run_dir(),
                        source: Code(fd),
                    });
                }
                // SAFETY: `fd` is a descriptor libsanlock just opened for us and owns no
                // more; from here on `OwnedFd` closes it (which releases our leases).
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                reg.sock.insert(owned).as_raw_fd()
            }
        };
        let mut boxed = Box::new(res);
        let mut args = [&mut boxed.res as *mut ffi::Resource];
        // SAFETY: `sock` is our registered connection, used under the mutex; `args` holds
        // one pointer to a sanlk_resource followed by its one disk, alive for the call;
        // no options (NULL) are passed.
        let rv = unsafe {
            (lib()?.acquire)(
                sock,
                -1,
                ffi::ACQUIRE_OWNER_NOWAIT,
                1,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        if rv < 0 {
            let source = Code(rv);
            return Err(match rv {
                ffi::ACQUIRE_LVER => Error::VersionChanged {
                    path: path.to_path_buf(),
                    expected: lver.unwrap_or(0),
                    source,
                },
                ffi::ACQUIRE_IDLIVE
                | ffi::ACQUIRE_OWNED
                | ffi::ACQUIRE_OTHER
                | ffi::ACQUIRE_OWNED_RETRY => Error::Busy {
                    path: path.to_path_buf(),
                    host_id: if rv == ffi::ACQUIRE_OTHER {
                        Some(self.host_id)
                    } else {
                        self.read(path)
                            .ok()
                            .and_then(|i| i.owners.into_iter().find(|h| *h != self.host_id))
                    },
                    source,
                },
                // Another process of this host holds it (this process's are counted).
                rv if rv == -nix::libc::EEXIST => Error::Busy {
                    path: path.to_path_buf(),
                    host_id: Some(self.host_id),
                    source,
                },
                _ => Error::Daemon {
                    action: format!("acquire lease {}", path.display()),
                    source,
                },
            });
        }
        tracing::debug!(path = %path.display(), "sanlock lease acquired");
        reg.held.insert(path.to_path_buf(), (1, boxed));
        Ok(self.guard(path))
    }

    fn guard(&self, path: &Path) -> Held {
        Held {
            path: path.to_path_buf(),
            inner: Arc::clone(&self.inner),
        }
    }
}

impl Held {
    /// The lease file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut reg = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((count, _)) = reg.held.get_mut(&self.path) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        let (_, mut res) = reg.held.remove(&self.path).expect("just found");
        let Some(sock) = reg.sock.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        // Held, so the library was loaded.
        let Ok(lib) = ffi::lib() else { return };
        let mut args = [&mut res.res as *mut ffi::Resource];
        // SAFETY: as in `acquire`: our registered connection under the mutex, one resource
        // with its one disk, alive for the call.
        let rv = unsafe { (lib.release)(sock, -1, 0, 1, args.as_mut_ptr()) };
        if rv < 0 {
            // The daemon releases it when this process exits, whatever happens here.
            tracing::warn!(path = %self.path.display(), error = %Code(rv), "could not release a sanlock lease");
        } else {
            tracing::debug!(path = %self.path.display(), "sanlock lease released");
        }
    }
}

/// The name of the lease in lease file `path`, from its naming block.
fn lease_name(path: &Path) -> Result<String> {
    // The daemon (root, as a rule) opens the path and writes ballots into it: only a
    // regular file is a lease file, never a symlink planted under its name.
    let meta = path.symlink_metadata().map_err(|source| Error::Io {
        action: "stat",
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_file() || meta.len() < LEASE_FILE_LEN {
        return Err(Error::Unusable {
            path: path.to_path_buf(),
            reason: "it is not a regular file of a lease file's size".into(),
        });
    }
    let mut block = [0u8; NAME_MAGIC.len() + ffi::NAME_LEN];
    std::fs::File::open(path)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut block, LEASE_AREA_LEN))
        .map_err(|source| Error::Io {
            action: "read the lease name in",
            path: path.to_path_buf(),
            source,
        })?;
    let unusable = |reason: &str| Error::Unusable {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let (magic, name) = block.split_at(NAME_MAGIC.len());
    if magic != NAME_MAGIC {
        return Err(unusable("it is not an imgtx lease file"));
    }
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    let name =
        std::str::from_utf8(&name[..end]).map_err(|_| unusable("its lease name is not UTF-8"))?;
    name_field(name, "resource name").map_err(|_| unusable("its lease name is not valid"))?;
    Ok(name.to_owned())
}

/// Where libsanlock looks for the daemon's socket (for messages): it reads
/// `$SANLOCK_RUN_DIR` itself, else uses `/run/sanlock`.
fn run_dir() -> String {
    std::env::var("SANLOCK_RUN_DIR")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/run/sanlock".to_owned())
}

/// A sanlk_resource of lease file `path` (offset 0, 512-byte sectors, 1 MiB alignment).
fn resource(path: &Path, lockspace: Option<&str>, name: Option<&str>) -> Result<ffi::Resource1> {
    let mut res = ffi::Resource1 {
        res: ffi::Resource {
            lockspace_name: [0; ffi::NAME_LEN],
            name: [0; ffi::NAME_LEN],
            lver: 0,
            data64: 0,
            data32: 0,
            unused: 0,
            flags: ffi::RES_ALIGN1M | ffi::RES_SECTOR512,
            num_disks: 1,
        },
        disk: ffi::Disk {
            path: [0; ffi::PATH_LEN],
            offset: 0,
            pad1: 0,
            pad2: 0,
        },
    };
    if let Some(ls) = lockspace {
        res.res.lockspace_name = name_field(ls, "lockspace name")?;
    }
    if let Some(n) = name {
        res.res.name = name_field(n, "resource name")?;
    }
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= ffi::PATH_LEN || bytes.contains(&0) || !path.is_absolute() {
        return Err(Error::TooLong {
            what: "absolute path",
            name: path.display().to_string(),
            limit: ffi::PATH_LEN - 1,
        });
    }
    for (dst, src) in res.disk.path.iter_mut().zip(bytes) {
        *dst = *src as c_char;
    }
    Ok(res)
}

/// `s` as a fixed-size sanlock name field (no NUL needed when full).
fn name_field(s: &str, what: &'static str) -> Result<[c_char; ffi::NAME_LEN]> {
    if s.is_empty() || s.len() > ffi::NAME_LEN || s.contains(['\0', ':', ' ']) {
        return Err(Error::TooLong {
            what,
            name: s.to_owned(),
            limit: ffi::NAME_LEN,
        });
    }
    let mut field = [0 as c_char; ffi::NAME_LEN];
    for (dst, src) in field.iter_mut().zip(s.as_bytes()) {
        *dst = *src as c_char;
    }
    Ok(field)
}

/// A fixed-size name field as a string, up to its first NUL.
fn field_str(field: &[c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Copies the malloc'ed array libsanlock returned into a `Vec` and frees it.
fn take_array<T: Copy>(ptr: *mut T, count: c_int) -> Vec<T> {
    if ptr.is_null() {
        return Vec::new();
    }
    let n = usize::try_from(count).unwrap_or(0);
    // SAFETY: libsanlock returned `ptr` from malloc with room for at least `count`
    // elements of `T` (the C struct `T` mirrors), all initialised; we copy them out and
    // free the block exactly once, never touching it afterwards.
    unsafe {
        let v = std::slice::from_raw_parts(ptr, n).to_vec();
        nix::libc::free(ptr.cast());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_longer_than_sanlock_allows_are_refused() {
        assert!(name_field(&"x".repeat(48), "lockspace name").is_ok());
        assert!(matches!(
            name_field(&"x".repeat(49), "lockspace name"),
            Err(Error::TooLong { limit: 48, .. })
        ));
        assert!(name_field("a:b", "lockspace name").is_err());
        assert!(name_field("", "lockspace name").is_err());
    }

    #[test]
    fn a_name_field_reads_back_as_it_was_written() {
        let f = name_field("imgtx-0123", "resource name").unwrap();
        assert_eq!(field_str(&f), "imgtx-0123");
        assert_eq!(
            field_str(&name_field(&"y".repeat(48), "x").unwrap()),
            "y".repeat(48)
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        assert!(resource(Path::new("rel/lease"), None, None).is_err());
        assert!(resource(Path::new("/abs/lease"), None, None).is_ok());
    }

    #[test]
    fn an_unreachable_daemon_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        // libsanlock reads the variable when it connects: point it at an empty directory.
        std::env::set_var("SANLOCK_RUN_DIR", dir.path());
        let err = Sanlock::connect("imgtx").unwrap_err();
        std::env::remove_var("SANLOCK_RUN_DIR");
        assert!(matches!(err, Error::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn a_symlink_or_short_file_is_not_a_lease_file() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, vec![0u8; LEASE_FILE_LEN as usize]).unwrap();
        let link = dir.path().join(".b.imgtx.lease");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let short = dir.path().join(".c.imgtx.lease");
        std::fs::write(&short, b"x").unwrap();

        for path in [&link, &short] {
            assert!(matches!(lease_name(path), Err(Error::Unusable { .. })));
        }
        assert!(
            matches!(lease_name(&real), Err(Error::Unusable { reason, .. }) if reason.contains("not an imgtx lease file"))
        );
    }

    #[test]
    fn sanlock_codes_are_described() {
        assert!(Code(-243).to_string().contains("-243"));
        assert!(!Code(-2).to_string().is_empty());
    }
}
