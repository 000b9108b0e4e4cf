//! The records of a transaction journal (one journal beside each base; the first image's
//! journal is the coordinator and alone holds the commit point).
//!
//! Their encoding is the `journal` crate's (postcard payloads in checksummed frames); what
//! each record means for recovery is in `docs/commit-protocol.md`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::id::TxId;
use crate::manifest::{DevIno, Format};
use crate::plan::Plan;

/// Which way recovery of a committed transaction goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// Copy the overlay into the base again (redo).
    Forward,
    /// Restore the pre-images (undo).
    Back,
}

/// What the undo file of one image holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoSummary {
    /// The base length before the commit.
    pub old_len: u64,
    /// Number of saved ranges.
    pub entries: u64,
    /// Total saved bytes.
    pub bytes: u64,
    /// Length of the undo file.
    pub file_len: u64,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// What this commit will do to this image; written before anything else.
    Intent(Intent),
    /// The pre-images are durable in the undo file.
    Undo(UndoSummary),
    /// The commit point (coordinator only): from here on the transaction is committed.
    Commit,
    /// The direction recovery chose (coordinator only), recorded before acting on it.
    Recovering(Direction),
    /// This image's base holds the outcome of this direction and is synced.
    Applied(Direction),
    /// The history entry is written (coordinator only); only cleanup remains.
    Logged,
}

/// The intent record of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The transaction id.
    pub tx: TxId,
    /// This image's index in the transaction.
    pub index: u32,
    /// Journals of all images, coordinator first.
    pub journals: Vec<PathBuf>,
    /// The base.
    pub base: PathBuf,
    /// Its format.
    pub base_format: Format,
    /// Its (device, inode).
    pub base_dev_ino: DevIno,
    /// The overlay.
    pub overlay: PathBuf,
    /// The overlay's (device, inode).
    pub overlay_dev_ino: DevIno,
    /// Whether pre-images are saved.
    pub undo: bool,
    /// The changed extents and lengths.
    pub plan: Plan,
}
