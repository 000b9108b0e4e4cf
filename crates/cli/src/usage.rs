//! Usage errors, as clap finds them, with imgtx's own tips where clap's would mislead: a
//! `run` whose command was not put after `--` (clap would say to put `--` before an option
//! of the command), and a mistyped command (clap would offer the hidden `generate`, or `run`,
//! which commits, for `undo`).

use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use serde_json::json;

/// Exit status of a usage error (clap's own).
pub const EXIT_USAGE: u8 = 2;

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
    let Some(tip) = tip else {
        let _ = e.print();
        return code;
    };
    // clap's tips give way to ours; a blank line left where one was is dropped.
    let rendered = e.render().to_string();
    let mut lines: Vec<&str> = Vec::new();
    for line in rendered.lines() {
        let blank_again = line.is_empty() && lines.last().is_some_and(|l| l.is_empty());
        if !line.trim_start().starts_with("tip:") && !blank_again {
            lines.push(line);
        }
    }
    let mut err = io::stderr().lock();
    for line in lines {
        let _ = writeln!(err, "{line}");
    }
    let _ = writeln!(err, "tip: {tip}");
    code
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
