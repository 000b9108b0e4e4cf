//! The pre-image file: every base byte range a commit can overwrite, saved before the
//! commit point so recovery can put the base back bit for bit.
//!
//! Layout (all integers little-endian): a 16-byte header `IMGTXUN3` + old base length, then
//! entries of `offset u64, len u64, data crc32 u32, header crc32 u32`, zeros up to the next
//! multiple of 4 KiB, and `len` bytes of data. The header crc also covers the transaction
//! id, so an entry from another transaction's file can never validate. Each entry holds at
//! most [`CHUNK`] bytes.
//!
//! A run of 64 KiB grains that read as zeros (a hole of a sparse base, or written zeros) is
//! saved as its header alone, with [`ZEROS`] set in `len` and no data: restoring it makes
//! the range read as zeros again. Raw images are usually sparse and guests often write into
//! their free space, so this is a common pre-image, and it costs no data write at all.
//!
//! The data is block-aligned so that, where the file system can share blocks (XFS, btrfs),
//! an aligned range is not copied at all: the pre-image file gets a reflink of the base's
//! blocks (`File::clone_range_from`), which the base's later writes leave alone. The first
//! refusal (ext4, or two file systems) switches the rest of the save to copying, and the
//! save logs which it did. The data is read either way, for its checksum.
//!
//! A commit that ends well keeps its file as the base's spare (`layout::spare`), which the
//! next commit overwrites in place instead of writing a new file ([`reuse`]). Version 2
//! files (`IMGTXUN2`: no zero entries) and version 1 files (`IMGTXUN1`: data right after
//! each entry header) are still read, for commits an older imgtx left to recover.

use std::path::Path;

use storage::copy::{read_ahead, Piece, Stopped};
use storage::{File, Fs};

use crate::error::{Error, Result};
use crate::plan::chunks;
use crate::record::UndoSummary;

const MAGIC: &[u8; 8] = b"IMGTXUN3";
const MAGIC_V2: &[u8; 8] = b"IMGTXUN2";
const MAGIC_V1: &[u8; 8] = b"IMGTXUN1";
/// Set in a version 3 entry's `len`: the range read as zeros, and no data follows.
const ZEROS: u64 = 1 << 63;
const HEADER: u64 = 16;
const ENTRY_HEADER: u64 = 24;
/// Where a version 2 or 3 entry's data starts: a multiple of this.
const DATA_ALIGN: u64 = 4096;

/// Where the data of the entry whose header is at `pos` starts.
fn data_at(pos: u64, aligned: bool) -> Option<u64> {
    let after = pos.checked_add(ENTRY_HEADER)?;
    if aligned {
        after.checked_next_multiple_of(DATA_ALIGN)
    } else {
        Some(after)
    }
}

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

/// The largest piece of data read or written at once.
pub const CHUNK: u64 = 4 << 20;
/// How many reads of up to [`CHUNK`] bytes a copy keeps in flight (a reader thread each): the
/// pre-image ranges are often small and scattered, and one read at a time left the disk
/// idle between them. Memory is `READ_AHEAD + 1` chunks. Measured on the small benchmark
/// (cold, alternating binaries, 4 runs each): 2 × 8 MiB, 4 × 4 MiB, 6 × 4 MiB and 8 × 2 MiB
/// gave default commits of 1.35–1.51, 1.18–1.45, 1.22–1.45 and 1.27–1.52 s; 4 × 4 MiB is
/// as fast as any and peaks at 38 MiB RSS instead of 46.
pub const READ_AHEAD: usize = 4;

fn entry_crc(head: &[u8], tx: &str) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(tx.as_bytes());
    h.finalize()
}

