//! Journal damage at the engine level (T4–T6): a torn commit record at every byte, a zeroed
//! or garbage final sector, every 4 KiB block the commit record's append touched garbled
//! whole, a bit flip in a record followed by valid ones (refused, base untouched,
//! journal kept), and a stale commit record of an earlier run of the same transaction
//! sitting right after the tail (rejected).

mod crash_support;

use std::path::{Path, PathBuf};

use crash_support::{check_settled, engine, Ended, Fixture, Stats};
use journal::format::BLOCK;
use storage::sim::{Damage, Op, SimFs, SECTOR};
use storage::{File, Fs};
use testkit::sim_host::tx;
use txn::{CommitOptions, ErrorClass, RecoverOptions};

struct Points {
    journal: PathBuf,
    /// The write of the commit record (offset, len) and its op number.
    commit_write: (u64, u64, u64),
    /// The sync making it durable.
    commit_sync: u64,
    /// The intent record's write (offset, len).
    intent: (u64, u64),
}

fn points(fx: &Fixture) -> Points {
    let fs = fx.fresh();
    engine(&fs, &fx.bases)
        .expect("engine")
        .0
        .commit(&tx(), CommitOptions::default(), &mut |_| {})
        .expect("commit");
    let journal = txn::layout::journal(&fx.bases[0], &tx()).expect("journal path");
    let log = fs.log();
    let on = |p: &Option<PathBuf>, q: &Path| p.as_deref() == Some(q);
    let first_base = log
        .iter()
        .find(|l| match &l.op {
            Op::Write { path, .. } | Op::SetLen { path, .. } | Op::ZeroRange { path, .. } => {
                on(path, &fx.bases[0])
            }
            _ => false,
        })
        .map(|l| l.number)
        .expect("commit changes the base");
    let writes: Vec<(u64, u64, u64)> = log
        .iter()
        .filter_map(|l| match &l.op {
            Op::Write { path, offset, len } if on(path, &journal) => {
                Some((*offset, *len, l.number))
            }
            _ => None,
        })
        .collect();
    let syncs: Vec<u64> = log
        .iter()
        .filter(|l| {
            l.number < first_base && matches!(&l.op, Op::SyncData { path } if on(path, &journal))
        })
        .map(|l| l.number)
        .collect();
    // The last journal sync before the base changes makes the commit record durable; the
    // first journal write after the sync before it is the commit record (its sync then pads
    // the journal to a block boundary with a write of its own).
    let [.., before_commit, commit_sync] = syncs[..] else {
        panic!("the journal is synced at least twice before the commit point: {syncs:?}");
    };
    let commit_write = *writes
        .iter()
        .find(|w| w.2 > before_commit)
        .expect("commit record");
    // Writes: the header, then the intent record.
    let intent = (writes[1].0, writes[1].1);
    Points {
        journal,
        commit_write,
        commit_sync,
        intent,
    }
}

/// The disk after a commit crashed at operation `k`, rebooted with `damage`.
fn crashed(fx: &Fixture, k: u64, damage: Damage) -> SimFs {
    let fs = fx.fresh();
    fs.crash_at(k);
    let (e, _) = engine(&fs, &fx.bases).expect("engine");
    assert!(e
        .commit(&tx(), CommitOptions::default(), &mut |_| {})
        .is_err());
    fs.crashed_image(damage, k)
}

fn rewrite(fs: &SimFs, path: &Path, bytes: &[u8]) {
    let f = fs.open(path, true).expect("open journal");
    f.set_len(0).expect("truncate");
    f.write_all_at(bytes, 0).expect("write");
    f.sync_data().expect("sync");
}

fn recover_ok(fx: &Fixture, fs: &SimFs, ctx: &str) -> Ended {
    let (e, mon) = engine(fs, &fx.bases).expect("engine");
    e.recover(&RecoverOptions::default())
        .unwrap_or_else(|e| panic!("{ctx}: recover failed: {e:?}"));
    assert_eq!(mon.violations(), vec![], "{ctx}: ordering violations");
    check_settled(fx, fs, false, ctx)
}

fn fixture() -> Option<Fixture> {
    if !testkit::qemu::have("qemu-io") {
        eprintln!("skipped: qemu-io is not installed");
        return None;
    }
    Some(Fixture::new(&crash_support::raw_single()))
}

#[test]
fn a_commit_record_torn_at_any_byte_counts_as_not_written() {
    let Some(fx) = fixture() else { return };
    let p = points(&fx);
    let unsynced = crashed(&fx, p.commit_sync, Damage::KeepAll);
    let whole = unsynced.read_live(&p.journal).expect("journal");
    let (off, len, _) = p.commit_write;
    let mut stats = Stats::default();

    for cut in off..off + len {
        let fs = unsynced.crashed_image(Damage::KeepAll, 0);
        rewrite(&fs, &p.journal, &whole[..usize::try_from(cut).unwrap()]);
        assert_eq!(
            recover_ok(&fx, &fs, &format!("commit record cut at {cut:#x}")),
            Ended::Old
        );
        stats.images += 1;
    }

    // Whole, the same record commits.
    let fs = unsynced.crashed_image(Damage::KeepAll, 0);
    assert_eq!(recover_ok(&fx, &fs, "commit record whole"), Ended::New);
    eprintln!(
        "torn commit record: {} cuts, all discarded to old",
        stats.images
    );
}

