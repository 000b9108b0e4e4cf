//! Test doubles of the real machine for the hostile tests: [`HookedFs`] and [`HookedHost`]
//! forward every call to [`OsFs`] and [`OsHost`], and run the test's hook at the one moment
//! it attacks (an open, the start of `qemu-img commit`, a journaled step). Only the hooks
//! differ from test to test, so the forwarding is written once, here, with the setup those
//! tests share.

#![allow(dead_code)] // each test crate uses a different part of this module

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use storage::{Fs, Metadata, OsFile, OsFs};
use txn::{BeginOptions, Engine, Format, Host, OsGuard, OsHost, Released, TxId};

type OpenHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// The real file system, except that `before_open` runs with the path just before each open.
#[derive(Clone, Default)]
pub struct HookedFs {
    before_open: Option<OpenHook>,
}

impl HookedFs {
    /// The real file system, running `hook` before each open.
    pub fn before_open(hook: impl Fn(&Path) + Send + Sync + 'static) -> Self {
        Self {
            before_open: Some(Arc::new(hook)),
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

    fn image_in_use(&self, path: &Path) -> txn::Result<bool> {
        self.os.image_in_use(path)
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

/// A switch that, once armed, makes the next commit die at its commit point: its
/// [`CommitPointStop::hook`] unwinds there, which leaves the journal and pre-images behind
/// as a killed process would. It disarms itself when it fires.
#[derive(Debug, Clone, Default)]
pub struct CommitPointStop(Arc<AtomicBool>);

impl CommitPointStop {
    /// The next commit point reached stops the commit.
    pub fn arm(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Commit points are passed again (for a commit that failed before reaching one).
    pub fn disarm(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// The [`HookedHost::at_step`] hook that does the stopping.
    pub fn hook(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let armed = Arc::clone(&self.0);
        move |name| {
            if name == "commit-point" && armed.swap(false, Ordering::SeqCst) {
                std::panic::resume_unwind(Box::new("stopped at the commit point"));
            }
        }
    }
}

/// Begins a transaction over the raw image `base` (which must exist).
pub fn begin_raw<S: Fs, H: Host>(engine: &Engine<S, H>, base: &Path) -> txn::Manifest {
    engine
        .begin(&BeginOptions {
            bases: vec![base.to_path_buf()],
            base_format: Some(Format::Raw),
            ..BeginOptions::default()
        })
        .expect("begin")
}

/// Runs `qemu-io -f qcow2 -c CMD` on the overlay of `m`'s first image; `None`, with a note,
/// when qemu-io is not installed. A command that fails fails the test.
pub fn write_overlay(m: &txn::Manifest, cmd: &str) -> Option<()> {
    let Ok(out) = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(&m.images[0].overlay)
        .output()
    else {
        eprintln!("skipped: qemu-io is not installed");
        return None;
    };
    assert!(out.status.success(), "qemu-io {cmd:?} failed: {out:?}");
    Some(())
}
