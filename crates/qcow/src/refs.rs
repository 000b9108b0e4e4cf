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

use crate::error::{corrupt, Error, Result};
use crate::header::Header;
use crate::l2::Cluster;
use crate::meta::{for_each_u64, Layout, Meta};
use crate::ReadAt;

/// The most host clusters the check tracks: 2^26 clusters at two bits each is 16 MiB, which
/// keeps a whole `map` of a hostile overlay inside issue 6's 64 MiB. That is a 4 TiB image
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

    /// Records the host clusters `cl` uses; the first clash found, if any.
    pub fn claim(&mut self, cl: &Cluster) -> Option<Clash> {
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
                (Use::Free, _) => self.set(c, claim),
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
        None
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
