//! Running `qemu-img commit` for qcow2 bases, as a child that cannot outlive imgtx.
//!
//! The child writes the base with qemu's own locking off (imgtx holds the fences), so a
//! child left running after imgtx died would write a base that recovery believes it owns.
//! Three things prevent that: the child gets SIGKILL when imgtx dies (`PR_SET_PDEATHSIG`,
//! set in the child before exec); it runs in its own process group, so a terminal's Ctrl-C
//! meant for imgtx does not kill it halfway; and it inherits a descriptor of the base
//! holding a shared OFD lock on [`WRITER_BYTE`] for as long as it lives, which recovery
//! probes ([`writer_running`]) before it touches the base.
//!
//! qemu-img is run by an absolute path found once ([`qemu_img`]), never through the
//! caller's `PATH`.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

use crate::error::{Error, Result};
use crate::manifest::Format;

/// Escapes a value for qemu's `key=value,...` option syntax (a comma is written twice).
pub(crate) fn escape_opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// The `--image-opts` string naming `overlay` over `base` explicitly, with locking off.
pub(crate) fn image_opts(overlay: &str, base: &str, base_format: Format) -> String {
    format!(
        "driver=qcow2,file.driver=file,file.filename={},file.locking=off,\
         backing.driver={},backing.file.driver=file,backing.file.filename={},backing.file.locking=off",
        escape_opt(overlay),
        base_format.as_str(),
        escape_opt(base),
    )
}

pub(crate) fn commit(overlay: &Path, base: &Path, base_format: Format) -> Result<()> {
    let (Some(ov), Some(b)) = (overlay.to_str(), base.to_str()) else {
        return Err(Error::Invalid(format!(
            "qemu-img is given paths as text, and {} or {} is not UTF-8",
            overlay.display(),
            base.display()
        )));
    };
    run(overlay, base, &image_opts(ov, b, base_format), Vec::new())
}

