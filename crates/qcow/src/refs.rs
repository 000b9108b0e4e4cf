//! The host-cluster sharing check: no host cluster is used by two active L2 entries.
//!
//! qemu allocates a cluster for the active layer only when its refcount is 0, so in the
//! active L1's tree every data cluster (preallocated zero clusters included) is used by
//! exactly one L2 entry, and never by compressed data or a persistent bitmap. Compressed
//! clusters are byte ranges packed back to back, so they may share host clusters with each
//! other, but with nothing else. Internal snapshots may share anything with the active
//! layer; only the active tree is checked. Overlap with metadata tables is checked per entry
//! in `l2::decode` against the tables listed at open; this module adds what needs memory of
//! the clusters seen so far: L2 tables and refcount blocks (one cluster each, up to 4 Mi and
//! 1 Mi of them) against each other and against every data cluster.
//!
//! The memory is two bits per host cluster of the *file* (not of any header claim), capped
//! at [`MAX_TRACKED_CLUSTERS`]: at most 16 MiB whatever the input.
//!
//! [`Refcounts`] adds the checks `qemu-img check` makes between the active tree and the
//! stored refcounts: every host cluster the tree uses has a refcount above 0, and the COPIED
//! flag of an L1 or standard L2 entry is set exactly when its cluster's refcount is 1.

use crate::error::{corrupt, Error, Result};
use crate::header::Header;
use crate::l2::{Cluster, OFLAG_COPIED};
use crate::meta::{for_each_u64, Layout, Meta};
use crate::{read_clamped, ReadAt};

/// The most host clusters the check tracks: 2^26 clusters at two bits each is 16 MiB, which
/// keeps a whole `map` of a hostile overlay inside the 64 MiB a hostile overlay may cost (docs/security.md). That is a 4 TiB image
/// file with 64 KiB clusters, or 32 GiB with 512-byte clusters.
pub(crate) const MAX_TRACKED_CLUSTERS: u64 = 1 << 26;

/// Bitmap table entry bits holding a bitmap data cluster offset (qemu `BME_TABLE_ENTRY_OFFSET_MASK`).
const BME_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// What a host cluster is used for, two bits each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    Free = 0,
    /// One L2 entry's data cluster (standard, preallocated zero, or extended L2).
    Data = 1,
    /// Bytes of one or more compressed clusters.
    Compressed = 2,
    /// Metadata: an L2 table, a refcount block or a data cluster of a persistent bitmap.
    Meta = 3,
}

impl Use {
    fn from_bits(b: u64) -> Use {
        match b & 3 {
            0 => Use::Free,
            1 => Use::Data,
            2 => Use::Compressed,
            _ => Use::Meta,
        }
    }

    /// How an error names a user of this kind.
    pub fn noun(self) -> &'static str {
        match self {
            Use::Free => "nothing",
            Use::Data => "data cluster",
            Use::Compressed => "compressed data",
            Use::Meta => "metadata",
        }
    }
}

/// A host cluster claimed by a second, incompatible user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clash {
    /// Index of the host cluster.
    pub cluster: u64,
    /// Who held it.
    pub held: Use,
    /// Who claimed it again.
    pub claim: Use,
}

/// Two bits per host cluster of the file.
pub(crate) struct HostUse {
    bits: Vec<u64>,
    clusters: u64,
    cluster_size: u64,
}

impl HostUse {
    /// An empty map of the host clusters of a `file_len`-byte file.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the file has more than [`MAX_TRACKED_CLUSTERS`] clusters.
    pub fn new(file_len: u64, cluster_size: u64) -> Result<Self> {
        let clusters = file_len.div_ceil(cluster_size);
        if clusters > MAX_TRACKED_CLUSTERS {
            return Err(Error::Unsupported(format!(
                "the image file ({file_len:#x} bytes, {cluster_size}-byte clusters) has {clusters} \
                 host clusters, more than the {MAX_TRACKED_CLUSTERS} this reader checks for \
                 sharing in bounded memory"
            )));
        }
        // 32 clusters per u64; `clusters` is at most 2^26, so this fits any usize.
        let words = clusters.div_ceil(32) as usize;
        Ok(HostUse {
            bits: vec![0; words],
            clusters,
            cluster_size,
        })
    }

    fn get(&self, c: u64) -> Use {
        Use::from_bits(self.bits[(c / 32) as usize] >> (c % 32 * 2))
    }

