//! Ctrl-C, SIGTERM and a killed imgtx during `commit`, against the real binary: before the
//! commit point a signal stops the commit and changes nothing; after it, the commit is
//! finished first; a `qemu-img commit` child dies with its imgtx and recovery waits for it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::util::{exit, qcow2_io, qemu_img, require_tools, sha256, TestDir};

const MIB: u64 = 1 << 20;

/// A raw base of `size_mib` MiB whose overlay rewrites most of it, ready to commit.
fn large_change(t: &TestDir, size_mib: u64) -> (String, PathBuf) {
    let base = t.raw_image("disk.img", size_mib * MIB, 3);
    let tx = t.begin(&[&base]);
    let cmd = format!("write -P 0x3c 0 {}M", size_mib * 3 / 4);
    qcow2_io(tx.overlay(), &cmd);
    (tx.id, base)
}

/// Starts `imgtx commit --json TX` (progress events on stderr, one JSON line each).
fn start_commit(t: &TestDir, tx: &str, extra: &[&str]) -> (Child, BufReader<ChildStderr>) {
    let mut cmd = t.command();
    cmd.arg("commit")
        .arg("--json")
        .args(extra)
        .arg(tx)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("start imgtx commit");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    (child, stderr)
}

/// Reads progress events until one of `phase` arrives; false if the commit ended first.
fn wait_for_phase(events: &mut BufReader<ChildStderr>, phase: &str) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        if events.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["phase"] == phase && v["done"] != v["total"] {
            return true;
        }
    }
}

/// Waits for `child` (at most 60 s); its exit code and the rest of its stderr.
fn finish(mut child: Child, mut events: BufReader<ChildStderr>) -> (Option<i32>, String) {
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut events, &mut rest);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.code(), rest);
        }
        assert!(Instant::now() < deadline, "imgtx did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_signal_before_the_commit_point_stops_the_commit_and_changes_nothing() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let t = TestDir::new();
        let (tx, base) = large_change(&t, 256);
        let before = sha256(&base);
        let (child, mut events) = start_commit(&t, &tx, &[]);
        assert!(
            wait_for_phase(&mut events, "pre-images"),
            "no pre-image phase"
        );

        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let (code, stderr) = finish(child, events);

        assert_eq!(code, Some(128 + sig as i32), "{sig}: {stderr}");
        assert!(stderr.contains("nothing was changed"), "{sig}: {stderr}");
        assert_eq!(sha256(&base), before, "{sig}: the base changed");
        let status = t.transactions();
        assert_eq!(status[0]["state"], "open", "{sig}: {status:#?}");
        // Nothing of the attempt is left beside the base.
        let mut names: Vec<String> = std::fs::read_dir(t.images())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".imgtx.spare"))
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                ".disk.img.imgtx.claim".to_owned(),
                "disk.img".to_owned(),
                format!("disk.img.{tx}.imgtx.qcow2")
            ]
        );
        // And it still commits.
        t.imgtx_ok(&["commit", &tx]);
    }
}

#[test]
fn a_signal_after_the_commit_point_is_answered_by_finishing_the_commit() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (tx, base) = large_change(&t, 512);
    let overlay = t.image(&format!("disk.img.{tx}.imgtx.qcow2"));
    let expected = t.path().join("expected.raw");
    qemu_img(&[
        "convert".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        overlay.as_os_str(),
        expected.as_os_str(),
    ]);
    let (child, mut events) = start_commit(&t, &tx, &["--no-undo"]);
    assert!(wait_for_phase(&mut events, "apply"), "no apply phase");

    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let _ = kill(pid, Signal::SIGINT);
    let (code, stderr) = finish(child, events);

    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("the commit was finished"), "{stderr}");
    // The second Ctrl-C (20 ms after the first, hundreds of MiB before the end) is told why.
    assert!(stderr.contains("still finishing"), "{stderr}");
    assert_eq!(
        sha256(&base),
        sha256(&expected),
        "the base is not the new content"
    );
    t.assert_no_transactions();
}

/// The pids of the processes named `name` whose parent is `parent`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid: u32 = rest
            .split(' ')
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        if ppid == parent && comm.ends_with(&format!("({name}")) {
            found.push(pid);
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn a_killed_imgtx_takes_its_qemu_img_child_with_it_and_undo_restores_the_exact_base() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.image("disk.qcow2");
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        base.as_os_str(),
        "1G".as_ref(),
    ]);
    qcow2_io(&base, "write -P 0x11 0 64M");
    let before = sha256(&base);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x22 0 768M");
    let mut cmd = t.command();
    cmd.args(["commit", &tx.id])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut imgtx = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let child = loop {
        if let Some(&pid) = children_named(imgtx.id(), "qemu-img").first() {
            break pid;
        }
        assert!(
            imgtx.try_wait().unwrap().is_none(),
            "the commit ended before qemu-img ran"
        );
        assert!(Instant::now() < deadline, "qemu-img never started");
        std::thread::sleep(Duration::from_millis(5));
    };

    // Stopped, the child cannot finish its job and exit by itself before the check below:
    // only its parent's death (the parent-death signal, SIGKILL, which reaches a stopped
    // process too) can end it.
    let pid = Pid::from_raw(i32::try_from(child).unwrap());
    let _ = kill(pid, Signal::SIGSTOP);
    imgtx.kill().unwrap(); // SIGKILL to imgtx alone
    imgtx.wait().unwrap();
    let gone = Instant::now() + Duration::from_secs(5);
    while alive(child) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(10));
    }
    let survived = alive(child);
    if survived {
        let _ = kill(pid, Signal::SIGKILL);
    }
    assert!(!survived, "qemu-img {child} outlived its imgtx");

    t.imgtx_ok(&["recover", "--undo"]);
    // Whatever a surviving writer would still do, it would do now.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sha256(&base), before, "the base is not its old self");
    let out = crate::util::run(
        std::process::Command::new("qemu-img").args(["check".as_ref(), base.as_os_str()]),
    );
    assert_eq!(
        out.status.code(),
        Some(exit::OK),
        "qemu-img check of the restored base"
    );
}
