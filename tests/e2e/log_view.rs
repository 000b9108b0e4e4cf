//! `log` as an administrator reads it: sizes in human units (exact bytes in JSON), a rollback
//! without a size, and the entries asked for: `-n`, `--since`, `--tx`; a path with neither
//! history nor file is an error.

use crate::util::{exit, qcow2_io, require_tools, stderr_of, TestDir};

const MIB: u64 = 1 << 20;

/// The ids `log --json ARGS...` lists.
fn ids(t: &TestDir, args: &[&str]) -> Vec<String> {
    let v = t.imgtx_json(&[&["log"][..], args].concat());
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn log_shows_human_units_and_selects_by_last_since_and_tx() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let a = t.begin(&[&base]);
    qcow2_io(a.overlay(), "write -P 0x42 0 64k");
    let committed = t.imgtx_ok(&["commit", &a.id]);
    let b = t.begin(&[&base]);
    t.imgtx_ok(&["rollback", &b.id]);
    let c = t.begin(&[&base]);
    t.imgtx_ok(&["commit", &c.id]);

    let log = t.imgtx_ok(&["log"]);

    assert!(committed.contains("64.00 KiB changed"), "{committed}");
    assert!(log.contains("64.00 KiB changed"), "{log}");
    assert!(!log.contains("bytes"), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    let rolled = lines
        .iter()
        .position(|l| l.contains("rolled back"))
        .unwrap();
    assert!(
        lines[rolled + 1].ends_with("disk.img"),
        "a rollback with a size: {log}"
    );
    let json = t.imgtx_json(&["log"]);
    assert_eq!(json["entries"][0]["images"][0]["changed_bytes"], 65536);
    assert_eq!(ids(&t, &["-n", "1"]), vec![c.id.clone()]);
    assert_eq!(ids(&t, &["--tx", &a.id[..7]]), vec![a.id.clone()]);
    assert_eq!(ids(&t, &["--since", "1h"]).len(), 3);
    assert!(ids(&t, &["--since", "2999-01-01"]).is_empty());
    let out = t.imgtx_code(&["log", "no-such.img"], exit::ERROR);
    assert!(
        stderr_of(&out).contains("no history for"),
        "{}",
        stderr_of(&out)
    );
}
