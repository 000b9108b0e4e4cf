//! A small XFS file system with reflinks, loop-mounted from an image file, for the tests of
//! block sharing (`FICLONERANGE`): the real thing, since ext4 and tmpfs share no blocks.
//!
//! Mounting needs root, `mkfs.xfs` (xfsprogs) and a loop device; [`Xfs::mount`] says which
//! is missing so the caller can skip with that reason. It is unmounted when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted XFS (reflink=1) in a temporary directory under `/var/tmp`.
#[derive(Debug)]
pub struct Xfs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Xfs {
    /// Makes and mounts a `size_mib` MiB XFS; `Err(why)` when this machine cannot.
    pub fn mount(size_mib: u64) -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root to mount a loop device".into());
        }
        // /var/tmp, not /tmp: the image must live on a real disk, and it can be large.
        let dir = tempfile::tempdir_in("/var/tmp").map_err(|e| e.to_string())?;
        let img = dir.path().join("xfs.img");
        let mnt = dir.path().join("mnt");
        fs::File::create(&img)
            .and_then(|f| f.set_len(size_mib << 20))
            .and_then(|()| fs::create_dir(&mnt))
            .map_err(|e| e.to_string())?;
        let ok = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
        if !ok(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img))
        {
            return Err("mkfs.xfs is missing or failed".into());
        }
        if !ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt))
        {
            return Err("cannot mount a loop device here".into());
        }
        Ok(Self { _dir: dir, mnt })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}
