//! Keeping a history file aside whole, where an append would otherwise have to cut or rewrite
//! it: a file that ends in bytes that do not verify, and a format-1 file being converted.
//!
//! Both go the same way, under the history lock:
//!
//! 1. The whole file is copied to `history.aside.tmp`, synced, and given its kept name,
//!    `history.damaged-STAMP` or `history.v1-STAMP` (a link, then the temporary name is
//!    removed), and the directory is synced. Nothing writes to the kept file again. (A copy,
//!    not a second link to `history` itself: the state directory's trust rule refuses a
//!    `history` with two links, and must go on refusing one.)
//! 2. The continuation is built in `history.tmp`: for a damaged file, the bytes that verified
//!    (copied as they are, with the same nonce) and a record naming the kept file; for a
//!    format-1 file, a genesis naming it and its entries. It is synced.
//! 3. `history.tmp` is renamed over `history`, and the directory is synced.
//!
//! A crash before step 3 leaves `history` as it was, so the next append does it again: it
//! finds the copy of step 1 by its length and SHA-256 and reuses it, and starts the
//! temporary files over. Recovery removes temporary files a crash left. A crash after step
//! 3 leaves the new history. Readers open `history` by name and see either file, whole.
//!
//! A damaged tail is kept aside whether a crash tore the last append or someone edited the
//! last entry: the two cannot be told apart from the bytes (a torn sector may hold garbage),
//! so neither is thrown away and neither is called tampering; the record in the chain says
//! what was found, and `verify` reports it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use storage::{File, Fs};

use super::chain::{CarriedOver, ChainHash, Genesis, Item, KeptAside};
use super::entry::{EntryV1, HistoryEntry};
use super::file::{append_link, link_to, salt, ChainJournal, IDENTITY_V2};
use crate::error::{Error, Result};
use crate::files::{remove_if_exists, sync_dir};

/// Keeps the history `path`, whose first `valid_len` bytes verify and whose last
/// `tail_bytes` do not, aside whole, and continues it in a new file: those `valid_len` bytes,
/// then a record naming the kept file.
pub(super) fn keep_damaged<S: Fs>(
    fs: &S,
    path: &Path,
    (valid_len, tail_bytes): (u64, u64),
    now: &str,
) -> Result<()> {
    let dir = dir_of(path);
    let (kept, sha256) = keep_copy(fs, path, "damaged", now)?;
    let kept_path = dir.join(&kept);
    let tmp = tmp_of(path);
    remove_if_exists(fs, &tmp)?;
    copy_prefix(fs, &kept_path, &tmp, valid_len)?;
    // The copy ends exactly after its last valid record, so strict replay accepts it; opening
    // pads it to a block boundary if needed and syncs.
    let (mut j, replay) =
        ChainJournal::<S::File>::open_with(fs, &tmp, journal::RecoveryMode::AbsoluteConsistency)
            .map_err(Error::journal(&tmp))?;
    let record = KeptAside {
        file: kept.clone(),
        sha256,
        valid_len,
        tail_bytes,
        when: now.to_owned(),
    };
    link_to(&mut j, &replay.records, Item::KeptAside(record), now)
        .and_then(|_| j.sync())
        .map_err(Error::journal(&tmp))?;
    drop(j);
    replace(fs, &tmp, path)?;
    tracing::warn!(
        history = %path.display(),
        kept = %kept_path.display(),
        bytes = tail_bytes,
        "the history ended in bytes that do not verify (an append a crash interrupted, or an \
         edit); the whole file was kept aside and the history goes on after its last good entry"
    );
    Ok(())
}

/// Converts the format-1 history `path` to a chained one: the file is kept aside whole, and
/// the new history starts with a genesis naming it, followed by its entries.
pub(super) fn convert_v1<S: Fs>(fs: &S, path: &Path, now: &str) -> Result<()> {
    // Damage before the tail is refused here, and nothing is changed.
    let replay = journal::read::<S, EntryV1>(fs, path).map_err(Error::journal(path))?;
    let damaged_tail = match replay.tail {
        journal::Tail::Clean => 0,
        journal::Tail::Torn { discarded, .. } => discarded,
    };
    let dir = dir_of(path);
    let (kept, sha256) = keep_copy(fs, path, "v1", now)?;
    let kept_path = dir.join(&kept);
    let tmp = tmp_of(path);
    remove_if_exists(fs, &tmp)?;
    let mut j =
        ChainJournal::<S::File>::create(fs, &tmp, IDENTITY_V2).map_err(Error::journal(&tmp))?;
    let genesis = Genesis {
        salt: salt(),
        created: now.to_owned(),
        carried_over: Some(CarriedOver {
            file: kept.clone(),
            sha256,
            entries: replay.records.len() as u64,
            damaged_tail,
            when: now.to_owned(),
        }),
    };
    let entries = replay.records.into_iter().map(HistoryEntry::from);
    let appended = (|| {
        let mut prev = append_link(&mut j, ChainHash::ZERO, Item::Genesis(genesis))?;
        for entry in entries {
            prev = append_link(&mut j, prev, Item::Entry(entry))?;
        }
        j.sync()
    })();
    appended.map_err(Error::journal(&tmp))?;
    drop(j);
    replace(fs, &tmp, path)?;
    tracing::info!(
        history = %path.display(),
        kept = %kept_path.display(),
        "the history was converted to the chained format; the old file is kept as it was"
    );
    Ok(())
}

