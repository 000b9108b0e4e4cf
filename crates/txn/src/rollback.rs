//! `rollback`: drop the overlays; the bases were never touched.

use storage::{File, FileKind, Fs};

use crate::error::{Error, Result};
use crate::history::{HistoryImage, Outcome};
use crate::state::{Manifest, TxState};
use crate::{layout, Engine, Host};

impl<S: Fs, H: Host> Engine<S, H> {
    /// Rolls transaction `id` back: removes its overlays, claims and registration.
    pub fn rollback(&self, id: &str) -> Result<()> {
        let _guard = self.lock_tx(id)?;
        let mut m = self
            .state
            .load(&self.fs, id)?
            .ok_or_else(|| Error::NotFound { tx: id.to_owned() })?;
        match m.state {
            TxState::Beginning => {
                return Err(Error::Interrupted {
                    tx: id.to_owned(),
                    doing: "beginning",
                })
            }
            TxState::Finished => {
                return Err(Error::Interrupted {
                    tx: id.to_owned(),
                    doing: "cleaning up after its commit",
                })
            }
            TxState::Open | TxState::RollingBack => {}
        }
        for img in &m.images {
            if self.journals_beside(&img.base)?.iter().any(|t| t == id) {
                return Err(Error::RecoveryNeeded {
                    path: img.base.clone(),
                    tx: id.to_owned(),
                });
            }
            if self
                .fs
                .metadata(&img.overlay)
                .map_err(Error::io("stat", &img.overlay))?
                // Only a regular file can be an image qemu uses; a planted symlink or FIFO
                // must not block the rollback that removes it.
                .is_some_and(|x| x.kind == FileKind::File)
                && self.host.image_in_use(&img.overlay)?
            {
                return Err(Error::InUse {
                    path: img.overlay.clone(),
                });
            }
        }
        if m.state != TxState::RollingBack {
            m.state = TxState::RollingBack;
            // Recorded first, so a crash halfway leaves a transaction `recover` finishes
            // rather than an open one with overlays missing.
            self.state.save(&self.fs, &m)?;
        }
        self.host.step("rollback-marked");
        self.finish_rollback(&m)?;
        self.drop_lock_file(id);
        Ok(())
    }

    /// Removes the overlays of a transaction marked rolling back, logs it, and unregisters it.
    pub(crate) fn finish_rollback(&self, m: &Manifest) -> Result<()> {
        // Overlays removed but still open here: their last close, which frees their blocks,
        // is handed off at the end (see `crate::release`).
        let mut held = Vec::new();
        for img in &m.images {
            let meta = self
                .fs
                .metadata(&img.overlay)
                .map_err(Error::io("stat", &img.overlay))?;
            // Only the file begin created is removed, plus a symlink planted in its place:
            // unlinking a link never touches its target, and keeping it would leave a name
            // that points the next tool at someone else's file.
            let ours = |x: &storage::Metadata| {
                x.kind == FileKind::Symlink
                    || img.overlay_dev_ino.is_none_or(|di| di == (x.dev, x.ino))
            };
            if meta.is_some_and(|x| ours(&x)) {
                // Held open only when it is the very inode begin created (never a FIFO or a
                // stranger, whose open could block or mislead); anything else is just unlinked.
                let recorded = meta.filter(|x| {
                    x.kind == FileKind::File && img.overlay_dev_ino == Some((x.dev, x.ino))
                });
                if let Some(x) = recorded {
                    if let Ok(f) = self.fs.open(&img.overlay, false) {
                        if f.stat().is_ok_and(|o| (o.dev, o.ino) == (x.dev, x.ino)) {
                            held.push(f);
                        }
                    }
                }
                crate::state::remove_if_exists(&self.fs, &img.overlay)?;
                let dir = layout::dir_of(&img.overlay)?;
                // Barrier: the overlay's removal is durable before the transaction is forgotten.
                self.fs.sync_dir(dir).map_err(Error::io("sync", dir))?;
            }
        }
        self.host.step("rollback-overlays");
        let images = m
            .images
            .iter()
            .map(|i| HistoryImage {
                base: i.base.clone(),
                changed_bytes: 0,
            })
            .collect();
        self.log_outcome(Some(m), &m.id, Outcome::RolledBack, images)?;
        for img in &m.images {
            self.state
                .release_base(&self.fs, img.base_id.dev, img.base_id.ino, &m.id)?;
        }
        self.state.remove_manifest(&self.fs, &m.id)?;
        crate::release::close_later(&self.host, held);
        Ok(())
    }
}
