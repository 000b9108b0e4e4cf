//! Shared machinery of the engine's crash tests: fixtures on the simulated disk whose
//! overlays are written by the real `qemu-io`, the write-ordering rule (T8), and the checks
//! every crash point ends with ("every base old or new, durable, no stray files").
//!
//! Expected contents are computed independently of the engine: the new content of a base is
//! its old content with the fixture's own edit list applied, never something read back
//! through imgtx's qcow2 reader.

#![allow(dead_code)] // each test crate uses a different part of this module

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use splitmix::SplitMix64;
use storage::monitor::{Change, Monitor, View};
use storage::sim::{Damage, SimFs};
use storage::{File, Fs};
use testkit::fixture;
use testkit::sim_host::{tx, SimHost, TX};
use testkit::sweep::full;
use txn::plan::Plan;
use txn::{Direction, Engine, Format, RecoverOptions, TxId};

/// Where the engine keeps its registry in every simulation.
pub const STATE: &str = "/state";
const CLUSTER: u64 = 64 << 10;

/// The engine as every sweep runs it: over the monitored simulated disk.
pub type SimEngine = Engine<Monitor<SimFs>, SimHost>;

/// One change the fixture makes to an overlay through `qemu-io`.
#[derive(Debug, Clone, Copy)]
pub enum Edit {
    /// `write -P pattern off len`.
    Write { off: u64, len: u64, pattern: u8 },
    /// `write -z off len` (zero clusters when aligned).
    Zero { off: u64, len: u64 },
    /// `write -c -P pattern off 64k`: one compressed cluster.
    Compressed { off: u64, pattern: u8 },
    /// `truncate size`: grow the overlay (and so the base on commit).
    Grow { size: u64 },
}

/// One base of a fixture.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Absolute path in the simulation.
    pub base: &'static str,
    /// Its length.
    pub size: u64,
    /// What the transaction changes.
    pub edits: Vec<Edit>,
}

/// A transaction begun over bases in a simulated disk, its overlays edited by qemu-io and
/// durable, ready to commit or roll back.
pub struct Fixture {
    /// The disk after begin and edits; copy it with [`Fixture::fresh`].
    pub template: SimFs,
    /// The disk before begin (for sweeping begin itself).
    pub before_begin: SimFs,
    /// Base paths.
    pub bases: Vec<PathBuf>,
    /// Overlay paths.
    pub overlays: Vec<PathBuf>,
    /// Old content per base.
    pub old: Vec<Vec<u8>>,
    /// New content per base (old plus the edits).
    pub new: Vec<Vec<u8>>,
}

/// Where a fixture's base reads zeros (see `Fixture::new`).
const ZERO_AREA: std::ops::Range<usize> = (192 << 10)..(256 << 10);

fn content(size: u64, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    (0..size).map(|_| (rng.next_u64() >> 24) as u8).collect()
}

fn apply_edits(old: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut new = old.to_vec();
    let put = |new: &mut Vec<u8>, off: u64, len: u64, byte: u8| {
        let (a, b) = (off as usize, (off + len) as usize);
        if new.len() < b {
            new.resize(b, 0);
        }
        new[a..b].fill(byte);
    };
    for e in edits {
        match *e {
            Edit::Write { off, len, pattern } => put(&mut new, off, len, pattern),
            Edit::Zero { off, len } => put(&mut new, off, len, 0),
            Edit::Compressed { off, pattern } => put(&mut new, off, CLUSTER, pattern),
            Edit::Grow { size } => {
                if (new.len() as u64) < size {
                    new.resize(size as usize, 0);
                }
            }
        }
    }
    new
}

fn qemu_io_commands(edits: &[Edit]) -> Vec<String> {
    edits
        .iter()
        .map(|e| match *e {
            Edit::Write { off, len, pattern } => format!("write -P {pattern} {off} {len}"),
            Edit::Zero { off, len } => format!("write -z {off} {len}"),
            Edit::Compressed { off, pattern } => format!("write -c -P {pattern} {off} {CLUSTER}"),
            Edit::Grow { size } => format!("truncate {size}"),
        })
        .collect()
}

