//! The body of the replay fuzz target, public so the saved corpus also runs as a plain test.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use storage::File;

use crate::replay::{scan, RecoveryMode};
use crate::Tail;

/// A record type with the shapes the engine uses (variants, integers, byte blobs, strings),
/// so the fuzzer exercises the payload decoder too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FuzzRecord {
    /// A small fixed-size record.
    Begin {
        /// Some number.
        size: u64,
    },
    /// A byte range with data.
    Data {
        /// Offset.
        offset: u64,
        /// Bytes.
        bytes: Vec<u8>,
    },
    /// A string.
    Note(String),
    /// No fields.
    Commit,
}

/// A read-only in-memory file over a byte slice.
struct Bytes<'a>(&'a [u8]);

impl File for Bytes<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let src = self.0.get(start..).unwrap_or(&[]);
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn zero_range(&self, _: u64, _: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
}

/// Replays `data` as a journal file in every recovery mode; panics only if replay breaks one of
/// its own invariants (which is what the fuzzer looks for, besides crashes and hangs).
pub fn replay_bytes(data: &[u8]) {
    let file = Bytes(data);
    let path = Path::new("fuzz.journal");
    let len = data.len() as u64;
    let modes = [
        RecoveryMode::TolerateTornTail,
        RecoveryMode::AbsoluteConsistency,
        RecoveryMode::SalvagePrefix,
    ];
    let mut outcomes = Vec::new();
    for mode in modes {
        let r = scan::<_, FuzzRecord>(&file, path, mode);
        if let Ok(s) = &r {
            assert!(s.valid_len <= len, "valid length past the end of the file");
            match s.tail {
                Tail::Clean => assert_eq!(s.valid_len, len),
                Tail::Torn {
                    valid_len,
                    discarded,
                } => {
                    assert_eq!(valid_len + discarded, len);
                    assert!(discarded > 0, "a torn tail discards something");
                }
            }
        }
        outcomes.push(r.ok().map(|s| (s.records, s.tail)));
    }
    // The modes differ only in how they treat damage: whatever a stricter mode accepts, a more
    // lenient one accepts identically.
    if let Some(strict) = &outcomes[1] {
        assert_eq!(outcomes[0].as_ref(), Some(strict));
    }
    if let (Some((tolerant, _)), Some((salvaged, _))) = (&outcomes[0], &outcomes[2]) {
        assert_eq!(tolerant, salvaged);
    }
}
