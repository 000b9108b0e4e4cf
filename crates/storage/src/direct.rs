//! Reads that bypass the page cache (`O_DIRECT`), for data a commit reads exactly once.
//!
//! Copying cold data out of the page cache was the largest CPU cost of a commit (`perf`:
//! 40 % of its cycles in `_copy_to_iter`); with `O_DIRECT` the device writes straight into
//! the caller's buffer. Only aligned requests go direct; anything else, and any file system
//! that refuses direct I/O, reads through the page cache and gets the same bytes.
//!
//! Direct *writes* of the base were tried and measured slower (one writer, one request in
//! flight, against the page cache's background writeback), so writes stay buffered.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::OnceLock;

use nix::fcntl::OFlag;

use crate::DIRECT_ALIGN;

/// A file's direct-I/O twin, opened on first use and kept for the file's lifetime (one open
/// per request cost two syscalls per request).
#[derive(Debug, Default)]
pub(crate) struct Direct {
    read: OnceLock<Option<fs::File>>,
}

fn aligned(ptr: *const u8, len: usize, offset: u64) -> bool {
    ptr.align_offset(DIRECT_ALIGN) == 0
        && len.is_multiple_of(DIRECT_ALIGN)
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
}

/// `file`'s inode opened again with `O_DIRECT`, or `None` where that is refused.
fn reopen(file: &fs::File) -> Option<fs::File> {
    // /proc/self/fd/N reopens the inode this descriptor has open, never whatever a path
    // names by now, so no file swapped in since the caller's checks can come in here.
    fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECT | OFlag::O_CLOEXEC).bits())
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::EINVAL)
}

impl Direct {
    /// Reads exactly `buf.len()` bytes of `file` at `offset`, directly when `buf`, its length
    /// and `offset` are aligned to [`DIRECT_ALIGN`].
    pub(crate) fn read_exact_at(
        &self,
        file: &fs::File,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<()> {
        if aligned(buf.as_ptr(), buf.len(), offset) {
            if let Some(direct) = self.read.get_or_init(|| reopen(file)) {
                match direct.read_exact_at(buf, offset) {
                    // Direct I/O refused here, or a short read left the rest unaligned.
                    Err(e) if refused(&e) => {}
                    r => return r,
                }
            }
        }
        file.read_exact_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_unaligned_reads_return_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("imgtx-direct-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let bytes: Vec<u8> = (0..3 * DIRECT_ALIGN + 100)
            .map(|i| (i % 241) as u8)
            .collect();
        fs::write(&path, &bytes).unwrap();
        let file = fs::File::open(&path).unwrap();
        let mut backing = vec![0u8; 4 * DIRECT_ALIGN];
        let at = backing.as_ptr().align_offset(DIRECT_ALIGN);
        let direct = Direct::default();

        let aligned = &mut backing[at..at + 2 * DIRECT_ALIGN];
        direct
            .read_exact_at(&file, aligned, DIRECT_ALIGN as u64)
            .unwrap();
        let got_aligned = aligned.to_vec();
        let mut odd = vec![0u8; 333];
        direct.read_exact_at(&file, &mut odd, 7).unwrap();
        let mut tail = vec![0u8; DIRECT_ALIGN];
        let past = direct.read_exact_at(&file, &mut tail, 3 * DIRECT_ALIGN as u64);

        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got_aligned[..], bytes[DIRECT_ALIGN..3 * DIRECT_ALIGN]);
        assert_eq!(odd[..], bytes[7..340]);
        assert_eq!(
            past.unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof,
            "a direct read past the end must fail like a buffered one"
        );
    }
}
