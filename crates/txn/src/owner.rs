//! Whose a transaction is when several hosts share the storage: the leases of its bases
//! acquired (see [`crate::lease`]), and its claims checked under them. A transaction whose
//! claims name another live host is refused; a dead host's may be taken over by recovery.

use std::path::{Path, PathBuf};

use storage::Fs;

use crate::claim::{self, Claim, Found};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::TxId;
use crate::layout;
use crate::lease::{LeaseGuard, Liveness, Takeover};

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
