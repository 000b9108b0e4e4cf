//! Termination signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT) during every command that changes
//! something: caught, so that imgtx never dies halfway through a commit, a recovery or a
//! rollback. The engine hears of them through a flag ([`Interrupts::flag`]) and stops only
//! where stopping changes nothing (before a commit point); whatever is past that point is
//! finished first, and a second signal is answered with how much is left.
//!
//! During `imgtx run` they are also passed on to the command, and answered with a rollback
//! instead of a dead imgtx and a transaction left open.
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
//! runs the handler on the main thread, at the latest on its way back from `wait`. Threads
//! that run commands (`run --each`) are started with [`spawn_blocked`] and ask the main
//! thread whether a signal came, for the same reason.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{Scope, ScopedJoinHandle};

use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::{Handle, SignalsInfo};
use signal_hook::SigId;

/// The signals that end `run` with a rollback.
const CAUGHT: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

/// The running commands signals are forwarded to.
#[derive(Default)]
struct Children {
    pids: Vec<i32>,
    /// The last signal another process sent that was forwarded, for a command registered
    /// just too late to get it.
    forwarded: Option<Signal>,
}

/// Catches [`CAUGHT`] from creation until drop; forwards to the running commands what
/// another process sent.
pub struct Interrupts {
    first: Arc<AtomicI32>,
    /// Set by the handler itself, so it is set before the main thread runs on.
    latest: Arc<AtomicUsize>,
    flags: Vec<SigId>,
    children: Arc<Mutex<Children>>,
    /// Bytes the operation still has to copy, as progress last said; `u64::MAX` until the
    /// operation is one a signal does not stop (a second signal then says so).
    left: Arc<AtomicU64>,
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
        let children = Arc::new(Mutex::new(Children::default()));
        let left = Arc::new(AtomicU64::new(u64::MAX));
        let (first2, children2, left2) =
            (Arc::clone(&first), Arc::clone(&children), Arc::clone(&left));
        // Spawned with the signals blocked, which it inherits; then unblocked here again.
        let caught = caught_set()?;
        caught.thread_block().map_err(io::Error::from)?;
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for origin in signals.forever() {
                    let again = first2
                        .compare_exchange(0, origin.signal, Ordering::SeqCst, Ordering::SeqCst)
                        .is_err();
                    tracing::info!(signal = origin.signal, "signal received");
                    let left = left2.load(Ordering::SeqCst);
                    if again && left != u64::MAX {
                        still_finishing(left);
                    }
                    // A signal the kernel sent (a terminal's Ctrl-C, a hangup) went to the whole
                    // process group and so to the commands already; sending it again would make
                    // some programs treat it as a second, forcing interrupt.
                    if origin.process.is_some() {
                        if let Ok(sig) = Signal::try_from(origin.signal) {
                            let mut c = children2.lock().unwrap_or_else(PoisonError::into_inner);
                            c.forwarded = Some(sig);
                            for &pid in &c.pids {
                                let _ = kill(Pid::from_raw(pid), sig);
                            }
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
            children,
            left,
            handle,
            thread: Some(thread),
        })
    }

    /// The flag the engine watches: set to the signal's number by the handler itself.
    pub fn flag(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.latest)
    }

    /// Notes that the operation under way is one a signal does not stop, and how many bytes
    /// it still has to copy, for the answer to a second signal.
    pub fn left(&self, bytes: u64) {
        self.left.store(bytes, Ordering::SeqCst);
    }

    /// Forwards later signals to process `pid`, a command just started. If a signal another
    /// process sent was already forwarded to the commands running then, `pid` gets it now:
    /// it started too late for it.
    pub fn forward_to(&self, pid: u32) {
        let Ok(pid) = i32::try_from(pid) else {
            return;
        };
        // Under the lock the signal thread forwards under: exactly one of the two sends.
        let mut c = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sig) = c.forwarded {
            let _ = kill(Pid::from_raw(pid), sig);
        }
        c.pids.push(pid);
    }

    /// Stops forwarding to `pid` (it has been reaped: its pid may be reused).
    pub fn stop_forwarding(&self, pid: u32) {
        let mut c = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        c.pids.retain(|&p| u32::try_from(p).ok() != Some(pid));
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

/// Spawns `f` on a thread of `scope` named `name`, with the caught signals blocked in it (and
/// in whatever threads it starts), so that their handler keeps running on the main thread only.
pub fn spawn_blocked<'scope, T: Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    name: String,
    f: impl FnOnce() -> T + Send + 'scope,
) -> io::Result<ScopedJoinHandle<'scope, T>> {
    let caught = caught_set()?;
    // A new thread inherits the mask of the one that spawns it: blocked only around the spawn,
    // so a signal arriving meanwhile waits, pending, for the main thread to unblock it.
    caught.thread_block().map_err(io::Error::from)?;
    let spawned = std::thread::Builder::new()
        .name(name)
        .spawn_scoped(scope, f);
    caught.thread_unblock().map_err(io::Error::from)?;
    spawned
}

/// [`CAUGHT`] as a signal set.
fn caught_set() -> io::Result<SigSet> {
    let mut caught = SigSet::empty();
    for sig in CAUGHT {
        caught.add(Signal::try_from(sig).map_err(io::Error::from)?);
    }
    Ok(caught)
}

/// Says, on stderr, why a second signal does not stop imgtx either.
fn still_finishing(left: u64) {
    let left = if left > 0 {
        format!(", {} left", indicatif::HumanBytes(left))
    } else {
        String::new()
    };
    crate::tag::say(
        crate::tag::Tag::Warning,
        &format!("still finishing{left}: stopping now would leave images half written"),
    );
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