/// `qemu-img commit` of the open files `overlay` and `base`, handed to qemu as inherited
/// descriptors (`/dev/fd/N`) rather than by name.
///
/// qemu opens `/dev/fd/N`, which the kernel resolves to the file behind the descriptor
/// whatever its name points at by then: the overlay qemu reads is the inode `open_checked`
/// validated, and the base it writes is the one the engine opened, even if a name was
/// swapped for a symlink or another image in the meantime.
pub(crate) fn commit_open(
    overlay: (&Path, BorrowedFd<'_>),
    base: (&Path, BorrowedFd<'_>),
    base_format: Format,
) -> Result<()> {
    let fail = |source: nix::Error| Error::QemuImgRun {
        overlay: overlay.0.to_path_buf(),
        base: base.0.to_path_buf(),
        action: "hand the images to",
        source: source.into(),
    };
    // `dup` gives copies without FD_CLOEXEC, so the child inherits them; the engine's own
    // descriptors stay close-on-exec and reach no other child.
    let ov_fd = nix::unistd::dup(overlay.1).map_err(fail)?;
    let base_fd = nix::unistd::dup(base.1).map_err(fail)?;
    // Held by the base's open file description, which the child keeps open for its whole
    // life: while the lock shows, a writer of this commit may still run.
    let lock = writer_lock(libc::F_RDLCK);
    fcntl(&base_fd, FcntlArg::F_OFD_SETLK(&lock)).map_err(fail)?;
    let opts = image_opts(
        &format!("/dev/fd/{}", ov_fd.as_raw_fd()),
        &format!("/dev/fd/{}", base_fd.as_raw_fd()),
        base_format,
    );
    run(overlay.0, base.0, &opts, vec![ov_fd, base_fd])
}

/// Runs `qemu-img commit` with `opts`; `inherited` are closed in this process once the
/// child has its copies.
fn run(overlay: &Path, base: &Path, opts: &str, inherited: Vec<OwnedFd>) -> Result<()> {
    let fail = |action: &'static str| {
        move |source| Error::QemuImgRun {
            overlay: overlay.to_path_buf(),
            base: base.to_path_buf(),
            action,
            source,
        }
    };
    tracing::debug!(%opts, "running qemu-img commit");
    let program = qemu_img().map_err(fail("find"))?;
    let parent = nix::unistd::getpid();
    let mut command = Command::new(program);
    // `-d` leaves the overlay untouched, so a crash mid-commit can redo from it.
    command
        .args(["commit", "-q", "-d", "--image-opts", opts])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C goes to imgtx, which finishes.
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: prctl(2) and getppid(2) are plain system calls,
    // and nothing is allocated.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            // Die with imgtx: a commit whose caller is gone must not go on writing.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // imgtx died before the line above took effect: die now.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("imgtx is gone"));
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(fail("start"))?;
    drop(inherited);
    let out = child.wait_with_output().map_err(fail("wait for"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::QemuImg {
            overlay: overlay.to_path_buf(),
            base: base.to_path_buf(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// `qemu-img check -r leaks` of the qcow2 image `base`, locking off (the caller holds the
/// fences). It must end clean (exit 0): leaks it could not repair, or any corruption, fail.
pub(crate) fn repair_leaks(base: &Path) -> Result<()> {
    let fail = |action: &'static str| {
        move |source| Error::QemuImgRun {
            overlay: base.to_path_buf(),
            base: base.to_path_buf(),
            action,
            source,
        }
    };
    let Some(b) = base.to_str() else {
        return Err(Error::Invalid(format!(
            "qemu-img is given paths as text, and {} is not UTF-8",
            base.display()
        )));
    };
    let opts = format!(
        "driver=qcow2,file.driver=file,file.filename={},file.locking=off",
        escape_opt(b)
    );
    let out = Command::new(qemu_img().map_err(fail("find"))?)
        .args(["check", "-q", "-r", "leaks", "--image-opts", &opts])
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(fail("run"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::QemuImg {
            overlay: base.to_path_buf(),
            base: base.to_path_buf(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The persistent bitmaps of the qcow2 image `base` flagged `in-use`, from
/// `qemu-img info -U --output=json` (which takes no lock).
pub(crate) fn bitmaps_in_use(base: &Path) -> Result<Vec<String>> {
    let fail = |action: &'static str| {
        move |source| Error::QemuImgRun {
            overlay: base.to_path_buf(),
            base: base.to_path_buf(),
            action,
            source,
        }
    };
    let out = Command::new(qemu_img().map_err(fail("find"))?)
        .args(["info", "-U", "--output=json", "-f", "qcow2"])
        .arg(base)
        .stdin(Stdio::null())
        .output()
        .map_err(fail("run"))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bitmaps = info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .cloned();
    Ok(bitmaps
        .unwrap_or_default()
        .iter()
        .filter(|b| {
            b["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "in-use"))
        })
        .filter_map(|b| b["name"].as_str().map(str::to_owned))
        .collect())
}

/// The byte of a base that a running `qemu-img commit` child of imgtx holds locked (shared,
/// through the descriptor it inherited). qemu's own lock bytes are 100-104 and 200-204.
const WRITER_BYTE: i64 = 300;

fn writer_lock(l_type: i32) -> libc::flock {
    libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: WRITER_BYTE,
        l_len: 1,
        l_pid: 0,
    }
}

/// True when a `qemu-img commit` child of some imgtx still has `base` open: it may still
/// be writing it, and no recovery may touch the base until it is gone.
pub(crate) fn writer_running(base: &Path) -> Result<bool> {
    let opened = storage::open_no_symlinks(
        base,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    );
    let file = match opened {
        Ok(f) => f,
        // No base, no writer of it: what recovery makes of a missing base is its business.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("open for lock probing", base)(e)),
    };
    let mut probe = writer_lock(libc::F_WRLCK);
    fcntl(&file, FcntlArg::F_OFD_GETLK(&mut probe))
        .map_err(|e| Error::io("probe the writer lock of", base)(e.into()))?;
    Ok(i32::from(probe.l_type) != libc::F_UNLCK)
}

/// Where qemu-img is: the first of a fixed list of places that holds an executable owned by
/// root and writable only by root, found once. Never the caller's `PATH`: imgtx often runs as
/// root, and the child gets a writable descriptor of the base.
fn qemu_img() -> std::io::Result<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        [
            "/usr/bin/qemu-img",
            "/usr/local/bin/qemu-img",
            "/bin/qemu-img",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| trusted_program(p))
    });
    found.as_deref().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no qemu-img in /usr/bin, /usr/local/bin or /bin (owned by root, not writable by \
             others); install qemu-utils",
        )
    })
}

/// True for an executable regular file that only root can change.
fn trusted_program(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|m| {
        m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0 && m.mode() & 0o111 != 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_opts_double_commas_in_paths() {
        let s = image_opts("/a,b/ov", "/c/base", Format::Qcow2);
        assert!(s.contains("file.filename=/a,,b/ov,"));
        assert!(s.contains("backing.driver=qcow2,"));
        assert!(s.ends_with("backing.file.filename=/c/base,backing.file.locking=off"));
    }
}
