//! The revert before its commit point: the reverted transaction's pre-images pinned under
//! names of their own, every image's intent journaled, the revert's own pre-images saved.
//! Nothing here writes a base.

use std::path::{Path, PathBuf};

use storage::Fs;

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::TxId;
use crate::kept;
use crate::manifest::DevIno;
use crate::options::Progress;
use crate::plan::{Action, Plan, Step};
use crate::record::{FileState, Intent, Record, Source, States, UndoSummary};
use crate::txjournal::TxJournal;
use crate::{base, layout};

use super::check::Checked;

/// Before the commit point: pins the reverted transaction's pre-images, journals every
/// image's intent, and saves the revert's own pre-images. Returns the open journals with
/// what each saved.
pub(super) fn prepare<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    (id, rec): (&TxId, &kept::Record),
    checked: &mut [Checked<'_>],
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<(TxJournal<S>, UndoSummary)>> {
    pin(e, rec, checked)?;
    let journals: Vec<PathBuf> = checked.iter().map(|c| c.journal.clone()).collect();
    let mut open = Vec::new();
    for (i, c) in checked.iter().enumerate() {
        e.check_interrupt()?;
        let states = States {
            base: FileState::of(&stat(e, &c.kept.base)?),
            overlay: FileState::of(&stat(e, &c.file)?),
        };
        let mut journal = TxJournal::create(&e.fs, &c.journal, id, i)?;
        journal.append(&Record::Intent(intent(e, (id, i), c, &journals)?))?;
        journal.append(&Record::Reverting(source_of(&rec.tx, c)))?;
        // Barrier: the intent is durable before any pre-image or base write.
        journal.append_sync(&Record::States(states))?;
        open.push(journal);
    }
    e.host.step("intent");
    let mut out = Vec::new();
    for (i, (c, mut journal)) in checked.iter().zip(open).enumerate() {
        let summary = save(e, id, i, c, progress)?;
        journal.append(&Record::Undo(summary.clone()))?;
        // Barrier as in a commit: a participant's voucher is durable now, the coordinator's
        // with the commit record.
        if i > 0 {
            journal.sync()?;
        }
        out.push((journal, summary));
    }
    e.host.step("undo");
    e.check_interrupt()?;
    Ok(out)
}

/// Renames the reverted transaction's pre-images that are still its bases' spares to names
/// of their own, and records that: the revert's own pre-image save would otherwise reuse
/// them, and if the revert is undone they must still be there.
fn pin<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    rec: &kept::Record,
    checked: &mut [Checked<'_>],
) -> Result<()> {
    let mut pinned = rec.clone();
    for (c, k) in checked.iter_mut().zip(&mut pinned.images) {
        let to = layout::kept(&c.kept.base, &rec.tx)?;
        if c.file != to {
            e.fs.rename(&c.file, &to)
                .map_err(Error::io("rename into place", &to))?;
            crate::files::sync_dir(&e.fs, layout::dir_of(&to)?)?;
            c.file = to.clone();
        }
        k.file = to;
    }
    pinned.pinned = true;
    if pinned != *rec {
        e.state.save_kept(&e.fs, &pinned)?;
    }
    Ok(())
}

/// Saves the revert's own pre-images of image `index`: every range it overwrites or cuts off.
fn save<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    id: &TxId,
    index: usize,
    c: &Checked<'_>,
    progress: &mut dyn FnMut(Progress),
) -> Result<UndoSummary> {
    let k = c.kept;
    let base = base::open(&e.fs, id, (&k.base, k.base_dev_ino), false)?;
    let (summary, _file) = crate::commit::save_ranges(
        e,
        (id, index),
        (&base, &k.base),
        (k.new_len, &c.ranges),
        progress,
    )?;
    Ok(summary)
}

/// The intent of image `index` of the revert `id`. Its plan describes the change for the
/// record (the ranges put back, the length before and after); the revert never applies it.
pub(super) fn intent<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    (id, index): (&TxId, usize),
    c: &Checked<'_>,
    journals: &[PathBuf],
) -> Result<Intent> {
    let k = c.kept;
    let file = stat(e, &c.file)?;
    Ok(Intent {
        tx: id.clone(),
        index: u32::try_from(index).unwrap_or(u32::MAX),
        journals: journals.to_vec(),
        base: k.base.clone(),
        base_format: k.format,
        base_dev_ino: k.base_dev_ino,
        overlay: c.file.clone(),
        overlay_dev_ino: DevIno::of(&file),
        undo: true,
        plan: Plan {
            old_len: k.new_len,
            virtual_size: k.summary.old_len,
            steps: c
                .ranges
                .iter()
                .filter(|r| r.offset < k.summary.old_len)
                .map(|r| Step {
                    offset: r.offset,
                    len: r.len,
                    action: Action::Copy,
                })
                .collect(),
        },
    })
}

pub(super) fn source_of(tx: &TxId, c: &Checked<'_>) -> Source {
    Source {
        tx: tx.clone(),
        file: c.file.clone(),
        summary: c.kept.summary.clone(),
    }
}

fn stat<S: Fs, H: Host>(e: &Ctx<S, H>, path: &Path) -> Result<storage::Metadata> {
    e.fs.metadata(path)
        .map_err(Error::io("stat", path))?
        .ok_or_else(|| Error::Invalid(format!("{} vanished", path.display())))
}
