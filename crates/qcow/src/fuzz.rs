//! The body of the fuzz target, public so that the corpus can be replayed by ordinary tests.

use crate::{GuestOffset, Image};

/// Opens `data` as an image and, if that succeeds, maps it, reads every extent (bounded)
/// and takes an inventory. Must never panic, hang or allocate without bound, whatever the
/// input; errors are expected and ignored.
pub fn check_image(data: &[u8]) {
    let Ok(image) = Image::open(data) else {
        return;
    };
    let Ok(map) = image.map() else {
        return;
    };
    let cs = image.header().cluster_size();
    let mut buf = vec![0u8; (cs * 2) as usize];
    // Read at most a few clusters of each of the first extents: enough to reach every
    // decoder path without making the fuzzer slow on huge virtual sizes.
    for e in map.iter().take(64) {
        let n = e.len.min(buf.len() as u64) as usize;
        let _ = image.read_at(&mut buf[..n], e.guest);
        if e.len > cs + 1 {
            let _ = image.read_at(&mut buf[..n], GuestOffset(e.guest.0 + e.len - n as u64));
        }
    }
    let ranges: Vec<_> = map.iter().take(64).map(|e| (e.guest, e.len)).collect();
    let _ = image.inventory(&ranges);
}
