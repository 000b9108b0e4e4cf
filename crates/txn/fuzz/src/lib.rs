//! The body of the `commit` fuzz target: commit an arbitrary overlay into an in-memory raw
//! base, through the real engine over the simulated disk.
//!
//! It is a plain library so that the seed corpus and every finding can be replayed by an
//! ordinary test (`crates/txn/tests/hostile_fuzz_corpus.rs` includes this file as a module).
//! It is not a crash test: the simulated disk never fails here, only the overlay is hostile.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use storage::sim::SimFs;
use storage::{File, Fs};
use testkit::fixture;
use testkit::sim_host::SimHost;
use txn::{CommitOptions, Engine, Error};

/// The base every run commits into. The directory exists on the machine that made the seed
/// corpus with qemu-img, so the seeds carry this exact backing name.
pub const BASE: &str = "/tmp/imgtx-fz/base.raw";
/// A file beside the base that a redirected backing name could point at.
pub const VICTIM: &str = "/tmp/imgtx-fz/victim.raw";
/// The base length: two 64 KiB clusters.
pub const BASE_LEN: u64 = 128 << 10;
/// Overlays claiming a larger virtual size are skipped: the simulated disk keeps a grown
/// base in memory, where a real file system would keep it sparse.
pub const MAX_VIRTUAL_SIZE: u64 = 8 << 20;

const STATE: &str = "/state";

/// The known content of the base: every 512-byte sector distinct.
pub fn base_content() -> Vec<u8> {
    pattern(BASE_LEN, 0x5a)
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; usize::try_from(len).unwrap_or(0)];
    for (n, sector) in v.chunks_mut(512).enumerate() {
        sector.fill(seed ^ (n as u8));
        sector[0] = (n >> 8) as u8;
    }
    v
}

/// What the base must hold after `overlay` was committed into it: the old content grown
/// (never shrunk) to the overlay's size, with every allocated overlay range read through
/// the qcow2 reader. `None` when the reader refuses the overlay.
fn expected_after_commit(overlay: &[u8]) -> Option<Vec<u8>> {
    let img = qcow::Image::open(overlay).ok()?;
    let map = img.map().ok()?;
    let vsize = img.header().virtual_size;
    let mut want = base_content();
    let new_len = usize::try_from(vsize.max(BASE_LEN)).ok()?;
    want.resize(new_len, 0);
    for e in &map {
        if e.kind == qcow::ExtentKind::Unallocated {
            continue;
        }
        let start = usize::try_from(e.guest.0).ok()?;
        let end = usize::try_from(e.guest.0.checked_add(e.len)?).ok()?;
        img.read_at(&mut want[start..end], e.guest).ok()?;
    }
    Some(want)
}

/// Begins a transaction over the in-memory base, replaces the overlay's bytes with
/// `overlay` (same inode, as a guest tool writing the file would), runs diff, status and
/// commit, and checks the outcome:
///
/// - no panic, whatever the bytes;
/// - commit fails, and then the base and the victim are byte-identical to before, no
///   journal or pre-image is left, and rollback removes the overlay; or
/// - commit succeeds, and the base holds exactly what the qcow2 reader says the overlay
///   holds, and the victim is untouched.
///
/// # Panics
/// When any of the above does not hold: that is a finding.
pub fn commit_overlay(overlay: &[u8]) {
    if qcow::Image::open(overlay).is_ok_and(|i| i.header().virtual_size > MAX_VIRTUAL_SIZE) {
        return;
    }
    let fs = SimFs::new();
    let base = base_content();
    let victim = pattern(BASE_LEN, 0xc3);
    fs.put_durable(BASE, &base);
    fs.put_durable(VICTIM, &victim);
    let engine =
        Engine::new(fs.clone(), SimHost, PathBuf::from(STATE)).expect("engine over an empty disk");
    let m = fixture::begin_raw(&engine, Path::new(BASE));
    let ov_path = m.images[0].overlay.clone();
    {
        let f = fs
            .open(&ov_path, true)
            .expect("open the overlay for writing");
        f.set_len(0).expect("truncate the overlay");
        f.write_all_at(overlay, 0).expect("write the overlay");
    }

    // Read-only views parse the overlay too; they may refuse but never panic.
    let _ = engine.diff(&m.id);
    let _ = engine.status(Some(&m.id));

    let result = engine.commit(&m.id, CommitOptions::default(), &mut |_| {});
    assert_eq!(
        fs.read_live(VICTIM).as_deref(),
        Some(&victim[..]),
        "the victim file changed"
    );
    match result {
        Ok(_) => {
            let want = expected_after_commit(overlay)
                .expect("commit accepted an overlay the reader refuses");
            let got = fs.read_live(BASE).expect("base exists");
            assert!(
                got == want,
                "the committed base differs from the overlay's content"
            );
        }
        Err(e) => {
            assert!(
                !matches!(e, Error::CommitInterrupted { .. }),
                "the commit failed after its commit point: {e} ({:?})",
                std::error::Error::source(&e).map(ToString::to_string)
            );
            assert!(
                fs.read_live(BASE).as_deref() == Some(&base[..]),
                "a refused commit changed the base: {e}"
            );
            let leftovers: Vec<_> = fs
                .files()
                .into_iter()
                .filter(|p| {
                    p.to_str().is_some_and(|s| {
                        s.ends_with(".imgtx.journal") || s.ends_with(".imgtx.undo")
                    })
                })
                .collect();
            assert!(leftovers.is_empty(), "a refused commit left {leftovers:?}");
            engine
                .rollback(&m.id)
                .expect("rollback after a refused commit");
            assert!(
                fs.metadata(&ov_path).expect("stat").is_none(),
                "rollback left the overlay"
            );
            assert!(
                fs.read_live(BASE).as_deref() == Some(&base[..]),
                "rollback changed the base"
            );
        }
    }
}
