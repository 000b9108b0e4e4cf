//! Taking committed transactions back with the real binary: `revert` of the newest and of an
//! older kept commit, its refusals (a later transaction or an outside writer changed the same
//! bytes), `prune`, and a revert killed at every journaled step then recovered.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde_json::Value;

use crate::kill::{AFTER_COMMIT_POINT, BEFORE_COMMIT_POINT};
use crate::util::{exit, qemu_io, require_tools, run, stderr_of, stdout_of, TestDir};

const MIB: u64 = 1 << 20;
const KILLED: i32 = 137;

/// Commits `write -P pattern off len` (qemu-io syntax) into `base` with `imgtx run`, plus
/// `extra` options; returns the transaction id.
fn commit_write(t: &TestDir, base: &Path, extra: &[&str], write: &str) -> String {
    let mut args: Vec<&OsStr> = vec!["run".as_ref()];
    args.extend(extra.iter().map(OsStr::new));
    args.extend([
        base.as_os_str(),
        "--".as_ref(),
        "qemu-io".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-c".as_ref(),
        write.as_ref(),
        "{}".as_ref(),
    ]);
    let v = t.imgtx_json(&args);
    assert_eq!(v["outcome"], "committed", "{v}");
    v["id"].as_str().unwrap().to_owned()
}

fn revertible(t: &TestDir) -> Vec<String> {
    let v = t.imgtx_json(&["status"]);
    v["revertible"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn last_entry(t: &TestDir) -> Value {
    let v = t.imgtx_json(&["log"]);
    v["entries"].as_array().unwrap().last().unwrap().clone()
}

#[test]
fn the_newest_commit_is_reverted_and_the_revert_is_revertible_in_turn() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 1);
    let before = fs::read(&base).unwrap();
    let tx = commit_write(&t, &base, &[], "write -P 0xab 1M 1536k");
    let after = fs::read(&base).unwrap();
    assert_ne!(before, after);
    assert_eq!(revertible(&t), vec![tx.clone()]);

    let v = t.imgtx_json(&["revert", &tx]);

    assert_eq!(
        fs::read(&base).unwrap(),
        before,
        "bit-identical to before the commit"
    );
    assert_eq!(v["outcome"], "reverted");
    assert_eq!(v["reverted"], tx.as_str());
    let revert = v["id"].as_str().unwrap().to_owned();
    let entry = last_entry(&t);
    assert_eq!(entry["id"], revert.as_str());
    assert_eq!(entry["outcome"], "reverted");
    assert_eq!(
        entry["command"][2],
        tx.as_str(),
        "names what it reverted: {entry}"
    );
    // The commit is spent; the revert took its place.
    assert_eq!(revertible(&t), vec![revert.clone()]);
    let again = t.imgtx_code(&["revert", &tx], exit::ERROR);
    assert!(
        stderr_of(&again).contains("no longer kept"),
        "{}",
        stderr_of(&again)
    );

    t.imgtx_ok(&["revert", &revert]);

    assert_eq!(fs::read(&base).unwrap(), after, "the revert of the revert");
    t.assert_no_transactions();
}

#[test]
fn an_older_kept_commit_is_reverted_under_a_later_one_that_touched_other_bytes() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 2);
    let v0 = fs::read(&base).unwrap();
    let older = commit_write(&t, &base, &["--keep"], "write -P 0x11 0 512k");
    let newer = commit_write(&t, &base, &[], "write -P 0x22 2M 1M");
    let v2 = fs::read(&base).unwrap();
    assert_eq!(revertible(&t), vec![older.clone(), newer.clone()]);

    t.imgtx_ok(&["revert", &older]);

    let now = fs::read(&base).unwrap();
    assert_eq!(
        &now[..512 << 10],
        &v0[..512 << 10],
        "the older commit's bytes are back"
    );
    assert_eq!(
        &now[512 << 10..],
        &v2[512 << 10..],
        "the newer commit's bytes stay"
    );
}

#[test]
fn a_revert_under_a_later_overlapping_commit_is_refused_naming_it() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 3);
    let v0 = fs::read(&base).unwrap();
    let older = commit_write(&t, &base, &["--keep"], "write -P 0x11 1M 1M");
    let newer = commit_write(&t, &base, &[], "write -P 0x22 1536k 1M");
    let v2 = fs::read(&base).unwrap();

    let out = t.imgtx_code(&["revert", &older], exit::BUSY);

    let err = stderr_of(&out);
    assert!(err.contains(&newer), "names the later transaction: {err}");
    assert!(
        err.contains(&format!("imgtx revert {newer}")),
        "says what to do: {err}"
    );
    assert_eq!(fs::read(&base).unwrap(), v2, "nothing written");
    assert!(!t.image_listing().iter().any(|f| f.contains(".imgtx.claim")));
    // In the order it asks for, both go back.
    t.imgtx_ok(&["revert", &newer]);
    t.imgtx_ok(&["revert", &older]);
    assert_eq!(fs::read(&base).unwrap(), v0);
}

