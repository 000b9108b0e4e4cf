//! The manifest of a transaction (`txns/ID.json` in the state directory) and the values it
//! is made of: base formats, file identities, where a transaction is in its life.
//!
//! This module only describes; reading and writing manifests is [`crate::statedir`]'s job.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use storage::Metadata;

use crate::id::TxId;

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

impl TxState {
    /// What a transaction in this state is doing, for messages ("beginning"); `None` when
    /// it is open.
    pub fn doing(self) -> Option<&'static str> {
        match self {
            Self::Open => None,
            Self::Beginning => Some("beginning"),
            Self::RollingBack => Some("rolling back"),
            Self::Finished => Some("cleaning up after its commit"),
        }
    }
}

/// A file's device and inode: which file a name pointed at, whatever names it later.
///
/// Stored as a `[dev, ino]` pair, in manifests (JSON) and journal records (postcard) alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(from = "(u64, u64)", into = "(u64, u64)")]
pub struct DevIno {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl DevIno {
    /// The device and inode of a file from its metadata.
    pub fn of(m: &Metadata) -> Self {
        Self {
            dev: m.dev,
            ino: m.ino,
        }
    }
}

impl From<(u64, u64)> for DevIno {
    fn from((dev, ino): (u64, u64)) -> Self {
        Self { dev, ino }
    }
}

impl From<DevIno> for (u64, u64) {
    fn from(d: DevIno) -> Self {
        (d.dev, d.ino)
    }
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

    /// The file's device and inode.
    pub fn dev_ino(&self) -> DevIno {
        DevIno {
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// Describes how `now` differs from `self`, or `None` when they are equal.
    pub fn difference(&self, now: &Self) -> Option<String> {
        if self.dev_ino() != now.dev_ino() {
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
    pub overlay_dev_ino: Option<DevIno>,
}

/// The record of one open transaction, `txns/ID.json` in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this file.
    pub version: u32,
    /// The transaction id.
    pub id: TxId,
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

/// Who holds an image: what a refusal or a waiting begin says about the transaction in the
/// way, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The transaction, as its claim names it.
    pub tx: String,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// Who began it (empty when unknown).
    pub user: String,
    /// On which host (empty when unknown).
    pub host: String,
    /// When it began (RFC 3339 UTC; empty when unknown).
    pub since: String,
    /// The sanlock host id of the host holding it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<u64>,
}

impl Holder {
    /// A holder of which only the transaction id is known.
    pub fn unknown(tx: &str) -> Self {
        Self {
            tx: tx.to_owned(),
            name: None,
            user: String::new(),
            host: String::new(),
            since: String::new(),
            host_id: None,
        }
    }

    /// The holder described by its manifest.
    pub fn of(m: &Manifest) -> Self {
        Self {
            tx: m.id.to_string(),
            name: m.name.clone(),
            user: m.user.clone(),
            host: m.host.clone(),
            since: m.created.clone(),
            host_id: None,
        }
    }
}

impl std::fmt::Display for Holder {
    /// `tx-… ("name", root@host, for 3 min, since …)`, with what is known.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.tx)?;
        let mut details = Vec::new();
        if let Some(n) = &self.name {
            details.push(format!("{n:?}"));
        }
        if !self.user.is_empty() {
            details.push(format!("{}@{}", self.user, self.host));
        }
        if let Some(id) = self.host_id {
            details.push(format!("sanlock host {id}"));
        }
        if !self.since.is_empty() {
            // The age for a person deciding whether to wait; the time to match with `log`.
            match crate::time::parse_rfc3339(&self.since) {
                Some(t) => details.push(format!(
                    "for {}, since {}",
                    crate::time::age(t, std::time::SystemTime::now()),
                    self.since
                )),
                None => details.push(format!("since {}", self.since)),
            }
        }
        if !details.is_empty() {
            write!(f, " ({})", details.join(", "))?;
        }
        Ok(())
    }
}

/// What a finished transaction leaves to remove beside one base: the overlay begin created
/// (only that very inode is removed) and the files named after the base and the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leftover {
    /// The base the files sit beside.
    pub base: PathBuf,
    /// The overlay's path; `None` when the file in its place must stay (the pre-images a
    /// revert that was undone used: the reverted transaction stays revertible).
    pub overlay: Option<PathBuf>,
    /// The overlay's (device, inode), if known.
    pub overlay_dev_ino: Option<DevIno>,
    /// Who began the transaction, hence owns its overlay, if known.
    pub owner: Option<u32>,
}

impl Manifest {
    /// What a finished commit of this transaction removes, image by image.
    pub(crate) fn leftovers(&self) -> Vec<Leftover> {
        self.images
            .iter()
            .map(|i| Leftover {
                base: i.base.clone(),
                overlay: Some(i.overlay.clone()),
                overlay_dev_ino: i.overlay_dev_ino,
                owner: Some(self.uid),
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            version: 1,
            id: TxId::parse("tx-0123456789").unwrap(),
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
                overlay_dev_ino: Some(DevIno { dev: 1, ino: 5 }),
            }],
        }
    }

    #[test]
    fn manifest_survives_a_json_round_trip_in_the_format_older_versions_wrote() {
        let m = sample();
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains("\"base_format\":\"raw\""));
        assert!(text.contains("\"overlay_dev_ino\":[1,5]"), "{text}");
        let back: Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
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
