//! `--lockspace`: sanlock leases across hosts.
//!
//! The fast tests run in every suite and need no daemon: a named lockspace whose daemon is
//! unreachable is refused before anything is touched. The slow tier (`#[ignore]`d; run it
//! with `scripts/test-multihost`, as root) starts two sanlock daemons on this machine that
//! stand in for two hosts, as `docs/testing.md` describes: separate `SANLOCK_RUN_DIR`s,
//! host ids 1 and 2 in one lockspace file, watchdog off, io_timeout 1 s, each host with its
//! own state directory. Joining the lockspace takes each daemon about 21 s (done in
//! parallel); the dead-host takeover waits for host 1's lease to expire, about 70 s more.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    describe, exit, expect_code, qcow2_io, require_tools, run, sha256, stderr_of, TestDir,
};

/// `imgtx --lockspace LS ...` against a daemon socket directory with nothing in it.
fn unreachable_daemon(t: &TestDir) -> Command {
    let mut cmd = t.command();
    cmd.env("SANLOCK_RUN_DIR", t.path().join("no-daemon-here"));
    cmd
}

#[test]
fn lease_a_named_lockspace_without_a_daemon_is_refused_and_nothing_is_touched() {
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 1 << 20, 1);
    let before = sha256(&base);

    let mut cmd = unreachable_daemon(&t);
    cmd.args(["--lockspace", "imgtx", "begin"]).arg(&base);
    let out = expect_code(&mut cmd, exit::ERROR);
    let err = stderr_of(&out);
    assert!(err.contains("cannot reach the sanlock daemon"), "{err}");
    assert!(
        err.contains("no-daemon-here"),
        "names where it looked: {err}"
    );
    assert_eq!(
        t.image_listing(),
        vec!["disk.img"],
        "nothing beside the base"
    );
    assert_eq!(sha256(&base), before);
}

#[test]
fn lease_the_lockspace_can_be_named_by_imgtx_lockspace_too() {
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 1 << 20, 1);
    let tx = t.begin(&[&base]).id;

    for args in [
        vec!["commit", tx.as_str()],
        vec!["rollback", tx.as_str()],
        vec!["recover"],
    ] {
        let mut cmd = unreachable_daemon(&t);
        cmd.env("IMGTX_LOCKSPACE", "imgtx").args(&args);
        let out = expect_code(&mut cmd, exit::ERROR);
        assert!(stderr_of(&out).contains("sanlock lockspace \"imgtx\" cannot be used"));
    }
    assert_eq!(t.transactions().len(), 1, "the transaction is untouched");
}

#[test]
fn lease_without_a_lockspace_no_lease_file_is_made() {
    let t = TestDir::new();
    let base = t.raw_image("disk.img", 1 << 20, 1);
    let tx = t.begin(&[&base]).id;
    t.imgtx_ok(&["commit", &tx]);
    assert!(!t.image(".disk.img.imgtx.lease").exists());
}

// ---- the slow tier: two sanlock daemons standing in for two hosts ----

/// Two sanlock daemons, hosts 1 and 2 of lockspace [`LS`], in a directory of their own.
/// Dropping it stops both daemons and removes the directory.
struct Cluster {
    dir: tempfile::TempDir,
    daemons: [Option<Child>; 2],
}

const LS: &str = "imgtxtest";

