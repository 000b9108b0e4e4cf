//! Running `qemu-img commit` for qcow2 bases.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

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
    // `-d` leaves the overlay untouched, so a crash mid-commit can redo from it.
    let child = Command::new("qemu-img")
        .args(["commit", "-q", "-d", "--image-opts", opts])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(fail("start"))?;
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
