//! End-to-end tests: the real `imgtx` binary against real files, qemu-img, qemu-io and guestfish.

#[test]
fn binary_prints_help() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imgtx"))
        .arg("--help")
        .output()
        .expect("run imgtx");
    assert!(out.status.success());
}
