//! The transfer pipe: byte filters applied to a frame's payload (SPEC §4).

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use flate2::{Compression, Crc};

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
/// (D-GZIP). Unlike Go, a corrupt deflate stream, a wrong CRC and a stream
/// that was cut short are errors, not a shorter payload:
///
/// - a stream that reaches its final deflate block must be followed by
///   exactly the 8-byte trailer, with the CRC-32 and length of what it
///   inflated to ([`XferError::Truncated`] when the trailer is missing or
///   partial, [`XferError::Malformed`] when it is wrong or followed by
///   more bytes);
/// - a stream without a final block is taken only when its input ends
///   exactly where a sync flush (an empty stored block, bytes
///   `00 00 ff ff`) ends; ending anywhere else, inside a block or after a
///   block of any other kind, is [`XferError::Truncated`].
///
/// ```
/// use teleport_core::bytes::BytesMut;
/// use teleport_core::{Gzip, XferError, XferFilter};
/// let mut gz = BytesMut::new();
/// Gzip::default().encode(b"hello, hello, hello", &mut gz).unwrap();
/// let mut out = BytesMut::new();
/// Gzip::default().decode(&gz, 1024, &mut out).unwrap();
/// assert_eq!(&out[..], b"hello, hello, hello");
/// // Without its trailer the member is refused, not taken as it stands.
/// let cut = &gz[..gz.len() - 8];
/// let err = Gzip::default().decode(cut, 1024, &mut BytesMut::new());
/// assert!(matches!(err, Err(XferError::Truncated { .. })));
/// ```
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
const FRESERVED: u8 = 0xe0;

/// The gzip trailer: CRC-32 and ISIZE, little-endian (RFC 1952 §2.3.1).
const TRAILER: usize = 8;

/// miniz_oxide's flags for [`Gzip::decode`]: the output buffer is the whole
/// output (so it can be `dst` itself, and matches look back into it); the
/// input given may not be all (so running out of it mid-block is reported,
/// not papered over); and each deflate block boundary is reported.
const INFLATE_FLAGS: u32 = {
    use miniz_oxide::inflate::core::inflate_flags::*;
    TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF
        | TINFL_FLAG_HAS_MORE_INPUT
        | TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY
};

/// The smallest first reservation for inflated output.
const MIN_FIRST_GROWTH: usize = 1024;

impl Gzip {
    fn malformed(reason: impl Into<String>) -> XferError {
        XferError::Malformed {
            id: XferId::GZIP,
            reason: reason.into(),
        }
    }

    fn truncated(reason: &'static str) -> XferError {
        XferError::Truncated {
            id: XferId::GZIP,
            reason,
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
        if flags & FRESERVED != 0 {
            // RFC 1952 §2.3.1.2: a decoder must refuse them.
            return Err(Self::malformed("invalid header: reserved flag bits set"));
        }
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
            let (covered, sum) = (src.get(..pos).ok_or_else(past)?, src.get(pos..pos + 2));
            let sum = sum.ok_or_else(past)?;
            let mut crc = Crc::new();
            crc.update(covered);
            if crc.sum() as u16 != u16::from_le_bytes([sum[0], sum[1]]) {
                return Err(Self::malformed("invalid header: header CRC mismatch"));
            }
            pos += 2;
        }
        if pos > src.len() {
            return Err(past());
        }
        Ok(pos)
    }

