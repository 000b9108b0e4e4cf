//! The on-disk layout: file header, record frames, checksums, and the payload codec.
//!
//! All integers are little-endian; nothing on disk is a `usize`. See `docs/journal-format.md`
//! for the tables and for why the file is cut into [`BLOCK`]s.
//!
//! File header (at offset 0), alone in its block(s):
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 8    | magic `IMGTXJNL`                                             |
//! | 8      | 4    | format version (2)                                           |
//! | 12     | 4    | flags, must be 0                                             |
//! | 16     | 16   | nonce: random, fresh for every log                           |
//! | 32     | 4    | identity length `n` (at most [`MAX_IDENTITY_LEN`])           |
//! | 36     | 4    | CRC-32 of bytes 0..36 followed by the identity               |
//! | 40     | n    | identity blob                                                |
//! | 40 + n | pad  | zeros up to the next multiple of [`BLOCK`]: the first frame  |
//!
//! Frame (at a multiple of 8; a frame after a sync starts at a multiple of [`BLOCK`]):
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 4    | payload length `l` (at most [`MAX_RECORD_LEN`])              |
//! | 4      | 4    | CRC-32 of nonce, seq, synced, kind, reserved, `l`, payload   |
//! | 8      | 8    | sequence number (0 for the first record, then +1)            |
//! | 16     | 8    | synced: every record with a smaller sequence number had been |
//! |        |      | made durable before this frame was written                   |
//! | 24     | 4    | kind: 1 = record, 2 = padding ([`FrameKind`])                |
//! | 28     | 4    | reserved, 0                                                  |
//! | 32     | l    | record: postcard payload; padding: zeros                     |
//! | 32 + l | pad  | zeros up to the next multiple of 8                           |
//!
//! A padding frame carries the sequence number of the next record (it does not consume one)
//! and always ends at a multiple of [`BLOCK`]. The writer puts one before every sync that
//! would otherwise leave the file mid-block, so bytes appended after a sync never share a
//! block with bytes that were synced.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{DecodeError, Error, Result};

/// The file's first eight bytes.
pub const MAGIC: [u8; 8] = *b"IMGTXJNL";
/// The format version this build writes and reads. Version 1 packed frames without regard
/// to blocks; it is refused with [`Error::UnsupportedVersion`].
pub const VERSION: u32 = 2;
/// Length of the fixed part of the file header, before the identity blob.
pub const HEADER_FIXED_LEN: u64 = 40;
/// Largest identity blob the header may carry (64 KiB): enough for any path and device
/// identity, small enough to allocate without a second thought.
pub const MAX_IDENTITY_LEN: u32 = 64 * 1024;
/// Length of a frame's header, before the payload.
pub const FRAME_HEADER_LEN: u64 = 32;
/// Largest payload a record may carry (64 MiB). A length field above this is damage; it is
/// checked, together with the bytes left in the file, before anything is allocated.
pub const MAX_RECORD_LEN: u32 = 64 * 1024 * 1024;
/// Every frame starts at a multiple of this, so a frame's length field never straddles a
/// 512-byte sector and cannot be torn.
pub const ALIGN: u64 = 8;
/// The unit a torn write may garble as a whole, bytes synced earlier included: a 4 KiB
/// physical sector (crash-safety rule 9, no powersafe overwrite). The header fills whole
/// blocks, and every sync leaves the file at a multiple of this, so an append never writes
/// into a block that holds synced bytes.
pub const BLOCK: u64 = 4096;

/// Length of the per-log nonce.
pub const NONCE_LEN: usize = 16;

/// Length of a header carrying `identity_len` identity bytes, padded to whole [`BLOCK`]s.
/// Cannot overflow for any `u32`; callers bound `identity_len` by [`MAX_IDENTITY_LEN`] first.
pub fn header_len(identity_len: u32) -> u64 {
    (HEADER_FIXED_LEN + u64::from(identity_len)).div_ceil(BLOCK) * BLOCK
}

/// Length of a frame carrying `payload_len` bytes, padding included. Cannot overflow for any
/// `u32`; callers bound `payload_len` by [`MAX_RECORD_LEN`] first anyway.
pub fn frame_len(payload_len: u32) -> u64 {
    (FRAME_HEADER_LEN + u64::from(payload_len)).div_ceil(ALIGN) * ALIGN
}

/// The validated file header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Random per-log nonce, mixed into every record checksum.
    pub nonce: [u8; NONCE_LEN],
    /// Caller-supplied identity blob.
    pub identity: Vec<u8>,
}

impl Header {
    /// Offset of the first frame: the header length rounded up to [`BLOCK`].
    ///
    /// # Panics
    /// If the identity is longer than [`MAX_IDENTITY_LEN`] (`create` refuses that first).
    pub fn records_start(&self) -> u64 {
        header_len(self.identity_len())
    }

