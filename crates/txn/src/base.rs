//! The base image: deciding its format once, checking it is still the file (and the
//! content version) a transaction began on, and opening the very inode that was checked.
//!
//! Nothing here writes a base; [`crate::apply`] and [`crate::preimage`] do, through the
//! descriptors opened here.

use std::path::Path;

use storage::{File, Fs};

use crate::error::{Error, Result};
use crate::id::TxId;
use crate::manifest::{DevIno, FileId, Format, ImageEntry};
use crate::overlay::Reader;

/// Opens the base `path` and checks that the descriptor is the inode `dev_ino` the
/// transaction was begun on: the name may have been checked earlier, but what gets written
/// is the descriptor, and the name may have been swapped in between.
pub(crate) fn open<S: Fs>(
    fs: &S,
    tx: &TxId,
    (path, dev_ino): (&Path, DevIno),
    writable: bool,
) -> Result<S::File> {
    let base = fs.open(path, writable).map_err(Error::io("open", path))?;
    let opened = base.stat().map_err(Error::io("stat", path))?;
    if DevIno::of(&opened) != dev_ino {
        return Err(Error::BaseChanged {
            path: path.to_path_buf(),
            tx: tx.clone(),
            what: "it was replaced by another file while being opened".to_owned(),
        });
    }
    Ok(base)
}

/// Refuses `base` with [`Error::RecoveryNeeded`] when a journal of an interrupted commit lies
/// beside it, or a pre-image file whose journal is gone (which may be the only way back).
pub(crate) fn check_no_interrupted<S: Fs>(fs: &S, base: &Path) -> Result<()> {
    let journal = crate::txjournal::beside(fs, base)?.into_iter().next();
    let interrupted = match journal {
        Some(tx) => Some(tx),
        None => crate::txjournal::strays_beside(fs, base)?
            .into_iter()
            .next(),
    };
    match interrupted {
        Some(tx) => Err(Error::RecoveryNeeded {
            path: base.to_path_buf(),
            tx,
        }),
        None => Ok(()),
    }
}

/// Refuses with [`Error::BaseChanged`] when the base of `img` is no longer the file, size
/// and modification time begin recorded.
pub(crate) fn check_unchanged<S: Fs>(fs: &S, tx: &TxId, img: &ImageEntry) -> Result<()> {
    let meta = fs
        .metadata(&img.base)
        .map_err(Error::io("stat", &img.base))?;
    let changed = match meta {
        None => Some("it no longer exists".to_owned()),
        Some(now) => img.base_id.difference(&FileId::of(&now)),
    };
    match changed {
        None => Ok(()),
        Some(what) => Err(Error::BaseChanged {
            path: img.base.clone(),
            tx: tx.clone(),
            what,
        }),
    }
}

/// The format of `base` and its virtual size. Without a stated format, a file is qcow2
/// only if it has the magic and parses as a qcow2 image without a backing file; a file
/// with the magic that does not parse is ambiguous and refused, never guessed.
pub(crate) fn decide_format<S: Fs>(
    fs: &S,
    base: &Path,
    stated: Option<Format>,
) -> Result<(Format, u64)> {
    let f = fs.open(base, false).map_err(Error::io("open", base))?;
    let len = f.len().map_err(Error::io("stat", base))?;
    let mut magic = [0u8; 4];
    let has_magic =
        len >= 4 && f.read_exact_at(&mut magic, 0).is_ok() && qcow::has_qcow2_magic(&magic);
    if stated == Some(Format::Raw) && has_magic {
        warn_if_qcow2(&f, base);
    }
    if stated == Some(Format::Raw) || (stated.is_none() && !has_magic) {
        return Ok((Format::Raw, len));
    }
    let img = match qcow::Image::open(Reader(&f)) {
        Ok(img) => img,
        Err(source) if stated.is_none() => {
            return Err(Error::AmbiguousFormat {
                path: base.to_path_buf(),
                source,
            })
        }
        Err(source) => return Err(Error::qcow(base)(source)),
    };
    if let Some(backing) = &img.header().backing_file {
        return Err(Error::InvalidBase {
            path: base.to_path_buf(),
            reason: format!(
                "it is a qcow2 image with a backing file of its own ({backing}), and imgtx \
                 commits only into images without one; flatten it first (`qemu-img convert -O qcow2` into a \
                 new file) or begin on the image at the bottom of the chain"
            ),
        });
    }
    Ok((Format::Qcow2, img.header().virtual_size))
}

/// Warns when `base`, stated to be raw, is in fact a well-formed qcow2 image: treating its
/// bytes as a disk is right for a raw disk a guest wrote a qcow2 image onto, and a slip of
/// the hand otherwise, which shows only when the guest finds no file system.
fn warn_if_qcow2<F: File>(f: &F, base: &Path) {
    if let Ok(img) = qcow::Image::open(Reader(f)) {
        let backing = img.header().backing_file.as_deref().unwrap_or("none");
        tracing::warn!(
            base = %base.display(),
            backing_file = backing,
            "treating as raw, as stated, what reads as a qcow2 image: the transaction edits the qcow2 file's own bytes, not the disk it holds"
        );
    }
}
