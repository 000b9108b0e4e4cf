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
