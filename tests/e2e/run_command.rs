//! How `run` tells what became of its command, the way shells do: 127 for a command that
//! cannot be found, 126 for one that cannot be executed, "killed by SIGKILL" for one a
//! signal killed; and a command given without `--` gets a tip saying where `--` goes.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::{exit, require_tools, stderr_of, TestDir};

const MIB: u64 = 1 << 20;

#[test]
fn a_command_that_cannot_be_found_exits_127_and_one_not_executable_126() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let before = fs::read(&base).unwrap();
    let script = t.path().join("not-executable.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let b = base.to_str().unwrap();

    let missing = t.imgtx_code(&["run", b, "--", "imgtx-no-such-command"], 127);
    let refused = t.imgtx_code(&["run", b, "--", script.to_str().unwrap()], 126);

    assert!(
        stderr_of(&missing).contains("\"imgtx-no-such-command\""),
        "{}",
        stderr_of(&missing)
    );
    assert!(
        stderr_of(&refused).contains("rolled back"),
        "{}",
        stderr_of(&refused)
    );
    t.assert_no_transactions();
    assert_eq!(fs::read(&base).unwrap(), before);
}

#[test]
fn a_command_killed_by_a_signal_is_reported_as_killed_by_it() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let b = base.to_str().unwrap();
    let suicide = ["sh", "-c", "kill -KILL $$"];

    let human = t.imgtx_code(&[&["run", b, "--"][..], &suicide].concat(), 137);
    let json = t.imgtx_code(&[&["run", "--json", b, "--"][..], &suicide].concat(), 137);

    assert!(
        stderr_of(&human).contains("command was killed by SIGKILL; rolled back"),
        "{}",
        stderr_of(&human)
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["killed_by"], "SIGKILL", "{v}");
    assert_eq!(v["exit_code"], 137, "{v}");
    t.assert_no_transactions();
}

#[test]
fn a_command_given_without_double_dash_gets_a_tip_saying_where_it_goes() {
    let t = TestDir::new();
    let tip = "put `--` between the base images and the command";
    for args in [
        &["run", "disk.img", "true"][..],
        &["run", "disk.img", "qemu-io", "-f", "qcow2", "{}"][..],
    ] {
        let out = t.imgtx_code(args, exit::USAGE);

        let err = stderr_of(&out);
        assert!(err.contains(tip), "{args:?}: {err}");
        assert!(
            !err.contains("use '-- -f'"),
            "{args:?}: clap's tip is wrong here: {err}"
        );
    }
}
