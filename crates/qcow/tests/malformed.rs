//! Malformed images in the style of qemu-iotests 080: every header field out of range,
//! tables past the end of the file or over other metadata, L2 loops, huge claimed sizes,
//! bad compressed descriptors, reserved bits. Each must give a typed error that says what is
//! wrong, quickly and in bounded memory.
#![allow(missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::synth::{build, Built, Kind};
use qcow::{Error, GuestOffset, Image};
use testkit::heap::Counting;

/// Counts live and peak heap bytes so the test can bound the memory each case uses.
#[global_allocator]
static ALLOC: Counting = Counting::new();

const CB: u32 = 12;
const CS: u64 = 1 << CB;

/// A valid image: 16 MiB guest, 4 KiB clusters, two data clusters, one zero cluster.
fn base() -> (Built, Vec<u8>) {
    let b = build(
        CB,
        16 << 20,
        &[(0, Kind::Data(1)), (1, Kind::Data(2)), (100, Kind::Zero)],
        true,
    );
    let v = b.to_vec();
    (b, v)
}

fn set32(v: &mut [u8], at: u64, x: u32) {
    v[at as usize..at as usize + 4].copy_from_slice(&x.to_be_bytes());
}

fn set64(v: &mut [u8], at: u64, x: u64) {
    v[at as usize..at as usize + 8].copy_from_slice(&x.to_be_bytes());
}

/// Open, map, read every extent, take an inventory: the first error.
fn first_error(bytes: &[u8]) -> Option<Error> {
    let image = match Image::open(bytes) {
        Ok(i) => i,
        Err(e) => return Some(e),
    };
    let map = match image.map() {
        Ok(m) => m,
        Err(e) => return Some(e),
    };
    let mut buf = vec![0u8; 2 * CS as usize];
    for e in &map {
        let n = e.len.min(buf.len() as u64) as usize;
        if let Err(e) = image.read_at(&mut buf[..n], e.guest) {
            return Some(e);
        }
    }
    let ranges: Vec<_> = map.iter().map(|e| (e.guest, e.len)).collect();
    image.inventory(&ranges).err()
}

type Check = fn(&Error) -> bool;

