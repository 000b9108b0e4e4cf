//! The tamper-evident history through the real binary: `log --verify` over a history edited,
//! cut, reordered and truncated on disk, an edited last entry kept aside by the next command
//! instead of deleted, anchors, a history written before the chain, and what a revert
//! reverted.
//!
//! Entries come from `begin` then `rollback`, which need no qemu tool. In the history file
//! block 0 (4 KiB) is the header, block 1 holds the genesis and entry 0, and entry n ≥ 1
//! fills block n + 1: every append syncs, and a sync pads to the next block.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::{exit, qcow2_io, require_tools, stdout_of, TestDir};

const BLOCK: usize = 4096;

/// A history of `n` entries (begin, then rollback); returns their ids, oldest first.
fn history_of(t: &TestDir, n: usize) -> Vec<String> {
    let base = t.raw_image("disk.img", 1 << 20, 3);
    (0..n)
        .map(|_| {
            let tx = t.begin(&[&base]);
            t.imgtx_ok(&["rollback", &tx.id]);
            tx.id
        })
        .collect()
}

/// One more entry, the way any later command adds one.
fn one_more(t: &TestDir) -> String {
    let tx = t.begin(&[&t.image("disk.img")]);
    t.imgtx_ok(&["rollback", &tx.id]);
    tx.id
}

fn history(t: &TestDir) -> PathBuf {
    t.state_dir().join("history")
}

fn blocks(t: &TestDir) -> Vec<Vec<u8>> {
    let b = fs::read(history(t)).unwrap();
    assert_eq!(b.len() % BLOCK, 0);
    b.chunks(BLOCK).map(<[u8]>::to_vec).collect()
}

fn put(t: &TestDir, bytes: &[u8]) {
    fs::write(history(t), bytes).unwrap();
}

/// `log --verify --json` and its exit status.
fn verify(t: &TestDir, extra: &[&str]) -> (Value, i32) {
    let mut args = vec!["log", "--verify", "--json"];
    args.extend(extra);
    let out = t.imgtx(&args);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout_of(&out)));
    (v, out.status.code().unwrap())
}

/// The first problem `log --verify` names, asserting it exits 1.
fn problem(t: &TestDir) -> Value {
    let (v, code) = verify(t, &[]);
    assert_eq!(code, exit::ERROR, "{v:#}");
    assert_eq!(v["verified"], false);
    v["problem"].clone()
}

fn head(t: &TestDir) -> String {
    let (v, code) = verify(t, &[]);
    assert_eq!(code, exit::OK, "{v:#}");
    v["head"].as_str().unwrap().to_owned()
}

/// CRC-32 (IEEE), as the journal's frames use: all an attacker needs to fix up a record.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for b in parts.iter().flat_map(|p| p.iter()) {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[test]
fn a_fresh_history_verifies_and_prints_its_head_hash() {
    let t = TestDir::new();
    history_of(&t, 3);

    let human = t.imgtx_ok(&["log", "--verify"]);
    let (v, code) = verify(&t, &[]);

    assert_eq!(code, exit::OK);
    assert_eq!(
        (v["entries"].as_u64(), v["format"].as_str()),
        (Some(3), Some("chained"))
    );
    let head = v["head"].as_str().unwrap();
    assert_eq!(head.len(), 64);
    assert!(human.contains("the history verifies: 3 entries"), "{human}");
    assert!(
        human.lines().any(|l| l == format!("head {head}")),
        "{human}"
    );
}

