//! What is on disk after an interrupted commit: which transactions have journals beside
//! the bases, what those journals say ([`CommitState`]), and whether the overlays and
//! pre-images they rely on are still good ([`Facts`]).
//!
//! Everything here only reads; files read back are obeyed only under the trust rule of
//! [`crate::trust`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use storage::{File, Fs};

use super::decide::Facts;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{DevIno, Leftover};
use crate::record::{Direction, FileState, Intent, Record, Source, States, UndoSummary};
use crate::{layout, overlay, plan, preimage, trust, txjournal};

/// What the journal of one image says.
pub(crate) struct ImageJournal {
    /// Where it is.
    pub path: PathBuf,
    /// Its intent; `None` when its creator died before writing it, in which case the
    /// journal describes no change at all.
    pub intent: Option<Intent>,
    /// Its pre-image summary, once journaled.
    pub undo: Option<UndoSummary>,
    /// The directions in which its base was brought to an outcome and synced.
    pub applied: Vec<Direction>,
    /// Who owns the journal: the user who committed, or root.
    pub owner: u32,
    /// What the base and overlay were at the intent; `None` in journals of older versions.
    pub states: Option<States>,
    /// For a revert: the pre-images its forward direction puts back.
    pub reverting: Option<Source>,
}

/// What the journals of one transaction say.
pub(crate) struct CommitState {
    /// The transaction.
    pub tx: TxId,
    /// Its journals, coordinator first.
    pub journals: Vec<PathBuf>,
    /// Each journal's content; `None` for one that does not exist (any more).
    pub images: Vec<Option<ImageJournal>>,
    /// The coordinator holds the commit record.
    pub committed: bool,
    /// The coordinator holds `Logged`.
    pub logged: bool,
    /// The direction an earlier recovery chose and recorded.
    pub recorded: Option<Direction>,
}

impl CommitState {
    /// The intents of the journals that exist and have one.
    pub(crate) fn intents(&self) -> impl Iterator<Item = &Intent> {
        self.images
            .iter()
            .flatten()
            .filter_map(|i| i.intent.as_ref())
    }

    /// True when every journal exists and holds its intent.
    pub(crate) fn complete(&self) -> bool {
        self.images
            .iter()
            .all(|i| i.as_ref().is_some_and(|i| i.intent.is_some()))
    }

    /// The bases named by the intents.
    pub(crate) fn bases(&self) -> Vec<PathBuf> {
        self.intents().map(|i| i.base.clone()).collect()
    }

    /// The transactions this one reverts (none for a commit).
    pub(crate) fn reverts(&self) -> Vec<TxId> {
        let mut txs: Vec<TxId> = self
            .images
            .iter()
            .flatten()
            .filter_map(|j| Some(j.reverting.as_ref()?.tx.clone()))
            .collect();
        txs.dedup();
        txs
    }

    /// What the transaction left beside its bases, for cleanup once it reached the outcome
    /// of `dir`. A revert's "overlay" is the reverted transaction's pre-image file: spent
    /// once the revert is done, kept when it was undone.
    pub(crate) fn leftovers(&self, dir: Direction) -> Vec<Leftover> {
        self.images
            .iter()
            .flatten()
            .filter_map(|j| Some((j, j.intent.as_ref()?)))
            .map(|(j, i)| Leftover {
                base: i.base.clone(),
                overlay: (j.reverting.is_none() || dir == Direction::Forward)
                    .then(|| i.overlay.clone()),
                // Recorded as zeros when begin never learned it: then only the name tells.
                overlay_dev_ino: Some(i.overlay_dev_ino).filter(|d| *d != DevIno::default()),
                owner: Some(j.owner),
            })
            .collect()
    }
}

/// Every transaction with a journal beside one of `bases`, with the path of one journal.
pub(crate) fn commits<S: Fs>(fs: &S, bases: &[PathBuf]) -> Result<BTreeMap<TxId, PathBuf>> {
    let mut commits = BTreeMap::new();
    for base in bases {
        for tx in txjournal::beside(fs, base)? {
            let journal = layout::journal(base, &tx)?;
            commits.entry(tx).or_insert(journal);
        }
    }
    Ok(commits)
}

