//! A revert crashed at every file-system operation, the disk damaged as a power cut may leave
//! it, then `recover`: every base must hold what the reverted commit left (the revert did not
//! happen) or what was there before it (the revert happened), never a mix; a revert that
//! reported success must not be lost; and a revert that did not happen must still be
//! possible afterwards.

mod crash_support;

use std::path::{Path, PathBuf};

use crash_support::{
    ended, monitored, panic_text, seed, variants, Ended, Fixture, ImageSpec, STATE,
};
use storage::monitor::Monitor;
use storage::sim::{Damage, SimFs};
use testkit::sim_host::{tx, SimHost, SimHostWithId};
use txn::{CommitOptions, Engine, RecoverOptions};

/// The id the revert gets.
const REVERT: &str = "tx-00000000b2";

type RevertEngine = Engine<Monitor<SimFs>, SimHostWithId>;

fn engine(fs: &SimFs, fx: &Fixture) -> txn::Result<(RevertEngine, Monitor<SimFs>)> {
    let mon = monitored(fs, &fx.bases);
    Engine::new(mon.clone(), SimHostWithId(REVERT), STATE.into()).map(|e| (e, mon))
}

/// The fixture's transaction committed (its pre-images kept as spares), everything durable.
fn committed(fx: &Fixture, reflinks: bool) -> SimFs {
    let fs = if reflinks {
        fx.fresh().with_reflinks()
    } else {
        fx.fresh()
    };
    let e = Engine::new(fs.clone(), SimHost, STATE.into()).expect("engine");
    e.commit(&tx(), CommitOptions::default(), &mut |_| {})
        .expect("commit");
    let done = fs.crashed_image(Damage::DropUnsynced, 0);
    assert_eq!(ended(fx, &done), Ok(Ended::New), "the commit reached new");
    done
}

/// Files that no settled state explains: anything beside the bases but the bases, their
/// spares and the reverted transaction's kept pre-images.
fn strays(fx: &Fixture, fs: &SimFs) -> Vec<PathBuf> {
    let allowed = |p: &Path| {
        fx.bases.iter().any(|b| b == p)
            || p.starts_with(STATE)
            || p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.ends_with(".imgtx.spare")
                    || n.ends_with(".imgtx.kept")
                    || n.ends_with(".imgtx.post")
            })
    };
    fs.files().into_iter().filter(|p| !allowed(p)).collect()
}

/// Recovers the crashed disk `img` and checks it; returns how it ended.
fn recover_and_check(fx: &Fixture, img: &SimFs, told: bool, undo: bool, ctx: &str) -> Ended {
    let (e, mon) = engine(img, fx).unwrap_or_else(|e| panic!("{ctx}: engine: {e}"));
    e.recover(&RecoverOptions {
        undo,
        ..RecoverOptions::default()
    })
    .unwrap_or_else(|e| panic!("{ctx}: recover failed: {e:?}"));
    assert_eq!(
        mon.violations(),
        vec![],
        "{ctx}: ordering violations in recover"
    );
    let durable = img.crashed_image(Damage::DropUnsynced, 0);
    // The revert goes from the commit's new content back to its old one.
    let end = ended(fx, &durable).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert!(
        !(told && end == Ended::New),
        "{ctx}: the revert reported success but recovery lost it"
    );
    let stray = strays(fx, &durable);
    assert!(stray.is_empty(), "{ctx}: stray files: {stray:?}");
    if end == Ended::New {
        // The revert did not happen: the commit is still revertible, and reverts cleanly.
        let (e, mon) = engine(&durable, fx).unwrap_or_else(|e| panic!("{ctx}: engine: {e}"));
        e.revert(&tx(), &mut |_| {})
            .unwrap_or_else(|e| panic!("{ctx}: the revert no longer works: {e:?}"));
        assert_eq!(mon.violations(), vec![], "{ctx}: ordering violations");
        let again = durable.crashed_image(Damage::DropUnsynced, 0);
        assert_eq!(
            ended(fx, &again),
            Ok(Ended::Old),
            "{ctx}: the second revert"
        );
    }
    end
}

/// Crashes the revert of the fixture's committed transaction at every operation and
/// recovers each damaged image (finishing, or with `undo`, undoing the revert).
fn sweep(specs: &[ImageSpec], (undo, reflinks): (bool, bool), name: &str) {
    let fx = Fixture::new(specs);
    let start = committed(&fx, reflinks);
    let n = {
        let fs = start.crashed_image(Damage::KeepAll, 0);
        let (e, mon) = engine(&fs, &fx).expect("engine");
        e.revert(&tx(), &mut |_| {}).expect("the uncrashed revert");
        assert_eq!(mon.violations(), vec![], "{name}: the clean run");
        assert_eq!(
            ended(&fx, &fs.crashed_image(Damage::DropUnsynced, 0)),
            Ok(Ended::Old)
        );
        fs.ops() - start.ops()
    };
    let (mut failures, mut olds, mut news) = (Vec::new(), 0, 0);
    for k in 1..=n + 1 {
        let fs = start.crashed_image(Damage::KeepAll, 0);
        fs.crash_at(fs.ops() + k);
        let told = engine(&fs, &fx).is_ok_and(|(e, _)| e.revert(&tx(), &mut |_| {}).is_ok());
        for d in variants(k, 3) {
            let img = fs.crashed_image(d, seed(k, d));
            let ctx = format!("{name}: revert crashed @{k}/{n} with {d:?}");
            let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                recover_and_check(&fx, &img, told, undo, &ctx)
            }));
            match checked {
                Ok(Ended::Old) => olds += 1,
                Ok(Ended::New) => news += 1,
                Err(p) => failures.push(panic_text(&p)),
            }
        }
    }
    crash_support::assert_failures(name, &failures);
    assert!(n > 20, "{name}: the sweep covered only {n} operations");
    assert!(news > 0, "{name}: no crash point left the revert undone");
    if !undo {
        assert!(olds > 0, "{name}: no crash point was finished by recovery");
    }
    eprintln!("{name}: {n} crash points, {olds} reverted, {news} not");
}

#[test]
fn a_revert_crashed_anywhere_recovers_to_before_or_after_it() {
    if !testkit::qemu::available() {
        eprintln!("SKIP: qemu-img/qemu-io not available");
        return;
    }
    sweep(&crash_support::raw_single(), (false, false), "revert");
}

#[test]
fn a_revert_of_two_bases_crashed_anywhere_recovers_all_or_nothing() {
    if !testkit::qemu::available() {
        eprintln!("SKIP: qemu-img/qemu-io not available");
        return;
    }
    sweep(
        &crash_support::raw_pair(),
        (false, false),
        "revert of two bases",
    );
}

#[test]
fn a_crashed_revert_is_undone_by_recover_undo() {
    if !testkit::qemu::available() {
        eprintln!("SKIP: qemu-img/qemu-io not available");
        return;
    }
    sweep(&crash_support::raw_single(), (true, false), "revert undone");
}

#[test]
fn a_revert_from_reflinked_pre_images_crashed_anywhere_recovers_to_before_or_after_it() {
    if !testkit::qemu::available() {
        eprintln!("SKIP: qemu-img/qemu-io not available");
        return;
    }
    sweep(
        &crash_support::raw_single(),
        (false, true),
        "reflinked revert",
    );
}
