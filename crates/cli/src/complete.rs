//! Shell completion that knows the state directory: `imgtx commit <TAB>` offers the open
//! transactions' ids and names, `imgtx revert <TAB>` those of the ones that can be taken
//! back, and `imgtx run BASE -- <TAB>` the programs on `PATH`.
//!
//! Completions are clap_complete's dynamic ones: the script a shell loads (written by
//! `imgtx generate completions SHELL`) asks `imgtx` itself what fits, by running it with
//! `IMGTX_COMPLETE=SHELL` and the words typed so far. [`serve`] answers such a run before
//! anything else happens, reading the state directory the typed words name (`--state-dir`,
//! else `$IMGTX_STATE_DIR`, else the default) and creating nothing. The variable is
//! imgtx's own rather than clap's default `COMPLETE`, which a batch job's environment might
//! set for reasons of its own and so turn every imgtx run into a completion request.
//!
//! This module is not the static `--help`, man pages or parsing: those are `args`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap_complete::engine::{CompletionCandidate, PathCompleter, ValueCompleter};
use clap_complete::env::{CompleteEnv, Shells};
use clap_complete::Shell;
use storage::OsFs;
use txn::{Engine, OsHost};

use crate::tag::{self, Tag};

/// The variable that turns a run of imgtx into a completion request.
const VAR: &str = "IMGTX_COMPLETE";

/// Answers a completion request about the command line `cli` defines, when this run is one
/// (`IMGTX_COMPLETE` is set, not empty and not `0`), and returns the exit status; `None`
/// when imgtx is to run as usual. Must run before anything is written to stdout.
///
/// A shell imgtx does not know is a usage error, said in imgtx's style. A shell that went
/// away before reading the answer (a closed pipe) is no error: nobody is left to tell.
pub fn serve(cli: fn() -> clap::Command) -> Option<u8> {
    let asked = std::env::var_os(VAR).filter(|v| !v.is_empty() && v != "0")?;
    let shell = Path::new(&asked).file_stem().unwrap_or_default();
    if Shells::builtins()
        .completer(&shell.to_string_lossy())
        .is_none()
    {
        let known: Vec<&str> = Shells::builtins().names().collect();
        tag::say(
            Tag::Error,
            &format!(
                "{VAR}={} names no shell imgtx completes for ({})",
                asked.to_string_lossy(),
                known.join(", ")
            ),
        );
        tag::say(
            Tag::Hint,
            &format!("{VAR} is set by the shell completion scripts; unset it to run imgtx"),
        );
        return Some(crate::failure::EXIT_USAGE);
    }
    let cwd = std::env::current_dir().ok();
    match CompleteEnv::with_factory(cli)
        .var(VAR)
        .try_complete(std::env::args_os(), cwd.as_deref())
    {
        Ok(_) => Some(0),
        Err(e) if e.kind() == clap::error::ErrorKind::Io => Some(0),
        Err(e) => {
            tag::say(Tag::Error, &e.to_string());
            Some(1)
        }
    }
}

/// Writes the script that makes `shell` complete imgtx's command lines by asking the
/// `imgtx` on `PATH`.
pub fn write_script(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let name = shell.to_string();
    let shells = Shells::builtins();
    let completer = shells
        .completer(&name)
        .ok_or_else(|| io::Error::other(format!("no completions for {name}")))?;
    completer.write_registration(VAR, "imgtx", "imgtx", "imgtx", out)?;
    if shell == Shell::Zsh {
        // Loaded from fpath as the autoloaded function `_imgtx`, the script's body runs
        // at the first <TAB>: it must then complete, not only register the completer.
        writeln!(
            out,
            "\nif [ \"$funcstack[1]\" = \"_imgtx\" ]; then\n    \
             _clap_dynamic_completer_imgtx \"$@\"\nfi"
        )?;
    }
    Ok(())
}

