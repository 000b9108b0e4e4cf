//! The metadata layout of an opened image: active L1, refcount table, snapshot and bitmap
//! tables, and the sorted list of host regions they occupy, against which every host offset
//! read from an L2 entry is checked before it is believed.

use std::fmt;

use crate::error::{corrupt, Result};
use crate::header::{be16, be32, be64, Header, MAX_L1_BYTES};
use crate::{read_exact, ReadAt};

/// L1 entry bits that must be zero (qemu `L1E_RESERVED_MASK`).
pub(crate) const L1E_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
/// L1 entry bits holding the L2 table offset (qemu `L1E_OFFSET_MASK`).
pub(crate) const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// The L1 entry flag saying the L2 table's refcount is 1 (qemu `QCOW_OFLAG_COPIED`).
const L1E_COPIED: u64 = 1 << 63;
/// Refcount table entry bits holding the refblock offset (qemu `REFT_OFFSET_MASK`).
pub(crate) const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// qemu's `QCOW_MAX_SNAPSHOTS_SIZE`.
const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
/// qemu's limit on unknown extra data per snapshot entry, plus the 24 known bytes.
const MAX_SNAPSHOT_EXTRA: u64 = 1024 + 24;
/// qemu's `BME_MAX_TABLE_SIZE` (entries of one bitmap table).
const MAX_BITMAP_TABLE_ENTRIES: u64 = 0x0800_0000;

/// What a metadata region holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meta {
    Header,
    L1,
    L2 {
        l1_index: u64,
    },
    RefcountTable,
    RefcountBlock {
        index: u64,
    },
    SnapshotTable,
    SnapshotL1 {
        snapshot: u32,
    },
    BitmapDirectory,
    BitmapTable {
        bitmap: u32,
    },
    /// A data cluster of a persistent bitmap (`bitmap` counts the bitmaps with a table).
    BitmapData {
        bitmap: u32,
    },
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Meta::Header => write!(f, "header cluster"),
            Meta::L1 => write!(f, "active L1 table"),
            Meta::L2 { l1_index } => write!(f, "L2 table of L1 entry {l1_index}"),
            Meta::RefcountTable => write!(f, "refcount table"),
            Meta::RefcountBlock { index } => write!(f, "refcount block {index}"),
            Meta::SnapshotTable => write!(f, "snapshot table"),
            Meta::SnapshotL1 { snapshot } => write!(f, "L1 table of snapshot {snapshot}"),
            Meta::BitmapDirectory => write!(f, "bitmap directory"),
            Meta::BitmapTable { bitmap } => write!(f, "table of bitmap {bitmap}"),
            Meta::BitmapData { bitmap } => write!(f, "data cluster of bitmap {bitmap}"),
        }
    }
}

/// A host byte range `[start, end)` holding metadata, rounded out to whole clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub start: u64,
    pub end: u64,
    pub what: Meta,
}

/// Everything learnt about the image's metadata at open.
#[derive(Debug)]
pub(crate) struct Layout {
    /// Sorted, non-overlapping metadata regions: every table except the one-cluster L2
    /// tables and refcount blocks, which are checked against these at open and against each
    /// other by `Image::map` (`refs.rs`). Keeping them out bounds this list by qemu's
    /// snapshot and bitmap counts instead of by the L1 and refcount table sizes.
    pub regions: Vec<Region>,
    /// L2 table offset of each active L1 entry (0 = unallocated).
    pub l1: Vec<u64>,
    /// The COPIED flag of each active L1 entry, one bit each (entry `i` is bit `i % 64` of
    /// word `i / 64`): at most 512 KiB beside the L1's 32 MiB.
    pub l1_copied: Vec<u64>,
    /// Refcount block offset of each refcount table entry (0 = none).
    pub refblocks: Vec<u64>,
    /// (offset, entries) of each bitmap table.
    pub bitmap_tables: Vec<(u64, u64)>,
}

