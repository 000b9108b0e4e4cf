//! Running `qemu-img commit` for qcow2 bases.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};
use crate::state::Format;

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
    let fail = |detail: String| Error::QemuImg {
        overlay: overlay.to_path_buf(),
        base: base.to_path_buf(),
        detail,
    };
    let (Some(ov), Some(b)) = (overlay.to_str(), base.to_str()) else {
        return Err(fail("paths must be UTF-8".to_owned()));
    };
    let opts = image_opts(ov, b, base_format);
    tracing::debug!(%opts, "running qemu-img commit");
    // `-d` leaves the overlay untouched, so a crash mid-commit can redo from it.
    let out = Command::new("qemu-img")
        .args(["commit", "-q", "-d", "--image-opts", &opts])
        .output()
        .map_err(|e| fail(format!("could not run qemu-img: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(fail(format!("{}: {}", out.status, stderr.trim())))
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