/// Saves `ranges` of `base` (whose length is `old_len`) into the file at `path`, durably;
/// `saved` hears the bytes saved so far after each piece. Returns the file still open, so
/// its last close can be handed off (see [`crate::release`]).
///
/// The file is the `spare` an earlier commit left, renamed, when there is a trustworthy one
/// (see [`reuse`]), else a new file. `uid` is the user a spare must belong to (or root).
pub fn save<S: Fs>(
    fs: &S,
    base: &S::File,
    (base_path, path, spare): (&Path, &Path, &Path),
    (tx, uid): (&str, u32),
    (old_len, ranges): (u64, &[(u64, u64)]),
    saved: &mut dyn FnMut(u64),
) -> Result<(UndoSummary, S::File)> {
    // A leftover from an attempt that died before its summary was journaled is worthless.
    crate::state::remove_if_exists(fs, path)?;
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
    let dir = crate::layout::dir_of(path)?;
    fs.sync_dir(dir).map_err(Error::io("sync", dir))?;
    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&old_len.to_le_bytes());
    out.write_all_at(&header, 0)
        .map_err(Error::io("write", path))?;
    let mut pos = HEADER;
    let mut summary = UndoSummary {
        old_len,
        entries: 0,
        bytes: 0,
        file_len: 0,
    };
    // The next pre-images are read while the current one is written, and each entry's
    // writeback starts at once, so the sync below has little left to flush.
    let pieces = chunks(ranges, CHUNK).map(|(offset, len)| Piece {
        offset,
        len: usize::try_from(len).unwrap_or(usize::MAX),
        tag: (),
        cached: false,
    });
    // Reflinks are tried until the file system first refuses one; `shared` counts their bytes,
    // `zeros` those of ranges saved as a header alone.
    let (mut share, mut shared, mut zeros) = (true, 0u64, 0u64);
    let too_large = || Error::Invalid("the pre-image file would be too large".into());
    // One entry: `data` is the old content at `offset`, all zeros when `zero`.
    let mut entry = |offset: u64, data: &[u8], zero: bool| -> Result<()> {
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
        let c = entry_crc(&head, tx);
        head.extend_from_slice(&c.to_le_bytes());
        let at = data_at(pos, true).ok_or_else(too_large)?;
        // The header with its padding, in one write: when `pos` starts a block, a spare's
        // block is then replaced whole instead of read from the disk first to be patched
        // (measured: 0.4 s of reads per 256 MiB of pre-images in 4 MiB entries). A zero
        // entry's padding is overwritten by what follows or cut off at the end.
        head.resize(usize::try_from(at - pos).unwrap_or(24), 0);
        out.write_all_at(&head, pos)
            .map_err(Error::io("write", path))?;
        summary.entries += 1;
        summary.bytes += len;
        if zero {
            pos += ENTRY_HEADER;
            zeros += len;
            saved(summary.bytes);
            return Ok(());
        }
        // Only whole blocks can be shared; the base is fenced, so its blocks still hold
        // `data`, whose checksum the header carries.
        let aligned = offset.is_multiple_of(DATA_ALIGN) && len.is_multiple_of(DATA_ALIGN);
        let mut linked = false;
        if share && aligned {
            match out.clone_range_from(base, offset, at, len) {
                Ok(()) => linked = true,
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "no reflink: copying pre-images");
                    share = false;
                }
            }
        }
        if linked {
            shared += len;
        } else {
            out.write_all_at(data, at)
                .map_err(Error::io("write", path))?;
        }
        if let Err(e) = out.start_writeback(pos, at - pos + len) {
            tracing::debug!(path = %path.display(), error = %e, "early writeback refused");
        }
        pos = at + len;
        saved(summary.bytes);
        Ok(())
    };
    let copied = read_ahead(base, pieces, READ_AHEAD, |piece, data| {
        for (start, end, zero) in zero_runs(data) {
            entry(piece.offset + start as u64, &data[start..end], zero)?;
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
    summary.file_len = pos;
    // A file longer than this save (a spare, or a last zero entry's padding) keeps only what
    // the journal will vouch for. Shorter or equal, as when one pipeline commits similar
    // changes again, nothing is freed or allocated.
    if out.len().map_err(Error::io("stat", path))? > pos {
        out.set_len(pos).map_err(Error::io("truncate", path))?;
    }
    // Which path was taken, so "never a silent full copy" can be checked: `shared` bytes are
    // reflinks of the base, `zeros` bytes were zeros and needed no data, the rest were copied.
    tracing::info!(path = %path.display(), bytes = summary.bytes, shared, zeros, reused, "pre-images saved");
    // Barrier: the pre-images must be durable (data and length; the name was synced above)
    // before the journal says they are, and that must precede the commit point and any
    // write to the base.
    out.sync_data().map_err(Error::io("sync", path))?;
    Ok((summary, out))
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
                (same && crate::recover::untrusted_file(&opened, uid).is_none()).then_some(f)
            }
            Err(_) => None,
        },
        _ => None,
    };
    if trusted.is_none() {
        tracing::warn!(path = %spare.display(), "an untrustworthy spare pre-image file was removed");
        if crate::state::remove_if_exists(fs, path).is_err() {
            // Swapped for a directory after the check: put it back rather than fail.
            fs.rename(path, spare).map_err(Error::io("rename", path))?;
        }
    }
    Ok(trusted)
}

