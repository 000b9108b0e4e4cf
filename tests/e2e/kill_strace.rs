//! The real binary killed before each of its mutating system calls (T1 at the process level):
//! `strace -f -e inject=SYSCALL:signal=KILL:when=N` delivers SIGKILL on entry to the N-th call
//! of one syscall, in imgtx or in the `qemu-img` it runs for qcow2 bases, with no hook in the
//! code. After each kill `imgtx recover` must leave the base bit-identical to its old content
//! or holding its new content, report success only over new content, and leave no stray file.
//!
//! strace counts invocations per syscall and per process, so the sweep counts a clean run's
//! calls per syscall (the largest count of any process) and kills at every (syscall, N).
//! CI runs an evenly spaced sample; `IMGTX_CRASH_SWEEP=full` runs every point.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{
    describe, exit, imgtx_bin, listing, qemu_img, qemu_io, require_tools, run, TestDir,
};

const MUTATING: &str = "pwrite64,pwritev,pwritev2,write,fdatasync,fsync,ftruncate,fallocate,\
                        unlink,unlinkat,rename,renameat,renameat2,openat,mkdir,mkdirat";
const KIB: u64 = 1 << 10;
const SAMPLE: usize = 14;

fn full() -> bool {
    std::env::var("IMGTX_CRASH_SWEEP").is_ok_and(|v| v == "full")
}

/// `imgtx --state-dir STATE ARGS` under strace with `filter` options.
fn under_strace(t: &TestDir, filter: &[String], args: &[&str]) -> Command {
    let mut cmd = Command::new("strace");
    cmd.current_dir(t.path()).arg("-f").arg("-qq");
    cmd.args(filter);
    cmd.arg(imgtx_bin())
        .arg("--state-dir")
        .arg(t.state_dir())
        .args(args);
    cmd
}

/// Mutating syscall counts of `imgtx ARGS` (largest per process), from a clean traced run.
fn count_calls(t: &TestDir, args: &[&str]) -> BTreeMap<String, u32> {
    let log = t.path().join("strace.log");
    let filter = vec![
        "-o".into(),
        log.display().to_string(),
        "-e".into(),
        format!("trace={MUTATING}"),
    ];
    let mut cmd = under_strace(t, &filter, args);
    let out = run(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(exit::OK),
        "{}",
        describe(&cmd, &out)
    );
    let text = fs::read_to_string(&log).expect("strace log");
    fs::remove_file(&log).expect("remove strace log");
    let mut per: BTreeMap<(String, String), u32> = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(pid), Some(call)) = (words.next(), words.next()) else {
            continue;
        };
        if call.starts_with("<...") || call.starts_with("+++") || call.starts_with("---") {
            continue;
        }
        if let Some(name) = call.split('(').next().filter(|n| !n.is_empty()) {
            *per.entry((name.to_owned(), pid.to_owned())).or_default() += 1;
        }
    }
    let mut max: BTreeMap<String, u32> = BTreeMap::new();
    for ((name, _), n) in per {
        let m = max.entry(name).or_default();
        *m = (*m).max(n);
    }
    max
}

/// One prepared transaction over one base, with the content it had and will have.
struct Prepared {
    t: TestDir,
    tx: String,
    base: PathBuf,
    overlay: PathBuf,
    old: Vec<u8>,
    new_guest: Vec<u8>,
    qcow2: bool,
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

fn prepare(qcow2: bool) -> Prepared {
    let t = TestDir::new();
    let base = if qcow2 {
        let b = t.image("base.qcow2");
        qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            b.as_os_str(),
            "1M".as_ref(),
        ]);
        let io = |c: &str| {
            qemu_io(&[
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-c".as_ref(),
                c.as_ref(),
                b.as_os_str(),
            ])
        };
        io("write -P 0x61 0 256k");
        io("write -P 0x62 640k 64k");
        b
    } else {
        t.raw_image("base.img", 1024 * KIB, 5)
    };
    let old = fs::read(&base).expect("base");
    let tx = t.begin(&[&base]);
    let overlay = tx.images[0].overlay.clone();
    qemu_img(&[
        "resize".as_ref(),
        "-q".as_ref(),
        overlay.as_os_str(),
        "1536K".as_ref(),
    ]);
    for c in [
        "write -P 0x71 4k 100k",
        "write -z 512k 64k",
        "write -c -P 0x72 768k 64k",
        "write -P 0x73 1200k 8k",
    ] {
        qemu_io(&[
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-c".as_ref(),
            c.as_ref(),
            overlay.as_os_str(),
        ]);
    }
    let new_guest = guest_content(&t, &overlay, "qcow2");
    Prepared {
        t,
        tx: tx.id,
        base,
        overlay,
        old,
        new_guest,
        qcow2,
    }
}

