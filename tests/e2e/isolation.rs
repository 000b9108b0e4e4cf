//! One transaction per image, whatever state directory or user begins another, against the
//! real binary: claims beside the image, waiting that works across state directories,
//! qemu kept out while `run` runs, recovery from another state directory.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::util::{
    exit, expect_code, imgtx_bin, qcow2_io, qemu_io, require_tools, run, stderr_of, tree, Begun,
    TestDir,
};

const MIB: u64 = 1 << 20;

/// An `imgtx --state-dir DIR` command for a second state directory `dir`.
fn other(dir: &Path) -> Command {
    let mut cmd = Command::new(imgtx_bin());
    cmd.arg("--state-dir").arg(dir).stdin(Stdio::null());
    cmd
}

fn second_state(t: &TestDir) -> PathBuf {
    let dir = t.path().join("state2");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
fn a_second_state_directory_cannot_begin_an_image_the_first_holds() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let tx = t.imgtx_json(&["begin", "--name", "upgrade", base.to_str().unwrap()]);
    let id = tx["id"].as_str().unwrap().to_owned();
    let s2 = second_state(&t);

    let out = run(other(&s2).arg("begin").arg(&base));

    assert_eq!(out.status.code(), Some(exit::BUSY), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.contains(&id), "names the holder: {err}");
    assert!(err.contains("\"upgrade\""), "names its name: {err}");
    assert!(
        err.contains("root@") || err.contains('@'),
        "names user@host: {err}"
    );
    // And the other way round: the second state directory's transaction keeps the first out.
    t.imgtx_ok(&["rollback", &id]);
    let out = run(other(&s2).args(["begin", "--json"]).arg(&base));
    assert!(out.status.success(), "{}", stderr_of(&out));
    t.imgtx_code(&["begin", base.to_str().unwrap()], exit::BUSY);
}

#[test]
fn another_user_with_a_state_directory_of_its_own_is_kept_out_both_ways() {
    if !require_tools(&["qemu-img"]) || !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run imgtx as another user");
        return;
    }
    let t = TestDir::new();
    // A directory and an image the other user may write too.
    for d in [t.path(), t.images().as_path()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let base = t.raw_image("shared.img", MIB, 2);
    fs::set_permissions(&base, fs::Permissions::from_mode(0o666)).unwrap();
    let home = t.path().join("nobody-state");
    fs::create_dir(&home).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(&home, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(imgtx_bin())
            .arg("--state-dir")
            .arg(&home)
            .args(args)
            .stdin(Stdio::null());
        run(&mut cmd)
    };
    let b = base.to_str().unwrap();

    let mine = t.begin(&[&base]);
    let theirs = as_nobody(&["begin", b]);
    assert_eq!(
        theirs.status.code(),
        Some(exit::BUSY),
        "{}",
        stderr_of(&theirs)
    );
    assert!(
        stderr_of(&theirs).contains(&mine.id),
        "{}",
        stderr_of(&theirs)
    );
    t.imgtx_ok(&["rollback", &mine.id]);

    let theirs = as_nobody(&["begin", "--json", b]);
    assert!(theirs.status.success(), "{}", stderr_of(&theirs));
    let out = t.imgtx_code(&["begin", b], exit::BUSY);
    assert!(stderr_of(&out).contains("nobody@"), "{}", stderr_of(&out));
}

/// Starts `imgtx --state-dir DIR begin --json --wait BASE` and returns it with its stderr.
fn start_waiting(
    dir: &Path,
    base: &Path,
) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    let mut child = other(dir)
        .args(["begin", "--json", "--wait"])
        .arg(base)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    (child, stderr)
}

/// Reads stderr lines until one says whom the begin waits for.
fn wait_announced(stderr: &mut BufReader<std::process::ChildStderr>) -> Value {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the waiting begin said nothing"
        );
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["event"] == "waiting" {
                return v;
            }
        }
    }
}

