//! `imgtx run --each`: one command over many images, one transaction per image, N at a time,
//! with a result per image and a summary.
//!
//! What it is: a scheduler over [`crate::runner`], which does each image's transaction
//! (begin, the command on its overlay, commit on exit 0, else rollback) exactly as `run`
//! does. An image whose command fails, or that cannot begin (held by another transaction,
//! missing), rolls back or stays untouched alone, and the batch goes on. What it is not: an
//! atomic change of all the images (that is `run` with several images), nor a retry loop:
//! an image that failed stays failed, and the summary names it.
//!
//! Threads: N workers, started with the caught signals blocked (see `interrupt.rs`), each
//! take the next image and tell the main thread what becomes of it. The main thread prints
//! each result as it comes, keeps the progress line, and answers the workers' question "did
//! the user ask to stop?", which only it can answer for sure: the signal handler runs there.
//!
//! A signal stops the batch: the running commands get it (forwarded as in `run`), what is
//! in flight is rolled back (a commit past its commit point is finished), no image starts
//! after it, and the summary says which images were done, rolled back or never started.

use std::collections::HashMap;
use std::io::{self, IsTerminal, Write};
use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};

use serde_json::{json, Value};
use txn::{BeginOptions, CommitOptions, CommitReport, TxId};

use crate::args::BeginArgs;
use crate::failure::{signal_exit, Failure};
use crate::interrupt::{self, Interrupts};
use crate::options::{self, begin_options};
use crate::output::{self, Out};
use crate::runner::{self, Committed, OsEngine, Ran};
use crate::tag::{self, Tag};
use crate::when;

/// Exit status of a batch in which some image was not committed (and no signal came).
const EXIT_NOT_ALL_COMMITTED: u8 = 1;

/// What became of one image.
enum Outcome {
    /// Committed.
    Committed(CommitReport),
    /// Rolled back: the base is as it was.
    RolledBack { id: TxId, why: Why },
    /// No transaction began (the image is held by another, missing, ...): nothing changed.
    BeginFailed(Failure),
    /// The commit or the rollback failed: the transaction is left as the error says.
    Failed {
        id: TxId,
        /// The command's exit status, if it ran to the end.
        exit_code: Option<i32>,
        error: Failure,
    },
    /// Never started: the user asked to stop first.
    NotStarted,
}

/// Why an image was rolled back.
enum Why {
    /// The command exited with this status (128 + N when signal N, the second, killed it).
    Exit(i32, Option<i32>),
    /// The user asked to stop, with this signal.
    Signal(i32),
    /// The command could not be started; the failure carries the exit status, 127 (no such
    /// program) or 126.
    NotRun(Failure),
    /// Other writers could not be kept out of the base.
    Error(Failure),
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Self::Committed(_) => "committed",
            Self::RolledBack { .. } => "rolled_back",
            Self::BeginFailed(_) => "begin_failed",
            Self::Failed { .. } => "failed",
            Self::NotStarted => "not_started",
        }
    }

    /// What happened, in a few words, after the base's name.
    fn describe(&self) -> String {
        match self {
            Self::Committed(r) => format!("committed {}", r.id),
            Self::RolledBack { id, why } => match why {
                Why::Exit(code, signal) => {
                    format!(
                        "command {}; rolled back {id}",
                        output::ended(*code, *signal)
                    )
                }
                Why::Signal(sig) => {
                    format!(
                        "interrupted by {}; rolled back {id}",
                        output::signal_name(*sig)
                    )
                }
                Why::NotRun(f) | Why::Error(f) => {
                    format!("{}; rolled back {id}", f.message())
                }
            },
            Self::BeginFailed(f) => format!("not begun: {}", f.message()),
            Self::Failed { id, error, .. } => format!("{id} failed: {}", error.message()),
            Self::NotStarted => "never started".to_owned(),
        }
    }

    /// True when the command could not be started for this image.
    fn not_run(&self) -> bool {
        matches!(
            self,
            Self::RolledBack {
                why: Why::NotRun(_),
                ..
            }
        )
    }

    fn failure(&self) -> Option<&Failure> {
        match self {
            Self::RolledBack {
                why: Why::Error(f) | Why::NotRun(f),
                ..
            }
            | Self::BeginFailed(f)
            | Self::Failed { error: f, .. } => Some(f),
            _ => None,
        }
    }

    fn json(&self, base: &Path) -> Value {
        let (id, exit_code, signal) = match self {
            Self::Committed(r) => (Some(&r.id), Some(0), None),
            Self::RolledBack { id, why } => match why {
                Why::Exit(code, _) => (Some(id), Some(*code), None),
                Why::Signal(sig) => (Some(id), None, Some(output::signal_name(*sig))),
                Why::NotRun(f) => (Some(id), Some(i32::from(f.code)), None),
                Why::Error(_) => (Some(id), None, None),
            },
            Self::Failed { id, exit_code, .. } => (Some(id), *exit_code, None),
            Self::BeginFailed(_) | Self::NotStarted => (None, None, None),
        };
        let report = match self {
            Self::Committed(r) => Some(r),
            _ => None,
        };
        json!({
            "base": base,
            "id": id,
            "outcome": self.name(),
            "exit_code": exit_code,
            "signal": signal,
            "error": self.failure().map(Failure::message),
            "hint": self.failure().and_then(Failure::hint),
            "changed_bytes": report.map(|r| r.images.iter().map(|i| i.changed_bytes).sum::<u64>()),
            "spares": report.map(|r| &r.spares),
        })
    }
}

