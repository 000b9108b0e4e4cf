//! What operators do around an interrupted commit, against the real binary: a base removed or
//! replaced after the crash, one transaction that cannot be recovered among others, a lost
//! state directory.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::{exit, qcow2_io, require_tools, run, stderr_of, TestDir};

const MIB: u64 = 1 << 20;
const KILLED: i32 = 137;

/// A raw base `name` with 1 MiB written in its overlay, committed and killed right after the
/// commit point (the base is then between old and new, as far as recovery knows). Returns
/// the transaction id and the base.
fn interrupted(t: &TestDir, name: &str, seed: u8) -> (String, PathBuf) {
    let base = t.raw_image(name, 4 * MIB, seed);
    let tx = t.begin(&[&base]);
    let cmd = format!("write -P 0x{seed:x}5 512k 1M");
    qcow2_io(tx.overlay(), &cmd);
    let mut kill = t.command();
    kill.env("IMGTX_TEST_CRASH_AFTER", "commit-point")
        .args(["commit", &tx.id]);
    assert_eq!(run(&mut kill).status.code(), Some(KILLED));
    (tx.id, base)
}

/// `imgtx recover --json` run to its end, whatever its status.
fn recover_json(t: &TestDir, args: &[&str], code: i32) -> Value {
    let mut all = vec!["recover", "--json"];
    all.extend_from_slice(args);
    let out = t.imgtx_code(&all, code);
    serde_json::from_slice(&out.stdout).expect("recover --json prints JSON")
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn one_transaction_that_cannot_be_recovered_does_not_stop_the_others() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (tx1, base1) = interrupted(&t, "a.img", 1);
    let (tx2, base2) = interrupted(&t, "b.img", 2);
    // Recovery goes through transactions in id order: break the first one, so that a
    // recovery that stops at the first failure leaves the second interrupted.
    let ((broken_tx, broken), (good_tx, good)) = if tx1 < tx2 {
        ((tx1, base1), (tx2, base2))
    } else {
        ((tx2, base2), (tx1, base1))
    };
    // Replaced after the crash: a new file under the old name.
    fs::remove_file(&broken).unwrap();
    fs::write(&broken, vec![7u8; 4 << 20]).unwrap();

    let r = recover_json(&t, &[], exit::ERROR);

    assert_eq!(r["actions"][0]["tx"], good_tx.as_str(), "{r:#}");
    assert_eq!(r["actions"][0]["action"], "recovered_forward");
    assert_eq!(r["failures"][0]["tx"], broken_tx.as_str(), "{r:#}");
    let why = r["failures"][0]["error"].as_str().unwrap();
    assert!(why.contains("replaced"), "{why}");
    assert_eq!(
        fs::read(&broken).unwrap(),
        vec![7u8; 4 << 20],
        "never written"
    );
    let states: Vec<Value> = t.transactions().iter().map(|s| s["id"].clone()).collect();
    assert_eq!(states, vec![Value::from(broken_tx)]);
    let _ = good;
}

#[test]
fn a_transaction_whose_base_is_gone_can_be_abandoned_and_its_files_are_kept() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (tx, base) = interrupted(&t, "disk.img", 3);
    let moved = t.path().join("moved.img");
    fs::rename(&base, &moved).unwrap();

    // Recovery cannot write a base that is not there, and says where it looked.
    let out = t.imgtx_code(&["recover"], exit::ERROR);
    let err = stderr_of(&out);
    assert!(err.contains(&base.display().to_string()), "{err}");
    assert!(
        err.contains("--abandon"),
        "the hint names the way out: {err}"
    );
    t.imgtx_code(&["begin", base.to_str().unwrap()], exit::ERROR);

    let r = t.imgtx_json(&["recover", "--abandon", &tx]);

    assert_eq!(r["outcome"], "abandoned");
    let kept: Vec<&str> = r["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(
        kept.iter().any(|k| k.ends_with(".imgtx.journal.abandoned")),
        "{kept:?}"
    );
    assert!(kept.iter().any(|k| k.ends_with(".imgtx.qcow2")), "{kept:?}");
    for k in &kept {
        assert!(Path::new(k).exists(), "{k} was not kept");
    }
    t.assert_no_transactions();
    let log = t.imgtx_json(&["log"]);
    let last = log["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["outcome"], "abandoned");
    assert_eq!(last["id"], tx.as_str());
    // The name is free again: a new image there begins and commits normally.
    fs::rename(&moved, &base).unwrap();
    let again = t.begin(&[&base]);
    t.imgtx_ok(&["commit", &again.id]);
    t.imgtx_ok(&["recover"]);
}

