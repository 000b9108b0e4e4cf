//! Termination signals during `imgtx run`: caught, passed on to the command, and answered
//! with a rollback instead of a dead imgtx and a transaction left open.
//!
//! A terminal's Ctrl-C reaches the whole foreground process group, so the command already
//! has it; a signal another process sent to imgtx alone (`kill`, systemd, a batch
//! scheduler) is forwarded to the command so that it stops too. Either way imgtx waits for
//! the command to exit and then rolls the transaction back.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::{Handle, SignalsInfo};

/// The signals that end `run` with a rollback.
const CAUGHT: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

/// Catches [`CAUGHT`] from creation until drop; while a child is set, forwards to it what
/// another process sent.
pub struct Interrupts {
    first: Arc<AtomicI32>,
    child: Arc<AtomicI32>,
    handle: Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Interrupts {
    /// Starts catching. From here on these signals no longer kill imgtx.
    pub fn catch() -> io::Result<Self> {
        let mut signals = SignalsInfo::<WithOrigin>::new(CAUGHT)?;
        let handle = signals.handle();
        let first = Arc::new(AtomicI32::new(0));
        let child = Arc::new(AtomicI32::new(0));
        let (first2, child2) = (Arc::clone(&first), Arc::clone(&child));
        let thread = std::thread::Builder::new()
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
            })?;
        Ok(Self {
            first,
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
            0 => None,
            s => Some(s),
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
