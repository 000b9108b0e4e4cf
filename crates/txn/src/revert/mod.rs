//! `revert`: takes back a committed transaction from the pre-images it kept, for all its
//! bases at once, as a transaction of its own.
//!
//! A revert R of transaction TX is a commit whose "overlay" is TX's pre-image file: it claims
//! and fences the bases like any transaction, journals an intent (with a `Reverting` record
//! naming TX's pre-images), saves pre-images of its own, writes the commit record, puts TX's
//! pre-images back, records the history entry, and cleans up. A crash anywhere recovers like
//! a commit's: before the commit record to before the revert, after it to after the revert
//! (or, with `recover --undo`, back from R's own pre-images). R's pre-images are kept like a
//! commit's, so a revert can be reverted in turn.
//!
//! It refuses, before writing anything, unless every base still holds exactly what TX left:
//! the same file, of the length TX left, with the checksums recorded at commit in every
//! range TX's pre-images cover. A later transaction that changed one of those ranges is named
//! (it must be reverted first); a change nobody recorded was made outside imgtx.
//!
//! This module runs the revert and what follows its commit point; `check` decides the
//! refusals and `prepare` does what comes before the commit point.
//!
//! What it does not do: revert a commit whose pre-images are gone (a later commit of the
//! base reused its spare, `--no-undo`, or `prune`), or merge around later changes.

use std::path::{Path, PathBuf};

use storage::Fs;

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::finish::{self, Keep};
use crate::history::{HistoryEntry, HistoryImage, Outcome};
use crate::host::Host;
use crate::id::TxId;
use crate::kept::{self, KeptImage};
use crate::manifest::{DevIno, Leftover};
use crate::options::{Phase, Progress, RevertReport};
use crate::plan::ByteRange;
use crate::record::{Direction, Intent, Record, Source, UndoSummary};
use crate::{audit, base, claim, layout, preimage};

mod check;
mod prepare;

use check::{check, not_kept, Checked};
use prepare::{intent, prepare, source_of};

/// Reverts transaction `tx`; `progress` hears about the data copied.
pub(crate) fn revert<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    tx: &TxId,
    progress: &mut dyn FnMut(Progress),
) -> Result<RevertReport> {
    // One revert of `tx` at a time in this state directory; claims keep out everyone else.
    let _guard = e.lock_tx(tx)?;
    let rec = e
        .state
        .load_kept(&e.fs, tx)?
        .ok_or_else(|| not_kept(e, tx))?;
    let id = e.host.new_id()?;
    // Recorded before anything is claimed, for recovery to release it if this dies early.
    let rec = kept::Record {
        reverting: Some(id.clone()),
        ..rec
    };
    e.state.save_kept(&e.fs, &rec)?;
    let bases: Vec<PathBuf> = rec.images.iter().map(|i| i.base.clone()).collect();
    // Across hosts: the bases' leases for the whole revert, which writes them.
    let _leases = e.lease_bases(bases.iter().map(PathBuf::as_path))?;
    let result = claim_all(e, &id, &bases).and_then(|()| {
        e.host.step("revert-claimed");
        run(e, (&id, &rec), progress)
    });
    if let Err(err) = &result {
        if !matches!(err, Error::CommitInterrupted { .. }) {
            // Nothing of any base was written: the images are free again.
            if let Err(error) = release(e, &rec, &id) {
                tracing::warn!(tx = %id, %error, "could not release the claims of a failed revert");
            }
        }
    }
    e.drop_lock_file(tx);
    result
}

/// Releases the claims of the revert `id` of `rec.tx`, and forgets that it was under way.
fn release<S: Fs, H: Host>(e: &Ctx<S, H>, rec: &kept::Record, id: &TxId) -> Result<()> {
    let bases = rec.images.iter().map(|i| i.base.as_path());
    claim::release_all(&e.fs, bases, id)?;
    // As it is on disk now: the revert may have pinned its files.
    match e.state.load_kept(&e.fs, &rec.tx)? {
        Some(now) if now.reverting.as_ref() == Some(id) => e.state.save_kept(
            &e.fs,
            &kept::Record {
                reverting: None,
                ..now
            },
        ),
        _ => Ok(()),
    }
}

