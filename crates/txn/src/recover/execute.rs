//! Carrying out a recovery decision for an interrupted commit: bringing every base to the
//! outcome of one direction (redo from the overlays, or undo from the pre-images), then the
//! history entry and cleanup, each step journaled so a crash during recovery resumes it.

use storage::{File, Fs};

use super::discover::{CommitState, ImageJournal};
use crate::apply::{self, Target};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::history::{HistoryEntry, HistoryImage, Outcome};
use crate::host::Host;
use crate::manifest::{DevIno, Format};
use crate::options::{Phase, Progress};
use crate::record::{Direction, Intent, Record};
use crate::{audit, finish, layout, overlay, preimage, txjournal};

/// Brings every base of `st` to the outcome of `dir`, logs it, and cleans up.
/// `undo_ok` says the pre-images passed their checks: a qcow2 base is then put back to its
/// old file before `qemu-img commit` runs again, so that the result is exactly what a clean
/// commit makes (a redo over a half-committed qcow2 file leaks clusters, and leaves its
/// persistent bitmaps flagged in use). Without them, the redo is followed by a repair of the
/// leaks.
pub(crate) fn go<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    st: &CommitState,
    (dir, undo_ok): (Direction, bool),
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let coordinator = &st.journals[0];
    if st.recorded != Some(dir) {
        // Barrier: the chosen direction is durable before any base write, so a rerun after
        // a crash continues the same way.
        txjournal::append_to(&e.fs, coordinator, &Record::Recovering(dir))?;
    }
    e.host.step("recover-direction");
    for (index, image) in st.images.iter().flatten().enumerate() {
        if image.applied.contains(&dir) {
            continue;
        }
        let Some(intent) = &image.intent else {
            continue;
        };
        let name: std::sync::Arc<std::path::Path> = intent.base.as_path().into();
        let mut report = |done, total| {
            let phase = match dir {
                Direction::Forward => Phase::Apply,
                Direction::Back => Phase::Restore,
            };
            progress(Progress {
                image: index,
                base: name.clone(),
                phase,
                done,
                total,
            });
        };
        let _fence = e.host.fence_image(&intent.base)?;
        let qcow2 = intent.base_format == Format::Qcow2;
        match dir {
            // A revert puts back bytes of the file, whatever its format.
            Direction::Forward if image.reverting.is_some() => {
                crate::revert::put_back(e, intent, image.reverting.as_ref(), &mut report)?;
            }
            Direction::Forward if qcow2 && undo_ok => {
                undo(e, st, image, intent, &mut |_, _| {})?;
                redo(e, intent, &mut report)?;
            }
            Direction::Forward if qcow2 => {
                redo(e, intent, &mut report)?;
                e.host.qemu_img_repair_leaks(&intent.base)?;
                let in_use = e.host.bitmaps_in_use(&intent.base)?;
                if !in_use.is_empty() {
                    // Without pre-images the file cannot be put back first, and qemu keeps
                    // bitmaps a killed writer left in use out of every backup from now on.
                    tracing::warn!(
                        base = %intent.base.display(),
                        bitmaps = ?in_use,
                        "persistent bitmaps are left flagged in use by the interrupted commit \
                         (it ran without pre-images): qemu refuses them; remove them with \
                         `qemu-img bitmap --remove` and start a new backup chain"
                    );
                }
            }
            Direction::Forward => redo(e, intent, &mut report)?,
            Direction::Back => undo(e, st, image, intent, &mut report)?,
        }
        // Barrier: the base was synced; recording it lets a rerun skip this image.
        txjournal::append_to(&e.fs, &image.path, &Record::Applied(dir))?;
        e.host.step("recover-applied");
    }
    audit::record(e, &outcome(e, st, dir));
    txjournal::append_to(&e.fs, coordinator, &Record::Logged)?;
    e.host.step("recover-logged");
    // Undone or finished, the transaction is over: its overlays go too.
    finish::cleanup(
        e,
        &st.tx,
        &st.leftovers(dir),
        &st.journals,
        finish::Keep::No,
    )?;
    if dir == Direction::Forward {
        crate::revert::spent(e, &st.reverts())?;
    }
    Ok(())
}

