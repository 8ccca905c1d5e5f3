//! The packet model: what one frame carries, independent of its byte layout.

use std::fmt;

use bytes::Bytes;

use crate::meta::Meta;

/// A packet's sequence number (SPEC §8). Each side counts its own pulls and
/// pushes from 0; a reply repeats the pull's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The message kind byte (SPEC §3).
///
/// It is a newtype over the wire byte, not an enum, because the framing layer
/// must carry unknown kinds through unchanged: rejecting them is the
/// session's decision (vector `ptype_unknown`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PacketType(pub u8);

impl PacketType {
    /// A request; the receiver answers it with one [`REPLY`](Self::REPLY).
    pub const PULL: PacketType = PacketType(1);
    /// The answer to a pull, carrying the pull's seq.
    pub const REPLY: PacketType = PacketType(2);
    /// A one-way message, never answered.
    pub const PUSH: PacketType = PacketType(3);

    /// Whether this is one of the three kinds teleport v3 defines.
    pub fn is_known(self) -> bool {
        matches!(self.0, 1..=3)
    }

    /// The kind's name as Go's logs print it, or `UNKNOWN`.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "PULL",
            2 => "REPLY",
            3 => "PUSH",
            _ => "UNKNOWN",
        }
    }
}

impl fmt::Debug for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A body codec id byte (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CodecId(pub u8);

impl CodecId {
    /// "Not set": the sender's default codec applies. Never sent by Go.
    pub const NONE: CodecId = CodecId(0);
    /// JSON, `'j'`.
    pub const JSON: CodecId = CodecId(b'j');
    /// Protobuf, `'p'`.
    pub const PROTOBUF: CodecId = CodecId(b'p');
    /// Raw string or bytes, `'s'`.
    pub const STRING: CodecId = CodecId(b's');
}

impl fmt::Display for CodecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A transfer filter id byte (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct XferId(pub u8);

impl XferId {
    /// gzip, `'g'`.
    pub const GZIP: XferId = XferId(b'g');
}

impl fmt::Display for XferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The ordered list of transfer filters a frame's payload went through.
///
/// The first id names the outermost layer: a sender applies the last filter
/// first, a receiver undoes the first filter first (SPEC §4). At most 255.
/// Backed by [`Bytes`] so a decoded pipe is a slice of its frame.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct XferPipe(Bytes);

impl XferPipe {
    /// An empty pipe: the payload is sent as is.
    pub const fn new() -> Self {
        XferPipe(Bytes::new())
    }

    /// A pipe of the given filters, outermost first.
    pub fn from_ids(ids: &[XferId]) -> Self {
        XferPipe(ids.iter().map(|id| id.0).collect::<Vec<u8>>().into())
    }

    /// A pipe over raw id bytes (as they stand in a frame).
    pub fn from_bytes(ids: Bytes) -> Self {
        XferPipe(ids)
    }

    /// Appends a filter as the new innermost layer.
    pub fn push(&mut self, id: XferId) {
        let mut v = self.0.to_vec();
        v.push(id.0);
        self.0 = v.into();
    }

    /// The filter ids, outermost first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = XferId> + ExactSizeIterator + '_ {
        self.0.iter().map(|b| XferId(*b))
    }

    /// The raw id bytes, outermost first.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// How many filters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the pipe has no filter.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for XferPipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|b| char::from(*b)))
            .finish()
    }
}

/// A packet's URI: a path, optionally followed by `?query`.
///
/// The bytes are kept exactly as they came (Go never checks them for UTF-8),
/// so a frame re-encodes byte for byte; [`Uri::as_str`] tells whether they are
/// text.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Uri(Bytes);

impl Uri {
    /// An empty URI.
    pub const fn new() -> Self {
        Uri(Bytes::new())
    }

    /// A URI from a static string, without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Uri(Bytes::from_static(s.as_bytes()))
    }

    /// A URI over raw bytes.
    pub fn from_bytes(b: Bytes) -> Self {
        Uri(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared bytes (cheap to clone).
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// The URI as text, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The path: everything before the first `?` or `#`.
    pub fn path(&self) -> &[u8] {
        let end = self
            .0
            .iter()
            .position(|b| *b == b'?' || *b == b'#')
            .unwrap_or(self.0.len());
        &self.0[..end]
    }

    /// The path as text (`None` if it is not UTF-8: a peer may send any
    /// bytes), as plugins and handlers usually want it.
    pub fn path_str(&self) -> Option<&str> {
        std::str::from_utf8(self.path()).ok()
    }

    /// Replaces the path, keeping the query: what an alias plugin does.
    ///
    /// ```
    /// let mut u = teleport_core::Uri::from("/alias?x=1");
    /// u.set_path("/origin");
    /// assert_eq!(u.as_str(), Some("/origin?x=1"));
    /// ```
    pub fn set_path(&mut self, path: &str) {
        let rest = &self.0[self.path().len()..];
        let mut b = Vec::with_capacity(path.len() + rest.len());
        b.extend_from_slice(path.as_bytes());
        b.extend_from_slice(rest);
        self.0 = Bytes::from(b);
    }

    /// The raw query: what stands between the first `?` and a following
    /// `#`, without either; empty when there is none.
    pub fn query(&self) -> &[u8] {
        let Some(q) = self.0.iter().position(|b| *b == b'?') else {
            return &[];
        };
        let rest = &self.0[q + 1..];
        let end = rest.iter().position(|b| *b == b'#').unwrap_or(rest.len());
        &rest[..end]
    }

    /// The query's pairs, decoded like meta (SPEC §6), in order.
    pub fn query_pairs(&self) -> Meta {
        Meta::parse(self.query())
    }

    /// The byte length.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the URI is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Uri {
    fn from(s: &str) -> Self {
        Uri(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Uri {
    fn from(s: String) -> Self {
        Uri(Bytes::from(s))
    }
}

impl fmt::Debug for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(&self.0), f)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// One packet: header fields and an encoded body.
///
/// Typed bodies go through a [`Codec`](crate::Codec); the packet itself only
/// holds the encoded bytes, so a proxy can forward a body without decoding
/// it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// Sequence number.
    pub seq: Seq,
    /// Message kind.
    pub ptype: PacketType,
    /// Target URI (path and query).
    pub uri: Uri,
    /// Metadata pairs.
    pub meta: Meta,
    /// Codec the body is encoded with.
    pub body_codec: CodecId,
    /// Transfer filters applied to the payload on the wire.
    pub xfer: XferPipe,
    /// The encoded body (after every transfer filter was undone).
    pub body: Bytes,
}

impl Default for PacketType {
    fn default() -> Self {
        PacketType::PULL
    }
}

impl Packet {
    /// A packet of the given kind, sequence number and URI, with no meta, no
    /// filters, and an empty body with no codec set.
    pub fn new(ptype: PacketType, seq: Seq, uri: impl Into<Uri>) -> Self {
        Packet {
            seq,
            ptype,
            uri: uri.into(),
            meta: Meta::new(),
            body_codec: CodecId::NONE,
            xfer: XferPipe::new(),
            body: Bytes::new(),
        }
    }

    /// Sets the body and its codec.
    pub fn with_body(mut self, codec: CodecId, body: impl Into<Bytes>) -> Self {
        self.body_codec = codec;
        self.body = body.into();
        self
    }
}
