//! Kept pre-images: what makes a committed transaction revertible.
//!
//! A commit that saved pre-images leaves them behind: by default as its base's spare
//! (`.NAME.imgtx.spare`), which the base's next commit overwrites, so the most recent commit
//! of each base can be taken back at no cost; with `--keep`, pinned under a name of their
//! own (`.NAME.ID.imgtx.kept`) until pruned. A record in the state directory
//! (`kept/ID.json`) says, per base, which file holds the pre-images, what its journal said of
//! them, and checksums of what the commit wrote there, so that a revert can tell whether the
//! base still holds exactly that ([`KeptImage::written`]).
//!
//! The record is an index, not a trust anchor: the file it names is checked like any
//! pre-image file (owner, mode, links; every entry's checksum is bound to the transaction's
//! id, so a spare reused by a later commit no longer verifies as this one's).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storage::Fs;

use crate::error::{Error, Result};
use crate::files::{read_small, sync_dir};
use crate::id::TxId;
use crate::manifest::{DevIno, Format};
use crate::record::UndoSummary;
use crate::statedir::StateDir;
pub use crate::written::Written;

/// What a committed transaction left to take it back with, for one base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptImage {
    /// The base.
    pub base: PathBuf,
    /// Its device and inode.
    pub base_dev_ino: DevIno,
    /// Its format.
    pub format: Format,
    /// Its length right after the commit.
    pub new_len: u64,
    /// The file that holds the pre-images.
    pub file: PathBuf,
    /// What the commit's journal said of that file.
    pub summary: UndoSummary,
    /// The ranges the commit changed, with checksums of what it left there (all 0 when
    /// `post` holds the proof instead).
    pub written: Vec<Written>,
    /// The commit's overlay, kept when its data reached the base by reflink (so it was never
    /// read, and has no checksums): a revert compares the base with it. It shares its data
    /// blocks with the base, so it takes little space until the base changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post: Option<PathBuf>,
}

/// The record of a committed transaction's kept pre-images, `kept/ID.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version.
    pub version: u32,
    /// The transaction.
    pub tx: TxId,
    /// When it was committed (RFC 3339 UTC).
    pub committed: String,
    /// The same, in nanoseconds since the epoch: orders commits within one second.
    #[serde(default)]
    pub committed_ns: u128,
    /// Pinned by `--keep`: never reused by a later commit, only pruned.
    pub pinned: bool,
    /// The revert of this transaction under way (or interrupted), so that recovery can
    /// release what it claimed even if it died before its journals said anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverting: Option<TxId>,
    /// One entry per base.
    pub images: Vec<KeptImage>,
}

impl Record {
    /// Bytes the kept files hold.
    pub fn bytes<S: Fs>(&self, fs: &S) -> u64 {
        self.images
            .iter()
            .filter_map(|i| fs.metadata(&i.file).ok().flatten())
            .map(|m| m.len)
            .sum()
    }
}

impl StateDir {
    fn kept_dir(&self) -> PathBuf {
        self.root().join("kept")
    }

    fn kept_path(&self, id: &TxId) -> PathBuf {
        self.kept_dir().join(format!("{id}.json"))
    }

    /// Writes the record of `r.tx`'s kept pre-images durably.
    pub(crate) fn save_kept<S: Fs>(&self, fs: &S, r: &Record) -> Result<()> {
        let dir = self.kept_dir();
        if !crate::files::exists(fs, &dir)? {
            fs.create_dir(&dir)
                .map_err(Error::io("create the kept directory", &dir))?;
            // Barrier: the directory's name is durable before a record in it is relied on.
            sync_dir(fs, self.root())?;
        }
        let path = self.kept_path(&r.tx);
        let tmp = dir.join(format!("{}.json.tmp", r.tx));
        // Plain data: serializing cannot fail.
        let bytes = serde_json::to_vec_pretty(r).expect("a kept record serializes");
        crate::files::replace_durably(fs, (&dir, &path, &tmp), &bytes)
    }

