//! `commit`: the crash-safe copy of every overlay into its base, with one commit point for
//! the whole transaction. Every step below is journaled; `docs/commit-protocol.md` explains
//! what recovery does after a crash at each of them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use storage::copy::{read_ahead, Piece, Stopped};
use storage::{File, FileKind, Fs};

use crate::error::{Error, Result};
use crate::history::{HistoryEntry, HistoryImage, Outcome};
use crate::overlay::{open_checked, Reader};
use crate::plan::{chunks, Action, Plan};
use crate::record::{Direction, Intent, Record};
use crate::state::{FileId, Format, Manifest, TxState};
use crate::undo::{CHUNK, READ_AHEAD};
use crate::{layout, undo, CommitOptions, CommitReport, Engine, Host, Phase, Progress, Spare};

pub(crate) type TxJournal<S> = journal::Journal<<S as Fs>::File, Record>;

/// The identity bound into a transaction journal's header.
pub(crate) fn journal_identity(tx: &str, index: usize) -> Vec<u8> {
    format!("imgtx {tx} image {index}").into_bytes()
}

impl<S: Fs, H: Host> Engine<S, H> {
    /// Loads the manifest of an open transaction.
    pub(crate) fn load_open(&self, id: &str) -> Result<Manifest> {
        let m = self
            .state
            .load(&self.fs, id)?
            .ok_or_else(|| Error::NotFound { tx: id.to_owned() })?;
        match m.state {
            TxState::Open => Ok(m),
            TxState::Beginning => Err(Error::Interrupted {
                tx: id.to_owned(),
                doing: "beginning",
            }),
            TxState::RollingBack => Err(Error::Interrupted {
                tx: id.to_owned(),
                doing: "rolling back",
            }),
            TxState::Finished => Err(Error::Interrupted {
                tx: id.to_owned(),
                doing: "cleaning up after its commit",
            }),
        }
    }

