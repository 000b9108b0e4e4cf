//! `imgtx run --each`: one transaction per image. A failing command rolls back only its
//! image; `--jobs 2` runs two commands at once; `--keep` keeps every commit revertible; a
//! signal mid-batch rolls back what is in flight and starts nothing new; a held image fails
//! alone, or is waited for with `--wait`.
//!
//! The commands are `sh -c` scripts that write a pattern into their overlay with qemu-io, so
//! a base that changed shows, and that leave marker files in a directory of the test's, so
//! the test knows which commands started without any timing.

use std::ffi::OsString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::util::{
    describe, exit, expect_code, finish, require_tools, sha256, stderr_of, wait_until, TestDir,
};

const MIB: u64 = 1 << 20;
/// What every script writes into its overlay: 64 KiB of this byte at offset 0.
const WRITTEN: u8 = 0x5a;

/// The start of every script: write into the overlay, then say so by creating
/// `marks/NAME.started` (NAME: the base's file name, from the overlay's).
const PRELUDE: &str = "qemu-io -f qcow2 -c 'write -P 0x5a 0 64k' \"$IMGTX_OVERLAY\" >/dev/null \
    && name=$(basename \"$IMGTX_OVERLAY\") && name=${name%%.tx-*} \
    && touch \"$MARKS/$name.started\"";

/// A test directory with raw images `names` (1 MiB each) and an empty `marks/` directory.
fn setup(names: &[&str]) -> (TestDir, Vec<PathBuf>) {
    let t = TestDir::new();
    fs::create_dir(t.path().join("marks")).expect("create marks/");
    let bases = names
        .iter()
        .zip(1u8..)
        .map(|(n, seed)| t.raw_image(n, MIB, seed))
        .collect();
    (t, bases)
}

/// `imgtx run --each OPTIONS... BASES... -- sh -c 'PRELUDE && SCRIPT'`, with `$MARKS` set.
fn each_command(
    t: &TestDir,
    options: &[&str],
    bases: &[PathBuf],
    script: &str,
) -> std::process::Command {
    let mut cmd = t.command();
    cmd.env("MARKS", t.path().join("marks"))
        .arg("run")
        .arg("--each")
        .args(options)
        .args(bases)
        .arg("--")
        .args(["sh", "-c"])
        .arg(format!("{PRELUDE} && {script}"));
    cmd
}

/// Whether `base` holds what the scripts write (else it should be as it was made).
fn written(base: &Path) -> bool {
    let bytes = fs::read(base).expect("read the base");
    bytes[..64 << 10].iter().all(|&b| b == WRITTEN)
}

/// The number of `marks/*.started` files.
fn started(t: &TestDir) -> usize {
    fs::read_dir(t.path().join("marks"))
        .expect("list marks/")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".started"))
        })
        .count()
}

/// Parses the JSON document `run --each --json` printed.
fn parse(cmd: &std::process::Command, out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{}\nstdout is not JSON: {e}", describe(cmd, out)))
}

/// `field` of every image in the JSON document, in the order the images were given.
fn column(v: &Value, field: &str) -> Vec<Value> {
    v["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images list in {v}"))
        .iter()
        .map(|i| i[field].clone())
        .collect()
}

fn strs(list: &[&str]) -> Vec<Value> {
    list.iter().map(|s| Value::from(*s)).collect()
}

