//! The journal's one error type.

/// Everything that can go wrong while creating, appending to or replaying a journal.
///
/// Variants separate I/O failures (the storage said no), damage found on disk (`BadHeader`,
/// `Corrupt`, `HeaderIncomplete`), files that are fine but not for us (`IdentityMismatch`,
/// `UnsupportedVersion`) and misuse (`Poisoned`, `RecordTooLarge`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file header of a journal that may hold records is damaged: wrong magic, failed
    /// checksum, all zeros or impossible field values.
    #[error("journal {path} has a damaged header: {reason}")]
    BadHeader {
        /// The journal file.
        path: String,
        /// What check failed.
        reason: String,
    },

    /// A record that is followed by valid records (or whose checksum passes but whose payload
    /// does not decode) is damaged: the log cannot be trusted and nothing was truncated.
    #[error("journal is corrupt at offset {offset:#x}: {reason}")]
    Corrupt {
        /// Byte offset of the first damaged record.
        offset: u64,
        /// What check failed.
        reason: String,
        /// Why its payload does not decode, when that is what failed.
        #[source]
        source: Option<DecodeError>,
    },

    /// A record could not be encoded with postcard.
    #[error("journal record could not be encoded")]
    Encode {
        /// The encoder's complaint.
        #[source]
        source: postcard::Error,
    },

    /// The header is missing, incomplete or damaged, and the file has no room for a record
    /// after it (it is at most one 4 KiB block long): the creation of this journal was
    /// interrupted before [`Journal::create`](crate::Journal::create) returned, so no record
    /// can have been appended to it. The same damage in a longer file is
    /// [`Error::BadHeader`].
    #[error("journal {path} has no complete header ({len} bytes): its creation was interrupted")]
    HeaderIncomplete {
        /// The journal file.
        path: String,
        /// The file length found.
        len: u64,
    },

    /// [`Journal::open_or_create`](crate::Journal::open_or_create) found a journal that belongs
    /// to something else.
    #[error("journal {path} exists but belongs to another identity")]
    IdentityMismatch {
        /// The journal file.
        path: String,
    },

    /// The identity blob given to `create` is longer than the format allows.
    #[error("journal identity is {len} bytes, more than the {max} bytes allowed")]
    IdentityTooLarge {
        /// Length requested.
        len: usize,
        /// [`MAX_IDENTITY_LEN`](crate::format::MAX_IDENTITY_LEN).
        max: u32,
    },

    /// The storage failed.
    #[error("journal I/O failed at {path}")]
    Io {
        /// The journal file (or its parent directory for directory syncs).
        path: String,
        /// The storage error.
        #[source]
        source: std::io::Error,
    },

    /// An earlier write or sync on this handle failed, so what is on disk is unknown. The
    /// handle refuses everything until the journal is reopened (which replays and truncates).
    #[error("journal handle is poisoned by an earlier failed write or sync")]
    Poisoned,

    /// An encoded record is larger than the format allows.
    #[error("journal record is {len} bytes, more than the {max} bytes allowed")]
    RecordTooLarge {
        /// Encoded payload length.
        len: usize,
        /// [`MAX_RECORD_LEN`](crate::format::MAX_RECORD_LEN).
        max: u32,
    },

    /// A record whose checksum passes does not decode: version skew or a writer bug, never
    /// a torn write. Like [`Error::Corrupt`], nothing was truncated.
    #[error("journal record {record} at offset {offset:#x} is not a record")]
    Undecodable {
        /// Byte offset of the record.
        offset: u64,
        /// Its sequence number.
        record: u64,
        /// Why it does not decode.
        #[source]
        source: DecodeError,
    },

    /// The header names a format version this build does not know.
    #[error(
        "journal {path} has format version {version}, this build reads only version {supported}"
    )]
    UnsupportedVersion {
        /// The journal file.
        path: String,
        /// Version found.
        version: u32,
        /// Version this build writes and reads.
        supported: u32,
    },
}

/// Result with the journal's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Why a record payload whose checksum passed is not a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// postcard refused the bytes.
    #[error("its payload does not decode")]
    Postcard(#[source] postcard::Error),
    /// A record decoded from a prefix of the payload.
    #[error("its payload has {0} trailing bytes")]
    Trailing(usize),
}
