//! From parsed arguments to the engine's options: base paths resolved as the user typed
//! them, `--wait` read. Unlike `args`, this touches the file
//! system (to resolve paths).

use std::path::{Path, PathBuf};
use std::time::Duration;

use txn::{BeginOptions, Format, Wait};

use crate::args::{BaseFormat, BeginArgs};
use crate::failure::{Failure, EXIT_USAGE};

/// Resolves a base path as the user typed it: relative paths and symlinks are resolved so
/// the overlay names the real file by absolute path.
pub fn resolve(path: &Path) -> Result<PathBuf, Failure> {
    std::fs::canonicalize(path).map_err(|source| {
        Failure::from(txn::Error::Io {
            action: "find",
            path: path.to_path_buf(),
            source,
        })
    })
}

pub fn begin_options(
    opts: &BeginArgs,
    bases: &[PathBuf],
    command: Option<Vec<String>>,
) -> Result<BeginOptions, Failure> {
    let wait = match opts.wait.as_deref() {
        None => Wait::No,
        Some("forever") => Wait::Forever,
        Some(secs) => {
            let s: f64 = secs
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| anyhow::anyhow!("--wait takes a number of seconds, not {secs:?}"))
                .map_err(|error| Failure {
                    error,
                    code: EXIT_USAGE,
                })?;
            Wait::For(Duration::from_secs_f64(s.min(1e9)))
        }
    };
    Ok(BeginOptions {
        bases: bases.iter().map(|b| resolve(b)).collect::<Result<_, _>>()?,
        name: opts.name.clone(),
        base_format: opts.base_format.map(|f| match f {
            BaseFormat::Raw => Format::Raw,
            BaseFormat::Qcow2 => Format::Qcow2,
        }),
        wait,
        command,
    })
}