    fn identity_len(&self) -> u32 {
        u32::try_from(self.identity.len())
            .ok()
            .filter(|&n| n <= MAX_IDENTITY_LEN)
            .expect("identity length checked by the caller")
    }

    /// The header bytes, padded to [`BLOCK`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.records_start() as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.identity_len().to_le_bytes());
        let crc = header_crc(&out, &self.identity);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&self.identity);
        out.resize(self.records_start() as usize, 0);
        out
    }
}

/// CRC over the first 36 header bytes and the identity.
pub fn header_crc(fixed36: &[u8], identity: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(fixed36);
    h.update(identity);
    h.finalize()
}

/// What the fixed header part says, before the identity is read and the CRC checked.
#[derive(Debug)]
pub struct RawHeader {
    /// Nonce field.
    pub nonce: [u8; NONCE_LEN],
    /// Identity length field, already bounded by [`MAX_IDENTITY_LEN`].
    pub identity_len: u32,
    /// Stored header CRC.
    pub crc: u32,
}

/// Why a fixed header is refused.
#[derive(Debug)]
pub enum HeaderProblem {
    /// All zeros: never written.
    NeverWritten,
    /// Damaged, with a reason.
    Bad(String),
    /// Unknown version.
    Version(u32),
}

/// Parses the fixed 40 header bytes.
pub fn parse_fixed_header(b: &[u8; HEADER_FIXED_LEN as usize]) -> Result<RawHeader, HeaderProblem> {
    if b.iter().all(|&x| x == 0) {
        return Err(HeaderProblem::NeverWritten);
    }
    if b[0..8] != MAGIC {
        return Err(HeaderProblem::Bad("bad magic: not an imgtx journal".into()));
    }
    let version = le32(&b[8..12]);
    if version != VERSION {
        return Err(HeaderProblem::Version(version));
    }
    let flags = le32(&b[12..16]);
    if flags != 0 {
        return Err(HeaderProblem::Bad(format!("unknown flags {flags:#x}")));
    }
    let identity_len = le32(&b[32..36]);
    if identity_len > MAX_IDENTITY_LEN {
        return Err(HeaderProblem::Bad(format!(
            "identity length {identity_len} is over the maximum {MAX_IDENTITY_LEN}"
        )));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[16..32]);
    Ok(RawHeader {
        nonce,
        identity_len,
        crc: le32(&b[36..40]),
    })
}

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// One record: its payload is a postcard-encoded `T`.
    Record,
    /// Padding up to the next [`BLOCK`] boundary, written before a sync; no record.
    Pad,
}

impl FrameKind {
    /// The on-disk value.
    pub fn to_u32(self) -> u32 {
        match self {
            FrameKind::Record => 1,
            FrameKind::Pad => 2,
        }
    }

    /// The kind an on-disk value names, if any.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(FrameKind::Record),
            2 => Some(FrameKind::Pad),
            _ => None,
        }
    }
}

/// The checksum of one frame: the nonce binds it to this log, the sequence number to its
/// place in the log.
pub fn frame_crc(nonce: &[u8; NONCE_LEN], head: &FrameHeader, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(nonce);
    h.update(&head.seq.to_le_bytes());
    h.update(&head.synced.to_le_bytes());
    h.update(&head.kind.to_le_bytes());
    h.update(&head.reserved.to_le_bytes());
    h.update(&head.len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Bytes of padding frame that bring a file of length `end` (a multiple of [`ALIGN`]) to the
/// next multiple of [`BLOCK`]: 0 when it is there already. When the room left in the block
/// is too small for a frame header, the padding runs to the end of the following block.
pub fn pad_len(end: u64) -> u64 {
    match end % BLOCK {
        0 => 0,
        used if BLOCK - used < FRAME_HEADER_LEN => 2 * BLOCK - used,
        used => BLOCK - used,
    }
}

/// The padding frame that brings a file of length `end` to a [`BLOCK`] boundary, or `None`
/// when it is there already. `seq` is the next record's sequence number, which the padding
/// does not consume.
pub fn encode_pad(nonce: &[u8; NONCE_LEN], seq: u64, synced: u64, end: u64) -> Option<Vec<u8>> {
    let total = pad_len(end);
    let payload_len = total.checked_sub(FRAME_HEADER_LEN)?;
    // At most 2 * BLOCK, so the conversion cannot fail.
    let payload = vec![0u8; usize::try_from(payload_len).ok()?];
    let frame = encode_frame(nonce, seq, synced, FrameKind::Pad, &payload).ok()?;
    debug_assert_eq!(
        frame.len() as u64,
        total,
        "a pad frame needs no alignment padding"
    );
    Some(frame)
}

/// A whole frame (header, payload, padding) ready to be written in one call.
///
/// # Errors
/// `RecordTooLarge` when the payload is longer than [`MAX_RECORD_LEN`].
pub fn encode_frame(
    nonce: &[u8; NONCE_LEN],
    seq: u64,
    synced: u64,
    kind: FrameKind,
    payload: &[u8],
) -> Result<Vec<u8>> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= MAX_RECORD_LEN)
        .ok_or(Error::RecordTooLarge {
            len: payload.len(),
            max: MAX_RECORD_LEN,
        })?;
    let total = frame_len(len);
    let head = FrameHeader {
        len,
        crc: 0,
        seq,
        synced,
        kind: kind.to_u32(),
        reserved: 0,
    };
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame_crc(nonce, &head, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&synced.to_le_bytes());
    out.extend_from_slice(&head.kind.to_le_bytes());
    out.extend_from_slice(&head.reserved.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(total as usize, 0);
    Ok(out)
}

/// The fields of a frame header.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader {
    /// Payload length, unchecked.
    pub len: u32,
    /// Stored CRC.
    pub crc: u32,
    /// Sequence number.
    pub seq: u64,
    /// Synced watermark.
    pub synced: u64,
    /// Kind field, unchecked: see [`FrameKind::from_u32`].
    pub kind: u32,
    /// Reserved field, 0 when written.
    pub reserved: u32,
}

