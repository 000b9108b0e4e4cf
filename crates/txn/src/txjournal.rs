//! The journal of one image of a transaction (`.NAME.ID.imgtx.journal` beside its base):
//! creating it, appending [`Record`]s durably, and reading it back under the trust rule.
//!
//! The log format itself (framing, checksums, torn tails) is the `journal` crate's; what the
//! records mean is [`crate::record`]'s.

use std::path::{Path, PathBuf};

use storage::Fs;

use crate::error::{Error, Result};
use crate::id::TxId;
use crate::record::Record;

type Log<S> = journal::Journal<<S as Fs>::File, Record>;

/// An open journal of one image, which knows its path for every error it reports.
pub(crate) struct TxJournal<S: Fs> {
    path: PathBuf,
    log: Log<S>,
}

/// The identity bound into the header of image `index`'s journal of transaction `tx`, so
/// a journal of another transaction or image never validates as this one.
fn identity(tx: &TxId, index: usize) -> Vec<u8> {
    format!("imgtx {tx} image {index}").into_bytes()
}

impl<S: Fs> TxJournal<S> {
    /// Creates the journal of image `index` at `path`, exclusively; the file and its
    /// directory are synced before this returns.
    pub(crate) fn create(fs: &S, path: &Path, tx: &TxId, index: usize) -> Result<Self> {
        let log = Log::<S>::create(fs, path, &identity(tx, index)).map_err(Error::journal(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            log,
        })
    }

    /// Opens an existing journal to append to it.
    pub(crate) fn open(fs: &S, path: &Path) -> Result<Self> {
        let (log, _) = Log::<S>::open(fs, path).map_err(Error::journal(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            log,
        })
    }

    /// Appends `record` without making it durable: a later [`TxJournal::sync`] of this
    /// journal does.
    pub(crate) fn append(&mut self, record: &Record) -> Result<()> {
        self.log
            .append(record)
            .map(drop)
            .map_err(Error::journal(&self.path))
    }

    /// Makes everything appended so far durable.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.log.sync().map_err(Error::journal(&self.path))
    }

    /// Appends `record` and makes it durable.
    pub(crate) fn append_sync(&mut self, record: &Record) -> Result<()> {
        self.append(record)?;
        self.sync()
    }
}

/// Appends `record` durably to the existing journal at `path`.
pub(crate) fn append_to<S: Fs>(fs: &S, path: &Path, record: &Record) -> Result<()> {
    TxJournal::<S>::open(fs, path)?.append_sync(record)
}

/// Removes the journal at `path` durably, if it exists.
pub(crate) fn remove<S: Fs>(fs: &S, path: &Path) -> Result<()> {
    if crate::files::exists(fs, path)? {
        journal::remove(fs, path).map_err(Error::journal(path))?;
    }
    Ok(())
}

/// Longest journal that can hold a header but no intent record: every intent names two
/// absolute paths and a plan, so it alone is longer than this.
const EMPTY_JOURNAL_MAX: u64 = 128;

/// The records of the journal at `path`, read as user `uid`. A journal whose creation was
/// interrupted (no complete header, or a header torn before its first sync and no room for
/// any record after it) never held a record, so it reads as empty; any other damage is
/// refused.
///
/// A journal is obeyed only if nobody but its creator could have written it (see
/// [`crate::trust`]).
pub(crate) fn read_records<S: Fs>(fs: &S, path: &Path, uid: u32) -> Result<Vec<Record>> {
    if let Some(why) = crate::trust::untrusted_path(fs, path, uid)? {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("refused: {why}"),
        });
    }
    match journal::read::<S, Record>(fs, path) {
        Ok(replay) => Ok(replay.records),
        Err(journal::Error::HeaderIncomplete { .. }) => Ok(Vec::new()),
        Err(e @ journal::Error::BadHeader { .. }) => {
            let len = fs
                .metadata(path)
                .map_err(Error::io("stat", path))?
                .map_or(0, |m| m.len);
            if len <= EMPTY_JOURNAL_MAX {
                Ok(Vec::new())
            } else {
                Err(Error::journal(path)(e))
            }
        }
        Err(e) => Err(Error::journal(path)(e)),
    }
}

/// Ids of the transactions with a journal beside `base`, sorted.
pub(crate) fn beside<S: Fs>(fs: &S, base: &Path) -> Result<Vec<TxId>> {
    let dir = crate::layout::dir_of(base)?;
    let name = crate::layout::base_name(base)?;
    let entries = fs.read_dir(dir).map_err(Error::io("list", dir))?;
    let mut ids: Vec<TxId> = entries
        .iter()
        .filter_map(|n| crate::layout::journal_id(name, n.to_str()?))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Ids of the transactions with a pre-image file beside `base` but no journal: a journal
/// removed by hand after an interrupted commit (imgtx removes pre-images first), sorted.
pub(crate) fn strays_beside<S: Fs>(fs: &S, base: &Path) -> Result<Vec<TxId>> {
    let dir = crate::layout::dir_of(base)?;
    let name = crate::layout::base_name(base)?;
    let mut ids = Vec::new();
    for entry in fs.read_dir(dir).map_err(Error::io("list", dir))? {
        if let Some((of, tx)) = entry.to_str().and_then(crate::layout::parse_undo_name) {
            if of == name && !crate::files::exists(fs, &crate::layout::journal(base, &tx)?)? {
                ids.push(tx);
            }
        }
    }
    ids.sort();
    Ok(ids)
}
