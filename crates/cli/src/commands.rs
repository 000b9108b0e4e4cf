//! What each command does between the parsed command line and what is printed: a function
//! per command over the engine `main` made, each reading as the command's story (find the
//! transaction, do the work with its progress shown and signals watched, print the result).
//! Parsing is `args`'s, printing `output`'s, and the work itself the engine's.

use std::path::PathBuf;

use txn::{CommitOptions, PruneOptions, RecoverOptions, TxId};

use crate::args::{BeginArgs, Command};
use crate::failure::{exit_code, signal_exit, Failure};
use crate::interrupt::Interrupts;
use crate::options::{begin_options, resolve};
use crate::output::{self, Out};
use crate::runner::{self, OsEngine};
use crate::{each, progress, waiting};

/// What the commands that change something work with.
pub struct Ctx<'a> {
    pub engine: &'a OsEngine,
    /// The signals caught for the whole command: no signal may kill imgtx halfway through
    /// changing something.
    pub interrupts: &'a Interrupts,
    pub out: &'a Out,
}

/// Runs `command`, one that changes something; returns the exit status.
pub fn changing(cx: &Ctx<'_>, command: Command) -> Result<u8, Failure> {
    match command {
        Command::Begin { opts, bases } => begin(cx, &opts, &bases),
        Command::Commit { commit, tx } => commit_tx(cx, &tx, commit.into()),
        Command::Revert { tx } => revert(cx, &tx),
        Command::Rollback { tx } => rollback(cx, &tx),
        Command::Prune {
            older_than,
            keep_last,
            dry_run,
        } => {
            let opts = PruneOptions {
                older_than,
                keep_last,
                dry_run,
            };
            cx.out.prune(&cx.engine.prune(opts)?, dry_run)?;
            Ok(0)
        }
        Command::Recover {
            abandon: Some(tx),
            paths,
            ..
        } => abandon(cx, &tx, &paths),
        Command::Recover {
            undo,
            dry_run,
            scan,
            abandon: None,
            paths,
        } => {
            let paths = paths.iter().map(|p| resolve(p)).collect::<Result<_, _>>()?;
            recover(
                cx,
                &RecoverOptions {
                    paths,
                    scan,
                    undo,
                    dry_run,
                },
            )
        }
        Command::Run {
            opts,
            commit,
            each,
            bases,
            command,
        } if each.each => each::run(
            (cx.engine, cx.interrupts),
            cx.out,
            (&opts, commit.into(), each.jobs),
            (&bases, command),
        ),
        Command::Run {
            opts,
            commit,
            bases,
            command,
            ..
        } => run_command(cx, &opts, commit.into(), (&bases, command)),
        Command::Status { .. }
        | Command::Diff { .. }
        | Command::Log { .. }
        | Command::Demo(_)
        | Command::Generate(_) => unreachable!("run without an engine that may change things"),
    }
}

/// `begin`: saying whom it waits for, if it must wait.
fn begin(cx: &Ctx<'_>, opts: &BeginArgs, bases: &[PathBuf]) -> Result<u8, Failure> {
    let mut teller = waiting::Teller::new(cx.out.json);
    let m = cx
        .engine
        .begin_with(&begin_options(opts, bases, None)?, &mut |w| teller.hear(w))?;
    drop(teller);
    cx.out.begin(&m)?;
    Ok(0)
}

/// `commit`.
fn commit_tx(cx: &Ctx<'_>, tx: &str, opts: CommitOptions) -> Result<u8, Failure> {
    let id = find(Some(cx.engine), tx)?;
    let r = with_progress(cx, |p| cx.engine.commit(&id, opts, p))?;
    cx.out.commit(&r)?;
    finished_despite(cx, "the commit was finished")
}

/// `revert`.
fn revert(cx: &Ctx<'_>, tx: &str) -> Result<u8, Failure> {
    let id = cx.engine.find_revertible(tx)?;
    let r = with_progress(cx, |p| cx.engine.revert(&id, p))?;
    cx.out.revert(&r)?;
    finished_despite(cx, "the revert was finished")
}

