//! The one style of the lines imgtx writes on stderr about how things go, whichever part
//! writes them (a failed command, a usage error, a log line, a signal that came too late):
//! `imgtx: error: …`, `imgtx: hint: …`, `imgtx: warning: …`, `imgtx: info: …`. A reader, or
//! a `grep '^imgtx: error:'` over a batch job's log, finds them all the same way.
//!
//! Only the tag word is coloured, and only when stderr is a terminal without `NO_COLOR`.
//! This module is not the command's output (that is [`crate::output`]), nor the JSON form
//! that `--json` puts on stderr instead.

use std::io::{self, Write};

/// What a line on stderr is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// The command, or one part of it (an image of `run --each`, a transaction `recover`
    /// could not finish), failed.
    Error,
    /// What to do about the error just above.
    Hint,
    /// Something the user should know; the work goes on.
    Warning,
    /// Log lines asked for with `-v`, `-vv`, `-vvv` or `IMGTX_LOG`.
    Info,
    Debug,
    Trace,
}

impl Tag {
    /// The tag of a log event of level `level`.
    pub fn of_level(level: tracing::Level) -> Self {
        match level {
            tracing::Level::ERROR => Self::Error,
            tracing::Level::WARN => Self::Warning,
            tracing::Level::INFO => Self::Info,
            tracing::Level::DEBUG => Self::Debug,
            tracing::Level::TRACE => Self::Trace,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Hint => "hint",
            Self::Warning => "warning",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }

    /// The SGR parameters of the tag word on a terminal: bold red errors, bold yellow
    /// warnings, cyan hints; the log levels as `tracing` colours them.
    fn sgr(self) -> &'static str {
        match self {
            Self::Error => "1;31",
            Self::Hint => "36",
            Self::Warning => "1;33",
            Self::Info => "32",
            Self::Debug => "34",
            Self::Trace => "35",
        }
    }
}

/// The start of a line tagged `tag`: `imgtx: error: `, the word coloured when `colour`.
pub fn prefix(tag: Tag, colour: bool) -> String {
    if colour {
        format!("imgtx: \x1b[{}m{}\x1b[0m: ", tag.sgr(), tag.word())
    } else {
        format!("imgtx: {}: ", tag.word())
    }
}

/// `text` as a line tagged `tag` for stderr, its control characters escaped.
pub fn line(tag: Tag, text: &str) -> String {
    styled(tag, text, crate::term::colour())
}

/// `text` as a line tagged `tag`, its control characters escaped and its recorded times
/// shown for people (see [`crate::when`]), the tag coloured when `colour`.
pub fn styled(tag: Tag, text: &str, colour: bool) -> String {
    let text = crate::when::in_text(text);
    format!("{}{}", prefix(tag, colour), crate::term::escape(&text))
}

/// Writes `text` on stderr as a line tagged `tag`. A failed write is ignored: what the line
/// tells about goes on (or is done) whether anyone reads it or not.
pub fn say(tag: Tag, text: &str) {
    let _ = writeln!(io::stderr().lock(), "{}", line(tag, text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tag_starts_with_the_program_name_and_colours_only_its_word() {
        assert_eq!(prefix(Tag::Error, false), "imgtx: error: ");
        assert_eq!(prefix(Tag::Hint, false), "imgtx: hint: ");
        assert_eq!(
            prefix(Tag::Warning, true),
            "imgtx: \x1b[1;33mwarning\x1b[0m: "
        );
        assert_eq!(Tag::of_level(tracing::Level::WARN), Tag::Warning);
    }
}
