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
//!   ([`crate::Error::HostAlive`]); once sanlock says it is dead, recovery on any member may take
//!   it over, with the lease version it read checked at acquisition, and records the
//!   takeover in the history.
//!
//! Without a lockspace the engine uses [`NoLeases`]: nothing is acquired, claims record no
//! host id, and behaviour is that of a single host. The simulated-disk crash tests run so.

use std::fmt::Debug;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;

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

    pub(crate) fn extend(&mut self, other: Self) {
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
    /// [`crate::Error::LeaseBusy`] when a process of another host (or another process of this
    /// one) holds it; [`crate::Error::Lease`] for everything else.
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

/// Who took a dead host's transaction over, as the history records it.
pub use crate::history::Takeover;
