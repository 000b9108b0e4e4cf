//! The qcow2 header in two layers: [`RawHeader`] holds the big-endian fields exactly as
//! stored; [`Header`] is what is left after every rule qemu applies on open has passed.
//!
//! Layout (all big-endian, `docs/interop/qcow2.rst` "Header"):
//!
//! ```text
//!   0  u32 magic "QFI\xfb"        40  u64 l1_table_offset        96  u32 refcount_order   (v3)
//!   4  u32 version (2 or 3)       48  u64 refcount_table_offset 100  u32 header_length    (v3)
//!   8  u64 backing_file_offset    56  u32 refcount_table_clusters 104 u8 compression_type (v3, if header_length > 104)
//!  16  u32 backing_file_size      60  u32 nb_snapshots          105  7 bytes padding (zero)
//!  20  u32 cluster_bits           64  u64 snapshots_offset
//!  24  u64 size                   72  u64 incompatible_features (v3)
//!  32  u32 crypt_method           80  u64 compatible_features   (v3)
//!  36  u32 l1_size                88  u64 autoclear_features    (v3)
//! ```
//! Header extensions follow at `header_length` and end at `backing_file_offset` (or the end
//! of cluster 0); the backing file name sits at `backing_file_offset`.

use crate::error::{Error, Result};
use crate::{read_exact, HostOffset, ReadAt};

/// The qcow2 magic, `"QFI\xfb"`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Smallest cluster_bits qemu accepts (512-byte clusters).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster_bits qemu accepts (2 MiB clusters).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// qemu's `QCOW_MAX_L1_SIZE`: the active L1 table may not exceed 32 MiB.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// qemu's `QCOW_MAX_REFTABLE_SIZE`: the refcount table may not exceed 8 MiB.
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// qemu's `QCOW_MAX_SNAPSHOTS`.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Longest backing file name qemu accepts.
pub const MAX_BACKING_NAME: usize = 1023;

/// Incompatible feature bit 0: refcounts may be stale.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: the image may be corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: `compression_type` is not deflate.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: 128-bit L2 entries with 32 subclusters.
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Autoclear bit 0: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Autoclear bit 1: the external data file is a standalone raw image.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
const EXT_FEATURE_TABLE: u32 = 0x6803_F857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_CRYPTO: u32 = 0x0537_BE77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The compression algorithm of compressed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Raw deflate (qemu's default, type 0).
    Deflate,
    /// Zstandard (type 1, incompatible bit 3).
    Zstd,
}

/// The bitmaps header extension (persistent dirty bitmaps), when it is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapsExtension {
    /// Number of bitmaps in the directory.
    pub nb_bitmaps: u32,
    /// Size of the bitmap directory in bytes.
    pub directory_size: u64,
    /// Host offset of the bitmap directory (cluster-aligned).
    pub directory_offset: HostOffset,
}

/// The header fields exactly as stored (big-endian decoded, nothing checked but the magic
/// length). v2 images get the v2 defaults for the v3-only fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// Offset 0.
    pub magic: [u8; 4],
    /// Offset 4.
    pub version: u32,
    /// Offset 8.
    pub backing_file_offset: u64,
    /// Offset 16.
    pub backing_file_size: u32,
    /// Offset 20.
    pub cluster_bits: u32,
    /// Offset 24.
    pub size: u64,
    /// Offset 32.
    pub crypt_method: u32,
    /// Offset 36.
    pub l1_size: u32,
    /// Offset 40.
    pub l1_table_offset: u64,
    /// Offset 48.
    pub refcount_table_offset: u64,
    /// Offset 56.
    pub refcount_table_clusters: u32,
    /// Offset 60.
    pub nb_snapshots: u32,
    /// Offset 64.
    pub snapshots_offset: u64,
    /// Offset 72 (v3).
    pub incompatible_features: u64,
    /// Offset 80 (v3).
    pub compatible_features: u64,
    /// Offset 88 (v3).
    pub autoclear_features: u64,
    /// Offset 96 (v3).
    pub refcount_order: u32,
    /// Offset 100 (v3).
    pub header_length: u32,
    /// Offset 104 (v3, present when `header_length > 104`).
    pub compression_type: u8,
    /// Offsets 105..112 (must be zero when present).
    pub padding: [u8; 7],
}

