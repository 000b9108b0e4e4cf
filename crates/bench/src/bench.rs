//! The scenarios and how each contestant is run on them.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use crate::floor;
use crate::measure::{measure, Sample};
use crate::plan::{self, Plan};
use crate::sys::{self, Digest};
use crate::BoxResult;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Bump when the way scenarios are built changes, so cached pristine images are rebuilt.
const SCENARIO_FORMAT: u64 = 1;

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Config {
    /// The imgtx binary; `None` runs only qemu-img.
    pub imgtx: Option<PathBuf>,
    /// Where images are built and committed; must be a real disk, not tmpfs.
    pub workdir: PathBuf,
    /// Timed runs per contestant.
    pub rounds: usize,
    /// Seed of every pseudo-random choice.
    pub seed: u64,
    /// The page cache before each timed run.
    pub cache: Cache,
}

/// The cache setting of a part's runs, and whether every cold run really was cold.
pub struct Caching {
    cache: Cache,
    all_cold: bool,
}

impl Caching {
    fn settle(&mut self) {
        self.all_cold &= self.cache.settle();
    }

    /// For a warm run, reads `files` whole into the page cache, as an edit leaves what it
    /// wrote there: copies made by reflink, or pages evicted since, would otherwise leave one
    /// contestant warmer than another.
    fn warm(&self, files: &[&Path]) -> BoxResult<()> {
        if self.cache == Cache::Warm {
            for f in files {
                sys::read_through(f)?;
            }
        }
        Ok(())
    }
}

/// The page cache a timed run starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Dropped (after a sync): every byte comes from the disk.
    Cold,
    /// As the run's preparation left it (synced, so no writeback is pending): the overlay and
    /// base as an edit just left them, as a commit right after an edit finds them.
    Warm,
}

impl Cache {
    /// Settles the cache before a timed run; false when a cold cache could not be had.
    pub fn settle(self) -> bool {
        match self {
            Cache::Cold => sys::drop_caches(),
            Cache::Warm => {
                nix::unistd::sync();
                true
            }
        }
    }

    /// How the report names it.
    pub fn name(self) -> &'static str {
        match self {
            Cache::Cold => "cold",
            Cache::Warm => "warm",
        }
    }
}

/// What a commit scenario's base holds before the overlay changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Pseudo-random bytes everywhere.
    Full,
    /// Data under the writes plus this many random 4 MiB ranges, a hole elsewhere: what a
    /// commit does is the same as on a full base, for a fraction of the setup.
    UnderWrites(u64),
    /// Data in this many random 4 MiB ranges only, so most writes land in holes: a guest
    /// filling the free space of a sparse image.
    FreeSpace(u64),
}

impl Fill {
    /// The ranges that hold data, or `None` for all of them.
    fn regions(self, size: u64, plan: &Plan, seed: u64) -> Option<Vec<(u64, u64)>> {
        match self {
            Fill::Full => None,
            Fill::UnderWrites(n) => Some(plan::base_regions(size, Some(plan), n, seed)),
            Fill::FreeSpace(n) => Some(plan::base_regions(size, None, n, seed)),
        }
    }
}

/// One measured part of a scenario.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    /// Commit `changed` bytes of scattered writes into a raw base of `size` bytes holding
    /// `fill`.
    Commit {
        /// Directory and report name.
        name: &'static str,
        /// Virtual size of the base.
        size: u64,
        /// Distinct bytes the overlay changes.
        changed: u64,
        /// What the base holds.
        fill: Fill,
    },
    /// Time `begin` on a sparse base of `size` bytes, then `status` and `diff` of an overlay
    /// holding `clusters` scattered single-cluster writes.
    Meta {
        /// Directory and report name.
        name: &'static str,
        /// Virtual size of the base.
        size: u64,
        /// Changed clusters in the overlay.
        clusters: u64,
    },
}

