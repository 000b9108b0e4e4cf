//! The real binary killed before each of its mutating system calls (T1, T7, T12 at the process
//! level): `strace -f -e inject=SYSCALL:signal=KILL:when=N` delivers SIGKILL on entry to the
//! N-th call of one syscall, in imgtx or in the `qemu-img` it runs for qcow2 bases, with no
//! hook in the code. Swept: `commit` (raw, raw `--no-undo`, two raw bases, qcow2), `begin`,
//! `rollback`, and `recover` (forward, `--undo`, and forward over a qcow2 base) of a commit left
//! interrupted after its commit point. After each kill, `imgtx recover` (and, where the
//! transaction legitimately stays open, a rerun of the command) must leave every base
//! bit-identical to its old content or holding its new content, report success only over the
//! outcome it promises, and leave no stray file beside the bases or in the state directory.
//!
//! strace counts invocations per syscall and per thread, so the sweep counts a clean run's
//! calls per syscall (the largest count of any thread) and kills at every (syscall, N). The
//! clean run traces *every* syscall and fails on one that is neither swept nor known to change
//! no file, so "killed before every mutating call" also means "killed after every call but the
//! last"; the last is covered by one more point, a kill on entry to `exit_group` (see
//! docs/crash-safety.md). CI runs an evenly spaced sample; `IMGTX_CRASH_SWEEP=full` runs every
//! point.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::sweep::full;

use crate::util::{
    describe, exit, expect_code, imgtx_bin, listing, listing_but_spares, qemu_img, qemu_io,
    require_tools, run, TestDir,
};

/// Calls that can change a file's content, length, metadata, name or existence. `openat` is
/// swept whatever its flags (`O_CREAT`/`O_TRUNC` can create or cut); `write` includes writes to
/// pipes and eventfds, which costs points but misses nothing.
const MUTATING: &[&str] = &[
    "copy_file_range",
    "creat",
    "fallocate",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fdatasync",
    "fsync",
    "ftruncate",
    "link",
    "linkat",
    "mkdir",
    "mkdirat",
    "open",
    "openat",
    "openat2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "symlink",
    "symlinkat",
    "sync_file_range",
    "truncate",
    "unlink",
    "unlinkat",
    "utimensat",
    "write",
    "writev",
];

/// Calls imgtx, qemu-img and the C library make that change no file (reads, stats, memory,
/// signals, threads, locks, process control, the nscd probe). `mmap` is checked separately:
/// a shared writable file mapping would change a file with no syscall at all.
const NON_MUTATING: &[&str] = &[
    "access",
    "arch_prctl",
    "brk",
    "clock_gettime",
    "clock_nanosleep",
    "clone",
    "clone3",
    "close",
    "connect",
    "dup",
    "dup2",
    "dup3",
    "eventfd2",
    "execve",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fcntl",
    "flock",
    "fstat",
    "fstatfs",
    "futex",
    "get_mempolicy",
    "getcwd",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getpid",
    "getppid",
    "getrandom",
    "gettid",
    "getuid",
    "io_uring_setup",
    "ioctl",
    "lseek",
    "madvise",
    "mmap",
    "mprotect",
    "munmap",
    "nanosleep",
    "newfstatat",
    "pipe2",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "read",
    "readlink",
    "readlinkat",
    "readv",
    // Signal handling talks to its own thread over a socket pair.
    "recvfrom",
    "rseq",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_getaffinity",
    "sched_yield",
    "sendto",
    "set_mempolicy",
    "set_robust_list",
    "set_tid_address",
    // The qemu-img child gets a process group of its own.
    "setpgid",
    "sigaltstack",
    "signalfd4",
    "socket",
    "socketpair",
    "statfs",
    "statx",
    "sysinfo",
    "uname",
    "wait4",
];

/// The kill that lands after the last mutating call: every process ends in `exit_group`.
const AFTER_LAST: &str = "exit_group";
const KIB: u64 = 1 << 10;

/// The bases a sweep works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bases {
    /// One raw base that grows.
    Raw,
    /// Two raw bases committed together.
    RawPair,
    /// One qcow2 base, written by `qemu-img commit`.
    Qcow2,
}

