//! The recovery policy on hand-made damage: torn tails, zeroed and garbage sectors, bit flips,
//! stale records of an earlier log, undecodable payloads, damaged headers, poisoning.

use std::path::Path;

use journal::format::{frame_len, BLOCK, MAX_RECORD_LEN};
use journal::{Error, Journal, RecoveryMode, Tail};
use storage::sim::{Fault, SimFs};
use storage::File;

const PATH: &str = "/log";

/// Writes `records` (syncing after each record when `sync_each`, else once at the end) and
/// returns the file bytes and each record's start offset.
fn build(records: &[Vec<u8>], sync_each: bool) -> (Vec<u8>, Vec<u64>) {
    let fs = SimFs::new();
    let mut j = Journal::<_, Vec<u8>>::create(&fs, Path::new(PATH), b"id").unwrap();
    let mut starts = Vec::new();
    for r in records {
        starts.push(j.file().len().unwrap());
        j.append(r).unwrap();
        if sync_each {
            j.sync().unwrap();
        }
    }
    j.sync().unwrap();
    (fs.read_live(PATH).unwrap(), starts)
}

/// Offset just past the frame starting at `start`, from its length field.
fn frame_end(bytes: &[u8], start: u64) -> u64 {
    let at = usize::try_from(start).unwrap();
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    start + frame_len(len)
}

fn disk(bytes: &[u8]) -> SimFs {
    let fs = SimFs::new();
    fs.put_durable(PATH, bytes);
    fs
}

fn read(fs: &SimFs) -> journal::Result<journal::Replay<Vec<u8>>> {
    journal::read(fs, Path::new(PATH))
}

fn records(n: u8, len: usize) -> Vec<Vec<u8>> {
    (1..=n).map(|i| vec![i; len]).collect()
}

#[test]
fn a_tail_cut_at_any_byte_of_the_last_record_is_torn_and_truncated_on_open() {
    let recs = records(4, 300);
    let (bytes, starts) = build(&recs, true);
    let last = starts[3];

    for cut in last..frame_end(&bytes, last) {
        let fs = disk(&bytes[..cut as usize]);

        let replay = read(&fs).unwrap();
        let (mut j, opened) = Journal::<_, Vec<u8>>::open(&fs, Path::new(PATH)).unwrap();

        let expect = if cut == last {
            Tail::Clean
        } else {
            Tail::Torn {
                valid_len: last,
                discarded: cut - last,
            }
        };
        assert_eq!(
            (replay.records.as_slice(), replay.tail),
            (&recs[..3], expect),
            "cut {cut}"
        );
        assert_eq!(opened.tail, expect);
        assert_eq!(fs.read_live(PATH).unwrap().len() as u64, last, "cut {cut}");
        assert_eq!(j.append(&b"new".to_vec()).unwrap(), 3);
        j.sync().unwrap();
        assert_eq!(read(&fs).unwrap().records[3], b"new");
    }
}

#[test]
fn a_tail_cut_inside_the_padding_keeps_the_record_and_open_pads_again() {
    // The sync's padding frame was torn: the record before it survived whole.
    let recs = records(4, 300);
    let (bytes, starts) = build(&recs, true);
    let record_end = frame_end(&bytes, starts[3]);
    assert_eq!(bytes.len() as u64 % BLOCK, 0);

    for cut in (record_end + 1..bytes.len() as u64).step_by(97) {
        let fs = disk(&bytes[..cut as usize]);

        let (mut j, opened) = Journal::<_, Vec<u8>>::open(&fs, Path::new(PATH)).unwrap();
        let after_open = fs.read_live(PATH).unwrap().len() as u64;
        j.append(&b"new".to_vec()).unwrap();
        j.sync().unwrap();

        assert_eq!(opened.records, recs, "cut {cut}");
        assert_eq!(
            opened.tail,
            Tail::Torn {
                valid_len: record_end,
                discarded: cut - record_end
            },
            "cut {cut}"
        );
        assert_eq!(
            after_open % BLOCK,
            0,
            "cut {cut}: open left the log mid-block"
        );
        assert_eq!(read(&fs).unwrap().records[4], b"new", "cut {cut}");
    }
}

