//! T24: a racer swaps names under a running engine, and no file outside the
//! transaction's own is ever written, created in or unlinked.
//!
//! A racer thread keeps swapping, each time for a moment: the overlay for a symlink to the
//! victim file, the journal and pre-image names for symlinks to it, and the base's whole
//! directory for a symlink to the victim's directory (a CVE-2022-21658-style parent swap).
//! Meanwhile the engine runs begin, then commit, rollback, or a commit stopped at its commit
//! point followed by recover (forward or `--undo`), in a loop, over real files. At the end
//! the victim file has its bytes, inode and mtime, and the victim directory its one entry.
//!
//! `IMGTX_CRASH_SWEEP=full` runs at least 10^4 racer iterations; otherwise a few hundred
//! (a few seconds).

use std::fs;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, OpenOptionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storage::OsFs;
use testkit::commit_point::CommitPointStop;
use testkit::fixture;
use testkit::hooked::HookedHost;
use testkit::qemu;
use testkit::sweep::full;
use txn::{BeginOptions, CommitOptions, Engine, RecoverOptions};

/// What must never change: the victim file and its directory.
#[derive(Debug, PartialEq, Eq)]
struct VictimState {
    bytes: Vec<u8>,
    ino: u64,
    mtime_ns: i128,
    listing: Vec<String>,
}

fn victim_state(dir: &Path, file: &Path) -> VictimState {
    let m = fs::symlink_metadata(file).expect("the victim exists");
    let mut listing: Vec<String> = fs::read_dir(dir)
        .expect("list the victim directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    listing.sort();
    VictimState {
        bytes: fs::read(file).expect("read the victim"),
        ino: m.ino(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        listing,
    }
}

/// One swap of the racer, undone at once; errors are expected (the engine may have removed
/// or not yet created the name) and ignored.
fn swap_once(round: u64, images: &Path, victim_dir: &Path, victim: &Path) {
    let aside = images.with_extension("aside");
    let names: Vec<PathBuf> = fs::read_dir(images)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().contains(".tx-"))
                .collect()
        })
        .unwrap_or_default();
    match round % 4 {
        // The overlay (or any transaction file) replaced by a symlink to the victim.
        0 | 1 => {
            for name in names
                .iter()
                .filter(|p| !p.to_string_lossy().ends_with(".held"))
            {
                let held = name.with_extension("held");
                if fs::rename(name, &held).is_ok() {
                    let _ = symlink(victim, name);
                    std::thread::yield_now();
                    let _ = fs::remove_file(name);
                    let _ = fs::rename(&held, name);
                }
            }
        }
        // Journal and pre-image names planted before the engine creates them.
        2 => {
            let planted: Vec<PathBuf> = names
                .iter()
                .filter_map(|p| {
                    let s = p.to_string_lossy();
                    let stem = s.strip_suffix(".imgtx.qcow2")?;
                    let (dir, file) = stem.rsplit_once('/')?;
                    Some(vec![
                        PathBuf::from(format!("{dir}/.{file}.imgtx.journal")),
                        PathBuf::from(format!("{dir}/.{file}.imgtx.undo")),
                    ])
                })
                .flatten()
                .collect();
            for p in &planted {
                let _ = symlink(victim, p);
            }
            std::thread::yield_now();
            for p in &planted {
                if fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
                    let _ = fs::remove_file(p);
                }
            }
        }
        // The base's directory replaced by a symlink to the victim's directory.
        _ => {
            if fs::rename(images, &aside).is_ok() {
                if let Err(e) = symlink(victim_dir, images) {
                    eprintln!("racer: symlink: {e}");
                }
                std::thread::yield_now();
                if let Err(e) = fs::remove_file(images) {
                    eprintln!("racer: unlink: {e}");
                }
                if let Err(e) = fs::rename(&aside, images) {
                    eprintln!("racer: rename back: {e}");
                }
            }
        }
    }
}

/// The bytes of an overlay over `opts`' base holding two written ranges (written once by
/// qemu-io, then copied into every new overlay: same backing name, so still valid), or
/// `None` without qemu-io (the overlays then stay empty).
fn overlay_template(engine: &Engine<OsFs, HookedHost>, opts: &BeginOptions) -> Option<Vec<u8>> {
    let m = engine.begin(opts).expect("begin");
    let overlay = &m.images[0].overlay;
    let template = if qemu::have("qemu-io") {
        qemu::io(overlay, &["write -P 0xab 0 64k", "write -P 0xcd 128k 4k"]);
        Some(fs::read(overlay).expect("read the overlay"))
    } else {
        eprintln!("qemu-io is not available: the racer's overlays stay empty");
        None
    };
    engine.rollback(&m.id).expect("rollback");
    template
}