/// The command killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Swept {
    Begin,
    Commit {
        no_undo: bool,
    },
    Rollback,
    /// `recover [--undo]` of a commit stopped right after its commit point.
    Recover {
        undo: bool,
    },
}

impl Swept {
    /// What every base holds once this command ran to its end (and recover, if it was killed).
    fn promised(self) -> Ended {
        match self {
            Swept::Commit { .. } | Swept::Recover { undo: false } => Ended::New,
            Swept::Begin | Swept::Rollback | Swept::Recover { undo: true } => Ended::Old,
        }
    }

    /// Whether the transaction is still open after an uninterrupted run.
    fn leaves_open(self) -> bool {
        self == Swept::Begin
    }
}

/// What the bases hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Old,
    New,
}

/// One directory ready for the swept command, with what its bases held and will hold.
struct Case {
    t: TestDir,
    /// Empty before `begin`.
    tx: String,
    bases: Vec<PathBuf>,
    /// Each base's bytes before the transaction.
    old: Vec<Vec<u8>>,
    /// Each base's guest content after a commit (empty until [`Case::expect`] fills it).
    new: Vec<Vec<u8>>,
    kind: Bases,
    /// Whether `qemu-img check` found leaked clusters in a new qcow2 base.
    leaked: Cell<bool>,
}

fn guest_content(t: &TestDir, image: &Path, format: &str) -> Vec<u8> {
    let out = t.path().join("guest.raw");
    qemu_img(&[
        "convert".as_ref(),
        "-f".as_ref(),
        format.as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        image.as_os_str(),
        out.as_os_str(),
    ]);
    let bytes = fs::read(&out).expect("converted image");
    fs::remove_file(&out).expect("remove converted image");
    bytes
}

/// `qemu-io -f FORMAT -c C1 -c C2 ... IMAGE`, one process for all the edits.
fn edit(image: &Path, format: &str, commands: &[&str]) {
    let mut args = vec!["-f".as_ref(), format.as_ref()];
    for c in commands {
        args.push("-c".as_ref());
        args.push(c.as_ref());
    }
    args.push(image.as_os_str());
    qemu_io(&args);
}

fn qcow2_base(t: &TestDir) -> PathBuf {
    let b = t.image("base.qcow2");
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        b.as_os_str(),
        "1M".as_ref(),
    ]);
    edit(
        &b,
        "qcow2",
        &["write -P 0x61 0 256k", "write -P 0x62 640k 64k"],
    );
    b
}