#[test]
fn a_revert_after_an_outside_write_is_refused_and_writes_nothing() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 4);
    let tx = commit_write(&t, &base, &[], "write -P 0x33 1M 1M");
    // Someone writes one byte into what the commit wrote, the way dd would; same length,
    // and the modification time put back, so only the content tells.
    let mtime = fs::metadata(&base).unwrap().modified().unwrap();
    let f = fs::OpenOptions::new().write(true).open(&base).unwrap();
    f.write_all_at(b"X", MIB + 4097).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    let touched = fs::read(&base).unwrap();

    let out = t.imgtx_code(&["revert", &tx], exit::BUSY);

    let err = stderr_of(&out);
    assert!(
        err.contains("no longer holds what the transaction wrote"),
        "{err}"
    );
    assert!(err.contains("outside imgtx"), "{err}");
    assert_eq!(fs::read(&base).unwrap(), touched);
    assert_eq!(
        revertible(&t),
        vec![tx],
        "still listed: the refusal changed nothing"
    );
}

#[test]
fn prune_frees_kept_pre_images_and_their_transactions_are_no_longer_revertible() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let a = t.raw_image("a.img", 2 * MIB, 5);
    let b = t.raw_image("b.img", 2 * MIB, 6);
    let first = commit_write(&t, &a, &["--keep"], "write -P 0x44 0 1M");
    let second = commit_write(&t, &b, &["--keep"], "write -P 0x55 0 1M");
    let kept_file = |base: &Path, tx: &str| {
        let name = base.file_name().unwrap().to_string_lossy();
        base.with_file_name(format!(".{name}.{tx}.imgtx.kept"))
    };
    assert!(kept_file(&a, &first).exists());

    let dry = t.imgtx_json(&["prune", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry["pruned"][0]["id"], first.as_str());
    assert!(kept_file(&a, &first).exists(), "a dry run frees nothing");
    let v = t.imgtx_json(&["prune", "--keep-last", "1"]);

    assert_eq!(v["pruned"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["bytes"].as_u64().unwrap() >= MIB);
    assert!(!kept_file(&a, &first).exists());
    assert_eq!(revertible(&t), vec![second.clone()]);
    let out = t.imgtx_code(&["revert", &first], exit::ERROR);
    assert!(
        stderr_of(&out).contains("no longer kept"),
        "{}",
        stderr_of(&out)
    );
    // Nothing younger than a day is older than a day.
    let v = t.imgtx_json(&["prune", "--older-than", "1d"]);
    assert_eq!(v["pruned"].as_array().unwrap().len(), 0);
    let bad = run(t.command().args(["prune", "--older-than", "soon"]));
    assert_eq!(bad.status.code(), Some(exit::USAGE));
}

#[test]
fn a_revert_killed_at_every_step_recovers_to_before_or_after_it() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    // A revert is journaled as a commit is: it passes the same steps.
    let steps: Vec<&str> = BEFORE_COMMIT_POINT
        .iter()
        .chain(AFTER_COMMIT_POINT)
        .copied()
        .collect();
    for (i, step) in steps.iter().enumerate() {
        for undo in [false, true] {
            let t = TestDir::new();
            let base = t.raw_image("disk.img", 4 * MIB, 7);
            let v0 = fs::read(&base).unwrap();
            // It grows the base, so the revert also cuts it back.
            let tx = {
                let mut cmd = t.command();
                cmd.args(["run", "--json"]).arg(&base).args([
                    "--",
                    "sh",
                    "-c",
                    "qemu-img resize -q \"$1\" 6M && qemu-io -f qcow2 -c 'write -P 0x66 3M 2M' \"$1\"",
                    "sh",
                    "{}",
                ]);
                let out = run(&mut cmd);
                assert!(out.status.success(), "{}", stderr_of(&out));
                let v: Value = serde_json::from_str(&stdout_of(&out)).unwrap();
                v["id"].as_str().unwrap().to_owned()
            };
            let v1 = fs::read(&base).unwrap();
            assert_eq!(v1.len() as u64, 6 * MIB);
            let mut cmd = t.command();
            cmd.env("IMGTX_TEST_CRASH_AFTER", step)
                .args(["revert", &tx]);
            let out = run(&mut cmd);
            assert_eq!(
                out.status.code(),
                Some(KILLED),
                "{step}: {}",
                stderr_of(&out)
            );

            let mut args = vec!["recover"];
            if undo {
                args.push("--undo");
            }
            t.imgtx_ok(&args);

            let now = fs::read(&base).unwrap();
            // Past the commit point, the revert is finished unless undone; once logged, it
            // is final either way.
            let reverted = i >= steps.iter().position(|s| *s == "commit-point").unwrap()
                && (!undo || i >= steps.iter().position(|s| *s == "logged").unwrap());
            let ctx = format!("killed after {step}, recover undo={undo}");
            if reverted {
                assert!(now == v0, "{ctx}: expected the revert done");
            } else {
                assert!(now == v1, "{ctx}: expected the revert not done");
                // Not done: it still can be.
                t.imgtx_ok(&["revert", &tx]);
                assert!(
                    fs::read(&base).unwrap() == v0,
                    "{ctx}: the revert afterwards"
                );
            }
            let leftovers: Vec<String> = t
                .image_listing()
                .into_iter()
                .filter(|f| {
                    !f.ends_with(".imgtx.spare") && !f.ends_with(".imgtx.kept") && f != "disk.img"
                })
                .collect();
            assert!(leftovers.is_empty(), "{ctx}: {leftovers:?}");
            t.assert_no_transactions();
        }
    }
}

