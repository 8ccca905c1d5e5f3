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

use std::collections::{BTreeMap, HashMap};

use bytes::BytesMut;

use crate::codec::{CodecRegistry, Protobuf};
use crate::error::{CodecError, ProtoError, XferError};
use crate::meta::Meta;
use crate::packet::CodecId;
use crate::proto::{FastProto, Proto};
use crate::xfer::{Gzip, XferFilter};

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
