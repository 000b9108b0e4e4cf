//! Usage errors, as clap finds them, with imgtx's own tips where clap's would mislead: a
//! `run` whose command was not put after `--` (clap would say to put `--` before an option
//! of the command), and a mistyped command (clap would offer the hidden `generate`, or `run`,
//! which commits, for `undo`).

use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use serde_json::json;

use crate::failure::EXIT_USAGE;
use crate::tag::{self, Tag};

/// The tip for a `run` whose command was not put after `--`.
const RUN_TIP: &str =
    "put `--` between the base images and the command: imgtx run BASE... -- CMD ARGS...";

/// Words people type to take changes back, none of them a command: the tip names the two
/// commands that do, so that nothing suggests one that commits.
const UNDO_WORDS: [&str; 6] = ["undo", "abort", "cancel", "discard", "drop", "reset"];

/// Reports clap's error `e` for the command line `raw` (as JSON with `--json`) and returns
/// the exit status.
pub fn report(raw: &[OsString], e: &clap::Error) -> ExitCode {
    let code = ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
    let wants_json = raw.iter().any(|a| a == "--json");
    let shown = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    let tip = tip(raw, e);
    if wants_json && !shown {
        let rendered = e.to_string();
        let first = rendered.lines().next().unwrap_or("invalid usage");
        let msg = first.strip_prefix("error: ").unwrap_or(first);
        let text = json!({ "error": format!("usage: {msg}"), "hint": tip,
                           "exit_code": EXIT_USAGE });
        let _ = writeln!(io::stderr(), "{text}");
        return ExitCode::from(EXIT_USAGE);
    }
    if shown {
        let _ = e.print();
        return code;
    }
    let mut err = io::stderr().lock();
    for line in restyled(
        &e.render().to_string(),
        tip.as_deref(),
        crate::term::colour(),
    ) {
        let _ = writeln!(err, "{line}");
    }
    code
}

/// clap's rendering of a usage error in imgtx's style (see [`crate::tag`]): its `error:`
/// line as `imgtx: error:`, its tips as `imgtx: hint:` lines right under the error (or
/// imgtx's own `tip` instead of them), then clap's usage line and pointer to `--help`.
fn restyled(rendered: &str, tip: Option<&str>, colour: bool) -> Vec<String> {
    let mut error = Vec::new();
    let mut hints = Vec::new();
    let mut rest = Vec::new();
    for line in rendered.lines() {
        let trimmed = line.trim_start();
        if !rest.is_empty() || trimmed.starts_with("Usage:") {
            rest.push(line.to_owned());
        } else if let Some(t) = trimmed.strip_prefix("tip: ") {
            if tip.is_none() {
                hints.push(tag::styled(Tag::Hint, t, colour));
            }
        } else if let Some(first) = line.strip_prefix("error: ").filter(|_| error.is_empty()) {
            error.push(tag::styled(Tag::Error, first, colour));
        } else if !line.is_empty() {
            error.push(line.to_owned());
        }
    }
    hints.extend(tip.map(|t| tag::styled(Tag::Hint, t, colour)));
    let mut lines = error;
    lines.extend(hints);
    if !rest.is_empty() {
        lines.push(String::new());
        lines.extend(rest);
    }
    lines
}

/// imgtx's tip for `e`, when it has one.
fn tip(raw: &[OsString], e: &clap::Error) -> Option<String> {
    if forgot_double_dash(raw, e.kind()) {
        return Some(RUN_TIP.to_owned());
    }
    if e.kind() != ErrorKind::InvalidSubcommand {
        return None;
    }
    let Some(ContextValue::String(given)) = e.get(ContextKind::InvalidSubcommand) else {
        return None;
    };
    Some(command_tip(given, &crate::generate::visible_commands()))
}

/// What to say about the unknown command `given`, out of `commands`.
fn command_tip(given: &str, commands: &[String]) -> String {
    if UNDO_WORDS.contains(&given) {
        return "to drop an open transaction's changes: imgtx rollback TX; to take back a \
                committed one: imgtx revert TX"
            .to_owned();
    }
    let close: Vec<&str> = commands
        .iter()
        .filter(|c| {
            strsim::levenshtein(given, c) <= 2 || (given.len() >= 2 && c.starts_with(given))
        })
        .map(String::as_str)
        .collect();
    match close.as_slice() {
        [] => "imgtx --help lists the commands".to_owned(),
        [one] => format!("did you mean '{one}'?"),
        many => format!("did you mean one of: {}?", many.join(", ")),
    }
}

/// True when `raw` is a `run` that failed to parse (with `kind`) because its command was not
/// put after `--`: clap then takes the command for base images, or its options for imgtx's.
fn forgot_double_dash(raw: &[OsString], kind: ErrorKind) -> bool {
    // The words before `run` may include option values, so `run` is looked for anywhere.
    matches!(
        kind,
        ErrorKind::MissingRequiredArgument | ErrorKind::UnknownArgument
    ) && raw.iter().skip(1).any(|a| a == "run")
        && !raw.iter().any(|a| a == "--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_error_is_restyled_with_its_hints_under_it() {
        let rendered = "error: unrecognized subcommand 'comit'\n\n  tip: a similar subcommand \
                        exists: 'commit'\n\nUsage: imgtx [OPTIONS] <COMMAND>\n\nFor more \
                        information, try '--help'.\n";
        let clap_tip = restyled(rendered, None, false);
        let ours = restyled(rendered, Some("did you mean 'commit'?"), false);
        let tail = [
            "",
            "Usage: imgtx [OPTIONS] <COMMAND>",
            "",
            "For more information, try '--help'.",
        ];
        let expect = |hint: &str| {
            let mut v = vec![
                "imgtx: error: unrecognized subcommand 'comit'".to_owned(),
                format!("imgtx: hint: {hint}"),
            ];
            v.extend(tail.map(String::from));
            v
        };
        assert_eq!(clap_tip, expect("a similar subcommand exists: 'commit'"));
        assert_eq!(ours, expect("did you mean 'commit'?"));
    }

    #[test]
    fn a_typo_gets_close_visible_commands_and_undo_gets_no_command_that_commits() {
        let commands: Vec<String> = ["begin", "commit", "rollback", "run", "revert", "recover"]
            .map(String::from)
            .to_vec();
        assert_eq!(command_tip("comit", &commands), "did you mean 'commit'?");
        assert!(command_tip("re", &commands).contains("revert, recover"));
        let undo = command_tip("undo", &commands);
        assert!(undo.contains("rollback") && !undo.contains("run"), "{undo}");
        assert_eq!(
            command_tip("xyzzy", &commands),
            "imgtx --help lists the commands"
        );
    }
}
