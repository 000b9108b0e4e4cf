//! Reading guest bytes: data, zeros, and decompressed clusters.

use crate::compress::decompress;
use crate::error::{Error, Result};
use crate::l2::Cluster;
use crate::{read_clamped, Extent, GuestOffset, Image, ReadAt};

impl<R: ReadAt> Image<R> {
    /// Fills `buf` with the guest bytes at `guest`.
    ///
    /// Data clusters are read from the file, compressed clusters are decompressed, zero
    /// clusters read as zeros. **Unallocated ranges read as zeros too**: their real content
    /// is in the backing file, which this crate never opens; callers that care must consult
    /// [`Image::map`] and read those ranges from the backing file themselves. At most about
    /// three clusters are buffered, whatever the size of `buf`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the range ends past the virtual size; the errors of
    /// [`Image::map`]; [`Error::BadCompressedCluster`]. On error `buf` holds unspecified
    /// bytes.
    pub fn read_at(&self, buf: &mut [u8], guest: GuestOffset) -> Result<()> {
        let start = guest.0;
        let end = self.check_range(start, buf.len() as u64)?;
        let cs = self.header.cluster_size();
        let mut cbuf: Vec<u8> = Vec::new();
        let mut cluster = Vec::new();
        self.walk(start, end, |g, len, cl| {
            let s = g.max(start);
            let e = (g + len).min(end);
            let dst = &mut buf[(s - start) as usize..(e - start) as usize];
            match cl {
                Cluster::Unallocated | Cluster::Zero { .. } => dst.fill(0),
                Cluster::Data { host } => {
                    read_clamped(&self.source, dst, host + (s - g), self.file_len)?;
                }
                Cluster::Sub { .. } => {
                    let mut res = Ok(());
                    cl.pieces(cs, |off, plen, kind| {
                        let ps = (g + off).max(s);
                        let pe = (g + off + plen).min(e);
                        if ps >= pe || res.is_err() {
                            return;
                        }
                        let d = &mut dst[(ps - s) as usize..(pe - s) as usize];
                        match kind {
                            crate::l2::PieceKind::Data { host } => {
                                res = read_clamped(
                                    &self.source,
                                    d,
                                    host + (ps - g - off),
                                    self.file_len,
                                );
                            }
                            _ => d.fill(0),
                        }
                    });
                    res?;
                }
                Cluster::Compressed { offset, len } => {
                    cbuf.resize(len as usize, 0);
                    read_clamped(&self.source, &mut cbuf, offset, self.file_len)?;
                    cluster.resize(cs as usize, 0);
                    decompress(self.header.compression, &cbuf, &mut cluster).map_err(|source| {
                        Error::BadCompressedCluster {
                            guest: g,
                            host: offset,
                            source,
                        }
                    })?;
                    dst.copy_from_slice(&cluster[(s - g) as usize..(e - g) as usize]);
                }
            }
            Ok(())
        })
    }

    /// Streams the guest bytes of `extent` to `sink` in chunks of at most `chunk` bytes
    /// (rounded up to one cluster), so whole extents can be copied in bounded memory.
    ///
    /// # Errors
    /// As [`Image::read_at`], and whatever `sink` returns.
    pub fn read_extent(
        &self,
        extent: &Extent,
        chunk: usize,
        mut sink: impl FnMut(GuestOffset, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let cs = self.header.cluster_size();
        let chunk = (chunk as u64).max(cs);
        let mut buf = vec![0u8; chunk.min(extent.len) as usize];
        let mut done = 0u64;
        while done < extent.len {
            let n = (extent.len - done).min(chunk) as usize;
            let g = GuestOffset(extent.guest.0 + done);
            self.read_at(&mut buf[..n], g)?;
            sink(g, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}