#[test]
fn with_the_state_directory_lost_a_scan_finds_and_recovers_interrupted_commits() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (tx, base) = interrupted(&t, "disk.img", 4);
    fs::remove_dir_all(t.state_dir()).unwrap();
    fs::create_dir(t.state_dir()).unwrap();

    let blind = recover_json(&t, &[], exit::OK);
    assert_eq!(blind["actions"], Value::Array(Vec::new()), "{blind:#}");

    let scan = t.images();
    let r = recover_json(&t, &["--scan", scan.to_str().unwrap()], exit::OK);

    assert_eq!(r["actions"][0]["tx"], tx.as_str(), "{r:#}");
    assert_eq!(r["actions"][0]["action"], "recovered_forward");
    let now = fs::read(&base).unwrap();
    assert!(now[512 << 10..(512 << 10) + (1 << 20)]
        .iter()
        .all(|&b| b == 0x45));
    let left: Vec<String> = names(&t.images())
        .into_iter()
        .filter(|n| !n.ends_with(".imgtx.spare"))
        .collect();
    assert_eq!(left, vec!["disk.img"]);
}

/// A base with 1 MiB changed, committed (with `extra` commit flags) and killed right after
/// the `step` it names. Returns the transaction, the base, its old and its new content.
fn crashed_after(t: &TestDir, step: &str, extra: &[&str]) -> (String, PathBuf, Vec<u8>, Vec<u8>) {
    let base = t.raw_image("disk.img", 4 * MIB, 6);
    let old = fs::read(&base).unwrap();
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x66 1M 1M");
    let mut new = old.clone();
    new[1 << 20..2 << 20].fill(0x66);
    let mut kill = t.command();
    kill.env("IMGTX_TEST_CRASH_AFTER", step)
        .arg("commit")
        .args(extra)
        .arg(&tx.id);
    assert_eq!(run(&mut kill).status.code(), Some(KILLED));
    (tx.id, base, old, new)
}

#[test]
fn a_base_truncated_or_extended_after_the_crash_is_refused_untouched() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    for change in ["truncate", "append"] {
        let t = TestDir::new();
        let (_tx, base, _old, _new) = crashed_after(&t, "commit-point", &[]);
        let f = fs::OpenOptions::new().write(true).open(&base).unwrap();
        match change {
            "truncate" => f.set_len(3 * MIB).unwrap(),
            _ => f.set_len(5 * MIB).unwrap(),
        }
        drop(f);
        let before = fs::read(&base).unwrap();

        let out = t.imgtx_code(&["recover"], exit::ERROR);

        let err = stderr_of(&out);
        assert!(
            err.contains("neither its old length nor its new one"),
            "{change}: {err}"
        );
        assert!(
            fs::read(&base).unwrap() == before,
            "{change}: the base was written"
        );
        let out = t.imgtx_code(&["recover", "--undo"], exit::ERROR);
        assert!(stderr_of(&out).contains("length"), "{change}");
        assert!(
            fs::read(&base).unwrap() == before,
            "{change}: --undo wrote the base"
        );
    }
}