/// The history entry of `st` brought to the outcome of `dir`: a revert finished is recorded
/// as a revert, like one that was never interrupted.
fn outcome<S: Fs, H: Host>(e: &Ctx<S, H>, st: &CommitState, dir: Direction) -> HistoryEntry {
    let manifest = e.state.load(&e.fs, &st.tx).ok().flatten();
    let changed = |i: &Intent| match dir {
        Direction::Forward => i.plan.changed_bytes(),
        Direction::Back => 0,
    };
    let images = st
        .intents()
        .map(|i| HistoryImage {
            base: i.base.clone(),
            changed_bytes: changed(i),
        })
        .collect();
    match (dir, st.reverts().first()) {
        (Direction::Forward, Some(reverted)) => {
            crate::revert::history_entry(e, &st.tx, reverted, images)
        }
        (Direction::Forward, None) => audit::entry(
            e,
            manifest.as_ref(),
            &st.tx,
            Outcome::RecoveredForward,
            images,
        ),
        (Direction::Back, _) => {
            audit::entry(e, manifest.as_ref(), &st.tx, Outcome::RecoveredBack, images)
        }
    }
}

/// Puts the pre-images of every image of `st` back into its base, without recording any
/// direction: for a commit whose commit record is gone (`Decision::RestoreUncommitted`),
/// after which the transaction stays open. Idempotent, like every restore.
pub(crate) fn restore_all<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    st: &CommitState,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    for (index, image) in st.images.iter().flatten().enumerate() {
        let (Some(intent), Some(_)) = (&image.intent, &image.undo) else {
            continue;
        };
        let _fence = e.host.fence_image(&intent.base)?;
        let name: std::sync::Arc<std::path::Path> = intent.base.as_path().into();
        let mut report = |done, total| {
            progress(Progress {
                image: index,
                base: name.clone(),
                phase: Phase::Restore,
                done,
                total,
            });
        };
        undo(e, st, image, intent, &mut report)?;
    }
    Ok(())
}

/// Redo: writes the overlay's planned changes into the base again.
fn redo<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    intent: &Intent,
    report: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let _ov_fence = e.host.fence_image(&intent.overlay)?;
    let ov = overlay::open_checked(
        &e.fs,
        &intent.tx,
        (&intent.overlay, Some(intent.overlay_dev_ino)),
        (&intent.base, intent.base_format),
    )?;
    let target = Target {
        path: &intent.base,
        dev_ino: intent.base_dev_ino,
        format: intent.base_format,
    };
    apply::forward(
        (&e.fs, &e.host),
        &intent.tx,
        (&ov, &intent.overlay),
        target,
        // A recovered commit keeps no pre-images, so nobody needs its checksums.
        (&intent.plan, crate::written::Tally::off()),
        report,
    )
    .map(drop)
}

/// Undo: writes the saved pre-images back into the base, after checking them all.
fn undo<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    st: &CommitState,
    image: &ImageJournal,
    intent: &Intent,
    report: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let unrecoverable = |reason: String| Error::Unrecoverable {
        tx: st.tx.clone(),
        reason,
    };
    let summary = image
        .undo
        .as_ref()
        .ok_or_else(|| unrecoverable("pre-images are missing".into()))?;
    if let Some(reason) = super::discover::untrusted_preimages(e, st)? {
        return Err(unrecoverable(reason));
    }
    let base =
        e.fs.open(&intent.base, true)
            .map_err(Error::io("open for writing", &intent.base))?;
    // The name was checked before; the descriptor is what gets written, and the name may
    // have been swapped in between.
    let opened = base.stat().map_err(Error::io("stat", &intent.base))?;
    if DevIno::of(&opened) != intent.base_dev_ino {
        return Err(unrecoverable(format!(
            "base {} was replaced by another file",
            intent.base.display()
        )));
    }
    let total = summary.bytes;
    report(0, total);
    preimage::restore(
        &e.fs,
        (&layout::undo(&intent.base, &st.tx)?, &base, &intent.base),
        &st.tx,
        summary,
        e.host.user().1,
        &mut |done| report(done, total),
    )
}
