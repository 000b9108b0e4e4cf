//! A largest-allowed active L1 (32 MiB, 4 Mi entries) whose every entry points at its own
//! L2 table in a sparse file: metadata within qemu's limits, which open must handle in
//! bounded memory (64 MiB per overlay, docs/security.md), and that map refuses at once when the source
//! says the L2 tables lie in holes (reading them would mean 256 GiB of zeros).
#![allow(missing_docs)]

mod common;

use std::io;

use common::synth::build;
use qcow::{Image, ReadAt};
use testkit::heap::Counting;

#[global_allocator]
static ALLOC: Counting = Counting::new();

const CS: u64 = 1 << 16;
/// 32 MiB of L1 entries: qemu's largest L1.
const L1_ENTRIES: u64 = 4 << 20;
/// Where the (all-zero) L2 tables start in the sparse file.
const L2_BASE: u64 = 1 << 40;

/// A built image whose L1 entries are replaced, on the fly, by one distinct L2 table each,
/// past a sparse gap.
struct Sparse {
    bytes: Vec<u8>,
    l1_off: u64,
}

impl ReadAt for Sparse {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let l1_end = self.l1_off + L1_ENTRIES * 8;
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if at >= self.l1_off && at < l1_end {
                let e = (at - self.l1_off) / 8;
                let v = (L2_BASE + e * CS) | 1 << 63;
                v.to_be_bytes()[((at - self.l1_off) % 8) as usize]
            } else {
                self.bytes.get(at as usize).copied().unwrap_or(0)
            };
        }
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(L2_BASE + L1_ENTRIES * CS)
    }
    fn allocated_len(&self) -> io::Result<Option<u64>> {
        // Only the built image is stored; everything past it is a hole.
        Ok(Some(self.bytes.len() as u64))
    }
}

impl Sparse {
    /// A 2 PiB image (it needs all 4 Mi L1 entries at 64 KiB clusters).
    fn largest_l1() -> Self {
        let bytes = build(16, L1_ENTRIES * (CS / 8) * CS, &[], false).to_vec();
        let l1_off = u64::from_be_bytes(bytes[40..48].try_into().unwrap());
        Self { bytes, l1_off }
    }
}

#[test]
fn the_largest_l1_with_distinct_l2_tables_opens_in_bounded_memory() {
    let _one = ALLOC.one_at_a_time();
    // Arrange
    let src = Sparse::largest_l1();

    // Act
    let (image, peak) = ALLOC.peak_during(|| Image::open(&src));

    // Assert: the L1 itself is 32 MiB; one region per L2 table (as before) made it 448 MiB.
    assert!(image.is_ok(), "{:?}", image.err());
    assert!(peak < 48 << 20, "peak heap {} MiB", peak >> 20);
}

#[test]
fn l2_tables_in_holes_of_a_sparse_file_are_refused_before_any_is_read() {
    let _one = ALLOC.one_at_a_time();
    // Arrange
    let src = Sparse::largest_l1();
    let image = Image::open(&src).expect("open");
    let started = std::time::Instant::now();

    // Act
    let mapped = image.map();

    // Assert
    let err = mapped.expect_err("L2 tables in holes were mapped");
    assert!(err.to_string().contains("lie in holes"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "refusing took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_real_sparse_file_with_l2_tables_in_holes_is_refused() {
    let _one = ALLOC.one_at_a_time();
    // Arrange: 1024 L1 entries (512 GiB virtual), each pointing at its own L2 table past
    // the end of the image, which then grows over them without a byte written: st_blocks
    // says the tables lie in a hole.
    const ENTRIES: u64 = 1024;
    let built = build(16, ENTRIES * (CS / 8) * CS, &[], false);
    let mut bytes = built.to_vec();
    let l1_off = u64::from_be_bytes(bytes[40..48].try_into().unwrap());
    let first = (bytes.len() as u64).div_ceil(CS) * CS;
    for i in 0..ENTRIES {
        let at = usize::try_from(l1_off + 8 * i).unwrap();
        bytes[at..at + 8].copy_from_slice(&((first + i * CS) | 1 << 63).to_be_bytes());
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("sparse.qcow2");
    std::fs::write(&path, &bytes).expect("write the image");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open the image");
    file.set_len(first + ENTRIES * CS)
        .expect("grow it sparsely");
    let image = Image::open(file).expect("open");

    // Act
    let mapped = image.map();

    // Assert
    let err = mapped.expect_err("L2 tables in holes were mapped");
    assert!(err.to_string().contains("lie in holes"), "{err}");
}
