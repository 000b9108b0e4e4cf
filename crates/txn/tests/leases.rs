//! The engine under leases across hosts, with a lease manager double (no sanlock daemon):
//! claims record the member, other live hosts' transactions are refused, dead hosts' are
//! taken over by recovery and the history says so, and a lease held elsewhere is busy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use storage::sim::SimFs;
use storage::Fs;
use testkit::fixture;
use testkit::sim_host::SimHost;
use txn::lease::{LeaseGuard, Leases, Liveness, Member};
use txn::{Engine, Error, RecoverOptions, RecoveryAction};

const BASE: &str = "/d/b.img";
const STATE: &str = "/state";

/// Host `me` of lockspace "ls"; hosts in `gone` are dead; `busy` is a lease file another
/// host's process holds. Records what was acquired, and at which version.
#[derive(Debug, Default)]
struct FakeLeases {
    me: u64,
    gone: Vec<u64>,
    busy: Option<(PathBuf, u64)>,
    acquired: Mutex<Vec<(PathBuf, Option<u64>)>>,
}

impl Leases for FakeLeases {
    fn member(&self) -> Option<Member> {
        Some(Member {
            lockspace: "ls".into(),
            host_id: self.me,
        })
    }

    fn acquire(&self, lease_file: &Path, version: Option<u64>) -> txn::Result<LeaseGuard> {
        if let Some((path, host)) = &self.busy {
            if path == lease_file {
                return Err(Error::LeaseBusy {
                    path: path.clone(),
                    host_id: Some(*host),
                    lockspace: "ls".into(),
                });
            }
        }
        self.acquired
            .lock()
            .unwrap()
            .push((lease_file.to_path_buf(), version));
        Ok(LeaseGuard::default())
    }

    fn version(&self, _: &Path) -> txn::Result<Option<u64>> {
        Ok(Some(7))
    }

    fn liveness(&self, host_id: u64) -> txn::Result<Liveness> {
        Ok(if self.gone.contains(&host_id) {
            Liveness::Gone
        } else {
            Liveness::Alive
        })
    }
}

fn host(me: u64, gone: &[u64]) -> Arc<FakeLeases> {
    Arc::new(FakeLeases {
        me,
        gone: gone.to_vec(),
        ..FakeLeases::default()
    })
}

/// An engine of host `leases.me` over `fs`, all hosts sharing one state directory.
fn engine(fs: &SimFs, leases: &Arc<FakeLeases>) -> Engine<SimFs, SimHost> {
    let leases: Arc<dyn Leases> = leases.clone();
    Engine::new(fs.clone(), SimHost, PathBuf::from(STATE))
        .expect("engine")
        .with_leases(leases)
}

fn disk() -> SimFs {
    let fs = SimFs::new();
    fs.put_durable(BASE, &fixture::base_bytes());
    fs
}

fn lease_file() -> PathBuf {
    PathBuf::from("/d/.b.img.imgtx.lease")
}

#[test]
fn begin_holds_the_bases_lease_and_its_claim_names_the_member() {
    let fs = disk();
    let h1 = host(1, &[]);

    fixture::begin_raw(&engine(&fs, &h1), Path::new(BASE));

    assert_eq!(*h1.acquired.lock().unwrap(), vec![(lease_file(), None)]);
    let claims = engine(&fs, &h1).claims(&[PathBuf::from(BASE)]).unwrap();
    let txn::claim::Found::Claim(c) = &claims[0].1 else {
        panic!("no claim: {claims:?}");
    };
    assert_eq!(
        c.lease,
        Some(Member {
            lockspace: "ls".into(),
            host_id: 1
        })
    );
    assert_eq!(c.holder().host_id, Some(1));
}

#[test]
fn a_live_hosts_transaction_is_refused_to_every_other_host() {
    let fs = disk();
    let m = fixture::begin_raw(&engine(&fs, &host(1, &[])), Path::new(BASE));
    let h2 = engine(&fs, &host(2, &[]));

    let commit = h2.commit(&m.id, txn::CommitOptions::default(), &mut |_| {});
    let rollback = h2.rollback(&m.id);
    let recovered = h2.recover(&RecoverOptions::default()).unwrap();

    for err in [commit.unwrap_err(), rollback.unwrap_err()] {
        assert!(matches!(err, Error::HostAlive { host_id: 1, .. }), "{err}");
        assert_eq!(err.class(), txn::ErrorClass::Busy);
    }
    assert!(recovered.actions.is_empty(), "{:?}", recovered.actions);
    assert!(fs.metadata(&m.images[0].overlay).unwrap().is_some());
}

#[test]
fn a_dead_hosts_transaction_is_only_for_recovery_to_take_over() {
    let fs = disk();
    let m = fixture::begin_raw(&engine(&fs, &host(1, &[])), Path::new(BASE));

    let err = engine(&fs, &host(2, &[1]))
        .commit(&m.id, txn::CommitOptions::default(), &mut |_| {})
        .unwrap_err();

    assert!(matches!(err, Error::HostDead { host_id: 1, .. }), "{err}");
    assert_eq!(err.class(), txn::ErrorClass::RecoveryNeeded);
}

#[test]
fn recovery_rolls_back_a_dead_hosts_open_transaction_and_the_history_says_who() {
    let fs = disk();
    let m = fixture::begin_raw(&engine(&fs, &host(1, &[])), Path::new(BASE));
    let h2 = host(2, &[1]);

    let report = engine(&fs, &h2)
        .recover(&RecoverOptions {
            paths: vec![PathBuf::from(BASE)],
            ..RecoverOptions::default()
        })
        .unwrap();

    assert_eq!(report.actions.len(), 1, "{:?}", report.actions);
    assert_eq!(
        report.actions[0].action,
        RecoveryAction::RolledBackForDeadHost
    );
    assert!(fs.metadata(&m.images[0].overlay).unwrap().is_none());
    assert!(engine(&fs, &h2).status(None).unwrap().is_empty());
    // The leases were taken at the version read before host 1's death was checked.
    assert!(h2
        .acquired
        .lock()
        .unwrap()
        .contains(&(lease_file(), Some(7))));
    let log = engine(&fs, &h2).log(None).unwrap();
    let entry = log.entries.last().expect("an entry");
    assert_eq!(entry.id, m.id);
    let t = entry.taken_over.as_ref().expect("the takeover is recorded");
    assert_eq!((t.from_host_id, t.by_host_id), (1, 2));
    assert_eq!(t.lockspace, "ls");
}

#[test]
fn a_lease_held_on_another_host_makes_begin_busy_naming_the_host() {
    let fs = disk();
    let h1 = Arc::new(FakeLeases {
        me: 1,
        busy: Some((lease_file(), 2)),
        ..FakeLeases::default()
    });

    let err = engine(&fs, &h1)
        .begin(&fixture::begin_options(&[PathBuf::from(BASE)]))
        .unwrap_err();

    assert_eq!(err.class(), txn::ErrorClass::Busy, "{err}");
    assert!(err.to_string().contains("sanlock host 2"), "{err}");
    assert!(engine(&fs, &h1).status(None).unwrap().is_empty());
}