fn header_cases() -> Vec<(&'static str, Vec<u8>, Check)> {
    let (_, v) = base();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut c = v.clone();
        f(&mut c);
        c
    };
    fn invalid(e: &Error) -> bool {
        matches!(e, Error::InvalidHeader(_))
    }
    vec![
        ("bad magic", with(&|c| c[0] = b'X'), |e| {
            matches!(e, Error::NotQcow2)
        }),
        ("shorter than a header", v[..50].to_vec(), invalid),
        ("version 1", with(&|c| set32(c, 4, 1)), |e| {
            matches!(e, Error::Unsupported(_))
        }),
        ("version 4", with(&|c| set32(c, 4, 4)), |e| {
            matches!(e, Error::Unsupported(_))
        }),
        ("cluster_bits 8", with(&|c| set32(c, 20, 8)), invalid),
        ("cluster_bits 22", with(&|c| set32(c, 20, 22)), invalid),
        (
            "cluster_bits 0xffffffff",
            with(&|c| set32(c, 20, u32::MAX)),
            invalid,
        ),
        ("header_length 100", with(&|c| set32(c, 100, 100)), invalid),
        (
            "header_length above cluster size",
            with(&|c| set32(c, 100, 8192)),
            invalid,
        ),
        ("nonzero padding", with(&|c| c[110] = 1), invalid),
        (
            "backing_file_offset past cluster 0",
            with(&|c| set64(c, 8, CS + 8)),
            invalid,
        ),
        (
            "backing name too long",
            with(&|c| {
                set64(c, 8, 512);
                set32(c, 16, 1024);
            }),
            invalid,
        ),
        (
            "backing name past cluster 0",
            with(&|c| {
                set64(c, 8, CS - 4);
                set32(c, 16, 10);
            }),
            invalid,
        ),
        ("refcount_order 7", with(&|c| set32(c, 96, 7)), invalid),
        ("encryption AES", with(&|c| set32(c, 32, 1)), |e| {
            matches!(e, Error::Unsupported(_))
        }),
        ("encryption LUKS", with(&|c| set32(c, 32, 2)), |e| {
            matches!(e, Error::Unsupported(_))
        }),
        ("encryption method 3", with(&|c| set32(c, 32, 3)), invalid),
        (
            "unknown incompatible bit 5",
            with(&|c| set64(c, 72, 1 << 5)),
            |e| matches!(e, Error::UnsupportedFeature { bit: 5, .. }),
        ),
        (
            "unknown incompatible bit 63",
            with(&|c| set64(c, 72, 1 << 63)),
            |e| matches!(e, Error::UnsupportedFeature { bit: 63, .. }),
        ),
        ("corrupt bit", with(&|c| set64(c, 72, 2)), |e| {
            matches!(e, Error::MarkedCorrupt)
        }),
        ("external data file bit", with(&|c| set64(c, 72, 4)), |e| {
            matches!(e, Error::UnsupportedFeature { bit: 2, .. })
        }),
        (
            "raw external data autoclear without data file",
            with(&|c| set64(c, 88, 2)),
            invalid,
        ),
        (
            "compression bit with deflate",
            with(&|c| set64(c, 72, 8)),
            invalid,
        ),
        (
            "zstd without compression bit",
            with(&|c| c[104] = 1),
            invalid,
        ),
        (
            "unknown compression type",
            with(&|c| {
                set64(c, 72, 8);
                c[104] = 2;
            }),
            |e| matches!(e, Error::Unsupported(_)),
        ),
        (
            "extended L2 with 4 KiB clusters",
            with(&|c| set64(c, 72, 16)),
            invalid,
        ),
        ("no refcount table", with(&|c| set32(c, 56, 0)), invalid),
        (
            "refcount table above 8 MiB",
            with(&|c| set32(c, 56, 2049)),
            invalid,
        ),
        (
            "refcount table unaligned",
            with(&|c| set64(c, 48, CS + 8)),
            invalid,
        ),
        (
            "refcount table past EOF",
            with(&|c| set64(c, 48, 1 << 40)),
            invalid,
        ),
        (
            "refcount table offset overflows",
            with(&|c| set64(c, 48, u64::MAX - CS + 1)),
            invalid,
        ),
        (
            "snapshot count above 65536",
            with(&|c| set32(c, 60, 65537)),
            invalid,
        ),
        (
            "snapshot table unaligned",
            with(&|c| {
                set32(c, 60, 1);
                set64(c, 64, 0x1234);
            }),
            invalid,
        ),
        (
            "snapshot table past EOF",
            with(&|c| {
                set32(c, 60, 1000);
                set64(c, 64, 1 << 40);
            }),
            invalid,
        ),
        (
            "L1 above 32 MiB",
            with(&|c| set32(c, 36, 0x0400_0001)),
            invalid,
        ),
        (
            "L1 of 32 MiB in a small file",
            with(&|c| set32(c, 36, 0x0040_0000)),
            invalid,
        ),
        (
            "L1 too small for the virtual size",
            with(&|c| set32(c, 36, 1)),
            invalid,
        ),
        ("L1 unaligned", with(&|c| set64(c, 40, 0x12345)), invalid),
        (
            "virtual size needs a huge L1",
            with(&|c| set64(c, 24, 1 << 62)),
            invalid,
        ),
        (
            "virtual size above 2^63",
            with(&|c| set64(c, 24, u64::MAX)),
            invalid,
        ),
        (
            "extension larger than the area",
            with(&|c| {
                set32(c, 112, 0x1234_5678);
                set32(c, 116, 0x10_0000);
            }),
            invalid,
        ),
        (
            "backing format too long",
            with(&|c| {
                set32(c, 112, 0xE279_2ACA);
                set32(c, 116, 16);
            }),
            invalid,
        ),
        (
            "bitmaps extension of wrong size",
            with(&|c| {
                set64(c, 88, 1);
                set32(c, 112, 0x2385_2875);
                set32(c, 116, 16);
            }),
            invalid,
        ),
        (
            "bitmaps extension with 0 bitmaps",
            with(&|c| {
                set64(c, 88, 1);
                set32(c, 112, 0x2385_2875);
                set32(c, 116, 24);
            }),
            invalid,
        ),
        (
            "encryption extension without encryption",
            with(&|c| {
                set32(c, 112, 0x0537_BE77);
                set32(c, 116, 16);
            }),
            invalid,
        ),
        (
            "external data file extension",
            with(&|c| {
                set32(c, 112, 0x4441_5441);
                set32(c, 116, 4);
            }),
            |e| matches!(e, Error::UnsupportedFeature { bit: 2, .. }),
        ),
    ]
}

fn corrupt(e: &Error) -> bool {
    matches!(e, Error::Corrupt { .. })
}