#[test]
fn an_overlay_written_after_the_crash_is_not_redone_the_old_content_comes_back() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (tx, base, old, _new) = crashed_after(&t, "commit-point", &[]);
    // The same clusters again: the overlay's map, hence the plan, stays the same.
    let overlay = t.image(&format!("disk.img.{tx}.imgtx.qcow2"));
    qcow2_io(&overlay, "write -P 0x77 1M 64k");

    let r = recover_json(&t, &[], exit::OK);

    assert_eq!(r["actions"][0]["action"], "recovered_back", "{r:#}");
    assert!(fs::read(&base).unwrap() == old, "a third state landed");
}

#[test]
fn an_overlay_written_after_the_crash_of_a_no_undo_commit_is_refused() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (tx, base, _old, _new) = crashed_after(&t, "commit-point", &["--no-undo"]);
    let overlay = t.image(&format!("disk.img.{tx}.imgtx.qcow2"));
    qcow2_io(&overlay, "write -P 0x77 1M 64k");
    let before = fs::read(&base).unwrap();

    let out = t.imgtx_code(&["recover"], exit::ERROR);

    assert!(stderr_of(&out).contains("overlay"), "{}", stderr_of(&out));
    assert!(fs::read(&base).unwrap() == before, "the base was written");
}

/// The offset of the last record frame in the journal at `path`: its last synced block holds
/// the records of the last sync, one frame after another (see docs/journal-format.md).
fn last_record_frame(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap();
    let block = bytes
        .chunks(4096)
        .rposition(|b| b.iter().any(|&x| x != 0))
        .unwrap();
    let (mut at, mut last) = (block * 4096, None);
    while at + 32 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = u32::from_le_bytes(bytes[at + 24..at + 28].try_into().unwrap());
        if kind != 1 {
            break;
        }
        last = Some(at);
        at += (32 + len).next_multiple_of(8);
    }
    last.expect("a record frame") as u64
}

#[test]
fn a_journal_that_lost_its_commit_record_never_throws_away_the_pre_images() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    for damage in ["cut", "flip"] {
        let t = TestDir::new();
        // Crashed after the base was fully written: base = new, journal ... Commit, Applied.
        let (tx, base, old, new) = crashed_after(&t, "applied", &[]);
        assert!(fs::read(&base).unwrap() == new);
        let journal = t.image(&format!(".disk.img.{tx}.imgtx.journal"));
        // Back to the sync of the commit record, then lose that record.
        let applied = last_record_frame(&journal);
        let f = fs::OpenOptions::new().write(true).open(&journal).unwrap();
        f.set_len(applied - applied % 4096).unwrap();
        drop(f);
        let commit = last_record_frame(&journal);
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&journal)
            .unwrap();
        if damage == "cut" {
            f.set_len(commit).unwrap();
        } else {
            use std::os::unix::fs::FileExt;
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, commit + 32).unwrap();
            f.write_all_at(&[b[0] ^ 0x40], commit + 32).unwrap();
        }
        drop(f);

        let out = t.imgtx(&["recover", "--undo", "--json"]);

        let now = fs::read(&base).unwrap();
        let undo = t.image(&format!(".disk.img.{tx}.imgtx.undo"));
        if out.status.success() {
            let r: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                r["actions"][0]["action"], "restored_uncommitted",
                "{damage}: {r:#}"
            );
            assert!(now == old, "{damage}: the old content was not restored");
            assert_eq!(
                t.transactions().len(),
                1,
                "{damage}: the transaction stays open"
            );
        } else {
            // Refusing is fine too, as long as the way back is kept.
            assert!(
                undo.exists(),
                "{damage}: refused but the pre-images are gone"
            );
            assert!(now == new, "{damage}: refused but the base was written");
        }
    }
}

