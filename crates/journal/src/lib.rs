//! A crash-safe append-only log of typed records. (Stub: the API contract; issue 2 fills it in.)
#![allow(missing_docs, clippy::needless_pass_by_value)]

use std::marker::PhantomData;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use storage::{File, Fs};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("journal I/O failed at {path}")]
    Io { path: String, #[source] source: std::io::Error },
    #[error("journal is corrupt at offset {offset:#x}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("journal handle is poisoned by an earlier failed write or sync")]
    Poisoned,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What replay found at the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The log ended exactly after its last valid record.
    Clean,
    /// An incomplete or checksum-failing tail was found (and, when opened for append, truncated).
    Torn { valid_len: u64, discarded: u64 },
}

/// The result of replaying a journal.
#[derive(Debug)]
pub struct Replay<T> {
    pub identity: Vec<u8>,
    pub records: Vec<T>,
    pub tail: Tail,
}

pub struct Journal<F: File, T> {
    file: F,
    _t: PhantomData<fn(T)>,
}

impl<F: File, T: Serialize + DeserializeOwned> Journal<F, T> {
    /// Creates a new journal (O_EXCL, 0600), writes and syncs its header, syncs the parent dir.
    pub fn create<S: Fs<File = F>>(fs: &S, path: &Path, identity: &[u8]) -> Result<Self> {
        let _ = (fs, path, identity);
        todo!()
    }
    /// Opens for append: replays, truncates a torn tail (and syncs), returns the records.
    pub fn open<S: Fs<File = F>>(fs: &S, path: &Path) -> Result<(Self, Replay<T>)> {
        let _ = (fs, path);
        todo!()
    }
    pub fn append(&mut self, record: &T) -> Result<u64> {
        let _ = (record, &self.file);
        todo!()
    }
    pub fn sync(&mut self) -> Result<()> {
        todo!()
    }
}

/// Replays without modifying anything (a torn tail is reported, not truncated).
pub fn read<S: Fs, T: DeserializeOwned>(fs: &S, path: &Path) -> Result<Replay<T>> {
    let _ = (fs, path);
    todo!()
}

/// Unlinks a journal and syncs its parent directory.
pub fn remove<S: Fs>(fs: &S, path: &Path) -> Result<()> {
    let _ = (fs, path);
    todo!()
}
