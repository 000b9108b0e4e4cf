//! `imgtx-bench`: the side-by-side commit benchmark of docs/performance.md.
//!
//! It builds a raw base and a qcow2 overlay full of scattered changes, then times, interleaved
//! round-robin on identical fresh copies, `imgtx commit --no-undo`, `imgtx commit` and
//! `qemu-img commit -d` followed by an fsync of the base, checking every committed base against
//! the expected content. It also times `imgtx begin`, `status` and `diff`. It drives the real
//! binaries only: it is not a library, does not link the engine, and is not a test (speed is
//! never asserted anywhere; the numbers go to `docs/performance.md`).
//!
//! ```text
//! cargo build --release -p imgtx -p imgtx-bench
//! target/release/imgtx-bench --imgtx target/release/imgtx --workdir /var/tmp/imgtx-bench
//! ```

mod bench;
mod floor;
mod measure;
mod plan;
mod report;
mod sys;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use bench::Config;

/// Errors here end the run with a message; there is no caller to match on them.
pub type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "\
usage: imgtx-bench [--imgtx PATH] [--workdir DIR]
                   [--scenario small|large|sparse|meta|all|tiny]
                   [--rounds N] [--seed N] [--cache cold|warm|both] [--json]

  --imgtx PATH     the imgtx binary to measure (without it only qemu-img runs)
  --workdir DIR    where images are built; a real disk, not tmpfs [/var/tmp/imgtx-bench]
                   pristine images are kept there and reused by later runs
  --scenario S     small: 1 GiB raw base, 256 MiB changed
                   large: 16 GiB virtual base, 2 GiB changed
                   sparse: 1 GiB base holding 256 MiB of data, 256 MiB changed mostly
                          in its holes (a guest filling free space)
                   meta:  begin on a 16 GiB base; status and diff of 100 000 changed clusters
                   medium: 4 GiB base, 1 GiB changed (the reflink workload)
                   all:   small, large, sparse and meta [default]
                   tiny:  a few-second smoke test of the harness
  --rounds N       timed runs per contestant, interleaved [7]
  --cache C        cold: page cache dropped before each timed run; warm: left as the
                   run's preparation (the edit) left it, synced; both: each part twice [both]
  --seed N         seed of every pseudo-random choice [7]
  --json           print the report as JSON instead of markdown
";

struct Args {
    config: Config,
    caches: Vec<bench::Cache>,
    scenario: String,
    json: bool,
}

fn parse_args(mut args: impl Iterator<Item = std::ffi::OsString>) -> Result<Args, String> {
    let mut config = Config {
        imgtx: None,
        workdir: PathBuf::from("/var/tmp/imgtx-bench"),
        rounds: 7,
        seed: 7,
        cache: bench::Cache::Cold,
    };
    let mut caches = vec![bench::Cache::Cold, bench::Cache::Warm];
    let mut scenario = "all".to_owned();
    let mut json = false;
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--imgtx" => {
                config.imgtx = Some(std::path::absolute(value()?).map_err(|e| e.to_string())?)
            }
            "--workdir" => config.workdir = PathBuf::from(value()?),
            "--scenario" => scenario = value()?.to_string_lossy().into_owned(),
            "--rounds" => {
                config.rounds = value()?
                    .to_string_lossy()
                    .parse()
                    .map_err(|e| format!("--rounds: {e}"))?;
            }
            "--seed" => {
                config.seed = value()?
                    .to_string_lossy()
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?;
            }
            "--json" => json = true,
            "--cache" => {
                caches = match value()?.to_string_lossy().as_ref() {
                    "cold" => vec![bench::Cache::Cold],
                    "warm" => vec![bench::Cache::Warm],
                    "both" => vec![bench::Cache::Cold, bench::Cache::Warm],
                    other => return Err(format!("--cache: cold, warm or both, not {other}")),
                };
            }
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    if config.rounds == 0 {
        return Err("--rounds must be at least 1".to_owned());
    }
    Ok(Args {
        config,
        caches,
        scenario,
        json,
    })
}

/// What the report says about the machine, so numbers are read against the right hardware.
fn machine(config: &Config) -> Vec<(String, String)> {
    let sh = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let workdir = config.workdir.to_string_lossy().into_owned();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default();
    let mut info = vec![
        ("kernel".to_owned(), sh("uname", &["-sr"])),
        (
            "cpus".to_owned(),
            std::thread::available_parallelism()
                .map_or(0, |n| n.get())
                .to_string(),
        ),
        (
            "cpu model".to_owned(),
            sh(
                "sh",
                &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
            ),
        ),
        ("memory".to_owned(), mem),
        (
            "workdir filesystem".to_owned(),
            sh("findmnt", &["-n", "-o", "FSTYPE,OPTIONS", "-T", &workdir]),
        ),
        (
            "workdir device".to_owned(),
            sh(
                "sh",
                &["-c", &format!("df --output=source '{workdir}' | tail -1")],
            ),
        ),
        ("qemu-img".to_owned(), sh("qemu-img", &["--version"])),
    ];
    if let Some(imgtx) = &config.imgtx {
        info.push(("imgtx".to_owned(), imgtx.display().to_string()));
    }
    info.push(("rounds".to_owned(), config.rounds.to_string()));
    info.push(("seed".to_owned(), config.seed.to_string()));
    info
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_some_and(|a| a == measure::MEASURE_ARG) {
        return measure::measurer_main(args.skip(1));
    }
    if args.peek().is_some_and(|a| a == floor::FLOOR_ARG) {
        return floor::floor_main(args.skip(1));
    }
    let args = match parse_args(args) {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("imgtx-bench: {e}");
            }
            eprint!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let Some(parts) = bench::parts(&args.scenario) else {
        eprintln!("imgtx-bench: unknown scenario {}\n{USAGE}", args.scenario);
        return ExitCode::from(2);
    };
    if let Err(e) = std::fs::create_dir_all(&args.config.workdir) {
        eprintln!(
            "imgtx-bench: cannot create {}: {e}",
            args.config.workdir.display()
        );
        return ExitCode::from(2);
    }
    let header = machine(&args.config);
    let mut results = Vec::new();
    for part in parts {
        for &cache in &args.caches {
            let config = Config {
                cache,
                ..args.config.clone()
            };
            match bench::run_part(&config, part) {
                Ok(mut result) => {
                    result.name = format!("{} ({})", result.name, cache.name());
                    results.push(result);
                }
                Err(e) => {
                    eprintln!("imgtx-bench: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if args.json {
        println!("{:#}", report::json(&results, &header));
    } else {
        print!("{}", report::text(&results, &header));
    }
    let any_failed = results
        .iter()
        .any(|p| p.commits.iter().any(|r| r.error.is_some()));
    if any_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
