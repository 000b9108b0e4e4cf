//! The `imgtx` command: ACID transactions for VM disk images.
//!
//! A thin shell over the `txn` engine: parse the command line, turn it into engine options,
//! run, print human or JSON output, and map the engine's error class to the exit status.

mod advice;
mod args;
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
mod tag;
mod usage;
mod waiting;
mod when;

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde_json::json;
use storage::OsFs;
use txn::{CommitOptions, Engine, OsHost, RecoverOptions, TxId};

use args::{BeginArgs, Cli, Command};
use failure::{exit_code, signal_exit, Failure};
use options::{begin_options, resolve, state_dir};
use tag::Tag;

fn main() -> ExitCode {
    complete::serve(generate::visible);
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

/// The transaction the user named `given`, which must be a whole id (for commands about
/// transactions that may not be registered: `revert`, `recover --abandon`).
fn tx_id(given: &str) -> Result<TxId, Failure> {
    TxId::parse(given).ok_or_else(|| Failure::from(not_found(given)))
}

/// The registered transaction the user named `given` (an id, a name, an id prefix), over
/// `engine` when there is a state directory.
fn find(engine: Option<&Engine<OsFs, OsHost>>, given: &str) -> Result<TxId, Failure> {
    match engine {
        Some(e) => Ok(e.find(given)?),
        None => Err(not_found(given).into()),
    }
}

/// `given` names no transaction, and there is none it could be a typo of.
fn not_found(given: &str) -> txn::Error {
    txn::Error::NotFound {
        tx: given.to_owned(),
        closest: None,
    }
}

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
        return read_only(engine.as_ref(), &out, cli.command);
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
    match cli.command {
        Command::Begin { opts, bases } => {
            let mut teller = waiting::Teller::new(out.json);
            let m = engine.begin_with(&begin_options(&opts, &bases, None)?, &mut |w| {
                teller.hear(w);
            })?;
            drop(teller);
            out.begin(&m)?;
        }
        Command::Commit { commit, tx } => {
            let mut bar = progress::Reporter::new(out.json, out.quiet);
            let r = engine.commit(&find(Some(&engine), &tx)?, commit.into(), &mut |p| {
                watch(&interrupts, &p);
                bar.report(&p);
            })?;
            bar.finish();
            out.commit(&r)?;
            if let Some(sig) = interrupts.received() {
                out.finished_despite(sig, "the commit was finished")?;
                return Ok(signal_exit(sig));
            }
        }
        Command::Revert { tx } => {
            let mut bar = progress::Reporter::new(out.json, out.quiet);
            let r = engine.revert(&engine.find_revertible(&tx)?, &mut |p| {
                watch(&interrupts, &p);
                bar.report(&p);
            })?;
            bar.finish();
            out.revert(&r)?;
            if let Some(sig) = interrupts.received() {
                out.finished_despite(sig, "the revert was finished")?;
                return Ok(signal_exit(sig));
            }
        }
        Command::Prune {
            older_than,
            keep_last,
            dry_run,
        } => {
            let pruned = engine.prune(txn::PruneOptions {
                older_than,
                keep_last,
                dry_run,
            })?;
            out.prune(&pruned, dry_run)?;
        }
        Command::Rollback { tx } => {
            let id = find(Some(&engine), &tx)?;
            interrupts.left(0);
            engine.rollback(&id)?;
            out.rollback(&id)?;
            if let Some(sig) = interrupts.received() {
                out.finished_despite(sig, "the rollback was finished")?;
                return Ok(signal_exit(sig));
            }
        }
        Command::Recover {
            abandon: Some(tx),
            paths,
            ..
        } => {
            let paths: Vec<PathBuf> = paths.iter().map(|p| resolve(p)).collect::<Result<_, _>>()?;
            let r = engine.abandon(&tx_id(&tx)?, &paths)?;
            out.abandon(&r)?;
        }
        Command::Recover {
            undo,
            dry_run,
            scan,
            abandon: None,
            paths,
        } => {
            let paths = paths.iter().map(|p| resolve(p)).collect::<Result<_, _>>()?;
            let mut bar = progress::Reporter::new(out.json, out.quiet);
            let r = engine.recover_all(
                &RecoverOptions {
                    paths,
                    scan,
                    undo,
                    dry_run,
                },
                &mut |p| {
                    watch(&interrupts, &p);
                    bar.report(&p);
                },
            )?;
            bar.finish();
            out.recover(&r)?;
            if let Some(sig) = r.stopped.or_else(|| interrupts.received()) {
                out.finished_despite(sig, "recovery stopped between two transactions")?;
                return Ok(signal_exit(sig));
            }
            if let Some(first) = r.failures.first() {
                // Every failure was reported above; the status is the first one's.
                return Ok(exit_code(&first.error));
            }
        }
        Command::Run {
            opts,
            commit,
            each,
            bases,
            command,
        } => {
            if each.each {
                let how = (&opts, commit.into(), each.jobs);
                return each::run((&engine, &interrupts), &out, how, (&bases, command));
            }
            return run_command(
                (&engine, &interrupts),
                &out,
                &opts,
                commit.into(),
                (&bases, command),
            );
        }
        Command::Status { .. }
        | Command::Diff { .. }
        | Command::Log { .. }
        | Command::Demo(_)
        | Command::Generate(_) => {
            unreachable!("handled before the engine is made")
        }
    }
    Ok(0)
}

