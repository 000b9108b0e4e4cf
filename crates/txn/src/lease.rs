//! Leases across hosts: the seam between the engine and a cluster lease manager.
//!
//! Claims beside an image say which transaction holds it, but not whether the host that
//! made the claim is alive; and a process that holds an image on one host is invisible to
//! the locks of another. With a lease manager (sanlock, through the `sanlock` feature's
//! `sanlock::SanlockLeases`) every host is a member of a lockspace with a host id, and:
//!
//! - the working imgtx process holds a resource lease of each base it works on, kept in the
//!   base's lease file ([`crate::layout::lease`]): during begin's claims, for the whole of
//!   commit, rollback and the recovery of a transaction, and for `run`'s whole command. A
//!   process of another host holding it makes the operation fail as busy, naming the host;
//! - claims record the lockspace and host id of the host that made them. A transaction
//!   whose claim names another host is that host's while sanlock says the host is alive
//!   ([`Error::HostAlive`]); once sanlock says it is dead, recovery on any member may take
//!   it over, with the lease version it read checked at acquisition, and records the
//!   takeover in the history.
//!
//! Without a lockspace the engine uses [`NoLeases`]: nothing is acquired, claims record no
//! host id, and behaviour is that of a single host. The simulated-disk crash tests run so.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storage::Fs;

use crate::claim::{self, Claim, Found};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::TxId;
use crate::layout;

#[cfg(feature = "sanlock")]
pub mod sanlock;

/// This host as a member of a lockspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The lockspace.
    pub lockspace: String,
    /// This host's id in it.
    pub host_id: u64,
}

/// Whether a host of the lockspace may still be working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Alive, failing, or not known yet: its transactions are its own.
    Alive,
    /// Dead (its lease expired long ago) or holding no lease: its transactions may be taken
    /// over.
    Gone,
}

/// Proof that leases are held; dropping it releases them (the last holder of each).
#[derive(Default)]
pub struct LeaseGuard(Vec<Box<dyn Send>>);

impl Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseGuard({} held)", self.0.len())
    }
}

impl LeaseGuard {
    /// A guard holding `held` until it drops.
    pub fn new(held: Box<dyn Send>) -> Self {
        Self(vec![held])
    }

    fn extend(&mut self, other: Self) {
        self.0.extend(other.0);
    }
}

/// A cluster lease manager, as the engine needs it.
pub trait Leases: Send + Sync + Debug {
    /// This host's membership; `None` when no lockspace is used (then nothing else is
    /// called).
    fn member(&self) -> Option<Member>;

    /// Acquires the lease kept in `lease_file` (creating and initialising the file if it
    /// does not exist) for this process until the guard drops; with `version`, only if the
    /// lease is still at that version. Never waits.
    ///
    /// # Errors
    /// [`Error::LeaseBusy`] when a process of another host (or another process of this
    /// one) holds it; [`Error::Lease`] for everything else.
    fn acquire(&self, lease_file: &Path, version: Option<u64>) -> Result<LeaseGuard>;

    /// The version of the lease in `lease_file`; `None` when the file does not exist.
    fn version(&self, lease_file: &Path) -> Result<Option<u64>>;

    /// What the lease manager says of host `host_id`.
    fn liveness(&self, host_id: u64) -> Result<Liveness>;
}

/// No lease manager: a single host.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLeases;

impl Leases for NoLeases {
    fn member(&self) -> Option<Member> {
        None
    }

    fn acquire(&self, _: &Path, _: Option<u64>) -> Result<LeaseGuard> {
        Ok(LeaseGuard::default())
    }

    fn version(&self, _: &Path) -> Result<Option<u64>> {
        Ok(None)
    }

    fn liveness(&self, _: u64) -> Result<Liveness> {
        Ok(Liveness::Alive)
    }
}

/// A transaction of a dead host taken over: who took it from whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    /// The lockspace.
    pub lockspace: String,
    /// The host id of the dead host that made the claims.
    pub from_host_id: u64,
    /// Its host name, as its claims say.
    pub from_host: String,
    /// The host id that took the transaction over.
    pub by_host_id: u64,
}

/// The lease file that stands for `base`: that of its first name in its directory, so
/// that every name of one file (hard links) shares one lease.
fn lease_file_of<S: Fs>(fs: &S, base: &Path) -> Result<PathBuf> {
    let names = claim::names(fs, base).unwrap_or_else(|_| vec![base.to_path_buf()]);
    layout::lease(names.first().map_or(base, PathBuf::as_path))
}

