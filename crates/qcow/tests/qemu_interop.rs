//! Images made by qemu-img and qemu-io: our map must equal `qemu-img map`, our bytes must
//! equal `qemu-img convert -O raw`. Skips (with a message) when qemu is not installed.
#![allow(missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use common::assert_matches_qemu;
use qcow::{Compression, ExtentKind, Header, Image};
use testkit::qemu;

fn create(dir: &Path, name: &str, size: &str, opts: &str) -> PathBuf {
    let p = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    let ps = p.to_str().unwrap().to_owned();
    args.push(&ps);
    args.push(size);
    qemu::img(&args);
    p
}

/// A mix of every kind of write, scaled to the cluster size.
fn mixed_writes(cs: u64) -> Vec<String> {
    vec![
        format!("write -P 0x11 0 {}", cs * 3 + 512),
        format!("write -P 0x22 {} {}", cs * 10 + 1024, cs / 2),
        format!("write -z {} {}", cs * 12, cs * 2),
        format!("write -z -u {} {}", cs * 16, cs * 3),
        format!("write -c -P 0x33 {} {}", cs * 20, cs),
        format!("write -c -P 0x44 {} {}", cs * 21, cs),
        format!("write -P 0x55 {} {}", cs * 40, cs * 4),
        format!("write -z {} {}", cs * 41, cs),
        format!("write -P 0x66 {} 4096", cs * 50 + cs / 4),
    ]
}

/// Makes an image with qemu-img and qemu-io, asserts that it maps and reads like qemu, and
/// returns its header for further checks.
fn qemu_made_image_matches(size: u64, opts: &str, writes: &[String]) -> Header {
    let d = tempfile::tempdir().unwrap();
    let p = create(d.path(), "a.qcow2", &size.to_string(), opts);
    qemu::io(&p, writes);
    assert_matches_qemu(&p, d.path(), true);
    Image::open(std::fs::File::open(&p).unwrap())
        .unwrap()
        .header()
        .clone()
}

#[test]
fn maps_and_reads_match_qemu_for_every_cluster_size() {
    if !qemu::available() {
        return;
    }
    for bits in [12u32, 13, 14, 16, 18, 20, 21] {
        let cs = 1u64 << bits;
        let h = qemu_made_image_matches(
            cs * 64 + 4096,
            &format!("cluster_size={cs}"),
            &mixed_writes(cs),
        );
        assert_eq!(h.cluster_bits, bits);
    }
}

#[test]
fn maps_and_reads_match_qemu_with_extended_l2() {
    if !qemu::available() {
        return;
    }
    for bits in [14u32, 16, 21] {
        let cs = 1u64 << bits;
        let sc = cs / 32;
        let mut w = mixed_writes(cs);
        w.extend([
            format!("write -P 0x77 {} {}", cs * 30 + sc * 3, sc * 2),
            format!("write -z {} {}", cs * 30 + sc * 7, sc),
            format!("write -P 0x78 {} {}", cs * 31 + sc * 31, sc * 2),
        ]);
        let h = qemu_made_image_matches(cs * 64, &format!("cluster_size={cs},extended_l2=on"), &w);
        assert!(h.extended_l2);
    }
}

#[test]
fn maps_and_reads_match_qemu_for_compat_0_10() {
    if !qemu::available() {
        return;
    }
    let h = qemu_made_image_matches(16 << 20, "compat=0.10", &mixed_writes(65536));
    assert_eq!(h.version, 2);
}

#[test]
fn maps_and_reads_match_qemu_with_zstd_compression() {
    if !qemu::available() {
        return;
    }
    for bits in [12u32, 16, 21] {
        let cs = 1u64 << bits;
        let h = qemu_made_image_matches(
            cs * 64,
            &format!("cluster_size={cs},compression_type=zstd"),
            &mixed_writes(cs),
        );
        assert_eq!(h.compression, Compression::Zstd);
    }
}

