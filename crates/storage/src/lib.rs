//! The file-system seam that every crash-sensitive part of imgtx writes through.
//!
//! [`Fs`] and [`File`] are the only ways the journal and the transaction engine touch storage:
//! positional reads and writes, length changes, data syncs, and the handful of namespace
//! operations (exclusive create, unlink, rename, directory sync) a commit protocol needs.
//! [`OsFs`] maps them onto real files. With the `sim` feature, the simulated disk (module
//! `sim`) keeps live and durable state apart so tests can crash at any operation and inspect
//! what survived, and the write-ordering monitor (module `monitor`) checks what was durable
//! before each change.
//!
//! This crate is not a general VFS: no directory walking beyond listing one directory, no
//! permissions model beyond what crash safety needs, and no buffering.
//!
//! # Features
//!
//! - `sim`: the modules `sim` and `monitor`. They are test machinery, so only dev-dependencies
//!   and the test-support crates enable it; the `imgtx` binary is built without them.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod copy;
mod direct;
#[cfg(feature = "sim")]
pub mod monitor;
mod os;
#[cfg(feature = "sim")]
pub mod sim;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

pub use os::{open_no_symlinks, OsFile, OsFs};

/// The alignment (memory address, offset, length) under which
/// [`File::read_exact_direct_at`] may bypass the page cache.
pub const DIRECT_ALIGN: usize = 4096;

/// One open file, addressed by absolute byte offsets. No method moves a cursor.
// `len` is fallible I/O, not a container size: an `is_empty` twin would only add a syscall.
#[allow(clippy::len_without_is_empty)]
pub trait File: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at or past EOF).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes all of `buf` at `offset`, extending the file if needed.
    ///
    /// # Errors
    /// On error some prefix of `buf` may have reached the file: callers treat the whole
    /// range as unknown until they overwrite or truncate it.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Sets the file length, zero-filling any growth.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// The current (live, not necessarily durable) length.
    fn len(&self) -> io::Result<u64>;

    /// Makes every completed write and length change of this file durable (`fdatasync`).
    ///
    /// # Errors
    /// After an error nothing about the durability of earlier writes is known; callers must
    /// never retry and then trust the file (see `docs/journal-format.md`).
    fn sync_data(&self) -> io::Result<()>;

    /// Makes `[offset, offset + len)` read as zeros without changing the length: a hole punch
    /// where the file system supports it, otherwise written zeros.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Metadata of the open file itself (`fstat`): the inode that was opened, whatever its
    /// name points at by now. Comparing it with an earlier `lstat` of the name is what
    /// catches a file swapped between the two.
    fn stat(&self) -> io::Result<Metadata>;

    /// The operating-system descriptor, when there is one, so a child process (qemu-img)
    /// can be handed the very file that was checked instead of a name that may have been
    /// swapped since. `None` for files that exist only in a simulation.
    fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    /// Lets others read the file: mode 0644 instead of the 0600 [`Fs::create_new`] gives. For
    /// the few files other users must see (claims beside images). The default does nothing,
    /// for files without permissions.
    fn make_readable(&self) -> io::Result<()> {
        Ok(())
    }

    /// Starts writing `[offset, offset + len)` back to the device without waiting for it, so
    /// that a later [`File::sync_data`] has less left to flush. A hint only: it makes nothing
    /// durable and promises nothing, and the default does nothing. Callers may ignore its errors.
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Like [`File::read_exact_at`], but may bypass the page cache (`O_DIRECT`) when `buf`'s
    /// address, its length and `offset` are all multiples of [`DIRECT_ALIGN`]: bulk copies
    /// read data once, and copying it out of the page cache cost more CPU than the rest of a
    /// commit. Same result either way; the default just calls `read_exact_at`.
    ///
    /// # Errors
    /// `UnexpectedEof` when the file ends first.
    fn read_exact_direct_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    /// Reads into `buf` from `offset` only what the page cache already holds, without
    /// waiting for the device (`preadv2` with `RWF_NOWAIT`); returns how much, 0 when nothing
    /// is cached. For data a caller would otherwise read direct: right after an edit it is
    /// still in memory, and reading it from there beats reading it again from the disk. The
    /// default, for files without a page cache, reads nothing.
    fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let _ = (buf, offset);
        Ok(0)
    }

    /// Makes `[dst_offset, dst_offset + len)` of this file share the storage of
    /// `[src_offset, src_offset + len)` of `src` instead of copying it (a reflink:
    /// `FICLONERANGE` on XFS, btrfs and the like), extending this file if the range ends past
    /// its end. The range then reads as `src`'s did, and later writes to either file leave
    /// the other alone. Not durable until [`File::sync_data`].
    ///
    /// # Errors
    /// Whenever the blocks cannot be shared: a file system without reflinks
    /// (`EOPNOTSUPP`), offsets or a length the file system's block size does not divide
    /// (`EINVAL`), two file systems (`EXDEV`). The caller copies instead. The default, for
    /// files without real storage, always refuses.
    fn clone_range_from(
        &self,
        src: &Self,
        src_offset: u64,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()>
    where
        Self: Sized,
    {
        let _ = (src, src_offset, dst_offset, len);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this file cannot share blocks with another",
        ))
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// `UnexpectedEof` when the file ends first.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended before the requested range",
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// What [`Fs::metadata`] reports about a path, without following a final symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Length in bytes.
    pub len: u64,
    /// Bytes backed by storage (`st_blocks` × 512): less than `len` for a sparse file.
    pub allocated: u64,
    /// Last modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Last status change (`ctime`), nanoseconds since the epoch: any write or metadata
    /// change moves it, and unlike the modification time no user can set it back.
    pub ctime_ns: i128,
    /// Birth time (`statx` `btx_btime`), nanoseconds since the epoch, where the file system
    /// records one: a file removed and created again under the same name (even with the
    /// same inode number) has another.
    pub btime_ns: Option<i128>,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Number of hard links.
    pub nlink: u64,
    /// What kind of object the path names.
    pub kind: FileKind,
}