#[test]
fn a_middle_entry_edited_with_its_checksum_fixed_is_named_edited() {
    let t = TestDir::new();
    let ids = history_of(&t, 4);
    let mut b = fs::read(history(&t)).unwrap();
    // Entry 1's frame: rename its base from disk.img to dusk.img, then recompute the frame's
    // checksum with the nonce from the header, as someone who read the format would.
    let frame = 2 * BLOCK;
    let len = u32::from_le_bytes(b[frame..frame + 4].try_into().unwrap()) as usize;
    let payload = frame + 32..frame + 32 + len;
    let at = b[payload.clone()]
        .windows(8)
        .position(|w| w == b"disk.img")
        .unwrap();
    b[payload.start + at + 1] = b'u';
    let nonce = b[16..32].to_vec();
    let crc = crc32(&[
        &nonce,
        &b[frame + 8..frame + 32],
        &len.to_le_bytes()[..4],
        &b[payload],
    ]);
    b[frame + 4..frame + 8].copy_from_slice(&crc.to_le_bytes());
    put(&t, &b);
    let log = t.imgtx_json(&["log"]);
    assert!(
        log["entries"][1]["images"][0]["base"]
            .as_str()
            .unwrap()
            .ends_with("dusk.img"),
        "the edit reads back as a valid entry: {log:#}"
    );

    let p = problem(&t);

    assert_eq!(p["kind"], "edited", "{p:#}");
    assert_eq!(
        (p["entry"].as_u64(), p["id"].as_str()),
        (Some(1), Some(ids[1].as_str()))
    );
}

#[test]
fn a_middle_entry_edited_in_place_is_named_damaged() {
    let t = TestDir::new();
    history_of(&t, 4);
    let mut b = fs::read(history(&t)).unwrap();
    b[2 * BLOCK + 60] ^= 0x20;
    put(&t, &b);

    let p = problem(&t);

    assert_eq!(
        (p["kind"].as_str(), p["entry"].as_u64()),
        (Some("damaged"), Some(1)),
        "{p:#}"
    );
    let human = stdout_of(&t.imgtx_code(&["log", "--verify"], exit::ERROR));
    assert!(human.contains("does not verify: entry 1"), "{human}");
}

#[test]
fn a_deleted_entry_is_named_missing() {
    let t = TestDir::new();
    let ids = history_of(&t, 4);
    let mut b = blocks(&t);
    b.remove(3);
    put(&t, &b.concat());

    let p = problem(&t);

    assert_eq!(
        (p["kind"].as_str(), p["entry"].as_u64()),
        (Some("missing"), Some(2)),
        "{p:#}"
    );
    // The entry found in the deleted one's place, named so the reader can see the gap.
    assert_eq!(p["id"], ids[3].as_str());
}

#[test]
fn reordered_entries_are_named_reordered() {
    let t = TestDir::new();
    let ids = history_of(&t, 4);
    let mut b = blocks(&t);
    b.swap(2, 3);
    put(&t, &b.concat());

    let p = problem(&t);

    assert_eq!(p["kind"], "reordered", "{p:#}");
    assert_eq!(
        (p["entry"].as_u64(), p["id"].as_str()),
        (Some(1), Some(ids[2].as_str()))
    );
}

#[test]
fn a_tail_cut_inside_an_entry_is_a_truncated_tail_and_a_clean_cut_fails_the_anchor() {
    let t = TestDir::new();
    history_of(&t, 3);
    let anchored = head(&t);
    let b = fs::read(history(&t)).unwrap();
    put(&t, &b[..b.len() - BLOCK + 100]);

    let p = problem(&t);

    assert_eq!(
        (p["kind"].as_str(), p["entry"].as_u64()),
        (Some("truncated_tail"), Some(2)),
        "{p:#}"
    );
    put(&t, &b[..b.len() - BLOCK]);
    let (clean, code) = verify(&t, &[]);
    assert_eq!(
        code,
        exit::OK,
        "a cut between entries leaves a valid chain: {clean:#}"
    );
    let (v, code) = verify(&t, &["--anchor", &anchored]);
    assert_eq!(code, exit::ERROR, "{v:#}");
    assert_eq!(v["anchor"]["record"], Value::Null);
    let human = stdout_of(&t.imgtx_code(&["log", "--verify", "--anchor", &anchored], exit::ERROR));
    assert!(human.contains("is not in the chain"), "{human}");
}