impl Layout {
    /// Whether active L1 entry `i` has the COPIED flag (its L2 table's refcount is 1).
    pub fn l1_copied(&self, i: usize) -> bool {
        self.l1_copied
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// The region of [`Layout::regions`] overlapping `[start, end)`, if any.
    pub fn overlapping(&self, start: u64, end: u64) -> Option<&Region> {
        overlapping(&self.regions, start, end)
    }
}

/// The region of the sorted, non-overlapping `regions` overlapping `[start, end)`, if any.
fn overlapping(regions: &[Region], start: u64, end: u64) -> Option<&Region> {
    let i = regions.partition_point(|r| r.start < end);
    // Regions do not overlap, so their ends are sorted too: only the last region starting
    // before `end` can reach into the range.
    i.checked_sub(1)
        .map(|j| &regions[j])
        .filter(|r| r.end > start)
}

/// Calls `f(index, entry)` for each big-endian u64 of a table, reading it in 64 KiB chunks.
/// The caller has checked that the table lies in the file.
pub(crate) fn for_each_u64<R: ReadAt + ?Sized>(
    src: &R,
    offset: u64,
    entries: u64,
    mut f: impl FnMut(u64, u64) -> Result<()>,
) -> Result<()> {
    let mut buf = vec![0u8; (entries.min(8 * 1024) * 8) as usize];
    let mut done = 0u64;
    while done < entries {
        let n = (entries - done).min(8 * 1024);
        let bytes = &mut buf[..(n * 8) as usize];
        read_exact(src, bytes, offset + done * 8)?;
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            f(done + i as u64, be64(c, 0))?;
        }
        done += n;
    }
    Ok(())
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to).saturating_mul(to)
}

/// Loads and cross-checks the metadata of an image whose header is valid.
///
/// Memory: the active L1 (at most 32 MiB) and refcount table (at most 8 MiB) as offsets,
/// streamed from the file, plus one region per snapshot and bitmap table.
pub(crate) fn load<R: ReadAt + ?Sized>(src: &R, h: &Header, file_len: u64) -> Result<Layout> {
    let cs = h.cluster_size();
    let mut regions = vec![Region {
        start: 0,
        end: cs,
        what: Meta::Header,
    }];
    let l1_off = h.l1_table_offset.0;
    let l1_len = u64::from(h.l1_size) * 8;
    if l1_len > 0 {
        regions.push(Region {
            start: l1_off,
            end: round_up(l1_off + l1_len, cs),
            what: Meta::L1,
        });
    }
    let rt_off = h.refcount_table_offset.0;
    let rt_len = u64::from(h.refcount_table_clusters) * cs;
    regions.push(Region {
        start: rt_off,
        end: rt_off + rt_len,
        what: Meta::RefcountTable,
    });
    load_snapshots(src, h, file_len, &mut regions)?;
    let bitmap_tables = load_bitmaps(src, h, file_len, &mut regions)?;
    check_disjoint(&mut regions)?;
    let space = Space {
        regions: &regions,
        cluster_size: cs,
        file_len,
    };
    let (l1, l1_copied) = load_l1(src, h, &space)?;
    let refblocks = load_refblocks(src, (rt_off, rt_len), &space)?;
    Ok(Layout {
        regions,
        l1,
        l1_copied,
        refblocks,
        bitmap_tables,
    })
}

/// Sorts the metadata regions and refuses any two that overlap.
fn check_disjoint(regions: &mut [Region]) -> Result<()> {
    regions.sort_by_key(|r| (r.start, r.end));
    for w in regions.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.end > b.start {
            return Err(corrupt(
                b.start,
                format!(
                    "the {} at {:#x} overlaps the {} at {:#x}",
                    b.what, b.start, a.what, a.start
                ),
            ));
        }
    }
    Ok(())
}

/// Where one-cluster tables (L2 tables, refcount blocks) may lie: below EOF and outside
/// every metadata region.
struct Space<'r> {
    regions: &'r [Region],
    cluster_size: u64,
    file_len: u64,
}