impl Cluster {
    /// Starts the daemons and joins both to the lockspace (about 21 s, in parallel).
    /// `None` (with a SKIP line) when sanlock is missing or this is not root.
    fn start() -> Option<Cluster> {
        if !require_tools(&["sanlock"]) {
            return None;
        }
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: the multi-host tests start sanlock daemons and need root");
            return None;
        }
        // On the disk, not a tmpfs: sanlock does direct I/O.
        let dir = tempfile::Builder::new()
            .prefix("imgtx-sanlock-")
            .tempdir_in(std::env::temp_dir())
            .expect("create the cluster directory");
        let leases = dir.path().join("lockspace");
        std::fs::write(&leases, vec![0u8; 1 << 20]).expect("create the lockspace file");
        let mut init = Command::new("sanlock");
        init.args(["direct", "init", "-s"])
            .arg(format!("{LS}:0:{}:0", leases.display()));
        crate::util::expect_code(&mut init, exit::OK);
        let mut c = Cluster {
            dir,
            daemons: [None, None],
        };
        for host in [1, 2] {
            let run_dir = c.run_dir(host);
            std::fs::create_dir_all(&run_dir).expect("create a run dir");
            let log = std::fs::File::create(c.dir.path().join(format!("h{host}.log"))).unwrap();
            let child = Command::new("sanlock")
                .args(["daemon", "-D", "-w", "0", "-l", "0", "-h", "0"])
                .args(["-U", "root", "-G", "root", "-o", "1"])
                .env("SANLOCK_RUN_DIR", &run_dir)
                .env("SANLOCK_PRIVILEGED", "0")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start a sanlock daemon");
            c.daemons[host - 1] = Some(child);
            crate::util::wait_until("the daemon's socket", || {
                run_dir.join("sanlock.sock").exists()
            });
        }
        let adds: Vec<Child> = [1, 2]
            .iter()
            .map(|&host| {
                Command::new("sanlock")
                    .args(["client", "add_lockspace", "-o", "1", "-s"])
                    .arg(format!("{LS}:{host}:{}:0", leases.display()))
                    .env("SANLOCK_RUN_DIR", c.run_dir(host))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("run sanlock client add_lockspace")
            })
            .collect();
        for add in adds {
            let out = add.wait_with_output().expect("wait for add_lockspace");
            assert!(out.status.success(), "add_lockspace failed: {out:?}");
        }
        Some(c)
    }

    fn run_dir(&self, host: usize) -> PathBuf {
        self.dir.path().join(format!("h{host}"))
    }

    /// `imgtx --lockspace LS --state-dir STATE` as host `host`.
    fn imgtx(&self, host: usize, state: &Path) -> Command {
        let mut cmd = Command::new(crate::util::imgtx_bin());
        cmd.env("SANLOCK_RUN_DIR", self.run_dir(host))
            .args(["--lockspace", LS, "--state-dir"])
            .arg(state)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs [`Cluster::imgtx`] with `args`, asserting exit status `code`; returns stderr.
    fn code<S: AsRef<OsStr>>(&self, host: usize, state: &Path, args: &[S], code: i32) -> String {
        let mut cmd = self.imgtx(host, state);
        cmd.args(args);
        stderr_of(&expect_code(&mut cmd, code))
    }

    /// `begin --json` as host `host`: the transaction id.
    fn begin(&self, host: usize, state: &Path, base: &Path) -> String {
        let mut cmd = self.imgtx(host, state);
        cmd.args(["begin", "--json"]).arg(base);
        let out = expect_code(&mut cmd, exit::OK);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["id"].as_str().expect("an id").to_owned()
    }

    /// Kills host `host`'s daemon, as a host that dies does.
    fn kill(&mut self, host: usize) {
        if let Some(mut d) = self.daemons[host - 1].take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A daemon that holds a lockspace ignores SIGTERM; with the watchdog off nothing
        // needs a clean exit, and its helper process ends with it.
        for d in self.daemons.iter_mut().flatten() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// What host 1 leaves for host 2: an open transaction over `open.img`, and one over
/// `torn.img` whose commit died right after its commit point (64 KiB of 0xab in its
/// overlay), with the torn base's hash from before that commit.
struct Left {
    open: PathBuf,
    open_tx: String,
    torn: PathBuf,
    torn_tx: String,
    old: String,
}

fn leave_open_and_torn(c: &Cluster, t: &TestDir, s1: &Path) -> Left {
    let open = t.raw_image("open.img", 1 << 20, 1);
    let torn = t.raw_image("torn.img", 1 << 20, 2);
    let open_tx = c.begin(1, s1, &open);
    let torn_tx = c.begin(1, s1, &torn);
    qcow2_io(
        &t.image(&format!("torn.img.{torn_tx}.imgtx.qcow2")),
        "write -P 0xab 0 64k",
    );
    let old = sha256(&torn);
    let mut crash = c.imgtx(1, s1);
    crash
        .env("IMGTX_TEST_CRASH_AFTER", "commit-point")
        .args(["commit", &torn_tx]);
    expect_code(&mut crash, 137);
    Left {
        open,
        open_tx,
        torn,
        torn_tx,
        old,
    }
}

/// Two state directories, one per host, beside the images of `t`.
fn state_dirs(t: &TestDir) -> (PathBuf, PathBuf) {
    let (s1, s2) = (t.path().join("state1"), t.path().join("state2"));
    (s1, s2)
}

#[test]
#[ignore = "slow tier: two sanlock daemons, root; run scripts/test-multihost"]
fn lease_multihost_an_image_held_on_one_host_is_busy_on_the_other() {
    let Some(c) = Cluster::start() else { return };
    let t = TestDir::new();
    let (s1, s2) = state_dirs(&t);
    let base = t.raw_image("disk.img", 1 << 20, 1);

    // Host 1's `run` holds the image (claim and lease) for its whole command.
    let mut run1 = c.imgtx(1, &s1);
    run1.arg("run")
        .arg(&base)
        .args(["--", "sleep", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = run1.spawn().expect("start host 1's run");
    let lease = t.image(".disk.img.imgtx.lease");
    let claim = t.image(".disk.img.imgtx.claim");
    crate::util::wait_until("host 1's claim", || claim.exists() && lease.exists());

    let err = c.code(2, &s2, &["begin".as_ref(), base.as_os_str()], exit::BUSY);
    assert!(err.contains("sanlock host 1"), "names the host: {err}");
    // With the state directory shared, host 2 still may not touch host 1's transaction.
    let tx = crate::util::listing(&t.images())
        .iter()
        .find_map(|n| {
            n.split('.')
                .find(|p| p.starts_with("tx-"))
                .map(str::to_owned)
        })
        .expect("host 1's overlay");
    for verb in ["commit", "rollback"] {
        let err = c.code(2, &s1, &[verb, tx.as_str()], exit::BUSY);
        assert!(
            err.contains("sanlock host 1"),
            "{verb} names the host: {err}"
        );
    }
    let out = crate::util::finish(child);
    assert!(out.status.success(), "host 1's run: {out:?}");

    // Free again: host 2 gets it, and host 1 is the one refused now.
    let tx2 = c.begin(2, &s2, &base);
    let err = c.code(1, &s1, &["begin".as_ref(), base.as_os_str()], exit::BUSY);
    assert!(err.contains("sanlock host 2"), "{err}");
    c.code(2, &s2, &["rollback", tx2.as_str()], exit::OK);

    // A lockspace this host has not joined is refused.
    let mut cmd = Command::new(crate::util::imgtx_bin());
    cmd.env("SANLOCK_RUN_DIR", c.run_dir(1))
        .env("IMGTX_LOCKSPACE", "notjoined")
        .arg("--state-dir")
        .arg(&s1)
        .arg("recover");
    let out = expect_code(&mut cmd, exit::ERROR);
    let err = stderr_of(&out);
    assert!(
        err.contains("has not joined sanlock lockspace \"notjoined\""),
        "{err}"
    );
}

#[test]
#[ignore = "slow tier: two sanlock daemons, root; run scripts/test-multihost"]
fn lease_multihost_a_live_hosts_open_and_interrupted_transactions_are_left_alone() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let Some(c) = Cluster::start() else { return };
    let t = TestDir::new();
    let (s1, s2) = state_dirs(&t);
    // Host 1's commit dies right after its commit point; host 1 lives on.
    let Left {
        open,
        open_tx,
        torn,
        torn_tx,
        old,
    } = leave_open_and_torn(&c, &t, &s1);
    let listing = crate::util::listing(&t.images());

    // Host 2: recovery refuses host 1's interrupted commit, naming the host; the open
    // transaction is not its business either.
    let images = t.images();
    let err = c.code(
        2,
        &s2,
        &["recover".as_ref(), "--scan".as_ref(), images.as_os_str()],
        exit::BUSY,
    );
    assert!(
        err.contains(&torn_tx) && err.contains("sanlock host 1"),
        "{err}"
    );
    let err = c.code(2, &s2, &["begin".as_ref(), open.as_os_str()], exit::BUSY);
    assert!(err.contains("sanlock host 1"), "{err}");
    // With the state directory shared, too.
    let err = c.code(2, &s1, &["recover"], exit::BUSY);
    assert!(err.contains("sanlock host 1"), "{err}");
    c.code(2, &s1, &["rollback", open_tx.as_str()], exit::BUSY);
    assert_eq!(
        crate::util::listing(&t.images()),
        listing,
        "nothing was touched"
    );
    assert_eq!(sha256(&torn), old, "the base was not written");

    // Host 1 itself recovers its commit, and rolls back its open transaction.
    c.code(1, &s1, &["recover"], exit::OK);
    assert_ne!(sha256(&torn), old, "finished forward");
    c.code(1, &s1, &["rollback", open_tx.as_str()], exit::OK);
}

#[test]
#[ignore = "slow tier: two sanlock daemons, root; run scripts/test-multihost"]
fn lease_multihost_two_hosts_racing_to_initialise_one_lease_area() {
    let Some(c) = Cluster::start() else { return };
    let t = TestDir::new();
    let (s1, s2) = state_dirs(&t);
    for round in 0..6u8 {
        let name = format!("race{round}.img");
        let base = t.raw_image(&name, 1 << 20, round);
        // Both hosts begin on a base that has no lease file yet, at once.
        let children: Vec<Child> = [(1, &s1), (2, &s2)]
            .into_iter()
            .map(|(host, state)| {
                let mut cmd = c.imgtx(host, state);
                cmd.args(["begin", "--json"])
                    .arg(&base)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                cmd.spawn().expect("start a begin")
            })
            .collect();
        let outs: Vec<_> = children.into_iter().map(crate::util::finish).collect();
        let codes: Vec<Option<i32>> = outs.iter().map(|o| o.status.code()).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![Some(0), Some(exit::BUSY)],
            "round {round}: {outs:?}"
        );
        // One lease file, whole, that both hosts use from now on.
        let lease = t.image(&format!(".{name}.imgtx.lease"));
        assert_eq!(std::fs::metadata(&lease).unwrap().len(), (1 << 20) + 4096);
        let winner = if codes[0] == Some(0) { 0 } else { 1 };
        let v: serde_json::Value = serde_json::from_slice(&outs[winner].stdout).unwrap();
        let tx = v["id"].as_str().unwrap().to_owned();
        let (state_w, host_w) = if winner == 0 { (&s1, 1) } else { (&s2, 2) };
        c.code(host_w, state_w, &["rollback", tx.as_str()], exit::OK);
        let (state_l, host_l) = if winner == 0 { (&s2, 2) } else { (&s1, 1) };
        let tx = c.begin(host_l, state_l, &base);
        c.code(host_l, state_l, &["rollback", tx.as_str()], exit::OK);
    }
    let strays: Vec<String> = crate::util::listing(&t.images())
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
}

#[test]
#[ignore = "slow tier (about 100 s): two sanlock daemons, root; run scripts/test-multihost"]
fn lease_multihost_recover_takes_over_a_dead_hosts_transactions() {
    if !require_tools(&["qemu-io"]) {
        return;
    }
    let Some(mut c) = Cluster::start() else {
        return;
    };
    let t = TestDir::new();
    let (s1, s2) = state_dirs(&t);
    let Left {
        open: _,
        open_tx,
        torn,
        torn_tx,
        old,
    } = leave_open_and_torn(&c, &t, &s1);
    let held = t.raw_image("held.img", 1 << 20, 3);
    // A `run` of host 1 holds its lease when the host dies.
    let mut run1 = c.imgtx(1, &s1);
    run1.arg("run")
        .arg(&held)
        .args(["--", "sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut holder = run1.spawn().expect("start host 1's run");
    crate::util::wait_until("host 1's run to hold its image", || {
        t.image(".held.img.imgtx.claim").exists()
    });
    std::thread::sleep(Duration::from_secs(1));

    // Host 1 dies: its daemon is killed, and its imgtx with it (the watchdog's job).
    c.kill(1);
    let died = Instant::now();
    let _ = holder.kill();
    let _ = holder.wait();

    // Until sanlock says host 1 is dead, host 2 leaves everything alone.
    let images = t.images();
    let recover: [&OsStr; 3] = ["recover".as_ref(), "--scan".as_ref(), images.as_os_str()];
    c.code(2, &s2, &recover, exit::BUSY);
    let taken = loop {
        std::thread::sleep(Duration::from_secs(5));
        let mut cmd = c.imgtx(2, &s2);
        cmd.args(recover);
        let out = run(&mut cmd);
        if out.status.code() == Some(0) {
            break died.elapsed();
        }
        assert_eq!(
            out.status.code(),
            Some(exit::BUSY),
            "{}",
            describe(&cmd, &out)
        );
        assert!(
            died.elapsed() < Duration::from_secs(240),
            "host 1 never declared dead"
        );
    };
    eprintln!(
        "host 2 took over {:.0} s after host 1 died",
        taken.as_secs_f64()
    );

    // The interrupted commit was finished, the open transactions rolled back.
    assert_ne!(sha256(&torn), old, "the commit was finished forward");
    let left: Vec<String> = crate::util::listing(&t.images())
        .into_iter()
        .filter(|n| n.contains("tx-") || n.ends_with(".claim"))
        .collect();
    assert!(
        left.is_empty(),
        "nothing of host 1's transactions is left: {left:?}"
    );
    c.code(
        2,
        &s2,
        &["recover".as_ref(), "--scan".as_ref(), images.as_os_str()],
        exit::OK,
    );
    let mut log = c.imgtx(2, &s2);
    log.arg("log");
    let log = crate::util::stdout_of(&run(&mut log));
    for tx in [&open_tx, &torn_tx] {
        assert!(log.contains(tx.as_str()), "{tx} in the history: {log}");
    }
    assert!(
        log.matches("taken over from dead sanlock host 1").count() >= 3,
        "the history records each takeover: {log}"
    );
}
