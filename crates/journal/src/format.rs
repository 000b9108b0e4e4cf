//! The on-disk layout: file header, record frames, checksums, and the payload codec.
//!
//! All integers are little-endian; nothing on disk is a `usize`. See `docs/journal-format.md`
//! for the tables.
//!
//! File header (at offset 0):
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 8    | magic `IMGTXJNL`                                             |
//! | 8      | 4    | format version (1)                                           |
//! | 12     | 4    | flags, must be 0                                             |
//! | 16     | 16   | nonce: random, fresh for every log                           |
//! | 32     | 4    | identity length `n` (at most [`MAX_IDENTITY_LEN`])           |
//! | 36     | 4    | CRC-32 of bytes 0..36 followed by the identity               |
//! | 40     | n    | identity blob                                                |
//! | 40 + n | pad  | zeros up to the next multiple of 8: the first record         |
//!
//! Record frame (at a multiple of 8):
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 4    | payload length `l` (at most [`MAX_RECORD_LEN`])              |
//! | 4      | 4    | CRC-32 of nonce, seq, synced, `l`, payload                   |
//! | 8      | 8    | sequence number (0 for the first record, then +1)            |
//! | 16     | 8    | synced: every record with a smaller sequence number had been |
//! |        |      | made durable before this one was written                     |
//! | 24     | l    | postcard payload                                             |
//! | 24 + l | pad  | zeros up to the next multiple of 8                           |

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The file's first eight bytes.
pub const MAGIC: [u8; 8] = *b"IMGTXJNL";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Length of the fixed part of the file header, before the identity blob.
pub const HEADER_FIXED_LEN: u64 = 40;
/// Largest identity blob the header may carry (64 KiB): enough for any path and device
/// identity, small enough to allocate without a second thought.
pub const MAX_IDENTITY_LEN: u32 = 64 * 1024;
/// Length of a record frame's header, before the payload.
pub const FRAME_HEADER_LEN: u64 = 24;
/// Largest payload a record may carry (64 MiB). A length field above this is damage; it is
/// checked, together with the bytes left in the file, before anything is allocated.
pub const MAX_RECORD_LEN: u32 = 64 * 1024 * 1024;
/// Every frame starts at a multiple of this, so a frame's length field never straddles a
/// 512-byte sector and cannot be torn.
pub const ALIGN: u64 = 8;

/// Length of the per-log nonce.
pub const NONCE_LEN: usize = 16;

/// Length of a header carrying `identity_len` identity bytes, padding included. Cannot
/// overflow: callers bound `identity_len` by [`MAX_IDENTITY_LEN`] first.
pub fn header_len(identity_len: u32) -> u64 {
    (HEADER_FIXED_LEN + u64::from(identity_len)).div_ceil(ALIGN) * ALIGN
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
    /// Offset of the first record: the header length rounded up to [`ALIGN`].
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

    /// The header bytes, padded to [`ALIGN`].
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

/// The checksum of one record: the nonce binds it to this log, the sequence number to its
/// place in the log.
pub fn frame_crc(nonce: &[u8; NONCE_LEN], seq: u64, synced: u64, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(nonce);
    h.update(&seq.to_le_bytes());
    h.update(&synced.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// A whole frame (header, payload, padding) ready to be written in one call.
pub fn encode_frame(
    nonce: &[u8; NONCE_LEN],
    seq: u64,
    synced: u64,
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
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame_crc(nonce, seq, synced, len, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&synced.to_le_bytes());
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
}

/// Splits a frame header into its fields.
pub fn parse_frame_header(b: &[u8; FRAME_HEADER_LEN as usize]) -> FrameHeader {
    FrameHeader {
        len: le32(&b[0..4]),
        crc: le32(&b[4..8]),
        seq: le64(&b[8..16]),
        synced: le64(&b[16..24]),
    }
}

/// Encodes a record payload. The one place records become bytes.
pub fn encode_payload<T: Serialize>(record: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(record).map_err(|source| Error::Encode { source })
}

/// Decodes a record payload, which must be consumed exactly. The one place bytes become records.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!("payload has {} trailing bytes", rest.len())),
        Err(e) => Err(format!("payload does not decode: {e}")),
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
    fn header_round_trips_through_parse() {
        let h = Header {
            nonce: [7; NONCE_LEN],
            identity: b"base".to_vec(),
        };
        let bytes = h.encode();
        assert_eq!(bytes.len() as u64, h.records_start());
        assert_eq!(bytes.len() % 8, 0);
        let fixed: [u8; 40] = bytes[..40].try_into().unwrap();
        let raw = parse_fixed_header(&fixed).unwrap();
        assert_eq!(raw.nonce, h.nonce);
        assert_eq!(raw.identity_len, 4);
        assert_eq!(raw.crc, header_crc(&bytes[..36], b"base"));
    }

    #[test]
    fn frame_is_aligned_and_carries_its_fields() {
        let f = encode_frame(&[1; 16], 5, 3, b"abc").unwrap();
        assert_eq!(f.len(), 32);
        let h = parse_frame_header(&f[..24].try_into().unwrap());
        assert_eq!((h.len, h.seq, h.synced), (3, 5, 3));
        assert_eq!(h.crc, frame_crc(&[1; 16], 5, 3, 3, b"abc"));
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        let mut p = encode_payload(&7u32).unwrap();
        p.push(0);
        assert!(decode_payload::<u32>(&p).is_err());
    }
}
