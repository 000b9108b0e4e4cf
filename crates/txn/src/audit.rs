//! Recording outcomes in the history without ever holding the data path hostage.
//!
//! A commit checks, before its commit point, that its outcome can be recorded: the history
//! must read back whole, and a reservation of the entry (`pending/ID.next` in the state
//! directory) must be durable, which also proves the state directory has room. A failure
//! there refuses the commit with the bases untouched. After the commit point nothing about
//! the history may stop the commit: the entry is appended if the history takes it, and
//! otherwise kept as a pending entry (`pending/ID.entry`) that the next command retries,
//! with a warning. Recovery, rollback and abandon record the same way, and never fail for
//! the history's sake.
//!
//! A reservation is not an outcome (the commit may still be undone): only `.entry` files
//! are ever appended by someone else.

use std::path::{Path, PathBuf};

use storage::{File, Fs};

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::files::{read_small, remove_if_exists, sync_dir};
use crate::history::{HistoryEntry, HistoryImage, Outcome};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::Manifest;

/// The history entry of transaction `tx`, which ended with `outcome`; `m` is its manifest
/// when there still is one (recovery from journals alone may have none).
pub(crate) fn entry<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    m: Option<&Manifest>,
    tx: &TxId,
    outcome: Outcome,
    images: Vec<HistoryImage>,
) -> HistoryEntry {
    let (user, uid) = e.host.user();
    let ended = e.now();
    HistoryEntry {
        id: tx.clone(),
        name: m.and_then(|m| m.name.clone()),
        outcome,
        user,
        uid,
        host: e.host.hostname(),
        started: m.map_or_else(|| ended.clone(), |m| m.created.clone()),
        ended,
        images,
        command: m.and_then(|m| m.command.clone()),
        reverts: None,
        taken_over: e.takeover(),
    }
}

/// Before a commit point: refuses (naming the file) unless `entry` will be recordable — the
/// history reads back whole, and a reservation of the entry is durable.
pub(crate) fn reserve<S: Fs, H: Host>(e: &Ctx<S, H>, entry: &HistoryEntry) -> Result<()> {
    let history = e.state.history_checked(&e.fs)?;
    let unusable = |source: Error| Error::HistoryUnusable {
        path: history.clone(),
        source: Box::new(source),
    };
    crate::history::read(&e.fs, &history).map_err(unusable)?;
    let next = e.state.pending(&entry.id, "next");
    write_durably(&e.fs, &next, entry).map_err(|source| Error::HistoryUnusable {
        path: next.clone(),
        source: Box::new(source),
    })
}

/// Drops the reservation of transaction `tx` (its commit did not reach the commit point).
pub(crate) fn release<S: Fs, H: Host>(e: &Ctx<S, H>, tx: &TxId) {
    let next = e.state.pending(tx, "next");
    if let Err(error) = crate::files::remove_durably(&e.fs, &next, &e.state.pending_dir()) {
        tracing::warn!(path = %next.display(), %error, "a history reservation was left");
    }
}

/// Records `entry`: appended to the history, or else kept as a pending entry for the next
/// command to append, with a warning. Never fails: the outcome it records has happened.
pub(crate) fn record<S: Fs, H: Host>(e: &Ctx<S, H>, entry: &HistoryEntry) {
    match append(e, entry) {
        Ok(()) => {
            let dir = e.state.pending_dir();
            for kind in ["next", "entry"] {
                let _ =
                    crate::files::remove_durably(&e.fs, &e.state.pending(&entry.id, kind), &dir);
            }
            return;
        }
        Err(error) => tracing::warn!(
            tx = %entry.id,
            history = %e.state.history().display(),
            error = %crate::error::chain(&error),
            "the history could not take this outcome; it is kept pending and appended by the next imgtx command that can"
        ),
    }
    let pending = e.state.pending(&entry.id, "entry");
    if let Err(error) = write_durably(&e.fs, &pending, entry) {
        // No room even for that: the reservation (the same entry, made before the commit
        // point) becomes the pending entry, by a rename that needs no room.
        let next = e.state.pending(&entry.id, "next");
        let kept =
            e.fs.rename(&next, &pending).is_ok() && sync_dir(&e.fs, &e.state.pending_dir()).is_ok();
        if !kept {
            tracing::error!(tx = %entry.id, error = %crate::error::chain(&error), "the outcome could not be recorded anywhere");
        }
    }
}

/// Appends the pending entries of earlier commands to the history, oldest first; leaves
/// them (with a warning) while the history cannot take them.
pub(crate) fn flush_pending<S: Fs, H: Host>(e: &Ctx<S, H>) {
    let Ok(pending) = e.state.list_pending(&e.fs) else {
        return;
    };
    let mut entries = Vec::new();
    for path in pending {
        let read = read_small(&e.fs, &path).ok().flatten();
        match read.and_then(|b| HistoryEntry::from_json(&b).ok()) {
            Some(entry) => entries.push((path, entry)),
            None => {
                tracing::warn!(path = %path.display(), "a pending history entry cannot be read; left for inspection");
            }
        }
    }
    // In the order they ended: RFC 3339 UTC times sort as text.
    entries.sort_by(|a, b| a.1.ended.cmp(&b.1.ended));
    for (path, entry) in entries {
        match append(e, &entry) {
            Ok(()) => {
                let _ = crate::files::remove_durably(&e.fs, &path, &e.state.pending_dir());
            }
            Err(error) => {
                tracing::warn!(
                    history = %e.state.history().display(),
                    error = %crate::error::chain(&error),
                    "pending history entries are still waiting for the history"
                );
                return;
            }
        }
    }
}

/// Appends `entry` to the history, under the history lock.
fn append<S: Fs, H: Host>(e: &Ctx<S, H>, entry: &HistoryEntry) -> Result<()> {
    let history = e.state.history_checked(&e.fs)?;
    let _lock = e.host.lock_exclusive(&e.state.history_lock(), true)?;
    crate::history::append(&e.fs, &history, entry, &e.now()).map(drop)
}

/// Writes `entry` as JSON to `path` durably: temporary file, sync, rename, directory sync.
fn write_durably<S: Fs>(fs: &S, path: &Path, entry: &HistoryEntry) -> Result<()> {
    let dir = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
    fs.create_dir(&dir)
        .map_err(Error::io("create the pending history directory", &dir))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    remove_if_exists(fs, &tmp)?;
    // Strings and numbers only: serializing cannot fail.
    let bytes = serde_json::to_vec(entry).expect("a history entry serializes");
    let f = fs.create_new(&tmp).map_err(Error::io("create", &tmp))?;
    f.write_all_at(&bytes, 0)
        .map_err(Error::io("write", &tmp))?;
    // Barrier: the entry is durable before its name says it is there.
    f.sync_data().map_err(Error::io("sync", &tmp))?;
    drop(f);
    fs.rename(&tmp, path)
        .map_err(Error::io("rename into place", path))?;
    sync_dir(fs, &dir)
}
