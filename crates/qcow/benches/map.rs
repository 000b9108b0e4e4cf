//! Benchmark: the map of a 1 TiB-virtual overlay with 100 000 allocated 64 KiB clusters.
//!
//! `cargo bench -p imgtx-qcow --bench map` builds the image (a sparse file: only metadata
//! is written), opens it and maps it several times, and prints the best and median times.

use std::time::{Duration, Instant};

#[path = "../tests/common/synth.rs"]
mod synth;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.qcow2");
    let virtual_size = 1u64 << 40;
    let clusters_total = virtual_size >> 16;
    // 100 000 clusters spread over the whole disk (a fixed LCG, so every run maps the
    // same image): worst case for the map, one L2 table per 512 MiB touched.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut picks = std::collections::BTreeSet::new();
    while picks.len() < 100_000 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        picks.insert((x >> 11) % clusters_total);
    }
    let clusters: Vec<_> = picks
        .into_iter()
        .map(|g| (g, synth::Kind::Data(0)))
        .collect();
    let built = synth::build(16, virtual_size, &clusters, false);
    built.write_to(&path);
    println!(
        "image: 1 TiB virtual, {} data clusters, {} L2 tables, file length {} bytes (sparse)",
        built.data.len(),
        built.l2_offsets.len(),
        built.file_len
    );

    measure(&path);

    // The same count of clusters as qemu lays them out: `preallocation=metadata` allocates
    // every cluster of a 6400 MiB image (102 400 clusters, a sparse file), host-contiguous.
    let qemu = dir.path().join("prealloc.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "preallocation=metadata",
        ])
        .arg(&qemu)
        .arg("6400M")
        .status();
    if made.is_ok_and(|s| s.success()) {
        println!("image: qemu-img create -o preallocation=metadata, 6400 MiB (102 400 clusters)");
        measure(&qemu);
    } else {
        println!("qemu-img not available: skipping the preallocated image");
    }
}

/// Opens and maps `path` 7 times with the sharing check (`map`) and 7 times without it
/// (`map_range` over the whole disk), and prints the best and median of each.
fn measure(path: &std::path::Path) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for checked in [false, true] {
        let mut times = Vec::new();
        let mut extents = 0;
        for _ in 0..7 {
            let t = Instant::now();
            let image = qcow::Image::open(std::fs::File::open(path).expect("open")).expect("valid");
            let map = if checked {
                image.map().expect("map")
            } else {
                let size = image.header().virtual_size;
                image.map_range(qcow::GuestOffset(0), size).expect("map")
            };
            times.push(t.elapsed());
            extents = map.len();
        }
        times.sort();
        println!(
            "open + {}: best {:.1} ms, median {:.1} ms ({extents} extents)",
            if checked {
                "map (sharing checked)"
            } else {
                "map_range (unchecked)"
            },
            ms(times[0]),
            ms(times[times.len() / 2])
        );
    }
}
