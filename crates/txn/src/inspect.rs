//! Read-only views: `status`, `diff` and `log`. Nothing here writes a file.

use std::path::{Path, PathBuf};

use serde::Serialize;
use storage::Fs;

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::history::{ChainHash, History, Verification};
use crate::host::Host;
use crate::id::TxId;
use crate::manifest::{Manifest, TxState};
use crate::overlay::open_checked;
use crate::plan::Step;
use crate::txjournal;

/// The condition of a registered transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Open: overlays may be written, then committed or rolled back.
    Open,
    /// Another imgtx process works on it right now.
    InProgress,
    /// A commit was interrupted: run `imgtx recover`.
    CommitInterrupted,
    /// A begin was interrupted: run `imgtx recover`.
    BeginInterrupted,
    /// A rollback was interrupted: run `imgtx recover`.
    RollbackInterrupted,
    /// A commit finished but its cleanup was interrupted: run `imgtx recover`.
    CleanupInterrupted,
    /// A pre-image file lies beside a base but the journal that explains it is gone (removed
    /// by hand after an interrupted commit): the base may be torn; recovery decides.
    PreImagesWithoutJournal,
}

/// One transaction as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxStatus {
    /// Its condition.
    pub condition: Condition,
    /// Its manifest.
    pub manifest: Manifest,
    /// What became of each of its images since begin, in the manifest's order.
    pub images: Vec<ImageStatus>,
}

/// What happened to one image of an open transaction behind its back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageStatus {
    /// The base is not there (deleted, or its directory moved away or not mounted): it
    /// must be put back for the transaction to commit.
    pub base_missing: bool,
    /// How the base differs from what begin recorded, when something wrote it (or
    /// replaced it) since: the transaction can then no longer commit.
    pub base_changed: Option<String>,
    /// The overlay is gone (deleted by hand): only a rollback ends the transaction now.
    pub overlay_missing: bool,
}

/// The changes an overlay holds for one base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageDiff {
    /// The base.
    pub base: PathBuf,
    /// The overlay.
    pub overlay: PathBuf,
    /// The base's length (raw) or virtual size (qcow2) now.
    pub old_size: u64,
    /// The overlay's virtual size.
    pub new_size: u64,
    /// Changed guest ranges.
    pub extents: Vec<Step>,
    /// Their total length.
    pub changed_bytes: u64,
}

/// Every registered transaction (or just `id`), with its condition.
pub(crate) fn status<S: Fs, H: Host>(e: &Ctx<S, H>, id: Option<&TxId>) -> Result<Vec<TxStatus>> {
    let ids = match id {
        Some(id) => vec![id.clone()],
        None => e.state.list(&e.fs)?,
    };
    let mut out = Vec::new();
    for tx in ids {
        let manifest = match e.state.load(&e.fs, &tx)? {
            // Finished or undone from another state directory or host: not this one's
            // any more (its `recover` removes the manifest).
            Some(m) if m.state == TxState::Open && crate::claim::ended_elsewhere(&e.fs, &m)? => {
                None
            }
            other => other,
        };
        match manifest {
            Some(manifest) => out.push(TxStatus {
                condition: condition(e, &tx, &manifest)?,
                images: images(e, &manifest)?,
                manifest,
            }),
            None if id.is_some() => return Err(crate::lookup::not_open(e, tx.as_str())),
            // Listed a moment ago and gone now: it ended meanwhile.
            None => {}
        }
    }
    Ok(out)
}

/// A file imgtx keeps beside a base for good, whatever becomes of its transactions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeptFile {
    /// Where it is.
    pub path: PathBuf,
    /// How many bytes it takes.
    pub bytes: u64,
}

/// The sanlock lease files beside the bases this state directory's transactions named (its
/// history and its open transactions): they stay after every transaction, so that other
/// hosts find the lease where they look for it (see `crate::lease`). A history that cannot
/// be read only shortens the list: this is a view, not a check.
pub(crate) fn lease_files<S: Fs, H: Host>(e: &Ctx<S, H>) -> Result<Vec<KeptFile>> {
    let mut bases: Vec<PathBuf> = e
        .state
        .history_entries(&e.fs)
        .into_iter()
        .flat_map(|entry| entry.images.into_iter().map(|i| i.base))
        .collect();
    for tx in e.state.list(&e.fs)? {
        if let Some(m) = e.state.load(&e.fs, &tx)? {
            bases.extend(m.images.into_iter().map(|i| i.base));
        }
    }
    bases.sort();
    bases.dedup();
    let mut out = Vec::new();
    for base in bases {
        let Ok(path) = crate::layout::lease(&base) else {
            continue;
        };
        if let Some(meta) = e.fs.metadata(&path).ok().flatten() {
            out.push(KeptFile {
                path,
                bytes: meta.len,
            });
        }
    }
    Ok(out)
}