/// Edits the overlay bytes `ov` (whose header names a simulated path) with the real qemu-io,
/// giving it the real copy of the base as backing so partial-cluster writes copy real data.
fn edit_with_qemu_io(ov: &[u8], base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ov_path, base_path) = (dir.path().join("ov.qcow2"), dir.path().join("base.raw"));
    std::fs::write(&ov_path, ov).expect("write overlay copy");
    std::fs::write(&base_path, base).expect("write base copy");
    let spec = format!(
        r#"json:{{"driver":"qcow2","file":{{"driver":"file","filename":"{}"}},"backing":{{"driver":"raw","file":{{"driver":"file","filename":"{}"}}}}}}"#,
        ov_path.display(),
        base_path.display()
    );
    let mut cmd = Command::new("qemu-io");
    cmd.arg("-f").arg("qcow2");
    for c in qemu_io_commands(edits) {
        cmd.arg("-c").arg(c);
    }
    let out = cmd.arg(&spec).output().expect("run qemu-io");
    assert!(
        out.status.success(),
        "qemu-io failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&ov_path).expect("read edited overlay")
}

impl Fixture {
    /// Begins a transaction over `specs` and edits each overlay.
    pub fn new(specs: &[ImageSpec]) -> Self {
        let sim = SimFs::new();
        let mut old = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let mut bytes = content(s.size, 0xb45e + i as u64);
            // Bases of 256 KiB and more read zeros in [192K, 256K), like the free space of a
            // sparse image: the edits there (raw_single's compressed cluster, raw_pair's zero
            // cluster) save zero pre-image entries, which the sweeps then cross too.
            if let Some(free) = bytes.get_mut(ZERO_AREA) {
                free.fill(0);
            }
            sim.put_durable(s.base, &bytes);
            old.push(bytes);
        }
        let bases: Vec<PathBuf> = specs.iter().map(|s| PathBuf::from(s.base)).collect();
        // The first base has a spare an earlier commit kept, so the sweeps cross its reuse
        // (renamed, overwritten, cut short) and the others' new pre-image files. Its header
        // matches what this commit will write; its entries are another transaction's.
        let mut stale = b"IMGTXUN3".to_vec();
        stale.extend_from_slice(&specs[0].size.to_le_bytes());
        stale.extend(content(3 * specs[0].size, 0x5a4e));
        sim.put_durable(spare_of(&bases[0]), &stale);
        let before_begin = sim.crashed_image(Damage::KeepAll, 0);
        let engine = Engine::new(sim.clone(), SimHost, STATE.into()).expect("engine");
        let m = engine
            .begin(&fixture::begin_options(&bases))
            .expect("begin");
        let overlays: Vec<PathBuf> = m.images.iter().map(|i| i.overlay.clone()).collect();
        let mut new = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let ov = sim.read_live(&overlays[i]).expect("overlay exists");
            let edited = edit_with_qemu_io(&ov, &old[i], &s.edits);
            let f = sim.open(&overlays[i], true).expect("open overlay");
            f.write_all_at(&edited, 0).expect("write overlay");
            f.set_len(edited.len() as u64).expect("size overlay");
            f.sync_data().expect("sync overlay");
            new.push(apply_edits(&old[i], &s.edits));
        }
        Self {
            template: sim.crashed_image(Damage::KeepAll, 0),
            before_begin,
            bases,
            overlays,
            old,
            new,
        }
    }

    /// A private copy of the prepared disk.
    pub fn fresh(&self) -> SimFs {
        self.template.crashed_image(Damage::KeepAll, 0)
    }
}

