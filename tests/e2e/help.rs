//! Help as users meet it: typo suggestions never offer the hidden
//! `generate` (nor, for `undo`, `run`, which commits), and the man pages document the
//! environment, the files imgtx keeps and every exit status.

use std::fs;

use crate::util::{exit, stderr_of, stdout_of, TestDir};

#[test]
fn a_mistyped_command_gets_no_hidden_command_and_undo_gets_none_that_commits() {
    let t = TestDir::new();
    let undo = stderr_of(&t.imgtx_code(&["undo"], exit::USAGE));
    assert!(!undo.contains("'run'"), "undo suggests run: {undo}");
    assert!(
        undo.contains("imgtx rollback TX") && undo.contains("imgtx revert TX"),
        "{undo}"
    );

    let near_hidden = stderr_of(&t.imgtx_code(&["generat"], exit::USAGE));
    assert!(!near_hidden.contains("'generate'"), "{near_hidden}");

    let typo = stderr_of(&t.imgtx_code(&["comit"], exit::USAGE));
    assert!(typo.contains("did you mean 'commit'?"), "{typo}");
}

#[test]
fn man_pages_document_the_environment_the_files_and_every_exit_status() {
    let t = TestDir::new();
    let dir = t.path().join("man");

    t.imgtx_ok(&["generate", "man", dir.to_str().unwrap()]);

    let top = fs::read_to_string(dir.join("imgtx.1")).unwrap();
    for needle in [
        ".SH ENVIRONMENT",
        "IMGTX_STATE_DIR",
        "IMGTX_LOG",
        "IMGTX_SCAN",
        "NO_COLOR",
        ".SH FILES",
        ".BASE.imgtx.spare",
        "txns/ID.json",
        ".SH \"EXIT STATUS\"",
        "127  run: the command was not found",
    ] {
        assert!(top.contains(needle), "imgtx.1 lacks {needle:?}");
    }
    assert_eq!(
        top.matches("EXIT STATUS").count(),
        1,
        "two exit status sections"
    );
    let run = fs::read_to_string(dir.join("imgtx-run.1")).unwrap();
    assert!(
        run.contains(".SH \"EXIT STATUS\""),
        "imgtx-run.1 lacks EXIT STATUS"
    );
    let help = stdout_of(&t.imgtx_code(&["--help"], exit::OK));
    assert!(
        !help.contains("docs/"),
        "--help points into the source tree: {help}"
    );
}