impl Space<'_> {
    /// Checks the one-cluster table `what` at `off`, named by the entry at `at`.
    fn check_cluster(&self, at: u64, off: u64, what: Meta) -> Result<()> {
        let (cs, file_len) = (self.cluster_size, self.file_len);
        if !off.is_multiple_of(cs) {
            return Err(corrupt(
                at,
                format!("the {what} is at an unaligned offset {off:#x}"),
            ));
        }
        if off >= file_len {
            return Err(corrupt(
                at,
                format!("the {what} at {off:#x} is past the end of the file ({file_len:#x})"),
            ));
        }
        if let Some(r) = overlapping(self.regions, off, off + cs) {
            return Err(corrupt(
                off,
                format!(
                    "the {what} at {off:#x} overlaps the {} at {:#x}",
                    r.what, r.start
                ),
            ));
        }
        Ok(())
    }
}

/// The active L1 table (header validation already bounded it by the file length): every
/// L2 table's offset, and a bitmap of the entries with the COPIED flag.
fn load_l1<R: ReadAt + ?Sized>(
    src: &R,
    h: &Header,
    space: &Space<'_>,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let l1_off = h.l1_table_offset.0;
    let mut l1 = Vec::with_capacity(h.l1_size as usize);
    let mut l1_copied = vec![0u64; (h.l1_size as usize).div_ceil(64)];
    for_each_u64(src, l1_off, u64::from(h.l1_size), |i, e| {
        let at = l1_off + i * 8;
        if e & L1E_RESERVED_MASK != 0 {
            return Err(corrupt(
                at,
                format!("L1 entry {i} ({e:#018x}) has reserved bits set"),
            ));
        }
        let off = e & L1E_OFFSET_MASK;
        // With the reserved bits clear, only the COPIED flag (bit 63) can be left. qemu's
        // read path takes offset 0 as "no L2 table" whatever the flags say, but `qemu-img
        // check` skips only all-zero entries (`check_refcounts_l1`): it counts the header
        // cluster as this entry's L2 table ("ERROR cluster 0 refcount=1 reference=2") and
        // decodes the header as L2 entries. The two readings of the entry disagree, so
        // neither is believed.
        if off == 0 && e != 0 {
            return Err(corrupt(
                at,
                format!("L1 entry {i} ({e:#018x}) has the COPIED flag but no L2 table offset"),
            ));
        }
        if off != 0 {
            space.check_cluster(at, off, Meta::L2 { l1_index: i })?;
        }
        if e & L1E_COPIED != 0 {
            l1_copied[(i / 64) as usize] |= 1 << (i % 64);
        }
        l1.push(off);
        Ok(())
    })?;
    Ok((l1, l1_copied))
}

/// The refcount table at `rt_off` (`rt_len` bytes): every refcount block's offset.
fn load_refblocks<R: ReadAt + ?Sized>(
    src: &R,
    (rt_off, rt_len): (u64, u64),
    space: &Space<'_>,
) -> Result<Vec<u64>> {
    let mut refblocks = Vec::with_capacity((rt_len / 8) as usize);
    for_each_u64(src, rt_off, rt_len / 8, |i, e| {
        let at = rt_off + i * 8;
        if e & !REFT_OFFSET_MASK != 0 {
            return Err(corrupt(
                at,
                format!("refcount table entry {i} ({e:#018x}) has reserved bits set"),
            ));
        }
        let off = e & REFT_OFFSET_MASK;
        if off != 0 {
            space.check_cluster(at, off, Meta::RefcountBlock { index: i })?;
        }
        refblocks.push(off);
        Ok(())
    })?;
    Ok(refblocks)
}

