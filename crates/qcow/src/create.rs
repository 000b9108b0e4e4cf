//! A writer for one thing only: the bytes of an empty qcow2 v3 overlay.
//!
//! Layout (64 KiB clusters, refcount_order 4, like `qemu-img create`):
//!
//! ```text
//! cluster 0   header (112 bytes), backing-format extension, end-of-extensions, backing name
//! cluster 1   refcount table (one entry: the refcount block in cluster 2)
//! cluster 2   refcount block (refcount 1 for every cluster of the file)
//! cluster 3.. active L1 table, all entries 0 (every guest cluster unallocated)
//! ```

use crate::error::{Error, Result};
use crate::header::{MAX_BACKING_NAME, MAX_L1_BYTES};

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const HEADER_LENGTH: u32 = 112;

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// The bytes of a minimal, valid, empty qcow2 v3 image of `virtual_size` bytes (rounded up
/// to a multiple of 512, as `qemu-img create` does) over
/// `backing_file` (format `backing_format`, `"raw"` or `"qcow2"`), with 64 KiB clusters and
/// 16-bit refcounts. `qemu-img check` finds it clean; every guest cluster is unallocated,
/// so the guest sees the backing file.
///
/// The caller writes the bytes itself (and syncs them); nothing here touches a file.
///
/// # Errors
/// [`Error::InvalidArgument`] when `virtual_size` needs an L1 table larger than qemu's
/// 32 MiB limit (about 2 PiB), when `backing_file` is empty,
/// longer than 1023 bytes or contains a NUL, or when `backing_format` is not `raw` or
/// `qcow2`.
pub fn create_overlay(
    virtual_size: u64,
    backing_file: &str,
    backing_format: &str,
) -> Result<Vec<u8>> {
    // Like qemu-img create, round the size up to whole 512-byte sectors: qemu reads the
    // size field in sectors, so an unaligned size would lose its tail.
    let virtual_size = virtual_size.checked_next_multiple_of(512).ok_or_else(|| {
        Error::InvalidArgument(format!("the virtual size {virtual_size:#x} is too large"))
    })?;
    if backing_file.is_empty()
        || backing_file.len() > MAX_BACKING_NAME
        || backing_file.contains('\0')
    {
        return Err(Error::InvalidArgument(format!(
            "the backing file name must be 1..={MAX_BACKING_NAME} bytes without NUL, got {} bytes",
            backing_file.len()
        )));
    }
    if backing_format != "raw" && backing_format != "qcow2" {
        return Err(Error::InvalidArgument(format!(
            "the backing format must be raw or qcow2, not {backing_format:?}"
        )));
    }
    let l2_coverage = CLUSTER * (CLUSTER / 8);
    let l1_size = virtual_size.div_ceil(l2_coverage);
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(Error::InvalidArgument(format!(
            "the virtual size {virtual_size:#x} needs an L1 table larger than 32 MiB"
        )));
    }
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER);
    let clusters = 3 + l1_clusters;
    // One refcount block covers CLUSTER * 8 / 16 clusters, far more than `clusters`.
    let mut img = vec![0u8; (clusters * CLUSTER) as usize];

    let h = &mut img[..CLUSTER as usize];
    h[..4].copy_from_slice(b"QFI\xfb");
    put32(h, 4, 3);
    put32(h, 20, CLUSTER_BITS);
    put64(h, 24, virtual_size);
    put32(h, 36, l1_size as u32);
    put64(h, 40, 3 * CLUSTER);
    put64(h, 48, CLUSTER);
    put32(h, 56, 1);
    put32(h, 96, 4);
    put32(h, 100, HEADER_LENGTH);
    // Extensions: backing format, then the end marker; the name follows.
    let mut at = HEADER_LENGTH as usize;
    put32(h, at, 0xE279_2ACA);
    put32(h, at + 4, backing_format.len() as u32);
    h[at + 8..at + 8 + backing_format.len()].copy_from_slice(backing_format.as_bytes());
    at += 8 + backing_format.len().div_ceil(8) * 8;
    at += 8; // end-of-extensions marker: type 0, length 0
    put64(h, 8, at as u64);
    put32(h, 16, backing_file.len() as u32);
    h[at..at + backing_file.len()].copy_from_slice(backing_file.as_bytes());

    let rt = CLUSTER as usize;
    put64(&mut img[rt..], 0, 2 * CLUSTER);
    let rb = 2 * CLUSTER as usize;
    for c in 0..clusters as usize {
        img[rb + 2 * c..rb + 2 * c + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok(img)
}
