//! A read-ahead pipeline for bulk copies: reader threads read the next pieces while the
//! caller writes the current one, in bounded memory; and [`warm`], which reads a file into
//! the page cache ahead of a copy that will need it.
//!
//! A commit copies hundreds of MiB from one file into another. Done serially, the disk idles
//! while the copy writes into the page cache, and the CPU idles while a read waits for the
//! disk. [`read_ahead`] overlaps the two: `depth` reader threads take the pieces in the order
//! given and issue positional reads into at most `depth + 1` recycled buffers, so several
//! reads are in flight (what small, scattered pieces need); the caller's `write` gets every
//! piece in the order given.
//! Reads go through [`File::read_exact_direct_at`] into buffers aligned for direct I/O, so a
//! real file skips the page cache when the pieces are aligned, unless a piece is marked
//! `cached`. It works through [`File`], so the simulated disk of the crash tests runs it too.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;

use crate::{File, DIRECT_ALIGN};

/// One piece to read: `len` bytes at `offset` of the source, and what the caller needs to
/// know about it when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<T> {
    /// Offset in the source file.
    pub offset: u64,
    /// Length in bytes.
    pub len: usize,
    /// The caller's label for the piece (e.g. where it goes).
    pub tag: T,
    /// The piece is most likely in the page cache already (see [`warm`]): read it from
    /// there instead of directly from the device, which would ignore the cache.
    pub cached: bool,
}

/// Why [`read_ahead`] stopped.
#[derive(Debug)]
pub enum Stopped<E> {
    /// Reading the source failed (or it ended early) at `offset`.
    Read {
        /// Where the failed read started.
        offset: u64,
        /// What went wrong.
        source: io::Error,
    },
    /// The caller's `write` failed.
    Write(E),
}

/// Reads every piece of `pieces` from `src` and passes it to `write`, in order, with up to
/// `depth` reader threads, so up to `depth` pieces in flight (0: no thread, one read at a time).
/// Memory: at most `depth + 1` buffers of the largest piece.
///
/// # Errors
/// The first failure; pieces after it are neither read further nor written.
pub fn read_ahead<F, T, I, E>(
    src: &F,
    pieces: I,
    depth: usize,
    mut write: impl FnMut(&Piece<T>, &[u8]) -> Result<(), E>,
) -> Result<(), Stopped<E>>
where
    F: File + ?Sized,
    T: Send,
    I: IntoIterator<Item = Piece<T>>,
    I::IntoIter: Send,
{
    let pieces = pieces.into_iter();
    if depth == 0 {
        let mut buf = Vec::new();
        for piece in pieces {
            let (at, read) = fill(src, &mut buf, &piece);
            read.map_err(|source| Stopped::Read {
                offset: piece.offset,
                source,
            })?;
            write(&piece, &buf[at..at + piece.len]).map_err(Stopped::Write)?;
        }
        return Ok(());
    }
    let next = Mutex::new(pieces.enumerate());
    let (full_tx, full_rx) = mpsc::sync_channel::<Filled<T>>(depth);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..=depth {
        // Cannot fail: the receiver is alive.
        let _ = free_tx.send(Vec::new());
    }
    let free_rx = Mutex::new(free_rx);
    thread::scope(|s| {
        for _ in 0..depth {
            let (next, free_rx, full_tx) = (&next, &free_rx, full_tx.clone());
            s.spawn(move || reader(src, next, free_rx, &full_tx));
        }
        drop(full_tx);
        let result = writer(&full_rx, &free_tx, &mut write);
        // Dropping the receivers stops the readers at their next send or receive.
        drop(full_rx);
        drop(free_tx);
        result
    })
}

/// How much [`warm`] reads at a time.
const WARM_PIECE: usize = 1 << 20;

/// Reads `src` from offset 0 up to `len` bytes, front to back, through the page cache and into
/// nothing, until `stop` is set; returns how far it got. Run on a thread while the device has
/// time to spare (a commit's pre-image save waits on writes to new blocks), it leaves the
/// data a later copy reads in the page cache, so that copy then reads memory, not the disk.
/// Errors end it early: the copy reads whatever was not warmed itself and reports failures.
pub fn warm<F: File + ?Sized>(src: &F, len: u64, stop: &AtomicBool) -> u64 {
    let mut buf = vec![0u8; WARM_PIECE];
    let mut done = 0u64;
    while done < len && !stop.load(Ordering::Relaxed) {
        let n = usize::try_from(len - done).map_or(WARM_PIECE, |left| left.min(WARM_PIECE));
        if src.read_exact_at(&mut buf[..n], done).is_err() {
            break;
        }
        done += n as u64;
    }
    done
}

/// A piece's place in the order, the piece, the buffer holding it from the offset given, and
/// how its read went.
type Filled<T> = (usize, Piece<T>, Vec<u8>, usize, io::Result<()>);

/// Reads `piece` into `buf` at an offset aligned for direct I/O; returns that offset.
fn fill<F: File + ?Sized, T>(
    src: &F,
    buf: &mut Vec<u8>,
    piece: &Piece<T>,
) -> (usize, io::Result<()>) {
    // Never shrunk, so a recycled buffer is allocated (and zeroed) once, not per piece.
    let need = piece.len.saturating_add(DIRECT_ALIGN);
    if buf.len() < need {
        buf.resize(need, 0);
    }
    let at = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
    let dst = &mut buf[at..at + piece.len];
    let read = if piece.cached {
        src.read_exact_at(dst, piece.offset)
    } else {
        // What an edit just left in memory is read from there; the rest direct. The page
        // cache hands out whole pages, so the rest still starts aligned for direct I/O.
        src.read_cached_at(dst, piece.offset)
            .and_then(|n| src.read_exact_direct_at(&mut dst[n..], piece.offset + n as u64))
    };
    (at, read)
}

