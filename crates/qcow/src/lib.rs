//! The qcow2 image format, read-only: a validating header parser, the allocation map, a
//! reader, the host-range inventory a commit into a qcow2 base needs, and a writer for
//! empty overlays.
//!
//! [`Image::open`] checks the header the way qemu does on open (and more strictly where qemu
//! trusts the file), loads the active L1 and refcount tables, and cross-checks every
//! metadata region. [`Image::map`] walks the L2 tables one at a time into sorted, coalesced
//! [`Extent`]s and refuses host clusters shared by two active L2 entries (which qemu never
//! writes) and entries whose COPIED flag or refcount `qemu-img check` would call corrupt;
//! [`Image::read_at`] returns guest bytes, decompressing deflate and zstd
//! clusters; [`Image::inventory`] lists every host byte range a commit may overwrite;
//! [`create_overlay`] returns the bytes of a fresh, empty qcow2 v3 overlay.
//!
//! This crate does not write to images, never opens backing files (it only reports their
//! names), and refuses encrypted images, external data files and images marked corrupt.
//! Everything read from the image is distrusted: offsets are checked against the file
//! length and against the metadata regions, and no allocation is sized from a field before
//! that field has been checked against the file length.
//!
//! ```
//! let bytes = qcow::create_overlay(1 << 30, "base.raw", "raw").unwrap();
//! let image = qcow::Image::open(&bytes[..]).unwrap();
//! assert_eq!(image.header().backing_file.as_deref(), Some("base.raw"));
//! let map = image.map().unwrap();
//! assert_eq!(map.len(), 1);
//! assert_eq!(map[0].kind, qcow::ExtentKind::Unallocated);
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod compress;
mod create;
mod error;
pub mod fuzz;
mod header;
mod inventory;
mod l2;
mod map;
mod meta;
mod read;
mod refs;

use std::io;

pub use compress::DecompressError;
pub use create::create_overlay;
pub use error::{Error, Result};
pub use header::{BitmapsExtension, Compression, Header, RawHeader};

/// Positional reads from whatever holds the image bytes.
#[allow(clippy::len_without_is_empty)] // a byte source, not a collection
pub trait ReadAt {
    /// Fills `buf` from `offset`.
    ///
    /// # Errors
    /// `UnexpectedEof` when the source ends first; any other I/O error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The current length of the source in bytes.
    ///
    /// # Errors
    /// Any I/O error.
    fn len(&self) -> io::Result<u64>;
    /// How many bytes of the source are backed by storage (a sparse file's allocated size),
    /// when the source can tell; `None` (the default) when it cannot. [`Image::map`] uses it
    /// to refuse L2 tables that lie in holes before reading them: a sparse file may claim
    /// any length, so the length alone does not bound the work of a map.
    ///
    /// # Errors
    /// Any I/O error.
    fn allocated_len(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn allocated_len(&self) -> io::Result<Option<u64>> {
        use std::os::unix::fs::MetadataExt;
        // st_blocks counts 512-byte units whatever the file system's block size.
        Ok(Some(self.metadata()?.blocks().saturating_mul(512)))
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

impl<R: ReadAt + ?Sized> ReadAt for &R {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn allocated_len(&self) -> io::Result<Option<u64>> {
        (**self).allocated_len()
    }
}

/// Reads exactly `buf.len()` bytes at `offset`, with the position in the error.
pub(crate) fn read_exact<R: ReadAt + ?Sized>(src: &R, buf: &mut [u8], offset: u64) -> Result<()> {
    src.read_exact_at(buf, offset).map_err(|source| Error::Io {
        offset,
        len: buf.len() as u64,
        source,
    })
}

/// Reads `buf.len()` bytes at `offset`, reading what lies past `file_len` as zeros (as
/// qemu's file driver does for short reads).
pub(crate) fn read_clamped<R: ReadAt + ?Sized>(
    src: &R,
    buf: &mut [u8],
    offset: u64,
    file_len: u64,
) -> Result<()> {
    let avail = file_len.saturating_sub(offset).min(buf.len() as u64) as usize;
    // Nothing to read when the range starts at or past the end: a zero-length read there
    // fails on some sources (byte slices) and not others (files), and the reader must not
    // depend on which (a fuzzer finding).
    if avail > 0 {
        read_exact(src, &mut buf[..avail], offset)?;
    }
    buf[avail..].fill(0);
    Ok(())
}

/// A byte offset in the guest's view of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestOffset(pub u64);

/// A byte offset in the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostOffset(pub u64);

/// What a guest range maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Guest data stored uncompressed at `host` (the host offset of the extent's first byte).
    Data {
        /// Host offset of the extent's first byte.
        host: HostOffset,
    },
    /// Reads as zeros without consulting the backing file.
    Zero,
    /// Stored compressed (one or more compressed clusters).
    Compressed,
    /// Not allocated in this image: reads come from the backing file (or are zeros without
    /// one).
    Unallocated,
}

/// A guest range of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First guest byte.
    pub guest: GuestOffset,
    /// Length in bytes (never 0).
    pub len: u64,
    /// What the range maps to.
    pub kind: ExtentKind,
}

/// A host byte range of the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRange {
    /// First byte.
    pub offset: HostOffset,
    /// Length in bytes.
    pub len: u64,
}

/// Every host byte range a commit into an image may overwrite, plus the file length it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Sorted, coalesced, non-overlapping ranges, all below `file_len`.
    pub ranges: Vec<HostRange>,
    /// The file length when the inventory was taken; anything appended past it is undone by
    /// truncating back to it.
    pub file_len: u64,
}

/// An opened, validated qcow2 image.
pub struct Image<R> {
    source: R,
    header: Header,
    file_len: u64,
    layout: meta::Layout,
}

impl<R: ReadAt> Image<R> {
    /// Opens an image: validates the header and its extensions, reads the active L1 and the
    /// refcount table, and checks that no two metadata tables overlap, except L2 tables and
    /// refcount blocks among themselves: [`Image::map`] checks those, with the data clusters.
    ///
    /// Memory use is bounded by the file length and qemu's table limits: the L1 (at most
    /// 32 MiB) and refcount table (at most 8 MiB) as offsets, one region per snapshot and
    /// bitmap table; L2 tables are not read until needed.
    ///
    /// # Errors
    /// [`Error::NotQcow2`], [`Error::InvalidHeader`], [`Error::Unsupported`],
    /// [`Error::UnsupportedFeature`], [`Error::MarkedCorrupt`], [`Error::Corrupt`],
    /// [`Error::Io`].
    pub fn open(source: R) -> Result<Self> {
        let file_len = source.len().map_err(|source| Error::Io {
            offset: 0,
            len: 0,
            source,
        })?;
        let header = header::read_header(&source, file_len)?;
        let layout = meta::load(&source, &header, file_len)?;
        tracing::debug!(
            version = header.version,
            cluster_bits = header.cluster_bits,
            virtual_size = header.virtual_size,
            dirty = header.dirty,
            "opened qcow2 image"
        );
        Ok(Image {
            source,
            header,
            file_len,
            layout,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file length seen at open.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The source the image reads from.
    pub fn source(&self) -> &R {
        &self.source
    }

    /// Consumes the image, returning its source.
    pub fn into_source(self) -> R {
        self.source
    }
}

/// True when `bytes` start with the qcow2 magic.
pub fn has_qcow2_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&header::MAGIC)
}