struct Entry {
    offset: u64,
    len: u64,
    crc: u32,
    data_at: u64,
    /// The range read as zeros; nothing is stored at `data_at`.
    zeros: bool,
}

fn entries<S: Fs>(f: &S::File, path: &Path, tx: &str, s: &UndoSummary) -> Result<Vec<Entry>> {
    let bad = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let len = f.len().map_err(Error::io("stat", path))?;
    if len != s.file_len {
        return Err(bad(format!(
            "its length is {len:#x}, the journal says {:#x}",
            s.file_len
        )));
    }
    let mut header = [0u8; 16];
    f.read_exact_at(&mut header, 0)
        .map_err(Error::io("read", path))?;
    let version = match &header[..8] {
        m if m == MAGIC => 3,
        m if m == MAGIC_V2 => 2,
        m if m == MAGIC_V1 => 1,
        _ => 0,
    };
    if version == 0 || header[8..] != s.old_len.to_le_bytes() {
        return Err(bad("its header does not match the journal".into()));
    }
    let mut out = Vec::new();
    let mut pos = HEADER;
    let mut bytes = 0u64;
    while pos < len {
        let mut head = [0u8; 24];
        f.read_exact_at(&mut head, pos)
            .map_err(Error::io("read", path))?;
        let field = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap_or([0; 8]));
        let (offset, mut n) = (field(0), field(8));
        let crc = u32::from_le_bytes(head[16..20].try_into().unwrap_or([0; 4]));
        let hcrc = u32::from_le_bytes(head[20..24].try_into().unwrap_or([0; 4]));
        if entry_crc(&head[..20], tx) != hcrc {
            return Err(bad(format!("the entry at {pos:#x} fails its checksum")));
        }
        // Before version 3 the flag is just an impossible length, refused below.
        let zeros = version == 3 && n & ZEROS != 0;
        let (at, end) = if zeros {
            n &= !ZEROS;
            (Some(pos), pos.checked_add(ENTRY_HEADER))
        } else {
            let at = data_at(pos, version >= 2);
            (at, at.and_then(|a| a.checked_add(n)))
        };
        let fits = offset.checked_add(n).is_some_and(|e| e <= s.old_len);
        match (at, end) {
            (Some(data_at), Some(end)) if end <= len && n <= CHUNK && fits => {
                out.push(Entry {
                    offset,
                    len: n,
                    crc,
                    data_at,
                    zeros,
                });
                bytes += n;
                pos = end;
            }
            _ => return Err(bad(format!("the entry at {pos:#x} has impossible bounds"))),
        }
    }
    if out.len() as u64 != s.entries || bytes != s.bytes {
        return Err(bad("it does not hold what the journal says".into()));
    }
    Ok(out)
}

