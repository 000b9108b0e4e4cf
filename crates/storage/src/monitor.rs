//! A write-ordering monitor: an [`Fs`] wrapper that tracks what is durable and asks a rule,
//! before every data change, whether the change is allowed yet.
//!
//! [`Monitor`] forwards every call to the wrapped file system unchanged. On the side it keeps
//! the durability state a crash would see: which files have unsynced data or length changes,
//! which directory entries were created, removed or renamed without a directory sync since,
//! and which changes were lost for good to a failed sync. Before each `write_all_at`,
//! `set_len` and `zero_range` it calls the rule with a [`View`] of that state; a rule that
//! answers `Err` records a [`Violation`] (the operation still runs, so a test sees every
//! violation of a run, not only the first).
//!
//! This is the storage half of crash-safety test T8 ("before any write to base range R, the
//! intent record and the pre-image covering R are durable"). The monitor knows nothing about
//! journals or bases: the rule, supplied by the test, decides what must be durable first.
//! It is not a crash simulator (that is [`crate::sim`]) and it never fails an operation.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{File, Fs, Metadata};

/// A data change about to be made to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `write_all_at` of `len` bytes at `offset`.
    Write {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// `set_len` to `len`.
    SetLen {
        /// The new length.
        len: u64,
    },
    /// `zero_range` of `len` bytes at `offset`.
    ZeroRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}

/// A change the rule refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The file changed (its path when it was opened).
    pub path: PathBuf,
    /// The change.
    pub change: Change,
    /// Why the rule refused it.
    pub reason: String,
}

type Key = (u64, u64);

#[derive(Debug, Default)]
struct Track {
    /// Files with data or length changes not yet synced.
    dirty: HashSet<Key>,
    /// Files whose sync failed: what it covered may never reach the disk.
    poisoned: HashSet<Key>,
    /// Per directory, the names whose entry changed since its last sync.
    pending: HashMap<PathBuf, HashSet<PathBuf>>,
    /// Names whose entry change was lost to a failed directory sync.
    lost: HashSet<PathBuf>,
    violations: Vec<Violation>,
}

impl Track {
    fn entry_changed(&mut self, path: &Path) {
        self.lost.remove(path);
        self.pending
            .entry(parent_of(path))
            .or_default()
            .insert(path.to_path_buf());
    }
}

fn parent_of(p: &Path) -> PathBuf {
    p.parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
}

/// The rule a [`Monitor`] applies before each data change: `Err(reason)` is a violation.
pub type Rule<F> = dyn Fn(&View<'_, F>, &Path, Change) -> Result<(), String> + Send + Sync;

struct Shared<F> {
    track: Mutex<Track>,
    rule: Box<Rule<F>>,
}

/// The file system `F`, watched by an ordering rule. Clones share the tracking state.
pub struct Monitor<F> {
    inner: F,
    shared: Arc<Shared<F>>,
}

impl<F: Clone> Clone for Monitor<F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<F: std::fmt::Debug> std::fmt::Debug for Monitor<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What the rule sees: the wrapped file system and what of it is durable now.
pub struct View<'a, F> {
    fs: &'a F,
    track: &'a Track,
}

impl<F: Fs> View<'_, F> {
    /// The wrapped file system, for reading what the rule needs (reads are not checked).
    pub fn fs(&self) -> &F {
        self.fs
    }

    /// Whether `path` exists and a crash now would keep it exactly as it reads: no unsynced
    /// or lost data, length or directory entry change on it or on any directory above it.
    pub fn is_durable(&self, path: &Path) -> bool {
        let Ok(Some(meta)) = self.fs.metadata(path) else {
            return false;
        };
        let key = (meta.dev, meta.ino);
        if self.track.dirty.contains(&key) || self.track.poisoned.contains(&key) {
            return false;
        }
        path.ancestors()
            .take_while(|a| a.parent().is_some())
            .all(|a| {
                !self.track.lost.contains(a)
                    && !self
                        .track
                        .pending
                        .get(&parent_of(a))
                        .is_some_and(|names| names.contains(a))
            })
    }
}

