//! The commit before its commit point: every base and overlay checked and planned, the
//! intent journaled, pre-images saved. Nothing here writes a base.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use storage::{File, Fs};

use crate::apply::WARM_MAX;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::history::HistoryImage;
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{Format, ImageEntry, Manifest};
use crate::options::{CommitOptions, Phase, Progress};
use crate::plan::{ByteRange, Plan};
use crate::record::{FileState, Intent, Record, States, UndoSummary};
use crate::txjournal::TxJournal;
use crate::{base, kept, layout, overlay, plan, preimage};
/// One image of the commit once its base and overlay are checked and its plan is made.
pub(super) struct Checked<'m, S: Fs> {
    pub(super) img: &'m ImageEntry,
    pub(super) overlay: S::File,
    pub(super) plan: Plan,
    /// Its journal's path (the first image's is the coordinator).
    pub(super) journal: PathBuf,
}

impl<S: Fs> Checked<'_, S> {
    /// What the history says of this image.
    pub(super) fn history_image(&self) -> HistoryImage {
        HistoryImage {
            base: self.img.base.clone(),
            changed_bytes: self.plan.changed_bytes(),
        }
    }
}

/// What the steps before the commit point made for one image: its open journal and, unless
/// `--no-undo`, its pre-image file (still open, so its last close can be handed off).
pub(super) struct Prepared<S: Fs> {
    pub(super) journal: TxJournal<S>,
    pub(super) preimages: Option<S::File>,
    /// What the journal says of the pre-images, and the base ranges they cover.
    pub(super) saved: Option<(UndoSummary, Vec<ByteRange>)>,
}

/// Steps 3-5 for one image: the base is unchanged since begin, the overlay is the one begin
/// created, the plan is made, and the overlay is durable.
pub(super) fn check<'m, S: Fs, H: Host>(
    e: &Ctx<S, H>,
    tx: &TxId,
    img: &'m ImageEntry,
) -> Result<Checked<'m, S>> {
    base::check_unchanged(&e.fs, tx, img)?;
    let ov = overlay::open_checked(
        &e.fs,
        tx,
        (&img.overlay, img.overlay_dev_ino),
        (&img.base, img.base_format),
    )?;
    let plan = plan::for_overlay(
        &e.fs,
        tx,
        (&ov, &img.overlay),
        (&img.base, img.base_id.size, img.base_format),
    )?;
    // Barrier: whatever qemu wrote to the overlay must be durable before the journal relies
    // on it, since after the commit point recovery redoes from the overlay.
    ov.sync_data().map_err(Error::io("sync", &img.overlay))?;
    Ok(Checked {
        img,
        overlay: ov,
        plan,
        journal: layout::journal(&img.base, tx)?,
    })
}

