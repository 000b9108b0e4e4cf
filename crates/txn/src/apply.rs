//! Writing a [`Plan`] into a base: the overlay's changed ranges copied into a raw base by
//! imgtx's own copy engine, or `qemu-img commit` for a qcow2 base; then the base synced.
//!
//! Applying is idempotent: it only ever writes the overlay's content, which a commit never
//! changes, so a redo after a crash writes the same bytes again. This module decides nothing
//! about when to apply; the commit and recovery orchestrators do.

use std::path::Path;

use storage::copy::{read_ahead, Piece, Stopped};
use storage::{File, Fs};

use crate::error::{Error, Result};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{DevIno, Format};
use crate::overlay::Reader;
use crate::plan::{chunks, Action, ByteRange, Plan};
use crate::written::Tally;

/// The largest piece of data read or written at once.
pub(crate) const CHUNK: u64 = 4 << 20;

/// How many reads of up to [`CHUNK`] bytes a copy keeps in flight (a reader thread each): the
/// pre-image ranges are often small and scattered, and one read at a time left the disk
/// idle between them. Memory is `READ_AHEAD + 1` chunks. Measured on the small benchmark
/// (cold, alternating binaries, 4 runs each): 2 × 8 MiB, 4 × 4 MiB, 6 × 4 MiB and 8 × 2 MiB
/// gave default commits of 1.35–1.51, 1.18–1.45, 1.22–1.45 and 1.27–1.52 s; 4 × 4 MiB is
/// as fast as any and peaks at 38 MiB RSS instead of 46.
pub(crate) const READ_AHEAD: usize = 4;

/// How many extents a commit collects before copying them: bounds memory (24 bytes each)
/// whatever the overlay's size.
const BATCH: usize = 64 * 1024;

/// At most this much of the overlays is read into the page cache ahead of the forward copy,
/// so that a huge overlay does not push out what it warmed before the copy gets to it.
pub(crate) const WARM_MAX: u64 = 512 << 20;

/// Where a plan is applied: the base's path, the inode begin recorded, and its format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// The base's path.
    pub path: &'a Path,
    /// The inode the transaction was begun on; any other is refused.
    pub dev_ino: DevIno,
    /// Its format.
    pub format: Format,
}

/// Writes the overlay `ov`'s changes planned in `plan` into the base `to`, and syncs it;
/// `progress` hears (bytes done, bytes in all). For a raw base, hands what is written to
/// `tally` (checksums in the making, or [`Tally::off`]) and returns it; a qcow2 base, which
/// `qemu-img` writes, tallies nothing.
pub(crate) fn forward<S: Fs, H: Host>(
    (fs, host): (&S, &H),
    tx: &TxId,
    (ov, ov_path): (&S::File, &Path),
    to: Target<'_>,
    (plan, tally): (&Plan, Tally),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Tally> {
    let total = plan.changed_bytes();
    progress(0, total);
    if to.format == Format::Qcow2 {
        let base = crate::base::open(fs, tx, (to.path, to.dev_ino), false)?;
        // qemu gets the validated overlay and the opened base as descriptors, not names
        // that may have been swapped since.
        match (ov.as_fd(), base.as_fd()) {
            (Some(o), Some(b)) => {
                host.qemu_img_commit_open((ov_path, o), (to.path, b), to.format)?
            }
            _ => host.qemu_img_commit(ov_path, to.path, to.format)?,
        }
        // Barrier: the committed base must be durable before the journal says applied.
        base.sync_data().map_err(Error::io("sync", to.path))?;
        progress(total, total);
        return Ok(Tally::off());
    }
    let img = qcow::Image::open(Reader(ov)).map_err(Error::qcow(ov_path))?;
    let base = crate::base::open(fs, tx, (to.path, to.dev_ino), true)?;
    let len = base.len().map_err(Error::io("stat", to.path))?;
    // A redo sets the length again even when the live length already shows it: after a
    // failed sync the growth may never reach the disk, whatever reads say (crash_faults:
    // commit with EIO on the base sync, then recover).
    if plan.new_len() > len || plan.new_len() > plan.old_len {
        // Grow first: the undo record holds the old length, so a crash leaves a base
        // that undo truncates back and redo fills in.
        base.set_len(plan.new_len())
            .map_err(Error::io("grow", to.path))?;
        // Barrier: the new length is durable before anything lands past the old end. A
        // write or clone there extends the file too, so a crash that kept it but lost the
        // growth would leave a length that is neither old nor new, which recovery must
        // refuse as someone else's truncation.
        base.sync_data().map_err(Error::io("sync", to.path))?;
    }
    let ov_len = ov.len().map_err(Error::io("stat", ov_path))?;
    let mut copier = Copier {
        img: &img,
        ov,
        ov_path,
        base: &base,
        base_path: to.path,
        buf: Vec::new(),
        direct: Vec::new(),
        other: Vec::new(),
        tally,
        share: true,
        shared: 0,
    };
    let mut done = 0u64;
    let mut copied = |n: u64| {
        done += n;
        progress(done, total);
    };
    for step in &plan.steps {
        match step.action {
            Action::Zero => {
                base.zero_range(step.offset, step.len)
                    .map_err(Error::io("zero a range of", to.path))?;
                copier.tally.zeros(step.offset, step.len);
                copied(step.len);
            }
            Action::Copy => {
                for piece in chunks(&[ByteRange::new(step.offset, step.len)], CHUNK) {
                    copier.plan(piece, ov_len)?;
                    if copier.direct.len() + copier.other.len() >= BATCH {
                        copier.flush(&mut copied)?;
                    }
                }
            }
        }
    }
    copier.flush(&mut copied)?;
    // Which path was taken, so that a full copy is never silent: `shared` bytes are the
    // overlay's blocks, now the base's too; the rest was copied.
    tracing::info!(base = %to.path.display(), bytes = total, shared = copier.shared, "overlay applied");
    // Barrier: every new byte of the base is durable before the journal says applied.
    base.sync_data().map_err(Error::io("sync", to.path))?;
    Ok(copier.tally)
}

/// An extent stored whole in the overlay file: `len` bytes at `host` in the overlay, for
/// guest offset `guest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stored {
    host: u64,
    guest: u64,
    len: u64,
}

