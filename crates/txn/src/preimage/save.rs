//! Saving pre-images: the base's old content of every range a commit can overwrite, written
//! durably into the pre-image file before the commit point, into the base's spare when a
//! trustworthy one is there.

use std::path::Path;

use storage::copy::{read_ahead, Piece, Stopped};
use storage::{File, Fs};

use super::format::{data_at, entry_crc, CLONED, DATA_ALIGN, ENTRY_HEADER, HEADER, MAGIC, ZEROS};
use crate::apply::{CHUNK, READ_AHEAD};
use crate::error::{Error, Result};
use crate::id::TxId;
use crate::plan::{chunks, ByteRange};
use crate::record::UndoSummary;

/// The grain at which a piece is split into runs of zeros and runs of data: the qcow2
/// default cluster, so a guest write into a sparse image's free space, which fills whole
/// clusters, saves only the data it overwrites.
const ZERO_GRAIN: usize = 64 << 10;

/// `data` cut into maximal runs `(start, end, all zeros)` of whole [`ZERO_GRAIN`]s (the last
/// one shorter); at most one run when it holds no zero grain.
fn zero_runs(data: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    for (i, grain) in data.chunks(ZERO_GRAIN).enumerate() {
        let (start, zero) = (i * ZERO_GRAIN, all_zeros(grain));
        match runs.last_mut() {
            Some(last) if last.2 == zero => last.1 = start + grain.len(),
            _ => runs.push((start, start + grain.len(), zero)),
        }
    }
    runs
}

/// Whether `data` is all zeros; compiled to wide compares, and stops at the first block
/// that is not, which for ordinary data is the first.
fn all_zeros(data: &[u8]) -> bool {
    let blocks = data.chunks_exact(64);
    let rest = blocks.remainder();
    blocks
        .into_iter()
        .all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && rest.iter().all(|&x| x == 0)
}

/// Saves `ranges` of `base` (whose length is `old_len`) into the file at `path`, durably;
/// `saved` hears the bytes saved so far after each piece, and stops the save by failing. Returns the file still open, so
/// its last close can be handed off (see [`crate::release`]).
///
/// The file is the `spare` an earlier commit left, renamed, when there is a trustworthy one
/// (see [`reuse`]), else a new file. `uid` is the user a spare must belong to (or root).
///
/// # Errors
/// Any failure leaves a partial file at `path` that no journal vouches for; the caller
/// removes it (or recovery does).
pub(crate) fn save<S: Fs>(
    fs: &S,
    base: &S::File,
    (base_path, path, spare): (&Path, &Path, &Path),
    (tx, uid): (&TxId, u32),
    (old_len, ranges): (u64, &[ByteRange]),
    saved: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<(UndoSummary, S::File)> {
    // A leftover from an attempt that died before its summary was journaled is worthless.
    crate::files::remove_if_exists(fs, path)?;
    let (out, reused) = match reuse(fs, spare, path, uid)? {
        Some(file) => (file, true),
        None => (
            fs.create_new(path)
                .map_err(Error::io("create the pre-image file", path))?,
            false,
        ),
    };
    // The name (created, or renamed from the spare) is made durable now, while the
    // directory has nothing else to flush; after the writes below the same sync would wait
    // behind their metadata (measured 78 ms there).
    crate::files::sync_dir(fs, crate::layout::dir_of(path)?)?;
    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&old_len.to_le_bytes());
    out.write_all_at(&header, 0)
        .map_err(Error::io("write", path))?;
    let mut w = EntryWriter::new(&out, path, tx, old_len);
    // Where the file system shares blocks, aligned ranges are reflinked without being read;
    // the rest is read and written.
    let mut rest = Vec::new();
    for piece in chunks(ranges, CHUNK) {
        if !w.cloned_entry(base, piece)? {
            rest.push(piece);
            continue;
        }
        saved(w.summary.bytes)?;
    }
    // The next pre-images are read while the current one is written, and each entry's
    // writeback starts at once, so the sync below has little left to flush.
    let pieces = rest.into_iter().map(|r| Piece {
        offset: r.offset,
        len: usize::try_from(r.len).unwrap_or(usize::MAX),
        tag: (),
        cached: false,
    });
    let copied = read_ahead(base, pieces, READ_AHEAD, |piece, data| {
        for (start, end, zero) in zero_runs(data) {
            w.entry(base, piece.offset + start as u64, &data[start..end], zero)?;
            saved(w.summary.bytes)?;
        }
        Ok(())
    });
    match copied {
        Ok(()) => {}
        Err(Stopped::Read { source, .. }) => {
            return Err(Error::io("read the old content of", base_path)(source))
        }
        Err(Stopped::Write(e)) => return Err(e),
    }
    let summary = w.finish(reused)?;
    // Barrier: the pre-images must be durable (data and length; the name was synced above)
    // before the journal says they are, and that must precede the commit point and any
    // write to the base.
    out.sync_data().map_err(Error::io("sync", path))?;
    Ok((summary, out))
}

