//! Ending a transaction's commit: the history entry of its outcome, the removal of what it
//! left beside its bases and in the state directory, and the discarding of a commit that
//! never reached its commit point.
//!
//! Every removal here is made durable in the order recovery relies on: files a journal
//! explains go before the journal, participant journals before the coordinator, and the
//! journals before the manifest that lets recovery find them.

use std::path::{Path, PathBuf};

use storage::{File, Fs};

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::files::{remove_durably, remove_if_exists, sync_dir};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{Leftover, TxState};
use crate::options::Spare;
use crate::{layout, trust, txjournal};

/// What becomes of a finished commit's pre-image files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Removed.
    No,
    /// Renamed to the base's spare, for the next commit to overwrite (see
    /// [`crate::preimage::save`]); until then, what makes the commit revertible.
    Spare,
    /// Renamed to a name of the transaction's own (`layout::kept`), until pruned.
    Pinned,
}

impl Keep {
    /// What a commit with `opts` keeps.
    pub(crate) fn of(opts: crate::options::CommitOptions) -> Self {
        match (opts.no_undo, opts.keep, opts.no_spare) {
            (true, _, _) | (false, false, true) => Self::No,
            (false, true, _) => Self::Pinned,
            (false, false, false) => Self::Spare,
        }
    }
}

/// Removes overlays, pre-images and journals of a finished commit, then its registration.
/// `journals` lists coordinator first. `keep` says what becomes of the pre-image files; the
/// files kept are returned, in the order of `leftovers`.
pub(crate) fn cleanup<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    tx: &TxId,
    leftovers: &[Leftover],
    journals: &[PathBuf],
    keep: Keep,
) -> Result<Vec<Spare>> {
    if let Some(mut m) = e.state.load(&e.fs, tx)? {
        if m.state != TxState::Finished {
            m.state = TxState::Finished;
            // Recorded before the journals go, so a crash during cleanup still leaves
            // `recover` a trace of what to finish.
            e.state.save(&e.fs, &m)?;
        }
    }
    let mut spares = Vec::new();
    for l in leftovers {
        spares.extend(remove_beside(&e.fs, (tx, e.host.user().1), l, keep)?);
    }
    e.host.step("files-removed");
    remove_journals(&e.fs, journals)?;
    e.host.step("journals-removed");
    // The claims go once nothing is left that a transaction of this image could trip on,
    // and before the manifest that explains them: beside every base the journals named
    // (a participant's journal may be gone already) and the manifest, if any, names.
    let manifest = e.state.load(&e.fs, tx)?;
    let mut bases: Vec<PathBuf> = leftovers.iter().map(|l| l.base.clone()).collect();
    bases.extend(
        journals
            .iter()
            .filter_map(|j| layout::base_of_journal(j, tx)),
    );
    bases.extend(
        manifest
            .iter()
            .flat_map(|m| m.images.iter().map(|i| i.base.clone())),
    );
    bases.sort();
    bases.dedup();
    crate::claim::release_all(&e.fs, bases.iter().map(PathBuf::as_path), tx)?;
    if manifest.is_some() {
        e.state.remove_manifest(&e.fs, tx)?;
    }
    e.drop_lock_file(tx);
    Ok(spares)
}

/// Removes the overlay and the pre-image file (or keeps it) beside one base.
fn remove_beside<S: Fs>(
    fs: &S,
    (tx, runner): (&TxId, u32),
    l: &Leftover,
    keep: Keep,
) -> Result<Option<Spare>> {
    if let Some(overlay) = &l.overlay {
        let meta = fs.metadata(overlay).map_err(Error::io("stat", overlay))?;
        // Only remove the file begin created; a stranger under that name is left alone.
        let owners: Vec<u32> = l.owner.into_iter().chain([runner]).collect();
        if meta.is_some_and(|m| trust::is_begins_overlay(&m, l.overlay_dev_ino, &owners)) {
            remove_if_exists(fs, overlay)?;
        }
    }
    let undo = layout::undo(&l.base, tx)?;
    let spare_path = match keep {
        Keep::Pinned => layout::kept(&l.base, tx)?,
        _ => layout::spare(&l.base)?,
    };
    let spare = if keep != Keep::No && keep_as_spare(fs, &undo, &spare_path) {
        // Only reported: a spare whose length cannot be read is still a spare.
        let bytes = fs.metadata(&spare_path).ok().flatten().map_or(0, |m| m.len);
        Some(Spare {
            path: spare_path,
            bytes,
            pinned: keep == Keep::Pinned,
        })
    } else {
        remove_if_exists(fs, &undo)?;
        None
    };
    // Barrier: overlays and pre-images are gone (or renamed) for good before the journals
    // that explain them are removed.
    sync_dir(fs, layout::dir_of(&l.base)?)?;
    Ok(spare)
}

/// Renames the pre-image file `undo` to `spare`; false if there is none or it cannot be.
fn keep_as_spare<S: Fs>(fs: &S, undo: &Path, spare: &Path) -> bool {
    match fs.rename(undo, spare) {
        Ok(()) => true,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(path = %undo.display(), error = %e, "pre-image file not kept");
            }
            false
        }
    }
}

/// Removes the journals `journals` (coordinator first) durably: participants first,
/// coordinator last, so a participant journal never outlives it.
fn remove_journals<S: Fs>(fs: &S, journals: &[PathBuf]) -> Result<()> {
    for j in journals.iter().skip(1).chain(journals.first()) {
        txjournal::remove(fs, j)?;
    }
    Ok(())
}

/// Removes pre-images and journals of a commit that never reached its commit point.
/// The bases were not touched; the transaction stays open.
pub(crate) fn discard_uncommitted<S: Fs>(fs: &S, tx: &TxId, journals: &[PathBuf]) -> Result<()> {
    for j in journals {
        if let Some(base) = layout::base_of_journal(j, tx) {
            remove_durably(fs, &layout::undo(&base, tx)?, layout::dir_of(&base)?)?;
        }
    }
    remove_journals(fs, journals)
}

/// Closes `files` through `host`'s [`Host::release_later`] where their names are durably
/// gone, so freeing their blocks is not waited for here; a file still named (a pre-image
/// file kept as a spare) frees nothing when closed, and is closed here.
pub(crate) fn close_later<H: Host, F: File>(host: &H, files: Vec<F>) {
    let unnamed = |f: &&F| f.stat().map_or(true, |m| m.nlink == 0);
    let open: Vec<_> = files
        .iter()
        .filter(unnamed)
        .filter_map(File::as_fd)
        .collect();
    let released = host.release_later(&open);
    drop(open);
    drop(files);
    drop(released);
}