/// What a worker tells the main thread.
enum Event {
    /// An image begins.
    Started,
    /// The worker asks whether the user asked to stop; the answer goes back through here.
    Asks(SyncSender<Option<i32>>),
    /// What became of image `i`.
    Finished(usize, Outcome),
}

/// What every worker needs.
struct Batch<'a> {
    engine: &'a OsEngine,
    interrupts: &'a Interrupts,
    json: bool,
    /// Begin options with no base: each image's are these with its base.
    begin: BeginOptions,
    commit: CommitOptions,
    command: &'a [String],
    /// The images that could be resolved: their index in the list and absolute path.
    todo: Vec<(usize, PathBuf)>,
    /// The next of `todo` to take.
    next: AtomicUsize,
    /// Set to 127 or 126 when the command could not be started for an image: it cannot be
    /// for the next ones either (the program is the same), so none of them starts.
    cannot_run: AtomicU8,
}

/// `run --each`: runs `command` on each of `bases` in a transaction of its own, `jobs` at a
/// time, prints what became of each and a summary, and returns the exit status: 0 when all
/// committed, 128 + N after signal N, 127 or 126 when the command could not be started (as
/// xargs says it; no image starts after that), else [`EXIT_NOT_ALL_COMMITTED`].
///
/// # Errors
/// Before anything began: a bad `--wait`, an image named twice, no thread to run on.
pub fn run(
    (engine, interrupts): (&OsEngine, &Interrupts),
    out: &Out,
    (opts, commit, jobs): (&BeginArgs, CommitOptions, NonZeroUsize),
    (bases, command): (&[PathBuf], Vec<String>),
) -> Result<u8, Failure> {
    let begin = begin_options(opts, &[], Some(command.clone()))?;
    let (shown, mut results, todo) = resolve(bases)?;
    let mut tally = Tally::new(out, bases.len());
    for (i, o) in results.iter().enumerate() {
        if let Some(o) = o {
            tally.finished(&shown[i], o, false);
        }
    }
    let batch = Batch {
        engine,
        interrupts,
        json: out.json,
        begin,
        commit,
        command: &command,
        todo,
        next: AtomicUsize::new(0),
        cannot_run: AtomicU8::new(0),
    };
    let workers = jobs.get().min(batch.todo.len());
    std::thread::scope(|s| -> Result<(), Failure> {
        let (events, heard) = mpsc::channel();
        let batch = &batch;
        for w in 0..workers {
            let events = events.clone();
            let name = format!("each-{w}");
            if let Err(e) = interrupt::spawn_blocked(s, name, move || work(batch, &events)) {
                if w == 0 {
                    return Err(anyhow::Error::new(e)
                        .context("could not start a thread")
                        .into());
                }
                tracing::warn!(error = %e, jobs = w, "fewer threads than --jobs asked for");
                break;
            }
        }
        drop(events);
        // Until every worker is done: each holds a sender.
        for event in heard {
            match event {
                Event::Started => tally.started(),
                Event::Asks(answer) => {
                    // Answered here, on the thread where the handler runs: a signal that
                    // came before the question is seen (see interrupt.rs).
                    let _ = answer.send(interrupts.received());
                }
                Event::Finished(i, outcome) => {
                    tally.finished(&shown[i], &outcome, true);
                    results[i] = Some(outcome);
                }
            }
        }
        Ok(())
    })?;
    tally.clear();
    let results: Vec<Outcome> = results
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::NotStarted))
        .collect();
    let signal = interrupts.received();
    let all_committed = results.iter().all(|o| matches!(o, Outcome::Committed(_)));
    let code = match (signal, batch.cannot_run.load(Ordering::SeqCst)) {
        (Some(sig), _) => signal_exit(sig),
        (None, _) if all_committed => 0,
        (None, 0) => EXIT_NOT_ALL_COMMITTED,
        (None, not_run) => not_run,
    };
    if out.json {
        output::print_json(&summary_json(&shown, &results, signal, code))?;
    } else if !out.quiet || code != 0 {
        let lines = summary(&shown, &results, signal);
        for l in lines {
            output::say(&l);
        }
    }
    Ok(code)
}

