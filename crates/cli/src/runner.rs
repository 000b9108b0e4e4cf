//! One transaction of `imgtx run`: begin it, run the user's command on its overlays (`{}` and
//! `{N}` replaced, the `IMGTX_*` environment set, signals passed on), then commit it or roll
//! it back.
//!
//! Shared by `run` (one transaction over all its images, in `main.rs`) and `run --each` (one
//! transaction per image, in `each.rs`). It neither prints results nor picks exit statuses:
//! its callers do, each in its own way. It does not decide, either, whether a signal stops
//! the transaction: the caller says so through `stop`, because only the main thread hears
//! signals in time (see `interrupt.rs`).

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use storage::OsFs;
use txn::lease::LeaseGuard;
use txn::{BeginOptions, CommitOptions, CommitReport, Engine, Manifest, OsGuard, OsHost, TxId};

use crate::failure::Failure;
use crate::interrupt::Interrupts;
use crate::waiting;

/// The engine `imgtx` works with.
pub type OsEngine = Engine<OsFs, OsHost>;

/// How the command of a transaction ended.
pub enum Ran {
    /// It exited with `code` (128 + N when signal N killed it, and then `signal` is N). The
    /// transaction is still open, and other writers (and, under a lockspace, other hosts)
    /// stay out of its bases while `guards` live: keep them until the commit or rollback is
    /// done.
    Exited {
        code: i32,
        signal: Option<i32>,
        guards: (Vec<OsGuard>, LeaseGuard),
    },
    /// The user asked to stop (signal number): the transaction was rolled back.
    Stopped(i32),
    /// Other writers could not be kept out of a base (a qemu process writes it, or a process
    /// of another host holds its lease): the transaction was rolled back without running
    /// the command.
    InUse(txn::Error),
    /// The command could not be started: the transaction was rolled back.
    NotStarted {
        /// The program, as substituted.
        program: String,
        /// Why it could not be started.
        error: io::Error,
    },
}

/// How a commit ended, when it did not fail.
pub enum Committed {
    /// Committed.
    Done(CommitReport),
    /// Stopped by a signal (number) before its commit point, then rolled back.
    Stopped(i32),
}

/// Begins the transaction `opts` asks for; a begin that waits for a busy base says so on
/// stderr (as a JSON event with `json`).
pub fn begin(engine: &OsEngine, json: bool, opts: &BeginOptions) -> txn::Result<Manifest> {
    let mut teller = waiting::Teller::new(json);
    engine.begin_with(opts, &mut |w| teller.hear(w))
}

/// Runs `template` (the command line as the user gave it) on the overlays of the open
/// transaction `m`, with its standard output sent to stderr when `json` is set (stdout then
/// holds only imgtx's JSON). `stop` says whether the user asked to stop, and with which
/// signal: asked before the command starts and after it exits, and then the transaction is
/// rolled back whatever the command's status.
///
/// # Errors
/// Only when a rollback fails: the transaction is then left open (or needs recovery).
pub fn run_on(
    engine: &OsEngine,
    interrupts: &Interrupts,
    (m, template): (&Manifest, &[String]),
    json: bool,
    stop: &dyn Fn() -> Option<i32>,
) -> Result<Ran, Failure> {
    // Across hosts: the bases' leases for the whole command (nothing without a lockspace).
    let bases: Vec<PathBuf> = m.images.iter().map(|i| i.base.clone()).collect();
    let leases = match engine.hold_leases(&bases) {
        Ok(held) => held,
        Err(e) => {
            engine.rollback(&m.id)?;
            return Ok(Ran::InUse(e));
        }
    };
    // While the command runs, no other writer gets at the bases; the command's own tools
    // may still open them read-only, as their overlays' backing files.
    let guards = match engine.keep_writers_out(m) {
        Ok(guards) => guards,
        Err(e) => {
            engine.rollback(&m.id)?;
            return Ok(Ran::InUse(e));
        }
    };
    if let Some(sig) = stop() {
        engine.rollback(&m.id)?;
        return Ok(Ran::Stopped(sig));
    }
    let overlays: Vec<String> = m
        .images
        .iter()
        .map(|i| i.overlay.display().to_string())
        .collect();
    let mut argv: Vec<String> = template.iter().map(|a| substitute(a, &overlays)).collect();
    tracing::info!(tx = %m.id, command = ?argv, "running");
    let status =
        command(&m.id, (&argv, &overlays), json).and_then(|mut c| wait_for(interrupts, &mut c));
    let status = match status {
        Ok(s) => s,
        Err(error) => {
            engine.rollback(&m.id)?;
            let program = argv.swap_remove(0);
            return Ok(Ran::NotStarted { program, error });
        }
    };
    if let Some(sig) = stop() {
        // Whatever the command's status, the user asked to stop: nothing of it lands.
        engine.rollback(&m.id)?;
        return Ok(Ran::Stopped(sig));
    }
    Ok(Ran::Exited {
        code: exit_status(status),
        signal: status.signal(),
        guards: (guards, leases),
    })
}