fn structure_cases() -> Vec<(&'static str, Vec<u8>, Check)> {
    let (b, v) = base();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut c = v.clone();
        f(&mut c);
        c
    };
    let l1 = b.l1_offset;
    let l2 = b.l2_offsets[0].1;
    let e2 = b.l2_entry_offset(2);
    let data0 = b.data[0].1;
    let rt = b.reftable_offset;
    let len = b.file_len;
    vec![
        (
            "L1 overlapping the header",
            with(&|c| set64(c, 40, 0)),
            corrupt,
        ),
        (
            "L1 overlapping the refcount table",
            with(&|c| set64(c, 40, rt)),
            corrupt,
        ),
        (
            "refcount table overlapping L1",
            with(&|c| set64(c, 48, l1)),
            corrupt,
        ),
        (
            "refcount table overlapping the header",
            with(&|c| set64(c, 48, 0)),
            corrupt,
        ),
        (
            "L1 entry with reserved bits",
            with(&|c| set64(c, l1, l2 | 1 << 60)),
            corrupt,
        ),
        (
            "L1 entry with COPIED and no offset",
            with(&|c| set64(c, l1 + 8, 1 << 63)),
            corrupt,
        ),
        (
            "L1 entry unaligned",
            with(&|c| set64(c, l1, l2 + 512)),
            corrupt,
        ),
        (
            "L2 table past EOF",
            with(&|c| set64(c, l1, len + CS)),
            corrupt,
        ),
        (
            "L2 table on the refcount table",
            with(&|c| set64(c, l1, 0x8000_0000_0000_0000 | CS)),
            corrupt,
        ),
        ("L2 loop", with(&|c| set64(c, l1 + 8, l2)), corrupt),
        (
            "L2 table on a refcount block",
            with(&|c| set64(c, l1 + 8, b.refblock_offsets[0])),
            corrupt,
        ),
        (
            "data cluster on the refcount table",
            with(&|c| set64(c, e2, rt | 1 << 63)),
            corrupt,
        ),
        (
            "data cluster on the L1",
            with(&|c| set64(c, e2, l1 | 1 << 63)),
            corrupt,
        ),
        (
            "data cluster on its own L2",
            with(&|c| set64(c, e2, l2)),
            corrupt,
        ),
        (
            "data cluster past EOF",
            with(&|c| set64(c, e2, (len + 16 * CS) | 1 << 63)),
            corrupt,
        ),
        (
            "data cluster unaligned",
            with(&|c| set64(c, e2, (data0 + 512) | 1 << 63)),
            corrupt,
        ),
        (
            "L2 entry with reserved bits",
            with(&|c| set64(c, e2, data0 | 1 << 57)),
            corrupt,
        ),
        (
            "compressed with COPIED",
            with(&|c| set64(c, e2, 3 << 62 | data0)),
            corrupt,
        ),
        (
            "compressed offset above 2^56",
            with(&|c| set64(c, e2, 1 << 62 | 1 << 57 | data0)),
            corrupt,
        ),
        (
            "compressed past EOF",
            with(&|c| set64(c, e2, 1 << 62 | (len + CS))),
            corrupt,
        ),
        (
            "compressed reaching a cluster past EOF",
            with(&|c| {
                set64(c, b.l2_entry_offset(1), 0);
                set64(c, e2, 1 << 62 | 0xf << 58 | (len - 512));
            }),
            corrupt,
        ),
        (
            "compressed in the L1",
            with(&|c| set64(c, e2, 1 << 62 | (l1 + 100))),
            corrupt,
        ),
        (
            "compressed with the largest sector count over garbage",
            with(&|c| {
                // Over both data clusters, taken from their entries: compressed data may not
                // share a host cluster with a data cluster (that is refused as sharing), nor
                // reach a cluster past the end of the file (16 sectors of 512 bytes are two
                // 4 KiB clusters, the last two of the file).
                set64(c, b.l2_entry_offset(0), 0);
                set64(c, b.l2_entry_offset(1), 0);
                set64(c, e2, 1 << 62 | 0xf << 58 | b.data[0].1);
            }),
            |e| matches!(e, Error::BadCompressedCluster { .. }),
        ),
        (
            "compressed running into the L2 table",
            with(&|c| {
                // The last data cluster precedes nothing but EOF; point into the L1's cluster
                // predecessor so the sector range reaches the L2 table.
                set64(c, e2, 1 << 62 | 0xf << 58 | (l2 - 512));
            }),
            corrupt,
        ),
        (
            "L1 entry without COPIED over an unshared L2 table",
            with(&|c| set64(c, l1, l2)),
            corrupt,
        ),
        (
            "L2 entry without COPIED over an unshared data cluster",
            with(&|c| set64(c, b.l2_entry_offset(0), data0)),
            corrupt,
        ),
        (
            "data cluster with refcount 0",
            with(&|c| {
                let rb = (b.refblock_offsets[0] + data0 / CS * 2) as usize;
                c[rb..rb + 2].copy_from_slice(&[0, 0]);
            }),
            corrupt,
        ),
        (
            "refcount block entry unaligned",
            with(&|c| set64(c, rt, b.refblock_offsets[0] + 8)),
            corrupt,
        ),
        (
            "refcount block past EOF",
            with(&|c| set64(c, rt, len + CS)),
            corrupt,
        ),
        (
            "snapshot with a huge L1",
            with(&|c| {
                set32(c, 60, 1);
                set64(c, 64, l1);
                // The snapshot table sits on the L1: its entry's L1 claims 2^32-1 entries.
                set64(c, l1, 0);
                set32(c, l1 + 8, u32::MAX);
            }),
            corrupt,
        ),
        (
            "snapshot table overlapping the L2 table",
            with(&|c| {
                set32(c, 60, 1);
                set64(c, 64, l2);
            }),
            corrupt,
        ),
    ]
}