/// Reads the journal of one image of `tx` at `path` as user `uid`; `None` if it is gone.
fn read_image<S: Fs>(fs: &S, path: &Path, tx: &TxId, uid: u32) -> Result<Option<ImageJournal>> {
    if !crate::files::exists(fs, path)? {
        return Ok(None);
    }
    let owner = fs
        .metadata(path)
        .map_err(Error::io("stat", path))?
        .map_or(uid, |m| m.uid);
    let mut records = txjournal::read_records(fs, path, uid)?.into_iter();
    let mut image = ImageJournal {
        path: path.to_path_buf(),
        intent: None,
        undo: None,
        applied: Vec::new(),
        owner,
        states: None,
        reverting: None,
    };
    // The intent is appended and synced right after creation; a journal without it is one
    // whose creator died before that.
    let Some(Record::Intent(intent)) = records.next() else {
        return Ok(Some(image));
    };
    if intent.tx != *tx {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("it belongs to {}", intent.tx),
        });
    }
    image.intent = Some(intent);
    for r in records {
        match r {
            Record::Undo(s) => image.undo = Some(s),
            Record::Applied(d) => image.applied.push(d),
            Record::States(states) => image.states = Some(states),
            Record::Reverting(source) => image.reverting = Some(source),
            _ => {}
        }
    }
    Ok(Some(image))
}

/// What the journals of `tx` say, starting from its journal at `some_journal`, whose intent
/// names the others.
pub(crate) fn load<S: Fs>(fs: &S, uid: u32, tx: &TxId, some_journal: &Path) -> Result<CommitState> {
    let first = read_image(fs, some_journal, tx, uid)?
        .ok_or_else(|| Error::Invalid(format!("journal {} vanished", some_journal.display())))?;
    let journals = match first.intent {
        Some(i) if !i.journals.is_empty() => i.journals,
        _ => vec![some_journal.to_path_buf()],
    };
    let coordinator = &journals[0];
    if !crate::files::exists(fs, coordinator)? {
        return Err(Error::Unrecoverable {
            tx: tx.clone(),
            reason: format!(
                "its coordinator journal {} is missing",
                coordinator.display()
            ),
        });
    }
    let records = txjournal::read_records(fs, coordinator, uid)?;
    let recorded = records.iter().rev().find_map(|r| match r {
        Record::Recovering(d) => Some(*d),
        _ => None,
    });
    let images = journals
        .iter()
        .map(|j| read_image(fs, j, tx, uid))
        .collect::<Result<Vec<_>>>()?;
    Ok(CommitState {
        tx: tx.clone(),
        committed: records.contains(&Record::Commit),
        logged: records.contains(&Record::Logged),
        recorded,
        journals,
        images,
    })
}

/// The facts the policy decides on, for `st`, when the user asked to undo (`want_undo`).
///
/// Also returns why the pre-images are refused by the trust rule, if they are: saying that
/// is more useful than saying there are none.
pub(crate) fn facts<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    st: &CommitState,
    want_undo: bool,
) -> Result<(Facts, Option<String>)> {
    let complete = st.complete();
    let overlays_ok = complete
        && st.images.iter().flatten().all(|j| {
            j.intent
                .as_ref()
                .is_some_and(|i| forward_source_good(e, i, j))
        });
    let undo_refused = if st.committed && !st.logged {
        untrusted_preimages(e, st)?
    } else {
        None
    };
    let uid = e.host.user().1;
    let verified = |image: &ImageJournal| {
        let (Some(intent), Some(summary)) = (&image.intent, &image.undo) else {
            return false;
        };
        let Ok(path) = layout::undo(&intent.base, &st.tx) else {
            return false;
        };
        intent.undo && preimage::verify(&e.fs, &path, &st.tx, summary, uid).is_ok()
    };
    let undo_available =
        undo_refused.is_none() && complete && st.images.iter().flatten().all(verified);
    let facts = Facts {
        committed: st.committed,
        logged: st.logged,
        recorded: st.recorded,
        want_undo,
        overlays_ok,
        undo_available,
        bases_untouched: true,
    };
    Ok((facts, undo_refused))
}

/// Why one of the pre-image files of `st` cannot be trusted, if one cannot: restoring from a
/// planted one would write bytes of someone else's choosing into the base.
pub(crate) fn untrusted_preimages<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    st: &CommitState,
) -> Result<Option<String>> {
    let uid = e.host.user().1;
    for intent in st.intents() {
        let path = layout::undo(&intent.base, &st.tx)?;
        if let Some(why) = trust::untrusted_path(&e.fs, &path, uid)? {
            return Ok(Some(format!(
                "its pre-image file {} is refused: {why}",
                path.display()
            )));
        }
    }
    Ok(None)
}

