//! Doubles of the real machine for tests that attack the engine at one moment: [`HookedFs`]
//! and [`HookedHost`] forward every call to [`OsFs`] and [`OsHost`], and run the test's hook
//! at that moment (an open, the start of `qemu-img commit`, a journaled step, a hand-off of
//! files). Only the hooks differ from test to test, so the forwarding is written once, here.
//!
//! They are not simulations: every call reaches real files and real processes. For a disk
//! that can crash at any operation, use `storage`'s simulated disk with
//! [`crate::sim_host::SimHost`].

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use storage::{Fs, Metadata, OsFile, OsFs};
use txn::{Format, Host, OsGuard, OsHost, Released, TxId};

type OpenHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// The real file system, except that `before_open` runs with the path just before each open,
/// and `before_link` with the source path just before each hard link.
#[derive(Clone, Default)]
pub struct HookedFs {
    before_open: Option<OpenHook>,
    before_link: Option<OpenHook>,
}

impl HookedFs {
    /// The real file system, running `hook` before each open.
    pub fn before_open(hook: impl Fn(&Path) + Send + Sync + 'static) -> Self {
        Self {
            before_open: Some(Arc::new(hook)),
            before_link: None,
        }
    }

    /// The real file system, running `hook` with the source path before each hard link.
    pub fn before_link(hook: impl Fn(&Path) + Send + Sync + 'static) -> Self {
        Self {
            before_open: None,
            before_link: Some(Arc::new(hook)),
        }
    }
}

impl fmt::Debug for HookedFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookedFs").finish_non_exhaustive()
    }
}

impl Fs for HookedFs {
    type File = OsFile;

    fn create_new(&self, path: &Path) -> io::Result<OsFile> {
        OsFs.create_new(path)
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<OsFile> {
        if let Some(hook) = &self.before_open {
            hook(path);
        }
        OsFs.open(path, writable)
    }

    fn metadata(&self, path: &Path) -> io::Result<Option<Metadata>> {
        OsFs.metadata(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsFs.remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsFs.rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        if let Some(hook) = &self.before_link {
            hook(from);
        }
        OsFs.hard_link(from, to)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        OsFs.create_dir(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsFs.sync_dir(dir)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        OsFs.read_dir(dir)
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        OsFs.canonicalize(path)
    }
}

type QemuHook = Box<dyn Fn() + Send + Sync>;
type StepHook = Box<dyn Fn(&str) + Send + Sync>;
type ReleaseHook = Box<dyn Fn(&[BorrowedFd<'_>]) + Send + Sync>;

/// The real machine, except for optional hooks: `before_qemu` runs just before
/// `qemu-img commit` starts (after the engine validated the overlay), `at_step` runs
/// after each journaled step, before the real host's own step handling, and `on_release`
/// sees the files handed to `release_later` before the real host takes them.
#[derive(Default)]
pub struct HookedHost {
    os: OsHost,
    before_qemu: Option<QemuHook>,
    at_step: Option<StepHook>,
    on_release: Option<ReleaseHook>,
}

impl HookedHost {
    /// Runs `hook` just before each `qemu-img commit`.
    #[must_use]
    pub fn before_qemu(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.before_qemu = Some(Box::new(hook));
        self
    }

    /// Runs `hook` with the name of each journaled step once it is done.
    #[must_use]
    pub fn at_step(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.at_step = Some(Box::new(hook));
        self
    }

    /// Runs `hook` with the files of each `release_later`.
    #[must_use]
    pub fn on_release(mut self, hook: impl Fn(&[BorrowedFd<'_>]) + Send + Sync + 'static) -> Self {
        self.on_release = Some(Box::new(hook));
        self
    }

    fn run_before_qemu(&self) {
        if let Some(hook) = &self.before_qemu {
            hook();
        }
    }
}

impl fmt::Debug for HookedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookedHost")
            .field("os", &self.os)
            .finish_non_exhaustive()
    }
}

impl Host for HookedHost {
    type Guard = OsGuard;

    fn lock_exclusive(&self, path: &Path, wait: bool) -> txn::Result<Option<OsGuard>> {
        self.os.lock_exclusive(path, wait)
    }

    fn is_locked(&self, path: &Path) -> txn::Result<bool> {
        self.os.is_locked(path)
    }

    fn writer_running(&self, base: &Path) -> txn::Result<bool> {
        self.os.writer_running(base)
    }

    fn holders(&self, path: &Path) -> Vec<u32> {
        self.os.holders(path)
    }

    fn qemu_img_repair_leaks(&self, base: &Path) -> txn::Result<()> {
        self.os.qemu_img_repair_leaks(base)
    }

    fn bitmaps_in_use(&self, base: &Path) -> txn::Result<Vec<String>> {
        self.os.bitmaps_in_use(base)
    }

    fn image_in_use(&self, path: &Path) -> txn::Result<bool> {
        self.os.image_in_use(path)
    }

    fn keep_writers_out(&self, path: &Path) -> txn::Result<OsGuard> {
        self.os.keep_writers_out(path)
    }

    fn fence_image(&self, path: &Path) -> txn::Result<OsGuard> {
        self.os.fence_image(path)
    }

    fn qemu_img_commit(&self, overlay: &Path, base: &Path, f: Format) -> txn::Result<()> {
        self.run_before_qemu();
        self.os.qemu_img_commit(overlay, base, f)
    }

    fn qemu_img_commit_open(
        &self,
        overlay: (&Path, BorrowedFd<'_>),
        base: (&Path, BorrowedFd<'_>),
        f: Format,
    ) -> txn::Result<()> {
        self.run_before_qemu();
        self.os.qemu_img_commit_open(overlay, base, f)
    }

    fn user(&self) -> (String, u32) {
        self.os.user()
    }

    fn hostname(&self) -> String {
        self.os.hostname()
    }

    fn now(&self) -> SystemTime {
        self.os.now()
    }

    fn new_id(&self) -> txn::Result<TxId> {
        self.os.new_id()
    }

    fn sleep(&self, d: Duration) {
        self.os.sleep(d);
    }

    fn step(&self, name: &str) {
        if let Some(hook) = &self.at_step {
            hook(name);
        }
        self.os.step(name);
    }

    fn release_later(&self, files: &[BorrowedFd<'_>]) -> Released {
        if let Some(hook) = &self.on_release {
            hook(files);
        }
        self.os.release_later(files)
    }
}
