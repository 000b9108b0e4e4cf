//! `imgtx run` stopped by a signal: the command stops too, the transaction is rolled back,
//! the base is untouched, and imgtx exits with 128 + the signal, whether the signal came
//! from a terminal (to the whole process group) or from `kill` (to imgtx alone).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::util::{sha256, TestDir};

const MIB: u64 = 1 << 20;

/// Starts `imgtx run BASE -- sh -c SCRIPT` in its own process group (as a shell job would
/// be) and waits until the script printed `ready`, so the transaction is open and the
/// command is running. The script writes into the overlay first, so a missed rollback shows.
fn start(t: &TestDir, base: &std::path::Path, script: &str) -> Child {
    let mut cmd = t.command();
    cmd.arg("run")
        .arg(base)
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "qemu-io -f qcow2 -c 'write -P 0x5a 0 1M' \"$IMGTX_OVERLAY\" >/dev/null && {script}"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("start imgtx run");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the command's output");
    assert_eq!(line.trim(), "ready", "the command did not start");
    child
}

/// Waits for `child` to exit (at most 30 s) and returns its exit code and stderr.
fn finish(mut child: Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "imgtx run did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts that `child` (`imgtx run` on `images/disk.img`, whose digest was `before`) exits
/// with 128 + `sig`, says so, and left the base and its directory as they were.
fn assert_rolled_back_by(t: &TestDir, child: Child, sig: Signal, before: &str) {
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(128 + sig as i32), "{stderr}");
    assert!(
        stderr.contains(&format!("interrupted by {}; rolled back", sig.as_str())),
        "{stderr}"
    );
    assert_eq!(sha256(&t.image("disk.img")), before, "the base changed");
    assert_eq!(
        t.image_listing(),
        vec!["disk.img"],
        "stray files beside the base"
    );
    t.assert_no_transactions();
}

fn pid(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pid"))
}

#[test]
fn sigterm_sent_to_imgtx_alone_stops_the_command_and_rolls_back() {
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 3);
    let before = sha256(&base);
    // `exec sleep`: the signal must reach the command itself, not only imgtx.
    let child = start(&t, &base, "echo ready && exec sleep 60");

    kill(pid(&child), Signal::SIGTERM).expect("signal imgtx");

    assert_rolled_back_by(&t, child, Signal::SIGTERM, &before);
}

#[test]
fn ctrl_c_to_the_process_group_rolls_back_even_if_the_command_exits_0() {
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 4);
    let before = sha256(&base);
    // The command shrugs off SIGINT and exits 0: the user still asked to stop.
    let child = start(
        &t,
        &base,
        "trap 'exit 0' INT && echo ready && while :; do sleep 0.05; done",
    );

    killpg(pid(&child), Signal::SIGINT).expect("signal the group");

    assert_rolled_back_by(&t, child, Signal::SIGINT, &before);
}
