//! The `imgtx` command: ACID transactions for VM disk images.
//!
//! A thin shell over the `txn` engine: parse the command line, turn it into engine options,
//! run, print human or JSON output, and map the engine's error class to the exit status.

mod advice;
mod args;
mod commands;
mod complete;
mod demo;
mod each;
mod failure;
mod generate;
mod interrupt;
mod logging;
mod options;
mod output;
mod progress;
mod runner;
mod state_dir;
mod tag;
mod term;
mod usage;
mod waiting;
mod when;

use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;
use storage::OsFs;
use txn::{Engine, OsHost};

use args::{Cli, Command};
use failure::Failure;
use state_dir::state_dir;
use tag::Tag;

fn main() -> ExitCode {
    if let Some(code) = complete::serve(generate::visible) {
        return ExitCode::from(code);
    }
    let raw: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&raw) {
        Ok(cli) => cli,
        Err(e) => return usage::report(&raw, &e),
    };
    logging::init(cli.quiet, cli.verbose, cli.json);
    when::use_utc(cli.utc);
    let json = cli.json;
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            if is_broken_pipe(&f.error) {
                return ExitCode::SUCCESS;
            }
            let (message, hint) = (f.message(), f.hint());
            if json {
                let text = json!({ "error": message, "hint": hint, "exit_code": f.code });
                let _ = writeln!(io::stderr(), "{text}");
            } else {
                tag::say(Tag::Error, &message);
                if let Some(hint) = hint {
                    tag::say(Tag::Hint, &hint);
                }
            }
            ExitCode::from(f.code)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|io| io.kind() == io::ErrorKind::BrokenPipe)
}

/// Runs the command line: the commands that need no state directory, those that only read
/// one (creating nothing), then those that change something, over an engine with the signals
/// caught and, in a lockspace, sanlock's leases. Returns the exit status.
fn run(cli: Cli) -> Result<u8, Failure> {
    // These need no engine: they must not create a state directory.
    match &cli.command {
        Command::Demo(args) => return Ok(demo::run(args)?),
        Command::Generate(args) => return Ok(generate::run(args)?),
        _ => {}
    }
    let out = output::Out {
        json: cli.json,
        quiet: cli.quiet,
    };
    // Commands that only read never create a state directory (or anything in it).
    if let Command::Status { .. } | Command::Log { .. } | Command::Diff { .. } = &cli.command {
        let dir = state_dir(cli.state_dir, false)?;
        let engine = Engine::open_existing(OsFs, OsHost::from_env(), dir)?;
        return commands::read_only(engine.as_ref(), &out, cli.command);
    }
    // Across hosts, first: with a lockspace named, nothing runs unprotected.
    let leases = match cli.lockspace.as_deref().filter(|s| !s.is_empty()) {
        Some(ls) => Some(txn::lease::sanlock::SanlockLeases::connect(ls)?),
        None => None,
    };
    // Caught from here on: no signal may kill imgtx halfway through changing something. The
    // engine stops where that changes nothing, and finishes whatever is past that point.
    let interrupts = interrupt::Interrupts::catch()?;
    let mut engine = Engine::new(OsFs, OsHost::from_env(), state_dir(cli.state_dir, true)?)?
        .with_interrupt(interrupts.flag());
    if let Some(leases) = leases {
        engine = engine.with_leases(std::sync::Arc::new(leases));
    }
    let cx = commands::Ctx {
        engine: &engine,
        interrupts: &interrupts,
        out: &out,
    };
    commands::changing(&cx, cli.command)
}
