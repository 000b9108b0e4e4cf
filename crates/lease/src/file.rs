//! Creating a lease file race-free: a file appears under its name already initialised, or
//! not at all, whichever host gets there first.
//!
//! [`publish`] initialises a private file under a name of its own (`.NAME.RANDOM.tmp` in the
//! same directory), syncs it, then `link(2)`s it to the lease file's name. `link` fails if
//! the name exists and is atomic on local file systems and on NFS (where a retransmitted
//! `LINK` can report `EEXIST` for a link that was made: the private file's link count tells
//! the two apart, the technique `open(2)` recommends for lock files on NFS). The loser
//! removes its private file and uses the winner's. So nobody ever sees, let alone acquires,
//! a half-initialised lease, and no lease is ever initialised twice (which would wipe the
//! on-disk state of a lease someone holds).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What [`publish`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// This call created the file.
    Created,
    /// The file was there already (or another caller won the race); it was left as it is.
    Existing,
}

/// Makes `path` exist as a file of `len` bytes initialised by `init`, unless it exists.
///
/// `init` gets the path of a private file of `len` bytes (zeros) in the same directory and
/// must leave it fully initialised; its error is returned and the private file removed.
///
/// # Errors
/// [`Error::Io`] when the directory cannot be written; `init`'s error. Nothing is left
/// under a private name after an error, and `path` is never half-made.
pub fn publish(path: &Path, len: u64, init: impl FnOnce(&Path) -> Result<()>) -> Result<Published> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io {
            action,
            path: p,
            source,
        }
    };
    if path
        .symlink_metadata()
        .map(|_| true)
        .or_else(not_found_false)
        .map_err(io("stat", path))?
    {
        return Ok(Published::Existing);
    }
    let tmp = private_name(path)?;
    let made = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.set_len(len).map_err(io("size", &tmp))?;
        drop(f);
        init(&tmp)?;
        // Barrier: the lease's content and length are durable before the name that makes it
        // usable can appear.
        let f = OpenOptions::new()
            .write(true)
            .open(&tmp)
            .map_err(io("open", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        Ok::<_, Error>(())
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let linked = std::fs::hard_link(&tmp, path);
    let outcome = match linked {
        Ok(()) => Ok(Published::Created),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // On NFS a retransmitted LINK can say EEXIST although this link was made.
            match tmp.metadata() {
                Ok(m) if m.nlink() == 2 => Ok(Published::Created),
                _ => Ok(Published::Existing),
            }
        }
        Err(e) => Err(io("link", path)(e)),
    };
    let removed = std::fs::remove_file(&tmp).map_err(io("remove", &tmp));
    let outcome = outcome?;
    removed?;
    if let Some(dir) = path.parent() {
        // Barrier: the lease file's name is durable before anyone relies on the lease.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync", dir))?;
    }
    Ok(outcome)
}

fn not_found_false(e: io::Error) -> io::Result<bool> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(false)
    } else {
        Err(e)
    }
}

/// `.NAME.RANDOM.tmp` beside `path`.
fn private_name(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| Error::Unusable {
        path: path.to_path_buf(),
        reason: "it names no file".into(),
    })?;
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| Error::Io {
        action: "get random bytes for a name beside",
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut private = std::ffi::OsString::from(".");
    private.push(name);
    private.push(format!(".{hex}.tmp"));
    Ok(path.with_file_name(private))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    fn write_marker(p: &Path, marker: u8) -> Result<()> {
        std::fs::write(p, vec![marker; 4096]).map_err(|source| Error::Io {
            action: "write",
            path: p.to_path_buf(),
            source,
        })
    }

    #[test]
    fn racing_initialisers_leave_exactly_one_whole_lease_file() {
        for _round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(".base.imgtx.lease");
            let racers = 8u8;
            let barrier = Arc::new(Barrier::new(usize::from(racers)));
            let handles: Vec<_> = (1..=racers)
                .map(|marker| {
                    let (path, barrier) = (path.clone(), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        let published = publish(&path, 4096, |tmp| {
                            write_marker(tmp, marker)?;
                            // Everyone is initialised before anyone links.
                            barrier.wait();
                            Ok(())
                        });
                        (marker, published.unwrap())
                    })
                })
                .collect();
            let results: Vec<(u8, Published)> =
                handles.into_iter().map(|h| h.join().unwrap()).collect();

            let winners: Vec<u8> = results
                .iter()
                .filter(|(_, p)| *p == Published::Created)
                .map(|(m, _)| *m)
                .collect();
            assert_eq!(winners.len(), 1, "{results:?}");
            assert_eq!(std::fs::read(&path).unwrap(), vec![winners[0]; 4096]);
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(left.len(), 1, "private files left behind");
        }
    }

    #[test]
    fn an_existing_lease_file_is_never_initialised_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".base.imgtx.lease");
        std::fs::write(&path, b"held lease").unwrap();

        let published = publish(&path, 4096, |_| panic!("must not initialise")).unwrap();

        assert_eq!(published, Published::Existing);
        assert_eq!(std::fs::read(&path).unwrap(), b"held lease");
    }

    #[test]
    fn a_failed_initialisation_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".base.imgtx.lease");

        let err = publish(&path, 4096, |p| {
            Err(Error::Unusable {
                path: p.to_path_buf(),
                reason: "test".into(),
            })
        })
        .unwrap_err();

        assert!(matches!(err, Error::Unusable { .. }));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_created_lease_file_has_the_asked_length_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".base.imgtx.lease");

        let published = publish(&path, 1 << 20, |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .and_then(|f| std::os::unix::fs::FileExt::write_at(&f, b"leader", 0))
                .map(drop)
                .map_err(|source| Error::Io {
                    action: "write",
                    path: p.to_path_buf(),
                    source,
                })
        })
        .unwrap();

        assert_eq!(published, Published::Created);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
        assert_eq!(&bytes[..6], b"leader");
    }
}
