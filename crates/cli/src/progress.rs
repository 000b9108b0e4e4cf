//! Progress of long copies (commit, recover): a bar on a terminal, JSON lines with `--json`,
//! nothing otherwise.
//!
//! The engine reports after every chunk it copies, for each phase of each image (saving
//! pre-images, applying the changes, restoring pre-images); this module decides what reaches
//! the user. A bar only appears once an operation has run for a second, so quick commits stay
//! quiet, and JSON events are throttled so a fast copy cannot flood a consumer.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{
    HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle,
};
use serde_json::json;
use txn::{Phase, Progress};

/// How long an operation runs before a bar appears.
const BAR_AFTER: Duration = Duration::from_secs(1);

/// How long a bar runs before it shows a rate: the first chunks say too little.
const RATE_AFTER: Duration = Duration::from_millis(500);

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
                        "base": &*p.base,
                        "phase": phase_name(p.phase),
                        "done": p.done,
                        "total": p.total,
                    });
                    // Progress is a courtesy: a closed stderr must not fail the commit.
                    let _ = writeln!(io::stderr().lock(), "{line}");
                }
            }
            Mode::Bar { bar, shows } => {
                if bar.is_none() && self.started.elapsed() < BAR_AFTER {
                    return;
                }
                // One bar per phase of each image: the finished one stays at its end, full,
                // and the next starts below it, instead of one bar falling back to zero.
                if bar.is_some() && *shows != (p.image, p.phase) {
                    if let Some(done) = bar.take() {
                        complete(&done);
                    }
                }
                let b = bar.get_or_insert_with(|| {
                    *shows = (p.image, p.phase);
                    new_bar(p)
                });
                b.set_length(p.total);
                b.set_position(p.done);
                // Done: the last frame stays with the rate of the copy, not one that sinks
                // while the commit syncs and logs.
                if p.done == p.total {
                    complete(b);
                }
            }
        }
    }

    /// Leaves the last bar, if one was drawn, at its end before the command prints its
    /// result.
    pub fn finish(&mut self) {
        if let Mode::Bar { bar, .. } = &mut self.mode {
            if let Some(b) = bar.take() {
                complete(&b);
            }
        }
    }
}

/// The phase as `--json` names it.
fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::PreImages => "pre-images",
        Phase::Apply => "apply",
        Phase::Restore => "restore",
    }
}

/// A bar for the phase `p` reports, starting where it is.
fn new_bar(p: &Progress) -> ProgressBar {
    let b = ProgressBar::with_draw_target(Some(p.total), ProgressDrawTarget::stderr_with_hz(10))
        .with_position(p.done);
    let from = p.done;
    b.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes}{rate}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("rate", move |s: &ProgressState, w: &mut dyn fmt::Write| {
                let left = s.len().map(|l| l.saturating_sub(s.pos()));
                let _ = w.write_str(&rate_text(s.pos().saturating_sub(from), s.elapsed(), left));
            })
            .progress_chars("=> "),
    );
    b.set_message(label(p));
    b
}

/// How fast the bar's phase goes and how long it has left: ` 212.5 MiB/s, 3s left`.
///
/// The rate is the bytes copied since the bar appeared over the time since, not
/// indicatif's running estimate, which the first chunks after a bar appears (or a phase
/// half done before it) blow up to hundreds of GiB/s. Under half a second there is too little
/// to go by, and nothing is shown.
fn rate_text(moved: u64, elapsed: Duration, left: Option<u64>) -> String {
    let secs = elapsed.as_secs_f64();
    if secs < RATE_AFTER.as_secs_f64() || moved == 0 {
        return String::new();
    }
    // In f64: exact enough for what is shown with three digits.
    let rate = moved as f64 / secs;
    let shown = HumanBytes(rate as u64);
    match left.map(|l| (l as f64 / rate).ceil() as u64) {
        Some(0) | None => format!(" {shown}/s"),
        Some(s) => format!(" {shown}/s, {} left", HumanDuration(Duration::from_secs(s))),
    }
}

/// Shows `b` full and leaves it on the screen: its phase is over.
fn complete(b: &ProgressBar) {
    if b.is_finished() {
        return;
    }
    if let Some(len) = b.length() {
        b.set_position(len);
    }
    b.finish();
}

/// What the bar says it is doing, and to which image (its file name).
fn label(p: &Progress) -> String {
    let what = match p.phase {
        Phase::PreImages => "saving pre-images of",
        Phase::Apply => "writing",
        Phase::Restore => "restoring",
    };
    let name = p.base.file_name().map_or_else(
        || p.base.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!("{what} {}", crate::term::escape(&name))
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
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

    #[test]
    fn the_rate_waits_half_a_second_and_ends_without_a_time_left() {
        let mib = 1 << 20;
        let second = Duration::from_secs(1);
        assert_eq!(rate_text(mib, RATE_AFTER / 2, Some(mib)), "");
        assert_eq!(rate_text(0, second, Some(mib)), "");
        assert_eq!(
            rate_text(4 * mib, second, Some(8 * mib)),
            " 4.00 MiB/s, 2 seconds left"
        );
        assert_eq!(rate_text(4 * mib, second, Some(0)), " 4.00 MiB/s");
    }

    #[test]
    fn the_bar_names_the_image_by_its_file_name() {
        assert_eq!(label(&p(0, 0, 1)), "writing disk.img");
    }

    #[test]
    fn a_new_phase_gets_a_bar_of_its_own_and_the_last_one_ends_full() {
        // Arrange: a bar already showing the first phase.
        let mut r = Reporter::with_terminal(false, false, true);
        r.started -= BAR_AFTER;
        let first = Progress {
            phase: Phase::PreImages,
            ..p(0, 40, 100)
        };
        r.report(&first);
        let before = match &r.mode {
            Mode::Bar { bar: Some(b), .. } => b.clone(),
            _ => panic!("no bar"),
        };
        // Act: the next phase begins.
        r.report(&p(0, 5, 200));
        // Assert: the first bar ended full; a new one shows the new phase from where it is.
        assert!(before.is_finished());
        assert_eq!(before.position(), 100);
        match &r.mode {
            Mode::Bar {
                bar: Some(b),
                shows,
            } => {
                assert_eq!(*shows, (0, Phase::Apply));
                assert_eq!((b.position(), b.length()), (5, Some(200)));
            }
            _ => panic!("no bar"),
        }
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
