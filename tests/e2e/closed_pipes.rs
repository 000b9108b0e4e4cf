//! Output nobody reads: stdout or stderr a pipe whose reader is gone (`imgtx ... | true`,
//! `imgtx ... 2>&1 >/dev/null | head -1`). Writing there must never panic nor stop work
//! halfway, and the exit status stays that of the work.

use std::fs;

use crate::util::{exit, qcow2_io, require_tools, run_with_closed, stderr_of, Closed, TestDir};

const MIB: u64 = 1 << 20;

#[test]
fn completions_to_a_closed_pipe_do_not_panic() {
    let t = TestDir::new();
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = t.command();
        cmd.args(["generate", "completions", shell]);

        let out = run_with_closed(&mut cmd, Closed::Stdout);

        assert_eq!(
            out.status.code(),
            Some(exit::OK),
            "{shell}: {}",
            stderr_of(&out)
        );
        assert!(!stderr_of(&out).contains("panicked"), "{}", stderr_of(&out));
    }
}

#[test]
fn a_commit_logging_to_a_closed_stderr_finishes_and_exits_0() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x42 0 64k");
    let mut cmd = t.command();
    cmd.env("IMGTX_LOG", "debug").args(["commit", &tx.id]);

    let out = run_with_closed(&mut cmd, Closed::Stderr);

    assert_eq!(out.status.code(), Some(exit::OK), "{out:?}");
    t.assert_no_transactions();
    assert!(fs::read(&base).unwrap()[..64 << 10]
        .iter()
        .all(|&b| b == 0x42));
}

#[test]
fn a_closed_stdout_does_not_turn_a_failed_run_into_success() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let mut cmd = t.command();
    cmd.args([
        "run",
        "--json",
        base.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);

    let out = run_with_closed(&mut cmd, Closed::Stdout);

    assert_eq!(out.status.code(), Some(7), "{}", stderr_of(&out));
    t.assert_no_transactions();
}
