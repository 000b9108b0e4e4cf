//! Crash sweeps of `begin` and `rollback` over the simulated disk (T12): after a crash at
//! any operation and any damage, `recover` leaves either no transaction or a whole open one
//! (which still commits), the base is never touched, and no stray file is left.

mod crash_support;

use crash_support::{sweep, Edit, Fixture, ImageSpec, SimEngine};
use testkit::sim_host::tx;

fn plain() -> Vec<ImageSpec> {
    vec![
        ImageSpec {
            base: "/d/a.img",
            size: 128 << 10,
            edits: Vec::new(),
        },
        ImageSpec {
            base: "/e/b.img",
            size: 64 << 10,
            edits: Vec::new(),
        },
    ]
}

#[test]
fn begin_leaves_no_transaction_or_a_whole_one_after_a_crash_at_every_operation() {
    if !testkit::qemu::have("qemu-io") {
        eprintln!("skipped: qemu-io is not installed");
        return;
    }
    let fx = Fixture::new(&plain());
    let opts = testkit::fixture::begin_options(&fx.bases);
    let run = |e: &SimEngine| e.begin(&opts).is_ok();

    let stats = sweep(
        &fx,
        &|| {
            fx.before_begin
                .crashed_image(storage::sim::Damage::KeepAll, 0)
        },
        &run,
        false,
        4,
        "begin",
    );

    eprintln!(
        "begin: {} crash points, {} damaged images, {} recoveries",
        stats.points, stats.images, stats.recoveries
    );
    assert_eq!(stats.ended_new + stats.ended_old, stats.images);
}

#[test]
fn rollback_leaves_the_base_untouched_after_a_crash_at_every_operation() {
    if !testkit::qemu::have("qemu-io") {
        eprintln!("skipped: qemu-io is not installed");
        return;
    }
    let fx = Fixture::new(&[ImageSpec {
        base: "/d/base.img",
        size: 256 << 10,
        edits: vec![Edit::Write {
            off: 0,
            len: 64 << 10,
            pattern: 9,
        }],
    }]);
    let run = |e: &SimEngine| e.rollback(&tx()).is_ok();

    let stats = sweep(&fx, &|| fx.fresh(), &run, false, 4, "rollback");

    eprintln!(
        "rollback: {} crash points, {} damaged images, {} recoveries",
        stats.points, stats.images, stats.recoveries
    );
    // A rollback never writes a base: the only way to new is committing a surviving open
    // transaction, which check_settled does itself; the swept disks all end old.
    assert_eq!(stats.ended_new, 0);
}