/// The parts a `--scenario` name stands for.
pub fn parts(scenario: &str) -> Option<Vec<Part>> {
    // The reflink workload: 1 GiB changed over a 4 GiB base.
    let medium = Part::Commit {
        name: "medium",
        size: 4 * GIB,
        changed: GIB,
        fill: Fill::Full,
    };
    let small = Part::Commit {
        name: "small",
        size: GIB,
        changed: 256 * MIB,
        fill: Fill::Full,
    };
    let large = Part::Commit {
        name: "large",
        size: 16 * GIB,
        changed: 2 * GIB,
        fill: Fill::UnderWrites(64),
    };
    // As much data as the overlay changes, elsewhere: about three writes in four land in holes.
    let sparse = Part::Commit {
        name: "sparse",
        size: GIB,
        changed: 256 * MIB,
        fill: Fill::FreeSpace(64),
    };
    let meta = Part::Meta {
        name: "meta",
        size: 16 * GIB,
        clusters: 100_000,
    };
    Some(match scenario {
        "small" => vec![small],
        "medium" => vec![medium],
        "large" => vec![large],
        "sparse" => vec![sparse],
        "meta" => vec![meta],
        "all" => vec![small, large, sparse, meta],
        // A smoke test of the harness itself, in seconds.
        "tiny" => vec![
            Part::Commit {
                name: "tiny",
                size: 64 * MIB,
                changed: 16 * MIB,
                fill: Fill::Full,
            },
            Part::Meta {
                name: "tiny-meta",
                size: 256 * MIB,
                clusters: 1000,
            },
        ],
        _ => return None,
    })
}

/// A contestant of the commit race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contestant {
    /// `qemu-img commit -d OV` then fsync of the base.
    QemuImg,
    /// `imgtx commit --no-undo ID`.
    ImgtxNoUndo,
    /// `imgtx commit ID` (keeps an undo log), overwriting the spare pre-image file the
    /// previous default commit of the same base kept: the steady state of a base committed
    /// again and again.
    Imgtx,
    /// `imgtx commit ID` on a base with no spare yet (removed before the run): a base's first
    /// commit, or every commit made with `--no-spare`.
    ImgtxFirst,
    /// The write floor (`crate::floor`): the base's changes only, what every commit writes.
    FloorBase,
    /// The write floor of a commit that copies pre-images into a new file first.
    FloorFirst,
    /// The write floor of a commit that copies pre-images over a file kept from the last run.
    FloorSpare,
}

impl Contestant {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Contestant::QemuImg => "qemu-img commit -d + fsync",
            Contestant::ImgtxNoUndo => "imgtx commit --no-undo",
            Contestant::Imgtx => "imgtx commit",
            Contestant::ImgtxFirst => "imgtx commit, first (no spare)",
            Contestant::FloorBase => "write floor: base only",
            Contestant::FloorFirst => "write floor: pre-images (new file) + base",
            Contestant::FloorSpare => "write floor: pre-images (kept file) + base",
        }
    }

    /// Whether this is a write floor rather than a commit (its base is not the committed one).
    pub fn is_floor(self) -> bool {
        matches!(
            self,
            Contestant::FloorBase | Contestant::FloorFirst | Contestant::FloorSpare
        )
    }
}

/// Timed runs of one contestant, or why it could not run.
#[derive(Debug, Clone)]
pub struct Runs {
    /// Who ran.
    pub contestant: Contestant,
    /// One sample per round, in round order.
    pub samples: Vec<Sample>,
    /// Set when a run failed; the contestant is then skipped for the remaining rounds.
    pub error: Option<String>,
}

/// Everything measured in one part.
#[derive(Debug, Clone, Default)]
pub struct PartResult {
    /// Part name.
    pub name: String,
    /// Virtual size of the base.
    pub size: u64,
    /// Distinct bytes changed in the overlay.
    pub changed_bytes: u64,
    /// Guest writes replayed into each overlay.
    pub ops: usize,
    /// Commit contestants (empty for a meta part).
    pub commits: Vec<Runs>,
    /// `imgtx begin` timings.
    pub begin: Vec<Sample>,
    /// `imgtx status` timings (meta parts).
    pub status: Vec<Sample>,
    /// `imgtx diff` timings (meta parts).
    pub diff: Vec<Sample>,
    /// Failures of begin/status/diff and other remarks.
    pub notes: Vec<String>,
}