#[test]
fn a_waiting_begin_in_another_state_directory_gets_the_image_after_a_commit_and_commits_too() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 3);
    let first = t.begin(&[&base]);
    qcow2_io(first.overlay(), "write -P 0x11 0 1M");
    let s2 = second_state(&t);
    let (waiter, mut stderr) = start_waiting(&s2, &base);

    let said = wait_announced(&mut stderr);
    assert!(said["for"].as_str().unwrap().contains(&first.id), "{said}");
    assert_eq!(said["holder"]["tx"], first.id.as_str(), "{said}");
    assert!(said["holder"]["user"].is_string(), "{said}");
    // While it waits it has written nothing: no transaction in its state directory.
    let status = run(other(&s2).args(["status", "--json"]));
    let v: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["transactions"], Value::Array(Vec::new()), "{v}");
    t.imgtx_ok(&["commit", &first.id]);
    let out = waiter.wait_with_output().unwrap();

    assert!(out.status.success(), "the waiter failed");
    let second = Begun::from_json(&serde_json::from_slice(&out.stdout).unwrap());
    qcow2_io(second.overlay(), "write -P 0x22 1M 1M");
    // The base changed under the wait (the first commit): the waiter took it as it is now.
    let out = run(other(&s2).args(["commit", &second.id]));
    assert!(out.status.success(), "{}", stderr_of(&out));
    let now = fs::read(&base).unwrap();
    assert!(now[..MIB as usize].iter().all(|&b| b == 0x11));
    assert!(now[MIB as usize..2 * MIB as usize]
        .iter()
        .all(|&b| b == 0x22));
}

#[test]
fn a_waiting_begin_waits_for_the_holders_tools_and_ctrl_c_leaves_nothing() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 4);
    let first = t.begin(&[&base]);
    // The holder's editing tool: qemu-io on the overlay, which opens the base as its
    // backing file, and stays.
    let mut tool = Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(first.overlay())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let s2 = second_state(&t);
    let (waiter, mut stderr) = start_waiting(&s2, &base);
    wait_announced(&mut stderr);
    // The claim goes (the holder rolls back, with its tool still open on nothing of it:
    // rollback refuses while qemu uses the overlay, so close the tool first) ...
    drop(tool.stdin.take());
    tool.wait().unwrap();
    let mut holder_tool = Command::new("qemu-io")
        .args(["-r", "-f", "raw"])
        .arg(&base)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    t.imgtx_ok(&["rollback", &first.id]);
    // ... but a qemu still reads the base: the waiter keeps waiting, it does not fail.
    std::thread::sleep(Duration::from_millis(800));
    let mut waiter = waiter;
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "the waiter gave up on a qemu user"
    );

    kill(Pid::from_raw(waiter.id() as i32), Signal::SIGINT).unwrap();
    let started = Instant::now();
    let status = waiter.wait().unwrap();
    drop(holder_tool.stdin.take());
    holder_tool.wait().unwrap();

    assert_eq!(status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "it did not stop at once"
    );
    let status = run(other(&s2).args(["status", "--json"]));
    let v: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["transactions"], Value::Array(Vec::new()), "{v}");
    assert_eq!(
        t.image_listing(),
        vec!["disk.img"],
        "nothing left beside the base"
    );
}