#[test]
fn an_anchor_from_earlier_verifies_after_more_entries() {
    let t = TestDir::new();
    history_of(&t, 2);
    let anchored = head(&t);
    one_more(&t);

    let (v, code) = verify(&t, &["--anchor", &anchored]);

    assert_eq!(code, exit::OK, "{v:#}");
    assert_eq!(v["anchor"]["records_after"], 1);
    t.imgtx_code(&["log", "--verify", "--anchor", "not-a-hash"], exit::USAGE);
}

#[test]
fn an_edited_last_entry_is_kept_aside_by_the_next_command_not_deleted() {
    let t = TestDir::new();
    let ids = history_of(&t, 3);
    let anchored = head(&t);
    let mut b = fs::read(history(&t)).unwrap();
    let at = b.len() - BLOCK + 60;
    b[at] ^= 0x20;
    put(&t, &b);
    assert_eq!(problem(&t)["kind"], "truncated_tail");

    let next = one_more(&t);

    let kept: Vec<_> = fs::read_dir(t.state_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("history.damaged-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(fs::read(&kept[0]).unwrap(), b, "kept byte for byte");
    let (v, code) = verify(&t, &[]);
    assert_eq!(code, exit::OK, "{v:#}");
    let name = kept[0].file_name().unwrap().to_str().unwrap();
    assert_eq!(v["kept_aside"][0]["file"], name);
    assert_eq!(v["kept_aside"][0]["after"], ids[1].as_str());
    let log = t.imgtx_json(&["log"]);
    let got: Vec<_> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(
        got,
        [&ids[0], &ids[1], &next].map(|s| Value::from(s.as_str()))
    );
    let human = t.imgtx_ok(&["log"]);
    assert!(
        human.contains("kept aside on") && human.contains(name),
        "{human}"
    );
    let (old, code) = verify(&t, &["--anchor", &anchored]);
    assert_eq!(
        code,
        exit::ERROR,
        "the anchored head was the entry kept aside: {old:#}"
    );
}

#[test]
fn a_history_written_before_the_chain_is_read_and_converted_by_the_next_command() {
    let t = TestDir::new();
    // Written by imgtx 0.1.0 before the chain (three entries: rolled back, committed, and the
    // revert of that commit); see fixtures/README.md.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/fixtures/history-v1");
    let old = fs::read(&fixture).unwrap();
    put(&t, &old);
    fs::set_permissions(history(&t), fs::Permissions::from_mode(0o600)).unwrap();

    let log = t.imgtx_json(&["log"]);
    let (v, code) = verify(&t, &[]);
    let human = stdout_of(&t.imgtx_code(&["log", "--verify"], exit::ERROR));

    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{log:#}");
    assert_eq!(entries[2]["outcome"], "reverted");
    assert_eq!(entries[2]["reverts"], entries[1]["id"]);
    assert_eq!(
        (code, v["format"].as_str()),
        (exit::ERROR, Some("unchained")),
        "{v:#}"
    );
    assert!(human.contains("predates the hash chain"), "{human}");
    t.raw_image("disk.img", 1 << 20, 3);
    one_more(&t);
    let (v, code) = verify(&t, &[]);
    assert_eq!(code, exit::OK, "{v:#}");
    assert_eq!(v["entries"], 4);
    assert_eq!(v["carried_over"]["entries"], 3);
    let kept = t
        .state_dir()
        .join(v["carried_over"]["file"].as_str().unwrap());
    assert_eq!(
        fs::read(kept).unwrap(),
        old,
        "the old file is kept as it was"
    );
}

#[test]
fn a_revert_entry_names_the_transaction_it_reverted() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 << 20, 1);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0xab 1M 64k");
    t.imgtx_ok(&["commit", &tx.id]);

    let r = t.imgtx_json(&["revert", &tx.id]);

    let log = t.imgtx_json(&["log"]);
    let last = log["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["id"].clone(), last["reverts"].clone()),
        (r["id"].clone(), Value::from(tx.id.as_str()))
    );
    let human = t.imgtx_ok(&["log"]);
    assert!(human.contains(&format!("  reverted {}", tx.id)), "{human}");
}
