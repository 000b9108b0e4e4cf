//! Read-only views: `status`, `diff` and `log`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use storage::Fs;

use crate::error::{Error, Result};
use crate::history::History;
use crate::overlay::open_checked;
use crate::plan::Step;
use crate::state::{Manifest, TxState};
use crate::{Engine, Host};

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
}

/// One transaction as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxStatus {
    /// Its condition.
    pub condition: Condition,
    /// Its manifest.
    pub manifest: Manifest,
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

impl<S: Fs, H: Host> Engine<S, H> {
    /// Every registered transaction (or just `id`), with its condition.
    pub fn status(&self, id: Option<&str>) -> Result<Vec<TxStatus>> {
        let single = id.is_some();
        let ids = match id {
            Some(id) => vec![id.to_owned()],
            None => self.state.list(&self.fs)?,
        };
        let mut out = Vec::new();
        for id in ids {
            let Some(manifest) = self.state.load(&self.fs, &id)? else {
                if single {
                    return Err(Error::NotFound { tx: id });
                }
                continue;
            };
            let mut condition = match manifest.state {
                TxState::Open => Condition::Open,
                TxState::Beginning => Condition::BeginInterrupted,
                TxState::RollingBack => Condition::RollbackInterrupted,
                TxState::Finished => Condition::CleanupInterrupted,
            };
            for img in &manifest.images {
                if self.journals_beside(&img.base)?.contains(&id) {
                    condition = Condition::CommitInterrupted;
                }
            }
            match self.host.lock_exclusive(&self.state.lock(&id), false)? {
                None => condition = Condition::InProgress,
                Some(_guard) => {}
            }
            out.push(TxStatus {
                condition,
                manifest,
            });
        }
        Ok(out)
    }

    /// What each overlay of transaction `id` changes.
    pub fn diff(&self, id: &str) -> Result<Vec<ImageDiff>> {
        let m = self.load_open(id)?;
        let mut out = Vec::new();
        for img in &m.images {
            let ov = open_checked(
                &self.fs,
                id,
                &img.overlay,
                img.overlay_dev_ino,
                &img.base,
                img.base_format,
            )?;
            let meta = self
                .fs
                .metadata(&img.base)
                .map_err(Error::io("stat", &img.base))?;
            let len = meta.map_or(img.base_id.size, |x| x.len);
            let plan = self.plan_of(id, &ov, &img.overlay, len, img.base_format, &img.base)?;
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
    pub fn log(&self, base: Option<&Path>) -> Result<History> {
        let mut h = crate::history::read(&self.fs, &self.state.history())?;
        if let Some(base) = base {
            h.entries
                .retain(|e| e.images.iter().any(|i| i.base == base));
        }
        Ok(h)
    }
}