/// Overlay edits per base: a partial-cluster write, a zero cluster, a compressed cluster and
/// growth with data past the old end, spread over the bases.
fn edits(kind: Bases, index: usize) -> (Option<&'static str>, &'static [&'static str]) {
    match (kind, index) {
        (Bases::RawPair, 0) => (None, &["write -P 0x71 4k 100k", "write -z 256k 64k"]),
        (Bases::RawPair, _) => (
            Some("768K"),
            &["write -c -P 0x72 64k 64k", "write -P 0x73 600k 8k"],
        ),
        _ => (
            Some("1536K"),
            &[
                "write -P 0x71 4k 100k",
                "write -z 512k 64k",
                "write -c -P 0x72 768k 64k",
                "write -P 0x73 1200k 8k",
            ],
        ),
    }
}

/// A fresh directory in the state the swept command starts from.
fn prepare(kind: Bases, swept: Swept) -> Case {
    let t = TestDir::new();
    let bases = match kind {
        Bases::Raw => vec![t.raw_image("base.img", 1024 * KIB, 5)],
        Bases::RawPair => vec![
            t.raw_image("a.img", 512 * KIB, 6),
            t.raw_image("b.img", 512 * KIB, 7),
        ],
        Bases::Qcow2 => vec![qcow2_base(&t)],
    };
    let old: Vec<Vec<u8>> = bases.iter().map(|b| fs::read(b).expect("base")).collect();
    // The first base has a spare an earlier commit kept: a commit reuses it (rename, open,
    // overwrite, truncate), and the other base of a pair gets a new pre-image file.
    let first = bases[0].file_name().expect("a name").to_string_lossy();
    let spare = t.spare(&first);
    fs::write(&spare, vec![0x5e; 3 * old[0].len()]).expect("plant a spare");
    fs::set_permissions(&spare, fs::Permissions::from_mode(0o600)).expect("chmod the spare");
    let mut case = Case {
        t,
        tx: String::new(),
        bases,
        old,
        new: Vec::new(),
        kind,
        leaked: Cell::new(false),
    };
    if swept == Swept::Begin {
        return case;
    }
    let base_refs: Vec<&Path> = case.bases.iter().map(PathBuf::as_path).collect();
    let tx = case.t.begin(&base_refs);
    for (i, img) in tx.images.iter().enumerate() {
        let (size, commands) = edits(kind, i);
        if let Some(size) = size {
            qemu_img(&[
                "resize".as_ref(),
                "-q".as_ref(),
                img.overlay.as_os_str(),
                size.as_ref(),
            ]);
        }
        edit(&img.overlay, "qcow2", commands);
    }
    case.tx = tx.id;
    if let Swept::Recover { .. } = swept {
        // Stopped by the engine's own test hook right after the commit record is durable,
        // so recover has every base still to write (or to restore).
        let mut cmd = case.t.command();
        cmd.env("IMGTX_TEST_CRASH_AFTER", "commit-point")
            .args(["commit", &case.tx]);
        let out = run(&mut cmd);
        assert_eq!(out.status.code(), Some(137), "{}", describe(&cmd, &out));
    }
    case
}

impl Case {
    /// Computes the new content from the overlays (they must still exist).
    fn expect(&mut self) {
        let overlays = self.overlays();
        self.new = overlays
            .iter()
            .map(|o| guest_content(&self.t, o, "qcow2"))
            .collect();
    }

    /// The overlay paths of `self.tx` (as `begin` names them).
    fn overlays(&self) -> Vec<PathBuf> {
        self.bases
            .iter()
            .map(|b| {
                let name = b.file_name().unwrap().to_string_lossy();
                b.with_file_name(format!("{name}.{}.imgtx.qcow2", self.tx))
            })
            .collect()
    }

    fn base_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .bases
            .iter()
            .map(|b| b.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// What every base holds now: all old or all new, or a panic naming the odd one.
    fn ended(&self, ctx: &str) -> Ended {
        let mut states = Vec::new();
        for (i, base) in self.bases.iter().enumerate() {
            let bytes = fs::read(base).expect("base");
            let state = if bytes == self.old[i] {
                Ended::Old
            } else if self.kind == Bases::Qcow2 {
                assert!(
                    guest_content(&self.t, base, "qcow2") == self.new[i],
                    "{ctx}: base {} is neither bit-identical to its old content nor new",
                    base.display()
                );
                self.check_qcow2(base, ctx);
                Ended::New
            } else {
                assert!(
                    bytes == self.new[i],
                    "{ctx}: base {} is neither bit-identical to its old content nor new \
                     (len {:#x}, old {:#x}, new {:#x})",
                    base.display(),
                    bytes.len(),
                    self.old[i].len(),
                    self.new[i].len()
                );
                Ended::New
            };
            states.push(state);
        }
        assert!(
            states.windows(2).all(|w| w[0] == w[1]),
            "{ctx}: the bases disagree: {states:?}"
        );
        states[0]
    }

    /// `qemu-img check`: no corruption. Leaked clusters (allocated, referenced by nothing:
    /// status 3) are what a `qemu-img commit` killed between allocating and referencing
    /// leaves, and a rerun does not reclaim them; qcow2 allows them (space only, no data),
    /// so they are counted in [`Case::leaked`] rather than failed.
    fn check_qcow2(&self, base: &Path, ctx: &str) {
        let mut cmd = Command::new("qemu-img");
        cmd.arg("check").arg(base);
        let out = run(&mut cmd);
        match out.status.code() {
            Some(0) => {}
            Some(3) => self.leaked.set(true),
            _ => panic!(
                "{ctx}: the new qcow2 base does not check clean{}",
                describe(&cmd, &out)
            ),
        }
    }

    /// The ids of the registered transactions.
    fn open_ids(&self) -> Vec<String> {
        self.t
            .transactions()
            .iter()
            .map(|v| v["id"].as_str().expect("status: an id").to_owned())
            .collect()
    }

    /// Asserts nothing is left of any transaction: beside the bases only the bases, and in
    /// the state directory no manifest, temporary or claim. Returns the number of empty lock
    /// files of transactions that no longer exist: a kill between removing the manifest and
    /// removing the lock file leaves one, and nothing removes it later (counted, see
    /// docs/crash-safety.md).
    fn assert_clean(&self, ctx: &str) -> u32 {
        assert_eq!(
            listing_but_spares(&self.t.images()),
            self.base_names(),
            "{ctx}: stray files beside the bases"
        );
        let state = self.t.state_dir();
        for sub in ["txns", "claims"] {
            let dir = state.join(sub);
            if dir.exists() {
                assert_eq!(
                    listing(&dir),
                    Vec::<String>::new(),
                    "{ctx}: stray files in state/{sub}"
                );
            }
        }
        let locks = state.join("locks");
        if !locks.exists() {
            return 0;
        }
        let mut orphans = 0;
        for name in listing(&locks) {
            if name == "history.lock" {
                continue;
            }
            let path = locks.join(&name);
            assert!(
                name.ends_with(".lock") && fs::metadata(&path).is_ok_and(|m| m.len() == 0),
                "{ctx}: stray file state/locks/{name}"
            );
            orphans += 1;
        }
        orphans
    }

    /// Asserts each overlay is a valid qcow2 image backed by its base, by absolute path and
    /// with the base's format (T12: an open transaction left by a killed `begin` is whole).
    fn assert_overlays_back_their_bases(&self, ctx: &str) {
        for (base, overlay) in self.bases.iter().zip(self.overlays()) {
            let info = qemu_img(&[
                "info".as_ref(),
                "--output=json".as_ref(),
                overlay.as_os_str(),
            ]);
            let info: serde_json::Value = serde_json::from_str(&info).expect("qemu-img info JSON");
            assert_eq!(info["format"], "qcow2", "{ctx}: {info}");
            assert_eq!(
                info["backing-filename"].as_str(),
                base.to_str(),
                "{ctx}: {info}"
            );
            assert_eq!(
                info["backing-filename-format"].as_str(),
                Some(self.format()),
                "{ctx}: {info}"
            );
        }
    }

    fn format(&self) -> &'static str {
        if self.kind == Bases::Qcow2 {
            "qcow2"
        } else {
            "raw"
        }
    }

    /// Asserts the open transaction `self.tx` is whole: its overlays and claims beside the
    /// bases.
    fn assert_open(&self, ctx: &str) {
        let mut want = self.base_names();
        want.extend(
            self.overlays()
                .iter()
                .map(|o| o.file_name().unwrap().to_string_lossy().into_owned()),
        );
        want.extend(
            self.base_names()
                .iter()
                .map(|b| format!(".{b}.imgtx.claim")),
        );
        want.sort();
        assert_eq!(
            listing_but_spares(&self.t.images()),
            want,
            "{ctx}: an open transaction with files missing or stray"
        );
    }
}

/// `imgtx --state-dir STATE ARGS` under strace with `filter` options.
fn under_strace(t: &TestDir, filter: &[String], args: &[String]) -> Command {
    let mut cmd = Command::new("strace");
    cmd.current_dir(t.path()).arg("-f").arg("-qq");
    cmd.args(filter);
    cmd.arg(imgtx_bin())
        .arg("--state-dir")
        .arg(t.state_dir())
        .args(args);
    cmd
}

/// Whether an `mmap` line maps a file shared and writable (a change with no syscall). The
/// rings of an io_uring (qemu-img polls through one) are shared writable mappings of its fd,
/// not of a file; `rings` holds the (thread, fd) pairs `io_uring_setup` returned.
fn writable_shared_file_mapping(pid: &str, line: &str, rings: &[(String, String)]) -> bool {
    let args = line.split_once('(').map_or("", |(_, rest)| rest);
    let fd = args.split(", ").nth(4).unwrap_or("-1").trim();
    line.contains("MAP_SHARED")
        && line.contains("PROT_WRITE")
        && fd != "-1"
        && !rings.iter().any(|(p, f)| p == pid && f == fd)
}

/// Mutating syscall counts of `imgtx ARGS` (largest per thread), from a clean run traced with
/// every syscall; panics on a syscall that is neither swept nor known to change no file.
fn count_calls(case: &Case, args: &[String]) -> BTreeMap<String, u32> {
    let log = case.t.path().join("strace.log");
    let filter = vec!["-o".into(), log.display().to_string()];
    let mut cmd = under_strace(&case.t, &filter, args);
    expect_code(&mut cmd, exit::OK);
    let text = fs::read_to_string(&log).expect("strace log");
    fs::remove_file(&log).expect("remove strace log");
    let mut per: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut unknown = Vec::new();
    let mut rings = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(pid), Some(call)) = (words.next(), words.next()) else {
            continue;
        };
        // A call another thread interrupted in the log ends on a `<... NAME resumed>` line.
        let resumed = call == "<...";
        let name = if resumed {
            words.next().unwrap_or("")
        } else {
            call.split('(').next().unwrap_or("")
        };
        if name == "io_uring_setup" && !line.ends_with("<unfinished ...>") {
            if let Some((_, fd)) = line.rsplit_once(") = ") {
                rings.push((pid.to_owned(), fd.trim().to_owned()));
            }
        }
        if resumed || name.is_empty() || call.starts_with("+++") || call.starts_with("---") {
            continue;
        }
        if MUTATING.contains(&name) {
            *per.entry((name.to_owned(), pid.to_owned())).or_default() += 1;
        } else if !NON_MUTATING.contains(&name)
            || (name == "mmap" && writable_shared_file_mapping(pid, line, &rings))
            // A reflink (pre-images on XFS or btrfs) changes the pre-image file: sweeping it
            // needs its own kill points. On this ext4 imgtx never issues one.
            || (name == "ioctl" && line.contains("FICLONE"))
        {
            unknown.push(line.to_owned());
        }
    }
    assert!(
        unknown.is_empty(),
        "imgtx {args:?} made syscalls the sweep neither kills at nor knows to change no file; \
         add each to MUTATING or (if it cannot change a file) NON_MUTATING:\n{}",
        unknown.join("\n")
    );
    let mut max: BTreeMap<String, u32> = BTreeMap::new();
    for ((name, _), n) in per {
        let m = max.entry(name).or_default();
        *m = (*m).max(n);
    }
    max
}

