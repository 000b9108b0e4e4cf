//! Timing one command and reading its peak memory.
//!
//! Method: the benchmark re-executes itself as a small measuring process (`imgtx-bench
//! __measure`) whose *only* child is the command under test. After waiting for it, the measurer
//! reads `getrusage(RUSAGE_CHILDREN).ru_maxrss`, which is the peak resident set of the largest
//! waited-for child — here exactly that one command. The clock runs in the measurer from just
//! before spawning the command to just after it exits (plus, for qemu-img, the fsync of the base
//! that makes its result durable), so the benchmark's own start-up is not counted.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use nix::sys::resource::{getrusage, UsageWho};

use crate::sys::tail;
use crate::BoxResult;

/// Hidden subcommand name of the measuring process.
pub const MEASURE_ARG: &str = "__measure";

/// One timed run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Wall-clock seconds, including any fsync asked for.
    pub secs: f64,
    /// Peak resident set of the command, KiB.
    pub max_rss_kib: u64,
}

/// Runs `program args` under the measuring process; on success returns the sample and the
/// command's standard output. `fsync_after` is fsynced inside the timed window.
pub fn measure(
    scratch: &Path,
    fsync_after: Option<&Path>,
    program: &Path,
    args: &[OsString],
) -> BoxResult<(Sample, String)> {
    let report = scratch.join("measure.json");
    crate::sys::remove_file_if_exists(&report)?;
    let out = Command::new(std::env::current_exe()?)
        .arg(MEASURE_ARG)
        .arg(&report)
        .arg(fsync_after.map_or_else(OsString::new, |p| p.as_os_str().to_owned()))
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let failed = |why: String| -> BoxResult<(Sample, String)> {
        Err(format!(
            "{} {} {why}: {}{}",
            program.display(),
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            tail(&stdout),
            tail(&String::from_utf8_lossy(&out.stderr))
        )
        .into())
    };
    if !out.status.success() {
        return failed(format!("could not be measured ({})", out.status));
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
    let code = report["exit_code"].as_i64().unwrap_or(-1);
    if code != 0 {
        return failed(format!("exited with status {code}"));
    }
    let sample = Sample {
        secs: report["secs"].as_f64().ok_or("measure report lacks secs")?,
        max_rss_kib: report["max_rss_kib"]
            .as_u64()
            .ok_or("measure report lacks max_rss_kib")?,
    };
    Ok((sample, stdout))
}

/// Body of the measuring process: `__measure REPORT FSYNC_PATH_OR_EMPTY PROGRAM ARGS...`.
pub fn measurer_main(mut args: impl Iterator<Item = OsString>) -> ExitCode {
    match measurer(&mut args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imgtx-bench {MEASURE_ARG}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn measurer(args: &mut dyn Iterator<Item = OsString>) -> BoxResult<()> {
    let report = PathBuf::from(args.next().ok_or("missing report path")?);
    let fsync_after = args.next().ok_or("missing fsync path")?;
    let program = args.next().ok_or("missing program")?;
    let rest: Vec<OsString> = args.collect();

    let start = Instant::now();
    let status = Command::new(&program)
        .args(&rest)
        .stdin(Stdio::null())
        .status()?;
    if status.success() && !fsync_after.is_empty() {
        // The durability barrier qemu-img may skip: without it qemu-img's "done" can mean "in
        // the page cache", while imgtx's commit means "on disk".
        File::open(&fsync_after)?.sync_all()?;
    }
    let secs = start.elapsed().as_secs_f64();
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let value = serde_json::json!({
        "secs": secs,
        "max_rss_kib": usage.max_rss(),
        "exit_code": status.code().unwrap_or(-1),
    });
    std::fs::write(report, value.to_string())?;
    Ok(())
}