/// The big-endian u16 at `at` (the caller has checked the bounds).
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian u32 at `at` (the caller has checked the bounds).
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

/// The big-endian u64 at `at` (the caller has checked the bounds).
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl RawHeader {
    /// Decodes the fixed header from the first bytes of an image (at least 72, up to 112 are
    /// used).
    ///
    /// # Errors
    /// [`Error::NotQcow2`] without the magic; [`Error::InvalidHeader`] when too short.
    pub fn parse(b: &[u8]) -> Result<Self> {
        if !b.starts_with(&MAGIC) {
            return Err(Error::NotQcow2);
        }
        if b.len() < 72 {
            return Err(Error::InvalidHeader(format!(
                "the file holds only {} bytes, fewer than the 72-byte header",
                b.len()
            )));
        }
        let version = be32(b, 4);
        let mut raw = RawHeader {
            magic: MAGIC,
            version,
            backing_file_offset: be64(b, 8),
            backing_file_size: be32(b, 16),
            cluster_bits: be32(b, 20),
            size: be64(b, 24),
            crypt_method: be32(b, 32),
            l1_size: be32(b, 36),
            l1_table_offset: be64(b, 40),
            refcount_table_offset: be64(b, 48),
            refcount_table_clusters: be32(b, 56),
            nb_snapshots: be32(b, 60),
            snapshots_offset: be64(b, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 72,
            compression_type: 0,
            padding: [0; 7],
        };
        if version >= 3 {
            if b.len() < 104 {
                return Err(Error::InvalidHeader(format!(
                    "the file holds only {} bytes, fewer than the 104-byte v3 header",
                    b.len()
                )));
            }
            raw.incompatible_features = be64(b, 72);
            raw.compatible_features = be64(b, 80);
            raw.autoclear_features = be64(b, 88);
            raw.refcount_order = be32(b, 96);
            raw.header_length = be32(b, 100);
            if raw.header_length > 104 && b.len() > 104 {
                raw.compression_type = b[104];
                let end = b.len().min(112).min(raw.header_length as usize);
                raw.padding[..end - 105].copy_from_slice(&b[105..end]);
            }
        }
        Ok(raw)
    }
}

/// The validated header: every field here has passed qemu's open-time checks (and this
/// crate's stricter ones, see `docs/qcow.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size, 9..=21.
    pub cluster_bits: u32,
    /// Guest-visible size in bytes: the header's size field rounded down to a multiple of
    /// 512, as qemu reads it (qemu keeps the size in sectors, `header.size / 512`).
    pub virtual_size: u64,
    /// The backing file name as stored (relative names are relative to the image's
    /// directory). Never opened by this crate.
    pub backing_file: Option<String>,
    /// The backing format from the header extension, if present.
    pub backing_format: Option<String>,
    /// Incompatible bit 0: refcounts may be stale (qemu repairs on its next R/W open). The
    /// map and reads do not depend on refcounts; [`crate::Image::inventory`] does.
    pub dirty: bool,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Host offset of the active L1 table.
    pub l1_table_offset: HostOffset,
    /// Host offset of the refcount table.
    pub refcount_table_offset: HostOffset,
    /// Size of the refcount table in clusters.
    pub refcount_table_clusters: u32,
    /// log2 of the refcount width in bits, 0..=6.
    pub refcount_order: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Host offset of the snapshot table.
    pub snapshots_offset: HostOffset,
    /// The incompatible feature word as stored.
    pub incompatible_features: u64,
    /// The compatible feature word as stored.
    pub compatible_features: u64,
    /// The autoclear feature word as stored.
    pub autoclear_features: u64,
    /// Header length in bytes (72 for v2).
    pub header_length: u32,
    /// Algorithm of compressed clusters.
    pub compression: Compression,
    /// 128-bit L2 entries with 32 subclusters per cluster.
    pub extended_l2: bool,
    /// The bitmaps extension, only when present *and* marked consistent (autoclear bit 0).
    pub bitmaps: Option<BitmapsExtension>,
    /// Offset of the backing file name within cluster 0 (0 without a backing file).
    pub backing_file_offset: u64,
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Bytes per L2 entry: 8, or 16 with extended L2.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2 {
            16
        } else {
            8
        }
    }

    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    /// Guest bytes mapped by one L2 table.
    pub fn l2_coverage(&self) -> u64 {
        self.cluster_size() * self.l2_entries()
    }

    /// L1 entries needed to cover the virtual size.
    pub fn l1_entries_needed(&self) -> u64 {
        self.virtual_size.div_ceil(self.l2_coverage())
    }

    /// Refcount width in bits.
    pub fn refcount_bits(&self) -> u64 {
        1u64 << self.refcount_order
    }
}

