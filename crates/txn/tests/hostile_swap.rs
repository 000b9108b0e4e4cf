//! Issue 6 at the engine level, on real files: a name swapped at the worst moment, between
//! the check of the overlay's name and its open (T24).
//!
//! A racer would hit that window only now and then; [`SwapOnOpen`] hits it every time by
//! renaming a decoy over the overlay's name just before the engine's open goes through.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use storage::{Fs, Metadata, OsFile, OsFs};
use txn::{BeginOptions, CommitOptions, Engine, Error, Format, OsHost};

/// The real file system, except that the next open of `target` first renames `decoy` over it.
#[derive(Debug, Clone, Default)]
struct SwapOnOpen {
    armed: Arc<Mutex<Option<(PathBuf, PathBuf)>>>,
}

impl SwapOnOpen {
    fn arm(&self, target: &Path, decoy: &Path) {
        *self.armed.lock().expect("lock") = Some((target.to_path_buf(), decoy.to_path_buf()));
    }

    fn swap_if_armed(&self, path: &Path) {
        let mut armed = self.armed.lock().expect("lock");
        if armed.as_ref().is_some_and(|(t, _)| t == path) {
            let (target, decoy) = armed.take().expect("armed");
            fs::rename(decoy, target).expect("swap the decoy in");
        }
    }
}

impl Fs for SwapOnOpen {
    type File = OsFile;

    fn create_new(&self, path: &Path) -> io::Result<OsFile> {
        OsFs.create_new(path)
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<OsFile> {
        self.swap_if_armed(path);
        OsFs.open(path, writable)
    }

    fn metadata(&self, path: &Path) -> io::Result<Option<Metadata>> {
        OsFs.metadata(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsFs.remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsFs.rename(from, to)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        OsFs.create_dir(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        OsFs.sync_dir(dir)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        OsFs.read_dir(dir)
    }
}

#[test]
fn commit_refuses_an_overlay_swapped_between_its_check_and_its_open() {
    // Arrange: the decoy is a byte-for-byte copy of the overlay, so every content check
    // (magic, tables, backing name and format) passes; only its inode differs.
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let base = tmp.path().join("base.raw");
    fs::write(&base, vec![0x11u8; 64 << 10]).expect("write the base");
    let swap = SwapOnOpen::default();
    let engine =
        Engine::new(swap.clone(), OsHost::default(), tmp.path().join("state")).expect("an engine");
    let m = engine
        .begin(&BeginOptions {
            bases: vec![base.clone()],
            base_format: Some(Format::Raw),
            ..BeginOptions::default()
        })
        .expect("begin");
    let overlay = m.images[0].overlay.clone();
    let decoy = tmp.path().join("decoy.qcow2");
    fs::copy(&overlay, &decoy).expect("copy the overlay");
    let decoy_ino = fs::metadata(&decoy).expect("stat the decoy").ino();
    swap.arm(&overlay, &decoy);
    // Act
    let err = engine
        .commit(&m.id, CommitOptions::default(), &mut |_| {})
        .expect_err("commit must refuse the decoy");
    // Assert
    assert!(
        matches!(err, Error::OverlayInvalid { .. }),
        "unexpected error: {err}"
    );
    assert!(
        err.to_string().contains("replaced by another file"),
        "unexpected reason: {err}"
    );
    assert_eq!(
        fs::metadata(&overlay)
            .expect("the decoy has the name")
            .ino(),
        decoy_ino,
        "the swap did not happen, so the test proved nothing"
    );
    assert_eq!(
        fs::read(&base).expect("read the base"),
        vec![0x11u8; 64 << 10]
    );
}
