//! The trust rule for files imgtx reads back from beside a base and then obeys: journals,
//! pre-image files and spares.
//!
//! A base's directory may be writable by others. A journal or pre-image file planted there
//! could make a privileged recovery write bytes of someone else's choosing into the base,
//! so such a file is obeyed only if nobody but its creator could have written it. This
//! module is the rule; the callers decide what refusing means for them.

use std::path::Path;

use storage::{FileKind, Fs, Metadata};

use crate::error::{Error, Result};
use crate::manifest::DevIno;

/// Why a file with metadata `m` must not be obeyed by user `uid`, or `None` if it may be:
/// a regular file with one link, mode 0600 or stricter, owned by root or by `uid`.
pub(crate) fn untrusted_file(m: &Metadata, uid: u32) -> Option<String> {
    if m.kind != FileKind::File || m.nlink != 1 {
        Some("it is not a regular file with one link".into())
    } else if m.mode & 0o077 != 0 {
        Some(format!("its mode {:o} lets other users change it", m.mode))
    } else if m.uid != 0 && m.uid != uid {
        Some(format!("it is owned by uid {}", m.uid))
    } else {
        None
    }
}

/// Why a directory with metadata `m` must not be relied on by user `uid` to hold what only
/// `uid` wrote, or `None`: a directory owned by `uid` that nobody else may write.
pub(crate) fn untrusted_dir(m: &Metadata, uid: u32) -> Option<String> {
    if m.kind != FileKind::Dir {
        Some("it is not a directory".into())
    } else if m.uid != uid {
        Some(format!(
            "it is owned by uid {}, not by uid {uid} running imgtx",
            m.uid
        ))
    } else if m.mode & 0o022 != 0 {
        Some(format!("its mode {:o} lets other users write it", m.mode))
    } else {
        None
    }
}

/// True when `m` describes the overlay begin created for a transaction: a regular file with
/// one link, the recorded (device, inode) when one was recorded, owned by one of `owners`
/// (the user who began it, or the one cleaning up). Anything else under an overlay's name is
/// someone else's file and is never removed.
pub(crate) fn is_begins_overlay(m: &Metadata, recorded: Option<DevIno>, owners: &[u32]) -> bool {
    m.kind == FileKind::File
        && m.nlink == 1
        && recorded.is_none_or(|di| di == DevIno::of(m))
        && owners.contains(&m.uid)
}

/// [`untrusted_file`] of whatever `path` names (without following a symlink); `None` also
/// when nothing does.
pub(crate) fn untrusted_path<S: Fs>(fs: &S, path: &Path, uid: u32) -> Result<Option<String>> {
    let Some(m) = fs.metadata(path).map_err(Error::io("stat", path))? else {
        return Ok(None);
    };
    Ok(untrusted_file(&m, uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32, uid: u32, nlink: u64) -> Metadata {
        Metadata {
            dev: 1,
            ino: 2,
            len: 0,
            allocated: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            btime_ns: None,
            mode,
            uid,
            nlink,
            kind: FileKind::File,
        }
    }

    #[test]
    fn only_private_single_link_files_of_the_user_or_root_are_trusted() {
        assert_eq!(untrusted_file(&file(0o600, 1000, 1), 1000), None);
        assert_eq!(untrusted_file(&file(0o600, 0, 1), 1000), None);
        assert!(untrusted_file(&file(0o644, 1000, 1), 1000).is_some());
        assert!(untrusted_file(&file(0o600, 1001, 1), 1000).is_some());
        assert!(untrusted_file(&file(0o600, 1000, 2), 1000).is_some());
    }
}
