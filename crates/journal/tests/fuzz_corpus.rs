//! Replays the fuzzer's saved corpus through the fuzz body, so every run of the tests
//! exercises it without the fuzzer; and (ignored) regenerates the hand-made seeds.

use std::path::{Path, PathBuf};

use journal::format::BLOCK;
use journal::fuzz::{replay_bytes, FuzzRecord};
use journal::Journal;
use storage::sim::SimFs;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/replay")
}

#[test]
fn every_corpus_file_replays_without_breaking_an_invariant() {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        replay_bytes(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= 8, "corpus has only {n} files");
}

fn journal_bytes(records: &[FuzzRecord], sync_each: bool) -> Vec<u8> {
    let fs = SimFs::new();
    let mut j =
        Journal::<_, FuzzRecord>::create(&fs, Path::new("/j"), b"base:dev=1,ino=2").unwrap();
    for r in records {
        j.append(r).unwrap();
        if sync_each {
            j.sync().unwrap();
        }
    }
    j.sync().unwrap();
    fs.read_live("/j").unwrap()
}

#[test]
#[ignore = "regenerates the seed corpus; run by hand with --ignored"]
fn write_seed_corpus() {
    let recs = vec![
        FuzzRecord::Begin { size: 1 << 30 },
        FuzzRecord::Data {
            offset: 65536,
            bytes: vec![0xab; 700],
        },
        FuzzRecord::Note("overlay.qcow2".into()),
        FuzzRecord::Commit,
    ];
    let full = journal_bytes(&recs, true);
    let batched = journal_bytes(&recs, false);
    let first_record = usize::try_from(BLOCK).unwrap();
    let mut flipped = full.clone();
    // Inside the first record's payload; synced records follow it.
    flipped[first_record + 40] ^= 0x20;
    // The last block (the last record and its padding) garbled whole, as a torn append
    // without powersafe overwrite can leave it.
    let mut garbled_block = batched.clone();
    let last_block = garbled_block.len() - first_record;
    for (i, b) in garbled_block[last_block..].iter_mut().enumerate() {
        *b = u8::try_from(i * 31 % 251).unwrap();
    }
    let mut zero_tail = full.clone();
    zero_tail.extend_from_slice(&[0; 512]);
    let mut stale = journal_bytes(&recs, true);
    let short = journal_bytes(&recs[..1], true);
    stale[..short.len()].copy_from_slice(&short);
    let seeds: [(&str, Vec<u8>); 10] = [
        ("empty-log", journal_bytes(&[], true)),
        ("four-records", full.clone()),
        ("batched", batched.clone()),
        ("torn-tail", full[..full.len() - 5].to_vec()),
        ("bit-flip-mid-log", flipped),
        ("zero-tail", zero_tail),
        ("stale-after-tail", stale),
        ("batched-torn", batched[..batched.len() - 300].to_vec()),
        ("header-only-prefix", full[..40].to_vec()),
        ("garbled-last-block", garbled_block),
    ];
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}