/// Runs one part.
pub fn run_part(cfg: &Config, part: Part) -> BoxResult<PartResult> {
    let load_before = load_average();
    let mut result = match part {
        Part::Commit {
            name,
            size,
            changed,
            fill,
        } => run_commit(cfg, name, size, changed, fill),
        Part::Meta {
            name,
            size,
            clusters,
        } => run_meta(cfg, name, size, clusters),
    }?;
    // On a shared machine the load explains much of the spread, so the report carries it.
    result.notes.push(format!(
        "load average (1, 5, 15 min) before: {load_before}; after: {}",
        load_average()
    ));
    Ok(result)
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Paths of a part's working directory.
struct Layout {
    dir: PathBuf,
    pristine_base: PathBuf,
    pristine_overlay: PathBuf,
    base: PathBuf,
    overlay: PathBuf,
    state: PathBuf,
    /// The spare pre-image file imgtx keeps beside `base` between commits.
    spare: PathBuf,
    /// The write floor's pre-image file, beside the base like imgtx's.
    floor_pre: PathBuf,
}

impl Layout {
    fn new(workdir: &Path, name: &str) -> BoxResult<Layout> {
        let dir = std::path::absolute(workdir.join(name))?;
        fs::create_dir_all(dir.join("pristine"))?;
        fs::create_dir_all(dir.join("run"))?;
        Ok(Layout {
            pristine_base: dir.join("pristine/base.raw"),
            pristine_overlay: dir.join("pristine/overlay.qcow2"),
            base: dir.join("run/base.raw"),
            overlay: dir.join("run/overlay.qcow2"),
            state: dir.join("run/state"),
            spare: dir.join("run/.base.raw.imgtx.spare"),
            floor_pre: dir.join("run/floor-pre-images"),
            dir,
        })
    }

    /// The cached expected digest, if the pristine files were built with the same `key`.
    fn cached(&self, key: &serde_json::Value) -> Option<Digest> {
        let ready: serde_json::Value =
            serde_json::from_slice(&fs::read(self.dir.join("ready.json")).ok()?).ok()?;
        if &ready["key"] != key || !self.pristine_base.exists() {
            return None;
        }
        Digest::from_json(&ready["expected"])
    }

    fn mark_ready(&self, key: &serde_json::Value, expected: &Digest) -> BoxResult<()> {
        let ready = serde_json::json!({ "key": key, "expected": expected.to_json() });
        fs::write(self.dir.join("ready.json"), ready.to_string())?;
        Ok(())
    }
}

fn progress(msg: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let secs = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64();
    eprintln!("imgtx-bench [{secs:7.1}s]: {msg}");
}

fn run_commit(
    cfg: &Config,
    name: &str,
    size: u64,
    changed: u64,
    fill: Fill,
) -> BoxResult<PartResult> {
    let layout = Layout::new(&cfg.workdir, name)?;
    let plan = plan::scattered(size, changed, cfg.seed);
    let expected = pristine(cfg, (name, &layout, &plan), (size, changed), fill)?;
    let contestants = contestants(cfg, fill);
    let mut result = PartResult {
        name: name.to_owned(),
        size,
        changed_bytes: plan.changed_bytes,
        ops: plan.ops.len(),
        ..PartResult::default()
    };
    if cfg.imgtx.is_none() {
        result
            .notes
            .push("imgtx not given (--imgtx): only qemu-img was run".to_owned());
    }
    result.commits = contestants
        .iter()
        .map(|&contestant| Runs {
            contestant,
            samples: Vec::new(),
            error: None,
        })
        .collect();
    let mut cold = Caching {
        cache: cfg.cache,
        all_cold: true,
    };
    for round in 0..cfg.rounds {
        // Round-robin with the order rotated each round, so no contestant always runs first
        // (or always right after the one that left the most dirty state behind).
        let n = result.commits.len();
        for k in 0..n {
            let i = (round + k) % n;
            if result.commits[i].error.is_some() {
                continue;
            }
            let contestant = result.commits[i].contestant;
            progress(&format!(
                "{name}: round {}/{}: {}",
                round + 1,
                cfg.rounds,
                contestant.name()
            ));
            let scenario = Scenario {
                layout: &layout,
                plan: &plan,
                size,
                changed,
                expected: &expected,
            };
            let mut log = ImgtxLog {
                begins: &mut result.begin,
                notes: &mut result.notes,
            };
            let outcome = run_one(cfg, &scenario, contestant, &mut log, &mut cold);
            match outcome {
                Ok(sample) => result.commits[i].samples.push(sample),
                Err(e) => {
                    progress(&format!("{name}: {} failed: {e}", contestant.name()));
                    result.commits[i].error = Some(e.to_string());
                }
            }
        }
    }
    if cfg.cache == Cache::Cold && !cold.all_cold {
        result.notes.push(
            "page cache could not be dropped (not root): runs were synced but not cold".to_owned(),
        );
    }
    sys::remove_file_if_exists(&layout.base)?;
    sys::remove_file_if_exists(&layout.overlay)?;
    sys::remove_file_if_exists(&layout.spare)?;
    sys::remove_file_if_exists(&layout.floor_pre)?;
    Ok(result)
}

/// The digest a correct commit of the scenario leaves, with its pristine base and overlay
/// built, or kept from an earlier run of the same scenario.
fn pristine(
    cfg: &Config,
    (name, layout, plan): (&str, &Layout, &Plan),
    (size, changed): (u64, u64),
    fill: Fill,
) -> BoxResult<Digest> {
    // Keys of the scenarios that existed before `Fill` are unchanged, so their kept pristine
    // images stay valid.
    let mut key = serde_json::json!({
        "format": SCENARIO_FORMAT, "size": size, "changed": changed,
        "sparse_extra": match fill { Fill::UnderWrites(n) => Some(n), _ => None },
        "seed": cfg.seed,
    });
    if let Fill::FreeSpace(n) = fill {
        key["free_space"] = n.into();
    }
    let expected = match layout.cached(&key) {
        Some(digest) if layout.pristine_overlay.exists() => {
            progress(&format!(
                "{name}: reusing the pristine images in {}",
                layout.dir.display()
            ));
            digest
        }
        _ => build_commit_scenario(layout, plan, size, fill, cfg.seed, &key)?,
    };
    Ok(expected)
}

/// One scenario's fixed inputs: its files, its writes, its sizes, and the digest a correct
/// commit leaves.
struct Scenario<'a> {
    layout: &'a Layout,
    plan: &'a Plan,
    size: u64,
    changed: u64,
    expected: &'a Digest,
}