    /// Commits transaction `id`; `progress` hears about the data copied.
    pub fn commit(
        &self,
        id: &str,
        opts: CommitOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<CommitReport> {
        let _guard = self.lock_tx(id)?;
        let m = self.load_open(id)?;
        for img in &m.images {
            self.check_no_interrupted(&img.base)?;
        }
        // Keep every qemu out of bases and overlays until the commit is over.
        let mut fences = Vec::new();
        for img in &m.images {
            fences.push(self.host.fence_image(&img.base)?);
            // Only a regular file can be fenced; anything else in the overlay's place (a
            // planted symlink or FIFO, nothing at all) is refused by open_checked below with
            // a reason that names it.
            let ov_meta = self
                .fs
                .metadata(&img.overlay)
                .map_err(Error::io("stat", &img.overlay))?;
            if ov_meta.is_some_and(|x| x.kind == FileKind::File) {
                fences.push(self.host.fence_image(&img.overlay)?);
            }
        }
        let mut overlays = Vec::new();
        let mut plans = Vec::new();
        for img in &m.images {
            let meta = self
                .fs
                .metadata(&img.base)
                .map_err(Error::io("stat", &img.base))?;
            let now = meta.map(|x| FileId::of(&x));
            let changed = match now {
                None => Some("it no longer exists".to_owned()),
                Some(now) => img.base_id.difference(&now),
            };
            if let Some(what) = changed {
                return Err(Error::BaseChanged {
                    path: img.base.clone(),
                    tx: m.id.clone(),
                    what,
                });
            }
            let ov = open_checked(
                &self.fs,
                &m.id,
                &img.overlay,
                img.overlay_dev_ino,
                &img.base,
                img.base_format,
            )?;
            let plan = self.plan_of(
                &m.id,
                &ov,
                &img.overlay,
                img.base_id.size,
                img.base_format,
                &img.base,
            )?;
            // Barrier: whatever qemu wrote to the overlay must be durable before the journal
            // relies on it, since after the commit point recovery redoes from the overlay.
            ov.sync_data().map_err(Error::io("sync", &img.overlay))?;
            overlays.push(ov);
            plans.push(plan);
        }
        let journals: Vec<PathBuf> = m
            .images
            .iter()
            .map(|i| layout::journal(&i.base, &m.id))
            .collect::<Result<_>>()?;
        let mut js: Vec<TxJournal<S>> = Vec::new();
        let mut undo_files = Vec::new();
        // While the pre-images are saved (bound by writes to the new pre-image file), the
        // overlays are read into the page cache, so the forward copy then reads memory.
        let stop = AtomicBool::new(false);
        let budget = WARM_MAX / m.images.len().max(1) as u64;
        let before = std::thread::scope(|s| {
            let warmers: Vec<_> = m
                .images
                .iter()
                .zip(&overlays)
                .map(|(img, ov)| {
                    let len = ov.len().unwrap_or(0).min(budget);
                    let stop = &stop;
                    (!opts.no_undo && img.base_format == Format::Raw)
                        .then(|| s.spawn(move || storage::copy::warm(ov, len, stop)))
                })
                .collect();
            let before = self.commit_prepare(
                &m,
                opts,
                (&plans, &journals),
                (&mut js, &mut undo_files),
                &mut *progress,
            );
            stop.store(true, Ordering::Relaxed);
            for h in warmers.into_iter().flatten() {
                // How far it got does not matter: the forward copy reads through the page
                // cache either way, and finds there what was warmed.
                let _ = h.join();
            }
            before
        });
        if let Err(e) = before {
            // Nothing of any base was touched yet: drop what the attempt wrote.
            drop(js);
            if let Err(clean) = self.discard_uncommitted(&m.id, &journals) {
                tracing::warn!(tx = %m.id, error = %clean, "could not clean up a failed commit");
            }
            return Err(e);
        }
        let after = |e: Error| Error::CommitInterrupted {
            tx: m.id.clone(),
            source: Box::new(e),
        };
        js[0]
            .append(&Record::Commit)
            .map_err(Error::journal(&journals[0]))
            .map_err(after)?;
        // Barrier — THE COMMIT POINT: once this record is durable the transaction is
        // committed; before it, recovery leaves every base untouched.
        js[0]
            .sync()
            .map_err(Error::journal(&journals[0]))
            .map_err(after)?;
        self.host.step("commit-point");
        for (i, img) in m.images.iter().enumerate() {
            self.apply_forward(
                &m.id,
                i,
                (&overlays[i], &img.overlay),
                (&img.base, (img.base_id.dev, img.base_id.ino)),
                img.base_format,
                &plans[i],
                progress,
            )
            .map_err(after)?;
            js[i]
                .append(&Record::Applied(Direction::Forward))
                .map_err(Error::journal(&journals[i]))
                .map_err(after)?;
            // Barrier: the base was synced by apply_forward; recording it lets recovery skip it.
            js[i]
                .sync()
                .map_err(Error::journal(&journals[i]))
                .map_err(after)?;
        }
        self.host.step("applied");
        let images: Vec<HistoryImage> = m
            .images
            .iter()
            .zip(&plans)
            .map(|(img, p)| HistoryImage {
                base: img.base.clone(),
                changed_bytes: p.changed_bytes(),
            })
            .collect();
        self.log_outcome(Some(&m), &m.id, Outcome::Committed, images.clone())
            .map_err(after)?;
        js[0]
            .append(&Record::Logged)
            .map_err(Error::journal(&journals[0]))
            .map_err(after)?;
        js[0]
            .sync()
            .map_err(Error::journal(&journals[0]))
            .map_err(after)?;
        self.host.step("logged");
        drop(js);
        let spares = self
            .cleanup_commit(
                &m.id,
                &m.cleanup_list(),
                &journals,
                !(opts.no_spare || opts.no_undo),
            )
            .map_err(after)?;
        // The overlays (and pre-image files not kept as spares) are unlinked and that is
        // durable; freeing their blocks is left to whoever closes them last.
        crate::release::close_later(&self.host, overlays.into_iter().chain(undo_files).collect());
        drop(fences);
        Ok(CommitReport {
            id: m.id.clone(),
            images,
            spares,
        })
    }

    /// Journals the intent of every image and saves the pre-images: everything before the
    /// commit point. Pushes the open journals into `js`, coordinator first.
    fn commit_prepare(
        &self,
        m: &Manifest,
        opts: CommitOptions,
        (plans, journals): (&[Plan], &[PathBuf]),
        (js, undo_files): (&mut Vec<TxJournal<S>>, &mut Vec<S::File>),
        progress: &mut dyn FnMut(Progress),
    ) -> Result<()> {
        for (i, img) in m.images.iter().enumerate() {
            let intent = Intent {
                tx: m.id.clone(),
                index: u32::try_from(i).unwrap_or(u32::MAX),
                journals: journals.to_vec(),
                base: img.base.clone(),
                base_format: img.base_format,
                base_dev_ino: (img.base_id.dev, img.base_id.ino),
                overlay: img.overlay.clone(),
                overlay_dev_ino: img.overlay_dev_ino.unwrap_or_default(),
                undo: !opts.no_undo,
                plan: plans[i].clone(),
            };
            // `create` syncs the new journal and its directory. The coordinator (index 0) is
            // created first and removed last, so a participant journal never exists without it.
            let mut j = TxJournal::<S>::create(&self.fs, &journals[i], &journal_identity(&m.id, i))
                .map_err(Error::journal(&journals[i]))?;
            j.append(&Record::Intent(intent))
                .map_err(Error::journal(&journals[i]))?;
            // Barrier: the intent is durable before any pre-image or base write.
            j.sync().map_err(Error::journal(&journals[i]))?;
            js.push(j);
        }
        self.host.step("intent");
        if !opts.no_undo {
            for (i, img) in m.images.iter().enumerate() {
                let base =
                    self.open_base(&m.id, &img.base, (img.base_id.dev, img.base_id.ino), false)?;
                let (old_len, ranges) =
                    self.preimage_ranges(&base, &img.base, img.base_format, &plans[i])?;
                let undo_path = layout::undo(&img.base, &m.id)?;
                let total = ranges.iter().map(|&(_, len)| len).sum();
                let mut saved = |done| {
                    progress(Progress {
                        image: i,
                        phase: Phase::PreImages,
                        done,
                        total,
                    });
                };
                saved(0);
                let (summary, file) = undo::save(
                    &self.fs,
                    &base,
                    (&img.base, &undo_path, &layout::spare(&img.base)?),
                    (&m.id, self.host.user().1),
                    (old_len, &ranges),
                    &mut saved,
                )?;
                undo_files.push(file);
                js[i]
                    .append(&Record::Undo(summary))
                    .map_err(Error::journal(&journals[i]))?;
                // Barrier: the journal vouches for the pre-images only once they are durable
                // (undo::save synced them); this sync makes the voucher itself durable. The
                // coordinator's voucher becomes durable with the commit record, one sync later
                // in the same log: no base is written before that sync, and a crash before it
                // leaves no commit record, so the pre-images are never needed.
                if i > 0 {
                    js[i].sync().map_err(Error::journal(&journals[i]))?;
                }
            }
            self.host.step("undo");
        }
        Ok(())
    }

    /// Removes pre-images and journals of a commit that never reached its commit point.
    /// The bases were not touched; the transaction stays open.
    pub(crate) fn discard_uncommitted(&self, tx: &str, journals: &[PathBuf]) -> Result<()> {
        for j in journals {
            let base_name = j.file_name().and_then(|n| n.to_str()).and_then(|n| {
                n.strip_prefix('.')
                    .and_then(|n| n.strip_suffix(&format!(".{tx}.imgtx.journal")))
            });
            if let (Some(name), Ok(dir)) = (base_name, layout::dir_of(j)) {
                if crate::state::remove_if_exists(&self.fs, &layout::undo(&dir.join(name), tx)?)? {
                    self.fs.sync_dir(dir).map_err(Error::io("sync", dir))?;
                }
            }
        }
        // Participants first, coordinator last.
        for j in journals.iter().skip(1).chain(journals.first()) {
            if self.fs.metadata(j).map_err(Error::io("stat", j))?.is_some() {
                journal::remove(&self.fs, j).map_err(Error::journal(j))?;
            }
        }
        Ok(())
    }

    /// The plan for one overlay over a base whose length (raw) is `base_len`.
    pub(crate) fn plan_of(
        &self,
        tx: &str,
        ov: &S::File,
        ov_path: &Path,
        base_len: u64,
        format: Format,
        base: &Path,
    ) -> Result<Plan> {
        let bad = |e: qcow::Error| Error::OverlayInvalid {
            path: ov_path.to_path_buf(),
            tx: tx.to_owned(),
            reason: format!("its cluster map cannot be read ({e})"),
        };
        let img = qcow::Image::open(Reader(ov)).map_err(bad)?;
        let map = img.map().map_err(bad)?;
        let old_len = match format {
            Format::Raw => base_len,
            Format::Qcow2 => {
                let b = self.fs.open(base, false).map_err(Error::io("open", base))?;
                let base_img = qcow::Image::open(Reader(&b)).map_err(Error::qcow(base))?;
                base_img.header().virtual_size
            }
        };
        Ok(Plan::from_map(old_len, img.header().virtual_size, &map))
    }

    /// The base byte ranges a commit can overwrite, and the base's current length.
    fn preimage_ranges(
        &self,
        base: &S::File,
        path: &Path,
        format: Format,
        plan: &Plan,
    ) -> Result<(u64, Vec<(u64, u64)>)> {
        let len = base.len().map_err(Error::io("stat", path))?;
        let ranges = match format {
            Format::Raw => plan.raw_preimage_ranges(),
            Format::Qcow2 => {
                let img = qcow::Image::open(Reader(base)).map_err(Error::qcow(path))?;
                let guest: Vec<(qcow::GuestOffset, u64)> = plan
                    .ranges()
                    .into_iter()
                    .map(|(o, l)| (qcow::GuestOffset(o), l))
                    .collect();
                let inv = img.inventory(&guest).map_err(Error::qcow(path))?;
                // Bytes past the current end need no pre-image: restoring the length drops them.
                inv.ranges
                    .iter()
                    .filter(|r| r.offset.0 < len)
                    .map(|r| (r.offset.0, r.len.min(len - r.offset.0)))
                    .collect()
            }
        };
        Ok((len, ranges))
    }

    /// Writes the overlay's changes into the base and syncs it. Idempotent: it only ever
    /// writes the overlay's content, which a commit never changes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_forward(
        &self,
        tx: &str,
        index: usize,
        (ov, ov_path): (&S::File, &Path),
        (base_path, base_dev_ino): (&Path, (u64, u64)),
        format: Format,
        plan: &Plan,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<()> {
        let total = plan.changed_bytes();
        let mut done = 0u64;
        progress(Progress {
            image: index,
            phase: Phase::Apply,
            done,
            total,
        });
        if format == Format::Qcow2 {
            let base = self.open_base(tx, base_path, base_dev_ino, false)?;
            // qemu gets the validated overlay and the opened base as descriptors, not names
            // that may have been swapped since (issue 6, hole 3).
            match (ov.as_fd(), base.as_fd()) {
                (Some(o), Some(b)) => {
                    self.host
                        .qemu_img_commit_open((ov_path, o), (base_path, b), format)?;
                }
                _ => self.host.qemu_img_commit(ov_path, base_path, format)?,
            }
            // Barrier: the committed base must be durable before the journal says applied.
            base.sync_data().map_err(Error::io("sync", base_path))?;
            progress(Progress {
                image: index,
                phase: Phase::Apply,
                done: total,
                total,
            });
            return Ok(());
        }
        let img = qcow::Image::open(Reader(ov)).map_err(Error::qcow(ov_path))?;
        let base = self.open_base(tx, base_path, base_dev_ino, true)?;
        let len = base.len().map_err(Error::io("stat", base_path))?;
        // A redo sets the length again even when the live length already shows it: after a
        // failed sync the growth may never reach the disk, whatever reads say (crash_faults:
        // commit with EIO on the base sync, then recover).
        if plan.new_len() > len || plan.new_len() > plan.old_len {
            // Grow first: the undo record holds the old length, so a crash leaves a base
            // that undo truncates back and redo fills in.
            base.set_len(plan.new_len())
                .map_err(Error::io("grow", base_path))?;
        }
        let ov_len = ov.len().map_err(Error::io("stat", ov_path))?;
        let mut copier = Copier {
            img: &img,
            ov,
            ov_path,
            base: &base,
            base_path,
            buf: Vec::new(),
            direct: Vec::new(),
            other: Vec::new(),
        };
        let mut copied = |n: u64| {
            done += n;
            progress(Progress {
                image: index,
                phase: Phase::Apply,
                done,
                total,
            });
        };
        for step in &plan.steps {
            match step.action {
                Action::Zero => {
                    base.zero_range(step.offset, step.len)
                        .map_err(Error::io("zero a range of", base_path))?;
                    copied(step.len);
                }
                Action::Copy => {
                    for (offset, len) in chunks(&[(step.offset, step.len)], CHUNK) {
                        copier.plan(offset, len, ov_len)?;
                        if copier.direct.len() + copier.other.len() >= BATCH {
                            copier.flush(&mut copied)?;
                        }
                    }
                }
            }
        }
        copier.flush(&mut copied)?;
        // Barrier: every new byte of the base is durable before the journal says applied.
        base.sync_data().map_err(Error::io("sync", base_path))
    }

    /// Opens the base `path` and checks that the descriptor is the inode `dev_ino` the
    /// transaction was begun on: the name was checked earlier, but what gets written is the
    /// descriptor, and the name may have been swapped in between (issue 6).
    fn open_base(
        &self,
        tx: &str,
        path: &Path,
        dev_ino: (u64, u64),
        writable: bool,
    ) -> Result<S::File> {
        let base = self
            .fs
            .open(path, writable)
            .map_err(Error::io("open", path))?;
        let opened = base.stat().map_err(Error::io("stat", path))?;
        if (opened.dev, opened.ino) != dev_ino {
            return Err(Error::BaseChanged {
                path: path.to_path_buf(),
                tx: tx.to_owned(),
                what: "it was replaced by another file while being opened".to_owned(),
            });
        }
        Ok(base)
    }

    /// Appends the history entry of a finished transaction.
    pub(crate) fn log_outcome(
        &self,
        m: Option<&Manifest>,
        tx: &str,
        outcome: Outcome,
        images: Vec<HistoryImage>,
    ) -> Result<()> {
        let (user, uid) = self.host.user();
        let ended = self.now();
        let entry = HistoryEntry {
            id: tx.to_owned(),
            name: m.and_then(|m| m.name.clone()),
            outcome,
            user,
            uid,
            host: self.host.hostname(),
            started: m.map_or_else(|| ended.clone(), |m| m.created.clone()),
            ended,
            images,
            command: m.and_then(|m| m.command.clone()),
        };
        let _lock = self.host.lock_exclusive(&self.state.history_lock(), true)?;
        crate::history::append(&self.fs, &self.state.history(), &entry)
    }

    /// Removes overlays, pre-images and journals of a finished commit, then its registration.
    /// Each (base, overlay, overlay dev/ino) names one image; `journals` lists coordinator first.
    /// With `keep_spare` each pre-image file is renamed to its base's spare instead, for the
    /// next commit to overwrite (see `undo::save`); the spares kept are returned.
    pub(crate) fn cleanup_commit(
        &self,
        tx: &str,
        images: &[(PathBuf, PathBuf, (u64, u64))],
        journals: &[PathBuf],
        keep_spare: bool,
    ) -> Result<Vec<Spare>> {
        let mut spares = Vec::new();
        if let Some(mut m) = self.state.load(&self.fs, tx)? {
            if m.state != TxState::Finished {
                m.state = TxState::Finished;
                // Recorded before the journals go, so a crash during cleanup still leaves
                // `recover` a trace of what to finish.
                self.state.save(&self.fs, &m)?;
            }
        }
        for (base, overlay, dev_ino) in images {
            let meta = self
                .fs
                .metadata(overlay)
                .map_err(Error::io("stat", overlay))?;
            // Only remove the file begin created; a stranger under that name is left alone.
            if meta.is_some_and(|x| (x.dev, x.ino) == *dev_ino || *dev_ino == (0, 0)) {
                crate::state::remove_if_exists(&self.fs, overlay)?;
            }
            let undo = layout::undo(base, tx)?;
            let spare = layout::spare(base)?;
            if keep_spare && self.keep_as_spare(&undo, &spare) {
                // Only reported: a spare whose length cannot be read is still a spare.
                let bytes = self.fs.metadata(&spare).ok().flatten().map_or(0, |m| m.len);
                spares.push(Spare { path: spare, bytes });
            } else {
                crate::state::remove_if_exists(&self.fs, &undo)?;
            }
            let dir = layout::dir_of(base)?;
            // Barrier: overlays and pre-images are gone (or renamed) for good before the
            // journals that explain them are removed.
            self.fs.sync_dir(dir).map_err(Error::io("sync", dir))?;
        }
        self.host.step("files-removed");
        // Participants first, coordinator last: a participant journal never outlives it.
        for j in journals.iter().skip(1).chain(journals.first()) {
            if self.fs.metadata(j).map_err(Error::io("stat", j))?.is_some() {
                journal::remove(&self.fs, j).map_err(Error::journal(j))?;
            }
        }
        self.host.step("journals-removed");
        if let Some(m) = self.state.load(&self.fs, tx)? {
            for img in &m.images {
                self.state
                    .release_base(&self.fs, img.base_id.dev, img.base_id.ino, tx)?;
            }
            self.state.remove_manifest(&self.fs, tx)?;
        }
        self.drop_lock_file(tx);
        Ok(spares)
    }

    /// Renames the pre-image file `undo` to `spare`; false if there is none or it cannot be.
    fn keep_as_spare(&self, undo: &Path, spare: &Path) -> bool {
        match self.fs.rename(undo, spare) {
            Ok(()) => true,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(path = %undo.display(), error = %e, "pre-image file not kept");
                }
                false
            }
        }
    }
}

