//! Single-field corruptions of real qemu overlays, judged by `qemu-img check` and by imgtx:
//! whatever qemu-img check calls corrupt (exit status 2), `Image::open` + `Image::map` must
//! refuse, except for the corruptions listed in [`Exception`], which imgtx deliberately
//! accepts (each with its reason). The other way round, imgtx may refuse what qemu-img
//! check accepts only by its host-cluster sharing rule (`Error::SharedCluster`: a data
//! cluster inside compressed data, which qemu's reference counts miss when the refcount
//! happens to match); those cases are printed.
//!
//! The overlays are made by `qemu-img create -b base.raw` and written by qemu-io with data,
//! partial, zero, preallocated-zero and packed compressed clusters, in four layouts (4 KiB
//! and 64 KiB clusters, extended L2, v2). The fields are one 64-bit word each: every L1
//! entry, the L2 entry of every kind of cluster, an L2 entry past the virtual size, and with
//! extended L2 the subcluster bitmaps. Each word gets every single-bit flip and every
//! host-cluster offset (and 0) in place of its offset field: about 2700 images, each run
//! through qemu-img check. Skips (with a message) when qemu is not installed.
#![allow(missing_docs)]

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use qcow::{Error, Image};
use testkit::qemu::{available as qemu_available, img as qemu_img, io as qemu_io};

const COMPRESSED: u64 = 1 << 62;
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// One qemu-made overlay and the words to corrupt in it.
struct Overlay {
    what: &'static str,
    bytes: Vec<u8>,
    cluster_bits: u32,
    /// (name, host offset of the 64-bit word)
    fields: Vec<(String, u64)>,
}

fn be64(b: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}

fn put64(b: &mut [u8], at: u64, v: u64) {
    b[at as usize..at as usize + 8].copy_from_slice(&v.to_be_bytes());
}

/// Makes the overlay in `dir` (beside `base.raw`) and lists its fields.
fn overlay(dir: &Path, what: &'static str, opts: &str, cs: u64) -> Overlay {
    let p = dir.join("top.qcow2");
    let ps = p.to_str().unwrap();
    let size = (3 << 20).to_string();
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-o", opts, "-b", "base.raw", "-F", "raw", ps, &size,
    ]);
    // Guest clusters: 0 data, 1 partly written (COW from the base), 2 zero, 3 preallocated
    // zero, 4 and 5 compressed (packed into one host cluster), 6 unallocated, 7 and 8
    // compressed to more than half a cluster each (so they use host clusters of their own,
    // straddling a boundary); and one data cluster at 2 MiB, in a second L2 table with 4 KiB
    // clusters.
    let dense = dir.join("dense");
    std::fs::write(&dense, half_random(cs)).unwrap();
    let dense = dense.to_str().unwrap();
    qemu_io(
        &p,
        &[
            format!("write -c -P 0x44 {} {cs}", 4 * cs),
            format!("write -c -P 0x55 {} {cs}", 5 * cs),
            format!("write -c -s {dense} {} {cs}", 7 * cs),
            format!("write -c -s {dense} {} {cs}", 8 * cs),
            format!("write -P 0x11 0 {cs}"),
            format!("write -P 0x22 {} 512", cs + 512),
            format!("write -z -u {} {cs}", 2 * cs),
            format!("write -P 0x33 {} {cs}", 3 * cs),
            format!("write -z {} {cs}", 3 * cs),
            format!("write -P 0x66 {} {cs}", 2 << 20),
        ],
    );
    let bytes = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    let image = Image::open(&bytes[..]).unwrap();
    let h = image.header();
    let esz = h.l2_entry_size();
    let l1 = h.l1_table_offset.0;
    let mut fields = Vec::new();
    for i in 0..u64::from(h.l1_size) {
        fields.push((format!("L1 entry {i}"), l1 + 8 * i));
    }
    let l2_entry = |g: u64| {
        let l1e = be64(&bytes, l1 + g / h.l2_entries() * 8);
        (l1e & OFFSET_MASK) + g % h.l2_entries() * esz
    };
    let names = [
        "data",
        "partly written",
        "zero",
        "preallocated zero",
        "compressed",
        "second compressed",
        "unallocated",
        "dense compressed",
        "second dense compressed",
    ];
    for (g, name) in (0u64..).zip(names) {
        fields.push((format!("L2 entry of the {name} cluster"), l2_entry(g)));
    }
    fields.push((
        "L2 entry of the data cluster at 2 MiB".into(),
        l2_entry((2 << 20) / cs),
    ));
    let last = h.virtual_size / cs - 1;
    if !(last + 1).is_multiple_of(h.l2_entries()) {
        fields.push(("L2 entry past the virtual size".into(), l2_entry(last + 1)));
    }
    if esz == 16 {
        for (g, name) in [(0u64, "data"), (6, "unallocated")] {
            fields.push((
                format!("subcluster bitmap of the {name} cluster"),
                l2_entry(g) + 8,
            ));
        }
    }
    Overlay {
        what,
        cluster_bits: h.cluster_bits,
        fields,
        bytes,
    }
}

