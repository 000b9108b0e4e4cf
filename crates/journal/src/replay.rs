//! Replay: reading the header and the records back, and deciding what a bad record means.
//!
//! The rule, in one place ([`classify_damage`]): when the record at offset `X` (expected
//! sequence number `n`) is incomplete, zero-filled or fails its checksum, every later offset
//! that is a multiple of 8 is tried as a frame start. A frame there counts only if its checksum
//! validates with *this* log's nonce. If such a frame says, through its `synced` field, that
//! record `n` had already been made durable when it was written, then record `n` was once
//! durable and is now damaged: that is corruption, and replay refuses. Otherwise every later
//! valid frame belongs to the same unsynced batch as `n` (the disk may persist unsynced writes
//! in any order), so the whole tail from `X` is "never written": a torn tail.
//!
//! The scan checksums at most twice the tail's length (plus 1 MiB) of candidate payloads, so it
//! stays linear on a crafted tail; past that budget it refuses (corruption), never truncates.
//!
//! Padding frames (written by `sync` and `open` so that no append shares a 4 KiB block with
//! synced bytes) are frames like any other here: they are skipped when good and count as
//! evidence in the scan. Within an unsynced batch padding can only come last, carrying the
//! next record's sequence number, so it never vouches for a record before it.
//!
//! Limits: damage inside the last synced batch, when nothing was appended after its sync, looks
//! exactly like a torn tail and is treated as one (no later record exists to testify that the
//! batch was synced). Stale frames of an earlier log never validate (their nonce differs).

use std::path::Path;

use serde::de::DeserializeOwned;
use storage::File;

use crate::error::{io_err, Error, Result};
use crate::format::{
    decode_payload, frame_crc, frame_len, header_crc, header_len, parse_fixed_header,
    parse_frame_header, FrameHeader, FrameKind, Header, HeaderProblem, ALIGN, BLOCK,
    FRAME_HEADER_LEN, HEADER_FIXED_LEN, MAX_RECORD_LEN, NONCE_LEN, VERSION,
};
use crate::Tail;

/// How replay treats damaged records. The default is [`RecoveryMode::TolerateTornTail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// A damaged tail is an append that never completed: it is reported as [`Tail::Torn`]
    /// (and truncated when opening for append). A damaged record that later records prove
    /// was durable is [`Error::Corrupt`].
    ///
    /// The proof: every frame carries `synced`, the count of records known durable when it was
    /// written. After a damaged record `n`, every later 8-byte-aligned offset is tried; a frame
    /// there that validates with this log's nonce and has `synced > n` (or `seq <= n`) makes
    /// the damage corruption. Valid frames with `synced <= n` were in the same unsynced batch,
    /// which a crash may persist in any order, so they are part of the torn tail. Limit:
    /// damage inside the last synced batch, with nothing appended after its sync, is read as
    /// a torn tail.
    #[default]
    TolerateTornTail,
    /// Any damaged record, even at the tail, is [`Error::Corrupt`]. For checking a journal
    /// that was closed cleanly.
    AbsoluteConsistency,
    /// Forensic salvage: keep the valid prefix and report everything from the first damaged
    /// record on as a torn tail, even when valid records follow. Loses records that were
    /// durable; only for an explicit user request (`--force`).
    SalvagePrefix,
}

/// The outcome of scanning a journal file, before the mode decides what it means.
pub(crate) struct Scan<T> {
    pub header: Header,
    pub records: Vec<T>,
    pub tail: Tail,
    /// Offset just past the last valid record.
    pub valid_len: u64,
}

