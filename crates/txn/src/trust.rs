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
