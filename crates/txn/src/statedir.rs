//! The state directory: manifests of open transactions (`txns/ID.json`), transaction locks
//! (`locks/ID.lock`), the history log (`history`) and its pending outcomes (`pending/`), the
//! records of revertible transactions (`kept/`, see [`crate::kept`]), and the claims older
//! versions kept here (`claims/DEV-INO`; claims now lie beside the images, see
//! [`crate::claim`]).
//!
//! It knows where things are and writes them durably; what a manifest says is
//! [`crate::manifest`]'s, and the locks themselves are taken through the [`crate::Host`].

use std::path::{Path, PathBuf};

use storage::Fs;

use crate::error::{Error, Result};
use crate::files::{read_small, remove_if_exists, sync_dir};
use crate::id::TxId;
use crate::manifest::Manifest;

/// Paths inside the state directory of user `uid`.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// The user whose transactions it holds: only files of theirs are read.
    uid: u32,
}

impl StateDir {
    /// The state directory at `root` (absolute) of user `uid`.
    pub fn new(root: PathBuf, uid: u32) -> Self {
        Self { root, uid }
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The user whose state directory it is.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Refuses the state directory unless nobody but user `uid` can change what is in it,
    /// the way sshd's `StrictModes` treats `~/.ssh`: the directory and its subdirectories
    /// are owned by `uid` and writable by nobody else, and every directory above it is owned
    /// by root or `uid` and writable by others only with the sticky bit set (like `/tmp`).
    /// Whoever could write it could make imgtx remove or overwrite files in `uid`'s name.
    ///
    /// Files inside are checked as they are read ([`StateDir::load`], the history).
    pub fn check_trusted<S: Fs>(&self, fs: &S) -> Result<()> {
        let uid = self.uid;
        let untrusted = |path: &Path, reason: String| Error::UntrustedStateDir {
            path: path.to_path_buf(),
            reason,
        };
        for dir in self.root.ancestors().skip(1) {
            let Some(m) = fs.metadata(dir).map_err(Error::io("stat", dir))? else {
                continue;
            };
            if m.uid != 0 && m.uid != uid {
                return Err(untrusted(
                    dir,
                    format!("a directory above it is owned by uid {}", m.uid),
                ));
            }
            if m.mode & 0o022 != 0 && m.mode & 0o1000 == 0 {
                return Err(untrusted(
                    dir,
                    format!(
                        "a directory above it (mode {:o}) lets other users rename it",
                        m.mode
                    ),
                ));
            }
        }
        let dirs = [
            self.root.clone(),
            self.txns(),
            self.claims(),
            self.locks(),
            self.pending_dir(),
        ];
        for dir in dirs {
            if let Some(m) = fs.metadata(&dir).map_err(Error::io("stat", &dir))? {
                if let Some(why) = crate::trust::untrusted_dir(&m, uid) {
                    return Err(untrusted(&dir, why));
                }
            }
        }
        Ok(())
    }

    /// Reads a small file of the state directory whole, if it exists and passes the trust
    /// rule for files (see [`crate::trust`]); `Ok(None)` when missing.
    fn read_trusted<S: Fs>(&self, fs: &S, path: &Path) -> Result<Option<Vec<u8>>> {
        if let Some(why) = crate::trust::untrusted_path(fs, path, self.uid)? {
            return Err(Error::UntrustedStateDir {
                path: path.to_path_buf(),
                reason: why,
            });
        }
        read_small(fs, path)
    }

    /// Creates the directory tree (0700) if missing.
    pub fn create<S: Fs>(&self, fs: &S) -> Result<()> {
        for dir in [self.root.clone(), self.txns(), self.claims(), self.locks()] {
            fs.create_dir(&dir)
                .map_err(Error::io("create the state directory", &dir))?;
        }
        // Barrier: a new directory's entry is durable only once its parent is synced; without
        // this a power cut after the first begin can take the whole registry (manifest and
        // claims) while the overlays beside the bases survive, unexplained. Synced every time,
        // since an earlier process may have died between creating and syncing.
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        for dir in [parent, self.root.as_path()] {
            sync_dir(fs, dir)?;
        }
        Ok(())
    }

    fn txns(&self) -> PathBuf {
        self.root.join("txns")
    }

    fn claims(&self) -> PathBuf {
        self.root.join("claims")
    }

    fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Where outcomes wait that the history could not take yet (see `crate::audit`).
    pub fn pending_dir(&self) -> PathBuf {
        self.root.join("pending")
    }

    /// The pending file of transaction `id`: `ID.next` for a reservation, `ID.entry` for an
    /// outcome waiting for the history.
    pub fn pending(&self, id: &TxId, kind: &str) -> PathBuf {
        self.pending_dir().join(format!("{id}.{kind}"))
    }

    /// The pending outcomes (`pending/ID.entry`), in no particular order; none when the
    /// directory does not exist.
    pub fn list_pending<S: Fs>(&self, fs: &S) -> Result<Vec<PathBuf>> {
        let dir = self.pending_dir();
        if !crate::files::exists(fs, &dir)? {
            return Ok(Vec::new());
        }
        Ok(Self::ids_in(fs, &dir, ".entry")?
            .into_iter()
            .map(|id| self.pending(&id, "entry"))
            .collect())
    }

    /// Reservations and half-written pending files (`ID.next`, `ID.next.tmp`,
    /// `ID.entry.tmp`) as (id, path): what a commit or a recording that died leaves.
    pub fn list_reservations<S: Fs>(&self, fs: &S) -> Result<Vec<(TxId, PathBuf)>> {
        let dir = self.pending_dir();
        if !crate::files::exists(fs, &dir)? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for suffix in [".next", ".next.tmp", ".entry.tmp"] {
            for id in Self::ids_in(fs, &dir, suffix)? {
                let path = dir.join(format!("{id}{suffix}"));
                out.push((id, path));
            }
        }
        Ok(out)
    }

    /// The history log.
    pub fn history(&self) -> PathBuf {
        self.root.join("history")
    }

    /// The history log, after checking that it passes the trust rule for files (a missing
    /// one does: it is created 0600).
    pub fn history_checked<S: Fs>(&self, fs: &S) -> Result<PathBuf> {
        let path = self.history();
        if let Some(why) = crate::trust::untrusted_path(fs, &path, self.uid)? {
            return Err(Error::UntrustedStateDir { path, reason: why });
        }
        Ok(path)
    }

    /// The history's entries, for views and for naming transactions; none when the history
    /// cannot be read or fails the trust rule. What it holds is then unknown, which only
    /// makes a view show less and a lookup find less: neither is a check of the history.
    pub(crate) fn history_entries<S: Fs>(&self, fs: &S) -> Vec<crate::history::HistoryEntry> {
        self.history_checked(fs)
            .and_then(|path| crate::history::read(fs, &path))
            .map(|h| h.entries)
            .unwrap_or_default()
    }

    /// The lock serializing appends to the history.
    pub fn history_lock(&self) -> PathBuf {
        self.locks().join("history.lock")
    }

    /// The manifest of transaction `id`.
    pub fn manifest(&self, id: &TxId) -> PathBuf {
        self.txns().join(format!("{id}.json"))
    }

    /// The lock file of transaction `id`.
    pub fn lock(&self, id: &TxId) -> PathBuf {
        self.locks().join(format!("{id}.lock"))
    }

    /// The ids named by the entries of `dir` that end in `suffix`, sorted.
    fn ids_in<S: Fs>(fs: &S, dir: &Path, suffix: &str) -> Result<Vec<TxId>> {
        let mut ids: Vec<TxId> = fs
            .read_dir(dir)
            .map_err(Error::io("list", dir))?
            .into_iter()
            .filter_map(|n| TxId::parse(n.to_str()?.strip_suffix(suffix)?))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Ids of every transaction with a manifest.
    pub fn list<S: Fs>(&self, fs: &S) -> Result<Vec<TxId>> {
        Self::ids_in(fs, &self.txns(), ".json")
    }

    /// Leftover temporary manifests (`ID.json.tmp`) as (id, path): saves that died before
    /// their rename.
    pub fn list_tmp<S: Fs>(&self, fs: &S) -> Result<Vec<(TxId, PathBuf)>> {
        let ids = Self::ids_in(fs, &self.txns(), ".json.tmp")?;
        Ok(ids
            .into_iter()
            .map(|id| {
                let path = self.txns().join(format!("{id}.json.tmp"));
                (id, path)
            })
            .collect())
    }

    /// Ids of every transaction lock file (`locks/ID.lock`); a missing directory is none.
    pub fn list_locks<S: Fs>(&self, fs: &S) -> Result<Vec<TxId>> {
        let dir = self.locks();
        if !crate::files::exists(fs, &dir)? {
            return Ok(Vec::new());
        }
        Self::ids_in(fs, &dir, ".lock")
    }

    /// Removes a leftover temporary manifest durably.
    pub fn remove_tmp<S: Fs>(&self, fs: &S, path: &Path) -> Result<()> {
        crate::files::remove_durably(fs, path, &self.txns()).map(drop)
    }

    /// All claim files as (path, holder id as written).
    pub fn list_claims<S: Fs>(&self, fs: &S) -> Result<Vec<(PathBuf, String)>> {
        let dir = self.claims();
        let mut out = Vec::new();
        for name in fs.read_dir(&dir).map_err(Error::io("list", &dir))? {
            let path = dir.join(&name);
            if name.to_str().is_some_and(|n| !n.ends_with(".tmp")) {
                let holder = self.read_trusted(fs, &path)?.unwrap_or_default();
                out.push((path, String::from_utf8_lossy(&holder).trim().to_owned()));
            }
        }
        Ok(out)
    }

    /// Reads the manifest of `id`; `Ok(None)` when there is none.
    pub fn load<S: Fs>(&self, fs: &S, id: &TxId) -> Result<Option<Manifest>> {
        let path = self.manifest(id);
        let Some(bytes) = self.read_trusted(fs, &path)? else {
            return Ok(None);
        };
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| Error::ManifestUnreadable {
                path: path.clone(),
                source,
            })?;
        if m.id != *id || m.images.is_empty() {
            return Err(Error::Corrupt {
                path,
                reason: "the manifest does not match its name".into(),
            });
        }
        // Every file imgtx may remove is named after a base and the id; a manifest naming
        // any other file is not one imgtx wrote.
        for img in &m.images {
            let derived = crate::layout::overlay(&img.base, id).ok();
            if !crate::layout::is_plain_absolute(&img.base)
                || derived.as_ref() != Some(&img.overlay)
            {
                return Err(Error::Corrupt {
                    path,
                    reason: format!(
                        "it names {} as the overlay of {}, which is not the name imgtx gives it",
                        img.overlay.display(),
                        img.base.display()
                    ),
                });
            }
        }
        Ok(Some(m))
    }

    /// Writes the manifest durably: temporary file, sync, rename over, sync the directory.
    pub fn save<S: Fs>(&self, fs: &S, m: &Manifest) -> Result<()> {
        let path = self.manifest(&m.id);
        let tmp = self.txns().join(format!("{}.json.tmp", m.id));
        // Strings, numbers and lists only: serializing cannot fail.
        let bytes = serde_json::to_vec_pretty(m).expect("a manifest serializes");
        crate::files::replace_durably(fs, (&self.txns(), &path, &tmp), &bytes)
    }

    /// Removes the manifest durably.
    pub fn remove_manifest<S: Fs>(&self, fs: &S, id: &TxId) -> Result<()> {
        remove_if_exists(fs, &self.manifest(id))?;
        // Barrier: the transaction is gone only once its manifest's removal is durable.
        sync_dir(fs, &self.txns())
    }

    /// Removes a claim of the state directory (which older versions kept there, by the
    /// base's device and inode) whatever holds it: used by recover for orphans.
    pub fn remove_claim<S: Fs>(&self, fs: &S, path: &Path) -> Result<()> {
        remove_if_exists(fs, path)?;
        sync_dir(fs, &self.claims())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::sample;

    #[test]
    fn manifest_saved_and_loaded_through_the_fs_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("state"), nix::unistd::geteuid().as_raw());
        sd.create(&storage::OsFs).unwrap();
        sd.save(&storage::OsFs, &sample()).unwrap();
        let id = TxId::parse("tx-0123456789").unwrap();
        assert_eq!(sd.load(&storage::OsFs, &id).unwrap(), Some(sample()));
        assert_eq!(sd.list(&storage::OsFs).unwrap(), vec![id]);
    }

    #[test]
    fn names_that_are_no_ids_are_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("state"), nix::unistd::geteuid().as_raw());
        sd.create(&storage::OsFs).unwrap();
        std::fs::write(dir.path().join("state/txns/tx-../x.json"), b"").ok();
        std::fs::write(dir.path().join("state/txns/notes.json"), b"{}").unwrap();
        assert!(sd.list(&storage::OsFs).unwrap().is_empty());
    }
}
