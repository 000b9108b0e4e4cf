//! The real process killed at every journaled step of begin, commit, rollback and recover
//! (test hook `IMGTX_TEST_CRASH_AFTER`), and by SIGKILL mid-copy; `imgtx recover` must then
//! leave every base bit-identical to its old or its new content.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::{exit, qcow2_io, qemu_img, require_tools, run, stderr_of, TestDir};

const MIB: u64 = 1 << 20;
const KILLED: i32 = 137;

pub(crate) fn crash<S: AsRef<OsStr>>(t: &TestDir, step: &str, args: &[S]) -> Output {
    let mut cmd = t.command();
    cmd.env("IMGTX_TEST_CRASH_AFTER", step).args(args);
    let out = run(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(KILLED),
        "expected a crash after {step}: {}",
        stderr_of(&out)
    );
    out
}

fn converted(t: &TestDir, overlay: &Path) -> Vec<u8> {
    let out = t.path().join("expected.raw");
    qemu_img(&[
        "convert".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        overlay.as_os_str(),
        out.as_os_str(),
    ]);
    let bytes = fs::read(&out).unwrap();
    fs::remove_file(&out).unwrap();
    bytes
}

/// Every base's content, in order.
pub(crate) type Contents = Vec<Vec<u8>>;

/// Two bases with changes in their overlays; returns (tx id, bases, old contents, new contents).
pub(crate) fn prepared(t: &TestDir, grow: bool) -> (String, Vec<PathBuf>, Contents, Contents) {
    let a = t.raw_image("a.img", 2 * MIB, 1);
    let b = t.raw_image("b.img", 2 * MIB, 2);
    let old = vec![fs::read(&a).unwrap(), fs::read(&b).unwrap()];
    let tx = t.begin(&[&a, &b]);
    for (i, img) in tx.images.iter().enumerate() {
        if grow {
            qemu_img(&[
                "resize".as_ref(),
                "-q".as_ref(),
                img.overlay.as_os_str(),
                "3M".as_ref(),
            ]);
        }
        let cmd = format!("write -P 0x{:x}0 {}k 600k", i + 1, 64 * (i + 1));
        qcow2_io(&img.overlay, &cmd);
        qcow2_io(&img.overlay, "write -z 1M 64k");
    }
    let new = tx.images.iter().map(|i| converted(t, &i.overlay)).collect();
    (tx.id, vec![a, b], old, new)
}

pub(crate) fn contents(bases: &[PathBuf]) -> Contents {
    bases.iter().map(|b| fs::read(b).unwrap()).collect()
}

pub(crate) const BEFORE_COMMIT_POINT: &[&str] = &["intent", "undo"];
pub(crate) const AFTER_COMMIT_POINT: &[&str] = &[
    "commit-point",
    "applied",
    "logged",
    "files-removed",
    "journals-removed",
];

#[test]
fn a_commit_killed_before_its_commit_point_recovers_to_the_old_content_and_stays_open() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    for step in BEFORE_COMMIT_POINT {
        let t = TestDir::new();
        let (tx, bases, old, new) = prepared(&t, true);
        crash(&t, step, &["commit", &tx]);
        t.imgtx_code(&["commit", &tx], exit::RECOVERY_NEEDED);

        t.imgtx_ok(&["recover"]);

        assert!(
            contents(&bases) == old,
            "after a crash at {step} the bases must be unchanged"
        );
        assert_eq!(t.transactions().len(), 1, "the transaction stays open");
        t.imgtx_ok(&["commit", &tx]);
        assert!(contents(&bases) == new);
        assert_eq!(t.image_listing(), vec!["a.img", "b.img"]);
    }
}

#[test]
fn a_commit_killed_after_its_commit_point_recovers_forward() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    for step in AFTER_COMMIT_POINT {
        let t = TestDir::new();
        let (tx, bases, _old, new) = prepared(&t, true);
        crash(&t, step, &["commit", &tx]);
        if *step != "journals-removed" {
            t.imgtx_code(
                &["begin".as_ref(), bases[1].as_os_str()],
                exit::RECOVERY_NEEDED,
            );
        }

        t.imgtx_ok(&["recover"]);
        t.imgtx_ok(&["recover"]);

        assert!(
            contents(&bases) == new,
            "after a crash at {step} the bases must hold the new content"
        );
        t.assert_no_transactions();
        assert_eq!(
            t.image_listing(),
            vec!["a.img", "b.img"],
            "after a crash at {step}"
        );
    }
}

#[test]
fn a_commit_killed_after_its_commit_point_can_be_undone_bit_for_bit() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    for step in ["commit-point", "applied"] {
        let t = TestDir::new();
        let (tx, bases, old, _new) = prepared(&t, true);
        crash(&t, step, &["commit", &tx]);

        let dry = t.imgtx_json(&["recover", "--undo", "--dry-run"]);
        assert_eq!(dry["actions"][0]["action"], "recovered_back");
        t.imgtx_ok(&["recover", "--undo"]);

        assert!(
            contents(&bases) == old,
            "undo after a crash at {step} restores content and length"
        );
        t.assert_no_transactions();
        assert_eq!(t.image_listing(), vec!["a.img", "b.img"]);
        assert_eq!(
            t.imgtx_json(&["log"])["entries"][0]["outcome"],
            "recovered_back"
        );
    }
}