/// How many extents a commit collects before copying them: bounds memory (24 bytes each)
/// whatever the overlay's size.
const BATCH: usize = 64 * 1024;

/// At most this much of the overlays is read into the page cache ahead of the forward copy,
/// so that a huge overlay does not push out what it warmed before the copy gets to it.
const WARM_MAX: u64 = 512 << 20;

/// Copies overlay data into a raw base, reading the overlay in host order.
///
/// Extents are collected in guest order, then sorted by their host offset and read in
/// host-contiguous runs of up to [`CHUNK`] bytes, so a cold overlay is read front to back
/// in large requests, which the kernel's readahead extends. Reading in guest order instead,
/// even in large host-contiguous pieces, jumps around the overlay file (qemu appends
/// clusters in the order the guest wrote them) and measured slower than 64 KiB reads that
/// readahead could follow. Writes land in the page cache, so their order costs little; one
/// `fdatasync` follows. Compressed clusters, and ranges the file does not hold (they read as
/// zeros), go through the qcow reader.
struct Copier<'a, F: File> {
    img: &'a qcow::Image<Reader<'a, F>>,
    ov: &'a F,
    ov_path: &'a Path,
    base: &'a F,
    base_path: &'a Path,
    buf: Vec<u8>,
    /// (host offset, guest offset, length) of stored extents.
    direct: Vec<(u64, u64, u64)>,
    /// (guest offset, length) of everything else.
    other: Vec<(u64, u64)>,
}

