//! End-to-end tests: the real `imgtx` binary against real files, qemu-img, qemu-io and guestfish.
//!
//! One test binary (`cargo test -p imgtx --test e2e`) so cargo links once. Shared helpers live
//! in `util.rs`; each scenario family is a module below.

mod util;

mod closed_pipes;
mod colour;
mod commit_signals;
mod completions;
mod guestfish;
mod help;
mod history_chain;
mod hostile;
mod isolation;
mod kill;
mod kill_strace;
mod kill_xfs;
mod lease;
mod log_view;
mod names;
mod naming;
mod operator;
mod ops;
mod plain_words;
mod progress;
mod revert;
mod run_command;
mod run_each;
mod run_signals;
mod status_view;
mod stderr_lines;
mod txn_qcow2;
mod txn_raw;

#[test]
fn binary_prints_help() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgtx"))
        .arg("--help")
        .output()
        .expect("run imgtx");
    assert!(out.status.success());
}
