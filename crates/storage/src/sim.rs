//! A simulated disk for crash tests: live and durable state kept apart, crashes and I/O
//! errors injected at a chosen operation number, and several ways to damage what was not
//! yet synced.
//!
//! [`SimFs`] is an in-memory [`Fs`] whose files are inodes named by paths. Every mutating call
//! (`write_all_at`, `set_len`, `sync_data`, `zero_range`, `create_new`, `remove_file`,
//! `rename`, `create_dir`, `sync_dir`) gets the next operation number, counted from 1, and is
//! recorded in [`SimFs::log`]. Changes go to the *live* state at once and into a list of
//! *unsynced* operations; [`File::sync_data`] moves an inode's unsynced data and length into
//! the *durable* state, [`Fs::sync_dir`] does the same for the entries of one directory.
//!
//! [`SimFs::crash_at`] kills the simulated process at an operation; [`SimFs::crashed_image`]
//! then builds the disk a reboot would find, for one [`Damage`] variant and a seed.
//! [`SimFs::fail_at`] makes one operation fail with EIO or ENOSPC instead.
//!
//! Model limits: a rename between two directories becomes durable only when both are synced;
//! directories cannot be renamed or removed; no symlinks or hard links; after a failed
//! `sync_data`/`sync_dir` the unsynced changes it covered are lost for good (as Linux may drop
//! dirty pages after a writeback error), though reads still see them.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use splitmix::SplitMix64;

use crate::{File, FileKind, Fs, Metadata};

/// The sector size damage works in: a write is torn only at multiples of this in the file.
pub const SECTOR: u64 = 512;

const DEV: u64 = 0x5157;
const ROOT_INO: u64 = 1;

/// An injected error (see [`SimFs::fail_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `EIO`. A failed sync loses the unsynced changes it covered; a failed write writes nothing.
    Eio,
    /// `ENOSPC`. A failed write persists (unsynced) the first half of its buffer.
    Enospc,
}

/// How the unsynced changes are damaged in [`SimFs::crashed_image`]. Synced state is never
/// touched. All variants are deterministic for a given seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Damage {
    /// Every unsynced change (data, lengths, directory entries) is lost.
    DropUnsynced,
    /// Every unsynced change survived, as if the cache was flushed just before the crash.
    KeepAll,
    /// A random-length prefix of the unsynced changes survived, in the order they were made.
    Prefix,
    /// Each unsynced change survived or not, independently (the disk reordered them).
    RandomSubset,
    /// Everything survived except the last unsynced write, whose sectors each survived or not.
    TornLastWrite,
    /// Everything survived except the last unsynced write: a prefix of its sectors survived
    /// and the rest hold garbage.
    TornLastWriteGarbage,
    /// Unsynced writes left zeros behind (the range was allocated, the data never written);
    /// entries and length changes survived.
    ZeroFill,
    /// Unsynced writes left garbage behind; entries and length changes survived.
    GarbageFill,
    /// Unsynced data survived but every file is back at its durable length (data past it lost).
    LengthLost,
    /// Unsynced lengths survived (growth reads as zeros) but no unsynced data did.
    LengthKept,
    /// Unsynced data survived, but every unsynced directory entry change was lost.
    EntriesLost,
    /// Unsynced directory entry changes survived, but no unsynced data.
    EntriesKept,
    /// Unsynced data survived; each create, unlink and rename survived or not independently
    /// (a rename as a whole: old name or new name, never both or neither).
    EntriesRandom,
}

impl Damage {
    /// Every variant, for tests that loop over all of them.
    pub const ALL: [Damage; 13] = [
        Damage::DropUnsynced,
        Damage::KeepAll,
        Damage::Prefix,
        Damage::RandomSubset,
        Damage::TornLastWrite,
        Damage::TornLastWriteGarbage,
        Damage::ZeroFill,
        Damage::GarbageFill,
        Damage::LengthLost,
        Damage::LengthKept,
        Damage::EntriesLost,
        Damage::EntriesKept,
        Damage::EntriesRandom,
    ];
}

