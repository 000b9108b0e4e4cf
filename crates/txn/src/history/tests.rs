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

#[test]
fn an_edited_last_entry_is_kept_aside_whole_by_the_next_append_never_deleted() {
    let fs = history_of(3);
    let anchored = check(&fs).head.unwrap();
    let mut b = bytes(&fs);
    let at = b.len() - BLOCK as usize + 60;
    b[at] ^= 1;
    put(&fs, &b);
    assert_eq!(problem(&fs).kind, ProblemKind::TruncatedTail);

    append(&fs, &path(), &entry(3), NOW).unwrap();

    let kept = Path::new(DIR).join("history.damaged-20261127T101500Z");
    assert_eq!(
        fs.read_live(&kept).unwrap(),
        b,
        "the damaged file, byte for byte"
    );
    assert_eq!(ids(&fs), [id(0), id(1), id(3)]);
    let v = check(&fs);
    assert!(v.verified, "{v:#?}");
    assert_eq!(v.kept_aside.len(), 1);
    assert_eq!(v.kept_aside[0].after, Some(id(1)));
    assert_eq!(v.kept_aside[0].kept.tail_bytes, BLOCK);
    assert_eq!(
        v.kept_aside[0].kept.sha256,
        ChainHash(sha2::Sha256::digest(&b).into()).to_string()
    );
    let old_head = verify(&fs, &path(), Some(&anchored)).unwrap();
    assert!(
        !old_head.verified,
        "the anchored head was the entry kept aside"
    );
    assert_eq!(read(&fs, &path()).unwrap().kept_aside[0].after, Some(id(1)));
    let names = fs.files();
    assert!(
        !names.contains(&Path::new(DIR).join("history.tmp")),
        "{names:?}"
    );
}

#[test]
fn damage_before_the_tail_is_refused_by_an_append_and_nothing_is_changed() {
    let fs = history_of(4);
    let mut b = bytes(&fs);
    b[2 * BLOCK as usize + 60] ^= 1;
    put(&fs, &b);

    let appended = append(&fs, &path(), &entry(4), NOW);

    assert!(appended.is_err());
    assert_eq!(bytes(&fs), b);
    assert_eq!(fs.files(), [path()]);
}

#[test]
fn an_append_links_to_a_tampered_chain_without_judging_it_and_verify_still_names_it() {
    let fs = history_of(3);
    reframe(&fs, |r| r[1] = edited(&r[1], |e| e.user = "mallory".into()));

    append(&fs, &path(), &entry(3), NOW).unwrap();

    let p = problem(&fs);
    assert_eq!((p.kind, p.entry), (ProblemKind::Edited, 0));
    assert_eq!(ids(&fs).len(), 4);
}

/// Every crash point of an append, under every kind of damage, over a history of three
/// durable entries: the next append (as recovery or the next command makes it) keeps what
/// did not verify aside, loses none of the durable entries, and leaves a chain that
/// verifies; the crashed entry is either in it whole, or in the file kept aside.
#[test]
fn an_append_torn_by_a_crash_is_kept_aside_without_loss_and_without_a_broken_chain() {
    let base = history_of(3);
    let probe = copy(&base);
    let before = probe.ops();
    append(&probe, &path(), &entry(3), NOW).unwrap();
    let ops = probe.ops() - before;
    let mut kept_aside = 0;
    let mut cases = 0;
    for crash in 1..=ops {
        for damage in Damage::ALL {
            for seed in 0..3 {
                let fs = copy(&base);
                fs.crash_at(crash);
                assert!(append(&fs, &path(), &entry(3), NOW).is_err());
                let fs = fs.crashed_image(damage, seed);

                append(&fs, &path(), &entry(4), "2026-11-27T10:16:00Z")
                    .unwrap_or_else(|e| panic!("crash {crash} {damage:?} {seed}: {e}"));

                let got = ids(&fs);
                let v = check(&fs);
                assert!(v.verified, "crash {crash} {damage:?} {seed}: {v:#?}");
                assert_eq!(got[..3], [id(0), id(1), id(2)], "crash {crash} {damage:?}");
                assert_eq!(got.last(), Some(&id(4)));
                assert!(got.len() == 4 || got[3] == id(3), "{got:?}");
                kept_aside += v.kept_aside.len();
                cases += 1;
            }
        }
    }
    assert!(
        kept_aside > 0,
        "no crash tore the tail: the sweep proves nothing"
    );
    eprintln!("{cases} crash images, {kept_aside} tails kept aside");
}

