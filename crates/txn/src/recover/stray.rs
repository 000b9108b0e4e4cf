//! Pre-image files whose journal is gone. imgtx itself always removes a pre-image file
//! before the journal that explains it, so one found alone means the journal was removed by
//! hand (or lost) after a commit was interrupted: the base may be torn, and this file may be
//! the only way back. It is read on its own (every entry carries a checksum bound to its
//! transaction), and never removed while the base does not hold the old content it keeps,
//! unless the history says the commit was finished: then they are a finished commit's, whose
//! removal a failed directory sync lost (the journals' removal survived), and obsolete.

use std::path::PathBuf;

use storage::Fs;

use super::verify;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::files::remove_durably;
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{DevIno, Manifest};
use crate::options::{RecoverAction, RecoverOptions, RecoveryAction};
use crate::{layout, preimage, txjournal};

/// A pre-image file with no journal beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stray {
    /// The transaction it names.
    pub tx: TxId,
    /// The base it sits beside.
    pub base: PathBuf,
    /// The file.
    pub path: PathBuf,
}

/// The pre-image files beside `bases` whose journal is missing.
pub(crate) fn find<S: Fs>(fs: &S, bases: &[PathBuf]) -> Result<Vec<Stray>> {
    let mut found = Vec::new();
    for base in bases {
        for tx in txjournal::strays_beside(fs, base)? {
            found.push(Stray {
                path: layout::undo(base, &tx)?,
                base: base.clone(),
                tx,
            });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup();
    Ok(found)
}

/// Deals with one stray pre-image file: removes it when the base holds the old content it
/// keeps; with `opts.undo`, puts that content back first; otherwise refuses and keeps it.
/// `manifest` is the transaction's manifest, when this state directory has one: the base
/// must then still be the file the transaction began on.
pub(crate) fn recover_one<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    stray: &Stray,
    manifest: Option<&Manifest>,
    opts: &RecoverOptions,
) -> Result<RecoverAction> {
    let _guard = e.lock_tx(&stray.tx)?;
    // Across hosts: the base's lease while its pre-images are put back or removed.
    let _lease = if opts.dry_run {
        crate::lease::LeaseGuard::default()
    } else {
        e.lease_bases([stray.base.as_path()])?
    };
    if finished(e, &stray.tx) {
        if !opts.dry_run {
            remove_durably(&e.fs, &stray.path, layout::dir_of(&stray.path)?)?;
        }
        return Ok(RecoverAction {
            tx: stray.tx.to_string(),
            action: RecoveryAction::RemovedStrayPreImages,
            bases: vec![stray.base.clone()],
        });
    }
    let uid = e.host.user().1;
    let unrecoverable = |reason: String| Error::Unrecoverable {
        tx: stray.tx.clone(),
        reason,
    };
    let recorded = manifest.and_then(|m| {
        m.images
            .iter()
            .find(|i| i.base == stray.base)
            .map(|i| i.base_id.dev_ino())
    });
    check_base(&e.fs, stray, recorded).map_err(unrecoverable)?;
    let summary = preimage::summarize(&e.fs, &stray.path, &stray.tx, uid)?;
    preimage::verify(&e.fs, &stray.path, &stray.tx, &summary, uid)?;
    let old = verify::holds_old(e, &stray.base, (&stray.path, &summary), &stray.tx)?;
    let action = match (old, opts.undo) {
        (true, _) => RecoveryAction::RemovedStrayPreImages,
        (false, true) => RecoveryAction::RestoredUncommitted,
        (false, false) => {
            return Err(unrecoverable(format!(
                "its journal is missing, and its base {} does not hold the old content its \
                 pre-image file {} keeps; undoing puts that content back",
                stray.base.display(),
                stray.path.display()
            )))
        }
    };
    if !opts.dry_run {
        if !old {
            restore(e, stray, &summary, recorded)?;
        }
        remove_durably(&e.fs, &stray.path, layout::dir_of(&stray.path)?)?;
    }
    Ok(RecoverAction {
        tx: stray.tx.to_string(),
        action,
        bases: vec![stray.base.clone()],
    })
}

/// Whether this state directory's history (or a pending entry of it) records that `tx`
/// reached the end of a commit: written only after the commit's `Logged` step, so its
/// pre-images can no longer be needed. A history that cannot be read says no.
fn finished<S: Fs, H: Host>(e: &Ctx<S, H>, tx: &TxId) -> bool {
    let pending = e.state.pending(tx, "entry");
    if crate::files::exists(&e.fs, &pending).unwrap_or(false) {
        return true;
    }
    crate::history::read(&e.fs, &e.state.history()).is_ok_and(|h| {
        h.entries
            .iter()
            .any(|x| x.id == *tx && x.outcome.changed_images())
    })
}

/// Refuses (with the reason) a base that is gone or, where the manifest recorded which file
/// it was, replaced.
fn check_base<S: Fs>(
    fs: &S,
    stray: &Stray,
    recorded: Option<DevIno>,
) -> std::result::Result<(), String> {
    match fs.metadata(&stray.base) {
        Ok(Some(m)) if recorded.is_none_or(|di| di == DevIno::of(&m)) => Ok(()),
        Ok(Some(_)) => Err(format!(
            "its base {} was replaced by another file",
            stray.base.display()
        )),
        _ => Err(format!("its base {} does not exist", stray.base.display())),
    }
}

/// Puts the old content kept by `stray` back into its base.
fn restore<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    stray: &Stray,
    summary: &crate::record::UndoSummary,
    recorded: Option<DevIno>,
) -> Result<()> {
    verify::wait_for_writer(e, &stray.base)?;
    let _fence = e.host.fence_image(&stray.base)?;
    let base =
        e.fs.open(&stray.base, true)
            .map_err(Error::io("open for writing", &stray.base))?;
    let opened = storage::File::stat(&base).map_err(Error::io("stat", &stray.base))?;
    if recorded.is_some_and(|di| di != DevIno::of(&opened)) {
        return Err(Error::Unrecoverable {
            tx: stray.tx.clone(),
            reason: format!(
                "its base {} was replaced while being opened",
                stray.base.display()
            ),
        });
    }
    preimage::restore(
        &e.fs,
        (stray.path.as_path(), &base, stray.base.as_path()),
        &stray.tx,
        summary,
        e.host.user().1,
        &mut |_| {},
    )
}
