//! A crash-safe append-only log of typed records: the write-ahead log under imgtx transactions.
//!
//! [`Journal`] creates a log (exclusively, mode 0600, header and directory entry synced),
//! appends records of one serde type `T` ([`Journal::append`], postcard-encoded, framed with a
//! length, sequence number and CRC-32 bound to a random per-log nonce) and makes them durable
//! ([`Journal::sync`]). [`read`] replays a log without touching it; [`Journal::open`] replays it
//! for appending and truncates a torn tail. What counts as a torn tail and what as corruption is
//! one explicit policy, [`RecoveryMode`], described in `docs/journal-format.md`. For readers
//! that must say what is wrong rather than where replay stops, [`salvage`] lists every frame
//! that validates, past any damage, and [`header`] reads the identity alone.
//!
//! It is not a database: no compaction, no concurrent writers (the caller locks), no random
//! access, and records are held in memory on replay.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let path = &dir.path().join("tx.journal");
//! let fs = storage::OsFs;
//! let mut j = journal::Journal::<_, String>::create(&fs, path, b"base-id")?;
//! j.append(&"pre-image".to_string())?;
//! j.sync()?;
//! let replay = journal::read::<_, String>(&fs, path)?;
//! assert_eq!(replay.records, ["pre-image"]);
//! assert_eq!(replay.tail, journal::Tail::Clean);
//! # Ok::<(), journal::Error>(())
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod error;
pub mod format;
#[cfg(feature = "fuzz")]
pub mod fuzz;
mod replay;
mod writer;

use std::path::Path;

use serde::de::DeserializeOwned;
use storage::{File, Fs};

pub use error::{DecodeError, Error, Result};
pub use replay::{RecoveryMode, Salvage, Salvaged};
pub use writer::Journal;

use error::io_err;

/// What replay found at the end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The log ended exactly after its last valid record.
    Clean,
    /// An incomplete, zero-filled or checksum-failing tail was found: an append that never
    /// completed. [`read`] only reports it; [`Journal::open`] truncates it and syncs.
    Torn {
        /// Offset just past the last valid record.
        valid_len: u64,
        /// Bytes after `valid_len` that were (or would be) discarded.
        discarded: u64,
    },
}

/// The result of replaying a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay<T> {
    /// The identity blob from the header.
    pub identity: Vec<u8>,
    /// Every valid record, in order; `records[i]` has sequence number `i`.
    pub records: Vec<T>,
    /// How the log ended.
    pub tail: Tail,
}

/// Replays the journal at `path` without modifying anything, with
/// [`RecoveryMode::TolerateTornTail`]: a torn tail is reported in [`Replay::tail`], not
/// truncated.
///
/// # Errors
/// `Io` (including `NotFound`), `HeaderIncomplete`, `BadHeader`, `UnsupportedVersion`, and
/// `Corrupt` for damage that is not a torn tail.
pub fn read<S: Fs, T: DeserializeOwned>(fs: &S, path: &Path) -> Result<Replay<T>> {
    read_with(fs, path, RecoveryMode::default())
}

/// [`read`] with an explicit recovery mode.
///
/// # Errors
/// As [`read`]; which damage is `Corrupt` depends on `mode`.
pub fn read_with<S: Fs, T: DeserializeOwned>(
    fs: &S,
    path: &Path,
    mode: RecoveryMode,
) -> Result<Replay<T>> {
    let file = fs.open(path, false).map_err(io_err(path))?;
    let s = replay::scan::<S::File, T>(&file, path, mode)?;
    Ok(Replay {
        identity: s.header.identity,
        records: s.records,
        tail: s.tail,
    })
}

/// Reads and validates only the header of the journal at `path`: its nonce and identity, to
/// decide what its records are before replaying them.
///
/// # Errors
/// `Io` (including `NotFound`), `HeaderIncomplete`, `BadHeader`, `UnsupportedVersion`.
pub fn header<S: Fs>(fs: &S, path: &Path) -> Result<format::Header> {
    let file = fs.open(path, false).map_err(io_err(path))?;
    let len = file.len().map_err(io_err(path))?;
    replay::read_header(&file, path, len)
}

/// Forensic scan of the journal at `path`, without modifying anything: every record frame
/// whose checksum validates with the log's nonce, in file order, whatever its sequence
/// number, and the stretches between them where no frame validates.
///
/// [`read`] stops at the first damage and decides, by [`RecoveryMode`], whether it is a torn
/// tail or corruption; this walks on, so that a caller checking the records against each
/// other (a hash chain) can say what is wrong rather than only where replay stopped. After
/// damage it tries every later multiple of 8 as a frame start. The checksum work is bounded
/// (about three times the file's length); once that is spent, the rest of the file is
/// reported as one damaged stretch.
///
/// # Errors
/// `Io` (including `NotFound`) and the header errors; damage after the header is never an
/// error here.
pub fn salvage<S: Fs>(fs: &S, path: &Path) -> Result<Salvage> {
    let file = fs.open(path, false).map_err(io_err(path))?;
    replay::salvage_file(&file, path)
}

/// Unlinks the journal at `path` and syncs its parent directory, so the removal (often a
/// transaction's commit or rollback point) survives a crash.
///
/// # Errors
/// `Io`, including `NotFound`. If the directory sync fails the removal may not be durable.
pub fn remove<S: Fs>(fs: &S, path: &Path) -> Result<()> {
    fs.remove_file(path).map_err(io_err(path))?;
    let dir = parent_dir(path);
    // Barrier: the unlink is durable only once the directory is synced (crash-safety rule 2).
    fs.sync_dir(dir).map_err(io_err(dir))
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
