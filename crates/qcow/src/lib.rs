//! The qcow2 image format. (Stub: the API contract; issue 3 fills it in.)
#![allow(missing_docs, clippy::needless_pass_by_value)]

use std::io;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O error reading the image")]
    Io(#[from] io::Error),
    #[error("invalid qcow2 header: {0}")]
    InvalidHeader(String),
    #[error("unsupported qcow2 feature: {0}")]
    Unsupported(String),
    #[error("corrupt qcow2 image: {0}")]
    Corrupt(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Positional reads from whatever holds the image bytes.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
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

impl<R: ReadAt + ?Sized> ReadAt for &R {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestOffset(pub u64);
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostOffset(pub u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub virtual_size: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub dirty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    Data { host: HostOffset },
    Zero,
    Compressed,
    Unallocated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub guest: GuestOffset,
    pub len: u64,
    pub kind: ExtentKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRange {
    pub offset: HostOffset,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub ranges: Vec<HostRange>,
    pub file_len: u64,
}

pub struct Image<R> {
    source: R,
    header: Header,
}

impl<R: ReadAt> Image<R> {
    pub fn open(source: R) -> Result<Self> {
        let _ = source;
        todo!()
    }
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// Sorted, coalesced extents covering [0, virtual_size).
    pub fn map(&self) -> Result<Vec<Extent>> {
        let _ = &self.source;
        todo!()
    }
    /// Guest bytes at `guest`; unallocated ranges read as zeros.
    pub fn read_at(&self, buf: &mut [u8], guest: GuestOffset) -> Result<()> {
        let _ = (buf, guest);
        todo!()
    }
    /// Every host byte range a commit of `guest_ranges` into this image (as a base) may overwrite.
    pub fn inventory(&self, guest_ranges: &[(GuestOffset, u64)]) -> Result<Inventory> {
        let _ = guest_ranges;
        todo!()
    }
}

/// True when `bytes` start with the qcow2 magic.
pub fn has_qcow2_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(b"QFI\xfb")
}

/// The bytes of an empty qcow2 v3 overlay of `virtual_size` over `backing_file` (format
/// `backing_format`), with 64 KiB clusters.
pub fn create_overlay(virtual_size: u64, backing_file: &str, backing_format: &str) -> Result<Vec<u8>> {
    let _ = (virtual_size, backing_file, backing_format);
    todo!()
}
