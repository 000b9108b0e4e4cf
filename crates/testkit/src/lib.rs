//! Test support shared by imgtx's test suites, so that what several test crates need is
//! written once: runners for the qemu tools, a heap-counting allocator, and the switch for
//! the full crash sweeps.
//!
//! It is a dev-dependency only: nothing shipped links it, and it enables no feature of a
//! shipped crate, which the shipped binary could pick up by feature unification.
//!
//! # Layout
//!
//! [`heap`] (the counting allocator), [`qemu`] (is a tool here; run `qemu-img` and
//! `qemu-io`) and [`sweep`] (`IMGTX_CRASH_SWEEP=full`) depend on no imgtx crate, so any
//! crate's tests can use them, `qcow`'s included.
//!
//! # What is not here
//!
//! - The seeded generator: the simulated disk in `storage` needs it too, so it is the crate
//!   `imgtx-splitmix`, which tests use directly.
//! - The end-to-end harness (`tests/e2e/util.rs`): it runs the `imgtx` binary and belongs
//!   to that one test crate.

#![deny(missing_docs)]

pub mod heap;
pub mod qemu;
pub mod sweep;
