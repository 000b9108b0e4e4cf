//! The options and reports of the engine's operations: what a caller asks for (begin,
//! commit), and what it hears back (progress, the commit's report).
//!
//! Plain data; the operations themselves are [`crate::Engine`]'s.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::history::HistoryImage;
use crate::id::TxId;
use crate::manifest::Format;

/// How long `begin` waits for a base another transaction holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wait {
    /// Fail at once with [`crate::Error::Busy`].
    #[default]
    No,
    /// Wait until it is free.
    Forever,
    /// Wait at most this long, then fail with [`crate::Error::WaitTimedOut`].
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
    /// Keep the pre-image files under names of the transaction's own until pruned, so that
    /// it stays revertible whatever later commits do (see [`crate::kept`]).
    pub keep: bool,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Index of the image being worked on.
    pub image: usize,
    /// That image's base.
    pub base: std::sync::Arc<std::path::Path>,
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
    pub id: TxId,
    /// Per base, the bytes changed.
    pub images: Vec<HistoryImage>,
    /// The pre-image files kept beside their bases as spares (none with `--no-undo` or
    /// `--no-spare`): disk space the user may want to know about.
    pub spares: Vec<Spare>,
}

/// What `revert` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevertReport {
    /// The revert's own transaction id (itself revertible).
    pub id: TxId,
    /// The transaction it took back.
    pub reverted: TxId,
    /// Per base, the bytes put back.
    pub images: Vec<HistoryImage>,
    /// The revert's own pre-images, kept as spares.
    pub spares: Vec<Spare>,
}

/// A pre-image file a commit kept as its base's spare, for the next commit to overwrite.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Spare {
    /// Where it is: `.NAME.imgtx.spare` beside the base.
    pub path: PathBuf,
    /// Its length in bytes.
    pub bytes: u64,
    /// Kept under a name of the transaction's own until pruned (`--keep`), rather than as
    /// the spare the next commit reuses.
    pub pinned: bool,
}

/// What `recover` should do.
#[derive(Debug, Clone, Default)]
pub struct RecoverOptions {
    /// Bases to look beside (absolute); with `scan` also empty, every registered
    /// transaction.
    pub paths: Vec<PathBuf>,
    /// Directories to search (recursively) for journals beside images, for when the state
    /// directory was lost or never knew the transactions.
    pub scan: Vec<PathBuf>,
    /// Undo committed-but-unfinished commits instead of finishing them.
    pub undo: bool,
    /// Only report what would be done.
    pub dry_run: bool,
}

/// What recovery did to one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryAction {
    /// A commit that never reached its commit point: its journals and pre-images were
    /// removed; the bases were never written and the transaction is still open.
    DiscardedUncommitted,
    /// A commit whose journal holds no valid commit record (damaged or cut off) had written
    /// to its bases: the pre-images were put back, the journals and pre-images removed, and
    /// the transaction is still open.
    RestoredUncommitted,
    /// An interrupted commit was finished: the bases hold the new content.
    RecoveredForward,
    /// An interrupted commit was undone: the bases hold the old content.
    RecoveredBack,
    /// A commit was over but its cleanup was interrupted; the cleanup was finished.
    FinishedCleanup,
    /// An interrupted begin was undone.
    CleanedBegin,
    /// An interrupted rollback was finished.
    FinishedRollback,
    /// A claim whose transaction no longer exists was removed.
    RemovedOrphanClaim,
    /// An open transaction of this state directory was finished or undone elsewhere
    /// (another state directory or host recovered it from the journals beside its bases):
    /// its manifest here was removed.
    EndedElsewhere,
    /// A pre-image file whose journal was gone was removed: its base held the old content
    /// it kept, so nothing of the commit had reached the base.
    RemovedStrayPreImages,
    /// An open transaction of a host of the sanlock lockspace that sanlock says is dead was
    /// taken over and rolled back: its overlays and claims were removed.
    RolledBackForDeadHost,
    /// A revert that died before it wrote anything: its claims were released; the
    /// transaction it was reverting can still be reverted.
    ReleasedRevert,
}

/// One thing recovery did (or would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoverAction {
    /// The transaction, as its files name it.
    pub tx: String,
    /// What was done.
    pub action: RecoveryAction,
    /// The bases involved.
    pub bases: Vec<PathBuf>,
}

/// A transaction recovery could not bring to an end, and why.
#[derive(Debug)]
pub struct RecoverFailure {
    /// The transaction, as its files name it.
    pub tx: String,
    /// The bases involved, as far as known.
    pub bases: Vec<PathBuf>,
    /// What stopped it; nothing of this transaction was changed after the failure.
    pub error: crate::Error,
}

/// Everything recovery did, and what it could not do.
#[derive(Debug, Default)]
pub struct RecoverReport {
    /// True when nothing was changed because of `dry_run`.
    pub dry_run: bool,
    /// The actions, in order.
    pub actions: Vec<RecoverAction>,
    /// The transactions that remain interrupted, each with its reason. One failure never
    /// stops recovery of the others.
    pub failures: Vec<RecoverFailure>,
    /// The signal that stopped recovery between two transactions, if one did: those not
    /// reached yet are neither in `actions` nor in `failures`.
    pub stopped: Option<i32>,
}

/// What `recover --abandon` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbandonReport {
    /// The transaction.
    pub id: TxId,
    /// Its bases, none of which was written.
    pub bases: Vec<PathBuf>,
    /// The files it left for forensics: journals and pre-image files renamed aside, and
    /// overlays where they were.
    pub kept: Vec<PathBuf>,
}
