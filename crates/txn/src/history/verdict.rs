//! What `log --verify` reports: the chain's format, how far it verified, the first problem,
//! and where an anchor was found. The checking itself is in `verify`.

use serde::Serialize;

use super::chain::{CarriedOver, ChainHash};
use super::file::Aside;
use crate::id::TxId;

/// How the history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainFormat {
    /// There is no history yet.
    None,
    /// Format 1: entries without hashes, written before the chain existed. Nothing can be
    /// verified; the next append converts it.
    Unchained,
    /// Format 2: every record carries the hash of the one before it.
    Chained,
}

/// What is wrong with the first record that does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The record was changed after the next one was written: its hash is no longer the one
    /// the next record carries.
    Edited,
    /// Bytes where a record should be do not validate (its checksum fails, or it does not
    /// decode): changed without updating the checksum, or damaged on disk.
    Damaged,
    /// Records are gone: the one found in their place says it comes later, and they are
    /// nowhere further on.
    Missing,
    /// A record comes before one that precedes it, or twice.
    Reordered,
    /// The file ends in bytes that are not a whole record: it was cut, its last entry was
    /// edited, or a crash interrupted the last append (the next append keeps them aside).
    TruncatedTail,
    /// The history does not begin with its genesis (or has a second one), or its header is
    /// damaged.
    BadStart,
}

impl ProblemKind {
    /// The name `log --verify` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edited => "edited",
            Self::Damaged => "damaged",
            Self::Missing => "missing",
            Self::Reordered => "reordered",
            Self::TruncatedTail => "truncated_tail",
            Self::BadStart => "bad_start",
        }
    }
}

/// The first record of the history that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// The index (in `log`'s order, from 0) of the first entry the chain no longer vouches
    /// for; as many entries before it verified.
    pub entry: u64,
    /// That entry's transaction id, when it can be read.
    pub id: Option<TxId>,
    /// The record's position in the history file (0 is the genesis).
    pub record: u64,
    /// Its byte offset in the history file, when known.
    pub offset: Option<u64>,
    /// What was found, as a sentence.
    pub detail: String,
}

/// Whether a head hash recorded elsewhere is in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnchorCheck {
    /// The hash given.
    pub hash: ChainHash,
    /// The position of the record it is the hash of, among those that verified.
    pub record: Option<u64>,
    /// How many records came after it.
    pub records_after: u64,
}

/// What `log --verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// True when every record verified and the anchor (if one was given) is in the chain.
    pub verified: bool,
    /// How the history is kept.
    pub format: ChainFormat,
    /// Entries that verified (all of them, when `verified`), or, for an unchained history,
    /// the entries it holds.
    pub entries: u64,
    /// Records that verified: the genesis, entries, and records of tails kept aside.
    pub records: u64,
    /// The hash of the last record that verified: the value to keep elsewhere, to check
    /// later with `--anchor` that nothing up to it was changed, removed or rewritten.
    pub head: Option<ChainHash>,
    /// The hash of the genesis record.
    pub genesis: Option<ChainHash>,
    /// When the chain began.
    pub created: Option<String>,
    /// The first record that does not verify.
    pub problem: Option<Problem>,
    /// Entries that predate the chain: taken over from a format-1 history, which the chain
    /// vouches for only since then.
    pub carried_over: Option<CarriedOver>,
    /// Tails that did not verify and were kept aside by appends, among the records verified.
    pub kept_aside: Vec<Aside>,
    /// The anchor check, when an anchor was given.
    pub anchor: Option<AnchorCheck>,
}

impl Verification {
    /// The verification of a state directory that has no history (yet): nothing is wrong,
    /// and an anchor, if given, is not found.
    pub fn none(anchor: Option<&ChainHash>) -> Self {
        Self::empty(ChainFormat::None).anchored(anchor)
    }

    /// With the check of `anchor`, for a history with no record it could match.
    pub(super) fn anchored(mut self, anchor: Option<&ChainHash>) -> Self {
        if let Some(hash) = anchor {
            // A chained history's check placed it already.
            let check = self.anchor.take().unwrap_or(AnchorCheck {
                hash: *hash,
                record: None,
                records_after: 0,
            });
            self.verified &= check.record.is_some();
            self.anchor = Some(check);
        }
        self
    }

    pub(super) fn empty(format: ChainFormat) -> Self {
        Self {
            verified: format != ChainFormat::Unchained,
            format,
            entries: 0,
            records: 0,
            head: None,
            genesis: None,
            created: None,
            problem: None,
            carried_over: None,
            kept_aside: Vec::new(),
            anchor: None,
        }
    }
}
