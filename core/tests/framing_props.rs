//! Property tests of the fast proto's framing: round trips of arbitrary
//! packets, frames split anywhere, streams of frames in any chunking,
//! arbitrary bytes against a reference model of the prefix checks and the
//! buffering bounds, and gzip bombs.

use std::io::Write;

use proptest::prelude::*;
use teleport_core::bytes::{BufMut, Bytes, BytesMut};
use teleport_core::{
    CodecId, CodecRegistry, FastProto, Gzip, Meta, Packet, PacketType, Proto, ProtoError, Protobuf,
    Seq, Uri, XferError, XferFilter, XferId, XferPipe, DEFAULT_READ_LIMIT, MAX_EAGER_RESERVE,
    MIN_FRAME,
};

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// Byte strings rich in what URIs and meta must carry through: the bytes
/// meta reserves or escapes, `+`, bytes that are not UTF-8, and multi-byte
/// UTF-8.
fn wire_bytes(max_atoms: usize) -> impl Strategy<Value = Vec<u8>> {
    let atom = prop_oneof![
        4 => prop::sample::select(&b"?&%=#+ /;~"[..]).prop_map(|b| vec![b]),
        3 => prop::char::range('0', 'z').prop_map(|c| vec![c as u8]),
        2 => any::<u8>().prop_map(|b| vec![b]),
        2 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
        1 => Just(b"%4".to_vec()),
        1 => Just(b"%zz".to_vec()),
        1 => Just("许多往事".as_bytes().to_vec()),
    ];
    prop::collection::vec(atom, 0..max_atoms).prop_map(|v| v.concat())
}

/// A meta key or value: often empty, so that pairs with both sides empty
/// (which the encoding drops) come up.
fn meta_part() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![1 => Just(Vec::new()), 3 => wire_bytes(8)]
}

/// Raw meta pairs, as a sender may hold them (both-empty pairs included).
fn raw_meta() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    prop::collection::vec((meta_part(), meta_part()), 0..6)
}

/// What meta a receiver reads back: the same pairs, in order, less those
/// whose key and value are both empty (SPEC §6).
fn normalised(pairs: &[(Vec<u8>, Vec<u8>)]) -> Meta {
    pairs
        .iter()
        .filter(|(k, v)| !(k.is_empty() && v.is_empty()))
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect()
}

/// A small serde value for the JSON codec.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct JsonThing {
    n: i64,
    text: String,
    list: Vec<u32>,
    flag: Option<bool>,
}

/// A small prost message for the protobuf codec.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoThing {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint64, tag = "2")]
    n: u64,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
    #[prost(sint32, repeated, tag = "4")]
    list: Vec<i32>,
}

/// A body and how to check it once it has come back.
#[derive(Debug, Clone)]
enum Body {
    /// Arbitrary bytes under an arbitrary codec id (0, unknown ones too).
    Raw(u8, Vec<u8>),
    Json(JsonThing),
    Proto(ProtoThing),
    Text(String),
}

fn arb_body() -> impl Strategy<Value = Body> {
    let json = (
        any::<i64>(),
        any::<String>(),
        prop::collection::vec(any::<u32>(), 0..5),
        any::<Option<bool>>(),
    )
        .prop_map(|(n, text, list, flag)| {
            Body::Json(JsonThing {
                n,
                text,
                list,
                flag,
            })
        });
    let proto = (
        any::<String>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(any::<i32>(), 0..5),
    )
        .prop_map(|(text, n, data, list)| {
            Body::Proto(ProtoThing {
                text,
                n,
                data,
                list,
            })
        });
    prop_oneof![
        3 => (any::<u8>(), prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(c, b)| Body::Raw(c, b)),
        1 => json,
        1 => proto,
        1 => any::<String>().prop_map(Body::Text),
    ]
}