/// Writes entries one after another into a pre-image file.
struct EntryWriter<'a, F: File> {
    out: &'a F,
    path: &'a Path,
    tx: &'a TxId,
    /// Where the next entry's header goes.
    pos: u64,
    summary: UndoSummary,
    /// Reflinks are tried until the file system first refuses one.
    share: bool,
    /// Bytes shared with the base by reflink.
    shared: u64,
    /// Bytes of ranges saved as a zero entry.
    zeros: u64,
}

impl<'a, F: File> EntryWriter<'a, F> {
    fn new(out: &'a F, path: &'a Path, tx: &'a TxId, old_len: u64) -> Self {
        Self {
            out,
            path,
            tx,
            pos: HEADER,
            summary: UndoSummary {
                old_len,
                entries: 0,
                bytes: 0,
                file_len: 0,
            },
            share: true,
            shared: 0,
            zeros: 0,
        }
    }

    /// Saves `piece` of `base` as an entry whose data is a reflink of the base's blocks,
    /// without reading it; false (nothing written) when the piece is not block-aligned or
    /// the file system refuses, after which no reflink is tried again.
    fn cloned_entry(&mut self, base: &F, piece: ByteRange) -> Result<bool> {
        let aligned =
            piece.offset.is_multiple_of(DATA_ALIGN) && piece.len.is_multiple_of(DATA_ALIGN);
        if !self.share || !aligned {
            return Ok(false);
        }
        let too_large = || Error::Invalid("the pre-image file would be too large".into());
        let at = data_at(self.pos, true).ok_or_else(too_large)?;
        if let Err(e) = self.out.clone_range_from(base, piece.offset, at, piece.len) {
            tracing::info!(path = %self.path.display(), error = %e, "no reflink: reading and copying pre-images");
            self.share = false;
            return Ok(false);
        }
        let mut head = Vec::with_capacity(DATA_ALIGN as usize);
        head.extend_from_slice(&piece.offset.to_le_bytes());
        head.extend_from_slice(&(piece.len | CLONED).to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        let c = entry_crc(&head, self.tx);
        head.extend_from_slice(&c.to_le_bytes());
        head.resize(usize::try_from(at - self.pos).unwrap_or(24), 0);
        self.out
            .write_all_at(&head, self.pos)
            .map_err(Error::io("write", self.path))?;
        self.summary.entries += 1;
        self.summary.bytes += piece.len;
        self.shared += piece.len;
        self.pos = at + piece.len;
        Ok(true)
    }

    /// Writes one entry: `data` is `base`'s old content at `offset`, all zeros when `zero`.
    fn entry(&mut self, base: &F, offset: u64, data: &[u8], zero: bool) -> Result<()> {
        let len = data.len() as u64;
        let (len_field, crc) = if zero {
            (len | ZEROS, 0)
        } else {
            (len, crc32fast::hash(data))
        };
        let mut head = Vec::with_capacity(DATA_ALIGN as usize);
        head.extend_from_slice(&offset.to_le_bytes());
        head.extend_from_slice(&len_field.to_le_bytes());
        head.extend_from_slice(&crc.to_le_bytes());
        let c = entry_crc(&head, self.tx);
        head.extend_from_slice(&c.to_le_bytes());
        let too_large = || Error::Invalid("the pre-image file would be too large".into());
        let at = data_at(self.pos, true).ok_or_else(too_large)?;
        // The header with its padding, in one write: when `pos` starts a block, a spare's
        // block is then replaced whole instead of read from the disk first to be patched
        // (measured: 0.4 s of reads per 256 MiB of pre-images in 4 MiB entries). A zero
        // entry's padding is overwritten by what follows or cut off at the end.
        head.resize(usize::try_from(at - self.pos).unwrap_or(24), 0);
        self.out
            .write_all_at(&head, self.pos)
            .map_err(Error::io("write", self.path))?;
        self.summary.entries += 1;
        self.summary.bytes += len;
        if zero {
            self.pos += ENTRY_HEADER;
            self.zeros += len;
            return Ok(());
        }
        self.data(base, offset, data, at)?;
        if let Err(e) = self.out.start_writeback(self.pos, at - self.pos + len) {
            tracing::debug!(path = %self.path.display(), error = %e, "early writeback refused");
        }
        self.pos = at + len;
        Ok(())
    }

    /// Puts an entry's `data` at `at`: a reflink of the base's blocks where the file system
    /// shares them, else a copy.
    fn data(&mut self, base: &F, offset: u64, data: &[u8], at: u64) -> Result<()> {
        let len = data.len() as u64;
        // Only whole blocks can be shared; the base is fenced, so its blocks still hold
        // `data`, whose checksum the header carries.
        let aligned = offset.is_multiple_of(DATA_ALIGN) && len.is_multiple_of(DATA_ALIGN);
        if self.share && aligned {
            match self.out.clone_range_from(base, offset, at, len) {
                Ok(()) => {
                    self.shared += len;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(path = %self.path.display(), error = %e, "no reflink: copying pre-images");
                    self.share = false;
                }
            }
        }
        self.out
            .write_all_at(data, at)
            .map_err(Error::io("write", self.path))
    }

    /// Cuts the file to what was written and returns its summary.
    fn finish(mut self, reused: bool) -> Result<UndoSummary> {
        self.summary.file_len = self.pos;
        // A file longer than this save (a spare, or a last zero entry's padding) keeps only
        // what the journal will vouch for. Shorter or equal, as when one pipeline commits
        // similar changes again, nothing is freed or allocated.
        if self.out.len().map_err(Error::io("stat", self.path))? > self.pos {
            self.out
                .set_len(self.pos)
                .map_err(Error::io("truncate", self.path))?;
        }
        // Which path was taken, so "never a silent full copy" can be checked: `shared`
        // bytes are reflinks of the base, `zeros` bytes needed no data, the rest were copied.
        tracing::info!(
            path = %self.path.display(),
            bytes = self.summary.bytes,
            shared = self.shared,
            zeros = self.zeros,
            reused,
            "pre-images saved"
        );
        Ok(self.summary)
    }
}

/// The spare pre-image file an earlier commit of this base kept, renamed to `path` and open
/// for writing, if there is one this process may overwrite.
///
/// Writing a file's existing blocks is about twice as fast as writing new ones where the
/// file system's free space is unallocated on the device below (a thin-provisioned virtual
/// disk under an ext4 mounted `discard`: 0.43–0.54 s against 0.85–1.09 s per 256 MiB on the
/// benchmark machine), and nothing has to be freed when the commit ends. Whatever the
/// spare holds is stale: each entry's checksum covers this transaction's id, and the
/// journal vouches only for what this save writes.
///
/// The spare sits in a directory other users may write to, so it is trusted only as the
/// pre-image files themselves are: renamed first (the name is this transaction's from then
/// on), then opened without following symlinks, and used only if the opened descriptor is
/// a regular file with one link, mode 0600, owned by `uid` or root. Anything else under
/// the spare's name is removed, never written; a hard link to somebody's file loses only
/// that link.
fn reuse<S: Fs>(fs: &S, spare: &Path, path: &Path, uid: u32) -> Result<Option<S::File>> {
    let lstat = |p| fs.metadata(p).map_err(Error::io("stat", p));
    if !lstat(spare)?.is_some_and(|m| m.kind == storage::FileKind::File) {
        return Ok(None);
    }
    if let Err(e) = fs.rename(spare, path) {
        tracing::debug!(path = %spare.display(), error = %e, "spare pre-image file not used");
        return Ok(None);
    }
    let trusted = match lstat(path)? {
        Some(m) if m.kind == storage::FileKind::File => match fs.open(path, true) {
            Ok(f) => {
                let opened = f.stat().map_err(Error::io("stat", path))?;
                let same = (opened.dev, opened.ino) == (m.dev, m.ino);
                (same && crate::trust::untrusted_file(&opened, uid).is_none()).then_some(f)
            }
            Err(_) => None,
        },
        _ => None,
    };
    if trusted.is_none() {
        tracing::warn!(path = %spare.display(), "an untrustworthy spare pre-image file was removed");
        if crate::files::remove_if_exists(fs, path).is_err() {
            // Swapped for a directory after the check: put it back rather than fail.
            fs.rename(path, spare).map_err(Error::io("rename", path))?;
        }
    }
    Ok(trusted)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;

    use storage::OsFs;

    use super::*;
    use crate::preimage::test_util::{save_ranges, tx, uid};
    use crate::preimage::verify;

    /// Saves 8 KiB of a base of 0x5a bytes into `b.undo` of `dir`, with `b.spare` as the spare.
    fn save_with_spare(dir: &Path) -> (UndoSummary, PathBuf) {
        let base = OsFs.create_new(&dir.join("b.img")).unwrap();
        base.write_all_at(&[0x5a; 16384], 0).unwrap();
        (save_ranges(dir, 16384, &[(4096, 8192)]), dir.join("b.undo"))
    }

    #[test]
    fn a_spare_is_overwritten_in_place_and_cut_to_what_the_save_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let spare = dir.path().join("b.spare");
        std::fs::write(&spare, vec![0xee; 1 << 20]).unwrap();
        std::fs::set_permissions(&spare, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ino = std::fs::metadata(&spare).unwrap().ino();

        let (s, undo_path) = save_with_spare(dir.path());

        let undo = std::fs::metadata(&undo_path).unwrap();
        assert_eq!(undo.ino(), ino, "the spare was not reused");
        assert!(!spare.exists());
        assert_eq!(
            undo.len(),
            s.file_len,
            "stale bytes past the save were kept"
        );
        verify(&OsFs, &undo_path, &tx(), &s, uid()).unwrap();
    }

    #[test]
    fn a_spare_linked_elsewhere_or_open_to_others_is_removed_never_written() {
        for (linked, mode) in [(true, 0o600), (false, 0o644)] {
            let dir = tempfile::tempdir().unwrap();
            let spare = dir.path().join("b.spare");
            let victim = dir.path().join("victim");
            std::fs::write(&victim, vec![0xee; 1 << 20]).unwrap();
            std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(mode)).unwrap();
            if linked {
                std::fs::hard_link(&victim, &spare).unwrap();
            } else {
                std::fs::copy(&victim, &spare).unwrap();
            }
            let ino = std::fs::metadata(&spare).unwrap().ino();

            let (s, undo_path) = save_with_spare(dir.path());

            // A removed spare's inode number may come back for the new file: its mode shows.
            let undo = std::fs::metadata(&undo_path).unwrap();
            assert!(undo.ino() != ino || !linked, "the hard link was written");
            assert_eq!(undo.mode() & 0o777, 0o600);
            assert!(
                !spare.exists(),
                "the untrusted spare was left (linked {linked})"
            );
            assert_eq!(std::fs::read(&victim).unwrap(), vec![0xee; 1 << 20]);
            verify(&OsFs, &undo_path, &tx(), &s, uid()).unwrap();
        }
    }