/// Copies overlay data into a raw base, reading the overlay in host order.
///
/// Extents are collected in guest order, then sorted by their host offset and read in
/// host-contiguous runs of up to [`CHUNK`] bytes, so a cold overlay is read front to back
/// in large requests, which the kernel's readahead extends. Reading in guest order instead,
/// even in large host-contiguous pieces, jumps around the overlay file (qemu appends
/// clusters in the order the guest wrote them) and measured slower than 64 KiB reads that
/// readahead could follow. Writes land in the page cache, so their order costs little; one
/// `fdatasync` follows. Compressed clusters, and ranges the file does not hold (they read as
/// zeros), go through the qcow reader.
struct Copier<'a, F: File> {
    img: &'a qcow::Image<Reader<'a, F>>,
    ov: &'a F,
    ov_path: &'a Path,
    base: &'a F,
    base_path: &'a Path,
    buf: Vec<u8>,
    /// Extents stored in the overlay file.
    direct: Vec<Stored>,
    /// Guest ranges of everything else.
    other: Vec<ByteRange>,
    /// What was written, for the checksums a revert checks.
    tally: Tally,
    /// Reflinks are tried until the file system first refuses one.
    share: bool,
    /// Bytes shared rather than copied.
    shared: u64,
}

impl<F: File> Copier<'_, F> {
    /// Adds the guest range `piece` (at most [`CHUNK`] bytes) to the batch.
    fn plan(&mut self, piece: ByteRange, ov_len: u64) -> Result<()> {
        let extents = self
            .img
            .map_range(qcow::GuestOffset(piece.offset), piece.len)
            .map_err(Error::qcow(self.ov_path))?;
        for e in extents {
            match e.kind {
                qcow::ExtentKind::Data { host }
                    if host.0.checked_add(e.len).is_some_and(|x| x <= ov_len) =>
                {
                    self.direct.push(Stored {
                        host: host.0,
                        guest: e.guest.0,
                        len: e.len,
                    });
                }
                _ => self.other.push(ByteRange::new(e.guest.0, e.len)),
            }
        }
        Ok(())
    }

    /// The stored extents, sorted, as host-contiguous runs of at most [`CHUNK`] bytes; each
    /// run's tag is the range of `direct` it covers.
    fn runs(&mut self) -> Vec<Piece<(usize, usize)>> {
        self.direct.sort_unstable();
        let mut runs = Vec::new();
        let mut i = 0;
        while let Some(first) = self.direct.get(i) {
            // Each extent is at most CHUNK long (it comes from a map of at most CHUNK).
            let (start, mut run, mut end) = (first.host, first.len, i + 1);
            while let Some(next) = self.direct.get(end) {
                if Some(next.host) != start.checked_add(run) || run + next.len > CHUNK {
                    break;
                }
                run += next.len;
                end += 1;
            }
            runs.push(Piece {
                offset: start,
                len: usize::try_from(run).unwrap_or(usize::MAX),
                tag: (i, end),
                // Through the page cache: the kernel's readahead follows these host-ordered
                // runs better than direct reads of them do (cold `--no-undo`, small scenario,
                // alternating binaries: 0.50-0.64 s against 0.61-0.84 s), and whatever
                // `storage::copy::warm` read during the pre-image save is there already.
                cached: true,
            });
            i = end;
        }
        runs
    }

    /// Shares what it can of the batch's stored extents with the base instead of copying
    /// them (a reflink: no data is read or written), and leaves the rest for the copy. The
    /// overlay's data clusters are whole clusters at cluster-aligned offsets of both files,
    /// so on a file system with reflinks nearly all of a commit goes this way; a compressed
    /// cluster, or a range the file system's blocks do not divide, is copied.
    fn share(&mut self, copied: &mut dyn FnMut(u64)) {
        const BLOCK: u64 = 4096;
        if !self.share {
            return;
        }
        // Runs contiguous in both files, each one call.
        self.direct.sort_unstable();
        let mut keep = Vec::with_capacity(self.direct.len());
        let mut i = 0;
        while i < self.direct.len() {
            let first = self.direct[i];
            let mut end = i + 1;
            let mut len = first.len;
            while let Some(next) = self.direct.get(end) {
                if next.host != first.host + len || next.guest != first.guest + len {
                    break;
                }
                len += next.len;
                end += 1;
            }
            let aligned = first.host.is_multiple_of(BLOCK)
                && first.guest.is_multiple_of(BLOCK)
                && len.is_multiple_of(BLOCK);
            let shared = self.share
                && aligned
                && match self
                    .base
                    .clone_range_from(self.ov, first.host, first.guest, len)
                {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::info!(base = %self.base_path.display(), error = %e, "no reflink: copying the overlay's data");
                        self.share = false;
                        false
                    }
                };
            if shared {
                self.shared += len;
                self.tally.unseen();
                copied(len);
            } else {
                keep.extend_from_slice(&self.direct[i..end]);
            }
            i = end;
        }
        self.direct = keep;
    }

    /// Copies the batch into the base; `copied` hears the bytes done.
    fn flush(&mut self, copied: &mut dyn FnMut(u64)) -> Result<()> {
        self.share(copied);
        let runs = self.runs();
        let (direct, base, base_path) = (&self.direct, self.base, self.base_path);
        let tally = &mut self.tally;
        // The next runs are read while this one is written; each piece's writeback starts at
        // once, so the final fdatasync has little left to flush.
        let done = read_ahead(self.ov, runs, READ_AHEAD, |run, data| {
            for e in direct.get(run.tag.0..run.tag.1).unwrap_or_default() {
                let at = usize::try_from(e.host - run.offset).unwrap_or(usize::MAX);
                let piece = at
                    .checked_add(usize::try_from(e.len).unwrap_or(usize::MAX))
                    .and_then(|end| data.get(at..end))
                    .ok_or_else(|| {
                        Error::Invalid(format!("extent at {:#x} outside its run", e.host))
                    })?;
                base.write_all_at(piece, e.guest)
                    .map_err(Error::io("write", base_path))?;
                tally.data(e.guest, piece);
                if let Err(err) = base.start_writeback(e.guest, e.len) {
                    tracing::debug!(path = %base_path.display(), error = %err, "early writeback refused");
                }
            }
            copied(data.len() as u64);
            Ok(())
        });
        match done {
            Ok(()) => {}
            Err(Stopped::Read { source, .. }) => {
                return Err(Error::io("read", self.ov_path)(source))
            }
            Err(Stopped::Write(e)) => return Err(e),
        }
        self.direct.clear();
        for piece in chunks(&self.other, CHUNK) {
            self.buf.resize(usize::try_from(piece.len).unwrap_or(0), 0);
            self.img
                .read_at(&mut self.buf, qcow::GuestOffset(piece.offset))
                .map_err(Error::qcow(self.ov_path))?;
            self.base
                .write_all_at(&self.buf, piece.offset)
                .map_err(Error::io("write", self.base_path))?;
            self.tally.data(piece.offset, &self.buf);
            copied(piece.len);
        }
        self.other.clear();
        Ok(())
    }
}
