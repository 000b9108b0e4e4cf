//! L1 and L2 entries that `qemu-img check` counts as corruptions (exit status 2) are refused
//! by `Image::map` with `Error::Corrupt` naming the entry; entries qemu accepts are
//! accepted. Each case starts from a synthesized image that qemu-img check calls clean
//! (`tests/synth_valid.rs`), changes one entry, and runs the same bytes through imgtx and,
//! when it is installed, through `qemu-img check` (skipped with a message otherwise).
#![allow(missing_docs)]

mod common;

use std::process::Command;

use common::synth::{build, Built, Kind};
use qcow::{Error, Image};
use testkit::qemu::{available as qemu_available, img as qemu_img, io as qemu_io};

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

/// Asserts that qemu-img check finds no corruption in `bytes` (when installed: exit status
/// 0, or 3 for leaked clusters only, "no harm to data") and imgtx maps them.
fn accepted_like_qemu(bytes: &[u8]) {
    if let Some(code) = qemu_check(bytes) {
        assert!(code == 0 || code == 3, "qemu-img check exit status {code}");
    }
    map(bytes).unwrap();
}

/// Sets the 16-bit refcount of host cluster `c` (the synthesized images have one refcount
/// block).
fn set_refcount(b: &Built, v: &mut [u8], c: u64, r: u16) {
    let at = (b.refblock_offsets[0] + c * 2) as usize;
    v[at..at + 2].copy_from_slice(&r.to_be_bytes());
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

#[test]
fn l1_entry_without_the_copied_flag_over_an_unshared_l2_table_is_refused() {
    // qemu-img check: "ERROR OFLAG_COPIED L2 cluster: l1_index=0 ... refcount=1".
    let (b, mut v) = image();
    let (_, l2) = b.l2_offsets[0];
    set64(&mut v, b.l1_offset, l2);
    refused_like_qemu(&v, b.l1_offset, "lacks the COPIED flag");
}

#[test]
fn l1_entry_with_the_copied_flag_over_a_shared_l2_table_is_refused() {
    // The L2 table's refcount says 2: qemu-img check counts a leak and a COPIED mismatch.
    let (b, mut v) = image();
    let (_, l2) = b.l2_offsets[0];
    set_refcount(&b, &mut v, l2 / CS, 2);
    refused_like_qemu(&v, b.l1_offset, "refcount 2");
}

#[test]
fn l2_table_whose_refcount_is_zero_is_refused() {
    // qemu-img check: "ERROR cluster N refcount=0 reference=1".
    let (b, mut v) = image();
    let (_, l2) = b.l2_offsets[0];
    set_refcount(&b, &mut v, l2 / CS, 0);
    refused_like_qemu(&v, b.l1_offset, "refcount is 0");
}

#[test]
fn l2_entry_without_the_copied_flag_over_an_unshared_data_cluster_is_refused() {
    // qemu-img check: "ERROR OFLAG_COPIED data cluster: l2_entry=... refcount=1".
    let (b, mut v) = image();
    let e = b.l2_entry_offset(0);
    set64(&mut v, e, b.data[0].1);
    refused_like_qemu(&v, e, "lacks the COPIED flag");
}

#[test]
fn l2_entry_with_the_copied_flag_over_a_shared_data_cluster_is_refused() {
    let (b, mut v) = image();
    set_refcount(&b, &mut v, b.data[1].1 / CS, 2);
    refused_like_qemu(&v, b.l2_entry_offset(1), "refcount 2");
}

#[test]
fn preallocated_zero_cluster_without_the_copied_flag_is_refused() {
    // A zero flag with a host offset (ZERO_ALLOC) is checked like a data cluster.
    let (b, mut v) = image();
    let e = b.l2_entry_offset(0);
    set64(&mut v, e, b.data[0].1 | 1);
    refused_like_qemu(&v, e, "lacks the COPIED flag");
}

#[test]
fn data_cluster_whose_refcount_is_zero_is_refused() {
    // No COPIED flag, so only the refcount is wrong: "ERROR cluster N refcount=0 reference=1".
    let (b, mut v) = image();
    let e = b.l2_entry_offset(1);
    set64(&mut v, e, b.data[1].1);
    set_refcount(&b, &mut v, b.data[1].1 / CS, 0);
    refused_like_qemu(&v, e, "refcount is 0");
}

#[test]
fn compressed_data_in_a_cluster_whose_refcount_is_zero_is_refused() {
    // Guest cluster 1 gives up its data cluster, which is freed (refcount 0); guest
    // cluster 2 becomes one sector of compressed data inside it.
    let (b, mut v) = image();
    let host = b.data[1].1;
    set64(&mut v, b.l2_entry_offset(1), 0);
    set_refcount(&b, &mut v, host / CS, 0);
    let e = b.l2_entry_offset(2);
    set64(&mut v, e, COMPRESSED | (host + 1024));
    refused_like_qemu(&v, e, "refcount is 0");
}

#[test]
fn data_cluster_without_the_copied_flag_and_a_refcount_above_one_is_accepted() {
    // What a cluster shared with an internal snapshot looks like; without the snapshot
    // qemu-img check counts one leaked reference, no corruption.
    let (b, mut v) = image();
    set64(&mut v, b.l2_entry_offset(1), b.data[1].1);
    set_refcount(&b, &mut v, b.data[1].1 / CS, 2);
    accepted_like_qemu(&v);
}

#[test]
fn dirty_image_skips_the_refcount_checks() {
    // Deliberately more lenient than qemu-img check, which reports a dirty image's stale
    // refcounts and COPIED flags as corruptions: qemu itself repairs both on its next
    // read-write open, and a crash with lazy refcounts leaves exactly this.
    let (b, mut v) = image();
    set64(&mut v, 72, 1);
    set64(&mut v, b.l2_entry_offset(0), b.data[0].1);
    set_refcount(&b, &mut v, b.data[1].1 / CS, 0);
    if let Some(code) = qemu_check(&v) {
        assert_eq!(code, 2);
    }
    map(&v).unwrap();
}

#[test]
fn qemu_images_of_every_refcount_width_map_and_a_cleared_copied_flag_is_refused() {
    if !qemu_available() {
        return;
    }
    for bits in [1u32, 2, 4, 8, 16, 32, 64] {
        // Arrange: data, zero and packed compressed clusters, written by qemu-io.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.qcow2");
        let opts = format!("cluster_size=4096,refcount_bits={bits}");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opts,
            p.to_str().unwrap(),
            "4M",
        ]);
        qemu_io(
            &p,
            &[
                "write -P 0x11 0 8k",
                "write -z 8k 4k",
                "write -c -P 0x22 16k 4k",
                "write -c -P 0x33 20k 4k",
                "write -P 0x44 1M 4k",
            ],
        );
        let mut v = std::fs::read(&p).unwrap();
        accepted_like_qemu(&v);
        // Act: guest cluster 0's entry loses its COPIED flag.
        let image = Image::open(&v[..]).unwrap();
        let l1 = image.header().l1_table_offset.0 as usize;
        let l2 = u64::from_be_bytes(v[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00;
        let e = u64::from_be_bytes(v[l2 as usize..l2 as usize + 8].try_into().unwrap());
        assert_ne!(e & COPIED, 0, "refcount_bits={bits}");
        set64(&mut v, l2, e & !COPIED);
        // Assert
        refused_like_qemu(&v, l2, "lacks the COPIED flag");
    }
}

/// 1 MiB guest, 4 KiB clusters: its one L2 table maps 2 MiB, so entries 256 to 511 lie past
/// the virtual size. Data in guest clusters 0 and 1.
fn half_used_table() -> (Built, Vec<u8>) {
    let b = build(CB, 1 << 20, &[(0, Kind::Data(1)), (1, Kind::Data(2))], true);
    let v = b.to_vec();
    (b, v)
}

#[test]
fn l2_entry_past_the_virtual_size_with_reserved_bits_is_refused() {
    // qemu-img check decodes every entry of every active L2 table, mapped or not.
    let (b, mut v) = half_used_table();
    let e = b.l2_entry_offset(300);
    set64(&mut v, e, 1 << 57);
    refused_like_qemu(&v, e, "reserved bits");
}

#[test]
fn l2_entry_past_the_virtual_size_sharing_a_data_cluster_is_refused() {
    // Entry 300 points at guest cluster 1's data cluster: qemu-img check counts two
    // references to a cluster whose refcount is 1.
    let (b, mut v) = half_used_table();
    let e = b.l2_entry_offset(300);
    set64(&mut v, e, b.data[1].1 | COPIED);
    if let Some(code) = qemu_check(&v) {
        assert_eq!(code, 2);
    }
    let err = map(&v).unwrap_err();
    assert!(matches!(err, Error::SharedCluster { .. }), "{err:?}");
}
