//! What `status` shows an administrator: the files imgtx keeps beside a base (by name, with
//! their sizes: pre-images and sanlock lease files), an overlay deleted by hand, and, to a user who is not root, that root's
//! state directory is a matter for sudo or a state directory of their own.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use crate::util::{exit, imgtx_bin, qcow2_io, require_tools, run, stderr_of, TestDir};

const MIB: u64 = 1 << 20;

#[test]
fn status_names_the_spare_beside_the_base_with_its_size() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 4 * MIB, 1);
    let tx = t.begin(&[&base]);
    qcow2_io(tx.overlay(), "write -P 0x42 0 1M");
    t.imgtx_ok(&["commit", &tx.id]);
    let spare = t.spare("disk.img");
    let size = fs::metadata(&spare).unwrap().len();

    let status = t.imgtx_ok(&["status"]);

    assert!(
        status.contains(&format!("{}: {}", base.display(), spare.display())),
        "the spare is not named: {status}"
    );
    let human = format!("{:.2} MiB", size as f64 / MIB as f64);
    assert!(status.contains(&human), "no size {human}: {status}");
}

#[test]
fn status_names_the_lease_files_beside_the_bases_it_worked_on() {
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    t.raw_image("other.img", MIB, 2);
    let tx = t.begin(&[&base]);
    t.imgtx_ok(&["rollback", &tx.id]);
    // What a `--lockspace` run leaves beside a base: the lease file (its content is
    // sanlock's, and status only names it). other.img was never in a transaction here.
    let lease = t.images().join(".disk.img.imgtx.lease");
    fs::write(&lease, vec![0u8; 1 << 20]).unwrap();
    fs::write(t.images().join(".other.img.imgtx.lease"), b"x").unwrap();

    let human = t.imgtx_ok(&["status"]);
    let json = t.imgtx_json(&["status"]);

    assert!(
        human.contains(&format!("  {} (1.00 MiB)", lease.display())),
        "{human}"
    );
    assert!(!human.contains(".other.img"), "{human}");
    assert_eq!(
        json["lease_files"],
        serde_json::json!([{"path": lease, "bytes": 1 << 20}]),
        "{json}"
    );
}

#[test]
fn status_flags_an_overlay_deleted_by_hand_and_suggests_rollback() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let tx = t.begin(&[&base]);
    fs::remove_file(tx.overlay()).unwrap();

    let status = t.imgtx_ok(&["status"]);

    assert!(
        status.contains("the overlay is gone (deleted by hand): roll the transaction back"),
        "{status}"
    );
    let v = t.imgtx_json(&["status"]);
    assert_eq!(
        v["transactions"][0]["images"][0]["overlay_missing"], true,
        "{v}"
    );
    t.imgtx_ok(&["rollback", &tx.id]);
}

/// `imgtx --state-dir DIR ARGS...` run as user nobody.
fn as_nobody(dir: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(imgtx_bin())
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null());
    run(&mut cmd)
}

#[test]
fn a_user_on_roots_state_directory_is_told_to_use_sudo_or_one_of_their_own() {
    if !require_tools(&["qemu-img", "setpriv"]) || !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run imgtx as another user");
        return;
    }
    let t = TestDir::new();
    let base = t.raw_image("disk.img", MIB, 1);
    let tx = t.begin(&[&base]);
    let state = t.state_dir();

    // Root's directories around it closed to others, as /var/lib/imgtx's are...
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let closed = as_nobody(&state, &["status"]);
    // ... or open enough to reach it, but it is still root's.
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let reached: Vec<Output> = [&["status"][..], &["log"], &["diff", &tx.id]]
        .iter()
        .map(|args| as_nobody(&state, args))
        .collect();

    for out in std::iter::once(&closed).chain(&reached) {
        let err = stderr_of(out);
        assert_eq!(out.status.code(), Some(exit::ERROR), "{err}");
        assert!(err.contains("sudo") && err.contains("--state-dir"), "{err}");
        assert!(
            !err.contains("chown"),
            "suggests taking root's directory over: {err}"
        );
    }
    let mine = t.path().join("nobody-has-none");
    let out = as_nobody(&mine, &["status"]);
    assert_eq!(out.status.code(), Some(exit::OK), "{}", stderr_of(&out));
    assert!(
        !mine.exists(),
        "a read-only command created a state directory"
    );
    t.imgtx_ok(&["rollback", &tx.id]);
}
