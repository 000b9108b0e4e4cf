//! `begin`: claim the bases and create one qcow2 overlay over each.

use std::path::Path;
use std::time::Duration;

use storage::{File, FileKind, Fs};

use crate::error::{Error, Result};
use crate::overlay::Reader;
use crate::state::{FileId, Format, ImageEntry, Manifest, TxState};
use crate::{layout, BeginOptions, Engine, Host, Wait};

const POLL: Duration = Duration::from_millis(200);

impl<S: Fs, H: Host> Engine<S, H> {
    /// Begins a transaction over `opts.bases`; returns its manifest (id, images, overlays).
    pub fn begin(&self, opts: &BeginOptions) -> Result<Manifest> {
        if opts.bases.is_empty() {
            return Err(Error::Invalid("name at least one base image".into()));
        }
        let mut images = Vec::new();
        let mut sizes = Vec::new();
        for given in &opts.bases {
            // Resolved once, here: every later open of the base and of the files beside it
            // follows no symlink (issue 6, T24), so the stored path must hold none.
            let base = &self
                .fs
                .canonicalize(given)
                .map_err(Error::io("resolve", given))?;
            let meta = self.fs.metadata(base).map_err(Error::io("stat", base))?;
            let invalid = |reason: &str| Error::InvalidBase {
                path: base.clone(),
                reason: reason.into(),
            };
            let meta = meta.ok_or_else(|| invalid("it does not exist"))?;
            if meta.kind != FileKind::File {
                return Err(invalid("it is not a regular file"));
            }
            layout::dir_of(base)?;
            if images
                .iter()
                .any(|i: &ImageEntry| (i.base_id.dev, i.base_id.ino) == (meta.dev, meta.ino))
            {
                return Err(invalid("it is named twice in this transaction"));
            }
            self.check_no_interrupted(base)?;
            if self.host.image_in_use(base)? {
                return Err(Error::InUse { path: base.clone() });
            }
            let (format, virtual_size) = self.decide_format(base, opts.base_format)?;
            sizes.push(virtual_size);
            images.push(ImageEntry {
                base: base.clone(),
                base_format: format,
                overlay: base.clone(), // replaced once the id is known
                base_id: FileId::of(&meta),
                overlay_dev_ino: None,
            });
        }
        let id = self.host.new_id()?;
        for img in &mut images {
            img.overlay = layout::overlay(&img.base, &id)?;
        }
        let _guard = self.lock_tx(&id)?;
        let (user, uid) = self.host.user();
        let mut m = Manifest {
            version: 1,
            id: id.clone(),
            name: opts.name.clone(),
            state: TxState::Beginning,
            created: self.now(),
            user,
            uid,
            host: self.host.hostname(),
            command: opts.command.clone(),
            images,
        };
        // The manifest comes first so that every claim and overlay is explained by it.
        self.state.save(&self.fs, &m)?;
        self.host.step("begin-manifest");
        match self.begin_rest(&mut m, &sizes, opts.wait) {
            Ok(()) => Ok(m),
            Err(e) => {
                if let Err(clean) = self.undo_begin(&m) {
                    tracing::warn!(tx = %m.id, error = %clean, "could not clean up a failed begin");
                }
                self.drop_lock_file(&m.id);
                Err(e)
            }
        }
    }

    fn begin_rest(&self, m: &mut Manifest, sizes: &[u64], wait: Wait) -> Result<()> {
        for img in &m.images {
            self.claim_with_wait(&img.base, img.base_id.dev, img.base_id.ino, &m.id, wait)?;
        }
        self.host.step("begin-claims");
        for (img, &size) in m.images.iter_mut().zip(sizes) {
            let base = img.base.to_str().ok_or_else(|| Error::InvalidBase {
                path: img.base.clone(),
                reason: "its path is not UTF-8".into(),
            })?;
            let bytes = qcow::create_overlay(size, base, img.base_format.as_str())
                .map_err(Error::qcow(&img.overlay))?;
            let f = self
                .fs
                .create_new(&img.overlay)
                .map_err(Error::io("create the overlay", &img.overlay))?;
            f.write_all_at(&bytes, 0)
                .map_err(Error::io("write", &img.overlay))?;
            // Barrier: the overlay header must be durable before the manifest says the
            // transaction is open, or a crash could leave an open transaction over garbage.
            f.sync_data().map_err(Error::io("sync", &img.overlay))?;
            let dir = layout::dir_of(&img.overlay)?;
            self.fs.sync_dir(dir).map_err(Error::io("sync", dir))?;
            let meta = self
                .fs
                .metadata(&img.overlay)
                .map_err(Error::io("stat", &img.overlay))?;
            img.overlay_dev_ino = meta.map(|x| (x.dev, x.ino));
        }
        self.host.step("begin-overlays");
        m.state = TxState::Open;
        self.state.save(&self.fs, m)?;
        self.host.step("begin-open");
        Ok(())
    }