fn reader<F: File + ?Sized, T, I: Iterator<Item = (usize, Piece<T>)>>(
    src: &F,
    next: &Mutex<I>,
    free: &Mutex<Receiver<Vec<u8>>>,
    full: &SyncSender<Filled<T>>,
) {
    loop {
        // A buffer first, then a piece: a reader that holds a piece can always finish it, so
        // the writer, waiting for the next piece in order, never waits forever.
        let Ok(mut buf) = lock(free).recv() else {
            return;
        };
        let Some((seq, piece)) = lock(next).next() else {
            return;
        };
        let (at, read) = fill(src, &mut buf, &piece);
        let failed = read.is_err();
        if full.send((seq, piece, buf, at, read)).is_err() || failed {
            return;
        }
    }
}

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    // A reader that panicked while holding the lock left nothing half-changed in it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn writer<T, E>(
    full: &Receiver<Filled<T>>,
    free: &mpsc::Sender<Vec<u8>>,
    write: &mut impl FnMut(&Piece<T>, &[u8]) -> Result<(), E>,
) -> Result<(), Stopped<E>> {
    // Readers finish out of order; pieces wait here (at most depth + 1 of them, one per
    // buffer) until every earlier one is written.
    let mut waiting = BTreeMap::new();
    let mut due = 0;
    // The loop ends when every reader is done and has dropped its sender.
    while let Ok((seq, piece, buf, at, read)) = full.recv() {
        waiting.insert(seq, (piece, buf, at, read));
        while let Some((piece, buf, at, read)) = waiting.remove(&due) {
            if let Err(source) = read {
                return Err(Stopped::Read {
                    offset: piece.offset,
                    source,
                });
            }
            write(&piece, &buf[at..at + piece.len]).map_err(Stopped::Write)?;
            due += 1;
            // The readers may have finished and gone: then the buffer is simply dropped.
            let _ = free.send(buf);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimFs;
    use crate::Fs;
    use std::path::Path;

    fn source(fs: &SimFs, bytes: &[u8]) -> <SimFs as Fs>::File {
        fs.create_dir(Path::new("/d")).unwrap();
        let f = fs.create_new(Path::new("/d/src")).unwrap();
        f.write_all_at(bytes, 0).unwrap();
        f
    }

    #[test]
    fn every_piece_arrives_in_order_with_its_own_bytes() {
        let fs = SimFs::new();
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let src = source(&fs, &bytes);
        let pieces: Vec<Piece<usize>> = (0..50)
            .map(|i| Piece {
                offset: (i * 197) as u64,
                len: 13 + i,
                tag: i,
                cached: i % 2 == 0,
            })
            .collect();

        let mut got = Vec::new();
        let r: Result<(), Stopped<()>> = read_ahead(&src, pieces.clone(), 3, |p, data| {
            got.push((p.tag, data.to_vec()));
            Ok(())
        });

        r.unwrap();
        assert_eq!(got.len(), pieces.len());
        for (p, (tag, data)) in pieces.iter().zip(&got) {
            assert_eq!(*tag, p.tag);
            let at = usize::try_from(p.offset).unwrap();
            assert_eq!(data[..], bytes[at..at + p.len]);
        }
    }

    #[test]
    fn a_read_past_the_end_stops_the_copy_there() {
        let fs = SimFs::new();
        let src = source(&fs, &[1; 100]);
        let pieces = [(0, 50), (50, 50), (90, 50), (0, 10)].map(|(offset, len)| Piece {
            offset,
            len,
            tag: (),
            cached: false,
        });

        let mut written = 0;
        let r: Result<(), Stopped<()>> = read_ahead(&src, pieces, 2, |_, _| {
            written += 1;
            Ok(())
        });

        assert!(matches!(r, Err(Stopped::Read { offset: 90, .. })));
        assert_eq!(written, 2);
    }

    #[test]
    fn a_failed_write_stops_the_reader_too() {
        let fs = SimFs::new();
        let src = source(&fs, &[1; 1000]);
        let pieces = (0..100).map(|i| Piece {
            offset: i,
            len: 10,
            tag: i,
            cached: false,
        });

        let mut calls = 0;
        let r = read_ahead(&src, pieces, 4, |p, _| {
            calls += 1;
            if p.tag == 5 {
                Err("disk full")
            } else {
                Ok(())
            }
        });

        assert!(matches!(r, Err(Stopped::Write("disk full"))));
        assert_eq!(calls, 6);
    }

    #[test]
    fn warm_reads_up_to_len_and_stops_when_told() {
        let fs = SimFs::new();
        let src = source(&fs, &vec![3; 3 * WARM_PIECE + 5]);
        let go = AtomicBool::new(false);
        let stopped = AtomicBool::new(true);

        let all = warm(&src, 3 * WARM_PIECE as u64 + 5, &go);
        let past_end = warm(&src, 5 * WARM_PIECE as u64, &go);
        let none = warm(&src, 100, &stopped);

        assert_eq!(all, 3 * WARM_PIECE as u64 + 5);
        assert_eq!(
            past_end,
            3 * WARM_PIECE as u64,
            "stops at the first failed read"
        );
        assert_eq!(none, 0);
    }
}
