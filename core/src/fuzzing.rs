//! Entry points for the fuzz targets in `fuzz/`, kept here so they are
//! compiled and unit-tested with the crate. Each takes arbitrary bytes and
//! panics (which is what a fuzzer looks for) when an invariant breaks.
//!
//! | target | what a peer's bytes reach |
//! |---|---|
//! | [`unpack`] | the fast proto's decoder, frame by frame |
//! | [`meta`] | [`Meta::parse`] and [`Meta::try_parse`] |
//! | [`codecs`] | each built-in codec's decoder, into a few types |
//! | [`gzip`] | [`Gzip`]'s decoder, and its own output cut anywhere |
//! | [`session`] | a server [`Session`] driven through interleaved input, time, calls, replies, decodes and errors |

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::{CodecRegistry, Protobuf};
use crate::error::{CodecError, ProtoError, XferError};
use crate::meta::Meta;
use crate::packet::{CodecId, Packet, PacketType, Seq, Uri, XferId, XferPipe};
use crate::plugin::{Heartbeat, Plugins, HEARTBEAT_URI};
use crate::proto::{DecodeJob, FastProto, Proto};
use crate::rerror::Rerror;
use crate::router::Router;
use crate::session::{
    CloseReason, Event, Role, Session, SessionConfig, Shared, State, WRITE_ERROR_GRACE,
};
use crate::xfer::{Gzip, XferFilter, XferRegistry};

/// The read limit the `unpack` target decodes under.
pub const FUZZ_LIMIT: usize = 4096;

/// The output limit the `gzip` target inflates under.
pub const GZIP_LIMIT: usize = 1 << 16;