/// The error every call returns once the simulated process has crashed; see [`is_crash`].
#[derive(Debug)]
pub struct Crashed;

impl std::fmt::Display for Crashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated crash: the process is dead")
    }
}

impl std::error::Error for Crashed {}

/// Whether `e` is the simulated crash (rather than an injected fault or a real error).
pub fn is_crash(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Crashed>())
}

fn crash_error() -> io::Error {
    io::Error::other(Crashed)
}

/// One numbered mutating operation, as [`SimFs::log`] reports it. File operations name the
/// file by one of its live paths at the time (`None` once it was unlinked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `File::write_all_at`.
    Write {
        /// The file.
        path: Option<PathBuf>,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// `File::set_len`.
    SetLen {
        /// The file.
        path: Option<PathBuf>,
        /// New length.
        len: u64,
    },
    /// `File::sync_data`.
    SyncData {
        /// The file.
        path: Option<PathBuf>,
    },
    /// `File::zero_range`.
    ZeroRange {
        /// The file.
        path: Option<PathBuf>,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// `Fs::create_new`.
    CreateNew {
        /// The new name.
        path: PathBuf,
    },
    /// `Fs::remove_file`.
    RemoveFile {
        /// The removed name.
        path: PathBuf,
    },
    /// `Fs::rename`.
    Rename {
        /// Old name.
        from: PathBuf,
        /// New name.
        to: PathBuf,
    },
    /// `Fs::hard_link`.
    HardLink {
        /// The existing name.
        from: PathBuf,
        /// The new name.
        to: PathBuf,
    },
    /// `Fs::create_dir`.
    CreateDir {
        /// The directory.
        path: PathBuf,
    },
    /// `Fs::sync_dir`.
    SyncDir {
        /// The directory.
        path: PathBuf,
    },
}

/// What a numbered operation did: whether it completed, failed with an injected fault, or
/// crashed the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedOp {
    /// Its operation number (from 1).
    pub number: u64,
    /// The call.
    pub op: Op,
    /// `None` when it succeeded (as far as the caller was told), else the injected outcome.
    pub outcome: Option<Outcome>,
}

/// The injected outcome of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Failed with this fault.
    Fault(Fault),
    /// The process crashed here.
    Crash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

#[derive(Debug, Clone)]
struct Inode {
    kind: Kind,
    live: Vec<u8>,
    durable: Vec<u8>,
    mtime: u64,
}

#[derive(Debug, Clone)]
enum DataOp {
    Write { off: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone)]
enum EntryOp {
    Link {
        path: PathBuf,
        ino: u64,
    },
    Unlink {
        path: PathBuf,
        ino: u64,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        ino: u64,
    },
}

#[derive(Debug, Clone)]
enum Pending {
    Data {
        ino: u64,
        op: DataOp,
    },
    Entry {
        op: EntryOp,
        /// Directories still to be synced before the change is durable.
        dirs: Vec<PathBuf>,
    },
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    live: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    pending: Vec<Pending>,
    next_ino: u64,
    clock: u64,
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    faults: HashMap<u64, Fault>,
    log: Vec<LoggedOp>,
    /// Files may share blocks ([`SimFs::with_reflinks`]).
    reflinks: bool,
}

/// What happens to the operation being started.
enum Go {
    Run,
    Fail(Fault),
    Crash,
}

/// The simulated file system. Clones share one disk.
#[derive(Debug, Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

/// An open file on a [`SimFs`]; it keeps working after its name is removed.
#[derive(Debug)]
pub struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    writable: bool,
}

impl Default for SimFs {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves the state consistent enough for the test that is
    // already failing; don't turn it into a second panic.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn norm(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn parent_of(p: &Path) -> PathBuf {
    p.parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from(e)
}

fn fault_error(f: Fault) -> io::Error {
    match f {
        Fault::Eio => errno(nix::errno::Errno::EIO),
        Fault::Enospc => errno(nix::errno::Errno::ENOSPC),
    }
}

