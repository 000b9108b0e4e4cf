//! `rollback`: drop the overlays; the bases were never touched.
//!
//! [`rollback`] marks the transaction `rolling_back` before removing anything, so a crash
//! halfway leaves a transaction `recover` finishes ([`finish_rollback`]) rather than an open
//! one with overlays missing.

use storage::{File, FileKind, Fs};

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::files::{remove_if_exists, sync_dir};
use crate::history::{HistoryImage, Outcome};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{DevIno, ImageEntry, Manifest, TxState};
use crate::{audit, finish, layout, txjournal};

/// Rolls transaction `id` back: removes its overlays, claims and registration.
pub(crate) fn rollback<S: Fs, H: Host>(e: &Ctx<S, H>, id: &TxId) -> Result<()> {
    let _guard = e.lock_tx(id)?;
    let mut m = e
        .state
        .load(&e.fs, id)?
        .ok_or_else(|| crate::lookup::not_open(e, id.as_str()))?;
    if let TxState::Beginning | TxState::Finished = m.state {
        return Err(Error::Interrupted {
            tx: id.clone(),
            doing: m.state.doing().unwrap_or("beginning"),
        });
    }
    for img in &m.images {
        let stray = txjournal::strays_beside(&e.fs, &img.base)?.contains(id);
        if stray || txjournal::beside(&e.fs, &img.base)?.contains(id) {
            return Err(Error::RecoveryNeeded {
                path: img.base.clone(),
                tx: id.clone(),
            });
        }
        let overlay =
            e.fs.metadata(&img.overlay)
                .map_err(Error::io("stat", &img.overlay))?;
        // Only a regular file can be an image qemu uses; a planted symlink or FIFO must not
        // block the rollback that removes it.
        if overlay.is_some_and(|x| x.kind == FileKind::File) && e.host.image_in_use(&img.overlay)? {
            return Err(Error::InUse {
                path: img.overlay.clone(),
                what: "overlay",
                pids: e.host.holders(&img.overlay),
            });
        }
    }
    if m.state != TxState::RollingBack {
        m.state = TxState::RollingBack;
        e.state.save(&e.fs, &m)?;
    }
    e.host.step("rollback-marked");
    finish_rollback(e, &m)?;
    e.drop_lock_file(id);
    Ok(())
}

/// Removes the overlays of a transaction marked rolling back, logs it, and unregisters it.
pub(crate) fn finish_rollback<S: Fs, H: Host>(e: &Ctx<S, H>, m: &Manifest) -> Result<()> {
    // Overlays removed but still open here: their last close, which frees their blocks,
    // is handed off at the end (see `crate::release`).
    let mut held = Vec::new();
    let owners = [m.uid, e.host.user().1];
    for img in &m.images {
        held.extend(remove_overlay(&e.fs, img, &owners)?);
    }
    e.host.step("rollback-overlays");
    let images = m
        .images
        .iter()
        .map(|i| HistoryImage {
            base: i.base.clone(),
            changed_bytes: 0,
        })
        .collect();
    audit::record(
        e,
        &audit::entry(e, Some(m), &m.id, Outcome::RolledBack, images),
    );
    crate::claim::release_all(&e.fs, m.images.iter().map(|i| i.base.as_path()), &m.id)?;
    e.state.remove_manifest(&e.fs, &m.id)?;
    finish::close_later(&e.host, held);
    Ok(())
}

/// Removes the overlay of `img` durably if it is the file begin created for one of `owners`
/// (or a symlink planted in its place); returns it still open when it was that very inode.
fn remove_overlay<S: Fs>(fs: &S, img: &ImageEntry, owners: &[u32]) -> Result<Option<S::File>> {
    let meta = fs
        .metadata(&img.overlay)
        .map_err(Error::io("stat", &img.overlay))?;
    // Unlinking a symlink never touches its target, and keeping it would leave a name that
    // points the next tool at someone else's file.
    let ours = |x: &storage::Metadata| {
        x.kind == FileKind::Symlink
            || crate::trust::is_begins_overlay(x, img.overlay_dev_ino, owners)
    };
    let Some(meta) = meta.filter(ours) else {
        return Ok(None);
    };
    // Held open only when it is the very inode begin created (never a FIFO or a stranger,
    // whose open could block or mislead); anything else is just unlinked.
    let mut held = None;
    if meta.kind == FileKind::File && img.overlay_dev_ino == Some(DevIno::of(&meta)) {
        if let Ok(f) = fs.open(&img.overlay, false) {
            if f.stat().is_ok_and(|o| DevIno::of(&o) == DevIno::of(&meta)) {
                held = Some(f);
            }
        }
    }
    remove_if_exists(fs, &img.overlay)?;
    // Barrier: the overlay's removal is durable before the transaction is forgotten.
    sync_dir(fs, layout::dir_of(&img.overlay)?)?;
    Ok(held)
}