#[test]
fn a_failing_command_rolls_back_only_its_image() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let (t, bases) = setup(&["a.img", "b.img", "c.img"]);
    let b_before = sha256(&bases[1]);
    let mut cmd = each_command(
        &t,
        &["--json"],
        &bases,
        "case $name in b.img) exit 3;; esac",
    );

    let out = expect_code(&mut cmd, exit::ERROR);
    let v = parse(&cmd, &out);
    assert_eq!(
        column(&v, "outcome"),
        strs(&["committed", "rolled_back", "committed"])
    );
    assert_eq!(
        column(&v, "exit_code"),
        vec![Value::from(0), 3.into(), 0.into()]
    );
    let bases_json: Vec<Value> = bases.iter().map(|b| b.to_str().unwrap().into()).collect();
    assert_eq!(column(&v, "base"), bases_json);
    let ids = column(&v, "id");
    assert!(ids.iter().all(Value::is_string), "{v}");
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "one transaction each: {v}"
    );
    assert_eq!(
        (v["committed"].as_u64(), v["rolled_back"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(v["exit_code"], 1);
    assert!(
        written(&bases[0]) && written(&bases[2]),
        "a and c were committed"
    );
    assert_eq!(sha256(&bases[1]), b_before, "b was rolled back");
    t.assert_no_transactions();
    assert_eq!(
        t.image_listing(),
        vec!["a.img", "b.img", "c.img"],
        "stray files"
    );
}

#[test]
fn the_human_summary_names_the_image_that_was_not_committed() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let (t, bases) = setup(&["a.img", "b.img"]);
    let mut cmd = each_command(&t, &[], &bases, "case $name in a.img) exit 7;; esac");

    let out = expect_code(&mut cmd, exit::ERROR);
    let stderr = stderr_of(&out);
    let a = bases[0].display();
    assert!(
        stderr.contains("1 of 2 images committed; not committed:")
            && stderr.contains(&format!(
                "  {a}: command exited with status 7; rolled back tx-"
            )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{}: committed tx-", bases[1].display())),
        "a line per image: {stderr}"
    );
}

#[test]
fn jobs_2_runs_two_commands_at_once() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let (t, bases) = setup(&["a.img", "b.img"]);
    // Each command waits until both have started: one at a time, the first would wait in
    // vain (and give up after 30 s, failing its image).
    let barrier = "n=0; while [ $(ls \"$MARKS\" | grep -c started) -lt 2 ]; do \
                   n=$((n+1)); [ $n -gt 600 ] && exit 9; sleep 0.05; done";
    let mut cmd = each_command(&t, &["--jobs", "2", "--json"], &bases, barrier);

    let out = expect_code(&mut cmd, exit::OK);
    let v = parse(&cmd, &out);
    assert_eq!(column(&v, "outcome"), strs(&["committed", "committed"]));
    assert!(bases.iter().all(|b| written(b)));
}

#[test]
fn one_command_runs_at_a_time_by_default() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let (t, bases) = setup(&["a.img", "b.img", "c.img"]);
    // Each command fails if another has started and not finished.
    let alone = "sleep 0.2 && [ $(ls \"$MARKS\" | grep -c started) -eq \
                 $(( $(ls \"$MARKS\" | grep -c finished) + 1 )) ] \
                 && touch \"$MARKS/$name.finished\"";
    let mut cmd = each_command(&t, &["--json"], &bases, alone);

    let out = expect_code(&mut cmd, exit::OK);
    let v = parse(&cmd, &out);
    assert_eq!(column(&v, "outcome"), strs(&["committed"; 3]));
}

#[test]
fn keep_makes_every_commit_revertible() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let (t, bases) = setup(&["a.img", "b.img"]);
    let a_before = sha256(&bases[0]);
    let mut cmd = each_command(&t, &["--keep", "--json"], &bases, "true");
    let out = expect_code(&mut cmd, exit::OK);
    let ids = column(&parse(&cmd, &out), "id");

    let status = t.imgtx_json(&["status"]);

    let revertible = status["revertible"].as_array().expect("a revertible list");
    for id in &ids {
        let r = revertible
            .iter()
            .find(|r| &r["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not revertible: {status}"));
        assert_eq!(r["pinned"], true, "kept until pruned: {r}");
    }
    t.imgtx_ok(&["revert", ids[0].as_str().unwrap()]);
    assert_eq!(sha256(&bases[0]), a_before, "a is reverted");
    assert!(written(&bases[1]), "b keeps its commit");
}

