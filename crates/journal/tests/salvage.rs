//! The forensic scan (`journal::salvage`) and the header read (`journal::header`): every
//! record that validates, in file order, whatever replay would make of the damage around it.

use std::path::Path;

use journal::format::BLOCK;
use journal::{Journal, Salvaged};
use storage::sim::SimFs;
use storage::File;

const PATH: &str = "/log";

/// A log of `n` records of 300 bytes, synced after each (so each starts a block of its own,
/// as the history's entries do); returns its bytes and each record's offset.
fn build(n: u8) -> (Vec<u8>, Vec<u64>) {
    let fs = SimFs::new();
    let mut j = Journal::<_, Vec<u8>>::create(&fs, Path::new(PATH), b"id").unwrap();
    let mut starts = Vec::new();
    for i in 0..n {
        starts.push(j.file().len().unwrap());
        j.append(&vec![i; 300]).unwrap();
        j.sync().unwrap();
    }
    (fs.read_live(PATH).unwrap(), starts)
}

fn salvage(bytes: &[u8]) -> Vec<Salvaged> {
    let fs = SimFs::new();
    fs.put_durable(PATH, bytes);
    journal::salvage(&fs, Path::new(PATH)).unwrap().items
}

/// The records' sequence numbers, and `None` for each damaged stretch, in file order.
fn shape(items: &[Salvaged]) -> Vec<Option<u64>> {
    items
        .iter()
        .map(|i| match i {
            Salvaged::Record { seq, .. } => Some(*seq),
            Salvaged::Damaged { .. } => None,
        })
        .collect()
}

#[test]
fn a_clean_log_salvages_every_record_in_order_with_its_payload_as_stored() {
    let (bytes, starts) = build(3);

    let items = salvage(&bytes);

    assert_eq!(shape(&items), [Some(0), Some(1), Some(2)]);
    let Salvaged::Record {
        offset, payload, ..
    } = &items[1]
    else {
        panic!("a record")
    };
    assert_eq!(*offset, starts[1]);
    let decoded: Vec<u8> = journal::format::decode_payload(payload).unwrap();
    assert_eq!(decoded, vec![1u8; 300]);
}

#[test]
fn a_flipped_byte_in_the_middle_is_a_damaged_stretch_and_the_records_after_it_are_kept() {
    let (mut bytes, starts) = build(4);
    bytes[starts[1] as usize + 100] ^= 1;

    let items = salvage(&bytes);

    assert_eq!(shape(&items), [Some(0), None, Some(2), Some(3)]);
    assert!(matches!(items[1], Salvaged::Damaged { offset, .. } if offset == starts[1]));
    // Replay, by contrast, stops there and refuses.
    let fs = SimFs::new();
    fs.put_durable(PATH, &bytes);
    assert!(matches!(
        journal::read::<_, Vec<u8>>(&fs, Path::new(PATH)),
        Err(journal::Error::Corrupt { .. })
    ));
}

#[test]
fn blocks_cut_out_or_swapped_show_their_own_sequence_numbers_in_file_order() {
    let (bytes, _) = build(4);
    let block = |i: u64| &bytes[(i * BLOCK) as usize..((i + 1) * BLOCK) as usize];
    // Block 0 is the header; record n fills block n + 1.
    let cut: Vec<u8> = [block(0), block(1), block(3), block(4)].concat();
    let swapped: Vec<u8> = [block(0), block(1), block(3), block(2), block(4)].concat();

    assert_eq!(shape(&salvage(&cut)), [Some(0), Some(2), Some(3)]);
    assert_eq!(
        shape(&salvage(&swapped)),
        [Some(0), Some(2), Some(1), Some(3)]
    );
}

#[test]
fn a_cut_inside_the_last_record_is_a_damaged_stretch_at_the_end() {
    let (bytes, starts) = build(3);
    let cut = &bytes[..starts[2] as usize + 100];

    let items = salvage(cut);

    assert_eq!(shape(&items), [Some(0), Some(1), None]);
    assert_eq!(
        items[2],
        Salvaged::Damaged {
            offset: starts[2],
            len: 100
        }
    );
}

#[test]
fn a_tail_crafted_to_look_like_frames_everywhere_is_bounded_and_reported_damaged() {
    // Every 8 bytes a frame header claiming a payload as long as the rest of the file: an
    // unbounded scan would checksum quadratically many bytes.
    let (mut bytes, _) = build(1);
    let start = bytes.len();
    let tail = 8 << 20;
    bytes.resize(start + tail, 0);
    for off in (start..start + tail - 8).step_by(8) {
        let len = u32::try_from((start + tail - off).saturating_sub(32)).unwrap_or(0);
        bytes[off..off + 4].copy_from_slice(&len.to_le_bytes());
    }

    let t = std::time::Instant::now();
    let items = salvage(&bytes);

    assert_eq!(shape(&items), [Some(0), None]);
    assert!(t.elapsed().as_secs() < 30, "took {:?}", t.elapsed());
}

#[test]
fn header_reads_the_identity_without_replaying_records() {
    let (mut bytes, starts) = build(2);
    // Records that would not replay do not matter to the header.
    bytes[starts[0] as usize + 40] ^= 0xff;
    let fs = SimFs::new();
    fs.put_durable(PATH, &bytes);

    let header = journal::header(&fs, Path::new(PATH)).unwrap();

    assert_eq!(header.identity, b"id");
}
