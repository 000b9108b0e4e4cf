//! `recover`: finish or undo every interrupted operation found, idempotently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use storage::{File, Fs};

use crate::commit::TxJournal;
use crate::error::{Error, Result};
use crate::history::{HistoryImage, Outcome};
use crate::overlay::open_checked;
use crate::record::{Direction, Intent, Record, UndoSummary};
use crate::state::{Manifest, TxState};
use crate::{layout, undo, Engine, Host, Phase, Progress};

/// What `recover` should do.
#[derive(Debug, Clone, Default)]
pub struct RecoverOptions {
    /// Bases to look beside (absolute); empty means every registered transaction.
    pub paths: Vec<PathBuf>,
    /// Undo committed-but-unfinished commits instead of finishing them.
    pub undo: bool,
    /// Only report what would be done.
    pub dry_run: bool,
}

/// One thing recovery did (or would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoverAction {
    /// The transaction.
    pub tx: String,
    /// What was done: `discarded_uncommitted`, `recovered_forward`, `recovered_back`,
    /// `finished_cleanup`, `cleaned_begin`, `finished_rollback`, `removed_orphan_claim`.
    pub action: &'static str,
    /// The bases involved.
    pub bases: Vec<PathBuf>,
}

/// Everything recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoverReport {
    /// True when nothing was changed because of `dry_run`.
    pub dry_run: bool,
    /// The actions, in order.
    pub actions: Vec<RecoverAction>,
}

/// What the journals of one transaction say, reduced to what decides recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The coordinator holds the commit record.
    pub committed: bool,
    /// The history entry is written; only cleanup remains.
    pub logged: bool,
    /// The direction an earlier recovery chose.
    pub recorded: Option<Direction>,
    /// The user asked to undo.
    pub want_undo: bool,
    /// Every overlay is present and unchanged.
    pub overlays_ok: bool,
    /// Every image has verified pre-images.
    pub undo_available: bool,
}

/// What recovery does for one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Not committed: drop journals and pre-images; bases untouched; transaction stays open.
    Discard,
    /// Outcome reached and logged: remove what is left.
    Cleanup,
    /// Bring every base to the outcome of this direction.
    Go(Direction),
    /// Neither direction is safe.
    Refuse(&'static str),
}

/// The recovery policy, as one pure function.
pub(crate) fn decide(f: Facts) -> Decision {
    if !f.committed {
        return Decision::Discard;
    }
    if f.logged {
        return Decision::Cleanup;
    }
    // Undo is always safe when pre-images exist: they cover every byte forward may have
    // written, and the old length drops any growth. Forward needs every overlay intact.
    let back = f.recorded == Some(Direction::Back) || f.want_undo || !f.overlays_ok;
    match (back, f.undo_available) {
        (true, true) => Decision::Go(Direction::Back),
        (false, _) => Decision::Go(Direction::Forward),
        (true, false) if !f.overlays_ok => {
            Decision::Refuse("an overlay is missing or damaged and no usable pre-images exist (the commit ran with --no-undo, or its pre-image file is missing, damaged or refused)")
        }
        (true, false) => Decision::Refuse("no usable pre-images exist (the commit ran with --no-undo, or its pre-image file is missing, damaged or refused), so it can only be finished; run recover without --undo"),
    }
}

struct ImageJournal {
    path: PathBuf,
    intent: Intent,
    undo: Option<UndoSummary>,
    applied: Vec<Direction>,
}

struct CommitState {
    tx: String,
    journals: Vec<PathBuf>,
    images: Vec<Option<ImageJournal>>,
    committed: bool,
    logged: bool,
    recorded: Option<Direction>,
}

impl<S: Fs, H: Host> Engine<S, H> {
    /// Finishes or undoes every interrupted operation found beside `opts.paths` (or of every
    /// registered transaction when empty). Running it again does nothing more.
    pub fn recover(&self, opts: &RecoverOptions) -> Result<RecoverReport> {
        self.recover_with_progress(opts, &mut |_| {})
    }

