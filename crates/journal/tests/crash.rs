//! Crash and fault sweeps of the journal over the simulated disk: crash at every operation of
//! a workload, in every damage variant, and check what replay finds.

use std::path::Path;

use journal::{Error, Journal, Tail};
use proptest::prelude::*;
use storage::sim::{Damage, Fault, SimFs};

const PATH: &str = "/dir/log";
const ID: &[u8] = b"identity of the base";

#[derive(Debug, Clone)]
enum Step {
    Append(Vec<u8>),
    Sync,
}

/// What the workload was told.
#[derive(Debug, Default)]
struct Told {
    /// `create` returned Ok.
    created: bool,
    /// Records whose append returned Ok, in order, then possibly one whose append failed
    /// mid-write (it may have reached the disk whole).
    appended: Vec<Vec<u8>>,
    /// How many records a successful `sync` covered.
    acked: usize,
}

fn setup() -> SimFs {
    let fs = SimFs::new();
    fs.put_durable("/dir/other", b"");
    fs
}

/// Runs `steps`; after the first failure, checks that the handle refuses everything.
fn run(fs: &SimFs, steps: &[Step]) -> Told {
    let mut told = Told::default();
    let Ok(mut j) = Journal::<_, Vec<u8>>::create(fs, Path::new(PATH), ID) else {
        return told;
    };
    told.created = true;
    let mut failed = false;
    for step in steps {
        let result = match step {
            Step::Append(r) => j.append(r).map(|seq| {
                assert_eq!(seq, told.appended.len() as u64);
                told.appended.push(r.clone());
            }),
            Step::Sync => j.sync().map(|()| told.acked = told.appended.len()),
        };
        match result {
            Ok(()) => assert!(!failed, "a call succeeded after a failure"),
            Err(Error::Poisoned) => assert!(failed, "poisoned without a failure"),
            Err(Error::Io { .. }) if !failed => {
                failed = true;
                assert!(j.is_poisoned());
                if let Step::Append(r) = step {
                    told.appended.push(r.clone());
                }
            }
            Err(e) => panic!("unexpected error {e:?} (failed before: {failed})"),
        }
    }
    told
}

/// Checks the crash invariants on a rebooted disk.
fn check(img: &SimFs, told: &Told, ctx: &str) {
    let path = Path::new(PATH);
    let read = journal::read::<_, Vec<u8>>(img, path);
    if !told.created {
        match read {
            Ok(r) => assert!(
                r.records.is_empty(),
                "{ctx}: records in a journal never created"
            ),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(Error::HeaderIncomplete { .. } | Error::BadHeader { .. }) => {}
            Err(e) => panic!("{ctx}: unexpected {e:?}"),
        }
        return;
    }
    let replay = read.unwrap_or_else(|e| panic!("{ctx}: created journal does not replay: {e:?}"));
    let n = replay.records.len();
    assert!(
        n >= told.acked,
        "{ctx}: lost synced records ({n} < {})",
        told.acked
    );
    assert!(
        n <= told.appended.len(),
        "{ctx}: more records than appended"
    );
    assert_eq!(replay.records, told.appended[..n], "{ctx}: not a prefix");
    assert_eq!(replay.identity, ID);

    let (mut j, reopened) =
        Journal::<_, Vec<u8>>::open(img, path).unwrap_or_else(|e| panic!("{ctx}: reopen: {e:?}"));
    assert_eq!(reopened.records, replay.records, "{ctx}");
    assert_eq!(j.append(&b"after".to_vec()).unwrap(), n as u64, "{ctx}");
    j.sync().unwrap();
    let again = journal::read::<_, Vec<u8>>(img, path).unwrap();
    assert_eq!(again.tail, Tail::Clean, "{ctx}");
    assert_eq!(again.records.len(), n + 1, "{ctx}");
    assert_eq!(again.records[..n], replay.records[..], "{ctx}");
    assert_eq!(again.records[n], b"after", "{ctx}");
}

fn workload() -> Vec<Step> {
    use Step::{Append, Sync};
    vec![
        Append(vec![1; 10]),
        Append(vec![2; 600]),
        Sync,
        Append(vec![3; 1500]),
        Append(vec![4; 3]),
        Sync,
        Append(vec![]),
        Append(vec![6; 700]),
        Append(vec![7; 5]),
        Sync,
        Append(vec![8; 100]),
        Append(vec![9; 2000]),
    ]
}

