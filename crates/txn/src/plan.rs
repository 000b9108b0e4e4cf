//! What a commit will do, computed from the overlay's map before any I/O on the base.

use serde::{Deserialize, Serialize};

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

    /// Guest ranges the commit writes, as (offset, len).
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.steps.iter().map(|s| (s.offset, s.len)).collect()
    }

    /// The existing base bytes a raw commit overwrites: every step clipped to the old length.
    /// Bytes past the old length need no pre-image: undo truncates them away.
    pub fn raw_preimage_ranges(&self) -> Vec<(u64, u64)> {
        self.steps
            .iter()
            .filter(|s| s.offset < self.old_len)
            .map(|s| {
                let end = s.offset.saturating_add(s.len).min(self.old_len);
                (s.offset, end - s.offset)
            })
            .collect()
    }
}

/// Splits `(offset, len)` ranges into pieces of at most `max` bytes.
pub fn chunks(ranges: &[(u64, u64)], max: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    ranges.iter().flat_map(move |&(offset, len)| {
        let n = len.div_ceil(max.max(1));
        (0..n).map(move |i| {
            let start = offset + i * max;
            (start, max.min(offset + len - start))
        })
    })
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
        assert_eq!(plan.raw_preimage_ranges(), vec![(10, 10)]);
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
        let got: Vec<_> = chunks(&[(5, 25), (100, 4)], 10).collect();
        assert_eq!(got, vec![(5, 10), (15, 10), (25, 5), (100, 4)]);
    }
}
