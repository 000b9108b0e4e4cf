//! Crash sweeps of `commit` over the simulated disk (T1–T3, T7, T8, T11): crash at every
//! operation, damage what was not synced in many ways, recover (and crash recovery once),
//! and check that every base is old or new, durably, with no stray files and no
//! write-ordering violation. `IMGTX_CRASH_SWEEP=full` runs every damage variant at every
//! point and crashes recovery at every one of its operations.

mod crash_support;

use crash_support::{sweep, Fixture, SimEngine};

fn commit(no_undo: bool) -> impl Fn(&SimEngine) -> bool {
    move |e| crash_support::commit_tx(e, no_undo).is_ok()
}

fn report(name: &str, s: crash_support::Stats) {
    eprintln!(
        "{name}: {} crash points, {} damaged images, {} recoveries, ended old {} / new {}, violations 0",
        s.points, s.images, s.recoveries, s.ended_old, s.ended_new
    );
}

/// Sweeps a commit (with pre-images or `--no-undo`) of the bases `specs` describe, on a
/// file system with or without reflinks, `sample` damage variants per point as CI runs it;
/// reports the figures under `name` and returns them; `None` when qemu-io is missing.
fn sweep_commit(
    specs: &[crash_support::ImageSpec],
    (reflinks, no_undo): (bool, bool),
    sample: usize,
    name: &str,
) -> Option<crash_support::Stats> {
    if !testkit::qemu::have("qemu-io") {
        eprintln!("skipped: qemu-io is not installed");
        return None;
    }
    let fx = Fixture::new(specs);
    let fresh = || {
        let sim = fx.fresh();
        if reflinks {
            sim.with_reflinks()
        } else {
            sim
        }
    };

    let stats = sweep(&fx, &fresh, &commit(no_undo), true, sample, name);

    report(name, stats);
    Some(stats)
}

/// The sweeps below cross zero pre-image entries too: the fixture's base reads zeros under
/// one of the changed clusters, whose pre-image is then saved as a header alone.
#[test]
fn the_swept_commit_saves_a_zero_pre_image_entry() {
    if !testkit::qemu::have("qemu-io") {
        eprintln!("skipped: qemu-io is not installed");
        return;
    }
    let fx = Fixture::new(&crash_support::raw_single());
    let sim = fx.fresh();
    let (e, _) = crash_support::engine(&sim, &fx.bases).unwrap();

    crash_support::commit_tx(&e, false).unwrap();

    let spare = sim
        .read_live(crash_support::spare_of(&fx.bases[0]))
        .unwrap();
    assert!(crash_support::zero_entries(&spare).unwrap() > 0);
}

#[test]
fn raw_commit_recovers_old_or_new_after_a_crash_at_every_operation() {
    let Some(stats) = sweep_commit(
        &crash_support::raw_single(),
        (false, false),
        3,
        "raw commit",
    ) else {
        return;
    };
    assert!(stats.ended_new > 0 && stats.ended_old > 0);
}

#[test]
fn on_a_file_system_with_reflinks_the_swept_commit_shares_blocks_both_ways() {
    if !testkit::qemu::have("qemu-io") {
        eprintln!("skipped: qemu-io is not installed");
        return;
    }
    let fx = Fixture::new(&crash_support::raw_single());
    let sim = fx.fresh().with_reflinks();
    let (e, _) = crash_support::engine(&sim, &fx.bases).unwrap();
    let before = sim.log().len();

    crash_support::commit_tx(&e, false).unwrap();

    let spare = sim
        .read_live(crash_support::spare_of(&fx.bases[0]))
        .unwrap();
    assert!(
        crash_support::cloned_entries(&spare).unwrap() > 0,
        "no pre-image was saved as a reflink"
    );
    let base_writes = sim.log()[before..]
        .iter()
        .filter(|op| format!("{op:?}").contains(&*fx.bases[0].to_string_lossy()))
        .count();
    assert!(base_writes > 0);
    assert_eq!(
        crash_support::ended(
            &fx,
            &sim.crashed_image(storage::sim::Damage::DropUnsynced, 0)
        ),
        Ok(crash_support::Ended::New)
    );
}

#[test]
fn a_reflinked_commit_recovers_old_or_new_after_a_crash_at_every_operation() {
    let Some(stats) = sweep_commit(
        &crash_support::raw_single(),
        (true, false),
        3,
        "reflinked commit",
    ) else {
        return;
    };
    assert!(stats.ended_new > 0 && stats.ended_old > 0);
}

#[test]
fn a_reflinked_commit_without_undo_recovers_old_or_new_after_a_crash_at_every_operation() {
    let Some(stats) = sweep_commit(
        &crash_support::raw_single(),
        (true, true),
        2,
        "reflinked commit --no-undo",
    ) else {
        return;
    };
    assert!(stats.ended_new > 0);
}

#[test]
fn raw_commit_without_undo_recovers_old_or_new_after_a_crash_at_every_operation() {
    let Some(stats) = sweep_commit(
        &crash_support::raw_single(),
        (false, true),
        2,
        "raw commit --no-undo",
    ) else {
        return;
    };
    assert!(stats.ended_new > 0);
}

#[test]
fn two_image_commit_is_atomic_across_both_bases_after_a_crash_at_every_operation() {
    let Some(stats) = sweep_commit(
        &crash_support::raw_pair(),
        (false, false),
        2,
        "two-image commit",
    ) else {
        return;
    };
    assert!(stats.ended_new > 0 && stats.ended_old > 0);
}

#[test]
fn two_image_commit_without_undo_is_atomic_after_a_crash_at_every_operation() {
    let Some(stats) = sweep_commit(
        &crash_support::raw_pair(),
        (false, true),
        2,
        "two-image commit --no-undo",
    ) else {
        return;
    };
    assert!(stats.ended_new > 0);
}

#[test]
fn the_ordering_rule_flags_a_base_write_before_the_journal_is_durable() {
    if !testkit::qemu::have("qemu-io") {
        eprintln!("skipped: qemu-io is not installed");
        return;
    }
    let fx = Fixture::new(&crash_support::raw_single());
    let sim = fx.fresh();
    let mon = crash_support::monitored(&sim, &fx.bases);

    // What a broken engine would do: write the base with no journal beside it.
    let base = storage::Fs::open(&mon, &fx.bases[0], true).expect("open base");
    storage::File::write_all_at(&base, b"too early", 0).expect("write");

    let v = mon.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].reason.contains("no journal"), "{v:?}");
}
