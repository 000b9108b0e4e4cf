//! Shell completion as users meet it: the scripts `imgtx generate completions` writes ask
//! the binary what fits, so `imgtx commit <TAB>` offers the open transactions' ids and names
//! (of the state directory the typed words name), `imgtx revert <TAB>` the revertible ones,
//! `imgtx run BASE -- <TAB>` the programs on `PATH`; the hidden `generate` is never offered,
//! and completing creates nothing. Checked through the protocol the scripts speak and in
//! real bash, zsh and fish.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{
    exit, expect_code, imgtx_bin, require_tool, run, run_with_closed, stderr_of, stdout_of, Closed,
    TestDir,
};

const MIB: u64 = 1 << 20;

/// What imgtx answers fish's completion request for `words` (the last one being
/// completed): the candidates' values, one per line.
fn candidates(t: &TestDir, words: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(imgtx_bin());
    cmd.current_dir(t.path())
        .env("IMGTX_COMPLETE", "fish")
        .env_remove("IMGTX_STATE_DIR")
        .env("HOME", t.path())
        .args(["--", "imgtx"])
        .args(words);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{words:?}: {}", stderr_of(&out));
    stdout_of(&out)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
        .collect()
}

/// Three open transactions (two of them share the name "same") and one committed one that
/// can be reverted ("daily"); returns the ids of the open ones, the named one first, and of
/// the committed one.
fn transactions(t: &TestDir) -> (Vec<String>, String) {
    let mut open = Vec::new();
    for (file, name) in [("a.img", "upgrade"), ("b.img", "same"), ("c.img", "same")] {
        let base = t.raw_image(file, MIB, 1);
        let out = t.imgtx_ok(&["begin", "--name", name, base.to_str().expect("utf-8")]);
        open.push(out.trim().to_owned());
    }
    let d = t.raw_image("d.img", MIB, 1);
    let out = t.imgtx_ok(&["begin", "--name", "daily", d.to_str().expect("utf-8")]);
    let committed = out.trim().to_owned();
    t.imgtx_ok(&["commit", &committed]);
    (open, committed)
}

