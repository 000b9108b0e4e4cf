//! The `tracing` subscriber: warnings (and, with `-v` or `IMGTX_LOG`, more) on stderr. As
//! human text they are tagged like every other line imgtx writes there (`imgtx: warning: …`),
//! coloured only on a terminal and have their control characters escaped
//! (a path holding a newline must not forge a line); with `--json` each is one JSON object on
//! a line, like everything else imgtx writes on stderr then, never coloured.

use std::fmt;
use std::io::{self, Write};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::tag::{self, Tag};

/// Installs the subscriber: `IMGTX_LOG` (a `tracing` filter) if set, else the level `-q` or
/// `-v` ask for; JSON lines with `json`.
pub fn init(quiet: bool, verbose: u8, json: bool) {
    let level = if quiet {
        "error"
    } else {
        match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_env("IMGTX_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .with_target(false);
    let _ = if json {
        builder.with_ansi(false).event_format(JsonLine).try_init()
    } else {
        builder
            .with_ansi(crate::term::colour())
            .event_format(HumanLine)
            .try_init()
    };
}

/// Stderr for log lines: each line written whole, with control characters escaped (but for
/// the line's end and, on a colouring terminal, the escape that starts a colour), and write
/// errors ignored: a closed or full stderr must never stop the work the line tells about.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> Self::Writer {
        StderrLine
    }
}

/// One write of a log event to [`Stderr`].
struct StderrLine;

impl Write for StderrLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let colour = crate::term::colour();
        let escaped: String = body
            .split('\x1b')
            .map(|part| crate::term::escape(part).into_owned())
            .collect::<Vec<_>>()
            .join(if colour { "\x1b" } else { "\\x1b" });
        let end = if body.len() < text.len() { "\n" } else { "" };
        let _ = io::stderr()
            .lock()
            .write_all(format!("{escaped}{end}").as_bytes());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Formats an event in the style of every line imgtx writes on stderr
/// (`imgtx: warning: MESSAGE FIELD=VALUE...`, see [`crate::tag`]). No time stamp: the
/// system journal adds its own, and on a terminal it would only push the message right.
struct HumanLine;

impl<S, N> FormatEvent<S, N> for HumanLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let tag = Tag::of_level(*event.metadata().level());
        write!(writer, "{}", tag::prefix(tag, writer.has_ansi_escapes()))?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Formats an event as one JSON object: `{"level": "warn", "message": "...", FIELD: VALUE...}`.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut line = fields.0;
        let message = line.remove("message").unwrap_or(Value::Null);
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        line.insert("level".into(), Value::String(level));
        line.insert("message".into(), message);
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// An event's fields as JSON values: numbers and booleans as such, the rest as text.
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}