impl Body {
    /// The codec id and the encoded body, through the registry for typed
    /// values.
    fn encode(&self, codecs: &CodecRegistry) -> (CodecId, Bytes) {
        match self {
            Body::Raw(c, b) => (CodecId(*c), Bytes::copy_from_slice(b)),
            Body::Json(v) => (
                CodecId::JSON,
                codecs.encode_to_bytes(CodecId::JSON, v).unwrap(),
            ),
            Body::Proto(v) => (
                CodecId::PROTOBUF,
                codecs
                    .encode_to_bytes(CodecId::PROTOBUF, &Protobuf(v.clone()))
                    .unwrap(),
            ),
            Body::Text(s) => (
                CodecId::STRING,
                codecs.encode_to_bytes(CodecId::STRING, s).unwrap(),
            ),
        }
    }

    /// Decodes a received body as the type it was sent as and compares.
    fn check(&self, codecs: &CodecRegistry, p: &Packet) -> Result<(), TestCaseError> {
        match self {
            Body::Raw(c, b) => {
                prop_assert_eq!(p.body_codec, CodecId(*c));
                prop_assert_eq!(&p.body[..], &b[..]);
            }
            Body::Json(v) => {
                let back: JsonThing = codecs.decode(p.body_codec, &p.body).unwrap();
                prop_assert_eq!(&back, v);
            }
            Body::Proto(v) => {
                let Protobuf(back): Protobuf<ProtoThing> =
                    codecs.decode(p.body_codec, &p.body).unwrap();
                prop_assert_eq!(&back, v);
            }
            Body::Text(s) => {
                let back: String = codecs.decode(p.body_codec, &p.body).unwrap();
                prop_assert_eq!(&back, s);
            }
        }
        Ok(())
    }
}

/// A packet to send, the packet a receiver must read back, and its body.
#[derive(Debug, Clone)]
struct Case {
    sent: Packet,
    expected: Packet,
    body: Body,
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        any::<u8>(),
        wire_bytes(24),
        raw_meta(),
        arb_body(),
        0usize..=3,
    )
        .prop_map(|(seq, ptype, uri, pairs, body, gzips)| {
            let codecs = CodecRegistry::default();
            let (codec, encoded) = body.encode(&codecs);
            let mut raw_meta = Meta::new();
            for (k, v) in &pairs {
                raw_meta.add(k, v);
            }
            let sent = Packet {
                seq: Seq(seq),
                ptype: PacketType(ptype),
                uri: Uri::from_bytes(uri.into()),
                meta: raw_meta,
                body_codec: codec,
                xfer: XferPipe::from_ids(&vec![XferId::GZIP; gzips]),
                body: encoded,
            };
            let expected = Packet {
                meta: normalised(&pairs),
                ..sent.clone()
            };
            Case {
                sent,
                expected,
                body,
            }
        })
}

fn encode(p: &Packet) -> BytesMut {
    let mut wire = BytesMut::new();
    FastProto::default().encode(p, &mut wire).unwrap();
    wire
}

/// Chunk sizes to feed a stream in, used in a cycle.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![3 => 1usize..8, 2 => 8usize..120, 1 => 120usize..2000],
        1..12,
    )
}