    fn set(&mut self, c: u64, u: Use) {
        let w = &mut self.bits[(c / 32) as usize];
        let shift = c % 32 * 2;
        *w = (*w & !(3 << shift)) | ((u as u64) << shift);
    }

    /// Marks every L2 table, refcount block and persistent bitmap data cluster, before any
    /// L2 entry is seen; refuses two of them in one cluster (two L1 entries sharing an L2
    /// table is an "L2 loop").
    pub fn mark_meta<R: ReadAt + ?Sized>(&mut self, src: &R, layout: &Layout) -> Result<()> {
        let cs = self.cluster_size;
        let tables = layout.l1.iter().chain(&layout.refblocks);
        for &off in tables.filter(|o| **o != 0) {
            self.mark_one(src, layout, off / cs)?;
        }
        for &(off, entries) in &layout.bitmap_tables {
            for_each_u64(src, off, entries, |_, e| {
                let c = (e & BME_OFFSET_MASK) / cs;
                // Bitmap data past EOF is never read by the map; qemu's check flags it.
                if c != 0 && c < self.clusters {
                    self.mark_one(src, layout, c)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn mark_one<R: ReadAt + ?Sized>(&mut self, src: &R, layout: &Layout, c: u64) -> Result<()> {
        // Open checked that L2 tables and refcount blocks start below EOF.
        if self.get(c) == Use::Meta {
            let host = c * self.cluster_size;
            let users = meta_users(src, layout, self.cluster_size, c)?;
            let reason = match users.as_slice() {
                [Meta::L2 { l1_index: i }, Meta::L2 { l1_index: j }, ..] => format!(
                    "L1 entries {i} and {j} both point to the L2 table at {host:#x} (an L2 loop)"
                ),
                [a, b, ..] => format!("the {b} at {host:#x} overlaps the {a} at {host:#x}"),
                _ => format!("the metadata cluster at {host:#x} is used twice"),
            };
            return Err(corrupt(host, reason));
        }
        self.set(c, Use::Meta);
        Ok(())
    }

    /// Records the host clusters `cl` uses; the first clash found, if any. Appends to
    /// `first_uses` the clusters `cl` is the first entry to use (every one of a data cluster,
    /// whose users must be unique; for compressed data, clusters no compressed cluster before
    /// used) and the clusters past the end of the file that compressed data reaches, which
    /// are not tracked and so are reported at every use.
    pub fn claim(&mut self, cl: &Cluster, first_uses: &mut Vec<u64>) -> Option<Clash> {
        let cs = self.cluster_size;
        let (claim, first, last) = match *cl {
            Cluster::Unallocated => return None,
            Cluster::Zero { host: None } | Cluster::Sub { host: None, .. } => return None,
            Cluster::Zero { host: Some(h) }
            | Cluster::Sub { host: Some(h), .. }
            | Cluster::Data { host: h } => (Use::Data, h / cs, h / cs),
            // `l2::decode` checked that the data starts inside the file; the clusters past its
            // end hold nothing else that could be shared.
            Cluster::Compressed { offset, len } => (
                Use::Compressed,
                offset / cs,
                offset.saturating_add(len).saturating_sub(1) / cs,
            ),
        };
        for c in first..=last.min(self.clusters.saturating_sub(1)) {
            let held = self.get(c);
            match (held, claim) {
                (Use::Free, _) => {
                    self.set(c, claim);
                    first_uses.push(c);
                }
                (Use::Compressed, Use::Compressed) => {}
                _ => {
                    return Some(Clash {
                        cluster: c,
                        held,
                        claim,
                    })
                }
            }
        }
        first_uses.extend(first.max(self.clusters)..=last);
        None
    }
}

/// Bytes of a refcount block [`Refcounts`] reads at a time.
const SLICE: u64 = 512;
/// Slices [`Refcounts`] keeps, direct-mapped by host offset: 32 KiB in all.
const SLOTS: u64 = 64;

/// The stored refcounts of host clusters, read one 512-byte slice of a refcount block at a
/// time through a small direct-mapped cache: 32 KiB whatever the image. qemu allocates
/// clusters mostly in ascending host order, so a qemu-written image reads each refcount
/// block about once; `Image::map` looks up each host cluster at most once (when an entry
/// first uses it), so even a hostile image costs at most one slice read per host cluster.
pub(crate) struct Refcounts<'a, R: ?Sized> {
    src: &'a R,
    refblocks: &'a [u64],
    file_len: u64,
    /// Refcount width in bits.
    bits: u64,
    /// Entries per refcount block.
    per_block: u64,
    cluster_size: u64,
    /// Host offset of the slice in each slot (`u64::MAX`: empty).
    keys: Vec<u64>,
    slices: Vec<u8>,
}

impl<'a, R: ReadAt + ?Sized> Refcounts<'a, R> {
    /// A lookup over `layout`'s refcount table.
    pub fn new(src: &'a R, h: &Header, layout: &'a Layout, file_len: u64) -> Self {
        let bits = h.refcount_bits();
        Refcounts {
            src,
            refblocks: &layout.refblocks,
            file_len,
            bits,
            per_block: h.cluster_size() * 8 / bits,
            cluster_size: h.cluster_size(),
            keys: vec![u64::MAX; SLOTS as usize],
            slices: vec![0; (SLOTS * SLICE) as usize],
        }
    }

    /// The stored refcount of host cluster `c`: 0 when no refcount block covers it, as qemu's
    /// `qcow2_get_refcount` answers. Open checked that every refcount block starts below the
    /// end of the file; bytes past it read as zeros.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn get(&mut self, c: u64) -> Result<u64> {
        let block = usize::try_from(c / self.per_block)
            .ok()
            .and_then(|i| self.refblocks.get(i))
            .copied()
            .unwrap_or(0);
        if block == 0 {
            return Ok(0);
        }
        let per_slice = SLICE * 8 / self.bits;
        let j = c % self.per_block;
        let key = block + j / per_slice * SLICE;
        let slot = (key / SLICE % SLOTS) as usize;
        let at = slot * SLICE as usize;
        let slice = &mut self.slices[at..at + SLICE as usize];
        if self.keys[slot] != key {
            read_clamped(self.src, slice, key, self.file_len)?;
            self.keys[slot] = key;
        }
        Ok(refcount_entry(slice, j % per_slice, self.bits))
    }

    /// Checks every allocated active L1 entry against its L2 table's refcount, as `qemu-img
    /// check` does: the refcount may not be 0 (`compare_refcounts`: "ERROR cluster N
    /// refcount=0 reference=1"), and the COPIED flag is set exactly when it is 1
    /// (`check_oflag_copied`: "ERROR OFLAG_COPIED L2 cluster").
    ///
    /// # Errors
    /// [`Error::Corrupt`] at the L1 entry; [`Error::Io`].
    pub fn check_l1(&mut self, layout: &Layout, l1_offset: u64) -> Result<()> {
        for (i, &table) in layout.l1.iter().enumerate() {
            if table == 0 {
                continue;
            }
            let r = self.get(table / self.cluster_size)?;
            let copied = layout.l1_copied(i);
            let what = || format!("L1 entry {i}");
            if let Some(reason) = copied_mismatch(what, "L2 table", table, copied, r) {
                return Err(corrupt(l1_offset + i as u64 * 8, reason));
            }
        }
        Ok(())
    }

    /// Checks an active L2 entry (first word `entry`, decoded as `cl`) against the refcounts
    /// of `first_uses`, the host clusters it is the first to use ([`HostUse::claim`]), as
    /// `qemu-img check` does: none may have refcount 0, and a standard cluster with a host
    /// offset (data, a preallocated zero cluster, an extended-L2 cluster) has the COPIED
    /// flag exactly when its refcount is 1 (`check_oflag_copied`: "ERROR OFLAG_COPIED data
    /// cluster"). Compressed clusters never have the flag (`l2::decode` refuses it); their
    /// host clusters only need a refcount above 0, since qemu packs several into one.
    ///
    /// Returns what is wrong, for the caller to report at the entry's offset.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn check_l2_entry(
        &mut self,
        entry: u64,
        cl: &Cluster,
        first_uses: &[u64],
    ) -> Result<Option<String>> {
        let cs = self.cluster_size;
        match *cl {
            Cluster::Data { host }
            | Cluster::Zero { host: Some(host) }
            | Cluster::Sub {
                host: Some(host), ..
            } => {
                let r = self.get(host / cs)?;
                let copied = entry & OFLAG_COPIED != 0;
                Ok(copied_mismatch(
                    || format!("L2 entry {entry:#018x}"),
                    "data cluster",
                    host,
                    copied,
                    r,
                ))
            }
            Cluster::Compressed { offset, .. } => {
                for &c in first_uses {
                    if self.get(c)? == 0 {
                        return Ok(Some(format!(
                            "L2 entry {entry:#018x} points to compressed data at {offset:#x} \
                             in the host cluster at {:#x}, whose refcount is 0",
                            c * cs
                        )));
                    }
                }
                Ok(None)
            }
            Cluster::Unallocated
            | Cluster::Zero { host: None }
            | Cluster::Sub { host: None, .. } => Ok(None),
        }
    }
}

/// What is wrong when an entry (named by `what`, called only then) pointing at the
/// `target` at `host` has the COPIED flag `copied` and the target's refcount is `r`, if
/// anything.
fn copied_mismatch(
    what: impl FnOnce() -> String,
    target: &str,
    host: u64,
    copied: bool,
    r: u64,
) -> Option<String> {
    if r == 0 {
        Some(format!(
            "{} points to the {target} at {host:#x}, whose refcount is 0",
            what()
        ))
    } else if copied && r != 1 {
        Some(format!(
            "{} has the COPIED flag, but the {target} at {host:#x} has refcount {r}",
            what()
        ))
    } else if !copied && r == 1 {
        Some(format!(
            "{} lacks the COPIED flag, but the {target} at {host:#x} has refcount 1 \
             (it is used by nothing else)",
            what()
        ))
    } else {
        None
    }
}

/// Entry `j` of a refcount block (or a slice of one) of `bits`-wide entries: sub-byte widths
/// are packed LSB-first, wider ones are big-endian.
pub(crate) fn refcount_entry(block: &[u8], j: u64, bits: u64) -> u64 {
    if bits < 8 {
        let bit = j * bits;
        let byte = block[(bit / 8) as usize];
        u64::from(byte >> (bit % 8)) & ((1 << bits) - 1)
    } else {
        let w = (bits / 8) as usize;
        let at = j as usize * w;
        block[at..at + w]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }
}

/// Whether `cl` uses host cluster `c` as a `u`.
pub(crate) fn uses(cl: &Cluster, h: &Header, c: u64, u: Use) -> bool {
    let cs = h.cluster_size();
    let kind = match cl {
        Cluster::Compressed { .. } => Use::Compressed,
        _ => Use::Data,
    };
    kind == u
        && cl
            .host_range(cs)
            .is_some_and(|(s, e)| s / cs <= c && c < e.div_ceil(cs))
}

/// Every metadata structure in host cluster `c`, in the order `mark_meta` marks them: L2
/// tables (by L1 index), refcount blocks, then persistent bitmap data clusters. Only the
/// error paths call this.
pub(crate) fn meta_users<R: ReadAt + ?Sized>(
    src: &R,
    layout: &Layout,
    cs: u64,
    c: u64,
) -> Result<Vec<Meta>> {
    let at = |off: &u64| *off != 0 && *off / cs == c;
    let mut users: Vec<Meta> = (0u64..)
        .zip(&layout.l1)
        .filter(|(_, o)| at(o))
        .map(|(i, _)| Meta::L2 { l1_index: i })
        .collect();
    users.extend(
        (0u64..)
            .zip(&layout.refblocks)
            .filter(|(_, o)| at(o))
            .map(|(i, _)| Meta::RefcountBlock { index: i }),
    );
    for (b, &(off, entries)) in (0u32..).zip(&layout.bitmap_tables) {
        for_each_u64(src, off, entries, |_, e| {
            if (e & BME_OFFSET_MASK) / cs == c && e & BME_OFFSET_MASK != 0 {
                users.push(Meta::BitmapData { bitmap: b });
            }
            Ok(())
        })?;
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::refcount_entry;

    #[test]
    fn refcount_entry_decodes_packed_and_wide_entries() {
        let block = [0b1011_0001u8, 0x12, 0x34, 0, 0, 0, 0, 0];
        assert_eq!(refcount_entry(&block, 0, 1), 1);
        assert_eq!(refcount_entry(&block, 1, 1), 0);
        assert_eq!(refcount_entry(&block, 3, 2), 0b10);
        assert_eq!(refcount_entry(&block, 1, 4), 0b1011);
        assert_eq!(refcount_entry(&block, 1, 8), 0x12);
        assert_eq!(refcount_entry(&block, 0, 16), 0xb112);
        assert_eq!(refcount_entry(&block, 0, 64), 0xb112_3400_0000_0000);
    }
}
