//! The history log: one entry per finished transaction, in a journal in the state directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storage::Fs;

use crate::error::{Error, Result};
use crate::id::TxId;

const IDENTITY: &[u8] = b"imgtx history v1";

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `commit` finished.
    Committed,
    /// `rollback` finished (or `run`'s command failed).
    RolledBack,
    /// `recover` finished an interrupted commit.
    RecoveredForward,
    /// `recover` undid an interrupted commit.
    RecoveredBack,
    /// `recover --abandon` ended it without writing any image; what it left is kept aside.
    Abandoned,
    /// `revert` took back a committed transaction (named by the entry's command), as a
    /// transaction of its own: this one.
    Reverted,
}

impl Outcome {
    /// Whether a transaction that ended this way changed its images.
    pub fn changed_images(self) -> bool {
        matches!(
            self,
            Self::Committed | Self::RecoveredForward | Self::Reverted
        )
    }

    /// The name `log` and `--json` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::RolledBack => "rolled_back",
            Self::RecoveredForward => "recovered_forward",
            Self::RecoveredBack => "recovered_back",
            Self::Abandoned => "abandoned",
            Self::Reverted => "reverted",
        }
    }
}

/// One image in a history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryImage {
    /// The base path.
    pub base: PathBuf,
    /// Bytes the transaction changed in it (0 when rolled back).
    pub changed_bytes: u64,
}

/// One finished transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The transaction id.
    pub id: TxId,
    /// Its name, if any.
    pub name: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Who ended it.
    pub user: String,
    /// Their uid.
    pub uid: u32,
    /// Where.
    pub host: String,
    /// When it began (RFC 3339 UTC).
    pub started: String,
    /// When it ended (RFC 3339 UTC).
    pub ended: String,
    /// Its images.
    pub images: Vec<HistoryImage>,
    /// The command line of `imgtx run`.
    pub command: Option<Vec<String>>,
}

/// The history as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Entries, oldest first.
    pub entries: Vec<HistoryEntry>,
    /// Bytes of a torn last entry that were ignored, if any.
    pub torn_bytes: Option<u64>,
}

/// Appends `entry` durably. The caller holds the history lock.
pub fn append<S: Fs>(fs: &S, path: &Path, entry: &HistoryEntry) -> Result<()> {
    type J<F> = journal::Journal<F, HistoryEntry>;
    let mut j = match J::<S::File>::open_or_create(fs, path, IDENTITY) {
        Ok((j, _)) => j,
        Err(e) if never_written(fs, path, &e) => {
            // Its creation was interrupted, so it never held an entry; under the history
            // lock nobody else is creating it now.
            crate::files::remove_if_exists(fs, path)?;
            J::<S::File>::create(fs, path, IDENTITY).map_err(Error::journal(path))?
        }
        Err(e) => return Err(Error::journal(path)(e)),
    };
    j.append(entry).map_err(Error::journal(path))?;
    // Barrier: the entry is durable before the operation reports success.
    j.sync().map_err(Error::journal(path))
}

/// Reads the whole history; a torn tail is reported, not an error.
pub fn read<S: Fs>(fs: &S, path: &Path) -> Result<History> {
    if fs
        .metadata(path)
        .map_err(Error::io("stat", path))?
        .is_none()
    {
        return Ok(History {
            entries: Vec::new(),
            torn_bytes: None,
        });
    }
    let replay = match journal::read::<S, HistoryEntry>(fs, path) {
        Ok(r) => r,
        Err(e) if never_written(fs, path, &e) => {
            return Ok(History {
                entries: Vec::new(),
                torn_bytes: None,
            })
        }
        Err(e) => return Err(Error::journal(path)(e)),
    };
    let torn_bytes = match replay.tail {
        journal::Tail::Clean => None,
        journal::Tail::Torn { discarded, .. } => Some(discarded),
    };
    Ok(History {
        entries: replay.records,
        torn_bytes,
    })
}

/// Longest history file that has room for a header but no entry.
const EMPTY_HISTORY_MAX: u64 = 64;

/// True when `e` says the history's creation was interrupted before its header was durable:
/// the header is incomplete, or damaged with no room for any entry after it.
fn never_written<S: Fs>(fs: &S, path: &Path, e: &journal::Error) -> bool {
    match e {
        journal::Error::HeaderIncomplete { .. } => true,
        journal::Error::BadHeader { .. } => fs
            .metadata(path)
            .ok()
            .flatten()
            .is_some_and(|m| m.len <= EMPTY_HISTORY_MAX),
        _ => false,
    }
}
