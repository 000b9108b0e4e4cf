//! The block rule: after a sync, no append writes into a 4 KiB block that holds
//! synced bytes. Without powersafe overwrite a torn append may garble every block it touched,
//! so these tests garble exactly those blocks, with zeros and with garbage, and check that
//! every synced record still replays; and they check the write offsets themselves.

use std::collections::BTreeSet;
use std::path::Path;

use journal::format::BLOCK;
use journal::{Journal, Tail};
use proptest::prelude::*;
use storage::sim::{Op, SimFs};

const PATH: &str = "/log";

#[derive(Debug, Clone)]
enum Step {
    /// Append a record with this many payload bytes.
    Append(usize),
    Sync,
    /// Drop the handle and open the log again (which pads and syncs what it replayed).
    Reopen,
    /// A sync during which the power fails: its padding is written, its barrier never runs.
    PowerCutInSync,
}

/// What the workload was told.
#[derive(Debug, Default)]
struct Told {
    appended: Vec<Vec<u8>>,
    /// Records a successful `sync` (or `open`) covered.
    acked: usize,
}

fn record(i: usize, len: usize) -> Vec<u8> {
    vec![u8::try_from(i % 251).unwrap().wrapping_add(1); len]
}

fn run(fs: &SimFs, steps: &[Step]) -> Told {
    let path = Path::new(PATH);
    let mut told = Told::default();
    let mut j = Journal::<_, Vec<u8>>::create(fs, path, b"block rule").unwrap();
    for step in steps {
        match step {
            Step::Append(len) => {
                let r = record(told.appended.len(), *len);
                if j.append(&r).is_err() {
                    break;
                }
                told.appended.push(r);
            }
            Step::Sync => {
                if j.sync().is_err() {
                    break;
                }
                told.acked = told.appended.len();
            }
            Step::PowerCutInSync => {
                use storage::File;
                // Mid-block, the sync writes padding first (one operation), then syncs.
                let mid_block = j.file().len().unwrap() % BLOCK != 0;
                fs.crash_at(fs.ops() + if mid_block { 2 } else { 1 });
                if j.sync().is_ok() {
                    // Only a writer that does not pad gets here: its barrier ran.
                    told.acked = told.appended.len();
                }
                break;
            }
            Step::Reopen => {
                drop(j);
                match Journal::<_, Vec<u8>>::open(fs, path) {
                    Ok((again, replay)) => {
                        assert_eq!(replay.records, told.appended);
                        told.acked = told.appended.len();
                        j = again;
                    }
                    Err(_) => break,
                }
            }
        }
    }
    told
}

fn on_log(path: Option<&Path>) -> bool {
    path == Some(Path::new(PATH))
}

/// Walks the simulated disk's operation log and checks the rule on the offsets: every
/// successful sync leaves the file on a block boundary, and no write starts in a block that
/// holds a byte made durable by an earlier sync.
fn assert_no_write_touches_a_synced_block(fs: &SimFs) {
    let mut len = 0u64;
    let mut durable = 0u64;
    for l in fs.log() {
        match l.op {
            Op::Write {
                path,
                offset,
                len: n,
            } if on_log(path.as_deref()) => {
                let block = offset / BLOCK * BLOCK;
                assert!(
                    block >= durable,
                    "op {}: a write at {offset:#x} lands in the block at {block:#x}, which holds \
                     synced bytes up to {durable:#x}",
                    l.number
                );
                len = len.max(offset + n);
            }
            Op::SetLen { path, len: n } if on_log(path.as_deref()) => len = n,
            Op::SyncData { path } if on_log(path.as_deref()) && l.outcome.is_none() => {
                assert_eq!(
                    len % BLOCK,
                    0,
                    "op {}: a sync left the log mid-block ({len:#x} bytes)",
                    l.number
                );
                durable = len;
            }
            _ => {}
        }
    }
}

/// The log's live bytes with every block that a write after the last successful sync touched
/// overwritten whole with `fill` (`None` for garbage): what a torn append may leave behind
/// without powersafe overwrite.
fn garble_unsynced_blocks(fs: &SimFs, fill: Option<u8>) -> Vec<u8> {
    let log = fs.log();
    let last_sync = log
        .iter()
        .rposition(|l| {
            matches!(&l.op, Op::SyncData { path } if on_log(path.as_deref())) && l.outcome.is_none()
        })
        .expect("create syncs");
    let mut blocks = BTreeSet::new();
    for l in &log[last_sync + 1..] {
        if let Op::Write { path, offset, len } = &l.op {
            if on_log(path.as_deref()) && *len > 0 {
                blocks.extend(offset / BLOCK..(offset + len).div_ceil(BLOCK));
            }
        }
    }
    let mut bytes = fs.read_live(PATH).expect("the log exists");
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for b in blocks {
        let start = usize::try_from(b * BLOCK).unwrap();
        let end = start + usize::try_from(BLOCK).unwrap();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        for x in &mut bytes[start..end] {
            *x = fill.unwrap_or_else(|| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng.to_le_bytes()[0]
            });
        }
    }
    bytes
}