/// The single raw base of most sweeps: 512 KiB, changed by a partial-cluster write, a zero
/// cluster, a compressed cluster, and growth to 704 KiB with data past the old end.
pub fn raw_single() -> Vec<ImageSpec> {
    vec![ImageSpec {
        base: "/d/base.img",
        size: 512 << 10,
        edits: vec![
            Edit::Write {
                off: 4096,
                len: 1000,
                pattern: 0xaa,
            },
            Edit::Zero {
                off: 128 << 10,
                len: 64 << 10,
            },
            Edit::Compressed {
                off: 192 << 10,
                pattern: 0x33,
            },
            Edit::Write {
                off: 448 << 10,
                len: 8 << 10,
                pattern: 0x5c,
            },
            Edit::Grow { size: 704 << 10 },
            Edit::Write {
                off: 600 << 10,
                len: 8 << 10,
                pattern: 0x77,
            },
        ],
    }]
}

/// Two raw bases in different directories, one growing.
pub fn raw_pair() -> Vec<ImageSpec> {
    vec![
        ImageSpec {
            base: "/d/a.img",
            size: 256 << 10,
            edits: vec![
                Edit::Write {
                    off: 0,
                    len: 64 << 10,
                    pattern: 0x11,
                },
                Edit::Zero {
                    off: 192 << 10,
                    len: 64 << 10,
                },
            ],
        },
        ImageSpec {
            base: "/e/b.img",
            size: 256 << 10,
            edits: vec![
                Edit::Write {
                    off: 70_000,
                    len: 3000,
                    pattern: 0x22,
                },
                Edit::Grow { size: 320 << 10 },
                Edit::Write {
                    off: 300 << 10,
                    len: 4096,
                    pattern: 0x23,
                },
            ],
        },
    ]
}

// ---- the write-ordering rule (T8) ----

/// The engine's journal records, mirrored field for field to decode them independently
/// (postcard is not self-describing: order and types must match `crates/txn/src/record.rs`).
#[derive(Debug, Deserialize)]
pub enum Record {
    /// Intent.
    Intent(Intent),
    /// Pre-images saved.
    Undo(UndoSummary),
    /// Commit point.
    Commit,
    /// Recovery direction.
    Recovering(Direction),
    /// Base holds a direction's outcome.
    Applied(Direction),
    /// History written.
    Logged,
    /// What the base and overlay were at the intent.
    States(States),
    /// A revert's source: the pre-images it puts back.
    Reverting(Source),
}

/// Mirror of the engine's revert source.
#[derive(Debug, Deserialize)]
pub struct Source {
    pub tx: String,
    pub file: PathBuf,
    pub summary: UndoSummary,
}

/// Mirror of the engine's file state (device and inode, length, times).
#[derive(Debug, Deserialize)]
pub struct FileState {
    pub dev_ino: (u64, u64),
    pub len: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub btime_ns: Option<i128>,
}

/// Mirror of the engine's states record.
#[derive(Debug, Deserialize)]
pub struct States {
    pub base: FileState,
    pub overlay: FileState,
}

/// Mirror of the engine's intent record.
#[derive(Debug, Deserialize)]
pub struct Intent {
    pub tx: String,
    pub index: u32,
    pub journals: Vec<PathBuf>,
    pub base: PathBuf,
    pub base_format: Format,
    pub base_dev_ino: (u64, u64),
    pub overlay: PathBuf,
    pub overlay_dev_ino: (u64, u64),
    pub undo: bool,
    pub plan: Plan,
}

/// Mirror of the engine's pre-image summary.
#[derive(Debug, Deserialize)]
pub struct UndoSummary {
    pub old_len: u64,
    pub entries: u64,
    pub bytes: u64,
    pub file_len: u64,
}

