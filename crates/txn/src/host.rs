//! What the engine needs from the machine beyond the [`storage::Fs`] seam: process locks,
//! qemu's lock protocol, running `qemu-img`, identity and time, and the test crash hook.
//!
//! [`OsHost`] is the real machine. Simulation tests supply their own [`Host`] whose locks are
//! no-ops, because a simulated disk has no file descriptors to lock.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::id::TxId;
use crate::manifest::Format;
use crate::release::Released;

/// The machine-dependent services of the engine.
pub trait Host: Send + Sync {
    /// Proof that a lock is held; dropping it releases the lock.
    type Guard: Send;

    /// Takes the exclusive lock that serializes imgtx processes working on one transaction,
    /// creating `path` if needed. `Ok(None)` when another process holds it and `wait` is false.
    fn lock_exclusive(&self, path: &Path, wait: bool) -> Result<Option<Self::Guard>>;

    /// True when another process holds the exclusive lock of `path` (see
    /// [`Host::lock_exclusive`]); a missing lock file is not held. Creates nothing where it
    /// can: read-only commands use it. The default takes and drops the lock.
    fn is_locked(&self, path: &Path) -> Result<bool> {
        Ok(self.lock_exclusive(path, false)?.is_none())
    }

    /// True when some process holds qemu's "I use this image" locks on `path`.
    fn image_in_use(&self, path: &Path) -> Result<bool>;

    /// Holds shared locks on qemu's lock bytes of `path` so no qemu can open it until the
    /// guard drops. Fails with [`crate::Error::InUse`] when a qemu already has it open.
    fn fence_image(&self, path: &Path) -> Result<Self::Guard>;

    /// Holds qemu's "do not share write/resize" locks on `path` until the guard drops: while
    /// a transaction's own tools run, no other qemu may write or resize the base, but a qemu
    /// that opens it read-only as the backing file of the overlay gets in. Fails with
    /// [`crate::Error::InUse`] when a qemu writes it already.
    fn keep_writers_out(&self, path: &Path) -> Result<Self::Guard>;

    /// Runs `qemu-img commit` of `overlay` into `base` (a qcow2 image), naming the backing
    /// explicitly and with qemu's own locking off (the caller holds the fences).
    fn qemu_img_commit(&self, overlay: &Path, base: &Path, base_format: Format) -> Result<()>;