/// Reads and validates the header of `file` (whose length is `file_len`).
///
/// `create` writes the header and its padding (at least one [`BLOCK`]) in one call and syncs
/// it before any record is appended, and no later write touches those blocks. So a damaged
/// header in a file of at most one block is an interrupted creation (no record can follow
/// it: [`Error::HeaderIncomplete`]); in a longer file it is damage to a durable header
/// ([`Error::BadHeader`]), whatever the bytes look like, all zeros included.
pub(crate) fn read_header<F: File>(file: &F, path: &Path, file_len: u64) -> Result<Header> {
    let pstr = || path.display().to_string();
    let damaged = |reason: String| {
        if file_len <= BLOCK {
            Error::HeaderIncomplete {
                path: pstr(),
                len: file_len,
            }
        } else {
            Error::BadHeader {
                path: pstr(),
                reason,
            }
        }
    };
    if file_len < HEADER_FIXED_LEN {
        return Err(Error::HeaderIncomplete {
            path: pstr(),
            len: file_len,
        });
    }
    let mut fixed = [0u8; HEADER_FIXED_LEN as usize];
    file.read_exact_at(&mut fixed, 0).map_err(io_err(path))?;
    let raw = parse_fixed_header(&fixed).map_err(|p| match p {
        HeaderProblem::NeverWritten => damaged(format!(
            "the header is all zeros, but the file ({file_len} bytes) is longer than a header"
        )),
        HeaderProblem::Bad(reason) => damaged(reason),
        HeaderProblem::Version(version) => Error::UnsupportedVersion {
            path: pstr(),
            version,
            supported: VERSION,
        },
    })?;
    // The identity length is not trusted before the checksum: a file too short for the header
    // it claims is an interrupted creation only if it cannot hold a record either.
    let len = header_len(raw.identity_len);
    if len > file_len {
        return Err(damaged(format!(
            "the header claims {len} bytes, more than the file's {file_len}"
        )));
    }
    // Bounded by MAX_IDENTITY_LEN above, so this allocation is small.
    let mut identity = vec![0u8; raw.identity_len as usize];
    file.read_exact_at(&mut identity, HEADER_FIXED_LEN)
        .map_err(io_err(path))?;
    if header_crc(&fixed[..36], &identity) != raw.crc {
        return Err(damaged("header checksum mismatch".into()));
    }
    Ok(Header {
        nonce: raw.nonce,
        identity,
    })
}

/// Positional reads through a small cache, so scanning at every 8-byte offset does not cost a
/// system call each.
struct Reader<'a, F> {
    file: &'a F,
    file_len: u64,
    buf: Vec<u8>,
    buf_off: u64,
}

const CHUNK: u64 = 256 * 1024;

/// Payload bytes the damage scan may checksum beyond twice the tail's length.
const SCAN_SLACK: u64 = 1 << 20;

/// The payload bytes a scan past damage may still checksum: each candidate frame's length is
/// spent before its payload is read; once it runs out, `exhausted` says so and no more are.
struct ScanBudget {
    left: std::cell::Cell<u64>,
    exhausted: std::cell::Cell<bool>,
}

impl ScanBudget {
    /// A budget of `bytes` plus [`SCAN_SLACK`].
    fn new(bytes: u64) -> Self {
        Self {
            left: std::cell::Cell::new(bytes.saturating_add(SCAN_SLACK)),
            exhausted: std::cell::Cell::new(false),
        }
    }

    /// Spends `h`'s payload length; false (and exhausted from then on) when it is not left.
    fn spend(&self, h: &FrameHeader) -> bool {
        match self.left.get().checked_sub(u64::from(h.len)) {
            Some(left) => {
                self.left.set(left);
                true
            }
            None => {
                self.exhausted.set(true);
                false
            }
        }
    }
}

impl<'a, F: File> Reader<'a, F> {
    fn new(file: &'a F, file_len: u64) -> Self {
        Self {
            file,
            file_len,
            buf: Vec::new(),
            buf_off: 0,
        }
    }

