//! `recover`: finish or undo every interrupted operation found, idempotently.
//!
//! [`recover`] reads like "Recovery" in `docs/commit-protocol.md`: find the transactions
//! with journals beside the bases ([`discover`]), decide each one's direction by the pure
//! policy ([`decide`]), carry it out ([`execute`]); then finish what the state directory
//! shows was interrupted outside a commit ([`leftovers`]).

pub(crate) mod abandon;
mod decide;
mod discover;
mod execute;
mod leftovers;
pub(crate) mod stray;
mod takeover;
mod verify;

use std::path::{Path, PathBuf};

use storage::Fs;

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::finish;
use crate::host::Host;
use crate::id::TxId;
use crate::layout;
use crate::options::{
    Progress, RecoverAction, RecoverFailure, RecoverOptions, RecoverReport, RecoveryAction,
};
use crate::record::Direction;
use decide::{decide, Decision};

/// Finishes or undoes every interrupted operation found beside `opts.paths` (or of every
/// registered transaction when empty); `progress` hears about the data copied.
pub(crate) fn recover<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    opts: &RecoverOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<RecoverReport> {
    let mut manifests = Vec::new();
    for id in e.state.list(&e.fs)? {
        manifests.extend(e.state.load(&e.fs, &id)?);
    }
    let mut report = RecoverReport {
        dry_run: opts.dry_run,
        ..RecoverReport::default()
    };
    let bases = reachable(
        e,
        bases_to_recover(e, opts, &manifests)?,
        &manifests,
        &mut report,
    )?;
    // Interrupted commits: every transaction with a journal beside one of the bases. One
    // that cannot be recovered is reported, and the others still are.
    let commits = discover::commits(&e.fs, &bases)?;
    for (tx, journal) in &commits {
        if stop_here(e, &mut report) || broke_down(&report) {
            return Ok(report);
        }
        let result = e.lock_tx(tx).and_then(|_guard| {
            // Across hosts: the transaction is another live host's, or taken over from a
            // dead one under its bases' leases, held until it is recovered.
            let (_leases, takeover) = lease_commit(e, tx, journal, opts.dry_run)?;
            e.taking_over(takeover, || recover_commit(e, tx, journal, opts, progress))
        });
        match result {
            Ok(action) => report.actions.extend(action),
            Err(error) => {
                tracing::warn!(%tx, %error, "transaction not recovered");
                report.failures.push(RecoverFailure {
                    tx: tx.to_string(),
                    bases: layout::base_of_journal(journal, tx).into_iter().collect(),
                    error,
                });
            }
        }
    }
    // Pre-image files whose journal was removed by hand: the base may be torn.
    for found in stray::find(&e.fs, &bases)? {
        if stop_here(e, &mut report) || broke_down(&report) {
            return Ok(report);
        }
        if report.failures.iter().any(|f| f.tx == found.tx.as_str()) {
            continue;
        }
        let manifest = manifests.iter().find(|m| m.id == found.tx);
        match stray::recover_one(e, &found, manifest, opts) {
            Ok(action) => report.actions.push(action),
            Err(error) => {
                tracing::warn!(tx = %found.tx, %error, "pre-images without a journal kept");
                report.failures.push(RecoverFailure {
                    tx: found.tx.to_string(),
                    bases: vec![found.base.clone()],
                    error,
                });
            }
        }
    }
    // Interrupted begins, rollbacks and cleanups, and the leftovers of killed processes; a
    // transaction that failed above is not tried again in the same run.
    if stop_here(e, &mut report) || broke_down(&report) {
        return Ok(report);
    }
    let failed: Vec<String> = report.failures.iter().map(|f| f.tx.clone()).collect();
    let manifests: Vec<_> = manifests
        .into_iter()
        .filter(|m| !failed.contains(&m.id.to_string()))
        .collect();
    leftovers::interrupted(e, &manifests, &bases, opts, &mut report);
    // Open transactions of dead hosts of the lockspace, found by their claims.
    let done: Vec<String> = report
        .actions
        .iter()
        .map(|a| a.tx.clone())
        .chain(failed.iter().cloned())
        .collect();
    takeover::open_of_dead_hosts(e, &bases, &done, opts, &mut report)?;
    if broke_down(&report) || !failed.is_empty() {
        return Ok(report);
    }
    report
        .actions
        .extend(crate::revert::release_interrupted(e, opts.dry_run)?);
    report
        .actions
        .extend(leftovers::orphan_claims(e, &bases, opts.dry_run)?);
    if opts.paths.is_empty() && opts.scan.is_empty() {
        report
            .actions
            .extend(leftovers::orphans(e, &commits, opts.dry_run)?);
    }
    Ok(report)
}