fn load_snapshots<R: ReadAt + ?Sized>(
    src: &R,
    h: &Header,
    file_len: u64,
    regions: &mut Vec<Region>,
) -> Result<()> {
    let cs = h.cluster_size();
    let start = h.snapshots_offset.0;
    let mut pos = start;
    for i in 0..h.nb_snapshots {
        let end = pos
            .checked_add(40)
            .filter(|e| *e <= file_len)
            .ok_or_else(|| {
                corrupt(
                    pos,
                    format!("snapshot entry {i} runs past the end of the file"),
                )
            })?;
        let mut e = [0u8; 40];
        read_exact(src, &mut e, pos)?;
        let l1_off = be64(&e, 0);
        let l1_size = u64::from(be32(&e, 8));
        let id_len = u64::from(be16(&e, 12));
        let name_len = u64::from(be16(&e, 14));
        let extra = u64::from(be32(&e, 36));
        if extra > MAX_SNAPSHOT_EXTRA {
            return Err(corrupt(
                pos,
                format!("snapshot entry {i} claims {extra} bytes of extra data"),
            ));
        }
        let entry_end = end + extra + id_len + name_len;
        let next = round_up(entry_end, 8);
        if next - start > MAX_SNAPSHOT_TABLE_BYTES || next > file_len.saturating_add(8) {
            return Err(corrupt(
                pos,
                format!(
                    "snapshot entry {i} runs past the end of the file or the 64 MiB table limit"
                ),
            ));
        }
        if l1_size * 8 > MAX_L1_BYTES
            || !l1_off.is_multiple_of(cs)
            || l1_off.checked_add(l1_size * 8).is_none_or(|e| e > file_len)
        {
            return Err(corrupt(
                pos,
                format!("snapshot {i} has an invalid L1 table ({l1_size} entries at {l1_off:#x})"),
            ));
        }
        if l1_size > 0 {
            regions.push(Region {
                start: l1_off,
                end: round_up(l1_off + l1_size * 8, cs),
                what: Meta::SnapshotL1 { snapshot: i },
            });
        }
        pos = next;
    }
    if pos > start {
        regions.push(Region {
            start,
            end: round_up(pos, cs),
            what: Meta::SnapshotTable,
        });
    }
    Ok(())
}

fn load_bitmaps<R: ReadAt + ?Sized>(
    src: &R,
    h: &Header,
    file_len: u64,
    regions: &mut Vec<Region>,
) -> Result<Vec<(u64, u64)>> {
    let Some(ext) = h.bitmaps else {
        return Ok(Vec::new());
    };
    let cs = h.cluster_size();
    let off = ext.directory_offset.0;
    let len = ext.directory_size;
    if !off.is_multiple_of(cs) || off.checked_add(len).is_none_or(|e| e > file_len) {
        return Err(corrupt(
            off,
            format!("the bitmap directory ({len:#x} bytes at {off:#x}) is unaligned or past the end of the file"),
        ));
    }
    regions.push(Region {
        start: off,
        end: round_up(off + len, cs),
        what: Meta::BitmapDirectory,
    });
    let mut dir = vec![0u8; usize::try_from(len).unwrap_or(0)];
    read_exact(src, &mut dir, off)?;
    let mut tables = Vec::new();
    let mut pos = 0usize;
    for i in 0..ext.nb_bitmaps {
        if dir.len() < pos + 24 {
            return Err(corrupt(
                off + pos as u64,
                format!("bitmap directory entry {i} runs past the directory"),
            ));
        }
        let t_off = be64(&dir, pos);
        let t_size = u64::from(be32(&dir, pos + 8));
        let name_size = be16(&dir, pos + 18) as usize;
        let extra = be32(&dir, pos + 20) as usize;
        if t_size > MAX_BITMAP_TABLE_ENTRIES
            || !t_off.is_multiple_of(cs)
            || t_off.checked_add(t_size * 8).is_none_or(|e| e > file_len)
        {
            return Err(corrupt(
                off + pos as u64,
                format!("bitmap {i} has an invalid table ({t_size} entries at {t_off:#x})"),
            ));
        }
        if t_size > 0 {
            regions.push(Region {
                start: t_off,
                end: round_up(t_off + t_size * 8, cs),
                what: Meta::BitmapTable { bitmap: i },
            });
            tables.push((t_off, t_size));
        }
        pos = (pos + 24)
            .saturating_add(extra)
            .saturating_add(name_size)
            .div_ceil(8)
            .saturating_mul(8);
    }
    Ok(tables)
}