#[test]
fn a_waiting_run_or_begin_stops_at_once_on_sigterm_or_sigint_and_leaves_nothing() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 6);
    let holder = t.begin(&[&base]);
    let images = t.image_listing();
    let state = tree(&t.state_dir());
    let cases = [
        (&["run", "--json", "--wait"][..], Signal::SIGTERM),
        (&["run", "--json", "--wait"][..], Signal::SIGINT),
        (&["begin", "--json", "--wait"][..], Signal::SIGTERM),
        (&["begin", "--json", "--wait"][..], Signal::SIGINT),
    ];
    for (args, sig) in cases {
        let mut waiter = t
            .command()
            .args(args)
            .arg(&base)
            .args(["--", "true"].iter().filter(|_| args[0] == "run"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(waiter.stderr.take().unwrap());
        wait_announced(&mut stderr);

        kill(Pid::from_raw(waiter.id() as i32), sig).unwrap();
        let started = Instant::now();
        let status = waiter.wait().unwrap();

        let what = format!("{} stopped by {sig}", args[0]);
        assert_eq!(status.code(), Some(128 + sig as i32), "{what}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: it did not stop at once"
        );
        assert_eq!(
            t.image_listing(),
            images,
            "{what}: left a file beside the base"
        );
        assert_eq!(
            tree(&t.state_dir()),
            state,
            "{what}: left something in the state directory"
        );
    }
    t.imgtx_ok(&["rollback", &holder.id]);
}

#[test]
fn waiting_runs_in_two_state_directories_both_land() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 5);
    let s2 = second_state(&t);
    let script = |pattern: u8, at: u64| {
        format!("sleep 0.5; qemu-io -f qcow2 -c 'write -P {pattern:#x} {at}M 1M' \"$IMGTX_OVERLAY\" >/dev/null")
    };
    let spawn = |mut cmd: Command, pattern: u8, at: u64| {
        cmd.args(["run", "--wait"])
            .arg(&base)
            .args(["--", "sh", "-c", &script(pattern, at)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn(t.command(), 0x31, 0);
    let b = spawn(other(&s2), 0x32, 1);
    let c = spawn(t.command(), 0x33, 2);

    for (name, child) in [("a", a), ("b", b), ("c", c)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let now = fs::read(&base).unwrap();
    for (i, p) in [0x31u8, 0x32, 0x33].iter().enumerate() {
        let at = i * MIB as usize;
        assert!(
            now[at..at + MIB as usize].iter().all(|b| b == p),
            "run {i} did not land"
        );
    }
}

#[test]
fn while_run_runs_qemu_may_read_the_base_but_not_write_it() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 6);
    let b = base.to_str().unwrap();
    let script = format!(
        "qemu-io -f qcow2 -c 'write -P 0x44 0 64k' \"$IMGTX_OVERLAY\" >/dev/null || exit 11; \
         qemu-io -r -f raw -c 'read 0 4k' '{b}' >/dev/null || exit 12; \
         if qemu-io -f raw -c 'write 0 4k' '{b}' >/dev/null 2>&1; then exit 13; fi; \
         exit 0"
    );

    let out = t.imgtx(&["run", b, "--", "sh", "-c", &script]);

    assert!(
        out.status.success(),
        "exit {:?} (11: own tool failed, 12: reader kept out, 13: writer let in): {}",
        out.status.code(),
        stderr_of(&out)
    );
    assert!(fs::read(&base).unwrap()[..64 << 10]
        .iter()
        .all(|&x| x == 0x44));
}

#[test]
fn a_commit_killed_in_one_state_directory_is_recovered_from_another() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 7);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x55 0 2M");
    let mut kill_it = t.command();
    kill_it
        .env("IMGTX_TEST_CRASH_AFTER", "commit-point")
        .args(["commit", &tx.id]);
    assert_eq!(run(&mut kill_it).status.code(), Some(137));
    let s2 = second_state(&t);

    let out = run(other(&s2).args(["recover", "--json"]).arg(&base));

    assert!(out.status.success(), "{}", stderr_of(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["actions"][0]["action"], "recovered_forward", "{r:#}");
    assert!(fs::read(&base).unwrap()[..2 * MIB as usize]
        .iter()
        .all(|&x| x == 0x55));
    // The second state directory's history says who recovered it.
    let log = run(other(&s2).args(["log", "--json"]));
    let log: Value = serde_json::from_slice(&log.stdout).unwrap();
    assert_eq!(log["entries"][0]["id"], tx.id.as_str(), "{log:#}");
    assert_eq!(log["entries"][0]["outcome"], "recovered_forward");
    // The first state directory agrees: nothing to list, and its recover is content.
    t.assert_no_transactions();
    t.imgtx_ok(&["recover"]);
    assert!(
        fs::read_dir(t.state_dir().join("txns"))
            .unwrap()
            .next()
            .is_none(),
        "its manifest was removed"
    );
    assert_eq!(t.image_listing(), vec!["disk.img"]);
}