    /// Fills `out` from `off`; the caller has checked that the range lies inside the file.
    fn read(&mut self, off: u64, out: &mut [u8]) -> std::io::Result<()> {
        let len = out.len() as u64;
        if len > CHUNK {
            return self.file.read_exact_at(out, off);
        }
        let end = off + len;
        if off < self.buf_off || end > self.buf_off + self.buf.len() as u64 {
            let n = CHUNK.min(self.file_len - off).max(len);
            self.buf.resize(n as usize, 0);
            self.file.read_exact_at(&mut self.buf, off)?;
            self.buf_off = off;
        }
        let start = (off - self.buf_off) as usize;
        out.copy_from_slice(&self.buf[start..start + out.len()]);
        Ok(())
    }
}

/// A frame whose checksum validated.
struct Frame {
    head: FrameHeader,
    payload: Vec<u8>,
    /// Frame length including padding.
    total: u64,
}

/// Reads the frame at `off`: `Ok(Err(reason))` when it is not a valid frame of this log.
fn read_frame<F: File>(
    r: &mut Reader<'_, F>,
    nonce: &[u8; NONCE_LEN],
    off: u64,
    accept: impl Fn(&FrameHeader) -> bool,
) -> std::io::Result<Result<Frame, String>> {
    let remaining = r.file_len - off;
    if remaining < FRAME_HEADER_LEN {
        return Ok(Err(format!(
            "incomplete record header ({remaining} bytes left)"
        )));
    }
    let mut hb = [0u8; FRAME_HEADER_LEN as usize];
    r.read(off, &mut hb)?;
    let head = parse_frame_header(&hb);
    // Never trust the length before the checksum: bound it by the maximum and by what is left
    // of the file before allocating anything.
    if head.len > MAX_RECORD_LEN {
        return Ok(Err(format!(
            "record length {} is over the maximum",
            head.len
        )));
    }
    let total = frame_len(head.len);
    if total > remaining {
        return Ok(Err(format!(
            "record of {total} bytes runs past the end of the file ({remaining} bytes left)"
        )));
    }
    if !accept(&head) {
        return Ok(Err("implausible record header".into()));
    }
    let mut payload = vec![0u8; head.len as usize];
    r.read(off + FRAME_HEADER_LEN, &mut payload)?;
    if frame_crc(nonce, &head, &payload) != head.crc {
        return Ok(Err("record checksum mismatch".into()));
    }
    Ok(Ok(Frame {
        head,
        payload,
        total,
    }))
}

/// Replays the records of an open journal file. Reads only.
pub(crate) fn scan<F: File, T: DeserializeOwned>(
    file: &F,
    path: &Path,
    mode: RecoveryMode,
) -> Result<Scan<T>> {
    let file_len = file.len().map_err(io_err(path))?;
    let header = read_header(file, path, file_len)?;
    let mut r = Reader::new(file, file_len);
    let mut off = header.records_start();
    let mut records = Vec::new();
    let mut next: u64 = 0;
    let tail = loop {
        if off == file_len {
            break Tail::Clean;
        }
        let frame = read_frame(&mut r, &header.nonce, off, |_| true).map_err(io_err(path))?;
        let reason = match frame {
            Ok(f) if f.head.seq == next && f.head.synced <= next => {
                // The checksum passed, so these bytes are what the writer wrote: anything the
                // writer never writes (an unknown kind, a payload that does not decode, padding
                // that misses a block boundary) is corruption or version skew, never a torn
                // write.
                let corrupt = |reason: String| Error::Corrupt {
                    offset: off,
                    reason: format!("record {next}: {reason}"),
                    source: None,
                };
                if f.head.reserved != 0 {
                    return Err(corrupt(format!(
                        "reserved frame field is {:#x}, not 0",
                        f.head.reserved
                    )));
                }
                let end = off + f.total;
                match FrameKind::from_u32(f.head.kind) {
                    Some(FrameKind::Record) => {
                        let record =
                            decode_payload::<T>(&f.payload).map_err(|e| Error::Corrupt {
                                offset: off,
                                reason: format!("record {next} is not a record"),
                                source: Some(e),
                            })?;
                        records.push(record);
                        next += 1;
                    }
                    Some(FrameKind::Pad) if end % BLOCK == 0 => {}
                    Some(FrameKind::Pad) => {
                        return Err(corrupt(format!(
                            "padding ends at {end:#x}, not at a {BLOCK}-byte block boundary"
                        )))
                    }
                    None => return Err(corrupt(format!("unknown frame kind {}", f.head.kind))),
                }
                off = end;
                continue;
            }
            Ok(f) => format!(
                "record has sequence number {} (synced {}) where {next} was expected",
                f.head.seq, f.head.synced
            ),
            Err(reason) => reason,
        };
        break resolve(&mut r, &header.nonce, off, next, &reason, mode, path)?;
    };
    let valid_len = match tail {
        Tail::Clean => file_len,
        Tail::Torn { valid_len, .. } => valid_len,
    };
    Ok(Scan {
        header,
        records,
        tail,
        valid_len,
    })
}