fn apply_data(data: &mut Vec<u8>, op: &DataOp) {
    match op {
        DataOp::Write { off, bytes } => write_into(data, *off, bytes),
        DataOp::SetLen(len) => data.resize(*len as usize, 0),
    }
}

fn write_into(data: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    let off = off as usize;
    if data.len() < off + bytes.len() {
        data.resize(off + bytes.len(), 0);
    }
    data[off..off + bytes.len()].copy_from_slice(bytes);
}

fn apply_entry(ns: &mut BTreeMap<PathBuf, u64>, op: &EntryOp) {
    match op {
        EntryOp::Link { path, ino } => {
            ns.insert(path.clone(), *ino);
        }
        EntryOp::Unlink { path, ino } => {
            if ns.get(path) == Some(ino) {
                ns.remove(path);
            }
        }
        EntryOp::Rename { from, to, ino } => {
            if ns.get(from) == Some(ino) {
                ns.remove(from);
            }
            ns.insert(to.clone(), *ino);
        }
    }
}

impl State {
    /// What `stat` reports for `ino`; an unlinked file has no links left.
    fn metadata_of(&self, ino: u64) -> Metadata {
        let inode = &self.inodes[&ino];
        let (mode, kind, nlink) = match inode.kind {
            Kind::File => (
                0o600,
                FileKind::File,
                self.live.values().filter(|&&i| i == ino).count() as u64,
            ),
            Kind::Dir => (0o700, FileKind::Dir, 2),
        };
        Metadata {
            dev: DEV,
            ino,
            len: inode.live.len() as u64,
            // The simulated disk has no holes: every byte of a file is stored.
            allocated: inode.live.len() as u64,
            mtime_ns: i128::from(inode.mtime) * 1000,
            // Every change of a simulated file is a write, which moves both times alike.
            ctime_ns: i128::from(inode.mtime) * 1000,
            // Inode numbers are never reused here, so the inode alone tells files apart.
            btime_ns: None,
            mode,
            uid: 0,
            nlink,
            kind,
        }
    }

    fn new() -> Self {
        let mut s = State {
            next_ino: ROOT_INO + 1,
            ..State::default()
        };
        s.inodes.insert(
            ROOT_INO,
            Inode {
                kind: Kind::Dir,
                live: Vec::new(),
                durable: Vec::new(),
                mtime: 0,
            },
        );
        s.live.insert(PathBuf::from("/"), ROOT_INO);
        s.durable.insert(PathBuf::from("/"), ROOT_INO);
        s
    }

    fn alive(&self) -> io::Result<()> {
        if self.crashed {
            Err(crash_error())
        } else {
            Ok(())
        }
    }

    /// Numbers and logs a mutating operation and says whether it runs, fails or crashes.
    fn begin(&mut self, op: Op) -> io::Result<Go> {
        self.alive()?;
        self.ops += 1;
        self.clock += 1;
        let number = self.ops;
        let go = if self.crash_at == Some(number) {
            self.crashed = true;
            Go::Crash
        } else if let Some(f) = self.faults.get(&number) {
            Go::Fail(*f)
        } else {
            Go::Run
        };
        let outcome = match go {
            Go::Run => None,
            Go::Fail(f) => Some(Outcome::Fault(f)),
            Go::Crash => Some(Outcome::Crash),
        };
        self.log.push(LoggedOp {
            number,
            op,
            outcome,
        });
        Ok(go)
    }

    /// [`State::begin`] for operations that do nothing when they crash or fail.
    fn start(&mut self, op: Op) -> io::Result<()> {
        match self.begin(op)? {
            Go::Run => Ok(()),
            Go::Fail(f) => Err(fault_error(f)),
            Go::Crash => Err(crash_error()),
        }
    }

    fn path_of(&self, ino: u64) -> Option<PathBuf> {
        self.live
            .iter()
            .find(|(_, &i)| i == ino)
            .map(|(p, _)| p.clone())
    }

    fn kind_at(&self, path: &Path) -> Option<Kind> {
        self.live.get(path).map(|ino| self.inodes[ino].kind)
    }

