//! Transactions over raw bases through the real binary: commit, rollback, run, busy, qemu locks.

use std::fs;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::util::{converted_raw, exit, qcow2_io, qemu_img, require_tools, stderr_of, TestDir};

const MIB: u64 = 1 << 20;

#[test]
fn commit_makes_the_raw_base_equal_to_the_overlay_and_leaves_nothing_behind() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 8 * MIB, 1);
    let tx = t.begin(&[&base]);
    assert_eq!(tx.images[0].base_format, "raw");
    qcow2_io(tx.overlay(), "write -P 0xab 1M 2M");
    qcow2_io(tx.overlay(), "write -z 5M 1M");
    let expected = converted_raw(&t, tx.overlay());

    let out = t.imgtx_json(&["commit", &tx.id]);

    assert_eq!(out["outcome"], "committed");
    assert_eq!(out["images"][0]["changed_bytes"], 3 * MIB);
    assert!(
        fs::read(&base).unwrap() == expected,
        "base differs from the overlay's content"
    );
    assert_eq!(t.image_listing(), vec!["disk.img"]);
    t.assert_no_transactions();
    let log = t.imgtx_json(&["log"]);
    assert_eq!(log["entries"][0]["outcome"], "committed");
    assert_eq!(log["entries"][0]["id"], tx.id.as_str());
}

/// Commits `pattern` over 2 MiB at 1 MiB of `base` (`images/disk.img`) with `flags`; returns
/// the base's new content.
/// Commits a 2 MiB write at 1 MiB with `flags`, checks the base, returns what commit printed.
fn commit_a_write(t: &TestDir, base: &std::path::Path, pattern: u8, flags: &[&str]) -> String {
    let tx = t.begin(&[base]);
    qcow2_io(tx.overlay(), &format!("write -P {pattern} 1M 2M"));
    let expected = converted_raw(t, tx.overlay());
    let mut args = vec!["commit"];
    args.extend_from_slice(flags);
    args.push(&tx.id);
    let printed = t.imgtx_ok(&args);
    assert!(
        fs::read(base).unwrap() == expected,
        "{flags:?}: base differs"
    );
    printed
}

#[test]
fn the_pre_image_file_is_kept_as_a_spare_reused_in_place_and_removed_by_no_spare() {
    use std::os::unix::fs::MetadataExt;
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 8 * MIB, 1);
    let old = fs::read(&base).unwrap();
    let spare = t.spare("disk.img");

    let printed = commit_a_write(&t, &base, 0x11, &[]);
    let kept = fs::metadata(&spare).expect("the first commit keeps its pre-images");
    assert_eq!(kept.mode() & 0o777, 0o600);
    // The user is told where the disk space went and how to get it back.
    assert!(
        printed.contains(&format!("kept {} (", spare.display()))
            && printed.contains("--no-spare removes it"),
        "commit did not name the spare it kept: {printed}"
    );
    // It holds what the commit overwrote: the old content of 1M..3M, after block-aligned
    // entry headers.
    let data = fs::read(&spare).unwrap();
    assert!(
        data.windows(4096)
            .any(|w| w == &old[MIB as usize..MIB as usize + 4096]),
        "the spare does not hold the old content"
    );

    let printed = commit_a_write(&t, &base, 0x22, &["--json"]);
    let again = fs::metadata(&spare).expect("the second commit keeps its pre-images");
    let json: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(
        json["spares"],
        serde_json::json!([{"path": spare, "bytes": again.len(), "pinned": false}])
    );
    assert_eq!(
        again.ino(),
        kept.ino(),
        "the spare was not overwritten in place"
    );

    let printed = commit_a_write(&t, &base, 0x33, &["--no-undo"]);
    assert!(
        !printed.contains("kept"),
        "--no-undo kept nothing: {printed}"
    );
    assert_eq!(
        fs::metadata(&spare)
            .expect("--no-undo leaves the spare")
            .ino(),
        kept.ino()
    );

    let printed = commit_a_write(&t, &base, 0x44, &["--no-spare", "--json"]);
    assert!(!spare.exists(), "--no-spare left the spare");
    let json: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(json["spares"], serde_json::json!([]));
    assert_eq!(t.image_listing(), vec!["disk.img"]);
    t.assert_no_transactions();
}

