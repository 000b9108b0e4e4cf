//! The body of the replay fuzz target, public so the saved corpus also runs as a plain test.

use std::path::Path;

use serde::{Deserialize, Serialize};
use storage::sim::SimFs;

use crate::{read_with, RecoveryMode, Tail};

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

/// Replays `data` as a journal file in every recovery mode; panics only if replay breaks one of
/// its own invariants (which is what the fuzzer looks for, besides crashes and hangs).
pub fn replay_bytes(data: &[u8]) {
    let fs = SimFs::new();
    let path = Path::new("/fuzz.journal");
    fs.put_durable(path, data);
    let len = data.len() as u64;
    let modes = [
        RecoveryMode::TolerateTornTail,
        RecoveryMode::AbsoluteConsistency,
        RecoveryMode::SalvagePrefix,
    ];
    let outcomes = modes.map(|mode| {
        let r = read_with::<_, FuzzRecord>(&fs, path, mode).ok()?;
        if let Tail::Torn {
            valid_len,
            discarded,
        } = r.tail
        {
            assert_eq!(valid_len + discarded, len, "torn tail does not add up");
            assert!(discarded > 0, "a torn tail discards something");
        }
        Some((r.records, r.tail))
    });
    assert_eq!(
        fs.read_live(path).as_deref(),
        Some(data),
        "replay modified the file"
    );
    // The modes differ only in how they treat damage: whatever a stricter mode accepts, a more
    // lenient one accepts identically.
    if let Some(strict) = &outcomes[1] {
        assert_eq!(outcomes[0].as_ref(), Some(strict));
    }
    if let (Some((tolerant, _)), Some((salvaged, _))) = (&outcomes[0], &outcomes[2]) {
        assert_eq!(tolerant, salvaged);
    }
}
