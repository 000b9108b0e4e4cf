//! The imgtx transaction engine: begin a transaction over VM disk images (a qcow2 overlay
//! per base), then commit it crash-safely into the bases, roll it back, or recover an
//! interrupted commit; plus status, diff and history.
//!
//! The engine is generic over the [`storage::Fs`] seam and a [`Host`] (locks, qemu-img,
//! identity, time), so the same code runs on real files and on a simulated disk. It never
//! prints: it returns [`Error`]s whose [`Error::class`] tells a front end which exit status to
//! use, and emits `tracing` events. It is not a qcow2 implementation (that is the `qcow`
//! crate) nor a log format (the `journal` crate). The protocol is described step by step in
//! `docs/commit-protocol.md`.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod begin;
mod commit;
mod error;
mod history;
mod host;
mod inspect;
pub mod layout;
mod lock;
mod overlay;
pub mod plan;
mod qemu;
mod record;
mod recover;
pub mod release;
mod rollback;
mod state;
mod time;
mod undo;

use std::path::{Path, PathBuf};
use std::time::Duration;

use storage::Fs;

pub use error::{Error, ErrorClass, Result};
pub use history::{History, HistoryEntry, HistoryImage, Outcome};
pub use host::{Host, OsGuard, OsHost};
pub use inspect::{Condition, ImageDiff, TxStatus};
pub use record::Direction;
pub use recover::{RecoverAction, RecoverOptions, RecoverReport};
pub use release::Released;
pub use state::{FileId, Format, ImageEntry, Manifest, TxState};

/// How long `begin` waits for a base another transaction holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wait {
    /// Fail at once with [`Error::Busy`].
    #[default]
    No,
    /// Wait until it is free.
    Forever,
    /// Wait at most this long, then fail with [`Error::WaitTimedOut`].
    For(Duration),
}

/// What `begin` needs.
#[derive(Debug, Clone, Default)]
pub struct BeginOptions {
    /// Absolute paths of the bases, symlinks already resolved.
    pub bases: Vec<PathBuf>,
    /// A name to remember the transaction by.
    pub name: Option<String>,
    /// The format of every base; `None` decides safely per base (see `docs/cli.md`).
    pub base_format: Option<Format>,
    /// Whether to wait for busy bases.
    pub wait: Wait,
    /// The command line, for `run`.
    pub command: Option<Vec<String>>,
}

/// What `commit` needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitOptions {
    /// Skip saving pre-images: faster, but an interrupted commit can then only roll forward.
    pub no_undo: bool,
    /// Remove the pre-image file at the end instead of keeping it beside the base as the
    /// spare the next commit overwrites (`layout::spare`).
    pub no_spare: bool,
}

/// Which copy a [`Progress`] report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Saving the base's old content into the pre-image file, before the commit point.
    PreImages,
    /// Writing the new content into the base (commit, forward recovery).
    Apply,
    /// Writing the saved old content back into the base (`recover --undo`).
    Restore,
}

/// Progress of copying data for a base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Index of the image being worked on.
    pub image: usize,
    /// Which copy this is; `done` and `total` count the bytes of that copy.
    pub phase: Phase,
    /// Bytes of it done so far.
    pub done: u64,
    /// Bytes of it in total.
    pub total: u64,
}

/// What a finished commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReport {
    /// The transaction.
    pub id: String,
    /// Per base, the bytes changed.
    pub images: Vec<HistoryImage>,
    /// The pre-image files kept beside their bases as spares (none with `--no-undo` or
    /// `--no-spare`): disk space the user may want to know about.
    pub spares: Vec<Spare>,
}

/// A pre-image file a commit kept as its base's spare, for the next commit to overwrite.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Spare {
    /// Where it is: `.NAME.imgtx.spare` beside the base.
    pub path: PathBuf,
    /// Its length in bytes.
    pub bytes: u64,
}

/// The transaction engine over file system `S` on host `H`.
#[derive(Debug)]
pub struct Engine<S, H> {
    fs: S,
    host: H,
    state: state::StateDir,
}

impl<S: Fs, H: Host> Engine<S, H> {
    /// An engine keeping its registry in `state_dir` (absolute), created 0700 if missing.
    pub fn new(fs: S, host: H, state_dir: PathBuf) -> Result<Self> {
        // Resolved once: the state directory may sit under a symlinked home, but nothing
        // inside it is reached through a symlink afterwards.
        let state_dir = fs
            .canonicalize(&state_dir)
            .map_err(Error::io("resolve", state_dir))?;
        let state = state::StateDir::new(state_dir);
        state.create(&fs)?;
        Ok(Self { fs, host, state })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.root()
    }

    /// Takes the lock serializing work on transaction `id`.
    fn lock_tx(&self, id: &str) -> Result<H::Guard> {
        if !state::valid_id(id) {
            return Err(Error::NotFound { tx: id.to_owned() });
        }
        self.host
            .lock_exclusive(&self.state.lock(id), false)?
            .ok_or_else(|| Error::Locked { tx: id.to_owned() })
    }

    /// Removes the lock file of a transaction that no longer exists (while holding it).
    fn drop_lock_file(&self, id: &str) {
        let _ = state::remove_if_exists(&self.fs, &self.state.lock(id));
    }

    /// Refuses `base` when a journal of an interrupted commit lies beside it.
    fn check_no_interrupted(&self, base: &Path) -> Result<()> {
        if let Some(tx) = self.journals_beside(base)?.into_iter().next() {
            return Err(Error::RecoveryNeeded {
                path: base.to_path_buf(),
                tx,
            });
        }
        Ok(())
    }

    /// Ids of transactions with a journal beside `base`.
    fn journals_beside(&self, base: &Path) -> Result<Vec<String>> {
        let dir = layout::dir_of(base)?;
        let name = layout::base_name(base)?;
        let entries = self.fs.read_dir(dir).map_err(Error::io("list", dir))?;
        let mut ids: Vec<String> = entries
            .iter()
            .filter_map(|n| {
                n.to_str()
                    .and_then(|n| layout::journal_id(name, n))
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn now(&self) -> String {
        time::rfc3339(self.host.now())
    }
}