/// The contestants of a commit scenario, in the order of a round.
fn contestants(cfg: &Config, fill: Fill) -> Vec<Contestant> {
    let mut contestants = vec![Contestant::QemuImg];
    if cfg.imgtx.is_some() {
        // First before Imgtx: in round one it leaves the spare Imgtx then overwrites, and
        // every later Imgtx run finds the one the run before it kept.
        contestants.extend([
            Contestant::ImgtxNoUndo,
            Contestant::ImgtxFirst,
            Contestant::Imgtx,
        ]);
    }
    // FloorFirst before FloorSpare, for the same reason. A floor counts a pre-image for every
    // changed byte, which overstates a base whose changed ranges were holes: none there.
    if !matches!(fill, Fill::FreeSpace(_)) {
        contestants.extend([
            Contestant::FloorBase,
            Contestant::FloorFirst,
            Contestant::FloorSpare,
        ]);
    }
    contestants
}

/// One timed run of `contestant`, checked: the base must hold what a correct commit leaves.
fn run_one(
    cfg: &Config,
    sc: &Scenario<'_>,
    contestant: Contestant,
    log: &mut ImgtxLog<'_>,
    cold: &mut Caching,
) -> BoxResult<Sample> {
    let Scenario {
        layout,
        plan,
        size,
        changed,
        expected,
    } = *sc;
    let outcome = match contestant {
        Contestant::QemuImg => run_qemu_img(layout, cold),
        Contestant::ImgtxNoUndo | Contestant::Imgtx | Contestant::ImgtxFirst => {
            let imgtx = cfg
                .imgtx
                .as_deref()
                .ok_or("imgtx contestant without --imgtx")?;
            let no_undo = contestant == Contestant::ImgtxNoUndo;
            if contestant == Contestant::ImgtxFirst {
                sys::remove_file_if_exists(&layout.spare)?;
            }
            run_imgtx(imgtx, layout, plan, no_undo, log, cold)
        }
        Contestant::FloorBase | Contestant::FloorFirst | Contestant::FloorSpare => {
            let pre = (contestant != Contestant::FloorBase).then_some(&*layout.floor_pre);
            if contestant == Contestant::FloorFirst {
                sys::remove_file_if_exists(&layout.floor_pre)?;
            }
            let args = floor::args(size, changed, cfg.seed, &layout.base, pre);
            run_floor(layout, &args, cold)
        }
    };
    // A floor writes a pattern, not the overlay's data: there is nothing to check.
    outcome.and_then(|sample| {
        if contestant.is_floor() {
            return Ok(sample);
        }
        match sys::digest(&layout.base)?.mismatch(expected) {
            None => Ok(sample),
            Some(why) => Err(format!("the committed base is wrong: {why}").into()),
        }
    })
}