/// Candidates for a `TX` of an open transaction (`commit`, `rollback`, `status`, `diff`,
/// `log --tx`, `recover --abandon`): every registered transaction, described by its name
/// and its bases' file names.
pub fn open_transactions() -> Vec<CompletionCandidate> {
    let Some(engine) = engine() else {
        return Vec::new();
    };
    let Ok(list) = engine.status(None) else {
        return Vec::new();
    };
    candidates(list.into_iter().map(|s| {
        let m = s.manifest;
        let bases: Vec<String> = m
            .images
            .iter()
            .map(|i| {
                i.base
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        (m.id.to_string(), m.name, bases.join(", "))
    }))
}

/// Candidates for `revert`'s `TX`: the committed transactions whose pre-images are kept,
/// described by their name (as the history has it) and when they were committed.
pub fn revertible() -> Vec<CompletionCandidate> {
    let Some(engine) = engine() else {
        return Vec::new();
    };
    let Ok(kept) = engine.kept() else {
        return Vec::new();
    };
    let history = engine.log(None).map(|h| h.entries).unwrap_or_default();
    candidates(kept.into_iter().map(|(record, _)| {
        let name = history
            .iter()
            .find(|h| h.id == record.tx)
            .and_then(|h| h.name.clone());
        (
            record.tx.to_string(),
            name,
            format!("committed {}", record.committed),
        )
    }))
}

/// A candidate for each transaction `(id, name, about)`, described by its name and `about`;
/// then, for each name only one of them has, the name, described by that id (a name two
/// share names neither).
fn candidates(
    txs: impl Iterator<Item = (String, Option<String>, String)>,
) -> Vec<CompletionCandidate> {
    let mut named: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for (id, name, about) in txs {
        let about = match &name {
            Some(name) => format!("{name}: {about}"),
            None => about,
        };
        out.push(CompletionCandidate::new(&id).help(Some(shown(&about))));
        if let Some(name) = name {
            named.entry(name).or_default().push(id);
        }
    }
    out.extend(unique_names(named));
    out
}

/// A candidate for each name that only one transaction has, described by its id. A name
/// with a control character is left out: the shells read candidates one a line (a newline
/// in a name would make two), and a terminal must not be sent its escape sequences; such a
/// name is no use to type anyway.
fn unique_names(named: BTreeMap<String, Vec<String>>) -> impl Iterator<Item = CompletionCandidate> {
    named
        .into_iter()
        .filter_map(|(name, ids)| match ids.as_slice() {
            [id] if !name.chars().any(char::is_control) => {
                Some(CompletionCandidate::new(name).help(Some(id.clone().into())))
            }
            _ => None,
        })
}

/// A candidate's description as the shells show it: control characters escaped (see
/// [`crate::term::escape`]), as in every human line.
fn shown(about: &str) -> clap::builder::StyledStr {
    crate::term::escape(about).into_owned().into()
}

/// Completes the words of `run` after the subcommand: base images before `--` (paths),
/// then the command: its first word from the programs on `PATH` (or a path, once it holds a
/// `/`), the words after it as paths.
///
/// Attached to both the bases and the command: clap_complete takes every word after `--`
/// for one more base (the bases take any number of values), so where a word is is read
/// from the typed words themselves.
pub struct RunWords;

impl ValueCompleter for RunWords {
    fn complete(&self, current: &OsStr) -> Vec<CompletionCandidate> {
        let typed: Vec<OsString> = std::env::args_os().collect();
        let at = std::env::var("_CLAP_COMPLETE_INDEX")
            .ok()
            .and_then(|i| i.parse().ok());
        match command_word(&typed, at) {
            Some(0) if !current.as_encoded_bytes().contains(&b'/') => programs(current)
                .into_iter()
                .map(CompletionCandidate::new)
                .collect(),
            _ => PathCompleter::any().complete(current),
        }
    }
}

/// Which word of `run`'s command the word being completed is (0: the program), if it is
/// one: among the words of a completion request (`imgtx -- imgtx WORD...`), where the one
/// being completed is word `at` (as bash and zsh say), else the last (as fish cuts them).
fn command_word(argv: &[OsString], at: Option<usize>) -> Option<usize> {
    let words: Vec<&OsString> = request_words(argv).collect();
    let at = at.unwrap_or(words.len().saturating_sub(1)).min(words.len());
    let separator = words[..at].iter().skip(1).position(|w| *w == "--")? + 1;
    Some(at - separator - 1)
}

/// The executable files in the directories of `PATH` whose names start with `prefix`.
fn programs(prefix: &OsStr) -> BTreeSet<OsString> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut found = BTreeSet::new();
    for dir in std::env::split_paths(&path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name
                .as_encoded_bytes()
                .starts_with(prefix.as_encoded_bytes())
            {
                continue;
            }
            // Followed through symlinks: most of /usr/bin's programs are links.
            let runnable = std::fs::metadata(entry.path())
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if runnable {
                found.insert(name);
            }
        }
    }
    found
}