/// `rollback`: once it starts, a signal cannot stop it (there is nothing to copy).
fn rollback(cx: &Ctx<'_>, tx: &str) -> Result<u8, Failure> {
    let id = find(Some(cx.engine), tx)?;
    cx.interrupts.left(0);
    cx.engine.rollback(&id)?;
    cx.out.rollback(&id)?;
    finished_despite(cx, "the rollback was finished")
}

/// `recover`: every failure is reported, and the exit status is the first one's.
fn recover(cx: &Ctx<'_>, opts: &RecoverOptions) -> Result<u8, Failure> {
    let r = with_progress(cx, |p| cx.engine.recover_all(opts, p))?;
    cx.out.recover(&r)?;
    if let Some(sig) = r.stopped.or_else(|| cx.interrupts.received()) {
        cx.out
            .finished_despite(sig, "recovery stopped between two transactions")?;
        return Ok(signal_exit(sig));
    }
    Ok(r.failures.first().map_or(0, |f| exit_code(&f.error)))
}

/// `recover --abandon`.
fn abandon(cx: &Ctx<'_>, tx: &str, paths: &[PathBuf]) -> Result<u8, Failure> {
    let paths: Vec<PathBuf> = paths.iter().map(|p| resolve(p)).collect::<Result<_, _>>()?;
    let r = cx.engine.abandon(&tx_id(tx)?, &paths)?;
    cx.out.abandon(&r)?;
    Ok(0)
}

/// Runs `work`, showing its progress (a bar, or JSON events) and telling the caught signals
/// when stopping is no longer possible.
fn with_progress<T>(
    cx: &Ctx<'_>,
    work: impl FnOnce(&mut dyn FnMut(txn::Progress)) -> txn::Result<T>,
) -> txn::Result<T> {
    let mut bar = progress::Reporter::new(cx.out.json, cx.out.quiet);
    let done = work(&mut |p| {
        watch(cx.interrupts, &p);
        bar.report(&p);
    });
    bar.finish();
    done
}

/// The exit status after work that was finished (`what`): 0, or, when a signal came while
/// it could no longer be stopped, the status that signal asks for, saying so.
fn finished_despite(cx: &Ctx<'_>, what: &str) -> Result<u8, Failure> {
    match cx.interrupts.received() {
        Some(sig) => {
            cx.out.finished_despite(sig, what)?;
            Ok(signal_exit(sig))
        }
        None => Ok(0),
    }
}

/// The transaction the user named `given`, which must be a whole id (for commands about
/// transactions that may not be registered: `revert`, `recover --abandon`).
fn tx_id(given: &str) -> Result<TxId, Failure> {
    TxId::parse(given).ok_or_else(|| Failure::from(not_found(given)))
}

/// The registered transaction the user named `given` (an id, a name, an id prefix), over
/// `engine` when there is a state directory.
fn find(engine: Option<&OsEngine>, given: &str) -> Result<TxId, Failure> {
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

/// `status`, `diff` and `log`, over the state directory if there is one; returns the exit
/// status (1 when `log --verify` finds the history does not verify).
pub fn read_only(engine: Option<&OsEngine>, out: &Out, command: Command) -> Result<u8, Failure> {
    match command {
        Command::Status { tx } => {
            let id = tx.as_deref().map(|t| find(engine, t)).transpose()?;
            let list = match engine {
                Some(e) => e.status(id.as_ref())?,
                None => Vec::new(),
            };
            let (kept, leases) = match (engine, &id) {
                (Some(e), None) => (e.kept()?, e.lease_files()?),
                _ => (Vec::new(), Vec::new()),
            };
            out.status(&list, &kept, &leases)?;
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
    cx: &Ctx<'_>,
    opts: &BeginArgs,
    commit: CommitOptions,
    (bases, command): (&[PathBuf], Vec<String>),
) -> Result<u8, Failure> {
    let Ctx {
        engine,
        interrupts,
        out,
    } = *cx;
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
            return Err(runner::not_started(&program, &error, Some(&m.id)));
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
    let committed = with_progress(cx, |p| runner::commit(engine, &m.id, commit, p));
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
fn watch(interrupts: &Interrupts, p: &txn::Progress) {
    if p.phase != txn::Phase::PreImages {
        interrupts.left(p.total.saturating_sub(p.done));
    }
}