#[test]
fn status_flags_a_base_written_behind_the_transactions_back() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 8);
    let tx = t.begin(&[&base]);
    assert_eq!(t.transactions()[0]["images"][0]["base_changed"], false);
    // Between commands nothing holds qemu off the base.
    qemu_io(&[
        "-f".as_ref(),
        "raw".as_ref(),
        "-c".as_ref(),
        "write -P 0x66 0 4k".as_ref(),
        base.as_os_str(),
    ]);

    let status = t.transactions();

    assert_eq!(status[0]["images"][0]["base_changed"], true, "{status:#?}");
    let human = t.imgtx_ok(&["status"]);
    assert!(
        human.contains("written behind the transaction's back"),
        "{human}"
    );
    t.imgtx_code(&["commit", &tx.id], exit::BUSY);
}

/// A refusal names the holder with its age, so that a person can decide whether to wait.
#[test]
fn a_busy_image_names_how_long_its_holder_has_held_it() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 1 << 20, 1);
    let held = t.begin(&[&base]);

    let out = t.imgtx_code(&["begin".as_ref(), base.as_os_str()], exit::BUSY);

    let err = stderr_of(&out);
    assert!(err.contains(&held.id), "{err}");
    assert!(err.contains(" s, since "), "{err}");
    // The time is shown as human output shows times: in the local zone, named, or in UTC
    // with --utc; never as recorded (RFC 3339), which is for JSON.
    let mut paris = t.command();
    paris.env("TZ", "Europe/Paris").arg("begin").arg(&base);
    let local = stderr_of(&expect_code(&mut paris, exit::BUSY));
    let utc = stderr_of(&t.imgtx_code(
        &["--utc".as_ref(), "begin".as_ref(), base.as_os_str()],
        exit::BUSY,
    ));
    for (err, zone) in [(&local, "CET"), (&utc, "UTC")] {
        let since = err.split(", since ").nth(1).unwrap_or_default();
        assert!(since.starts_with(|c: char| c.is_ascii_digit()), "{err}");
        assert!(
            since.contains(&format!(" {zone})")) && !since.contains("Z)"),
            "{err}"
        );
    }
}

/// A begin that waits says whom it waits for once, not at every poll as the holder's age
/// grows (a batch job's log would get a line a second).
#[test]
fn a_waiting_begin_says_whom_it_waits_for_once() {
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 1 << 20, 1);
    let held = t.begin(&[&base]);

    let out = t.imgtx_code(
        &["begin".as_ref(), "--wait=2.5".as_ref(), base.as_os_str()],
        exit::BUSY,
    );

    let err = stderr_of(&out);
    let waiting: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("imgtx: waiting for"))
        .collect();
    assert_eq!(waiting.len(), 1, "{err}");
    assert!(
        waiting[0].contains(&held.id) && waiting[0].contains('@'),
        "names the transaction and user@host: {err}"
    );
}

/// A refusal because of qemu says which image qemu holds (base or overlay) and which
/// process, so that the admin knows what to stop.
#[test]
fn a_commit_refused_for_qemu_names_the_image_and_the_process() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 7);
    let tx = t.begin(&[&base]);
    let mut tool = Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(tx.overlay())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let out = t.imgtx_code(&["commit", &tx.id], exit::BUSY);

    drop(tool.stdin.take());
    tool.wait().unwrap();
    let err = stderr_of(&out);
    let named = [
        base.display().to_string(),
        tx.overlay().display().to_string(),
    ];
    assert!(
        named
            .iter()
            .any(|p| err.contains(&format!(" {p} is in use by a qemu process"))),
        "names the image: {err}"
    );
    assert!(
        err.contains(&format!("(pid {})", tool.id())),
        "names qemu-io's pid {}: {err}",
        tool.id()
    );
    assert!(err.contains("imgtx: hint: stop the qemu process"), "{err}");
    t.imgtx_ok(&["commit", &tx.id]);
}
