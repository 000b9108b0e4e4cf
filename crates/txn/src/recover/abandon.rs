//! `recover --abandon`: the way out for a transaction that can be neither finished nor
//! undone, typically because its base was deleted or moved after a crash. It ends the
//! transaction without writing any image; its journals and pre-image files are renamed
//! aside (`NAME.abandoned`, which nothing of imgtx reads) and its overlays left where they
//! are, for forensics; the history records the outcome `abandoned`.

use std::path::{Path, PathBuf};

use storage::Fs;

use super::discover;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::files::{exists, sync_dir};
use crate::history::{HistoryImage, Outcome};
use crate::host::Host;
use crate::id::TxId;
use crate::options::AbandonReport;
use crate::{audit, layout};

/// Abandons transaction `id`, found through its manifest or through a journal beside one of
/// `paths` (bases, as the journals name them).
pub(crate) fn abandon<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    id: &TxId,
    paths: &[PathBuf],
) -> Result<AbandonReport> {
    let _guard = e.lock_tx(id)?;
    let manifest = e.state.load(&e.fs, id)?;
    let mut bases: Vec<PathBuf> = manifest
        .iter()
        .flat_map(|m| m.images.iter().map(|i| i.base.clone()))
        .chain(paths.iter().cloned())
        .collect();
    // The coordinator's intent names every journal, hence every base, even those the
    // manifest (if any) and the user did not.
    let commits = discover::commits(&e.fs, &bases)?;
    if let Some(journal) = commits.get(id) {
        let st = discover::load(&e.fs, e.host.user().1, id, journal)?;
        bases.extend(st.bases());
        bases.extend(
            st.journals
                .iter()
                .filter_map(|j| layout::base_of_journal(j, id)),
        );
    }
    bases.sort();
    bases.dedup();
    if manifest.is_none() && !commits.contains_key(id) {
        return Err(crate::lookup::not_open(e, id.as_str()));
    }
    // Across hosts: the bases' leases while their files are set aside; another live host's
    // transaction is its own to abandon.
    let (_leases, takeover) = e.lease_tx_bases(id, &bases)?;
    let mut kept = Vec::new();
    for base in &bases {
        // Participants' files before the coordinator's does not matter here: once renamed,
        // none of them is a journal any more, and recovery of the rest would be refused as
        // incomplete rather than guessed.
        for path in [layout::journal(base, id)?, layout::undo(base, id)?] {
            if let Some(aside) = set_aside(&e.fs, &path)? {
                kept.push(aside);
            }
        }
        let overlay = layout::overlay(base, id)?;
        if exists(&e.fs, &overlay)? {
            kept.push(overlay);
        }
    }
    let images = bases
        .iter()
        .map(|b| HistoryImage {
            base: b.clone(),
            changed_bytes: 0,
        })
        .collect();
    // A dead host's transaction abandoned here: its history entry says who took it over.
    let entry = e.taking_over(takeover, || {
        audit::entry(e, manifest.as_ref(), id, Outcome::Abandoned, images)
    });
    audit::record(e, &entry);
    crate::claim::release_all(&e.fs, bases.iter().map(PathBuf::as_path), id)?;
    if manifest.is_some() {
        e.state.remove_manifest(&e.fs, id)?;
    }
    e.drop_lock_file(id);
    Ok(AbandonReport {
        id: id.clone(),
        bases,
        kept,
    })
}

/// Renames `path`, if it exists, to its abandoned name, durably; returns the new name.
fn set_aside<S: Fs>(fs: &S, path: &Path) -> Result<Option<PathBuf>> {
    if !exists(fs, path)? {
        return Ok(None);
    }
    let aside = layout::abandoned(path);
    fs.rename(path, &aside)
        .map_err(Error::io("rename aside", path))?;
    sync_dir(fs, layout::dir_of(path)?)?;
    Ok(Some(aside))
}