/// What became of the images of `m` since begin.
fn images<S: Fs, H: Host>(e: &Ctx<S, H>, m: &Manifest) -> Result<Vec<ImageStatus>> {
    let mut out = Vec::new();
    for img in &m.images {
        let now =
            e.fs.metadata(&img.base)
                .map_err(Error::io("stat", &img.base))?;
        let base_missing = m.state == TxState::Open && now.is_none();
        let base_changed = match (m.state, now) {
            (TxState::Open, Some(now)) => {
                img.base_id.difference(&crate::manifest::FileId::of(&now))
            }
            _ => None,
        };
        let overlay =
            e.fs.metadata(&img.overlay)
                .map_err(Error::io("stat", &img.overlay))?;
        out.push(ImageStatus {
            base_missing,
            base_changed,
            overlay_missing: m.state == TxState::Open && overlay.is_none(),
        });
    }
    Ok(out)
}

/// The condition of transaction `id` whose manifest is `m`.
fn condition<S: Fs, H: Host>(e: &Ctx<S, H>, id: &TxId, m: &Manifest) -> Result<Condition> {
    let mut condition = match m.state {
        TxState::Open => Condition::Open,
        TxState::Beginning => Condition::BeginInterrupted,
        TxState::RollingBack => Condition::RollbackInterrupted,
        TxState::Finished => Condition::CleanupInterrupted,
    };
    for img in &m.images {
        // Its directory not there (moved away, not mounted yet): nothing beside the base can
        // be looked at, and [`images`] says the base is missing.
        if !crate::files::exists(&e.fs, crate::layout::dir_of(&img.base)?)? {
            continue;
        }
        if txjournal::beside(&e.fs, &img.base)?.contains(id) {
            condition = Condition::CommitInterrupted;
        } else if txjournal::strays_beside(&e.fs, &img.base)?.contains(id) {
            condition = Condition::PreImagesWithoutJournal;
        }
    }
    if e.host.is_locked(&e.state.lock(id))? {
        condition = Condition::InProgress;
    }
    Ok(condition)
}

/// What each overlay of transaction `id` changes.
pub(crate) fn diff<S: Fs, H: Host>(e: &Ctx<S, H>, id: &TxId) -> Result<Vec<ImageDiff>> {
    let m = e.load_open(id)?;
    let mut out = Vec::new();
    for img in &m.images {
        let ov = open_checked(
            &e.fs,
            id,
            (&img.overlay, img.overlay_dev_ino),
            (&img.base, img.base_format),
        )?;
        let meta =
            e.fs.metadata(&img.base)
                .map_err(Error::io("stat", &img.base))?;
        let len = meta.map_or(img.base_id.size, |x| x.len);
        let plan = crate::plan::for_overlay(
            &e.fs,
            id,
            (&ov, &img.overlay),
            (&img.base, len, img.base_format),
        )?;
        out.push(ImageDiff {
            base: img.base.clone(),
            overlay: img.overlay.clone(),
            old_size: plan.old_len,
            new_size: plan.virtual_size,
            changed_bytes: plan.changed_bytes(),
            extents: plan.steps,
        });
    }
    Ok(out)
}

/// The history, or only the entries touching `base`.
pub(crate) fn log<S: Fs, H: Host>(e: &Ctx<S, H>, base: Option<&Path>) -> Result<History> {
    let mut h = crate::history::read(&e.fs, &e.state.history_checked(&e.fs)?)?;
    if let Some(base) = base {
        h.entries
            .retain(|entry| entry.images.iter().any(|i| i.base == base));
    }
    Ok(h)
}

/// The history's chain, checked (and `anchor` looked for in it).
pub(crate) fn verify_history<S: Fs, H: Host>(
    e: &Ctx<S, H>,
    anchor: Option<&ChainHash>,
) -> Result<Verification> {
    crate::history::verify(&e.fs, &e.state.history_checked(&e.fs)?, anchor)
}
