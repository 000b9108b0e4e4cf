//! A header size field that is not a multiple of 512. qemu never writes one (`qemu-img
//! create` rounds the size up, `qemu-img resize` refuses it: "The new size must be a
//! multiple of 512"), but it opens one without complaint and keeps the disk size in
//! sectors (`bs->total_sectors = header.size / BDRV_SECTOR_SIZE` in `qcow2_do_open`): the
//! disk is the field rounded *down* to 512 bytes for `qemu-img info`, `map`, `convert`, reads
//! and `commit`, and `qemu-img check` calls the image clean. imgtx reads it the same way, so
//! a raw commit grows its base to the size `qemu-img commit` grows it to.
//! The qemu tests skip (with a message) when qemu is not installed.
#![allow(missing_docs)]

mod common;

use common::assert_matches_qemu;
use common::synth::{build, Kind};
use qcow::{Error, ExtentKind, GuestOffset, Image};
use testkit::qemu::{available as qemu_available, img as qemu_img, io as qemu_io};

/// A size one byte past 1 MiB: what qemu reads as 1 MiB.
const ODD: u64 = (1 << 20) + 1;

fn set_size(bytes: &mut [u8], size: u64) {
    bytes[24..32].copy_from_slice(&size.to_be_bytes());
}

#[test]
fn odd_virtual_size_reads_as_the_size_rounded_down_to_512() {
    // Arrange: 4 KiB clusters, the last guest cluster written.
    let last = (1 << 20) / 4096 - 1;
    let bytes = build(12, ODD, &[(last, Kind::Data(7))], true).to_vec();

    // Act
    let image = Image::open(&bytes[..]).unwrap();
    let map = image.map().unwrap();

    // Assert
    assert_eq!(image.header().virtual_size, 1 << 20);
    let end = map.last().map(|e| e.guest.0 + e.len);
    assert_eq!(end, Some(1 << 20), "{map:?}");
    assert!(matches!(map.last().unwrap().kind, ExtentKind::Data { .. }));
    let mut one = [0u8; 1];
    image.read_at(&mut one, GuestOffset((1 << 20) - 1)).unwrap();
    assert_eq!(one, [7]);
    let past = image.read_at(&mut one, GuestOffset(1 << 20));
    assert!(matches!(past, Err(Error::InvalidArgument(_))), "{past:?}");
}

#[test]
fn every_size_between_two_sectors_reads_as_the_lower_one() {
    for extra in [1u64, 256, 511] {
        let bytes = build(9, (1 << 20) + extra, &[], false).to_vec();
        let image = Image::open(&bytes[..]).unwrap();
        assert_eq!(image.header().virtual_size, 1 << 20, "size 1 MiB + {extra}");
    }
}

#[test]
fn odd_virtual_size_matches_qemu_img_info_map_convert_and_commit() {
    if !qemu_available() {
        return;
    }
    // Arrange: a 1 MiB overlay over a 512 KiB raw base, its last cluster written, then its
    // size field made 1 MiB + 1.
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.raw");
    std::fs::write(&base, vec![0x5a; 512 << 10]).unwrap();
    let top = d.path().join("top.qcow2");
    let top_s = top.to_str().unwrap();
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top_s, "1M",
    ]);
    qemu_io(&top, &["write -P 0x22 983040 65536"]);
    let mut bytes = std::fs::read(&top).unwrap();
    set_size(&mut bytes, ODD);
    std::fs::write(&top, &bytes).unwrap();
    let image = Image::open(std::fs::File::open(&top).unwrap()).unwrap();

    // Act
    let info = qemu_img(&["info", "--output=json", "-f", "qcow2", top_s]);
    let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2", top_s])
        .output()
        .unwrap();
    qemu_img(&["commit", "-q", "-d", "-f", "qcow2", top_s]);

    // Assert: qemu sees a clean 1 MiB disk, and so do we; qemu-img commit grows the base
    // to that size, which is what a raw commit of our map grows it to.
    assert_eq!(info["virtual-size"].as_u64(), Some(1 << 20));
    assert!(check.status.success(), "qemu-img check: {check:?}");
    assert_eq!(image.header().virtual_size, 1 << 20);
    assert_matches_qemu(&top, d.path(), false);
    assert_eq!(
        std::fs::metadata(&base).unwrap().len(),
        image.header().virtual_size
    );
}
