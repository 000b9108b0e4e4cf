//! Progress reporting of commits: JSON lines on stderr with `--json`, nothing when stderr is
//! not a terminal and no JSON was asked for.

use serde_json::Value;

use crate::util::{exit, qcow2_io, require_tools, stderr_of, TestDir};

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
    let last = events.last().expect("an event");
    assert_eq!(last["image"], 0);
    assert_eq!(last["total"], 4 * MIB);
    assert_eq!(last["done"], 4 * MIB);
    for e in &events {
        assert!(e["done"].as_u64() <= e["total"].as_u64(), "{e}");
    }
    // Throttled: a few MiB copied in chunks is far fewer events than chunks would give,
    // but at least the first and the last.
    assert!(
        events.len() >= 2 && events.len() <= 20,
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
