//! A tiny qcow2 v3 writer for tests and the benchmark: images with exactly the L2 entries
//! asked for, correct refcounts, and every table at a known offset so tests can corrupt it.
#![allow(dead_code)]

/// One guest cluster's mapping in a synthesized image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A data cluster filled with `fill` (or left as a hole when `Synth::with_data` is false).
    Data(u8),
    /// The zero flag, no host cluster.
    Zero,
}

/// A synthesized image: the writes to make (offset, bytes) and the file length.
pub struct Built {
    pub writes: Vec<(u64, Vec<u8>)>,
    pub file_len: u64,
    pub cluster_size: u64,
    pub reftable_offset: u64,
    pub refblock_offsets: Vec<u64>,
    pub l1_offset: u64,
    pub l1_size: u64,
    /// (l1 index, L2 table offset)
    pub l2_offsets: Vec<(u64, u64)>,
    /// (guest cluster index, host offset)
    pub data: Vec<(u64, u64)>,
}

impl Built {
    /// The image as one buffer (only for small images).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.file_len as usize];
        for (off, b) in &self.writes {
            v[*off as usize..*off as usize + b.len()].copy_from_slice(b);
        }
        v
    }

    /// Writes the image to a sparse file.
    pub fn write_to(&self, path: &std::path::Path) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(path).unwrap();
        f.set_len(self.file_len).unwrap();
        for (off, b) in &self.writes {
            f.write_all_at(b, *off).unwrap();
        }
    }

    /// Offset of the L2 entry of guest cluster `g`.
    pub fn l2_entry_offset(&self, g: u64) -> u64 {
        let per = self.cluster_size / 8;
        let (_, off) = self
            .l2_offsets
            .iter()
            .find(|(i, _)| *i == g / per)
            .expect("cluster has an L2 table");
        off + (g % per) * 8
    }
}

/// Builds a v3 image with standard L2 entries and 16-bit refcounts.
pub fn build(
    cluster_bits: u32,
    virtual_size: u64,
    clusters: &[(u64, Kind)],
    with_data: bool,
) -> Built {
    let cs = 1u64 << cluster_bits;
    let per_l2 = cs / 8;
    let l1_size = virtual_size.div_ceil(cs * per_l2);
    let l1_clusters = (l1_size * 8).div_ceil(cs).max(1);
    let mut l1_indices: Vec<u64> = clusters.iter().map(|(g, _)| g / per_l2).collect();
    l1_indices.sort_unstable();
    l1_indices.dedup();
    let mut ndata: Vec<u64> = clusters
        .iter()
        .filter(|(_, k)| matches!(k, Kind::Data(_)))
        .map(|(g, _)| *g)
        .collect();
    ndata.sort_unstable();
    let per_rb = cs * 8 / 16;
    let (mut rt, mut rb) = (1u64, 1u64);
    let total = loop {
        let n = 1 + rt + rb + l1_clusters + l1_indices.len() as u64 + ndata.len() as u64;
        let need_rb = n.div_ceil(per_rb);
        let need_rt = (need_rb * 8).div_ceil(cs);
        if need_rb == rb && need_rt == rt {
            break n;
        }
        rb = need_rb;
        rt = need_rt;
    };
    let rt_off = cs;
    let rb_off = rt_off + rt * cs;
    let l1_off = rb_off + rb * cs;
    let l2_base = l1_off + l1_clusters * cs;
    let data_base = l2_base + l1_indices.len() as u64 * cs;
    let mut writes = Vec::new();

    let mut h = vec![0u8; 112];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
    h[24..32].copy_from_slice(&virtual_size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_size as u32).to_be_bytes());
    h[40..48].copy_from_slice(&l1_off.to_be_bytes());
    h[48..56].copy_from_slice(&rt_off.to_be_bytes());
    h[56..60].copy_from_slice(&(rt as u32).to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&112u32.to_be_bytes());
    writes.push((0, h));

    let mut rtb = vec![0u8; (rt * cs) as usize];
    for i in 0..rb {
        rtb[(i * 8) as usize..(i * 8 + 8) as usize]
            .copy_from_slice(&(rb_off + i * cs).to_be_bytes());
    }
    writes.push((rt_off, rtb));
    let mut rbb = vec![0u8; (rb * cs) as usize];
    for c in 0..total {
        rbb[(c * 2) as usize..(c * 2 + 2) as usize].copy_from_slice(&1u16.to_be_bytes());
    }
    writes.push((rb_off, rbb));

    let mut l1 = vec![0u8; (l1_size * 8) as usize];
    let mut l2_offsets = Vec::new();
    for (j, i) in l1_indices.iter().enumerate() {
        let off = l2_base + j as u64 * cs;
        l1[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&(off | 1 << 63).to_be_bytes());
        l2_offsets.push((*i, off));
    }
    writes.push((l1_off, l1));

    let mut l2s: Vec<Vec<u8>> = vec![vec![0u8; cs as usize]; l1_indices.len()];
    let mut data = Vec::new();
    for (g, k) in clusters {
        let j = l1_indices.binary_search(&(g / per_l2)).unwrap();
        let at = ((g % per_l2) * 8) as usize;
        let entry = match k {
            Kind::Zero => 1u64,
            Kind::Data(fill) => {
                let host = data_base + ndata.binary_search(g).unwrap() as u64 * cs;
                if with_data {
                    writes.push((host, vec![*fill; cs as usize]));
                }
                data.push((*g, host));
                host | 1 << 63
            }
        };
        l2s[j][at..at + 8].copy_from_slice(&entry.to_be_bytes());
    }
    for (j, t) in l2s.into_iter().enumerate() {
        writes.push((l2_base + j as u64 * cs, t));
    }
    Built {
        writes,
        file_len: total * cs,
        cluster_size: cs,
        reftable_offset: rt_off,
        refblock_offsets: (0..rb).map(|i| rb_off + i * cs).collect(),
        l1_offset: l1_off,
        l1_size,
        l2_offsets,
        data,
    }
}
