//! Host clusters shared between active L2 entries (T17): qemu never writes that, so
//! `Image::map` refuses it, naming both entries; what qemu does share (compressed data
//! packed into one cluster, clusters shared with internal snapshots) is still accepted.
//! Aliased images are real qemu-io images with one L2 entry patched; `qemu-img check` is
//! the oracle that they are inconsistent. Skips (with a message) when qemu is not installed.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

use qcow::{Error, Extent, Image};
use testkit::qemu;

/// A qcow2 image made by qemu-img with `opts`, written by qemu-io with `writes`.
fn qemu_image(dir: &Path, opts: &str, size: u64, writes: &[String]) -> PathBuf {
    let p = dir.join("a.qcow2");
    qemu::img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        opts,
        p.to_str().unwrap(),
        &size.to_string(),
    ]);
    qemu::io(&p, writes);
    p
}

/// The bytes of an image of eight `cs`-byte clusters, made by qemu-img with `opts` and
/// written by qemu-io with `writes`.
fn qemu_bytes(opts: &str, cs: u64, writes: &[String]) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    std::fs::read(qemu_image(d.path(), opts, 8 * cs, writes)).unwrap()
}

fn be64(b: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}

fn put64(b: &mut [u8], at: u64, v: u64) {
    b[at as usize..at as usize + 8].copy_from_slice(&v.to_be_bytes());
}

/// Host offset of the L2 entry of guest cluster `index` (which must be in L1 entry 0's
/// table), and the entry size.
fn l2_entry(bytes: &[u8], index: u64) -> (u64, u64) {
    let image = Image::open(bytes).unwrap();
    let h = image.header();
    let l2 = be64(bytes, h.l1_table_offset.0) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2, 0, "L1 entry 0 is allocated");
    let esz = h.l2_entry_size();
    (l2 + index * esz, esz)
}

/// Copies the whole L2 entry (both words with extended L2) of guest cluster `from` over
/// that of guest cluster `to`, then applies `tweak` to the first word.
fn alias(bytes: &mut [u8], from: u64, to: u64, tweak: impl Fn(u64) -> u64) -> (u64, u64) {
    let (src, esz) = l2_entry(bytes, from);
    let (dst, _) = l2_entry(bytes, to);
    for w in 0..esz / 8 {
        let v = be64(bytes, src + w * 8);
        put64(bytes, dst + w * 8, v);
    }
    let first = be64(bytes, dst);
    put64(bytes, dst, tweak(first));
    (src, dst)
}

/// `qemu-img check` finds errors in the image (its exit status is 2 for corruptions).
fn qemu_check_finds_corruption(bytes: &[u8]) -> bool {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("check.qcow2");
    std::fs::write(&p, bytes).unwrap();
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", p.to_str().unwrap()])
        .output()
        .unwrap();
    !out.status.success()
}

/// What `Image::map` says of `bytes`.
fn map(bytes: &[u8]) -> qcow::Result<Vec<Extent>> {
    Image::open(bytes).unwrap().map()
}

/// A valid 512-byte-cluster image made by qemu, grown sparsely to `clusters` host clusters,
/// opened from its file (the cluster count comes from the file's length).
fn grown_512_byte_cluster_image(dir: &Path, clusters: u64) -> Image<std::fs::File> {
    let p = qemu_image(dir, "cluster_size=512", 1 << 20, &["write 0 4096".into()]);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(clusters * 512).unwrap();
    drop(f);
    Image::open(std::fs::File::open(&p).unwrap()).unwrap()
}

/// One image with an L2 entry made to share another's data cluster.
struct Aliased {
    what: String,
    opts: String,
    cs: u64,
    writes: Vec<String>,
    /// Guest cluster 0's entry is copied over this cluster's, then `tweak`ed.
    to: u64,
    tweak: fn(u64) -> u64,
}

fn aliased_cases() -> Vec<Aliased> {
    let kb64 = 65536u64;
    let mut cases: Vec<Aliased> = [9u64, 12, 16, 21]
        .into_iter()
        .map(|bits| {
            let cs = 1u64 << bits;
            Aliased {
                what: format!("cluster size {cs}"),
                opts: format!("cluster_size={cs}"),
                cs,
                writes: vec![
                    format!("write -P 0x11 0 {cs}"),
                    format!("write -P 0x22 {} {cs}", 3 * cs),
                ],
                to: 3,
                tweak: |e| e,
            }
        })
        .collect();
    cases.push(Aliased {
        what: "zero, but keep cluster 0's host cluster (preallocated zero)".to_owned(),
        opts: "cluster_size=65536".to_owned(),
        cs: kb64,
        writes: vec![format!("write -P 0x11 0 {kb64}")],
        to: 2,
        tweak: |e| e | 1,
    });
    cases.push(Aliased {
        what: "partly written clusters (extended L2 subclusters)".to_owned(),
        opts: "cluster_size=65536,extended_l2=on".to_owned(),
        cs: kb64,
        writes: vec![
            "write -P 0x11 4096 4096".to_owned(),
            format!("write -P 0x22 {} 4096", 3 * kb64 + 8192),
        ],
        to: 3,
        tweak: |e| e,
    });
    cases
}