/// `len` bytes that deflate to about two thirds of their size: pseudo-random bytes, then
/// zeros.
fn half_random(len: u64) -> Vec<u8> {
    let mut x = 0x2545_f491_u32;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i < len * 2 / 3 {
                x as u8
            } else {
                0
            }
        })
        .collect()
}

/// Every single-field corruption of `word`: each bit flipped, and each host cluster of the
/// file (and 0, and the end of the file) put in the offset field, flags kept.
fn corruptions(word: u64, cluster_bits: u32, file_len: u64) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = (0..64)
        .map(|b| (format!("bit {b} flipped"), word ^ 1 << b))
        .collect();
    let cs = 1u64 << cluster_bits;
    // A compressed descriptor's offset field is the low 62 - (cluster_bits - 8) bits.
    let mask = if word & COMPRESSED != 0 {
        (1u64 << (70 - cluster_bits)) - 1
    } else {
        OFFSET_MASK
    };
    let mut offsets: Vec<u64> = (0..file_len.div_ceil(cs)).map(|c| c * cs).collect();
    offsets.push(file_len);
    for off in offsets {
        out.push((format!("offset {off:#x}"), word & !mask | off));
    }
    out.retain(|(_, w)| *w != word);
    out
}

/// `qemu-img check`'s exit status and stderr for `bytes`, written beside the base.
fn qemu_check(dir: &Path, bytes: &[u8]) -> (i32, String) {
    let p = dir.join("corrupt.qcow2");
    std::fs::write(&p, bytes).unwrap();
    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", p.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The corruptions qemu-img check reports that imgtx deliberately accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exception {
    /// A compressed descriptor moved or lengthened onto host clusters that other compressed
    /// clusters use, whose refcount (not 0) now counts fewer compressed clusters than use
    /// them: qemu reports "ERROR cluster N refcount=R reference=S" with 0 < R < S. qemu packs
    /// compressed clusters into shared host clusters, so imgtx allows compressed data to
    /// share host clusters with other compressed data; counting how many use each would
    /// need a counter per host cluster instead of two bits (the 16 MiB bound of `map`).
    /// It matters to a writer freeing one of them, not to reading: both qemu and imgtx read
    /// the same bytes for every cluster, and garbage does not decompress (imgtx's reads
    /// refuse it with `BadCompressedCluster`).
    UndercountedCompressedSharing,
}

/// The exception a corruption imgtx accepts and qemu-img check refuses falls under, if any.
fn exception(mutated_word: u64, qemu_stderr: &str) -> Option<Exception> {
    let errors: Vec<&str> = qemu_stderr
        .lines()
        .filter(|l| l.starts_with("ERROR"))
        .collect();
    let undercounted = |l: &&str| {
        let Some(rest) = l.strip_prefix("ERROR cluster ") else {
            return false;
        };
        let num = |key: &str| -> Option<u64> {
            let v = rest.split(key).nth(1)?;
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        };
        matches!((num("refcount="), num("reference=")), (Some(r), Some(s)) if 0 < r && r < s)
    };
    (mutated_word & COMPRESSED != 0 && !errors.is_empty() && errors.iter().all(undercounted))
        .then_some(Exception::UndercountedCompressedSharing)
}

