//! `log --verify`: checks every record of the history and every link between them, and names
//! the first thing that does not verify.
//!
//! It reads the file with [`journal::salvage`], not with replay: replay stops at the first
//! damage, while a forensic walk sees every record that is still there, so that a deleted
//! entry (the next one sits in its place) can be told from reordered ones (the missing one
//! turns up later) and from an edit (the link after it no longer matches).

use std::path::Path;

use serde::Serialize;
use storage::Fs;

use super::chain::{self, CarriedOver, ChainHash, Item, Link};
use super::{Aside, IDENTITY_V1, IDENTITY_V2};
use crate::error::{Error, Result};
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
    fn anchored(mut self, anchor: Option<&ChainHash>) -> Self {
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

    fn empty(format: ChainFormat) -> Self {
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

/// Verifies the history at `path`, and that `anchor`, if given, is the hash of one of its
/// records. Reads only.
pub(crate) fn verify<S: Fs>(
    fs: &S,
    path: &Path,
    anchor: Option<&ChainHash>,
) -> Result<Verification> {
    let v = match super::identity(fs, path)? {
        None => Verification::empty(ChainFormat::None),
        Some(id) if id == IDENTITY_V1 => {
            let mut v = Verification::empty(ChainFormat::Unchained);
            v.entries = super::read(fs, path)?.entries.len() as u64;
            v
        }
        Some(id) if id == IDENTITY_V2 => match journal::salvage(fs, path) {
            Ok(s) => check(&s.items, anchor),
            Err(journal::Error::BadHeader { reason, .. }) => {
                let mut v = Verification::empty(ChainFormat::Chained);
                v.verified = false;
                v.problem = Some(Problem {
                    kind: ProblemKind::BadStart,
                    entry: 0,
                    id: None,
                    record: 0,
                    offset: Some(0),
                    detail: format!("the file's header is damaged: {reason}"),
                });
                v
            }
            Err(e) => return Err(Error::journal(path)(e)),
        },
        Some(_) => return Err(super::not_a_history(path)),
    };
    Ok(v.anchored(anchor))
}

/// One item of the forensic walk, decoded.
enum Found {
    Record {
        offset: u64,
        hash: ChainHash,
        // Boxed: an entry is large, a damaged stretch two numbers.
        link: Option<Box<Link>>,
    },
    Damaged {
        offset: u64,
        len: u64,
    },
}

impl Found {
    fn seq(&self) -> Option<u64> {
        match self {
            Found::Record {
                link: Some(link), ..
            } => Some(link.seq),
            _ => None,
        }
    }
}

/// A record that verified.
struct Good {
    hash: ChainHash,
    /// Where its frame starts in the file.
    offset: u64,
    /// The entry it is, when it is one: its index and id.
    entry: Option<(u64, TxId)>,
}

/// Checks the chain over the items of a forensic walk, in file order.
fn check(items: &[journal::Salvaged], anchor: Option<&ChainHash>) -> Verification {
    let found: Vec<Found> = items
        .iter()
        .map(|item| match item {
            journal::Salvaged::Record {
                offset, payload, ..
            } => {
                // The journal's payload is the body as a byte string; the hash is over the
                // body, exactly as stored.
                let body = journal::format::decode_payload::<Vec<u8>>(payload).ok();
                Found::Record {
                    offset: *offset,
                    hash: body.as_deref().map_or(ChainHash::ZERO, ChainHash::of_body),
                    link: body.as_deref().and_then(chain::decode).map(Box::new),
                }
            }
            journal::Salvaged::Damaged { offset, len } => Found::Damaged {
                offset: *offset,
                len: *len,
            },
        })
        .collect();
    let mut v = Verification::empty(ChainFormat::Chained);
    let mut good: Vec<Good> = Vec::new();
    let mut problem = None;
    for (i, f) in found.iter().enumerate() {
        let record = good.len() as u64;
        let entries = v.entries;
        let at = |kind, id, offset, detail| Problem {
            kind,
            entry: entries,
            id,
            record,
            offset,
            detail,
        };
        let (offset, hash, link) = match f {
            Found::Damaged { offset, len } => {
                let later = found[i + 1..]
                    .iter()
                    .any(|g| matches!(g, Found::Record { .. }));
                problem = Some(if later {
                    at(
                        ProblemKind::Damaged,
                        None,
                        Some(*offset),
                        format!(
                            "{len} bytes at {offset:#x} hold no valid record, and records \
                             follow: changed without updating the record checksum, or damaged \
                             on disk"
                        ),
                    )
                } else {
                    at(
                        ProblemKind::TruncatedTail,
                        None,
                        Some(*offset),
                        format!(
                            "{len} bytes at {offset:#x}, after the last valid record, are not a \
                             whole record: the file was cut, its last entry was edited, or a \
                             crash interrupted the last append (the next append keeps the file \
                             aside)"
                        ),
                    )
                });
                break;
            }
            Found::Record {
                offset, link: None, ..
            } => {
                problem = Some(at(
                    ProblemKind::Damaged,
                    None,
                    Some(*offset),
                    format!(
                        "the record at {offset:#x} passes its checksum but is not a history \
                         record: imgtx never wrote it"
                    ),
                ));
                break;
            }
            Found::Record {
                offset,
                hash,
                link: Some(link),
            } => (*offset, *hash, link),
        };
        let id = match &link.item {
            Item::Entry(e) | Item::TakenOver(e, _) => Some(e.id.clone()),
            _ => None,
        };
        if link.seq != record {
            problem = Some(out_of_place(
                &found[i + 1..],
                link,
                record,
                |kind, detail| at(kind, id.clone(), Some(offset), detail),
            ));
            break;
        }
        let is_genesis = matches!(link.item, Item::Genesis(_));
        if record == 0 && (!is_genesis || link.prev != [0; 32]) {
            problem = Some(at(
                ProblemKind::BadStart,
                id,
                Some(offset),
                "the history does not begin with its genesis record".into(),
            ));
            break;
        }
        if record > 0 && is_genesis {
            problem = Some(at(
                ProblemKind::BadStart,
                id,
                Some(offset),
                format!("record {record} is a second genesis: histories were spliced"),
            ));
            break;
        }
        if let Some(before) = good.last() {
            if ChainHash(link.prev) != before.hash {
                // The record before this one changed after this one was written (or this
                // one's link did): the chain no longer vouches for either.
                let edited = good.pop().expect("a record before");
                let (entry, edited_id) = match edited.entry {
                    Some((index, id)) => (index, Some(id)),
                    None => (v.entries, None),
                };
                v.entries = entry;
                let what = match &edited_id {
                    Some(id) => format!("entry {entry} ({id})"),
                    None => format!("record {}", record - 1),
                };
                problem = Some(Problem {
                    kind: ProblemKind::Edited,
                    entry,
                    id: edited_id,
                    record: record - 1,
                    offset: Some(edited.offset),
                    detail: format!(
                        "{what} was changed after the record after it (at {offset:#x}) was \
                         written: its hash is no longer the one that record carries"
                    ),
                });
                break;
            }
        }
        let entry = match &link.item {
            Item::Genesis(g) => {
                v.genesis = Some(hash);
                v.created = Some(g.created.clone());
                v.carried_over = g.carried_over.clone();
                None
            }
            Item::Entry(e) | Item::TakenOver(e, _) => {
                v.entries += 1;
                Some((v.entries - 1, e.id.clone()))
            }
            Item::KeptAside(k) => {
                v.kept_aside.push(Aside {
                    after: good
                        .iter()
                        .rev()
                        .find_map(|g| g.entry.as_ref().map(|e| e.1.clone())),
                    kept: k.clone(),
                });
                None
            }
        };
        good.push(Good {
            hash,
            offset,
            entry,
        });
    }
    v.records = good.len() as u64;
    v.head = good.last().map(|g| g.hash);
    v.verified = problem.is_none();
    v.problem = problem;
    v.anchor = anchor.map(|hash| {
        let record = good.iter().position(|g| g.hash == *hash).map(|i| i as u64);
        AnchorCheck {
            hash: *hash,
            record,
            records_after: record.map_or(0, |r| v.records - r - 1),
        }
    });
    v
}

/// The problem with `link`, found at position `record` where its own `seq` differs: the
/// records it skipped are further on (reordered) or nowhere (missing), or it came before.
fn out_of_place(
    rest: &[Found],
    link: &Link,
    record: u64,
    at: impl FnOnce(ProblemKind, String) -> Problem,
) -> Problem {
    if link.seq < record {
        return at(
            ProblemKind::Reordered,
            format!(
                "record {} is found again, or out of order, after record {}",
                link.seq,
                record - 1
            ),
        );
    }
    if rest.iter().any(|f| f.seq() == Some(record)) {
        return at(
            ProblemKind::Reordered,
            format!(
                "record {} comes before record {record}: the entries were reordered",
                link.seq
            ),
        );
    }
    let missing = if link.seq == record + 1 {
        format!("record {record} is missing")
    } else {
        format!("records {record} to {} are missing", link.seq - 1)
    };
    at(
        ProblemKind::Missing,
        format!(
            "{missing}: the record in its place says it is record {}, and it is nowhere further on",
            link.seq
        ),
    )
}
