//! The allocation map: L1/L2 walking into sorted, coalesced extents.

use crate::error::{corrupt, Error, Result};
use crate::header::be64;
use crate::l2::{self, Cluster, PieceKind};
use crate::refs::{self, Clash, HostUse, Refcounts, Use};
use crate::{read_clamped, Extent, ExtentKind, GuestOffset, HostOffset, Image, ReadAt};

/// L2 entries decoded per read: a bounded buffer however large the range.
const ENTRIES_PER_READ: u64 = 8192;

impl<R: ReadAt> Image<R> {
    /// Checks that `[guest, guest + len)` lies inside the virtual disk; returns its end.
    pub(crate) fn check_range(&self, guest: u64, len: u64) -> Result<u64> {
        guest
            .checked_add(len)
            .filter(|e| *e <= self.header.virtual_size)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "guest range of {len:#x} bytes at {guest:#x} ends past the virtual size {:#x}",
                    self.header.virtual_size
                ))
            })
    }

    /// Calls `f(guest, len, cluster)` for every guest cluster overlapping `[start, end)`, in
    /// order. `guest` is cluster-aligned and `len` is one cluster, except for runs of empty
    /// L1 or L2 entries, which come as one `Unallocated` call of many clusters. L2 entries are
    /// read in bounded chunks, never whole tables at once beyond one cluster.
    pub(crate) fn walk(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, u64, Cluster) -> Result<()>,
    ) -> Result<()> {
        self.walk_entries(start, end, |g, len, cl, _| f(g, len, cl))
    }

    /// As [`Image::walk`], also passing the first word of the L2 entry each cluster was
    /// decoded from (0 for runs of empty entries).
    fn walk_entries(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, u64, Cluster, u64) -> Result<()>,
    ) -> Result<()> {
        let h = &self.header;
        let cs = h.cluster_size();
        let cov = h.l2_coverage();
        let esz = h.l2_entry_size();
        let end_aligned = end.div_ceil(cs) * cs;
        let mut buf = Vec::new();
        let mut g = start / cs * cs;
        while g < end_aligned {
            let l1i = g / cov;
            let table_end = ((l1i + 1) * cov).min(end_aligned);
            // Header validation guarantees the L1 covers the virtual size.
            let l2_off = usize::try_from(l1i)
                .ok()
                .and_then(|i| self.layout.l1.get(i))
                .copied()
                .unwrap_or(0);
            if l2_off == 0 {
                f(g, table_end - g, Cluster::Unallocated, 0)?;
                g = table_end;
                continue;
            }
            while g < table_end {
                let first = (g % cov) / cs;
                let count = ((table_end - g) / cs).min(ENTRIES_PER_READ);
                let at = l2_off + first * esz;
                buf.resize((count * esz) as usize, 0);
                read_clamped(&self.source, &mut buf, at, self.file_len)?;
                // Runs of empty entries (the common case in sparse overlays) become one
                // call instead of one per cluster.
                let mut run: Option<u64> = None;
                for (i, e) in buf.chunks_exact(esz as usize).enumerate() {
                    let cg = g + i as u64 * cs;
                    if e.iter().all(|b| *b == 0) {
                        run.get_or_insert(cg);
                        continue;
                    }
                    if let Some(r) = run.take() {
                        f(r, cg - r, Cluster::Unallocated, 0)?;
                    }
                    let entry = be64(e, 0);
                    let bitmap = if esz == 16 { be64(e, 8) } else { 0 };
                    let cl = l2::decode(
                        h,
                        &self.layout,
                        self.file_len,
                        at + i as u64 * esz,
                        entry,
                        bitmap,
                    )?;
                    f(cg, cs, cl, entry)?;
                }
                if let Some(r) = run {
                    f(r, g + count * cs - r, Cluster::Unallocated, 0)?;
                }
                g += count * cs;
            }
        }
        Ok(())
    }

    /// Sorted, coalesced extents covering `[0, virtual_size)`, after checking that no two
    /// active L2 entries share a host cluster.
    ///
    /// Adjacent extents of the same kind are merged; data extents only when they are
    /// contiguous in both guest and host space. L2 tables are streamed, so memory is bounded
    /// by the number of extents plus two bits per host cluster of the file (at most 16 MiB).
    ///
    /// The sharing check (qemu never lets two active L2 entries use one host cluster):
    /// every data cluster, preallocated zero clusters and extended-L2 clusters included,
    /// belongs to one L2 entry only; compressed data may share host clusters with other
    /// compressed data but not with data clusters; no L2 entry uses a persistent bitmap's
    /// data cluster. Internal snapshots are not walked: they may share anything with the
    /// active layer. [`Image::map_range`] does not do this check, since a part of the disk
    /// cannot see every user of a cluster.
    ///
    /// Like `qemu-img check`, the checks cover every entry of every active L2 table, also
    /// those past the virtual size, which map no guest byte.
    ///
    /// The refcount check (what `qemu-img check` reports as corruptions between the active
    /// tree and the refcounts): every L2 table, data cluster and cluster of compressed data
    /// the active tree uses has a stored refcount above 0, and the COPIED flag of every
    /// allocated L1 entry and standard L2 entry with a host offset is set exactly when that
    /// refcount is 1. Skipped for a dirty image, whose refcounts may be stale (qemu repairs
    /// them on its next read-write open).
    ///
    /// # Errors
    /// [`Error::Corrupt`] for any invalid L2 entry (reserved bits, unaligned offsets, host
    /// offsets past the end of the file or inside metadata or bitmap data, invalid
    /// subcluster bitmaps) and for an L1 or L2 entry the refcount check refuses;
    /// [`Error::SharedCluster`] when two L2 entries share a host cluster; [`Error::Unsupported`] when the file has more host clusters than the check
    /// tracks (2^26); [`Error::Io`].
    pub fn map(&self) -> Result<Vec<Extent>> {
        let cs = self.header.cluster_size();
        let end = self.header.virtual_size;
        self.check_l2_tables_allocated()?;
        let mut used = HostUse::new(self.file_len, cs)?;
        used.mark_meta(&self.source, &self.layout)?;
        // A dirty image's refcounts (and so its COPIED flags) may be stale by design: qemu
        // repairs both on its next read-write open, so they are not held against it here.
        let mut refcounts = (!self.header.dirty)
            .then(|| Refcounts::new(&self.source, &self.header, &self.layout, self.file_len));
        if let Some(rc) = refcounts.as_mut() {
            rc.check_l1(&self.layout, self.header.l1_table_offset.0)?;
        }
        let mut first_uses = Vec::new();
        let mut check = |g: u64, cl: &Cluster, entry: u64| -> Result<()> {
            first_uses.clear();
            if let Some(clash) = used.claim(cl, &mut first_uses) {
                return Err(self.clash_error(clash, g));
            }
            if let Some(rc) = refcounts.as_mut() {
                if let Some(reason) = rc.check_l2_entry(entry, cl, &first_uses)? {
                    return Err(corrupt(self.l2_entry_at(g), reason));
                }
            }
            Ok(())
        };
        let mut out = Coalescer::default();
        self.walk_entries(0, end, |g, l, cl, entry| {
            check(g, &cl, entry)?;
            out.push_cluster(g, l, cl, cs, 0, end);
            Ok(())
        })?;
        // `qemu-img check` decodes every entry of every active L2 table (`check_refcounts_l2`
        // runs over `l2_size` entries for each of the `l1_size` L1 entries), so the entries
        // past the virtual size get the same checks, though they map no guest byte: the rest
        // of the last table, and the tables of L1 entries beyond what the size needs. The
        // walk above decoded the cluster holding the last guest byte already.
        let tail_end = u64::from(self.header.l1_size) * self.header.l2_coverage();
        self.walk_entries(end.div_ceil(cs) * cs, tail_end, |g, _, cl, entry| {
            check(g, &cl, entry)
        })?;
        Ok(out.extents)
    }

    /// Sorted, coalesced extents covering `[guest, guest + len)`, clipped to it.
    ///
    /// # Errors
    /// As [`Image::map`] except for [`Error::SharedCluster`], and [`Error::InvalidArgument`]
    /// when the range ends past the virtual size.
    pub fn map_range(&self, guest: GuestOffset, len: u64) -> Result<Vec<Extent>> {
        let start = guest.0;
        let end = self.check_range(start, len)?;
        let cs = self.header.cluster_size();
        let mut out = Coalescer::default();
        self.walk(start, end, |g, l, cl| {
            out.push_cluster(g, l, cl, cs, start, end);
            Ok(())
        })?;
        Ok(out.extents)
    }

    /// Refuses an L1 table whose L2 tables cannot all be backed by storage: qemu writes
    /// every L2 table it allocates, so their total size never exceeds the file's allocated
    /// size, while a hostile sparse file could point 4 Mi L1 entries at L2 tables in holes
    /// and make a map read 256 GiB of zeros (bounded work whatever the header says: docs/security.md).
    fn check_l2_tables_allocated(&self) -> Result<()> {
        let Some(allocated) = self.source.allocated_len().map_err(|e| Error::Io {
            offset: 0,
            len: 0,
            source: e,
        })?
        else {
            return Ok(());
        };
        let cs = self.header.cluster_size();
        let tables = self.layout.l1.iter().filter(|&&e| e != 0).count() as u64;
        if tables.saturating_mul(cs) > allocated {
            return Err(Error::Corrupt {
                offset: self.header.l1_table_offset.0,
                reason: format!(
                    "the L1 table points at {tables} L2 tables ({:#x} bytes) but only {allocated:#x} \
                     bytes of the file are allocated, so some lie in holes",
                    tables.saturating_mul(cs)
                ),
            });
        }
        Ok(())
    }

    /// Host offset of the L2 entry of guest offset `g` (0 if its L1 entry is empty).
    fn l2_entry_at(&self, g: u64) -> u64 {
        let h = &self.header;
        let cov = h.l2_coverage();
        let l2 = usize::try_from(g / cov)
            .ok()
            .and_then(|i| self.layout.l1.get(i))
            .copied()
            .unwrap_or(0);
        l2 + (g % cov) / h.cluster_size() * h.l2_entry_size()
    }

    /// The error for a host cluster claimed again by the cluster at guest offset `second`.
    /// Finding the first user walks the map again, which only a refused image pays for.
    fn clash_error(&self, clash: Clash, second: u64) -> Error {
        let host = clash.cluster * self.header.cluster_size();
        let second_entry = self.l2_entry_at(second);
        if clash.held == Use::Meta {
            let users = refs::meta_users(
                &self.source,
                &self.layout,
                self.header.cluster_size(),
                clash.cluster,
            );
            let what = match users.as_deref() {
                Ok([m, ..]) => m.to_string(),
                _ => "metadata".to_owned(),
            };
            return corrupt(
                second_entry,
                format!(
                    "L2 entry points to the {} of guest offset {second:#x} at {host:#x}, inside \
                     the {what} at {host:#x}",
                    clash.claim.noun()
                ),
            );
        }
        let mut first = None;
        // Errors cannot occur before `second`: the same walk just passed there.
        let _ = self.walk(0, second, |g, _, cl| {
            if first.is_none() && refs::uses(&cl, &self.header, clash.cluster, clash.held) {
                first = Some(g);
            }
            Ok(())
        });
        match first {
            Some(first) => Error::SharedCluster {
                host,
                first_guest: first,
                first_entry: self.l2_entry_at(first),
                first_use: clash.held.noun(),
                second_guest: second,
                second_entry,
                second_use: clash.claim.noun(),
            },
            None => corrupt(
                second_entry,
                format!(
                    "the {} of guest offset {second:#x} uses the host cluster at {host:#x} twice",
                    clash.claim.noun()
                ),
            ),
        }
    }
}

