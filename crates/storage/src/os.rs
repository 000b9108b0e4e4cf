//! [`Fs`] over the real file system.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{
    fallocate, openat2, posix_fadvise, renameat, FallocateFlags, OFlag, OpenHow,
    PosixFadviseAdvice, ResolveFlag, AT_FDCWD,
};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::{File, FileKind, Fs, Metadata};

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

/// A real open file.
#[derive(Debug)]
pub struct OsFile {
    file: fs::File,
    direct: crate::direct::Direct,
}

impl OsFile {
    /// The underlying file, for operations outside the seam (locks, `copy_file_range`).
    pub fn std_file(&self) -> &fs::File {
        &self.file
    }

    /// Wraps an already open file.
    pub fn from_std(file: fs::File) -> Self {
        Self {
            file,
            direct: crate::direct::Direct::default(),
        }
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
        self.direct.read_exact_at(&self.file, buf, offset)
    }

    fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let mut slice = [io::IoSliceMut::new(&mut buf[done..])];
            match rustix::io::preadv2(
                &self.file,
                &mut slice,
                offset + done as u64,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) => break,
                Ok(n) => done += n,
                // Not cached (EAGAIN), or a kernel or file system without RWF_NOWAIT: the
                // caller reads the rest the ordinary way.
                Err(_) => break,
            }
        }
        Ok(done)
    }

    fn clone_range_from(
        &self,
        src: &Self,
        src_offset: u64,
        dst_offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let Some(len) = std::num::NonZeroU64::new(len) else {
            return Ok(());
        };
        // Explicitly no ioctl where it is known to fail: ext2/3/4 and tmpfs share no blocks.
        if let Ok(st) = nix::sys::statfs::fstatfs(&self.file) {
            let kind = st.filesystem_type();
            if kind == nix::sys::statfs::EXT4_SUPER_MAGIC || kind == nix::sys::statfs::TMPFS_MAGIC {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "ext4 and tmpfs cannot share blocks between files",
                ));
            }
        }
        reflink_copy::ReflinkBlockBuilder::new(&src.file, &self.file, len)
            .from_offset(src_offset)
            .to_offset(dst_offset)
            .reflink_block()
    }

    fn make_readable(&self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.file.set_permissions(fs::Permissions::from_mode(0o644))
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
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL;
        let file = open_no_symlinks(path, flags, Mode::S_IRUSR | Mode::S_IWUSR)?;
        Ok(OsFile::from_std(file))
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<OsFile> {
        let flags = if writable {
            OFlag::O_RDWR
        } else {
            OFlag::O_RDONLY
        };
        let file = open_no_symlinks(path, flags, Mode::empty())?;
        Ok(OsFile::from_std(file))
    }

    fn metadata(&self, path: &Path) -> io::Result<Option<Metadata>> {
        // O_PATH | O_NOFOLLOW gives a descriptor of a final symlink itself, so this is an
        // lstat whose every directory on the way was reached without following a symlink.
        match open_no_symlinks(path, OFlag::O_PATH, Mode::empty()) {
            Ok(f) => Ok(Some(metadata_of(&f.metadata()?))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = parent_of(path)?;
        unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_dir, from_name) = parent_of(from)?;
        let (to_dir, to_name) = parent_of(to)?;
        renameat(&from_dir, from_name, &to_dir, to_name).map_err(io::Error::from)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_dir, from_name) = parent_of(from)?;
        let (to_dir, to_name) = parent_of(to)?;
        nix::unistd::linkat(
            &from_dir,
            from_name,
            &to_dir,
            to_name,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(io::Error::from)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = parent_of(path)?;
        match mkdirat(&dir, name, Mode::S_IRWXU) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST)
                if self
                    .metadata(path)?
                    .is_some_and(|m| m.kind == FileKind::Dir) =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        open_dir(dir, OFlag::O_RDONLY)?.sync_all()
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let d = open_dir(dir, OFlag::O_RDONLY)?;
        // The descriptor's /proc entry lists the directory that was opened, whatever the
        // name points at now.
        fs::read_dir(format!("/proc/self/fd/{}", d.as_raw_fd()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        // The part that does not exist yet cannot hold a symlink; resolve what does.
        let mut missing = Vec::new();
        let mut existing = path;
        loop {
            match fs::canonicalize(existing) {
                Ok(mut real) => {
                    real.extend(missing.iter().rev());
                    return Ok(real);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match (existing.parent(), existing.file_name()) {
                        (Some(parent), Some(name)) => {
                            missing.push(name);
                            existing = parent;
                        }
                        _ => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Opens `path` without following a symlink anywhere in it (`openat2` with
/// `RESOLVE_NO_SYMLINKS`, plus `O_NOFOLLOW` and `O_CLOEXEC`): a directory on the way
/// swapped for a symlink by someone who can write its parent fails the open with `ELOOP`
/// instead of sending it elsewhere (T24). Paths must already be resolved
/// ([`Fs::canonicalize`]) where they come from a user.
///
/// # Errors
/// `ELOOP` for a symlink anywhere in the path; `Unsupported`, saying what to do, on kernels
/// without `openat2` (before Linux 5.6) or where a seccomp filter hides it.
pub fn open_no_symlinks(path: &Path, flags: OFlag, mode: Mode) -> io::Result<fs::File> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(AT_FDCWD, path, how) {
        Ok(fd) => Ok(fs::File::from(fd)),
        Err(Errno::ENOSYS) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the openat2 system call is not available (Linux 5.6 or later is needed, and a \
             seccomp profile must allow it); imgtx needs it to open files without following \
             symlinks planted in their directories",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Opens directory `dir` without following a symlink anywhere in it.
fn open_dir(dir: &Path, flags: OFlag) -> io::Result<fs::File> {
    open_no_symlinks(dir, flags | OFlag::O_DIRECTORY, Mode::empty())
}

/// The parent directory of `path`, opened without following symlinks, and the final name to
/// act on relative to it.
fn parent_of(path: &Path) -> io::Result<(fs::File, &OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not end in a file name", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((open_dir(dir, OFlag::O_PATH)?, name))
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
        allocated: m.blocks().saturating_mul(512),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        // std fills `created` from statx where the kernel and file system have it.
        btime_ns: m
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)),
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        nlink: m.nlink(),
        kind,
    }
}
