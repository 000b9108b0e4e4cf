//! Histories written before the chain (format 1), and pending entries kept as JSON.

use std::path::Path;

use storage::sim::{Damage, SimFs};
use storage::Fs;

use super::*;

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
