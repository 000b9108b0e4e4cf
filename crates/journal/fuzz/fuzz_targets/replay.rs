//! Fuzz target: replay arbitrary bytes as a journal file in every recovery mode.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| journal::fuzz::replay_bytes(data));
