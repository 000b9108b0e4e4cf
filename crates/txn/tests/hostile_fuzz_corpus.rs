//! Replays the seed corpus and every finding of the `commit` fuzz target
//! (`crates/txn/fuzz/corpus/commit/`) through the fuzz body, so each becomes a regression
//! test of the ordinary test run.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code, missing_docs)]
mod body;

#[test]
fn every_commit_corpus_overlay_is_refused_or_committed_exactly() {
    // Arrange
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/commit");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the corpus lost its seeds: {files:?}");
    for path in files {
        let bytes = std::fs::read(&path).expect("read a corpus file");
        // Act + Assert: the body panics on any finding.
        println!("replaying {}", path.display());
        body::commit_overlay(&bytes);
    }
}