/// Builds sorted, coalesced extents from pieces pushed in guest order.
#[derive(Default)]
pub(crate) struct Coalescer {
    pub extents: Vec<Extent>,
}

impl Coalescer {
    /// Pushes the pieces of the guest cluster(s) at `g` (a run of `len` bytes when `len` is
    /// more than one cluster, which is always unallocated), clipped to `[start, end)`.
    fn push_cluster(&mut self, g: u64, len: u64, cl: Cluster, cs: u64, start: u64, end: u64) {
        if len > cs {
            self.push_clipped(g, len, PieceKind::Unallocated, start, end);
        } else {
            cl.pieces(cs, |off, pl, kind| {
                self.push_clipped(g + off, pl, kind, start, end);
            });
        }
    }

    fn push_clipped(&mut self, g: u64, len: u64, kind: PieceKind, start: u64, end: u64) {
        let s = g.max(start);
        let e = (g + len).min(end);
        if s >= e {
            return;
        }
        let kind = match kind {
            PieceKind::Unallocated => ExtentKind::Unallocated,
            PieceKind::Zero => ExtentKind::Zero,
            PieceKind::Compressed => ExtentKind::Compressed,
            PieceKind::Data { host } => ExtentKind::Data {
                host: HostOffset(host + (s - g)),
            },
        };
        self.push(Extent {
            guest: GuestOffset(s),
            len: e - s,
            kind,
        });
    }

    pub fn push(&mut self, x: Extent) {
        if let Some(last) = self.extents.last_mut() {
            if last.guest.0 + last.len == x.guest.0 {
                let merge = match (last.kind, x.kind) {
                    (ExtentKind::Data { host: a }, ExtentKind::Data { host: b }) => {
                        a.0 + last.len == b.0
                    }
                    (a, b) => a == b,
                };
                if merge {
                    last.len += x.len;
                    return;
                }
            }
        }
        self.extents.push(x);
    }
}
