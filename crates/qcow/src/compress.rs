//! Decompression of one compressed cluster, with qemu's acceptance rules.
//!
//! qemu stores only the sector count of compressed data, so the input may carry trailing
//! bytes of the next compressed cluster or padding: both decoders stop once exactly one
//! cluster has been produced, and anything else is an error.

use std::io::Read;

use flate2::{Decompress, FlushDecompress};
use ruzstd::decoding::errors::FrameDecoderError;
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

use crate::header::Compression;

/// Why compressed data is not exactly one cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecompressError {
    /// The deflate decoder refused the data.
    #[error("invalid deflate data")]
    Deflate(#[source] flate2::DecompressError),
    /// The data decompressed to another size than one cluster.
    #[error("the data produced {produced} bytes instead of {wanted}")]
    WrongSize {
        /// Bytes produced.
        produced: u64,
        /// Bytes of one cluster.
        wanted: u64,
    },
    /// The data does not start with a zstd frame.
    #[error("the data is not a zstd frame")]
    NotZstd,
    /// A zstd frame asks for a window larger than any single cluster needs.
    #[error("the zstd frame asks for a {0}-byte window")]
    ZstdWindow(u64),
    /// The zstd frame header is invalid.
    #[error("invalid zstd frame header")]
    ZstdHeader(#[source] FrameDecoderError),
    /// The zstd data is invalid.
    #[error("invalid zstd data")]
    Zstd(#[source] FrameDecoderError),
    /// Reading decoded zstd data failed.
    #[error("invalid zstd data")]
    ZstdRead(#[source] std::io::Error),
    /// The zstd data decompresses to more than one cluster.
    #[error("zstd data decompresses to more than one cluster")]
    ZstdTooLong,
}

/// Largest zstd window accepted; qemu compresses single clusters (≤ 2 MiB) in one pass, so
/// real frames have small windows, and a hostile frame may not make the decoder reserve
/// 100 MiB.
const MAX_ZSTD_WINDOW: u64 = 8 << 20;

/// Decompresses `input` into exactly `out.len()` bytes.
pub(crate) fn decompress(
    kind: Compression,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), DecompressError> {
    match kind {
        Compression::Deflate => inflate(input, out),
        Compression::Zstd => unzstd(input, out),
    }
}

fn inflate(input: &[u8], out: &mut [u8]) -> Result<(), DecompressError> {
    // Raw deflate (no zlib header), as qemu's inflateInit2(-12). miniz_oxide always uses a
    // 32 KiB window, which decodes any stream written with a smaller one.
    let mut d = Decompress::new(false);
    d.decompress(input, out, FlushDecompress::Finish)
        .map_err(DecompressError::Deflate)?;
    // Like qemu: success means exactly one full cluster came out, whether the stream ended
    // there or the input merely ran out (Z_BUF_ERROR with avail_out == 0).
    if d.total_out() == out.len() as u64 {
        Ok(())
    } else {
        Err(DecompressError::WrongSize {
            produced: d.total_out(),
            wanted: out.len() as u64,
        })
    }
}

/// The window size a zstd frame header asks for (RFC 8878 section 3.1.1.1), or None if the
/// header is not a zstd frame.
fn zstd_window(input: &[u8]) -> Option<u64> {
    if input.len() < 6 || input[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return None;
    }
    let fhd = input[4];
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = input[5];
        let exponent = u64::from(wd >> 3);
        let base = 1u64 << (10 + exponent);
        return Some(base + base / 8 * u64::from(wd & 7));
    }
    let dict_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(fhd >> 6)];
    let at = 5 + dict_len;
    let fcs = input.get(at..at + fcs_len)?;
    let mut v = [0u8; 8];
    v[..fcs_len].copy_from_slice(fcs);
    let size = u64::from_le_bytes(v);
    Some(if fcs_len == 2 { size + 256 } else { size })
}

fn unzstd(mut input: &[u8], out: &mut [u8]) -> Result<(), DecompressError> {
    // Like qemu: decode frame after frame until one full cluster is out; the frame that
    // fills the cluster must end exactly there.
    let mut done = 0usize;
    let mut dec = FrameDecoder::new();
    while done < out.len() {
        let window = zstd_window(input).ok_or(DecompressError::NotZstd)?;
        if window > MAX_ZSTD_WINDOW {
            return Err(DecompressError::ZstdWindow(window));
        }
        dec.reset(&mut input).map_err(DecompressError::ZstdHeader)?;
        loop {
            let finished = dec
                .decode_blocks(&mut input, BlockDecodingStrategy::UptoBlocks(1))
                .map_err(DecompressError::Zstd)?;
            while dec.can_collect() > 0 {
                let room = &mut out[done..];
                if room.is_empty() {
                    return Err(DecompressError::ZstdTooLong);
                }
                let n = dec.read(room).map_err(DecompressError::ZstdRead)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            if finished {
                break;
            }
        }
        if dec.can_collect() > 0 {
            return Err(DecompressError::ZstdTooLong);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::DeflateEncoder;
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    use super::decompress;
    use crate::header::Compression;

    fn cluster() -> Vec<u8> {
        (0..65536u32)
            .map(|i| (i / 300) as u8 ^ (i % 7) as u8)
            .collect()
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn deflate_accepts_trailing_sector_padding() {
        let c = cluster();
        let mut input = deflate(&c);
        input.extend([0xa5; 300]);
        let mut out = vec![0u8; c.len()];
        decompress(Compression::Deflate, &input, &mut out).unwrap();
        assert_eq!(out, c);
    }

    #[test]
    fn deflate_accepts_a_full_cluster_when_the_input_ends_early() {
        // qemu only knows the compressed length to the sector: a stream whose end marker is
        // cut off still counts once it produced one whole cluster.
        let c = cluster();
        let input = deflate(&c);
        let mut out = vec![0u8; c.len()];
        decompress(Compression::Deflate, &input[..input.len() - 1], &mut out).unwrap();
        assert_eq!(out, c);
    }

    #[test]
    fn deflate_refuses_short_output() {
        let c = cluster();
        let input = deflate(&c[..1000]);
        let mut out = vec![0u8; c.len()];
        assert!(decompress(Compression::Deflate, &input, &mut out).is_err());
    }

    #[test]
    fn zstd_accepts_several_frames_up_to_one_cluster() {
        let c = cluster();
        let mut input = compress_to_vec(&c[..20000], CompressionLevel::Fastest);
        input.extend(compress_to_vec(&c[20000..], CompressionLevel::Fastest));
        input.extend([0; 100]);
        let mut out = vec![0u8; c.len()];
        decompress(Compression::Zstd, &input, &mut out).unwrap();
        assert_eq!(out, c);
    }

    #[test]
    fn zstd_refuses_a_frame_longer_than_one_cluster() {
        let c = cluster();
        let input = compress_to_vec(&c[..], CompressionLevel::Fastest);
        let mut out = vec![0u8; c.len() / 2];
        assert!(decompress(Compression::Zstd, &input, &mut out).is_err());
    }

    #[test]
    fn zstd_refuses_short_output_and_garbage() {
        let c = cluster();
        let input = compress_to_vec(&c[..1000], CompressionLevel::Fastest);
        let mut out = vec![0u8; c.len()];
        assert!(decompress(Compression::Zstd, &input, &mut out).is_err());
        assert!(decompress(Compression::Zstd, &[0x11; 64], &mut out).is_err());
    }

    #[test]
    fn zstd_refuses_a_huge_window_before_allocating_it() {
        // Frame header: magic, descriptor without single-segment, window descriptor with
        // exponent 20 (1 GiB).
        let input = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3, 0, 0, 0];
        let mut out = vec![0u8; 4096];
        let err = decompress(Compression::Zstd, &input, &mut out).unwrap_err();
        assert!(
            matches!(err, super::DecompressError::ZstdWindow(_)),
            "{err}"
        );
    }
}
