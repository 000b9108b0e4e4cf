//! Pre-images: every base byte range a commit can overwrite, saved before the commit point
//! ([`save`]) so that recovery can check them ([`verify`]) and put the base back bit for
//! bit ([`restore`]).
//!
//! Layout of the pre-image file (`.NAME.ID.imgtx.undo`; all integers little-endian): a
//! 16-byte header `IMGTXUN4` + old base length, then entries of `offset u64, len u64, data
//! crc32 u32, header crc32 u32`, zeros up to the next multiple of 4 KiB, and `len` bytes of
//! data. The header crc also covers the transaction id, so an entry from another
//! transaction's file can never validate. Each entry holds at most [`crate::apply::CHUNK`]
//! bytes.
//!
//! A run of 64 KiB grains that read as zeros (a hole of a sparse base, or written zeros) is
//! saved as its header alone, with `ZEROS` set in `len` and no data: restoring it makes
//! the range read as zeros again. Raw images are usually sparse and guests often write into
//! their free space, so this is a common pre-image, and it costs no data write at all.
//!
//! The data is block-aligned so that, where the file system can share blocks (XFS, btrfs),
//! an aligned range is not copied at all: the pre-image file gets a reflink of the base's
//! blocks (`File::clone_range_from`), which the base's later writes leave alone. Such an
//! entry is saved without reading the base: `CLONED` is set in its `len` and its data
//! crc is 0, unchecked. Its integrity rests on the clone: shared blocks are never written in
//! place (a write to either file gets blocks of its own), so they cannot be torn or changed
//! through the base; and like every entry it is durable before the journal vouches for it.
//! Restoring shares the blocks back where it can.
//!
//! A commit that ends well keeps its file as the base's spare (`layout::spare`), which the
//! next commit overwrites in place instead of writing a new file. Version 3 files
//! (`IMGTXUN3`: no reflinked entries), version 2 files (`IMGTXUN2`: no zero entries) and
//! version 1 files (`IMGTXUN1`: data right after each entry header) are still read, for
//! commits an older imgtx left to recover.
//!
//! What the journal says about a pre-image file (its length, entries and bytes) is the
//! [`UndoSummary`](crate::record::UndoSummary) of its `Undo` record.

mod format;
mod restore;
mod save;

use std::path::Path;

use storage::File;

pub(crate) use restore::{for_each_saved, restore, summarize, verify};
pub(crate) use save::save;

use crate::error::{Error, Result};
use crate::manifest::Format;
use crate::overlay::Reader;
use crate::plan::{ByteRange, Plan};

/// The base byte ranges a commit of `plan` can overwrite in the base `base` (at `path`, of
/// `format`), and the base's current length.
///
/// Raw: the plan's extents clipped to the base's length. qcow2: the qcow2 inventory of the
/// host ranges `qemu-img commit` can write (metadata and data clusters). Bytes past the
/// current end need no pre-image: restoring the length drops them.
pub(crate) fn ranges<F: File>(
    base: &F,
    path: &Path,
    format: Format,
    plan: &Plan,
) -> Result<(u64, Vec<ByteRange>)> {
    let len = base.len().map_err(Error::io("stat", path))?;
    let ranges = match format {
        Format::Raw => plan.raw_preimage_ranges(),
        Format::Qcow2 => {
            let img = qcow::Image::open(Reader(base)).map_err(Error::qcow(path))?;
            let guest: Vec<(qcow::GuestOffset, u64)> = plan
                .ranges()
                .into_iter()
                .map(|r| (qcow::GuestOffset(r.offset), r.len))
                .collect();
            let inv = img.inventory(&guest).map_err(Error::qcow(path))?;
            inv.ranges
                .iter()
                .filter(|r| r.offset.0 < len)
                .map(|r| ByteRange::new(r.offset.0, r.len.min(len - r.offset.0)))
                .collect()
        }
    };
    Ok((len, ranges))
}

#[cfg(test)]
mod test_util {
    use std::path::Path;

    use storage::{Fs, OsFs};

    use super::save;
    use crate::id::TxId;
    use crate::plan::ByteRange;
    use crate::record::UndoSummary;

    pub(super) fn uid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    /// The transaction every pre-image test saves for.
    pub(super) fn tx() -> TxId {
        TxId::parse("tx-0123456789").unwrap()
    }

    /// Saves `ranges` (offset, len) of `dir/b.img` (`old_len` long) into `dir/b.undo` for
    /// [`tx`], with `dir/b.spare` as the spare.
    pub(super) fn save_ranges(dir: &Path, old_len: u64, ranges: &[(u64, u64)]) -> UndoSummary {
        let fs = OsFs;
        let base_path = dir.join("b.img");
        let base = fs.open(&base_path, false).unwrap();
        let ranges: Vec<ByteRange> = ranges.iter().map(|&(o, l)| ByteRange::new(o, l)).collect();
        let (s, _) = save(
            &fs,
            &base,
            (&base_path, &dir.join("b.undo"), &dir.join("b.spare")),
            (&tx(), uid()),
            (old_len, &ranges),
            &mut |_| Ok(()),
        )
        .unwrap();
        s
    }
}