fn command_args(case: &Case, swept: Swept) -> Vec<String> {
    let mut a: Vec<String> = match swept {
        Swept::Begin => vec!["begin".into()],
        Swept::Commit { no_undo } => {
            let mut a = vec!["commit".to_owned(), case.tx.clone()];
            if no_undo {
                a.push("--no-undo".into());
            }
            a
        }
        Swept::Rollback => vec!["rollback".into(), case.tx.clone()],
        Swept::Recover { undo } => {
            let mut a = vec!["recover".to_owned()];
            if undo {
                a.push("--undo".into());
            }
            a
        }
    };
    if swept == Swept::Begin {
        a.extend(case.bases.iter().map(|b| b.display().to_string()));
    }
    a
}

/// After the kill at `exit_group`, nothing is left to do: the directory already holds what an
/// uninterrupted run leaves (only checked when no child process ran, since a kill there lands
/// in `qemu-img` first and changes what imgtx does next).
fn check_finished_before_exit(case: &mut Case, swept: Swept, ctx: &str) {
    let open = case.open_ids();
    if swept.leaves_open() {
        assert_eq!(open.len(), 1, "{ctx}: begin ran to its end, yet {open:?}");
        case.tx.clone_from(&open[0]);
        case.assert_open(ctx);
    } else {
        assert!(open.is_empty(), "{ctx}: finished, yet {open:?} still open");
        assert_eq!(
            case.assert_clean(ctx),
            0,
            "{ctx}: a lock file outlived its run"
        );
    }
    assert_eq!(
        case.ended(ctx),
        swept.promised(),
        "{ctx}: before exit_group"
    );
}