/// Steps 6-7 ([`prepare`]), while threads read the overlays of raw bases into the page
/// cache: the pre-image save is bound by writes to the new pre-image file, so the forward
/// copy of step 9 then reads memory.
pub(super) fn prepare_warming<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    m: &Manifest,
    opts: CommitOptions,
    checked: &[Checked<'_, S>],
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<Prepared<S>>> {
    let stop = AtomicBool::new(false);
    let budget = WARM_MAX / checked.len().max(1) as u64;
    std::thread::scope(|s| {
        let warmers: Vec<_> = checked
            .iter()
            .filter(|c| !opts.no_undo && c.img.base_format == Format::Raw)
            .map(|c| {
                let len = c.overlay.len().unwrap_or(0).min(budget);
                let (ov, stop) = (&c.overlay, &stop);
                s.spawn(move || storage::copy::warm(ov, len, stop))
            })
            .collect();
        let prepared = prepare(e, m, opts, checked, progress);
        stop.store(true, Ordering::Relaxed);
        for h in warmers {
            // How far it got does not matter: the forward copy reads through the page
            // cache either way, and finds there what was warmed.
            let _ = h.join();
        }
        prepared
    })
}

/// Steps 6-7: journals the intent of every image, then saves the pre-images. Returns the
/// open journals, coordinator first.
fn prepare<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    m: &Manifest,
    opts: CommitOptions,
    checked: &[Checked<'_, S>],
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<Prepared<S>>> {
    let journals: Vec<PathBuf> = checked.iter().map(|c| c.journal.clone()).collect();
    let mut prepared = Vec::new();
    for (i, c) in checked.iter().enumerate() {
        e.check_interrupt()?;
        let intent = Intent {
            tx: m.id.clone(),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            journals: journals.clone(),
            base: c.img.base.clone(),
            base_format: c.img.base_format,
            base_dev_ino: c.img.base_id.dev_ino(),
            overlay: c.img.overlay.clone(),
            overlay_dev_ino: c.img.overlay_dev_ino.unwrap_or_default(),
            undo: !opts.no_undo,
            plan: c.plan.clone(),
        };
        let states = states_of(e, &m.id, c)?;
        // `create` syncs the new journal and its directory. The coordinator (index 0) is
        // created first and removed last, so a participant journal never exists without it.
        let mut journal = TxJournal::create(&e.fs, &c.journal, &m.id, i)?;
        journal.append(&Record::Intent(intent))?;
        // Barrier: the intent, and what the files were, are durable before any pre-image
        // or base write.
        journal.append_sync(&Record::States(states))?;
        prepared.push(Prepared {
            journal,
            preimages: None,
            saved: None,
        });
    }
    e.host.step("intent");
    if opts.no_undo {
        // The last moment a stop changes nothing: the commit record is next.
        e.check_interrupt()?;
        return Ok(prepared);
    }
    for (i, (c, p)) in checked.iter().zip(&mut prepared).enumerate() {
        let (summary, file, ranges) = save_preimages(e, &m.id, i, c, progress)?;
        p.preimages = Some(file);
        p.journal.append(&Record::Undo(summary.clone()))?;
        p.saved = Some((summary, ranges));
        // Barrier: the journal vouches for the pre-images only once they are durable (the
        // save synced them); this sync makes the voucher itself durable. The coordinator's
        // voucher becomes durable with the commit record, one sync later in the same log:
        // no base is written before that sync, and a crash before it leaves no commit
        // record, so the pre-images are never needed.
        if i > 0 {
            p.journal.sync()?;
        }
    }
    e.host.step("undo");
    // The last moment a stop changes nothing: the commit record is next.
    e.check_interrupt()?;
    Ok(prepared)
}

/// What the base and the overlay of `c` are now, for recovery to recognise them.
fn states_of<S: Fs, H: Host>(e: &Ctx<S, H>, tx: &TxId, c: &Checked<'_, S>) -> Result<States> {
    let base = &c.img.base;
    let base_meta = e.fs.metadata(base).map_err(Error::io("stat", base))?;
    let overlay_meta = c
        .overlay
        .stat()
        .map_err(Error::io("stat", &c.img.overlay))?;
    match base_meta {
        Some(b) => Ok(States {
            base: FileState::of(&b),
            overlay: FileState::of(&overlay_meta),
        }),
        None => Err(Error::BaseChanged {
            path: base.clone(),
            tx: tx.clone(),
            what: "it no longer exists".to_owned(),
        }),
    }
}

/// Step 7 for image `index`: saves into its pre-image file every base range the commit can
/// overwrite.
fn save_preimages<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    tx: &TxId,
    index: usize,
    c: &Checked<'_, S>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(UndoSummary, S::File, Vec<ByteRange>)> {
    let img = c.img;
    let base = base::open(&e.fs, tx, (&img.base, img.base_id.dev_ino()), false)?;
    let (old_len, ranges) = preimage::ranges(&base, &img.base, img.base_format, &c.plan)?;
    let (summary, file) = save_ranges(
        e,
        (tx, index),
        (&base, &img.base),
        (old_len, &ranges),
        progress,
    )?;
    Ok((summary, file, ranges))
}

/// Saves `ranges` of image `index`'s base `base` (at `path`, `old_len` long) into its
/// pre-image file for transaction `tx`; `progress` hears the bytes saved, and a stop between
/// pieces drops only the pre-images. Used by revert too, for its own pre-images.
pub(crate) fn save_ranges<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    (tx, index): (&TxId, usize),
    (base, path): (&S::File, &std::path::Path),
    (old_len, ranges): (u64, &[ByteRange]),
    progress: &mut dyn FnMut(Progress),
) -> Result<(UndoSummary, S::File)> {
    let total = ranges.iter().map(|r| r.len).sum();
    let name: std::sync::Arc<std::path::Path> = path.into();
    let mut saved = |done| {
        progress(Progress {
            image: index,
            base: name.clone(),
            phase: Phase::PreImages,
            done,
            total,
        });
        // Between pieces of the save: stopping there drops only the pre-images.
        e.check_interrupt()
    };
    saved(0)?;
    // The spare is about to be overwritten: the commit whose pre-images it kept can no
    // longer be taken back.
    let spare = layout::spare(path)?;
    kept::forget_file(&e.fs, &e.state, &spare)?;
    preimage::save(
        &e.fs,
        base,
        (path, &layout::undo(path, tx)?, &spare),
        (tx, e.host.user().1),
        (old_len, ranges),
        &mut saved,
    )
}