    /// [`Engine::recover`], with `progress` hearing about the data copied back into bases
    /// (a roll forward can copy as much as the commit it finishes).
    pub fn recover_with_progress(
        &self,
        opts: &RecoverOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RecoverReport> {
        let mut report = RecoverReport {
            dry_run: opts.dry_run,
            actions: Vec::new(),
        };
        let ids = self.state.list(&self.fs)?;
        let mut manifests = Vec::new();
        for id in &ids {
            if let Some(m) = self.state.load(&self.fs, id)? {
                manifests.push(m);
            }
        }
        let bases: Vec<PathBuf> = if opts.paths.is_empty() {
            manifests
                .iter()
                .flat_map(|m| m.images.iter().map(|i| i.base.clone()))
                .collect()
        } else {
            // User paths may reach a base through a symlink; what is stored never does.
            opts.paths
                .iter()
                .map(|p| self.fs.canonicalize(p).map_err(Error::io("resolve", p)))
                .collect::<Result<_>>()?
        };
        // tx id -> a journal of it
        let mut commits: BTreeMap<String, PathBuf> = BTreeMap::new();
        for base in &bases {
            for tx in self.journals_beside(base)? {
                commits
                    .entry(tx.clone())
                    .or_insert(layout::journal(base, &tx)?);
            }
        }
        for (tx, journal) in &commits {
            let _guard = self.lock_tx(tx)?;
            if let Some(action) = self.recover_commit(tx, journal, opts, progress)? {
                report.actions.push(action);
            }
        }
        let wanted = |m: &Manifest| {
            opts.paths.is_empty()
                || m.images
                    .iter()
                    .any(|i| bases.iter().any(|p| self.same_file(p, &i.base)))
        };
        for m in manifests
            .iter()
            .filter(|m| m.state != TxState::Open && wanted(m))
        {
            // A live begin or rollback holds the lock; only a dead one is cleaned up.
            let Some(_guard) = self.host.lock_exclusive(&self.state.lock(&m.id), false)? else {
                continue;
            };
            let Some(m) = self.state.load(&self.fs, &m.id)? else {
                continue;
            };
            let action = match m.state {
                TxState::Beginning => "cleaned_begin",
                TxState::RollingBack => "finished_rollback",
                TxState::Finished => "finished_cleanup",
                TxState::Open => continue,
            };
            if !opts.dry_run {
                match m.state {
                    TxState::Beginning => self.undo_begin(&m)?,
                    TxState::RollingBack => self.finish_rollback(&m)?,
                    TxState::Finished => {
                        let journals = m
                            .images
                            .iter()
                            .map(|i| layout::journal(&i.base, &m.id))
                            .collect::<Result<Vec<_>>>()?;
                        self.cleanup_commit(&m.id, &m.cleanup_list(), &journals, false)?;
                    }
                    TxState::Open => {}
                }
                self.drop_lock_file(&m.id);
            }
            report.actions.push(RecoverAction {
                tx: m.id.clone(),
                action,
                bases: m.images.iter().map(|i| i.base.clone()).collect(),
            });
        }
        if opts.paths.is_empty() {
            for (path, holder) in self.state.list_claims(&self.fs)? {
                if self.state.load(&self.fs, &holder).ok().flatten().is_none() {
                    if !opts.dry_run {
                        self.state.remove_claim(&self.fs, &path)?;
                    }
                    report.actions.push(RecoverAction {
                        tx: holder,
                        action: "removed_orphan_claim",
                        bases: Vec::new(),
                    });
                }
            }
            for (id, path) in self.state.list_tmp(&self.fs)? {
                // A live save holds the transaction's lock; only a dead one's leftover goes.
                let Some(_guard) = self.host.lock_exclusive(&self.state.lock(&id), false)? else {
                    continue;
                };
                if !opts.dry_run {
                    tracing::debug!(path = %path.display(), "removing a manifest save that never finished");
                    self.state.remove_tmp(&self.fs, &path)?;
                    if self.state.load(&self.fs, &id)?.is_none() {
                        self.drop_lock_file(&id);
                    }
                }
            }
            // A process killed between removing a manifest and its lock file leaves the lock
            // file behind; it holds no state, but would stay forever. A live begin holds its
            // lock while it creates the manifest, so a lock we can take without a manifest is
            // a leftover. (Whoever opened the file meanwhile re-checks its name after locking.)
            for id in self.state.list_locks(&self.fs)? {
                if commits.contains_key(&id) || opts.dry_run {
                    continue;
                }
                let Some(_guard) = self.host.lock_exclusive(&self.state.lock(&id), false)? else {
                    continue;
                };
                if self.state.load(&self.fs, &id)?.is_none() {
                    tracing::debug!(tx = %id, "removing a lock file its transaction left behind");
                    self.drop_lock_file(&id);
                }
            }
        }
        Ok(report)
    }

    fn same_file(&self, a: &Path, b: &Path) -> bool {
        if a == b {
            return true;
        }
        match (self.fs.metadata(a), self.fs.metadata(b)) {
            (Ok(Some(x)), Ok(Some(y))) => (x.dev, x.ino) == (y.dev, y.ino),
            _ => false,
        }
    }

    fn read_image_journal(&self, path: &Path, tx: &str) -> Result<Option<ImageJournal>> {
        if self
            .fs
            .metadata(path)
            .map_err(Error::io("stat", path))?
            .is_none()
        {
            return Ok(None);
        }
        let mut records = read_records::<S>(&self.fs, path, self.host.user().1)?.into_iter();
        let Some(Record::Intent(intent)) = records.next() else {
            // The intent is appended and synced right after creation; a journal without it
            // is one whose creator died before that, so it describes no change at all.
            return Ok(Some(ImageJournal {
                path: path.to_path_buf(),
                intent: Intent::empty(tx),
                undo: None,
                applied: Vec::new(),
            }));
        };
        if intent.tx != tx {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!("it belongs to {}", intent.tx),
            });
        }
        let mut undo = None;
        let mut applied = Vec::new();
        for r in records {
            match r {
                Record::Undo(s) => undo = Some(s),
                Record::Applied(d) => applied.push(d),
                _ => {}
            }
        }
        Ok(Some(ImageJournal {
            path: path.to_path_buf(),
            intent,
            undo,
            applied,
        }))
    }

    fn load_commit_state(&self, tx: &str, some_journal: &Path) -> Result<CommitState> {
        let first = self.read_image_journal(some_journal, tx)?.ok_or_else(|| {
            Error::Invalid(format!("journal {} vanished", some_journal.display()))
        })?;
        let journals = if first.intent.journals.is_empty() {
            vec![some_journal.to_path_buf()]
        } else {
            first.intent.journals.clone()
        };
        let coordinator = &journals[0];
        let records = match self
            .fs
            .metadata(coordinator)
            .map_err(Error::io("stat", coordinator))?
        {
            Some(_) => read_records::<S>(&self.fs, coordinator, self.host.user().1)?,
            None => {
                return Err(Error::Unrecoverable {
                    tx: tx.to_owned(),
                    reason: format!(
                        "its coordinator journal {} is missing",
                        coordinator.display()
                    ),
                })
            }
        };
        let committed = records.contains(&Record::Commit);
        let logged = records.contains(&Record::Logged);
        let recorded = records.iter().rev().find_map(|r| match r {
            Record::Recovering(d) => Some(*d),
            _ => None,
        });
        let images = journals
            .iter()
            .map(|j| self.read_image_journal(j, tx))
            .collect::<Result<Vec<_>>>()?;
        Ok(CommitState {
            tx: tx.to_owned(),
            journals,
            images,
            committed,
            logged,
            recorded,
        })
    }

    fn recover_commit(
        &self,
        tx: &str,
        some_journal: &Path,
        opts: &RecoverOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Option<RecoverAction>> {
        let st = self.load_commit_state(tx, some_journal)?;
        let present: Vec<&ImageJournal> = st.images.iter().flatten().collect();
        let bases: Vec<PathBuf> = present.iter().map(|i| i.intent.base.clone()).collect();
        let all_present = present.len() == st.journals.len()
            && present.iter().all(|i| !i.intent.journals.is_empty());
        let overlays_ok = all_present && present.iter().all(|i| self.overlay_still_good(&i.intent));
        let undo_refused = if st.committed && !st.logged {
            self.untrusted_preimage(tx, &present)?
        } else {
            None
        };
        let undo_available = undo_refused.is_none()
            && all_present
            && present.iter().all(|i| {
                i.intent.undo
                    && i.undo.as_ref().is_some_and(|s| {
                        undo::verify(
                            &self.fs,
                            &layout::undo(&i.intent.base, tx).unwrap_or_default(),
                            tx,
                            s,
                            self.host.user().1,
                        )
                        .is_ok()
                    })
            });
        if st.committed && !st.logged && !all_present {
            return Err(Error::Unrecoverable {
                tx: tx.to_owned(),
                reason: "a journal of one of its images is missing or has no intent".into(),
            });
        }
        let facts = Facts {
            committed: st.committed,
            logged: st.logged,
            recorded: st.recorded,
            want_undo: opts.undo,
            overlays_ok,
            undo_available,
        };
        let decision = decide(facts);
        tracing::info!(%tx, ?facts, ?decision, "recovery decision");
        if let (Decision::Go(Direction::Back) | Decision::Refuse(_), Some(reason)) =
            (decision, undo_refused)
        {
            // Say why the pre-images cannot be used rather than that there are none.
            return Err(Error::Unrecoverable {
                tx: tx.to_owned(),
                reason,
            });
        }
        let action = match decision {
            Decision::Discard => "discarded_uncommitted",
            Decision::Cleanup => "finished_cleanup",
            Decision::Go(Direction::Forward) => "recovered_forward",
            Decision::Go(Direction::Back) => "recovered_back",
            Decision::Refuse(reason) => {
                return Err(Error::Unrecoverable {
                    tx: tx.to_owned(),
                    reason: reason.to_owned(),
                })
            }
        };
        let result = Some(RecoverAction {
            tx: tx.to_owned(),
            action,
            bases,
        });
        if opts.dry_run {
            return Ok(result);
        }
        match decision {
            Decision::Discard => self.discard_uncommitted(tx, &st.journals)?,
            Decision::Cleanup => {
                self.cleanup_commit(tx, &cleanup_list(&present), &st.journals, false)?;
            }
            Decision::Go(dir) => self.recover_direction(&st, &present, dir, progress)?,
            Decision::Refuse(_) => {}
        }
        Ok(result)
    }

    /// Why one of the pre-image files of `present` cannot be trusted, if one cannot: they
    /// are checked like journals, since restoring from a planted one would write bytes of
    /// someone else's choosing into the base.
    fn untrusted_preimage(&self, tx: &str, present: &[&ImageJournal]) -> Result<Option<String>> {
        let uid = self.host.user().1;
        for i in present.iter().filter(|i| !i.intent.journals.is_empty()) {
            let path = layout::undo(&i.intent.base, tx)?;
            if let Some(why) = untrusted(&self.fs, &path, uid)? {
                return Ok(Some(format!(
                    "its pre-image file {} is refused: {why}",
                    path.display()
                )));
            }
        }
        Ok(None)
    }

    fn overlay_still_good(&self, intent: &Intent) -> bool {
        let check = || -> Result<bool> {
            let ov = open_checked(
                &self.fs,
                &intent.tx,
                &intent.overlay,
                Some(intent.overlay_dev_ino),
                &intent.base,
                intent.base_format,
            )?;
            let plan = self.plan_of(
                &intent.tx,
                &ov,
                &intent.overlay,
                intent.plan.old_len,
                intent.base_format,
                &intent.base,
            )?;
            Ok(plan.steps == intent.plan.steps && plan.virtual_size == intent.plan.virtual_size)
        };
        match check() {
            Ok(ok) => ok,
            Err(e) => {
                tracing::warn!(overlay = %intent.overlay.display(), error = %e, "overlay cannot be used for redo");
                false
            }
        }
    }

    fn recover_direction(
        &self,
        st: &CommitState,
        present: &[&ImageJournal],
        dir: Direction,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<()> {
        let coordinator = &st.journals[0];
        if st.recorded != Some(dir) {
            let (mut j, _) =
                TxJournal::<S>::open(&self.fs, coordinator).map_err(Error::journal(coordinator))?;
            j.append(&Record::Recovering(dir))
                .map_err(Error::journal(coordinator))?;
            // Barrier: the chosen direction is durable before any base write, so a rerun after
            // a crash continues the same way.
            j.sync().map_err(Error::journal(coordinator))?;
        }
        self.host.step("recover-direction");
        for (index, img) in present.iter().enumerate() {
            if img.applied.contains(&dir) {
                continue;
            }
            let i = &img.intent;
            let meta = self
                .fs
                .metadata(&i.base)
                .map_err(Error::io("stat", &i.base))?;
            if meta.is_none_or(|m| (m.dev, m.ino) != i.base_dev_ino) {
                return Err(Error::Unrecoverable {
                    tx: st.tx.clone(),
                    reason: format!("base {} was replaced by another file", i.base.display()),
                });
            }
            let _fence = self.host.fence_image(&i.base)?;
            match dir {
                Direction::Forward => {
                    let _ov_fence = self.host.fence_image(&i.overlay)?;
                    let ov = open_checked(
                        &self.fs,
                        &st.tx,
                        &i.overlay,
                        Some(i.overlay_dev_ino),
                        &i.base,
                        i.base_format,
                    )?;
                    self.apply_forward(
                        &st.tx,
                        index,
                        (&ov, &i.overlay),
                        (&i.base, i.base_dev_ino),
                        i.base_format,
                        &i.plan,
                        progress,
                    )?;
                }
                Direction::Back => {
                    let summary = img.undo.as_ref().ok_or_else(|| Error::Unrecoverable {
                        tx: st.tx.clone(),
                        reason: "pre-images are missing".into(),
                    })?;
                    if let Some(reason) = self.untrusted_preimage(&st.tx, &[img])? {
                        return Err(Error::Unrecoverable {
                            tx: st.tx.clone(),
                            reason,
                        });
                    }
                    let base = self
                        .fs
                        .open(&i.base, true)
                        .map_err(Error::io("open for writing", &i.base))?;
                    // The name was checked above; the descriptor is what gets written, and
                    // the name may have been swapped in between.
                    let opened = base.stat().map_err(Error::io("stat", &i.base))?;
                    if (opened.dev, opened.ino) != i.base_dev_ino {
                        return Err(Error::Unrecoverable {
                            tx: st.tx.clone(),
                            reason: format!(
                                "base {} was replaced by another file",
                                i.base.display()
                            ),
                        });
                    }
                    let total = summary.bytes;
                    let mut restored = |done| {
                        progress(Progress {
                            image: index,
                            phase: Phase::Restore,
                            done,
                            total,
                        });
                    };
                    restored(0);
                    undo::restore(
                        &self.fs,
                        (&layout::undo(&i.base, &st.tx)?, &base, &i.base),
                        &st.tx,
                        summary,
                        self.host.user().1,
                        &mut restored,
                    )?;
                }
            }
            let (mut j, _) =
                TxJournal::<S>::open(&self.fs, &img.path).map_err(Error::journal(&img.path))?;
            j.append(&Record::Applied(dir))
                .map_err(Error::journal(&img.path))?;
            // Barrier: the base was synced; recording it lets a rerun skip this image.
            j.sync().map_err(Error::journal(&img.path))?;
            self.host.step("recover-applied");
        }
        let manifest = self.state.load(&self.fs, &st.tx).ok().flatten();
        let (outcome, images) = match dir {
            Direction::Forward => (
                Outcome::RecoveredForward,
                present
                    .iter()
                    .map(|i| HistoryImage {
                        base: i.intent.base.clone(),
                        changed_bytes: i.intent.plan.changed_bytes(),
                    })
                    .collect(),
            ),
            Direction::Back => (
                Outcome::RecoveredBack,
                present
                    .iter()
                    .map(|i| HistoryImage {
                        base: i.intent.base.clone(),
                        changed_bytes: 0,
                    })
                    .collect(),
            ),
        };
        self.log_outcome(manifest.as_ref(), &st.tx, outcome, images)?;
        let (mut j, _) =
            TxJournal::<S>::open(&self.fs, coordinator).map_err(Error::journal(coordinator))?;
        j.append(&Record::Logged)
            .map_err(Error::journal(coordinator))?;
        j.sync().map_err(Error::journal(coordinator))?;
        drop(j);
        self.host.step("recover-logged");
        // Undone or finished, the transaction is over: its overlays go too.
        self.cleanup_commit(&st.tx, &cleanup_list(present), &st.journals, false)
            .map(drop)
    }
}

/// Why the journal or pre-image file at `path` cannot be trusted, or `None` when it can
/// (or does not exist). Trusted means nobody but its creator could have written it: a
/// regular file with one link, mode 0600 or stricter, owned by root or by `uid` (the user
/// running recovery). Otherwise someone who can write the base's directory could plant
/// records or pre-images that make a privileged recovery write bytes of their choosing.
fn untrusted<S: Fs>(fs: &S, path: &Path, uid: u32) -> Result<Option<String>> {
    let Some(m) = fs.metadata(path).map_err(Error::io("stat", path))? else {
        return Ok(None);
    };
    Ok(untrusted_file(&m, uid))
}

/// Why a journal or pre-image file with metadata `m` must not be obeyed by user `uid`:
/// someone other than its creator could have written it. `None` if it is trustworthy.
pub(crate) fn untrusted_file(m: &storage::Metadata, uid: u32) -> Option<String> {
    if m.kind != storage::FileKind::File || m.nlink != 1 {
        Some("it is not a regular file with one link".into())
    } else if m.mode & 0o077 != 0 {
        Some(format!("its mode {:o} lets other users change it", m.mode))
    } else if m.uid != 0 && m.uid != uid {
        Some(format!("it is owned by uid {}", m.uid))
    } else {
        None
    }
}

/// Longest journal that can hold a header but no intent record: every intent names two
/// absolute paths and a plan, so it alone is longer than this.
const EMPTY_JOURNAL_MAX: u64 = 128;

/// The records of a transaction journal. A journal whose creation was interrupted (no
/// complete header, or a header torn before its first sync and no room for any record after
/// it) never held a record, so it reads as empty; any other damage is refused.
///
/// A journal is obeyed only if nobody but its creator could have written it (issue 6, T25);
/// see [`untrusted`].
fn read_records<S: Fs>(fs: &S, path: &Path, uid: u32) -> Result<Vec<Record>> {
    if let Some(why) = untrusted(fs, path, uid)? {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("refused: {why}"),
        });
    }
    match journal::read::<S, Record>(fs, path) {
        Ok(replay) => Ok(replay.records),
        Err(journal::Error::HeaderIncomplete { .. }) => Ok(Vec::new()),
        Err(e @ journal::Error::BadHeader { .. }) => {
            let len = fs
                .metadata(path)
                .map_err(Error::io("stat", path))?
                .map_or(0, |m| m.len);
            if len <= EMPTY_JOURNAL_MAX {
                Ok(Vec::new())
            } else {
                Err(Error::journal(path)(e))
            }
        }
        Err(e) => Err(Error::journal(path)(e)),
    }
}

