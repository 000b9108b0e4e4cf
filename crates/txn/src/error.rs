//! The one error type of the engine, and the class each error belongs to.
//!
//! Messages say what happened, never which command or flag to use next: the engine is a
//! library, and the front end (the `imgtx` command) adds its own advice. The cause of an
//! error travels as its `#[source]`, never flattened into the message.

use std::io;
use std::path::PathBuf;

use crate::history::entry::HistoryEntry;
use crate::id::TxId;
use crate::manifest::Holder;

/// Everything that can go wrong in a transaction operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The name or id prefix the user gave fits more than one transaction (open ones, or
    /// for a revert revertible ones).
    #[error("{given:?} names more than one transaction: {}", ids_text(matches))]
    Ambiguous {
        /// What the user gave.
        given: String,
        /// The transactions it fits.
        matches: Vec<TxId>,
    },
    /// The base starts like a qcow2 image but is not one imgtx can use as qcow2, so its
    /// format cannot be decided safely.
    #[error("base {} starts like a qcow2 image but does not open as one", path.display())]
    AmbiguousFormat {
        /// The base.
        path: PathBuf,
        /// Why it does not open as qcow2.
        #[source]
        source: qcow::Error,
    },
    /// The base was modified since the transaction began.
    #[error("base {} changed since transaction {tx} began: {what}", path.display())]
    BaseChanged {
        /// The base.
        path: PathBuf,
        /// The transaction.
        tx: TxId,
        /// What differs.
        what: String,
    },
    /// The base is claimed by another open transaction.
    #[error("base {} is held by transaction {holder}", path.display())]
    Busy {
        /// The base as the user named it.
        path: PathBuf,
        /// The transaction holding it (boxed: it is large, and rare).
        holder: Box<Holder>,
    },
    /// A transaction's claim was made by another host of the lockspace, which sanlock says
    /// may still be working: the transaction is that host's.
    #[error("base {} is claimed by transaction {tx} of sanlock host {host_id} ({host}), which sanlock does not report dead", path.display())]
    HostAlive {
        /// The base.
        path: PathBuf,
        /// The transaction.
        tx: TxId,
        /// The host's id in the lockspace.
        host_id: u64,
        /// Its host name, as the claim says.
        host: String,
    },
    /// A transaction's claim was made by a host of the lockspace that sanlock says is dead:
    /// only recovery may take it over.
    #[error("transaction {tx} belongs to sanlock host {host_id} ({host}), which is dead")]
    HostDead {
        /// The transaction.
        tx: TxId,
        /// The dead host's id in the lockspace.
        host_id: u64,
        /// Its host name, as the claim says.
        host: String,
    },
    /// The lease manager could not be used: imgtx does not work unprotected.
    #[error("sanlock lockspace {lockspace:?} cannot be used")]
    Lease {
        /// The lockspace.
        lockspace: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A process of another host (or another process of this one) holds the lease of a base.
    #[error("lease {} is held by {}", path.display(), lease_holder_text(*host_id, lockspace))]
    LeaseBusy {
        /// The lease file.
        path: PathBuf,
        /// The holder's host id, when sanlock says.
        host_id: Option<u64>,
        /// The lockspace.
        lockspace: String,
    },
    /// A commit failed after its commit point; recovery finishes it.
    #[error("commit of transaction {tx} stopped after its commit point")]
    CommitInterrupted {
        /// The transaction.
        tx: TxId,
        /// What stopped it.
        #[source]
        source: Box<Error>,
    },
    /// A file imgtx wrote is damaged.
    #[error("{} is damaged: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The transaction is no longer open: it ended, as its history entry says.
    #[error(
        "transaction {} is no longer open: it was {} at {} by {}@{}",
        entry.id,
        entry.outcome.words(),
        entry.ended,
        entry.user,
        entry.host
    )]
    Finished {
        /// Its entry in the history (boxed: it is large, and rare).
        entry: Box<HistoryEntry>,
    },
    /// A qemu process (or anything speaking qemu's lock protocol) uses the image.
    #[error("{what} {} is in use by a qemu process{}", path.display(), pids_text(pids))]
    InUse {
        /// The image file.
        path: PathBuf,
        /// Which image it is to the transaction: "base" or "overlay".
        what: &'static str,
        /// The processes seen holding it open, when they can be found.
        pids: Vec<u32>,
    },
    /// A transaction was interrupted during begin, rollback or cleanup and must be
    /// recovered first.
    #[error("transaction {tx} was interrupted while {doing}")]
    Interrupted {
        /// The transaction.
        tx: TxId,
        /// What it was doing ("beginning", "rolling back").
        doing: &'static str,
    },
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// A base is not acceptable for a transaction.
    #[error("base {} cannot be used: {reason}", path.display())]
    InvalidBase {
        /// The base.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The history cannot take the outcome of a commit that has not reached its commit
    /// point yet: the commit is refused, so that no commit goes unrecorded.
    #[error("the history {} cannot record this commit", path.display())]
    HistoryUnusable {
        /// The history, or the file that was to reserve its entry.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A file operation failed.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done, as a verb phrase ("read the manifest").
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// A journal could not be read or written.
    #[error("journal {} could not be used", path.display())]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What the journal reported.
        #[source]
        source: journal::Error,
    },
    /// Another imgtx process works on this transaction right now.
    #[error("transaction {tx} is being worked on by another imgtx process")]
    Locked {
        /// The transaction.
        tx: TxId,
    },
    /// A manifest in the state directory is not one.
    #[error("{} is not a transaction manifest", path.display())]
    ManifestUnreadable {
        /// The manifest file.
        path: PathBuf,
        /// What the JSON parser reported.
        #[source]
        source: serde_json::Error,
    },
    /// No open transaction has this id (or name), nor had the history one.
    #[error("no open transaction {tx}")]
    NotFound {
        /// The id asked for, as given.
        tx: String,
        /// The id of a transaction, open or finished, or the name of an open one, that
        /// differs from it by a typo.
        closest: Option<String>,
    },
    /// An overlay's qcow2 structure cannot be read.
    #[error("overlay {} of transaction {tx} is not usable: {what}", path.display())]
    OverlayDamaged {
        /// The overlay.
        path: PathBuf,
        /// The transaction.
        tx: TxId,
        /// What could not be read ("its cluster map cannot be read").
        what: &'static str,
        /// What the qcow2 reader reported (boxed: it is large, and rare).
        #[source]
        source: Box<qcow::Error>,
    },
    /// An overlay is missing or not the one `begin` created.
    #[error("overlay {} of transaction {tx} is not usable: {reason}", path.display())]
    OverlayInvalid {
        /// The overlay.
        path: PathBuf,
        /// The transaction.
        tx: TxId,
        /// Why it was refused.
        reason: String,
    },
    /// A qcow2 image could not be read or is not acceptable.
    #[error("image {} is not a usable qcow2 image", path.display())]
    Qcow {
        /// The image file.
        path: PathBuf,
        /// What the qcow2 reader reported.
        #[source]
        source: qcow::Error,
    },
    /// `qemu-img commit` ran and failed.
    #[error("qemu-img commit of {} into {} failed ({status}): {stderr}", overlay.display(), base.display())]
    QemuImg {
        /// The overlay.
        overlay: PathBuf,
        /// The base.
        base: PathBuf,
        /// How it exited.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// `qemu-img commit` could not be run at all.
    #[error("could not {action} qemu-img to commit {} into {}", overlay.display(), base.display())]
    QemuImgRun {
        /// The overlay.
        overlay: PathBuf,
        /// The base.
        base: PathBuf,
        /// What failed ("start", "wait for").
        action: &'static str,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// A base has an interrupted commit that must be finished first.
    #[error("base {} has an interrupted commit (transaction {tx})", path.display())]
    RecoveryNeeded {
        /// The base.
        path: PathBuf,
        /// The interrupted transaction.
        tx: TxId,
    },
    /// A writer of an interrupted commit (its `qemu-img commit` child) still has the base
    /// open: nothing may touch the base until it is gone.
    #[error("base {} is still open for writing by the interrupted commit's qemu-img{}", path.display(), pids_text(pids))]
    WriterRunning {
        /// The base.
        path: PathBuf,
        /// The processes seen holding it open.
        pids: Vec<u32>,
    },
    /// Recovery cannot proceed in any safe direction.
    #[error("cannot recover transaction {tx}: {reason}; nothing was changed")]
    Unrecoverable {
        /// The transaction.
        tx: TxId,
        /// Why.
        reason: String,
    },
    /// The user asked to stop (a signal) at a point where stopping changes nothing: the
    /// operation undid what it had begun and left the transaction as it was.
    #[error("stopped by signal {signal}; nothing was changed")]
    Stopped {
        /// The signal's number.
        signal: i32,
    },
    /// The state directory, or something in it, could be changed by someone other than the
    /// user running imgtx.
    #[error("state directory {} is not safe to use: {reason}", path.display())]
    UntrustedStateDir {
        /// The directory or file refused.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A revert found a base no longer holding what the transaction left.
    #[error("cannot revert transaction {tx}: base {} {reason}", path.display())]
    RevertConflict {
        /// The transaction to revert.
        tx: TxId,
        /// The base.
        path: PathBuf,
        /// What is different.
        reason: String,
        /// The later transaction that changed it, when one is known: it must be reverted
        /// first.
        later: Option<TxId>,
    },
    /// The directory a base is in is not there (moved away, or a mount not up yet): what
    /// lies beside the base cannot be looked at.
    #[error(
        "cannot look beside base {}: its directory {} is not there",
        base.display(),
        dir.display()
    )]
    DirGone {
        /// The base.
        base: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// A revert named, by a name or an id prefix, no transaction whose pre-images are kept.
    #[error("no revertible transaction {given}")]
    NotRevertible {
        /// The name or prefix, as given.
        given: String,
    },
    /// A revert of a transaction whose pre-images are not kept.
    #[error("cannot revert transaction {tx}: {reason}")]
    NotKept {
        /// The transaction.
        tx: TxId,
        /// Why they are not.
        reason: String,
    },
    /// Waiting for a base timed out.
    #[error("gave up waiting for base {} held by transaction {holder}", path.display())]
    WaitTimedOut {
        /// The base.
        path: PathBuf,
        /// The transaction still holding it (boxed: it is large, and rare).
        holder: Box<Holder>,
    },
}

/// What kind of failure an [`Error`] is, so a front end can pick an exit status without
/// matching on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Another transaction or process holds what was asked for.
    Busy,
    /// The world changed under the transaction (base modified since begin).
    Conflict,
    /// An interrupted operation must be recovered first.
    RecoveryNeeded,
    /// The request or an input file is not acceptable.
    Invalid,
    /// No such transaction.
    NotFound,
    /// The operating system or an external tool failed.
    Io,
    /// A file imgtx relies on is damaged.
    Corrupt,
    /// The user asked to stop, and nothing was changed.
    Stopped,
}

impl Error {
    /// The class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Busy { .. }
            | Self::WriterRunning { .. }
            | Self::WaitTimedOut { .. }
            | Self::InUse { .. }
            | Self::HostAlive { .. }
            | Self::LeaseBusy { .. }
            | Self::Locked { .. } => ErrorClass::Busy,
            Self::BaseChanged { .. } | Self::RevertConflict { .. } => ErrorClass::Conflict,
            Self::RecoveryNeeded { .. }
            | Self::Interrupted { .. }
            | Self::HostDead { .. }
            | Self::CommitInterrupted { .. } => ErrorClass::RecoveryNeeded,
            Self::NotFound { .. }
            | Self::NotKept { .. }
            | Self::NotRevertible { .. }
            | Self::Finished { .. } => ErrorClass::NotFound,
            Self::Stopped { .. } => ErrorClass::Stopped,
            Self::Ambiguous { .. }
            | Self::AmbiguousFormat { .. }
            | Self::InvalidBase { .. }
            | Self::Invalid(_)
            | Self::OverlayInvalid { .. }
            | Self::OverlayDamaged { .. }
            | Self::Qcow { .. }
            | Self::UntrustedStateDir { .. } => ErrorClass::Invalid,
            Self::Io { .. }
            | Self::DirGone { .. }
            | Self::Lease { .. }
            | Self::QemuImg { .. }
            | Self::QemuImgRun { .. } => ErrorClass::Io,
            Self::Journal { .. }
            | Self::HistoryUnusable { .. }
            | Self::Corrupt { .. }
            | Self::ManifestUnreadable { .. }
            | Self::Unrecoverable { .. } => ErrorClass::Corrupt,
        }
    }

    /// True when this is the storage itself failing (a read, write or sync refused by the
    /// operating system), not something about one transaction's files.
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, Self::Io { .. })
            || matches!(
                self,
                Self::Journal {
                    source: journal::Error::Io { .. } | journal::Error::Poisoned,
                    ..
                }
            )
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn journal(path: impl Into<PathBuf>) -> impl FnOnce(journal::Error) -> Self {
        let path = path.into();
        move |source| Self::Journal { path, source }
    }

    pub(crate) fn qcow(path: impl Into<PathBuf>) -> impl FnOnce(qcow::Error) -> Self {
        let path = path.into();
        move |source| Self::Qcow { path, source }
    }
}

/// `e` and its sources, joined by ": ", for log lines.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

/// "sanlock host 2 (lockspace L)" for messages.
fn lease_holder_text(host_id: Option<u64>, lockspace: &str) -> String {
    match host_id {
        Some(h) => format!("sanlock host {h} of lockspace {lockspace:?}"),
        None => format!("another process in sanlock lockspace {lockspace:?}"),
    }
}

/// " (pid 1, 2)" for messages, or nothing when no process is known.
fn pids_text(pids: &[u32]) -> String {
    if pids.is_empty() {
        return String::new();
    }
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    format!(" (pid {})", list.join(", "))
}

/// Transaction ids as a comma-separated list.
fn ids_text(ids: &[TxId]) -> String {
    let list: Vec<&str> = ids.iter().map(TxId::as_str).collect();
    list.join(", ")
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