/// One stretch of a journal file as [`salvage`](crate::salvage) finds it, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Salvaged {
    /// A record frame whose checksum validates with this log's nonce, wherever it lies and
    /// whatever its sequence number says.
    Record {
        /// Byte offset of the frame.
        offset: u64,
        /// The sequence number its header carries.
        seq: u64,
        /// Its payload, exactly as stored (the postcard encoding of one record).
        payload: Vec<u8>,
    },
    /// Bytes in which no frame of this log starts: damage, a torn append, an edit, or a
    /// frame the writer never writes (an unknown kind, padding off a block boundary).
    Damaged {
        /// Byte offset of the first such byte.
        offset: u64,
        /// How many bytes, up to the next valid frame or the end of the file.
        len: u64,
    },
}

/// Every frame of a journal that validates, in file order, and the stretches between them
/// that hold none. See [`salvage`](crate::salvage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvage {
    /// The validated file header.
    pub header: Header,
    /// Records and damaged stretches, in file order; padding frames are left out.
    pub items: Vec<Salvaged>,
}

/// Walks the frames of an open journal file for [`salvage`](crate::salvage). Reads only.
pub(crate) fn salvage_file<F: File>(file: &F, path: &Path) -> Result<Salvage> {
    let file_len = file.len().map_err(io_err(path))?;
    let header = read_header(file, path, file_len)?;
    let mut r = Reader::new(file, file_len);
    // Checksumming payloads is the expensive step. Valid frames do not overlap, so they cost
    // at most the file's length; the rest of the budget bounds the search for the next frame
    // after damage, where a crafted stretch could make every offset look like a frame header.
    let budget = ScanBudget::new(file_len.saturating_mul(3));
    let affordable = |h: &FrameHeader| budget.spend(h);
    let mut items = Vec::new();
    let mut off = header.records_start();
    while off < file_len {
        let frame = read_frame(&mut r, &header.nonce, off, affordable).map_err(io_err(path))?;
        match frame {
            Ok(f) if f.head.reserved == 0 && is_written_kind(&f, off) => {
                if f.head.kind == FrameKind::Record.to_u32() {
                    items.push(Salvaged::Record {
                        offset: off,
                        seq: f.head.seq,
                        payload: f.payload,
                    });
                }
                off += f.total;
                continue;
            }
            _ => {}
        }
        // Damage: the next frame of this log starts at some later multiple of 8, or nowhere.
        let mut next = None;
        let mut y = off + ALIGN;
        while !budget.exhausted.get() && y + FRAME_HEADER_LEN <= file_len {
            if let Ok(f) = read_frame(&mut r, &header.nonce, y, affordable).map_err(io_err(path))? {
                if f.head.reserved == 0 && is_written_kind(&f, y) {
                    next = Some(y);
                    break;
                }
            }
            y += ALIGN;
        }
        // Once the budget is spent, the rest of the file counts as damaged: a forensic scan
        // that gives up says so rather than guessing.
        let end = next.unwrap_or(file_len);
        items.push(Salvaged::Damaged {
            offset: off,
            len: end - off,
        });
        off = end;
    }
    Ok(Salvage { header, items })
}