/// True when what the forward direction of `image` writes from is still good: its overlay
/// ([`overlay_still_good`]) or, for a revert, the pre-images it puts back, which must verify
/// as the reverted transaction's.
fn forward_source_good<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    intent: &Intent,
    image: &ImageJournal,
) -> bool {
    let Some(source) = &image.reverting else {
        return overlay_still_good(e, intent, image.states);
    };
    match preimage::verify(
        &e.fs,
        &source.file,
        &source.tx,
        &source.summary,
        e.host.user().1,
    ) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(file = %source.file.display(), error = %err, "the pre-images being reverted to cannot be used");
            false
        }
    }
}

/// True when the overlay of `intent` is still the one begin created and still holds exactly
/// the journaled plan (and, where the journal recorded it, is unchanged since the intent),
/// so a redo from it writes what the commit meant to write.
pub(crate) fn overlay_still_good<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    intent: &Intent,
    states: Option<States>,
) -> bool {
    let check = || -> Result<bool> {
        let ov = overlay::open_checked(
            &e.fs,
            &intent.tx,
            (&intent.overlay, Some(intent.overlay_dev_ino)),
            (&intent.base, intent.base_format),
        )?;
        let plan = plan::for_overlay(
            &e.fs,
            &intent.tx,
            (&ov, &intent.overlay),
            (&intent.base, intent.plan.old_len, intent.base_format),
        )?;
        // Written after the intent (by qemu, a guest, anything): a redo would land a third
        // state, neither what was committed nor what was there.
        if let Some(states) = states {
            let now = FileState::of(&ov.stat().map_err(Error::io("stat", &intent.overlay))?);
            if !states.overlay.unchanged(&now) {
                tracing::warn!(overlay = %intent.overlay.display(), "the overlay changed after the commit was interrupted");
                return Ok(false);
            }
        }
        Ok(plan.steps == intent.plan.steps && plan.virtual_size == intent.plan.virtual_size)
    };
    match check() {
        Ok(ok) => ok,
        Err(err) => {
            tracing::warn!(overlay = %intent.overlay.display(), error = %err, "overlay cannot be used for redo");
            false
        }
    }
}

/// How deep `--scan` descends below each directory it is given.
const SCAN_DEPTH: usize = 16;

/// The bases under `dirs` (recursively, following no symlink) that have an imgtx journal or
/// pre-image file beside them: where the state directory was lost, these are the
/// interrupted commits.
pub(crate) fn scan<S: Fs>(fs: &S, dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    scan_for(fs, dirs, |n| {
        layout::parse_journal_name(n)
            .or_else(|| layout::parse_undo_name(n))
            .map(|(base, _)| base)
    })
}

/// The bases under `dirs` (as [`scan`] walks them) that have a claim beside them: with a
/// sanlock lockspace, where open transactions of dead hosts are found.
pub(crate) fn scan_claims<S: Fs>(fs: &S, dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    scan_for(fs, dirs, |n| {
        n.strip_prefix('.')
            .and_then(|n| n.strip_suffix(".imgtx.claim"))
            .filter(|base| !base.is_empty())
    })
}

/// The bases under `dirs` that `base_of` finds a file beside, by its name.
fn scan_for<S: Fs>(
    fs: &S,
    dirs: &[PathBuf],
    base_of: impl Fn(&str) -> Option<&str>,
) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut todo: Vec<(PathBuf, usize)> = dirs.iter().map(|d| (d.clone(), 0)).collect();
    while let Some((dir, depth)) = todo.pop() {
        let names = match fs.read_dir(&dir) {
            Ok(names) => names,
            // A directory given by the user must be readable; one found below is skipped
            // with a warning, like `find` does.
            Err(source) if depth == 0 => {
                return Err(Error::Io {
                    action: "scan",
                    path: dir,
                    source,
                })
            }
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "not scanned");
                continue;
            }
        };
        for name in names {
            let path = dir.join(&name);
            let Some(meta) = fs.metadata(&path).map_err(Error::io("stat", &path))? else {
                continue;
            };
            if meta.kind == storage::FileKind::Dir && depth < SCAN_DEPTH {
                todo.push((path, depth + 1));
            } else if let Some(base) = name.to_str().and_then(&base_of) {
                found.push(dir.join(base));
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}