/// Reads every saved range of the pre-image file in order, checks its checksum, and hands it
/// to `each` (a zero entry with no data); a range that fails its checksum is `Corrupt` with
/// the reason `bad` gives.
///
/// The opened descriptor must pass the same trust check as journals for user `uid`: the name
/// may have been checked before, but it could have been swapped since (issue 6).
fn for_each_checked<S: Fs>(
    fs: &S,
    path: &Path,
    (tx, uid): (&str, u32),
    summary: &UndoSummary,
    bad: impl Fn(&Entry) -> String,
    mut each: impl FnMut(&Entry, &[u8]) -> Result<()>,
) -> Result<()> {
    let f = fs
        .open(path, false)
        .map_err(Error::io("open the pre-image file", path))?;
    let opened = f.stat().map_err(Error::io("stat", path))?;
    if let Some(why) = crate::recover::untrusted_file(&opened, uid) {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("refused: {why}"),
        });
    }
    let mut buf = Vec::new();
    for e in entries::<S>(&f, path, tx, summary)? {
        if e.zeros {
            each(&e, &[])?;
            continue;
        }
        buf.resize(usize::try_from(e.len).unwrap_or(0), 0);
        f.read_exact_at(&mut buf, e.data_at)
            .map_err(Error::io("read", path))?;
        if crc32fast::hash(&buf) != e.crc {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: bad(&e),
            });
        }
        each(&e, &buf)?;
    }
    Ok(())
}

/// Checks that the pre-image file is whole and matches `summary`, reading it all.
/// `uid` is the user the file must belong to (or root), as for journals.
pub fn verify<S: Fs>(fs: &S, path: &Path, tx: &str, summary: &UndoSummary, uid: u32) -> Result<()> {
    for_each_checked(
        fs,
        path,
        (tx, uid),
        summary,
        |e| format!("the data at {:#x} fails its checksum", e.data_at),
        |_, _| Ok(()),
    )
}

