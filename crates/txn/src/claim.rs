//! Claims beside the image: `.NAME.imgtx.claim` next to a base says which transaction holds
//! it, so that one transaction at a time has the image, whatever state directory, user or
//! host begins another.
//!
//! A claim appears whole or not at all: it is written under a name of its own transaction
//! (`.NAME.ID.imgtx.claim`), synced, then linked to the claim's name, which fails if a claim
//! is there (`link(2)` is atomic, on NFS too). It is readable by everyone (0644), so every
//! imgtx can say who holds an image; it is only ever used to refuse or to wait, never to name
//! a file to remove, and only the transaction it names removes it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storage::{File, FileKind, Fs};

use crate::error::{Error, Result};
use crate::files::{read_small, remove_if_exists, sync_dir};
use crate::id::TxId;
use crate::layout;
use crate::lease::Member;
use crate::manifest::{DevIno, Holder, Manifest};

/// What a claim file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Format version of this file.
    pub version: u32,
    /// The transaction holding the image.
    pub tx: TxId,
    /// Its name, if any.
    pub name: Option<String>,
    /// The state directory that registers it.
    pub state_dir: PathBuf,
    /// Who began it.
    pub user: String,
    /// Their uid.
    pub uid: u32,
    /// On which host.
    pub host: String,
    /// When it began (RFC 3339 UTC).
    pub since: String,
    /// The sanlock lockspace and host id of the host that made it, when imgtx ran in a
    /// lockspace (see [`crate::lease`]). Claims without it were made by a single host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Member>,
}

impl Claim {
    /// The claim of transaction `m`, registered in `state_dir`, by member `lease` of a
    /// lockspace when there is one.
    pub(crate) fn of(m: &Manifest, state_dir: &Path, lease: Option<Member>) -> Self {
        Self {
            version: 1,
            tx: m.id.clone(),
            name: m.name.clone(),
            state_dir: state_dir.to_path_buf(),
            user: m.user.clone(),
            uid: m.uid,
            host: m.host.clone(),
            since: m.created.clone(),
            lease,
        }
    }

    /// The holder it describes.
    pub fn holder(&self) -> Holder {
        Holder {
            tx: self.tx.to_string(),
            name: self.name.clone(),
            user: self.user.clone(),
            host: self.host.clone(),
            since: self.since.clone(),
            host_id: self.lease.as_ref().map(|l| l.host_id),
        }
    }
}

/// What lies under a base's claim name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing: the image is free.
    Free,
    /// A claim, as it says.
    Claim(Claim),
    /// Something that is not a claim imgtx could read (being written, another user's
    /// unreadable file, damaged): the image is not free, and this is all that is known.
    Unreadable {
        /// Who owns what is there.
        uid: u32,
        /// Why it could not be read.
        reason: String,
    },
}

impl Found {
    /// The holder, as far as known; `None` when free.
    pub fn holder(&self) -> Option<Holder> {
        match self {
            Self::Free => None,
            Self::Claim(c) => Some(c.holder()),
            Self::Unreadable { uid, reason } => Some(Holder {
                tx: format!("(unknown: {reason})"),
                name: None,
                user: format!("uid {uid}"),
                host: String::new(),
                since: String::new(),
                host_id: None,
            }),
        }
    }
}

/// What is under the claim name of `base`.
pub(crate) fn read<S: Fs>(fs: &S, base: &Path) -> Result<Found> {
    let path = layout::claim(base)?;
    let Some(meta) = fs.metadata(&path).map_err(Error::io("stat", &path))? else {
        return Ok(Found::Free);
    };
    let unreadable = |reason: &str| Found::Unreadable {
        uid: meta.uid,
        reason: reason.to_owned(),
    };
    if meta.kind != FileKind::File {
        return Ok(unreadable("not a regular file"));
    }
    let bytes = match read_small(fs, &path) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Found::Free),
        Err(_) => return Ok(unreadable("not readable")),
    };
    match serde_json::from_slice::<Claim>(&bytes) {
        // A claim written by one user in the name of another is not one imgtx wrote.
        Ok(c) if c.uid == meta.uid || meta.uid == 0 => Ok(Found::Claim(c)),
        Ok(c) => Ok(unreadable(&format!(
            "it names uid {} but belongs to uid {}",
            c.uid, meta.uid
        ))),
        Err(_) => Ok(unreadable("not a claim")),
    }
}

