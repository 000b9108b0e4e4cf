//! Decoding of L2 entries (standard and extended) into what a guest cluster maps to.

use crate::error::{corrupt, Result};
use crate::header::Header;
use crate::meta::Layout;

/// L2 entry bits holding a standard cluster's host offset (qemu `L2E_OFFSET_MASK`).
const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Reserved bits of a standard L2 entry (qemu `L2E_STD_RESERVED_MASK`).
const L2E_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
/// The L2 entry flag saying a standard cluster's refcount is 1 (qemu `QCOW_OFLAG_COPIED`).
pub(crate) const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
const OFLAG_ZERO: u64 = 1;

/// What one guest cluster maps to, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cluster {
    /// Reads from the backing file (or zeros).
    Unallocated,
    /// Reads as zeros; `host` is a preallocated cluster (ZERO_ALLOC), if any.
    Zero { host: Option<u64> },
    /// Guest data at `host` (cluster-aligned).
    Data { host: u64 },
    /// Compressed data: `len` bytes at host byte offset `offset` (sector-rounded length).
    Compressed { offset: u64, len: u64 },
    /// Extended L2 standard cluster: per-subcluster allocation and zero bits.
    Sub {
        host: Option<u64>,
        alloc: u32,
        zero: u32,
    },
}

/// One piece of a cluster: `len` bytes starting `start` bytes into the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PieceKind {
    Unallocated,
    Zero,
    Data { host: u64 },
    Compressed,
}

impl Cluster {
    /// Host clusters (cluster-aligned start, byte end) this entry keeps referenced.
    pub fn host_range(&self, cs: u64) -> Option<(u64, u64)> {
        match *self {
            Cluster::Unallocated => None,
            Cluster::Zero { host } | Cluster::Sub { host, .. } => host.map(|h| (h, h + cs)),
            Cluster::Data { host } => Some((host, host + cs)),
            Cluster::Compressed { offset, len } => {
                Some((offset / cs * cs, (offset + len).div_ceil(cs) * cs))
            }
        }
    }

    /// Calls `f(start_in_cluster, len, kind)` for the cluster's pieces in order, merging
    /// adjacent subclusters of the same kind.
    pub fn pieces(&self, cs: u64, mut f: impl FnMut(u64, u64, PieceKind)) {
        match *self {
            Cluster::Unallocated => f(0, cs, PieceKind::Unallocated),
            Cluster::Zero { .. } => f(0, cs, PieceKind::Zero),
            Cluster::Data { host } => f(0, cs, PieceKind::Data { host }),
            Cluster::Compressed { .. } => f(0, cs, PieceKind::Compressed),
            Cluster::Sub { host, alloc, zero } => {
                let sc = cs / 32;
                let kind_of = |i: u32| {
                    if alloc >> i & 1 == 1 {
                        // `alloc != 0` implies a host offset (checked in decode).
                        PieceKind::Data {
                            host: host.unwrap_or(0) + u64::from(i) * sc,
                        }
                    } else if zero >> i & 1 == 1 {
                        PieceKind::Zero
                    } else {
                        PieceKind::Unallocated
                    }
                };
                let mut run_start = 0u32;
                let mut run_kind = kind_of(0);
                for i in 1..=32u32 {
                    let next = if i < 32 { Some(kind_of(i)) } else { None };
                    let continues = match (run_kind, next) {
                        (_, None) => false,
                        (PieceKind::Data { host: a }, Some(PieceKind::Data { host: b })) => {
                            b == a + u64::from(i - run_start) * sc
                        }
                        (a, Some(b)) => a == b,
                    };
                    if !continues {
                        f(
                            u64::from(run_start) * sc,
                            u64::from(i - run_start) * sc,
                            run_kind,
                        );
                        if let Some(k) = next {
                            run_start = i;
                            run_kind = k;
                        }
                    }
                }
            }
        }
    }
}

/// Checks that a host cluster is aligned, starts inside the file and holds no metadata.
fn check_host(
    layout: &Layout,
    file_len: u64,
    at: u64,
    start: u64,
    end: u64,
    what: &str,
) -> Result<()> {
    if start >= file_len {
        return Err(corrupt(
            at,
            format!(
                "L2 entry points to {what} at {start:#x}, past the end of the file ({file_len:#x})"
            ),
        ));
    }
    if let Some(r) = layout.overlapping(start, end) {
        return Err(corrupt(
            at,
            format!(
                "L2 entry points to {what} at {start:#x}, inside the {} at {:#x}",
                r.what, r.start
            ),
        ));
    }
    Ok(())
}

