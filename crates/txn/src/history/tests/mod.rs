//! The chained history over the simulated disk: appends, verification of every kind of
//! tampering, damaged tails kept aside (crash or edit), format-1 histories.
//!
//! Two kinds of tampering are made: in place, bytes changed or blocks moved (record checksums
//! then fail or sequence numbers jump, as with a careless edit or disk damage), and
//! *re-framed*, the file rewritten as a valid journal with the records changed (what an
//! attacker who knows the format does; only the chain can tell).

use std::path::{Path, PathBuf};

use journal::format::BLOCK;
use sha2::Digest;
use storage::sim::{Damage, SimFs};
use storage::Fs;

use super::chain::{self, ChainHash, Item};
use super::entry::EntryV1;
use super::*;
use crate::id::TxId;

mod appends;
mod formats;

const DIR: &str = "/state";
const NOW: &str = "2026-11-27T10:15:00Z";

fn path() -> PathBuf {
    Path::new(DIR).join("history")
}

fn id(n: u64) -> TxId {
    TxId::parse(&format!("tx-{n:010x}")).expect("an id")
}

fn entry(n: u64) -> HistoryEntry {
    HistoryEntry {
        id: id(n),
        name: None,
        outcome: Outcome::Committed,
        user: "root".into(),
        uid: 0,
        host: "vm".into(),
        started: NOW.into(),
        ended: NOW.into(),
        images: vec![HistoryImage {
            base: PathBuf::from("/vm/disk.img"),
            changed_bytes: 4096 * n,
        }],
        command: None,
        reverts: None,
        taken_over: None,
    }
}

/// A disk with the state directory and a history of entries `0..n`, all durable.
fn history_of(n: u64) -> SimFs {
    let fs = SimFs::new();
    fs.create_dir(Path::new(DIR)).unwrap();
    fs.sync_dir(Path::new("/")).unwrap();
    for i in 0..n {
        append(&fs, &path(), &entry(i), NOW).unwrap();
    }
    fs
}

/// A copy of `fs` as it is durably.
fn copy(fs: &SimFs) -> SimFs {
    fs.crashed_image(Damage::DropUnsynced, 0)
}

fn bytes(fs: &SimFs) -> Vec<u8> {
    fs.read_live(path()).unwrap()
}

fn put(fs: &SimFs, bytes: &[u8]) {
    fs.put_durable(path(), bytes);
}

fn ids(fs: &SimFs) -> Vec<TxId> {
    read(fs, &path())
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect()
}

fn check(fs: &SimFs) -> Verification {
    verify(fs, &path(), None).unwrap()
}

fn problem(fs: &SimFs) -> Problem {
    let v = check(fs);
    assert!(!v.verified, "{v:#?}");
    v.problem.expect("a problem")
}

/// Rewrites the history as a valid journal (a new nonce, every checksum right) whose record
/// bodies are what `change` makes of them.
fn reframe(fs: &SimFs, change: impl FnOnce(&mut Vec<Vec<u8>>)) {
    let mut records = journal::read::<_, Vec<u8>>(fs, &path()).unwrap().records;
    change(&mut records);
    fs.remove_file(&path()).unwrap();
    let mut j = ChainJournal::<<SimFs as Fs>::File>::create(fs, &path(), IDENTITY_V2).unwrap();
    for r in &records {
        j.append(r).unwrap();
    }
    j.sync().unwrap();
}

/// `body` with its entry changed by `change`; its link (seq, prev) kept.
fn edited(body: &[u8], change: impl FnOnce(&mut HistoryEntry)) -> Vec<u8> {
    let mut link = chain::decode(body).unwrap();
    let Item::Entry(e) = &mut link.item else {
        panic!("not an entry")
    };
    change(e);
    chain::encode(&link)
}

/// Block `i` of `b` (block 0 is the journal header; entry `n >= 1` fills block `n + 1`,
/// and the genesis shares block 1 with entry 0).
fn block(b: &[u8], i: usize) -> &[u8] {
    let n = BLOCK as usize;
    &b[i * n..(i + 1) * n]
}

#[test]
fn appended_entries_verify_and_the_head_is_the_hash_of_the_last_record() {
    let fs = history_of(3);

    let v = check(&fs);

    assert!(v.verified, "{v:#?}");
    assert_eq!(
        (v.format, v.entries, v.records),
        (ChainFormat::Chained, 3, 4)
    );
    let records = journal::read::<_, Vec<u8>>(&fs, &path()).unwrap().records;
    assert_eq!(v.head, Some(ChainHash::of_body(&records[3])));
    assert_eq!(v.genesis, Some(ChainHash::of_body(&records[0])));
    assert_eq!(ids(&fs), [id(0), id(1), id(2)]);
}

#[test]
fn each_record_carries_its_position_and_the_hash_of_the_one_before() {
    let fs = history_of(2);

    let records = journal::read::<_, Vec<u8>>(&fs, &path()).unwrap().records;

    let links: Vec<_> = records.iter().map(|b| chain::decode(b).unwrap()).collect();
    assert!(matches!(links[0].item, Item::Genesis(_)));
    assert_eq!(links[0].prev, [0; 32]);
    for i in 1..links.len() {
        assert_eq!(links[i].seq, i as u64);
        assert_eq!(
            ChainHash(links[i].prev),
            ChainHash::of_body(&records[i - 1])
        );
    }
}