// ---------------------------------------------------------------------------
// Round trips and splits
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any packet (every seq, ptype, codec id, URI and meta bytes, gzip 0
    /// to 3 times) decodes to itself, its meta normalised; its frame has
    /// the documented layout and re-encodes byte for byte.
    #[test]
    fn any_packet_round_trips(case in arb_case()) {
        let codecs = CodecRegistry::default();
        let mut proto = FastProto::default();
        let wire = encode(&case.sent);
        let frame = wire.clone().freeze();

        // Layout: size, 'f', the filter count and ids.
        let n = case.sent.xfer.len();
        prop_assert_eq!(u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize, frame.len());
        prop_assert_eq!(frame[4], b'f');
        prop_assert_eq!(usize::from(frame[5]), n);
        prop_assert!(frame[6..6 + n].iter().all(|b| *b == b'g'));
        if n == 0 {
            let s = &case.sent;
            prop_assert_eq!(
                frame.len(),
                MIN_FRAME + s.uri.len() + s.meta.encoded_len() + s.body.len()
            );
        }

        let mut src = wire;
        let got = proto.decode(&mut src).unwrap();
        prop_assert!(src.is_empty(), "{} bytes left behind", src.len());
        let got = got.expect("a whole frame decodes");
        prop_assert_eq!(&got, &case.expected);
        case.body.check(&codecs, &got)?;

        // What was read back re-encodes to the very same bytes: the
        // dropped empty pairs were never on the wire.
        prop_assert_eq!(&encode(&got)[..], &frame[..]);
    }

    /// A frame split at any byte boundary waits (`Ok(None)`, buffer left
    /// as it was) until the last byte, then decodes the same; at end of
    /// input a strict prefix is `Truncated`.
    #[test]
    fn any_split_decodes_the_same(case in arb_case()) {
        let mut proto = FastProto::default();
        let wire = encode(&case.sent);
        for k in 0..wire.len() {
            let mut src = BytesMut::from(&wire[..k]);
            prop_assert_eq!(proto.decode(&mut src), Ok(None), "prefix of {} bytes", k);
            prop_assert_eq!(&src[..], &wire[..k]);

            let mut eof = src.clone();
            let want = if k == 0 {
                Ok(None)
            } else {
                Err(ProtoError::Truncated {
                    have: k,
                    need: if k < 4 { 4 } else { wire.len() },
                })
            };
            prop_assert_eq!(proto.decode_eof(&mut eof), want);

            src.extend_from_slice(&wire[k..]);
            let got = proto.decode(&mut src).unwrap();
            prop_assert_eq!(got.as_ref(), Some(&case.expected), "split at {}", k);
            prop_assert!(src.is_empty());
        }
    }

    /// Several frames in one stream decode to the same packets in order,
    /// whatever chunks the bytes arrive in.
    #[test]
    fn any_stream_in_any_chunks(
        cases in prop::collection::vec(arb_case(), 1..8),
        chunks in chunk_sizes(),
    ) {
        let mut proto = FastProto::default();
        let mut wire = BytesMut::new();
        let mut largest = 0;
        for c in &cases {
            let before = wire.len();
            proto.encode(&c.sent, &mut wire).unwrap();
            largest = largest.max(wire.len() - before);
        }
        let mut src = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        for size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            src.extend_from_slice(chunk);
            while let Some(p) = proto.decode(&mut src).unwrap() {
                got.push(p);
            }
            // Whatever waits is less than one frame.
            prop_assert!(src.len() < largest);
        }
        prop_assert!(src.is_empty());
        prop_assert_eq!(proto.decode_eof(&mut src), Ok(None));
        let want: Vec<&Packet> = cases.iter().map(|c| &c.expected).collect();
        let got: Vec<&Packet> = got.iter().collect();
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------
// Arbitrary bytes against a reference model
// ---------------------------------------------------------------------------

/// A declared frame size, either absolute or relative to the read limit
/// (so sizes right at the limit come up whatever the limit is).
#[derive(Debug, Clone)]
enum Declared {
    Abs(u32),
    NearLimit(i16),
}

impl Declared {
    fn resolve(&self, limit: usize) -> u32 {
        match self {
            Declared::Abs(n) => *n,
            Declared::NearLimit(d) => {
                (limit as i64 + i64::from(*d)).clamp(0, i64::from(u32::MAX)) as u32
            }
        }
    }
}

/// A piece of an input stream.
#[derive(Debug, Clone)]
enum Segment {
    /// Bytes of no particular shape.
    Noise(Vec<u8>),
    /// A well-formed frame.
    Frame(Packet),
    /// A well-formed frame with one byte changed.
    Mutated(Packet, prop::sample::Index, u8),
    /// A frame prefix: declared size, protocol id (mostly `'f'`), filter
    /// count and ids, then bytes.
    Header {
        size: Declared,
        id: u8,
        ids: Vec<u8>,
        rest: Vec<u8>,
    },
}

fn arb_segment() -> impl Strategy<Value = Segment> {
    let declared = prop_oneof![
        2 => (0u32..64).prop_map(Declared::Abs),
        2 => (-40i16..40).prop_map(Declared::NearLimit),
        1 => any::<u32>().prop_map(Declared::Abs),
        1 => ((u32::MAX - 64)..=u32::MAX).prop_map(Declared::Abs),
    ];
    let packet = || arb_case().prop_map(|c| c.sent);
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Segment::Noise),
        2 => packet().prop_map(Segment::Frame),
        2 => (packet(), any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(p, i, b)| Segment::Mutated(p, i, b)),
        3 => (
            declared,
            prop_oneof![4 => Just(b'f'), 1 => any::<u8>()],
            prop::collection::vec(prop_oneof![3 => Just(b'g'), 1 => any::<u8>()], 0..6),
            prop::collection::vec(any::<u8>(), 0..80),
        )
            .prop_map(|(size, id, ids, rest)| Segment::Header { size, id, ids, rest }),
    ]
}

