//! Transactions over qcow2 bases: `qemu-img commit` under imgtx's locks and journal.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{exit, expect_code, qcow2_io, qemu_img, require_tools, run, TestDir};

fn qcow2_base(t: &TestDir, name: &str) -> PathBuf {
    let base = t.image(name);
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        base.as_os_str(),
        "8M".as_ref(),
    ]);
    for cmd in ["write -P 0x11 0 3M", "write -P 0x22 6M 1M"] {
        qcow2_io(&base, cmd);
    }
    base
}

fn edit(overlay: &Path) {
    for cmd in [
        "write -P 0xab 1M 2M",
        "write -z 6M 512k",
        "write -P 0xcd 7M 64k",
    ] {
        qcow2_io(overlay, cmd);
    }
}

fn to_raw(t: &TestDir, image: &Path, name: &str) -> PathBuf {
    let out = t.path().join(name);
    qemu_img(&[
        "convert".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        image.as_os_str(),
        out.as_os_str(),
    ]);
    out
}

fn same_content(base: &Path, expected_raw: &Path) {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(base)
        .arg(expected_raw);
    expect_code(&mut cmd, exit::OK);
}

#[test]
fn commit_into_a_qcow2_base_matches_the_overlay() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let t = TestDir::new();
    let base = qcow2_base(&t, "disk.qcow2");
    let tx = t.begin(&[&base]);
    assert_eq!(tx.images[0].base_format, "qcow2");
    edit(tx.overlay());
    let expected = to_raw(&t, tx.overlay(), "expected.raw");

    t.imgtx_ok(&["commit", &tx.id]);

    same_content(&base, &expected);
    let mut check = Command::new("qemu-img");
    check.args(["check", "-q"]).arg(&base);
    expect_code(&mut check, exit::OK);
    assert_eq!(t.image_listing(), vec!["disk.qcow2"]);
}

#[test]
fn an_interrupted_qcow2_commit_undoes_to_the_identical_file_or_finishes() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    for undo in [true, false] {
        let t = TestDir::new();
        let base = qcow2_base(&t, "disk.qcow2");
        let before = fs::read(&base).unwrap();
        let tx = t.begin(&[&base]);
        edit(tx.overlay());
        let expected = to_raw(&t, tx.overlay(), "expected.raw");
        let mut cmd = t.command();
        cmd.env("IMGTX_TEST_CRASH_AFTER", "applied")
            .args(["commit", &tx.id]);
        assert_eq!(run(&mut cmd).status.code(), Some(137));

        if undo {
            t.imgtx_ok(&["recover", "--undo"]);
            assert!(
                fs::read(&base).unwrap() == before,
                "undo restores the qcow2 file bit for bit"
            );
        } else {
            t.imgtx_ok(&["recover"]);
            same_content(&base, &expected);
        }
        t.assert_no_transactions();
        assert_eq!(t.image_listing(), vec!["disk.qcow2"]);
    }
}

#[test]
fn a_qcow2_base_with_a_backing_file_is_refused() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let lower = t.raw_image("lower.img", 1 << 20, 1);
    let base = t.image("upper.qcow2");
    crate::util::qemu_overlay(&lower, "raw", &base);
    t.imgtx_code(&["begin".as_ref(), base.as_os_str()], exit::ERROR);
    t.imgtx_code(
        &[
            "begin".as_ref(),
            "--base-format=qcow2".as_ref(),
            base.as_os_str(),
        ],
        exit::ERROR,
    );
}