#[test]
fn writes_into_the_free_space_of_a_sparse_base_save_no_pre_image_data() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    // 64 MiB, data in the first MiB only: the rest is a hole, as in a fresh sparse image.
    let base = t.image("sparse.img");
    let file = fs::File::create(&base).unwrap();
    file.set_len(64 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x5a; MIB as usize], 0).unwrap();
    drop(file);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x11 512k 1M");
    qcow2_io(tx.overlay(), "write -P 0x22 8M 16M");
    let expected = converted_raw(&t, tx.overlay());

    t.imgtx_ok(&["commit", &tx.id]);

    assert!(fs::read(&base).unwrap() == expected, "base differs");
    // Of the 17 MiB overwritten, only the 512 KiB that held data is saved as data; the rest
    // were holes and are entry headers alone. The file holds 512 KiB and a block or two.
    let spare = fs::metadata(t.spare("sparse.img")).unwrap().len();
    assert!(
        (512 * 1024..576 * 1024).contains(&spare),
        "the pre-image file is {spare} bytes"
    );
}

#[test]
fn commit_grows_the_base_when_the_overlay_was_resized() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 2);
    let tx = t.begin(&[&base]);
    qemu_img(&[
        "resize".as_ref(),
        "-q".as_ref(),
        tx.overlay().as_os_str(),
        "6M".as_ref(),
    ]);
    qcow2_io(tx.overlay(), "write -P 0xcd 5M 4k");
    let expected = converted_raw(&t, tx.overlay());

    t.imgtx_ok(&["commit", &tx.id]);

    let now = fs::read(&base).unwrap();
    assert_eq!(now.len() as u64, 6 * MIB);
    assert!(now == expected);
}

#[test]
fn rollback_leaves_the_base_untouched_and_removes_the_overlay() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 2 * MIB, 3);
    let before = fs::read(&base).unwrap();
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0xab 0 1M");

    t.imgtx_ok(&["rollback", &tx.id]);

    assert!(fs::read(&base).unwrap() == before);
    assert_eq!(t.image_listing(), vec!["disk.img"]);
    t.assert_no_transactions();
    assert_eq!(
        t.imgtx_json(&["log"])["entries"][0]["outcome"],
        "rolled_back"
    );
    t.imgtx_code(&["commit", &tx.id], exit::ERROR);
}

#[test]
fn recover_with_nothing_to_do_succeeds() {
    let t = TestDir::new();
    let out = t.imgtx_json(&["recover"]);
    assert_eq!(out["actions"].as_array().map(Vec::len), Some(0));
}

#[test]
fn a_base_named_through_a_hard_link_symlink_or_relative_path_is_busy() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 4);
    let tx = t.begin(&[&base]);
    let hard = t.path().join("hard.img");
    fs::hard_link(&base, &hard).unwrap();
    let soft = t.path().join("soft.img");
    std::os::unix::fs::symlink(&base, &soft).unwrap();

    for name in [
        hard.as_os_str(),
        soft.as_os_str(),
        "images/disk.img".as_ref(),
    ] {
        let out = t.imgtx_code(&["begin".as_ref(), name], exit::BUSY);
        assert!(
            stderr_of(&out).contains(&tx.id),
            "the error names the holder"
        );
    }
    let out = t.imgtx_code(
        &["begin".as_ref(), "--json".as_ref(), hard.as_os_str()],
        exit::BUSY,
    );
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).expect("JSON error");
    assert_eq!(err["exit_code"], 3);
}

#[test]
fn wait_with_a_timeout_gives_up_and_wait_succeeds_once_the_base_is_free() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 5);
    let tx = t.begin(&[&base]);
    t.imgtx_code(
        &["begin".as_ref(), "--wait=0.5".as_ref(), base.as_os_str()],
        exit::BUSY,
    );

    let mut waiter = t.command();
    waiter
        .args(["begin", "--json", "--wait"])
        .arg(&base)
        .stdout(Stdio::piped());
    let child = waiter.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    t.imgtx_ok(&["rollback", &tx.id]);
    let out = child.wait_with_output().unwrap();

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(v["id"], tx.id.as_str());
}

#[test]
fn a_base_held_open_by_qemu_is_refused_as_busy() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 6);
    // qemu-io idles holding its locks while its stdin stays open.
    let mut qemu = Command::new("qemu-io")
        .args(["-f", "raw"])
        .arg(&base)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));

    let out = t.imgtx_code(&["begin".as_ref(), base.as_os_str()], exit::BUSY);

    assert!(stderr_of(&out).contains("qemu"));
    let _ = qemu.stdin.take().map(|mut s| s.write_all(b"quit\n"));
    let _ = qemu.wait();
    t.assert_no_transactions();
}

