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
use crate::plan::{Action, ByteRange, Plan, Step};
use crate::record::{Direction, FileState, Intent, Record, Source, States, UndoSummary};
use crate::txjournal::TxJournal;
use crate::{audit, base, claim, layout, preimage};

/// One base of the revert, checked: it holds what the reverted transaction left, and the
/// file that holds that transaction's pre-images verifies.
struct Checked<'k> {
    kept: &'k KeptImage,
    /// Where the reverted transaction's pre-images are now.
    file: PathBuf,
    /// The ranges they cover, plus what the reverted transaction grew the base by: what the
    /// revert overwrites or cuts off, hence saves first.
    ranges: Vec<ByteRange>,
    /// This image's journal.
    journal: PathBuf,
}

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

/// Checks that `k`'s base holds exactly what transaction `rec.tx` left, and finds its
/// pre-images.
fn check<'k, S: Fs, H: Host>(
    e: &Ctx<S, H>,
    rec: &kept::Record,
    k: &'k KeptImage,
    id: &TxId,
) -> Result<Checked<'k>> {
    let conflict = |reason: String, later: Option<TxId>| Error::RevertConflict {
        tx: rec.tx.clone(),
        path: k.base.clone(),
        reason,
        later,
    };
    let meta = e.fs.metadata(&k.base).map_err(Error::io("stat", &k.base))?;
    let Some(meta) = meta.filter(|m| DevIno::of(m) == k.base_dev_ino) else {
        return Err(conflict(
            "is no longer the file the transaction committed into (moved, deleted or replaced)"
                .into(),
            None,
        ));
    };
    let base = base::open(&e.fs, &rec.tx, (&k.base, k.base_dev_ino), false)?;
    if meta.len != k.new_len {
        return Err(conflict(
            format!(
                "is {} bytes long, not the {} the transaction left",
                meta.len, k.new_len
            ),
            later_change(e, rec, k, None)?,
        ));
    }
    if let Some(w) = kept::first_change(&e.fs, &base, k, e.host.user().1)? {
        return Err(conflict(
            format!(
                "no longer holds what the transaction wrote at bytes {:#x}..{:#x}",
                w.offset,
                w.offset + w.len
            ),
            later_change(e, rec, k, Some(ByteRange::new(w.offset, w.len)))?,
        ));
    }
    let file = locate(e, &rec.tx, k)?;
    let mut ranges = Vec::new();
    preimage::for_each_saved(
        &e.fs,
        &file,
        (&rec.tx, e.host.user().1),
        &k.summary,
        |offset, len, _| {
            ranges.push(ByteRange::new(offset, len));
            Ok(())
        },
    )?;
    if k.new_len > k.summary.old_len {
        ranges.push(ByteRange::new(
            k.summary.old_len,
            k.new_len - k.summary.old_len,
        ));
    }
    Ok(Checked {
        kept: k,
        file,
        ranges,
        journal: layout::journal(&k.base, id)?,
    })
}

/// Where `tx`'s pre-images of `k.base` are: under the name the record gives, under the name
/// a revert pins them to, or as the base's spare; whichever verifies as `tx`'s.
fn locate<S: Fs, H: Host>(e: &Ctx<S, H>, tx: &TxId, k: &KeptImage) -> Result<PathBuf> {
    let candidates = [
        k.file.clone(),
        layout::kept(&k.base, tx)?,
        layout::spare(&k.base)?,
    ];
    let mut why = None;
    for path in candidates {
        if !crate::files::exists(&e.fs, &path)? {
            continue;
        }
        match preimage::verify(&e.fs, &path, tx, &k.summary, e.host.user().1) {
            Ok(()) => return Ok(path),
            Err(err) => why = Some(format!("{}: {err}", path.display())),
        }
    }
    Err(Error::NotKept {
        tx: tx.clone(),
        reason: why.map_or_else(
            || format!("its pre-images of {} are gone", k.base.display()),
            |w| {
                format!(
                    "its pre-images of {} no longer verify ({w})",
                    k.base.display()
                )
            },
        ),
    })
}

/// Which later transaction changed `k`'s base (where it overlaps `range`, when known): the
/// earliest later one with kept checksums there, else the earliest later entry of the
/// history that changed the base.
fn later_change<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    rec: &kept::Record,
    k: &KeptImage,
    range: Option<ByteRange>,
) -> Result<Option<TxId>> {
    let overlaps =
        |w: &kept::Written| range.is_none_or(|r| w.offset < r.end() && r.offset < w.offset + w.len);
    for later in e.state.list_kept(&e.fs)? {
        let earlier = (&later.committed, later.committed_ns) < (&rec.committed, rec.committed_ns);
        if later.tx == rec.tx || earlier {
            continue;
        }
        let hit = later
            .images
            .iter()
            .any(|i| i.base_dev_ino == k.base_dev_ino && i.written.iter().any(overlaps));
        if hit {
            return Ok(Some(later.tx));
        }
    }
    let history = match crate::history::read(&e.fs, &e.state.history()) {
        Ok(h) => h,
        // Only a better message is lost.
        Err(_) => return Ok(None),
    };
    let since = history
        .entries
        .iter()
        .rposition(|h| h.id == rec.tx)
        .map_or(0, |i| i + 1);
    Ok(history.entries[since..]
        .iter()
        .find(|h| h.outcome.changed_images() && h.images.iter().any(|i| i.base == k.base))
        .map(|h| h.id.clone()))
}

/// The error for a transaction with no kept pre-images, saying why when the history knows.
fn not_kept<S: Fs, H: Host>(e: &Ctx<S, H>, tx: &TxId) -> Error {
    let entry = crate::history::read(&e.fs, &e.state.history())
        .ok()
        .and_then(|h| h.entries.into_iter().rev().find(|h| h.id == *tx));
    let reason = match entry {
        None => "this state directory has no record of it".to_owned(),
        Some(h) if h.outcome == Outcome::Reverted => {
            format!(
                "it is the revert recorded on {}; its pre-images are gone",
                h.ended
            )
        }
        Some(h) if !h.outcome.changed_images() => {
            format!("it changed nothing (it was {})", h.outcome.as_str())
        }
        Some(_) => "its pre-images are no longer kept (a later commit of a base reused them, \
                    it ran without pre-images, it was already reverted, or they were pruned)"
            .to_owned(),
    };
    Error::NotKept {
        tx: tx.clone(),
        reason,
    }
}

/// Before the commit point: pins the reverted transaction's pre-images, journals every
/// image's intent, and saves the revert's own pre-images. Returns the open journals with
/// what each saved.
fn prepare<S: Fs, H: Host>(
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
fn intent<S: Fs, H: Host>(
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

fn source_of(tx: &TxId, c: &Checked<'_>) -> Source {
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
