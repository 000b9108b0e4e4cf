//! Hostile overlays at the engine level, on real files: a name swapped at the worst moment, between
//! the check of the overlay's name and its open (T24).
//!
//! A racer would hit such a window only now and then; [`swap_on_open`] and
//! [`swap_before_qemu`] hit it every time by renaming a decoy over the overlay's name just
//! before the engine's open, or just before `qemu-img commit` starts.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use storage::OsFs;
use testkit::commit_point::CommitPointStop;
use testkit::fixture;
use testkit::hooked::{HookedFs, HookedHost};
use testkit::qemu;
use txn::{BeginOptions, CommitOptions, Engine, Error, Format, Host, OsHost, RecoverOptions, TxId};

/// Held by every test here for its whole run. Tests that spawn qemu tools would otherwise
/// fork while another test holds a transaction's lock file open: the child's copy of the
/// descriptor (until its exec closes it) keeps the lock, and the other test's next
/// non-waiting lock attempt sees the transaction as busy.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A rename armed for one moment: `target` is replaced by `decoy` when it comes.
#[derive(Debug, Clone, Default)]
struct Swap(Arc<Mutex<Option<(PathBuf, PathBuf)>>>);

impl Swap {
    fn arm(&self, target: &Path, decoy: &Path) {
        *self.0.lock().expect("lock") = Some((target.to_path_buf(), decoy.to_path_buf()));
    }

    /// Does the armed swap if it concerns `path` (any path when `None`).
    fn fire(&self, path: Option<&Path>) {
        let mut armed = self.0.lock().expect("lock");
        if armed
            .as_ref()
            .is_some_and(|(t, _)| path.is_none_or(|p| p == t))
        {
            let (target, decoy) = armed.take().expect("armed");
            fs::rename(decoy, target).expect("swap the decoy in");
        }
    }
}

/// The real file system, except that the armed swap fires on the next open of its target.
fn swap_on_open() -> (Swap, HookedFs) {
    let swap = Swap::default();
    let fire = swap.clone();
    (
        swap,
        HookedFs::before_open(move |path| fire.fire(Some(path))),
    )
}

/// The real machine, except that the armed swap fires just before `qemu-img commit` runs,
/// after the engine validated the overlay.
fn swap_before_qemu() -> (Swap, HookedHost) {
    let swap = Swap::default();
    let fire = swap.clone();
    (
        swap,
        HookedHost::default().before_qemu(move || fire.fire(None)),
    )
}

/// The real machine, except that the next commit is stopped at its commit point.
fn host_stopping_at_commit_point() -> HookedHost {
    let stop = CommitPointStop::default();
    stop.arm();
    HookedHost::default().at_step(stop.hook())
}

#[test]
fn commit_refuses_an_overlay_swapped_between_its_check_and_its_open() {
    let _serial = serial();
    // Arrange: the decoy is a byte-for-byte copy of the overlay, so every content check
    // (magic, tables, backing name and format) passes; only its inode differs.
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let (base, swap, engine, m) = begun_raw(tmp.path(), OsHost::default());
    let overlay = m.images[0].overlay.clone();
    let decoy = tmp.path().join("decoy.qcow2");
    fs::copy(&overlay, &decoy).expect("copy the overlay");
    let decoy_ino = fs::metadata(&decoy).expect("stat the decoy").ino();
    swap.arm(&overlay, &decoy);
    // Act
    let err = engine
        .commit(&m.id, CommitOptions::default(), &mut |_| {})
        .expect_err("commit must refuse the decoy");
    // Assert
    fixture::assert_overlay_refused(&err, "replaced by another file");
    assert_eq!(
        fs::metadata(&overlay)
            .expect("the decoy has the name")
            .ino(),
        decoy_ino,
        "the swap did not happen, so the test proved nothing"
    );
    fixture::assert_base_untouched(&base);
}

