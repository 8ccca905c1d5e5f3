//! Frame formats. [`FastProto`] is teleport v3's "fast" protocol (SPEC §2),
//! byte for byte; [`Proto`] lets a user plug in another one.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{ProtoError, XferError};
use crate::meta::Meta;
use crate::packet::{CodecId, Packet, PacketType, Seq, Uri, XferId, XferPipe};
use crate::xfer::XferRegistry;

/// A frame format: turns packets into bytes and back.
///
/// A session owns one `Proto` value, so implementations may keep scratch
/// buffers and parse state in `self`.
pub trait Proto: Send + 'static {
    /// The protocol's id byte.
    fn id(&self) -> u8;

    /// The protocol's name, for logs.
    fn name(&self) -> &'static str;

    /// Appends one frame for `packet` to `dst`. On error `dst` is as it was.
    fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), ProtoError>;

    /// Takes one frame off the front of `src`: `Ok(None)` while the frame is
    /// incomplete (call again once more bytes are appended), the packet
    /// once it is whole. An error is final for the connection: the stream
    /// cannot be resynchronised.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtoError>;

    /// Like [`Proto::decode`], but a frame whose decoding would produce
    /// more than `budget` bytes of filter output (a large gzip body) may be
    /// taken off `src` undecoded, as a [`DecodeJob`] to run elsewhere. The
    /// default never defers.
    fn decode_within(
        &mut self,
        src: &mut BytesMut,
        budget: usize,
    ) -> Result<Option<Decoded>, ProtoError> {
        let _ = budget;
        Ok(self.decode(src)?.map(Decoded::Packet))
    }

    /// Like [`Proto::decode`], for when the input has ended: bytes that are
    /// not a whole frame are an error instead of a wait.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtoError> {
        match self.decode(src)? {
            Some(p) => Ok(Some(p)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtoError::Truncated {
                have: src.len(),
                need: src.len() + 1,
            }),
        }
    }
}

/// What [`Proto::decode_within`] took off the input.
#[derive(Debug)]
pub enum Decoded {
    /// A whole packet.
    Packet(Packet),
    /// A whole frame, not decoded yet: it would cost more than the budget.
    Deferred(DecodeJob),
}

/// A frame whose decoding was deferred ([`Proto::decode_within`]): run it
/// on a thread where a long inflation stalls nobody, then give the result
/// to [`crate::Session::handle_decoded`].
pub struct DecodeJob {
    run: Box<dyn FnOnce() -> Result<Packet, ProtoError> + Send>,
}

impl DecodeJob {
    /// A job that decodes with `run`.
    pub fn new(run: impl FnOnce() -> Result<Packet, ProtoError> + Send + 'static) -> Self {
        DecodeJob { run: Box::new(run) }
    }

    /// Decodes the frame.
    pub fn run(self) -> Result<Packet, ProtoError> {
        (self.run)()
    }
}

impl std::fmt::Debug for DecodeJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeJob").finish_non_exhaustive()
    }
}

/// The default read limit: 16 MiB. Go's default is 4 GiB − 1, which lets
/// four bytes from a peer ask for that much; see [`FastProto::with_limit`].
/// A peer that exchanges larger frames raises it on both sides.
pub const DEFAULT_READ_LIMIT: usize = 16 << 20;

/// How much of a declared frame size is reserved before the bytes arrive;
/// more is reserved only as they do (Go reserves it all, D-PREALLOC).
pub const MAX_EAGER_RESERVE: usize = 64 << 10;

/// Bytes before the payload: size (4), protocol id (1), filter count (1).
const PREFIX: usize = 6;
/// The smallest payload: seq, ptype, uri_len, meta_len, codec.
const MIN_PAYLOAD: usize = 8 + 1 + 4 + 4 + 1;
/// The smallest frame: no filters, empty uri, meta and body (24 bytes).
pub const MIN_FRAME: usize = PREFIX + MIN_PAYLOAD;

/// teleport v3's "fast" protocol, id `'f'`.
///
/// ```
/// use bytes::BytesMut;
/// use teleport_core::{CodecId, FastProto, Packet, PacketType, Proto, Seq};
/// let mut proto = FastProto::default();
/// let pull = Packet::new(PacketType::PULL, Seq(4), "/echo/string")
///     .with_body(CodecId::STRING, &b"hello teleport"[..]);
/// let mut wire = BytesMut::new();
/// proto.encode(&pull, &mut wire).unwrap();
/// assert_eq!(wire.len(), 50);
/// // Feed it back one byte at a time: nothing until the last byte.
/// let mut src = BytesMut::new();
/// for (i, b) in wire.iter().enumerate() {
///     src.extend_from_slice(&[*b]);
///     let got = proto.decode(&mut src).unwrap();
///     assert_eq!(got.is_some(), i == wire.len() - 1);
///     if let Some(p) = got { assert_eq!(p, pull); }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct FastProto {
    limit: usize,
    xfers: Arc<XferRegistry>,
    scratch: BytesMut,
    scratch2: BytesMut,
}