/// Checks the directory after a kill and a recover; returns whether the base ended new.
fn check(p: &Prepared, told_success: bool, ctx: &str) -> bool {
    let t = &p.t;
    let out = t.imgtx(&["recover"]);
    assert_eq!(
        out.status.code(),
        Some(exit::OK),
        "{ctx}: recover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.imgtx_ok(&["recover"]);
    let now = fs::read(&p.base).expect("base");
    let is_old = now == p.old;
    let format = if p.qcow2 { "qcow2" } else { "raw" };
    let is_new = !is_old && guest_content(t, &p.base, format) == p.new_guest;
    assert!(
        is_old || is_new,
        "{ctx}: the base is neither bit-identical to its old content nor new"
    );
    if p.qcow2 && is_new {
        qemu_img(&["check".as_ref(), "-q".as_ref(), p.base.as_os_str()]);
    }
    assert!(
        !(told_success && is_old),
        "{ctx}: commit reported success, recover went back to old"
    );
    let open = t.transactions().len();
    let base_name = p.base.file_name().unwrap().to_string_lossy().into_owned();
    let overlay_name = p
        .overlay
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut want = vec![base_name];
    if open == 1 {
        assert!(
            is_old,
            "{ctx}: the transaction is still open over a new base"
        );
        want.push(overlay_name);
        want.sort();
    }
    assert_eq!(
        listing(&t.images()),
        want,
        "{ctx}: stray files beside the base"
    );
    if open == 1 {
        // The transaction survived whole: it still commits to the new content.
        t.imgtx_ok(&["commit", &p.tx]);
        assert_eq!(
            guest_content(t, &p.base, format),
            p.new_guest,
            "{ctx}: re-commit"
        );
    }
    is_new
}

/// Kills `imgtx commit` at (a sample of) every mutating syscall and checks each outcome.
fn sweep(qcow2: bool, extra: &[&str]) {
    if !require_tools(&["qemu-img", "qemu-io", "strace"]) {
        return;
    }
    let commit_args = |tx: &str| {
        let mut a = vec!["commit".to_owned(), tx.to_owned()];
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let counts = {
        let p = prepare(qcow2);
        let args = commit_args(&p.tx);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        count_calls(&p.t, &args)
    };
    let points: Vec<(String, u32)> = counts
        .iter()
        .flat_map(|(name, &n)| (1..=n).map(move |i| (name.clone(), i)))
        .collect();
    let chosen: Vec<&(String, u32)> = if full() || points.len() <= SAMPLE {
        points.iter().collect()
    } else {
        let step = points.len() as f64 / SAMPLE as f64;
        (0..SAMPLE)
            .map(|i| &points[(i as f64 * step) as usize])
            .collect()
    };
    let (mut killed, mut old, mut new) = (0, 0, 0);
    for (name, n) in chosen {
        let p = prepare(qcow2);
        let ctx = format!(
            "commit{} of a {} base killed at {name} #{n}",
            extra.join(" "),
            if qcow2 { "qcow2" } else { "raw" }
        );
        let filter: Vec<String> = vec![
            "-o".into(),
            "/dev/null".into(),
            "-e".into(),
            format!("trace={name}"),
            "-e".into(),
            format!("inject={name}:signal=KILL:when={n}"),
        ];
        let args = commit_args(&p.tx);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&mut under_strace(&p.t, &filter, &args));
        let told = out.status.code() == Some(exit::OK);
        killed += u32::from(!told);
        if check(&p, told, &ctx) {
            new += 1;
        } else {
            old += 1;
        }
    }
    eprintln!(
        "strace kill sweep ({}{}): {} syscall points ({} run), {killed} killed, ended old {old} / new {new}",
        if qcow2 { "qcow2" } else { "raw" },
        extra.join(" "),
        points.len(),
        old + new
    );
}

#[test]
fn a_raw_commit_killed_before_any_mutating_syscall_recovers_old_or_new() {
    sweep(false, &[]);
}

#[test]
fn a_raw_commit_without_undo_killed_before_any_mutating_syscall_recovers_old_or_new() {
    sweep(false, &["--no-undo"]);
}

#[test]
fn a_qcow2_commit_killed_in_imgtx_or_qemu_img_recovers_old_or_new() {
    sweep(true, &[]);
}
