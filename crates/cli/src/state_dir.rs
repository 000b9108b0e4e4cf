//! Where the state directory is: `--state-dir`, else `$IMGTX_STATE_DIR`, else the default
//! for the user. Shared by the commands and by shell completion, which reads the one the
//! typed words name.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::failure::Failure;

/// The state directory: `--state-dir`, `$IMGTX_STATE_DIR`, /var/lib/imgtx for root, else
/// `$XDG_STATE_HOME/imgtx` (default `~/.local/state/imgtx`).
pub fn state_dir(given: Option<PathBuf>, create_parent: bool) -> Result<PathBuf, Failure> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = if let Some(d) = given.or_else(|| env("IMGTX_STATE_DIR")) {
        d
    } else if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/lib/imgtx")
    } else if let Some(x) = env("XDG_STATE_HOME") {
        x.join("imgtx")
    } else if let Some(h) = env("HOME") {
        h.join(".local/state/imgtx")
    } else {
        return Err(anyhow::anyhow!(
            "no state directory: set --state-dir, IMGTX_STATE_DIR or HOME"
        )
        .into());
    };
    let dir = std::path::absolute(&dir)?;
    if let Some(parent) = dir.parent().filter(|_| create_parent) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("could not create {}", parent.display()))?;
    }
    Ok(dir)
}