    /// Inflates the deflate stream at the start of `input`, appending its
    /// output to `dst` (never more than `limit + 1` bytes; the caller drops
    /// them on error). Returns `None` when the stream ends with a sync
    /// flush at the end of `input`, and the length of the stream up to the
    /// end of its final block otherwise.
    ///
    /// How a sync-flushed end is told from a cut. miniz_oxide stops at each
    /// deflate block boundary, and at one it reports how many bits of the
    /// last byte it took belong to the next block (0 to 7) and what they are.
    /// A stream without a final block is taken only when its input ends at a
    /// block boundary, nothing pending, and the block that ended there has a
    /// header of three zero bits (not final, stored) and inflated to nothing
    /// (so its length field was 0): that is an empty stored block, exactly
    /// what a sync flush writes. The header bits are read from the state
    /// saved at the boundary before it, not guessed from the last bytes.
    /// Every other end of input is refused: inside a block (miniz_oxide
    /// asks for more input), or after a block that is not an empty stored
    /// one (a cut that happens to fall between two blocks). With the final
    /// block reached, the caller checks the trailer.
    ///
    /// What this cannot see: a sender that flushed more than once, cut just
    /// after an earlier flush, looks like a whole stream (the format has no
    /// length or end marker to tell). Go teleport flushes once, at the end,
    /// and our own writer ends every member with a final block and trailer.
    ///
    /// A simpler check, without block boundaries (the input ends in
    /// `00 00 ff ff`; fed an empty final stored block after it, the inflater
    /// ends on exactly that block), has false accepts: a cut right after a
    /// non-empty stored block whose data ends in those four bytes, or after
    /// a Huffman block whose last 32 bits are those bytes, leaves the
    /// inflater at a byte-aligned block boundary too.
    fn inflate_into(
        input: &[u8],
        limit: usize,
        dst: &mut BytesMut,
    ) -> Result<Option<usize>, XferError> {
        use miniz_oxide::inflate::core::{decompress, DecompressorOxide};
        use miniz_oxide::inflate::TINFLStatus;

        let start = dst.len();
        let cap = limit.saturating_add(1);
        let over = || XferError::OutputOverLimit {
            id: XferId::GZIP,
            limit,
        };
        let mut state = DecompressorOxide::new();
        // Input taken so far, and output made so far (`dst[start..][..made]`).
        let (mut used, mut made) = (0usize, 0usize);
        // Where the current block began: input offset, the bits of the byte
        // before it that belong to it (count, value), and output offset.
        let mut block = (0usize, 0u8, 0u8, 0usize);
        loop {
            let room = dst.len() - start;
            if made == room {
                if room >= cap {
                    return Err(over());
                }
                // Double the window (a first guess of 4x the input), zeroed:
                // miniz_oxide writes into initialised memory only.
                let grow = room
                    .max(input.len().saturating_mul(4))
                    .max(MIN_FIRST_GROWTH)
                    .min(cap - room);
                dst.resize(dst.len() + grow, 0);
            }
            let rest = input.get(used..).unwrap_or_default();
            let (status, took, wrote) =
                decompress(&mut state, rest, &mut dst[start..], made, INFLATE_FLAGS);
            used += took;
            made += wrote;
            if made > limit {
                return Err(over());
            }
            match status {
                TINFLStatus::Done => {
                    dst.truncate(start + made);
                    return Ok(Some(used));
                }
                TINFLStatus::BlockBoundary => {
                    let bits = state.block_boundary_state().unwrap_or_default();
                    if used < input.len() {
                        block = (used, bits.num_bits, bits.bit_buf, made);
                        continue;
                    }
                    // The input ends at this boundary: it must end the
                    // empty stored block of a sync flush.
                    let (at, pending, pending_bits, out_at) = block;
                    let next = u16::from(input.get(at).copied().unwrap_or(0));
                    let header = (u16::from(pending_bits) | next << pending) & 7;
                    if header == 0 && made == out_at && bits.num_bits == 0 {
                        dst.truncate(start + made);
                        return Ok(None);
                    }
                    return Err(Self::truncated(
                        "the deflate stream ends after a block that is neither the final one \
                         nor a sync flush",
                    ));
                }
                // The window is full: grow it (or stop at the limit) above.
                TINFLStatus::HasMoreOutput if made == dst.len() - start => {}
                TINFLStatus::NeedsMoreInput => {
                    return Err(Self::truncated("the deflate stream ends inside a block"))
                }
                other => {
                    return Err(Self::malformed(format!(
                        "corrupt deflate stream ({other:?})"
                    )))
                }
            }
        }
    }

