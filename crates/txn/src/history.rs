//! The history log: one entry per finished transaction, in a journal in the state directory
//! (`history`), each record linked to the one before it by a SHA-256 hash chain.
//!
//! Two formats are found on disk, told apart by the journal's identity:
//!
//! * format 1 (`imgtx history v1`): bare entries, written by imgtx before the chain. Still
//!   read; the next append converts it (`aside::convert_v1`): the file is kept aside unchanged
//!   and a chained history begins, its genesis naming the old file and its entries carried
//!   over.
//! * format 2 (`imgtx history v2`): every record is a [`chain::Link`].
//!
//! An append never cuts or rewrites a byte that does not verify: the journal is opened with
//! [`journal::RecoveryMode::AbsoluteConsistency`], so a damaged tail is refused instead of
//! truncated, and then the whole file is kept aside (`aside::keep_damaged`) and the chain
//! continues in a new file after its last good record. `verify` checks the chain. The format
//! and its reasons are in docs/journal-format.md, "The history chain".

mod aside;
mod chain;
mod verify;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storage::Fs;

use crate::error::{Error, Result};
use crate::id::TxId;

pub use chain::{CarriedOver, ChainHash, KeptAside, ParseChainHashError};
pub(crate) use verify::verify;
pub use verify::{AnchorCheck, ChainFormat, Problem, ProblemKind, Verification};

use chain::{Genesis, Item, Link};

/// The identity of an unchained history (format 1), written before the chain existed.
const IDENTITY_V1: &[u8] = b"imgtx history v1";
/// The identity of a chained history (format 2).
const IDENTITY_V2: &[u8] = b"imgtx history v2";

/// A history journal of format 2: every record is the body of one [`Link`].
type ChainJournal<F> = journal::Journal<F, Vec<u8>>;

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `commit` finished.
    Committed,
    /// `rollback` finished (or `run`'s command failed).
    RolledBack,
    /// `recover` finished an interrupted commit.
    RecoveredForward,
    /// `recover` undid an interrupted commit.
    RecoveredBack,
    /// `recover --abandon` ended it without writing any image; what it left is kept aside.
    Abandoned,
    /// `revert` took back a committed transaction (named by the entry's `reverts`), as a
    /// transaction of its own: this one.
    Reverted,
}

impl Outcome {
    /// Whether a transaction that ended this way changed its images.
    pub fn changed_images(self) -> bool {
        matches!(
            self,
            Self::Committed | Self::RecoveredForward | Self::Reverted
        )
    }

    /// What happened to the transaction, in plain words for people ("rolled back",
    /// "finished by recovery"), to follow "it was".
    pub fn words(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::RolledBack => "rolled back",
            Self::RecoveredForward => {
                "committed by recovery, which finished its interrupted commit"
            }
            Self::RecoveredBack => "undone by recovery, which took back its interrupted commit",
            Self::Abandoned => "abandoned (no image written)",
            Self::Reverted => "committed as a revert",
        }
    }

    /// The name `log` and `--json` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::RolledBack => "rolled_back",
            Self::RecoveredForward => "recovered_forward",
            Self::RecoveredBack => "recovered_back",
            Self::Abandoned => "abandoned",
            Self::Reverted => "reverted",
        }
    }
}

/// One image in a history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryImage {
    /// The base path.
    pub base: PathBuf,
    /// Bytes the transaction changed in it (0 when rolled back).
    pub changed_bytes: u64,
}

/// One finished transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The transaction id.
    pub id: TxId,
    /// Its name, if any.
    pub name: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Who ended it.
    pub user: String,
    /// Their uid.
    pub uid: u32,
    /// Where.
    pub host: String,
    /// When it began (RFC 3339 UTC).
    pub started: String,
    /// When it ended (RFC 3339 UTC).
    pub ended: String,
    /// Its images.
    pub images: Vec<HistoryImage>,
    /// The command line of `imgtx run`.
    pub command: Option<Vec<String>>,
    /// The transaction this one took back, when it is a revert. Pending entries written as
    /// JSON before this field existed read as `None`.
    #[serde(default)]
    pub reverts: Option<TxId>,
}

/// An entry as format 1 stores it: postcard is not self-describing, so its records decode
/// only as exactly this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EntryV1 {
    id: TxId,
    name: Option<String>,
    outcome: Outcome,
    user: String,
    uid: u32,
    host: String,
    started: String,
    ended: String,
    images: Vec<HistoryImage>,
    command: Option<Vec<String>>,
}

impl From<EntryV1> for HistoryEntry {
    fn from(e: EntryV1) -> Self {
        // Format 1 named the reverted transaction only in the command line that `revert`
        // recorded (`imgtx revert TX`); that is where it is read back from.
        let reverts = match (e.outcome, e.command.as_deref()) {
            (Outcome::Reverted, Some([_, verb, tx])) if verb == "revert" => TxId::parse(tx),
            _ => None,
        };
        Self {
            id: e.id,
            name: e.name,
            outcome: e.outcome,
            user: e.user,
            uid: e.uid,
            host: e.host,
            started: e.started,
            ended: e.ended,
            images: e.images,
            command: e.command,
            reverts,
        }
    }
}

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

