//! Names of the files imgtx keeps beside a base: overlay, journal, pre-images and the spare.
//!
//! For base `/d/b.img` and transaction `tx-3f9a2c1d7e`:
//! overlay `/d/b.img.tx-3f9a2c1d7e.imgtx.qcow2`, journal `/d/.b.img.tx-3f9a2c1d7e.imgtx.journal`,
//! pre-images `/d/.b.img.tx-3f9a2c1d7e.imgtx.undo`; between commits, the last commit's
//! pre-image file waits as `/d/.b.img.imgtx.spare` to be overwritten by the next. Keeping
//! them in the base's directory puts them on its file system and lets `imgtx recover BASE`
//! find them from the base alone.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::id::TxId;

const SUFFIX_JOURNAL: &str = ".imgtx.journal";
const SUFFIX_UNDO: &str = ".imgtx.undo";
const SUFFIX_WAIT: &str = ".imgtx.wait";

fn split(base: &Path) -> Result<(&Path, &str)> {
    let dir = base.parent().filter(|d| !d.as_os_str().is_empty());
    let name = base.file_name().and_then(|n| n.to_str());
    match (dir, name) {
        (Some(dir), Some(name)) if base.is_absolute() => Ok((dir, name)),
        _ => Err(Error::InvalidBase {
            path: base.to_path_buf(),
            reason: "its path must be absolute, UTF-8 and name a file".into(),
        }),
    }
}

/// True for an absolute path with no `.` or `..` component, as a resolved path is.
pub fn is_plain_absolute(path: &Path) -> bool {
    use std::path::Component;
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// The longest file name a file system takes (`NAME_MAX` on Linux's file systems).
const NAME_MAX: usize = 255;

/// Refuses a base whose name leaves no room for the longest name imgtx derives from it
/// (`.NAME.ID.imgtx.journal.abandoned`): checked at begin, so that no later step can fail
/// halfway on a name the file system will not take.
pub fn check_room_for_names(base: &Path) -> Result<()> {
    let name = base_name(base)?;
    let sample = TxId::from_random([0; 5]);
    let longest = abandoned(&journal(base, &sample)?);
    let len = longest.file_name().map_or(0, |n| n.len());
    if len > NAME_MAX {
        return Err(Error::InvalidBase {
            path: base.to_path_buf(),
            reason: format!(
                "its file name is {} bytes long; imgtx keeps files named after it beside it, and \
                 those need it to be at most {} bytes",
                name.len(),
                name.len() - (len - NAME_MAX)
            ),
        });
    }
    Ok(())
}

/// The directory holding `base`.
pub fn dir_of(base: &Path) -> Result<&Path> {
    split(base).map(|(d, _)| d)
}

/// The overlay path for `base` in transaction `id`.
pub fn overlay(base: &Path, id: &TxId) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!("{name}.{id}.imgtx.qcow2")))
}

/// The journal path for `base` in transaction `id`.
pub fn journal(base: &Path, id: &TxId) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.{id}{SUFFIX_JOURNAL}")))
}

/// The pre-image path for `base` in transaction `id`.
pub fn undo(base: &Path, id: &TxId) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.{id}{SUFFIX_UNDO}")))
}

/// Where the pre-image file of `base`'s last commit is kept for the next one to overwrite
/// (its pre-image save renames it back first). It belongs to no transaction.
pub fn spare(base: &Path) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.imgtx.spare")))
}

/// Where transaction `id`'s pre-images of `base` are kept when pinned (`commit --keep`, or
/// while a revert of `id` uses them): never reused by a later commit, only pruned.
pub fn kept(base: &Path, id: &TxId) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.{id}.imgtx.kept")))
}

/// Where a commit whose data reached `base` by reflink keeps its overlay after the commit:
/// the proof of what it wrote, for a revert to compare the base with (see `crate::kept`).
pub fn post(base: &Path, id: &TxId) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.{id}.imgtx.post")))
}

/// The claim of `base`: which transaction holds it (see `crate::claim`'s documentation).
pub fn claim(base: &Path) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.imgtx.claim")))
}

/// The lease file of `base` on the shared storage: `.NAME.imgtx.lease`, holding the sanlock
/// resource lease of the image when imgtx runs in a lockspace (see [`crate::lease`]). It is
/// created on first use and never removed: it holds no state of a transaction.
pub fn lease(base: &Path) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.imgtx.lease")))
}

/// Where transaction `id` writes its claim of `base` before linking it into place.
pub fn claim_draft(base: &Path, id: &TxId) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.{id}.imgtx.claim")))
}

/// The ticket that says transaction `id` waits for `base` (see `crate::wait`).
pub fn wait_ticket(base: &Path, id: &TxId) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.{id}{SUFFIX_WAIT}")))
}

