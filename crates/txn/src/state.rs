//! The state directory: manifests of open transactions (`txns/ID.json`), per-base claims
//! (`claims/DEV-INO`), transaction locks (`locks/ID.lock`) and the history log (`history`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storage::{File, FileKind, Fs, Metadata};

use crate::error::{Error, Result};

/// The format of a base image, decided at begin and recorded, never probed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A raw image: imgtx copies changed extents itself.
    Raw,
    /// A qcow2 image without a backing file: `qemu-img commit` writes it.
    Qcow2,
}

impl Format {
    /// The qemu driver name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// Where a transaction is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxState {
    /// Claims taken, overlays being created.
    Beginning,
    /// Overlays exist and may be written.
    Open,
    /// Overlays being removed.
    RollingBack,
    /// Committed (or recovered) and logged; only cleanup remains.
    Finished,
}

/// What identifies a file and its content version: device, inode, size, modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i64,
}

impl FileId {
    /// The identity of a file from its metadata.
    pub fn of(m: &Metadata) -> Self {
        Self {
            dev: m.dev,
            ino: m.ino,
            size: m.len,
            mtime_ns: i64::try_from(m.mtime_ns).unwrap_or(i64::MAX),
        }
    }

    /// Describes how `now` differs from `self`, or `None` when they are equal.
    pub fn difference(&self, now: &Self) -> Option<String> {
        if (self.dev, self.ino) != (now.dev, now.ino) {
            Some("it is a different file now".to_owned())
        } else if self.size != now.size {
            Some(format!("size {:#x} became {:#x}", self.size, now.size))
        } else if self.mtime_ns != now.mtime_ns {
            Some("it was modified".to_owned())
        } else {
            None
        }
    }
}

/// One base image of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Absolute path of the base.
    pub base: PathBuf,
    /// Its format.
    pub base_format: Format,
    /// Absolute path of the overlay imgtx created over it.
    pub overlay: PathBuf,
    /// The base as it was at begin.
    pub base_id: FileId,
    /// The overlay's (device, inode) once created.
    pub overlay_dev_ino: Option<(u64, u64)>,
}

/// The record of one open transaction, `txns/ID.json` in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this file.
    pub version: u32,
    /// The transaction id.
    pub id: String,
    /// The optional name given at begin.
    pub name: Option<String>,
    /// Where the transaction is.
    pub state: TxState,
    /// When it began (RFC 3339 UTC).
    pub created: String,
    /// Who began it.
    pub user: String,
    /// Their uid.
    pub uid: u32,
    /// On which host.
    pub host: String,
    /// The command `imgtx run` runs in it.
    pub command: Option<Vec<String>>,
    /// Its images, the first being the coordinator.
    pub images: Vec<ImageEntry>,
}