    #[test]
    fn a_spare_that_is_no_regular_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let spare = dir.path().join("b.spare");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &spare).unwrap();

        let (s, undo_path) = save_with_spare(dir.path());

        assert!(std::fs::symlink_metadata(&spare).unwrap().is_symlink());
        assert!(!dir.path().join("elsewhere").exists());
        verify(&OsFs, &undo_path, &tx(), &s, uid()).unwrap();
    }

    #[test]
    fn zero_runs_cut_at_whole_grains_and_merge_neighbours() {
        let g = ZERO_GRAIN;
        let mut data = vec![0u8; 5 * g + 100];
        data[0] = 1; // grain 0 data
        data[3 * g + 5] = 1; // grain 3 data, grains 1-2 zeros, grain 4 and the tail zeros

        assert_eq!(
            zero_runs(&data),
            [
                (0, g, false),
                (g, 3 * g, true),
                (3 * g, 4 * g, false),
                (4 * g, 5 * g + 100, true)
            ]
        );
        assert_eq!(zero_runs(&[7; 100]), [(0, 100, false)]);
        assert!(zero_runs(&[]).is_empty());
    }

    #[test]
    fn entry_data_starts_on_a_block_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let base = OsFs.create_new(&dir.path().join("b.img")).unwrap();
        base.write_all_at(&[3; 3 * 4096], 0).unwrap();

        let s = save_ranges(dir.path(), 3 * 4096, &[(0, 100), (4096, 8192)]);

        let raw = std::fs::read(dir.path().join("b.undo")).unwrap();
        assert_eq!(&raw[..8], MAGIC);
        // Entry 1: header at 16, data at 4096; entry 2: header at 4196, data at 8192.
        assert_eq!(&raw[4096..4196], &[3; 100]);
        assert_eq!(&raw[8192..16384], &[3; 8192]);
        assert_eq!(s.file_len, 16384);
    }
}
