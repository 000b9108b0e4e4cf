//! Operations: `imgtx demo`, the generated man pages and completions, and the help text.

use std::process::{Command, Stdio};

use crate::util::{describe, exit, expect_code, imgtx_bin, require_tools, stdout_of};

/// The commands a user sees in `imgtx --help` (the hidden `generate` is for packagers).
const COMMANDS: &[&str] = &[
    "begin", "commit", "rollback", "recover", "run", "status", "diff", "log", "demo",
];

#[test]
fn demo_without_guestfish_proves_the_base_old_or_new_and_cleans_up() {
    // Arrange
    if !require_tools(&["qemu-img", "qemu-io", "mke2fs"]) {
        return;
    }
    let mut cmd = Command::new(imgtx_bin());
    cmd.args(["demo", "--no-guestfish"]).stdin(Stdio::null());

    // Act
    let started = std::time::Instant::now();
    let out = expect_code(&mut cmd, exit::OK);

    // Assert
    let text = stdout_of(&out);
    assert!(
        text.contains("disk.img is wholly NEW") || text.contains("disk.img is wholly OLD"),
        "{}",
        describe(&cmd, &out)
    );
    assert!(
        text.contains("every proof held"),
        "{}",
        describe(&cmd, &out)
    );
    assert!(!text.contains("FAILED"), "{}", describe(&cmd, &out));
    // Under a minute on an idle machine (about 15 s); the bound is looser because CI shares
    // two cores with other builds, and it is here to catch a demo that hangs or crawls.
    let secs = started.elapsed().as_secs();
    assert!(
        secs < 120,
        "the demo took {secs} s; it should take well under a minute"
    );
    let removed = text
        .lines()
        .find_map(|l| l.strip_prefix("Removed "))
        .and_then(|l| l.strip_suffix('.'))
        .unwrap_or_else(|| panic!("no 'Removed DIR.' line{}", describe(&cmd, &out)));
    assert!(
        !std::path::Path::new(removed).exists(),
        "{removed} is still there"
    );
}

#[test]
fn generate_man_writes_a_page_per_command() {
    // Arrange
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(imgtx_bin());
    cmd.args(["generate", "man"]).arg(dir.path());

    // Act
    expect_code(&mut cmd, exit::OK);

    // Assert
    let top = std::fs::read_to_string(dir.path().join("imgtx.1")).expect("imgtx.1 written");
    assert!(
        top.starts_with(".ie") || top.contains(".TH imgtx"),
        "not a man page:\n{top}"
    );
    assert!(
        top.contains(".SH EXAMPLES") || top.contains(".SH \"EXAMPLES\""),
        "imgtx.1 has no EXAMPLES section:\n{top}"
    );
    for command in COMMANDS {
        let page = dir.path().join(format!("imgtx-{command}.1"));
        assert!(page.is_file(), "{} missing", page.display());
    }
}

#[test]
fn generate_completions_for_bash_prints_a_script_or_writes_a_file() {
    // Arrange
    let dir = tempfile::tempdir().expect("tempdir");

    // Act
    let printed = stdout_of(&expect_code(
        Command::new(imgtx_bin()).args(["generate", "completions", "bash"]),
        exit::OK,
    ));
    expect_code(
        Command::new(imgtx_bin())
            .args(["generate", "completions", "bash"])
            .arg(dir.path()),
        exit::OK,
    );

    // Assert
    assert!(
        printed.contains("complete") && printed.contains("imgtx"),
        "{printed}"
    );
    assert!(
        printed.contains("IMGTX_COMPLETE=\"bash\""),
        "the script does not ask imgtx:\n{printed}"
    );
    let file = std::fs::read_to_string(dir.path().join("imgtx.bash")).expect("imgtx.bash written");
    assert_eq!(file, printed);
}

#[test]
fn every_command_help_has_examples() {
    // Arrange
    let mut missing = Vec::new();
    let top = stdout_of(&expect_code(
        Command::new(imgtx_bin()).arg("--help"),
        exit::OK,
    ));

    // Act
    for command in COMMANDS {
        let help = stdout_of(&expect_code(
            Command::new(imgtx_bin()).args([command, "--help"]),
            exit::OK,
        ));
        if !help.lines().any(|l| l.starts_with("Example")) {
            missing.push(*command);
        }
    }

    // Assert
    assert!(
        top.lines().any(|l| l.starts_with("Examples:")),
        "imgtx --help has no examples:\n{top}"
    );
    assert!(
        top.contains("demo"),
        "imgtx --help does not list demo:\n{top}"
    );
    assert!(
        !top.contains("generate"),
        "the packagers' generate command shows in --help:\n{top}"
    );
    assert!(
        missing.is_empty(),
        "no Example(s) section in --help of: {missing:?}"
    );
}
