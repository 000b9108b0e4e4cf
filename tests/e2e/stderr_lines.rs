//! One style for every line imgtx writes on stderr about how things go, whichever part of
//! it writes the line: `imgtx: error: …` and `imgtx: hint: …` for a failed command (the
//! engine's errors, clap's usage errors and an image of `run --each` alike), `imgtx: info: …`
//! for log lines; never a bare `error:`, `tip:` or a tracing time stamp.

use crate::util::{stderr_of, TestDir};

const MIB: u64 = 1 << 20;

/// The lines of `stderr` before clap's usage block, which is help rather than a message.
fn messages(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty() && !l.starts_with("  "))
        .collect()
}

#[test]
fn errors_hints_and_log_lines_all_start_with_imgtx_and_their_tag() {
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let tx = t.begin(&[&base]);

    let held = base.to_str().expect("utf-8");
    let cases: [(&[&str], &[&str]); 5] = [
        // The engine's error, with its advice.
        (
            &["commit", "tx-0000000000"],
            &["imgtx: error: ", "imgtx: hint: "],
        ),
        // clap's usage errors, with clap's tip and with imgtx's own.
        (
            &["comit", &tx.id],
            &["imgtx: error: ", "imgtx: hint: did you mean 'commit'?"],
        ),
        (
            &["run", "x.img", "true"],
            &["imgtx: error: ", "imgtx: hint: put `--`"],
        ),
        // An image of a batch that could not begin: an error of its own, with its hint.
        (
            &["run", "--each", held, "--", "true"],
            &[
                "imgtx: error: ",
                "imgtx: hint: ",
                "imgtx: 0 of 1 images committed",
            ],
        ),
        // Log lines.
        (&["-v", "commit", &tx.id], &["imgtx: info: "]),
    ];
    for (args, starts) in cases {
        let out = t.imgtx(args);
        let err = stderr_of(&out);
        let lines = messages(&err);
        assert!(!lines.is_empty(), "{args:?}: nothing on stderr");
        for line in &lines {
            assert!(
                starts.iter().any(|s| line.starts_with(s)),
                "{args:?}: {line:?} is not one of {starts:?}:\n{err}"
            );
        }
        for (i, start) in starts
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.ends_with(": "))
        {
            assert!(
                lines.get(i).is_some_and(|l| l.starts_with(start)),
                "{args:?}: line {i} should start {start:?}:\n{err}"
            );
        }
    }
}