impl Default for FastProto {
    fn default() -> Self {
        FastProto::new(DEFAULT_READ_LIMIT, Arc::new(XferRegistry::default()))
    }
}

impl FastProto {
    /// The protocol id byte, `'f'`.
    pub const ID: u8 = b'f';

    /// A fast proto with a read limit (frame size, and every transfer
    /// filter's output) and the filters it may use.
    pub fn new(limit: usize, xfers: Arc<XferRegistry>) -> Self {
        FastProto {
            limit: limit.min(u32::MAX as usize),
            xfers,
            scratch: BytesMut::new(),
            scratch2: BytesMut::new(),
        }
    }

    /// The same proto with another read limit. A frame whose size equals
    /// the limit is accepted (as in Go).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit.min(u32::MAX as usize);
        self
    }

    /// The read limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn write_payload(packet: &Packet, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let uri_len = u32::try_from(packet.uri.len()).map_err(|_| ProtoError::FieldTooLong {
            field: "uri",
            len: packet.uri.len(),
        })?;
        let meta_len = packet.meta.encoded_len();
        let meta_len32 = u32::try_from(meta_len).map_err(|_| ProtoError::FieldTooLong {
            field: "meta",
            len: meta_len,
        })?;
        dst.reserve(MIN_PAYLOAD + packet.uri.len() + meta_len + packet.body.len());
        dst.put_u64(packet.seq.0);
        dst.put_u8(packet.ptype.0);
        dst.put_u32(uri_len);
        dst.put_slice(packet.uri.as_bytes());
        dst.put_u32(meta_len32);
        packet.meta.encode_into(dst);
        dst.put_u8(packet.body_codec.0);
        dst.put_slice(&packet.body);
        Ok(())
    }

    fn encode_inner(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let n = packet.xfer.len();
        let count = u8::try_from(n).map_err(|_| ProtoError::TooManyFilters { count: n })?;
        let start = dst.len();
        dst.put_u32(0); // patched below
        dst.put_u8(Self::ID);
        dst.put_u8(count);
        dst.put_slice(packet.xfer.as_bytes());
        if n == 0 {
            Self::write_payload(packet, dst)?;
        } else {
            let mut cur = std::mem::take(&mut self.scratch);
            let mut next = std::mem::take(&mut self.scratch2);
            cur.clear();
            let limit = self.limit;
            // The receiver checks every layer it unwraps against its limit,
            // so a layer over ours would kill the connection there.
            let check = |layer: &BytesMut| {
                if layer.len() > limit {
                    Err(ProtoError::SizeOverLimit {
                        size: layer.len(),
                        limit,
                    })
                } else {
                    Ok(())
                }
            };
            let r = Self::write_payload(packet, &mut cur).and_then(|()| {
                check(&cur)?;
                // The last listed filter is applied first (SPEC §4).
                for id in packet.xfer.iter().rev() {
                    next.clear();
                    self.xfers.get(id)?.encode(&cur, &mut next)?;
                    std::mem::swap(&mut cur, &mut next);
                    check(&cur)?;
                }
                dst.extend_from_slice(&cur);
                Ok(())
            });
            self.scratch = cur;
            self.scratch2 = next;
            r?;
        }
        let size = dst.len() - start;
        if size > self.limit {
            return Err(ProtoError::SizeOverLimit {
                size,
                limit: self.limit,
            });
        }
        // `size <= limit <= u32::MAX`.
        dst[start..start + 4].copy_from_slice(&(size as u32).to_be_bytes());
        Ok(())
    }

    /// Checks what can be checked of a frame's prefix before it is whole.
    fn check_prefix(&self, src: &BytesMut, size: usize) -> Result<(), ProtoError> {
        if size < MIN_FRAME {
            return Err(ProtoError::SizeTooSmall {
                size,
                min: MIN_FRAME,
            });
        }
        if size > self.limit {
            return Err(ProtoError::SizeOverLimit {
                size,
                limit: self.limit,
            });
        }
        if let Some(&found) = src.get(4) {
            if found != Self::ID {
                return Err(ProtoError::WrongProtoId {
                    found,
                    expected: Self::ID,
                });
            }
        }
        if let Some(&n) = src.get(5) {
            let min = MIN_FRAME + usize::from(n);
            if size < min {
                return Err(ProtoError::SizeTooSmall { size, min });
            }
        }
        Ok(())
    }

    fn parse_frame(&mut self, frame: Bytes) -> Result<Packet, ProtoError> {
        let r = Self::parse_with(&self.xfers, self.limit, &mut self.scratch, frame);
        self.trim_scratch();
        r
    }

    /// Lets go of a large scratch buffer. A filter's output is split off
    /// the scratch buffer and leaves with the packet, but an output cut at
    /// its limit, or room a filter reserved and did not fill, would stay
    /// with the session until its next filtered frame: up to the read
    /// limit per session, for as long as it lives.
    fn trim_scratch(&mut self) {
        if self.scratch.capacity() > MAX_EAGER_RESERVE {
            self.scratch = BytesMut::new();
        }
    }

    /// Parses a whole frame; a filter producing more than `cap` bytes stops
    /// with [`XferError::OutputOverLimit`].
    fn parse_with(
        xfers: &XferRegistry,
        cap: usize,
        scratch: &mut BytesMut,
        frame: Bytes,
    ) -> Result<Packet, ProtoError> {
        let mut r = Reader(frame);
        r.skip(4);
        r.u8("protocol id")?;
        let n = usize::from(r.u8("filter count")?);
        let xfer = XferPipe::from_bytes(r.take(n, "filter ids")?);
        let mut payload = r.0;
        for id in xfer.iter() {
            scratch.clear();
            xfers.get(id)?.decode(&payload, cap, scratch)?;
            payload = scratch.split().freeze();
        }
        let mut r = Reader(payload);
        let seq = Seq(r.u64("seq")?);
        let ptype = PacketType(r.u8("ptype")?);
        let uri_len = r.u32("uri length")? as usize;
        let uri = Uri::from_bytes(r.take(uri_len, "uri")?);
        let meta_len = r.u32("meta length")? as usize;
        let meta = Meta::try_parse(&r.take(meta_len, "meta")?)?;
        let body_codec = CodecId(r.u8("body codec")?);
        Ok(Packet {
            seq,
            ptype,
            uri,
            meta,
            body_codec,
            xfer,
            body: r.0,
        })
    }
}