/// Of `bases`, those whose directory is there. Beside the others nothing can be seen (the
/// directory was moved away, or its mount is not up yet at boot), so each transaction of
/// `manifests` with a base there is reported as a failure, saying so, and the rest are
/// still recovered: one missing mount must not keep every other image torn.
fn reachable<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    bases: Vec<PathBuf>,
    manifests: &[crate::manifest::Manifest],
    report: &mut RecoverReport,
) -> Result<Vec<PathBuf>> {
    let mut there = Vec::with_capacity(bases.len());
    for base in bases {
        let dir = layout::dir_of(&base)?;
        if crate::files::exists(&e.fs, dir)? {
            there.push(base);
            continue;
        }
        let of_base = manifests
            .iter()
            .filter(|m| m.images.iter().any(|i| i.base == base));
        for m in of_base {
            tracing::warn!(tx = %m.id, base = %base.display(), "base directory not there");
            report.failures.push(RecoverFailure {
                tx: m.id.to_string(),
                bases: vec![base.clone()],
                error: Error::DirGone {
                    base: base.clone(),
                    dir: dir.to_path_buf(),
                },
            });
        }
    }
    Ok(there)
}

/// The bases to look at: those the user named (resolved) and those found under the
/// directories to scan; when none are named, every base of this state directory's
/// transactions and kept records.
fn bases_to_recover<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    opts: &RecoverOptions,
    manifests: &[crate::manifest::Manifest],
) -> Result<Vec<PathBuf>> {
    let mut bases: Vec<PathBuf> = if opts.paths.is_empty() && opts.scan.is_empty() {
        // A revert has no manifest: its journals lie beside the bases of the transaction it
        // reverts, whose kept record stays until the revert is over.
        let kept = e.state.list_kept(&e.fs)?;
        let mut bases: Vec<PathBuf> = manifests
            .iter()
            .flat_map(|m| m.images.iter().map(|i| i.base.clone()))
            .chain(
                kept.iter()
                    .flat_map(|k| k.images.iter().map(|i| i.base.clone())),
            )
            .collect();
        bases.sort();
        bases.dedup();
        bases
    } else {
        // User paths may reach a base through a symlink; what is stored never does.
        opts.paths
            .iter()
            .map(|p| e.fs.canonicalize(p).map_err(Error::io("resolve", p)))
            .collect::<Result<_>>()?
    };
    if !opts.scan.is_empty() {
        let dirs = opts
            .scan
            .iter()
            .map(|p| e.fs.canonicalize(p).map_err(Error::io("resolve", p)))
            .collect::<Result<Vec<_>>>()?;
        bases.extend(discover::scan(&e.fs, &dirs)?);
        if e.leases.member().is_some() {
            // Open transactions of dead hosts have claims and overlays, but no journal.
            bases.extend(discover::scan_claims(&e.fs, &dirs)?);
            bases.sort();
            bases.dedup();
        }
    }
    Ok(bases)
}

/// The leases of the bases of the interrupted commit `tx` (found by `some_journal`), its
/// claims checked under them (see [`Ctx::lease_tx_bases`]): `Error::HostAlive` when it is
/// another live host's; the takeover when it is a dead host's. A dry run acquires nothing
/// and only checks whose it is.
fn lease_commit<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    tx: &TxId,
    some_journal: &Path,
    dry_run: bool,
) -> Result<(crate::lease::LeaseGuard, Option<crate::lease::Takeover>)> {
    if e.leases.member().is_none() {
        return Ok((crate::lease::LeaseGuard::default(), None));
    }
    let bases = discover::load(&e.fs, e.host.user().1, tx, some_journal).map_or_else(
        |_| {
            layout::base_of_journal(some_journal, tx)
                .into_iter()
                .collect()
        },
        |st| st.bases(),
    );
    if dry_run {
        return Ok((crate::lease::LeaseGuard::default(), e.tx_owner(tx, &bases)?));
    }
    e.lease_tx_bases(tx, &bases)
}

