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

#[test]
fn sharing_seeds_are_refused_and_qemu_seeds_are_mapped() {
    // Arrange: the `shared-*` seeds (fuzz/make-shared-seeds.sh) share a host cluster
    // between two L2 entries; the `qemu-*` seeds are untouched qemu images.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/image");
    let mut shared = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();

        // Act
        let map = qcow::Image::open(&bytes[..]).and_then(|i| i.map());

        // Assert
        if name.starts_with("shared-") {
            assert!(
                matches!(map, Err(qcow::Error::SharedCluster { .. })),
                "{name}: {map:?}"
            );
            shared += 1;
        } else if name.starts_with("qemu-") {
            assert!(map.is_ok(), "{name}: {map:?}");
        }
    }
    assert!(
        shared >= 4,
        "the sharing seeds in {} are missing",
        dir.display()
    );
}