impl Proto for FastProto {
    fn id(&self) -> u8 {
        Self::ID
    }

    fn name(&self) -> &'static str {
        "fast"
    }

    fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let mark = dst.len();
        self.encode_inner(packet, dst)
            .inspect_err(|_| dst.truncate(mark))
    }

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtoError> {
        match self.decode_within(src, usize::MAX)? {
            Some(Decoded::Packet(p)) => Ok(Some(p)),
            // An unlimited budget never defers.
            Some(Decoded::Deferred(job)) => job.run().map(Some),
            None => Ok(None),
        }
    }

    fn decode_within(
        &mut self,
        src: &mut BytesMut,
        budget: usize,
    ) -> Result<Option<Decoded>, ProtoError> {
        let Some(head) = src.first_chunk::<4>() else {
            return Ok(None);
        };
        let size = u32::from_be_bytes(*head) as usize;
        self.check_prefix(src, size)?;
        if src.len() < size {
            src.reserve((size - src.len()).min(MAX_EAGER_RESERVE));
            return Ok(None);
        }
        let frame = if size > MAX_EAGER_RESERVE {
            // A large frame gets an allocation of its own: split off, it would
            // share (and keep alive, as long as a handler holds its body) the
            // input buffer's, which grows by doubling and so can be twice the
            // frame. One copy of a large frame costs little next to reading it.
            Bytes::copy_from_slice(&src.split_to(size))
        } else {
            src.split_to(size).freeze()
        };
        let has_filters = frame.get(5).is_some_and(|n| *n > 0);
        if !has_filters || budget >= self.limit {
            return self.parse_frame(frame).map(|p| Some(Decoded::Packet(p)));
        }
        // Try in place within the budget; a frame that inflates past it
        // starts again elsewhere (at most `budget` bytes of work thrown
        // away, which is what keeps small gzip frames on the fast path).
        let cap = budget.min(self.limit);
        let tried = Self::parse_with(&self.xfers, cap, &mut self.scratch, frame.clone());
        self.trim_scratch();
        match tried {
            Err(ProtoError::Xfer(XferError::OutputOverLimit { limit, .. })) if limit == cap => {
                let (xfers, limit) = (self.xfers.clone(), self.limit);
                Ok(Some(Decoded::Deferred(DecodeJob::new(move || {
                    Self::parse_with(&xfers, limit, &mut BytesMut::new(), frame)
                }))))
            }
            r => r.map(|p| Some(Decoded::Packet(p))),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtoError> {
        match self.decode(src)? {
            Some(p) => Ok(Some(p)),
            None if src.is_empty() => Ok(None),
            None => {
                let need = match src.first_chunk::<4>() {
                    Some(head) => u32::from_be_bytes(*head) as usize,
                    None => 4,
                };
                Err(ProtoError::Truncated {
                    have: src.len(),
                    need,
                })
            }
        }
    }
}

/// Bounds-checked reads off a frame; every failure names its field.
struct Reader(Bytes);

impl Reader {
    fn skip(&mut self, n: usize) {
        self.0.advance(n.min(self.0.len()));
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, ProtoError> {
        if n > self.0.len() {
            return Err(ProtoError::PastEnd {
                field,
                need: n,
                left: self.0.len(),
            });
        }
        Ok(self.0.split_to(n))
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtoError> {
        let a = *self.0.first_chunk::<N>().ok_or(ProtoError::PastEnd {
            field,
            need: N,
            left: self.0.len(),
        })?;
        self.0.advance(N);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ProtoError> {
        self.array::<1>(field).map(|[b]| b)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ProtoError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        self.array(field).map(u64::from_be_bytes)
    }
}

/// Whether `id` is a filter this registry can apply (for callers that want
/// to validate a pipe before sending).
pub fn pipe_is_known(xfers: &XferRegistry, pipe: &XferPipe) -> Result<(), ProtoError> {
    pipe.iter()
        .try_for_each(|id: XferId| xfers.get(id).map(drop).map_err(Into::into))
}

/// Makes the proto of each new connection: the seed's `ProtoFunc`. A proto
/// may keep parse state, so every connection gets its own.
///
/// Any `Fn(read_limit, filters) -> Box<dyn Proto>` is one:
///
/// ```
/// use std::sync::Arc;
/// use teleport_core::{FastProto, MakeProto, Proto, XferRegistry};
///
/// let make = |limit: usize, xfers: &Arc<XferRegistry>| -> Box<dyn Proto> {
///     Box::new(FastProto::new(limit, xfers.clone()))
/// };
/// let proto = make.make_proto(1 << 20, &Arc::new(XferRegistry::default()));
/// assert_eq!(proto.name(), "fast");
/// ```
pub trait MakeProto: Send + Sync + 'static {
    /// A proto for a new connection, with the peer's read limit (the
    /// largest frame to accept or send) and the filters it knows.
    fn make_proto(&self, read_limit: usize, xfers: &Arc<XferRegistry>) -> Box<dyn Proto>;
}

impl<F> MakeProto for F
where
    F: Fn(usize, &Arc<XferRegistry>) -> Box<dyn Proto> + Send + Sync + 'static,
{
    fn make_proto(&self, read_limit: usize, xfers: &Arc<XferRegistry>) -> Box<dyn Proto> {
        self(read_limit, xfers)
    }
}

/// The proto of a session whose frame format is chosen at run time: the
/// fast proto, called directly (the default costs no indirection), or any
/// other behind a box.
pub enum AnyProto {
    /// Go teleport's "fast" proto.
    Fast(FastProto),
    /// A proto of the user's.
    Custom(Box<dyn Proto>),
}

impl AnyProto {
    /// The proto `make` makes, or the fast proto when there is none.
    pub fn new(make: Option<&dyn MakeProto>, read_limit: usize, xfers: &Arc<XferRegistry>) -> Self {
        match make {
            Some(m) => AnyProto::Custom(m.make_proto(read_limit, xfers)),
            None => AnyProto::Fast(FastProto::new(read_limit, xfers.clone())),
        }
    }
}

impl std::fmt::Debug for AnyProto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnyProto({})", self.name())
    }
}

impl Proto for AnyProto {
    fn id(&self) -> u8 {
        match self {
            AnyProto::Fast(p) => p.id(),
            AnyProto::Custom(p) => p.id(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            AnyProto::Fast(p) => p.name(),
            AnyProto::Custom(p) => p.name(),
        }
    }

    fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), ProtoError> {
        match self {
            AnyProto::Fast(p) => p.encode(packet, dst),
            AnyProto::Custom(p) => p.encode(packet, dst),
        }
    }

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtoError> {
        match self {
            AnyProto::Fast(p) => p.decode(src),
            AnyProto::Custom(p) => p.decode(src),
        }
    }

    fn decode_within(
        &mut self,
        src: &mut BytesMut,
        budget: usize,
    ) -> Result<Option<Decoded>, ProtoError> {
        match self {
            AnyProto::Fast(p) => p.decode_within(src, budget),
            AnyProto::Custom(p) => p.decode_within(src, budget),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtoError> {
        match self {
            AnyProto::Fast(p) => p.decode_eof(src),
            AnyProto::Custom(p) => p.decode_eof(src),
        }
    }
}

impl<P: Proto + ?Sized> Proto for Box<P> {
    fn id(&self) -> u8 {
        (**self).id()
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), ProtoError> {
        (**self).encode(packet, dst)
    }

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtoError> {
        (**self).decode(src)
    }

    fn decode_within(
        &mut self,
        src: &mut BytesMut,
        budget: usize,
    ) -> Result<Option<Decoded>, ProtoError> {
        (**self).decode_within(src, budget)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtoError> {
        (**self).decode_eof(src)
    }
}
