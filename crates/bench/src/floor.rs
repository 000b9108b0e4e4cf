//! The write floor: the bytes a commit cannot avoid writing, written the plainest way.
//!
//! On this virtual disk writes, not reads, set the pace: reading runs alongside writing almost
//! for free, while two writers share one bandwidth (docs/performance.md, "The write floor").
//! So the least a commit can cost is the time to write what it must write. Any commit writes
//! the changed data into the base and punches the zero ranges; a commit that keeps pre-images
//! by copying (every file system without reflink) also writes their bytes first and makes
//! them durable before the base changes.
//!
//! `imgtx-bench __floor SIZE CHANGED SEED BASE [PRE_IMAGES]` does exactly that and nothing
//! else, measured like any contestant: it recomputes the scenario's changed extents from the
//! seed, optionally writes as many bytes sequentially into `PRE_IMAGES` (created if missing,
//! overwritten in place if not) and `fdatasync`s it, then writes a constant pattern over each
//! data extent of `BASE` in guest order, punches each zero extent, and `fdatasync`s the base.
//! Writes are buffered, in 4 MiB pieces, with one barrier per file: the `dd … conv=fdatasync`
//! method that measured fastest here. It reads nothing, checksums nothing and journals
//! nothing, so a contestant's distance to it is what its own work costs beyond the writes.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;

use nix::fcntl::{fallocate, FallocateFlags};

use crate::plan::{Plan, CLUSTER};
use crate::BoxResult;

/// Hidden subcommand name of the floor writer.
pub const FLOOR_ARG: &str = "__floor";

/// Size of each write.
const PIECE: usize = 4 << 20;

/// A guest range the overlay changes, after all writes: data or zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset, bytes.
    pub offset: u64,
    /// Length, bytes.
    pub len: u64,
    /// The overlay reads zeros here (a zero write was the last to touch it).
    pub zero: bool,
}

/// The final changed extents of `plan` in guest order, adjacent clusters of one kind merged.
pub fn extents(plan: &Plan, disk_size: u64) -> Vec<Extent> {
    // 0 untouched, 1 data, 2 zeros: the last write to a cluster decides.
    let mut state = vec![0u8; (disk_size / CLUSTER) as usize];
    for op in &plan.ops {
        let first = (op.offset / CLUSTER) as usize;
        let n = (op.len / CLUSTER) as usize;
        state[first..first + n].fill(if op.pattern.is_some() { 1 } else { 2 });
    }
    let mut out: Vec<Extent> = Vec::new();
    for (i, &s) in state.iter().enumerate() {
        if s == 0 {
            continue;
        }
        let offset = i as u64 * CLUSTER;
        let zero = s == 2;
        match out.last_mut() {
            Some(last) if last.zero == zero && last.offset + last.len == offset => {
                last.len += CLUSTER;
            }
            _ => out.push(Extent {
                offset,
                len: CLUSTER,
                zero,
            }),
        }
    }
    out
}

/// The arguments after [`FLOOR_ARG`] for one run.
pub fn args(size: u64, changed: u64, seed: u64, base: &Path, pre: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        FLOOR_ARG.into(),
        size.to_string().into(),
        changed.to_string().into(),
        seed.to_string().into(),
        base.into(),
    ];
    args.extend(pre.map(OsString::from));
    args
}

/// Body of the floor writer: `__floor SIZE CHANGED SEED BASE [PRE_IMAGES]`.
pub fn floor_main(args: impl Iterator<Item = OsString>) -> ExitCode {
    match floor(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imgtx-bench {FLOOR_ARG}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn floor(mut args: impl Iterator<Item = OsString>) -> BoxResult<()> {
    let mut number = |what: &str| -> BoxResult<u64> {
        let arg = args.next().ok_or(format!("missing {what}"))?;
        Ok(arg.to_str().ok_or("not a number")?.parse()?)
    };
    let size = number("size")?;
    let changed = number("changed bytes")?;
    let seed = number("seed")?;
    let base = args.next().ok_or("missing base")?;
    let pre = args.next();
    let extents = extents(&crate::plan::scattered(size, changed, seed), size);
    // Non-zero and not one repeated byte, so nothing below could special-case it.
    let buf: Vec<u8> = (0..PIECE).map(|i| (i % 251) as u8 + 1).collect();

    if let Some(pre) = pre {
        let total: u64 = extents.iter().map(|e| e.len).sum();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&pre)?;
        write_run(&file, &buf, 0, total)?;
        file.set_len(total)?;
        file.sync_data()?;
        // A new file's name must be durable too, as a pre-image file's is.
        let dir = Path::new(&pre)
            .parent()
            .filter(|d| !d.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
    }

    let file = OpenOptions::new().write(true).open(&base)?;
    for e in &extents {
        if e.zero {
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            fallocate(&file, flags, e.offset as i64, e.len as i64)?;
        } else {
            write_run(&file, &buf, e.offset, e.len)?;
        }
    }
    file.sync_data()?;
    Ok(())
}

fn write_run(file: &File, buf: &[u8], offset: u64, len: u64) -> BoxResult<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        file.write_all_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Op;

    #[test]
    fn the_last_write_decides_and_neighbours_of_one_kind_merge() {
        let c = CLUSTER;
        let op = |offset, len, pattern| Op {
            offset: offset * c,
            len: len * c,
            pattern,
        };
        let plan = Plan {
            ops: vec![
                op(0, 4, Some(9)),
                op(2, 4, None),
                op(6, 1, Some(3)),
                op(9, 1, None),
            ],
            changed_bytes: 8 * c,
        };
        let e = |offset, len, zero| Extent {
            offset: offset * c,
            len: len * c,
            zero,
        };
        assert_eq!(
            extents(&plan, 16 * c),
            vec![e(0, 2, false), e(2, 4, true), e(6, 1, false), e(9, 1, true)]
        );
    }

    #[test]
    fn extents_cover_exactly_the_changed_bytes() {
        let size = 64 << 20;
        let plan = crate::plan::scattered(size, 16 << 20, 7);
        let total: u64 = extents(&plan, size).iter().map(|e| e.len).sum();
        assert_eq!(total, plan.changed_bytes);
    }
}
