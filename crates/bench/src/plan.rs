//! What a scenario writes: the list of guest writes an overlay receives, as qemu-io commands.
//!
//! The list is computed once from a seed and replayed into every overlay (the pristine one that
//! qemu-img commits, and each overlay `imgtx begin` creates), so all contestants commit the
//! same changes laid out the same way.

use splitmix::SplitMix64;

/// The qcow2 default cluster size, the unit of every change.
pub const CLUSTER: u64 = 64 * 1024;

/// Largest single write, in clusters (4 MiB).
const MAX_WRITE_CLUSTERS: u64 = 64;

/// One guest write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// Guest offset in bytes, cluster-aligned.
    pub offset: u64,
    /// Length in bytes, a multiple of [`CLUSTER`].
    pub len: u64,
    /// `Some(byte)` fills the range with that byte, `None` writes a zero range (`write -z`).
    pub pattern: Option<u8>,
}

impl Op {
    /// The qemu-io command that performs this write.
    pub fn qemu_io_command(&self) -> String {
        match self.pattern {
            Some(byte) => format!("write -P {byte} {} {}", self.offset, self.len),
            None => format!("write -z {} {}", self.offset, self.len),
        }
    }
}

/// A scenario's writes and how much of the disk they change.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Writes in the order they are replayed.
    pub ops: Vec<Op>,
    /// Distinct guest bytes changed (overlapping writes counted once).
    pub changed_bytes: u64,
}

/// Writes of 64 KiB to 4 MiB at random cluster-aligned offsets until `target` distinct bytes
/// have changed. Sizes are log-uniform so small writes are as common as big ones (a uniform
/// size would leave only a few hundred mostly-large writes); one write in eight is a zero range.
pub fn scattered(disk_size: u64, target: u64, seed: u64) -> Plan {
    let clusters = disk_size / CLUSTER;
    let mut rng = SplitMix64::new(seed);
    let mut touched = vec![false; clusters as usize];
    let mut changed = 0u64;
    let mut ops = Vec::new();
    while changed * CLUSTER < target {
        let low = 1u64 << rng.below(7);
        let n = (low + rng.below(low)).min(MAX_WRITE_CLUSTERS);
        let first = rng.below(clusters - n + 1);
        let pattern = if rng.below(8) == 0 {
            None
        } else {
            Some(1 + rng.below(255) as u8)
        };
        for flag in &mut touched[first as usize..(first + n) as usize] {
            if !*flag {
                *flag = true;
                changed += 1;
            }
        }
        ops.push(Op {
            offset: first * CLUSTER,
            len: n * CLUSTER,
            pattern,
        });
    }
    Plan {
        ops,
        changed_bytes: changed * CLUSTER,
    }
}

/// `count` distinct single-cluster data writes in random order: the worst case for metadata
/// walks (`status`, `diff`), since no two changed clusters need be adjacent.
pub fn single_clusters(disk_size: u64, count: u64, seed: u64) -> Plan {
    let clusters = disk_size / CLUSTER;
    assert!(count <= clusters, "more changed clusters than the disk has");
    let mut rng = SplitMix64::new(seed);
    let mut index: Vec<u64> = (0..clusters).collect();
    // Partial Fisher-Yates: the first `count` slots end up a uniform random sample.
    for i in 0..count {
        let j = i + rng.below(clusters - i);
        index.swap(i as usize, j as usize);
    }
    let ops = index[..count as usize]
        .iter()
        .map(|&c| Op {
            offset: c * CLUSTER,
            len: CLUSTER,
            pattern: Some(1 + rng.below(255) as u8),
        })
        .collect();
    Plan {
        ops,
        changed_bytes: count * CLUSTER,
    }
}

/// Byte ranges of a sparse base that must hold data: with a plan, every range it writes,
/// widened to whole MiB; and `extra` random 4 MiB ranges (which the plan's writes may or
/// may not touch). Without a plan the writes land wherever the base is a hole: a guest
/// filling its free space. Sorted and merged.
pub fn base_regions(disk_size: u64, plan: Option<&Plan>, extra: u64, seed: u64) -> Vec<(u64, u64)> {
    const MIB: u64 = 1 << 20;
    const EXTRA_LEN: u64 = 4 * MIB;
    let mut rng = SplitMix64::new(seed ^ 0x5eed_ba5e);
    let mut ranges: Vec<(u64, u64)> = plan
        .map_or(&[][..], |p| &p.ops)
        .iter()
        .map(|op| {
            let start = op.offset / MIB * MIB;
            let end = (op.offset + op.len).div_ceil(MIB) * MIB;
            (start, end.min(disk_size))
        })
        .collect();
    for _ in 0..extra {
        let start = rng.below(disk_size / EXTRA_LEN) * EXTRA_LEN;
        ranges.push((start, start + EXTRA_LEN));
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn scattered_reaches_target_with_bounded_aligned_writes() {
        let plan = scattered(GIB, 256 << 20, 1);

        assert!(plan.changed_bytes >= 256 << 20);
        assert!(plan.changed_bytes < (256 << 20) + (4 << 20));
        assert!(plan.ops.iter().all(|op| op.offset % CLUSTER == 0
            && (CLUSTER..=4 << 20).contains(&op.len)
            && op.offset + op.len <= GIB));
        assert!(plan.ops.iter().any(|op| op.pattern.is_none()));
    }

    #[test]
    fn scattered_is_deterministic_per_seed() {
        let (a, b) = (scattered(GIB, 64 << 20, 9), scattered(GIB, 64 << 20, 9));

        assert_eq!(a.ops, b.ops);
    }

    #[test]
    fn single_clusters_are_distinct() {
        let plan = single_clusters(GIB, 1000, 3);

        let mut offsets: Vec<u64> = plan.ops.iter().map(|op| op.offset).collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), 1000);
    }

    #[test]
    fn base_regions_cover_every_write_and_are_merged() {
        let plan = scattered(16 * GIB, 64 << 20, 2);

        let regions = base_regions(16 * GIB, Some(&plan), 8, 2);

        assert!(regions.windows(2).all(|w| w[0].1 < w[1].0));
        assert!(plan.ops.iter().all(|op| regions
            .iter()
            .any(|&(s, e)| s <= op.offset && op.offset + op.len <= e)));
    }

    #[test]
    fn qemu_io_commands_use_pattern_or_zero() {
        let data = Op {
            offset: 65536,
            len: 131072,
            pattern: Some(7),
        };
        let zero = Op {
            offset: 0,
            len: 65536,
            pattern: None,
        };

        assert_eq!(data.qemu_io_command(), "write -P 7 65536 131072");
        assert_eq!(zero.qemu_io_command(), "write -z 0 65536");
    }
}
