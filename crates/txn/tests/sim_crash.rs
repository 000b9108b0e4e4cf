//! The engine on a simulated disk: a commit crashed at every file-system operation, the disk
//! damaged in several ways, then `recover`: the base must hold its old or its new content,
//! and a committed outcome must never be lost once `commit` returned.

mod crash_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use crash_support::STATE;
use storage::sim::{Damage, SimFs};
use storage::{File, Fs};
use testkit::fixture;
use testkit::sim_host::{tx as id, SimHost};
use txn::{CommitOptions, Engine, RecoverOptions};

const BASE: &str = "/d/b.img";

fn engine(fs: &SimFs) -> Engine<SimFs, SimHost> {
    Engine::new(fs.clone(), SimHost, PathBuf::from(STATE)).expect("engine")
}

fn tool(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An overlay over `BASE` holding data, zeros and a resize, made by qemu on real files.
fn overlay_bytes(old: &[u8]) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().ok()?;
    let base = dir.path().join("b.img");
    let ov = dir.path().join("ov.qcow2");
    std::fs::write(&base, old).ok()?;
    let (b, o) = (base.to_str()?, ov.to_str()?);
    let ok = tool(&[
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", b, "-F", "raw", o,
    ]) && tool(&["qemu-img", "resize", "-q", o, "192k"])
        && tool(&["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 4k 68k", o])
        && tool(&["qemu-io", "-f", "qcow2", "-c", "write -z 100k 8k", o])
        && tool(&["qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 150k 4k", o])
        && tool(&["qemu-img", "rebase", "-u", "-b", BASE, "-F", "raw", o]);
    ok.then(|| std::fs::read(&ov).ok()).flatten()
}

fn expected_new(old: &[u8]) -> Vec<u8> {
    let mut new = old.to_vec();
    new.resize(192 << 10, 0);
    new[4 << 10..72 << 10].fill(0xab);
    new[100 << 10..108 << 10].fill(0);
    new[150 << 10..154 << 10].fill(0xcd);
    new
}

/// A disk with an open transaction whose overlay holds the changes, everything durable.
fn prepared(old: &[u8], ov: &[u8]) -> SimFs {
    let fs = SimFs::new();
    fs.put_durable(BASE, old);
    let m = fixture::begin_raw(&engine(&fs), Path::new(BASE));
    let f = fs.open(&m.images[0].overlay, true).unwrap();
    f.set_len(0).unwrap();
    f.write_all_at(ov, 0).unwrap();
    f.sync_data().unwrap();
    fs.crashed_image(Damage::KeepAll, 0)
}

/// Files beside the base that should not be there: a spare pre-image file may be.
fn leftovers(fs: &SimFs) -> Vec<PathBuf> {
    let spare = crash_support::spare_of(Path::new(BASE));
    fs.files()
        .into_iter()
        .filter(|p| p.starts_with("/d") && p != Path::new(BASE) && *p != spare)
        .collect()
}

#[test]
fn a_commit_crashed_at_any_operation_recovers_to_old_or_new() {
    let old: Vec<u8> = (0..128u32 << 10).map(|i| (i / 512) as u8).collect();
    let Some(ov) = overlay_bytes(&old) else {
        eprintln!("SKIP: qemu-img/qemu-io not available");
        return;
    };
    let new = expected_new(&old);
    let snap = prepared(&old, &ov);
    let damages = [
        Damage::DropUnsynced,
        Damage::KeepAll,
        Damage::RandomSubset,
        Damage::TornLastWriteGarbage,
        Damage::EntriesRandom,
        Damage::LengthLost,
    ];
    let mut k = 1;
    loop {
        let disk = snap.crashed_image(Damage::KeepAll, 0);
        let e = engine(&disk);
        disk.crash_at(disk.ops() + k);
        let result = e.commit(&id(), CommitOptions::default(), &mut |_| {});
        if !disk.is_crashed() {
            result.expect("commit without a crash succeeds");
            assert_eq!(disk.read_live(BASE).unwrap(), new);
            assert!(leftovers(&disk).is_empty(), "{:?}", leftovers(&disk));
            assert!(k > 20, "the sweep covered only {k} operations");
            break;
        }
        for (seed, damage) in damages.iter().enumerate() {
            let after = disk.crashed_image(*damage, k * 31 + seed as u64);
            let e = engine(&after);
            e.recover(&RecoverOptions::default()).unwrap_or_else(|err| {
                panic!("recover after crash at op {k} ({damage:?}): {err:?}")
            });
            let base = after.read_live(BASE).unwrap();
            assert!(
                base == old || base == new,
                "crash at op {k} ({damage:?}): base is neither old nor new"
            );
            if base == old {
                // Not committed: the transaction is still open and commits cleanly now.
                e.commit(&id(), CommitOptions::default(), &mut |_| {})
                    .unwrap_or_else(|err| {
                        panic!("commit after recovery, crash at op {k} ({damage:?}): {err:?}")
                    });
                assert_eq!(after.read_live(BASE).unwrap(), new);
            }
            assert!(
                leftovers(&after).is_empty(),
                "crash at op {k} ({damage:?}): {:?}",
                leftovers(&after)
            );
            assert!(
                e.status(None).unwrap().is_empty(),
                "crash at op {k} ({damage:?})"
            );
        }
        k += 1;
        assert!(k < 1000, "commit never finished");
    }
}