#[test]
fn pre_images_whose_journal_was_deleted_are_found_kept_and_restored_on_request() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (tx, base, old, new) = crashed_after(&t, "applied", &[]);
    fs::remove_file(t.image(&format!(".disk.img.{tx}.imgtx.journal"))).unwrap();
    let undo = t.image(&format!(".disk.img.{tx}.imgtx.undo"));

    let status = t.transactions();
    assert_eq!(
        status[0]["state"], "pre_images_without_journal",
        "{status:#?}"
    );
    // Neither committing again nor rolling back may go past it: they would lose the way back.
    t.imgtx_code(&["commit", &tx], exit::RECOVERY_NEEDED);
    t.imgtx_code(&["rollback", &tx], exit::RECOVERY_NEEDED);
    let r = recover_json(&t, &[], exit::ERROR);
    let why = r["failures"][0]["error"].as_str().unwrap().to_owned();
    assert!(why.contains("journal is missing"), "{why}");
    assert!(
        undo.exists() && fs::read(&base).unwrap() == new,
        "refused, nothing touched"
    );

    let r = recover_json(&t, &["--undo"], exit::OK);

    assert_eq!(r["actions"][0]["action"], "restored_uncommitted", "{r:#}");
    assert!(fs::read(&base).unwrap() == old);
    assert!(!undo.exists());
    t.imgtx_ok(&["rollback", &tx]);
    t.assert_no_transactions();
}

#[test]
fn a_state_directory_others_can_write_is_refused_with_a_way_to_fix_it() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    fs::set_permissions(t.state_dir(), fs::Permissions::from_mode(0o777)).unwrap();

    for args in [
        &["status"][..],
        &["recover"],
        &["begin", base.to_str().unwrap()],
    ] {
        let out = t.imgtx_code(args, exit::ERROR);
        let err = stderr_of(&out);
        assert!(err.contains("lets other users write it"), "{args:?}: {err}");
        assert!(
            err.contains("chmod"),
            "{args:?}: the hint says how to fix it: {err}"
        );
    }
    assert!(
        fs::read_dir(t.images()).unwrap().count() == 1,
        "nothing was created"
    );
}

#[test]
fn a_state_directory_of_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to give the state directory to another user");
        return;
    }
    let t = TestDir::new();
    let nobody = nix::unistd::Uid::from_raw(65534);
    nix::unistd::chown(&t.state_dir(), Some(nobody), None).unwrap();

    let out = t.imgtx_code(&["recover"], exit::ERROR);

    assert!(
        stderr_of(&out).contains("owned by uid 65534"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_forged_manifest_cannot_make_recovery_remove_another_file() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let tx = t.begin(&[&base]);
    let victim = t.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    // What a user who could write the state directory would plant: a manifest whose
    // rollback "finishes" by removing the victim.
    let manifest = t.state_dir().join("txns").join(format!("{}.json", tx.id));
    let mut m: Value = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    m["state"] = "rolling_back".into();
    m["images"][0]["overlay"] = victim.to_str().unwrap().into();
    m["images"][0]["overlay_dev_ino"] = Value::Null;
    fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();

    let out = t.imgtx(&["recover"]);

    assert!(!out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("not the name imgtx gives it"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn reading_commands_create_nothing_and_a_user_on_roots_state_directory_is_told_why() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestDir::new();
    let fresh = t.path().join("fresh-state");
    for args in [&["status"][..], &["log"]] {
        let mut cmd = std::process::Command::new(crate::util::imgtx_bin());
        cmd.arg("--state-dir").arg(&fresh).args(args);
        let out = crate::util::expect_code(&mut cmd, exit::OK);
        assert!(!fresh.exists(), "{args:?} created {}", fresh.display());
        let _ = out;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped the other half: needs root to run imgtx as another user");
        return;
    }
    // Root's state directory, as a user would meet it.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let roots = t.path().join("var-lib-imgtx");
    fs::create_dir(&roots).unwrap();
    let as_nobody = |args: &[&str]| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(crate::util::imgtx_bin())
            .arg("--state-dir")
            .arg(roots.join("state"))
            .args(args);
        run(&mut cmd)
    };

    let status = as_nobody(&["status"]);
    assert_eq!(
        status.status.code(),
        Some(exit::OK),
        "{}",
        stderr_of(&status)
    );
    let begin = as_nobody(&["begin", "/nonexistent-but-never-reached.img"]);

    let err = stderr_of(&begin);
    assert_eq!(begin.status.code(), Some(exit::ERROR), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert!(err.contains("sudo") && err.contains("--state-dir"), "{err}");
    assert!(!roots.join("state").exists());
}

/// Flips one byte in the middle of the state directory's history.
fn damage_history(t: &TestDir) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let history = t.state_dir().join("history");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&history)
        .unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    history
}

/// Two finished transactions, so the history has a middle to damage.
fn some_history(t: &TestDir, base: &Path) {
    for _ in 0..2 {
        let tx = t.begin(&[base]);
        t.imgtx_ok(&["rollback", &tx.id]);
    }
}

#[test]
fn a_damaged_history_refuses_a_commit_before_it_writes_and_never_blocks_recovery() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 6);
    some_history(&t, &base);
    let history = damage_history(&t);
    let before = fs::read(&base).unwrap();
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x66 1M 1M");

    let out = t.imgtx_code(&["commit", &tx.id], exit::ERROR);

    let err = stderr_of(&out);
    assert!(
        err.contains(&history.display().to_string()),
        "names the file: {err}"
    );
    assert!(fs::read(&base).unwrap() == before, "the base was written");
    assert_eq!(t.transactions()[0]["state"], "open");
    // Moved aside, the history starts afresh and the commit goes through.
    fs::rename(&history, t.state_dir().join("history.damaged")).unwrap();
    t.imgtx_ok(&["commit", &tx.id]);
}