/// A `PATH` whose first directory holds the binary under test, named `imgtx` as the scripts
/// call it.
fn path_with_imgtx(t: &TestDir) -> String {
    let dir = t.path().join("bin");
    std::fs::create_dir_all(&dir).expect("bin");
    let link = dir.join("imgtx");
    if !link.exists() {
        std::os::unix::fs::symlink(imgtx_bin(), &link).expect("symlink");
    }
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn state(t: &TestDir) -> String {
    t.state_dir().display().to_string()
}

#[test]
fn transactions_complete_by_id_and_unique_name_from_the_typed_state_dir() {
    let t = TestDir::new();
    let (open, committed) = transactions(&t);
    let sd = state(&t);

    for command in ["commit", "rollback", "status", "diff"] {
        let got = candidates(&t, &["--state-dir", &sd, command, ""]);
        for id in &open {
            assert!(got.contains(id), "{command}: {id} not offered: {got:?}");
        }
        assert!(got.contains(&"upgrade".to_owned()), "{command}: {got:?}");
        // A name two transactions share names neither; a committed one is not open.
        assert!(!got.contains(&"same".to_owned()), "{command}: {got:?}");
        assert!(!got.contains(&committed), "{command}: {got:?}");
    }
    assert_eq!(
        candidates(&t, &["--state-dir", &sd, "commit", "upg"]),
        vec!["upgrade".to_owned()]
    );
    assert_eq!(
        candidates(&t, &["--state-dir", &sd, "log", "--tx", "upg"]),
        vec!["upgrade".to_owned()]
    );
    let revert = candidates(&t, &["--state-dir", &sd, "revert", ""]);
    let revert: Vec<&String> = revert.iter().filter(|c| !c.starts_with('-')).collect();
    assert_eq!(
        revert,
        [&committed, &"daily".to_owned()],
        "revert offers the revertible one, by id and name"
    );
    // Without --state-dir typed, the default one (here under $HOME) has none of them.
    let elsewhere = candidates(&t, &["commit", "tx-"]);
    assert!(elsewhere.is_empty(), "{elsewhere:?}");
}

#[test]
fn completing_creates_nothing_and_never_offers_generate() {
    let t = TestDir::new();
    let missing = t.path().join("no-such-state");

    let tx = candidates(
        &t,
        &[
            "--state-dir",
            missing.to_str().expect("utf-8"),
            "commit",
            "",
        ],
    );
    let commands = candidates(&t, &[""]);
    let g = candidates(&t, &["g"]);

    assert!(!missing.exists(), "completing created the state directory");
    assert!(tx.iter().all(|c| c.starts_with('-')), "{tx:?}");
    for c in [
        "begin", "commit", "rollback", "run", "recover", "revert", "status", "log",
    ] {
        assert!(
            commands.contains(&c.to_owned()),
            "{c} not offered: {commands:?}"
        );
    }
    assert!(!commands.contains(&"generate".to_owned()), "{commands:?}");
    assert!(g.is_empty(), "`imgtx g` offers the hidden command: {g:?}");
}

#[test]
fn runs_command_completes_from_path_then_as_files() {
    let t = TestDir::new();
    t.raw_image("disk.img", MIB, 1);

    let program = candidates(&t, &["run", "disk.img", "--", "bas"]);
    let argument = candidates(&t, &["run", "disk.img", "--", "bash", "images/dis"]);
    let base = candidates(&t, &["run", "images/dis"]);
    let path_program = candidates(&t, &["run", "disk.img", "--", "images/dis"]);

    assert!(program.contains(&"bash".to_owned()), "{program:?}");
    assert!(program.iter().all(|p| p.starts_with("bas")), "{program:?}");
    let disk = vec!["images/disk.img".to_owned()];
    assert_eq!(argument, disk);
    assert_eq!(base, disk);
    assert_eq!(path_program, disk, "a program named by its path");
}

/// `shell` run with `script` after the completions for it are loaded from the file
/// `imgtx generate completions SHELL DIR` wrote, with the binary first on `PATH`.
fn in_shell(t: &TestDir, shell: &str, script: &str) -> String {
    let dir = t.path().join("completions");
    t.imgtx_ok(&[
        "generate",
        "completions",
        shell,
        dir.to_str().expect("utf-8"),
    ]);
    let file: PathBuf = std::fs::read_dir(&dir)
        .expect("completions dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| file_is_for(p, shell))
        .expect("the completions file");
    let mut cmd = Command::new(shell);
    match shell {
        "bash" => cmd.args(["--norc", "-c"]),
        "zsh" => cmd.args(["-f", "-c"]),
        _ => cmd.args(["--no-config", "-c"]),
    };
    cmd.arg(format!("source {}\n{script}", file.display()))
        .current_dir(t.path())
        .env("PATH", path_with_imgtx(t))
        .env("IMGTX_STATE_DIR", t.state_dir());
    let out = run(&mut cmd);
    assert!(out.status.success(), "{shell}: {}", stderr_of(&out));
    stdout_of(&out)
}

fn file_is_for(p: &Path, shell: &str) -> bool {
    let name = p.file_name().unwrap_or_default().to_string_lossy();
    match shell {
        "bash" => name == "imgtx.bash",
        "zsh" => name == "_imgtx",
        _ => name == "imgtx.fish",
    }
}

#[test]
fn bash_zsh_and_fish_complete_transactions_with_the_installed_scripts() {
    let t = TestDir::new();
    let (open, _) = transactions(&t);
    let named = &open[0];

    let bash = in_shell(
        &t,
        "bash",
        "COMP_WORDS=(imgtx commit up); COMP_CWORD=2; COMP_TYPE=9\n\
         _clap_complete_imgtx imgtx up commit\n\
         printf '%s\\n' \"${COMPREPLY[@]}\"",
    );
    assert_eq!(bash.trim(), "upgrade");

    if require_tool("zsh") {
        // Outside a completion widget, zsh's _describe is stood in for by a function that
        // prints what it is given.
        let zsh = in_shell(
            &t,
            "zsh",
            "compdef() {}; _describe() { print -l -- \"${(@P)${@[-1]}}\" }\n\
             words=(imgtx rollback up); CURRENT=3; _clap_dynamic_completer_imgtx",
        );
        assert_eq!(zsh.trim(), format!("upgrade:{named}"));
    }
    if require_tool("fish") {
        let fish = in_shell(&t, "fish", "complete -C 'imgtx diff up'");
        assert_eq!(fish.trim(), format!("upgrade\t{named}"));
    }
}

#[test]
fn a_name_with_control_characters_never_reaches_the_shell_raw() {
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let id = t.imgtx_ok(&[
        "begin",
        "--name",
        "evil\nname\x1b[31m",
        base.to_str().expect("utf-8"),
    ]);
    let mut cmd = Command::new(imgtx_bin());
    cmd.env("IMGTX_COMPLETE", "fish")
        .args(["--", "imgtx", "--state-dir"])
        .arg(t.state_dir())
        .args(["commit", ""]);

    let out = stdout_of(&run(&mut cmd));

    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with(id.trim()), "{out:?}");
    assert!(
        first.contains("evil\\nname\\x1b[31m"),
        "described escaped: {out:?}"
    );
    assert!(
        !out.contains('\x1b'),
        "an escape sequence for the terminal: {out:?}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with("name")),
        "a line of its own: {out:?}"
    );
}

#[test]
fn a_shell_imgtx_does_not_know_is_a_usage_error_and_a_gone_reader_is_none() {
    let mut bogus = Command::new(imgtx_bin());
    bogus.env("IMGTX_COMPLETE", "bogus").arg("status");
    let mut gone = Command::new(imgtx_bin());
    gone.env("IMGTX_COMPLETE", "fish").args(["--", "imgtx", ""]);

    let refused = expect_code(&mut bogus, exit::USAGE);
    let unread = run_with_closed(&mut gone, Closed::Stdout);

    let err = stderr_of(&refused);
    assert!(
        err.starts_with("imgtx: error: IMGTX_COMPLETE=bogus names no shell")
            && err.contains("imgtx: hint: "),
        "{err}"
    );
    assert_eq!(
        unread.status.code(),
        Some(exit::OK),
        "{}",
        stderr_of(&unread)
    );
    assert!(stderr_of(&unread).is_empty(), "{}", stderr_of(&unread));
}