    fn need_dir(&self, dir: &Path) -> io::Result<()> {
        match self.kind_at(dir) {
            Some(Kind::Dir) => Ok(()),
            Some(Kind::File) => Err(errno(nix::errno::Errno::ENOTDIR)),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn new_inode(&mut self, kind: Kind) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                kind,
                live: Vec::new(),
                durable: Vec::new(),
                mtime: self.clock,
            },
        );
        ino
    }

    fn data_op(&mut self, ino: u64, op: DataOp) {
        let clock = self.clock;
        let inode = self.inodes.get_mut(&ino).expect("open inode exists");
        apply_data(&mut inode.live, &op);
        inode.mtime = clock;
        self.pending.push(Pending::Data { ino, op });
    }

    fn entry_op(&mut self, op: EntryOp, dirs: Vec<PathBuf>) {
        apply_entry(&mut self.live, &op);
        self.pending.push(Pending::Entry { op, dirs });
    }

    /// Makes the unsynced data of `ino` durable, or (on a fault) loses it for good.
    fn sync_data(&mut self, ino: u64, lose: bool) {
        let mut rest = Vec::with_capacity(self.pending.len());
        for p in std::mem::take(&mut self.pending) {
            match p {
                Pending::Data { ino: i, op } if i == ino => {
                    if !lose {
                        let inode = self.inodes.get_mut(&ino).expect("inode exists");
                        apply_data(&mut inode.durable, &op);
                    }
                }
                other => rest.push(other),
            }
        }
        self.pending = rest;
    }

    fn sync_dir(&mut self, dir: &Path, lose: bool) {
        let mut rest = Vec::with_capacity(self.pending.len());
        for p in std::mem::take(&mut self.pending) {
            match p {
                Pending::Entry { op, mut dirs } if dirs.iter().any(|d| d == dir) => {
                    if lose {
                        continue;
                    }
                    dirs.retain(|d| d != dir);
                    if dirs.is_empty() {
                        apply_entry(&mut self.durable, &op);
                    } else {
                        rest.push(Pending::Entry { op, dirs });
                    }
                }
                other => rest.push(other),
            }
        }
        self.pending = rest;
    }
}