/// Appends `entry` durably, linked to the last record of the history; `now` (RFC 3339 UTC)
/// dates whatever this append has to keep aside first. The caller holds the history lock.
/// Returns the new head hash.
///
/// A format-1 history is converted first, and a history whose file ends in bytes that do
/// not verify is kept aside first (see the module docs); each of those steps ends with a
/// history that the next step opens, so a crash between them only repeats a step.
///
/// # Errors
/// `Journal` when the history is damaged anywhere but at its tail (nothing is changed
/// then), `Corrupt` when the file is not an imgtx history, `Io`.
pub fn append<S: Fs>(fs: &S, path: &Path, entry: &HistoryEntry, now: &str) -> Result<ChainHash> {
    // At most: convert, keep a damaged tail aside, append.
    for _ in 0..4 {
        match identity(fs, path)? {
            None => {
                // Missing, or its creation was interrupted (so it never held an entry); under
                // the history lock nobody else is creating it now.
                crate::files::remove_if_exists(fs, path)?;
                let j = ChainJournal::<S::File>::create(fs, path, IDENTITY_V2)
                    .map_err(Error::journal(path))?;
                return append_to(j, &[], entry, now, path);
            }
            Some(id) if id == IDENTITY_V1 => {
                aside::convert_v1(fs, path, now)?;
                continue;
            }
            Some(id) if id == IDENTITY_V2 => {}
            Some(_) => return Err(not_a_history(path)),
        }
        // Strict: the journal refuses a damaged tail rather than truncating it.
        match ChainJournal::<S::File>::open_with(
            fs,
            path,
            journal::RecoveryMode::AbsoluteConsistency,
        ) {
            Ok((j, replay)) => return append_to(j, &replay.records, entry, now, path),
            Err(journal::Error::Corrupt { .. }) => {}
            Err(e) => return Err(Error::journal(path)(e)),
        }
        // Damage: at the tail it is kept aside; anywhere else the journal refuses here, and
        // nothing is changed.
        let replay = journal::read::<S, Vec<u8>>(fs, path).map_err(Error::journal(path))?;
        if let journal::Tail::Torn {
            valid_len,
            discarded,
        } = replay.tail
        {
            aside::keep_damaged(fs, path, (valid_len, discarded), now)?;
        }
    }
    Err(Error::Corrupt {
        path: path.to_path_buf(),
        reason: "it kept changing while an entry was being appended".into(),
    })
}

/// Removes what an append that died while keeping the history `path` aside left half-made
/// (see `aside`); the history itself is whole, and the next append starts over from it. The
/// caller holds the history lock.
pub(crate) fn remove_unfinished<S: Fs>(fs: &S, path: &Path) -> Result<()> {
    let mut removed = false;
    for tmp in [aside::tmp_of(path), aside::partial_of(path)] {
        if crate::files::remove_if_exists(fs, &tmp)? {
            tracing::debug!(path = %tmp.display(), "removing what a crash left half-made while the history was kept aside");
            removed = true;
        }
    }
    if removed {
        crate::files::sync_dir(fs, &aside::dir_of(path))?;
    }
    Ok(())
}

/// Appends `entry` (after a genesis, if the history has no record yet) to the open history
/// `j` whose records are `records`, and syncs.
fn append_to<F: storage::File>(
    mut j: ChainJournal<F>,
    records: &[Vec<u8>],
    entry: &HistoryEntry,
    now: &str,
    path: &Path,
) -> Result<ChainHash> {
    if let Some(bad) = first_broken_link(records) {
        // Appending adds and never judges: the records are left as they are, and `verify`
        // says what is wrong with them.
        tracing::warn!(history = %path.display(), record = bad, "the history's chain does not verify");
    }
    let head =
        link_to(&mut j, records, Item::Entry(entry.clone()), now).map_err(Error::journal(path))?;
    // Barrier: the entry is durable before the operation reports success.
    j.sync().map_err(Error::journal(path))?;
    tracing::info!(history = %path.display(), tx = %entry.id, head = %head, "history entry appended");
    Ok(head)
}

/// Appends `item` as the next link of `j` (whose records are `records`), after a genesis
/// when there is none yet. Not synced. Returns the hash of the new record.
fn link_to<F: storage::File>(
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
fn append_link<F: storage::File>(
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
fn salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    if let Err(error) = getrandom::fill(&mut salt) {
        tracing::warn!(%error, "no random salt for the history's genesis");
    }
    salt
}

/// The position of the first record of `records` whose link does not match the record
/// before it (a quick check on append; `verify` says what is wrong).
fn first_broken_link(records: &[Vec<u8>]) -> Option<usize> {
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
fn identity<S: Fs>(fs: &S, path: &Path) -> Result<Option<Vec<u8>>> {
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

fn not_a_history(path: &Path) -> Error {
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

#[cfg(test)]
mod tests;