/// The type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by [`Fs::metadata`]).
    Symlink,
    /// Anything else: device, socket, fifo.
    Other,
}

/// The namespace operations a crash-safe protocol needs, plus opening files.
///
/// Paths are used as given. [`OsFs`] follows no symlink anywhere in a path (see
/// [`open_no_symlinks`]); user paths are resolved once with [`Fs::canonicalize`].
pub trait Fs: Send + Sync {
    /// The file handle type.
    type File: File;

    /// Creates a new file with mode 0600, failing with `AlreadyExists` if anything (even a
    /// dangling symlink) has that name (`O_CREAT | O_EXCL`). The new entry is not durable
    /// until [`Fs::sync_dir`] on its parent.
    fn create_new(&self, path: &Path) -> io::Result<Self::File>;

    /// Opens an existing regular file for reading, or for reading and writing. Refuses a
    /// symlink in the final component (`O_NOFOLLOW`).
    fn open(&self, path: &Path, writable: bool) -> io::Result<Self::File>;

    /// Metadata of `path` without following a final symlink; `Ok(None)` when it does not exist.
    fn metadata(&self, path: &Path) -> io::Result<Option<Metadata>>;

    /// Removes a file or symlink (never a directory). Not durable until [`Fs::sync_dir`].
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Atomically renames `from` to `to`, replacing `to`. Not durable until [`Fs::sync_dir`].
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Gives the file `from` a second name `to`, failing with `AlreadyExists` if anything
    /// has that name: the way to make a file appear under a name atomically and whole, even
    /// on NFS (write it under a private name, then link). Not durable until [`Fs::sync_dir`].
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Creates a directory with mode 0700; `Ok(())` when it already exists as a directory.
    fn create_dir(&self, path: &Path) -> io::Result<()>;

    /// Makes the directory's entries durable (fsync on the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Names of the entries of `dir`, in no particular order.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;

    /// `path` made absolute with every symlink in it resolved, for paths that come from a
    /// user (who may legitimately reach a directory through a symlink): every other method
    /// may refuse a path with a symlink in it. A part of the path that does not exist yet
    /// is kept as given. The default suits file systems without symlinks.
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        Ok(path.to_path_buf())
    }
}