#[test]
fn a_recovery_killed_at_any_step_converges_when_rerun() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let steps = [
        "recover-direction",
        "recover-applied",
        "recover-logged",
        "files-removed",
        "journals-removed",
    ];
    for undo in [false, true] {
        for step in steps {
            let t = TestDir::new();
            let (tx, bases, old, new) = prepared(&t, true);
            crash(&t, "commit-point", &["commit", &tx]);
            let mut args = vec!["recover"];
            if undo {
                args.push("--undo");
            }
            crash(&t, step, &args);

            t.imgtx_ok(&args);

            let want = if undo { &old } else { &new };
            assert!(
                contents(&bases) == *want,
                "recovery (undo={undo}) killed at {step}"
            );
            t.assert_no_transactions();
            assert_eq!(t.image_listing(), vec!["a.img", "b.img"]);
        }
    }
}

#[test]
fn a_no_undo_commit_with_a_lost_overlay_is_refused_without_touching_anything() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (tx, _bases, _old, _new) = prepared(&t, false);
    crash(&t, "commit-point", &["commit", "--no-undo", &tx]);
    let overlay = t.images().join(format!("b.img.{tx}.imgtx.qcow2"));
    fs::remove_file(&overlay).unwrap();

    let out = t.imgtx_code(&["recover"], exit::ERROR);

    assert!(stderr_of(&out).contains("no usable pre-images"));
    t.imgtx_code(&["recover", "--undo"], exit::ERROR);
}

#[test]
fn a_damaged_overlay_after_the_commit_point_is_undone() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (tx, bases, old, _new) = prepared(&t, false);
    crash(&t, "commit-point", &["commit", &tx]);
    let overlay = t.images().join(format!("a.img.{tx}.imgtx.qcow2"));
    fs::write(&overlay, b"garbage").unwrap();

    let out = t.imgtx_json(&["recover"]);

    assert_eq!(out["actions"][0]["action"], "recovered_back");
    assert!(contents(&bases) == old);
}

#[test]
fn interrupted_begins_and_rollbacks_are_cleaned_up() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    for step in ["begin-manifest", "begin-claims", "begin-overlays"] {
        let t = TestDir::new();
        let base = t.raw_image("disk.img", MIB, 3);
        crash(&t, step, &["begin".as_ref(), base.as_os_str()]);
        t.imgtx_ok(&["recover"]);
        t.assert_no_transactions();
        assert_eq!(
            t.image_listing(),
            vec!["disk.img"],
            "after a begin killed at {step}"
        );
        t.begin(&[&base]);
    }
    for step in ["rollback-marked", "rollback-overlays"] {
        let t = TestDir::new();
        let base = t.raw_image("disk.img", MIB, 3);
        let before = fs::read(&base).unwrap();
        let tx = t.begin(&[&base]);
        crash(&t, step, &["rollback", &tx.id]);
        t.imgtx_code(&["commit", &tx.id], exit::RECOVERY_NEEDED);
        t.imgtx_ok(&["recover"]);
        t.assert_no_transactions();
        assert_eq!(
            t.image_listing(),
            vec!["disk.img"],
            "after a rollback killed at {step}"
        );
        assert!(fs::read(&base).unwrap() == before);
    }
}

#[test]
fn sigkill_in_the_middle_of_a_large_copy_recovers_to_old_or_new() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("big.img", 160 * MIB, 4);
    let old = fs::read(&base).unwrap();
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0xee 0 150M");
    let new = converted(&t, tx.overlay());
    let mut cmd = t.command();
    cmd.args(["commit", &tx.id]);
    let mut child = cmd.spawn().unwrap();
    // Long enough to be past the pre-images on this machine most of the time, short enough
    // to land before the copy ends; either way the outcome must be old or new.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = child.kill();
    let _ = child.wait();

    t.imgtx_ok(&["recover"]);

    let now = fs::read(&base).unwrap();
    assert!(now == old || now == new, "the base is neither old nor new");
    if now == old {
        t.imgtx_ok(&["commit", &tx.id]);
        assert!(fs::read(&base).unwrap() == new);
    }
    assert_eq!(t.image_listing(), vec!["big.img"]);
}

#[test]
fn status_shows_an_interrupted_commit_and_recover_by_path_finishes_it() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (tx, bases, _old, new) = prepared(&t, false);
    crash(&t, "commit-point", &["commit", &tx]);
    let status = t.transactions();
    assert_eq!(status[0]["state"], "commit_interrupted");
    let out = t.imgtx_code(&["rollback", &tx], exit::RECOVERY_NEEDED);
    assert!(stderr_of(&out).contains("imgtx recover"));

    // The second base's journal names the coordinator beside the first.
    let r = t.imgtx_json(&["recover".as_ref(), bases[1].as_os_str()]);

    assert_eq!(r["actions"][0]["action"], "recovered_forward");
    assert!(contents(&bases) == new);
    let log = t.imgtx_json(&["log".as_ref(), bases[0].as_os_str()]);
    assert_eq!(log["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(log["entries"][0]["outcome"], "recovered_forward");
    let other = t.raw_image("other.img", MIB, 9);
    let none = t.imgtx_json(&["log".as_ref(), other.as_os_str()]);
    assert_eq!(none["entries"].as_array().map(Vec::len), Some(0));
}