/// The base name and transaction of a waiting ticket's file name, if `file_name` is one.
pub fn parse_wait_ticket(file_name: &str) -> Option<(&str, TxId)> {
    parse_hidden(file_name, SUFFIX_WAIT)
}

/// Where a journal or pre-image file of an abandoned transaction is kept for forensics: its
/// own name with a suffix nothing of imgtx reads.
pub fn abandoned(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".abandoned");
    PathBuf::from(name)
}

/// The transaction id in a journal file name of `base`, if `file_name` is one.
pub fn journal_id(base_name: &str, file_name: &str) -> Option<TxId> {
    let rest = file_name
        .strip_prefix('.')?
        .strip_prefix(base_name)?
        .strip_prefix('.')?;
    TxId::parse(rest.strip_suffix(SUFFIX_JOURNAL)?)
}

/// The base name and transaction of a journal file name (`.NAME.ID.imgtx.journal`), if
/// `file_name` is one.
pub fn parse_journal_name(file_name: &str) -> Option<(&str, TxId)> {
    parse_hidden(file_name, SUFFIX_JOURNAL)
}

/// The base name and transaction of a pre-image file name (`.NAME.ID.imgtx.undo`), if
/// `file_name` is one.
pub fn parse_undo_name(file_name: &str) -> Option<(&str, TxId)> {
    parse_hidden(file_name, SUFFIX_UNDO)
}

/// `.NAME.ID` + `suffix` split into NAME and ID.
fn parse_hidden<'a>(file_name: &'a str, suffix: &str) -> Option<(&'a str, TxId)> {
    let rest = file_name.strip_prefix('.')?.strip_suffix(suffix)?;
    let (name, id) = rest.rsplit_once('.')?;
    let id = TxId::parse(id)?;
    (!name.is_empty()).then_some((name, id))
}

/// The base whose journal in transaction `id` is `journal`: the inverse of [`journal()`].
pub fn base_of_journal(journal: &Path, id: &TxId) -> Option<PathBuf> {
    let dir = journal.parent()?;
    let name = journal
        .file_name()?
        .to_str()?
        .strip_prefix('.')?
        .strip_suffix(SUFFIX_JOURNAL)?
        .strip_suffix(id.as_str())?
        .strip_suffix('.')?;
    (!name.is_empty()).then(|| dir.join(name))
}

/// The file name of `base`.
pub fn base_name(base: &Path) -> Result<&str> {
    split(base).map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx() -> TxId {
        TxId::parse("tx-0123456789").unwrap()
    }

    #[test]
    fn files_sit_beside_the_base_and_name_the_transaction() {
        let b = Path::new("/d/b.img");
        assert_eq!(
            overlay(b, &tx()).unwrap(),
            Path::new("/d/b.img.tx-0123456789.imgtx.qcow2")
        );
        assert_eq!(
            journal(b, &tx()).unwrap(),
            Path::new("/d/.b.img.tx-0123456789.imgtx.journal")
        );
        assert_eq!(
            undo(b, &tx()).unwrap(),
            Path::new("/d/.b.img.tx-0123456789.imgtx.undo")
        );
    }

    #[test]
    fn journal_names_are_recognised_only_for_their_base() {
        assert_eq!(
            journal_id("b.img", ".b.img.tx-0123456789.imgtx.journal"),
            Some(tx())
        );
        assert_eq!(
            journal_id("a.img", ".b.img.tx-0123456789.imgtx.journal"),
            None
        );
        assert_eq!(journal_id("b.img", ".b.img.tx-bad.imgtx.journal"), None);
    }

    #[test]
    fn a_journal_names_its_base() {
        let b = Path::new("/d/b.img.x");
        let j = journal(b, &tx()).unwrap();
        assert_eq!(base_of_journal(&j, &tx()).as_deref(), Some(b));
        let other = TxId::parse("tx-aaaaaaaaaa").unwrap();
        assert_eq!(base_of_journal(&j, &other), None);
    }

    #[test]
    fn a_journal_name_tells_its_base_and_transaction() {
        assert_eq!(
            parse_journal_name(".b.img.x.tx-0123456789.imgtx.journal"),
            Some(("b.img.x", tx()))
        );
        assert_eq!(parse_journal_name("..tx-0123456789.imgtx.journal"), None);
        assert_eq!(parse_journal_name(".b.img.tx-01234567.imgtx.journal"), None);
    }

    #[test]
    fn a_base_name_must_leave_room_for_every_derived_name() {
        let ok = format!("/d/{}", "a".repeat(216));
        assert!(check_room_for_names(Path::new(&ok)).is_ok());
        let long = format!("/d/{}", "a".repeat(217));
        let err = check_room_for_names(Path::new(&long))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 216 bytes"), "{err}");
    }

    #[test]
    fn relative_bases_are_refused() {
        assert!(overlay(Path::new("b.img"), &tx()).is_err());
    }
}