impl<F: Fs + Clone> Monitor<F> {
    /// Watches `inner` with `rule`, called before every data change of every file.
    pub fn new(
        inner: F,
        rule: impl Fn(&View<'_, F>, &Path, Change) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                track: Mutex::new(Track::default()),
                rule: Box::new(rule),
            }),
        }
    }

    /// The wrapped file system.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// Every violation so far, in order.
    pub fn violations(&self) -> Vec<Violation> {
        lock(&self.shared.track).violations.clone()
    }

    fn key_of(&self, path: &Path) -> Option<Key> {
        self.inner
            .metadata(path)
            .ok()
            .flatten()
            .map(|m| (m.dev, m.ino))
    }

    fn wrap(&self, file: F::File, path: &Path) -> MonFile<F> {
        MonFile {
            key: self.key_of(path),
            path: path.to_path_buf(),
            inner: file,
            fs: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

fn lock(m: &Mutex<Track>) -> MutexGuard<'_, Track> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An open file of a [`Monitor`].
pub struct MonFile<F: Fs> {
    inner: F::File,
    key: Option<Key>,
    path: PathBuf,
    fs: F,
    shared: Arc<Shared<F>>,
}

impl<F: Fs> std::fmt::Debug for MonFile<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<F: Fs> MonFile<F> {
    /// Asks the rule about `change`, records a refusal, and marks the file dirty: from now on
    /// the range is unknown to a crash until a sync succeeds.
    fn before(&self, change: Change) {
        let mut track = lock(&self.shared.track);
        let verdict = (self.shared.rule)(
            &View {
                fs: &self.fs,
                track: &track,
            },
            &self.path,
            change,
        );
        if let Err(reason) = verdict {
            track.violations.push(Violation {
                path: self.path.clone(),
                change,
                reason,
            });
        }
        if let Some(key) = self.key {
            track.dirty.insert(key);
        }
    }
}

impl<F: Fs> File for MonFile<F> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.before(Change::Write {
            offset,
            len: buf.len() as u64,
        });
        self.inner.write_all_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.before(Change::SetLen { len });
        self.inner.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn stat(&self) -> io::Result<Metadata> {
        self.inner.stat()
    }

    fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.inner.as_fd()
    }

    fn sync_data(&self) -> io::Result<()> {
        let result = self.inner.sync_data();
        if let Some(key) = self.key {
            let mut track = lock(&self.shared.track);
            match &result {
                Ok(()) => {
                    track.dirty.remove(&key);
                }
                // Linux may drop the dirty pages after a writeback error: nothing this sync
                // covered can be trusted again, whatever later syncs report.
                Err(_) => {
                    track.poisoned.insert(key);
                }
            }
        }
        result
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.before(Change::ZeroRange { offset, len });
        self.inner.zero_range(offset, len)
    }

    fn clone_range_from(
        &self,
        src: &Self,
        src_offset: u64,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        // A clone changes this file's content exactly as a write of the source's would.
        self.before(Change::Write {
            offset: dst_offset,
            len,
        });
        self.inner
            .clone_range_from(&src.inner, src_offset, dst_offset, len)
    }
}

impl<F: Fs + Clone> Fs for Monitor<F> {
    type File = MonFile<F>;

    fn create_new(&self, path: &Path) -> io::Result<Self::File> {
        let f = self.inner.create_new(path)?;
        lock(&self.shared.track).entry_changed(path);
        Ok(self.wrap(f, path))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Self::File> {
        let f = self.inner.open(path, writable)?;
        Ok(self.wrap(f, path))
    }

    fn metadata(&self, path: &Path) -> io::Result<Option<Metadata>> {
        self.inner.metadata(path)
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        self.inner.canonicalize(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        // Mark first: a failed unlink may still have happened as far as a crash is concerned.
        lock(&self.shared.track).entry_changed(path);
        self.inner.remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        {
            let mut track = lock(&self.shared.track);
            track.entry_changed(from);
            track.entry_changed(to);
        }
        self.inner.rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        lock(&self.shared.track).entry_changed(to);
        self.inner.hard_link(from, to)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let existed = self.inner.metadata(path).ok().flatten().is_some();
        self.inner.create_dir(path)?;
        if !existed {
            lock(&self.shared.track).entry_changed(path);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let result = self.inner.sync_dir(dir);
        let mut track = lock(&self.shared.track);
        let names = track.pending.remove(dir).unwrap_or_default();
        if result.is_err() {
            track.lost.extend(names);
        }
        result
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        self.inner.read_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimFs;

    /// A rule for tests: writes to `/d/base` need `/d/log` durable.
    fn guarded(fs: SimFs) -> Monitor<SimFs> {
        Monitor::new(fs, |view, path, _change| {
            if path == Path::new("/d/base") && !view.is_durable(Path::new("/d/log")) {
                return Err("the log is not durable".into());
            }
            Ok(())
        })
    }

    #[test]
    fn a_write_before_the_log_is_durable_is_a_violation() {
        let sim = SimFs::new();
        sim.put_durable("/d/base", &[0; 16]);
        let fs = guarded(sim);
        let log = fs.create_new(Path::new("/d/log")).unwrap();
        log.write_all_at(b"intent", 0).unwrap();
        log.sync_data().unwrap();

        // Entry not yet synced: the log could vanish in a crash.
        fs.open(Path::new("/d/base"), true)
            .unwrap()
            .write_all_at(&[1], 0)
            .unwrap();

        let v = fs.violations();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].change, Change::Write { offset: 0, len: 1 });
    }

    #[test]
    fn a_write_after_data_and_entry_are_synced_is_allowed() {
        let sim = SimFs::new();
        sim.put_durable("/d/base", &[0; 16]);
        let fs = guarded(sim);
        let log = fs.create_new(Path::new("/d/log")).unwrap();
        log.write_all_at(b"intent", 0).unwrap();
        log.sync_data().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();

        fs.open(Path::new("/d/base"), true)
            .unwrap()
            .write_all_at(&[1], 0)
            .unwrap();

        assert!(fs.violations().is_empty());
    }

    #[test]
    fn a_failed_sync_is_never_trusted_again() {
        let sim = SimFs::new();
        sim.put_durable("/d/base", &[0; 16]);
        sim.put_durable("/d/log", b"");
        let fs = guarded(sim.clone());
        let log = fs.open(Path::new("/d/log"), true).unwrap();
        log.write_all_at(b"intent", 0).unwrap();
        sim.fail_at(sim.ops() + 1, crate::sim::Fault::Eio);
        assert!(log.sync_data().is_err());

        log.sync_data().unwrap();
        fs.open(Path::new("/d/base"), true)
            .unwrap()
            .write_all_at(&[1], 0)
            .unwrap();

        assert_eq!(fs.violations().len(), 1);
    }
}