/// Resolves each of `bases`: their names as results show them (absolute when resolved),
/// the outcome of those that could not be (they never begin), and those to do.
///
/// # Errors
/// When one file is named twice (under any name): both transactions would want it.
#[allow(clippy::type_complexity)]
fn resolve(
    bases: &[PathBuf],
) -> Result<(Vec<PathBuf>, Vec<Option<Outcome>>, Vec<(usize, PathBuf)>), Failure> {
    let mut shown = Vec::with_capacity(bases.len());
    let mut results = Vec::with_capacity(bases.len());
    let mut todo = Vec::new();
    let mut seen: HashMap<(u64, u64), usize> = HashMap::new();
    for (i, given) in bases.iter().enumerate() {
        let resolved = options::resolve(given).and_then(|p| {
            let m = std::fs::metadata(&p)?;
            Ok((p, (m.dev(), m.ino())))
        });
        match resolved {
            Ok((path, file)) => {
                if let Some(&first) = seen.get(&file) {
                    return Err(Failure {
                        error: anyhow::anyhow!(
                            "{} and {} are the same image: name each image once",
                            bases[first].display(),
                            given.display()
                        ),
                        code: crate::failure::EXIT_USAGE,
                    });
                }
                seen.insert(file, i);
                shown.push(path.clone());
                results.push(None);
                todo.push((i, path));
            }
            Err(f) => {
                shown.push(given.clone());
                results.push(Some(Outcome::BeginFailed(f)));
            }
        }
    }
    Ok((shown, results, todo))
}

/// A worker: takes the next image until none is left or the user asked to stop.
fn work(b: &Batch<'_>, events: &Sender<Event>) {
    let stop = || {
        let (answer, hear) = mpsc::sync_channel(1);
        if events.send(Event::Asks(answer)).is_err() {
            return b.interrupts.received();
        }
        hear.recv().unwrap_or_else(|_| b.interrupts.received())
    };
    loop {
        let Some((i, base)) = b.todo.get(b.next.fetch_add(1, Ordering::SeqCst)) else {
            return;
        };
        if stop().is_some() || b.cannot_run.load(Ordering::SeqCst) != 0 {
            // Starts nothing new: this image and those after it are reported never started.
            return;
        }
        let _ = events.send(Event::Started);
        let outcome = one(b, base, &stop);
        let _ = events.send(Event::Finished(*i, outcome));
    }
}