/// The journal beside `base`, if exactly one transaction has one.
fn journal_of(fs: &SimFs, base: &Path) -> Option<(TxId, PathBuf)> {
    let dir = base.parent()?;
    let name = base.file_name()?.to_str()?;
    fs.read_dir(dir).ok()?.into_iter().find_map(|n| {
        let id = txn::layout::journal_id(name, n.to_str()?)?;
        let path = txn::layout::journal(base, &id).ok()?;
        Some((id, path))
    })
}

/// How many entries of the pre-image file `bytes` are zero entries (saved without data).
pub fn zero_entries(bytes: &[u8]) -> Option<usize> {
    Some(undo_entries(bytes)?.iter().filter(|e| e.2).count())
}

/// How many entries of the pre-image file `bytes` are reflinks of the base (saved unread).
pub fn cloned_entries(bytes: &[u8]) -> Option<usize> {
    Some(undo_entries(bytes)?.iter().filter(|e| e.3).count())
}

/// The (offset, len, zeros, cloned) entries of a pre-image file, per the layout in
/// `crates/txn/src/preimage/mod.rs`.
fn undo_entries(bytes: &[u8]) -> Option<Vec<(u64, u64, bool, bool)>> {
    let mut out = Vec::new();
    let mut pos = 16usize;
    // Versions 2 to 4 start each entry's data at a multiple of 4 KiB, version 1 right after
    // its 24-byte header; a version 3 or 4 entry with the top bit of its length set read
    // zeros and has no data; a version 4 entry with the next bit set is a reflink.
    let (align, zero_flag, clone_flag) = match bytes.get(..8)? {
        b"IMGTXUN4" => (4096, 1u64 << 63, 1u64 << 62),
        b"IMGTXUN3" => (4096, 1u64 << 63, 0),
        b"IMGTXUN2" => (4096, 0, 0),
        b"IMGTXUN1" => (1, 0, 0),
        _ => return None,
    };
    let u64_at = |p: usize| {
        bytes
            .get(p..p + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    while pos < bytes.len() {
        let (off, len) = (u64_at(pos)?, u64_at(pos + 8)?);
        if len & zero_flag != 0 {
            out.push((off, len & !zero_flag, true, false));
            pos = pos.checked_add(24)?;
            continue;
        }
        let cloned = len & clone_flag != 0;
        let len = len & !clone_flag;
        out.push((off, len, false, cloned));
        pos = pos
            .checked_add(24)?
            .checked_next_multiple_of(align)?
            .checked_add(usize::try_from(len).ok()?)?;
    }
    Some(out)
}

fn covered(entries: &[(u64, u64, bool, bool)], start: u64, end: u64) -> bool {
    let mut ranges: Vec<(u64, u64)> = entries.iter().map(|&(o, l, _, _)| (o, o + l)).collect();
    ranges.sort_unstable();
    let mut at = start;
    for (a, b) in ranges {
        if a > at {
            break;
        }
        at = at.max(b);
    }
    at >= end
}

/// Rule T8: a data change to a base needs, durable: this base's journal with its intent,
/// the coordinator's commit record, and unless `--no-undo` the pre-image summary and a
/// pre-image file covering every old byte the change touches.
fn ordering_rule(
    bases: &BTreeSet<PathBuf>,
    view: &View<'_, SimFs>,
    path: &Path,
    change: Change,
) -> Result<(), String> {
    if !bases.contains(path) {
        return Ok(());
    }
    let fs = view.fs();
    let (tx, jpath) = journal_of(fs, path).ok_or("no journal beside the base")?;
    if !view.is_durable(&jpath) {
        return Err(format!("journal {} is not durable", jpath.display()));
    }
    let replay = journal::read::<SimFs, Record>(fs, &jpath)
        .map_err(|e| format!("journal unreadable: {e}"))?;
    let mut records = replay.records.iter();
    let Some(Record::Intent(intent)) = records.next() else {
        return Err("the journal holds no intent".into());
    };
    let coordinator = intent
        .journals
        .first()
        .ok_or("the intent names no coordinator")?;
    if !view.is_durable(coordinator) {
        return Err("the coordinator journal is not durable".into());
    }
    let coord = journal::read::<SimFs, Record>(fs, coordinator)
        .map_err(|e| format!("coordinator unreadable: {e}"))?;
    if !coord.records.iter().any(|r| matches!(r, Record::Commit)) {
        return Err("the commit record is not durable".into());
    }
    if !intent.undo {
        return Ok(());
    }
    let Some(summary) = records.find_map(|r| match r {
        Record::Undo(s) => Some(s),
        _ => None,
    }) else {
        return Err("the pre-image summary is not journaled".into());
    };
    let upath = txn::layout::undo(path, &tx).map_err(|e| e.to_string())?;
    if !view.is_durable(&upath) {
        return Err("the pre-image file is not durable".into());
    }
    let (start, end) = match change {
        Change::Write { offset, len } | Change::ZeroRange { offset, len } => {
            (offset, offset.saturating_add(len))
        }
        // Growth writes nothing old; shrinking back is what undo does with the old length.
        Change::SetLen { .. } => return Ok(()),
    };
    let end = end.min(summary.old_len);
    if start >= end {
        return Ok(());
    }
    let bytes = fs.read_live(&upath).ok_or("the pre-image file vanished")?;
    let entries = undo_entries(&bytes).ok_or("the pre-image file is malformed")?;
    if covered(&entries, start, end) {
        Ok(())
    } else {
        Err(format!("no durable pre-image covers {start:#x}..{end:#x}"))
    }
}

/// `sim` watched by the ordering rule for `bases`.
pub fn monitored(sim: &SimFs, bases: &[PathBuf]) -> Monitor<SimFs> {
    let set: BTreeSet<PathBuf> = bases.iter().cloned().collect();
    Monitor::new(sim.clone(), move |view, path, change| {
        ordering_rule(&set, view, path, change)
    })
}

/// An engine over `sim`, monitored.
pub fn engine(sim: &SimFs, bases: &[PathBuf]) -> txn::Result<(SimEngine, Monitor<SimFs>)> {
    let mon = monitored(sim, bases);
    Engine::new(mon.clone(), SimHost, STATE.into()).map(|e| (e, mon))
}

// ---- the checks every crash point ends with ----

/// Figures of a sweep.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Crash points of the swept operation.
    pub points: u64,
    /// Damaged images checked.
    pub images: u64,
    /// Recoveries run (including crashed ones).
    pub recoveries: u64,
    /// Images whose bases ended old.
    pub ended_old: u64,
    /// Images whose bases ended new.
    pub ended_new: u64,
    /// Fault runs whose live recover left files a lost unlink brought back (counted only).
    pub leftovers: u64,
}

/// What a base holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every base old.
    Old,
    /// Every base new.
    New,
}

