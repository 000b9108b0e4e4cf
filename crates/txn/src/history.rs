//! The history log: one entry per finished transaction, in a journal in the state directory
//! (`history`), each record linked to the one before it by a SHA-256 hash chain.
//!
//! Two formats are found on disk, told apart by the journal's identity:
//!
//! * format 1 (`imgtx history v1`): bare entries, written by imgtx before the chain. Still
//!   read; the next append converts it (`aside::convert_v1`): the file is kept aside unchanged
//!   and a chained history begins, its genesis naming the old file and its entries carried
//!   over.
//! * format 2 (`imgtx history v2`): every record is a [`chain::Link`].
//!
//! An append never cuts or rewrites a byte that does not verify: the journal is opened with
//! [`journal::RecoveryMode::AbsoluteConsistency`], so a damaged tail is refused instead of
//! truncated, and then the whole file is kept aside (`aside::keep_damaged`) and the chain
//! continues in a new file after its last good record. `verify` checks the chain. The format
//! and its reasons are in docs/journal-format.md, "The history chain".
//!
//! This module decides what an append does; below it, `entry` is what one entry says,
//! `chain` a link and its hash, `file` the file's formats (reading, appending one link),
//! `aside` converting and keeping files aside, `verify` the check and `verdict` its report.

mod aside;
mod chain;
pub(crate) mod entry;
mod file;
mod verdict;
mod verify;

use std::path::Path;

use storage::Fs;

use crate::error::{Error, Result};

pub use chain::{CarriedOver, ChainHash, KeptAside, ParseChainHashError};
pub use entry::{HistoryEntry, HistoryImage, Outcome, Takeover};
pub use file::{read, Aside, History};
pub use verdict::{AnchorCheck, ChainFormat, Problem, ProblemKind, Verification};
pub(crate) use verify::verify;

use chain::Item;
use file::{
    first_broken_link, identity, link_to, not_a_history, ChainJournal, IDENTITY_V1, IDENTITY_V2,
};

/// Appends `entry` durably, linked to the last record of the history; `now` (RFC 3339 UTC)
/// dates whatever this append has to keep aside first. The caller holds the history lock.
/// Returns the new head hash.
///
/// A format-1 history is converted first, and a history whose file ends in bytes that do
/// not verify is kept aside first (see the module docs); each of those steps ends with a
/// history that the next step opens, so a crash between them only repeats a step.
///
/// # Errors
/// `Journal` when the history is damaged anywhere but at its tail (nothing is changed
/// then), `Corrupt` when the file is not an imgtx history, `Io`.
pub fn append<S: Fs>(fs: &S, path: &Path, entry: &HistoryEntry, now: &str) -> Result<ChainHash> {
    // At most: convert, keep a damaged tail aside, append.
    for _ in 0..4 {
        match identity(fs, path)? {
            None => {
                // Missing, or its creation was interrupted (so it never held an entry); under
                // the history lock nobody else is creating it now.
                crate::files::remove_if_exists(fs, path)?;
                let j = ChainJournal::<S::File>::create(fs, path, IDENTITY_V2)
                    .map_err(Error::journal(path))?;
                return append_to(j, &[], entry, now, path);
            }
            Some(id) if id == IDENTITY_V1 => {
                aside::convert_v1(fs, path, now)?;
                continue;
            }
            Some(id) if id == IDENTITY_V2 => {}
            Some(_) => return Err(not_a_history(path)),
        }
        // Strict: the journal refuses a damaged tail rather than truncating it.
        match ChainJournal::<S::File>::open_with(
            fs,
            path,
            journal::RecoveryMode::AbsoluteConsistency,
        ) {
            Ok((j, replay)) => return append_to(j, &replay.records, entry, now, path),
            Err(journal::Error::Corrupt { .. }) => {}
            Err(e) => return Err(Error::journal(path)(e)),
        }
        // Damage: at the tail it is kept aside; anywhere else the journal refuses here, and
        // nothing is changed.
        let replay = journal::read::<S, Vec<u8>>(fs, path).map_err(Error::journal(path))?;
        if let journal::Tail::Torn {
            valid_len,
            discarded,
        } = replay.tail
        {
            aside::keep_damaged(fs, path, (valid_len, discarded), now)?;
        }
    }
    Err(Error::Corrupt {
        path: path.to_path_buf(),
        reason: "it kept changing while an entry was being appended".into(),
    })
}

/// Removes what an append that died while keeping the history `path` aside left half-made
/// (see `aside`); the history itself is whole, and the next append starts over from it. The
/// caller holds the history lock.
pub(crate) fn remove_unfinished<S: Fs>(fs: &S, path: &Path) -> Result<()> {
    let mut removed = false;
    for tmp in [aside::tmp_of(path), aside::partial_of(path)] {
        if crate::files::remove_if_exists(fs, &tmp)? {
            tracing::debug!(path = %tmp.display(), "removing what a crash left half-made while the history was kept aside");
            removed = true;
        }
    }
    if removed {
        crate::files::sync_dir(fs, &aside::dir_of(path))?;
    }
    Ok(())
}

/// Appends `entry` (after a genesis, if the history has no record yet) to the open history
/// `j` whose records are `records`, and syncs.
fn append_to<F: storage::File>(
    mut j: ChainJournal<F>,
    records: &[Vec<u8>],
    entry: &HistoryEntry,
    now: &str,
    path: &Path,
) -> Result<ChainHash> {
    if let Some(bad) = first_broken_link(records) {
        // Appending adds and never judges: the records are left as they are, and `verify`
        // says what is wrong with them.
        tracing::warn!(history = %path.display(), record = bad, "the history's chain does not verify");
    }
    let item = match &entry.taken_over {
        // The entry's own encoding stays that of every other entry: without the takeover.
        Some(t) => Item::TakenOver(
            HistoryEntry {
                taken_over: None,
                ..entry.clone()
            },
            t.clone(),
        ),
        None => Item::Entry(entry.clone()),
    };
    let head = link_to(&mut j, records, item, now).map_err(Error::journal(path))?;
    // Barrier: the entry is durable before the operation reports success.
    j.sync().map_err(Error::journal(path))?;
    tracing::info!(history = %path.display(), tx = %entry.id, head = %head, "history entry appended");
    Ok(head)
}

#[cfg(test)]
mod tests;
