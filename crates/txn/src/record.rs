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
    /// What the base and the overlay were when the intent was written, so recovery can tell
    /// them from files that took their place or were changed since. Written right after
    /// the intent, in the same sync; journals of older versions have none.
    States(States),
    /// This image's change is the revert of a committed transaction: its forward direction
    /// puts back the pre-images `Source` names, instead of copying an overlay. Written right
    /// after the intent, in the same sync; only revert journals have it.
    Reverting(Source),
}

/// What a revert puts back into one base: the pre-images the reverted transaction saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The transaction being reverted.
    pub tx: TxId,
    /// The file holding its pre-images of this base (pinned under its kept name).
    pub file: PathBuf,
    /// What that transaction's journal said of the file.
    pub summary: UndoSummary,
}

/// What a file was at one moment: enough to tell it from any file that took its place
/// (device, inode, birth time) and, for a file nobody may write, from itself changed
/// (length, modification and status-change times).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// Its device and inode.
    pub dev_ino: DevIno,
    /// Its length.
    pub len: u64,
    /// Its modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Its status-change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
    /// Its birth time, where the file system records one.
    pub btime_ns: Option<i128>,
}

impl FileState {
    /// The state of a file from its metadata.
    pub fn of(m: &storage::Metadata) -> Self {
        Self {
            dev_ino: DevIno::of(m),
            len: m.len,
            mtime_ns: m.mtime_ns,
            ctime_ns: m.ctime_ns,
            btime_ns: m.btime_ns,
        }
    }

    /// True when `now` can be the same file (same inode, and same birth time where both
    /// are known), whatever was written to it since.
    pub fn same_file(&self, now: &Self) -> bool {
        self.dev_ino == now.dev_ino
            && match (self.btime_ns, now.btime_ns) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// True when `now` is this very file, unchanged since.
    pub fn unchanged(&self, now: &Self) -> bool {
        self.same_file(now)
            && (self.len, self.mtime_ns, self.ctime_ns) == (now.len, now.mtime_ns, now.ctime_ns)
    }
}

/// The base and the overlay of one image as the intent found them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct States {
    /// The base, before the commit wrote it.
    pub base: FileState,
    /// The overlay, which nothing writes from then on.
    pub overlay: FileState,
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