/// Every crash point of the keep-aside step itself: the next append finishes it, with the
/// damaged file kept whole under one name and no half-made file left.
#[test]
fn a_crash_while_keeping_a_tail_aside_is_finished_by_the_next_append() {
    let base = history_of(3);
    let mut damaged = bytes(&base);
    let at = damaged.len() - BLOCK as usize + 60;
    damaged[at] ^= 1;
    put(&base, &damaged);
    let probe = copy(&base);
    let before = probe.ops();
    append(&probe, &path(), &entry(3), NOW).unwrap();
    let ops = probe.ops() - before;
    for crash in 1..=ops {
        for damage in Damage::ALL {
            let fs = copy(&base);
            fs.crash_at(crash);
            assert!(append(&fs, &path(), &entry(3), NOW).is_err());
            let fs = fs.crashed_image(damage, 7);

            append(&fs, &path(), &entry(4), "2026-11-27T10:16:00Z")
                .unwrap_or_else(|e| panic!("crash {crash} {damage:?}: {e}"));

            let v = check(&fs);
            assert!(v.verified, "crash {crash} {damage:?}: {v:#?}");
            // Entry 3 is there when its append reached the disk before the crash.
            let got = ids(&fs);
            assert!(
                got == [id(0), id(1), id(4)] || got == [id(0), id(1), id(3), id(4)],
                "crash {crash} {damage:?}: {got:?}"
            );
            // The damaged file is kept once, whole, and nothing half-made is left. (A crash
            // after the step, tearing entry 3, makes a second kept file of its own.)
            let others: Vec<_> = fs.files().into_iter().filter(|p| p != &path()).collect();
            let whole = others
                .iter()
                .filter(|p| fs.read_live(p).as_deref() == Some(&damaged[..]))
                .count();
            assert_eq!(whole, 1, "crash {crash} {damage:?}: {others:?}");
            assert!(
                others
                    .iter()
                    .all(|p| p.to_string_lossy().contains(".damaged-")),
                "crash {crash} {damage:?}: {others:?}"
            );
        }
    }
    eprintln!(
        "{} crash images over {ops} operations",
        ops as usize * Damage::ALL.len()
    );
}

/// A format-1 history as imgtx wrote it before the chain: the same journal, bare entries.
fn v1_history(entries: &[EntryV1]) -> SimFs {
    let fs = SimFs::new();
    fs.create_dir(Path::new(DIR)).unwrap();
    fs.sync_dir(Path::new("/")).unwrap();
    let mut j = journal::Journal::<_, EntryV1>::create(&fs, &path(), IDENTITY_V1).unwrap();
    for e in entries {
        j.append(e).unwrap();
        j.sync().unwrap();
    }
    fs
}

fn v1(n: u64, outcome: Outcome, command: Option<&[&str]>) -> EntryV1 {
    let e = entry(n);
    EntryV1 {
        id: e.id,
        name: e.name,
        outcome,
        user: e.user,
        uid: e.uid,
        host: e.host,
        started: e.started,
        ended: e.ended,
        images: e.images,
        command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
    }
}