#[test]
fn convert_compressed_image_matches_qemu() {
    if !qemu::available() {
        return;
    }
    for ty in ["zlib", "zstd"] {
        // Arrange: a raw file with varied content, compressed by qemu-img convert -c.
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("src.raw");
        let mut bytes = vec![0u8; 4 << 20];
        let mut x = 0x1234_5678u32;
        for (i, b) in bytes.iter_mut().enumerate() {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *b = if (i / 65536) % 3 == 0 {
                (x >> 24) as u8
            } else {
                (i / 512) as u8
            };
        }
        std::fs::write(&raw, &bytes).unwrap();
        let p = d.path().join("c.qcow2");
        qemu::img(&[
            "convert",
            "-q",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &format!("compression_type={ty}"),
            raw.to_str().unwrap(),
            p.to_str().unwrap(),
        ]);
        // Act + Assert
        assert_matches_qemu(&p, d.path(), true);
        let image = Image::open(std::fs::File::open(&p).unwrap()).unwrap();
        assert!(image
            .map()
            .unwrap()
            .iter()
            .any(|e| e.kind == ExtentKind::Compressed));
    }
}

#[test]
fn overlays_over_raw_and_qcow2_backing_files_match_qemu() {
    if !qemu::available() {
        return;
    }
    for fmt in ["raw", "qcow2"] {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.img");
        qemu::img(&["create", "-q", "-f", fmt, base.to_str().unwrap(), "32M"]);
        let mut c = std::process::Command::new("qemu-io");
        c.args(["-f", fmt, "-c", "write -P 0xaa 0 32M"]).arg(&base);
        assert!(c.output().unwrap().status.success());
        let p = d.path().join("top.qcow2");
        qemu::img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.img",
            "-F",
            fmt,
            p.to_str().unwrap(),
        ]);
        qemu::io(&p, &mixed_writes(65536));
        let image = Image::open(std::fs::File::open(&p).unwrap()).unwrap();
        assert_eq!(image.header().backing_file.as_deref(), Some("base.img"));
        assert_eq!(image.header().backing_format.as_deref(), Some(fmt));
        assert_matches_qemu(&p, d.path(), false);
    }
}

#[test]
fn images_with_snapshots_bitmaps_and_preallocation_match_qemu() {
    if !qemu::available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // Internal snapshot, then writes that COW shared clusters.
    let p = create(d.path(), "snap.qcow2", "16M", "");
    qemu::io(&p, &mixed_writes(65536));
    qemu::img(&["snapshot", "-c", "s1", p.to_str().unwrap()]);
    qemu::io(&p, &["write -P 0x99 0 256k", "write -z 1M 64k"]);
    let image = Image::open(std::fs::File::open(&p).unwrap()).unwrap();
    assert_eq!(image.header().nb_snapshots, 1);
    assert_matches_qemu(&p, d.path(), true);
    // A persistent dirty bitmap: its directory and table become metadata.
    let p = create(d.path(), "bitmap.qcow2", "16M", "");
    qemu::img(&["bitmap", "--add", p.to_str().unwrap(), "b0"]);
    qemu::io(&p, &mixed_writes(65536));
    let image = Image::open(std::fs::File::open(&p).unwrap()).unwrap();
    assert!(image.header().bitmaps.is_some());
    assert_matches_qemu(&p, d.path(), true);
    // Preallocated metadata: every cluster has a host offset.
    for prealloc in ["metadata", "falloc"] {
        let p = create(
            d.path(),
            "pre.qcow2",
            "8M",
            &format!("preallocation={prealloc}"),
        );
        // qemu writes compressed clusters only into unallocated ones.
        let w: Vec<String> = mixed_writes(65536)
            .into_iter()
            .filter(|c| !c.contains(" -c "))
            .collect();
        qemu::io(&p, &w);
        assert_matches_qemu(&p, d.path(), true);
    }
}

#[test]
fn dirty_image_left_by_a_crash_with_lazy_refcounts_is_reported() {
    if !qemu::available() {
        return;
    }
    // Arrange: qemu-io aborts after a write, leaving the dirty bit set.
    let d = tempfile::tempdir().unwrap();
    let p = create(d.path(), "lazy.qcow2", "16M", "lazy_refcounts=on");
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x12 0 64k", "-c", "abort"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Act
    let image = Image::open(std::fs::File::open(&p).unwrap()).unwrap();
    // Assert
    assert!(image.header().dirty);
    assert!(matches!(
        image.map().unwrap()[0].kind,
        ExtentKind::Data { .. }
    ));
}