/// Puts the saved ranges back into `base`, restores its old length and syncs it; `restored`
/// hears the bytes written back so far after each entry. Verifies everything first, so a
/// damaged file changes nothing. Idempotent.
pub fn restore<S: Fs>(
    fs: &S,
    (path, base, base_path): (&Path, &S::File, &Path),
    tx: &str,
    summary: &UndoSummary,
    uid: u32,
    restored: &mut dyn FnMut(u64),
) -> Result<()> {
    verify(fs, path, tx, summary, uid)?;
    let mut done = 0;
    for_each_checked(
        fs,
        path,
        (tx, uid),
        summary,
        |_| "it changed while being read".into(),
        |e, data| {
            if e.zeros {
                // A hole again where the file system can, which is also what it most
                // likely was.
                base.zero_range(e.offset, e.len)
            } else {
                base.write_all_at(data, e.offset)
            }
            .map_err(Error::io("write the old content back into", base_path))?;
            done += e.len;
            restored(done);
            Ok(())
        },
    )?;
    base.set_len(summary.old_len)
        .map_err(Error::io("restore the length of", base_path))?;
    // Barrier: the restored base must be durable before the journal records it as applied.
    base.sync_data().map_err(Error::io("sync", base_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::PathBuf;
    use storage::OsFs;

    fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    const TX: &str = "tx-0123456789";

    /// Saves `ranges` of `dir/b.img` (`old_len` long) into `dir/b.undo` for [`TX`].
    fn save_ranges(dir: &Path, old_len: u64, ranges: &[(u64, u64)]) -> UndoSummary {
        let fs = OsFs;
        let base_path = dir.join("b.img");
        let base = fs.open(&base_path, false).unwrap();
        let spare = dir.join("b.spare");
        let (s, _) = save(
            &fs,
            &base,
            (&base_path, &dir.join("b.undo"), &spare),
            (TX, uid()),
            (old_len, ranges),
            &mut |_| {},
        )
        .unwrap();
        s
    }

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
        verify(&OsFs, &undo_path, TX, &s, uid()).unwrap();
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
            verify(&OsFs, &undo_path, TX, &s, uid()).unwrap();
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
        verify(&OsFs, &undo_path, TX, &s, uid()).unwrap();
    }

    #[test]
    fn saved_ranges_restore_the_base_bit_for_bit_including_length() {
        let dir = tempfile::tempdir().unwrap();
        let base_path = dir.path().join("b.img");
        let undo_path = dir.path().join("b.undo");
        let fs = OsFs;
        let base = fs.create_new(&base_path).unwrap();
        let old: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        base.write_all_at(&old, 0).unwrap();
        let mut saved = Vec::new();
        let (s, _) = save(
            &fs,
            &base,
            (&base_path, &undo_path, &dir.path().join("b.spare")),
            (TX, uid()),
            (100_000, &[(10, 500), (90_000, 10_000)]),
            &mut |n| saved.push(n),
        )
        .unwrap();

        base.write_all_at(&[0xab; 20_000], 85_000).unwrap();
        base.write_all_at(&[0xcd; 100], 0).unwrap();
        let mut restored = Vec::new();
        restore(&fs, (&undo_path, &base, &base_path), TX, &s, 0, &mut |n| {
            restored.push(n)
        })
        .unwrap();

        let mut now = vec![0u8; usize::try_from(base.len().unwrap()).unwrap()];
        base.read_exact_at(&mut now, 0).unwrap();
        assert_eq!(now.len(), old.len());
        assert_eq!(&now[..10], &[0xcd; 10]);
        assert_eq!(&now[10..510], &old[10..510]);
        assert_eq!(&now[90_000..], &old[90_000..]);
        assert_eq!(saved, [500, 10_500], "progress of the save, per piece");
        assert_eq!(
            restored,
            [500, 10_500],
            "progress of the restore, per entry"
        );
    }

    #[test]
    fn a_version_1_file_is_still_restored() {
        // Arrange: the layout an older imgtx wrote, data right after each entry header.
        let dir = tempfile::tempdir().unwrap();
        let base_path = dir.path().join("b.img");
        let undo_path = dir.path().join("b.undo");
        let fs = OsFs;
        let base = fs.create_new(&base_path).unwrap();
        base.write_all_at(&[9; 300], 0).unwrap();
        let tx = TX;
        let old = [5u8; 100];
        let mut file = MAGIC_V1.to_vec();
        file.extend_from_slice(&300u64.to_le_bytes());
        let mut head = Vec::new();
        head.extend_from_slice(&200u64.to_le_bytes());
        head.extend_from_slice(&100u64.to_le_bytes());
        head.extend_from_slice(&crc32fast::hash(&old).to_le_bytes());
        let c = entry_crc(&head, tx);
        head.extend_from_slice(&c.to_le_bytes());
        file.extend_from_slice(&head);
        file.extend_from_slice(&old);
        std::fs::write(&undo_path, &file).unwrap();
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(&undo_path, private).unwrap();
        let summary = UndoSummary {
            old_len: 300,
            entries: 1,
            bytes: 100,
            file_len: file.len() as u64,
        };

        // Act
        restore(
            &fs,
            (&undo_path, &base, &base_path),
            tx,
            &summary,
            nix::unistd::getuid().as_raw(),
            &mut |_| {},
        )
        .unwrap();

        // Assert
        let mut now = vec![0u8; 300];
        base.read_exact_at(&mut now, 0).unwrap();
        assert_eq!(&now[..200], &[9; 200]);
        assert_eq!(&now[200..], &old);
    }

    /// Overwrites the first `len` bytes of `dir/b.img`, restores `dir/b.undo` into it and
    /// returns what the base then holds.
    fn scribble_and_restore(dir: &Path, s: &UndoSummary, len: usize) -> Vec<u8> {
        let fs = OsFs;
        let base_path = dir.join("b.img");
        let base = fs.open(&base_path, true).unwrap();
        base.write_all_at(&vec![0xee; len], 0).unwrap();
        let undo_path = dir.join("b.undo");
        restore(
            &fs,
            (&undo_path, &base, &base_path),
            TX,
            s,
            uid(),
            &mut |_| {},
        )
        .unwrap();
        std::fs::read(&base_path).unwrap()
    }

    #[test]
    fn ranges_of_zeros_are_saved_as_headers_alone_and_restored_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = OsFs.create_new(&d.join("b.img")).unwrap();
        // 0..64K data, 64K..128K written zeros, 128K..192K a hole, 192K..256K data.
        let mut old = vec![0u8; 256 << 10];
        old[..64 << 10].fill(0x61);
        old[(192 << 10)..].fill(0x62);
        base.write_all_at(&old[..128 << 10], 0).unwrap();
        base.write_all_at(&old[192 << 10..], 192 << 10).unwrap();

        let s = save_ranges(d, 256 << 10, &[(0, 256 << 10)]);

        // Data, then one zero entry for the written zeros and the hole together, then
        // data: the zero grains cost 24 bytes of the block after the first data.
        assert_eq!((s.entries, s.bytes), (3, 256 << 10));
        assert_eq!(s.file_len, 2 * (4096 + (64 << 10)));
        assert_eq!(scribble_and_restore(d, &s, 256 << 10), old);

        // Pieces of 64 KiB: the two zero ones are an entry each.
        let small: Vec<(u64, u64)> = (0..4).map(|i| (i << 16, 1 << 16)).collect();
        base.zero_range(128 << 10, 64 << 10).unwrap();
        let s = save_ranges(d, 256 << 10, &small);
        assert_eq!((s.entries, s.bytes), (4, 256 << 10));
        assert_eq!(s.file_len, 2 * (4096 + (64 << 10)));
        assert_eq!(scribble_and_restore(d, &s, 256 << 10), old);

        // Ending on a zero entry: its padding past the header is cut off again.
        let s = save_ranges(d, 256 << 10, &small[..3]);
        assert_eq!(s.file_len, 4096 + (64 << 10) + 2 * 24);
        assert_eq!(
            std::fs::metadata(d.join("b.undo")).unwrap().len(),
            s.file_len
        );
        assert_eq!(scribble_and_restore(d, &s, 192 << 10), old);
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
    fn a_version_2_file_is_still_restored_and_knows_no_zero_entries() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = OsFs.create_new(&d.join("b.img")).unwrap();
        base.write_all_at(&[4; 8192], 0).unwrap();
        let as_version_2 = || {
            let mut raw = std::fs::read(d.join("b.undo")).unwrap();
            raw[..8].copy_from_slice(MAGIC_V2);
            std::fs::write(d.join("b.undo"), &raw).unwrap();
        };
        // A file with no zero entry is laid out as version 2 was, but for its magic.
        let s = save_ranges(d, 8192, &[(4096, 4096)]);
        as_version_2();

        let now = scribble_and_restore(d, &s, 8192);

        assert_eq!(now, [&[0xee; 4096][..], &[4; 4096]].concat());
        // The zero flag in a version 2 file is an impossible length, refused.
        base.write_all_at(&[0; 8192], 0).unwrap();
        let s = save_ranges(d, 8192, &[(4096, 4096)]);
        as_version_2();
        assert!(verify(&OsFs, &d.join("b.undo"), TX, &s, uid()).is_err());
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

    #[test]
    fn a_file_of_another_transaction_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let undo_path = dir.path().join("b.undo");
        let base = OsFs.create_new(&dir.path().join("b.img")).unwrap();
        base.write_all_at(&[7; 4096], 0).unwrap();
        let s = save_ranges(dir.path(), 4096, &[(0, 4096)]);
        assert!(verify(&OsFs, &undo_path, "tx-aaaaaaaaaa", &s, 0).is_err());
        assert!(verify(&OsFs, &undo_path, TX, &s, 0).is_ok());
    }
}