/// The transaction of one image, from begin to commit or rollback.
fn one(b: &Batch<'_>, base: &Path, stop: &dyn Fn() -> Option<i32>) -> Outcome {
    let opts = BeginOptions {
        bases: vec![base.to_path_buf()],
        ..b.begin.clone()
    };
    let m = match runner::begin(b.engine, b.json, &opts) {
        Ok(m) => m,
        // Stopped while it waited for the image: nothing began.
        Err(txn::Error::Stopped { .. }) => return Outcome::NotStarted,
        Err(e) => return Outcome::BeginFailed(e.into()),
    };
    let id = m.id.clone();
    let rolled_back = |why| Outcome::RolledBack {
        id: id.clone(),
        why,
    };
    let failed = |exit_code, error| Outcome::Failed {
        id: id.clone(),
        exit_code,
        error,
    };
    let ran = runner::run_on(b.engine, b.interrupts, (&m, b.command), b.json, stop);
    let _writers_out = match ran {
        Err(error) => return failed(None, error),
        Ok(Ran::Stopped(sig)) => return rolled_back(Why::Signal(sig)),
        Ok(Ran::InUse(e)) => return rolled_back(Why::Error(e.into())),
        Ok(Ran::NotStarted { program, error }) => {
            let failure = runner::not_started(&program, &error, None);
            b.cannot_run.store(failure.code, Ordering::SeqCst);
            return rolled_back(Why::NotRun(failure));
        }
        Ok(Ran::Exited { code, signal, .. }) if code != 0 => {
            return match b.engine.rollback(&id) {
                Ok(()) => rolled_back(Why::Exit(code, signal)),
                Err(e) => failed(Some(code), e.into()),
            };
        }
        Ok(Ran::Exited { guards, .. }) => guards,
    };
    match runner::commit(b.engine, &id, b.commit, &mut |_| {}) {
        Ok(Committed::Done(r)) => Outcome::Committed(r),
        Ok(Committed::Stopped(sig)) => rolled_back(Why::Signal(sig)),
        Err(e) => failed(Some(0), e.into()),
    }
}

/// The JSON document of the whole batch.
fn summary_json(shown: &[PathBuf], results: &[Outcome], signal: Option<i32>, code: u8) -> Value {
    let count = |name: &str| results.iter().filter(|o| o.name() == name).count();
    json!({
        "exit_code": code,
        "signal": signal.map(output::signal_name),
        "committed": count("committed"),
        "rolled_back": count("rolled_back"),
        "begin_failed": count("begin_failed"),
        "failed": count("failed"),
        "not_started": count("not_started"),
        "images": shown.iter().zip(results).map(|(b, o)| o.json(b)).collect::<Vec<_>>(),
    })
}

/// The human summary: how many committed, then every image that was not (and, after a
/// signal, every image, so that it is clear which were done).
fn summary(shown: &[PathBuf], results: &[Outcome], signal: Option<i32>) -> Vec<String> {
    let n = results.len();
    let committed = results
        .iter()
        .filter(|o| matches!(o, Outcome::Committed(_)))
        .count();
    let mut lines = Vec::new();
    let head = match signal {
        Some(sig) => {
            let count = |name: &str| results.iter().filter(|o| o.name() == name).count();
            format!(
                "imgtx: interrupted by {}: {committed} of {n} images committed, {} rolled back, \
                 {} never started",
                output::signal_name(sig),
                count("rolled_back"),
                count("not_started"),
            )
        }
        None if committed == n => format!("imgtx: all {n} images committed"),
        None if results.iter().any(Outcome::not_run) => format!(
            "imgtx: {committed} of {n} images committed (the command could not be started, \
             so no image started after that); not committed:"
        ),
        None => format!("imgtx: {committed} of {n} images committed; not committed:"),
    };
    lines.push(head);
    for (base, o) in shown.iter().zip(results) {
        if signal.is_some() || !matches!(o, Outcome::Committed(_)) {
            lines.push(format!(
                "  {}: {}",
                base.display(),
                when::in_text(&o.describe())
            ));
        }
    }
    lines
}

/// What the user sees while the batch runs: a line per image as it finishes (on stderr, as
/// `run` says what it did), and on a terminal a progress line under them, redrawn in place
/// (by hand rather than by a progress-bar library: no drawing thread, which would be one
/// more thread a signal could be delivered to, and no frame skipped for rate).
struct Tally {
    /// Draw the progress line: stderr is a terminal, and neither `--json` nor `-q` was given.
    terminal: bool,
    /// Print the line of each image as it finishes.
    lines: bool,
    /// The progress line is on the screen.
    drawn: bool,
    total: usize,
    /// Images finished, how many of them did not commit, and images running now.
    done: usize,
    failed: usize,
    running: usize,
}

impl Tally {
    fn new(out: &Out, total: usize) -> Self {
        let lines = !out.json && !out.quiet;
        let mut t = Self {
            terminal: lines && io::stderr().is_terminal(),
            lines,
            drawn: false,
            total,
            done: 0,
            failed: 0,
            running: 0,
        };
        t.draw(&mut io::stderr().lock());
        t
    }

    fn started(&mut self) {
        self.running += 1;
        self.draw(&mut io::stderr().lock());
    }