/// Builds the pristine base and overlay and returns the digest a correct commit must produce.
fn build_commit_scenario(
    layout: &Layout,
    plan: &Plan,
    size: u64,
    fill: Fill,
    seed: u64,
    key: &serde_json::Value,
) -> BoxResult<Digest> {
    sys::remove_file_if_exists(&layout.dir.join("ready.json"))?;
    let regions = fill.regions(size, plan, seed);
    progress(&format!(
        "building a {} MiB base with {} MiB of data",
        size / MIB,
        regions
            .as_ref()
            .map_or(size, |r| r.iter().map(|(s, e)| e - s).sum())
            / MIB
    ));
    sys::fill_base(&layout.pristine_base, size, regions.as_deref(), seed)?;
    // The pristine overlay names run/base.raw as its backing file, so a copy of it committed
    // after a fresh copy of the base needs no rebase.
    sys::copy(&layout.pristine_base, &layout.base)?;
    sys::create_overlay(&layout.base, &layout.pristine_overlay)?;
    progress(&format!(
        "writing {} changes ({} MiB) into the pristine overlay",
        plan.ops.len(),
        plan.changed_bytes / MIB
    ));
    sys::replay(&layout.pristine_overlay, &plan.ops)?;
    let expected_raw = layout.dir.join("expected.raw");
    sys::run(
        std::process::Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&layout.pristine_overlay)
            .arg(&expected_raw),
    )?;
    let expected = sys::digest(&expected_raw)?;
    sys::remove_file_if_exists(&expected_raw)?;
    if sys::digest(&layout.base)? == expected {
        return Err("the scenario's writes do not change the base".into());
    }
    layout.mark_ready(key, &expected)?;
    Ok(expected)
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn run_floor(layout: &Layout, args: &[OsString], cold: &mut Caching) -> BoxResult<Sample> {
    sys::copy(&layout.pristine_base, &layout.base)?;
    cold.warm(&[&layout.base])?;
    cold.settle();
    let (sample, _) = measure(&layout.dir, None, &std::env::current_exe()?, args)?;
    Ok(sample)
}

fn run_qemu_img(layout: &Layout, cold: &mut Caching) -> BoxResult<Sample> {
    sys::copy(&layout.pristine_base, &layout.base)?;
    sys::copy(&layout.pristine_overlay, &layout.overlay)?;
    cold.warm(&[&layout.base, &layout.overlay])?;
    cold.settle();
    let mut args = os(&["commit", "-d"]);
    args.push(layout.overlay.clone().into_os_string());
    let (sample, _) = measure(
        &layout.dir,
        Some(&layout.base),
        Path::new("qemu-img"),
        &args,
    )?;
    Ok(sample)
}