fn render(segments: &[Segment], limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segments {
        match s {
            Segment::Noise(b) => out.extend_from_slice(b),
            Segment::Frame(p) => out.extend_from_slice(&encode(p)),
            Segment::Mutated(p, i, b) => {
                let mut f = encode(p);
                let at = i.index(f.len());
                f[at] ^= (*b).max(1);
                out.extend_from_slice(&f);
            }
            Segment::Header {
                size,
                id,
                ids,
                rest,
            } => {
                out.put_u32(size.resolve(limit));
                out.put_u8(*id);
                out.put_u8(ids.len() as u8);
                out.extend_from_slice(ids);
                out.extend_from_slice(rest);
            }
        }
    }
    out
}

/// What the prefix of a buffer must make `decode` do before any payload
/// is parsed: the checks of SPEC §13 items 1 and 2, written out again.
enum Expect {
    /// Not a whole frame yet: `Ok(None)`, the buffer unchanged.
    Wait { size: Option<usize> },
    /// This error, straight away.
    Fail(ProtoError),
    /// A whole frame of this size: a packet, or a payload error.
    Frame(usize),
}

fn model(buf: &[u8], limit: usize) -> Expect {
    let Some(head) = buf.first_chunk::<4>() else {
        return Expect::Wait { size: None };
    };
    let size = u32::from_be_bytes(*head) as usize;
    if size < MIN_FRAME {
        return Expect::Fail(ProtoError::SizeTooSmall {
            size,
            min: MIN_FRAME,
        });
    }
    if size > limit {
        return Expect::Fail(ProtoError::SizeOverLimit { size, limit });
    }
    if let Some(&id) = buf.get(4) {
        if id != b'f' {
            return Expect::Fail(ProtoError::WrongProtoId {
                found: id,
                expected: b'f',
            });
        }
    }
    if let Some(&n) = buf.get(5) {
        let min = MIN_FRAME + usize::from(n);
        if size < min {
            return Expect::Fail(ProtoError::SizeTooSmall { size, min });
        }
    }
    if buf.len() < size {
        Expect::Wait { size: Some(size) }
    } else {
        Expect::Frame(size)
    }
}

