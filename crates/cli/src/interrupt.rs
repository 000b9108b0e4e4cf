//! Termination signals during `imgtx run`: caught, passed on to the command, and answered
//! with a rollback instead of a dead imgtx and a transaction left open.
//!
//! A terminal's Ctrl-C reaches the whole foreground process group, so the command already
//! has it; a signal another process sent to imgtx alone (`kill`, systemd, a batch
//! scheduler) is forwarded to the command so that it stops too. Either way imgtx waits for
//! the command to exit and then rolls the transaction back.
//!
//! The answer must not depend on thread scheduling. A Ctrl-C reaches imgtx before the
//! command can exit on it, but the thread that reads signals may run only later, after
//! `wait` returned and the main thread decided to commit. So the handler itself records the
//! signal, and the caught signals are blocked in every thread but the main one: the kernel
//! runs the handler on the main thread, at the latest on its way back from `wait`.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::{Handle, SignalsInfo};
use signal_hook::SigId;

/// The signals that end `run` with a rollback.
const CAUGHT: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

/// Catches [`CAUGHT`] from creation until drop; while a child is set, forwards to it what
/// another process sent.
pub struct Interrupts {
    first: Arc<AtomicI32>,
    /// Set by the handler itself, so it is set before the main thread runs on.
    latest: Arc<AtomicUsize>,
    flags: Vec<SigId>,
    child: Arc<AtomicI32>,
    handle: Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Interrupts {
    /// Starts catching. From here on these signals no longer kill imgtx.
    pub fn catch() -> io::Result<Self> {
        let latest = Arc::new(AtomicUsize::new(0));
        let flags = CAUGHT
            .iter()
            .map(|&sig| {
                let value = usize::try_from(sig).expect("signal numbers are positive");
                signal_hook::flag::register_usize(sig, Arc::clone(&latest), value)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut signals = SignalsInfo::<WithOrigin>::new(CAUGHT)?;
        let handle = signals.handle();
        let first = Arc::new(AtomicI32::new(0));
        let child = Arc::new(AtomicI32::new(0));
        let (first2, child2) = (Arc::clone(&first), Arc::clone(&child));
        // Spawned with the signals blocked, which it inherits; then unblocked here again.
        let mut caught = SigSet::empty();
        for sig in CAUGHT {
            caught.add(Signal::try_from(sig).map_err(io::Error::from)?);
        }
        caught.thread_block().map_err(io::Error::from)?;
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for origin in signals.forever() {
                    let _ = first2.compare_exchange(
                        0,
                        origin.signal,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    tracing::info!(
                        signal = origin.signal,
                        "signal received; rolling back once the command exits"
                    );
                    let pid = child2.load(Ordering::SeqCst);
                    // A signal the kernel sent (a terminal's Ctrl-C, a hangup) went to the whole
                    // process group and so to the command already; sending it again would make
                    // some programs treat it as a second, forcing interrupt.
                    if pid > 0 && origin.process.is_some() {
                        if let Ok(sig) = Signal::try_from(origin.signal) {
                            let _ = kill(Pid::from_raw(pid), sig);
                        }
                    }
                }
            });
        caught.thread_unblock().map_err(io::Error::from)?;
        let thread = spawned?;
        Ok(Self {
            first,
            latest,
            flags,
            child,
            handle,
            thread: Some(thread),
        })
    }

    /// Forwards later signals to process `pid`.
    pub fn forward_to(&self, pid: u32) {
        self.child
            .store(i32::try_from(pid).unwrap_or(0), Ordering::SeqCst);
    }

    /// Stops forwarding (the child has been reaped: its pid may be reused).
    pub fn stop_forwarding(&self) {
        self.child.store(0, Ordering::SeqCst);
    }

    /// The first signal caught, if any.
    pub fn received(&self) -> Option<i32> {
        match self.first.load(Ordering::SeqCst) {
            0 => match self.latest.load(Ordering::SeqCst) {
                0 => None,
                s => i32::try_from(s).ok(),
            },
            s => Some(s),
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for id in self.flags.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
