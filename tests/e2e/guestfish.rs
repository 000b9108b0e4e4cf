//! Edit a real file system inside a transaction with guestfish, then commit or roll
//! back. Each guestfish call boots the libguestfs appliance (about 25 s under TCG), so this
//! module runs guestfish three times in all.

use std::path::{Path, PathBuf};

use crate::util::{
    assert_fsck_clean, debugfs_cat, guestfish, require_tools, sha256, stdout_of, TestDir,
};

const ISSUE_NET: &str = "Debian GNU/Linux 12\n";
const CHANGE: &str = "THIS IS A CHANGE TO ISSUE.NET\n";

/// Tools every test here needs, beyond imgtx.
const TOOLS: &[&str] = &[
    "guestfish",
    "mke2fs",
    "e2fsck",
    "debugfs",
    "qemu-img",
    "sha256sum",
];

/// `images/base.img`: a 64 MiB ext4 image holding `/etc/issue.net`.
fn ext4_base(dir: &TestDir) -> PathBuf {
    dir.ext4_image("base.img", 64, &[("/etc/issue.net", ISSUE_NET)])
}

/// The documented edit (docs/testing.md): append CHANGE to /etc/issue.net in `image`. The argument carries a real
/// newline; on a shell command line guestfish would write a literal backslash-n.
fn append_change(image: &Path) {
    let image = image.to_str().expect("utf-8 path");
    guestfish(&[
        "-a",
        image,
        "-m",
        "/dev/sda",
        "write-append",
        "/etc/issue.net",
        CHANGE,
    ]);
}

#[test]
fn guestfish_edit_reaches_base_only_at_commit() {
    // Arrange
    if !require_tools(TOOLS) {
        return;
    }
    let dir = TestDir::new();
    let base = ext4_base(&dir);
    let before = sha256(&base);
    let tx = dir.begin(&[&base]);

    // Act: edit the overlay.
    append_change(tx.overlay());

    // Assert: the base is untouched until commit.
    assert_eq!(sha256(&base), before, "the base changed before commit");
    assert_eq!(debugfs_cat(&base, "/etc/issue.net"), ISSUE_NET);

    // Act: commit.
    dir.imgtx_ok(&["commit", &tx.id]);

    // Assert: the base holds the edit, is a clean file system, and nothing is left open.
    assert_eq!(
        debugfs_cat(&base, "/etc/issue.net"),
        format!("{ISSUE_NET}{CHANGE}")
    );
    assert_fsck_clean(&base);
    assert!(!tx.overlay().exists(), "the overlay survived the commit");
    dir.assert_no_transactions();
}

#[test]
fn guestfish_edit_rolled_back_leaves_no_trace() {
    // Arrange
    if !require_tools(TOOLS) {
        return;
    }
    let dir = TestDir::new();
    let base = ext4_base(&dir);
    let before = sha256(&base);
    let files_before = dir.image_listing();
    let tx = dir.begin(&[&base]);
    append_change(tx.overlay());

    // Act
    dir.imgtx_ok(&["rollback", &tx.id]);

    // Assert
    assert_eq!(sha256(&base), before, "rollback changed the base");
    assert!(!tx.overlay().exists(), "the overlay survived the rollback");
    assert_eq!(
        dir.image_listing(),
        files_before,
        "stray files beside the base"
    );
    dir.assert_no_transactions();
    assert_fsck_clean(&base);
}

#[test]
fn run_guestfish_commits_its_edit() {
    // Arrange
    if !require_tools(TOOLS) {
        return;
    }
    let dir = TestDir::new();
    let base = ext4_base(&dir);
    let files_before = dir.image_listing();
    let base_arg = base.to_str().expect("utf-8 path");

    // Act
    let out = dir.imgtx_ok(&[
        "run",
        base_arg,
        "--",
        "guestfish",
        "-a",
        "{}",
        "-m",
        "/dev/sda",
        "write-append",
        "/etc/issue.net",
        CHANGE,
    ]);

    // Assert
    assert_eq!(
        debugfs_cat(&base, "/etc/issue.net"),
        format!("{ISSUE_NET}{CHANGE}"),
        "run printed: {out}"
    );
    assert_fsck_clean(&base);
    assert_eq!(
        dir.image_listing(),
        files_before,
        "stray files beside the base"
    );
    dir.assert_no_transactions();
}

#[test]
fn run_failing_command_leaves_base_unchanged() {
    // Arrange: no guestfish here; a command that fails after the overlay exists is enough.
    if !require_tools(&["mke2fs", "sha256sum"]) {
        return;
    }
    let dir = TestDir::new();
    let base = ext4_base(&dir);
    let before = sha256(&base);
    let files_before = dir.image_listing();
    let base_arg = base.to_str().expect("utf-8 path");

    // Act
    let out = dir.imgtx(&[
        "run",
        base_arg,
        "--",
        "sh",
        "-c",
        "test -f \"$1\" && exit 7",
        "sh",
        "{}",
    ]);

    // Assert
    assert!(
        !out.status.success(),
        "run succeeded though its command failed: {}",
        stdout_of(&out)
    );
    assert_eq!(sha256(&base), before, "a failed run changed the base");
    assert_eq!(
        dir.image_listing(),
        files_before,
        "stray files beside the base"
    );
    dir.assert_no_transactions();
}
