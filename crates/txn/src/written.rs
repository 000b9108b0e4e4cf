//! What a commit left in its base, as CRC-32s of ranges: recorded when a commit keeps its
//! pre-images, and checked by a revert, which must find the base still holding exactly that
//! (see [`crate::kept`]).
//!
//! A raw commit's checksums come from the data it writes, as it writes it ([`Tally`]):
//! recording them costs no read. What `qemu-img` wrote into a qcow2 base, and what a revert
//! put back, is read back instead ([`checksums`]).

use std::path::Path;

use crc32fast::Hasher;
use serde::{Deserialize, Serialize};
use storage::File;

use crate::error::{Error, Result};
use crate::plan::{ByteRange, Plan};

/// The checksum of the content a commit left in one range of its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// Where.
    pub offset: u64,
    /// How much.
    pub len: u64,
    /// CRC-32 of the base's content there right after the commit.
    pub crc: u32,
}

/// How much a read-back reads at once.
const READ: u64 = 4 << 20;

/// The checksums of `base`'s content in every range `ranges` names (what lies past its end
/// reads as zeros).
pub(crate) fn checksums<F: File>(
    base: &F,
    path: &Path,
    ranges: &[ByteRange],
) -> Result<Vec<Written>> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for r in ranges {
        let mut h = Hasher::new();
        for piece in crate::plan::chunks(std::slice::from_ref(r), READ) {
            buf.resize(usize::try_from(piece.len).unwrap_or(0), 0);
            let n = crate::files::read_up_to(base, &mut buf, piece.offset)
                .map_err(Error::io("read", path))?;
            buf[n..].fill(0);
            h.update(&buf);
        }
        out.push(Written {
            offset: r.offset,
            len: r.len,
            crc: h.finalize(),
        });
    }
    Ok(out)
}

/// The first range of `written` where `base` no longer holds what the commit left; `None`
/// when it holds all of it.
pub(crate) fn first_change<F: File>(
    base: &F,
    path: &Path,
    written: &[Written],
) -> Result<Option<Written>> {
    let ranges: Vec<ByteRange> = written
        .iter()
        .map(|w| ByteRange::new(w.offset, w.len))
        .collect();
    let now = checksums(base, path, &ranges)?;
    Ok(written
        .iter()
        .zip(&now)
        .find(|(a, b)| a != b)
        .map(|(a, _)| *a))
}

/// The ranges of a raw base a commit of `plan` leaves changed: its steps, and what it grows
/// the base by that no step writes (a hole, read as zeros), in offset order.
pub(crate) fn raw_ranges(plan: &Plan) -> Vec<ByteRange> {
    let mut out = Vec::new();
    let mut at = plan.old_len;
    for s in &plan.steps {
        if s.offset > at && plan.new_len() > plan.old_len {
            out.push(ByteRange::new(at, s.offset - at));
        }
        out.push(ByteRange::new(s.offset, s.len));
        at = at.max(s.offset + s.len);
    }
    if plan.new_len() > at {
        out.push(ByteRange::new(at, plan.new_len() - at));
    }
    out
}

/// The checksums of a raw commit, gathered from the pieces it writes in whatever order it
/// writes them, then combined per range in offset order (CRC-32 combines without the data).
#[derive(Default)]
pub(crate) struct Tally {
    pieces: Vec<(u64, u64, Hasher)>,
    /// Some data reached the base without passing through memory (a reflink): its checksum
    /// can only be had by reading the base back.
    unseen: bool,
    /// Nobody needs the checksums (the commit keeps no pre-images): nothing is hashed.
    off: bool,
}

impl Tally {
    /// A tally that hashes nothing, for a commit that will not be revertible.
    pub(crate) fn off() -> Self {
        Self {
            off: true,
            ..Self::default()
        }
    }

    /// Data was written without being seen (shared blocks).
    pub(crate) fn unseen(&mut self) {
        self.unseen = true;
    }

    /// Whether every byte written was seen, so [`Tally::finish`] can tell the checksums.
    pub(crate) fn complete(&self) -> bool {
        !self.unseen && !self.off
    }

