//! Hostile names at the engine level, on real files: what rollback and commit do with names a
//! hostile tool planted where the overlay was.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

use storage::OsFs;
use testkit::fixture;
use txn::{CommitOptions, Engine, OsHost};

struct Scene {
    _tmp: tempfile::TempDir,
    engine: Engine<OsFs, OsHost>,
    base: PathBuf,
    victim: PathBuf,
    overlay: PathBuf,
    tx: txn::TxId,
}

fn scene() -> Scene {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let base = fixture::write_base(tmp.path());
    let victim = tmp.path().join("victim.raw");
    fs::write(&victim, vec![0x77u8; 64 << 10]).expect("write the victim");
    let engine = Engine::new(OsFs, OsHost::default(), tmp.path().join("state")).expect("an engine");
    let m = fixture::begin_raw(&engine, &base);
    Scene {
        overlay: m.images[0].overlay.clone(),
        tx: m.id,
        _tmp: tmp,
        engine,
        base,
        victim,
    }
}

#[test]
fn rollback_removes_a_symlink_planted_in_the_overlays_place_but_not_its_target() {
    // Arrange
    let s = scene();
    fs::remove_file(&s.overlay).expect("remove the overlay");
    symlink(&s.victim, &s.overlay).expect("plant a symlink");
    // Act
    s.engine.rollback(&s.tx).expect("rollback");
    // Assert
    assert!(
        fs::symlink_metadata(&s.overlay).is_err(),
        "the planted symlink is still there"
    );
    assert_eq!(
        fs::read(&s.victim).expect("the target is still there"),
        vec![0x77u8; 64 << 10]
    );
}

#[test]
fn rollback_leaves_a_stranger_file_in_the_overlays_place() {
    // Arrange
    let s = scene();
    // Renamed over the overlay while it exists, so the stranger cannot reuse its inode
    // number (remove-then-create may, which no (dev, ino) check can tell apart).
    let planted = s.overlay.with_extension("planted");
    fs::write(&planted, b"not ours").expect("plant a file");
    fs::rename(&planted, &s.overlay).expect("move it over the overlay");
    // Act
    s.engine.rollback(&s.tx).expect("rollback");
    // Assert: imgtx unlinks only what it created.
    assert_eq!(
        fs::read(&s.overlay).expect("the planted file is kept"),
        b"not ours"
    );
}

#[test]
fn commit_refuses_a_symlinked_overlay_without_touching_base_or_target() {
    // Arrange
    let s = scene();
    let aside = s.overlay.with_extension("aside");
    fs::rename(&s.overlay, &aside).expect("move the overlay");
    symlink(&aside, &s.overlay).expect("plant a symlink to the real overlay");
    // Act
    let err = s
        .engine
        .commit(&s.tx, CommitOptions::default(), &mut |_| {})
        .expect_err("commit must refuse");
    // Assert
    fixture::assert_overlay_refused(&err, "not a regular file");
    fixture::assert_base_untouched(&s.base);
    assert!(aside.exists());
}

#[test]
fn a_fifo_in_the_overlays_place_blocks_neither_commit_nor_rollback() {
    // Arrange: opening a FIFO for reading blocks until a writer comes, unless O_NONBLOCK.
    let s = scene();
    fs::remove_file(&s.overlay).expect("remove the overlay");
    nix::unistd::mkfifo(&s.overlay, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .expect("mkfifo");
    // Act
    let err = s
        .engine
        .commit(&s.tx, CommitOptions::default(), &mut |_| {})
        .expect_err("commit must refuse");
    s.engine.rollback(&s.tx).expect("rollback");
    // Assert
    assert!(
        err.to_string().contains("not a regular file"),
        "unexpected reason: {err}"
    );
    fixture::assert_base_untouched(&s.base);
}
