//! The transfer pipe: byte filters applied to a frame's payload (SPEC §4).

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use flate2::{Compression, Crc, Decompress, FlushDecompress, Status};

use crate::error::XferError;
use crate::packet::XferId;
use crate::registry::IdTable;

/// A reversible byte transformation named by one id byte (compression,
/// encryption, checksums...).
///
/// Implementations must be deterministic in `decode`: whatever `encode`
/// produced must decode to the original bytes.
pub trait XferFilter: Send + Sync + 'static {
    /// The id byte that names this filter in a frame.
    fn id(&self) -> XferId;
    /// A human-readable name for logs.
    fn name(&self) -> &'static str;
    /// Appends the transformed `src` to `dst`.
    fn encode(&self, src: &[u8], dst: &mut BytesMut) -> Result<(), XferError>;
    /// Appends the original of `src` to `dst`. Must fail with
    /// [`XferError::OutputOverLimit`] rather than append more than `limit`
    /// bytes, and should notice that early (a filter that expands its input,
    /// like gzip, must not inflate a bomb fully before checking).
    fn decode(&self, src: &[u8], limit: usize, dst: &mut BytesMut) -> Result<(), XferError>;
}

/// The filters a peer knows, by id. [`XferRegistry::default`] holds gzip.
#[derive(Clone)]
pub struct XferRegistry {
    table: IdTable<dyn XferFilter>,
}

impl XferRegistry {
    /// A registry with no filter at all.
    pub fn empty() -> Self {
        XferRegistry {
            table: IdTable::new(),
        }
    }

    /// Adds a filter, replacing one with the same id; returns the old one.
    pub fn register(&mut self, filter: Arc<dyn XferFilter>) -> Option<Arc<dyn XferFilter>> {
        self.table.insert(filter.id().0, filter)
    }

    /// The filter with this id.
    pub fn get(&self, id: XferId) -> Result<&Arc<dyn XferFilter>, XferError> {
        self.table.get(id.0).ok_or(XferError::Unknown { id })
    }

    /// The filter with this name.
    pub fn by_name(&self, name: &str) -> Option<&Arc<dyn XferFilter>> {
        self.table.find(|f| f.name() == name)
    }
}

impl Default for XferRegistry {
    fn default() -> Self {
        let mut r = XferRegistry::empty();
        r.register(Arc::new(Gzip::default()));
        r
    }
}

impl fmt::Debug for XferRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.table.iter().map(|x| (x.id(), x.name())))
            .finish()
    }
}

/// gzip, id `'g'` (SPEC §4).
///
/// Writes a complete gzip member (Go's header, a deflate stream, CRC-32 and
/// length), which Go's reader accepts. Reads both that and Go's own form,
/// which ends the deflate stream with a sync flush and has no trailer
/// (D-GZIP). Unlike Go, a corrupt deflate stream or a wrong CRC is an error,
/// not a shorter payload.
#[derive(Debug, Clone, Copy)]
pub struct Gzip {
    level: u32,
}

impl Gzip {
    /// gzip at a compression level from 0 (store) to 9 (smallest).
    pub fn new(level: u32) -> Self {
        Gzip {
            level: level.min(9),
        }
    }
}