/// The guest disk size of an image whose header size field is `size`: `size` rounded down
/// to a multiple of 512.
///
/// qemu keeps a disk's size in 512-byte sectors: `qcow2_do_open` sets `bs->total_sectors =
/// header.size / BDRV_SECTOR_SIZE`, and everything after that (`qemu-img info`, `map`,
/// `convert`, guest reads, the size `qemu-img commit` grows a base to) sees the rounded-down
/// size, while `qemu-img check` calls the image clean. qemu never writes such a field itself
/// (`qemu-img create` rounds up; `qcow2_co_truncate` refuses "The new size must be a multiple
/// of 512"), but since it accepts one silently and the rule is a single division, this crate
/// follows it rather than refusing the image: the same overlay then gives the same disk
/// under imgtx and under qemu. Only the L1 size check keeps the raw field, as qemu's does
/// (`size_to_l1(s, header.size)`).
pub(crate) fn virtual_size(size: u64) -> u64 {
    size / 512 * 512
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidHeader(msg.into())
}

/// Checks that a table of `len` bytes at `offset` is cluster-aligned, does not overflow and
/// lies inside the file (an empty table only needs alignment).
fn check_table(what: &str, offset: u64, len: u64, cluster_size: u64, file_len: u64) -> Result<()> {
    if !offset.is_multiple_of(cluster_size) {
        return Err(invalid(format!(
            "the {what} offset {offset:#x} is not aligned to a cluster"
        )));
    }
    let end = offset
        .checked_add(len)
        .filter(|e| *e <= i64::MAX as u64)
        .ok_or_else(|| invalid(format!("the {what} at {offset:#x} ends past 2^63")))?;
    if len > 0 && end > file_len {
        return Err(invalid(format!(
            "the {what} ({len:#x} bytes at {offset:#x}) ends past the end of the file ({file_len:#x})"
        )));
    }
    Ok(())
}

fn builtin_incompat_name(bit: u32) -> &'static str {
    match bit {
        0 => "dirty bit",
        1 => "corrupt bit",
        2 => "external data file",
        3 => "compression type",
        4 => "extended L2 entries",
        _ => "unknown",
    }
}

fn utf8(what: &str, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid(format!("the {what} is not UTF-8")))
}

/// Parses and validates the header of `src`, whose length is `file_len`.
pub(crate) fn read_header<R: ReadAt + ?Sized>(src: &R, file_len: u64) -> Result<Header> {
    let mut first = [0u8; 112];
    let n = usize::try_from(file_len.min(112)).unwrap_or(112);
    read_exact(src, &mut first[..n], 0)?;
    let raw = RawHeader::parse(&first[..n])?;
    validate(src, &raw, file_len)
}