fn arb_limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => MIN_FRAME..=600usize,
        3 => 600usize..=8192,
        1 => Just(DEFAULT_READ_LIMIT),
        1 => Just(u32::MAX as usize),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary input in arbitrary chunks: `decode` never panics, does
    /// exactly what the model of the prefix checks says (in particular it
    /// fails as soon as four bytes declare a size over the limit), never
    /// waits holding a frame's worth of bytes over the limit, and never
    /// reserves more than `MAX_EAGER_RESERVE` beyond what has arrived,
    /// whatever size is declared.
    #[test]
    fn arbitrary_input_obeys_the_model(
        segments in prop::collection::vec(arb_segment(), 1..6),
        chunks in chunk_sizes(),
        limit in arb_limit(),
    ) {
        let data = render(&segments, limit);
        let mut proto = FastProto::default().with_limit(limit);
        prop_assert_eq!(proto.limit(), limit);
        let mut src = BytesMut::new();
        let mut fed = 0usize;
        let mut rest = &data[..];
        let max_chunk = chunks.iter().copied().max().unwrap_or(1);
        // The most any single `reserve` asks for: a chunk being appended,
        // or the decoder's eager reserve, which a size over the limit never
        // reaches.
        let max_ask = max_chunk.max(limit.min(MAX_EAGER_RESERVE));
        'feed: for size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            src.extend_from_slice(chunk);
            fed += chunk.len();
            loop {
                let before = src.to_vec();
                let expect = model(&before, limit);
                let got = proto.decode(&mut src);
                match expect {
                    Expect::Wait { size } => {
                        prop_assert_eq!(&got, &Ok(None));
                        prop_assert_eq!(&src[..], &before[..]);
                        // Waiting never holds a frame's worth over the limit.
                        prop_assert!(src.len() < limit.max(4));
                        if let Some(size) = size {
                            check_eager_reserve(&before, size, limit)?;
                        }
                        break;
                    }
                    Expect::Fail(e) => {
                        prop_assert_eq!(got, Err(e));
                        break 'feed;
                    }
                    Expect::Frame(size) => match got {
                        Ok(Some(p)) => {
                            prop_assert_eq!(&src[..], &before[size..]);
                            check_reencodes(&p, limit)?;
                        }
                        Ok(None) => prop_assert!(false, "a whole frame of {} bytes waited", size),
                        Err(e) => {
                            prop_assert!(
                                matches!(e, ProtoError::PastEnd { .. } | ProtoError::Xfer(_)),
                                "a whole frame failed with a prefix error: {:?}", e
                            );
                            break 'feed;
                        }
                    },
                }
            }
            // Growth is amortised doubling of what was actually fed or
            // asked for, never a declared size (see `check_eager_reserve`
            // for the per-call bound).
            prop_assert!(
                src.capacity() <= 2 * (fed + max_ask),
                "capacity {} after {} bytes fed (limit {})", src.capacity(), fed, limit
            );
        }
    }
}

/// A buffer holding a strict prefix of a frame declaring `size` bytes: one
/// `decode` call reserves room for the rest of the frame, up to
/// `MAX_EAGER_RESERVE`, and not more (a `Vec` may at most double).
fn check_eager_reserve(prefix: &[u8], size: usize, limit: usize) -> Result<(), TestCaseError> {
    let mut fresh = BytesMut::from(prefix);
    let len = fresh.len();
    let cap0 = fresh.capacity();
    let got = FastProto::default().with_limit(limit).decode(&mut fresh);
    prop_assert_eq!(got, Ok(None));
    let want = (size - len).min(MAX_EAGER_RESERVE);
    let cap = fresh.capacity();
    prop_assert!(
        cap - len >= want,
        "reserved {} of {} wanted",
        cap - len,
        want
    );
    prop_assert!(
        cap <= (2 * cap0).max(len + want).max(8),
        "capacity {} for {} bytes that declare {}",
        cap,
        len,
        size
    );
    Ok(())
}