    /// The record of `id`'s kept pre-images, if there is one.
    pub(crate) fn load_kept<S: Fs>(&self, fs: &S, id: &TxId) -> Result<Option<Record>> {
        let path = self.kept_path(id);
        if let Some(why) = crate::trust::untrusted_path(fs, &path, self.uid())? {
            return Err(Error::UntrustedStateDir { path, reason: why });
        }
        let Some(bytes) = read_small(fs, &path)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::ManifestUnreadable { path, source })
    }

    /// Every kept record, oldest commit first.
    pub(crate) fn list_kept<S: Fs>(&self, fs: &S) -> Result<Vec<Record>> {
        let dir = self.kept_dir();
        if !crate::files::exists(fs, &dir)? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for name in fs.read_dir(&dir).map_err(Error::io("list", &dir))? {
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(TxId::parse)
            else {
                continue;
            };
            out.extend(self.load_kept(fs, &id)?);
        }
        out.sort_by(|a, b| (&a.committed, a.committed_ns).cmp(&(&b.committed, b.committed_ns)));
        Ok(out)
    }

    /// Removes the record of `id`'s kept pre-images, durably.
    pub(crate) fn remove_kept<S: Fs>(&self, fs: &S, id: &TxId) -> Result<()> {
        crate::files::remove_durably(fs, &self.kept_path(id), &self.kept_dir()).map(drop)
    }
}

/// Forgets every kept record whose pre-images lie in `file` (the spare a new commit is about
/// to overwrite): a transaction that cannot be taken back whole cannot be taken back at all.
/// The spares of its other bases stay, as spares; its kept overlays go.
pub(crate) fn forget_file<S: Fs>(fs: &S, state: &StateDir, file: &Path) -> Result<()> {
    for r in state.list_kept(fs)? {
        if r.images.iter().any(|i| i.file == file) {
            remove_posts(fs, &r)?;
            state.remove_kept(fs, &r.tx)?;
        }
    }
    Ok(())
}

/// Removes the kept overlays of `r` (durably): nothing else refers to them.
pub(crate) fn remove_posts<S: Fs>(fs: &S, r: &Record) -> Result<()> {
    for post in r.images.iter().filter_map(|i| i.post.as_deref()) {
        crate::files::remove_durably(fs, post, crate::layout::dir_of(post)?)?;
    }
    Ok(())
}

/// The first range of `k`'s base that no longer holds what the commit left there, judged by
/// the checksums or, when the commit kept its overlay, by comparing with the overlay's data
/// (which must pass the trust rule for user `uid`, like a pre-image file).
pub(crate) fn first_change<S: Fs>(
    fs: &S,
    base: &S::File,
    k: &KeptImage,
    uid: u32,
) -> Result<Option<Written>> {
    let Some(post) = &k.post else {
        return crate::written::first_change(base, &k.base, &k.written);
    };
    let gone = || Error::Corrupt {
        path: post.clone(),
        reason: "the overlay kept to check a revert is gone or not imgtx's".into(),
    };
    if !crate::files::exists(fs, post)? || crate::trust::untrusted_path(fs, post, uid)?.is_some() {
        return Err(gone());
    }
    let ov = fs.open(post, false).map_err(Error::io("open", post))?;
    let img = qcow::Image::open(crate::overlay::Reader(&ov)).map_err(Error::qcow(post))?;
    let (mut want, mut have) = (Vec::new(), Vec::new());
    for w in &k.written {
        for piece in crate::plan::chunks(&[crate::plan::ByteRange::new(w.offset, w.len)], 4 << 20) {
            let n = usize::try_from(piece.len).unwrap_or(0);
            want.resize(n, 0);
            have.resize(n, 0);
            img.read_at(&mut want, qcow::GuestOffset(piece.offset))
                .map_err(Error::qcow(post))?;
            let got = crate::files::read_up_to(base, &mut have, piece.offset)
                .map_err(Error::io("read", &k.base))?;
            have[got..].fill(0);
            if want != have {
                return Ok(Some(*w));
            }
        }
    }
    Ok(None)
}