/// Releases what interrupted reverts claimed, for those that left no journal (they died
/// before writing one, or were undone): their transactions can be reverted again.
pub(crate) fn release_interrupted<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    dry_run: bool,
) -> Result<Vec<crate::options::RecoverAction>> {
    let mut actions = Vec::new();
    for rec in e.state.list_kept(&e.fs)? {
        let Some(id) = rec.reverting.clone() else {
            continue;
        };
        // A revert of it still running holds this lock.
        let Some(_guard) = e.host.lock_exclusive(&e.state.lock(&rec.tx), false)? else {
            continue;
        };
        let mut journaled = false;
        for i in &rec.images {
            journaled |= crate::txjournal::beside(&e.fs, &i.base)?.contains(&id);
        }
        if journaled {
            continue;
        }
        if !dry_run {
            release(e, &rec, &id)?;
        }
        actions.push(crate::options::RecoverAction {
            tx: id.to_string(),
            action: crate::options::RecoveryAction::ReleasedRevert,
            bases: rec.images.iter().map(|i| i.base.clone()).collect(),
        });
    }
    Ok(actions)
}

/// The revert `id` of the transaction `rec` names, its images claimed.
fn run<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    (id, rec): (&TxId, &kept::Record),
    progress: &mut dyn FnMut(Progress),
) -> Result<RevertReport> {
    let tx = &rec.tx;
    for img in &rec.images {
        base::check_no_interrupted(&e.fs, &img.base)?;
    }
    // Fence qemu out of every base until the revert is over.
    let fences = rec
        .images
        .iter()
        .map(|i| e.host.fence_image(&i.base))
        .collect::<Result<Vec<_>>>()?;
    let mut checked = rec
        .images
        .iter()
        .map(|k| check(e, rec, k, id))
        .collect::<Result<Vec<_>>>()?;
    let journals: Vec<PathBuf> = checked.iter().map(|c| c.journal.clone()).collect();
    let images: Vec<HistoryImage> = checked
        .iter()
        .map(|c| HistoryImage {
            base: c.kept.base.clone(),
            changed_bytes: c.kept.summary.bytes,
        })
        .collect();
    audit::reserve(e, &history_entry(e, id, tx, images.clone()))?;
    let prepared = match prepare(e, (id, rec), &mut checked, progress) {
        Ok(p) => p,
        Err(err) => {
            if let Err(clean) = finish::discard_uncommitted(&e.fs, id, &journals) {
                tracing::warn!(tx = %id, error = %clean, "could not clean up a failed revert");
            }
            audit::release(e, id);
            return Err(err);
        }
    };
    let after = |source: Error| Error::CommitInterrupted {
        tx: id.clone(),
        source: Box::new(source),
    };
    let (mut journals_open, saved): (Vec<_>, Vec<_>) = prepared.into_iter().unzip();
    // THE COMMIT POINT: from here on, recovery finishes the revert.
    journals_open[0]
        .append_sync(&Record::Commit)
        .map_err(after)?;
    e.host.step("commit-point");
    for (i, (c, j)) in checked.iter().zip(&mut journals_open).enumerate() {
        let intent = intent(e, (id, i), c, &journals)?;
        let source = source_of(tx, c);
        let name: std::sync::Arc<Path> = c.kept.base.as_path().into();
        put_back(e, &intent, Some(&source), &mut |done, total| {
            progress(Progress {
                image: i,
                base: name.clone(),
                phase: Phase::Restore,
                done,
                total,
            })
        })
        .map_err(after)?;
        // Barrier: the base was synced by the restore.
        j.append_sync(&Record::Applied(Direction::Forward))
            .map_err(after)?;
    }
    e.host.step("applied");
    audit::record(e, &history_entry(e, id, tx, images.clone()));
    journals_open[0]
        .append_sync(&Record::Logged)
        .map_err(after)?;
    e.host.step("logged");
    let own = own_kept(e, id, &checked, saved).map_err(after)?;
    drop(journals_open);
    kept::remember(e, id, own, false);
    let spares = clean_up(e, (id, tx), &checked, &journals).map_err(after)?;
    drop(fences);
    Ok(RevertReport {
        id: id.clone(),
        reverted: tx.clone(),
        images,
        spares,
    })
}

/// After the history entry: removes the revert's journals and claims, keeps its own
/// pre-images as the bases' spares, and spends the reverted transaction's.
fn clean_up<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    (id, tx): (&TxId, &TxId),
    checked: &[Checked<'_>],
    journals: &[PathBuf],
) -> Result<Vec<crate::options::Spare>> {
    let leftovers: Vec<Leftover> = checked
        .iter()
        .map(|c| Leftover {
            base: c.kept.base.clone(),
            // The reverted transaction's pre-images are spent.
            overlay: Some(c.file.clone()),
            overlay_dev_ino: e
                .fs
                .metadata(&c.file)
                .ok()
                .flatten()
                .map(|m| DevIno::of(&m)),
            owner: Some(e.host.user().1),
        })
        .collect();
    let spares = finish::cleanup(e, id, &leftovers, journals, Keep::Spare)?;
    spent(e, std::slice::from_ref(tx))?;
    Ok(spares)
}

