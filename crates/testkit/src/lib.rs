//! Test support shared by imgtx's test suites, so that what several test crates need is
//! written once: doubles of the machine for the transaction engine, runners for the qemu
//! tools, a heap-counting allocator, and the switch for the full crash sweeps.
//!
//! It is a dev-dependency only (and a dependency of `crates/txn/fuzz`, outside the
//! workspace): nothing shipped links it, and it enables no feature of a shipped crate (not
//! `storage`'s `sim`, not `txn`'s `crash-hooks`), which the shipped binary could pick up by
//! feature unification.
//!
//! # Layout and features
//!
//! - Always there, depending on no imgtx crate: [`heap`] (the counting allocator), [`qemu`]
//!   (is a tool here; run `qemu-img` and `qemu-io`), [`sweep`] (`IMGTX_CRASH_SWEEP=full`),
//!   [`xfs`] (a loop-mounted XFS with reflinks).
//! - Feature `engine`, for `txn`'s tests and fuzz crate (named in plain text here, since
//!   they are absent from a build without it): `hooked` (the real file system and machine
//!   with hooks), `commit_point` (stop a commit at its commit point), `sim_host` (the host of
//!   every simulation), `fixture` (raw bases, transactions over them, overlays written by
//!   qemu-io).
//!
//! The feature is what keeps the dependency graph sound. `qcow`'s tests use this crate, and
//! `txn` depends on `qcow`: a testkit that always depended on `txn` would make every qcow test
//! build wait for `txn`, and qcow's unit tests link a second qcow (the library, through
//! `txn`) beside the one under test, with types that differ. With the base modules depending
//! on nothing, `cargo test -p imgtx-qcow` never builds `txn`. A workspace run, where `txn`'s
//! tests turn `engine` on, still links `txn` into qcow's tests, but the base modules name no
//! qcow type, so the two qcows never meet.
//!
//! # What is not here
//!
//! - The crash sweeps' machinery (`crates/txn/tests/crash_support`): fixtures on the
//!   simulated disk, the write-ordering rule, the checks every crash point ends with. Only
//!   `txn`'s test crates use it, and it mirrors `txn`'s private journal records field for
//!   field; here it would make this crate depend on `txn`'s internals for no other user.
//! - The seeded generator: the simulated disk in `storage` needs it too, and `storage`
//!   cannot depend on this crate (which depends on `storage`), so it is the crate
//!   `imgtx-splitmix`, which tests use directly.
//! - The end-to-end harness (`tests/e2e/util.rs`): it runs the `imgtx` binary and belongs
//!   to that one test crate.

#![deny(missing_docs)]

#[cfg(feature = "engine")]
pub mod commit_point;
#[cfg(feature = "engine")]
pub mod fixture;
pub mod heap;
#[cfg(feature = "engine")]
pub mod hooked;
pub mod qemu;
#[cfg(feature = "engine")]
pub mod sim_host;
pub mod sweep;
pub mod xfs;
