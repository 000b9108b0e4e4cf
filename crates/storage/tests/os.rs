//! The real file system's reads of what the page cache holds: a commit right after an edit
//! reads from memory what it would otherwise read again from the disk.

use std::io::Write;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use storage::{File, Fs, OsFs};

#[test]
fn read_cached_at_reads_what_the_page_cache_holds_and_nothing_else() {
    let dir = std::env::temp_dir().join(format!("imgtx-storage-os-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("f");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut w = std::fs::File::create(&path).unwrap();
    w.write_all(&data).unwrap();
    w.sync_all().unwrap();
    let f = OsFs.open(&path, false).unwrap();
    let mut buf = vec![0u8; data.len()];

    // Just written: in the page cache.
    let warm = f.read_cached_at(&mut buf, 0).unwrap();
    // Its pages dropped (clean after the sync, so they go): nothing to read from memory.
    posix_fadvise(&w, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
    let mut cold_buf = vec![0u8; data.len()];
    let cold = f.read_cached_at(&mut cold_buf, 0).unwrap();

    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        warm,
        data.len(),
        "a file just written reads whole from the cache"
    );
    assert_eq!(buf, data);
    assert!(
        cold < data.len(),
        "{cold} bytes read from a cache that was dropped"
    );
}
