//! The inventory of a qcow2 base: every host byte range a commit into it may overwrite.

use crate::error::Result;
use crate::meta::for_each_u64;
use crate::refs::refcount_entry;
use crate::{read_clamped, GuestOffset, HostOffset, HostRange, Image, Inventory, ReadAt};

/// Bitmap table entry bits holding a data cluster offset.
const BME_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

impl<R: ReadAt> Image<R> {
    /// Every host byte range of this image (taken as the *base* of a commit) that writing
    /// `guest_ranges` into it may overwrite: the header cluster, the active L1, every L2
    /// table, the refcount table and blocks, the snapshot table and snapshot L1 tables, the
    /// bitmap directory, tables and data clusters, every host cluster backing the guest
    /// ranges (all host clusters touched by compressed data included), and every free
    /// (refcount 0) cluster below the end of the file, where qemu allocates first.
    ///
    /// Ranges past the file length are not listed: the engine restores them by truncating
    /// to [`Inventory::file_len`]. For a dirty image (refcounts may be stale) every cluster
    /// below the end of the file is listed.
    ///
    /// Guest ranges may reach past this image's virtual size (an overlay larger than its
    /// base): the part beyond it maps no host cluster yet.
    ///
    /// # Errors
    /// The errors of [`Image::map`].
    pub fn inventory(&self, guest_ranges: &[(GuestOffset, u64)]) -> Result<Inventory> {
        let cs = self.header.cluster_size();
        let file_len = self.file_len;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        if self.header.dirty {
            ranges.push((0, file_len));
        }
        for r in &self.layout.regions {
            ranges.push((r.start, r.end));
        }
        let one_cluster_tables = self.layout.l1.iter().chain(&self.layout.refblocks);
        for &off in one_cluster_tables.filter(|o| **o != 0) {
            ranges.push((off, off.saturating_add(cs)));
        }
        for &(off, entries) in &self.layout.bitmap_tables {
            for_each_u64(&self.source, off, entries, |_, e| {
                let host = e & BME_OFFSET_MASK;
                if host != 0 {
                    ranges.push((host, host.saturating_add(cs)));
                }
                Ok(())
            })?;
        }
        for &(g, len) in guest_ranges {
            // Past the virtual size the base maps nothing yet: growing it rewrites the header
            // and puts a new L1 in free clusters or past EOF, both covered already.
            let end = g.0.saturating_add(len).min(self.header.virtual_size);
            if g.0 >= end {
                continue;
            }
            self.walk(g.0, end, |_, _, cl| {
                if let Some(r) = cl.host_range(cs) {
                    ranges.push(r);
                }
                Ok(())
            })?;
        }
        if !self.header.dirty {
            self.free_clusters(&mut ranges)?;
        }

        ranges.sort_unstable();
        let mut out: Vec<HostRange> = Vec::new();
        for (s, e) in ranges {
            let e = e.min(file_len);
            if s >= e {
                continue;
            }
            if let Some(last) = out.last_mut() {
                let last_end = last.offset.0 + last.len;
                if s <= last_end {
                    last.len = last.len.max(e - last.offset.0);
                    continue;
                }
            }
            out.push(HostRange {
                offset: HostOffset(s),
                len: e - s,
            });
        }
        Ok(Inventory {
            ranges: out,
            file_len,
        })
    }

    /// Appends the clusters below the end of the file whose refcount is 0, streaming one
    /// refcount block at a time.
    fn free_clusters(&self, ranges: &mut Vec<(u64, u64)>) -> Result<()> {
        let cs = self.header.cluster_size();
        let bits = self.header.refcount_bits();
        let per_block = cs * 8 / bits;
        let nclusters = self.file_len.div_ceil(cs);
        let mut block = vec![0u8; cs as usize];
        let push = |c: u64, ranges: &mut Vec<(u64, u64)>| {
            let s = c * cs;
            match ranges.last_mut() {
                Some(last) if last.1 == s => last.1 = s + cs,
                _ => ranges.push((s, s + cs)),
            }
        };
        let mut c = 0u64;
        while c < nclusters {
            let bi = c / per_block;
            let block_end = ((bi + 1) * per_block).min(nclusters);
            let off = usize::try_from(bi)
                .ok()
                .and_then(|i| self.layout.refblocks.get(i))
                .copied()
                .unwrap_or(0);
            if off == 0 {
                for cc in c..block_end {
                    push(cc, ranges);
                }
                c = block_end;
                continue;
            }
            read_clamped(&self.source, &mut block, off, self.file_len)?;
            for cc in c..block_end {
                let j = cc % per_block;
                if refcount_entry(&block, j, bits) == 0 {
                    push(cc, ranges);
                }
            }
            c = block_end;
        }
        Ok(())
    }
}