#[test]
fn a_zeroed_or_garbage_final_sector_is_a_torn_tail() {
    let recs = records(3, 1500);
    let (bytes, starts) = build(&recs, true);
    // The last record's final 512-byte sector, and everything after it (the sync's padding).
    let sector_start = (frame_end(&bytes, starts[2]) - 1) / 512 * 512;
    assert!(
        sector_start > starts[2],
        "the last sector must lie inside the last record"
    );

    for fill in [0x00u8, 0x5a] {
        let mut damaged = bytes.clone();
        damaged[sector_start as usize..].fill(fill);

        let replay = read(&disk(&damaged)).unwrap();

        assert_eq!(replay.records, recs[..2], "fill {fill:#x}");
        assert_eq!(
            replay.tail,
            Tail::Torn {
                valid_len: starts[2],
                discarded: bytes.len() as u64 - starts[2]
            }
        );
    }
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail() {
    let (mut bytes, _) = build(&records(2, 10), true);
    let len = bytes.len() as u64;
    bytes.extend_from_slice(&[0; 4096]);

    let replay = read(&disk(&bytes)).unwrap();

    assert_eq!(replay.records.len(), 2);
    assert_eq!(
        replay.tail,
        Tail::Torn {
            valid_len: len,
            discarded: 4096
        }
    );
}

#[test]
fn a_bit_flip_in_a_record_followed_by_synced_records_is_refused_and_nothing_is_truncated() {
    let recs = records(4, 100);
    let (bytes, starts) = build(&recs, true);

    for bit in [0usize, 7, 8 * 4, 8 * 9, 8 * 30] {
        let mut damaged = bytes.clone();
        let at = starts[1] as usize + bit / 8;
        damaged[at] ^= 1 << (bit % 8);
        let fs = disk(&damaged);

        let read_err = read(&fs).unwrap_err();
        let open_err = Journal::<_, Vec<u8>>::open(&fs, Path::new(PATH)).unwrap_err();

        assert!(
            matches!(read_err, Error::Corrupt { offset, .. } if offset == starts[1]),
            "bit {bit}: {read_err:?}"
        );
        assert!(matches!(open_err, Error::Corrupt { .. }));
        assert_eq!(
            fs.read_live(PATH).unwrap(),
            damaged,
            "bit {bit}: file modified"
        );
    }
}

#[test]
fn damage_in_a_batch_followed_by_a_later_synced_batch_is_refused() {
    let fs = SimFs::new();
    let mut j = Journal::<_, Vec<u8>>::create(&fs, Path::new(PATH), b"id").unwrap();
    let start = j.file().len().unwrap();
    for r in records(3, 50) {
        j.append(&r).unwrap();
    }
    j.sync().unwrap();
    j.append(&b"commit".to_vec()).unwrap();
    j.sync().unwrap();
    let mut damaged = fs.read_live(PATH).unwrap();
    damaged[start as usize + 30] ^= 0x10;

    let err = read(&disk(&damaged)).unwrap_err();

    assert!(
        matches!(err, Error::Corrupt { offset, .. } if offset == start),
        "{err:?}"
    );
}

#[test]
fn damage_inside_the_last_synced_batch_reads_as_a_torn_tail() {
    // The documented limit: nothing written after the batch's sync vouches for it.
    let recs = records(3, 50);
    let (mut bytes, starts) = build(&recs, false);
    bytes[starts[1] as usize + 30] ^= 0x10;

    let replay = read(&disk(&bytes)).unwrap();

    assert_eq!(replay.records, recs[..1]);
    assert!(matches!(replay.tail, Tail::Torn { valid_len, .. } if valid_len == starts[1]));
}

#[test]
fn stale_records_of_an_earlier_log_after_the_tail_never_validate() {
    // Arrange: an earlier log with more records at the same path, overwritten by a new log
    // (another nonce) that is shorter, leaving old records past its tail.
    let old = build(&records(6, 40), true).0;
    let (new, _) = build(&records(2, 40), true);
    let mut bytes = old.clone();
    bytes[..new.len()].copy_from_slice(&new);
    let fs = disk(&bytes);

    // Act
    let replay = read(&fs).unwrap();
    let (_, opened) = Journal::<_, Vec<u8>>::open(&fs, Path::new(PATH)).unwrap();

    // Assert: only the new log's records; the stale ones are a discarded tail.
    assert_eq!(replay.records, records(2, 40));
    assert_eq!(
        replay.tail,
        Tail::Torn {
            valid_len: new.len() as u64,
            discarded: (old.len() - new.len()) as u64
        }
    );
    assert_eq!(opened.records.len(), 2);
    assert_eq!(fs.read_live(PATH).unwrap(), new);
}

#[test]
fn a_record_whose_checksum_passes_but_payload_does_not_decode_is_corruption() {
    let fs = SimFs::new();
    let mut j = Journal::<_, String>::create(&fs, Path::new(PATH), b"id").unwrap();
    j.append(&"abc".to_string()).unwrap();
    j.sync().unwrap();

    let err = journal::read::<_, u64>(&fs, Path::new(PATH)).unwrap_err();

    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

type Damager = fn(&mut Vec<u8>);

#[test]
fn header_damage_is_its_own_error() {
    let (bytes, _) = build(&records(1, 8), true);
    let cases: [(&str, Damager); 6] = [
        ("magic", |b| b[0] ^= 1),
        ("identity bit", |b| b[40] ^= 1),
        ("identity length", |b| b[33] = 0xff),
        ("version", |b| b[8] = 9),
        ("short", |b| b.truncate(20)),
        ("zeros", |b| b[..48].fill(0)),
    ];

    for (name, damage) in cases {
        let mut damaged = bytes.clone();
        damage(&mut damaged);

        let err = read(&disk(&damaged)).unwrap_err();

        // Records follow the header: damage to it is refused, even when it reads as zeros or
        // claims to be longer than the file.
        let ok = match name {
            "version" => matches!(err, Error::UnsupportedVersion { version: 9, .. }),
            "short" => matches!(err, Error::HeaderIncomplete { .. }),
            _ => matches!(err, Error::BadHeader { .. }),
        };
        assert!(ok, "{name}: {err:?}");
    }
}

#[test]
fn a_damaged_header_with_no_room_for_a_record_is_an_interrupted_creation() {
    // `create` writes one whole block and syncs it before any append; a torn creation leaves
    // at most that block, whatever it holds.
    let (bytes, _) = build(&[], true);
    assert_eq!(bytes.len() as u64, BLOCK);
    let cases: [(&str, Damager); 4] = [
        ("garbage", |b| b.iter_mut().for_each(|x| *x = 0x5a)),
        ("zeros", |b| b.fill(0)),
        ("first sector only", |b| b.truncate(512)),
        ("torn magic", |b| b[3] ^= 0x40),
    ];

    for (name, damage) in cases {
        let mut damaged = bytes.clone();
        damage(&mut damaged);

        let err = read(&disk(&damaged)).unwrap_err();

        assert!(
            matches!(err, Error::HeaderIncomplete { .. }),
            "{name}: {err:?}"
        );
    }
}

#[test]
fn a_version_1_journal_is_refused_with_its_version() {
    // A version-1 header (records packed at 8-byte alignment after it), field by field.
    let mut v1 = Vec::new();
    v1.extend_from_slice(b"IMGTXJNL"); // magic
    v1.extend_from_slice(&1u32.to_le_bytes()); // format version 1
    v1.extend_from_slice(&0u32.to_le_bytes()); // flags
    v1.extend_from_slice(&[0x11; 16]); // nonce
    v1.extend_from_slice(&2u32.to_le_bytes()); // identity length
    let crc = journal::format::header_crc(&v1, b"id");
    v1.extend_from_slice(&crc.to_le_bytes()); // header CRC
    v1.extend_from_slice(b"id"); // identity
    v1.extend_from_slice(&[0; 6]); // padding to 8
    v1.extend_from_slice(&[0xab; 64]); // stands in for version-1 records

    let err = read(&disk(&v1)).unwrap_err();

    assert!(
        matches!(
            err,
            Error::UnsupportedVersion {
                version: 1,
                supported: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "journal /log has format version 1, this build reads only version 2"
    );
}

#[test]
fn a_huge_length_field_is_refused_before_allocating() {
    let (mut bytes, starts) = build(&records(2, 8), true);
    let at = starts[0] as usize;
    bytes[at..at + 4].copy_from_slice(&(MAX_RECORD_LEN + 1).to_le_bytes());

    let err = read(&disk(&bytes)).unwrap_err();

    // Record 1 follows, synced after record 0: corruption, found without a 64 MiB allocation.
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

#[test]
fn modes_differ_only_in_how_they_treat_damage() {
    let recs = records(3, 20);
    let (bytes, starts) = build(&recs, true);
    let torn = &bytes[..bytes.len() - 3];
    let mut flipped = bytes.clone();
    flipped[starts[0] as usize + 25] ^= 4;

    let strict = journal::read_with::<_, Vec<u8>>(
        &disk(torn),
        Path::new(PATH),
        RecoveryMode::AbsoluteConsistency,
    );
    let salvage = journal::read_with::<_, Vec<u8>>(
        &disk(&flipped),
        Path::new(PATH),
        RecoveryMode::SalvagePrefix,
    )
    .unwrap();
    let clean = journal::read_with::<_, Vec<u8>>(
        &disk(&bytes),
        Path::new(PATH),
        RecoveryMode::AbsoluteConsistency,
    )
    .unwrap();

    assert!(matches!(strict, Err(Error::Corrupt { .. })));
    assert!(salvage.records.is_empty());
    assert!(matches!(salvage.tail, Tail::Torn { valid_len, .. } if valid_len == starts[0]));
    assert_eq!(clean.records, recs);
}

#[test]
fn a_failed_write_poisons_the_handle() {
    let fs = SimFs::new();
    let mut j = Journal::<_, u32>::create(&fs, Path::new(PATH), b"").unwrap();
    fs.fail_at(fs.ops() + 1, Fault::Eio);

    let first = j.append(&1);
    let second = j.append(&2);
    let sync = j.sync();

    assert!(matches!(first, Err(Error::Io { .. })));
    assert!(matches!(second, Err(Error::Poisoned)));
    assert!(matches!(sync, Err(Error::Poisoned)));
}

#[test]
fn a_failed_sync_poisons_the_handle_and_is_never_retried() {
    let fs = SimFs::new();
    let mut j = Journal::<_, u32>::create(&fs, Path::new(PATH), b"").unwrap();
    j.append(&1).unwrap();
    fs.fail_at(fs.ops() + 1, Fault::Eio);

    let first = j.sync();
    let ops_after = fs.ops();
    let second = j.sync();

    assert!(matches!(first, Err(Error::Io { .. })));
    assert!(matches!(second, Err(Error::Poisoned)));
    assert_eq!(fs.ops(), ops_after, "the poisoned sync reached the disk");
}

#[test]
fn create_refuses_an_existing_name_and_a_missing_directory() {
    let fs = SimFs::new();
    drop(Journal::<_, u8>::create(&fs, Path::new(PATH), b"").unwrap());

    let again = Journal::<_, u8>::create(&fs, Path::new(PATH), b"").unwrap_err();
    let no_dir = Journal::<_, u8>::create(&fs, Path::new("/nope/log"), b"").unwrap_err();

    assert!(
        matches!(again, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists)
    );
    assert!(
        matches!(no_dir, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
}

#[test]
fn remove_is_durable() {
    let fs = SimFs::new();
    drop(Journal::<_, u8>::create(&fs, Path::new(PATH), b"").unwrap());

    journal::remove(&fs, Path::new(PATH)).unwrap();

    assert_eq!(fs.read_durable(PATH), None);
}

#[test]
fn a_tail_crafted_to_make_the_scan_quadratic_is_refused_in_linear_time() {
    // Arrange: after one record, 2 MiB where every aligned offset reads as a plausible frame
    // header (length 60000, seq = synced = 60000) whose checksum fails.
    let (mut bytes, _) = build(&records(1, 8), true);
    let mut pattern = [0u8; 8];
    pattern[..4].copy_from_slice(&60_000u32.to_le_bytes());
    for _ in 0..(2 << 20) / 8 {
        bytes.extend_from_slice(&pattern);
    }
    let started = std::time::Instant::now();

    // Act
    let err = read(&disk(&bytes)).unwrap_err();

    // Assert: fail closed, without checksumming 60 KB at each of 262,144 offsets.
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}