/// Starts `run --each --jobs 2 --json` over a, b, c, d in its own process group: a's command
/// succeeds at once, the others' wait until signalled (`waiting`: a shell command line), so
/// b and c are in flight when both have started, and d never starts.
fn start_batch(t: &TestDir, bases: &[PathBuf], waiting: &str, json: bool) -> Child {
    let mut options = vec!["--jobs", "2"];
    if json {
        options.push("--json");
    }
    let script = format!("case $name in a.img) exit 0;; esac && {waiting}");
    let mut cmd = each_command(t, &options, bases, &script);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().expect("start imgtx run --each");
    // a has started and finished (its marker), b and c have started.
    wait_until("b's and c's commands to start", || {
        let marks = t.path().join("marks");
        ["b.img", "c.img"]
            .iter()
            .all(|n| marks.join(format!("{n}.started")).exists())
    });
    child
}

fn pid(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pid"))
}

#[test]
fn sigterm_mid_batch_rolls_back_what_is_in_flight_and_starts_nothing_new() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let (t, bases) = setup(&["a.img", "b.img", "c.img", "d.img"]);
    let before: Vec<String> = bases.iter().map(|b| sha256(b)).collect();
    // `exec sleep`: the signal must reach the commands themselves, not only imgtx.
    let child = start_batch(&t, &bases, "exec sleep 120", true);

    kill(pid(&child), Signal::SIGTERM).expect("signal imgtx");

    let out = finish(child);
    let stderr = stderr_of(&out);
    assert_eq!(
        out.status.code(),
        Some(128 + Signal::SIGTERM as i32),
        "{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(
        column(&v, "outcome"),
        strs(&["committed", "rolled_back", "rolled_back", "not_started"])
    );
    assert_eq!(column(&v, "signal")[1..3], strs(&["SIGTERM", "SIGTERM"]));
    assert_eq!(v["signal"], "SIGTERM");
    assert_eq!(started(&t), 3, "d never started");
    assert!(written(&bases[0]), "a's commit was done before the signal");
    for (b, old) in bases.iter().zip(&before).skip(1) {
        assert_eq!(&sha256(b), old, "{} is as it was", b.display());
    }
    t.assert_no_transactions();
    assert_eq!(t.image_listing(), vec!["a.img", "b.img", "c.img", "d.img"]);
}

#[test]
fn ctrl_c_mid_batch_says_what_was_done_rolled_back_and_never_started() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let (t, bases) = setup(&["a.img", "b.img", "c.img", "d.img"]);
    // The commands shrug off SIGINT and exit 0: the user still asked to stop.
    let child = start_batch(
        &t,
        &bases,
        "trap 'exit 0' INT && while :; do sleep 0.05; done",
        false,
    );

    killpg(pid(&child), Signal::SIGINT).expect("signal the group");

    let out = finish(child);
    let stderr = stderr_of(&out);
    assert_eq!(
        out.status.code(),
        Some(128 + Signal::SIGINT as i32),
        "{stderr}"
    );
    let summary = stderr
        .split_once("imgtx: interrupted by SIGINT: 1 of 4 images committed, 2 rolled back, 1 never started\n")
        .unwrap_or_else(|| panic!("no summary: {stderr}"))
        .1;
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| bases[i].display().to_string());
    for line in [
        format!("  {a}: committed tx-"),
        format!("  {b}: interrupted by SIGINT; rolled back tx-"),
        format!("  {c}: interrupted by SIGINT; rolled back tx-"),
        format!("  {d}: never started"),
    ] {
        assert!(summary.contains(&line), "{line:?} missing from {stderr}");
    }
    assert!(!written(&bases[1]) && !written(&bases[2]) && !written(&bases[3]));
    t.assert_no_transactions();
}