    fn claim_with_wait(&self, base: &Path, dev: u64, ino: u64, id: &str, wait: Wait) -> Result<()> {
        let mut waited = Duration::ZERO;
        loop {
            match self.state.claim_base(&self.fs, dev, ino, id)? {
                Ok(()) => return Ok(()),
                Err(holder) => {
                    // A holder that is not simply open will never let go by itself.
                    match self
                        .state
                        .load(&self.fs, &holder)
                        .ok()
                        .flatten()
                        .map(|m| m.state)
                    {
                        Some(TxState::Open) => {}
                        Some(TxState::Beginning)
                            if self
                                .host
                                .lock_exclusive(&self.state.lock(&holder), false)?
                                .is_none() => {}
                        Some(TxState::Beginning) => {
                            return Err(Error::Interrupted {
                                tx: holder,
                                doing: "beginning",
                            })
                        }
                        Some(TxState::RollingBack) => {
                            return Err(Error::Interrupted {
                                tx: holder,
                                doing: "rolling back",
                            })
                        }
                        Some(TxState::Finished) => {
                            return Err(Error::Interrupted {
                                tx: holder,
                                doing: "cleaning up after its commit",
                            })
                        }
                        None => {
                            return Err(Error::Interrupted {
                                tx: holder,
                                doing: "releasing its claim",
                            })
                        }
                    }
                    let out_of_time = match wait {
                        Wait::No => {
                            return Err(Error::Busy {
                                path: base.to_path_buf(),
                                holder,
                            })
                        }
                        Wait::Forever => false,
                        Wait::For(limit) => waited >= limit,
                    };
                    if out_of_time {
                        return Err(Error::WaitTimedOut {
                            path: base.to_path_buf(),
                            holder,
                        });
                    }
                    tracing::debug!(base = %base.display(), %holder, "waiting for a busy base");
                    self.host.sleep(POLL);
                    waited += POLL;
                }
            }
        }
    }

    /// Removes whatever a begin created: overlays, claims, manifest. Idempotent.
    pub(crate) fn undo_begin(&self, m: &Manifest) -> Result<()> {
        for img in &m.images {
            // The name carries this transaction's random id and was created exclusively, so
            // a file there is this transaction's overlay.
            if crate::state::remove_if_exists(&self.fs, &img.overlay)? {
                let dir = layout::dir_of(&img.overlay)?;
                self.fs.sync_dir(dir).map_err(Error::io("sync", dir))?;
            }
        }
        for img in &m.images {
            self.state
                .release_base(&self.fs, img.base_id.dev, img.base_id.ino, &m.id)?;
        }
        self.state.remove_manifest(&self.fs, &m.id)
    }

    /// The format of `base` and its virtual size. Without a stated format, a file is qcow2
    /// only if it has the magic and parses as a qcow2 image without a backing file; a file
    /// with the magic that fails that is ambiguous and refused, never guessed.
    fn decide_format(&self, base: &Path, stated: Option<Format>) -> Result<(Format, u64)> {
        let f = self.fs.open(base, false).map_err(Error::io("open", base))?;
        let len = f.len().map_err(Error::io("stat", base))?;
        let mut magic = [0u8; 4];
        let has_magic =
            len >= 4 && f.read_exact_at(&mut magic, 0).is_ok() && qcow::has_qcow2_magic(&magic);
        let as_qcow2 = || -> Result<u64, String> {
            let img = qcow::Image::open(Reader(&f)).map_err(|e| e.to_string())?;
            if img.header().backing_file.is_some() {
                return Err("it has a backing file of its own".into());
            }
            Ok(img.header().virtual_size)
        };
        match stated {
            Some(Format::Raw) => Ok((Format::Raw, len)),
            Some(Format::Qcow2) => as_qcow2()
                .map(|size| (Format::Qcow2, size))
                .map_err(|reason| Error::InvalidBase {
                    path: base.to_path_buf(),
                    reason,
                }),
            None if !has_magic => Ok((Format::Raw, len)),
            None => match as_qcow2() {
                Ok(size) => Ok((Format::Qcow2, size)),
                Err(_) => Err(Error::AmbiguousFormat {
                    path: base.to_path_buf(),
                }),
            },
        }
    }
}