/// Commits transaction `id`; one stopped by a signal before its commit point is rolled back.
/// A signal after that point does not stop it: stopping halfway would only leave work for
/// `imgtx recover`, which would finish it anyway.
///
/// # Errors
/// The commit's or the rollback's: the transaction is then left as the error says.
pub fn commit(
    engine: &OsEngine,
    id: &TxId,
    opts: CommitOptions,
    progress: &mut dyn FnMut(txn::Progress),
) -> txn::Result<Committed> {
    match engine.commit(id, opts, progress) {
        Ok(r) => Ok(Committed::Done(r)),
        // Stopped before its commit point: nothing of the command's work lands.
        Err(txn::Error::Stopped { signal }) => {
            engine.rollback(id)?;
            Ok(Committed::Stopped(signal))
        }
        Err(e) => Err(e),
    }
}

/// The failure of a command that could not be started (`program` as substituted), with the
/// exit status shells give it: 127 when there is no such program, 126 when it cannot be
/// executed. `rolled_back` names the transaction when the message is to say it was rolled
/// back (`run`; `run --each` says so in its own words).
pub fn not_started(program: &str, error: &io::Error, rolled_back: Option<&TxId>) -> Failure {
    let code = match error.kind() {
        io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    let error = match rolled_back {
        Some(tx) => {
            anyhow::anyhow!("could not run {program:?}: {error} (transaction {tx} rolled back)")
        }
        None => anyhow::anyhow!("could not run {program:?}: {error}"),
    };
    Failure { error, code }
}

/// `argv` (the overlays already put in) ready to spawn for transaction `tx`, with
/// `IMGTX_TX`, `IMGTX_OVERLAY` and `IMGTX_OVERLAY_N` set, and its stdout sent to stderr when
/// `json` is set.
fn command(tx: &TxId, (argv, overlays): (&[String], &[String]), json: bool) -> io::Result<Command> {
    let mut child = Command::new(&argv[0]);
    child
        .args(&argv[1..])
        .env("IMGTX_TX", tx.as_str())
        .env("IMGTX_OVERLAY", &overlays[0]);
    for (i, o) in overlays.iter().enumerate() {
        child.env(format!("IMGTX_OVERLAY_{i}"), o);
    }
    if json {
        // Keep stdout pure JSON: the command's own output goes to stderr.
        use std::os::fd::AsFd;
        let err = io::stderr().as_fd().try_clone_to_owned()?;
        child.stdout(std::process::Stdio::from(err));
    }
    Ok(child)
}

/// Starts `child` and waits for it, forwarding to it the signals another process sends.
fn wait_for(interrupts: &Interrupts, child: &mut Command) -> io::Result<ExitStatus> {
    let mut c = child.spawn()?;
    let pid = c.id();
    interrupts.forward_to(pid);
    let waited = c.wait();
    // Reaped (or lost): its pid may belong to someone else from now on.
    interrupts.stop_forwarding(pid);
    waited
}

/// `status` as a shell reports it: the exit code, or 128 + N when signal N killed it.
fn exit_status(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Replaces `{}` with the first overlay and `{N}` with overlay N in one argument, in one pass
/// from left to right: an overlay's path is never searched for placeholders itself (a base
/// named `x{0}y.img` gives an overlay whose name holds `{0}`). `{N}` past the last overlay,
/// and anything else in braces, stays as it is.
fn substitute(arg: &str, overlays: &[String]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let overlay = after.find('}').and_then(|close| {
            let inside = &after[..close];
            let index = match inside {
                "" => Some(0),
                digits if digits.bytes().all(|b| b.is_ascii_digit()) => digits.parse().ok(),
                _ => None,
            };
            index
                .and_then(|i: usize| overlays.get(i))
                .map(|o| (o, close))
        });
        match overlay {
            Some((o, close)) => {
                out.push_str(o);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_name_the_overlays() {
        let ov = vec!["/a.q".to_owned(), "/b.q".to_owned()];
        assert_eq!(substitute("{}", &ov), "/a.q");
        assert_eq!(substitute("x={1},y={0}", &ov), "x=/b.q,y=/a.q");
        assert_eq!(substitute("{2}", &ov), "{2}");
        assert_eq!(substitute("{x}{{1}}{", &ov), "{x}{/b.q}{");
    }

    #[test]
    fn a_placeholder_inside_an_overlay_path_is_not_substituted_again() {
        let ov = vec!["/x{0}y.img.tx-1.imgtx.qcow2".to_owned(), "/{}.q".to_owned()];
        assert_eq!(substitute("{}", &ov), ov[0]);
        assert_eq!(substitute("{1}:{0}", &ov), format!("{}:{}", ov[1], ov[0]));
    }

    #[test]
    fn a_command_killed_by_a_signal_reports_128_plus_it() {
        assert_eq!(exit_status(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_status(ExitStatus::from_raw(3 << 8)), 3);
    }
}