#[test]
fn commit_refuses_an_overlay_in_use_by_qemu_and_a_changed_base() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 7);
    let tx = t.begin(&[&base]);
    let mut qemu = Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(tx.overlay())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    t.imgtx_code(&["commit", &tx.id], exit::BUSY);
    let _ = qemu.stdin.take().map(|mut s| s.write_all(b"quit\n"));
    let _ = qemu.wait();

    fs::OpenOptions::new()
        .append(true)
        .open(&base)
        .unwrap()
        .write_all(b"x")
        .unwrap();
    let out = t.imgtx_code(&["commit", &tx.id], exit::BUSY);
    assert!(stderr_of(&out).contains("changed since"));
}

#[test]
fn run_commits_when_the_command_succeeds() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 2 * MIB, 8);
    let out = t.imgtx_json(&[
        "run".as_ref(),
        base.as_os_str(),
        "--".as_ref(),
        "qemu-io".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-c".as_ref(),
        "write -P 0x5a 4k 8k".as_ref(),
        "{}".as_ref(),
    ]);
    assert_eq!(out["outcome"], "committed");
    let now = fs::read(&base).unwrap();
    assert!(now[4096..12288].iter().all(|&b| b == 0x5a));
    let log = t.imgtx_json(&["log"]);
    assert_eq!(log["entries"][0]["command"][0], "qemu-io");
}

#[test]
fn run_rolls_back_and_passes_on_the_exit_code_when_the_command_fails() {
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 9);
    let before = fs::read(&base).unwrap();
    let out = t.imgtx_code(
        &[
            "run".as_ref(),
            base.as_os_str(),
            "--".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            "test -f \"$IMGTX_OVERLAY\" && exit 7".as_ref(),
        ],
        7,
    );
    let _ = out;
    assert!(fs::read(&base).unwrap() == before);
    assert_eq!(t.image_listing(), vec!["disk.img"]);
    assert_eq!(
        t.imgtx_json(&["log"])["entries"][0]["outcome"],
        "rolled_back"
    );
}

#[test]
fn two_images_commit_together() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let a = t.raw_image("a.img", 2 * MIB, 10);
    let b = t.raw_image("b.img", 3 * MIB, 11);
    let tx = t.begin(&[&a, &b]);
    qcow2_io(&tx.images[0].overlay, "write -P 0x01 0 64k");
    qcow2_io(&tx.images[1].overlay, "write -P 0x02 1M 64k");
    let (ea, eb) = (
        converted_raw(&t, &tx.images[0].overlay),
        converted_raw(&t, &tx.images[1].overlay),
    );

    t.imgtx_ok(&["commit", &tx.id]);

    assert!(fs::read(&a).unwrap() == ea);
    assert!(fs::read(&b).unwrap() == eb);
    assert_eq!(t.image_listing(), vec!["a.img", "b.img"]);
}

#[test]
fn a_raw_base_that_looks_like_qcow2_needs_an_explicit_format() {
    let t = TestDir::new();
    let base = t.image("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..4].copy_from_slice(b"QFI\xfb");
    fs::write(&base, &bytes).unwrap();

    let out = t.imgtx_code(&["begin".as_ref(), base.as_os_str()], exit::ERROR);
    assert!(stderr_of(&out).contains("--base-format"));

    let tx = t.imgtx_json(&[
        "begin".as_ref(),
        "--base-format".as_ref(),
        "raw".as_ref(),
        base.as_os_str(),
    ]);
    assert_eq!(tx["images"][0]["base_format"], "raw");
}

#[test]
fn usage_errors_exit_2_and_unknown_transactions_exit_1() {
    let t = TestDir::new();
    t.imgtx_code(&["begin"], exit::USAGE);
    t.imgtx_code(&["frobnicate"], exit::USAGE);
    t.imgtx_code(&["commit", "tx-0000000000"], exit::ERROR);
    t.imgtx_code(&["commit", "../../etc/passwd"], exit::ERROR);
}

#[test]
fn recover_removes_lock_files_left_by_a_killed_cleanup_and_keeps_live_ones() {
    // Arrange: an open transaction (its lock file must stay) and the empty lock file of a
    // transaction whose cleanup was killed after its manifest went.
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 5);
    let open = t.begin(&[&base]);
    let locks = t.state_dir().join("locks");
    let orphan = locks.join("tx-0123456789.lock");
    fs::write(&orphan, b"").expect("plant the leftover lock file");
    let live = locks.join(format!("{}.lock", open.id));
    fs::write(&live, b"").expect("the open transaction's lock file");

    // Act
    t.imgtx_ok(&["recover"]);

    // Assert
    assert!(!orphan.exists(), "the leftover lock file is still there");
    assert!(
        live.exists(),
        "the open transaction's lock file was removed"
    );
    t.imgtx_ok(&["rollback", &open.id]);
}