fn validate<R: ReadAt + ?Sized>(src: &R, raw: &RawHeader, file_len: u64) -> Result<Header> {
    let cluster_size = check_fields(raw, file_len)?;
    // Feature policy: refuse what we cannot read correctly, before trusting any table.
    if raw.backing_file_offset > cluster_size {
        return Err(invalid(format!(
            "backing_file_offset {:#x} is past the first cluster",
            raw.backing_file_offset
        )));
    }
    let ext_area_end = if raw.backing_file_offset != 0 {
        raw.backing_file_offset
    } else {
        cluster_size
    };
    // qemu reads extensions for v2 images too (qemu-img puts the backing format there).
    let exts = read_extensions(
        src,
        u64::from(raw.header_length),
        ext_area_end.min(file_len),
    )?;
    let (compression, extended_l2) = check_features(raw, &exts)?;
    check_tables(raw, cluster_size, extended_l2, file_len)?;
    let backing_file = read_backing_name(src, raw, cluster_size, file_len)?;
    let incompat = raw.incompatible_features;

    let virtual_size = virtual_size(raw.size);
    if virtual_size != raw.size {
        tracing::debug!(
            size_field = raw.size,
            virtual_size,
            "size field is not a multiple of 512; read as rounded down, as qemu does"
        );
    }

    Ok(Header {
        version: raw.version,
        cluster_bits: raw.cluster_bits,
        virtual_size,
        backing_file,
        backing_format: exts.backing_format,
        dirty: incompat & INCOMPAT_DIRTY != 0,
        l1_size: raw.l1_size,
        l1_table_offset: HostOffset(raw.l1_table_offset),
        refcount_table_offset: HostOffset(raw.refcount_table_offset),
        refcount_table_clusters: raw.refcount_table_clusters,
        refcount_order: raw.refcount_order,
        nb_snapshots: raw.nb_snapshots,
        snapshots_offset: HostOffset(raw.snapshots_offset),
        incompatible_features: raw.incompatible_features,
        compatible_features: raw.compatible_features,
        autoclear_features: raw.autoclear_features,
        header_length: raw.header_length,
        compression,
        extended_l2,
        bitmaps: if raw.autoclear_features & AUTOCLEAR_BITMAPS != 0 {
            exts.bitmaps
        } else {
            if exts.bitmaps.is_some() {
                tracing::debug!("bitmaps extension present but marked inconsistent; ignored");
            }
            None
        },
        backing_file_offset: raw.backing_file_offset,
    })
}

/// The header's own fields: a version that exists, a cluster size in range, a v3 header's
/// length and padding, a refcount width. Returns the cluster size.
fn check_fields(raw: &RawHeader, file_len: u64) -> Result<u64> {
    if raw.version != 2 && raw.version != 3 {
        return Err(Error::Unsupported(format!(
            "qcow2 version {} (only 2 and 3 exist)",
            raw.version
        )));
    }
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&raw.cluster_bits) {
        return Err(invalid(format!(
            "cluster_bits {} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}",
            raw.cluster_bits
        )));
    }
    let cluster_size = 1u64 << raw.cluster_bits;
    if raw.version == 3 {
        if raw.header_length < 104 {
            return Err(invalid(format!(
                "header_length {} is shorter than the 104 bytes of a v3 header",
                raw.header_length
            )));
        }
        if u64::from(raw.header_length) > cluster_size {
            return Err(invalid(format!(
                "header_length {} is larger than the cluster size {cluster_size:#x}",
                raw.header_length
            )));
        }
        if u64::from(raw.header_length) > file_len {
            return Err(invalid(format!(
                "header_length {} runs past the end of the file ({file_len:#x})",
                raw.header_length
            )));
        }
        if raw.padding != [0; 7] {
            return Err(invalid(
                "the header padding after compression_type is not zero",
            ));
        }
    }
    if raw.refcount_order > 6 {
        return Err(invalid(format!(
            "refcount_order {} is larger than 6",
            raw.refcount_order
        )));
    }
    Ok(cluster_size)
}