#[test]
fn an_outcome_the_history_cannot_take_after_the_commit_point_waits_and_is_recorded_later() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (tx, base, _old, new) = crashed_after(&t, "commit-point", &[]);
    some_history(&t, &t.raw_image("other.img", MIB, 2));
    let history = damage_history(&t);

    let out = t.imgtx_code(&["recover"], exit::OK);

    assert!(
        stderr_of(&out).contains("pending"),
        "warned: {}",
        stderr_of(&out)
    );
    assert!(fs::read(&base).unwrap() == new, "the commit was finished");
    t.assert_no_transactions();
    // Once the damaged history is moved aside, the next command appends what waited.
    fs::rename(&history, t.state_dir().join("history.damaged")).unwrap();
    t.imgtx_ok(&["recover"]);
    let log = t.imgtx_json(&["log"]);
    let entries = log["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["id"] == tx.as_str() && e["outcome"] == "recovered_forward"),
        "{log:#}"
    );
}

#[test]
fn a_full_state_directory_refuses_a_commit_before_it_writes() {
    if !require_tools(&["qemu-img", "qemu-io", "mount"]) || !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let t = TestDir::new();
    let state = t.state_dir();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    if !mounted.success() {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(state.clone());
    let base = t.raw_image("disk.img", 4 * MIB, 6);
    let before = fs::read(&base).unwrap();
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x66 1M 1M");
    // Fill it up.
    let filler = state.join("filler");
    let _ = fs::write(&filler, vec![0u8; 1 << 20]);

    let out = t.imgtx(&["commit", &tx.id]);

    assert!(!out.status.success(), "{}", stderr_of(&out));
    assert!(fs::read(&base).unwrap() == before, "the base was written");
    let _ = fs::remove_file(&filler);
    assert_eq!(t.transactions()[0]["state"], "open", "{}", stderr_of(&out));
    t.imgtx_ok(&["commit", &tx.id]);
}

#[test]
fn an_open_transaction_is_not_forgotten_while_its_directory_is_moved_away() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (base, tx) = t.written("disk.img", MIB, 4, "write -P 0x66 0 64k");
    let away = t.path().join("images.away");

    // The directory goes away for a while (maintenance, a mount not there yet at boot),
    // and imgtx looks in the meantime: nothing of the transaction beside a base that is
    // not there proves nothing.
    fs::rename(t.images(), &away).unwrap();
    let status = t.imgtx_json(&["status"]);
    let human = t.imgtx_ok(&["status"]);
    let recover = stderr_of(&t.imgtx_code(&["recover"], exit::ERROR));
    fs::rename(&away, t.images()).unwrap();

    assert!(human.contains("the base is not there"), "{human}");
    assert!(
        recover.contains(&format!(
            "imgtx: error: transaction {} not recovered",
            tx.id
        )) && recover.contains("is not there")
            && recover.contains("imgtx: hint: if it was moved away or is not mounted yet"),
        "recover says it could not look, and what to do: {recover}"
    );

    assert_eq!(status["transactions"][0]["id"], tx.id.as_str(), "{status}");
    assert_eq!(
        status["transactions"][0]["images"][0]["base_missing"], true,
        "{status}"
    );
    let listed = t.transactions();
    assert_eq!(listed.len(), 1, "the transaction was forgotten: {listed:?}");
    t.imgtx_ok(&["commit", &tx.id]);
    assert!(fs::read(&base).unwrap()[..64 << 10]
        .iter()
        .all(|&b| b == 0x66));
}

