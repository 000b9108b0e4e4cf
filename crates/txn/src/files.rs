//! Small file operations the engine repeats everywhere: remove if present, read a small
//! file whole, remove and make the removal durable.
//!
//! They work through the [`storage::Fs`] seam like everything else; they know nothing of
//! what the files mean.

use std::path::Path;

use storage::{File, FileKind, Fs};

use crate::error::{Error, Result};

/// Removes a file; a missing file is fine. True when something was removed.
pub(crate) fn remove_if_exists<S: Fs>(fs: &S, path: &Path) -> Result<bool> {
    match fs.remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", path)(e)),
    }
}

/// Removes a file if present and, if it was, makes that durable by syncing `dir`, the
/// directory that held it.
pub(crate) fn remove_durably<S: Fs>(fs: &S, path: &Path, dir: &Path) -> Result<bool> {
    let removed = remove_if_exists(fs, path)?;
    if removed {
        sync_dir(fs, dir)?;
    }
    Ok(removed)
}

/// Syncs directory `dir`.
pub(crate) fn sync_dir<S: Fs>(fs: &S, dir: &Path) -> Result<()> {
    fs.sync_dir(dir).map_err(Error::io("sync", dir))
}

/// True when something has the name `path` (a dangling symlink counts).
pub(crate) fn exists<S: Fs>(fs: &S, path: &Path) -> Result<bool> {
    Ok(fs
        .metadata(path)
        .map_err(Error::io("stat", path))?
        .is_some())
}

/// Reads a small regular file whole; `Ok(None)` when missing.
pub(crate) fn read_small<S: Fs>(fs: &S, path: &Path) -> Result<Option<Vec<u8>>> {
    const MAX: u64 = 16 << 20;
    let Some(meta) = fs.metadata(path).map_err(Error::io("stat", path))? else {
        return Ok(None);
    };
    if meta.kind != FileKind::File || meta.len > MAX {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: "not a small regular file".into(),
        });
    }
    let f = match fs.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path)(e)),
    };
    let len = f.len().map_err(Error::io("stat", path))?.min(MAX);
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    f.read_exact_at(&mut buf, 0)
        .map_err(Error::io("read", path))?;
    Ok(Some(buf))
}

/// Puts `bytes` under `path` (in directory `dir`) atomically and durably: written to `tmp`,
/// synced, renamed over `path`, directory synced. A crash leaves the old content or the new,
/// and at worst a leftover `tmp` that the next call replaces.
pub(crate) fn replace_durably<S: Fs>(
    fs: &S,
    (dir, path, tmp): (&Path, &Path, &Path),
    bytes: &[u8],
) -> Result<()> {
    remove_if_exists(fs, tmp)?;
    let f = fs.create_new(tmp).map_err(Error::io("create", tmp))?;
    f.write_all_at(bytes, 0).map_err(Error::io("write", tmp))?;
    // Barrier: the content is durable before the rename can make it visible, or a crash
    // could leave the name pointing at an empty file.
    f.sync_data().map_err(Error::io("sync", tmp))?;
    drop(f);
    fs.rename(tmp, path)
        .map_err(Error::io("rename into place", path))?;
    // Barrier: the rename itself is durable only once the directory is synced.
    sync_dir(fs, dir)
}

/// Reads as much of `buf` as the file holds at `offset`; how much that was (less than
/// `buf.len()` only at the end of the file).
pub(crate) fn read_up_to<F: File>(f: &F, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}