/// Claims every base (and its other names) for the revert `id`, or refuses naming the holder;
/// a refusal releases what was claimed.
fn claim_all<S: Fs, H: Host>(e: &Ctx<S, H>, id: &TxId, bases: &[PathBuf]) -> Result<()> {
    let (user, uid) = e.host.user();
    let c = claim::Claim {
        version: 1,
        tx: id.clone(),
        name: None,
        state_dir: e.state.root().to_path_buf(),
        user,
        uid,
        host: e.host.hostname(),
        since: e.now(),
        lease: e.leases.member(),
    };
    let mut taken: Vec<PathBuf> = Vec::new();
    for base in bases {
        let held = claim::names(&e.fs, base).and_then(|names| {
            for name in names {
                if let Some(found) = claim::take(&e.fs, &name, &c)? {
                    return Ok(Some(found));
                }
            }
            Ok(None)
        });
        let refusal = match held {
            Ok(None) => {
                taken.push(base.clone());
                continue;
            }
            Ok(Some(found)) => match found.holder() {
                Some(holder) => Error::Busy {
                    path: base.clone(),
                    holder: Box::new(holder),
                },
                // Released between the two looks: another try would most likely succeed.
                None => Error::Invalid(format!(
                    "the claim of {} changed while being taken; try again",
                    base.display()
                )),
            },
            Err(err) => err,
        };
        taken.push(base.clone());
        claim::release_all(&e.fs, taken.iter().map(PathBuf::as_path), id)?;
        return Err(refusal);
    }
    Ok(())
}

/// Puts the pre-images `source` names back into the base of `intent` (synced): the forward
/// direction of a revert, for the revert itself and for its recovery.
pub(crate) fn put_back<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    intent: &Intent,
    source: Option<&Source>,
    report: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let Some(source) = source else {
        return Err(Error::Invalid("a revert without its source".into()));
    };
    let base = base::open(&e.fs, &intent.tx, (&intent.base, intent.base_dev_ino), true)?;
    let total = source.summary.bytes;
    report(0, total);
    preimage::restore(
        &e.fs,
        (&source.file, &base, &intent.base),
        &source.tx,
        &source.summary,
        e.host.user().1,
        &mut |done| report(done, total),
    )
}

/// The history entry of the revert `id` of `reverted`.
pub(crate) fn history_entry<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    id: &TxId,
    reverted: &TxId,
    images: Vec<HistoryImage>,
) -> HistoryEntry {
    let mut entry = audit::entry(e, None, id, Outcome::Reverted, images);
    entry.name = Some(format!("revert of {reverted}"));
    entry.command = Some(vec![
        "imgtx".to_owned(),
        "revert".to_owned(),
        reverted.to_string(),
    ]);
    entry.reverts = Some(reverted.clone());
    entry
}

/// Forgets the kept pre-images of the reverted transactions `txs`: they are spent. Their
/// files are gone already, unless the revert was finished by a recovery that kept them.
pub(crate) fn spent<S: Fs, H: Host>(e: &Ctx<S, H>, txs: &[TxId]) -> Result<()> {
    for tx in txs {
        if let Some(rec) = e.state.load_kept(&e.fs, tx)? {
            kept::remove_posts(&e.fs, &rec)?;
            for k in &rec.images {
                let pinned = layout::kept(&k.base, tx)?;
                crate::files::remove_durably(&e.fs, &pinned, layout::dir_of(&pinned)?)?;
            }
            e.state.remove_kept(&e.fs, tx)?;
        }
    }
    Ok(())
}

/// What the revert `id` leaves to revert it in turn: checksums of what it put back, in every
/// range its own pre-images cover.
fn own_kept<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    id: &TxId,
    checked: &[Checked<'_>],
    saved: Vec<UndoSummary>,
) -> Result<Vec<KeptImage>> {
    let mut out = Vec::new();
    for (c, summary) in checked.iter().zip(saved) {
        let k = c.kept;
        let base = base::open(&e.fs, id, (&k.base, k.base_dev_ino), false)?;
        let ranges: Vec<ByteRange> = c
            .ranges
            .iter()
            .filter(|r| r.offset < k.summary.old_len)
            .map(|r| ByteRange::new(r.offset, r.len.min(k.summary.old_len - r.offset)))
            .collect();
        out.push(KeptImage {
            base: k.base.clone(),
            base_dev_ino: k.base_dev_ino,
            format: k.format,
            new_len: k.summary.old_len,
            file: layout::spare(&k.base)?,
            summary,
            written: crate::written::checksums(&base, &k.base, &ranges)?,
            post: None,
        });
    }
    Ok(out)
}
