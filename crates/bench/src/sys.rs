//! Files and external tools: building images, copying them, dropping caches, checksumming.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use splitmix::SplitMix64;

use crate::plan::Op;
use crate::BoxResult;

/// Write granularity when filling a base: big enough that the device, not syscalls, sets the pace.
const FILL_CHUNK: u64 = 8 << 20;

/// Checksum granularity: a mismatch is reported to within one chunk.
const DIGEST_CHUNK: u64 = 64 << 20;

/// qemu-io commands per invocation; each invocation opens the image once.
const REPLAY_BATCH: usize = 1000;

/// Runs a command to completion, failing with its output if it fails.
pub fn run(cmd: &mut Command) -> BoxResult<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            tail(&stdout),
            tail(&stderr)
        )
        .into());
    }
    Ok(stdout)
}

/// The last few lines of some tool output, for error messages.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(8);
    lines[start..].join("\n")
}

/// Creates a raw image of `size` bytes. `regions` (sorted byte ranges) receive pseudo-random
/// data and the rest stays a hole; `None` fills the whole image. Each chunk's content depends
/// only on the seed and its offset.
pub fn fill_base(
    path: &Path,
    size: u64,
    regions: Option<&[(u64, u64)]>,
    seed: u64,
) -> BoxResult<()> {
    let file = File::create(path)?;
    file.set_len(size)?;
    let whole = [(0, size)];
    let regions = regions.unwrap_or(&whole);
    let mut buf = vec![0u8; FILL_CHUNK as usize];
    for &(start, end) in regions {
        let mut off = start;
        while off < end {
            let len = (end - off).min(FILL_CHUNK) as usize;
            SplitMix64::new(seed ^ off.rotate_left(17)).fill(&mut buf[..len]);
            file.write_all_at(&buf[..len], off)?;
            off += len as u64;
        }
    }
    // Setup data goes to disk now, so it is not flushed inside someone's timed run.
    file.sync_all()?;
    Ok(())
}

/// Copies `src` to `dst` (replacing it), keeping holes; reflinks where the filesystem can.
pub fn copy(src: &Path, dst: &Path) -> BoxResult<()> {
    remove_file_if_exists(dst)?;
    run(Command::new("cp")
        .arg("--reflink=auto")
        .arg("--sparse=auto")
        .arg(src)
        .arg(dst))?;
    Ok(())
}

/// Reads `path` whole, so that its pages are in the page cache.
pub fn read_through(path: &Path) -> BoxResult<()> {
    let mut f = fs::File::open(path)?;
    let mut buf = vec![0u8; 8 << 20];
    while std::io::Read::read(&mut f, &mut buf)? > 0 {}
    Ok(())
}

/// Removes a file, treating "already gone" as success.
pub fn remove_file_if_exists(path: &Path) -> BoxResult<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Removes a directory tree, treating "already gone" as success.
pub fn remove_dir_if_exists(path: &Path) -> BoxResult<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Writes every dirty page back and empties the page cache, so a timed run starts cold and pays
/// for nobody else's writeback. Returns false when dropping caches is not permitted (not root):
/// the writeback still happened.
pub fn drop_caches() -> bool {
    nix::unistd::sync();
    OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"3"))
        .is_ok()
}

/// Creates a qcow2 overlay over a raw base, the way users do by hand.
pub fn create_overlay(base: &Path, overlay: &Path) -> BoxResult<()> {
    remove_file_if_exists(overlay)?;
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(overlay))?;
    Ok(())
}

/// Replays `ops` into a qcow2 image with qemu-io, in order. `cache=unsafe` skips qemu's flushes:
/// this is setup, and a `sync` precedes every timed run anyway.
pub fn replay(overlay: &Path, ops: &[Op]) -> BoxResult<()> {
    for batch in ops.chunks(REPLAY_BATCH) {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "qcow2", "-t", "unsafe"]);
        for op in batch {
            cmd.arg("-c").arg(op.qemu_io_command());
        }
        cmd.arg(overlay);
        let out = run(&mut cmd)?;
        // qemu-io reports a failed command on stdout and may still exit 0.
        let wrote = out.lines().filter(|l| l.starts_with("wrote ")).count();
        if wrote != batch.len() {
            return Err(format!(
                "qemu-io into {} did {wrote} of {} writes: {}",
                overlay.display(),
                batch.len(),
                tail(&out)
            )
            .into());
        }
    }
    Ok(())
}

/// A content checksum of a whole file: its length and one CRC-32 per 64 MiB chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// File length in bytes.
    pub len: u64,
    /// CRC-32 of each chunk, the last one possibly short.
    pub chunks: Vec<u32>,
}

impl Digest {
    /// Where two digests first differ, as a human-readable sentence, or `None` if equal.
    pub fn mismatch(&self, expected: &Digest) -> Option<String> {
        if self.len != expected.len {
            return Some(format!("length {} instead of {}", self.len, expected.len));
        }
        let i = self
            .chunks
            .iter()
            .zip(&expected.chunks)
            .position(|(a, b)| a != b)?;
        let start = i as u64 * DIGEST_CHUNK;
        Some(format!(
            "content differs in {:#x}..{:#x}",
            start,
            (start + DIGEST_CHUNK).min(self.len)
        ))
    }

    /// Encodes as JSON for the scenario cache.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "len": self.len, "chunks": self.chunks })
    }

    /// Decodes what [`Digest::to_json`] wrote.
    pub fn from_json(value: &serde_json::Value) -> Option<Digest> {
        let chunks = value["chunks"]
            .as_array()?
            .iter()
            .map(|c| c.as_u64().and_then(|c| u32::try_from(c).ok()))
            .collect::<Option<Vec<u32>>>()?;
        Some(Digest {
            len: value["len"].as_u64()?,
            chunks,
        })
    }
}

/// Checksums a file's content. Chunks that are entirely holes are not read (their CRC is that of
/// zeros), which keeps a 16 GiB sparse image quick; a hole and written zeros hash the same.
pub fn digest(path: &Path) -> BoxResult<Digest> {
    use nix::unistd::{lseek, Whence};

    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; DIGEST_CHUNK as usize];
    let mut chunks = Vec::new();
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(DIGEST_CHUNK);
        let offset = i64::try_from(off)?;
        // SEEK_DATA fails with ENXIO when only a hole follows.
        let next_data = lseek(&file, offset, Whence::SeekData)
            .map(|d| d as u64)
            .unwrap_or(len);
        let chunk = &mut buf[..n as usize];
        if next_data >= off + n {
            chunk.fill(0);
        } else {
            file.read_exact_at(chunk, off)?;
        }
        chunks.push(crc32fast::hash(chunk));
        off += n;
    }
    Ok(Digest { len, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_hole_equals_digest_of_written_zeros() {
        let dir = std::env::temp_dir().join(format!("imgtx-bench-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (hole, zeros) = (dir.join("hole"), dir.join("zeros"));
        File::create(&hole).unwrap().set_len(3 << 20).unwrap();
        fs::write(&zeros, vec![0u8; 3 << 20]).unwrap();

        let (a, b) = (digest(&hole).unwrap(), digest(&zeros).unwrap());

        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn mismatch_names_the_differing_chunk() {
        let a = Digest {
            len: 3 * DIGEST_CHUNK,
            chunks: vec![1, 2, 3],
        };
        let b = Digest {
            len: 3 * DIGEST_CHUNK,
            chunks: vec![1, 9, 3],
        };

        let msg = a.mismatch(&b);

        assert_eq!(
            msg.as_deref(),
            Some("content differs in 0x4000000..0x8000000")
        );
    }
}
