//! [`Ctx`], what every operation works with: the file system, the machine, and the state
//! directory; plus the few steps every operation shares (the transaction lock, loading an
//! open transaction, the time).
//!
//! The orchestrators take a `&Ctx` rather than the public [`crate::Engine`], so that no
//! module below the crate root depends on the root.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use storage::Fs;

use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::TxId;

use crate::statedir::StateDir;

/// The file system `S`, the host `H` and the state directory an operation works with.
#[derive(Debug)]
pub(crate) struct Ctx<S, H> {
    /// Every file access goes through it.
    pub fs: S,
    /// Locks, qemu, identity, time.
    pub host: H,
    /// The registry of this user's transactions.
    pub state: StateDir,
    /// Set (to the signal's number) when the user asked to stop; see
    /// [`Ctx::check_interrupt`].
    pub interrupt: Option<Arc<AtomicUsize>>,
    /// Leases across hosts ([`crate::lease::NoLeases`] without a lockspace).
    pub leases: Arc<dyn crate::lease::Leases>,
    /// The takeover of the transaction being recovered, while it is: every history entry
    /// made meanwhile records it.
    pub takeover: std::sync::Mutex<Option<crate::lease::Takeover>>,
}

impl<S: Fs, H: Host> Ctx<S, H> {
    /// Takes the lock serializing work on transaction `id`.
    pub(crate) fn lock_tx(&self, id: &TxId) -> Result<H::Guard> {
        self.host
            .lock_exclusive(&self.state.lock(id), false)?
            .ok_or_else(|| Error::Locked { tx: id.clone() })
    }

    /// Removes the lock file of a transaction that no longer exists (while holding it).
    pub(crate) fn drop_lock_file(&self, id: &TxId) {
        let _ = crate::files::remove_if_exists(&self.fs, &self.state.lock(id));
    }

    /// Fails with [`Error::Stopped`] once the user asked to stop. Called only where stopping
    /// leaves nothing behind but what the caller's error path removes: before a commit
    /// point, never after it (a commit past it is finished, whatever the user asks).
    pub(crate) fn check_interrupt(&self) -> Result<()> {
        match self.interrupt.as_ref().map(|f| f.load(Ordering::SeqCst)) {
            Some(signal) if signal != 0 => Err(Error::Stopped {
                signal: i32::try_from(signal).unwrap_or(0),
            }),
            _ => Ok(()),
        }
    }

    /// The takeover under way, if any (see [`Ctx::takeover`]'s field).
    pub(crate) fn takeover(&self) -> Option<crate::lease::Takeover> {
        self.takeover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs `f` with `t` as the takeover under way.
    pub(crate) fn taking_over<T>(
        &self,
        t: Option<crate::lease::Takeover>,
        f: impl FnOnce() -> T,
    ) -> T {
        let set = |v| {
            *self
                .takeover
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = v;
        };
        if let Some(t) = &t {
            tracing::warn!(
                lockspace = %t.lockspace,
                from = t.from_host_id,
                from_host = %t.from_host,
                by = t.by_host_id,
                "taking over a transaction of a dead host"
            );
        }
        set(t);
        let out = f();
        set(None);
        out
    }

    /// The time now, as history and manifests record it.
    pub(crate) fn now(&self) -> String {
        crate::time::rfc3339(self.host.now())
    }
}
