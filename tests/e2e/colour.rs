//! Colour in log lines: on a terminal only (a pseudo-terminal made by `script`), and never
//! with `NO_COLOR`; a log sent to a file or a pipe holds no escape sequences.

use std::process::Command;

use crate::util::{imgtx_bin, require_tools, run, stderr_of, stdout_of, TestDir};

const MIB: u64 = 1 << 20;

/// Commits a fresh transaction with `imgtx -vv`, its stderr on a pseudo-terminal (through
/// `script`) when `tty`, else on a pipe; returns what the terminal or the pipe got.
fn logged_commit(t: &TestDir, tty: bool, no_color: Option<&str>) -> String {
    let base = t.image("disk.img");
    let tx = t.begin(&[&base]);
    let line = format!(
        "{} --state-dir {} -vv commit {}",
        imgtx_bin().display(),
        t.state_dir().display(),
        tx.id
    );
    let mut cmd = if tty {
        let mut c = Command::new("script");
        c.args(["-qec", &line, "/dev/null"]);
        c
    } else {
        let mut c = t.command();
        c.args(["-vv", "commit", &tx.id]);
        c
    };
    cmd.env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", stderr_of(&out));
    if tty {
        stdout_of(&out)
    } else {
        stderr_of(&out)
    }
}

#[test]
fn log_lines_are_coloured_on_a_terminal_only_and_never_with_no_color() {
    if !require_tools(&["qemu-img", "script"]) {
        return;
    }
    let t = TestDir::new();
    t.raw_image("disk.img", MIB, 1);

    let terminal = logged_commit(&t, true, None);
    let no_color = logged_commit(&t, true, Some("1"));
    let empty_no_color = logged_commit(&t, true, Some(""));
    let piped = logged_commit(&t, false, None);

    assert!(
        terminal.contains("imgtx: \x1b[34mdebug\x1b[0m: "),
        "no coloured debug tag: {terminal:?}"
    );
    assert!(
        terminal.contains('\x1b'),
        "no colour on a terminal: {terminal:?}"
    );
    assert!(
        !no_color.contains('\x1b'),
        "coloured despite NO_COLOR: {no_color:?}"
    );
    assert!(
        empty_no_color.contains('\x1b'),
        "an empty NO_COLOR is unset"
    );
    assert!(piped.contains("imgtx: debug: "), "nothing logged: {piped}");
    assert!(
        !piped.contains('\x1b'),
        "escapes in a log sent to a pipe: {piped:?}"
    );
}