/// Whether the validated frame `f` at `off` is one the writer writes: a record, or padding
/// that ends on a block boundary.
fn is_written_kind(f: &Frame, off: u64) -> bool {
    match FrameKind::from_u32(f.head.kind) {
        Some(FrameKind::Record) => true,
        Some(FrameKind::Pad) => (off + f.total).is_multiple_of(BLOCK),
        None => false,
    }
}

/// Decides what the damaged record at `off` means under `mode`.
fn resolve<F: File>(
    r: &mut Reader<'_, F>,
    nonce: &[u8; NONCE_LEN],
    off: u64,
    next: u64,
    reason: &str,
    mode: RecoveryMode,
    path: &Path,
) -> Result<Tail> {
    let torn = Tail::Torn {
        valid_len: off,
        discarded: r.file_len - off,
    };
    match mode {
        RecoveryMode::AbsoluteConsistency => Err(Error::Corrupt {
            offset: off,
            reason: format!("record {next}: {reason}"),
            source: None,
        }),
        RecoveryMode::SalvagePrefix => Ok(torn),
        RecoveryMode::TolerateTornTail => {
            match classify_damage(r, nonce, off, next).map_err(io_err(path))? {
                None => {
                    tracing::warn!(
                        path = %path.display(),
                        offset = off,
                        seq = next,
                        discarded = r.file_len - off,
                        reason,
                        "journal has a torn tail: the last append never completed"
                    );
                    Ok(torn)
                }
                Some(why) => Err(Error::Corrupt {
                    offset: off,
                    reason: format!("record {next}: {reason}; {why}"),
                    source: None,
                }),
            }
        }
    }
}

/// After a damaged record at `bad_off` (expected sequence `next`), looks for a later frame of
/// this log proving that record was durable. `Some(explanation)` means corruption; `None`
/// means everything from `bad_off` on is an unsynced tail. See the module docs.
fn classify_damage<F: File>(
    r: &mut Reader<'_, F>,
    nonce: &[u8; NONCE_LEN],
    bad_off: u64,
    next: u64,
) -> std::io::Result<Option<String>> {
    // No log holds more records than frames fit in its tail, which bounds a plausible sequence
    // number; together with the CRC this makes garbage that happens to validate vanishingly rare.
    let tail = r.file_len - bad_off;
    let max_seq = next.saturating_add(tail / FRAME_HEADER_LEN);
    // Checksumming a candidate's payload is the expensive step. Genuine frames of an unsynced
    // batch do not overlap, so their payloads add up to less than the tail; a budget of twice
    // that keeps the scan linear even when a crafted tail makes every offset look plausible.
    let budget = ScanBudget::new(tail.saturating_mul(2));
    let mut y = bad_off + ALIGN;
    while y + FRAME_HEADER_LEN <= r.file_len {
        let plausible = |h: &FrameHeader| h.seq <= max_seq && h.synced <= h.seq && budget.spend(h);
        let frame = read_frame(r, nonce, y, plausible)?;
        if budget.exhausted.get() {
            // Fail closed: refusing keeps the file for a human; truncating might drop
            // durable records.
            return Ok(Some(format!(
                "the {tail} bytes after it hold too many plausible record headers to tell a \
                 torn tail from corruption"
            )));
        }
        if let Ok(f) = frame {
            if f.head.seq <= next {
                return Ok(Some(format!(
                    "a valid record {} at {y:#x} repeats or precedes it",
                    f.head.seq
                )));
            }
            if f.head.synced > next {
                return Ok(Some(format!(
                    "record {} at {y:#x} was written after it had been synced",
                    f.head.seq
                )));
            }
        }
        y += ALIGN;
    }
    Ok(None)
}