/// `imgtx --state-dir S begin --json BASE`: returns the transaction id and the overlay path.
fn begin(imgtx: &Path, layout: &Layout, base: &Path) -> BoxResult<(Sample, String, PathBuf)> {
    let mut args = imgtx_args(layout, &["begin", "--json"]);
    args.push(base.as_os_str().to_owned());
    let (sample, stdout) = measure(&layout.dir, None, imgtx, &args)?;
    let json: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("imgtx begin --json printed no JSON ({e}): {stdout}"))?;
    let id = match &json["id"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err(format!("imgtx begin --json gave no id: {json}").into()),
    };
    let overlay = json["images"][0]["overlay"]
        .as_str()
        .ok_or_else(|| format!("imgtx begin --json gave no images[0].overlay: {json}"))?;
    Ok((sample, id, PathBuf::from(overlay)))
}

fn rollback(imgtx: &Path, layout: &Layout, id: &str) -> BoxResult<()> {
    measure(
        &layout.dir,
        None,
        imgtx,
        &imgtx_args(layout, &["rollback", id]),
    )?;
    Ok(())
}

fn imgtx_args(layout: &Layout, rest: &[&str]) -> Vec<OsString> {
    let mut args = os(&["--state-dir"]);
    args.push(layout.state.clone().into_os_string());
    args.extend(os(rest));
    args
}

/// Where an imgtx round records what it sees besides the commit time.
struct ImgtxLog<'a> {
    begins: &'a mut Vec<Sample>,
    notes: &'a mut Vec<String>,
}

/// The qcow2 options that decide an overlay's layout, to show that imgtx's overlays and the
/// pristine one qemu-img commits are alike.
fn overlay_options(overlay: &Path) -> BoxResult<String> {
    let info = sys::run(
        std::process::Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(overlay),
    )?;
    let info: serde_json::Value = serde_json::from_str(&info)?;
    let data = &info["format-specific"]["data"];
    Ok(format!(
        "cluster size {}, compat {}, extended L2 {}, lazy refcounts {}",
        info["cluster-size"], data["compat"], data["extended-l2"], data["lazy-refcounts"]
    ))
}

fn run_imgtx(
    imgtx: &Path,
    layout: &Layout,
    plan: &Plan,
    no_undo: bool,
    log: &mut ImgtxLog<'_>,
    cold: &mut Caching,
) -> BoxResult<Sample> {
    sys::copy(&layout.pristine_base, &layout.base)?;
    sys::remove_dir_if_exists(&layout.state)?;
    cold.settle();
    let (begin_sample, id, overlay) = begin(imgtx, layout, &layout.base)?;
    log.begins.push(begin_sample);
    sys::replay(&overlay, &plan.ops)?;
    if !log.notes.iter().any(|n| n.starts_with("overlays:")) {
        log.notes.push(format!(
            "overlays: qemu-img's: {}; imgtx's: {}",
            overlay_options(&layout.pristine_overlay)?,
            overlay_options(&overlay)?
        ));
    }
    cold.warm(&[&layout.base, &overlay])?;
    cold.settle();
    let commit = if no_undo {
        vec!["commit", "--no-undo", &id]
    } else {
        vec!["commit", &id]
    };
    let (sample, _) = measure(&layout.dir, None, imgtx, &imgtx_args(layout, &commit))?;
    sys::remove_file_if_exists(&overlay)?;
    // A commit whose data was shared by reflink keeps its overlay as the proof of what it
    // wrote, named by the state directory about to go: without it, it would only hold space.
    let name = overlay
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    if let Some(post) = name.and_then(|n| {
        let tx = n
            .strip_suffix(".imgtx.qcow2")?
            .rsplit('.')
            .next()?
            .to_owned();
        let base = layout.base.file_name()?.to_string_lossy().into_owned();
        Some(
            layout
                .base
                .with_file_name(format!(".{base}.{tx}.imgtx.post")),
        )
    }) {
        sys::remove_file_if_exists(&post)?;
    }
    sys::remove_dir_if_exists(&layout.state)?;
    Ok(sample)
}