/// Keeps a copy of the whole file `path` in its directory as `NAME.KIND-STAMP`, durably, and
/// returns that name with the copy's SHA-256: an existing copy with the same bytes, when an
/// earlier attempt made one.
fn keep_copy<S: Fs>(fs: &S, path: &Path, kind: &str, now: &str) -> Result<(String, String)> {
    let dir = dir_of(path);
    let len = file_len(fs, path)?;
    let sha256 = sha256_of(fs, path)?;
    let base = path
        .file_name()
        .map_or_else(|| "history".into(), |n| n.to_string_lossy().into_owned());
    let prefix = format!("{base}.{kind}-");
    // Under the history lock, a copy under way is one a crash interrupted.
    let partial = partial_of(path);
    if remove_if_exists(fs, &partial)? {
        sync_dir(fs, &dir)?;
    }
    for name in fs.read_dir(&dir).map_err(Error::io("list", &dir))? {
        let name = name.to_string_lossy().into_owned();
        if !name.starts_with(&prefix) {
            continue;
        }
        let other = dir.join(&name);
        if file_len(fs, &other).ok() == Some(len) && sha256_of(fs, &other)? == sha256 {
            return Ok((name, sha256));
        }
    }
    copy_prefix(fs, path, &partial, len)?;
    let kept = sha256_of(fs, &partial)?;
    // `2026-11-27T10:15:00Z` → `20261127T101500Z`: sortable, and no `:` in file names.
    let stamp: String = now.chars().filter(|c| !matches!(c, '-' | ':')).collect();
    for n in 0u32.. {
        let name = match n {
            0 => format!("{prefix}{stamp}"),
            n => format!("{prefix}{stamp}-{n}"),
        };
        // A link never replaces a file of that name, as a rename would.
        match fs.hard_link(&partial, &dir.join(&name)) {
            Ok(()) => {
                remove_if_exists(fs, &partial)?;
                // Barrier: the kept copy is durable under its name before `history` is
                // replaced.
                sync_dir(fs, &dir)?;
                return Ok((name, kept));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("keep aside", dir.join(&name))(e)),
        }
    }
    unreachable!("some numbered name is free")
}

fn file_len<S: Fs>(fs: &S, path: &Path) -> Result<u64> {
    fs.metadata(path)
        .map_err(Error::io("stat", path))?
        .map(|m| m.len)
        .ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            reason: "it disappeared while it was being kept aside".into(),
        })
}

/// Copies the first `len` bytes of `from` into the new file `to`, durably.
fn copy_prefix<S: Fs>(fs: &S, from: &Path, to: &Path, len: u64) -> Result<()> {
    let src = fs.open(from, false).map_err(Error::io("open", from))?;
    let dst = fs.create_new(to).map_err(Error::io("create", to))?;
    for_each_chunk(&src, from, len, |chunk, off| {
        dst.write_all_at(chunk, off).map_err(Error::io("write", to))
    })?;
    // Barrier: the copy is durable before the journal opens it and appends after it.
    dst.sync_data().map_err(Error::io("sync", to))
}

/// SHA-256 of the whole file `path`, in hexadecimal.
fn sha256_of<S: Fs>(fs: &S, path: &Path) -> Result<String> {
    let f = fs.open(path, false).map_err(Error::io("open", path))?;
    let len = f.len().map_err(Error::io("stat", path))?;
    let mut h = Sha256::new();
    for_each_chunk(&f, path, len, |chunk, _| {
        h.update(chunk);
        Ok(())
    })?;
    Ok(ChainHash(h.finalize().into()).to_string())
}

/// Reads the first `len` bytes of `f` (at `path`) in order, a MiB at a time, handing each
/// piece and its offset to `each`.
fn for_each_chunk<F: File>(
    f: &F,
    path: &Path,
    len: u64,
    mut each: impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = Vec::new();
    let mut off = 0;
    while off < len {
        let n = CHUNK.min(len - off);
        // At most CHUNK: the conversion cannot truncate.
        buf.resize(n as usize, 0);
        f.read_exact_at(&mut buf, off)
            .map_err(Error::io("read", path))?;
        each(&buf, off)?;
        off += n;
    }
    Ok(())
}

/// Renames the finished continuation `tmp` over `path`, durably.
fn replace<S: Fs>(fs: &S, tmp: &Path, path: &Path) -> Result<()> {
    fs.rename(tmp, path)
        .map_err(Error::io("rename into place", path))?;
    // Barrier: the new history is durable under its name before the append that needed it.
    sync_dir(fs, &dir_of(path))
}

pub(super) fn dir_of(path: &Path) -> PathBuf {
    path.parent().map_or_else(PathBuf::new, Path::to_path_buf)
}

/// Where the continuation of `path` is built.
pub(super) fn tmp_of(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Where the copy of `path` to keep aside is made.
pub(super) fn partial_of(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".aside.tmp");
    PathBuf::from(tmp)
}
