//! Recovery of what the state directory shows was interrupted outside a commit's journals:
//! begins, rollbacks and post-commit cleanups (from manifests), and the orphans a killed
//! process leaves there (claims without a manifest, temporary manifests, lock files).

use std::collections::BTreeMap;
use std::path::PathBuf;

use storage::Fs;

use crate::ctx::Ctx;
use crate::error::Result;
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{Manifest, TxState};
use crate::options::{
    RecoverAction, RecoverFailure, RecoverOptions, RecoverReport, RecoveryAction,
};
use crate::{begin, finish, layout, rollback};

/// Finishes the interrupted begins, rollbacks and cleanups among `manifests` that touch one
/// of `bases` (all of them when the user named no path), into `report`.
pub(crate) fn interrupted<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    manifests: &[Manifest],
    bases: &[PathBuf],
    opts: &RecoverOptions,
    report: &mut RecoverReport,
) {
    let wanted = |m: &Manifest| {
        (opts.paths.is_empty() && opts.scan.is_empty())
            || m.images
                .iter()
                .any(|i| bases.iter().any(|p| same_file(&e.fs, p, &i.base)))
    };
    for m in manifests.iter().filter(|m| wanted(m)) {
        // After the storage failed, nothing more: see `recover::broke_down`.
        if report.failures.iter().any(|f| f.error.is_storage_failure()) {
            return;
        }
        match finish_one(e, &m.id, opts.dry_run) {
            Ok(Some(action)) => report.actions.push(RecoverAction {
                tx: m.id.to_string(),
                action,
                bases: m.images.iter().map(|i| i.base.clone()).collect(),
            }),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(tx = %m.id, %error, "transaction not recovered");
                report.failures.push(RecoverFailure {
                    tx: m.id.to_string(),
                    bases: m.images.iter().map(|i| i.base.clone()).collect(),
                    error,
                });
            }
        }
    }
}

/// Finishes the interrupted begin, rollback or cleanup of transaction `id`; `None` when it
/// needs nothing (it is open, gone, or a live process works on it).
fn finish_one<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    id: &TxId,
    dry_run: bool,
) -> Result<Option<RecoveryAction>> {
    // A live begin or rollback holds the lock; only a dead one is cleaned up.
    let Some(_guard) = e.host.lock_exclusive(&e.state.lock(id), false)? else {
        return Ok(None);
    };
    let Some(m) = e.state.load(&e.fs, id)? else {
        // Ended meanwhile (recovered above, say): the lock file taken just now is a leftover.
        e.drop_lock_file(id);
        return Ok(None);
    };
    let action = match m.state {
        TxState::Beginning => RecoveryAction::CleanedBegin,
        TxState::RollingBack => RecoveryAction::FinishedRollback,
        TxState::Finished => RecoveryAction::FinishedCleanup,
        TxState::Open if crate::claim::ended_elsewhere(&e.fs, &m)? => {
            RecoveryAction::EndedElsewhere
        }
        TxState::Open => return Ok(None),
    };
    if dry_run {
        return Ok(Some(action));
    }
    // Across hosts: the bases' leases while it is finished; another live host's is its own.
    let bases: Vec<PathBuf> = m.images.iter().map(|i| i.base.clone()).collect();
    let (_leases, takeover) = e.lease_tx_bases(id, &bases)?;
    e.taking_over(takeover, || finish_leftover(e, &m))?;
    e.drop_lock_file(&m.id);
    Ok(Some(action))
}

/// Finishes the interrupted begin, rollback or cleanup `m` (or forgets it, when it ended
/// elsewhere).
fn finish_leftover<S: Fs, H: Host>(e: &Ctx<S, H>, m: &Manifest) -> Result<()> {
    match m.state {
        TxState::Beginning => begin::undo_begin(e, m)?,
        TxState::RollingBack => rollback::finish_rollback(e, m)?,
        TxState::Finished => {
            let journals = m
                .images
                .iter()
                .map(|i| layout::journal(&i.base, &m.id))
                .collect::<Result<Vec<_>>>()?;
            finish::cleanup(e, &m.id, &m.leftovers(), &journals, finish::Keep::No)?;
        }
        // Ended elsewhere: only this state directory's record of it is left.
        TxState::Open => e.state.remove_manifest(&e.fs, &m.id)?,
    }
    Ok(())
}