/// Splits a frame header into its fields.
pub fn parse_frame_header(b: &[u8; FRAME_HEADER_LEN as usize]) -> FrameHeader {
    FrameHeader {
        len: le32(&b[0..4]),
        crc: le32(&b[4..8]),
        seq: le64(&b[8..16]),
        synced: le64(&b[16..24]),
        kind: le32(&b[24..28]),
        reserved: le32(&b[28..32]),
    }
}

/// Encodes a record payload. The one place records become bytes.
pub fn encode_payload<T: Serialize>(record: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(record).map_err(|source| Error::Encode { source })
}

/// Decodes a record payload, which must be consumed exactly. The one place bytes become records.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(DecodeError::Trailing(rest.len())),
        Err(e) => Err(DecodeError::Postcard(e)),
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_parse_and_fills_its_block() {
        let h = Header {
            nonce: [7; NONCE_LEN],
            identity: b"base".to_vec(),
        };

        let bytes = h.encode();

        assert_eq!(bytes.len() as u64, h.records_start());
        assert_eq!(bytes.len() as u64, BLOCK);
        let fixed: [u8; 40] = bytes[..40].try_into().unwrap();
        let raw = parse_fixed_header(&fixed).unwrap();
        assert_eq!(raw.nonce, h.nonce);
        assert_eq!(raw.identity_len, 4);
        assert_eq!(raw.crc, header_crc(&bytes[..36], b"base"));
    }

    #[test]
    fn a_header_with_a_large_identity_fills_whole_blocks() {
        assert_eq!(header_len(4056), BLOCK);
        assert_eq!(header_len(4057), 2 * BLOCK);
        assert_eq!(header_len(MAX_IDENTITY_LEN), 17 * BLOCK);
    }

    #[test]
    fn frame_is_aligned_and_carries_its_fields() {
        let f = encode_frame(&[1; 16], 5, 3, FrameKind::Record, b"abc").unwrap();

        assert_eq!(f.len(), 40);
        let h = parse_frame_header(&f[..32].try_into().unwrap());
        assert_eq!(
            (h.len, h.seq, h.synced, h.kind, h.reserved),
            (3, 5, 3, 1, 0)
        );
        assert_eq!(h.crc, frame_crc(&[1; 16], &h, b"abc"));
    }

    #[test]
    fn the_kind_is_part_of_the_checksum() {
        let f = encode_frame(&[1; 16], 5, 3, FrameKind::Record, b"abc").unwrap();
        let mut h = parse_frame_header(&f[..32].try_into().unwrap());

        h.kind = FrameKind::Pad.to_u32();

        assert_ne!(h.crc, frame_crc(&[1; 16], &h, b"abc"));
    }

    #[test]
    fn a_pad_from_every_aligned_offset_ends_on_a_block_boundary() {
        for end in (BLOCK..3 * BLOCK).step_by(ALIGN as usize) {
            let pad = encode_pad(&[2; 16], 9, 4, end);

            match pad {
                None => assert_eq!(end % BLOCK, 0, "end {end}"),
                Some(f) => {
                    let after = end + f.len() as u64;
                    assert_eq!(after % BLOCK, 0, "end {end}");
                    assert!(after - end <= BLOCK + FRAME_HEADER_LEN, "end {end}");
                    let h = parse_frame_header(&f[..32].try_into().unwrap());
                    assert_eq!(FrameKind::from_u32(h.kind), Some(FrameKind::Pad));
                    assert_eq!(frame_len(h.len), f.len() as u64, "end {end}");
                }
            }
        }
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        let mut p = encode_payload(&7u32).unwrap();
        p.push(0);
        assert!(decode_payload::<u32>(&p).is_err());
    }
}