/// Overwrites from `from` to the end of the `unit`-sized sector holding the journal's last
/// byte with zeros or garbage, as a torn append of the last record can.
fn damage_final_sector(whole: &[u8], from: u64, unit: u64, garbage: bool) -> Vec<u8> {
    let end = (whole.len() as u64).div_ceil(unit) * unit;
    let mut rng = splitmix::SplitMix64::new(7);
    let mut bytes = whole.to_vec();
    bytes.resize(usize::try_from(end).unwrap(), 0);
    for b in &mut bytes[usize::try_from(from).unwrap()..] {
        *b = if garbage { rng.next_u64() as u8 } else { 0 };
    }
    bytes
}

#[test]
fn a_zeroed_or_garbage_final_sector_counts_as_not_written() {
    let Some(fx) = fixture() else { return };
    let p = points(&fx);
    let unsynced = crashed(&fx, p.commit_sync, Damage::KeepAll);
    let whole = unsynced.read_live(&p.journal).expect("journal");

    for garbage in [false, true] {
        // The commit record and the rest of its sector: what the unsynced append covered.
        let bytes = damage_final_sector(&whole, p.commit_write.0, SECTOR, garbage);
        let fs = unsynced.crashed_image(Damage::KeepAll, 0);
        rewrite(&fs, &p.journal, &bytes);

        assert_eq!(
            recover_ok(&fx, &fs, &format!("final sector, garbage {garbage}")),
            Ended::Old
        );
    }
}

/// Without powersafe overwrite (crash-safety rule 9) a torn append may garble the whole
/// physical sector (up to 4 KiB) it lands in, synced bytes included. The append in flight is
/// the commit record (and the padding its sync writes): every block it touched, from the
/// start of the block holding its first byte, is garbled whole. Had the journal let the
/// commit record share a block with the synced header, intent or undo records, they would be
/// garbled too, and recover would refuse forever.
#[test]
fn a_whole_garbage_final_sector_including_synced_records_still_recovers() {
    let Some(fx) = fixture() else { return };
    let p = points(&fx);
    let unsynced = crashed(&fx, p.commit_sync, Damage::KeepAll);
    let whole = unsynced.read_live(&p.journal).expect("journal");
    let block = p.commit_write.0 / BLOCK * BLOCK;
    assert_eq!(
        block, p.commit_write.0,
        "the commit record shares its block with synced bytes"
    );

    for garbage in [false, true] {
        let bytes = damage_final_sector(&whole, block, BLOCK, garbage);
        let fs = unsynced.crashed_image(Damage::KeepAll, 0);
        rewrite(&fs, &p.journal, &bytes);

        assert_eq!(
            recover_ok(&fx, &fs, &format!("whole final block, garbage {garbage}")),
            Ended::Old
        );
    }
}

#[test]
fn a_bit_flip_mid_log_is_refused_and_touches_nothing() {
    let Some(fx) = fixture() else { return };
    let p = points(&fx);
    // Committed, and some base writes done: recovery would have to write the base.
    let mid = crashed(&fx, p.commit_sync + 2, Damage::KeepAll);
    let whole = mid.read_live(&p.journal).expect("journal");

    for (what, at) in [
        ("intent record", p.intent.0 + p.intent.1 / 2),
        ("header", 9),
    ] {
        let mut bytes = whole.clone();
        bytes[usize::try_from(at).unwrap()] ^= 0x10;
        let fs = mid.crashed_image(Damage::KeepAll, 0);
        rewrite(&fs, &p.journal, &bytes);
        let before: Vec<Vec<u8>> = fx
            .bases
            .iter()
            .map(|b| fs.read_live(b).expect("base"))
            .collect();

        let (e, mon) = engine(&fs, &fx.bases).expect("engine");
        let result = e.recover(&RecoverOptions::default());

        let err = result.expect_err(&format!("a bit flip in the {what} was not refused"));
        assert_eq!(err.class(), ErrorClass::Corrupt, "{what}: {err:?}");
        let after: Vec<Vec<u8>> = fx
            .bases
            .iter()
            .map(|b| fs.read_live(b).expect("base"))
            .collect();
        assert_eq!(before, after, "{what}: recover wrote a base while refusing");
        assert_eq!(
            fs.read_live(&p.journal),
            Some(bytes),
            "{what}: the journal was not kept as found"
        );
        assert_eq!(mon.violations(), vec![]);
    }
}

#[test]
fn a_stale_commit_record_of_an_earlier_run_is_rejected() {
    let Some(fx) = fixture() else { return };
    let p = points(&fx);
    // Run A reached its commit point; run B of the same transaction id died just before
    // writing its commit record. A's commit record lies right where B's would go.
    let a = crashed(&fx, p.commit_sync + 1, Damage::KeepAll)
        .read_live(&p.journal)
        .expect("journal A");
    let b_disk = crashed(&fx, p.commit_write.2, Damage::DropUnsynced);
    let b = b_disk.read_live(&p.journal).expect("journal B");
    assert_eq!(
        b.len() as u64,
        p.commit_write.0,
        "B ends where its commit record would start"
    );
    let mut spliced = b.clone();
    spliced.extend_from_slice(&a[b.len()..]);
    rewrite(&b_disk, &p.journal, &spliced);

    assert_eq!(recover_ok(&fx, &b_disk, "stale commit record"), Ended::Old);
}
