//! Running the qemu tools from tests: whether a tool is here, `qemu-img`, and `qemu-io`
//! commands on a qcow2 image, each failing the test when the tool fails.
//!
//! These are fixtures and oracles, not the code under test: imgtx's own runs of `qemu-img`
//! are in `txn`. Nor is this the end-to-end harness's runner (`tests/e2e/util.rs`), which
//! reports through its own command descriptions.

use std::path::Path;
use std::process::Command;

/// Whether `tool --version` runs here.
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when qemu-img and qemu-io both run; otherwise prints why the test is skipped.
pub fn available() -> bool {
    if have("qemu-img") && have("qemu-io") {
        true
    } else {
        eprintln!("skipping: qemu-img/qemu-io not installed (CI installs them)");
        false
    }
}

/// Runs `cmd` and returns its stdout; panics, with its stderr, when it fails.
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("tool runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `qemu-img ARGS...`; returns its stdout, panics when it fails.
pub fn img(args: &[&str]) -> Vec<u8> {
    run(Command::new("qemu-img").args(args))
}

/// Runs the qemu-io commands `cmds` (`write -P 0xaa 0 64k`, ...) on the qcow2 image `path`,
/// with cache mode `unsafe` (no flushes: nothing here crashes under qemu). Panics when
/// qemu-io fails, including the failures it reports with exit status 0 (its output then
/// says "error" or "failed").
pub fn io(path: &Path, cmds: &[impl AsRef<str>]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2", "-t", "unsafe"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd.as_ref());
    }
    c.arg(path);
    let out = run(&mut c);
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("error") && !text.contains("failed"),
        "qemu-io {:?}: {text}",
        cmds.iter().map(AsRef::as_ref).collect::<Vec<_>>()
    );
}