#[test]
fn a_racer_swapping_names_and_directories_never_makes_the_engine_touch_the_victim() {
    // Arrange
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let root = fs::canonicalize(tmp.path()).expect("resolve the temporary directory");
    let images = root.join("images");
    let victim_dir = root.join("victim");
    fs::create_dir(&images).expect("mkdir images");
    fs::create_dir(&victim_dir).expect("mkdir victim");
    let base = images.join("base.raw");
    let victim = victim_dir.join("victim.raw");
    fs::write(&base, vec![0x11u8; 256 << 10]).expect("write the base");
    fs::write(&victim, vec![0x77u8; 256 << 10]).expect("write the victim");
    let before = victim_state(&victim_dir, &victim);
    // A commit can be told to die at its commit point (by unwinding, which leaves the
    // journal and pre-images behind as a killed process would).
    let commit_point = CommitPointStop::default();
    let host = HookedHost::default().at_step(commit_point.hook());
    let engine = Engine::new(OsFs, host, root.join("state")).expect("an engine");
    let begin = fixture::begin_options(std::slice::from_ref(&base));
    let template = overlay_template(&engine, &begin);
    let target: u64 = if full() { 10_000 } else { 300 };
    let min_cycles: u64 = if full() { 2_000 } else { 40 };
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    // Milliseconds between swaps: slow enough that the engine gets through whole cycles
    // between them; raised below when a loaded machine lets the racer break every ending.
    let pause = Arc::new(AtomicU64::new(2));
    let racer = {
        let (stop, rounds, pause) = (Arc::clone(&stop), Arc::clone(&rounds), Arc::clone(&pause));
        let (images, victim_dir, victim) = (images.clone(), victim_dir.clone(), victim.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let n = rounds.fetch_add(1, Ordering::SeqCst);
                swap_once(n, &images, &victim_dir, &victim);
                std::thread::sleep(Duration::from_millis(pause.load(Ordering::SeqCst)));
            }
        })
    };
    // Act: begin, write into the overlay as a guest tool would, then end the transaction
    // one of four ways; every error the racer causes is fine, as long as nothing leaks.
    let started = Instant::now();
    let debug = std::env::var_os("IMGTX_RACE_DEBUG").is_some();
    let note = |what: &str, r: &txn::Result<()>| {
        if let (true, Err(e)) = (debug, r) {
            eprintln!("{what}: {e}");
        }
        r.is_ok()
    };
    let (mut cycles, mut ok) = (0u64, [0u64; 4]);
    // Not vacuous: the engine must have written bases (a commit, or a recovery rolling one
    // forward) and removed overlays while the racer ran. On a loaded machine the racer can
    // break every ending of the first cycles, so the loop goes on until that holds too,
    // within a time limit past which the assertion below fails.
    let proved = |ok: &[u64; 4]| ok[0] > 0 && ok[1] + ok[2] > 0;
    let limit = Duration::from_secs(if full() { 1800 } else { 120 });
    while (cycles < min_cycles || rounds.load(Ordering::SeqCst) < target || !proved(&ok))
        && started.elapsed() < limit
    {
        cycles += 1;
        if cycles % min_cycles == 0 && !proved(&ok) {
            // Every ending broken so far: the engine is slow here, so the racer slows down
            // (it still swaps throughout, so what completes still completed under it).
            let p = pause.load(Ordering::SeqCst);
            pause.store((p * 2).min(256), Ordering::SeqCst);
        }
        // Whatever an ending the racer broke left behind is settled first: finished or
        // undone by recover, then rolled back. Recover is also pointed at the base, as a
        // begin's refusal says to: the racer renames a journal away and back, so a cleanup
        // can finish while the journal is out of sight and it comes back after the
        // transaction's manifest is gone; only a recovery beside the base finds it then.
        note(
            "settle: recover",
            &engine.recover(&RecoverOptions::default()).map(drop),
        );
        let beside = RecoverOptions {
            paths: vec![base.clone()],
            ..RecoverOptions::default()
        };
        note(
            "settle: recover beside the base",
            &engine.recover(&beside).map(drop),
        );
        for open in engine.status(None).unwrap_or_default() {
            note("settle: rollback", &engine.rollback(&open.manifest.id));
        }
        let m = match engine.begin(&begin) {
            Ok(m) => m,
            Err(e) => {
                note("begin", &Err(e));
                continue;
            }
        };
        if let Some(t) = &template {
            // As a guest tool would: write through the name, never following a symlink
            // and never creating (the racer may have swapped the name or its directory).
            if let Ok(f) = fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&m.images[0].overlay)
            {
                let _ = f.write_all_at(t, 0);
            }
        }
        let how = (cycles % 4) as usize;
        let done = match how {
            0 => note("rollback", &engine.rollback(&m.id)),
            1 => note(
                "commit",
                &engine
                    .commit(&m.id, CommitOptions::default(), &mut |_| {})
                    .map(drop),
            ),
            _ => {
                commit_point.arm();
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    engine.commit(&m.id, CommitOptions::default(), &mut |_| {})
                }));
                commit_point.disarm();
                let opts = RecoverOptions {
                    undo: how == 3,
                    ..RecoverOptions::default()
                };
                note("recover", &engine.recover(&opts).map(drop))
            }
        };
        if done {
            ok[how] += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    racer.join().expect("the racer");
    // Assert
    let raced = rounds.load(Ordering::SeqCst);
    eprintln!(
        "T24 racer: {raced} racer iterations over {cycles} engine cycles in {:.1} s; \
         finished rollback {}, commit {}, recover forward {}, recover --undo {}",
        started.elapsed().as_secs_f64(),
        ok[0],
        ok[1],
        ok[2],
        ok[3]
    );
    assert_eq!(
        victim_state(&victim_dir, &victim),
        before,
        "the victim was touched"
    );
    assert!(
        proved(&ok),
        "too few transactions completed under the racer to prove anything: {ok:?}"
    );
}