#[test]
fn two_l2_entries_sharing_a_data_cluster_are_refused_naming_both() {
    if !qemu::available() {
        return;
    }
    for case in aliased_cases() {
        // Arrange: clusters written by qemu-io (cluster 0 among them), an image map accepts;
        // cluster `to`'s entry then points at cluster 0's host cluster.
        let (what, cs) = (&case.what, case.cs);
        let mut bytes = qemu_bytes(&case.opts, cs, &case.writes);
        assert!(map(&bytes).is_ok(), "{what}: qemu's image is accepted");
        let host = be64(&bytes, l2_entry(&bytes, 0).0) & 0x00ff_ffff_ffff_fe00;
        let (src, dst) = alias(&mut bytes, 0, case.to, case.tweak);
        assert!(
            qemu_check_finds_corruption(&bytes),
            "{what}: qemu-img check agrees"
        );

        // Act
        let err = map(&bytes).unwrap_err();

        // Assert
        assert!(
            matches!(
                err,
                Error::SharedCluster {
                    host: h,
                    first_guest: 0,
                    first_entry,
                    second_guest,
                    second_entry,
                    ..
                } if (h, first_entry, second_guest, second_entry)
                    == (host, src, case.to * cs, dst)
            ),
            "{what}: {err:?}"
        );
        let msg = err.to_string();
        for off in [host, src, dst] {
            assert!(
                msg.contains(&format!("{off:#x}")),
                "{what}: {msg} names {off:#x}"
            );
        }
    }
}

#[test]
fn a_data_cluster_inside_compressed_data_is_refused() {
    if !qemu::available() {
        return;
    }
    // Arrange: cluster 1 compressed, cluster 4 plain; cluster 4's entry then points at the
    // host cluster holding cluster 1's compressed bytes.
    let cs = 65536u64;
    let writes = [
        format!("write -c -P 0x33 {cs} {cs}"),
        format!("write -P 0x44 {} {cs}", 4 * cs),
    ];
    let mut bytes = qemu_bytes("cluster_size=65536", cs, &writes);
    let (c1, _) = l2_entry(&bytes, 1);
    // 64 KiB clusters: the compressed host offset is the low 62 - 8 = 54 bits.
    let compressed_host = be64(&bytes, c1) & ((1 << 54) - 1);
    let (c4, _) = l2_entry(&bytes, 4);
    let e4 = be64(&bytes, c4);
    put64(
        &mut bytes,
        c4,
        (e4 & !0x00ff_ffff_ffff_fe00) | (compressed_host & !(cs - 1)),
    );
    assert!(qemu_check_finds_corruption(&bytes), "qemu-img check agrees");

    // Act
    let err = map(&bytes).unwrap_err();

    // Assert
    assert!(
        matches!(
            err,
            Error::SharedCluster {
                first_use: "compressed data",
                first_guest,
                second_use: "data cluster",
                second_guest,
                ..
            } if (first_guest, second_guest) == (cs, 4 * cs)
        ),
        "{err:?}"
    );
}

/// Four compressed clusters of one byte pattern compress to a few hundred bytes each, so
/// qemu packs them into one host cluster.
fn compressed_clusters_packed_into_one_host_cluster() -> Vec<u8> {
    let cs = 65536u64;
    let writes: Vec<String> = (0..4)
        .map(|i| format!("write -c -P 0x{:x} {} {cs}", 0x40 + i, i * cs))
        .collect();
    let bytes = qemu_bytes("cluster_size=65536", cs, &writes);
    let host_cluster = |i| (be64(&bytes, l2_entry(&bytes, i).0) & ((1 << 54) - 1)) / cs;
    assert_eq!(
        host_cluster(0),
        host_cluster(3),
        "qemu packed them together"
    );
    bytes
}

/// A snapshot shares every cluster with the active layer, then part of it is rewritten
/// (copy on write) and part is not.
fn clusters_shared_with_an_internal_snapshot() -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let cs = 65536u64;
    let writes = [format!("write -P 0x11 0 {}", 4 * cs)];
    let p = qemu_image(d.path(), "cluster_size=65536", 8 * cs, &writes);
    qemu::img(&["snapshot", "-c", "s1", p.to_str().unwrap()]);
    qemu::io(&p, &[format!("write -P 0x22 {cs} {cs}")]);
    std::fs::read(&p).unwrap()
}

/// Builds an image with qemu's tools alone, returning its bytes.
type QemuMade = fn() -> Vec<u8>;

#[test]
fn clusters_that_qemu_itself_shares_are_accepted() {
    if !qemu::available() {
        return;
    }
    let cases: [(&str, QemuMade); 2] = [
        (
            "compressed clusters packed into one host cluster",
            compressed_clusters_packed_into_one_host_cluster,
        ),
        (
            "clusters shared with an internal snapshot",
            clusters_shared_with_an_internal_snapshot,
        ),
    ];
    for (what, image) in cases {
        // Arrange
        let bytes = image();

        // Act
        let mapped = map(&bytes);

        // Assert
        assert!(mapped.is_ok(), "{what}: {mapped:?}");
    }
}

#[test]
fn a_file_with_more_host_clusters_than_the_check_tracks_is_refused() {
    if !qemu::available() {
        return;
    }
    // Arrange: grown sparsely past 2^26 clusters (32 GiB).
    let d = tempfile::tempdir().unwrap();
    let image = grown_512_byte_cluster_image(d.path(), (1 << 26) + 1);

    // Act
    let err = image.map().unwrap_err();

    // Assert
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert!(err.to_string().contains("67108865 host clusters"), "{err}");
}

#[test]
fn a_file_at_the_tracked_cluster_limit_is_accepted() {
    if !qemu::available() {
        return;
    }
    // Arrange: as above, but exactly 2^26 clusters.
    let d = tempfile::tempdir().unwrap();
    let image = grown_512_byte_cluster_image(d.path(), 1 << 26);

    // Act
    let mapped = image.map();

    // Assert
    assert!(mapped.is_ok(), "{mapped:?}");
}
