//! The history file: its two formats, reading it whole, and appending one link of the
//! chain. What to append, and when to keep a file aside, is decided above this module.

use std::path::Path;

use serde::Serialize;
use storage::Fs;

use super::chain::{self, ChainHash, Genesis, Item, KeptAside, Link};
use super::entry::{EntryV1, HistoryEntry};
use crate::error::{Error, Result};
use crate::id::TxId;

/// The identity of an unchained history (format 1), written before the chain existed.
pub(super) const IDENTITY_V1: &[u8] = b"imgtx history v1";
/// The identity of a chained history (format 2).
pub(super) const IDENTITY_V2: &[u8] = b"imgtx history v2";

/// A history journal of format 2: every record is the body of one [`Link`].
pub(super) type ChainJournal<F> = journal::Journal<F, Vec<u8>>;

/// The history as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Entries, oldest first.
    pub entries: Vec<HistoryEntry>,
    /// Bytes of a torn last entry that were ignored, if any.
    pub torn_bytes: Option<u64>,
    /// Damaged tails that appends kept aside, oldest first.
    pub kept_aside: Vec<Aside>,
    /// Whether the entries are chained (format 2); false for a format-1 history or none.
    pub chained: bool,
}

/// A damaged tail kept aside, and where in the history that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Aside {
    /// The last entry before it, if any.
    pub after: Option<TxId>,
    /// What the chain records about it.
    #[serde(flatten)]
    pub kept: KeptAside,
}

/// Appends `item` as the next link of `j` (whose records are `records`), after a genesis
/// when there is none yet. Not synced. Returns the hash of the new record.
pub(super) fn link_to<F: storage::File>(
    j: &mut ChainJournal<F>,
    records: &[Vec<u8>],
    item: Item,
    now: &str,
) -> journal::Result<ChainHash> {
    let mut prev = match records.last() {
        Some(body) => ChainHash::of_body(body),
        None => {
            let genesis = Item::Genesis(Genesis {
                salt: salt(),
                created: now.to_owned(),
                carried_over: None,
            });
            append_link(j, ChainHash::ZERO, genesis)?
        }
    };
    if !matches!(item, Item::Genesis(_)) {
        prev = append_link(j, prev, item)?;
    }
    Ok(prev)
}

/// Appends the link to `prev` holding `item` at the next position of `j`; returns its hash.
pub(super) fn append_link<F: storage::File>(
    j: &mut ChainJournal<F>,
    prev: ChainHash,
    item: Item,
) -> journal::Result<ChainHash> {
    let body = chain::encode(&Link {
        seq: j.next_seq(),
        prev: prev.0,
        item,
    });
    j.append(&body)?;
    Ok(ChainHash::of_body(&body))
}

/// Sixteen random bytes for a genesis. Without a random source the genesis is still
/// unique by its time; the salt only keeps two histories from sharing a genesis hash.
pub(super) fn salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    if let Err(error) = getrandom::fill(&mut salt) {
        tracing::warn!(%error, "no random salt for the history's genesis");
    }
    salt
}

/// The position of the first record of `records` whose link does not match the record
/// before it (a quick check on append; `verify` says what is wrong).
pub(super) fn first_broken_link(records: &[Vec<u8>]) -> Option<usize> {
    let mut prev = ChainHash::ZERO;
    for (i, body) in records.iter().enumerate() {
        match chain::decode(body) {
            Some(link) if link.seq == i as u64 && ChainHash(link.prev) == prev => {}
            _ => return Some(i),
        }
        prev = ChainHash::of_body(body);
    }
    None
}

/// Reads the whole history; a torn tail is reported, not an error.
pub fn read<S: Fs>(fs: &S, path: &Path) -> Result<History> {
    // An append may convert or replace the file between reading its header and its records:
    // then the records do not match the identity, and the file now there is read again.
    let mut tries = 0;
    loop {
        let Some(id) = identity(fs, path)? else {
            return Ok(History::default());
        };
        let read = read_as(fs, path, &id);
        tries += 1;
        match read {
            Ok((history, seen)) if seen == id => return Ok(history),
            Err(e) if tries >= 3 || identity(fs, path)?.as_deref() == Some(&id[..]) => {
                return Err(e)
            }
            _ if tries >= 3 => {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    reason: "it kept changing while it was being read".into(),
                })
            }
            _ => {}
        }
    }
}

/// Reads the history as the format `identity` names; returns it with the identity that the
/// file read carried.
fn read_as<S: Fs>(fs: &S, path: &Path, identity: &[u8]) -> Result<(History, Vec<u8>)> {
    let torn = |tail| match tail {
        journal::Tail::Clean => None,
        journal::Tail::Torn { discarded, .. } => Some(discarded),
    };
    if identity == IDENTITY_V1 {
        let r = journal::read::<S, EntryV1>(fs, path).map_err(Error::journal(path))?;
        let history = History {
            entries: r.records.into_iter().map(HistoryEntry::from).collect(),
            torn_bytes: torn(r.tail),
            kept_aside: Vec::new(),
            chained: false,
        };
        return Ok((history, r.identity));
    }
    if identity != IDENTITY_V2 {
        return Err(not_a_history(path));
    }
    let r = journal::read::<S, Vec<u8>>(fs, path).map_err(Error::journal(path))?;
    let mut history = History {
        torn_bytes: torn(r.tail),
        chained: true,
        ..History::default()
    };
    if r.identity != IDENTITY_V2 {
        return Ok((history, r.identity));
    }
    for (i, body) in r.records.iter().enumerate() {
        let link = chain::decode(body).ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("its record {i} is not a history record"),
        })?;
        match link.item {
            Item::Entry(entry) => history.entries.push(entry),
            Item::TakenOver(entry, t) => history.entries.push(HistoryEntry {
                taken_over: Some(t),
                ..entry
            }),
            Item::KeptAside(kept) => history.kept_aside.push(Aside {
                after: history.entries.last().map(|e| e.id.clone()),
                kept,
            }),
            Item::Genesis(_) => {}
        }
    }
    Ok((history, r.identity))
}

/// The identity of the history at `path`; `None` when there is none, or its creation was
/// interrupted before it could hold an entry.
pub(super) fn identity<S: Fs>(fs: &S, path: &Path) -> Result<Option<Vec<u8>>> {
    if fs
        .metadata(path)
        .map_err(Error::io("stat", path))?
        .is_none()
    {
        return Ok(None);
    }
    match journal::header(fs, path) {
        Ok(h) => Ok(Some(h.identity)),
        Err(journal::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) if never_written(fs, path, &e) => Ok(None),
        Err(e) => Err(Error::journal(path)(e)),
    }
}

pub(super) fn not_a_history(path: &Path) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: "it is a journal, but not an imgtx history".into(),
    }
}

/// Longest history file that has room for a header but no entry.
const EMPTY_HISTORY_MAX: u64 = 64;

/// True when `e` says the history's creation was interrupted before its header was durable:
/// the header is incomplete, or damaged with no room for any entry after it.
fn never_written<S: Fs>(fs: &S, path: &Path, e: &journal::Error) -> bool {
    match e {
        journal::Error::HeaderIncomplete { .. } => true,
        journal::Error::BadHeader { .. } => fs
            .metadata(path)
            .ok()
            .flatten()
            .is_some_and(|m| m.len <= EMPTY_HISTORY_MAX),
        _ => false,
    }
}