/// A decoded packet re-encodes to a frame that decodes to it, unless our
/// gzip makes it larger than the limit.
fn check_reencodes(p: &Packet, limit: usize) -> Result<(), TestCaseError> {
    let mut proto = FastProto::default().with_limit(limit);
    let mut wire = BytesMut::new();
    match proto.encode(p, &mut wire) {
        Ok(()) => {
            let again = proto.decode(&mut wire).unwrap();
            prop_assert_eq!(again.as_ref(), Some(p));
            prop_assert!(wire.is_empty());
        }
        Err(e) => {
            prop_assert!(matches!(e, ProtoError::SizeOverLimit { .. }), "{:?}", e);
            prop_assert!(wire.is_empty());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Limits and gzip bombs
// ---------------------------------------------------------------------------

/// A payload (SPEC §2) whose body is `body_len` zero bytes.
fn zero_payload(body_len: usize) -> Vec<u8> {
    let uri = b"/bomb";
    let mut p = Vec::with_capacity(MIN_FRAME + uri.len() + body_len);
    p.put_u64(7);
    p.put_u8(PacketType::PULL.0);
    p.put_u32(uri.len() as u32);
    p.extend_from_slice(uri);
    p.put_u32(0);
    p.put_u8(CodecId::STRING.0);
    p.resize(p.len() + body_len, 0);
    p
}

/// A gzip member with a trailer, as our writer makes it.
fn gzip_member(data: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    Gzip::default().encode(data, &mut out).unwrap();
    out.to_vec()
}

/// Go's gzip form (SPEC §4): the 10-byte header, then a deflate stream
/// ending in a sync flush, with no final block and no trailer. The stream is
/// `data` compressed `repeat` times over: each sync-flushed part only refers
/// back to zeros, so a run of zeros can be stretched for free.
fn gzip_go_form(data: &[u8], repeat: usize) -> Vec<u8> {
    let mut part = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(9));
    part.write_all(data).unwrap();
    part.flush().unwrap(); // a sync flush: ends on 00 00 ff ff
    let part = part.get_ref().clone();
    assert!(part.ends_with(&[0, 0, 0xff, 0xff]));
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for _ in 0..repeat {
        out.extend_from_slice(&part);
    }
    out
}

/// A frame whose filter list is `ids` and whose (already filtered)
/// payload is `payload`.
fn frame(ids: &[u8], payload: &[u8]) -> BytesMut {
    let mut f = BytesMut::new();
    f.put_u32((6 + ids.len() + payload.len()) as u32);
    f.put_u8(b'f');
    f.put_u8(ids.len() as u8);
    f.put_slice(ids);
    f.put_slice(payload);
    f
}

fn over_limit(limit: usize) -> ProtoError {
    ProtoError::Xfer(XferError::OutputOverLimit {
        id: XferId::GZIP,
        limit,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A gzip payload inflating to at most the limit is accepted; one byte
    /// more is `OutputOverLimit`, in both gzip forms, although the frame
    /// itself is far below the limit.
    #[test]
    fn gzip_output_is_held_to_the_limit(
        limit in 1024usize..32768,
        delta in prop_oneof![Just(0i64), Just(1), -64i64..64],
        go_form in any::<bool>(),
    ) {
        let payload_len = (limit as i64 + delta) as usize;
        let payload = zero_payload(payload_len - 23);
        prop_assert_eq!(payload.len(), payload_len);
        let gz = if go_form { gzip_go_form(&payload, 1) } else { gzip_member(&payload) };
        let mut src = frame(b"g", &gz);
        prop_assert!(src.len() < limit / 4);
        let got = FastProto::default().with_limit(limit).decode(&mut src);
        if payload_len <= limit {
            let p = got.unwrap().expect("whole frame");
            prop_assert_eq!(p.body.len(), payload_len - 23);
            prop_assert!(p.body.iter().all(|b| *b == 0));
        } else {
            prop_assert_eq!(got, Err(over_limit(limit)));
        }
    }
}

/// A 1 GiB bomb in a frame of about 1 MiB (deflate's best ratio is about
/// 1:1032): refused once the output passes the 2 MiB limit, without
/// inflating the rest (inflating 1 GiB would take this debug build many
/// seconds and a gigabyte).
#[test]
fn gigabyte_bomb_is_refused() {
    let mib = vec![0u8; 1 << 20];
    let gz = gzip_go_form(&mib, 1024);
    let mut src = frame(b"g", &gz);
    let limit = 2 << 20;
    assert!(src.len() < limit, "frame is {} bytes", src.len());
    let got = FastProto::default().with_limit(limit).decode(&mut src);
    assert_eq!(got, Err(over_limit(limit)));
}

/// The limit applies to each filter's output: an outer layer that inflates
/// to a small inner bomb passes, the inner one is stopped.
#[test]
fn nested_bomb_is_refused_at_the_inner_layer() {
    let limit = 256 << 10;
    let inner = gzip_go_form(&vec![0u8; 1 << 20], 64); // 64 MiB of zeros
    assert!(inner.len() < limit);
    let outer = gzip_member(&inner);
    let mut src = frame(b"gg", &outer);
    assert!(src.len() < 4096);
    let got = FastProto::default().with_limit(limit).decode(&mut src);
    assert_eq!(got, Err(over_limit(limit)));
}

/// A frame whose size equals the limit is accepted; one over is refused
/// from its first four bytes, before any more arrive (SPEC §10).
#[test]
fn frame_at_the_limit_is_accepted() {
    let p = Packet::new(PacketType::PUSH, Seq(3), "/x").with_body(CodecId::STRING, vec![b'a'; 100]);
    let wire = encode(&p);
    let at = wire.len();
    let mut src = wire.clone();
    assert_eq!(
        FastProto::default()
            .with_limit(at)
            .decode(&mut src)
            .unwrap(),
        Some(p.clone())
    );
    let mut head = BytesMut::from(&wire[..4]);
    assert_eq!(
        FastProto::default().with_limit(at - 1).decode(&mut head),
        Err(ProtoError::SizeOverLimit {
            size: at,
            limit: at - 1
        })
    );
    // Encoding is held to the same limit, and leaves `dst` as it was.
    let mut dst = BytesMut::from(&b"keep"[..]);
    assert_eq!(
        FastProto::default().with_limit(at - 1).encode(&p, &mut dst),
        Err(ProtoError::SizeOverLimit {
            size: at,
            limit: at - 1
        })
    );
    assert_eq!(&dst[..], b"keep");
}

/// Four bytes declaring 4 GiB − 1 under the largest limit: the decoder
/// waits with at most `MAX_EAGER_RESERVE` reserved, and still does after
/// more bytes arrive.
#[test]
fn huge_declared_size_reserves_little() {
    let mut proto = FastProto::default().with_limit(u32::MAX as usize);
    let mut src = BytesMut::new();
    src.put_u32(u32::MAX);
    src.put_u8(b'f');
    src.put_u8(0);
    assert_eq!(proto.decode(&mut src), Ok(None));
    assert!(src.capacity() >= MAX_EAGER_RESERVE);
    assert!(
        src.capacity() <= 6 + MAX_EAGER_RESERVE,
        "{}",
        src.capacity()
    );
    for _ in 0..16 {
        src.extend_from_slice(&[0u8; 1000]);
        assert_eq!(proto.decode(&mut src), Ok(None));
    }
    assert!(
        src.capacity() <= 2 * (src.len() + MAX_EAGER_RESERVE),
        "{}",
        src.capacity()
    );
    assert_eq!(
        proto.decode_eof(&mut src),
        Err(ProtoError::Truncated {
            have: 16_006,
            need: 0xFFFF_FFFF
        })
    );
}

/// The receiver checks every layer it unwraps against its read limit, so
/// the sender refuses a frame whose plain payload is over it, even when
/// gzip makes the wire frame small.
#[test]
fn a_payload_over_the_limit_is_refused_before_gzip_hides_it() {
    use teleport_core::{
        CodecId, FastProto, Packet, PacketType, Proto, ProtoError, Seq, XferId, XferPipe,
    };
    let mut proto = FastProto::default().with_limit(4096);
    let mut p =
        Packet::new(PacketType::REPLY, Seq(1), "/x").with_body(CodecId::STRING, vec![b'a'; 8000]);
    p.xfer = XferPipe::from_ids(&[XferId::GZIP]);
    let mut dst = teleport_core::bytes::BytesMut::new();
    let e = proto.encode(&p, &mut dst).unwrap_err();
    assert!(
        matches!(e, ProtoError::SizeOverLimit { limit: 4096, .. }),
        "{e}"
    );
    assert!(dst.is_empty());
    p.body = vec![b'a'; 4000].into();
    proto.encode(&p, &mut dst).unwrap();
    assert!(dst.len() < 200, "compressed");
    assert_eq!(proto.decode(&mut dst).unwrap(), Some(p));
}