#[test]
fn an_edited_middle_entry_with_valid_checksums_is_named_edited() {
    let fs = history_of(4);
    reframe(&fs, |r| r[2] = edited(&r[2], |e| e.user = "mallory".into()));

    let p = problem(&fs);

    assert_eq!(p.kind, ProblemKind::Edited);
    assert_eq!(
        (p.entry, p.id.clone(), p.record),
        (1, Some(id(1)), 2),
        "{p:#?}"
    );
    let journal::Salvaged::Record { offset, .. } =
        journal::salvage(&fs, &path()).unwrap().items[2].clone()
    else {
        panic!("record 2 is whole")
    };
    assert_eq!(p.offset, Some(offset), "where the edited entry is");
    assert_eq!(
        check(&fs).entries,
        1,
        "only the entry before it is vouched for"
    );
}

#[test]
fn a_middle_entry_edited_in_place_fails_its_checksum_and_is_named_damaged() {
    let fs = history_of(4);
    let mut b = bytes(&fs);
    // Entry 1 fills block 2; a byte of its payload.
    b[2 * BLOCK as usize + 60] ^= 1;
    put(&fs, &b);

    let p = problem(&fs);

    assert_eq!(
        (p.kind, p.entry, p.record),
        (ProblemKind::Damaged, 1, 2),
        "{p:#?}"
    );
    assert_eq!(p.offset, Some(2 * BLOCK));
}

#[test]
fn a_deleted_entry_is_named_missing_whether_cut_out_or_reframed() {
    let fs = history_of(4);
    let b = bytes(&fs);
    let cut: Vec<u8> = [block(&b, 0), block(&b, 1), block(&b, 3), block(&b, 4)].concat();
    put(&fs, &cut);
    let in_place = problem(&fs);
    let fs = history_of(4);
    reframe(&fs, |r| {
        r.remove(2);
    });

    let reframed = problem(&fs);

    for p in [in_place, reframed] {
        assert_eq!(
            (p.kind, p.entry, p.record),
            (ProblemKind::Missing, 1, 2),
            "{p:#?}"
        );
        assert!(p.detail.contains("record 2 is missing"), "{}", p.detail);
    }
}

#[test]
fn reordered_entries_are_named_reordered_whether_moved_or_reframed() {
    let fs = history_of(4);
    let b = bytes(&fs);
    let swapped: Vec<u8> = [
        block(&b, 0),
        block(&b, 1),
        block(&b, 3),
        block(&b, 2),
        block(&b, 4),
    ]
    .concat();
    put(&fs, &swapped);
    let in_place = problem(&fs);
    let fs = history_of(4);
    reframe(&fs, |r| r.swap(2, 3));

    let reframed = problem(&fs);

    for p in [in_place, reframed] {
        assert_eq!(
            (p.kind, p.entry, p.id.clone()),
            (ProblemKind::Reordered, 1, Some(id(2)))
        );
    }
}

#[test]
fn a_tail_cut_inside_the_last_entry_is_a_truncated_tail() {
    let fs = history_of(3);
    let b = bytes(&fs);
    put(&fs, &b[..b.len() - 4000]);

    let p = problem(&fs);

    assert_eq!(
        (p.kind, p.entry, p.record),
        (ProblemKind::TruncatedTail, 2, 3),
        "{p:#?}"
    );
}

#[test]
fn a_tail_cut_at_an_entry_boundary_is_caught_by_the_anchor_alone() {
    let fs = history_of(3);
    let anchored = check(&fs).head.unwrap();
    let b = bytes(&fs);
    put(&fs, &b[..b.len() - BLOCK as usize]);

    let plain = check(&fs);
    let with_anchor = verify(&fs, &path(), Some(&anchored)).unwrap();

    assert!(plain.verified, "no chain can see a clean cut: {plain:#?}");
    assert!(!with_anchor.verified);
    assert_eq!(with_anchor.anchor.unwrap().record, None);
}

#[test]
fn an_anchor_still_in_the_chain_verifies_with_the_records_after_it() {
    let fs = history_of(2);
    let anchored = check(&fs).head.unwrap();
    append(&fs, &path(), &entry(2), NOW).unwrap();

    let v = verify(&fs, &path(), Some(&anchored)).unwrap();

    assert!(v.verified);
    let a = v.anchor.unwrap();
    assert_eq!((a.record, a.records_after), (Some(2), 1));
}

#[test]
fn a_history_that_does_not_start_with_its_genesis_is_a_bad_start() {
    let fs = history_of(2);
    reframe(&fs, |r| {
        r.remove(0);
    });

    let p = problem(&fs);

    assert_eq!((p.kind, p.record), (ProblemKind::Missing, 0), "{p:#?}");
    let fs = history_of(2);
    reframe(&fs, |r| {
        let mut genesis = chain::decode(&r[0]).unwrap();
        genesis.prev = [1; 32];
        r[0] = chain::encode(&genesis);
    });
    assert_eq!(problem(&fs).kind, ProblemKind::BadStart);
}