/// Decodes and validates the L2 entry stored at host offset `at`.
pub(crate) fn decode(
    h: &Header,
    layout: &Layout,
    file_len: u64,
    at: u64,
    entry: u64,
    bitmap: u64,
) -> Result<Cluster> {
    let cs = h.cluster_size();
    if entry & OFLAG_COMPRESSED != 0 {
        return decode_compressed(h, (layout, file_len), at, entry, bitmap);
    }
    if entry & L2E_STD_RESERVED_MASK != 0 {
        return Err(corrupt(
            at,
            format!("L2 entry {entry:#018x} has reserved bits set"),
        ));
    }
    let host = entry & L2E_OFFSET_MASK;
    if !host.is_multiple_of(cs) {
        return Err(corrupt(
            at,
            format!("L2 entry points to unaligned host offset {host:#x}"),
        ));
    }
    let host_opt = (host != 0).then_some(host);
    if let Some(host) = host_opt {
        check_host(layout, file_len, at, host, host + cs, "a data cluster")?;
    }
    if h.extended_l2 {
        return decode_extended(at, host_opt, bitmap);
    }
    // qemu honours the zero flag in v2 images as well (`qcow2_get_cluster_type`).
    Ok(if entry & OFLAG_ZERO != 0 {
        Cluster::Zero { host: host_opt }
    } else {
        match host_opt {
            Some(host) => Cluster::Data { host },
            None => Cluster::Unallocated,
        }
    })
}

/// Decodes a compressed cluster's entry: where its data lies, and how long it may be.
fn decode_compressed(
    h: &Header,
    (layout, file_len): (&Layout, u64),
    at: u64,
    entry: u64,
    bitmap: u64,
) -> Result<Cluster> {
    let cs = h.cluster_size();
    if entry & OFLAG_COPIED != 0 {
        return Err(corrupt(
            at,
            format!("compressed L2 entry {entry:#018x} has the COPIED bit set"),
        ));
    }
    if h.extended_l2 && bitmap != 0 {
        return Err(corrupt(
            at,
            format!("compressed extended L2 entry has a non-zero subcluster bitmap {bitmap:#018x}"),
        ));
    }
    let x = 62 - (h.cluster_bits - 8);
    let offset = entry & ((1u64 << x) - 1);
    if x > 56 && offset >> 56 != 0 {
        return Err(corrupt(
            at,
            format!("compressed L2 entry {entry:#018x} has an offset beyond 2^56"),
        ));
    }
    let nsect = ((entry >> x) & ((1u64 << (h.cluster_bits - 8)) - 1)) + 1;
    let len = nsect * 512 - (offset & 511);
    if offset >= file_len {
        return Err(corrupt(
            at,
            format!("L2 entry points to compressed data at {offset:#x}, past the end of the file ({file_len:#x})"),
        ));
    }
    // qemu's files may end inside the last compressed cluster, so `qemu-img check`
    // tolerates data running past the end of the file by less than one cluster, and
    // calls anything longer a corruption ("counting reference for region exceeding the
    // end of the file by one cluster or more", `qcow2_inc_refcounts_imrt`).
    if offset + len >= file_len.saturating_add(cs) {
        return Err(corrupt(
            at,
            format!(
                "L2 entry points to {len:#x} bytes of compressed data at {offset:#x}, \
                 reaching a cluster or more past the end of the file ({file_len:#x})"
            ),
        ));
    }
    // The whole sectors holding the data may not share a metadata cluster either.
    check_host(
        layout,
        file_len,
        at,
        offset & !511,
        offset + len,
        "compressed data",
    )?;
    Ok(Cluster::Compressed { offset, len })
}

/// Decodes the subcluster bitmap of an extended L2 entry whose cluster is at `host_opt`.
fn decode_extended(at: u64, host_opt: Option<u64>, bitmap: u64) -> Result<Cluster> {
    let alloc = (bitmap & 0xffff_ffff) as u32;
    let zero = (bitmap >> 32) as u32;
    if alloc & zero != 0 {
        return Err(corrupt(
            at,
            format!("subcluster bitmap {bitmap:#018x} marks subclusters both allocated and zero"),
        ));
    }
    if host_opt.is_none() && alloc != 0 {
        return Err(corrupt(
            at,
            format!("subcluster bitmap {bitmap:#018x} marks subclusters allocated in an unallocated cluster"),
        ));
    }
    // qemu ignores the standard zero flag (bit 0) when subclusters are in use.
    Ok(match (host_opt, alloc, zero) {
        (None, 0, 0) => Cluster::Unallocated,
        (_, 0, u32::MAX) => Cluster::Zero { host: host_opt },
        (Some(host), u32::MAX, 0) => Cluster::Data { host },
        _ => Cluster::Sub {
            host: host_opt,
            alloc,
            zero,
        },
    })
}