/// `status`, `diff` and `log`, over the state directory if there is one; returns the exit
/// status (1 when `log --verify` finds the history does not verify).
fn read_only(
    engine: Option<&Engine<OsFs, OsHost>>,
    out: &output::Out,
    command: Command,
) -> Result<u8, Failure> {
    match command {
        Command::Status { tx } => {
            let id = tx.as_deref().map(|t| find(engine, t)).transpose()?;
            let list = match engine {
                Some(e) => e.status(id.as_ref())?,
                None => Vec::new(),
            };
            let kept = match (engine, &id) {
                (Some(e), None) => e.kept()?,
                _ => Vec::new(),
            };
            out.status(&list, &kept)?;
        }
        Command::Diff { tx } => {
            let id = find(engine, &tx)?;
            let engine = engine.ok_or_else(|| not_found(&tx))?;
            out.diff(&id, &engine.diff(&id)?)?;
        }
        Command::Log {
            verify: true,
            anchor,
            ..
        } => {
            let v = match engine {
                Some(e) => e.verify_history(anchor.as_ref())?,
                None => txn::Verification::none(anchor.as_ref()),
            };
            out.verify(&v)?;
            return Ok(u8::from(!v.verified));
        }
        Command::Log {
            base,
            last,
            since,
            tx,
            ..
        } => {
            let given = base.clone();
            let base = base
                .map(|b| std::fs::canonicalize(&b).or_else(|_| std::path::absolute(&b)))
                .transpose()?;
            let mut history = match engine {
                Some(e) => e.log(base.as_deref())?,
                None => txn::History::default(),
            };
            // A path that never had a transaction and names no file is most likely a typo.
            if let (Some(given), Some(base)) = (&given, &base) {
                if history.entries.is_empty() && !base.exists() {
                    return Err(anyhow::anyhow!(
                        "no history for {}, and there is no such file",
                        given.display()
                    )
                    .into());
                }
            }
            output::select(&mut history, tx.as_deref(), since.as_deref(), last);
            out.log(&history)?;
        }
        _ => unreachable!("only read-only commands come here"),
    }
    Ok(0)
}

/// `run`: begin, run the command on the overlays, commit on exit 0, else roll back.
fn run_command(
    (engine, interrupts): (&Engine<OsFs, OsHost>, &interrupt::Interrupts),
    out: &output::Out,
    opts: &BeginArgs,
    commit: CommitOptions,
    (bases, command): (&[PathBuf], Vec<String>),
) -> Result<u8, Failure> {
    // Caught from before begin: a signal now rolls back instead of leaving the transaction open.
    let m = runner::begin(
        engine,
        out.json,
        &begin_options(opts, bases, Some(command.clone()))?,
    )?;
    let ran = runner::run_on(engine, interrupts, (&m, &command), out.json, &|| {
        interrupts.received()
    })?;
    let _writers_out = match ran {
        runner::Ran::InUse(e) => return Err(e.into()),
        runner::Ran::NotStarted { program, error } => {
            return Err(runner::not_started(&program, &error, &m.id));
        }
        runner::Ran::Stopped(sig) => {
            out.interrupted(&m.id, sig)?;
            return Ok(signal_exit(sig));
        }
        runner::Ran::Exited { code, signal, .. } if code != 0 => {
            engine.rollback(&m.id)?;
            out.run(&m.id, (code, signal), None)?;
            return Ok(u8::try_from(code).unwrap_or(1).max(1));
        }
        runner::Ran::Exited { guards, .. } => guards,
    };
    let mut bar = progress::Reporter::new(out.json, out.quiet);
    let committed = runner::commit(engine, &m.id, commit, &mut |p| {
        watch(interrupts, &p);
        bar.report(&p);
    });
    bar.finish();
    let r = match committed? {
        runner::Committed::Done(r) => r,
        runner::Committed::Stopped(signal) => {
            out.interrupted(&m.id, signal)?;
            return Ok(signal_exit(signal));
        }
    };
    if let Some(sig) = interrupts.received() {
        tracing::warn!(
            signal = sig,
            "signal received during the commit; the commit was finished first"
        );
    }
    out.run(&m.id, (0, None), Some(&r))?;
    Ok(0)
}

/// Passes progress on to `interrupts`: once the engine writes bases (applying or restoring),
/// a signal no longer stops it, and a second one is answered with how much is left.
fn watch(interrupts: &interrupt::Interrupts, p: &txn::Progress) {
    if p.phase != txn::Phase::PreImages {
        interrupts.left(p.total.saturating_sub(p.done));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes_map_to_the_documented_exit_codes() {
        let busy = txn::Error::Busy {
            path: "/x".into(),
            holder: Box::new(txn::Holder::unknown("tx-0123456789")),
        };
        assert_eq!(exit_code(&busy), 3);
        let rec = txn::Error::RecoveryNeeded {
            path: "/x".into(),
            tx: TxId::parse("tx-0123456789").unwrap(),
        };
        assert_eq!(exit_code(&rec), 4);
        assert_eq!(exit_code(&txn::Error::Invalid("x".into())), 1);
    }
}
