//! The history log: one entry per finished transaction, in a journal in the state directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storage::Fs;

use crate::error::{Error, Result};

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
    pub id: String,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// Entries, oldest first.
    pub entries: Vec<HistoryEntry>,
    /// Bytes of a torn last entry that were ignored, if any.
    pub torn_bytes: Option<u64>,
}

/// Appends `entry` durably.
pub fn append<S: Fs>(fs: &S, path: &Path, entry: &HistoryEntry) -> Result<()> {
    let mut j = if fs
        .metadata(path)
        .map_err(Error::io("stat", path))?
        .is_some()
    {
        journal::Journal::<S::File, HistoryEntry>::open(fs, path)
            .map_err(Error::journal(path))?
            .0
    } else {
        journal::Journal::create(fs, path, IDENTITY).map_err(Error::journal(path))?
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
    let replay = journal::read::<S, HistoryEntry>(fs, path).map_err(Error::journal(path))?;
    let torn_bytes = match replay.tail {
        journal::Tail::Clean => None,
        journal::Tail::Torn { discarded, .. } => Some(discarded),
    };
    Ok(History {
        entries: replay.records,
        torn_bytes,
    })
}
