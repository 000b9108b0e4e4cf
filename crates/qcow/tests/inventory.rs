//! The inventory of a qcow2 base must cover every byte `qemu-img commit` changes below the
//! old end of the file.
#![allow(missing_docs)]

use qcow::{ExtentKind, Image};
use testkit::qemu;

fn commit_and_check(
    base_opts: &str,
    snapshot: bool,
    base_writes: &[String],
    top_writes: &[String],
) {
    // Arrange: a base with history (data, zeros, compressed, discarded clusters) and an
    // overlay over it.
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.qcow2");
    let top = d.path().join("top.qcow2");
    qemu::img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        base_opts,
        base.to_str().unwrap(),
        "64M",
    ]);
    qemu::io(&base, base_writes);
    if snapshot {
        // Shared clusters (refcount 2) make qemu copy on write into free clusters or EOF.
        qemu::img(&["snapshot", "-c", "s1", base.to_str().unwrap()]);
        qemu::io(&base, &["discard 30M 2M".to_owned()]);
    }
    qemu::img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
    ]);
    qemu::io(&top, top_writes);
    let overlay = Image::open(std::fs::File::open(&top).unwrap()).unwrap();
    let ranges: Vec<_> = overlay
        .map()
        .unwrap()
        .into_iter()
        .filter(|e| e.kind != ExtentKind::Unallocated)
        .map(|e| (e.guest, e.len))
        .collect();
    let before = std::fs::read(&base).unwrap();
    let inv = Image::open(&before[..])
        .unwrap()
        .inventory(&ranges)
        .unwrap();
    assert_eq!(inv.file_len, before.len() as u64);

    // Act
    qemu::img(&["commit", "-q", "-d", top.to_str().unwrap()]);

    // Assert: every changed byte below the old length is inside a listed range.
    let after = std::fs::read(&base).unwrap();
    let covered = |off: u64| {
        let i = inv.ranges.partition_point(|r| r.offset.0 <= off);
        i > 0 && off < inv.ranges[i - 1].offset.0 + inv.ranges[i - 1].len
    };
    let n = before.len().min(after.len());
    let mut changed = 0u64;
    for off in 0..n {
        if before[off] != after[off] {
            changed += 1;
            assert!(
                covered(off as u64),
                "byte {off:#x} changed outside the inventory"
            );
        }
    }
    assert!(
        changed > 0,
        "the commit changed nothing: the test proves nothing"
    );
    for w in inv.ranges.windows(2) {
        assert!(
            w[0].offset.0 + w[0].len < w[1].offset.0,
            "ranges not coalesced"
        );
    }
}

#[test]
fn inventory_covers_every_byte_qemu_img_commit_changes() {
    if !qemu::available() {
        return;
    }
    let base_writes: Vec<String> = vec![
        "write -P 0x11 0 4M".into(),
        "write -c -P 0x22 4M 1M".into(),
        "write -z 5M 1M".into(),
        "write -P 0x33 8M 2M".into(),
        "discard 8M 1M".into(),
        "write -P 0x44 40M 64k".into(),
        "write -P 0x45 30M 2M".into(),
    ];
    let top_writes: Vec<String> = vec![
        "write -P 0xaa 1M 128k".into(),
        "write -P 0xbb 4M 200k".into(),
        "write -z 2M 1M".into(),
        "write -P 0xcc 20M 3M".into(),
        "write -c -P 0xdd 50M 64k".into(),
        "write -P 0xee 40M 4k".into(),
    ];
    for opts in [
        "cluster_size=65536",
        "cluster_size=4096",
        "cluster_size=65536,extended_l2=on",
        "compat=0.10",
    ] {
        commit_and_check(opts, false, &base_writes, &top_writes);
    }
    for opts in ["cluster_size=65536", "cluster_size=65536,extended_l2=on"] {
        commit_and_check(opts, true, &base_writes, &top_writes);
    }
}