impl Manifest {
    /// Each image as (base, overlay, overlay dev/ino): what a finished commit removes.
    pub(crate) fn cleanup_list(&self) -> Vec<(PathBuf, PathBuf, (u64, u64))> {
        self.images
            .iter()
            .map(|i| {
                (
                    i.base.clone(),
                    i.overlay.clone(),
                    i.overlay_dev_ino.unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root` (absolute).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Its root.
    pub fn root(&self) -> &Path {
        &self.root
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
            fs.sync_dir(dir).map_err(Error::io("sync", dir))?;
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

    /// The history log.
    pub fn history(&self) -> PathBuf {
        self.root.join("history")
    }

    /// The lock serializing appends to the history.
    pub fn history_lock(&self) -> PathBuf {
        self.locks().join("history.lock")
    }

    /// The manifest of transaction `id`.
    pub fn manifest(&self, id: &str) -> PathBuf {
        self.txns().join(format!("{id}.json"))
    }

    /// The lock file of transaction `id`.
    pub fn lock(&self, id: &str) -> PathBuf {
        self.locks().join(format!("{id}.lock"))
    }

    /// The claim file of the base with this device and inode.
    pub fn claim(&self, dev: u64, ino: u64) -> PathBuf {
        self.claims().join(format!("{dev}-{ino}"))
    }

    /// Ids of every transaction with a manifest.
    pub fn list<S: Fs>(&self, fs: &S) -> Result<Vec<String>> {
        let dir = self.txns();
        let mut ids: Vec<String> = fs
            .read_dir(&dir)
            .map_err(Error::io("list", &dir))?
            .into_iter()
            .filter_map(|n| {
                n.to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_owned)
            })
            .filter(|id| valid_id(id))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Leftover temporary manifests (`ID.json.tmp`) as (id, path): saves that died before
    /// their rename.
    pub fn list_tmp<S: Fs>(&self, fs: &S) -> Result<Vec<(String, PathBuf)>> {
        let dir = self.txns();
        let mut out = Vec::new();
        for name in fs.read_dir(&dir).map_err(Error::io("list", &dir))? {
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json.tmp")) {
                if valid_id(id) {
                    out.push((id.to_owned(), dir.join(&name)));
                }
            }
        }
        Ok(out)
    }

    /// Ids of every transaction lock file (`locks/ID.lock`); a missing directory is none.
    pub fn list_locks<S: Fs>(&self, fs: &S) -> Result<Vec<String>> {
        let dir = self.locks();
        if fs
            .metadata(&dir)
            .map_err(Error::io("stat", &dir))?
            .is_none()
        {
            return Ok(Vec::new());
        }
        let names = fs.read_dir(&dir).map_err(Error::io("list", &dir))?;
        Ok(names
            .iter()
            .filter_map(|n| n.to_str()?.strip_suffix(".lock"))
            .filter(|id| valid_id(id))
            .map(str::to_owned)
            .collect())
    }

    /// Removes a leftover temporary manifest durably.
    pub fn remove_tmp<S: Fs>(&self, fs: &S, path: &Path) -> Result<()> {
        if remove_if_exists(fs, path)? {
            fs.sync_dir(&self.txns())
                .map_err(Error::io("sync", self.txns()))?;
        }
        Ok(())
    }

    /// All claim files as (path, holder id).
    pub fn list_claims<S: Fs>(&self, fs: &S) -> Result<Vec<(PathBuf, String)>> {
        let dir = self.claims();
        let mut out = Vec::new();
        for name in fs.read_dir(&dir).map_err(Error::io("list", &dir))? {
            let path = dir.join(&name);
            if name.to_str().is_some_and(|n| !n.ends_with(".tmp")) {
                let holder = read_small(fs, &path)?.unwrap_or_default();
                out.push((path, String::from_utf8_lossy(&holder).trim().to_owned()));
            }
        }
        Ok(out)
    }

    /// Reads the manifest of `id`; `Ok(None)` when there is none.
    pub fn load<S: Fs>(&self, fs: &S, id: &str) -> Result<Option<Manifest>> {
        if !valid_id(id) {
            return Ok(None);
        }
        let path = self.manifest(id);
        let Some(bytes) = read_small(fs, &path)? else {
            return Ok(None);
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: format!("not a transaction manifest ({e})"),
        })?;
        if m.id != id || m.images.is_empty() {
            return Err(Error::Corrupt {
                path,
                reason: "the manifest does not match its name".into(),
            });
        }
        Ok(Some(m))
    }

    /// Writes the manifest durably: temporary file, sync, rename over, sync the directory.
    pub fn save<S: Fs>(&self, fs: &S, m: &Manifest) -> Result<()> {
        let path = self.manifest(&m.id);
        let tmp = self.txns().join(format!("{}.json.tmp", m.id));
        let bytes = serde_json::to_vec_pretty(m).map_err(|e| Error::Invalid(e.to_string()))?;
        match fs.remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("remove", &tmp)(e));
            }
            _ => {}
        }
        let f = fs.create_new(&tmp).map_err(Error::io("create", &tmp))?;
        f.write_all_at(&bytes, 0)
            .map_err(Error::io("write", &tmp))?;
        // Barrier: the new content must be durable before the rename can make it visible,
        // or a crash could leave the manifest name pointing at an empty file.
        f.sync_data().map_err(Error::io("sync", &tmp))?;
        drop(f);
        fs.rename(&tmp, &path)
            .map_err(Error::io("rename into place", &path))?;
        // Barrier: the rename itself is durable only once the directory is synced.
        fs.sync_dir(&self.txns())
            .map_err(Error::io("sync", self.txns()))
    }

    /// Removes the manifest durably.
    pub fn remove_manifest<S: Fs>(&self, fs: &S, id: &str) -> Result<()> {
        remove_if_exists(fs, &self.manifest(id))?;
        // Barrier: the transaction is gone only once its manifest's removal is durable.
        fs.sync_dir(&self.txns())
            .map_err(Error::io("sync", self.txns()))
    }

    /// Claims the base with `(dev, ino)` for `id`. `Ok(Err(holder))` when it is claimed already.
    pub fn claim_base<S: Fs>(
        &self,
        fs: &S,
        dev: u64,
        ino: u64,
        id: &str,
    ) -> Result<Result<(), String>> {
        let path = self.claim(dev, ino);
        match fs.create_new(&path) {
            Ok(f) => {
                f.write_all_at(id.as_bytes(), 0)
                    .map_err(Error::io("write", &path))?;
                // Barrier: a claim must survive a crash, or a second transaction could take
                // the same base while the first still has an overlay over it.
                f.sync_data().map_err(Error::io("sync", &path))?;
                fs.sync_dir(&self.claims())
                    .map_err(Error::io("sync", self.claims()))?;
                Ok(Ok(()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = read_small(fs, &path)?.unwrap_or_default();
                Ok(Err(String::from_utf8_lossy(&holder).trim().to_owned()))
            }
            Err(e) => Err(Error::io("create the claim", &path)(e)),
        }
    }

    /// Releases the claim on `(dev, ino)` if `id` holds it.
    pub fn release_base<S: Fs>(&self, fs: &S, dev: u64, ino: u64, id: &str) -> Result<()> {
        let path = self.claim(dev, ino);
        if let Some(holder) = read_small(fs, &path)? {
            if holder == id.as_bytes() {
                remove_if_exists(fs, &path)?;
                // Barrier: the release must be durable before the manifest goes, so a claim
                // never outlives the manifest that explains it.
                fs.sync_dir(&self.claims())
                    .map_err(Error::io("sync", self.claims()))?;
            }
        }
        Ok(())
    }

    /// Removes a claim whatever holds it (used by recover for orphans).
    pub fn remove_claim<S: Fs>(&self, fs: &S, path: &Path) -> Result<()> {
        remove_if_exists(fs, path)?;
        fs.sync_dir(&self.claims())
            .map_err(Error::io("sync", self.claims()))
    }
}

/// True for ids imgtx generates: `tx-` and ten lowercase hex digits.
pub fn valid_id(id: &str) -> bool {
    id.strip_prefix("tx-").is_some_and(|h| {
        h.len() == 10
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Reads a small regular file whole; `Ok(None)` when missing.
pub(crate) fn read_small<S: Fs>(fs: &S, path: &Path) -> Result<Option<Vec<u8>>> {
    const MAX: u64 = 16 << 20;
    let Some(meta) = fs.metadata(path).map_err(Error::io("stat", path))? else {
        return Ok(None);
    };
    if meta.kind != FileKind::File || meta.len > MAX {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: "not a small regular file".into(),
        });
    }
    let f = match fs.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path)(e)),
    };
    let len = f.len().map_err(Error::io("stat", path))?.min(MAX);
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    f.read_exact_at(&mut buf, 0)
        .map_err(Error::io("read", path))?;
    Ok(Some(buf))
}

/// Removes a file; a missing file is fine.
pub(crate) fn remove_if_exists<S: Fs>(fs: &S, path: &Path) -> Result<bool> {
    match fs.remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            version: 1,
            id: "tx-0123456789".into(),
            name: Some("upgrade".into()),
            state: TxState::Open,
            created: "2026-01-02T03:04:05Z".into(),
            user: "root".into(),
            uid: 0,
            host: "h".into(),
            command: None,
            images: vec![ImageEntry {
                base: "/d/b.img".into(),
                base_format: Format::Raw,
                overlay: "/d/b.img.tx-0123456789.imgtx.qcow2".into(),
                base_id: FileId {
                    dev: 1,
                    ino: 2,
                    size: 3,
                    mtime_ns: 4,
                },
                overlay_dev_ino: Some((1, 5)),
            }],
        }
    }

    #[test]
    fn manifest_survives_a_json_round_trip() {
        let m = sample();
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains("\"base_format\":\"raw\""));
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn manifest_saved_and_loaded_through_the_fs_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("state"));
        sd.create(&storage::OsFs).unwrap();
        sd.save(&storage::OsFs, &sample()).unwrap();
        assert_eq!(
            sd.load(&storage::OsFs, "tx-0123456789").unwrap(),
            Some(sample())
        );
        assert_eq!(
            sd.list(&storage::OsFs).unwrap(),
            vec!["tx-0123456789".to_owned()]
        );
    }

    #[test]
    fn ids_other_than_generated_ones_are_rejected() {
        assert!(valid_id("tx-0123456789"));
        assert!(!valid_id("tx-../../etc"));
        assert!(!valid_id("tx-ABCDEF0123"));
    }

    #[test]
    fn identity_difference_names_what_changed() {
        let a = FileId {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
        };
        assert_eq!(a.difference(&a), None);
        assert!(a
            .difference(&FileId { size: 9, ..a })
            .unwrap()
            .contains("size"));
    }
}
