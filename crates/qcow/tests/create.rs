//! `create_overlay` against qemu-img: the bytes must be an image qemu calls clean.
#![allow(missing_docs)]

use qcow::{create_overlay, Error, ExtentKind, Image};
use testkit::qemu;

fn write_overlay(dir: &std::path::Path, size: u64, backing: &str, fmt: &str) -> std::path::PathBuf {
    let bytes = create_overlay(size, backing, fmt).unwrap();
    let p = dir.join("overlay.qcow2");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn created_overlay_is_clean_and_names_its_backing_file() {
    if !qemu::available() {
        return;
    }
    for (size, fmt) in [
        (1u64 << 30, "raw"),
        (0, "qcow2"),
        (512, "raw"),
        (1 << 40, "qcow2"),
        (1 << 50, "qcow2"),
    ] {
        // Arrange
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.img");
        qemu::img(&[
            "create",
            "-q",
            "-f",
            fmt,
            base.to_str().unwrap(),
            &size.to_string(),
        ]);
        // Act
        let p = write_overlay(d.path(), size, "base.img", fmt);
        // Assert
        let check = qemu::img(&["check", "--output=json", p.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&check).unwrap();
        assert_eq!(v["check-errors"], 0, "{v}");
        assert!(
            v.get("leaks").is_none() && v.get("corruptions").is_none(),
            "{v}"
        );
        let info = qemu::img(&["info", "--output=json", p.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&info).unwrap();
        assert_eq!(v["backing-filename"], "base.img");
        assert_eq!(v["backing-filename-format"], fmt);
        assert_eq!(v["virtual-size"], size);
        assert_eq!(v["format-specific"]["data"]["compat"], "1.1");
    }
}

#[test]
fn created_overlay_opens_and_maps_as_unallocated() {
    let bytes = create_overlay(10 << 30, "dir/base.qcow2", "qcow2").unwrap();
    let image = Image::open(&bytes[..]).unwrap();
    let h = image.header();
    assert_eq!(
        (h.version, h.cluster_bits, h.virtual_size),
        (3, 16, 10 << 30)
    );
    assert_eq!(h.backing_file.as_deref(), Some("dir/base.qcow2"));
    assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
    assert!(!h.dirty);
    let map = image.map().unwrap();
    assert_eq!(map.len(), 1);
    assert_eq!(
        (map[0].len, map[0].kind),
        (10 << 30, ExtentKind::Unallocated)
    );
    let inv = image.inventory(&[]).unwrap();
    assert_eq!(inv.file_len, bytes.len() as u64);
}

#[test]
fn create_overlay_rejects_bad_arguments() {
    for (size, name, fmt) in [
        (1 << 30, "", "raw"),
        (1 << 30, "a\0b", "raw"),
        (1 << 30, &"x".repeat(1024) as &str, "raw"),
        (1 << 30, "b", "vmdk"),
        (u64::MAX - 511, "b", "raw"),
    ] {
        assert!(
            matches!(
                create_overlay(size, name, fmt),
                Err(Error::InvalidArgument(_))
            ),
            "{size} {name:?} {fmt}"
        );
    }
    assert!(create_overlay(1 << 30, &"x".repeat(1023), "raw").is_ok());
}

#[test]
fn create_overlay_rounds_the_size_up_to_sectors_like_qemu() {
    let bytes = create_overlay(1000, "b", "raw").unwrap();
    let image = Image::open(&bytes[..]).unwrap();
    assert_eq!(image.header().virtual_size, 1024);
}