impl Default for Gzip {
    /// Level 5, as Go teleport uses.
    fn default() -> Self {
        Gzip::new(5)
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

impl Gzip {
    fn malformed(reason: impl Into<String>) -> XferError {
        XferError::Malformed {
            id: XferId::GZIP,
            reason: reason.into(),
        }
    }

    /// Length of the gzip header at the start of `src` (RFC 1952 §2.3).
    fn header_len(src: &[u8]) -> Result<usize, XferError> {
        let fixed = src
            .get(..10)
            .ok_or_else(|| Self::malformed("invalid header: shorter than 10 bytes"))?;
        if fixed[..2] != GZIP_MAGIC || fixed[2] != 8 {
            return Err(Self::malformed("invalid header"));
        }
        let flags = fixed[3];
        let mut pos = 10usize;
        let past = || Self::malformed("invalid header: optional field past end");
        if flags & FEXTRA != 0 {
            let l = src.get(pos..pos + 2).ok_or_else(past)?;
            pos += 2 + usize::from(u16::from_le_bytes([l[0], l[1]]));
        }
        for flag in [FNAME, FCOMMENT] {
            if flags & flag != 0 {
                let rest = src.get(pos..).ok_or_else(past)?;
                pos += 1 + rest.iter().position(|b| *b == 0).ok_or_else(past)?;
            }
        }
        if flags & FHCRC != 0 {
            pos += 2;
        }
        if pos > src.len() {
            return Err(past());
        }
        Ok(pos)
    }
}

impl XferFilter for Gzip {
    fn id(&self) -> XferId {
        XferId::GZIP
    }

    fn name(&self) -> &'static str {
        "gzip"
    }

    fn encode(&self, src: &[u8], dst: &mut BytesMut) -> Result<(), XferError> {
        use std::io::Write;
        let mut enc = flate2::GzBuilder::new()
            .operating_system(0xff)
            .write(dst.writer(), Compression::new(self.level));
        enc.write_all(src)
            .and_then(|_| enc.finish().map(drop))
            .map_err(|e| Self::malformed(format!("compress: {e}")))
    }

    fn decode(&self, src: &[u8], limit: usize, dst: &mut BytesMut) -> Result<(), XferError> {
        let hdr = Self::header_len(src)?;
        let input = &src[hdr..];
        let cap = limit.saturating_add(1);
        let mut out: Vec<u8> = Vec::with_capacity(cap.min(input.len().saturating_mul(4)).max(64));
        let mut inf = Decompress::new(false);
        let mut ended = false;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= cap {
                    break;
                }
                let grow = out.len().max(4096).min(cap - out.len());
                out.reserve_exact(grow);
            }
            let consumed = inf.total_in() as usize;
            let produced = out.len();
            let rest = input.get(consumed..).unwrap_or_default();
            let status = inf
                .decompress_vec(rest, &mut out, FlushDecompress::None)
                .map_err(|e| Self::malformed(format!("corrupt deflate stream: {e}")))?;
            if status == Status::StreamEnd {
                ended = true;
                break;
            }
            let progressed = inf.total_in() as usize != consumed || out.len() != produced;
            if !progressed && out.len() < out.capacity() {
                // All input used and room left: Go's sync-flushed end.
                break;
            }
        }
        if out.len() > limit {
            return Err(XferError::OutputOverLimit {
                id: XferId::GZIP,
                limit,
            });
        }
        if ended {
            let trailer = input.get(inf.total_in() as usize..).unwrap_or_default();
            match trailer.len() {
                0 => {}
                8 => {
                    let mut crc = Crc::new();
                    crc.update(&out);
                    let want_crc =
                        u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
                    let want_len =
                        u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
                    if crc.sum() != want_crc || (out.len() as u32) != want_len {
                        return Err(Self::malformed("trailer CRC or length mismatch"));
                    }
                }
                n => {
                    return Err(Self::malformed(format!(
                        "{n} bytes after the deflate stream"
                    )))
                }
            }
        } else if inf.total_in() as usize != input.len() {
            return Err(Self::malformed(
                "deflate stream stopped before its input ended",
            ));
        }
        dst.extend_from_slice(&out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(data: &[u8]) -> Vec<u8> {
        let g = Gzip::default();
        let mut enc = BytesMut::new();
        g.encode(data, &mut enc).unwrap();
        assert_eq!(&enc[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        let mut dec = BytesMut::new();
        g.decode(&enc, 1 << 20, &mut dec).unwrap();
        dec.to_vec()
    }

    #[test]
    fn round_trip() {
        assert_eq!(roundtrip(b""), b"");
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(roundtrip(&big), big);
    }

    #[test]
    fn bomb_is_stopped_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut enc = BytesMut::new();
        Gzip::default().encode(&zeros, &mut enc).unwrap();
        assert!(enc.len() < 64 << 10);
        let mut dec = BytesMut::new();
        let err = Gzip::default().decode(&enc, 1 << 16, &mut dec).unwrap_err();
        assert_eq!(
            err,
            XferError::OutputOverLimit {
                id: XferId::GZIP,
                limit: 1 << 16
            }
        );
        assert!(dec.is_empty());
    }

    #[test]
    fn corrupt_stream_and_bad_crc_are_errors() {
        let mut enc = BytesMut::new();
        Gzip::default()
            .encode(b"hello hello hello", &mut enc)
            .unwrap();
        let mut bad_crc = enc.to_vec();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        assert!(Gzip::default()
            .decode(&bad_crc, 100, &mut BytesMut::new())
            .is_err());
        let mut corrupt = enc.to_vec();
        corrupt[10] = 0xff; // an invalid block type
        assert!(Gzip::default()
            .decode(&corrupt, 100, &mut BytesMut::new())
            .is_err());
        assert!(Gzip::default()
            .decode(b"\x1f\x8b", 100, &mut BytesMut::new())
            .is_err());
    }
}
