//! Progress of long copies (commit, recover): a bar on a terminal, JSON lines with `--json`,
//! nothing otherwise.
//!
//! The engine reports after every chunk it copies, for each phase of each image (saving
//! pre-images, applying the changes, restoring pre-images); this module decides what reaches
//! the user. A bar only appears once an operation has run for a second, so quick commits stay
//! quiet, and JSON events are throttled so a fast copy cannot flood a consumer.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use txn::{Phase, Progress};

/// How long an operation runs before a bar appears.
const BAR_AFTER: Duration = Duration::from_secs(1);

/// The least time between two JSON progress events of the same image (at most 10 a second).
const JSON_EVERY: Duration = Duration::from_millis(100);

enum Mode {
    Silent,
    Json {
        /// When the last event went out, and for which image and phase.
        last: Option<(Instant, usize, Phase)>,
    },
    Bar {
        bar: Option<ProgressBar>,
        /// The image and phase the bar shows.
        shows: (usize, Phase),
        target: Target,
    },
}

/// Turns the engine's progress callbacks into what the user sees.
pub struct Reporter {
    mode: Mode,
    started: Instant,
}

impl Reporter {
    /// A reporter for a command run with `--json` or `-q` as given; a bar needs stderr to be
    /// a terminal.
    pub fn new(json: bool, quiet: bool) -> Self {
        Self::with_terminal(json, quiet, io::stderr().is_terminal())
    }

    fn with_terminal(json: bool, quiet: bool, terminal: bool) -> Self {
        let mode = if quiet {
            Mode::Silent
        } else if json {
            Mode::Json { last: None }
        } else if terminal {
            Mode::Bar {
                bar: None,
                shows: (0, Phase::Apply),
                target: Target::Stderr,
            }
        } else {
            Mode::Silent
        };
        Self {
            mode,
            started: Instant::now(),
        }
    }

    /// Hears one report from the engine.
    pub fn report(&mut self, p: &Progress) {
        match &mut self.mode {
            Mode::Silent => {}
            Mode::Json { last } => {
                let now = Instant::now();
                // The first and last event of each phase of each image always go out, so a
                // consumer sees every one start and finish however fast it was.
                let due = match *last {
                    None => true,
                    Some((at, image, phase)) => {
                        (image, phase) != (p.image, p.phase)
                            || p.done == p.total
                            || now - at >= JSON_EVERY
                    }
                };
                if due {
                    *last = Some((now, p.image, p.phase));
                    let line = json!({
                        "event": "progress",
                        "image": p.image,
                        "phase": phase_name(p.phase),
                        "done": p.done,
                        "total": p.total,
                    });
                    // Progress is a courtesy: a closed stderr must not fail the commit.
                    let _ = writeln!(io::stderr().lock(), "{line}");
                }
            }
            Mode::Bar { bar, shows, target } => {
                if bar.is_none() && self.started.elapsed() < BAR_AFTER {
                    return;
                }
                // One bar per phase of each image: the one before is left drawn, at 100 %,
                // since its phase is over once the next one starts.
                if bar.is_some() && *shows != (p.image, p.phase) {
                    if let Some(old) = bar.take() {
                        complete(&old);
                    }
                }
                let b = bar.get_or_insert_with(|| {
                    *shows = (p.image, p.phase);
                    new_bar(p, target.make())
                });
                b.set_length(p.total);
                b.set_position(p.done);
            }
        }
    }

    /// The operation succeeded: the bar, if one was drawn, is left at 100 %, above the
    /// result the command prints next.
    pub fn finish(&mut self) {
        if let Mode::Bar { bar, .. } = &mut self.mode {
            if let Some(b) = bar.take() {
                complete(&b);
            }
        }
    }
}

/// Where bars are drawn: stderr, or nowhere (for tests).
#[derive(Debug, Clone, Copy)]
enum Target {
    Stderr,
    #[cfg(test)]
    Hidden,
}

impl Target {
    fn make(self) -> ProgressDrawTarget {
        match self {
            Self::Stderr => ProgressDrawTarget::stderr_with_hz(10),
            #[cfg(test)]
            Self::Hidden => ProgressDrawTarget::hidden(),
        }
    }
}

/// A bar for the phase `p` reports, drawn to `target`, already at `p.done`.
fn new_bar(p: &Progress, target: ProgressDrawTarget) -> ProgressBar {
    let b = ProgressBar::with_draw_target(Some(p.total), target);
    b.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
             {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_message(label(p));
    // A bar that appears a second into its phase starts where the phase is: the rate and
    // the ETA count from here, not as if all that was done took no time at all.
    b.set_position(p.done);
    b.reset_eta();
    b
}

/// Ends bar `b` at 100 % and leaves it drawn.
fn complete(b: &ProgressBar) {
    if let Some(len) = b.length() {
        b.set_position(len);
    }
    b.finish();
}

/// The phase as `--json` names it.
fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::PreImages => "pre-images",
        Phase::Apply => "apply",
        Phase::Restore => "restore",
    }
}