/// Feeds `data` to a [`FastProto`] with a small read limit, in chunks whose
/// sizes come from the data itself, and checks the decoder's invariants:
///
/// - it never buffers more than the limit plus one read's worth;
/// - every packet it yields re-encodes to a frame that decodes to the same
///   packet, leaving nothing behind. The one encode error allowed is
///   [`ProtoError::SizeOverLimit`] for a packet with transfer filters or
///   meta: our gzip may be larger than the sender's, and meta is written
///   back in Go's canonical escaping (`%XX` for every byte outside
///   `A-Z a-z 0-9 * - . _`), which may be longer than what was read; either
///   can legitimately push a frame that fit past the limit.
///
/// Panics (which is what a fuzzer looks for) when an invariant breaks.
pub fn unpack(data: &[u8]) {
    let (split, data) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s).max(1), rest),
        None => (1, data),
    };
    let mut proto = FastProto::default().with_limit(FUZZ_LIMIT);
    let mut src = BytesMut::new();
    let mut wire = BytesMut::new();
    for chunk in data.chunks(split) {
        src.extend_from_slice(chunk);
        loop {
            match proto.decode(&mut src) {
                Ok(Some(p)) => {
                    wire.clear();
                    match proto.encode(&p, &mut wire) {
                        Ok(()) => {}
                        // Our gzip output, or meta re-escaped as `%XX`, may be
                        // larger than what was read: a frame pushed over the
                        // limit is refused, not a bug.
                        Err(ProtoError::SizeOverLimit { .. })
                            if !p.xfer.is_empty() || !p.meta.is_empty() =>
                        {
                            continue;
                        }
                        Err(e) => panic!("decoded packet does not re-encode: {e}"),
                    }
                    let again = proto.decode(&mut wire).expect("re-encoded frame decodes");
                    assert_eq!(again.as_ref(), Some(&p), "round trip changed the packet");
                    assert!(wire.is_empty(), "re-encoded frame left bytes behind");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            src.len() <= FUZZ_LIMIT + split,
            "decoder holds {} bytes over a limit of {}",
            src.len(),
            FUZZ_LIMIT
        );
    }
    let _ = proto.decode_eof(&mut src);
}

/// Parses `data` as meta and checks:
///
/// - the memory bound of [`Meta`]'s docs: the result holds at most
///   `4 + len + len / 128 + 2 × pairs` bytes of heap, and at most
///   `2 × len + len / 128 + 6`;
/// - no pair has both key and value empty (the reader drops those);
/// - [`Meta::try_parse`] gives the same pairs, or
///   [`ProtoError::TooManyMetaPairs`] with the right count exactly when
///   there are more than [`Meta::MAX_PAIRS`];
/// - encoding is stable: `parse(encode(parse(x))) == parse(x)`, the
///   encoding is [`Meta::encoded_len`] bytes long, is what `Display`
///   prints, and encodes again to the same bytes;
/// - lookups find each key's first value.
pub fn meta(data: &[u8]) {
    let m = Meta::parse(data);
    let pairs = m.len();
    let heap = m.heap_bytes();
    let len = data.len();
    assert!(
        heap <= 4 + len + len / 128 + 2 * pairs && heap <= 2 * len + len / 128 + 6,
        "{heap} bytes of heap for {pairs} pairs from {} bytes",
        data.len()
    );
    assert!(
        m.iter().all(|(k, v)| !(k.is_empty() && v.is_empty())),
        "a pair with an empty key and value was kept"
    );
    match Meta::try_parse(data) {
        Ok(t) => {
            assert!(pairs <= Meta::MAX_PAIRS, "{pairs} pairs accepted");
            assert_eq!(t, m, "try_parse and parse disagree");
        }
        Err(ProtoError::TooManyMetaPairs { count, limit }) => {
            assert_eq!((count, limit), (pairs, Meta::MAX_PAIRS));
            assert!(pairs > Meta::MAX_PAIRS, "{pairs} pairs refused");
        }
        Err(e) => panic!("try_parse: unexpected error {e}"),
    }
    let mut wire = BytesMut::with_capacity(m.encoded_len());
    m.encode_into(&mut wire);
    assert_eq!(wire.len(), m.encoded_len(), "encoded_len is wrong");
    assert_eq!(m.to_string().as_bytes(), &wire[..], "Display differs");
    let again = Meta::parse(&wire);
    assert_eq!(again, m, "parse(encode(parse(x))) != parse(x)");
    let mut wire2 = BytesMut::new();
    again.encode_into(&mut wire2);
    assert_eq!(wire, wire2, "encoding is not stable");
    // Lookups (the first 64 pairs: each is a scan).
    for (i, (k, _)) in m.iter().enumerate().take(64) {
        let first = m.iter().find(|(k2, _)| *k2 == k).map(|(_, v)| v);
        assert_eq!(m.get_bytes(k), first, "get_bytes of pair {i}");
        assert_eq!(m.get_all(k).next(), first, "get_all of pair {i}");
    }
}

/// A struct through the JSON codec: nesting, a map, an enum, optional
/// fields, and no float (so a decoded value re-encodes to an equal one).
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct JsonSample {
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    flags: BTreeMap<String, bool>,
    #[serde(default)]
    kind: Option<JsonKind>,
    #[serde(default)]
    inner: Option<Box<JsonSample>>,
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum JsonKind {
    Plain,
    Code(i32),
    Named { who: String, n: i64 },
}

/// A message through the protobuf codec: every wire type, a map, and
/// recursion (prost stops at 100 levels).
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoSample {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
    #[prost(sint64, tag = "3")]
    n: i64,
    #[prost(fixed64, tag = "4")]
    f: u64,
    #[prost(fixed32, repeated, tag = "5")]
    packed: Vec<u32>,
    #[prost(map = "string, uint32", tag = "6")]
    attrs: HashMap<String, u32>,
    #[prost(message, repeated, tag = "7")]
    children: Vec<ProtoSample>,
    #[prost(bool, optional, tag = "8")]
    flag: Option<bool>,
}

/// Bytes through the string codec, as `serde_bytes` would take them: any
/// byte string, or a string's bytes.
#[derive(Debug, PartialEq)]
struct RawBytes(Vec<u8>);

impl<'de> serde::Deserialize<'de> for RawBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RawBytes, E> {
                Ok(RawBytes(v.to_vec()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawBytes, E> {
                Ok(RawBytes(v.as_bytes().to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Decodes `data` through each built-in codec into a few representative
/// types and checks:
///
/// - no panic and no stack overflow (JSON nesting is bounded by
///   serde_json, protobuf nesting by prost);
/// - JSON: a `serde_json::Value` re-encodes to JSON that decodes again; a
///   decoded struct re-encodes to an equal one;
/// - protobuf: a decoded message re-encodes to an equal one;
/// - string: a `String` is the bytes exactly when they are UTF-8 (an
///   empty body is the empty string); bytes are always the bytes.
pub fn codecs(data: &[u8]) {
    let codecs = CodecRegistry::default();

    let value = codecs.decode::<serde_json::Value>(CodecId::JSON, data);
    decode_error(&value);
    if let Ok(value) = value {
        let text = codecs.encode_to_bytes(CodecId::JSON, &value).unwrap();
        let back = codecs.decode::<serde_json::Value>(CodecId::JSON, &text);
        assert!(back.is_ok(), "re-encoded JSON does not decode: {back:?}");
    }

    let sample = codecs.decode::<JsonSample>(CodecId::JSON, data);
    decode_error(&sample);
    if let Ok(sample) = sample {
        let text = codecs.encode_to_bytes(CodecId::JSON, &sample).unwrap();
        let back = codecs.decode::<JsonSample>(CodecId::JSON, &text).unwrap();
        assert_eq!(back, sample, "JSON struct round trip");
    }

    let message = codecs.decode::<Protobuf<ProtoSample>>(CodecId::PROTOBUF, data);
    decode_error(&message);
    if let Ok(message) = message {
        let wire = codecs.encode_to_bytes(CodecId::PROTOBUF, &message).unwrap();
        let back = codecs.decode::<Protobuf<ProtoSample>>(CodecId::PROTOBUF, &wire);
        assert_eq!(back.unwrap(), message, "protobuf round trip");
    }

    let text = codecs.decode::<String>(CodecId::STRING, data);
    match std::str::from_utf8(data) {
        Ok(s) => assert_eq!(text.as_deref(), Ok(s), "string codec"),
        Err(_) => decode_error(&text),
    }
    let bytes = codecs.decode::<RawBytes>(CodecId::STRING, data);
    if !data.is_empty() {
        assert_eq!(bytes, Ok(RawBytes(data.to_vec())), "bytes codec");
    }
}

/// Panics unless `r` is a value or a decode error (not, say, a wrong
/// pairing: every type here fits its codec).
fn decode_error<T>(r: &Result<T, CodecError>) {
    match r {
        Ok(_) | Err(CodecError::Decode { .. }) => {}
        Err(e) => panic!("unexpected codec error: {e}"),
    }
}

/// Go's form of gzip for `plain`: the header, deflate ended by one sync
/// flush, no final block, no trailer.
fn go_style_gzip(plain: &[u8], level: u32) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    loop {
        out.reserve(plain.len() / 2 + 64);
        let done = c.total_in() as usize;
        c.compress_vec(&plain[done..], &mut out, flate2::FlushCompress::Sync)
            .expect("deflate into a Vec");
        if c.total_in() as usize == plain.len() && out.len() < out.capacity() {
            return out;
        }
    }
}

/// The cut lengths tried for a stream of `len` bytes: all of them when it
/// is short, else the first and last 16 (header, trailer or flush) and 16
/// spread between; the property tests in `core/tests/gzip_props.rs` try
/// every cut, here speed finds more.
fn cut_points(len: usize) -> impl Iterator<Item = usize> {
    let every = len <= 64;
    let step = (len / 16).max(1);
    (0..len).filter(move |&n| every || n < 16 || n + 16 >= len || n % step == 0)
}

/// Checks that `gz` decodes to `plain` and no cut of it to anything else.
fn check_cuts(gz: &[u8], plain: &[u8], form: &str) {
    let g = Gzip::default();
    let mut out = BytesMut::new();
    g.decode(gz, GZIP_LIMIT, &mut out)
        .unwrap_or_else(|e| panic!("{form}: its own stream does not decode: {e}"));
    assert_eq!(&out[..], plain, "{form}: round trip");
    for n in cut_points(gz.len()) {
        out.clear();
        if g.decode(&gz[..n], GZIP_LIMIT, &mut out).is_ok() {
            assert_eq!(&out[..], plain, "{form}: a cut at {n} gave another payload");
        }
    }
}

/// Inflates `data` under [`GZIP_LIMIT`], then compresses it both ways
/// (ours and Go's form) and checks:
///
/// - decoding never panics, never appends more than the limit, and leaves
///   `dst` as it was on error;
/// - what decodes is what flate2's own gzip reader reads from the same
///   bytes (a second implementation of the header, trailer and CRC);
///   a complete member flate2 reads whole decodes to the same bytes here;
/// - `encode(x)` decodes to `x`, and every cut of it (every cut of a
///   short one, about 48 of a long one) is `x` or an error; the same for
///   Go's sync-flushed form of `x`.
pub fn gzip(data: &[u8]) {
    use std::io::Read;
    let g = Gzip::default();
    let mut out = BytesMut::from(&b"prefix"[..]);
    let ours = g.decode(data, GZIP_LIMIT, &mut out);
    assert!(
        out.len() <= 6 + GZIP_LIMIT,
        "{} bytes over the limit",
        out.len()
    );
    assert_eq!(&out[..6], b"prefix", "decode overwrote dst");
    let ours = ours.map(|()| out.split_off(6));
    if ours.is_err() {
        assert_eq!(out.len(), 6, "a failed decode left bytes in dst");
    }

    // flate2 reads one member and leaves what follows it in the slice.
    let mut rest = data;
    let mut reader = flate2::bufread::GzDecoder::new(&mut rest);
    let mut theirs = Vec::new();
    let whole = (&mut reader)
        .take(GZIP_LIMIT as u64 + 1)
        .read_to_end(&mut theirs)
        .is_ok();
    drop(reader);
    match &ours {
        Ok(plain) => assert_eq!(&plain[..], &theirs[..], "flate2 read other bytes"),
        Err(e) => {
            let over = matches!(e, XferError::OutputOverLimit { .. });
            assert!(
                !(whole && rest.is_empty() && theirs.len() <= GZIP_LIMIT) || over,
                "flate2 reads a whole member of {} bytes; we say {e}",
                theirs.len()
            );
        }
    }

    let plain = &data[..data.len().min(GZIP_LIMIT / 4)];
    let level = u32::from(data.first().copied().unwrap_or(5) % 10);
    let mut ours = BytesMut::new();
    Gzip::new(level)
        .encode(plain, &mut ours)
        .expect("gzip into memory");
    check_cuts(&ours, plain, "ours");
    check_cuts(&go_style_gzip(plain, level), plain, "Go's form");
}

// ---- the `session` target ----------------------------------------------

/// The read limit of the `session` target's server.
pub const SESSION_READ_LIMIT: usize = 64 << 10;

/// Its `max_queued_bytes`.
pub const SESSION_MAX_QUEUED: usize = 256 << 10;

/// Its `max_incoming_bytes` (a flag of the input picks
/// [`SESSION_MAX_INCOMING_BYTES_SMALL`] instead).
pub const SESSION_MAX_INCOMING_BYTES: usize = 256 << 10;

/// The small `max_incoming_bytes`: two modest pulls fill it.
pub const SESSION_MAX_INCOMING_BYTES_SMALL: usize = 4 << 10;

/// Its `max_incoming_pulls`, and its `max_pending_pulls`.
pub const SESSION_MAX_PULLS: usize = 16;

/// The most bytes the harness hands to one `handle_input` (one read).
pub const SESSION_READ_CHUNK: usize = 16 << 10;

/// Its `inline_decode_limit` when deferred decodes are on: a gzip frame
/// that inflates past this comes back as [`Event::Decode`].
pub const SESSION_INLINE_DECODE: usize = 2 << 10;

/// The bound the `session` target holds the server's unwritten output to
/// (its queue plus what the harness took and has not written):
///
/// - `max_queued_bytes`: below it, pulls, pushes and input are taken;
/// - one pull or push of ours, and one heartbeat ping, that crossed it
///   (each at most a frame of the read limit);
/// - the replies to the frames of one read and the partial frame before
///   it, taken while under the bound: an error reply (404, 400, 102) is
///   at most a frame's URI plus ~250 bytes of escaped error, so 12 times
///   the input covers even the smallest (24-byte) pull;
/// - one reply of at most the read limit for each pull being handled
///   (replies are never refused for backpressure: the peer's pulls are
///   bounded instead).
pub fn session_queue_bound(cfg: &SessionConfig) -> usize {
    cfg.max_queued_bytes
        + 2 * cfg.read_limit
        + 12 * (SESSION_READ_CHUNK + cfg.read_limit)
        + cfg.max_incoming_pulls * cfg.read_limit
}

/// What the `session` target's router maps a path to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `/echo`: answered at once with the pull's body.
    Echo,
    /// `/hold`: kept by the harness and answered (or not) later.
    Hold,
    /// `/sink`: takes pushes.
    Sink,
}

/// What a run of [`session`] did, so tests can tell which paths an input
/// reached.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOutcome {
    /// Operations carried out.
    pub ops: usize,
    /// Why the session ended (every run ends it: the harness closes it and
    /// fires its timers after the last operation).
    pub closed: Option<CloseReason>,
    /// Whether it ended before the harness's final close.
    pub closed_early: bool,
    /// Frames the session decoded.
    pub frames_in: u64,
    /// The peer's pulls routed to a handler.
    pub pulls_routed: usize,
    /// The peer's pushes routed to a handler.
    pub pushes_routed: usize,
    /// Frames handed out as [`Event::Decode`].
    pub decodes: usize,
    /// Pulls of ours the session took.
    pub own_pulls: usize,
    /// Of those, how many ended with a reply packet.
    pub own_replies: usize,
    /// Of those, how many timed out.
    pub timeouts: u64,
    /// Replies to held pulls the session took.
    pub held_answered: usize,
    /// Frames the session wrote that the harness read back.
    pub frames_out: usize,
    /// The most unwritten output seen (see [`session_queue_bound`]).
    pub max_unwritten: usize,
}

/// Reads operations and their arguments off the fuzz input; zeros once it
/// is used up.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `max` bytes, the count read first.
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u8()).min(max).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }

    /// One of `n` choices.
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.u8()) % n
    }
}

