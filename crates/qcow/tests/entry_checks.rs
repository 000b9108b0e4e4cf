//! L1 and L2 entries that `qemu-img check` counts as corruptions (exit status 2) are refused
//! by `Image::map` with `Error::Corrupt` naming the entry; entries qemu accepts are
//! accepted. Each case starts from a synthesized image that qemu-img check calls clean
//! (`tests/synth_valid.rs`), changes one entry, and runs the same bytes through imgtx and,
//! when it is installed, through `qemu-img check` (skipped with a message otherwise).
#![allow(missing_docs)]

mod common;

use std::process::Command;

use common::qemu_available;
use common::synth::{build, Built, Kind};
use qcow::{Error, Image};

const CB: u32 = 12;
const CS: u64 = 1 << CB;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;

/// 16 MiB guest, 4 KiB clusters: data in guest clusters 0 and 1, a zero cluster at 100.
fn image() -> (Built, Vec<u8>) {
    let b = build(
        CB,
        16 << 20,
        &[(0, Kind::Data(1)), (1, Kind::Data(2)), (100, Kind::Zero)],
        true,
    );
    let v = b.to_vec();
    (b, v)
}

fn set64(v: &mut [u8], at: u64, x: u64) {
    v[at as usize..at as usize + 8].copy_from_slice(&x.to_be_bytes());
}

/// `qemu-img check`'s exit status for `bytes`, or None without qemu-img.
fn qemu_check(bytes: &[u8]) -> Option<i32> {
    if !qemu_available() {
        return None;
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("check.qcow2");
    std::fs::write(&p, bytes).unwrap();
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", p.to_str().unwrap()])
        .output()
        .unwrap();
    out.status.code()
}

/// What imgtx says of `bytes`: open, then map.
fn map(bytes: &[u8]) -> qcow::Result<()> {
    Image::open(bytes)?.map().map(drop)
}

/// Asserts that qemu-img check calls `bytes` corrupt (when installed) and that imgtx refuses
/// them with `Corrupt` at `offset`, its reason containing `words`.
fn refused_like_qemu(bytes: &[u8], offset: u64, words: &str) {
    if let Some(code) = qemu_check(bytes) {
        assert_eq!(code, 2, "qemu-img check should call the image corrupt");
    }
    match map(bytes) {
        Err(Error::Corrupt { offset: at, reason }) => {
            assert_eq!(at, offset, "{reason}");
            assert!(reason.contains(words), "{reason}");
        }
        other => panic!("expected Corrupt at {offset:#x}, got {other:?}"),
    }
}

/// Asserts that qemu-img check calls `bytes` clean (when installed) and imgtx maps them.
fn accepted_like_qemu(bytes: &[u8]) {
    if let Some(code) = qemu_check(bytes) {
        assert_eq!(code, 0, "qemu-img check should call the image clean");
    }
    map(bytes).unwrap();
}

#[test]
fn the_untouched_image_is_clean_for_both() {
    accepted_like_qemu(&image().1);
}

#[test]
fn l1_entry_with_the_copied_flag_and_no_offset_is_refused() {
    // Arrange: qemu's checker takes such an entry as an L2 table at offset 0 and decodes
    // the header as L2 entries; its read path takes it as unallocated.
    let (b, mut v) = image();
    set64(&mut v, b.l1_offset + 8, COPIED);
    // Act + Assert
    refused_like_qemu(&v, b.l1_offset + 8, "L1 entry 1");
}

#[test]
fn l2_entries_with_flags_and_no_offset_that_qemu_accepts_are_accepted() {
    // qemu-img check and its read path take an L2 entry with offset 0 as unallocated (or as
    // zeros with the zero flag), whatever the COPIED flag says.
    let (b, v) = image();
    let e = b.l2_entry_offset(5);
    for entry in [COPIED, COPIED | 1, 1] {
        let mut c = v.clone();
        set64(&mut c, e, entry);
        accepted_like_qemu(&c);
    }
}

#[test]
fn compressed_data_reaching_a_cluster_past_the_end_of_the_file_is_refused() {
    // Arrange: guest cluster 1 gives up the last host cluster (left leaked, which qemu
    // tolerates), and guest cluster 2 becomes compressed data starting 512 bytes before the
    // end of the file with 16 sectors (the most 4 KiB clusters allow): it ends 7.5 KiB, more
    // than a cluster, past the end.
    let (b, mut v) = image();
    set64(&mut v, b.l2_entry_offset(1), 0);
    let e = b.l2_entry_offset(2);
    set64(&mut v, e, COMPRESSED | 0xf << 58 | (b.file_len - 512));
    // Act + Assert
    refused_like_qemu(&v, e, "past the end of the file");
}

#[test]
fn compressed_data_ending_less_than_a_cluster_past_the_end_of_the_file_is_accepted() {
    // Arrange: as above with 2 sectors, ending 512 bytes past the end, in a cluster whose
    // refcount is 1 (qemu's own files may end inside the last compressed cluster).
    let (b, mut v) = image();
    set64(&mut v, b.l2_entry_offset(1), 0);
    set64(
        &mut v,
        b.l2_entry_offset(2),
        COMPRESSED | 1 << 58 | (b.file_len - 512),
    );
    let past_end = b.file_len / CS;
    let rb = b.refblock_offsets[0] + past_end * 2;
    v[rb as usize..rb as usize + 2].copy_from_slice(&1u16.to_be_bytes());
    // Act + Assert
    accepted_like_qemu(&v);
}