fn cleanup_list(present: &[&ImageJournal]) -> Vec<(PathBuf, PathBuf, (u64, u64))> {
    present
        .iter()
        .filter(|i| !i.intent.journals.is_empty())
        .map(|i| {
            (
                i.intent.base.clone(),
                i.intent.overlay.clone(),
                i.intent.overlay_dev_ino,
            )
        })
        .collect()
}

impl Intent {
    /// A placeholder for a journal that holds no intent yet.
    fn empty(tx: &str) -> Self {
        Self {
            tx: tx.to_owned(),
            index: 0,
            journals: Vec::new(),
            base: PathBuf::new(),
            base_format: crate::state::Format::Raw,
            base_dev_ino: (0, 0),
            overlay: PathBuf::new(),
            overlay_dev_ino: (0, 0),
            undo: false,
            plan: crate::plan::Plan {
                old_len: 0,
                virtual_size: 0,
                steps: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            committed: true,
            logged: false,
            recorded: None,
            want_undo: false,
            overlays_ok: true,
            undo_available: true,
        }
    }

    #[test]
    fn an_uncommitted_commit_is_discarded_whatever_was_asked() {
        assert_eq!(
            decide(Facts {
                committed: false,
                want_undo: true,
                ..facts()
            }),
            Decision::Discard
        );
    }

    #[test]
    fn a_committed_commit_rolls_forward_by_default() {
        assert_eq!(decide(facts()), Decision::Go(Direction::Forward));
    }

    #[test]
    fn undo_is_chosen_when_asked_or_when_an_overlay_is_bad() {
        assert_eq!(
            decide(Facts {
                want_undo: true,
                ..facts()
            }),
            Decision::Go(Direction::Back)
        );
        assert_eq!(
            decide(Facts {
                overlays_ok: false,
                ..facts()
            }),
            Decision::Go(Direction::Back)
        );
    }

    #[test]
    fn a_recorded_undo_is_continued_even_without_asking() {
        assert_eq!(
            decide(Facts {
                recorded: Some(Direction::Back),
                ..facts()
            }),
            Decision::Go(Direction::Back)
        );
    }

    #[test]
    fn no_pre_images_and_a_bad_overlay_refuse_to_touch_anything() {
        let f = Facts {
            overlays_ok: false,
            undo_available: false,
            ..facts()
        };
        assert!(matches!(decide(f), Decision::Refuse(_)));
        let f = Facts {
            want_undo: true,
            undo_available: false,
            ..facts()
        };
        assert!(matches!(decide(f), Decision::Refuse(_)));
    }

    #[test]
    fn a_logged_outcome_only_needs_cleanup() {
        assert_eq!(
            decide(Facts {
                logged: true,
                overlays_ok: false,
                ..facts()
            }),
            Decision::Cleanup
        );
    }
}