/// Garbage for a damaged write: one byte per value drawn (not [`SplitMix64::fill`]'s eight),
/// so that a seed keeps giving the damage it always gave.
fn garbage(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// What happens to one unsynced operation in a crash image.
enum Fate {
    Keep,
    Drop,
    /// Write zeros instead of the data.
    Zero,
    /// Write garbage instead of the data.
    Garbage,
    /// Sectors each kept or dropped.
    TornSectors,
    /// A prefix of sectors kept, the rest garbage.
    TornGarbage,
    /// Keep only the length effect (growth as zeros, truncation).
    LengthOnly,
    /// Keep only the data of a write, not a `set_len`.
    DataOnly,
}

/// Splits a write at sector boundaries of the file.
fn sectors(off: u64, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = off;
    let end = off + len;
    while at < end {
        let next = ((at / SECTOR) + 1) * SECTOR;
        let piece_end = next.min(end);
        out.push((at, piece_end));
        at = piece_end;
    }
    out
}

fn apply_fate(data: &mut Vec<u8>, op: &DataOp, fate: &Fate, rng: &mut SplitMix64) {
    match (fate, op) {
        (Fate::Drop, _) | (Fate::DataOnly, DataOp::SetLen(_)) => {}
        (Fate::Keep | Fate::DataOnly, _) | (_, DataOp::SetLen(_)) => apply_data(data, op),
        (Fate::Zero, DataOp::Write { off, bytes }) => write_into(data, *off, &vec![0; bytes.len()]),
        (Fate::Garbage, DataOp::Write { off, bytes }) => {
            write_into(data, *off, &garbage(rng, bytes.len()));
        }
        (Fate::LengthOnly, DataOp::Write { off, bytes }) => {
            let end = (*off as usize) + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
        }
        (Fate::TornSectors, DataOp::Write { off, bytes }) => {
            for (s, e) in sectors(*off, bytes.len() as u64) {
                if rng.coin() {
                    let piece = &bytes[(s - off) as usize..(e - off) as usize];
                    write_into(data, s, piece);
                }
            }
        }
        (Fate::TornGarbage, DataOp::Write { off, bytes }) => {
            let pieces = sectors(*off, bytes.len() as u64);
            let keep = rng.below(pieces.len() as u64 + 1) as usize;
            for (k, (s, e)) in pieces.into_iter().enumerate() {
                let piece = &bytes[(s - off) as usize..(e - off) as usize];
                if k < keep {
                    write_into(data, s, piece);
                } else {
                    write_into(data, s, &garbage(rng, piece.len()));
                }
            }
        }
    }
}

impl SimFs {
    /// An empty disk holding only the root directory `/`. Relative paths are taken from `/`.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Creates (or replaces) `path` with `bytes`, already durable, creating missing parent
    /// directories durably. Not numbered: this is test setup, not an operation.
    pub fn put_durable(&self, path: impl AsRef<Path>, bytes: &[u8]) {
        let path = norm(path.as_ref());
        let mut st = self.lock();
        let mut dir = PathBuf::from("/");
        let parent = parent_of(&path);
        for c in parent.components().skip(1) {
            dir.push(c);
            if !st.live.contains_key(&dir) {
                let ino = st.new_inode(Kind::Dir);
                st.live.insert(dir.clone(), ino);
                st.durable.insert(dir.clone(), ino);
            }
        }
        let ino = st.new_inode(Kind::File);
        let inode = st.inodes.get_mut(&ino).expect("just made");
        inode.live = bytes.to_vec();
        inode.durable = bytes.to_vec();
        st.live.insert(path.clone(), ino);
        st.durable.insert(path, ino);
    }

    /// The live content of the file at `path` (what reads see now).
    pub fn read_live(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        let st = self.lock();
        let ino = st.live.get(&norm(path.as_ref()))?;
        let inode = &st.inodes[ino];
        (inode.kind == Kind::File).then(|| inode.live.clone())
    }

    /// The durable content of the file durably named `path` (what a crash that loses every
    /// unsynced change would leave).
    pub fn read_durable(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        let st = self.lock();
        let ino = st.durable.get(&norm(path.as_ref()))?;
        let inode = &st.inodes[ino];
        (inode.kind == Kind::File).then(|| inode.durable.clone())
    }

    /// Every live regular file, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        let st = self.lock();
        st.live
            .iter()
            .filter(|(_, ino)| st.inodes[*ino].kind == Kind::File)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// How many numbered operations have happened (including one that failed or crashed).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Every numbered operation so far, in order.
    pub fn log(&self) -> Vec<LoggedOp> {
        self.lock().log.clone()
    }

    /// How many unsynced changes are at risk right now.
    pub fn unsynced(&self) -> usize {
        self.lock().pending.len()
    }

    /// Makes operation `n` crash the process: it fails with [`Crashed`] (a write may have
    /// partly happened, as the damage variants decide) and every later call fails too.
    pub fn crash_at(&self, n: u64) {
        self.lock().crash_at = Some(n);
    }

    /// Makes operation `n` fail with `fault`; the process carries on.
    pub fn fail_at(&self, n: u64, fault: Fault) {
        self.lock().faults.insert(n, fault);
    }

    /// Whether the simulated process has crashed.
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// The disk as a reboot would find it now: the durable state plus the unsynced changes
    /// damaged as `damage` says, driven by `seed`. The result is a fresh, fully durable
    /// [`SimFs`] with its operation counter at 0 and no faults armed. Works whether or not the
    /// process crashed (a power cut needs no crash point).
    pub fn crashed_image(&self, damage: Damage, seed: u64) -> SimFs {
        let st = self.lock();
        let mut rng = SplitMix64::new(seed ^ (damage as u64).wrapping_mul(0xa076_1d64_78bd_642f));
        let fates = fates(&st.pending, damage, &mut rng);

        // The namespace: durable entries plus the surviving entry changes, in order, then
        // without anything whose parent directory did not survive.
        let mut ns = st.durable.clone();
        for (p, fate) in st.pending.iter().zip(&fates) {
            if let (Pending::Entry { op, .. }, Fate::Keep) = (p, fate) {
                apply_entry(&mut ns, op);
            }
        }
        let mut reachable: BTreeMap<PathBuf, u64> = BTreeMap::new();
        for (path, ino) in ns {
            let parent_ok = path == Path::new("/")
                || reachable
                    .get(&parent_of(&path))
                    .is_some_and(|pi| st.inodes[pi].kind == Kind::Dir);
            if parent_ok {
                reachable.insert(path, ino);
            }
        }

        let mut inodes = HashMap::new();
        for &ino in reachable.values() {
            if inodes.contains_key(&ino) {
                continue;
            }
            let old = &st.inodes[&ino];
            let mut data = old.durable.clone();
            for (p, fate) in st.pending.iter().zip(&fates) {
                if let Pending::Data { ino: i, op } = p {
                    if *i == ino {
                        apply_fate(&mut data, op, fate, &mut rng);
                    }
                }
            }
            if damage == Damage::LengthLost {
                data.resize(old.durable.len(), 0);
            }
            inodes.insert(
                ino,
                Inode {
                    kind: old.kind,
                    live: data.clone(),
                    durable: data,
                    mtime: old.mtime,
                },
            );
        }
        let state = State {
            inodes,
            live: reachable.clone(),
            durable: reachable,
            next_ino: st.next_ino,
            clock: st.clock,
            reflinks: st.reflinks,
            ..State::default()
        };
        SimFs {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The same disk, on a file system that shares blocks between files (XFS with
    /// reflinks, btrfs): [`File::clone_range_from`] then succeeds for block-aligned ranges.
    /// A clone is one numbered operation, and until synced it is as fragile as a write of
    /// the same bytes (crash damage may drop or tear it); blocks are shared copy-on-write,
    /// so a later write to either file leaves the other alone, which a copy of the source's
    /// content at clone time models exactly.
    pub fn with_reflinks(self) -> Self {
        self.lock().reflinks = true;
        self
    }
}

impl Fs for SimFs {
    type File = SimFile;

    fn create_new(&self, path: &Path) -> io::Result<SimFile> {
        let path = norm(path);
        let mut st = self.lock();
        st.start(Op::CreateNew { path: path.clone() })?;
        let parent = parent_of(&path);
        st.need_dir(&parent)?;
        if st.live.contains_key(&path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let ino = st.new_inode(Kind::File);
        st.entry_op(EntryOp::Link { path, ino }, vec![parent]);
        Ok(SimFile {
            state: Arc::clone(&self.state),
            ino,
            writable: true,
        })
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<SimFile> {
        let st = self.lock();
        st.alive()?;
        let path = norm(path);
        let ino = *st
            .live
            .get(&path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if st.inodes[&ino].kind == Kind::Dir {
            return Err(io::Error::from(io::ErrorKind::IsADirectory));
        }
        Ok(SimFile {
            state: Arc::clone(&self.state),
            ino,
            writable,
        })
    }

    fn metadata(&self, path: &Path) -> io::Result<Option<Metadata>> {
        let st = self.lock();
        st.alive()?;
        let path = norm(path);
        let Some(&ino) = st.live.get(&path) else {
            return Ok(None);
        };
        Ok(Some(st.metadata_of(ino)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut st = self.lock();
        st.start(Op::RemoveFile { path: path.clone() })?;
        let ino = *st
            .live
            .get(&path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if st.inodes[&ino].kind == Kind::Dir {
            return Err(io::Error::from(io::ErrorKind::IsADirectory));
        }
        let parent = parent_of(&path);
        st.entry_op(EntryOp::Unlink { path, ino }, vec![parent]);
        Ok(())
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (norm(from), norm(to));
        let mut st = self.lock();
        st.start(Op::HardLink {
            from: from.clone(),
            to: to.clone(),
        })?;
        let ino = *st
            .live
            .get(&from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if st.inodes[&ino].kind == Kind::Dir {
            return Err(io::Error::from(io::ErrorKind::IsADirectory));
        }
        let to_parent = parent_of(&to);
        st.need_dir(&to_parent)?;
        if st.live.contains_key(&to) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        st.entry_op(EntryOp::Link { path: to, ino }, vec![to_parent]);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (norm(from), norm(to));
        let mut st = self.lock();
        st.start(Op::Rename {
            from: from.clone(),
            to: to.clone(),
        })?;
        let ino = *st
            .live
            .get(&from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if st.inodes[&ino].kind == Kind::Dir {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulator cannot rename directories",
            ));
        }
        let to_parent = parent_of(&to);
        st.need_dir(&to_parent)?;
        if st.kind_at(&to) == Some(Kind::Dir) {
            return Err(io::Error::from(io::ErrorKind::IsADirectory));
        }
        if from == to {
            return Ok(());
        }
        let mut dirs = vec![parent_of(&from)];
        if to_parent != dirs[0] {
            dirs.push(to_parent);
        }
        st.entry_op(EntryOp::Rename { from, to, ino }, dirs);
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut st = self.lock();
        st.start(Op::CreateDir { path: path.clone() })?;
        match st.kind_at(&path) {
            Some(Kind::Dir) => return Ok(()),
            Some(Kind::File) => return Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            None => {}
        }
        let parent = parent_of(&path);
        st.need_dir(&parent)?;
        let ino = st.new_inode(Kind::Dir);
        st.entry_op(EntryOp::Link { path, ino }, vec![parent]);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = norm(dir);
        let mut st = self.lock();
        let go = st.begin(Op::SyncDir { path: dir.clone() })?;
        if let Go::Crash = go {
            return Err(crash_error());
        }
        st.need_dir(&dir)?;
        match go {
            Go::Fail(f) => {
                st.sync_dir(&dir, true);
                Err(fault_error(f))
            }
            _ => {
                st.sync_dir(&dir, false);
                Ok(())
            }
        }
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let st = self.lock();
        st.alive()?;
        let dir = norm(dir);
        st.need_dir(&dir)?;
        Ok(st
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir.as_path()))
            .filter_map(|p| p.file_name().map(ToOwned::to_owned))
            .collect())
    }
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(errno(nix::errno::Errno::EBADF))
        }
    }
}

impl File for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let st = self.lock();
        st.alive()?;
        let data = &st.inodes[&self.ino].live;
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let src = data.get(start..).unwrap_or(&[]);
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.lock();
        let path = st.path_of(self.ino);
        let go = st.begin(Op::Write {
            path,
            offset,
            len: buf.len() as u64,
        })?;
        self.check_writable()?;
        match go {
            Go::Run => {
                st.data_op(
                    self.ino,
                    DataOp::Write {
                        off: offset,
                        bytes: buf.to_vec(),
                    },
                );
                Ok(())
            }
            // The write was in flight when the process died: the damage variants decide how
            // much of it reached the disk.
            Go::Crash => {
                st.data_op(
                    self.ino,
                    DataOp::Write {
                        off: offset,
                        bytes: buf.to_vec(),
                    },
                );
                Err(crash_error())
            }
            Go::Fail(Fault::Enospc) => {
                let half = &buf[..buf.len() / 2];
                if !half.is_empty() {
                    st.data_op(
                        self.ino,
                        DataOp::Write {
                            off: offset,
                            bytes: half.to_vec(),
                        },
                    );
                }
                Err(fault_error(Fault::Enospc))
            }
            Go::Fail(f) => Err(fault_error(f)),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        let path = st.path_of(self.ino);
        st.start(Op::SetLen { path, len })?;
        self.check_writable()?;
        st.data_op(self.ino, DataOp::SetLen(len));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let st = self.lock();
        st.alive()?;
        Ok(st.inodes[&self.ino].live.len() as u64)
    }

    fn stat(&self) -> io::Result<Metadata> {
        let st = self.lock();
        st.alive()?;
        Ok(st.metadata_of(self.ino))
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.lock();
        let path = st.path_of(self.ino);
        match st.begin(Op::SyncData { path })? {
            Go::Crash => Err(crash_error()),
            Go::Fail(f) => {
                // A failed writeback may leave the pages marked clean: those changes never
                // reach the disk, and a later sync that "succeeds" does not bring them back.
                st.sync_data(self.ino, true);
                Err(fault_error(f))
            }
            Go::Run => {
                st.sync_data(self.ino, false);
                Ok(())
            }
        }
    }

    fn clone_range_from(
        &self,
        src: &Self,
        src_offset: u64,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        const BLOCK: u64 = 4096;
        if len == 0 {
            return Ok(());
        }
        let mut st = self.lock();
        if !st.reflinks || !Arc::ptr_eq(&self.state, &src.state) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this simulated file system shares no blocks",
            ));
        }
        let src_len = st.inodes[&src.ino].live.len() as u64;
        // As XFS: whole blocks only, except a range that ends at the source's end.
        let ends_at_eof = src_offset.checked_add(len) == Some(src_len);
        let aligned = src_offset.is_multiple_of(BLOCK)
            && dst_offset.is_multiple_of(BLOCK)
            && (len.is_multiple_of(BLOCK) || ends_at_eof);
        if !aligned || src_offset.saturating_add(len) > src_len {
            return Err(io::Error::from_raw_os_error(22));
        }
        let bytes =
            st.inodes[&src.ino].live[src_offset as usize..(src_offset + len) as usize].to_vec();
        let path = st.path_of(self.ino);
        let go = st.begin(Op::Write {
            path,
            offset: dst_offset,
            len,
        })?;
        self.check_writable()?;
        st.data_op(
            self.ino,
            DataOp::Write {
                off: dst_offset,
                bytes,
            },
        );
        match go {
            Go::Run => Ok(()),
            Go::Crash => Err(crash_error()),
            Go::Fail(f) => Err(fault_error(f)),
        }
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        let path = st.path_of(self.ino);
        st.start(Op::ZeroRange { path, offset, len })?;
        self.check_writable()?;
        // Zeroing never changes the length: clip to the live file.
        let cur = st.inodes[&self.ino].live.len() as u64;
        let end = offset.saturating_add(len).min(cur);
        if end > offset {
            let zeros = vec![0; (end - offset) as usize];
            st.data_op(
                self.ino,
                DataOp::Write {
                    off: offset,
                    bytes: zeros,
                },
            );
        }
        Ok(())
    }
}

/// What becomes of each unsynced change after a crash with `damage` (driven by `rng`).
fn fates(pending: &[Pending], damage: Damage, rng: &mut SplitMix64) -> Vec<Fate> {
    let n = pending.len();
    let last_write = pending.iter().rposition(|p| {
        matches!(
            p,
            Pending::Data {
                op: DataOp::Write { .. },
                ..
            }
        )
    });
    let cut = rng.below(n as u64 + 1) as usize;
    pending
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let entry = matches!(p, Pending::Entry { .. });
            match damage {
                Damage::DropUnsynced => Fate::Drop,
                Damage::KeepAll => Fate::Keep,
                Damage::Prefix if i < cut => Fate::Keep,
                Damage::Prefix => Fate::Drop,
                Damage::RandomSubset | Damage::EntriesRandom
                    if entry || damage == Damage::RandomSubset =>
                {
                    if rng.coin() {
                        Fate::Keep
                    } else {
                        Fate::Drop
                    }
                }
                Damage::TornLastWrite if Some(i) == last_write => Fate::TornSectors,
                Damage::TornLastWriteGarbage if Some(i) == last_write => Fate::TornGarbage,
                Damage::ZeroFill if !entry => Fate::Zero,
                Damage::GarbageFill if !entry => Fate::Garbage,
                Damage::LengthLost if !entry => Fate::DataOnly,
                Damage::LengthKept if !entry => Fate::LengthOnly,
                Damage::EntriesLost if entry => Fate::Drop,
                Damage::EntriesKept if !entry => Fate::Drop,
                _ => Fate::Keep,
            }
        })
        .collect()
}
