//! Helpers shared by the interop tests: translating what qemu-img says into this crate's
//! terms, and comparing an image as this crate reads it with qemu's reading. Running the
//! tools is `testkit::qemu`.
#![allow(dead_code)]

use std::path::Path;

use qcow::{Extent, ExtentKind, GuestOffset, HostOffset, Image};
use testkit::qemu;

/// Coalesces extents the way `Image::map` does.
pub fn coalesce(extents: impl IntoIterator<Item = Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for x in extents {
        if let Some(last) = out.last_mut() {
            if last.guest.0 + last.len == x.guest.0 {
                let merge = match (last.kind, x.kind) {
                    (ExtentKind::Data { host: a }, ExtentKind::Data { host: b }) => {
                        a.0 + last.len == b.0
                    }
                    (a, b) => a == b,
                };
                if merge {
                    last.len += x.len;
                    continue;
                }
            }
        }
        out.push(x);
    }
    out
}

/// `qemu-img map --output=json`, translated: depth > 0 → Unallocated; depth 0: data →
/// Data/Compressed, zero → Zero, absent → Unallocated. Coalesced.
pub fn qemu_map(path: &Path) -> Vec<Extent> {
    let out = qemu::img(&[
        "map",
        "--output=json",
        "-f",
        "qcow2",
        path.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let mut ext = Vec::new();
    for e in v.as_array().unwrap() {
        let start = e["start"].as_u64().unwrap();
        let len = e["length"].as_u64().unwrap();
        let depth = e["depth"].as_u64().unwrap();
        let data = e["data"].as_bool().unwrap();
        let zero = e["zero"].as_bool().unwrap();
        let present = e["present"].as_bool().unwrap_or(data || zero);
        let compressed = e["compressed"].as_bool().unwrap_or(false);
        let kind = if depth > 0 || !present {
            ExtentKind::Unallocated
        } else if data && compressed {
            ExtentKind::Compressed
        } else if data {
            ExtentKind::Data {
                host: HostOffset(e["offset"].as_u64().unwrap()),
            }
        } else if zero {
            ExtentKind::Zero
        } else {
            ExtentKind::Unallocated
        };
        ext.push(Extent {
            guest: GuestOffset(start),
            len,
            kind,
        });
    }
    coalesce(ext)
}

/// The guest bytes as `qemu-img convert -O raw` produces them.
pub fn qemu_raw(path: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("converted.raw");
    qemu::img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        path.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    bytes
}

/// Asserts that our map equals qemu-img's, and that our bytes equal qemu's for every range
/// this image itself defines (all of it when `whole` is true, i.e. there is no backing file).
pub fn assert_matches_qemu(path: &Path, dir: &Path, whole: bool) {
    let image = Image::open(std::fs::File::open(path).unwrap()).unwrap();
    let ours = image.map().unwrap();
    let theirs = qemu_map(path);
    assert_eq!(ours, theirs, "map of {}", path.display());
    let expect = qemu_raw(path, dir);
    assert_eq!(expect.len() as u64, image.header().virtual_size);
    for e in &ours {
        if !whole && e.kind == ExtentKind::Unallocated {
            continue;
        }
        // Read in chunks of at most 1 MiB, at an offset that is not cluster-aligned
        // whenever the extent allows, to exercise partial-cluster reads.
        let mut pos = e.guest.0;
        let end = e.guest.0 + e.len;
        let mut step = 4096 + 512;
        while pos < end {
            let n = (end - pos).min(step);
            let mut buf = vec![0u8; n as usize];
            image.read_at(&mut buf, GuestOffset(pos)).unwrap();
            assert!(
                buf == expect[pos as usize..(pos + n) as usize],
                "bytes differ in [{pos:#x}, {:#x}) of {} ({:?})",
                pos + n,
                path.display(),
                e.kind
            );
            pos += n;
            step = 1 << 20;
        }
    }
}

pub mod synth;
