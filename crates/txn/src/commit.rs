//! `commit`: the crash-safe copy of every overlay into its base, with one commit point for
//! the whole transaction.
//!
//! [`commit`] runs the steps of `docs/commit-protocol.md` in order, and its comments carry
//! the step numbers; the work of each step is done below it or in the modules it names.
//! Every step is journaled, so a crash anywhere leaves what `recover` needs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use storage::{File, FileKind, Fs};

use crate::apply::{self, Target, WARM_MAX};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::finish::Keep;
use crate::history::{HistoryImage, Outcome};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{Format, ImageEntry, Manifest};
use crate::options::{CommitOptions, CommitReport, Phase, Progress};
use crate::plan::{ByteRange, Plan};
use crate::record::{Direction, FileState, Intent, Record, States, UndoSummary};
use crate::txjournal::TxJournal;
use crate::written::Tally;
use crate::{audit, base, finish, kept, layout, overlay, plan, preimage};

/// One image of the commit once its base and overlay are checked and its plan is made.
struct Checked<'m, S: Fs> {
    img: &'m ImageEntry,
    overlay: S::File,
    plan: Plan,
    /// Its journal's path (the first image's is the coordinator).
    journal: PathBuf,
}

/// What the steps before the commit point made for one image: its open journal and, unless
/// `--no-undo`, its pre-image file (still open, so its last close can be handed off).
struct Prepared<S: Fs> {
    journal: TxJournal<S>,
    preimages: Option<S::File>,
    /// What the journal says of the pre-images, and the base ranges they cover.
    saved: Option<(UndoSummary, Vec<ByteRange>)>,
}

/// Commits transaction `id`; `progress` hears about the data copied.
pub(crate) fn commit<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    id: &TxId,
    opts: CommitOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<CommitReport> {
    // 1. Lock: one imgtx process per transaction; no base may have an interrupted commit.
    let _guard = e.lock_tx(id)?;
    let m = e.load_open(id)?;
    for img in &m.images {
        base::check_no_interrupted(&e.fs, &img.base)?;
    }
    // 2. Fence qemu out of every base and overlay until the commit is over.
    let fences = fence_all(e, &m)?;
    // 3-5. Validate, plan and sync every overlay.
    let checked = m
        .images
        .iter()
        .map(|img| check(e, &m.id, img))
        .collect::<Result<Vec<_>>>()?;
    let journals: Vec<PathBuf> = checked.iter().map(|c| c.journal.clone()).collect();
    let images: Vec<HistoryImage> = checked
        .iter()
        .map(|c| HistoryImage {
            base: c.img.base.clone(),
            changed_bytes: c.plan.changed_bytes(),
        })
        .collect();
    // Its outcome must be recordable before anything is written: afterwards nothing about
    // the history may stop the commit.
    audit::reserve(
        e,
        &audit::entry(e, Some(&m), &m.id, Outcome::Committed, images.clone()),
    )?;
    if let Err(err) = e.check_interrupt() {
        audit::release(e, &m.id);
        return Err(err);
    }
    // 6-7. Intent and pre-images. Nothing of any base is touched yet: a failure drops what
    // the attempt wrote and leaves the transaction open.
    let mut prepared = match prepare_warming(e, &m, opts, &checked, progress) {
        Ok(p) => p,
        Err(err) => {
            if let Err(clean) = finish::discard_uncommitted(&e.fs, &m.id, &journals) {
                tracing::warn!(tx = %m.id, error = %clean, "could not clean up a failed commit");
            }
            audit::release(e, &m.id);
            return Err(err);
        }
    };
    let after = |source: Error| Error::CommitInterrupted {
        tx: m.id.clone(),
        source: Box::new(source),
    };
    // 8. Barrier — THE COMMIT POINT: once this record is durable the transaction is
    // committed; before it, recovery leaves every base untouched. Its sync also makes the
    // coordinator's `Undo` record durable.
    prepared[0]
        .journal
        .append_sync(&Record::Commit)
        .map_err(after)?;
    e.host.step("commit-point");
    // 9. Apply every plan; each base is synced before its journal says so.
    let mut tallies = Vec::new();
    for (i, (c, p)) in checked.iter().zip(&mut prepared).enumerate() {
        tallies.push(apply_one(e, (&m.id, Keep::of(opts)), i, c, progress).map_err(after)?);
        // Barrier: the base was synced by apply; recording it lets recovery skip it.
        p.journal
            .append_sync(&Record::Applied(Direction::Forward))
            .map_err(after)?;
    }
    e.host.step("applied");
    // 10. History (or a pending entry, if the history cannot take it now), then `Logged`:
    // from here on only cleanup remains.
    audit::record(
        e,
        &audit::entry(e, Some(&m), &m.id, Outcome::Committed, images.clone()),
    );
    prepared[0]
        .journal
        .append_sync(&Record::Logged)
        .map_err(after)?;
    e.host.step("logged");
    // What the commit left in the ranges its pre-images cover, for a later revert.
    let keeping = Keep::of(opts);
    let written = if keeping == Keep::No {
        Vec::new()
    } else {
        written(e, (&m.id, keeping), &checked, &prepared, tallies).map_err(after)?
    };
    // The record first, then what it names: nothing kept is ever left unexplained. An
    // overlay whose data reached its base by reflink is the proof of what it wrote: kept.
    kept::remember(e, &m.id, written.clone(), keeping == Keep::Pinned);
    keep_posts(e, &m.id, &written).map_err(after)?;
    // 11. Cleanup: overlays, pre-images (kept, or as spares), journals, claims, manifest.
    let (mut open_files, mut preimage_files) = (Vec::new(), Vec::new());
    for (c, p) in checked.into_iter().zip(prepared) {
        open_files.push(c.overlay);
        preimage_files.extend(p.preimages);
    }
    let spares = finish::cleanup(e, &m.id, &m.leftovers(), &journals, keeping).map_err(after)?;
    // The overlays (and pre-image files not kept as spares) are unlinked and that is
    // durable; freeing their blocks is left to whoever closes them last.
    open_files.extend(preimage_files);
    finish::close_later(&e.host, open_files);
    drop(fences);
    Ok(CommitReport {
        id: m.id.clone(),
        images,
        spares,
    })
}

