//! [`Fs`] over the real file system.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{fallocate, posix_fadvise, FallocateFlags, OFlag, PosixFadviseAdvice};

use crate::{File, FileKind, Fs, Metadata};

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

/// A real open file.
#[derive(Debug)]
pub struct OsFile {
    file: fs::File,
}

impl OsFile {
    /// The underlying file, for operations outside the seam (locks, `copy_file_range`).
    pub fn std_file(&self) -> &fs::File {
        &self.file
    }

    /// Wraps an already open file.
    pub fn from_std(file: fs::File) -> Self {
        Self { file }
    }
}

impl File for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn stat(&self) -> io::Result<Metadata> {
        Ok(metadata_of(&self.file.metadata()?))
    }

    fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(std::os::fd::AsFd::as_fd(&self.file))
    }

    fn read_exact_direct_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        crate::direct::read_exact_at(&self.file, buf, offset)
    }

    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(()); // a hint cannot cover such a range; nothing to do
        };
        // nix has no sync_file_range, and this crate has no unsafe. On Linux,
        // POSIX_FADV_DONTNEED first starts asynchronous writeback of the range's dirty pages
        // (what SYNC_FILE_RANGE_WRITE does), then drops its clean pages, which a commit never
        // reads again.
        posix_fadvise(&self.file, off, n, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
            .map_err(io::Error::from)
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range too large",
            ));
        };
        // A punched hole reads as zeros and frees the blocks, as qemu does for zero clusters.
        // File systems without hole punching (or block devices) get explicit zeros instead.
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, flags, off, n) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS) => {
                write_zeros(&self.file, offset, len)
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn write_zeros(file: &fs::File, mut offset: u64, mut len: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    while len > 0 {
        let n = CHUNK.min(len);
        file.write_all_at(&zeros[..n as usize], offset)?;
        offset += n;
        len -= n;
    }
    Ok(())
}

impl Fs for OsFs {
    type File = OsFile;

    fn create_new(&self, path: &Path) -> io::Result<OsFile> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(path)?;
        Ok(OsFile { file })
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<OsFile> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(path)?;
        Ok(OsFile { file })
    }

    fn metadata(&self, path: &Path) -> io::Result<Option<Metadata>> {
        match fs::symlink_metadata(path) {
            Ok(m) => Ok(Some(metadata_of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            r => r,
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let d = fs::OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
            .open(dir)?;
        d.sync_all()
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }
}

/// Converts std metadata into the seam's [`Metadata`].
pub fn metadata_of(m: &fs::Metadata) -> Metadata {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_file() {
        FileKind::File
    } else if ft.is_dir() {
        FileKind::Dir
    } else {
        FileKind::Other
    };
    Metadata {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        nlink: m.nlink(),
        kind,
    }
}