/// The features: nothing unknown, corrupt, external, encrypted or inconsistent. Returns the
/// compression type and whether L2 entries are extended.
fn check_features(raw: &RawHeader, exts: &Extensions) -> Result<(Compression, bool)> {
    let incompat = raw.incompatible_features;
    let known = INCOMPAT_DIRTY
        | INCOMPAT_CORRUPT
        | INCOMPAT_DATA_FILE
        | INCOMPAT_COMPRESSION
        | INCOMPAT_EXTENDED_L2;
    let unknown = incompat & !known;
    if unknown != 0 {
        let bit = unknown.trailing_zeros();
        let name = exts
            .feature_names
            .iter()
            .find(|(t, b, _)| *t == 0 && u32::from(*b) == bit)
            .map_or_else(|| "unknown".to_owned(), |(_, _, n)| n.clone());
        return Err(Error::UnsupportedFeature { bit, name });
    }
    if incompat & INCOMPAT_CORRUPT != 0 {
        return Err(Error::MarkedCorrupt);
    }
    if incompat & INCOMPAT_DATA_FILE != 0 || exts.data_file {
        return Err(Error::UnsupportedFeature {
            bit: 2,
            name: builtin_incompat_name(2).to_owned(),
        });
    }
    if raw.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0 {
        return Err(invalid(
            "autoclear bit 1 (raw external data) is set without an external data file",
        ));
    }
    match raw.crypt_method {
        0 => {}
        1 | 2 => {
            return Err(Error::Unsupported(
                "the image is encrypted, and encrypted images are refused".to_owned(),
            ))
        }
        m => return Err(invalid(format!("unknown encryption method {m}"))),
    }
    if exts.crypto {
        return Err(invalid(
            "a full-disk-encryption extension is present on an unencrypted image",
        ));
    }
    let compression = match (raw.compression_type, incompat & INCOMPAT_COMPRESSION != 0) {
        (0, false) => Compression::Deflate,
        (0, true) => {
            return Err(invalid(
                "incompatible bit 3 (compression type) is set but compression_type is deflate",
            ))
        }
        (1, true) => Compression::Zstd,
        (t, false) => {
            return Err(invalid(format!(
                "compression_type {t} is not deflate but incompatible bit 3 is clear"
            )))
        }
        (t, true) => return Err(Error::Unsupported(format!("compression type {t}"))),
    };
    let extended_l2 = incompat & INCOMPAT_EXTENDED_L2 != 0;
    if extended_l2 && raw.cluster_bits < 14 {
        return Err(invalid(format!(
            "extended L2 needs clusters of at least 16 KiB, not 2^{}",
            raw.cluster_bits
        )));
    }
    Ok((compression, extended_l2))
}

/// The tables: aligned, bounded, inside the file, and an L1 table large enough for the
/// virtual size.
fn check_tables(
    raw: &RawHeader,
    cluster_size: u64,
    extended_l2: bool,
    file_len: u64,
) -> Result<()> {
    if raw.refcount_table_clusters == 0 {
        return Err(invalid("the image has no refcount table"));
    }
    let reftable_len = u64::from(raw.refcount_table_clusters)
        .checked_mul(cluster_size)
        .filter(|l| *l <= MAX_REFTABLE_BYTES)
        .ok_or_else(|| {
            invalid(format!(
                "the refcount table ({} clusters) is larger than 8 MiB",
                raw.refcount_table_clusters
            ))
        })?;
    check_table(
        "refcount table",
        raw.refcount_table_offset,
        reftable_len,
        cluster_size,
        file_len,
    )?;
    if raw.nb_snapshots > MAX_SNAPSHOTS {
        return Err(invalid(format!(
            "{} snapshots is more than the limit of {MAX_SNAPSHOTS}",
            raw.nb_snapshots
        )));
    }
    // Each snapshot entry is at least 40 bytes.
    check_table(
        "snapshot table",
        raw.snapshots_offset,
        u64::from(raw.nb_snapshots) * 40,
        cluster_size,
        file_len,
    )?;
    let l1_len = u64::from(raw.l1_size) * 8;
    if l1_len > MAX_L1_BYTES {
        return Err(invalid(format!(
            "the L1 table ({} entries) is larger than 32 MiB",
            raw.l1_size
        )));
    }
    check_table(
        "L1 table",
        raw.l1_table_offset,
        l1_len,
        cluster_size,
        file_len,
    )?;
    let entry_size: u64 = if extended_l2 { 16 } else { 8 };
    let coverage = cluster_size * (cluster_size / entry_size);
    if raw.size > i64::MAX as u64 {
        return Err(invalid(format!(
            "the virtual size {:#x} is larger than 2^63",
            raw.size
        )));
    }
    // qemu checks the raw field here, not the sector-rounded size (`size_to_l1(s,
    // header.size)` in `qcow2_do_open`).
    let needed = raw.size.div_ceil(coverage);
    if u64::from(raw.l1_size) < needed {
        return Err(invalid(format!(
            "the L1 table has {} entries but the virtual size {:#x} needs {needed}",
            raw.l1_size, raw.size
        )));
    }
    Ok(())
}