/// `n` bytes: one byte repeated (compresses to nothing) or a cheap
/// pseudo-random stream (does not compress).
fn filler(n: usize, seed: u8, random: bool) -> Bytes {
    if !random {
        return Bytes::from(vec![seed; n]);
    }
    let mut x = u32::from(seed) | 0x9e37_0000;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// URIs the peer's frames and our calls use: routed, unrouted, escaped,
/// badly escaped, empty.
const URIS: [&str; 13] = [
    "/echo",
    "/hold",
    "/sink",
    "/heartbeat",
    "/nope",
    "/echo?a=1&b",
    "/ec%68o",
    "/ho%6Cd?x=%",
    "/%zz",
    "",
    "/echo/",
    "/hold",
    "/echo",
];

/// A peer pull we hold: what its reply is built from.
struct Held {
    seq: Seq,
    uri: Uri,
    xfer: XferPipe,
    body: Bytes,
    codec: CodecId,
}

/// A frame fed to the session, as the shadow decoder read it.
struct Fed {
    ptype: PacketType,
    seq: u64,
    /// For a reply: the error its meta carries.
    error: Option<Rerror>,
}

/// One of our pulls the session took.
struct Own {
    seq: Seq,
    sent_at: Instant,
    deadline: Option<Instant>,
}

/// The `session` target's state: the server session, the peer's side of
/// the connection (bytes to deliver, bytes written back), the adapter's
/// bookkeeping and what the checks need to know.
struct Rig {
    s: Session<Route, u64>,
    cfg: SessionConfig,
    bound: usize,
    now: Instant,
    /// Writes each `poll_transmit` at once (false), or holds the bytes and
    /// tells the session with `set_unwritten` (true).
    holds_output: bool,
    /// The heartbeat plugin is on: its pings are pushes we did not make.
    heartbeat: bool,
    /// What the peer sent that the session has not read yet.
    wire: BytesMut,
    /// The peer's encoder (no limit: it may send frames over ours).
    enc: FastProto,
    /// Decodes exactly what the session was fed, to count the peer's pulls
    /// by seq; stops at the first error, as the session does.
    shadow: FastProto,
    shadow_rx: BytesMut,
    shadow_ok: bool,
    /// Pull frames fed, by seq.
    peer_pulls: HashMap<u64, u32>,
    /// Every frame fed that the session has not decoded yet (its count of
    /// frames says how far it got).
    shadow_frames: VecDeque<Fed>,
    frames_seen: u64,
    /// Our pulls a reply frame of the peer's was decoded for, by seq: the
    /// error it carries (`None`: a reply packet). Their `Reply` must be it.
    peer_answers: HashMap<u64, Option<Rerror>>,
    /// Our pulls ended in this pump with the connection-closed error: the
    /// `Closed` that follows must give its reason as theirs.
    close_failed: Vec<(u64, Rerror)>,
    /// Encodes as the session does (its read limit, its filters): whether a
    /// reply fits.
    limit_enc: FastProto,
    /// Seqs of the peer's pulls the session decoded, in order.
    pulls_taken: Vec<u64>,
    /// The peer's pulls handed to a handler and dropped by a close.
    abandoned: HashSet<u64>,
    /// Taken by `poll_transmit`, not written yet.
    outbox: BytesMut,
    /// The peer's decoder of what the session wrote.
    peer: FastProto,
    peer_rx: BytesMut,
    /// Whether what the session writes still reaches the peer whole.
    out_ok: bool,
    replies_out: HashMap<u64, u32>,
    /// Seqs of our pulls and pushes seen on the wire (which come in the
    /// order the session chose them: the last is the highest).
    own_out: HashSet<u64>,
    last_out_seq: Option<u64>,
    /// Seqs of our pushes the session took.
    own_pushes: HashSet<u64>,
    /// Our pulls not ended, by token.
    outstanding: BTreeMap<u64, Own>,
    /// Seqs of every pull of ours the session took (for replies, right and
    /// stale).
    own_seqs: Vec<u64>,
    /// Seqs of every pull of ours, ended or not.
    own_all: HashSet<u64>,
    last_seq: Option<u64>,
    next_token: u64,
    held: Vec<Held>,
    answered: Vec<u64>,
    decode: Option<DecodeJob>,
    /// A decode job was dropped: the session waits for it forever.
    decode_lost: bool,
    closed: Option<CloseReason>,
    /// Bytes the session had queued when it closed, and those taken by
    /// `poll_transmit` since: once closed, nothing is added or lost.
    queued_at_close: usize,
    taken_since_close: usize,
    eof: bool,
    write_failed_at: Option<Instant>,
    /// Replies in this step of pulls whose deadline had come with a 408.
    due_timeouts: u64,
    out: SessionOutcome,
}

impl Rig {
    fn new(flags: u8, start: Instant) -> Self {
        let mut router = Router::new();
        router
            .pull("/echo", Route::Echo)
            .pull("/hold", Route::Hold)
            .push("/sink", Route::Sink);
        let cfg = SessionConfig {
            default_timeout: (flags & 1 != 0).then_some(Duration::from_secs(3)),
            max_pending_pulls: SESSION_MAX_PULLS,
            max_incoming_pulls: SESSION_MAX_PULLS,
            max_incoming_bytes: if flags & 2 != 0 {
                SESSION_MAX_INCOMING_BYTES_SMALL
            } else {
                SESSION_MAX_INCOMING_BYTES
            },
            max_queued_bytes: SESSION_MAX_QUEUED,
            idle_timeout: (flags & 4 != 0).then_some(Duration::from_secs(20)),
            frame_timeout: (flags & 8 == 0).then_some(Duration::from_secs(5)),
            close_timeout: if flags & 16 != 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(10)
            },
            read_limit: SESSION_READ_LIMIT,
            inline_decode_limit: if flags & 32 != 0 {
                usize::MAX
            } else {
                SESSION_INLINE_DECODE
            },
            ..SessionConfig::default()
        };
        let mut plugins = Plugins::new();
        if flags & 64 != 0 {
            plugins = plugins.with(Heartbeat::new(
                Duration::from_secs(4),
                Duration::from_secs(12),
            ));
        }
        // gzip at its fastest level, both ways: the frames are the same
        // kind, made much faster (deflate is most of the target's time).
        let mut xfers = XferRegistry::empty();
        xfers.register(Arc::new(Gzip::new(1)));
        let xfers = Arc::new(xfers);
        let mut shared = Shared::new(router)
            .with_plugins(plugins)
            .with_config(cfg.clone());
        shared.xfers = xfers.clone();
        let shared = Arc::new(shared);
        let shadow = shared.fast_proto();
        let peer = shared.fast_proto();
        let limit_enc = shared.fast_proto();
        Rig {
            s: Session::new(shared, Role::Acceptor, 1, start),
            bound: session_queue_bound(&cfg),
            cfg,
            now: start,
            holds_output: flags & 128 != 0,
            heartbeat: flags & 64 != 0,
            wire: BytesMut::new(),
            enc: FastProto::new(u32::MAX as usize, xfers),
            shadow,
            shadow_rx: BytesMut::new(),
            shadow_ok: true,
            peer_pulls: HashMap::new(),
            shadow_frames: VecDeque::new(),
            frames_seen: 0,
            peer_answers: HashMap::new(),
            close_failed: Vec::new(),
            limit_enc,
            pulls_taken: Vec::new(),
            abandoned: HashSet::new(),
            outbox: BytesMut::new(),
            peer,
            peer_rx: BytesMut::new(),
            out_ok: true,
            replies_out: HashMap::new(),
            own_out: HashSet::new(),
            own_pushes: HashSet::new(),
            last_out_seq: None,
            outstanding: BTreeMap::new(),
            own_seqs: Vec::new(),
            own_all: HashSet::new(),
            last_seq: None,
            next_token: 0,
            held: Vec::new(),
            answered: Vec::new(),
            decode: None,
            decode_lost: false,
            closed: None,
            queued_at_close: 0,
            taken_since_close: 0,
            eof: false,
            write_failed_at: None,
            due_timeouts: 0,
            out: SessionOutcome::default(),
        }
    }

    fn is_open(&self) -> bool {
        self.s.state() == State::Open
    }

    // ---- building what the peer sends --------------------------------

    fn uri(&self, inp: &mut Input<'_>) -> Uri {
        match inp.below(16) {
            13 => Uri::from_bytes(Bytes::copy_from_slice(inp.bytes(32))),
            // A URI that nearly fills a frame: a reply with it, and an
            // error reply, may not fit under the limit.
            14 => {
                let prefix = ["/echo?", "/nope?", "/hold?"][inp.below(3)];
                let n = self.cfg.read_limit - 256 + usize::from(inp.u8());
                let mut u = prefix.as_bytes().to_vec();
                u.resize(n, b'a');
                Uri::from_bytes(u.into())
            }
            15 => {
                let n = usize::from(inp.u16() % 2048);
                let mut u = b"/hold?".to_vec();
                u.resize(n.max(6), b'b');
                Uri::from_bytes(u.into())
            }
            i => Uri::from_static(URIS[i]),
        }
    }

    fn body(&self, inp: &mut Input<'_>) -> Bytes {
        match inp.below(10) {
            0 | 1 => Bytes::new(),
            2..=4 => Bytes::copy_from_slice(inp.bytes(64)),
            5 | 6 => {
                let n = usize::from(inp.u16()) % 8192;
                filler(n, inp.u8(), false)
            }
            7 => {
                let n = usize::from(inp.u16()) + 65536 * usize::from(inp.u8() % 2);
                let seed = inp.u8();
                filler(n, seed, seed % 4 == 0)
            }
            8 => {
                // Around the read limit.
                let n = self.cfg.read_limit - 128 + usize::from(inp.u8());
                let seed = inp.u8();
                filler(n, seed, seed % 4 == 0)
            }
            _ => {
                let n = usize::from(inp.u16()) % 4096;
                filler(n, inp.u8(), true)
            }
        }
    }

    fn meta(inp: &mut Input<'_>) -> Meta {
        match inp.below(8) {
            0..=3 => Meta::new(),
            4 | 5 => {
                // Whatever the input says, but no error: an error reply
                // to our pull is the harness's choice, below.
                let mut m = Meta::parse(inp.bytes(64));
                m.remove(Rerror::META_KEY);
                m
            }
            6 => {
                let mut m = Meta::new();
                let code = i32::from(inp.u16() as i16);
                Rerror::new(code, "peer error").set_in_meta(&mut m);
                m
            }
            _ => {
                // Many pairs: over the cap is a protocol error.
                let pairs = usize::from(inp.u16()) % (Meta::MAX_PAIRS + 64);
                Meta::parse("k=v&".repeat(pairs).as_bytes())
            }
        }
    }

    fn codec(inp: &mut Input<'_>) -> CodecId {
        match inp.below(6) {
            0 | 1 => CodecId::STRING,
            2 => CodecId::JSON,
            3 => CodecId::PROTOBUF,
            4 => CodecId::NONE,
            _ => CodecId(inp.u8()),
        }
    }

    fn xfer(inp: &mut Input<'_>) -> (XferPipe, Option<u8>) {
        match inp.below(8) {
            0..=3 => (XferPipe::new(), None),
            4 | 5 => (XferPipe::from_ids(&[XferId::GZIP]), None),
            6 => (XferPipe::from_ids(&[XferId::GZIP, XferId::GZIP]), None),
            // An id no filter has: written by hand below.
            _ => (XferPipe::new(), Some(inp.u8())),
        }
    }

    fn seq(&self, inp: &mut Input<'_>, reply: bool) -> Seq {
        let own = |i: usize| self.own_seqs.get(i % self.own_seqs.len().max(1)).copied();
        // A reply mostly answers one of our pulls still waiting.
        let mode = if reply { inp.below(10) } else { inp.below(6) };
        let s = match mode {
            0 => Some(u64::from(inp.u8())),
            1 => self.held.get(inp.below(SESSION_MAX_PULLS)).map(|h| h.seq.0),
            2 => self.answered.last().copied(),
            3 => Some(inp.u64()),
            // Ours, the right one or a stale one.
            4 => own(inp.below(256)),
            5 => Some(u64::from(inp.u16())),
            _ => {
                let live: Vec<u64> = self.outstanding.values().map(|o| o.seq.0).collect();
                live.get(inp.below(SESSION_MAX_PULLS) % live.len().max(1))
                    .copied()
                    .or_else(|| own(0))
            }
        };
        Seq(s.unwrap_or(0))
    }

    /// A frame the peer sends, from fields the input picks; sometimes
    /// damaged.
    fn frame(&mut self, inp: &mut Input<'_>) -> Vec<u8> {
        let (ptype, reply) = match inp.below(8) {
            0..=2 => (PacketType::PULL, false),
            3 => (PacketType::PUSH, false),
            4..=6 => (PacketType::REPLY, true),
            _ => (PacketType(inp.u8()), false),
        };
        let seq = self.seq(inp, reply);
        let mut p = Packet::new(ptype, seq, self.uri(inp));
        p.meta = Self::meta(inp);
        if reply && inp.below(4) == 0 {
            let code = [Rerror::CODE_TIMEOUT, Rerror::CODE_NOT_FOUND, 599][inp.below(3)];
            Rerror::new(code, "peer error").set_in_meta(&mut p.meta);
        }
        p.body_codec = Self::codec(inp);
        p.body = self.body(inp);
        let (xfer, unknown) = Self::xfer(inp);
        p.xfer = xfer;
        let mut wire = BytesMut::new();
        if self.enc.encode(&p, &mut wire).is_err() {
            // Over u32 or the like: send a bare header instead.
            wire.clear();
            p.body = Bytes::new();
            p.meta = Meta::new();
            p.xfer = XferPipe::new();
            self.enc
                .encode(&p, &mut wire)
                .expect("a small frame encodes");
        }
        let mut frame = wire.to_vec();
        if let (Some(id), Some(payload)) = (unknown, frame.get(6..)) {
            let mut f = Vec::with_capacity(frame.len() + 1);
            f.extend_from_slice(&(frame.len() as u32 + 1).to_be_bytes());
            f.extend_from_slice(&[FastProto::ID, 1, id]);
            f.extend_from_slice(payload);
            frame = f;
        }
        match inp.below(10) {
            8 => {
                let at = usize::from(inp.u16()) % frame.len().max(1);
                if let Some(b) = frame.get_mut(at) {
                    *b ^= inp.u8() | 1;
                }
            }
            9 => frame.truncate(usize::from(inp.u16()) % frame.len().max(1)),
            _ => {}
        }
        frame
    }

    // ---- the adapter -------------------------------------------------

    /// Hands the session up to `n` bytes of the wire, as one read, when it
    /// wants input (or when it has ended, to see that it ignores them).
    fn deliver(&mut self, n: usize) {
        if self.wire.is_empty() {
            return;
        }
        let ended = self.closed.is_some() || self.eof;
        if !self.s.wants_input() && !ended {
            return;
        }
        let chunk = self
            .wire
            .split_to(n.clamp(1, SESSION_READ_CHUNK).min(self.wire.len()));
        let frames = self.s.stats().frames_in;
        self.s.handle_input(self.now, &chunk);
        if ended {
            assert!(
                !self.s.has_events(),
                "a session whose input ended read more"
            );
            assert_eq!(self.s.stats().frames_in, frames, "read after the end");
            return;
        }
        if self.shadow_ok {
            self.shadow_rx.extend_from_slice(&chunk);
            loop {
                match self.shadow.decode(&mut self.shadow_rx) {
                    Ok(Some(p)) => {
                        if p.ptype == PacketType::PULL {
                            *self.peer_pulls.entry(p.seq.0).or_default() += 1;
                        }
                        self.shadow_frames.push_back(Fed {
                            ptype: p.ptype,
                            seq: p.seq.0,
                            error: Rerror::from_meta(&p.meta),
                        });
                    }
                    Ok(None) => break,
                    Err(_) => {
                        self.shadow_ok = false;
                        self.shadow_rx = BytesMut::new();
                        break;
                    }
                }
            }
        }
    }

    /// Reads as an adapter does until the socket has nothing more: chunk
    /// after chunk while the session wants input.
    fn deliver_all(&mut self) {
        while !self.wire.is_empty() && self.s.wants_input() {
            self.deliver(SESSION_READ_CHUNK);
            self.pump();
        }
    }

    /// The peer reads `n` bytes of what the session wrote.
    fn write(&mut self, n: usize) {
        let n = n.min(self.outbox.len());
        let bytes = self.outbox.split_to(n);
        if self.holds_output {
            self.s.set_unwritten(self.outbox.len());
        }
        if !self.out_ok {
            return;
        }
        self.peer_rx.extend_from_slice(&bytes);
        loop {
            match self.peer.decode(&mut self.peer_rx) {
                Ok(Some(p)) => self.check_output(&p),
                Ok(None) => break,
                Err(e) => panic!("the session wrote a frame its peer cannot read: {e}"),
            }
        }
    }

    fn check_output(&mut self, p: &Packet) {
        self.out.frames_out += 1;
        match p.ptype {
            PacketType::REPLY => {
                let n = self.replies_out.entry(p.seq.0).or_default();
                *n += 1;
                let pulls = self.peer_pulls.get(&p.seq.0).copied().unwrap_or(0);
                assert!(
                    *n <= pulls,
                    "reply {n} to seq {} for {pulls} pulls with that seq",
                    p.seq
                );
            }
            PacketType::PULL => {
                assert!(
                    self.own_all.contains(&p.seq.0),
                    "a pull on the wire that was never taken: seq {}",
                    p.seq
                );
                self.own_frame_out(p.seq);
            }
            PacketType::PUSH => {
                // Ours, or the heartbeat's ping.
                assert!(
                    self.own_pushes.contains(&p.seq.0)
                        || (self.heartbeat && p.uri.path() == HEARTBEAT_URI.as_bytes()),
                    "a push on the wire that was never taken: seq {} to {}",
                    p.seq,
                    p.uri
                );
                self.own_frame_out(p.seq);
            }
            t => panic!("the session wrote a frame of type {}", t.0),
        }
    }

    /// A pull or push of ours on the wire: each once, in seq order.
    fn own_frame_out(&mut self, seq: Seq) {
        assert!(
            self.last_out_seq.is_none_or(|l| seq.0 > l),
            "seq {seq} written after {:?}",
            self.last_out_seq
        );
        self.last_out_seq = Some(seq.0);
        self.own_out.insert(seq.0);
    }

    fn transmit(&mut self) {
        let before = self.outbox.len();
        let n = self.s.poll_transmit(&mut self.outbox);
        assert_eq!(self.outbox.len(), before + n, "poll_transmit's count");
        if self.write_failed_at.is_some() {
            assert_eq!(n, 0, "bytes to write after the write failed");
        }
        if self.closed.is_some() {
            self.taken_since_close += n;
        }
        if self.holds_output {
            self.s.set_unwritten(self.outbox.len());
        } else {
            self.write(usize::MAX);
        }
    }

    /// Handles every event, as an adapter would, and checks each.
    fn pump(&mut self) {
        while let Some(ev) = self.s.poll_event() {
            if let Some(r) = &self.closed {
                panic!("an event after Closed({r:?}): {ev:?}");
            }
            // The frames decoded so far, before the event is looked at: a
            // reply of ours is explained by the reply frame that ended it.
            // (A session ends pulls otherwise only after the frames of the
            // same call: by a timer, a close, the end of input.)
            self.sync_frames();
            match ev {
                Event::Pull(p) => {
                    assert_eq!(p.seq, p.packet.seq);
                    assert!(
                        !self.held.iter().any(|h| h.seq == p.seq),
                        "pull {} handed out while one with its seq is held",
                        p.seq
                    );
                    self.out.pulls_routed += 1;
                    match p.handler {
                        Route::Echo => {
                            let reply =
                                Ok(Packet::default().with_body(p.reply_codec, p.packet.body));
                            let fits =
                                self.reply_fits(p.seq, &p.packet.uri, &p.packet.xfer, &reply);
                            let r = self.s.reply(self.now, p.seq, reply);
                            self.answered.push(p.seq.0);
                            match r {
                                // Closed while the event waited: no such
                                // pull any more.
                                Err(e)
                                    if e.code == Rerror::CODE_BAD_PACKET && self.s.is_closed() =>
                                {
                                    self.abandoned.insert(p.seq.0);
                                }
                                r => self.check_reply_taken(p.seq, fits, r),
                            }
                        }
                        Route::Hold => self.held.push(Held {
                            seq: p.seq,
                            uri: p.packet.uri,
                            xfer: p.packet.xfer,
                            body: p.packet.body,
                            codec: p.reply_codec,
                        }),
                        Route::Sink => panic!("a pull routed to the push handler"),
                    }
                }
                Event::Push(p) => {
                    assert_eq!(p.handler, Route::Sink, "a push routed to a pull handler");
                    self.out.pushes_routed += 1;
                }
                Event::Decode(job) => {
                    assert!(
                        self.decode.is_none() && !self.decode_lost,
                        "a second decode while one is out"
                    );
                    self.out.decodes += 1;
                    self.decode = Some(job);
                }
                Event::Reply {
                    seq,
                    token,
                    result,
                    elapsed,
                } => {
                    let Some(own) = self.outstanding.remove(&token) else {
                        panic!("token {token} (seq {seq}) ended twice or was never sent");
                    };
                    assert_eq!(own.seq, seq, "token {token} ended under another seq");
                    assert_eq!(elapsed, self.now.duration_since(own.sent_at), "elapsed");
                    // Each end has one cause: the peer's reply frame, the
                    // pull's own deadline, or the connection's end.
                    match (result, self.peer_answers.remove(&seq.0)) {
                        (Ok(p), Some(None)) => {
                            assert_eq!(p.seq, seq, "a reply packet of another seq");
                            self.out.own_replies += 1;
                        }
                        (Err(e), Some(Some(want))) => {
                            assert_eq!(e, want, "pull {seq}: not the error of the peer's reply");
                        }
                        (r, Some(want)) => {
                            panic!("pull {seq} ended with {r:?}; the peer's reply said {want:?}")
                        }
                        (Ok(p), None) => {
                            panic!("pull {seq} got a reply the peer never sent: {p:?}")
                        }
                        (Err(e), None) if e.code == Rerror::CODE_TIMEOUT => {
                            assert!(
                                own.deadline.is_some_and(|d| d <= self.now),
                                "pull {seq} timed out before its deadline ({:?})",
                                own.deadline
                            );
                            self.due_timeouts += 1;
                        }
                        (Err(e), None) if e.code == Rerror::CODE_CONN_CLOSED => {
                            self.close_failed.push((seq.0, e));
                        }
                        (Err(e), None) => panic!(
                            "pull {seq} failed with {e:?}: no reply, deadline or close says so"
                        ),
                    }
                }
                Event::Closed(r) => {
                    assert!(self.s.is_closed(), "Closed while the session is not");
                    let want = r.pull_error();
                    for (seq, e) in self.close_failed.drain(..) {
                        assert_eq!(e, want, "pull {seq} failed, but not as the close says");
                    }
                    self.closed = Some(r);
                    self.abandoned.extend(self.held.drain(..).map(|h| h.seq.0));
                    self.queued_at_close = self.s.queued_bytes();
                }
            }
        }
        // Pulls of ours failed, and the session did not close: the input
        // ended, and what it still has to handle are the peer's pulls.
        if !self.close_failed.is_empty() {
            assert!(self.eof, "pulls failed as closed while the session is open");
            let want = CloseReason::PeerClosed.pull_error();
            for (seq, e) in self.close_failed.drain(..) {
                assert_eq!(
                    e, want,
                    "pull {seq} failed, but not as the end of input says"
                );
            }
        }
    }

    /// Catches up with the frames the session decoded: they are those the
    /// peer sent, in order. Notes the pulls among them, and the replies
    /// that end pulls of ours.
    fn sync_frames(&mut self) {
        let frames_in = self.s.stats().frames_in;
        while self.frames_seen < frames_in {
            let Some(f) = self.shadow_frames.pop_front() else {
                panic!("the session decoded {frames_in} frames, more than were sent");
            };
            match f.ptype {
                PacketType::PULL => self.pulls_taken.push(f.seq),
                PacketType::REPLY if self.outstanding.values().any(|o| o.seq.0 == f.seq) => {
                    // The first for a seq ends the pull; more are strays.
                    self.peer_answers.entry(f.seq).or_insert(f.error);
                }
                _ => {}
            }
            self.frames_seen += 1;
        }
    }

    /// Whether the reply the session builds for a pull (the pull's URI and
    /// seq, its filters then the reply's, the default codec for none)
    /// encodes within the read limit.
    fn reply_fits(
        &mut self,
        seq: Seq,
        uri: &Uri,
        xfer: &XferPipe,
        result: &Result<Packet, Rerror>,
    ) -> bool {
        let default_codec = self.cfg.default_codec;
        let p = match result {
            Ok(r) => {
                let mut p = r.clone();
                let mut ids: Vec<XferId> = xfer.iter().collect();
                ids.extend(r.xfer.iter());
                p.xfer = XferPipe::from_ids(&ids);
                if p.body_codec == CodecId::NONE {
                    p.body_codec = default_codec;
                }
                p
            }
            Err(e) => {
                let mut p = Packet {
                    body_codec: default_codec,
                    xfer: xfer.clone(),
                    ..Packet::default()
                };
                e.set_in_meta(&mut p.meta);
                p
            }
        };
        let p = Packet {
            ptype: PacketType::REPLY,
            seq,
            uri: uri.clone(),
            ..p
        };
        self.limit_enc.encode(&p, &mut BytesMut::new()).is_ok()
    }

    /// A reply to a held pull is taken if it fits; if not, a 500 goes in
    /// its place and the call says so.
    fn check_reply_taken(&mut self, seq: Seq, fits: bool, r: Result<(), Rerror>) {
        match r {
            Ok(()) => assert!(fits, "a reply to {seq} over the read limit was taken"),
            Err(e) => assert!(
                !fits && e.code == Rerror::CODE_INTERNAL,
                "the reply to {seq} failed (it fits: {fits}): {e}"
            ),
        }
    }

    /// What must hold between any two operations.
    fn check(&mut self) {
        self.sync_frames();
        let s = &self.s;
        let cfg = &self.cfg;
        if let Some(r) = &self.closed {
            assert_eq!(s.state(), State::Closed);
            assert_eq!(s.closed_reason(), Some(r));
            assert_eq!(s.poll_timeout(), None, "a timer after Closed");
            assert!(!s.wants_input(), "wants input after Closed");
            assert!(!s.has_events());
            assert_eq!(
                (s.pending_pulls(), s.incoming_pulls(), s.incoming_bytes()),
                (0, 0, 0),
                "calls left after Closed"
            );
            assert!(
                self.outstanding.is_empty(),
                "pulls of ours never ended: {:?}",
                self.outstanding.keys().collect::<Vec<_>>()
            );
            // What was queued at the close is handed out whole, and
            // nothing is added (unless writing failed: then nothing goes).
            if self.write_failed_at.is_none() {
                assert_eq!(
                    s.queued_bytes() + self.taken_since_close,
                    self.queued_at_close,
                    "queued bytes added or lost after Closed"
                );
            }
        } else {
            assert!(!s.is_closed(), "closed without a Closed event");
            assert_eq!(s.pending_pulls(), self.outstanding.len(), "pending pulls");
            assert_eq!(s.incoming_pulls(), self.held.len(), "pulls being handled");
            if self.decode.is_some() || self.decode_lost {
                assert!(!s.wants_input(), "wants input while a frame decodes away");
            }
            if self.eof {
                assert!(!s.wants_input(), "wants input after its end");
                assert!(
                    !self.held.is_empty() || self.decode.is_some() || self.decode_lost,
                    "input ended, nothing left to handle, and still open ({:?})",
                    s.state()
                );
            }
        }
        assert!(s.pending_pulls() <= cfg.max_pending_pulls);
        assert!(s.incoming_pulls() <= cfg.max_incoming_pulls);
        assert!(
            s.incoming_bytes() <= cfg.max_incoming_bytes + cfg.read_limit,
            "{} bytes of pulls held",
            s.incoming_bytes()
        );
        if s.incoming_pulls() == 0 {
            assert_eq!(s.incoming_bytes(), 0, "bytes counted for no pull");
        }
        let unwritten = s.queued_bytes() + self.outbox.len();
        self.out.max_unwritten = self.out.max_unwritten.max(unwritten);
        assert!(
            unwritten <= self.bound,
            "{unwritten} bytes unwritten, over the bound {}",
            self.bound
        );
    }

    /// What must hold right after `handle_timeout(now)`.
    fn check_timers(&self) {
        let now = self.now;
        if let Some(t) = self.s.poll_timeout() {
            assert!(t > now, "handle_timeout({now:?}) left a timer at {t:?}");
        }
        if let State::Closing { deadline } = self.s.state() {
            assert!(deadline > now, "closing past its deadline");
        }
        for o in self.outstanding.values() {
            assert!(
                o.deadline.is_none_or(|d| d > now),
                "pull {} is past its deadline",
                o.seq
            );
        }
        if let Some(at) = self.write_failed_at {
            if at + WRITE_ERROR_GRACE <= now {
                assert!(self.closed.is_some(), "open past the write error's grace");
            }
        }
    }

    fn timeout(&mut self) {
        self.s.handle_timeout(self.now);
        self.pump();
        self.check_timers();
    }

    fn own_pull(&mut self, inp: &mut Input<'_>) {
        let mut p = Packet::new(PacketType::PULL, Seq(0), self.uri(inp));
        p.body_codec = Self::codec(inp);
        p.body = self.body(inp);
        p.xfer = Self::xfer(inp).0;
        let timeout = match inp.below(6) {
            0 => None,
            1 => Some(Duration::ZERO),
            2 => Some(Duration::MAX),
            3 => Some(Duration::from_secs(u64::from(inp.u8() % 64))),
            _ => Some(Duration::from_millis(u64::from(inp.u16()))),
        };
        let open = self.is_open();
        let token = self.next_token;
        self.next_token += 1;
        match self.s.pull(self.now, p, timeout, token) {
            Ok(seq) => {
                assert!(open, "a pull taken while {:?}", self.s.state());
                self.fresh_seq(seq);
                let deadline = timeout
                    .or(self.cfg.default_timeout)
                    .and_then(|t| self.now.checked_add(t));
                self.outstanding.insert(
                    token,
                    Own {
                        seq,
                        sent_at: self.now,
                        deadline,
                    },
                );
                self.own_seqs.push(seq.0);
                self.own_all.insert(seq.0);
                self.out.own_pulls += 1;
            }
            Err((e, t)) => {
                assert_eq!(t, token, "a refused pull hands its token back");
                self.refused(&e);
            }
        }
    }

    fn own_push(&mut self, inp: &mut Input<'_>) {
        let mut p = Packet::new(PacketType::PUSH, Seq(0), self.uri(inp));
        p.body_codec = Self::codec(inp);
        p.body = self.body(inp);
        p.xfer = Self::xfer(inp).0;
        let open = self.is_open();
        match self.s.push(self.now, p) {
            Ok(seq) => {
                assert!(open, "a push taken while {:?}", self.s.state());
                self.fresh_seq(seq);
                self.own_pushes.insert(seq.0);
            }
            Err(e) => self.refused(&e),
        }
    }

    fn fresh_seq(&mut self, seq: Seq) {
        assert!(
            self.last_seq.is_none_or(|l| seq.0 > l),
            "seq {seq} after {:?}",
            self.last_seq
        );
        self.last_seq = Some(seq.0);
    }

    fn refused(&self, e: &Rerror) {
        if self.closed.is_some() {
            assert_eq!(
                e.code,
                Rerror::CODE_CONN_CLOSED,
                "refused on a closed session"
            );
            assert!(
                e.detail.starts_with("session is closed"),
                "a refusal that does not say why: {e}"
            );
        }
    }

    fn answer_held(&mut self, inp: &mut Input<'_>) {
        // The arguments are read whatever the state, so that a script
        // means the same however the session answered.
        let i = inp.below(SESSION_MAX_PULLS);
        let mode = inp.below(6);
        if self.held.is_empty() {
            return;
        }
        let h = self.held.remove(i % self.held.len());
        let result = match mode {
            0 | 1 => Ok(Packet::default().with_body(h.codec, h.body)),
            2 => Ok(Packet::default().with_body(h.codec, self.body(inp))),
            3 => Err(Rerror::new(i32::from(inp.u16() as i16), "handler error")),
            4 => {
                let mut p = Packet::default().with_body(Self::codec(inp), h.body);
                p.xfer = XferPipe::from_ids(&[XferId::GZIP]);
                p.meta = Self::meta(inp);
                Ok(p)
            }
            _ => Ok(Packet::default()),
        };
        let fits = self.reply_fits(h.seq, &h.uri, &h.xfer, &result);
        let r = self.s.reply(self.now, h.seq, result);
        self.answered.push(h.seq.0);
        if r.is_ok() {
            self.out.held_answered += 1;
        }
        self.check_reply_taken(h.seq, fits, r);
    }

    fn stale_reply(&mut self, inp: &mut Input<'_>) {
        let seq = match inp.below(3) {
            0 => self.answered.last().copied(),
            1 => self.answered.get(inp.below(256)).copied(),
            _ => Some(inp.u64()),
        };
        let Some(seq) = seq else { return };
        if self.held.iter().any(|h| h.seq.0 == seq) {
            return;
        }
        let r = self.s.reply(self.now, Seq(seq), Ok(Packet::default()));
        assert!(
            r.is_err(),
            "a reply to seq {seq}, which no held pull has, was taken"
        );
    }

    fn advance(&mut self, inp: &mut Input<'_>) {
        let c = &self.cfg;
        let d = match inp.below(16) {
            0 => Duration::from_nanos(1),
            1 => Duration::from_millis(1),
            2 => Duration::from_millis(100),
            3 => WRITE_ERROR_GRACE,
            4 => Duration::from_secs(1),
            5 => c.frame_timeout.unwrap_or_default(),
            6 => c.idle_timeout.unwrap_or_default(),
            7 => c.close_timeout,
            8 => Duration::from_secs(4),
            9 => Duration::from_secs(12),
            10 => Duration::from_secs(60),
            11 => Duration::from_millis(u64::from(inp.u16())),
            // Just before, at, or just after the next deadline.
            i => match self.s.poll_timeout() {
                Some(t) if t > self.now => {
                    let to = t.duration_since(self.now);
                    match i {
                        12 => to.saturating_sub(Duration::from_nanos(1)),
                        13 | 14 => to,
                        _ => to + Duration::from_nanos(1),
                    }
                }
                _ => Duration::ZERO,
            },
        };
        self.now += d;
    }

    fn run_decode(&mut self, inp: &mut Input<'_>) {
        let mode = inp.below(4);
        let Some(job) = self.decode.take() else {
            if self.closed.is_some() || !self.decode_lost {
                // Nothing is being decoded: a result is ignored.
                let frames = self.s.stats().frames_in;
                let p = Packet::new(PacketType::PULL, Seq(7), "/echo");
                self.s.handle_decoded(self.now, Ok(p));
                assert!(
                    !self.s.has_events(),
                    "a result no decode asked for was taken"
                );
                assert_eq!(self.s.stats().frames_in, frames);
            }
            return;
        };
        match mode {
            0 => {
                // Dropped: the session waits for it until it closes.
                drop(job);
                self.decode_lost = self.closed.is_none();
            }
            1 => {
                let was_closed = self.closed.is_some();
                let e = ProtoError::Truncated { have: 1, need: 2 };
                self.s.handle_decoded(self.now, Err(e));
                self.pump();
                assert!(
                    was_closed || self.closed.is_some(),
                    "a failed decode left the session open"
                );
            }
            _ => {
                let r = job.run();
                self.s.handle_decoded(self.now, r);
            }
        }
    }

    fn close_by(&mut self, inp: &mut Input<'_>) {
        let d = Duration::from_millis(u64::from(inp.u16()));
        let deadline = if inp.u8() % 4 == 0 {
            self.now.checked_sub(d).unwrap_or(self.now)
        } else {
            self.now + d
        };
        self.s.close_by(self.now, deadline);
    }

    /// One operation, picked by the input.
    fn op(&mut self, inp: &mut Input<'_>) {
        const WIRE_CAP: usize = 4 * SESSION_READ_CHUNK + SESSION_READ_LIMIT;
        let now = self.now;
        match inp.below(32) {
            0..=5 => {
                if self.wire.len() < WIRE_CAP {
                    let f = self.frame(inp);
                    self.wire.extend_from_slice(&f);
                }
                match inp.u8() % 4 {
                    0 => self.deliver(SESSION_READ_CHUNK),
                    1 => self.deliver_all(),
                    _ => {}
                }
            }
            6 => {
                if self.wire.len() < WIRE_CAP {
                    let g = inp.bytes(64);
                    self.wire.extend_from_slice(g);
                }
            }
            7..=9 => {
                let n = match inp.below(6) {
                    0 => 1,
                    1 => 3,
                    2 => usize::from(inp.u8()),
                    3 => usize::from(inp.u16()),
                    4 => SESSION_READ_CHUNK,
                    _ => return self.deliver_all(),
                };
                self.deliver(n);
            }
            10 | 11 => self.own_pull(inp),
            12 => self.own_push(inp),
            13 | 14 => self.answer_held(inp),
            15 => self.stale_reply(inp),
            16 | 17 => self.advance(inp),
            18 => self.timeout(),
            19 => {
                for _ in 0..=inp.below(4) {
                    if let Some(t) = self.s.poll_timeout() {
                        self.now = self.now.max(t);
                        self.timeout();
                    }
                }
            }
            20 | 21 => self.run_decode(inp),
            22 => self.s.close(now),
            23 => self.close_by(inp),
            24 => {
                let was_open = self.closed.is_none();
                self.s.handle_eof(now);
                self.eof |= was_open;
            }
            25 => {
                if self.closed.is_none() && self.write_failed_at.is_none() {
                    self.write_failed_at = Some(now);
                    self.out_ok = false;
                    self.outbox.clear();
                }
                self.s.handle_write_error(now, &"broken pipe");
                if self.holds_output {
                    self.s.set_unwritten(self.outbox.len());
                }
            }
            26 => {
                self.s.handle_io_error(now, &"connection reset");
                self.pump();
                assert!(self.closed.is_some(), "open after an I/O error");
            }
            27 | 28 => self.transmit(),
            _ => {
                let n = match inp.below(3) {
                    0 => usize::from(inp.u8()),
                    1 => usize::from(inp.u16()),
                    _ => usize::MAX,
                };
                self.write(n);
            }
        }
    }

    /// Closes the session if it is open, fires its timers until it ends,
    /// and checks that it did and that it refuses everything after.
    fn finish(&mut self) {
        self.out.closed_early = self.closed.is_some();
        if self.closed.is_none() {
            self.s.close(self.now);
            self.pump();
            self.check();
        }
        for _ in 0..64 {
            let Some(t) = self.s.poll_timeout() else {
                break;
            };
            self.now = self.now.max(t);
            self.timeout();
            self.check();
        }
        assert!(
            self.closed.is_some(),
            "not closed after close and its timers"
        );
        self.transmit();
        self.write(usize::MAX);
        assert!(
            self.peer_answers.is_empty(),
            "reply frames decoded for pulls that never ended: {:?}",
            self.peer_answers.keys().collect::<Vec<_>>()
        );
        if self.out_ok {
            assert!(
                self.peer_rx.is_empty(),
                "the session's output ends inside a frame"
            );
            // Every call of ours the session took went out.
            for seq in self.own_all.iter().chain(&self.own_pushes) {
                assert!(
                    self.own_out.contains(seq),
                    "call {seq} was taken and never written"
                );
            }
            // Every pull the session decoded got one reply, unless a close
            // dropped it in its handler (pulls whose seq the peer used
            // more than once may legitimately be dropped as duplicates).
            for seq in &self.pulls_taken {
                if self.peer_pulls.get(seq) == Some(&1) && !self.abandoned.contains(seq) {
                    assert_eq!(
                        self.replies_out.get(seq),
                        Some(&1),
                        "the peer's pull {seq} got no reply"
                    );
                }
            }
        }
        let now = self.now;
        let frames = self.s.stats().frames_in;
        let token = self.next_token;
        let p = Packet::new(PacketType::PULL, Seq(0), "/echo");
        match self.s.pull(now, p.clone(), None, token) {
            Ok(seq) => panic!("pull {seq} taken after Closed"),
            Err((e, t)) => {
                assert_eq!(t, token);
                self.refused(&e);
            }
        }
        let e = self.s.push(now, p).expect_err("a push after Closed");
        self.refused(&e);
        self.s.handle_input(now, &self.wire.split());
        self.s.handle_eof(now);
        self.s.handle_timeout(now + Duration::from_secs(3600));
        self.s.handle_write_error(now, &"late");
        self.s.handle_io_error(now, &"late");
        self.s.close(now);
        self.s
            .handle_decoded(now, Err(ProtoError::Truncated { have: 0, need: 1 }));
        if let Some(job) = self.decode.take() {
            self.s.handle_decoded(now, job.run());
        }
        assert!(!self.s.has_events(), "events after Closed");
        assert_eq!(self.s.stats().frames_in, frames, "frames read after Closed");
        self.check();
        self.out.closed = self.closed.clone();
        self.out.frames_in = self.s.stats().frames_in;
    }
}