#[test]
fn a_held_image_fails_alone_without_wait() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let (t, bases) = setup(&["a.img", "b.img", "c.img"]);
    let holder = t.begin(&[&bases[1]]);
    let mut cmd = each_command(&t, &["--json"], &bases, "true");

    let out = expect_code(&mut cmd, exit::ERROR);
    let v = parse(&cmd, &out);
    assert_eq!(
        column(&v, "outcome"),
        strs(&["committed", "begin_failed", "committed"])
    );
    let error = v["images"][1]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&holder.id),
        "the error names the holder: {v}"
    );
    assert!(
        v["images"][1]["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("--wait"),
        "{v}"
    );
    let open: Vec<Value> = t.transactions().iter().map(|tx| tx["id"].clone()).collect();
    assert_eq!(
        open,
        vec![Value::from(holder.id.as_str())],
        "the holder is untouched"
    );
}

#[test]
fn with_wait_a_held_image_is_done_once_it_is_free() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let (t, bases) = setup(&["a.img", "b.img"]);
    let holder = t.begin(&[&bases[1]]);
    let log = t.path().join("stderr.log");
    let mut cmd = each_command(&t, &["--wait", "--json"], &bases, "true");
    cmd.stdout(Stdio::piped())
        .stderr(fs::File::create(&log).expect("create the log"));
    let child = cmd.spawn().expect("start imgtx run --each");
    wait_until("run --each to wait for b", || {
        fs::read_to_string(&log).is_ok_and(|s| s.contains("\"event\":\"waiting\""))
    });

    t.imgtx_ok(&["rollback", holder.id.as_str()]);

    let out = finish(child);
    let stderr = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(out.status.code(), Some(exit::OK), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(column(&v, "outcome"), strs(&["committed", "committed"]));
    assert!(bases.iter().all(|b| written(b)));
}

#[test]
fn an_image_named_twice_is_refused_before_anything_begins() {
    let (t, bases) = setup(&["a.img"]);
    let again: OsString = t.path().join("images/./a.img").into_os_string();
    let out = t.imgtx_code(
        &[
            OsString::from("run"),
            "--each".into(),
            bases[0].clone().into_os_string(),
            again,
            "--".into(),
            "true".into(),
        ],
        exit::USAGE,
    );
    assert!(
        stderr_of(&out).contains("are the same image"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(t.imgtx_json(&["log"])["entries"], Value::Array(Vec::new()));
}

#[test]
fn a_command_that_cannot_be_started_exits_127_or_126_and_starts_no_more_images() {
    let (t, bases) = setup(&["a.img", "b.img", "c.img"]);
    let before: Vec<String> = bases.iter().map(|b| sha256(b)).collect();
    let not_executable = t.path().join("script.txt");
    fs::write(&not_executable, "echo hi\n").expect("write script.txt");

    for (program, code) in [
        ("no-such-program-imgtx".to_owned(), 127),
        (not_executable.display().to_string(), 126),
    ] {
        let mut cmd = t.command();
        cmd.args(["run", "--each", "--json"])
            .args(&bases)
            .arg("--")
            .arg(&program)
            .arg("{}");

        let out = expect_code(&mut cmd, code);

        let v = parse(&cmd, &out);
        assert_eq!(v["exit_code"], code, "{v}");
        assert_eq!(
            column(&v, "outcome"),
            strs(&["rolled_back", "not_started", "not_started"]),
            "{program}: the program is the same for every image: {v}"
        );
        assert_eq!(column(&v, "exit_code")[0], code, "{v}");
        let error = v["images"][0]["error"].as_str().unwrap_or_default();
        assert_eq!(
            error.matches("rolled back").count(),
            0,
            "said once, by the outcome: {error}"
        );
    }
    let after: Vec<String> = bases.iter().map(|b| sha256(b)).collect();
    assert_eq!(before, after, "no base changed");
    t.assert_no_transactions();

    let mut human = t.command();
    human
        .args(["run", "--each"])
        .args(&bases)
        .args(["--", "no-such-program-imgtx"]);
    let stderr = stderr_of(&expect_code(&mut human, 127));
    assert!(
        stderr.contains("could not be started, so no image started after that")
            && stderr.contains(&format!("  {}: never started", bases[2].display())),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("rolled back tx-").count(),
        2,
        "once per line: {stderr}"
    );
}