/// Garbles the unsynced blocks both ways and checks that exactly the synced records replay,
/// and that the log reopens and takes a new record after them.
fn check_garbled(fs: &SimFs, told: &Told, ctx: &str) {
    for fill in [Some(0u8), None] {
        let img = SimFs::new();
        img.put_durable(PATH, &garble_unsynced_blocks(fs, fill));

        let replay = journal::read::<_, Vec<u8>>(&img, Path::new(PATH))
            .unwrap_or_else(|e| panic!("{ctx}, fill {fill:?}: {e:?}"));

        let n = replay.records.len();
        assert_eq!(
            replay.records,
            told.appended[..told.acked],
            "{ctx}, fill {fill:?}: not exactly the synced records ({n} replayed, {} synced)",
            told.acked
        );
        let (mut j, _) = Journal::<_, Vec<u8>>::open(&img, Path::new(PATH))
            .unwrap_or_else(|e| panic!("{ctx}, fill {fill:?}: reopen: {e:?}"));
        assert_eq!(j.append(&b"after".to_vec()).unwrap(), n as u64);
        j.sync().unwrap();
        let again = journal::read::<_, Vec<u8>>(&img, Path::new(PATH)).unwrap();
        assert_eq!(again.tail, Tail::Clean, "{ctx}, fill {fill:?}");
        assert_eq!(
            again.records[..n],
            told.appended[..n],
            "{ctx}, fill {fill:?}"
        );
        assert_eq!(again.records[n], b"after", "{ctx}, fill {fill:?}");
    }
}

/// What follows the last successful sync.
#[derive(Debug, Clone, Copy)]
enum Unsynced {
    /// One small record.
    Small,
    /// A record that spans three blocks.
    Large,
    /// Two records and the padding of a sync that the power cut before its barrier.
    SyncInFlight,
}

#[test]
fn garbling_every_block_an_unsynced_append_touched_keeps_every_synced_record() {
    // Payload lengths that put the end of the synced records at every 8-byte position of a
    // block (a frame is 32 header bytes plus a 1- or 2-byte length prefix plus the payload,
    // rounded up to 8), so the sync's padding is short, long, spills into the next block or is
    // not needed at all. `None` syncs nothing but the header.
    let firsts = std::iter::once(None).chain((0..BLOCK as usize + 64).step_by(8).map(Some));
    let mut checked = 0;

    for first in firsts {
        for unsynced in [Unsynced::Small, Unsynced::Large, Unsynced::SyncInFlight] {
            // Arrange
            let fs = SimFs::new();
            let mut steps = Vec::new();
            if let Some(len) = first {
                steps.extend([Step::Append(100), Step::Append(len), Step::Sync]);
            }
            steps.extend(match unsynced {
                Unsynced::Small => vec![Step::Append(10)],
                Unsynced::Large => vec![Step::Append(3 * BLOCK as usize - 100)],
                Unsynced::SyncInFlight => {
                    vec![Step::Append(700), Step::Append(20), Step::PowerCutInSync]
                }
            });

            // Act
            let told = run(&fs, &steps);

            // Assert
            assert_no_write_touches_a_synced_block(&fs);
            check_garbled(&fs, &told, &format!("first {first:?}, then {unsynced:?}"));
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * (1 + 520));
}

#[test]
fn reopening_a_log_whose_last_batch_was_never_synced_pads_before_its_barrier() {
    // Arrange: two synced records, one more that reached the disk unsynced (the process died).
    let fs = SimFs::new();
    let told = run(
        &fs,
        &[
            Step::Append(300),
            Step::Append(50),
            Step::Sync,
            Step::Append(90),
            Step::Reopen,
            Step::Append(5),
        ],
    );

    // Act: the power fails while that last append is in flight.
    let garbled = [Some(0u8), None].map(|fill| garble_unsynced_blocks(&fs, fill));

    // Assert: `open` vouched for record 2 by syncing it, and padded first, so the new record
    // went to a block of its own and garbling it leaves record 2 intact.
    assert_eq!(told.acked, 3);
    assert_no_write_touches_a_synced_block(&fs);
    for bytes in garbled {
        let img = SimFs::new();
        img.put_durable(PATH, &bytes);
        let replay = journal::read::<_, Vec<u8>>(&img, Path::new(PATH)).unwrap();
        assert_eq!(replay.records, told.appended[..3]);
    }
    check_garbled(&fs, &told, "reopened");
}

#[test]
fn the_header_is_alone_in_its_block_before_the_first_append() {
    let fs = SimFs::new();

    let told = run(&fs, &[Step::Append(1)]);

    let first_write = fs
        .log()
        .iter()
        .filter_map(|l| match l.op {
            Op::Write {
                ref path, offset, ..
            } if on_log(path.as_deref()) => Some(offset),
            _ => None,
        })
        .nth(1)
        .expect("the append");
    assert_eq!(first_write, BLOCK);
    check_garbled(&fs, &told, "first append");
}

#[test]
fn a_sync_with_nothing_new_writes_no_padding() {
    let fs = SimFs::new();
    run(&fs, &[Step::Append(10), Step::Sync]);
    let ops = fs.ops();

    run_more_syncs(&fs);

    let writes = fs.log()[usize::try_from(ops).unwrap()..]
        .iter()
        .filter(|l| matches!(l.op, Op::Write { .. }))
        .count();
    assert_eq!(writes, 0);
}

fn run_more_syncs(fs: &SimFs) {
    let (mut j, _) = Journal::<_, Vec<u8>>::open(fs, Path::new(PATH)).unwrap();
    j.sync().unwrap();
    j.sync().unwrap();
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..9000).prop_map(Step::Append),
        3 => Just(Step::Sync),
        1 => Just(Step::Reopen),
        1 => Just(Step::PowerCutInSync),
    ]
}

proptest! {
    #[test]
    fn random_workloads_never_write_into_a_synced_block(
        steps in proptest::collection::vec(step(), 0..24),
    ) {
        let fs = SimFs::new();

        let told = run(&fs, &steps);

        assert_no_write_touches_a_synced_block(&fs);
        check_garbled(&fs, &told, &format!("{steps:?}"));
    }
}
