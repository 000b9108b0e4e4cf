//! Transactions over qcow2 bases: `qemu-img commit` under imgtx's locks and journal.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{exit, expect_code, qcow2_io, qemu_img, require_tools, run, TestDir};

fn qcow2_base(t: &TestDir, name: &str) -> PathBuf {
    let base = t.image(name);
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        base.as_os_str(),
        "8M".as_ref(),
    ]);
    for cmd in ["write -P 0x11 0 3M", "write -P 0x22 6M 1M"] {
        qcow2_io(&base, cmd);
    }
    base
}

fn edit(overlay: &Path) {
    for cmd in [
        "write -P 0xab 1M 2M",
        "write -z 6M 512k",
        "write -P 0xcd 7M 64k",
    ] {
        qcow2_io(overlay, cmd);
    }
}

fn to_raw(t: &TestDir, image: &Path, name: &str) -> PathBuf {
    let out = t.path().join(name);
    qemu_img(&[
        "convert".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        image.as_os_str(),
        out.as_os_str(),
    ]);
    out
}

fn same_content(base: &Path, expected_raw: &Path) {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(base)
        .arg(expected_raw);
    expect_code(&mut cmd, exit::OK);
}

#[test]
fn commit_into_a_qcow2_base_matches_the_overlay() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = qcow2_base(&t, "disk.qcow2");
    let tx = t.begin(&[&base]);
    assert_eq!(tx.images[0].base_format, "qcow2");
    edit(tx.overlay());
    let expected = to_raw(&t, tx.overlay(), "expected.raw");

    t.imgtx_ok(&["commit", &tx.id]);

    same_content(&base, &expected);
    let mut check = Command::new("qemu-img");
    check.args(["check", "-q"]).arg(&base);
    expect_code(&mut check, exit::OK);
    assert_eq!(t.image_listing(), vec!["disk.qcow2"]);
}

#[test]
fn an_interrupted_qcow2_commit_undoes_to_the_identical_file_or_finishes() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    for undo in [true, false] {
        let t = TestDir::new();
        let base = qcow2_base(&t, "disk.qcow2");
        let before = fs::read(&base).unwrap();
        let tx = t.begin(&[&base]);
        edit(tx.overlay());
        let expected = to_raw(&t, tx.overlay(), "expected.raw");
        let mut cmd = t.command();
        cmd.env("IMGTX_TEST_CRASH_AFTER", "applied")
            .args(["commit", &tx.id]);
        assert_eq!(run(&mut cmd).status.code(), Some(137));

        if undo {
            t.imgtx_ok(&["recover", "--undo"]);
            assert!(
                fs::read(&base).unwrap() == before,
                "undo restores the qcow2 file bit for bit"
            );
        } else {
            t.imgtx_ok(&["recover"]);
            same_content(&base, &expected);
        }
        t.assert_no_transactions();
        assert_eq!(t.image_listing(), vec!["disk.qcow2"]);
    }
}

#[test]
fn a_qcow2_base_with_a_backing_file_is_refused() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let lower = t.raw_image("lower.img", 1 << 20, 1);
    let base = t.image("upper.qcow2");
    crate::util::qemu_overlay(&lower, "raw", &base);
    t.imgtx_code(&["begin".as_ref(), base.as_os_str()], exit::ERROR);
    t.imgtx_code(
        &[
            "begin".as_ref(),
            "--base-format=qcow2".as_ref(),
            base.as_os_str(),
        ],
        exit::ERROR,
    );
}