fn run_meta(cfg: &Config, name: &str, size: u64, clusters: u64) -> BoxResult<PartResult> {
    let layout = Layout::new(&cfg.workdir, name)?;
    let plan = plan::single_clusters(size, clusters, cfg.seed);
    let mut result = PartResult {
        name: name.to_owned(),
        size,
        changed_bytes: plan.changed_bytes,
        ops: plan.ops.len(),
        ..PartResult::default()
    };
    let Some(imgtx) = cfg.imgtx.as_deref() else {
        result
            .notes
            .push("imgtx not given (--imgtx): nothing to measure".to_owned());
        return Ok(result);
    };
    let key = serde_json::json!({ "format": SCENARIO_FORMAT, "size": size, "seed": cfg.seed });
    if layout.cached(&key).is_none() {
        // status and diff read only metadata, so the base needs data only here and there.
        let regions = plan::base_regions(size, None, 64, cfg.seed);
        progress(&format!("building a sparse {} MiB base", size / MIB));
        sys::fill_base(&layout.pristine_base, size, Some(&regions), cfg.seed)?;
        layout.mark_ready(
            &key,
            &Digest {
                len: size,
                chunks: Vec::new(),
            },
        )?;
    }
    let mut cold = Caching {
        cache: cfg.cache,
        all_cold: true,
    };
    if let Err(e) = meta_rounds(cfg, imgtx, &layout, &plan, &mut result, &mut cold) {
        progress(&format!("{name}: {e}"));
        result.notes.push(e.to_string());
    }
    if cfg.cache == Cache::Cold && !cold.all_cold {
        result
            .notes
            .push("page cache could not be dropped (not root)".to_owned());
    }
    sys::remove_dir_if_exists(&layout.state)?;
    Ok(result)
}

fn meta_rounds(
    cfg: &Config,
    imgtx: &Path,
    layout: &Layout,
    plan: &Plan,
    result: &mut PartResult,
    cold: &mut Caching,
) -> BoxResult<()> {
    // begin never reads the base's data, so every run uses the pristine base in place.
    for round in 0..cfg.rounds {
        progress(&format!(
            "{}: begin {}/{}",
            result.name,
            round + 1,
            cfg.rounds
        ));
        sys::remove_dir_if_exists(&layout.state)?;
        cold.settle();
        let (sample, id, _) = begin(imgtx, layout, &layout.pristine_base)?;
        result.begin.push(sample);
        // Untimed. A rollback, not a removal of the state directory: the claim lives beside
        // the base, and the next begin would find the image held.
        rollback(imgtx, layout, &id)?;
    }
    sys::remove_dir_if_exists(&layout.state)?;
    let (_, id, overlay) = begin(imgtx, layout, &layout.pristine_base)?;
    progress(&format!(
        "{}: writing {} scattered clusters into {}",
        result.name,
        plan.ops.len(),
        overlay.display()
    ));
    let outcome = status_diff_rounds(cfg, imgtx, layout, plan, &id, &overlay, result, cold);
    rollback(imgtx, layout, &id)?;
    outcome
}

#[allow(clippy::too_many_arguments)] // a private step of meta_rounds, split out for cleanup
fn status_diff_rounds(
    cfg: &Config,
    imgtx: &Path,
    layout: &Layout,
    plan: &Plan,
    id: &str,
    overlay: &Path,
    result: &mut PartResult,
    cold: &mut Caching,
) -> BoxResult<()> {
    sys::replay(overlay, &plan.ops)?;
    for round in 0..cfg.rounds {
        progress(&format!(
            "{}: status and diff {}/{}",
            result.name,
            round + 1,
            cfg.rounds
        ));
        cold.settle();
        let (sample, _) = measure(&layout.dir, None, imgtx, &imgtx_args(layout, &["status"]))?;
        result.status.push(sample);
        cold.settle();
        let (sample, _) = measure(&layout.dir, None, imgtx, &imgtx_args(layout, &["diff", id]))?;
        result.diff.push(sample);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_runs_small_large_sparse_and_meta_in_that_order() {
        let names: Vec<&str> = parts("all")
            .unwrap()
            .iter()
            .map(|p| match p {
                Part::Commit { name, .. } | Part::Meta { name, .. } => *name,
            })
            .collect();

        assert_eq!(names, ["small", "large", "sparse", "meta"]);
    }

    #[test]
    fn unknown_scenario_is_refused() {
        assert!(parts("huge").is_none());
    }
}