fn check_cases(cases: Vec<(&'static str, Vec<u8>, Check)>) {
    // One case list at a time, or one test's frees and resets corrupt the other's peak.
    let _serial = ALLOC.one_at_a_time();
    for (name, bytes, ok) in cases {
        let t = Instant::now();
        let (err, peak) = ALLOC.peak_during(|| first_error(&bytes));
        let elapsed = t.elapsed();
        let err = err.unwrap_or_else(|| panic!("{name}: no error"));
        assert!(ok(&err), "{name}: unexpected error {err:?}");
        assert!(!err.to_string().is_empty());
        assert!(elapsed < Duration::from_secs(1), "{name}: took {elapsed:?}");
        assert!(peak < 64 << 20, "{name}: peak heap {peak} bytes");
    }
}

#[test]
fn malformed_headers_give_typed_errors_fast_and_in_bounded_memory() {
    check_cases(header_cases());
}

#[test]
fn malformed_tables_and_entries_give_typed_errors_fast_and_in_bounded_memory() {
    check_cases(structure_cases());
}

#[test]
fn unknown_incompatible_bit_is_named_from_the_feature_table() {
    // Arrange: bit 5 set, and a feature-name table entry naming it.
    let (_, mut v) = base();
    set64(&mut v, 72, 1 << 5);
    set32(&mut v, 112, 0x6803_F857);
    set32(&mut v, 116, 48);
    v[120] = 0;
    v[121] = 5;
    v[122..127].copy_from_slice(b"shiny");
    // Act
    let err = Image::open(&v[..]).err().unwrap();
    // Assert
    assert!(
        matches!(&err, Error::UnsupportedFeature { bit: 5, name } if name == "shiny"),
        "{err:?}"
    );
    assert!(err.to_string().contains("shiny"));
}

#[test]
fn l2_loop_error_names_both_l1_entries() {
    let (b, mut v) = base();
    set64(&mut v, b.l1_offset + 3 * 8, b.l2_offsets[0].1);
    // L2 tables are checked against each other by the map, which keeps one bit pair per
    // host cluster instead of a region per L2 table (an L1 may have 4 Mi entries).
    let err = Image::open(&v[..]).unwrap().map().err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("L2 loop") && msg.contains("0 and 3"), "{msg}");
}

#[test]
fn dirty_bit_is_reported_not_refused() {
    let (_, mut v) = base();
    set64(&mut v, 72, 1);
    let image = Image::open(&v[..]).unwrap();
    assert!(image.header().dirty);
    // A dirty image's refcounts cannot be trusted: the inventory covers the whole file.
    let inv = image.inventory(&[]).unwrap();
    assert_eq!(inv.ranges.len(), 1);
    assert_eq!(inv.ranges[0].len, inv.file_len);
}

#[test]
fn read_past_the_virtual_size_is_refused() {
    let (_, v) = base();
    let image = Image::open(&v[..]).unwrap();
    let mut buf = [0u8; 2];
    let err = image
        .read_at(&mut buf, GuestOffset((16 << 20) - 1))
        .err()
        .unwrap();
    assert!(matches!(err, Error::InvalidArgument(_)));
}

/// Writes every malformed case into the fuzz corpus (run by hand when cases change:
/// `cargo test -p imgtx-qcow --test malformed -- --ignored dump`).
#[test]
#[ignore = "writes the fuzz seed corpus; run by hand"]
fn dump_malformed_cases_into_the_fuzz_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/image");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes, _) in header_cases().into_iter().chain(structure_cases()) {
        let file: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        std::fs::write(dir.join(format!("malformed-{file}")), bytes).unwrap();
    }
    std::fs::write(dir.join("valid-synth-4k"), base().1).unwrap();
}