/// Claims `base` for `claim.tx`. `Ok(None)` when taken; `Ok(Some(found))` when something
/// else holds it.
pub(crate) fn take<S: Fs>(fs: &S, base: &Path, claim: &Claim) -> Result<Option<Found>> {
    let path = layout::claim(base)?;
    let tmp = layout::claim_draft(base, &claim.tx)?;
    let dir = layout::dir_of(base)?;
    remove_if_exists(fs, &tmp)?;
    let f = fs.create_new(&tmp).map_err(Error::io("create", &tmp))?;
    // Plain data: serializing cannot fail.
    let bytes = serde_json::to_vec(claim).expect("a claim serializes");
    f.write_all_at(&bytes, 0)
        .map_err(Error::io("write", &tmp))?;
    f.make_readable()
        .map_err(Error::io("make readable", &tmp))?;
    // Barrier: the claim's content is durable before it can appear under the claim's name.
    f.sync_data().map_err(Error::io("sync", &tmp))?;
    let linked = fs.hard_link(&tmp, &path);
    remove_if_exists(fs, &tmp)?;
    match linked {
        Ok(()) => {
            // link(2) links whatever the draft's name holds now, a symlink too: what was
            // linked must be the file just written, or it is not a claim, and the image
            // would be held by nothing anybody could release.
            let drafted = DevIno::of(&f.stat().map_err(Error::io("stat", &tmp))?);
            let meta = fs.metadata(&path).map_err(Error::io("stat", &path))?;
            if meta.as_ref().map(DevIno::of) != Some(drafted) {
                if meta.is_some() {
                    remove_if_exists(fs, &path)?;
                }
                sync_dir(fs, dir)?;
                return Err(Error::InvalidBase {
                    path: base.to_path_buf(),
                    reason: "its claim was replaced while it was being made: something else \
                             writes in its directory"
                        .into(),
                });
            }
            // Barrier: the claim survives a crash, or a second transaction could take the
            // image while the first still has an overlay over it.
            sync_dir(fs, dir)?;
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            sync_dir(fs, dir)?;
            Ok(Some(read(fs, base)?))
        }
        Err(e) => Err(Error::io("claim", &path)(e)),
    }
}

/// Removes the claim of `base` if it is `tx`'s, durably; also a leftover draft of `tx`.
pub(crate) fn release<S: Fs>(fs: &S, base: &Path, tx: &TxId) -> Result<()> {
    let dir = layout::dir_of(base)?;
    let mut changed = remove_if_exists(fs, &layout::claim_draft(base, tx)?)?;
    if matches!(read(fs, base)?, Found::Claim(c) if c.tx == *tx) {
        changed |= remove_if_exists(fs, &layout::claim(base)?)?;
    }
    if changed {
        // Barrier: the release is durable before the manifest that explains it goes.
        sync_dir(fs, dir)?;
    }
    Ok(())
}

/// True when `base`'s claim names `tx`.
pub(crate) fn held_by<S: Fs>(fs: &S, base: &Path, tx: &TxId) -> Result<bool> {
    Ok(matches!(read(fs, base)?, Found::Claim(c) if c.tx == *tx))
}

/// The names of `base` that its claims must cover: `base` itself and, for a file with
/// several hard links, the other names of it in the same directory, sorted. Refuses a base
/// with hard links elsewhere, whose claims imgtx cannot see.
pub(crate) fn names<S: Fs>(fs: &S, base: &Path) -> Result<Vec<PathBuf>> {
    let meta = fs
        .metadata(base)
        .map_err(Error::io("stat", base))?
        .ok_or_else(|| Error::InvalidBase {
            path: base.to_path_buf(),
            reason: "it does not exist".into(),
        })?;
    if meta.nlink <= 1 {
        return Ok(vec![base.to_path_buf()]);
    }
    let dir = layout::dir_of(base)?;
    let mut names = Vec::new();
    for entry in fs.read_dir(dir).map_err(Error::io("list", dir))? {
        let path = dir.join(&entry);
        let same =
            fs.metadata(&path).ok().flatten().is_some_and(|m| {
                (m.dev, m.ino) == (meta.dev, meta.ino) && m.kind == FileKind::File
            });
        if same {
            names.push(path);
        }
    }
    if (names.len() as u64) < meta.nlink {
        return Err(Error::InvalidBase {
            path: base.to_path_buf(),
            reason: format!(
                "it has {} hard links, {} of them outside its directory, where imgtx cannot see \
                 whether another transaction holds it under another name",
                meta.nlink,
                meta.nlink - names.len() as u64
            ),
        });
    }
    names.sort();
    Ok(names)
}

/// Releases the claims of `tx` on every base of `bases`, and on their other names.
pub(crate) fn release_all<'a, S: Fs>(
    fs: &S,
    bases: impl IntoIterator<Item = &'a Path>,
    tx: &TxId,
) -> Result<()> {
    for base in bases {
        // A base gone (abandoned, say) still had its claim under its own name.
        let names = names(fs, base).unwrap_or_else(|_| vec![base.to_path_buf()]);
        for name in names {
            release(fs, &name, tx)?;
        }
    }
    Ok(())
}

/// True when transaction `m` (open, in this state directory's view) ended elsewhere: another
/// state directory or host finished or undid it from the journals beside its bases. Every
/// base is still the file the transaction began on, and nothing of it is left beside any:
/// no claim of it, no journal or pre-image file, no overlay.
pub(crate) fn ended_elsewhere<S: Fs>(fs: &S, m: &Manifest) -> Result<bool> {
    for img in &m.images {
        // Absence is evidence only beside the very base the transaction began on: with the
        // base gone, or another file in its place (its directory moved away, or swapped for
        // another), its files may well live on where the base went, and a transaction
        // forgotten then would leave its journal unrecovered when the directory comes back.
        let here = fs
            .metadata(&img.base)
            .map_err(Error::io("stat", &img.base))?;
        if here.is_none_or(|b| DevIno::of(&b) != img.base_id.dev_ino()) {
            return Ok(false);
        }
        let leftover = held_by(fs, &img.base, &m.id)?
            || crate::txjournal::beside(fs, &img.base)?.contains(&m.id)
            || crate::txjournal::strays_beside(fs, &img.base)?.contains(&m.id)
            || crate::files::exists(fs, &img.overlay)?;
        if leftover {
            return Ok(false);
        }
    }
    Ok(true)
}
