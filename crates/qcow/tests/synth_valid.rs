//! The synthesized images the malformed-image tests start from are valid: qemu-img check
//! calls them clean and we read them as written.
#![allow(missing_docs)]

mod common;

use common::assert_matches_qemu;
use common::synth::{build, Kind};
use qcow::{ExtentKind, GuestOffset, HostOffset, Image};
use testkit::qemu;

#[test]
fn synthesized_image_reads_back_as_built() {
    // Arrange
    let b = build(
        16,
        1 << 30,
        &[
            (0, Kind::Data(1)),
            (1, Kind::Data(2)),
            (5, Kind::Zero),
            (9000, Kind::Data(3)),
        ],
        true,
    );
    let bytes = b.to_vec();
    // Act
    let image = Image::open(&bytes[..]).unwrap();
    let map = image.map().unwrap();
    // Assert
    let d = b.data[0].1;
    assert_eq!(
        map[0].kind,
        ExtentKind::Data {
            host: HostOffset(d)
        }
    );
    assert_eq!(map[0].len, 2 << 16);
    assert_eq!(map[2].kind, ExtentKind::Zero);
    let mut buf = [0u8; 3];
    image.read_at(&mut buf, GuestOffset(65535)).unwrap();
    assert_eq!(buf, [1, 2, 2]);
    image.read_at(&mut buf, GuestOffset(9000 << 16)).unwrap();
    assert_eq!(buf, [3, 3, 3]);
}

#[test]
fn synthesized_image_is_clean_for_qemu() {
    if !qemu::available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.qcow2");
    let clusters: Vec<_> = (0..300u64)
        .map(|i| {
            (
                i * 7 % 2000,
                if i % 5 == 0 {
                    Kind::Zero
                } else {
                    Kind::Data(i as u8)
                },
            )
        })
        .collect();
    build(12, 2000 << 12, &clusters, true).write_to(&p);
    let out = qemu::img(&["check", "--output=json", p.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["check-errors"], 0, "{v}");
    assert!(
        v.get("leaks").is_none() && v.get("corruptions").is_none(),
        "{v}"
    );
    assert_matches_qemu(&p, d.path(), true);
}

#[test]
fn inventory_accepts_guest_ranges_past_the_virtual_size() {
    // Arrange: a base smaller than the overlay that will be committed into it.
    let b = build(12, 1 << 20, &[(3, Kind::Data(7))], true);
    let bytes = b.to_vec();
    let image = Image::open(&bytes[..]).unwrap();
    // Act
    let inv = image.inventory(&[(GuestOffset(0), 8 << 20)]).unwrap();
    // Assert: the data cluster is listed, nothing past the file.
    let host = b.data[0].1;
    assert!(inv
        .ranges
        .iter()
        .any(|r| r.offset.0 <= host && host + 4096 <= r.offset.0 + r.len));
    assert!(inv
        .ranges
        .iter()
        .all(|r| r.offset.0 + r.len <= inv.file_len));
}
