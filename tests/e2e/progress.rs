//! Progress reporting of commits and recoveries: JSON lines on stderr with `--json`, one
//! series per phase (`pre-images`, `apply`, `restore`); on a terminal one bar per phase,
//! named by the image's file name, ending full, with a rate it can stand by; nothing when
//! stderr is not a terminal and no JSON was asked for.

use std::process::Command;

use serde_json::Value;

use crate::util::{
    exit, expect_code, imgtx_bin, qcow2_io, require_tools, run, stderr_of, stdout_of, TestDir,
};

const MIB: u64 = 1 << 20;

/// The progress events among the JSON lines of stderr.
fn progress_events(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "progress")
        .collect()
}

#[test]
fn json_commit_reports_progress_events_on_stderr_up_to_the_total() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    // Arrange
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 8 * MIB, 3);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x5a 0 4M");

    // Act
    let out = t.imgtx_code(&["commit", "--json", &tx.id], exit::OK);

    // Assert
    let events = progress_events(&stderr_of(&out));
    assert!(
        !events.is_empty(),
        "no progress events: {}",
        stderr_of(&out)
    );
    // The pre-images are saved first, then the changes applied; each phase of the image
    // reports from 0 up to its total (4 MiB of old content, then 4 MiB of new).
    let phases: Vec<&str> = events.iter().filter_map(|e| e["phase"].as_str()).collect();
    let first_apply = phases.iter().position(|&p| p == "apply");
    assert_eq!(phases.first(), Some(&"pre-images"), "{phases:?}");
    assert!(
        first_apply.is_some_and(|i| phases[i..].iter().all(|&p| p == "apply")),
        "{phases:?}"
    );
    for phase in ["pre-images", "apply"] {
        let of: Vec<&Value> = events.iter().filter(|e| e["phase"] == phase).collect();
        let (first, last) = (of[0], of[of.len() - 1]);
        assert_eq!(first["done"], 0, "{phase}");
        assert_eq!(last["image"], 0, "{phase}");
        assert_eq!(last["base"], base.to_str().unwrap(), "{phase}");
        assert_eq!(last["total"], 4 * MIB, "{phase}");
        assert_eq!(last["done"], 4 * MIB, "{phase}");
    }
    for e in &events {
        assert!(e["done"].as_u64() <= e["total"].as_u64(), "{e}");
    }
    // Throttled: a few MiB copied in chunks is far fewer events than chunks would give,
    // but at least the first and the last of each phase.
    assert!(
        events.len() >= 4 && events.len() <= 20,
        "{} events",
        events.len()
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON value");
    assert_eq!(result["outcome"], "committed");
}

#[test]
fn commit_without_a_terminal_or_json_prints_no_progress() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    // Arrange
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 8 * MIB, 4);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x5a 0 4M");

    // Act
    let out = t.imgtx_code(&["commit", &tx.id], exit::OK);

    // Assert: stderr is a pipe here, so no bar and no event.
    let err = stderr_of(&out);
    assert!(err.trim().is_empty(), "unexpected stderr: {err}");
}

#[test]
fn json_undo_recovery_reports_the_restore_up_to_the_total() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    // Arrange: a commit killed right after its commit point.
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 8 * MIB, 5);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x5a 0 2M");
    let mut cmd = t.command();
    cmd.env("IMGTX_TEST_CRASH_AFTER", "commit-point")
        .args(["commit", &tx.id]);
    expect_code(&mut cmd, 137);

    // Act
    let out = t.imgtx_code(&["recover", "--undo", "--json"], exit::OK);

    // Assert
    let events = progress_events(&stderr_of(&out));
    assert!(events.iter().all(|e| e["phase"] == "restore"), "{events:?}");
    let last = events.last().expect("restore events");
    assert_eq!(last["total"], 2 * MIB);
    assert_eq!(last["done"], 2 * MIB);
}

/// The frames a terminal got, in order: the text between cursor movements and carriage
/// returns, escape sequences and the padding to the terminal's width taken out.
fn frames(terminal: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut chars = terminal.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // CSI ... final byte: a cursor movement or a line erase; a frame ends there.
            '\x1b' => {
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
                }
                plain.push('\n');
            }
            '\r' => plain.push('\n'),
            c => plain.push(c),
        }
    }
    plain
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The rate a frame shows (` 31.6 MiB/s`), in bytes per second.
fn rate_of(frame: &str) -> Option<f64> {
    let end = frame.find("/s")?;
    let mut words = frame[..end].rsplit(' ');
    let unit = words.next()?;
    let number: f64 = words.next()?.parse().ok()?;
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(number * scale)
}

#[test]
fn a_commit_on_a_terminal_shows_one_bar_per_phase_that_ends_full_with_honest_rates() {
    if !require_tools(&["qemu-img", "qemu-io", "script", "strace"]) {
        return;
    }
    // Arrange: 32 MiB to commit, every read slowed by 60 ms (strace injects the delay), so
    // the commit runs for seconds and the bars appear.
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 32 * MIB, 4);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x5a 0 32M");
    let line = format!(
        "strace -f -qq -o /dev/null -e trace=pread64 -e inject=pread64:delay_exit=60000 \
         {} --state-dir {} commit {}",
        imgtx_bin().display(),
        t.state_dir().display(),
        tx.id
    );

    // Act: stderr on a pseudo-terminal, made by `script`.
    let out = run(Command::new("script").args(["-qec", &line, "/dev/null"]));

    // Assert
    assert!(out.status.success(), "{}", stderr_of(&out));
    let shown = frames(&stdout_of(&out));
    for phase in ["saving pre-images of disk.img", "writing disk.img"] {
        let bars: Vec<&String> = shown.iter().filter(|f| f.starts_with(phase)).collect();
        let last = bars
            .last()
            .unwrap_or_else(|| panic!("no bar for {phase}: {shown:#?}"));
        assert!(
            last.contains("[==============================] 32.00 MiB/32.00 MiB"),
            "the bar of {phase} does not end full: {last}"
        );
    }
    let rates: Vec<f64> = shown.iter().filter_map(|f| rate_of(f)).collect();
    assert!(!rates.is_empty(), "no rate shown: {shown:#?}");
    // Every read waits 60 ms and a bar shows a rate only after half a second, over the
    // bytes copied since it appeared: 32 MiB in half a second is the most it may say.
    for (frame, rate) in shown.iter().filter_map(|f| Some((f, rate_of(f)?))) {
        assert!(rate > 0.0 && rate <= 64.0 * MIB as f64, "{frame}");
    }
    assert!(!shown.iter().any(|f| f.contains("ETA 0s")), "{shown:#?}");
    assert!(
        stdout_of(&out).contains(&format!("committed {}", tx.id)),
        "the result follows the bars"
    );
}
