//! Keeping a history file aside whole, where an append would otherwise have to cut or rewrite
//! it: a file that ends in bytes that do not verify, and a format-1 file being converted.
//!
//! Both go the same way, under the history lock:
//!
//! 1. The file gets a second name, `history.damaged-STAMP` or `history.v1-STAMP`, by a hard
//!    link, and the directory is synced. From then on that name holds the file exactly as it
//!    was: nothing writes to it again.
//! 2. The continuation is built in `history.tmp`: for a damaged file, the bytes that verified
//!    (copied as they are, with the same nonce) and a record naming the kept file; for a
//!    format-1 file, a genesis naming it and its entries. It is synced.
//! 3. `history.tmp` is renamed over `history`, and the directory is synced.
//!
//! A crash before step 3 leaves `history` as it was, so the next append does it again; it
//! finds the name of step 1 by the inode and reuses it, and removes the half-made
//! `history.tmp`. A crash after it leaves the new history. Readers open `history` by name
//! and see either file, whole.
//!
//! A damaged tail is kept aside whether a crash tore the last append or someone edited the
//! last entry: the two cannot be told apart from the bytes (a torn sector may hold garbage),
//! so neither is thrown away and neither is called tampering; the record in the chain says
//! what was found, and `verify` reports it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use storage::{File, Fs};

use super::chain::{CarriedOver, ChainHash, Genesis, Item, KeptAside};
use super::{ChainJournal, EntryV1, HistoryEntry, IDENTITY_V2};
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
    let kept = link_aside(fs, path, "damaged", now)?;
    let kept_path = dir.join(&kept);
    let sha256 = sha256_of(fs, &kept_path)?;
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
    super::link_to(&mut j, &replay.records, Item::KeptAside(record), now)
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
    let kept = link_aside(fs, path, "v1", now)?;
    let kept_path = dir.join(&kept);
    let sha256 = sha256_of(fs, &kept_path)?;
    let tmp = tmp_of(path);
    remove_if_exists(fs, &tmp)?;
    let mut j =
        ChainJournal::<S::File>::create(fs, &tmp, IDENTITY_V2).map_err(Error::journal(&tmp))?;
    let genesis = Genesis {
        salt: super::salt(),
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
        let mut prev = super::append_link(&mut j, ChainHash::ZERO, Item::Genesis(genesis))?;
        for entry in entries {
            prev = super::append_link(&mut j, prev, Item::Entry(entry))?;
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

/// Gives the file `path` a second name `NAME.KIND-STAMP` in its directory, durably, and
/// returns that name: the one it already has, when an earlier attempt gave it one.
fn link_aside<S: Fs>(fs: &S, path: &Path, kind: &str, now: &str) -> Result<String> {
    let dir = dir_of(path);
    let meta = fs
        .metadata(path)
        .map_err(Error::io("stat", path))?
        .ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            reason: "it disappeared while it was being kept aside".into(),
        })?;
    let base = path
        .file_name()
        .map_or_else(|| "history".into(), |n| n.to_string_lossy().into_owned());
    let prefix = format!("{base}.{kind}-");
    for name in fs.read_dir(&dir).map_err(Error::io("list", &dir))? {
        let name = name.to_string_lossy().into_owned();
        if !name.starts_with(&prefix) {
            continue;
        }
        let other = fs
            .metadata(&dir.join(&name))
            .map_err(Error::io("stat", dir.join(&name)))?;
        if other.is_some_and(|m| (m.dev, m.ino) == (meta.dev, meta.ino)) {
            return Ok(name);
        }
    }
    // `2026-11-27T10:15:00Z` → `20261127T101500Z`: sortable, and no `:` in file names.
    let stamp: String = now.chars().filter(|c| !matches!(c, '-' | ':')).collect();
    for n in 0u32.. {
        let name = match n {
            0 => format!("{prefix}{stamp}"),
            n => format!("{prefix}{stamp}-{n}"),
        };
        match fs.hard_link(path, &dir.join(&name)) {
            Ok(()) => {
                // Barrier: the kept name is durable before `history` stops naming the file.
                sync_dir(fs, &dir)?;
                return Ok(name);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("keep aside", dir.join(&name))(e)),
        }
    }
    unreachable!("some numbered name is free")
}

/// Copies the first `len` bytes of `from` into the new file `to`, durably.
fn copy_prefix<S: Fs>(fs: &S, from: &Path, to: &Path, len: u64) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let src = fs.open(from, false).map_err(Error::io("open", from))?;
    let dst = fs.create_new(to).map_err(Error::io("create", to))?;
    let mut buf = Vec::new();
    let mut off = 0;
    while off < len {
        let n = CHUNK.min(len - off);
        // At most CHUNK: the conversion cannot truncate.
        buf.resize(n as usize, 0);
        src.read_exact_at(&mut buf, off)
            .map_err(Error::io("read", from))?;
        dst.write_all_at(&buf, off)
            .map_err(Error::io("write", to))?;
        off += n;
    }
    // Barrier: the copy is durable before the journal opens it and appends after it.
    dst.sync_data().map_err(Error::io("sync", to))
}

/// SHA-256 of the whole file `path`, in hexadecimal.
fn sha256_of<S: Fs>(fs: &S, path: &Path) -> Result<String> {
    const CHUNK: u64 = 1 << 20;
    let f = fs.open(path, false).map_err(Error::io("open", path))?;
    let len = f.len().map_err(Error::io("stat", path))?;
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    let mut off = 0;
    while off < len {
        let n = CHUNK.min(len - off);
        buf.resize(n as usize, 0);
        f.read_exact_at(&mut buf, off)
            .map_err(Error::io("read", path))?;
        h.update(&buf);
        off += n;
    }
    Ok(ChainHash(h.finalize().into()).to_string())
}

/// Renames the finished continuation `tmp` over `path`, durably.
fn replace<S: Fs>(fs: &S, tmp: &Path, path: &Path) -> Result<()> {
    fs.rename(tmp, path)
        .map_err(Error::io("rename into place", path))?;
    // Barrier: the new history is durable under its name before the append that needed it.
    sync_dir(fs, &dir_of(path))
}

fn dir_of(path: &Path) -> PathBuf {
    path.parent().map_or_else(PathBuf::new, Path::to_path_buf)
}

fn tmp_of(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}