/// Drives a server-side [`Session`] (role acceptor; routes `/echo`, which
/// answers at once, `/hold`, whose pulls the harness answers later or
/// never, and the push route `/sink`; the heartbeat plugin when a flag
/// says) through the operations `data` spells out, then closes it.
///
/// The first byte sets flags: a default pull timeout, the small
/// `max_incoming_bytes`, an idle timeout, no frame timeout, a zero close
/// timeout, no deferred decoding, the heartbeat, and an adapter that holds
/// its output (and says so with [`Session::set_unwritten`]) rather than
/// writing it at once. Then each operation is a byte and its arguments:
/// frames the harness encodes from the input's fields (pulls, pushes,
/// replies to our pulls with right, stale and made-up seqs, unknown types,
/// meta, gzip once or twice, unknown filters, damaged or cut), raw bytes,
/// reads of the wire in chunks, one or until it is drained (only while the
/// session [wants input](Session::wants_input)), pulls and pushes of ours, replies
/// to held pulls (echoes, large, errors, gzip) and to no pull, clock
/// advances (to every configured timeout and around the next deadline),
/// `handle_timeout`, deferred decodes run, failed or dropped, `close`,
/// `close_by` (also in the past), end of input, write and I/O errors,
/// `poll_transmit`, and the peer reading what was written.
///
/// Checks (each an assertion that fails on a wrong session):
///
/// - **no panic**, and `Closed` comes once, last: no event after it; once
///   closed there is no timer, no wish for input, no call left, input, time
///   and errors change nothing, and calls are refused with a 102 that says
///   why it closed;
/// - **every pull of ours ends exactly once** (one `Reply`, under its seq,
///   with the virtual time since it was sent), and for one cause: the
///   peer's reply frame (its packet, or exactly the error its meta
///   carries), its own deadline (408, never before the deadline, and as
///   many as the session counts), or the connection's end (the 102 of the
///   [`CloseReason`] the `Closed` after it gives, or of the end of input
///   when the session stays to answer the peer); a refused pull hands its
///   token back; the session's counts of our pulls and of the peer's held
///   pulls match the harness's;
/// - **every pull of the peer's gets one reply**: never more replies to a
///   seq than pulls with it, and at the end (when writing never failed)
///   exactly one for each pull the session decoded, unless a close dropped
///   it in its handler; a reply to a held pull is taken when it fits the
///   read limit and otherwise is refused with a 500 that goes in its place,
///   and a reply to no held pull is refused;
/// - **nothing accepted is dropped**: every pull and push of ours the
///   session took is written, once, in seq order (pushes we did not make
///   are heartbeat pings), and what was queued when it closed is handed
///   out whole by `poll_transmit`, with nothing added;
/// - **bounded memory**, as multiples of the configured limits: pulls of
///   ours and of the peer's within their counts, bytes of the peer's held
///   pulls under `max_incoming_bytes` plus one frame (and none when no pull
///   is held), unwritten output under [`session_queue_bound`];
/// - **timers**: after `handle_timeout(now)` the next deadline is later
///   than `now` (no livelock), no pull of ours and no graceful close is
///   past its deadline, and a failed write has ended the session after
///   [`WRITE_ERROR_GRACE`];
/// - **input**: the frames decoded are the ones sent, in order; while a
///   frame decodes away, and after the end of input, no input is wanted;
///   once the input has ended and nothing is left to handle the session
///   has closed; a failed decode or an I/O error closes it; everything it
///   writes decodes at the peer's read limit and ends on a frame boundary.
///
/// `start` is the virtual clock's origin (the core reads no clock: the fuzz
/// target passes `Instant::now()`); nothing depends on its value.
pub fn session(data: &[u8], start: Instant) -> SessionOutcome {
    const MAX_OPS: usize = 2048;
    let mut inp = Input(data);
    let mut rig = Rig::new(inp.u8(), start);
    rig.pump();
    rig.check();
    while !inp.is_empty() && rig.out.ops < MAX_OPS {
        rig.out.ops += 1;
        let timeouts = rig.s.stats().timeouts;
        rig.due_timeouts = 0;
        rig.op(&mut inp);
        rig.pump();
        rig.check();
        let fired = rig.s.stats().timeouts - timeouts;
        assert_eq!(
            fired, rig.due_timeouts,
            "pulls the session counts as timed out, and timeouts it reported"
        );
        rig.out.timeouts += fired;
    }
    rig.finish();
    rig.out
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_odd_input() {
        for data in [&b""[..], &[3, 0, 0, 0, 24, b'f', 0], &[0xff; 64]] {
            super::unpack(data);
            super::meta(data);
            super::codecs(data);
            super::gzip(data);
        }
    }

    #[test]
    fn meta_on_escapes_and_over_the_cap() {
        super::meta(b"a+b=c%2x&&=&=v&k&%41=%zz%4");
        super::meta("a&".repeat(crate::Meta::MAX_PAIRS + 1).as_bytes());
    }

    #[test]
    fn deep_json_is_an_error_not_a_stack_overflow() {
        use crate::{CodecId, CodecRegistry};
        for deep in [
            "[".repeat(100_000),
            "{\"a\":".repeat(100_000),
            format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)),
        ] {
            super::codecs(deep.as_bytes());
            let codecs = CodecRegistry::default();
            assert!(codecs
                .decode::<serde_json::Value>(CodecId::JSON, deep.as_bytes())
                .is_err());
            assert!(codecs
                .decode::<super::JsonSample>(CodecId::JSON, deep.as_bytes())
                .is_err());
        }
        // Protobuf: a message nested 100,000 deep in field 7. Level `d`
        // (from the inside) is `3a`, the varint length of level `d - 1`,
        // then that level; the innermost is empty.
        let mut lens = vec![0usize];
        for _ in 1..100_000 {
            let l = *lens.last().unwrap();
            let varint_len = (usize::BITS - l.max(1).leading_zeros()).div_ceil(7) as usize;
            lens.push(l + 1 + varint_len);
        }
        let mut msg = Vec::new();
        for &l in lens.iter().rev() {
            msg.push(0x3a);
            let mut n = l;
            while n >= 0x80 {
                msg.push((n as u8) | 0x80);
                n >>= 7;
            }
            msg.push(n as u8);
        }
        let codecs = CodecRegistry::default();
        assert!(codecs
            .decode::<super::Protobuf<super::ProtoSample>>(CodecId::PROTOBUF, &msg)
            .is_err());
        super::codecs(&msg);
    }

    /// The crash libFuzzer found (`fuzz/artifacts/gzip/crash-a8997187…`):
    /// a header with a reserved flag bit, which flate2 refuses and we read.
    #[test]
    fn fuzz_crash_a8997187() {
        super::gzip(
            &hex::decode(
                "1f8b0841000000000003cb48cdc9c9572849cd492dc82f2ad151c8a0331f0066fb62b380000000",
            )
            .unwrap(),
        );
    }

    #[test]
    fn gzip_on_real_streams() {
        use crate::XferFilter;
        let mut gz = bytes::BytesMut::new();
        crate::Gzip::default()
            .encode(b"hello hello hello", &mut gz)
            .unwrap();
        super::gzip(&gz);
        super::gzip(&super::go_style_gzip(b"hello hello hello", 5));
        super::gzip(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    }

    /// The crash libFuzzer found (`fuzz/artifacts/unpack/crash-cd1f61dc…`):
    /// a gzip frame whose packet re-encodes over the limit.
    #[test]
    fn fuzz_crash_cd1f61dc() {
        let data = hex::decode(concat!(
            "ff000000ea6601671f8b08000000000000ff6280004e260606066efd28e48c7c",
            "fd82a2ffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "ffffffffff878787878787878787878787878787878787878787878787878787",
            "878787878787878787878787878787878787878787878787878787878787ffff",
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "fffffffffffffffffffffffffffffffffffffffffffffffffffc927c90600117",
            "93bfb74034c4825e3625b3172ce865b3de4b50e799fa121833180b181b1817f4",
            "b27530324e6224d3980d2003768088138c8c2740f40b10f18191f1b2fd100099",
            "28080a021001000000ffff",
        ))
        .unwrap();
        super::unpack(&data);
    }
}
