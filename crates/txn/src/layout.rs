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

const SUFFIX_JOURNAL: &str = ".imgtx.journal";

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

/// The directory holding `base`.
pub fn dir_of(base: &Path) -> Result<&Path> {
    split(base).map(|(d, _)| d)
}

/// The overlay path for `base` in transaction `id`.
pub fn overlay(base: &Path, id: &str) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!("{name}.{id}.imgtx.qcow2")))
}

/// The journal path for `base` in transaction `id`.
pub fn journal(base: &Path, id: &str) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.{id}{SUFFIX_JOURNAL}")))
}

/// The pre-image path for `base` in transaction `id`.
pub fn undo(base: &Path, id: &str) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.{id}.imgtx.undo")))
}

/// Where the pre-image file of `base`'s last commit is kept for the next one to overwrite
/// (see [`crate::undo::save`]). It belongs to no transaction.
pub fn spare(base: &Path) -> Result<PathBuf> {
    let (dir, name) = split(base)?;
    Ok(dir.join(format!(".{name}.imgtx.spare")))
}

/// The transaction id in a journal file name of `base`, if `file_name` is one.
pub fn journal_id<'a>(base_name: &str, file_name: &'a str) -> Option<&'a str> {
    let rest = file_name
        .strip_prefix('.')?
        .strip_prefix(base_name)?
        .strip_prefix('.')?;
    let id = rest.strip_suffix(SUFFIX_JOURNAL)?;
    crate::state::valid_id(id).then_some(id)
}

/// The file name of `base`.
pub fn base_name(base: &Path) -> Result<&str> {
    split(base).map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_sit_beside_the_base_and_name_the_transaction() {
        let b = Path::new("/d/b.img");
        assert_eq!(
            overlay(b, "tx-0123456789").unwrap(),
            Path::new("/d/b.img.tx-0123456789.imgtx.qcow2")
        );
        assert_eq!(
            journal(b, "tx-0123456789").unwrap(),
            Path::new("/d/.b.img.tx-0123456789.imgtx.journal")
        );
        assert_eq!(
            undo(b, "tx-0123456789").unwrap(),
            Path::new("/d/.b.img.tx-0123456789.imgtx.undo")
        );
    }

    #[test]
    fn journal_names_are_recognised_only_for_their_base() {
        assert_eq!(
            journal_id("b.img", ".b.img.tx-0123456789.imgtx.journal"),
            Some("tx-0123456789")
        );
        assert_eq!(
            journal_id("a.img", ".b.img.tx-0123456789.imgtx.journal"),
            None
        );
        assert_eq!(journal_id("b.img", ".b.img.tx-bad.imgtx.journal"), None);
    }

    #[test]
    fn relative_bases_are_refused() {
        assert!(overlay(Path::new("b.img"), "tx-0123456789").is_err());
    }
}
