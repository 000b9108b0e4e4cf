//! Property tests against qemu: random images made by random qemu-io write sequences must
//! map exactly like `qemu-img map` and read exactly like `qemu-img convert -O raw`.
//!
//! 64 random images per run by default; `PROPTEST_CASES=2000 cargo test -p imgtx-qcow
//! --release --test proptest_qemu` runs more.
#![allow(missing_docs)]

mod common;

use common::assert_matches_qemu;
use common::synth::{build, Kind};
use proptest::prelude::*;
use qcow::{ExtentKind, GuestOffset, HostOffset, Image};
use testkit::qemu;

#[derive(Debug, Clone)]
struct Config {
    cluster_bits: u32,
    extended_l2: bool,
    v2: bool,
    zstd: bool,
    raw_backing: bool,
    clusters: u64,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Data,
    Zero,
    ZeroUnmap,
    Compressed,
    Discard,
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop::sample::select(vec![9u32, 12, 14, 16, 18, 21]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.25),
    )
        .prop_map(|(cluster_bits, ext, v2, zstd, raw_backing)| {
            let extended_l2 = ext && cluster_bits >= 14;
            let v2 = v2 && !extended_l2 && !zstd;
            // Keep the guest small enough that qemu-img convert stays fast.
            let clusters = ((32u64 << 20) >> cluster_bits).min(96);
            Config {
                cluster_bits,
                extended_l2,
                v2,
                zstd,
                raw_backing,
                clusters,
            }
        })
}

fn ops() -> impl Strategy<Value = Vec<(Op, u64, u64, u8)>> {
    let op = prop_oneof![
        4 => Just(Op::Data),
        2 => Just(Op::Zero),
        2 => Just(Op::ZeroUnmap),
        2 => Just(Op::Compressed),
        1 => Just(Op::Discard),
    ];
    // (op, start in 1/1000 of the disk, length in 1/1000 of the disk, pattern)
    prop::collection::vec((op, 0u64..1000, 1u64..120, any::<u8>()), 1..24)
}

fn command(c: &Config, op: Op, start: u64, len: u64, pat: u8) -> String {
    let cs = 1u64 << c.cluster_bits;
    let size = cs * c.clusters;
    match op {
        Op::Compressed => {
            // Compressed writes must cover whole clusters.
            let first = start * c.clusters / 1000;
            let n = (len * c.clusters / 1000).clamp(1, c.clusters - first);
            format!("write -c -P {pat} {} {}", first * cs, n * cs)
        }
        _ => {
            let off = (start * size / 1000) / 512 * 512;
            let l = ((len * size / 1000) / 512 * 512).clamp(512, size - off);
            match op {
                Op::Data => format!("write -P {pat} {off} {l}"),
                Op::Zero => format!("write -z {off} {l}"),
                Op::ZeroUnmap => format!("write -z -u {off} {l}"),
                _ => format!("discard {off} {l}"),
            }
        }
    }
}

fn run_case(c: &Config, ops: &[(Op, u64, u64, u8)]) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("img.qcow2");
    let cs = 1u64 << c.cluster_bits;
    let size = (cs * c.clusters).to_string();
    let mut opts = format!("cluster_size={cs}");
    if c.extended_l2 {
        opts.push_str(",extended_l2=on");
    }
    if c.v2 {
        opts.push_str(",compat=0.10");
    }
    if c.zstd {
        opts.push_str(",compression_type=zstd");
    }
    let ps = p.to_str().unwrap();
    if c.raw_backing {
        let base = d.path().join("base.raw");
        std::fs::write(&base, vec![0x5a; cs as usize * c.clusters as usize]).unwrap();
        qemu::img(&[
            "create", "-q", "-f", "qcow2", "-o", &opts, "-b", "base.raw", "-F", "raw", ps,
        ]);
    } else {
        qemu::img(&["create", "-q", "-f", "qcow2", "-o", &opts, ps, &size]);
    }
    // qemu only writes compressed clusters into unallocated ones: issue the compressed
    // writes first, on disjoint cluster ranges, then everything else over them.
    let mut used = vec![false; c.clusters as usize];
    let mut cmds: Vec<String> = Vec::new();
    for &(o, s, l, pat) in ops.iter().filter(|op| matches!(op.0, Op::Compressed)) {
        let cmd = command(c, o, s, l, pat);
        let mut words = cmd.split(' ').rev();
        let n: u64 = words.next().unwrap().parse().unwrap();
        let off: u64 = words.next().unwrap().parse().unwrap();
        let range = (off / cs) as usize..((off + n) / cs) as usize;
        if used[range.clone()].iter().all(|u| !u) {
            used[range].fill(true);
            cmds.push(cmd);
        }
    }
    cmds.extend(
        ops.iter()
            .filter(|op| !matches!(op.0, Op::Compressed))
            .map(|&(o, s, l, pat)| command(c, o, s, l, pat)),
    );
    qemu::io(&p, &cmds);
    assert_matches_qemu(&p, d.path(), !c.raw_backing);
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

#[test]
fn random_qemu_images_map_and_read_like_qemu() {
    if !qemu::available() {
        return;
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(config(), ops()), |(c, o)| {
            run_case(&c, &o);
            Ok(())
        })
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Synthesized images (no qemu needed): the map covers the disk exactly, is coalesced,
    /// and agrees with what was written.
    #[test]
    fn synthesized_images_map_and_read_as_built(
        bits in 9u32..=16,
        picks in prop::collection::btree_map(0u64..4096, any::<(bool, u8)>(), 0..64),
    ) {
        let cs = 1u64 << bits;
        let vsize = 4096 * cs;
        let clusters: Vec<_> = picks
            .iter()
            .map(|(g, (zero, fill))| (*g, if *zero { Kind::Zero } else { Kind::Data(*fill) }))
            .collect();
        let b = build(bits, vsize, &clusters, true);
        let bytes = b.to_vec();
        let image = Image::open(&bytes[..]).unwrap();
        let map = image.map().unwrap();
        let mut pos = 0;
        for w in map.windows(2) {
            let mergeable = match (w[0].kind, w[1].kind) {
                (ExtentKind::Data { host: a }, ExtentKind::Data { host: b }) => a.0 + w[0].len == b.0,
                (a, b) => a == b,
            };
            prop_assert!(!mergeable, "extents {:?} and {:?} were not coalesced", w[0], w[1]);
        }
        for e in &map {
            prop_assert_eq!(e.guest.0, pos);
            pos += e.len;
        }
        prop_assert_eq!(pos, vsize);
        for &(g, host) in &b.data {
            let e = map.iter().find(|e| e.guest.0 <= g * cs && g * cs < e.guest.0 + e.len).unwrap();
            let ExtentKind::Data { host: h } = e.kind else { panic!("{e:?}") };
            prop_assert_eq!(HostOffset(h.0 + (g * cs - e.guest.0)), HostOffset(host));
            let mut buf = vec![0u8; cs as usize];
            image.read_at(&mut buf, GuestOffset(g * cs)).unwrap();
            let fill = picks[&g].1;
            prop_assert!(buf.iter().all(|x| *x == fill));
        }
    }
}
