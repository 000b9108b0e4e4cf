//! The layout of a pre-image file (see the module above for the picture): its magics,
//! header and entry sizes, where an entry's data starts, and the checksum that binds an
//! entry to its transaction.

use crate::id::TxId;

pub(super) const MAGIC: &[u8; 8] = b"IMGTXUN4";
pub(super) const MAGIC_V3: &[u8; 8] = b"IMGTXUN3";
pub(super) const MAGIC_V2: &[u8; 8] = b"IMGTXUN2";
pub(super) const MAGIC_V1: &[u8; 8] = b"IMGTXUN1";
/// Set in a version 3 or 4 entry's `len`: the range read as zeros, and no data follows.
pub(super) const ZEROS: u64 = 1 << 63;
/// Set in a version 4 entry's `len`: the data is a reflink of the base's blocks, never read
/// when saved, so its `crc` is 0 and not checked; shared blocks cannot be torn or changed
/// by anyone writing either file.
pub(super) const CLONED: u64 = 1 << 62;
pub(super) const HEADER: u64 = 16;
pub(super) const ENTRY_HEADER: u64 = 24;
/// Where a version 2 or 3 entry's data starts: a multiple of this.
pub(super) const DATA_ALIGN: u64 = 4096;

/// Where the data of the entry whose header is at `pos` starts.
pub(super) fn data_at(pos: u64, aligned: bool) -> Option<u64> {
    let after = pos.checked_add(ENTRY_HEADER)?;
    if aligned {
        after.checked_next_multiple_of(DATA_ALIGN)
    } else {
        Some(after)
    }
}

/// The checksum of an entry header's first 20 bytes, bound to transaction `tx`.
pub(super) fn entry_crc(head: &[u8], tx: &TxId) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(tx.as_str().as_bytes());
    h.finalize()
}