/// Removes what killed processes left in the state directory: claims whose transaction has
/// no manifest, manifest saves that never finished, and lock files of transactions that no
/// longer exist. `commits` are the transactions recovery found journals of.
pub(crate) fn orphans<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    commits: &BTreeMap<TxId, PathBuf>,
    dry_run: bool,
) -> Result<Vec<RecoverAction>> {
    let mut actions = Vec::new();
    for (path, holder) in e.state.list_claims(&e.fs)? {
        let manifest = TxId::parse(&holder).and_then(|id| e.state.load(&e.fs, &id).ok().flatten());
        if manifest.is_none() {
            if !dry_run {
                e.state.remove_claim(&e.fs, &path)?;
            }
            actions.push(RecoverAction {
                tx: holder,
                action: RecoveryAction::RemovedOrphanClaim,
                bases: Vec::new(),
            });
        }
    }
    for (id, path) in e.state.list_tmp(&e.fs)? {
        // A live save holds the transaction's lock; only a dead one's leftover goes.
        let Some(_guard) = e.host.lock_exclusive(&e.state.lock(&id), false)? else {
            continue;
        };
        if !dry_run {
            tracing::debug!(path = %path.display(), "removing a manifest save that never finished");
            e.state.remove_tmp(&e.fs, &path)?;
            if e.state.load(&e.fs, &id)?.is_none() {
                e.drop_lock_file(&id);
            }
        }
    }
    // A history reservation (or a half-written pending file) of a transaction whose commit
    // is not under way (its lock is free) and left no journal: its commit died before the
    // intent, so the reservation records nothing.
    for (id, path) in e.state.list_reservations(&e.fs)? {
        if commits.contains_key(&id) || dry_run {
            continue;
        }
        let Some(_guard) = e.host.lock_exclusive(&e.state.lock(&id), false)? else {
            continue;
        };
        let bases: Vec<PathBuf> = e
            .state
            .load(&e.fs, &id)?
            .map(|m| m.images.into_iter().map(|i| i.base).collect())
            .unwrap_or_default();
        let mut journaled = false;
        for base in &bases {
            journaled |= crate::files::exists(&e.fs, &layout::journal(base, &id)?)?;
        }
        if !journaled {
            tracing::debug!(path = %path.display(), "removing a history reservation nothing uses");
            crate::files::remove_durably(&e.fs, &path, &e.state.pending_dir())?;
            if e.state.load(&e.fs, &id)?.is_none() {
                e.drop_lock_file(&id);
            }
        }
    }
    // A process killed between removing a manifest and its lock file leaves the lock file
    // behind; it holds no state, but would stay forever. A live begin holds its lock while
    // it creates the manifest, so a lock we can take without a manifest is a leftover.
    // (Whoever opened the file meanwhile re-checks its name after locking.)
    for id in e.state.list_locks(&e.fs)? {
        if commits.contains_key(&id) || dry_run {
            continue;
        }
        let Some(_guard) = e.host.lock_exclusive(&e.state.lock(&id), false)? else {
            continue;
        };
        if e.state.load(&e.fs, &id)?.is_none() {
            tracing::debug!(tx = %id, "removing a lock file its transaction left behind");
            e.drop_lock_file(&id);
        }
    }
    // The half-made continuation of a history that an append was keeping aside when it
    // died: the history itself is still whole, and the next append starts over from it.
    if !dry_run {
        if let Some(_guard) = e.host.lock_exclusive(&e.state.history_lock(), false)? {
            crate::history::remove_unfinished(&e.fs, &e.state.history())?;
        }
    }
    Ok(actions)
}

/// True when `a` and `b` name the same file.
fn same_file<S: Fs>(fs: &S, a: &std::path::Path, b: &std::path::Path) -> bool {
    if a == b {
        return true;
    }
    match (fs.metadata(a), fs.metadata(b)) {
        (Ok(Some(x)), Ok(Some(y))) => (x.dev, x.ino) == (y.dev, y.ino),
        _ => false,
    }
}

/// Removes the claims beside `bases` that this state directory's transactions left behind:
/// a claim that names this state directory and a transaction it has no manifest of, whose
/// lock is free and that has no journal beside the base. A begin writes its manifest before
/// its claims and a transaction removes its claims before its manifest, so only a manifest
/// removed by hand (or a lost state directory) leaves one.
pub(crate) fn orphan_claims<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    bases: &[PathBuf],
    dry_run: bool,
) -> Result<Vec<RecoverAction>> {
    let mut actions = Vec::new();
    for base in bases {
        let crate::claim::Found::Claim(c) = crate::claim::read(&e.fs, base)? else {
            continue;
        };
        let ours = c.state_dir == e.state.root();
        if !ours
            || e.state.load(&e.fs, &c.tx)?.is_some()
            || e.host.is_locked(&e.state.lock(&c.tx))?
        {
            continue;
        }
        if crate::txjournal::beside(&e.fs, base)?.contains(&c.tx) {
            continue;
        }
        // Across hosts: not while a process of another host works on the base.
        let _lease = match e.lease_bases([base.as_path()]) {
            Ok(l) => l,
            Err(crate::Error::LeaseBusy { .. }) => continue,
            Err(err) => return Err(err),
        };
        if !dry_run {
            crate::claim::release(&e.fs, base, &c.tx)?;
        }
        actions.push(RecoverAction {
            tx: c.tx.to_string(),
            action: RecoveryAction::RemovedOrphanClaim,
            bases: vec![base.clone()],
        });
    }
    Ok(actions)
}
