//! What one history entry says: a finished transaction, its images and its outcome; and
//! the entry of format 1, read from histories written before the chain.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::id::TxId;

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
    /// Who took the transaction over from whom, when recovery on another host of a sanlock
    /// lockspace ended it after its own host died. The chain stores it in a record kind of
    /// its own, so entries without it keep their (postcard) encoding. In JSON it is a field,
    /// absent when there was no takeover; `HistoryEntry::from_json` reads it back.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub taken_over: Option<Takeover>,
}

impl HistoryEntry {
    /// Reads an entry back from its JSON (a pending entry), its takeover included, which
    /// plain deserialization leaves out for the sake of the chain's postcard encoding.
    pub(crate) fn from_json(bytes: &[u8]) -> serde_json::Result<Self> {
        #[derive(Deserialize)]
        struct OnlyTakeover {
            #[serde(default)]
            taken_over: Option<Takeover>,
        }
        let mut entry: Self = serde_json::from_slice(bytes)?;
        entry.taken_over = serde_json::from_slice::<OnlyTakeover>(bytes)?.taken_over;
        Ok(entry)
    }
}

/// An entry as format 1 stores it: postcard is not self-describing, so its records decode
/// only as exactly this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct EntryV1 {
    pub(super) id: TxId,
    pub(super) name: Option<String>,
    pub(super) outcome: Outcome,
    pub(super) user: String,
    pub(super) uid: u32,
    pub(super) host: String,
    pub(super) started: String,
    pub(super) ended: String,
    pub(super) images: Vec<HistoryImage>,
    pub(super) command: Option<Vec<String>>,
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
            taken_over: None,
        }
    }
}

/// A transaction of a dead host taken over: who took it from whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Takeover {
    /// The lockspace.
    pub lockspace: String,
    /// The host id of the dead host that made the claims.
    pub from_host_id: u64,
    /// Its host name, as its claims say.
    pub from_host: String,
    /// The host id that took the transaction over.
    pub by_host_id: u64,
}
