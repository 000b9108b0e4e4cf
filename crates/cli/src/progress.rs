//! Progress of long copies (commit, recover): a bar on a terminal, JSON lines with `--json`,
//! nothing otherwise.
//!
//! The engine reports after every chunk it copies; this module decides what reaches the user.
//! A bar only appears once an operation has run for a second, so quick commits stay quiet,
//! and JSON events are throttled so a fast copy cannot flood a consumer.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use txn::Progress;

/// How long an operation runs before a bar appears.
const BAR_AFTER: Duration = Duration::from_secs(1);

/// The least time between two JSON progress events of the same image (at most 10 a second).
const JSON_EVERY: Duration = Duration::from_millis(100);

enum Mode {
    Silent,
    Json {
        /// When the last event went out, and for which image.
        last: Option<(Instant, usize)>,
    },
    Bar {
        bar: Option<ProgressBar>,
        image: usize,
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
                image: 0,
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
    pub fn report(&mut self, p: Progress) {
        match &mut self.mode {
            Mode::Silent => {}
            Mode::Json { last } => {
                let now = Instant::now();
                // The first and last event of each image always go out, so a consumer sees
                // every image start and finish however fast it was.
                let due = match *last {
                    None => true,
                    Some((at, image)) => {
                        image != p.image || p.done == p.total || now - at >= JSON_EVERY
                    }
                };
                if due {
                    *last = Some((now, p.image));
                    let line = json!({
                        "event": "progress",
                        "image": p.image,
                        "done": p.done,
                        "total": p.total,
                    });
                    // Progress is a courtesy: a closed stderr must not fail the commit.
                    let _ = writeln!(io::stderr().lock(), "{line}");
                }
            }
            Mode::Bar { bar, image } => {
                if bar.is_none() && self.started.elapsed() < BAR_AFTER {
                    return;
                }
                let b = bar.get_or_insert_with(|| {
                    let b = ProgressBar::with_draw_target(
                        Some(p.total),
                        ProgressDrawTarget::stderr_with_hz(10),
                    );
                    b.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
                             {binary_bytes_per_sec} ETA {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    *image = p.image;
                    b.set_message(format!("image {}", p.image));
                    b
                });
                if *image != p.image {
                    *image = p.image;
                    b.reset();
                    b.set_message(format!("image {}", p.image));
                }
                b.set_length(p.total);
                b.set_position(p.done);
            }
        }
    }

    /// Removes the bar, if one was drawn, before the command prints its result.
    pub fn finish(&mut self) {
        if let Mode::Bar { bar: Some(b), .. } = &self.mode {
            b.finish_and_clear();
        }
    }
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
        Progress { image, done, total }
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
        r.report(p(0, 10, 100));
        // Assert
        assert!(matches!(r.mode, Mode::Bar { bar: None, .. }));
    }

    #[test]
    fn json_throttling_remembers_the_last_event() {
        // Arrange
        let mut r = Reporter::with_terminal(true, false, false);
        // Act
        r.report(p(0, 0, 100));
        let first = match r.mode {
            Mode::Json { last } => last,
            _ => None,
        };
        r.report(p(0, 50, 100));
        let second = match r.mode {
            Mode::Json { last } => last,
            _ => None,
        };
        // Assert: the middle report came too soon to be sent.
        assert!(first.is_some());
        assert_eq!(first, second);
    }
}