#[test]
fn a_format_1_history_is_read_and_verify_says_it_predates_the_chain() {
    let old = [
        v1(0, Outcome::RolledBack, None),
        v1(1, Outcome::Committed, Some(&["qemu-io", "{}"])),
        v1(
            2,
            Outcome::Reverted,
            Some(&["imgtx", "revert", "tx-0000000001"]),
        ),
    ];
    let fs = v1_history(&old);

    let h = read(&fs, &path()).unwrap();
    let v = check(&fs);

    assert!(!h.chained);
    assert_eq!(h.entries.len(), 3);
    assert_eq!(h.entries[2].reverts, Some(id(1)), "read from its command");
    assert_eq!(h.entries[1].reverts, None);
    assert_eq!(
        (v.format, v.verified, v.entries),
        (ChainFormat::Unchained, false, 3)
    );
}

#[test]
fn the_next_append_keeps_a_format_1_history_aside_and_carries_its_entries_into_a_chain() {
    let old = [
        v1(0, Outcome::RolledBack, None),
        v1(1, Outcome::Committed, None),
    ];
    let fs = v1_history(&old);
    let original = bytes(&fs);

    append(&fs, &path(), &entry(2), NOW).unwrap();

    let kept = Path::new(DIR).join("history.v1-20261127T101500Z");
    assert_eq!(fs.read_live(&kept).unwrap(), original);
    assert_eq!(ids(&fs), [id(0), id(1), id(2)]);
    let v = check(&fs);
    assert!(v.verified, "{v:#?}");
    let c = v.carried_over.unwrap();
    assert_eq!(
        (c.entries, c.file.as_str()),
        (2, "history.v1-20261127T101500Z")
    );
    assert_eq!(
        c.sha256,
        ChainHash(sha2::Sha256::digest(&original).into()).to_string()
    );
}

#[test]
fn a_crash_while_converting_a_format_1_history_is_finished_by_the_next_append() {
    let old = [
        v1(0, Outcome::RolledBack, None),
        v1(1, Outcome::Committed, None),
    ];
    let base = v1_history(&old);
    let original = bytes(&base);
    let probe = copy(&base);
    let before = probe.ops();
    append(&probe, &path(), &entry(2), NOW).unwrap();
    let ops = probe.ops() - before;
    for crash in 1..=ops {
        for damage in Damage::ALL {
            let fs = copy(&base);
            fs.crash_at(crash);
            assert!(append(&fs, &path(), &entry(2), NOW).is_err());
            let fs = fs.crashed_image(damage, 11);

            append(&fs, &path(), &entry(2), "2026-11-27T10:16:00Z")
                .unwrap_or_else(|e| panic!("crash {crash} {damage:?}: {e}"));

            let v = check(&fs);
            assert!(v.verified, "crash {crash} {damage:?}: {v:#?}");
            let got = ids(&fs);
            assert_eq!(got[..2], [id(0), id(1)], "crash {crash} {damage:?}");
            assert_eq!(got.last(), Some(&id(2)));
            let c = v.carried_over.expect("carried over");
            let kept = fs.read_live(Path::new(DIR).join(&c.file)).unwrap();
            assert_eq!(kept, original, "crash {crash} {damage:?}");
        }
    }
    eprintln!(
        "{} crash images over {ops} operations",
        ops as usize * Damage::ALL.len()
    );
}

#[test]
fn a_pending_entry_written_before_reverts_existed_still_parses() {
    let mut json = serde_json::to_value(entry(1)).unwrap();
    json.as_object_mut().unwrap().remove("reverts");

    let e: HistoryEntry = serde_json::from_value(json).unwrap();

    assert_eq!(e.reverts, None);
}

#[test]
fn a_pending_entry_keeps_its_takeover_until_it_reaches_the_history() {
    let mut original = entry(1);
    original.taken_over = Some(crate::lease::Takeover {
        lockspace: "ls".into(),
        from_host_id: 1,
        from_host: "h1".into(),
        by_host_id: 2,
    });

    let json = serde_json::to_string(&original).unwrap();
    let back = HistoryEntry::from_json(json.as_bytes()).unwrap();
    let fs = history_of(0);
    append(&fs, &path(), &back, NOW).unwrap();

    assert_eq!(back, original, "the takeover survives JSON");
    assert_eq!(read(&fs, &path()).unwrap().entries, [original]);
}
