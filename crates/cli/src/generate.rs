//! `imgtx generate` (hidden): man pages and shell completions, made from the same clap
//! definitions that parse the command line, so they cannot drift from it.
//!
//! Packagers run it through `scripts/gen-docs`; it is hidden from `--help` because users
//! get its output from their package, not by running it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory;

use crate::args::{Cli, GenerateArgs, What};

/// Runs `imgtx generate`.
pub fn run(args: &GenerateArgs) -> anyhow::Result<u8> {
    match &args.what {
        What::Man { dir } => {
            for path in man_pages(dir)? {
                tracing::info!(path = %path.display(), "wrote man page");
            }
        }
        What::Completions { shell, dir: None } => {
            // Made in memory first: stdout may be a pipe its reader closed
            // (`imgtx generate completions bash | true`), and a script cut short must not
            // be half written.
            let mut script = Vec::new();
            crate::complete::write_script(*shell, &mut script)?;
            let mut out = io::stdout().lock();
            out.write_all(&script)?;
            out.flush()?;
        }
        What::Completions {
            shell,
            dir: Some(dir),
        } => {
            fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
            let path = dir.join(clap_complete::Generator::file_name(shell, "imgtx"));
            let mut script = Vec::new();
            crate::complete::write_script(*shell, &mut script)?;
            fs::write(&path, script).with_context(|| {
                format!(
                    "could not write the {shell} completions into {}",
                    path.display()
                )
            })?;
            tracing::info!(path = %path.display(), "wrote completions");
        }
    }
    Ok(0)
}

/// The command line as users see it: every command but the hidden ones (`generate`), which
/// clap_complete would otherwise offer. clap cannot remove a subcommand, so this copies the
/// top level's arguments and its visible subcommands into a new command.
pub fn visible() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new("imgtx").version(env!("CARGO_PKG_VERSION"));
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd = cmd.args(full.get_arguments().cloned());
    cmd.subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned())
}

/// The names of the commands users see, for suggestions after a typo.
pub fn visible_commands() -> Vec<String> {
    visible()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect()
}

/// Writes the page of `imgtx` and of each visible command into `dir`; returns their paths.
fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let mut top = Cli::command().disable_help_subcommand(true);
    // Building sets each command's display name ("imgtx-begin"), which names its page.
    top.build();
    let mut pages = vec![top.clone()];
    pages.extend(top.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    let mut written = Vec::new();
    for (i, cmd) in pages.into_iter().enumerate() {
        let see_also = if i == 0 { "" } else { "imgtx(1)" };
        let man = clap_mangen::Man::new(cmd.clone());
        let path = dir.join(man.get_filename());
        let mut text = Vec::new();
        render(&man, &cmd, see_also, &mut text)?;
        fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// One page: clap_mangen's sections, then the after-help text (examples, exit status) as
/// sections of its own in no-fill mode, because clap_mangen would run its lines together.
fn render(
    man: &clap_mangen::Man,
    cmd: &clap::Command,
    see_also: &str,
    w: &mut dyn Write,
) -> io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.get_subcommands().any(|c| !c.is_hide_set()) {
        man.render_subcommands_section(w)?;
    }
    if let Some(after) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        // The help's one-line exit status gives way to the page's full table below.
        for (title, body) in sections(&after.to_string()) {
            if title != "EXIT STATUS" {
                section(w, &title, &body)?;
            }
        }
    }
    let top = see_also.is_empty();
    if top {
        writeln!(w, ".SH ENVIRONMENT")?;
        for (var, meaning) in environment(cmd) {
            writeln!(w, ".TP\n.B {}\n{}", roff_line(&var), roff_line(&meaning))?;
        }
        section(w, "FILES", FILES)?;
    }
    section(w, "EXIT STATUS", EXIT_STATUS)?;
    if !see_also.is_empty() {
        writeln!(w, ".SH \"SEE ALSO\"\n{see_also}")?;
    }
    if cmd.get_version().is_some() {
        man.render_version_section(w)?;
    }
    Ok(())
}

/// What each exit status means, for every page.
const EXIT_STATUS: &str = "\
0    success
1    an error: bad input, unknown transaction, I/O failure, qemu-img failure, damaged files
2    usage error
3    busy or conflict: a base is held by another transaction or in use by a qemu process,
     another imgtx works on the transaction, or a base changed since begin
4    recovery needed: an interrupted commit, begin or rollback; run imgtx recover
126  run: the command could not be executed
127  run: the command was not found
N    run: the command's own status (128 + the signal's number if a signal killed it)
128+N  stopped by signal N (130 for SIGINT, 143 for SIGTERM) where stopping changed nothing";

/// What imgtx keeps where, for the top page.
const FILES: &str = "\
Beside each base image BASE, in its directory:
BASE.ID.imgtx.qcow2        the overlay of open transaction ID: edit this, never the base
.BASE.imgtx.claim          which transaction holds the base (any state directory or host)
.BASE.ID.imgtx.journal     the journal of a commit under way or interrupted
.BASE.ID.imgtx.undo        the pre-images of a commit under way or interrupted
.BASE.imgtx.spare          the last commit's pre-images, kept for revert and reused by the next
.BASE.ID.imgtx.kept        pre-images kept by commit --keep until imgtx prune
.BASE.ID.imgtx.wait        a begin --wait waiting for the base
In the state directory (/var/lib/imgtx for root; see ENVIRONMENT):
txns/ID.json               the open and interrupted transactions
history                    the history of finished transactions (imgtx log)
kept/                      what makes committed transactions revertible
locks/                     one lock file per transaction at work";