/// The engine over the state directory of the command line being completed, if it exists.
fn engine() -> Option<Engine<OsFs, OsHost>> {
    let typed: Vec<OsString> = std::env::args_os().collect();
    let dir = crate::state_dir::state_dir(state_dir_typed(&typed), false).ok()?;
    Engine::open_existing(OsFs, OsHost::from_env(), dir)
        .ok()
        .flatten()
}

/// The `--state-dir` among the words of a completion request (`imgtx -- imgtx WORD...`),
/// before a `--` of their own (after which the words are `run`'s command's).
fn state_dir_typed(argv: &[OsString]) -> Option<PathBuf> {
    let mut next_is_it = false;
    let mut found = None;
    for w in request_words(argv).skip(1) {
        if next_is_it {
            found = Some(PathBuf::from(w));
            next_is_it = false;
        } else if w == "--" {
            break;
        } else if w == "--state-dir" {
            next_is_it = true;
        } else if let Some(v) = w.to_str().and_then(|w| w.strip_prefix("--state-dir=")) {
            found = Some(PathBuf::from(v));
        }
    }
    found.filter(|d| !d.as_os_str().is_empty())
}

/// The words a completion request carries, the program's name first: what follows the `--`
/// in `imgtx -- imgtx WORD...` (imgtx's own argv before it is not what was typed).
fn request_words(argv: &[OsString]) -> impl Iterator<Item = &OsString> {
    argv.iter().skip_while(|w| *w != "--").skip(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_state_dir_is_read_from_the_typed_words_only() {
        let typed = |w: &[&str]| state_dir_typed(&argv(w));
        assert_eq!(
            typed(&["imgtx", "--", "imgtx", "--state-dir", "/s", "commit", ""]),
            Some(PathBuf::from("/s"))
        );
        assert_eq!(
            typed(&["imgtx", "--", "imgtx", "commit", "--state-dir=/t", "tx"]),
            Some(PathBuf::from("/t"))
        );
        // Words of run's command are not imgtx's, and the program's own argv is not typed.
        assert_eq!(
            typed(&[
                "imgtx",
                "--",
                "imgtx",
                "run",
                "a",
                "--",
                "x",
                "--state-dir",
                "/u"
            ]),
            None
        );
        assert_eq!(
            typed(&["/bin/imgtx", "--state-dir", "/v", "--", "imgtx"]),
            None
        );
        // Still being typed: no value yet.
        assert_eq!(typed(&["imgtx", "--", "imgtx", "--state-dir"]), None);
    }

    #[test]
    fn the_word_of_runs_command_is_counted_from_its_double_dash() {
        let typed = argv(&[
            "imgtx",
            "--",
            "imgtx",
            "run",
            "a.img",
            "--",
            "guestfish",
            "-a",
        ]);
        // fish: the word being completed is the last.
        assert_eq!(command_word(&typed, None), Some(1));
        // bash, zsh: its index among the words.
        assert_eq!(command_word(&typed, Some(4)), Some(0));
        assert_eq!(command_word(&typed, Some(3)), None);
        assert_eq!(command_word(&typed, Some(2)), None);
        let bases_only = argv(&["imgtx", "--", "imgtx", "run", "a.img", "b"]);
        assert_eq!(command_word(&bases_only, None), None);
    }

    #[test]
    fn programs_are_found_on_path_by_prefix() {
        let found = programs(OsStr::new("s"));
        assert!(found.contains(OsStr::new("sh")), "{found:?}");
        assert!(found.iter().all(|p| p.as_encoded_bytes().starts_with(b"s")));
    }
}