/// Recovers a directory after a kill of `swept` and checks the outcome; returns it and the
/// number of orphan lock files.
fn settle(case: &mut Case, swept: Swept, told: bool, ctx: &str) -> (Ended, u32) {
    if matches!(swept, Swept::Begin | Swept::Rollback) {
        // Neither command ever writes a base, killed or not.
        assert_eq!(case.ended(ctx), Ended::Old, "{ctx}: right after the kill");
    }
    let recover: Vec<&str> = match swept {
        Swept::Recover { undo: true } => vec!["recover", "--undo"],
        _ => vec!["recover"],
    };
    let out = case.t.imgtx(&recover);
    assert_eq!(
        out.status.code(),
        Some(exit::OK),
        "{ctx}: recover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Recovery is idempotent: running it again must succeed over the finished state.
    case.t.imgtx_ok(&recover);
    let ended = case.ended(ctx);
    let open = case.open_ids();
    match swept {
        Swept::Commit { .. } => {
            assert!(
                !(told && ended == Ended::Old),
                "{ctx}: commit reported success, recover went back to old"
            );
            if !open.is_empty() {
                assert_eq!(ended, Ended::Old, "{ctx}: still open over a new base");
                case.assert_open(ctx);
                // The transaction survived whole: it still commits to the new content.
                case.t.imgtx_ok(&["commit", &case.tx]);
                assert_eq!(case.ended(ctx), Ended::New, "{ctx}: re-commit");
            }
        }
        Swept::Begin => {
            assert_eq!(ended, Ended::Old, "{ctx}: begin changed a base");
            assert!(open.len() <= 1, "{ctx}: {open:?}");
            assert!(
                !told || open.len() == 1,
                "{ctx}: begin reported success, recover dropped the transaction"
            );
            if let Some(id) = open.first() {
                case.tx.clone_from(id);
                case.assert_open(ctx);
                case.assert_overlays_back_their_bases(ctx);
                case.t.imgtx_ok(&["rollback", id]);
            }
        }
        Swept::Rollback => {
            assert_eq!(ended, Ended::Old, "{ctx}: rollback changed a base");
            if !open.is_empty() {
                assert!(
                    !told,
                    "{ctx}: rollback reported success, {open:?} still open"
                );
                assert_eq!(open, vec![case.tx.clone()], "{ctx}");
                case.assert_open(ctx);
                // Killed before it marked the transaction: rolling back again finishes it.
                case.t.imgtx_ok(&["rollback", &case.tx]);
            }
        }
        Swept::Recover { undo } => {
            // Past the commit point every recovery goes one way, killed or not.
            let want = if undo { Ended::Old } else { Ended::New };
            assert_eq!(ended, want, "{ctx}: recovery changed direction");
            assert!(open.is_empty(), "{ctx}: {open:?} still open");
        }
    }
    (ended, case.assert_clean(ctx))
}

/// Kills `swept` at (a sample of) every mutating syscall, and once after the last, and
/// checks each outcome. `sample` is the number of syscall points CI runs.
fn sweep(kind: Bases, swept: Swept, sample: usize) {
    if !require_tools(&["qemu-img", "qemu-io", "strace"]) {
        return;
    }
    let (counts, old, new) = {
        let mut case = prepare(kind, swept);
        if swept == Swept::Begin {
            // Nothing to commit: "new" is the old content.
            case.new.clone_from(&case.old);
        } else {
            case.expect();
        }
        let args = command_args(&case, swept);
        (count_calls(&case, &args), case.old, case.new)
    };
    let points: Vec<(String, u32)> = counts
        .iter()
        .flat_map(|(name, &n)| (1..=n).map(move |i| (name.clone(), i)))
        .collect();
    let mut chosen: Vec<(String, u32)> = if full() || points.len() <= sample {
        points.clone()
    } else {
        let step = points.len() as f64 / sample as f64;
        (0..sample)
            .map(|i| points[(i as f64 * step) as usize].clone())
            .collect()
    };
    chosen.push((AFTER_LAST.to_owned(), 1));
    let label = format!("{swept:?} over {kind:?}");
    let (mut killed, mut ended_old, mut ended_new, mut orphan_locks, mut leaked) = (0, 0, 0, 0, 0);
    for (name, n) in &chosen {
        let mut case = prepare(kind, swept);
        case.old.clone_from(&old);
        case.new.clone_from(&new);
        let ctx = format!("{label} killed at {name} #{n}");
        let filter: Vec<String> = vec![
            "-o".into(),
            "/dev/null".into(),
            "-e".into(),
            format!("trace={name}"),
            "-e".into(),
            format!("inject={name}:signal=KILL:when={n}"),
        ];
        let args = command_args(&case, swept);
        let out = run(&mut under_strace(&case.t, &filter, &args));
        let told = out.status.code() == Some(exit::OK);
        killed += u32::from(!told);
        if name == AFTER_LAST {
            assert!(!told, "{ctx}: not killed");
            if kind != Bases::Qcow2 {
                check_finished_before_exit(&mut case, swept, &ctx);
            }
        }
        let (ended, orphans) = settle(&mut case, swept, told, &ctx);
        match ended {
            Ended::Old => ended_old += 1,
            Ended::New => ended_new += 1,
        }
        orphan_locks += orphans;
        // `recover` removes lock files whose transaction is gone (a kill between removing
        // the manifest and the lock file used to leave one for good).
        assert_eq!(orphans, 0, "{ctx}: recover left an orphan lock file");
        leaked += u32::from(case.leaked.get());
    }
    eprintln!(
        "strace kill sweep ({label}): {} syscall points + exit ({} run), {killed} killed, \
         ended old {ended_old} / new {ended_new}, orphan lock files {orphan_locks}, \
         qcow2 bases with leaked clusters {leaked}",
        points.len(),
        chosen.len()
    );
}

#[test]
fn a_raw_commit_killed_before_any_mutating_syscall_recovers_old_or_new() {
    sweep(Bases::Raw, Swept::Commit { no_undo: false }, 14);
}

#[test]
fn a_raw_commit_without_undo_killed_before_any_mutating_syscall_recovers_old_or_new() {
    sweep(Bases::Raw, Swept::Commit { no_undo: true }, 10);
}

#[test]
fn a_two_image_commit_killed_before_any_mutating_syscall_recovers_both_old_or_both_new() {
    sweep(Bases::RawPair, Swept::Commit { no_undo: false }, 10);
}

#[test]
fn a_qcow2_commit_killed_in_imgtx_or_qemu_img_recovers_old_or_new() {
    sweep(Bases::Qcow2, Swept::Commit { no_undo: false }, 12);
}

#[test]
fn a_begin_killed_before_any_mutating_syscall_leaves_the_bases_untouched_and_no_strays() {
    sweep(Bases::RawPair, Swept::Begin, 8);
}

#[test]
fn a_rollback_killed_before_any_mutating_syscall_is_finished_over_the_old_base() {
    sweep(Bases::Raw, Swept::Rollback, 6);
}

#[test]
fn a_recovery_killed_before_any_mutating_syscall_still_ends_new_when_rerun() {
    sweep(Bases::RawPair, Swept::Recover { undo: false }, 8);
}

#[test]
fn an_undo_recovery_killed_before_any_mutating_syscall_still_ends_old_when_rerun() {
    sweep(Bases::Raw, Swept::Recover { undo: true }, 6);
}

#[test]
fn a_qcow2_recovery_killed_in_imgtx_or_qemu_img_still_ends_new_when_rerun() {
    sweep(Bases::Qcow2, Swept::Recover { undo: false }, 6);
}