/// The backing file name: inside cluster 0, never opened here.
fn read_backing_name<R: ReadAt + ?Sized>(
    src: &R,
    raw: &RawHeader,
    cluster_size: u64,
    file_len: u64,
) -> Result<Option<String>> {
    if raw.backing_file_offset == 0 {
        return Ok(None);
    }
    let len = raw.backing_file_size;
    if len as usize > MAX_BACKING_NAME {
        return Err(invalid(format!(
            "the backing file name is {len} bytes, longer than {MAX_BACKING_NAME}"
        )));
    }
    let end = raw.backing_file_offset + u64::from(len);
    if end > cluster_size || end > file_len {
        return Err(invalid(format!(
            "the backing file name ({len} bytes at {:#x}) runs past the first cluster or the file",
            raw.backing_file_offset
        )));
    }
    let mut name = vec![0u8; len as usize];
    read_exact(src, &mut name, raw.backing_file_offset)?;
    Ok(Some(utf8("backing file name", &name)?))
}

#[derive(Default)]
struct Extensions {
    backing_format: Option<String>,
    /// (type, bit, name)
    feature_names: Vec<(u8, u8, String)>,
    bitmaps: Option<BitmapsExtension>,
    crypto: bool,
    data_file: bool,
}

fn read_extensions<R: ReadAt + ?Sized>(src: &R, start: u64, end: u64) -> Result<Extensions> {
    let mut exts = Extensions::default();
    if end <= start {
        return Ok(exts);
    }
    // The area lies inside cluster 0 (at most 2 MiB), so reading it whole is bounded.
    let len = usize::try_from(end - start).map_err(|_| invalid("extension area too large"))?;
    let mut area = vec![0u8; len];
    read_exact(src, &mut area, start)?;
    let mut pos = 0usize;
    while pos < area.len() {
        if area.len() - pos < 8 {
            return Err(invalid(format!(
                "a header extension at {:#x} is cut off by the end of the extension area",
                start + pos as u64
            )));
        }
        let ty = be32(&area, pos);
        let elen = be32(&area, pos + 4) as usize;
        pos += 8;
        if ty == EXT_END {
            break;
        }
        if elen > area.len() - pos {
            return Err(invalid(format!(
                "header extension {ty:#010x} at {:#x} is too large ({elen} bytes)",
                start + pos as u64 - 8
            )));
        }
        let data = &area[pos..pos + elen];
        match ty {
            EXT_BACKING_FORMAT => {
                if elen >= 16 {
                    return Err(invalid(format!(
                        "the backing format name is {elen} bytes, longer than 15"
                    )));
                }
                exts.backing_format = Some(utf8("backing format name", data)?);
            }
            EXT_FEATURE_TABLE => {
                for e in data.chunks_exact(48) {
                    let name_bytes = &e[2..];
                    let nul = name_bytes.iter().position(|b| *b == 0).unwrap_or(46);
                    let name = String::from_utf8_lossy(&name_bytes[..nul]).into_owned();
                    exts.feature_names.push((e[0], e[1], name));
                }
            }
            EXT_BITMAPS => {
                if elen != 24 {
                    return Err(invalid(format!(
                        "the bitmaps extension is {elen} bytes instead of 24"
                    )));
                }
                let nb = be32(data, 0);
                let reserved = be32(data, 4);
                let size = be64(data, 8);
                let offset = be64(data, 16);
                if reserved != 0 || nb == 0 || nb > 65535 || size > 1024 * 65535 {
                    return Err(invalid(format!(
                        "the bitmaps extension is out of range ({nb} bitmaps, directory of {size:#x} bytes)"
                    )));
                }
                exts.bitmaps = Some(BitmapsExtension {
                    nb_bitmaps: nb,
                    directory_size: size,
                    directory_offset: HostOffset(offset),
                });
            }
            EXT_CRYPTO => exts.crypto = true,
            EXT_DATA_FILE => exts.data_file = true,
            other => {
                tracing::debug!(
                    ext_type = other,
                    len = elen,
                    "unknown header extension ignored"
                );
            }
        }
        // Each extension is padded to a multiple of 8 bytes.
        pos = pos.saturating_add(elen.div_ceil(8) * 8).min(area.len());
    }
    Ok(exts)
}
