//! Reading pre-images back: checking a pre-image file against what its journal says
//! ([`verify`]) and writing the saved ranges back into the base ([`restore`]).
//!
//! Everything is verified before anything is written, so a damaged file changes nothing.

use std::path::Path;

use storage::{File, Fs};

use super::format::{
    data_at, entry_crc, CLONED, ENTRY_HEADER, HEADER, MAGIC, MAGIC_V1, MAGIC_V2, MAGIC_V3, ZEROS,
};
use crate::apply::CHUNK;
use crate::error::{Error, Result};
use crate::id::TxId;
use crate::record::UndoSummary;

/// Opens the pre-image file `path` for reading, refusing it unless the opened descriptor
/// passes the trust rule for user `uid`: the name may have been checked before, but it
/// could have been swapped since.
fn open_trusted<S: Fs>(fs: &S, path: &Path, uid: u32) -> Result<S::File> {
    let f = fs
        .open(path, false)
        .map_err(Error::io("open the pre-image file", path))?;
    let opened = f.stat().map_err(Error::io("stat", path))?;
    if let Some(why) = crate::trust::untrusted_file(&opened, uid) {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("refused: {why}"),
        });
    }
    Ok(f)
}

/// One entry of a pre-image file, as its header says.
struct Entry {
    offset: u64,
    len: u64,
    crc: u32,
    data_at: u64,
    /// The range read as zeros; nothing is stored at `data_at`.
    zeros: bool,
    /// The data is a reflink of the base's old blocks, saved without being read: it has no
    /// checksum.
    cloned: bool,
}

/// The entries of a whole pre-image file of transaction `tx`, each with its header checked;
/// and the old base length its header holds. The data is not read.
fn parse<F: File>(f: &F, path: &Path, tx: &TxId) -> Result<(u64, Vec<Entry>)> {
    let bad = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let len = f.len().map_err(Error::io("stat", path))?;
    let mut header = [0u8; 16];
    f.read_exact_at(&mut header, 0)
        .map_err(Error::io("read", path))?;
    let version = match &header[..8] {
        m if m == MAGIC => 4,
        m if m == MAGIC_V3 => 3,
        m if m == MAGIC_V2 => 2,
        m if m == MAGIC_V1 => 1,
        _ => return Err(bad("it is not a pre-image file".into())),
    };
    let old_len = u64::from_le_bytes(header[8..].try_into().unwrap_or([0; 8]));
    let mut out = Vec::new();
    let mut pos = HEADER;
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
        // Before version 3 (4) the flag is just an impossible length, refused below.
        let zeros = version >= 3 && n & ZEROS != 0;
        let cloned = version >= 4 && !zeros && n & CLONED != 0;
        if cloned {
            n &= !CLONED;
        }
        let (at, end) = if zeros {
            n &= !ZEROS;
            (Some(pos), pos.checked_add(ENTRY_HEADER))
        } else {
            let at = data_at(pos, version >= 2);
            (at, at.and_then(|a| a.checked_add(n)))
        };
        let fits = offset.checked_add(n).is_some_and(|e| e <= old_len);
        match (at, end) {
            (Some(data_at), Some(end)) if end <= len && n <= CHUNK && fits => {
                out.push(Entry {
                    offset,
                    len: n,
                    crc,
                    data_at,
                    zeros,
                    cloned,
                });
                pos = end;
            }
            _ => return Err(bad(format!("the entry at {pos:#x} has impossible bounds"))),
        }
    }
    Ok((old_len, out))
}

/// The entries of the pre-image file, checked against what the journal says of it.
fn entries<F: File>(f: &F, path: &Path, tx: &TxId, s: &UndoSummary) -> Result<Vec<Entry>> {
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
    let (old_len, out) = parse(f, path, tx)?;
    if old_len != s.old_len {
        return Err(bad("its header does not match the journal".into()));
    }
    let bytes: u64 = out.iter().map(|e| e.len).sum();
    if out.len() as u64 != s.entries || bytes != s.bytes {
        return Err(bad("it does not hold what the journal says".into()));
    }
    Ok(out)
}

/// What a journal would say of the pre-image file at `path` of transaction `tx`, read from
/// the file alone (opened under the trust rule for user `uid`): for a file whose journal is
/// gone. Every entry's header is checked; [`verify`] with the result checks the data too.
pub(crate) fn summarize<S: Fs>(fs: &S, path: &Path, tx: &TxId, uid: u32) -> Result<UndoSummary> {
    let f = open_trusted(fs, path, uid)?;
    let (old_len, entries) = parse(&f, path, tx)?;
    Ok(UndoSummary {
        old_len,
        entries: entries.len() as u64,
        bytes: entries.iter().map(|e| e.len).sum(),
        file_len: f.len().map_err(Error::io("stat", path))?,
    })
}

/// Reads every saved range of the pre-image file in order, checks its checksum, and hands it
/// to `each` (a zero entry with no data); a range that fails its checksum is `Corrupt` with
/// the reason `bad` gives.
///
/// The file is opened under the trust rule for user `uid` (see [`open_trusted`]).
fn for_each_checked<S: Fs>(
    fs: &S,
    path: &Path,
    (tx, uid): (&TxId, u32),
    summary: &UndoSummary,
    (bad, read_cloned): (impl Fn(&Entry) -> String, bool),
    mut each: impl FnMut(&Entry, &[u8]) -> Result<()>,
) -> Result<()> {
    let f = open_trusted(fs, path, uid)?;
    let mut buf = Vec::new();
    for e in entries(&f, path, tx, summary)? {
        if e.zeros || (e.cloned && !read_cloned) {
            each(&e, &[])?;
            continue;
        }
        buf.resize(usize::try_from(e.len).unwrap_or(0), 0);
        f.read_exact_at(&mut buf, e.data_at)
            .map_err(Error::io("read", path))?;
        if !e.cloned && crc32fast::hash(&buf) != e.crc {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: bad(&e),
            });
        }
        each(&e, &buf)?;
    }
    Ok(())
}

