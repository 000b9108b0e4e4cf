//! Waiting for images another transaction or a qemu process holds: the polling, the limit,
//! what the caller hears while it waits, and the order in which waiters get their turn.
//!
//! Waiting writes nothing a transaction relies on: a waiting begin has no manifest and no
//! claim yet, so stopping it leaves nothing behind. Only a ticket beside the image says it
//! waits (`.NAME.ID.imgtx.wait`, its modification time the moment it came), so that waiters
//! from any state directory are served in arrival order: when the image is free, the waiter
//! that came first goes first. A ticket holds an exclusive lock for as long as its waiter
//! lives; one whose lock is free is a dead waiter's, ignored and removed. Tickets of other
//! users that this process may not lock are not seen: across users, order is not kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use storage::Fs;

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::TxId;
use crate::layout;
use crate::manifest::Holder;
use crate::options::Wait;

/// How often a waiting begin looks at a busy image again.
pub(crate) const POLL: Duration = Duration::from_millis(200);

/// What holds an image a begin waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// Another transaction.
    Transaction(Holder),
    /// Processes that use the image through qemu's locks (the last transaction's editing
    /// tools, say); their pids when they can be found.
    Qemu(Vec<u32>),
}

/// What a waiting begin tells its caller at every poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The image it waits for.
    pub base: PathBuf,
    /// What holds it.
    pub blocker: Blocker,
    /// How long it has waited so far.
    pub waited: Duration,
}

/// The waiting of one begin: how long it may wait, how long it has, and whom it tells.
pub(crate) struct Waiter<'a, S: Fs, H: Host> {
    e: &'a Ctx<S, H>,
    wait: Wait,
    waited: Duration,
    on_wait: &'a mut dyn FnMut(&Waiting),
    /// The tickets this waiter holds, with their locks.
    tickets: Vec<(PathBuf, H::Guard)>,
    id: &'a TxId,
}

impl<'a, S: Fs, H: Host> Waiter<'a, S, H> {
    pub(crate) fn new(
        e: &'a Ctx<S, H>,
        id: &'a TxId,
        wait: Wait,
        on_wait: &'a mut dyn FnMut(&Waiting),
    ) -> Self {
        Self {
            e,
            wait,
            waited: Duration::ZERO,
            on_wait,
            tickets: Vec::new(),
            id,
        }
    }

    /// `base` is held by `blocker`: fails at once without waiting, or when the time is up;
    /// else takes a ticket (once), tells the caller, and sleeps one poll.
    pub(crate) fn blocked(&mut self, base: &Path, blocker: Blocker) -> Result<()> {
        let refusal = |blocker: Blocker, timed_out: bool| match blocker {
            Blocker::Transaction(holder) if timed_out => Error::WaitTimedOut {
                path: base.to_path_buf(),
                holder: Box::new(holder),
            },
            Blocker::Transaction(holder) => Error::Busy {
                path: base.to_path_buf(),
                holder: Box::new(holder),
            },
            Blocker::Qemu(pids) => Error::InUse {
                path: base.to_path_buf(),
                what: "base",
                pids,
            },
        };
        match self.wait {
            Wait::No => return Err(refusal(blocker, false)),
            Wait::For(limit) if self.waited >= limit => return Err(refusal(blocker, true)),
            _ => {}
        }
        self.take_ticket(base)?;
        (self.on_wait)(&Waiting {
            base: base.to_path_buf(),
            blocker,
            waited: self.waited,
        });
        self.e.host.sleep(POLL);
        self.waited += POLL;
        self.e.check_interrupt()
    }

    /// True when no live waiter that came earlier waits for `base`: this one's turn.
    pub(crate) fn my_turn(&self, base: &Path) -> Result<bool> {
        let mine = self
            .tickets
            .iter()
            .find(|(t, _)| is_ticket_of(t, base))
            .map(|(t, _)| self.arrival(t))
            .transpose()?;
        let others = self.live_tickets(base)?;
        Ok(match mine {
            // Never waited: any live waiter came first.
            None => others.is_empty(),
            Some(mine) => others.iter().all(|other| *other > mine),
        })
    }

    /// When the ticket at `path` came, and its name to break ties.
    fn arrival(&self, path: &Path) -> Result<(i128, PathBuf)> {
        let m = self.e.fs.metadata(path).map_err(Error::io("stat", path))?;
        Ok((m.map_or(i128::MAX, |m| m.mtime_ns), path.to_path_buf()))
    }

    /// The arrivals of live waiters for `base` other than this one; dead waiters' tickets
    /// are removed.
    fn live_tickets(&self, base: &Path) -> Result<Vec<(i128, PathBuf)>> {
        let dir = layout::dir_of(base)?;
        let mut live = Vec::new();
        for name in self.e.fs.read_dir(dir).map_err(Error::io("list", dir))? {
            let path = dir.join(&name);
            if !is_ticket_of(&path, base) || self.tickets.iter().any(|(t, _)| *t == path) {
                continue;
            }
            // A ticket whose lock this process can take belongs to nobody alive.
            match self.e.host.lock_exclusive(&path, false) {
                Ok(None) => live.push(self.arrival(&path)?),
                Ok(Some(_dead)) => {
                    let _ = crate::files::remove_if_exists(&self.e.fs, &path);
                }
                Err(_) => {}
            }
        }
        Ok(live)
    }

    /// Takes a ticket for `base` unless this waiter has one.
    fn take_ticket(&mut self, base: &Path) -> Result<()> {
        if self.tickets.iter().any(|(t, _)| is_ticket_of(t, base)) {
            return Ok(());
        }
        let path = layout::wait_ticket(base, self.id)?;
        if let Some(guard) = self.e.host.lock_exclusive(&path, false)? {
            self.tickets.push((path, guard));
        }
        Ok(())
    }
}

impl<S: Fs, H: Host> Drop for Waiter<'_, S, H> {
    /// Gives up every ticket: this waiter got its images, failed, or was stopped.
    fn drop(&mut self) {
        for (path, guard) in self.tickets.drain(..) {
            let _ = crate::files::remove_if_exists(&self.e.fs, &path);
            drop(guard);
        }
    }
}

/// True when `path` is a waiting ticket for `base`.
fn is_ticket_of(path: &Path, base: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str());
    let (Some(name), Ok(base_name)) = (name, layout::base_name(base)) else {
        return false;
    };
    layout::parse_wait_ticket(name).is_some_and(|(of, _)| of == base_name)
        && layout::dir_of(path).ok() == layout::dir_of(base).ok()
}