impl<F: File> Copier<'_, F> {
    /// Adds the guest range `[offset, offset + len)` (at most [`CHUNK`] bytes) to the batch.
    fn plan(&mut self, offset: u64, len: u64, ov_len: u64) -> Result<()> {
        let extents = self
            .img
            .map_range(qcow::GuestOffset(offset), len)
            .map_err(Error::qcow(self.ov_path))?;
        for e in extents {
            match e.kind {
                qcow::ExtentKind::Data { host }
                    if host.0.checked_add(e.len).is_some_and(|x| x <= ov_len) =>
                {
                    self.direct.push((host.0, e.guest.0, e.len));
                }
                _ => self.other.push((e.guest.0, e.len)),
            }
        }
        Ok(())
    }

    /// Copies the batch into the base; `copied` hears the bytes done.
    fn flush(&mut self, copied: &mut dyn FnMut(u64)) -> Result<()> {
        self.direct.sort_unstable();
        let mut runs = Vec::new();
        let mut i = 0;
        while let Some(&(start, _, first_len)) = self.direct.get(i) {
            // Each extent is at most CHUNK long (it comes from a map of at most CHUNK).
            let mut run = first_len;
            let mut end = i + 1;
            while let Some(&(host, _, len)) = self.direct.get(end) {
                if Some(host) != start.checked_add(run) || run + len > CHUNK {
                    break;
                }
                run += len;
                end += 1;
            }
            runs.push(Piece {
                offset: start,
                len: usize::try_from(run).unwrap_or(usize::MAX),
                tag: (i, end),
                // Through the page cache: the kernel's readahead follows these host-ordered
                // runs better than direct reads of them do (cold `--no-undo`, small scenario,
                // alternating binaries: 0.50-0.64 s against 0.61-0.84 s), and whatever
                // `storage::copy::warm` read during the pre-image save is there already.
                cached: true,
            });
            i = end;
        }
        let (direct, base, base_path) = (&self.direct, self.base, self.base_path);
        // The next runs are read while this one is written; each piece's writeback starts at
        // once, so the final fdatasync has little left to flush.
        let done = read_ahead(self.ov, runs, READ_AHEAD, |run, data| {
            for &(host, guest, len) in direct.get(run.tag.0..run.tag.1).unwrap_or_default() {
                let at = usize::try_from(host - run.offset).unwrap_or(usize::MAX);
                let piece = at
                    .checked_add(usize::try_from(len).unwrap_or(usize::MAX))
                    .and_then(|e| data.get(at..e))
                    .ok_or_else(|| {
                        Error::Invalid(format!("extent at {host:#x} outside its run"))
                    })?;
                base.write_all_at(piece, guest)
                    .map_err(Error::io("write", base_path))?;
                if let Err(e) = base.start_writeback(guest, len) {
                    tracing::debug!(path = %base_path.display(), error = %e, "early writeback refused");
                }
            }
            copied(data.len() as u64);
            Ok(())
        });
        match done {
            Ok(()) => {}
            Err(Stopped::Read { source, .. }) => {
                return Err(Error::io("read", self.ov_path)(source))
            }
            Err(Stopped::Write(e)) => return Err(e),
        }
        self.direct.clear();
        for (offset, len) in chunks(&self.other, CHUNK) {
            self.buf.resize(usize::try_from(len).unwrap_or(0), 0);
            self.img
                .read_at(&mut self.buf, qcow::GuestOffset(offset))
                .map_err(Error::qcow(self.ov_path))?;
            self.base
                .write_all_at(&self.buf, offset)
                .map_err(Error::io("write", self.base_path))?;
            copied(len);
        }
        self.other.clear();
        Ok(())
    }
}