/// True when a failure so far came from the storage itself (a failed write or sync): what
/// went unsynced may be lost for good, and going on would sync and trust again what a
/// failed sync left unknown. Recovery then stops, to be run again once the cause is fixed.
fn broke_down(report: &RecoverReport) -> bool {
    report.failures.iter().any(|f| f.error.is_storage_failure())
}

/// True (and noted in `report`) when the user asked to stop: recovery stops between
/// transactions, never inside one.
fn stop_here<S: Fs, H: Host>(e: &Ctx<S, H>, report: &mut RecoverReport) -> bool {
    match e.check_interrupt() {
        Err(Error::Stopped { signal }) => {
            report.stopped = Some(signal);
            true
        }
        _ => false,
    }
}

/// Decides and carries out the recovery of the interrupted commit `tx`, found by its
/// journal `some_journal`.
fn recover_commit<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    tx: &TxId,
    some_journal: &Path,
    opts: &RecoverOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Option<RecoverAction>> {
    let st = discover::load(&e.fs, e.host.user().1, tx, some_journal)?;
    let unrecoverable = |reason: String| Error::Unrecoverable {
        tx: tx.clone(),
        reason,
    };
    if st.committed && !st.logged && !st.complete() {
        return Err(unrecoverable(
            "a journal of one of its images is missing or has no intent".into(),
        ));
    }
    for base in st.bases() {
        verify::wait_for_writer(e, &base)?;
    }
    let (mut facts, undo_refused) = discover::facts(e, &st, opts.undo)?;
    // Before anything writes a base, or drops pre-images of a base that may have been
    // written: each base must still be the one the commit wrote, holding only old or new
    // content, or recovery refuses and keeps everything.
    let may_be_written = st.committed || st.images.iter().flatten().any(|i| i.undo.is_some());
    if may_be_written && !st.logged && st.complete() {
        for image in st.images.iter().flatten() {
            let content = facts.undo_available && !st.committed;
            match verify::base(e, &st, image, content)? {
                Err(reason) if st.committed => return Err(unrecoverable(reason)),
                // Not committed: discarding never writes the base; a replaced one just means
                // the transaction cannot be committed later, which commit itself refuses.
                Err(_) => {}
                Ok(verify::Content::Old | verify::Content::Unchecked) => {}
                Ok(verify::Content::Written) => facts.bases_untouched = false,
            }
        }
    }
    let decision = decide(facts);
    tracing::info!(%tx, ?facts, ?decision, "recovery decision");
    if let (Decision::Go(Direction::Back) | Decision::Refuse(_), Some(reason)) =
        (decision, undo_refused)
    {
        // Say why the pre-images cannot be used rather than that there are none.
        return Err(unrecoverable(reason));
    }
    let action = match decision {
        Decision::Discard => RecoveryAction::DiscardedUncommitted,
        Decision::RestoreUncommitted => RecoveryAction::RestoredUncommitted,
        Decision::Cleanup => RecoveryAction::FinishedCleanup,
        Decision::Go(Direction::Forward) => RecoveryAction::RecoveredForward,
        Decision::Go(Direction::Back) => RecoveryAction::RecoveredBack,
        Decision::Refuse(why) => return Err(unrecoverable(why.reason().to_owned())),
    };
    if !opts.dry_run {
        match decision {
            Decision::Discard => {
                finish::discard_uncommitted(&e.fs, tx, &st.journals)?;
                crate::audit::release(e, tx);
            }
            Decision::RestoreUncommitted => {
                execute::restore_all(e, &st, progress)?;
                finish::discard_uncommitted(&e.fs, tx, &st.journals)?;
                crate::audit::release(e, tx);
            }
            Decision::Cleanup => {
                let dir = st.recorded.unwrap_or(Direction::Forward);
                finish::cleanup(e, tx, &st.leftovers(dir), &st.journals, finish::Keep::No)?;
                if dir == Direction::Forward {
                    crate::revert::spent(e, &st.reverts())?;
                }
            }
            Decision::Go(dir) => execute::go(e, &st, (dir, facts.undo_available), progress)?,
            Decision::Refuse(_) => {}
        }
    }
    Ok(Some(RecoverAction {
        tx: tx.to_string(),
        action,
        bases: st.bases(),
    }))
}