#[test]
fn a_revert_killed_before_its_journals_leaves_nothing_claimed() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 2 * MIB, 8);
    let tx = commit_write(&t, &base, &[], "write -P 0x77 0 1M");
    let v1 = fs::read(&base).unwrap();
    // Killed before its intent is durable: only its claim is out there.
    let mut cmd = t.command();
    cmd.env("IMGTX_TEST_CRASH_AFTER", "revert-claimed")
        .args(["revert", &tx]);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(KILLED), "{}", stderr_of(&out));
    assert!(t
        .image_listing()
        .iter()
        .any(|f| f.ends_with(".imgtx.claim")));
    // Nobody else takes the image meanwhile, and they are told to recover.
    let out = t.imgtx_code(&["begin", base.to_str().unwrap()], exit::RECOVERY_NEEDED);
    assert!(
        stderr_of(&out).contains("imgtx recover"),
        "{}",
        stderr_of(&out)
    );

    let v = t.imgtx_json(&["recover"]);

    assert!(v.to_string().contains("released_revert"), "{v}");
    assert!(!t
        .image_listing()
        .iter()
        .any(|f| f.ends_with(".imgtx.claim")));
    assert_eq!(fs::read(&base).unwrap(), v1);
    t.imgtx_ok(&["revert", &tx]);
}

#[test]
fn status_lists_what_can_be_reverted_with_its_size() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 2 * MIB, 9);
    let tx = commit_write(&t, &base, &["--keep"], "write -P 0x12 0 1M");

    let human = t.imgtx_ok(&["status"]);
    let v = t.imgtx_json(&["status"]);

    assert!(
        human.contains(&tx) && human.contains("1.00 MiB") && human.contains("(kept)"),
        "{human}"
    );
    let r = &v["revertible"][0];
    assert_eq!(r["id"], tx.as_str());
    assert_eq!(r["pinned"], true);
    assert!(r["bytes"].as_u64().unwrap() >= MIB);
    assert!(qemu_io_ok(&base));
}

/// The base opens in qemu (nothing of the revert machinery holds it).
fn qemu_io_ok(base: &Path) -> bool {
    !qemu_io(&[
        "-f".as_ref(),
        "raw".as_ref(),
        "-c".as_ref(),
        "read 0 4k".as_ref(),
        base.as_os_str(),
    ])
    .is_empty()
}

#[test]
fn a_qcow2_base_is_reverted_bit_for_bit_and_checks_clean() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.image("disk.qcow2");
    crate::util::qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        base.as_os_str(),
        "8M".as_ref(),
    ]);
    crate::util::qcow2_io(&base, "write -P 0x5a 0 3M");
    let before = fs::read(&base).unwrap();
    let tx = commit_write(&t, &base, &[], "write -P 0xa5 1M 4M");
    assert_ne!(fs::read(&base).unwrap(), before);

    t.imgtx_ok(&["revert", &tx]);

    assert!(
        fs::read(&base).unwrap() == before,
        "the qcow2 file is back, bit for bit"
    );
    crate::util::qemu_img(&["check".as_ref(), "-q".as_ref(), base.as_os_str()]);
}

#[test]
fn on_xfs_a_reflinked_commit_keeps_its_overlay_as_proof_and_reverts_by_it() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let xfs = match testkit::xfs::Xfs::mount(512) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let t = TestDir::new_in(xfs.path());
    let base = t.raw_image("disk.img", 8 * MIB, 10);
    let before = fs::read(&base).unwrap();
    let tx = commit_write(&t, &base, &[], "write -P 0x3c 1M 4M");
    let post = base.with_file_name(format!(".disk.img.{tx}.imgtx.post"));
    assert!(
        post.exists(),
        "the overlay whose data was shared is kept as proof"
    );

    // An outside write into what the commit wrote is seen through the kept overlay.
    let f = fs::OpenOptions::new().write(true).open(&base).unwrap();
    f.write_all_at(b"Z", 2 * MIB + 5).unwrap();
    drop(f);
    let out = t.imgtx_code(&["revert", &tx], exit::BUSY);
    assert!(
        stderr_of(&out).contains("outside imgtx"),
        "{}",
        stderr_of(&out)
    );
    // Put the byte back as the commit left it: now it reverts, bit for bit.
    let f = fs::OpenOptions::new().write(true).open(&base).unwrap();
    f.write_all_at(&[0x3c], 2 * MIB + 5).unwrap();
    drop(f);

    t.imgtx_ok(&["revert", &tx]);

    assert!(
        fs::read(&base).unwrap() == before,
        "bit-identical to before the commit"
    );
    assert!(
        !post.exists(),
        "the proof is spent with the commit it proved"
    );
}