fn count_ops(steps: &[Step]) -> u64 {
    let fs = setup();
    run(&fs, steps);
    fs.ops()
}

#[test]
fn a_crash_at_any_operation_keeps_synced_records_and_nothing_half_written() {
    let steps = workload();
    let n = count_ops(&steps);
    let mut checked = 0;

    for k in 1..=n + 1 {
        let fs = setup();
        fs.crash_at(k);
        let told = run(&fs, &steps);
        for damage in Damage::ALL {
            for seed in 0..6 {
                let img = fs.crashed_image(damage, seed);
                check(
                    &img,
                    &told,
                    &format!("crash at {k}, {damage:?}, seed {seed}"),
                );
                checked += 1;
            }
        }
    }

    assert!(n >= 15, "workload too small: {n} operations");
    assert!(checked >= 1000);
}

#[test]
fn an_injected_fault_at_any_operation_poisons_and_loses_no_synced_record() {
    let steps = workload();
    let n = count_ops(&steps);

    for k in 1..=n {
        for fault in [Fault::Eio, Fault::Enospc] {
            let fs = setup();
            fs.fail_at(k, fault);
            let told = run(&fs, &steps);
            for damage in Damage::ALL {
                let img = fs.crashed_image(damage, k);
                check(&img, &told, &format!("{fault:?} at {k}, {damage:?}"));
            }
        }
    }
}

#[test]
fn a_crash_while_reopening_a_torn_journal_converges() {
    // Arrange: a journal whose unsynced tail is torn on the rebooted disk.
    let steps = workload();
    let fs = setup();
    let told = run(&fs, &steps);
    let torn = fs.crashed_image(Damage::TornLastWriteGarbage, 5);
    let before = journal::read::<_, Vec<u8>>(&torn, Path::new(PATH)).unwrap();

    // Act: crash at every operation of `open` + one append and sync, then reboot again.
    for k in 1..=6 {
        let img = torn.crashed_image(Damage::KeepAll, 0);
        img.crash_at(k);
        if let Ok((mut j, _)) = Journal::<_, Vec<u8>>::open(&img, Path::new(PATH)) {
            let _ = j.append(&b"x".to_vec()).and_then(|_| j.sync());
        }
        for damage in Damage::ALL {
            let again = img.crashed_image(damage, k);
            let r = journal::read::<_, Vec<u8>>(&again, Path::new(PATH)).unwrap();

            // Assert: the synced prefix is still there, nothing else but possibly "x".
            let n = before.records.len();
            assert!(r.records.len() >= n && r.records.len() <= n + 1);
            assert_eq!(r.records[..n], before.records[..]);
            if r.records.len() > n {
                assert_eq!(r.records[n], b"x");
            }
        }
    }
    assert!(before.records.len() >= told.acked);
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..1200).prop_map(Step::Append),
        1 => Just(Step::Sync),
    ]
}

proptest! {
    #[test]
    fn random_workloads_survive_random_crashes(
        steps in proptest::collection::vec(step(), 0..16),
        crash in 1u64..48,
        damage in 0usize..Damage::ALL.len(),
        seed in any::<u64>(),
    ) {
        let fs = setup();
        fs.crash_at(crash);
        let told = run(&fs, &steps);
        let damage = Damage::ALL[damage];
        let img = fs.crashed_image(damage, seed);
        check(&img, &told, &format!("crash at {crash}, {damage:?}, seed {seed}"));
    }

    #[test]
    fn random_workloads_survive_random_faults(
        steps in proptest::collection::vec(step(), 0..16),
        at in 1u64..48,
        enospc in any::<bool>(),
        damage in 0usize..Damage::ALL.len(),
        seed in any::<u64>(),
    ) {
        let fs = setup();
        fs.fail_at(at, if enospc { Fault::Enospc } else { Fault::Eio });
        let told = run(&fs, &steps);
        let img = fs.crashed_image(Damage::ALL[damage], seed);
        check(&img, &told, &format!("fault at {at}, seed {seed}"));
    }
}
