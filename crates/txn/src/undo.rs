//! The pre-image file: every base byte range a commit can overwrite, saved before the
//! commit point so recovery can put the base back bit for bit.
//!
//! Layout (all integers little-endian): a 16-byte header `IMGTXUN2` + old base length, then
//! entries of `offset u64, len u64, data crc32 u32, header crc32 u32`, zeros up to the next
//! multiple of 4 KiB, and `len` bytes of data. The header crc also covers the transaction
//! id, so an entry from another transaction's file can never validate. Each entry holds at
//! most [`CHUNK`] bytes.
//!
//! The data is block-aligned so that, where the file system can share blocks (XFS, btrfs),
//! an aligned range is not copied at all: the pre-image file gets a reflink of the base's
//! blocks (`File::clone_range_from`), which the base's later writes leave alone. The first
//! refusal (ext4, or two file systems) switches the rest of the save to copying, and the
//! save logs which it did. The data is read either way, for its checksum. Version 1 files
//! (`IMGTXUN1`: data right after each entry header) are still read, for commits an older
//! imgtx left to recover.

use std::path::Path;

use storage::copy::{read_ahead, Piece, Stopped};
use storage::{File, Fs};

use crate::error::{Error, Result};
use crate::plan::chunks;
use crate::record::UndoSummary;

const MAGIC: &[u8; 8] = b"IMGTXUN2";
const MAGIC_V1: &[u8; 8] = b"IMGTXUN1";
const HEADER: u64 = 16;
const ENTRY_HEADER: u64 = 24;
/// Where a version 2 entry's data starts: a multiple of this.
const DATA_ALIGN: u64 = 4096;

/// Where the data of the entry whose header is at `pos` starts.
fn data_at(pos: u64, v2: bool) -> Option<u64> {
    let after = pos.checked_add(ENTRY_HEADER)?;
    if v2 {
        after.checked_next_multiple_of(DATA_ALIGN)
    } else {
        Some(after)
    }
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

/// Saves `ranges` of `base` (whose length is `old_len`) into a new file at `path`, durably;
/// `saved` hears the bytes saved so far after each piece. Returns the file still open, so
/// its last close can be handed off (see [`crate::release`]).
pub fn save<S: Fs>(
    fs: &S,
    base: &S::File,
    (base_path, path): (&Path, &Path),
    tx: &str,
    (old_len, ranges): (u64, &[(u64, u64)]),
    saved: &mut dyn FnMut(u64),
) -> Result<(UndoSummary, S::File)> {
    // A leftover from an attempt that died before its summary was journaled is worthless.
    crate::state::remove_if_exists(fs, path)?;
    let out = fs
        .create_new(path)
        .map_err(Error::io("create the pre-image file", path))?;
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
    // Reflinks are tried until the file system first refuses one; `shared` counts their bytes.
    let (mut share, mut shared) = (true, 0u64);
    let copied = read_ahead(base, pieces, READ_AHEAD, |piece, data| {
        let (offset, len) = (piece.offset, data.len() as u64);
        let mut head = Vec::with_capacity(24);
        head.extend_from_slice(&offset.to_le_bytes());
        head.extend_from_slice(&len.to_le_bytes());
        head.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        let c = entry_crc(&head, tx);
        head.extend_from_slice(&c.to_le_bytes());
        out.write_all_at(&head, pos)
            .map_err(Error::io("write", path))?;
        let at = data_at(pos, true)
            .ok_or_else(|| Error::Invalid("the pre-image file would be too large".into()))?;
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
        summary.entries += 1;
        summary.bytes += len;
        saved(summary.bytes);
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
    // Which path was taken, so "never a silent full copy" can be checked: `shared` bytes are
    // reflinks of the base, the rest were copied.
    tracing::info!(path = %path.display(), bytes = summary.bytes, shared, "pre-images saved");
    // Barrier: the pre-images must be durable (data and directory entry) before the journal
    // says they are, and that must precede the commit point and any write to the base.
    out.sync_data().map_err(Error::io("sync", path))?;
    let dir = crate::layout::dir_of(path)?;
    fs.sync_dir(dir).map_err(Error::io("sync", dir))?;
    Ok((summary, out))
}

struct Entry {
    offset: u64,
    len: u64,
    crc: u32,
    data_at: u64,
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
    let v2 = &header[..8] == MAGIC;
    if !(v2 || &header[..8] == MAGIC_V1) || header[8..] != s.old_len.to_le_bytes() {
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
        let (offset, n) = (field(0), field(8));
        let crc = u32::from_le_bytes(head[16..20].try_into().unwrap_or([0; 4]));
        let hcrc = u32::from_le_bytes(head[20..24].try_into().unwrap_or([0; 4]));
        if entry_crc(&head[..20], tx) != hcrc {
            return Err(bad(format!("the entry at {pos:#x} fails its checksum")));
        }
        let at = data_at(pos, v2);
        let end = at.and_then(|a| a.checked_add(n));
        let fits = offset.checked_add(n).is_some_and(|e| e <= s.old_len);
        match (at, end) {
            (Some(data_at), Some(end)) if end <= len && n <= CHUNK && fits => {
                out.push(Entry {
                    offset,
                    len: n,
                    crc,
                    data_at,
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
/// to `each`; a range that fails its checksum is `Corrupt` with the reason `bad` gives.
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
            base.write_all_at(data, e.offset)
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
    use storage::OsFs;

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
            (&base_path, &undo_path),
            "tx-0123456789",
            (100_000, &[(10, 500), (90_000, 10_000)]),
            &mut |n| saved.push(n),
        )
        .unwrap();

        base.write_all_at(&[0xab; 20_000], 85_000).unwrap();
        base.write_all_at(&[0xcd; 100], 0).unwrap();
        let mut restored = Vec::new();
        restore(
            &fs,
            (&undo_path, &base, &base_path),
            "tx-0123456789",
            &s,
            0,
            &mut |n| restored.push(n),
        )
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
        let tx = "tx-0123456789";
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

    #[test]
    fn version_2_data_starts_on_a_block_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let base_path = dir.path().join("b.img");
        let undo_path = dir.path().join("b.undo");
        let fs = OsFs;
        let base = fs.create_new(&base_path).unwrap();
        base.write_all_at(&[3; 3 * 4096], 0).unwrap();

        let (s, _) = save(
            &fs,
            &base,
            (&base_path, &undo_path),
            "tx-0123456789",
            (3 * 4096, &[(0, 100), (4096, 8192)]),
            &mut |_| {},
        )
        .unwrap();

        let raw = std::fs::read(&undo_path).unwrap();
        assert_eq!(&raw[..8], MAGIC);
        // Entry 1: header at 16, data at 4096; entry 2: header at 4196, data at 8192.
        assert_eq!(&raw[4096..4196], &[3; 100]);
        assert_eq!(&raw[8192..16384], &[3; 8192]);
        assert_eq!(s.file_len, 16384);
    }

    #[test]
    fn a_file_of_another_transaction_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base_path = dir.path().join("b.img");
        let undo_path = dir.path().join("b.undo");
        let fs = OsFs;
        let base = fs.create_new(&base_path).unwrap();
        base.write_all_at(&[7; 4096], 0).unwrap();
        let (s, _) = save(
            &fs,
            &base,
            (&base_path, &undo_path),
            "tx-0123456789",
            (4096, &[(0, 4096)]),
            &mut |_| {},
        )
        .unwrap();
        assert!(verify(&fs, &undo_path, "tx-aaaaaaaaaa", &s, 0).is_err());
        assert!(verify(&fs, &undo_path, "tx-0123456789", &s, 0).is_ok());
    }
}
