//! Locks on the real machine: the exclusive lock serializing imgtx processes on one
//! transaction, and qemu's OFD byte-range lock protocol (see `docs/commit-protocol.md`).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::libc;
use nix::sys::stat::Mode;
use storage::{open_no_symlinks, Fs, OsFs};

use crate::error::{Error, Result};

/// The bytes qemu locks to say "I use permission P" (100 + P) for P in 0..=4.
const USE_BYTES: (i64, i64) = (100, 5);
/// The bytes imgtx holds shared while it writes an image: consistent-read, write and resize,
/// both "in use" (10x) and "not shared" (20x), so that every qemu open fails.
const FENCE_BYTES: [i64; 6] = [100, 101, 103, 200, 201, 203];

/// Takes an exclusive `flock`-style lock on `path` (created 0600 if missing), following no
/// symlink in the path.
///
/// The lock file may be unlinked by the holder when the transaction ends, so after locking
/// we check that the path still names the locked file, and retry otherwise.
pub(crate) fn lock_exclusive(path: &Path, wait: bool) -> Result<Option<File>> {
    loop {
        let file = open_no_symlinks(
            path,
            OFlag::O_RDWR | OFlag::O_CREAT,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(Error::io("open the lock file", path))?;
        if wait {
            file.lock().map_err(Error::io("lock", path))?;
        } else {
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", path)(e)),
            }
        }
        let held = file
            .metadata()
            .map_err(Error::io("stat the lock file", path))?;
        match OsFs.metadata(path) {
            Ok(Some(now)) if (now.dev, now.ino) == (held.dev(), held.ino()) => {
                return Ok(Some(file))
            }
            Ok(_) => {}
            Err(e) => return Err(Error::io("stat the lock file", path)(e)),
        }
    }
}

/// True when another process holds the exclusive lock of `path`; a missing file is not
/// held. Nothing is created.
pub(crate) fn is_locked(path: &Path) -> Result<bool> {
    let file = match open_no_symlinks(path, OFlag::O_RDONLY, Mode::empty()) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("open the lock file", path)(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", path)(e)),
    }
}

fn flock(l_type: i32, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

fn open_read(path: &Path) -> Result<File> {
    // O_NONBLOCK: a FIFO planted under an image's name would otherwise block the open until
    // some writer appears; on a regular file it changes nothing.
    open_no_symlinks(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())
        .map_err(Error::io("open for lock probing", path))
}

/// True when any process holds a lock on qemu's "in use" bytes of `path`.
pub(crate) fn image_in_use(path: &Path) -> Result<bool> {
    let file = open_read(path)?;
    // A write-type probe conflicts with every shared lock qemu holds there.
    let mut probe = flock(libc::F_WRLCK, USE_BYTES.0, USE_BYTES.1);
    fcntl(&file, FcntlArg::F_OFD_GETLK(&mut probe))
        .map_err(|e| Error::io("probe the qemu locks of", path)(e.into()))?;
    Ok(i32::from(probe.l_type) != libc::F_UNLCK)
}

/// The bytes imgtx holds while a transaction's own tools run over the base (`imgtx run`):
/// "do not share write" and "do not share resize". Readers, such as a qemu that opens the
/// base as the backing file of the transaction's overlay, still get in; writers do not.
const NO_WRITERS_BYTES: [i64; 2] = [201, 203];
/// qemu's "I write" and "I resize" bytes.
const WRITER_BYTES: [i64; 2] = [101, 103];

/// Holds shared locks on [`NO_WRITERS_BYTES`] of `path` through a new open file description,
/// after checking that no qemu writes or resizes it now.
pub(crate) fn keep_writers_out(path: &Path) -> Result<File> {
    let file = open_read(path)?;
    for byte in WRITER_BYTES {
        let mut probe = flock(libc::F_WRLCK, byte, 1);
        fcntl(&file, FcntlArg::F_OFD_GETLK(&mut probe))
            .map_err(|e| Error::io("probe the qemu locks of", path)(e.into()))?;
        if i32::from(probe.l_type) != libc::F_UNLCK {
            return Err(Error::InUse {
                path: path.to_path_buf(),
                what: "base",
                pids: holders(path),
            });
        }
    }
    for byte in NO_WRITERS_BYTES {
        let lock = flock(libc::F_RDLCK, byte, 1);
        fcntl(&file, FcntlArg::F_OFD_SETLK(&lock))
            .map_err(|e| Error::io("lock qemu's lock bytes of", path)(e.into()))?;
    }
    Ok(file)
}

/// Holds shared locks on the fence bytes of `path` through a new open file description.
pub(crate) fn fence_image(path: &Path) -> Result<File> {
    if image_in_use(path)? {
        return Err(Error::InUse {
            path: path.to_path_buf(),
            what: "image",
            pids: holders(path),
        });
    }
    let file = open_read(path)?;
    for byte in FENCE_BYTES {
        let lock = flock(libc::F_RDLCK, byte, 1);
        match fcntl(&file, FcntlArg::F_OFD_SETLK(&lock)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
                return Err(Error::InUse {
                    path: path.to_path_buf(),
                    what: "image",
                    pids: holders(path),
                })
            }
            Err(e) => return Err(Error::io("lock qemu's lock bytes of", path)(e.into())),
        }
    }
    Ok(file)
}

/// The processes (other than this one) with a descriptor of the file `path` names, found by
/// reading `/proc/*/fd`; those this process may not look into are missed.
pub(crate) fn holders(path: &Path) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let wanted = (target.dev(), target.ino());
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| (m.dev(), m.ino()) == wanted));
        if holds && pid != me {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}
