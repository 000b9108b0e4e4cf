//! Closing deleted files without waiting for the file system to free their blocks.
//!
//! When the last descriptor of an unlinked file closes, the file system frees its blocks
//! there and then. On ext4 mounted `discard` (and on thin-provisioned virtual disks behind
//! it) that waits for the device: 0.17–0.19 s per 256 MiB on the benchmark machine, paid
//! for the overlay at the very end of every commit and rollback (and for the pre-image file
//! of a commit that does not keep it as a spare), after everything that makes it durable and
//! after the names are durably gone.
//! `hand_off` passes those last references to a child process that exits as soon as this
//! process drops the returned [`Released`], so the freeing happens there, not in the command
//! the user waits for. A crash before it happens loses nothing: an unlinked file still open
//! is an orphan the file system frees when it next mounts.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;

/// Keeps the holder processes of `hand_off` alive. Drop it once the caller's own
/// descriptors of the files are closed: the holders then see end-of-file and exit, and the
/// kernel frees the files' blocks in them.
#[derive(Debug, Default)]
pub struct Released {
    _pipe: Option<OwnedFd>,
}

/// Hands `files` to holder processes (`/bin/cat`, reading a pipe nobody writes to, with two of the
/// files as its standard output and error, which it never writes). Standard streams are set
/// up in the child only, so no descriptor is ever inheritable in this process, where another
/// thread's child could pick it up.
///
/// # Errors
/// When a pipe, a descriptor or a process cannot be had; the caller then closes the files
/// itself, which is only slower.
pub(crate) fn hand_off(files: &[BorrowedFd<'_>]) -> io::Result<Released> {
    if files.is_empty() {
        return Ok(Released::default());
    }
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    for pair in files.chunks(2) {
        let stderr = match pair.get(1) {
            Some(f) => Stdio::from(f.try_clone_to_owned()?),
            None => Stdio::null(),
        };
        // By absolute path: the holder gets a writable descriptor, and PATH is the caller's.
        let mut child = Command::new("/bin/cat")
            .stdin(Stdio::from(read.try_clone()?))
            .stdout(Stdio::from(pair[0].try_clone_to_owned()?))
            .stderr(stderr)
            .spawn()?;
        // Reaped when it exits, so a long-lived program embedding the engine collects no
        // zombies; a short-lived one exits first and leaves that to init.
        std::thread::spawn(move || child.wait());
    }
    Ok(Released { _pipe: Some(write) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, Instant};

    #[test]
    fn a_handed_off_file_is_held_by_another_process_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let ino = (meta.dev(), meta.ino());
        std::fs::remove_file(&path).unwrap();

        let released = hand_off(&[file.as_fd()]).unwrap();
        drop(file);
        let holders = holders_of(ino);
        drop(released);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !holders_of(ino).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }

        assert!(
            !holders.is_empty(),
            "no process held the file after hand_off"
        );
        assert!(
            holders_of(ino).is_empty(),
            "the holder outlived its Released"
        );
    }

    /// Processes (other than this one) with a descriptor of the inode `ino` (device, inode).
    fn holders_of(ino: (u64, u64)) -> Vec<u32> {
        let me = std::process::id();
        let mut found = Vec::new();
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if std::fs::metadata(fd.path()).is_ok_and(|m| (m.dev(), m.ino()) == ino) {
                    found.push(pid);
                }
            }
        }
        found
    }
}