#[test]
fn qemu_img_commits_the_validated_overlay_even_if_its_name_is_swapped_before_qemu_runs() {
    let _serial = serial();
    // Arrange: a qcow2 base (the bases qemu-img commits), an overlay holding 0xaa, and a
    // decoy over the same base holding 0xbb, which is renamed over the overlay's name
    // after validation, just before qemu-img starts.
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let p = |name: &str| tmp.path().join(name).to_str().expect("UTF-8").to_owned();
    let (base, decoy) = (p("base.qcow2"), p("decoy.qcow2"));
    if !qemu::have("qemu-img") {
        eprintln!("skipped: qemu-img is not available");
        return;
    }
    qemu::img(&["create", "-q", "-f", "qcow2", &base, "1M"]);
    let (swap, host) = swap_before_qemu();
    let engine = Engine::new(OsFs, host, tmp.path().join("state")).expect("an engine");
    let m = engine
        .begin(&BeginOptions {
            bases: vec![PathBuf::from(&base)],
            base_format: Some(Format::Qcow2),
            ..BeginOptions::default()
        })
        .expect("begin");
    let overlay = m.images[0].overlay.to_str().expect("UTF-8").to_owned();
    let write = |img: &str, pattern: &str| {
        qemu::io(Path::new(img), &[format!("write -P {pattern} 0 64k")]);
    };
    write(&overlay, "0xaa");
    qemu::img(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &decoy,
    ]);
    write(&decoy, "0xbb");
    swap.arm(Path::new(&overlay), Path::new(&decoy));
    // Act
    engine
        .commit(&m.id, CommitOptions::default(), &mut |_| {})
        .expect("commit");
    // Assert: the swap happened, and the base holds the validated overlay's bytes.
    assert!(!Path::new(&decoy).exists(), "the swap did not happen");
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -P 0xaa 0 64k", &base])
        .output()
        .expect("qemu-io");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !said.contains("Pattern verification failed"),
        "the base does not hold the validated overlay's data: {said}"
    );
}

#[test]
fn recover_undo_refuses_a_base_swapped_between_its_check_and_its_open() {
    let _serial = serial();
    // Arrange: a commit stopped at its commit point, and a decoy of another length that
    // is renamed over the base's name when recovery opens it to restore the pre-images.
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let (base, swap, engine, m) = begun_raw(tmp.path(), host_stopping_at_commit_point());
    stop_at_commit_point(&engine, &m.id);
    let decoy = tmp.path().join("decoy.raw");
    fs::write(&decoy, vec![0x77u8; 32 << 10]).expect("write the decoy");
    swap.arm(&base, &decoy);
    // Act
    let err = recover_undo_refusal(&engine);
    // Assert
    assert!(
        err.to_string().contains("replaced by another file"),
        "unexpected error: {err}"
    );
    assert_eq!(
        fs::read(&base).expect("the decoy has the base's name"),
        vec![0x77u8; 32 << 10],
        "recovery wrote the decoy"
    );
}

/// Runs a commit of `tx` that the host stops at its commit point (by unwinding, which leaves
/// journal and pre-images as a killed process would), and asserts that it was stopped.
fn stop_at_commit_point(engine: &Engine<HookedFs, HookedHost>, tx: &TxId) {
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.commit(tx, CommitOptions::default(), &mut |_| {})
    }));
    assert!(
        stopped.is_err(),
        "the commit was not stopped at its commit point"
    );
}

/// `recover --undo`, which must fail; its error.
fn recover_undo_refusal<H: Host>(engine: &Engine<HookedFs, H>) -> Error {
    engine
        .recover(&RecoverOptions {
            undo: true,
            ..RecoverOptions::default()
        })
        .expect_err("recover --undo must refuse the decoy")
}

/// The fixture base in `tmp`, an engine over [`swap_on_open`] and `host`, and a
/// begun transaction over the base.
fn begun_raw<H: Host>(tmp: &Path, host: H) -> (PathBuf, Swap, Engine<HookedFs, H>, txn::Manifest) {
    let base = fixture::write_base(tmp);
    let (swap, fs) = swap_on_open();
    let engine = Engine::new(fs, host, tmp.join("state")).expect("an engine");
    let m = fixture::begin_raw(&engine, &base);
    (base, swap, engine, m)
}

/// A begin whose claim draft is replaced by a symlink just before it is linked to the
/// claim's name (link(2) links the symlink itself): the begin is refused, nothing is left
/// that holds the image, and the next begin takes it.
#[test]
fn a_claim_draft_swapped_for_a_symlink_never_becomes_the_claim() {
    let _serial = serial();
    // Arrange
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let base = fixture::write_base(tmp.path());
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"victim").expect("write the victim");
    let armed = Arc::new(Mutex::new(Some(victim.clone())));
    let fire = Arc::clone(&armed);
    let hooked = HookedFs::before_link(move |from| {
        if from.to_string_lossy().ends_with(".imgtx.claim") {
            if let Some(victim) = fire.lock().expect("lock").take() {
                fs::remove_file(from).expect("remove the draft");
                std::os::unix::fs::symlink(&victim, from).expect("plant the symlink");
            }
        }
    });
    let engine =
        Engine::new(hooked, OsHost::default(), tmp.path().join("state")).expect("an engine");
    // Act
    let err = engine
        .begin(&fixture::begin_options(std::slice::from_ref(&base)))
        .expect_err("a begin whose claim was swapped must fail");
    // Assert
    assert!(armed.lock().expect("lock").is_none(), "the swap fired");
    assert!(
        err.to_string().contains("replaced while it was being made"),
        "{err}"
    );
    let claim = base.with_file_name(".base.raw.imgtx.claim");
    assert!(
        fs::symlink_metadata(&claim).is_err(),
        "a claim is left: {claim:?}"
    );
    assert_eq!(fs::read(&victim).expect("read the victim"), b"victim");
    fixture::begin_raw(&engine, &base);
}

