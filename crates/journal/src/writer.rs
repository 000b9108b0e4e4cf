//! The append handle: create, open for append, append, sync, poisoning.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use storage::{File, Fs};

use crate::error::{io_err, Error, Result};
use crate::format::{
    encode_frame, encode_pad, encode_payload, FrameKind, Header, BLOCK, MAX_IDENTITY_LEN, NONCE_LEN,
};
use crate::replay::{scan, RecoveryMode};
use crate::{parent_dir, Replay, Tail};

/// An open journal, positioned for appending records of type `T`.
///
/// One writer at a time: the caller holds whatever lock keeps other processes out.
pub struct Journal<F: File, T> {
    file: F,
    path: PathBuf,
    nonce: [u8; NONCE_LEN],
    identity: Vec<u8>,
    /// Offset where the next frame goes. A multiple of [`BLOCK`] whenever every record is
    /// synced (after `create`, `open` and `sync`).
    end: u64,
    /// Sequence number of the next record.
    next_seq: u64,
    /// Every record below this sequence number is known durable.
    synced: u64,
    poisoned: bool,
    _t: PhantomData<fn(T)>,
}

impl<F: File, T> std::fmt::Debug for Journal<F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("end", &self.end)
            .field("next_seq", &self.next_seq)
            .field("synced", &self.synced)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<F: File, T: Serialize + DeserializeOwned> Journal<F, T> {
    /// Creates a new journal at `path` with `O_CREAT | O_EXCL` and mode 0600, writes and syncs
    /// its header (magic, version, a fresh random nonce, `identity`, padded to whole 4 KiB
    /// blocks so the first record does not share a block with it), then syncs the parent
    /// directory so the new name survives a crash.
    ///
    /// # Errors
    /// `Io` with `AlreadyExists` when anything has that name; `IdentityTooLarge`; `Io` for any
    /// other storage failure. If the header write or a sync fails, the half-made file is
    /// removed on a best-effort basis; if that fails too, a later replay reports
    /// [`Error::HeaderIncomplete`] or [`Error::BadHeader`] for it.
    pub fn create<S: Fs<File = F>>(fs: &S, path: &Path, identity: &[u8]) -> Result<Self> {
        if identity.len() > MAX_IDENTITY_LEN as usize {
            return Err(Error::IdentityTooLarge {
                len: identity.len(),
                max: MAX_IDENTITY_LEN,
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        let header = Header {
            nonce,
            identity: identity.to_vec(),
        };
        let file = fs.create_new(path).map_err(io_err(path))?;
        let bytes = header.encode();
        let written = file
            .write_all_at(&bytes, 0)
            // Barrier: the header must be durable before the name is, so that a journal found
            // after a crash either has a valid header or was never handed to a caller.
            .and_then(|()| file.sync_data())
            // Barrier: make the new directory entry durable (crash-safety rule 2), so a record
            // appended and synced later cannot be lost with the name.
            .and_then(|()| fs.sync_dir(parent_dir(path)));
        if let Err(source) = written {
            tracing::warn!(path = %path.display(), error = %source, "journal creation failed; removing it");
            if fs.remove_file(path).is_ok() {
                let _ = fs.sync_dir(parent_dir(path));
            }
            return Err(io_err(path)(source));
        }
        tracing::debug!(path = %path.display(), "journal created");
        Ok(Self {
            file,
            path: path.to_path_buf(),
            nonce,
            identity: header.identity,
            end: bytes.len() as u64,
            next_seq: 0,
            synced: 0,
            poisoned: false,
            _t: PhantomData,
        })
    }

    /// Opens an existing journal for appending, with [`RecoveryMode::TolerateTornTail`].
    /// Replays it, truncates a torn tail, pads a log that ends mid-block to the block boundary
    /// (as [`Journal::sync`] does), and syncs, so that every replayed record is durable before
    /// the caller acts on it.
    ///
    /// # Errors
    /// See [`Journal::open_with`].
    pub fn open<S: Fs<File = F>>(fs: &S, path: &Path) -> Result<(Self, Replay<T>)> {
        Self::open_with(fs, path, RecoveryMode::default())
    }

    /// [`Journal::open`] with an explicit recovery mode.
    ///
    /// # Errors
    /// `Io` (including `NotFound`); the header errors; `Corrupt` when the mode refuses the
    /// damage found, in which case nothing was modified. If truncating or syncing fails the
    /// file may or may not be truncated; reopening repeats the same decision.
    pub fn open_with<S: Fs<File = F>>(
        fs: &S,
        path: &Path,
        mode: RecoveryMode,
    ) -> Result<(Self, Replay<T>)> {
        let file = fs.open(path, true).map_err(io_err(path))?;
        let s = scan::<F, T>(&file, path, mode)?;
        if let Tail::Torn { valid_len, .. } = s.tail {
            // The damaged tail was never acknowledged as durable; cut it off so that new
            // records follow the valid prefix directly.
            file.set_len(valid_len).map_err(io_err(path))?;
        }
        let mut journal = Self {
            file,
            path: path.to_path_buf(),
            nonce: s.header.nonce,
            identity: s.header.identity.clone(),
            end: s.valid_len,
            next_seq: s.records.len() as u64,
            // Nothing replayed is known durable until the sync below: a padding frame written
            // before it must not vouch for any record.
            synced: 0,
            poisoned: false,
            _t: PhantomData,
        };
        // Barrier (inside `sync`): the truncation must be durable before anything is appended
        // after it, and the replayed records (perhaps read from a page cache a dead process
        // left behind) must be durable before the caller acts on them or a new record's
        // `synced` field vouches for them. `sync` first pads a valid prefix that ends mid-block
        // (its last batch was never synced) to the block boundary, so the next append does
        // not share a block with records this sync makes durable.
        journal.sync()?;
        let replay = Replay {
            identity: s.header.identity,
            records: s.records,
            tail: s.tail,
        };
        Ok((journal, replay))
    }

    /// Opens the journal at `path` if it exists, otherwise creates it; race-free: the create
    /// is exclusive, and losing the race to another creator falls back to opening.
    ///
    /// # Errors
    /// [`Error::IdentityMismatch`] when an existing journal carries another identity; otherwise
    /// as [`Journal::create`] and [`Journal::open`]. An existing file whose creation was
    /// interrupted gives [`Error::HeaderIncomplete`]; it is not replaced here, because another
    /// process may be creating it at this moment.
    pub fn open_or_create<S: Fs<File = F>>(
        fs: &S,
        path: &Path,
        identity: &[u8],
    ) -> Result<(Self, Replay<T>)> {
        match Self::create(fs, path, identity) {
            Ok(j) => {
                let replay = Replay {
                    identity: identity.to_vec(),
                    records: Vec::new(),
                    tail: Tail::Clean,
                };
                Ok((j, replay))
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                let (j, replay) = Self::open(fs, path)?;
                if j.identity != identity {
                    return Err(Error::IdentityMismatch {
                        path: path.display().to_string(),
                    });
                }
                Ok((j, replay))
            }
            Err(e) => Err(e),
        }
    }

    /// Appends one record (not yet durable: call [`Journal::sync`]) and returns its sequence
    /// number: 0 for the first record of the log, then one more each time.
    ///
    /// # Errors
    /// `Poisoned` after an earlier failure; `Encode` / `RecordTooLarge` (nothing written, the
    /// handle stays usable); `Io`, after which some prefix of the record may be on disk and the
    /// handle is poisoned.
    pub fn append(&mut self, record: &T) -> Result<u64> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let payload = encode_payload(record)?;
        let frame = encode_frame(
            &self.nonce,
            self.next_seq,
            self.synced,
            FrameKind::Record,
            &payload,
        )?;
        // One write per record: a crash leaves at most this frame torn, and the frame's
        // checksum tells replay so.
        if let Err(e) = self.file.write_all_at(&frame, self.end) {
            self.poisoned = true;
            return Err(io_err(&self.path)(e));
        }
        let seq = self.next_seq;
        self.end += frame.len() as u64;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Makes every appended record durable (`fdatasync`). When the log ends mid-block, first
    /// appends a padding frame up to the next 4 KiB boundary ([`BLOCK`]), so that records
    /// appended after this sync never share a block with the ones it made durable.
    ///
    /// # Errors
    /// `Poisoned` after an earlier failure; `Io`, after which nothing is known about the
    /// durability of any unsynced record and the handle is poisoned: a failed fsync is never
    /// retried and then trusted (the kernel may have dropped the dirty pages).
    pub fn sync(&mut self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        // Without powersafe overwrite a torn write may garble the whole physical sector it
        // lands in (crash-safety rule 9). Padding to the block boundary before the barrier
        // keeps the next append out of every block this sync makes durable. The padding is
        // part of the batch being synced: if a crash tears it, it tears only that batch.
        if let Some(pad) = encode_pad(&self.nonce, self.next_seq, self.synced, self.end) {
            if let Err(e) = self.file.write_all_at(&pad, self.end) {
                self.poisoned = true;
                return Err(io_err(&self.path)(e));
            }
            self.end += pad.len() as u64;
        }
        debug_assert_eq!(
            self.end % BLOCK,
            0,
            "a sync leaves the log on a block boundary"
        );
        // Barrier: records appended so far become durable; later frames record this in their
        // `synced` field, which is what lets replay tell a torn tail from corruption.
        if let Err(e) = self.file.sync_data() {
            self.poisoned = true;
            return Err(io_err(&self.path)(e));
        }
        self.synced = self.next_seq;
        Ok(())
    }
}

impl<F: File, T> Journal<F, T> {
    /// The identity blob from the header.
    pub fn identity(&self) -> &[u8] {
        &self.identity
    }

    /// The sequence number the next appended record will get (= records in the log).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether an earlier failure poisoned this handle.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The path the journal was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for operations outside the journal (locks, `fstat` checks).
    pub fn file(&self) -> &F {
        &self.file
    }
}