/// The flags of the persistent bitmaps of the qcow2 image `path`, as qemu-img reports them.
fn bitmap_flags(path: &Path) -> Vec<Vec<String>> {
    let info = qemu_img(&[
        "info".as_ref(),
        "-U".as_ref(),
        "--output=json".as_ref(),
        path.as_os_str(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    v["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|b| {
                    b["flags"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|f| f.as_str().unwrap().to_owned())
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_qcow2_commit_whose_qemu_img_died_recovers_to_what_a_clean_commit_makes() {
    if !require_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    for no_undo in [false, true] {
        let t = TestDir::new();
        // Small clusters and a persistent bitmap: what a half-done redo gets wrong.
        let base = t.image("disk.qcow2");
        qemu_img(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-o".as_ref(),
            "cluster_size=512".as_ref(),
            base.as_os_str(),
            "64M".as_ref(),
        ]);
        qcow2_io(&base, "write -P 0x11 0 8M");
        qemu_img(&[
            "bitmap".as_ref(),
            "--add".as_ref(),
            base.as_os_str(),
            "b0".as_ref(),
        ]);
        let tx = t.begin(&[&base]);
        qcow2_io(tx.overlay(), "write -P 0x33 4M 40M");
        let expected = to_raw(&t, tx.overlay(), "expected.raw");
        let mut cmd = t.command();
        cmd.arg("commit");
        if no_undo {
            cmd.arg("--no-undo");
        }
        cmd.arg(&tx.id)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut imgtx = cmd.spawn().unwrap();
        // Kill qemu-img alone, in the middle of its commit: imgtx stops past its commit point.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let child = loop {
            let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|p| {
                let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
                let (comm, rest) = stat.split_once(") ")?;
                let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
                (ppid == imgtx.id() && comm.ends_with("(qemu-img"))
                    .then(|| p.file_name().to_string_lossy().parse::<i32>().ok())
                    .flatten()
            });
            if let Some(pid) = found {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "qemu-img never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        std::thread::sleep(std::time::Duration::from_millis(150));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child),
            nix::sys::signal::Signal::SIGKILL,
        );
        let status = imgtx.wait().unwrap();
        if status.success() {
            eprintln!("no_undo={no_undo}: qemu-img finished before the kill; nothing to recover");
            continue;
        }
        assert_eq!(
            status.code(),
            Some(exit::RECOVERY_NEEDED),
            "no_undo={no_undo}"
        );

        t.imgtx_ok(&["recover"]);

        same_content(&base, &expected);
        let mut check = Command::new("qemu-img");
        check.arg("check").arg(&base);
        let out = run(&mut check);
        assert_eq!(
            out.status.code(),
            Some(exit::OK),
            "no_undo={no_undo}: qemu-img check after recovery:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        if !no_undo {
            for flags in bitmap_flags(&base) {
                assert!(
                    !flags.iter().any(|f| f == "in-use"),
                    "the bitmap is left in use: {flags:?}"
                );
            }
        }
        t.assert_no_transactions();
    }
}

/// A qcow2 image with a backing file of its own is refused saying why and what to do, and
/// never with advice to treat its bytes as a raw disk.
#[test]
fn a_qcow2_image_with_a_backing_file_is_refused_with_what_to_do() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let below = qcow2_base(&t, "below.qcow2");
    let top = t.image("top.qcow2");
    qemu_img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-b".as_ref(),
        below.as_os_str(),
        "-F".as_ref(),
        "qcow2".as_ref(),
        top.as_os_str(),
    ]);

    let out = t.imgtx_code(&["begin".as_ref(), top.as_os_str()], exit::ERROR);

    let err = crate::util::stderr_of(&out);
    assert!(err.contains("backing file of its own"), "{err}");
    assert!(err.contains("flatten it first"), "{err}");
    assert!(!err.contains("--base-format raw"), "{err}");
}

/// Stating `--base-format raw` for what is a well-formed qcow2 image is obeyed (a guest may
/// have written a qcow2 image onto a raw disk) but warned about, saying the transaction
/// edits the qcow2 file's own bytes.
#[test]
fn a_qcow2_image_stated_to_be_raw_is_taken_as_raw_with_a_warning() {
    if !require_tools(&["qemu-img"]) {
        return;
    }
    let t = TestDir::new();
    let base = qcow2_base(&t, "disk.qcow2");

    let out = t.imgtx_code(
        &[
            "begin".as_ref(),
            "--base-format".as_ref(),
            "raw".as_ref(),
            base.as_os_str(),
        ],
        exit::OK,
    );

    let err = crate::util::stderr_of(&out);
    assert!(err.contains("imgtx: warning: treating as raw"), "{err}");
    assert!(err.contains("the qcow2 file's own bytes"), "{err}");
    let tx = crate::util::stdout_of(&out);
    let tx = tx.lines().next().unwrap();
    t.imgtx_ok(&["rollback", tx]);
}
