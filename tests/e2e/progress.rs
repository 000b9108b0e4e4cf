//! Progress reporting of commits and recoveries: JSON lines on stderr with `--json`, one
//! series per phase (`pre-images`, `apply`, `restore`), nothing when stderr is not a
//! terminal and no JSON was asked for.

use serde_json::Value;

use crate::util::{exit, expect_code, qcow2_io, require_tools, stderr_of, TestDir};

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