/// What the bar says it is doing.
fn label(p: &Progress) -> String {
    let what = match p.phase {
        Phase::PreImages => "saving pre-images of",
        Phase::Apply => "writing",
        Phase::Restore => "restoring",
    };
    let name = p.base.file_name().unwrap_or(p.base.as_os_str());
    format!("{what} {}", crate::output::escape(&name.to_string_lossy()))
}

impl Drop for Reporter {
    /// A bar still drawn when the operation failed is removed, not shown complete.
    fn drop(&mut self) {
        if let Mode::Bar { bar: Some(b), .. } = &self.mode {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(image: usize, done: u64, total: u64) -> Progress {
        Progress {
            image,
            base: std::path::Path::new("/vm/disk.img").into(),
            phase: Phase::Apply,
            done,
            total,
        }
    }

    #[test]
    fn quiet_wins_over_json_and_terminal() {
        let r = Reporter::with_terminal(true, true, true);
        assert!(matches!(r.mode, Mode::Silent));
    }

    #[test]
    fn no_terminal_and_no_json_means_silent() {
        let r = Reporter::with_terminal(false, false, false);
        assert!(matches!(r.mode, Mode::Silent));
    }

    #[test]
    fn a_bar_waits_a_second_before_appearing() {
        // Arrange
        let mut r = Reporter::with_terminal(false, false, true);
        // Act
        r.report(&p(0, 10, 100));
        // Assert
        assert!(matches!(r.mode, Mode::Bar { bar: None, .. }));
    }

    /// A bar reporter drawing nowhere, as if a second had passed already.
    fn bar_reporter() -> Reporter {
        let mut r = Reporter::with_terminal(false, false, true);
        if let Mode::Bar { target, .. } = &mut r.mode {
            *target = Target::Hidden;
        }
        r.started = Instant::now()
            .checked_sub(BAR_AFTER)
            .unwrap_or_else(Instant::now);
        r
    }

    /// The bar `r` draws now.
    fn shown(r: &Reporter) -> ProgressBar {
        match &r.mode {
            Mode::Bar { bar: Some(b), .. } => b.clone(),
            _ => panic!("no bar"),
        }
    }

    #[test]
    fn a_bar_names_the_image_by_its_file_name() {
        let mut r = bar_reporter();
        r.report(&p(0, 10, 100));
        assert_eq!(shown(&r).message(), "writing disk.img");
    }

    #[test]
    fn a_new_phase_gets_a_new_bar_and_the_old_one_ends_at_100_percent() {
        // Arrange
        let mut r = bar_reporter();
        r.report(&Progress {
            phase: Phase::PreImages,
            ..p(0, 60, 100)
        });
        let first = shown(&r);
        // Act
        r.report(&p(0, 10, 200));
        // Assert
        assert!(first.is_finished());
        assert_eq!(first.position(), 100);
        let second = shown(&r);
        assert_eq!((second.position(), second.length()), (10, Some(200)));
    }

    #[test]
    fn a_finished_operation_leaves_its_bar_at_100_percent() {
        let mut r = bar_reporter();
        r.report(&p(0, 90, 100));
        let b = shown(&r);
        r.finish();
        assert!(b.is_finished());
        assert_eq!(b.position(), 100);
    }

    #[test]
    fn json_throttling_remembers_the_last_event() {
        // Arrange
        let mut r = Reporter::with_terminal(true, false, false);
        // Act
        r.report(&p(0, 0, 100));
        let first = match r.mode {
            Mode::Json { last } => last,
            _ => None,
        };
        r.report(&p(0, 50, 100));
        let second = match r.mode {
            Mode::Json { last } => last,
            _ => None,
        };
        // Assert: the middle report came too soon to be sent.
        assert!(first.is_some());
        assert_eq!(first, second);
    }

    #[test]
    fn json_sends_a_new_phase_at_once() {
        // Arrange
        let mut r = Reporter::with_terminal(true, false, false);
        r.report(&Progress {
            phase: Phase::PreImages,
            ..p(0, 0, 100)
        });
        // Act: right away, the same image's next phase starts.
        r.report(&p(0, 0, 100));
        // Assert
        let last = match r.mode {
            Mode::Json { last } => last.map(|(_, image, phase)| (image, phase)),
            _ => None,
        };
        assert_eq!(last, Some((0, Phase::Apply)));
    }
}