/// Records what transaction `tx` keeps to be reverted with: `images`, one per base whose
/// pre-images are kept, each naming the file cleanup is about to keep them in (`pinned`:
/// under names of the transaction's own). Written before that cleanup, so that nothing kept
/// is ever left without a record saying what it is; a file cleanup then fails to keep only
/// makes the transaction not revertible (a revert says its pre-images are gone). Only a
/// later revert needs the record: a failure is a warning and never undoes the commit.
pub(crate) fn remember<S: Fs, H: crate::host::Host>(
    e: &crate::ctx::Ctx<S, H>,
    tx: &TxId,
    images: Vec<KeptImage>,
    pinned: bool,
) {
    if images.is_empty() {
        return;
    }
    let record = Record {
        version: 1,
        tx: tx.clone(),
        committed: e.now(),
        committed_ns: e
            .host
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        pinned,
        reverting: None,
        images,
    };
    if let Err(error) = e.state.save_kept(&e.fs, &record) {
        tracing::warn!(%tx, %error, "cannot be reverted: the record of its kept pre-images was not written");
    }
}

/// Which kept pre-images `prune` frees: those of transactions committed before `older_than`
/// ago (all when `None`), except the `keep_last` most recent ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneOptions {
    /// Only those older than this.
    pub older_than: Option<std::time::Duration>,
    /// Never the most recent this many.
    pub keep_last: usize,
    /// Say what would be freed, free nothing.
    pub dry_run: bool,
}

/// One transaction whose kept pre-images were (or would be) freed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The transaction, no longer revertible.
    pub tx: TxId,
    /// When it was committed.
    pub committed: String,
    /// Bytes freed.
    pub bytes: u64,
}

/// Frees the kept pre-images `opts` selects: each file only when it still holds that
/// transaction's pre-images (a spare reused by a commit from another state directory is that
/// commit's now), then the record.
pub(crate) fn prune<S: Fs, H: crate::host::Host>(
    e: &crate::ctx::Ctx<S, H>,
    opts: PruneOptions,
) -> Result<Vec<Pruned>> {
    let all = e.state.list_kept(&e.fs)?;
    let cutoff = opts.older_than.map(|age| {
        crate::time::rfc3339(
            e.host
                .now()
                .checked_sub(age)
                .unwrap_or(std::time::UNIX_EPOCH),
        )
    });
    let eligible = all.len().saturating_sub(opts.keep_last);
    let mut out = Vec::new();
    for r in all.into_iter().take(eligible) {
        if cutoff.as_ref().is_some_and(|c| r.committed >= *c) {
            continue;
        }
        // A revert of it may be under way.
        let _guard = e.lock_tx(&r.tx)?;
        let Some(r) = e.state.load_kept(&e.fs, &r.tx)? else {
            continue;
        };
        let mut bytes = 0;
        for k in &r.images {
            let Some(meta) = e.fs.metadata(&k.file).map_err(Error::io("stat", &k.file))? else {
                continue;
            };
            let summary = crate::preimage::summarize(&e.fs, &k.file, &r.tx, e.host.user().1);
            if summary.is_ok_and(|s| s == k.summary) {
                bytes += meta.len;
                if !opts.dry_run {
                    crate::files::remove_durably(&e.fs, &k.file, crate::layout::dir_of(&k.file)?)?;
                }
            }
        }
        if !opts.dry_run {
            remove_posts(&e.fs, &r)?;
            e.state.remove_kept(&e.fs, &r.tx)?;
            e.drop_lock_file(&r.tx);
        }
        out.push(Pruned {
            tx: r.tx,
            committed: r.committed,
            bytes,
        });
    }
    Ok(out)
}
