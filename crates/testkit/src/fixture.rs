//! Fixtures and checks for engine tests on real files: a small raw base, transactions begun
//! over raw bases, overlays written by the real qemu-io, and the refusals those tests expect.
//!
//! Expected contents here are fixed bytes, never something read back through imgtx. This is
//! not the crash sweeps' fixture (a transaction prepared on the simulated disk), which lives
//! with those sweeps in `crates/txn/tests/crash_support`.

use std::path::{Path, PathBuf};

use storage::Fs;
use txn::{BeginOptions, Engine, Error, Format, Host, Manifest};

use crate::qemu;

/// The length of the fixture base.
pub const BASE_LEN: usize = 64 << 10;

/// The byte the fixture base is filled with.
pub const BASE_BYTE: u8 = 0x11;

/// The fixture base's content: [`BASE_LEN`] bytes of [`BASE_BYTE`].
pub fn base_bytes() -> Vec<u8> {
    vec![BASE_BYTE; BASE_LEN]
}

/// Writes the fixture base as `dir/base.raw` and returns its path.
pub fn write_base(dir: &Path) -> PathBuf {
    let base = dir.join("base.raw");
    std::fs::write(&base, base_bytes()).expect("write the base");
    base
}

/// Asserts that `base` still holds the fixture base's content.
pub fn assert_base_untouched(base: &Path) {
    assert_eq!(
        std::fs::read(base).expect("read the base"),
        base_bytes(),
        "the base was written"
    );
}

/// Asserts that `err` is the engine refusing an overlay (`Error::OverlayInvalid`) for a
/// reason that says `reason`.
pub fn assert_overlay_refused(err: &Error, reason: &str) {
    assert!(
        matches!(err, Error::OverlayInvalid { .. }),
        "unexpected error: {err}"
    );
    assert!(err.to_string().contains(reason), "unexpected reason: {err}");
}

/// `begin` options for the raw images `bases`.
pub fn begin_options(bases: &[PathBuf]) -> BeginOptions {
    BeginOptions {
        bases: bases.to_vec(),
        base_format: Some(Format::Raw),
        ..BeginOptions::default()
    }
}

/// Begins a transaction over the raw image `base` (which must exist).
pub fn begin_raw<S: Fs, H: Host>(engine: &Engine<S, H>, base: &Path) -> Manifest {
    engine
        .begin(&begin_options(&[base.to_path_buf()]))
        .expect("begin")
}

/// Runs the qemu-io command `cmd` on the overlay of `m`'s first image; `None`, with a note,
/// when qemu-io is not installed. A command that fails fails the test.
pub fn write_overlay(m: &Manifest, cmd: &str) -> Option<()> {
    if !qemu::have("qemu-io") {
        eprintln!("skipped: qemu-io is not installed");
        return None;
    }
    qemu::io(&m.images[0].overlay, &[cmd]);
    Some(())
}
