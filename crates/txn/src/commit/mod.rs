//! `commit`: the crash-safe copy of every overlay into its base, with one commit point for
//! the whole transaction.
//!
//! [`commit`] runs the steps of `docs/commit-protocol.md` in order, and its comments carry
//! the step numbers; the work of each step is done below it or in the modules it names.
//! Every step is journaled, so a crash anywhere leaves what `recover` needs. `prepare`
//! holds steps 3-7 (everything before the commit point) and `proof` what a commit leaves
//! for a later revert.

use std::path::PathBuf;

use storage::{FileKind, Fs};

use crate::apply::{self, Target};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::finish::Keep;
use crate::history::{HistoryImage, Outcome};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::Manifest;
use crate::options::{CommitOptions, CommitReport, Phase, Progress};
use crate::record::{Direction, Record};
use crate::written::Tally;
use crate::{audit, base, finish};

mod prepare;
mod proof;

pub(crate) use prepare::save_ranges;
use prepare::{check, prepare_warming, Checked};

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
    let images: Vec<HistoryImage> = checked.iter().map(Checked::history_image).collect();
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
    proof::remember(e, (&m.id, keeping), (&checked, &prepared), tallies).map_err(after)?;
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
