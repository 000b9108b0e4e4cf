//! The one error type of the crate.

use std::io;

/// Everything that can go wrong while opening, mapping, reading or creating a qcow2 image.
///
/// The variants separate what the caller can act on: an I/O failure of the source, input
/// that is not qcow2 at all, a header or structure that breaks the format's rules, a valid
/// image that needs a feature this crate refuses, and misuse of the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A compressed cluster did not decompress to exactly one cluster.
    #[error(
        "the compressed cluster for guest offset {guest:#x} (data at host offset {host:#x}) \
         does not decompress to one cluster"
    )]
    BadCompressedCluster {
        /// Guest offset of the cluster.
        guest: u64,
        /// Host byte offset of the compressed data.
        host: u64,
        /// What the decoder found.
        #[source]
        source: crate::DecompressError,
    },
    /// A table or entry read from the image breaks the format's rules.
    #[error("corrupt qcow2 image: {reason} (at host offset {offset:#x})")]
    Corrupt {
        /// Host offset of the offending structure or entry.
        offset: u64,
        /// What is wrong, in a sentence fragment.
        reason: String,
    },
    /// The caller asked for something impossible (a read past the virtual size, an invalid
    /// backing name for a new overlay, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A header field or header extension is out of range.
    #[error("invalid qcow2 header: {0}")]
    InvalidHeader(String),
    /// Reading the image source failed.
    #[error("could not read {len:#x} bytes at host offset {offset:#x} of the image")]
    Io {
        /// Host offset of the failed read.
        offset: u64,
        /// Length of the failed read.
        len: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The image has the corrupt bit set: qemu itself refuses to write it until repaired.
    #[error("the qcow2 image is marked corrupt; repair it with `qemu-img check -r all` first")]
    MarkedCorrupt,
    /// The source does not start with the qcow2 magic.
    #[error("not a qcow2 image: the magic bytes are missing")]
    NotQcow2,
    /// Two active L2 entries use one host cluster. qemu allocates a cluster for the active
    /// layer only when nothing else uses it, so this image was not written by qemu: reading
    /// it would make a write through one guest offset show up at another.
    #[error(
        "the {first_use} of guest offset {first_guest:#x} (L2 entry at {first_entry:#x}) and the \
         {second_use} of guest offset {second_guest:#x} (L2 entry at {second_entry:#x}) share \
         the host cluster at {host:#x}"
    )]
    SharedCluster {
        /// Host offset of the shared cluster.
        host: u64,
        /// Guest offset of the cluster that uses it first (in guest order).
        first_guest: u64,
        /// Host offset of that cluster's L2 entry.
        first_entry: u64,
        /// What that entry stores there ("data cluster" or "compressed data").
        first_use: &'static str,
        /// Guest offset of the cluster that uses it again.
        second_guest: u64,
        /// Host offset of that cluster's L2 entry.
        second_entry: u64,
        /// What that entry stores there.
        second_use: &'static str,
    },
    /// A valid image that needs something this crate deliberately does not handle.
    #[error("unsupported qcow2 image: {0}")]
    Unsupported(String),
    /// An incompatible feature bit this crate does not implement is set.
    #[error(
        "the qcow2 image needs incompatible feature bit {bit} ({name}), which is not supported"
    )]
    UnsupportedFeature {
        /// Bit number in the incompatible-features word.
        bit: u32,
        /// The name from the image's feature-name table, or a built-in name, or "unknown".
        name: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for a [`Error::Corrupt`].
pub(crate) fn corrupt(offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        offset,
        reason: reason.into(),
    }
}
