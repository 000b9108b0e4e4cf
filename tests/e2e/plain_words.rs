//! Human output in plain words ("commit interrupted", "rolled back"), `--json` in the enum
//! names scripts match on (`commit_interrupted`, `rolled_back`).

use crate::kill::crash;
use crate::util::{require_tools, TestDir};

const MIB: u64 = 1 << 20;

/// Asserts `text` has `words` and none of `names`.
fn plain(what: &str, text: &str, words: &str, names: &[&str]) {
    assert!(text.contains(words), "{what} lacks {words:?}: {text}");
    for name in names {
        assert!(!text.contains(name), "{what} says {name:?}: {text}");
    }
}

#[test]
fn status_recover_and_log_speak_plain_words_and_json_keeps_the_names() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (_, tx) = t.written("disk.img", MIB, 1, "write -P 0x42 0 64k");
    crash(&t, "intent", &["commit", &tx.id]);

    let status = t.imgtx_ok(&["status"]);
    plain(
        "status",
        &status,
        "commit interrupted",
        &["commit_interrupted"],
    );
    let v = t.imgtx_json(&["status"]);
    assert_eq!(v["transactions"][0]["state"], "commit_interrupted", "{v}");

    let dry = t.imgtx_json(&["recover", "--dry-run"]);
    assert_eq!(
        dry["actions"][0]["action"], "discarded_uncommitted",
        "{dry}"
    );
    let dry = t.imgtx_ok(&["recover", "--dry-run"]);
    plain(
        "recover --dry-run",
        &dry,
        "would drop a commit that never reached its commit point",
        &["discarded_uncommitted"],
    );
    let recovered = t.imgtx_ok(&["recover"]);
    plain(
        "recover",
        &recovered,
        "the transaction is still open with its changes",
        &["discarded_uncommitted"],
    );

    t.imgtx_ok(&["rollback", &tx.id]);
    let log = t.imgtx_ok(&["log"]);
    plain("log", &log, "rolled back by", &["rolled_back"]);
    let v = t.imgtx_json(&["log"]);
    assert_eq!(v["entries"][0]["outcome"], "rolled_back", "{v}");
}

#[test]
fn a_commit_finished_by_recovery_is_logged_as_such_and_by_whom() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let (_, tx) = t.written("disk.img", MIB, 1, "write -P 0x42 0 64k");
    crash(&t, "commit-point", &["commit", &tx.id]);
    t.imgtx_ok(&["recover"]);

    let log = t.imgtx_ok(&["log"]);

    plain(
        "log",
        &log,
        "committed by recovery, as ",
        &["recovered_forward", "by recovery by"],
    );
}
