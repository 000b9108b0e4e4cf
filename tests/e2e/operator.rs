//! What operators do around an interrupted commit, against the real binary: a base removed or
//! replaced after the crash, one transaction that cannot be recovered among others, a lost
//! state directory.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::{exit, qemu_io, require_tools, run, stderr_of, TestDir};

const MIB: u64 = 1 << 20;
const KILLED: i32 = 137;

/// A raw base `name` with 1 MiB written in its overlay, committed and killed right after the
/// commit point (the base is then between old and new, as far as recovery knows). Returns
/// the transaction id and the base.
fn interrupted(t: &TestDir, name: &str, seed: u8) -> (String, PathBuf) {
    let base = t.raw_image(name, 4 * MIB, seed);
    let tx = t.begin(&[&base]);
    let cmd = format!("write -P 0x{seed:x}5 512k 1M");
    qemu_io(&[
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-c".as_ref(),
        cmd.as_ref(),
        tx.overlay().as_os_str(),
    ]);
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

    let r = recover_json(&t, &[], exit::RECOVERY_NEEDED);

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
    let out = t.imgtx_code(&["recover"], exit::RECOVERY_NEEDED);
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
