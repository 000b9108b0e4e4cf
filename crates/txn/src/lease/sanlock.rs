//! [`SanlockLeases`]: the [`Leases`] of a sanlock lockspace this host has joined, through
//! the `lease` crate (the local daemon, found through `$SANLOCK_RUN_DIR`).

use std::path::Path;

use super::{LeaseGuard, Leases, Liveness, Member};
use crate::error::{Error, Result};

/// Leases from the local sanlock daemon, in one lockspace.
#[derive(Debug, Clone)]
pub struct SanlockLeases {
    sanlock: lease::Sanlock,
}

impl SanlockLeases {
    /// Connects to the local daemon as a member of `lockspace`.
    ///
    /// # Errors
    /// [`Error::Lease`] when the daemon cannot be reached, or this host has not joined
    /// `lockspace`: imgtx must then refuse to work rather than work unprotected.
    pub fn connect(lockspace: &str) -> Result<Self> {
        let sanlock = lease::Sanlock::connect(lockspace).map_err(|source| Error::Lease {
            lockspace: lockspace.to_owned(),
            source: Box::new(source),
        })?;
        Ok(Self { sanlock })
    }

    fn error(&self, source: lease::Error) -> Error {
        match source {
            lease::Error::Busy { path, host_id, .. } => Error::LeaseBusy {
                path,
                host_id,
                lockspace: self.sanlock.lockspace().to_owned(),
            },
            source => Error::Lease {
                lockspace: self.sanlock.lockspace().to_owned(),
                source: Box::new(source),
            },
        }
    }
}

impl Leases for SanlockLeases {
    fn member(&self) -> Option<Member> {
        Some(Member {
            lockspace: self.sanlock.lockspace().to_owned(),
            host_id: self.sanlock.host_id(),
        })
    }

    fn acquire(&self, lease_file: &Path, version: Option<u64>) -> Result<LeaseGuard> {
        let held = self
            .sanlock
            .acquire(lease_file, version)
            .map_err(|e| self.error(e))?;
        Ok(LeaseGuard::new(Box::new(held)))
    }

    fn version(&self, lease_file: &Path) -> Result<Option<u64>> {
        if std::fs::symlink_metadata(lease_file).is_err() {
            return Ok(None);
        }
        let info = self.sanlock.read(lease_file).map_err(|e| self.error(e))?;
        Ok(Some(info.lver))
    }

    fn liveness(&self, host_id: u64) -> Result<Liveness> {
        use lease::HostStatus;
        let status = self
            .sanlock
            .host_status(host_id)
            .map_err(|e| self.error(e))?;
        tracing::debug!(host_id, ?status, "sanlock host status");
        Ok(match status {
            HostStatus::Dead | HostStatus::Free => Liveness::Gone,
            HostStatus::Live | HostStatus::Failing | HostStatus::Unknown => Liveness::Alive,
        })
    }
}
