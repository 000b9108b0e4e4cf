//! The switch between the sampled crash sweeps every test run does and the full ones
//! (`IMGTX_CRASH_SWEEP=full`, run by `scripts/crash-sweep-full`).
//!
//! It only reads the variable; what "full" means (every damage variant, every crash point,
//! more racer rounds) is each sweep's own business.

/// Whether the full sweep was asked for (`IMGTX_CRASH_SWEEP=full`).
pub fn full() -> bool {
    std::env::var("IMGTX_CRASH_SWEEP").is_ok_and(|v| v == "full")
}
