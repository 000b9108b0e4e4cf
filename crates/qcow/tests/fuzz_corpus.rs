//! Replays every file of the fuzz corpus (seeds and fuzzer finds) through the fuzz body:
//! none may panic or take long.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

#[test]
fn every_fuzz_corpus_file_is_handled_without_panicking() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/image");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let t = Instant::now();
        qcow::fuzz::check_image(&bytes);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{} took {:?}",
            path.display(),
            t.elapsed()
        );
        n += 1;
    }
    assert!(n > 10, "the corpus at {} is missing", dir.display());
}