#[test]
fn every_single_field_corruption_qemu_img_check_calls_corrupt_is_refused() {
    if !qemu_available() {
        return;
    }
    let layouts = [
        ("4 KiB clusters", "cluster_size=4096", 4096),
        ("64 KiB clusters", "cluster_size=65536", 65536),
        (
            "16 KiB clusters, extended L2",
            "cluster_size=16384,extended_l2=on",
            16384,
        ),
        ("v2, 4 KiB clusters", "cluster_size=4096,compat=0.10", 4096),
    ];
    // One thread per layout: qemu-img check takes most of the time.
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let handles: Vec<_> = layouts
            .into_iter()
            .map(|(what, opts, cs)| scope.spawn(move || judge_layout(what, opts, cs)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = Tally::default();
    for t in tallies {
        all.total += t.total;
        all.both += t.both;
        all.neither += t.neither;
        all.excepted += t.excepted;
        all.imgtx_only += &t.imgtx_only;
        all.failures += &t.failures;
    }
    eprintln!(
        "{} corruptions: {} refused by both, {} accepted by both, {} refused by qemu-img \
         check only as listed exceptions; refused by imgtx only:\n{}",
        all.total, all.both, all.neither, all.excepted, all.imgtx_only
    );
    assert!(
        all.failures.is_empty(),
        "qemu-img check and imgtx disagree:\n{}",
        all.failures
    );
    assert!(all.excepted > 0, "the listed exception was never exercised");
}

/// What the corruptions of one layout came to.
#[derive(Default)]
struct Tally {
    total: usize,
    both: usize,
    neither: usize,
    excepted: usize,
    /// Corruptions imgtx refuses and qemu-img check does not (one line each).
    imgtx_only: String,
    /// Corruptions qemu-img check calls corrupt and imgtx maps, outside the exceptions.
    failures: String,
}

fn judge_layout(what: &'static str, opts: &str, cs: u64) -> Tally {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("base.raw"), vec![0x5a; 3 << 20]).unwrap();
    let o = overlay(d.path(), what, opts, cs);
    assert_eq!(
        qemu_check(d.path(), &o.bytes).0,
        0,
        "{what}: clean to start"
    );
    Image::open(&o.bytes[..]).unwrap().map().unwrap();
    let mut t = Tally::default();
    for (field, at) in &o.fields {
        let word = be64(&o.bytes, *at);
        for (how, mutated) in corruptions(word, o.cluster_bits, o.bytes.len() as u64) {
            let mut bytes = o.bytes.clone();
            put64(&mut bytes, *at, mutated);
            let (code, stderr) = qemu_check(d.path(), &bytes);
            let ours = Image::open(&bytes[..]).and_then(|i| i.map());
            let case = format!("{} / {field} {word:#018x} / {how}", o.what);
            t.total += 1;
            match (code, &ours) {
                (2, Err(_)) => t.both += 1,
                (2, Ok(_)) => match exception(mutated, &stderr) {
                    Some(_) => t.excepted += 1,
                    None => {
                        let _ = writeln!(t.failures, "{case}: qemu-img check says\n{stderr}");
                    }
                },
                (0 | 3, Ok(_)) => t.neither += 1,
                // imgtx's one deliberate extra: a data cluster inside compressed data, which
                // qemu's counts miss when the refcount happens to match (docs/qcow.md,
                // host-cluster sharing).
                (0 | 3, Err(e @ Error::SharedCluster { .. })) => {
                    let _ = writeln!(t.imgtx_only, "{case}: {e}");
                }
                (0 | 3, Err(e)) => {
                    let _ = writeln!(t.failures, "{case}: qemu-img check accepts, imgtx: {e}");
                }
                (c, _) => {
                    let _ = writeln!(t.failures, "{case}: qemu-img check exit {c}\n{stderr}");
                }
            }
        }
    }
    t
}