/// [`begun_raw`], with the overlay holding 0xaa over the whole base; `None` without qemu-io.
fn begun_raw_written<H: Host>(
    tmp: &Path,
    host: H,
) -> Option<(PathBuf, Swap, Engine<HookedFs, H>, txn::Manifest)> {
    let (base, swap, engine, m) = begun_raw(tmp, host);
    fixture::write_overlay(&m, "write -P 0xaa 0 64k")?;
    Some((base, swap, engine, m))
}

/// A commit (with pre-images, or `--no-undo`) whose base is swapped for a decoy when the
/// engine opens it, after the name was checked: the decoy is never written, and nothing is
/// written anywhere before the swap is noticed (with pre-images) or the commit stops short
/// of the base and leaves a refusal to `recover` (without).
#[test]
fn commit_never_writes_a_base_swapped_between_its_check_and_its_open() {
    let _serial = serial();
    for no_undo in [false, true] {
        // Arrange
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let Some((base, swap, engine, m)) = begun_raw_written(tmp.path(), OsHost::default()) else {
            return;
        };
        let decoy = tmp.path().join("decoy.raw");
        fs::write(&decoy, vec![0x77u8; 64 << 10]).expect("write the decoy");
        swap.arm(&base, &decoy);
        // Act
        let err = engine
            .commit(
                &m.id,
                CommitOptions {
                    no_undo,
                    ..Default::default()
                },
                &mut |_| {},
            )
            .expect_err("commit must refuse the decoy");
        // Assert
        let mut chain = err.to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause {
            chain.push_str(&format!(": {c}"));
            cause = c.source();
        }
        assert!(
            chain.contains("replaced by another file"),
            "no_undo {no_undo}: unexpected error: {chain}"
        );
        assert_eq!(
            fs::read(&base).expect("the decoy has the base's name"),
            vec![0x77u8; 64 << 10],
            "no_undo {no_undo}: the commit wrote the decoy"
        );
        // Without pre-images the swap is seen past the commit point; recovery must refuse
        // the decoy too rather than finish the commit into it.
        let _ = engine.recover(&RecoverOptions::default());
        assert_eq!(
            fs::read(&base).expect("the decoy has the base's name"),
            vec![0x77u8; 64 << 10],
            "no_undo {no_undo}: recovery wrote the decoy"
        );
    }
}

/// `recover --undo` checks the pre-image file by name, then opens it: a look-alike swapped
/// in between (same bytes, but mode 0644, so anyone could have written it) is refused
/// through the descriptor, and the base is not written.
#[test]
fn recover_undo_refuses_a_pre_image_file_swapped_between_its_check_and_its_open() {
    let _serial = serial();
    // Arrange: a commit stopped at its commit point (pre-images saved, base untouched).
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let Some((base, swap, engine, m)) =
        begun_raw_written(tmp.path(), host_stopping_at_commit_point())
    else {
        return;
    };
    stop_at_commit_point(&engine, &m.id);
    let undo = tmp.path().join(format!(".base.raw.{}.imgtx.undo", m.id));
    let decoy = tmp.path().join("decoy.undo");
    fs::copy(&undo, &decoy).expect("copy the pre-image file");
    fs::set_permissions(&decoy, fs::Permissions::from_mode(0o644)).expect("chmod the decoy");
    swap.arm(&undo, &decoy);
    // Act
    let err = recover_undo_refusal(&engine);
    // Assert
    assert!(
        err.to_string().contains("no usable pre-images"),
        "unexpected error: {err}"
    );
    assert_eq!(
        fs::metadata(&undo).expect("the decoy has the name").mode() & 0o777,
        0o644,
        "the swap did not happen, so the test proved nothing"
    );
    assert_eq!(
        fs::read(&base).expect("read the base"),
        fixture::base_bytes(),
        "recovery wrote the base from an untrusted file"
    );
}