impl Stats {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: Stats) {
        self.points += o.points;
        self.images += o.images;
        self.recoveries += o.recoveries;
        self.ended_old += o.ended_old;
        self.ended_new += o.ended_new;
        self.leftovers += o.leftovers;
    }
}

/// The damage variants applied at crash point `k`: all in the full sweep, otherwise a
/// fixed-seed sample that always includes dropping everything unsynced.
pub fn variants(k: u64, sample: usize) -> Vec<Damage> {
    if full() || sample >= Damage::ALL.len() {
        return Damage::ALL.to_vec();
    }
    let mut rng = SplitMix64::new(k.wrapping_mul(0x51ed) ^ 0xc0ffee);
    let mut out = vec![Damage::DropUnsynced];
    while out.len() < sample {
        let d = Damage::ALL[rng.below(Damage::ALL.len() as u64) as usize];
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// A seed for the damage of (point, variant).
pub fn seed(k: u64, d: Damage) -> u64 {
    k.wrapping_mul(1_000_003) ^ (Damage::ALL.iter().position(|x| *x == d).unwrap_or(0) as u64)
}

/// Which base state the durable disk `fs` shows: all old, all new, or a failure message.
pub fn ended(fx: &Fixture, fs: &SimFs) -> Result<Ended, String> {
    let mut states = Vec::new();
    for (i, b) in fx.bases.iter().enumerate() {
        let now = fs
            .read_durable(b)
            .ok_or_else(|| format!("base {} vanished", b.display()))?;
        if now == fx.old[i] {
            states.push(Ended::Old);
        } else if now == fx.new[i] {
            states.push(Ended::New);
        } else {
            let first = now.iter().zip(&fx.old[i]).position(|(a, b)| a != b);
            return Err(format!(
                "base {} is neither old nor new (len {:#x}, old {:#x}, new {:#x}, first difference from old at {first:?})",
                b.display(),
                now.len(),
                fx.old[i].len(),
                fx.new[i].len()
            ));
        }
    }
    if states.iter().all(|s| *s == Ended::Old) {
        Ok(Ended::Old)
    } else if states.iter().all(|s| *s == Ended::New) {
        Ok(Ended::New)
    } else {
        Err(format!("the bases disagree: {states:?}"))
    }
}

/// Files that must not survive a finished recovery, or survive only with an open transaction.
/// Commits [`TX`] on `e` with default options, or without pre-images.
pub fn commit_tx(e: &SimEngine, no_undo: bool) -> txn::Result<txn::CommitReport> {
    let opts = txn::CommitOptions {
        no_undo,
        ..Default::default()
    };
    e.commit(&tx(), opts, &mut |_| {})
}

/// Where the engine keeps `base`'s spare pre-image file between commits.
pub fn spare_of(base: &Path) -> PathBuf {
    let name = base.file_name().expect("a file name").to_string_lossy();
    base.with_file_name(format!(".{name}.imgtx.spare"))
}

/// Files on `fs` that no settled state explains. A spare pre-image file beside a base is
/// never a stray: any commit may leave one.
pub fn strays(fx: &Fixture, fs: &SimFs, open: bool) -> Vec<PathBuf> {
    let mut allowed: BTreeSet<PathBuf> = fx.bases.iter().cloned().collect();
    allowed.extend(fx.bases.iter().map(|b| spare_of(b)));
    allowed.insert(PathBuf::from(STATE).join("history"));
    if open {
        allowed.extend(fx.overlays.iter().cloned());
        allowed.insert(PathBuf::from(STATE).join("txns").join(format!("{TX}.json")));
        // The claim beside each base, while the transaction holds it.
        allowed.extend(fx.bases.iter().map(|b| {
            let name = b.file_name().unwrap().to_string_lossy();
            b.with_file_name(format!(".{name}.imgtx.claim"))
        }));
    }
    fs.files()
        .into_iter()
        .filter(|p| !allowed.contains(p))
        // What a commit keeps to be reverted: its record, its pre-images are the spare, and
        // after a reflinked commit its overlay, which the record names.
        .filter(|p| !p.starts_with(Path::new(STATE).join("kept")))
        .filter(|p| !kept_post(fs, p))
        // Claims are named by the base's device and inode; one per base while open.
        .filter(|p| !(open && p.starts_with(Path::new(STATE).join("claims"))))
        // A crash that tore a history append leaves a tail the next append keeps aside
        // whole, never deletes: that file is evidence, not a leftover.
        .filter(|p| !is_kept_history(p))
        .collect()
}

/// Whether `p` is an overlay a reflinked commit kept as the proof of what it wrote, named by
/// that commit's kept record.
fn kept_post(fs: &SimFs, p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some(tx) = name
        .strip_suffix(".imgtx.post")
        .and_then(|n| n.rsplit('.').next())
    else {
        return false;
    };
    let record = PathBuf::from(STATE).join("kept").join(format!("{tx}.json"));
    fs.read_durable(&record)
        .is_some_and(|r| String::from_utf8_lossy(&r).contains(&*p.to_string_lossy()))
}

/// A history file kept aside by an append because its tail did not verify.
fn is_kept_history(p: &Path) -> bool {
    p.parent() == Some(Path::new(STATE))
        && p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("history.damaged-"))
}

pub fn manifest_state(fs: &SimFs) -> Option<String> {
    let bytes = fs.read_durable(PathBuf::from(STATE).join("txns").join(format!("{TX}.json")))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("state")?.as_str().map(str::to_owned)
}

/// Checks a disk after a completed recovery: durable (the same after losing everything
/// unsynced), every base old or new, success reported only if new, no stray files, no
/// ordering violation; an open transaction left behind must still commit to new.
pub fn check_settled(fx: &Fixture, after: &SimFs, told_new: bool, ctx: &str) -> Ended {
    let fs = after.crashed_image(Damage::DropUnsynced, 0);
    let end = ended(fx, &fs).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert!(
        !(told_new && end == Ended::Old),
        "{ctx}: the commit reported success but recovery went back to old"
    );
    let open = manifest_state(&fs);
    if end == Ended::New {
        assert_eq!(open, None, "{ctx}: committed, yet a manifest remains");
    }
    if let Some(state) = &open {
        assert_eq!(state, "open", "{ctx}: recovery left a transaction {state}");
    }
    let stray = strays(fx, &fs, open.is_some());
    assert!(
        stray.is_empty(),
        "{ctx}: stray files after recovery: {stray:?}"
    );
    if open.is_some() {
        // The transaction stayed open: it must still be whole and commit to new.
        let (e, mon) = engine(&fs, &fx.bases).unwrap_or_else(|e| panic!("{ctx}: engine: {e}"));
        e.commit(&tx(), txn::CommitOptions::default(), &mut |_| {})
            .unwrap_or_else(|e| panic!("{ctx}: the open transaction no longer commits: {e:?}"));
        assert_eq!(
            mon.violations(),
            vec![],
            "{ctx}: ordering violations in the re-commit"
        );
        let again = fs.crashed_image(Damage::DropUnsynced, 0);
        let now = ended(fx, &again);
        let reached = now == Ok(Ended::New) || (fx.old == fx.new && now == Ok(Ended::Old));
        assert!(reached, "{ctx}: re-commit did not reach new: {now:?}");
        assert!(
            strays(fx, &again, false).is_empty(),
            "{ctx}: strays after re-commit: {:?}",
            again.files()
        );
    }
    end
}

/// Recovers `img` (a rebooted disk); then, for each chosen operation of that recovery,
/// crashes it there, reboots with damage, and recovers again. Every outcome is checked.
pub fn recover_and_check(
    fx: &Fixture,
    img: &SimFs,
    told_new: bool,
    ctx: &str,
    stats: &mut Stats,
) -> Ended {
    let first = img.crashed_image(Damage::KeepAll, 0);
    let (e, mon) = engine(&first, &fx.bases).unwrap_or_else(|e| panic!("{ctx}: engine: {e}"));
    e.recover(&RecoverOptions::default())
        .unwrap_or_else(|e| panic!("{ctx}: recover failed: {e:?}"));
    assert_eq!(
        mon.violations(),
        vec![],
        "{ctx}: ordering violations in recover"
    );
    stats.recoveries += 1;
    let n = first.ops();
    let end = check_settled(fx, &first, told_new, ctx);
    let mut rng = SplitMix64::new(seed(n, Damage::KeepAll) ^ ctx.len() as u64);
    let points: Vec<u64> = if full() {
        (1..=n).collect()
    } else {
        vec![1 + rng.below(n.max(1))]
    };
    for j in points {
        let f = img.crashed_image(Damage::KeepAll, 0);
        f.crash_at(j);
        if let Ok((e, mon)) = engine(&f, &fx.bases) {
            let _ = e.recover(&RecoverOptions::default());
            assert_eq!(
                mon.violations(),
                vec![],
                "{ctx}: ordering violations in crashed recover @{j}"
            );
        }
        let d = Damage::ALL[rng.below(Damage::ALL.len() as u64) as usize];
        let rebooted = f.crashed_image(d, seed(j, d));
        let (e2, mon2) =
            engine(&rebooted, &fx.bases).unwrap_or_else(|e| panic!("{ctx}: engine: {e}"));
        e2.recover(&RecoverOptions::default()).unwrap_or_else(|e| {
            panic!("{ctx}, recover crashed @{j} then {d:?}: second recover failed: {e:?}")
        });
        assert_eq!(
            mon2.violations(),
            vec![],
            "{ctx}: ordering violations in second recover"
        );
        stats.recoveries += 2;
        let end2 = check_settled(
            fx,
            &rebooted,
            told_new,
            &format!("{ctx}, recover crashed @{j} then {d:?}"),
        );
        assert_eq!(
            end2, end,
            "{ctx}: a crash inside recover @{j} changed the outcome"
        );
    }
    match end {
        Ended::Old => stats.ended_old += 1,
        Ended::New => stats.ended_new += 1,
    }
    end
}

/// Crashes `run` at every operation (and once after its last), applies the damage variants,
/// and recovers each image. `run` returns whether the operation reported success; `success_means_new`
/// says whether that success promises new content (commit) or not (begin, rollback).
pub fn sweep(
    fx: &Fixture,
    start: &dyn Fn() -> SimFs,
    run: &dyn Fn(&SimEngine) -> bool,
    success_means_new: bool,
    sample: usize,
    name: &str,
) -> Stats {
    let n = {
        let fs = start();
        let (e, mon) = engine(&fs, &fx.bases).expect("engine");
        assert!(run(&e), "{name}: the uncrashed run failed");
        assert_eq!(
            mon.violations(),
            vec![],
            "{name}: ordering violations in the clean run"
        );
        fs.ops()
    };
    let mut stats = Stats::default();
    let mut failures = Vec::new();
    for k in 1..=n + 1 {
        let fs = start();
        fs.crash_at(k);
        let told = match engine(&fs, &fx.bases) {
            Ok((e, mon)) => {
                let told = run(&e);
                assert_eq!(
                    mon.violations(),
                    vec![],
                    "{name} crashed @{k}: ordering violations"
                );
                told
            }
            Err(_) => false,
        };
        stats.points += 1;
        for d in variants(k, sample) {
            let img = fs.crashed_image(d, seed(k, d));
            let ctx = format!("{name} crashed @{k}/{n} with {d:?}");
            let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut local = Stats::default();
                recover_and_check(fx, &img, told && success_means_new, &ctx, &mut local);
                local
            }));
            match checked {
                Ok(local) => stats.add(local),
                Err(p) => failures.push(panic_text(&p)),
            }
            stats.images += 1;
        }
    }
    assert_failures(name, &failures);
    stats
}

/// The message of a caught panic.
pub fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-text panic".into())
}

/// Fails with every distinct failure of a sweep (grouped by message without numbers), so
/// one run shows all the bugs rather than the first.
pub fn assert_failures(name: &str, failures: &[String]) {
    if failures.is_empty() {
        return;
    }
    let mut groups: std::collections::BTreeMap<String, (usize, &String)> =
        std::collections::BTreeMap::new();
    for f in failures {
        let key: String = f
            .split(": ")
            .skip(1)
            .collect::<Vec<_>>()
            .join(": ")
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        groups.entry(key).or_insert((0, f)).0 += 1;
    }
    let mut text = format!(
        "{name}: {} failing images in {} kinds\n",
        failures.len(),
        groups.len()
    );
    for (count, example) in groups.values() {
        text.push_str(&format!("  {count} x, e.g. {example}\n"));
    }
    panic!("{text}");
}
