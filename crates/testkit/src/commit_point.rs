//! Stopping a commit at its commit point, as a killed process would stop there, inside one
//! test process: [`CommitPointStop`] is a hook for [`HookedHost::at_step`](crate::hooked::HookedHost::at_step).
//!
//! It unwinds out of the engine (the test catches the panic), which leaves the journal and
//! pre-images behind. It is not the binary's `IMGTX_TEST_CRASH_AFTER` hook, which ends a real
//! process and exists only in test builds of `txn` (its `crash-hooks` feature).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A switch that, once armed, makes the next commit die at its commit point: its
/// [`CommitPointStop::hook`] unwinds there, which leaves the journal and pre-images behind
/// as a killed process would. It disarms itself when it fires.
#[derive(Debug, Clone, Default)]
pub struct CommitPointStop(Arc<AtomicBool>);

impl CommitPointStop {
    /// The next commit point reached stops the commit.
    pub fn arm(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Commit points are passed again (for a commit that failed before reaching one).
    pub fn disarm(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// The [`HookedHost::at_step`](crate::hooked::HookedHost::at_step) hook that does the stopping.
    pub fn hook(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let armed = Arc::clone(&self.0);
        move |name| {
            if name == "commit-point" && armed.swap(false, Ordering::SeqCst) {
                std::panic::resume_unwind(Box::new("stopped at the commit point"));
            }
        }
    }
}