impl<S: Fs, H: Host> Ctx<S, H> {
    /// Acquires the leases of `bases` (each once, in path order), for as long as the guard
    /// lives. Does nothing without a lockspace.
    pub(crate) fn lease_bases<'a>(
        &self,
        bases: impl IntoIterator<Item = &'a Path>,
    ) -> Result<LeaseGuard> {
        self.lease_bases_at(bases.into_iter().map(|b| (b, None)))
    }

    fn lease_bases_at<'a>(
        &self,
        bases: impl IntoIterator<Item = (&'a Path, Option<u64>)>,
    ) -> Result<LeaseGuard> {
        let mut guard = LeaseGuard::default();
        if self.leases.member().is_none() {
            return Ok(guard);
        }
        let mut files: Vec<(PathBuf, Option<u64>)> = bases
            .into_iter()
            .map(|(b, v)| Ok((lease_file_of(&self.fs, b)?, v)))
            .collect::<Result<_>>()?;
        files.sort();
        files.dedup_by(|a, b| a.0 == b.0);
        for (file, version) in files {
            guard.extend(self.leases.acquire(&file, version)?);
        }
        Ok(guard)
    }

    /// Whose the claim `c` is: `Ok(None)` when it is this host's (or made without a
    /// lockspace, or no lockspace is used), `Ok(Some(takeover))` when its host is gone.
    ///
    /// # Errors
    /// [`Error::HostAlive`] when its host may still be working: the transaction is that
    /// host's.
    pub(crate) fn owner_of(&self, c: &Claim, base: &Path) -> Result<Option<Takeover>> {
        let (Some(me), Some(theirs)) = (self.leases.member(), c.lease.as_ref()) else {
            return Ok(None);
        };
        if theirs.lockspace != me.lockspace {
            return Err(Error::Invalid(format!(
                "the claim of base {} was made in sanlock lockspace {:?}, not {:?}",
                base.display(),
                theirs.lockspace,
                me.lockspace
            )));
        }
        if theirs.host_id == me.host_id {
            return Ok(None);
        }
        match self.leases.liveness(theirs.host_id)? {
            Liveness::Alive => Err(Error::HostAlive {
                path: base.to_path_buf(),
                tx: c.tx.clone(),
                host_id: theirs.host_id,
                host: c.host.clone(),
            }),
            Liveness::Gone => Ok(Some(Takeover {
                lockspace: me.lockspace,
                from_host_id: theirs.host_id,
                from_host: c.host.clone(),
                by_host_id: me.host_id,
            })),
        }
    }

    /// Leases `bases` for work on transaction `tx`, whose claims are checked under them:
    /// another host's transaction is refused while that host is alive ([`Error::HostAlive`]).
    /// Returns the takeover when the claims are those of a dead host; then the leases were
    /// acquired at the versions read before its death was checked, so nobody else got in
    /// between.
    pub(crate) fn lease_tx_bases(
        &self,
        tx: &TxId,
        bases: &[PathBuf],
    ) -> Result<(LeaseGuard, Option<Takeover>)> {
        if self.leases.member().is_none() {
            return Ok((LeaseGuard::default(), None));
        }
        let mut versions = Vec::new();
        for base in bases {
            versions.push(self.leases.version(&lease_file_of(&self.fs, base)?)?);
        }
        let takeover = self.claims_owner(tx, bases)?;
        let checked = if takeover.is_some() {
            versions
        } else {
            vec![None; bases.len()]
        };
        let guard = self.lease_bases_at(bases.iter().map(PathBuf::as_path).zip(checked))?;
        // Under the leases: the claims again, in case they changed hands meanwhile.
        let again = self.claims_owner(tx, bases)?;
        if again != takeover {
            return Err(Error::Invalid(format!(
                "the claims of transaction {tx} changed while its leases were acquired"
            )));
        }
        Ok((guard, takeover))
    }

    /// The takeover that `tx`'s claims on `bases` call for, if any (see [`Ctx::owner_of`]).
    pub(crate) fn tx_owner(&self, tx: &TxId, bases: &[PathBuf]) -> Result<Option<Takeover>> {
        self.claims_owner(tx, bases)
    }

    fn claims_owner(&self, tx: &TxId, bases: &[PathBuf]) -> Result<Option<Takeover>> {
        let mut takeover = None;
        for base in bases {
            if let Found::Claim(c) = claim::read(&self.fs, base)? {
                if c.tx == *tx {
                    takeover = takeover.or(self.owner_of(&c, base)?);
                }
            }
        }
        Ok(takeover)
    }
}
