//! Open transactions of dead hosts: rolled back by recovery on another host of the
//! lockspace (see [`crate::lease`]).
//!
//! A host that dies with a transaction open leaves its claims and overlays beside the bases,
//! and its manifest in its own state directory. Once sanlock says that host is dead, its
//! claims are taken over under the bases' leases (acquired at the versions read before its
//! death was checked), and the transaction is rolled back: its overlays and claims removed,
//! the history told who took it over from whom. Its manifest is removed too when this state
//! directory holds it (a state directory on the shared storage); otherwise the dead host's
//! own recovery finds, when it is back, that the transaction ended elsewhere.

use std::collections::BTreeMap;
use std::path::PathBuf;

use storage::Fs;

use crate::claim::{Claim, Found};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{FileId, Format, ImageEntry, Manifest, TxState};
use crate::options::{
    RecoverAction, RecoverFailure, RecoverOptions, RecoverReport, RecoveryAction,
};
use crate::{layout, rollback, txjournal};

/// Rolls back the open transactions of dead hosts whose claims lie beside `bases`; leaves
/// those of live hosts alone. Transactions in `skip` (recovered or failed above) are not
/// looked at.
pub(crate) fn open_of_dead_hosts<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    bases: &[PathBuf],
    skip: &[String],
    opts: &RecoverOptions,
    report: &mut RecoverReport,
) -> Result<()> {
    let Some(me) = e.leases.member() else {
        return Ok(());
    };
    // Claims of other hosts of this lockspace, by transaction.
    let mut found: BTreeMap<TxId, (Claim, Vec<PathBuf>)> = BTreeMap::new();
    for base in bases {
        let Found::Claim(c) = crate::claim::read(&e.fs, base)? else {
            continue;
        };
        let other = c
            .lease
            .as_ref()
            .is_some_and(|l| l.lockspace == me.lockspace && l.host_id != me.host_id);
        if !other || skip.contains(&c.tx.to_string()) {
            continue;
        }
        // An interrupted commit is recovered from its journals, not rolled back.
        if txjournal::beside(&e.fs, base)?.contains(&c.tx)
            || txjournal::strays_beside(&e.fs, base)?.contains(&c.tx)
        {
            continue;
        }
        found
            .entry(c.tx.clone())
            .or_insert_with(|| (c.clone(), Vec::new()))
            .1
            .push(base.clone());
    }
    for (tx, (claim, tx_bases)) in found {
        match take_over_one(e, &tx, &claim, &tx_bases, opts.dry_run) {
            Ok(Some(action)) => report.actions.push(RecoverAction {
                tx: tx.to_string(),
                action,
                bases: tx_bases,
            }),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%tx, %error, "open transaction of another host not taken over");
                report.failures.push(RecoverFailure {
                    tx: tx.to_string(),
                    bases: tx_bases,
                    error,
                });
            }
        }
    }
    Ok(())
}

/// Takes the open transaction `tx` over and rolls it back, if its host is dead; `None` when
/// its host is alive (it is that host's) or it is gone meanwhile.
fn take_over_one<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    tx: &TxId,
    claim: &Claim,
    bases: &[PathBuf],
    dry_run: bool,
) -> Result<Option<RecoveryAction>> {
    let _guard = e.lock_tx(tx)?;
    let owner = if dry_run {
        e.tx_owner(tx, bases)
            .map(|t| (crate::lease::LeaseGuard::default(), t))
    } else {
        e.lease_tx_bases(tx, bases)
    };
    let (_leases, takeover) = match owner {
        Ok(o) => o,
        Err(Error::HostAlive { host_id, .. }) => {
            tracing::info!(%tx, host_id, "open transaction of a live host left alone");
            return Ok(None);
        }
        Err(err) => return Err(err),
    };
    let Some(takeover) = takeover else {
        return Ok(None);
    };
    if dry_run {
        return Ok(Some(RecoveryAction::RolledBackForDeadHost));
    }
    let mut m = match e.state.load(&e.fs, tx)? {
        Some(m) => m,
        None => manifest_from_claims(e, claim, bases)?,
    };
    e.taking_over(Some(takeover), || {
        m.state = TxState::RollingBack;
        if e.state.load(&e.fs, tx)?.is_some() {
            e.state.save(&e.fs, &m)?;
        }
        rollback::finish_rollback(e, &m)
    })?;
    e.drop_lock_file(tx);
    Ok(Some(RecoveryAction::RolledBackForDeadHost))
}

/// What the claims of `tx` beside `bases` tell of it, as a manifest to roll back: the
/// overlays are found by their names, which carry the transaction id.
fn manifest_from_claims<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    c: &Claim,
    bases: &[PathBuf],
) -> Result<Manifest> {
    let mut images = Vec::new();
    for base in bases {
        let meta =
            e.fs.metadata(base)
                .map_err(Error::io("stat", base))?
                .ok_or_else(|| Error::InvalidBase {
                    path: base.clone(),
                    reason: "it does not exist".into(),
                })?;
        images.push(ImageEntry {
            base: base.clone(),
            base_format: Format::Raw,
            overlay: layout::overlay(base, &c.tx)?,
            base_id: FileId::of(&meta),
            overlay_dev_ino: None,
        });
    }
    Ok(Manifest {
        version: 1,
        id: c.tx.clone(),
        name: c.name.clone(),
        state: TxState::RollingBack,
        created: c.since.clone(),
        user: c.user.clone(),
        uid: c.uid,
        host: c.host.clone(),
        command: None,
        images,
    })
}