    /// [`Host::qemu_img_commit`] of the open files `overlay` and `base` (paths for messages
    /// only): qemu gets the descriptors, so a name swapped after the engine validated the
    /// overlay cannot redirect it. Hosts without real descriptors fall back to the names.
    fn qemu_img_commit_open(
        &self,
        overlay: (&Path, BorrowedFd<'_>),
        base: (&Path, BorrowedFd<'_>),
        base_format: Format,
    ) -> Result<()> {
        self.qemu_img_commit(overlay.0, base.0, base_format)
    }

    /// Runs `qemu-img check -r leaks` on the qcow2 image `base`, with qemu's locking off
    /// (the caller holds the fences): after a redo over a half-committed qcow2 base, which
    /// leaves clusters nothing refers to. The default does nothing.
    fn qemu_img_repair_leaks(&self, base: &Path) -> Result<()> {
        let _ = base;
        Ok(())
    }

    /// The names of the persistent dirty bitmaps of the qcow2 image `base` that are flagged
    /// in use (inconsistent), which qemu refuses to use. The default: none known.
    fn bitmaps_in_use(&self, base: &Path) -> Result<Vec<String>> {
        let _ = base;
        Ok(Vec::new())
    }

    /// True when a `qemu-img commit` child of an imgtx process still has `base` open, so it
    /// may still write it (see `docs/commit-protocol.md`). The default: never.
    fn writer_running(&self, base: &Path) -> Result<bool> {
        let _ = base;
        Ok(false)
    }

    /// The processes that have `path` open, as far as this process may see (for messages).
    /// The default: none known.
    fn holders(&self, path: &Path) -> Vec<u32> {
        let _ = path;
        Vec::new()
    }

    /// The user name and uid running the operation.
    fn user(&self) -> (String, u32);

    /// The host name.
    fn hostname(&self) -> String;

    /// The current time.
    fn now(&self) -> SystemTime;

    /// A fresh random transaction id such as `tx-3f9a2c1d7e`.
    fn new_id(&self) -> Result<TxId>;

    /// Sleeps while waiting for a busy base.
    fn sleep(&self, d: Duration);

    /// Called right after each journaled step; the test hook may end the process here.
    fn step(&self, name: &str);

    /// Takes over the open `files`, whose names are already durably gone, so that closing
    /// the caller's descriptors does not wait for the file system to free their blocks (see
    /// [`crate::release`]). The caller closes its descriptors, then drops the result. The
    /// default takes nothing, so the caller's own close frees the blocks.
    fn release_later(&self, files: &[BorrowedFd<'_>]) -> Released {
        let _ = files;
        Released::default()
    }
}

/// The real machine.
#[derive(Debug, Default, Clone)]
pub struct OsHost {
    #[cfg(feature = "crash-hooks")]
    crash_after: Option<String>,
}

impl OsHost {
    /// The real machine, with the test-only crash hook read from `IMGTX_TEST_CRASH_AFTER`.
    ///
    /// When that variable names a step (see `docs/commit-protocol.md`), the process exits with
    /// status 137 right after that step, as if killed. It exists for the kill tests only, so
    /// only a build with this crate's `crash-hooks` feature reads the variable; any other
    /// build, the shipped binary's included, ignores it.
    pub fn from_env() -> Self {
        Self {
            #[cfg(feature = "crash-hooks")]
            crash_after: std::env::var("IMGTX_TEST_CRASH_AFTER")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }
}

/// A held lock of [`OsHost`]: the open file whose lock it is.
#[derive(Debug)]
pub struct OsGuard {
    _file: std::fs::File,
}

impl Host for OsHost {
    type Guard = OsGuard;

    fn lock_exclusive(&self, path: &Path, wait: bool) -> Result<Option<OsGuard>> {
        crate::lock::lock_exclusive(path, wait).map(|f| f.map(|f| OsGuard { _file: f }))
    }

    fn is_locked(&self, path: &Path) -> Result<bool> {
        crate::lock::is_locked(path)
    }

    fn image_in_use(&self, path: &Path) -> Result<bool> {
        crate::lock::image_in_use(path)
    }

    fn keep_writers_out(&self, path: &Path) -> Result<OsGuard> {
        crate::lock::keep_writers_out(path).map(|f| OsGuard { _file: f })
    }

    fn fence_image(&self, path: &Path) -> Result<OsGuard> {
        crate::lock::fence_image(path).map(|f| OsGuard { _file: f })
    }

    fn qemu_img_commit(&self, overlay: &Path, base: &Path, base_format: Format) -> Result<()> {
        crate::qemu::commit(overlay, base, base_format)
    }

    fn qemu_img_commit_open(
        &self,
        overlay: (&Path, BorrowedFd<'_>),
        base: (&Path, BorrowedFd<'_>),
        base_format: Format,
    ) -> Result<()> {
        crate::qemu::commit_open(overlay, base, base_format)
    }

    fn writer_running(&self, base: &Path) -> Result<bool> {
        crate::qemu::writer_running(base)
    }

    fn qemu_img_repair_leaks(&self, base: &Path) -> Result<()> {
        crate::qemu::repair_leaks(base)
    }

    fn bitmaps_in_use(&self, base: &Path) -> Result<Vec<String>> {
        crate::qemu::bitmaps_in_use(base)
    }

    fn holders(&self, path: &Path) -> Vec<u32> {
        crate::lock::holders(path)
    }

    fn user(&self) -> (String, u32) {
        let uid = nix::unistd::getuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        (name, uid.as_raw())
    }

    fn hostname(&self) -> String {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".to_owned())
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn new_id(&self) -> Result<TxId> {
        let mut bytes = [0u8; 5];
        getrandom::fill(&mut bytes).map_err(|e| crate::Error::Io {
            action: "get random bytes for",
            path: "the transaction id".into(),
            source: std::io::Error::other(e),
        })?;
        Ok(TxId::from_random(bytes))
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn step(&self, name: &str) {
        tracing::debug!(step = name, "journaled step done");
        #[cfg(feature = "crash-hooks")]
        if self.crash_after.as_deref() == Some(name) {
            // Test hook only: die like a killed process, without unwinding or cleanup.
            std::process::exit(137);
        }
    }

    fn release_later(&self, files: &[BorrowedFd<'_>]) -> Released {
        crate::release::hand_off(files).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "freeing deleted files in this process instead");
            Released::default()
        })
    }
}