    /// `data` was written at `offset`.
    pub(crate) fn data(&mut self, offset: u64, data: &[u8]) {
        if self.off {
            return;
        }
        let mut h = Hasher::new();
        h.update(data);
        self.pieces.push((offset, data.len() as u64, h));
    }

    /// `len` bytes at `offset` were made to read as zeros.
    pub(crate) fn zeros(&mut self, offset: u64, len: u64) {
        if self.off {
            return;
        }
        self.pieces.push((offset, len, zeros(len)));
    }

    /// One checksum per range of `ranges` (sorted, not overlapping): the pieces inside it in
    /// offset order, and zeros where no piece was written (growth the commit left as a hole).
    pub(crate) fn finish(mut self, ranges: &[ByteRange]) -> Vec<Written> {
        self.pieces.sort_unstable_by_key(|p| p.0);
        let mut pieces = self.pieces.into_iter().peekable();
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let (mut h, mut at) = (Hasher::new(), r.offset);
            while let Some((offset, len, piece)) = pieces.next_if(|p| p.0 < r.end()) {
                if offset < at {
                    // Not part of this range's tiling (a caller bug): the checksum then
                    // refuses the revert rather than vouch for something unknown.
                    continue;
                }
                h.combine(&zeros(offset - at));
                h.combine(&piece);
                at = offset + len;
            }
            h.combine(&zeros(r.end().saturating_sub(at)));
            out.push(Written {
                offset: r.offset,
                len: r.len,
                crc: h.finalize(),
            });
        }
        out
    }
}

/// A hasher that has seen `len` zero bytes, built by doubling, without hashing them all.
fn zeros(len: u64) -> Hasher {
    const GRAIN: u64 = 4096;
    let mut out = Hasher::new();
    let mut rest = len % GRAIN;
    out.update(&[0u8; GRAIN as usize][..usize::try_from(rest).unwrap_or(0)]);
    rest = len / GRAIN;
    let mut power = Hasher::new();
    power.update(&[0u8; GRAIN as usize]);
    while rest > 0 {
        if rest & 1 == 1 {
            out.combine(&power);
        }
        let twice = power.clone();
        power.combine(&twice);
        rest >>= 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, Step};

    fn crc(data: &[u8]) -> u32 {
        crc32fast::hash(data)
    }

    #[test]
    fn zeros_hash_like_zero_bytes() {
        for len in [0, 1, 4095, 4096, 4097, 3 * 4096 + 17, 1 << 20] {
            assert_eq!(zeros(len).finalize(), crc(&vec![0; len as usize]), "{len}");
        }
    }

    #[test]
    fn pieces_written_out_of_order_combine_into_each_range() {
        let mut t = Tally::default();
        let image: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        // Written in reverse, with a gap at 30000..32000 left as zeros.
        t.data(20_000, &image[20_000..30_000]);
        t.zeros(10_000, 10_000);
        t.data(0, &image[..10_000]);
        t.data(32_000, &image[32_000..]);
        let mut expected = image.clone();
        expected[10_000..20_000].fill(0);
        expected[30_000..32_000].fill(0);
        let ranges = [ByteRange::new(0, 20_000), ByteRange::new(20_000, 20_000)];
        let got = t.finish(&ranges);
        assert_eq!(got[0].crc, crc(&expected[..20_000]));
        assert_eq!(got[1].crc, crc(&expected[20_000..]));
    }

    #[test]
    fn a_raw_plan_is_checked_in_its_steps_and_in_the_growth_they_leave_as_holes() {
        let plan = Plan {
            old_len: 100,
            virtual_size: 400,
            steps: vec![
                Step {
                    offset: 10,
                    len: 20,
                    action: Action::Copy,
                },
                Step {
                    offset: 150,
                    len: 50,
                    action: Action::Zero,
                },
            ],
        };
        assert_eq!(
            raw_ranges(&plan),
            vec![
                ByteRange::new(10, 20),
                ByteRange::new(100, 50),
                ByteRange::new(150, 50),
                ByteRange::new(200, 200),
            ]
        );
    }
}