#[test]
fn a_base_directory_not_there_does_not_keep_other_interrupted_commits_torn() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (torn, base) = interrupted(&t, "disk.img", 5);
    // A second image on a mount that is not up yet when boot recovery runs.
    let mnt = t.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let late = mnt.join("late.img");
    fs::write(&late, vec![0u8; MIB as usize]).unwrap();
    let open = t.begin(&[&late]);
    let away = t.path().join("mnt.away");
    fs::rename(&mnt, &away).unwrap();

    let r = recover_json(&t, &[], exit::ERROR);

    assert_eq!(r["actions"][0]["tx"], torn.as_str(), "{r}");
    assert_eq!(r["actions"][0]["action"], "recovered_forward", "{r}");
    assert!(
        fs::read(&base).unwrap()[512 << 10..(512 << 10) + MIB as usize]
            .iter()
            .all(|&b| b == 0x55)
    );
    assert_eq!(r["failures"][0]["tx"], open.id.as_str(), "{r}");
    // Once the mount is up, that transaction is as it was: open, and it commits.
    fs::rename(&away, &mnt).unwrap();
    t.imgtx_ok(&["recover"]);
    t.imgtx_ok(&["commit", &open.id]);
}

#[test]
fn an_open_transaction_is_not_forgotten_while_another_file_stands_in_for_its_base() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (base, tx) = t.written("disk.img", MIB, 4, "write -P 0x67 0 64k");
    let away = t.path().join("images.away");
    // The directory is swapped for another with a disk.img of its own (a restore into a
    // fresh directory, say): nothing of the transaction is beside that file, which proves
    // nothing about the transaction.
    fs::rename(t.images(), &away).unwrap();
    fs::create_dir(t.images()).unwrap();
    fs::write(&base, vec![0u8; MIB as usize]).unwrap();

    let status = t.imgtx_json(&["status"]);
    t.imgtx_ok(&["recover"]);
    fs::remove_dir_all(t.images()).unwrap();
    fs::rename(&away, t.images()).unwrap();

    assert_eq!(status["transactions"][0]["id"], tx.id.as_str(), "{status}");
    assert_eq!(
        status["transactions"][0]["images"][0]["base_changed"], true,
        "{status}"
    );
    assert_eq!(t.transactions().len(), 1, "the transaction was forgotten");
    t.imgtx_ok(&["commit", &tx.id]);
    assert!(fs::read(&base).unwrap()[..64 << 10]
        .iter()
        .all(|&b| b == 0x67));
}