    fn decode_member(src: &[u8], limit: usize, dst: &mut BytesMut) -> Result<(), XferError> {
        let input = &src[Self::header_len(src)?..];
        let start = dst.len();
        let Some(used) = Self::inflate_into(input, limit, dst)? else {
            return Ok(()); // Go's sync-flushed form
        };
        let after = input.get(used..).unwrap_or_default();
        let trailer: &[u8; TRAILER] = match after.first_chunk() {
            Some(t) if after.len() == TRAILER => t,
            Some(_) => {
                return Err(Self::malformed(format!(
                    "{} bytes after the gzip trailer",
                    after.len() - TRAILER
                )))
            }
            None if after.is_empty() => return Err(Self::truncated("the gzip trailer is missing")),
            None => return Err(Self::truncated("the gzip trailer is cut short")),
        };
        let out = &dst[start..];
        let mut crc = Crc::new();
        crc.update(out);
        let want_crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let want_len = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
        // ISIZE is the length modulo 2^32.
        if crc.sum() != want_crc || out.len() as u32 != want_len {
            return Err(Self::malformed("trailer CRC or length mismatch"));
        }
        Ok(())
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
        let start = dst.len();
        Self::decode_member(src, limit, dst).inspect_err(|_| dst.truncate(start))
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

    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

    fn ours(data: &[u8]) -> Vec<u8> {
        let mut enc = BytesMut::new();
        Gzip::default().encode(data, &mut enc).unwrap();
        enc.to_vec()
    }

    /// Go's form: the header, deflate data ended by one sync flush per
    /// part, no final block, no trailer.
    fn go_style(parts: &[&[u8]]) -> Vec<u8> {
        let mut c = flate2::Compress::new(Compression::new(5), false);
        let mut out = HEADER.to_vec();
        for part in parts {
            out.reserve(part.len() + 64);
            let before = c.total_in();
            c.compress_vec(part, &mut out, flate2::FlushCompress::Sync)
                .unwrap();
            assert_eq!(c.total_in() - before, part.len() as u64);
        }
        out
    }

    /// The header, then raw deflate bytes.
    fn with_header(deflate: &[u8]) -> Vec<u8> {
        [&HEADER[..], deflate].concat()
    }

    fn dec(src: &[u8], limit: usize) -> Result<Vec<u8>, XferError> {
        let mut out = BytesMut::new();
        Gzip::default()
            .decode(src, limit, &mut out)
            .map(|()| out.to_vec())
    }

    fn is_truncated(r: Result<Vec<u8>, XferError>) -> bool {
        matches!(
            r,
            Err(XferError::Truncated {
                id: XferId::GZIP,
                ..
            })
        )
    }

    fn is_malformed(r: Result<Vec<u8>, XferError>) -> bool {
        matches!(
            r,
            Err(XferError::Malformed {
                id: XferId::GZIP,
                ..
            })
        )
    }

    const TEXT: &[u8] = b"hello teleport, hello teleport, hello gzip";

    #[test]
    fn a_final_block_needs_exactly_the_trailer() {
        let gz = ours(TEXT);
        assert_eq!(dec(&gz, 1024).unwrap(), TEXT);
        let n = gz.len();
        // No trailer at all, then each partial trailer.
        for cut in 1..=8 {
            let r = dec(&gz[..n - cut], 1024);
            assert!(is_truncated(r.clone()), "trailer cut by {cut}: {r:?}");
        }
        // Bytes after the trailer (a second member is not read either).
        for extra in [&b"\0"[..], b"12345678", &gz] {
            let r = dec(&[&gz[..], extra].concat(), 1024);
            assert!(
                is_malformed(r.clone()),
                "{} extra bytes: {r:?}",
                extra.len()
            );
        }
    }

    #[test]
    fn a_wrong_length_in_the_trailer_is_an_error() {
        let mut gz = ours(TEXT);
        let n = gz.len();
        gz[n - 4] ^= 1;
        assert!(is_malformed(dec(&gz, 1024)));
    }

    #[test]
    fn gos_sync_flushed_form_decodes() {
        let gz = go_style(&[TEXT]);
        assert!(gz.ends_with(&[0, 0, 0xff, 0xff]));
        assert_eq!(dec(&gz, 1024).unwrap(), TEXT);
        // Several flushes: each ends a valid stream.
        let gz = go_style(&[b"abc", b"", TEXT]);
        assert_eq!(dec(&gz, 1024).unwrap(), [&b"abc"[..], TEXT].concat());
    }

    #[test]
    fn a_cut_sync_flush_is_truncated() {
        let gz = go_style(&[TEXT]);
        for cut in 1..gz.len() - 10 {
            let r = dec(&gz[..gz.len() - cut], 1024);
            assert!(is_truncated(r.clone()), "cut by {cut}: {r:?}");
        }
        // The header alone: no deflate data at all.
        assert!(is_truncated(dec(&HEADER, 1024)));
    }

    #[test]
    fn only_an_empty_stored_block_ends_a_stream_without_a_final_block() {
        // A non-final stored block of "hello", ending on a byte boundary.
        let hello = [0x00, 5, 0, !5, 0xff, b'h', b'e', b'l', b'l', b'o'];
        assert!(is_truncated(dec(&with_header(&hello), 1024)));
        // Followed by an empty stored block: a sync flush.
        let flushed = [&hello[..], &[0x00, 0, 0, 0xff, 0xff]].concat();
        assert_eq!(dec(&with_header(&flushed), 1024).unwrap(), b"hello");
        // A stored block whose data is the bytes of a sync flush: the input
        // ends in `00 00 ff ff` at a block boundary, but not a flush's.
        let lookalike = [0x00, 4, 0, !4, 0xff, 0, 0, 0xff, 0xff];
        assert!(is_truncated(dec(&with_header(&lookalike), 1024)));
        // An empty non-final block of fixed Huffman codes (header 0,1,0
        // then the 7-bit end code): a boundary, but not a flush.
        assert!(is_truncated(dec(&with_header(&[0x02, 0x00]), 1024)));
        // The same block marked final ends the stream: a trailer follows.
        let empty_final = with_header(&[0x03, 0x00]);
        assert!(is_truncated(dec(&empty_final, 1024)));
        let mut full = empty_final;
        full.extend_from_slice(&[0; 8]); // CRC-32 and length of nothing
        assert_eq!(dec(&full, 1024).unwrap(), b"");
    }

    #[test]
    fn the_limit_is_exact_and_failures_leave_dst_alone() {
        let body = vec![7u8; 5000];
        for gz in [ours(&body), go_style(&[&body])] {
            assert_eq!(dec(&gz, 5000).unwrap(), body);
            assert_eq!(
                dec(&gz, 4999),
                Err(XferError::OutputOverLimit {
                    id: XferId::GZIP,
                    limit: 4999
                })
            );
            let mut out = BytesMut::from(&b"before"[..]);
            assert!(Gzip::default().decode(&gz, 10, &mut out).is_err());
            assert!(Gzip::default()
                .decode(&gz[..gz.len() - 1], 1 << 20, &mut out)
                .is_err());
            assert_eq!(&out[..], b"before");
            Gzip::default().decode(&gz, 5000, &mut out).unwrap();
            assert_eq!(&out[..6], b"before");
            assert_eq!(&out[6..], &body[..]);
        }
    }

    #[test]
    fn the_header_crc_is_checked() {
        // FHCRC with the header's CRC-32 (low 16 bits) after it.
        let mut head = HEADER.to_vec();
        head[3] = FHCRC;
        let mut crc = Crc::new();
        crc.update(&head);
        let sum = (crc.sum() as u16).to_le_bytes();
        let body = &ours(TEXT)[10..];
        let good = [&head[..], &sum, body].concat();
        assert_eq!(dec(&good, 1024).unwrap(), TEXT);
        let bad = [&head[..], &[sum[0] ^ 1, sum[1]], body].concat();
        assert!(is_malformed(dec(&bad, 1024)));
    }

    #[test]
    fn reserved_header_flags_are_refused() {
        // Found by the gzip fuzz target: flags 0x41 (FTEXT and a reserved
        // bit) were read, where RFC 1952 (and flate2) refuse them.
        let mut gz = ours(TEXT);
        for bit in [0x20, 0x40, 0x80] {
            gz[3] = bit | 0x01;
            assert!(is_malformed(dec(&gz, 1024)), "flag {bit:#x}");
        }
        gz[3] = 0x01; // FTEXT alone is a hint, nothing to parse
        assert_eq!(dec(&gz, 1024).unwrap(), TEXT);
    }
}
