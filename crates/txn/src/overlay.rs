//! Checking that an overlay is exactly the one `begin` created, before trusting its content;
//! and [`Reader`], through which the qcow2 reader reads any seam file.

use std::path::Path;

use storage::{File, FileKind, Fs};

use crate::error::{Error, Result};
use crate::id::TxId;
use crate::manifest::{DevIno, Format};

/// Positional reads of a seam file, for the qcow2 reader.
pub(crate) struct Reader<'a, F>(pub &'a F);

impl<F: File> qcow::ReadAt for Reader<'_, F> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }

    fn allocated_len(&self) -> std::io::Result<Option<u64>> {
        Ok(Some(self.0.stat()?.allocated))
    }
}

/// Opens the overlay of `base` read-only after checking it is the regular file with the
/// recorded (device, inode), and that its header names exactly `base` and `base_format` as
/// written at begin. The header check is what stops a tampered overlay from pointing the
/// commit at another file.
pub(crate) fn open_checked<S: Fs>(
    fs: &S,
    tx: &TxId,
    (overlay, dev_ino): (&Path, Option<DevIno>),
    (base, base_format): (&Path, Format),
) -> Result<S::File> {
    let bad = |reason: String| Error::OverlayInvalid {
        path: overlay.to_path_buf(),
        tx: tx.clone(),
        reason,
    };
    let damaged = |what: &'static str| {
        move |source| Error::OverlayDamaged {
            path: overlay.to_path_buf(),
            tx: tx.clone(),
            what,
            source: Box::new(source),
        }
    };
    let meta = fs.metadata(overlay).map_err(Error::io("stat", overlay))?;
    let meta = meta.ok_or_else(|| bad("it does not exist".into()))?;
    if meta.kind != FileKind::File {
        return Err(bad("it is not a regular file".into()));
    }
    if dev_ino.is_some_and(|di| di != DevIno::of(&meta)) {
        return Err(bad("it was replaced by another file".into()));
    }
    let file = fs
        .open(overlay, false)
        .map_err(Error::io("open", overlay))?;
    // The name may have been swapped between the lstat above and the open: only what the
    // descriptor itself reports says which file is read.
    let opened = file.stat().map_err(Error::io("stat", overlay))?;
    if opened.kind != FileKind::File || DevIno::of(&opened) != DevIno::of(&meta) {
        return Err(bad(
            "it was replaced by another file while being opened".into()
        ));
    }
    if opened.nlink != 1 {
        return Err(bad(format!(
            "it has {} links, so others may write it through another name",
            opened.nlink
        )));
    }
    {
        let img =
            qcow::Image::open(Reader(&file)).map_err(damaged("it is not a valid qcow2 image"))?;
        let h = img.header();
        if h.backing_file.as_deref() != base.to_str() {
            return Err(bad(
                "its backing file is not the base it was created over".into()
            ));
        }
        if h.backing_format.as_deref() != Some(base_format.as_str()) {
            return Err(bad(format!(
                "its backing format is not {}",
                base_format.as_str()
            )));
        }
        // A compressed cluster is decoded only when copied, after the commit point, where
        // a cluster that fails to decode would stop the commit with the base half written
        // (a fuzzer finding). Decode each one now, in bounded memory, and refuse instead.
        let map = img
            .map()
            .map_err(damaged("its cluster map cannot be read"))?;
        for e in map
            .iter()
            .filter(|e| e.kind == qcow::ExtentKind::Compressed)
        {
            img.read_extent(e, 1 << 20, |_, _| Ok(()))
                .map_err(damaged("a compressed cluster cannot be read"))?;
        }
    }
    Ok(file)
}
