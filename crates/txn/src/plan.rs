//! What a commit will do, computed from the overlay's map before any I/O on the base.
//!
//! A [`Plan`] is pure data: the changed guest ranges and the lengths before and after. It is
//! journaled as part of the intent, so recovery redoes exactly what the commit planned, and
//! unit tests assert on it without any I/O. Carrying it out is the job of the engine's `apply` module.

use std::path::Path;

use serde::{Deserialize, Serialize};
use storage::Fs;

use crate::error::{Error, Result};
use crate::id::TxId;
use crate::manifest::Format;
use crate::overlay::Reader;

/// A range of bytes of one file or image: `len` bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteRange {
    /// Where it starts.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
}

impl ByteRange {
    /// `len` bytes from `offset`.
    pub fn new(offset: u64, len: u64) -> Self {
        Self { offset, len }
    }

    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// How one changed guest range reaches the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Copy the overlay's guest data (stored or compressed clusters).
    Copy,
    /// Make the range read as zeros.
    Zero,
}

/// One changed guest range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Guest offset (equal to the base offset for raw bases).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// What to do.
    pub action: Action,
}

/// Every change a commit makes to one base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The base length (raw) or virtual size (qcow2) before the commit.
    pub old_len: u64,
    /// The overlay's virtual size.
    pub virtual_size: u64,
    /// Changed ranges, sorted and not overlapping.
    pub steps: Vec<Step>,
}

impl Plan {
    /// The plan for the overlay map `extents` over a base of `old_len` bytes.
    pub fn from_map(old_len: u64, virtual_size: u64, extents: &[qcow::Extent]) -> Self {
        let mut steps: Vec<Step> = Vec::new();
        for e in extents {
            let action = match e.kind {
                qcow::ExtentKind::Unallocated => continue,
                qcow::ExtentKind::Zero => Action::Zero,
                // Stored and compressed clusters alike are copied through the reader.
                _ => Action::Copy,
            };
            if e.len == 0 {
                continue;
            }
            let offset = e.guest.0;
            match steps.last_mut() {
                Some(last)
                    if last.action == action
                        && last.offset.checked_add(last.len) == Some(offset) =>
                {
                    last.len += e.len;
                }
                _ => steps.push(Step {
                    offset,
                    len: e.len,
                    action,
                }),
            }
        }
        Self {
            old_len,
            virtual_size,
            steps,
        }
    }

    /// The base length after a raw commit: a base grows to the overlay's size, never shrinks.
    pub fn new_len(&self) -> u64 {
        self.old_len.max(self.virtual_size)
    }

    /// Total changed bytes.
    pub fn changed_bytes(&self) -> u64 {
        self.steps
            .iter()
            .map(|s| s.len)
            .fold(0, u64::saturating_add)
    }

    /// Guest ranges the commit writes.
    pub fn ranges(&self) -> Vec<ByteRange> {
        self.steps
            .iter()
            .map(|s| ByteRange::new(s.offset, s.len))
            .collect()
    }

    /// The existing base bytes a raw commit overwrites: every step clipped to the old length.
    /// Bytes past the old length need no pre-image: undo truncates them away.
    pub fn raw_preimage_ranges(&self) -> Vec<ByteRange> {
        self.steps
            .iter()
            .filter(|s| s.offset < self.old_len)
            .map(|s| {
                let end = s.offset.saturating_add(s.len).min(self.old_len);
                ByteRange::new(s.offset, end - s.offset)
            })
            .collect()
    }
}

/// Splits `ranges` into pieces of at most `max` bytes.
pub fn chunks(ranges: &[ByteRange], max: u64) -> impl Iterator<Item = ByteRange> + '_ {
    ranges.iter().flat_map(move |r| {
        let n = r.len.div_ceil(max.max(1));
        let (offset, len) = (r.offset, r.len);
        (0..n).map(move |i| {
            let start = offset + i * max;
            ByteRange::new(start, max.min(offset + len - start))
        })
    })
}

/// The plan for the overlay `ov` (at `ov_path`, of transaction `tx`) over the base `base`
/// of format `format`, whose length is `base_len` if raw; a qcow2 base's virtual size is
/// read from the base itself.
pub(crate) fn for_overlay<S: Fs>(
    fs: &S,
    tx: &TxId,
    (ov, ov_path): (&S::File, &Path),
    (base, base_len, format): (&Path, u64, Format),
) -> Result<Plan> {
    let damaged = |source| Error::OverlayDamaged {
        path: ov_path.to_path_buf(),
        tx: tx.clone(),
        what: "its cluster map cannot be read",
        source: Box::new(source),
    };
    let img = qcow::Image::open(Reader(ov)).map_err(damaged)?;
    let map = img.map().map_err(damaged)?;
    let old_len = match format {
        Format::Raw => base_len,
        Format::Qcow2 => {
            let b = fs.open(base, false).map_err(Error::io("open", base))?;
            let base_img = qcow::Image::open(Reader(&b)).map_err(Error::qcow(base))?;
            base_img.header().virtual_size
        }
    };
    Ok(Plan::from_map(old_len, img.header().virtual_size, &map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qcow::{Extent, ExtentKind, GuestOffset, HostOffset};

    fn ext(guest: u64, len: u64, kind: ExtentKind) -> Extent {
        Extent {
            guest: GuestOffset(guest),
            len,
            kind,
        }
    }

    #[test]
    fn unallocated_ranges_are_left_out_and_neighbours_merge() {
        let map = [
            ext(
                0,
                10,
                ExtentKind::Data {
                    host: HostOffset(100),
                },
            ),
            ext(
                10,
                10,
                ExtentKind::Data {
                    host: HostOffset(500),
                },
            ),
            ext(20, 10, ExtentKind::Unallocated),
            ext(30, 5, ExtentKind::Zero),
            ext(35, 5, ExtentKind::Zero),
        ];
        let plan = Plan::from_map(40, 40, &map);
        assert_eq!(
            plan.steps,
            vec![
                Step {
                    offset: 0,
                    len: 20,
                    action: Action::Copy
                },
                Step {
                    offset: 30,
                    len: 10,
                    action: Action::Zero
                },
            ]
        );
        assert_eq!(plan.changed_bytes(), 30);
    }

    #[test]
    fn preimages_are_clipped_to_the_old_length() {
        let map = [
            ext(0, 10, ExtentKind::Unallocated),
            ext(
                10,
                30,
                ExtentKind::Data {
                    host: HostOffset(0),
                },
            ),
        ];
        let plan = Plan::from_map(20, 40, &map);
        assert_eq!(plan.raw_preimage_ranges(), vec![ByteRange::new(10, 10)]);
        assert_eq!(plan.new_len(), 40);
    }

    #[test]
    fn a_smaller_overlay_never_shrinks_the_base() {
        let plan = Plan::from_map(100, 50, &[]);
        assert_eq!(plan.new_len(), 100);
        assert!(plan.raw_preimage_ranges().is_empty());
    }

    #[test]
    fn chunks_cover_each_range_exactly() {
        let got: Vec<_> = chunks(&[ByteRange::new(5, 25), ByteRange::new(100, 4)], 10)
            .map(|r| (r.offset, r.len))
            .collect();
        assert_eq!(got, vec![(5, 10), (15, 10), (25, 5), (100, 4)]);
    }
}