    /// Image `base` ended with `o`, after running if `ran` (else it could not even begin).
    fn finished(&mut self, base: &Path, o: &Outcome, ran: bool) {
        if ran {
            self.running = self.running.saturating_sub(1);
        }
        self.done += 1;
        if !matches!(o, Outcome::Committed(_)) {
            self.failed += 1;
        }
        let mut err = io::stderr().lock();
        if self.lines {
            self.clear_line(&mut err);
            // An image that failed for a reason of imgtx's (it could not begin, its command
            // could not be started, its commit failed) is an error line, with its hint; one
            // whose command said no is a plain report, as `run` gives it.
            let line = format!("{}: {}", base.display(), o.describe());
            let _ = match o.failure() {
                Some(f) => {
                    let _ = writeln!(err, "{}", tag::line(Tag::Error, &line));
                    match f.hint() {
                        Some(hint) => writeln!(err, "{}", tag::line(Tag::Hint, &hint)),
                        None => Ok(()),
                    }
                }
                None => writeln!(err, "{}", crate::term::escape(&when::in_text(&line))),
            };
        }
        self.draw(&mut err);
    }

    fn draw(&mut self, err: &mut impl Write) {
        if self.terminal {
            let _ = write!(
                err,
                "\r{}/{} done, {} failed, {} running\x1b[K",
                self.done, self.total, self.failed, self.running
            );
            let _ = err.flush();
            self.drawn = true;
        }
    }

    /// Removes the progress line, so that what comes next is printed where it was.
    fn clear_line(&mut self, err: &mut impl Write) {
        if self.drawn {
            let _ = write!(err, "\r\x1b[K");
            self.drawn = false;
        }
    }

    /// Removes the progress line before the summary.
    fn clear(&mut self) {
        self.clear_line(&mut io::stderr().lock());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> TxId {
        TxId::from_random([n; 5])
    }

    fn committed(n: u8) -> Outcome {
        Outcome::Committed(CommitReport {
            id: id(n),
            images: Vec::new(),
            spares: Vec::new(),
        })
    }

    fn bases(n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| PathBuf::from(format!("/vm/{i}.img")))
            .collect()
    }

    #[test]
    fn the_summary_names_only_what_was_not_committed() {
        // Arrange
        let results = vec![
            committed(1),
            Outcome::RolledBack {
                id: id(2),
                why: Why::Exit(3, None),
            },
            Outcome::BeginFailed(anyhow::anyhow!("it is held").into()),
        ];
        // Act
        let lines = summary(&bases(3), &results, None);
        // Assert
        assert_eq!(
            lines,
            vec![
                "imgtx: 1 of 3 images committed; not committed:".to_owned(),
                format!(
                    "  /vm/1.img: command exited with status 3; rolled back {}",
                    id(2)
                ),
                "  /vm/2.img: not begun: it is held".to_owned(),
            ]
        );
    }

    #[test]
    fn after_a_signal_the_summary_names_every_image() {
        // Arrange
        let results = vec![
            committed(1),
            Outcome::RolledBack {
                id: id(2),
                why: Why::Signal(15),
            },
            Outcome::NotStarted,
        ];
        // Act
        let lines = summary(&bases(3), &results, Some(15));
        // Assert
        assert_eq!(
            lines,
            vec![
                "imgtx: interrupted by SIGTERM: 1 of 3 images committed, 1 rolled back, 1 never \
                 started"
                    .to_owned(),
                format!("  /vm/0.img: committed {}", id(1)),
                format!("  /vm/1.img: interrupted by SIGTERM; rolled back {}", id(2)),
                "  /vm/2.img: never started".to_owned(),
            ]
        );
    }

    #[test]
    fn the_json_document_lists_every_image_in_the_order_given() {
        // Arrange
        let results = vec![
            Outcome::NotStarted,
            committed(1),
            Outcome::Failed {
                id: id(3),
                exit_code: Some(0),
                error: anyhow::anyhow!("no room").into(),
            },
        ];
        // Act
        let v = summary_json(&bases(3), &results, None, EXIT_NOT_ALL_COMMITTED);
        // Assert
        let outcomes: Vec<&str> = v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["not_started", "committed", "failed"]);
        assert_eq!(v["images"][2]["error"], "no room");
        assert_eq!(v["images"][1]["id"], id(1).as_str());
        assert_eq!(v["images"][0]["id"], Value::Null);
        assert_eq!(
            (v["committed"].as_u64(), v["failed"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(v["exit_code"], 1);
    }
}