/// Hands every saved range of the pre-image file to `each`, in order, as (offset, length,
/// old content), the content `None` for a range that read as zeros; every range passed its
/// checksum first. The file is opened under the trust rule for user `uid`.
pub(crate) fn for_each_saved<S: Fs>(
    fs: &S,
    path: &Path,
    (tx, uid): (&TxId, u32),
    summary: &UndoSummary,
    mut each: impl FnMut(u64, u64, Option<&[u8]>) -> Result<()>,
) -> Result<()> {
    for_each_checked(
        fs,
        path,
        (tx, uid),
        summary,
        (
            |e: &Entry| format!("the data at {:#x} fails its checksum", e.data_at),
            true,
        ),
        |e, data| each(e.offset, e.len, (!e.zeros).then_some(data)),
    )
}

/// Checks that the pre-image file is whole and matches `summary`, reading it all.
/// `uid` is the user the file must belong to (or root), as for journals.
pub(crate) fn verify<S: Fs>(
    fs: &S,
    path: &Path,
    tx: &TxId,
    summary: &UndoSummary,
    uid: u32,
) -> Result<()> {
    for_each_checked(
        fs,
        path,
        (tx, uid),
        summary,
        (
            |e: &Entry| format!("the data at {:#x} fails its checksum", e.data_at),
            false,
        ),
        |_, _| Ok(()),
    )
}

/// Puts the saved ranges back into `base`, restores its old length and syncs it; `restored`
/// hears the bytes written back so far after each entry. Verifies everything first, so a
/// damaged file changes nothing. Idempotent.
pub(crate) fn restore<S: Fs>(
    fs: &S,
    (path, base, base_path): (&Path, &S::File, &Path),
    tx: &TxId,
    summary: &UndoSummary,
    uid: u32,
    restored: &mut dyn FnMut(u64),
) -> Result<()> {
    verify(fs, path, tx, summary, uid)?;
    if base.len().map_err(Error::io("stat", base_path))? < summary.old_len {
        base.set_len(summary.old_len)
            .map_err(Error::io("restore the length of", base_path))?;
        // Barrier: the old length is durable before anything is written back past the
        // current end, which would extend the file too: a crash that kept such a write but
        // lost the growth would leave a length that is neither old nor new.
        base.sync_data().map_err(Error::io("sync", base_path))?;
    }
    // Cloned entries are shared back where the file system can, else read and written.
    let file = open_trusted(fs, path, uid)?;
    let mut share = true;
    let mut buf = Vec::new();
    let mut done = 0;
    for_each_checked(
        fs,
        path,
        (tx, uid),
        summary,
        (|_: &Entry| "it changed while being read".into(), false),
        |e, data| {
            let write = |data: &[u8]| base.write_all_at(data, e.offset);
            if e.zeros {
                // A hole again where the file system can, which is also what it most
                // likely was.
                base.zero_range(e.offset, e.len)
            } else if !e.cloned {
                write(data)
            } else if share
                && base
                    .clone_range_from(&file, e.data_at, e.offset, e.len)
                    .is_ok()
            {
                Ok(())
            } else {
                share = false;
                buf.resize(usize::try_from(e.len).unwrap_or(0), 0);
                file.read_exact_at(&mut buf, e.data_at)
                    .map_err(Error::io("read", path))?;
                write(&buf)
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
    use std::path::Path;

    use storage::OsFs;

    use super::*;
    use crate::plan::ByteRange;
    use crate::preimage::save;
    use crate::preimage::test_util::{save_ranges, tx, uid};

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
            (&tx(), uid()),
            (
                100_000,
                &[ByteRange::new(10, 500), ByteRange::new(90_000, 10_000)],
            ),
            &mut |n| {
                saved.push(n);
                Ok(())
            },
        )
        .unwrap();

        base.write_all_at(&[0xab; 20_000], 85_000).unwrap();
        base.write_all_at(&[0xcd; 100], 0).unwrap();
        let mut restored = Vec::new();
        restore(
            &fs,
            (&undo_path, &base, &base_path),
            &tx(),
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
        let tx = &tx();
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
            &tx(),
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
        assert!(verify(&OsFs, &d.join("b.undo"), &tx(), &s, uid()).is_err());
    }

    #[test]
    fn a_file_of_another_transaction_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let undo_path = dir.path().join("b.undo");
        let base = OsFs.create_new(&dir.path().join("b.img")).unwrap();
        base.write_all_at(&[7; 4096], 0).unwrap();
        let s = save_ranges(dir.path(), 4096, &[(0, 4096)]);
        let other = TxId::parse("tx-aaaaaaaaaa").unwrap();
        assert!(verify(&OsFs, &undo_path, &other, &s, 0).is_err());
        assert!(verify(&OsFs, &undo_path, &tx(), &s, 0).is_ok());
    }
}