/// The ENVIRONMENT section: the variables imgtx reads itself, then those that stand for an
/// option of `cmd` or of one of its commands (declared with clap's `env`), so a new one is
/// listed without anyone remembering to.
fn environment(cmd: &clap::Command) -> Vec<(String, String)> {
    let own = [
        (
            "IMGTX_STATE_DIR",
            "The state directory when --state-dir is not given.",
        ),
        (
            "XDG_STATE_HOME, HOME",
            "The default state directory of users other than root: $XDG_STATE_HOME/imgtx, \
             else ~/.local/state/imgtx.",
        ),
        (
            "IMGTX_LOG",
            "A tracing filter (warn, info, debug, trace, or per module such as txn=debug) for \
             the log lines on stderr; it overrides -v and -q.",
        ),
        (
            "NO_COLOR",
            "When set and not empty, stderr is never coloured (it is coloured only on a \
             terminal in any case).",
        ),
        (
            "IMGTX_COMPLETE",
            "Set by the shell completion scripts (to bash, zsh, fish, ...): imgtx then only \
             answers what fits the words typed so far, and changes nothing.",
        ),
    ];
    let mut items: Vec<(String, String)> = own
        .iter()
        .map(|(var, meaning)| ((*var).to_owned(), (*meaning).to_owned()))
        .collect();
    let commands = std::iter::once(cmd).chain(cmd.get_subcommands().filter(|c| !c.is_hide_set()));
    for c in commands {
        for arg in c.get_arguments() {
            let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let var = var.to_string_lossy().into_owned();
            if items.iter().any(|(v, _)| *v == var) {
                continue;
            }
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let of = if std::ptr::eq(c, cmd) {
                String::new()
            } else {
                format!(" of imgtx {}", c.get_name())
            };
            items.push((var, format!("The default for --{long}{of}: {help}")));
        }
    }
    items.push((
        "IMGTX_TX, IMGTX_OVERLAY, IMGTX_OVERLAY_0, IMGTX_OVERLAY_1, ...".to_owned(),
        "Set by imgtx run for its command: the transaction's id, the first overlay, and \
         each overlay in the order the bases were given."
            .to_owned(),
    ));
    items
}

/// Writes section TITLE with `body` in no-fill mode, one line per line.
fn section(w: &mut dyn Write, title: &str, body: &str) -> io::Result<()> {
    // Quoted only when it has a space, as roff needs then (`.SH "EXIT STATUS"`).
    if title.contains(' ') {
        writeln!(w, ".SH \"{title}\"\n.nf")?;
    } else {
        writeln!(w, ".SH {title}\n.nf")?;
    }
    for line in body.lines() {
        writeln!(w, "{}", roff_line(line))?;
    }
    writeln!(w, ".fi")
}

/// Splits help text into (TITLE, body) at lines such as `Examples:` or `Exit status: ...`
/// (a short capitalised phrase and a colon at the start of a line); text before the first
/// such line is titled NOTES.
fn sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.trim_matches('\n').lines() {
        if let Some((title, rest)) = heading(line) {
            out.push((title, rest.trim().to_owned()));
        } else {
            if out.is_empty() {
                out.push(("NOTES".to_owned(), String::new()));
            }
            if let Some((_, body)) = out.last_mut() {
                if !body.is_empty() {
                    body.push('\n');
                }
                body.push_str(line);
            }
        }
    }
    for (_, body) in &mut out {
        *body = body.trim_end().to_owned();
    }
    out.retain(|(_, body)| !body.is_empty());
    out
}

fn heading(line: &str) -> Option<(String, &str)> {
    let (head, rest) = line.split_once(':')?;
    let words = head.split(' ').count();
    let plain = head.chars().all(|c| c.is_ascii_alphabetic() || c == ' ');
    let capital = head.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    (plain && capital && words <= 3).then(|| (head.to_ascii_uppercase(), rest))
}

/// Escapes one line of text for roff: backslashes, and a leading `.` or `'` that would
/// otherwise be read as a request.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_text_splits_into_titled_sections() {
        let text = "In the command, {} is X.\n\nExamples:\n  imgtx a\n  imgtx b\n\nExit status: 0 ok, 1 error.";
        let s = sections(text);
        assert_eq!(
            s[0],
            ("NOTES".to_owned(), "In the command, {} is X.".to_owned())
        );
        assert_eq!(
            s[1],
            ("EXAMPLES".to_owned(), "  imgtx a\n  imgtx b".to_owned())
        );
        assert_eq!(
            s[2],
            ("EXIT STATUS".to_owned(), "0 ok, 1 error.".to_owned())
        );
    }

    #[test]
    fn roff_requests_and_backslashes_are_escaped() {
        assert_eq!(roff_line(".hidden"), "\\&.hidden");
        assert_eq!(roff_line("a\\nb"), "a\\enb");
        assert_eq!(roff_line("  imgtx recover"), "  imgtx recover");
    }

    #[test]
    fn a_page_is_written_per_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"imgtx.1".to_owned()), "{names:?}");
        assert!(names.contains(&"imgtx-commit.1".to_owned()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("generate")), "{names:?}");
        let top = fs::read_to_string(dir.path().join("imgtx.1")).unwrap();
        assert!(top.contains(".SH EXAMPLES"), "{top}");
    }
}
