//! A commit hands the last descriptors of its overlay and pre-image file, and a rollback
//! those of its overlay, to the host (`Host::release_later`) only once their names are gone, so the file system frees their
//! blocks outside the command (`crates/txn/src/release.rs`) and nothing still named is
//! ever given away.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use storage::OsFs;
use testkit::fixture;
use testkit::hooked::HookedHost;
use txn::{CommitOptions, Engine};

/// (links, length) of every file handed to `release_later`, per call.
type Handed = Arc<Mutex<Vec<Vec<(u64, i64)>>>>;

fn engine(state: &Path) -> (Engine<OsFs, HookedHost>, Handed) {
    let handed: Handed = Arc::default();
    let seen = Arc::clone(&handed);
    let host = HookedHost::default().on_release(move |files| {
        let facts = files
            .iter()
            .map(|f| {
                let st = nix::sys::stat::fstat(f).expect("fstat a handed file");
                (st.st_nlink, st.st_size)
            })
            .collect();
        seen.lock().expect("not poisoned").push(facts);
    });
    (
        Engine::new(OsFs, host, state.to_path_buf()).expect("an engine"),
        handed,
    )
}

/// Begins a transaction on a 1 MiB raw base under `dir` and writes 0xaa over its first
/// 512 KiB through the overlay; `None` without qemu-io.
fn begun_and_written(
    dir: &Path,
) -> Option<(
    Engine<OsFs, HookedHost>,
    Handed,
    txn::Manifest,
    std::path::PathBuf,
)> {
    let base = dir.join("base.raw");
    fs::write(&base, vec![0x11u8; 1 << 20]).expect("write the base");
    let (engine, handed) = engine(&dir.join("state"));
    let m = fixture::begin_raw(&engine, &base);
    fixture::write_overlay(&m, "write -P 0xaa 0 512k")?;
    Some((engine, handed, m, base))
}

fn assert_unnamed_and_nonempty(handed: &Handed, want_files: usize, what: &str) {
    let handed = handed.lock().expect("not poisoned").clone();
    assert_eq!(handed.len(), 1, "one hand-off per {what}");
    assert_eq!(handed[0].len(), want_files, "files handed off by {what}");
    for (links, len) in &handed[0] {
        assert_eq!(*links, 0, "{what} handed off a file still named");
        assert!(*len > 0, "{what} handed off an empty file");
    }
}

#[test]
fn a_rollback_hands_off_its_overlay_once_unlinked() {
    // Arrange
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let Some((engine, handed, m, base)) = begun_and_written(tmp.path()) else {
        return;
    };

    // Act
    engine.rollback(&m.id).expect("rollback");

    // Assert
    assert_unnamed_and_nonempty(&handed, 1, "rollback");
    assert!(!m.images[0].overlay.exists());
    assert_eq!(
        fs::read(&base).expect("read the base"),
        vec![0x11u8; 1 << 20]
    );
}

#[test]
fn a_commit_hands_off_only_files_whose_names_are_gone() {
    // The pre-image file is unlinked (and handed off) only with --no-spare; by default it is
    // renamed to the spare and closed in place, since closing it frees nothing.
    for (no_undo, no_spare, want_files) in [(false, false, 1), (false, true, 2), (true, false, 1)] {
        // Arrange
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let Some((engine, handed, m, base)) = begun_and_written(tmp.path()) else {
            return;
        };
        let what = format!("commit (no_undo {no_undo}, no_spare {no_spare})");

        // Act
        let opts = CommitOptions {
            no_undo,
            no_spare,
            keep: false,
        };
        engine.commit(&m.id, opts, &mut |_| {}).expect("commit");

        // Assert
        assert_unnamed_and_nonempty(&handed, want_files, &what);
        assert!(!m.images[0].overlay.exists());
        let spare = base.with_file_name(".base.raw.imgtx.spare");
        assert_eq!(spare.exists(), !no_undo && !no_spare, "{what}: spare");
        let now = fs::read(&base).expect("read the base");
        assert!(
            now[..512 << 10].iter().all(|&b| b == 0xaa),
            "the commit did not land"
        );
    }
}
