//! Fuzz target: commit an arbitrary overlay into an in-memory raw base.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    txn_fuzz::commit_overlay(data);
});
