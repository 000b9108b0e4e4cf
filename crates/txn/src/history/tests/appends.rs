//! Appends to a history whose file does not verify: an edited or torn tail kept aside whole,
//! damage before the tail refused, crashes while keeping a tail aside.

use std::path::Path;

use storage::sim::Damage;

use super::*;

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
