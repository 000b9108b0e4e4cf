//! Fuzz target: header parsing, map, reads and inventory over arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    qcow::fuzz::check_image(data);
});