/// For every image, what a revert needs: the pre-images' summary, and checksums of what the
/// commit left in every range it changed (the file is filled in once cleanup kept it). A raw
/// base's come from the data the apply wrote (`tallies`); where that data was shared by
/// reflink instead, unseen, the overlay is kept as the proof (`post`) rather than reading
/// the base back; a qcow2 base, which qemu-img wrote, is read back in the ranges its
/// pre-images cover.
fn written<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    (tx, keeping): (&TxId, Keep),
    checked: &[Checked<'_, S>],
    prepared: &[Prepared<S>],
    tallies: Vec<Tally>,
) -> Result<Vec<kept::KeptImage>> {
    let mut out = Vec::new();
    for ((c, p), tally) in checked.iter().zip(prepared).zip(tallies) {
        let Some((summary, ranges)) = &p.saved else {
            continue;
        };
        let base = base::open(&e.fs, tx, (&c.img.base, c.img.base_id.dev_ino()), false)?;
        let new_len = base.len().map_err(Error::io("stat", &c.img.base))?;
        let mut post = None;
        let written = match c.img.base_format {
            Format::Raw if tally.complete() => tally.finish(&crate::written::raw_ranges(&c.plan)),
            Format::Raw => {
                post = Some(layout::post(&c.img.base, tx)?);
                crate::written::raw_ranges(&c.plan)
                    .into_iter()
                    .map(|r| crate::written::Written {
                        offset: r.offset,
                        len: r.len,
                        crc: 0,
                    })
                    .collect()
            }
            Format::Qcow2 => {
                // What the commit grew the file by is checked too: a revert cuts it off.
                let mut ranges = ranges.clone();
                if new_len > summary.old_len {
                    ranges.push(ByteRange::new(summary.old_len, new_len - summary.old_len));
                }
                crate::written::checksums(&base, &c.img.base, &ranges)?
            }
        };
        out.push(kept::KeptImage {
            base: c.img.base.clone(),
            base_dev_ino: c.img.base_id.dev_ino(),
            format: c.img.base_format,
            new_len,
            file: match keeping {
                Keep::Pinned => layout::kept(&c.img.base, tx)?,
                _ => layout::spare(&c.img.base)?,
            },
            summary: summary.clone(),
            written,
            post,
        });
    }
    Ok(out)
}

/// Renames the overlays that `written` says are kept as proof (`post`) to their kept names,
/// durably, before cleanup would remove them.
fn keep_posts<S: Fs, H: Host>(e: &Ctx<S, H>, tx: &TxId, written: &[kept::KeptImage]) -> Result<()> {
    for k in written {
        let Some(post) = &k.post else { continue };
        let overlay = layout::overlay(&k.base, tx)?;
        e.fs.rename(&overlay, post)
            .map_err(Error::io("keep the overlay as", post))?;
        crate::files::sync_dir(&e.fs, layout::dir_of(post)?)?;
    }
    Ok(())
}

/// Step 2: holds qemu's lock bytes of every base and of every overlay that is a regular
/// file. Anything else in an overlay's place (a planted symlink or FIFO, nothing at all)
/// cannot be fenced and is refused by the overlay check of step 3 with a reason that names
/// it.
fn fence_all<S: Fs, H: Host>(e: &Ctx<S, H>, m: &Manifest) -> Result<Vec<H::Guard>> {
    let mut fences = Vec::new();
    // Which of the transaction's images qemu holds, for the message.
    let role = |what: &'static str| {
        move |err| match err {
            Error::InUse { path, pids, .. } => Error::InUse { path, what, pids },
            other => other,
        }
    };
    for img in &m.images {
        fences.push(e.host.fence_image(&img.base).map_err(role("base"))?);
        let ov =
            e.fs.metadata(&img.overlay)
                .map_err(Error::io("stat", &img.overlay))?;
        if ov.is_some_and(|x| x.kind == FileKind::File) {
            fences.push(e.host.fence_image(&img.overlay).map_err(role("overlay"))?);
        }
    }
    Ok(fences)
}

/// Steps 3-5 for one image: the base is unchanged since begin, the overlay is the one begin
/// created, the plan is made, and the overlay is durable.
fn check<'m, S: Fs, H: Host>(
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
fn prepare_warming<S: Fs, H: Host>(
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

/// Step 9 for image `index`: writes its plan into its base (synced).
fn apply_one<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    (tx, keeping): (&TxId, Keep),
    index: usize,
    c: &Checked<'_, S>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Tally> {
    let target = Target {
        path: &c.img.base,
        dev_ino: c.img.base_id.dev_ino(),
        format: c.img.base_format,
    };
    let name: std::sync::Arc<std::path::Path> = c.img.base.as_path().into();
    apply::forward(
        (&e.fs, &e.host),
        tx,
        (&c.overlay, &c.img.overlay),
        target,
        // Checksums only for a commit that stays revertible.
        (
            &c.plan,
            if keeping == Keep::No {
                Tally::off()
            } else {
                Tally::default()
            },
        ),
        &mut |done, total| {
            progress(Progress {
                image: index,
                base: name.clone(),
                phase: Phase::Apply,
                done,
                total,
            })
        },
    )
}
