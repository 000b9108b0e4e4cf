//! `log --verify`: checks every record of the history and every link between them, and names
//! the first thing that does not verify.
//!
//! It reads the file with [`journal::salvage`], not with replay: replay stops at the first
//! damage, while a forensic walk sees every record that is still there, so that a deleted
//! entry (the next one sits in its place) can be told from reordered ones (the missing one
//! turns up later) and from an edit (the link after it no longer matches).

use std::path::Path;

use storage::Fs;

use super::chain::{self, ChainHash, Item, Link};
use super::file::{self, Aside, IDENTITY_V1, IDENTITY_V2};
use super::verdict::{AnchorCheck, ChainFormat, Problem, ProblemKind, Verification};
use crate::error::{Error, Result};
use crate::id::TxId;

/// Verifies the history at `path`, and that `anchor`, if given, is the hash of one of its
/// records. Reads only.
pub(crate) fn verify<S: Fs>(
    fs: &S,
    path: &Path,
    anchor: Option<&ChainHash>,
) -> Result<Verification> {
    let v = match file::identity(fs, path)? {
        None => Verification::empty(ChainFormat::None),
        Some(id) if id == IDENTITY_V1 => {
            let mut v = Verification::empty(ChainFormat::Unchained);
            v.entries = file::read(fs, path)?.entries.len() as u64;
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
        Some(_) => return Err(file::not_a_history(path)),
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
    fn of(item: &journal::Salvaged) -> Self {
        match item {
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
        }
    }

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
    let found: Vec<Found> = items.iter().map(Found::of).collect();
    let mut walk = Walk {
        v: Verification::empty(ChainFormat::Chained),
        good: Vec::new(),
    };
    let problem = found
        .iter()
        .enumerate()
        .find_map(|(i, f)| walk.step(f, &found[i + 1..]).err());
    walk.finish(problem, anchor)
}

/// The walk along the chain: what verified so far.
struct Walk {
    v: Verification,
    good: Vec<Good>,
}

impl Walk {
    /// Checks one item against the records before it (`rest` are the items after it); a
    /// record that verifies joins them.
    fn step(&mut self, f: &Found, rest: &[Found]) -> Result<(), Problem> {
        let (offset, hash, link) = self.record(f, rest)?;
        let id = match &link.item {
            Item::Entry(e) | Item::TakenOver(e, _) => Some(e.id.clone()),
            _ => None,
        };
        let record = self.good.len() as u64;
        if link.seq != record {
            return Err(out_of_place(rest, link, record, |kind, detail| {
                self.at(kind, id.clone(), Some(offset), detail)
            }));
        }
        let is_genesis = matches!(link.item, Item::Genesis(_));
        if record == 0 && (!is_genesis || link.prev != [0; 32]) {
            let detail = "the history does not begin with its genesis record".into();
            return Err(self.at(ProblemKind::BadStart, id, Some(offset), detail));
        }
        if record > 0 && is_genesis {
            let detail = format!("record {record} is a second genesis: histories were spliced");
            return Err(self.at(ProblemKind::BadStart, id, Some(offset), detail));
        }
        self.check_link(link, offset)?;
        self.accept(link, hash, offset);
        Ok(())
    }

    /// The record `f` is, or the problem when it is none: damage, or a frame that passes
    /// its checksum but holds no history record.
    fn record<'f>(
        &self,
        f: &'f Found,
        rest: &[Found],
    ) -> Result<(u64, ChainHash, &'f Link), Problem> {
        match f {
            Found::Record {
                offset,
                hash,
                link: Some(link),
            } => Ok((*offset, *hash, link)),
            Found::Record {
                offset, link: None, ..
            } => Err(self.at(
                ProblemKind::Damaged,
                None,
                Some(*offset),
                format!(
                    "the record at {offset:#x} passes its checksum but is not a history \
                     record: imgtx never wrote it"
                ),
            )),
            Found::Damaged { offset, len } => {
                let later = rest.iter().any(|g| matches!(g, Found::Record { .. }));
                Err(if later {
                    self.at(
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
                    self.at(
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
                })
            }
        }
    }

    /// Checks that `link` (at `offset`) carries the hash of the record before it. When it
    /// does not, the record before changed after this one was written (or this one's link
    /// did): the chain no longer vouches for either, and the problem names the earlier one.
    fn check_link(&mut self, link: &Link, offset: u64) -> Result<(), Problem> {
        let Some(before) = self.good.last() else {
            return Ok(());
        };
        if ChainHash(link.prev) == before.hash {
            return Ok(());
        }
        let record = self.good.len() as u64;
        let edited = self.good.pop().expect("a record before");
        let (entry, edited_id) = match edited.entry {
            Some((index, id)) => (index, Some(id)),
            None => (self.v.entries, None),
        };
        self.v.entries = entry;
        let what = match &edited_id {
            Some(id) => format!("entry {entry} ({id})"),
            None => format!("record {}", record - 1),
        };
        Err(Problem {
            kind: ProblemKind::Edited,
            entry,
            id: edited_id,
            record: record - 1,
            offset: Some(edited.offset),
            detail: format!(
                "{what} was changed after the record after it (at {offset:#x}) was written: \
                 its hash is no longer the one that record carries"
            ),
        })
    }

    /// Adds a record that verified.
    fn accept(&mut self, link: &Link, hash: ChainHash, offset: u64) {
        let entry = match &link.item {
            Item::Genesis(g) => {
                self.v.genesis = Some(hash);
                self.v.created = Some(g.created.clone());
                self.v.carried_over = g.carried_over.clone();
                None
            }
            Item::Entry(e) | Item::TakenOver(e, _) => {
                self.v.entries += 1;
                Some((self.v.entries - 1, e.id.clone()))
            }
            Item::KeptAside(k) => {
                let after = self
                    .good
                    .iter()
                    .rev()
                    .find_map(|g| g.entry.as_ref().map(|e| e.1.clone()));
                self.v.kept_aside.push(Aside {
                    after,
                    kept: k.clone(),
                });
                None
            }
        };
        self.good.push(Good {
            hash,
            offset,
            entry,
        });
    }

    /// A problem at the current position of the walk.
    fn at(
        &self,
        kind: ProblemKind,
        id: Option<TxId>,
        offset: Option<u64>,
        detail: String,
    ) -> Problem {
        Problem {
            kind,
            entry: self.v.entries,
            id,
            record: self.good.len() as u64,
            offset,
            detail,
        }
    }

    /// The verification: what verified, the first problem, and where `anchor` is.
    fn finish(self, problem: Option<Problem>, anchor: Option<&ChainHash>) -> Verification {
        let Walk { mut v, good } = self;
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
