//! On a file system that shares blocks (XFS, loop-mounted for the test), the pre-images are
//! reflinks of the base's blocks, not copies, and `recover --undo` from them puts the base
//! back bit for bit. Skipped, saying why, without root, `mkfs.xfs` or a loop device
//! (`scripts/install-deps` installs xfsprogs).

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;

use storage::OsFs;
use testkit::commit_point::CommitPointStop;
use testkit::fixture;
use testkit::hooked::HookedHost;
use testkit::xfs::Xfs;
use txn::{CommitOptions, Engine, RecoverOptions};

const MIB: usize = 1 << 20;

/// Bytes in use on the file system holding `dir`.
fn used(dir: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    (s.blocks() - s.blocks_free()) * s.fragment_size()
}

#[test]
fn pre_images_on_xfs_are_reflinks_and_undo_restores_from_them() {
    let xfs = match Xfs::mount(512) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // Arrange: 32 MiB of varied bytes, 16 MiB of them overwritten through the overlay.
    let base = xfs.path().join("base.raw");
    let old: Vec<u8> = (0..32 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&base, &old).expect("write the base");
    let stop = CommitPointStop::default();
    let engine = Engine::new(
        OsFs,
        HookedHost::default().at_step(stop.hook()),
        xfs.path().join("state"),
    )
    .expect("an engine");
    let m = fixture::begin_raw(&engine, &base);
    if fixture::write_overlay(&m, "write -P 0xaa 4M 16M").is_none() {
        return;
    }
    let before = used(xfs.path());

    // Act: a commit that dies at its commit point, with its pre-images saved.
    stop.arm();
    let died = catch_unwind(AssertUnwindSafe(|| {
        engine.commit(&m.id, CommitOptions::default(), &mut |_| {})
    }));
    let grown = used(xfs.path()).saturating_sub(before);
    let undo = txn::layout::undo(&base, &m.id).expect("the pre-image file's name");
    let saved = fs::metadata(&undo).map(|x| x.len()).unwrap_or(0);
    engine
        .recover(&RecoverOptions {
            undo: true,
            ..RecoverOptions::default()
        })
        .expect("recover --undo");

    // Assert
    assert!(
        died.is_err(),
        "the commit was not stopped at its commit point"
    );
    assert!(
        saved > 16 * MIB as u64,
        "the pre-image file holds {saved} bytes"
    );
    assert!(
        grown < 4 * MIB as u64,
        "saving 16 MiB of pre-images used {grown} new bytes: they were copied, not shared"
    );
    assert!(
        fs::read(&base).expect("read the base") == old,
        "undo did not restore the base"
    );
}

/// Extents of `path` that `filefrag` reports as shared with another file.
fn shared_extents(path: &Path) -> usize {
    let out = Command::new("filefrag")
        .arg("-v")
        .arg(path)
        .output()
        .expect("filefrag runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("shared"))
        .count()
}

#[test]
fn a_commit_on_xfs_shares_the_overlay_blocks_with_the_base_and_lands_the_same_bytes() {
    let xfs = match Xfs::mount(512) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    for opts in [
        CommitOptions::default(),
        CommitOptions {
            no_undo: true,
            ..CommitOptions::default()
        },
    ] {
        let base = xfs.path().join(format!("base-{}.raw", opts.no_undo));
        let old: Vec<u8> = (0..24 * MIB).map(|i| (i * 13 % 251) as u8).collect();
        fs::write(&base, &old).expect("write the base");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (watch, at) = (base.clone(), seen.clone());
        let engine = Engine::new(
            OsFs,
            HookedHost::default().at_step(move |step| {
                if step == "applied" {
                    *at.lock().unwrap() = Some(shared_extents(&watch));
                }
            }),
            xfs.path().join("state"),
        )
        .expect("an engine");
        let m = fixture::begin_raw(&engine, &base);
        if fixture::write_overlay(&m, "write -P 0xc3 2M 9M").is_none() {
            return;
        }

        engine.commit(&m.id, opts, &mut |_| {}).expect("commit");

        let mut expected = old.clone();
        expected[2 * MIB..11 * MIB].fill(0xc3);
        assert!(
            fs::read(&base).expect("read the base") == expected,
            "no_undo={}: the base does not hold the overlay's bytes",
            opts.no_undo
        );
        let shared = seen.lock().unwrap().expect("the applied step ran");
        assert!(
            shared > 0,
            "no_undo={}: no extent of the base was shared with the overlay: the data was copied",
            opts.no_undo
        );
    }
}
