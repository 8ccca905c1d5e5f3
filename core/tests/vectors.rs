//! Golden vectors: frames captured from Go teleport v3 (copied from the
//! project's shared protocol notes into `tests/data/vectors.jsonl`).
//!
//! Valid frames must decode to exactly the captured fields and re-encode to
//! exactly the captured bytes (with gzip: to a frame that decodes to the same
//! packet). Rejects must give a typed error, never a panic or a wait for
//! bytes that cannot come.

use std::sync::Arc;

use bytes::BytesMut;
use serde_json::Value;
use teleport_core::{
    CodecError, CodecId, CodecRegistry, FastProto, Gzip, Packet, PacketType, Proto, ProtoError,
    Rerror, XferError, XferFilter, XferId, XferRegistry,
};

fn vectors() -> Vec<Value> {
    include_str!("data/vectors.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("vector line is JSON"))
        .collect()
}

fn bytes_of(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap_or_default()).expect("hex")
}

fn decode_all(proto: &mut FastProto, wire: &[u8]) -> Result<Vec<Packet>, ProtoError> {
    let mut src = BytesMut::from(wire);
    let mut out = Vec::new();
    while let Some(p) = proto.decode_eof(&mut src)? {
        out.push(p);
    }
    Ok(out)
}

/// Checks a decoded packet against a vector's `decoded` object.
fn check_fields(id: &str, p: &Packet, d: &Value) {
    let seq: u64 = d["seq_str"].as_str().unwrap().parse().unwrap();
    assert_eq!(p.seq.0, seq, "{id}: seq");
    assert_eq!(
        u64::from(p.ptype.0),
        d["ptype"].as_u64().unwrap(),
        "{id}: ptype"
    );
    assert_eq!(
        p.uri.as_bytes(),
        d["uri"].as_str().unwrap().as_bytes(),
        "{id}: uri"
    );
    let meta: Vec<(String, String)> = p
        .meta
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            )
        })
        .collect();
    let want_meta: Vec<(String, String)> = d["meta"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            (
                kv[0].as_str().unwrap().to_string(),
                kv[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(meta, want_meta, "{id}: meta");
    assert_eq!(
        p.meta.to_string(),
        d["meta_raw"].as_str().unwrap(),
        "{id}: meta_raw"
    );
    assert_eq!(
        u64::from(p.body_codec.0),
        d["body_codec_id"].as_u64().unwrap(),
        "{id}: codec"
    );
    let xfer: Vec<String> = p.xfer.iter().map(|x| char::from(x.0).to_string()).collect();
    let want_xfer: Vec<String> = d["xfer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(xfer, want_xfer, "{id}: xfer");
    assert_eq!(
        hex::encode(&p.body),
        d["body_hex"].as_str().unwrap(),
        "{id}: body"
    );
}

/// Decodes `wire` (one frame), checks it against `decoded`, re-encodes it
/// and checks the bytes (exactly without gzip, by decoding again with it).
fn check_frame(id: &str, wire: &[u8], d: &Value) {
    let mut proto = FastProto::default();
    let packets = decode_all(&mut proto, wire).unwrap_or_else(|e| panic!("{id}: {e}"));
    assert_eq!(packets.len(), 1, "{id}: one frame");
    let p = &packets[0];
    assert_eq!(
        d["size"].as_u64().unwrap() as usize,
        wire.len(),
        "{id}: size"
    );
    check_fields(id, p, d);
    let mut again = BytesMut::new();
    proto.encode(p, &mut again).unwrap();
    if p.xfer.is_empty() {
        assert_eq!(hex::encode(&again), hex::encode(wire), "{id}: re-encoding");
    } else {
        // Another deflate implementation: compare packets, and check the
        // gzip layer is a gzip member Go's reader takes (RFC 1952 header,
        // deflate, CRC and length).
        let back = decode_all(&mut proto, &again).unwrap();
        assert_eq!(back, packets, "{id}: gzip round trip");
        let pipe_len = p.xfer.len();
        assert_eq!(
            &again[6 + pipe_len..6 + pipe_len + 3],
            &[0x1f, 0x8b, 8],
            "{id}: gzip header"
        );
        let mut gz = flate2::read::GzDecoder::new(&again[6 + pipe_len..]);
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut gz, &mut plain).expect("a complete gzip member");
        assert!(!plain.is_empty());
    }
}

#[test]
fn every_valid_and_edge_frame_decodes_and_reencodes() {
    let mut checked = 0;
    for v in vectors() {
        let id = v["id"].as_str().unwrap();
        let wire = bytes_of(&v, "hex");
        if v["kind"] != "reject" && v.get("decoded").is_some() {
            check_frame(id, &wire, &v["decoded"]);
            checked += 1;
        }
        if let Some(reply) = v.get("go_session").and_then(|s| s.get("reply")) {
            let reply_wire = bytes_of(&v["go_session"], "reply_hex");
            check_frame(&format!("{id} (Go's reply)"), &reply_wire, reply);
            checked += 1;
        }
    }
    assert!(checked >= 50, "only {checked} frames checked");
}

#[test]
fn gzip_frames_from_go_decode_to_their_plain_payload() {
    let v = vectors()
        .into_iter()
        .find(|v| v["id"] == "gzip_ok_crafted")
        .unwrap();
    let wire = bytes_of(&v, "hex");
    let plain = hex::decode(v["decoded"]["plain_hex"].as_str().unwrap()).unwrap();
    let mut out = BytesMut::new();
    // Skip the 6-byte prefix and the one filter id.
    Gzip::default()
        .decode(&wire[7..], 1 << 20, &mut out)
        .unwrap();
    assert_eq!(&out[..], &plain[..]);
}

/// What each reject (and each edge that only a later layer refuses) gives.
#[derive(Debug)]
enum Want {
    /// The stream ended cleanly before any frame: no packet, no error.
    CleanEnd,
    /// The framing layer refuses the bytes.
    Frame(fn(&ProtoError) -> bool),
    /// The frame is fine; decoding its body into the handler's type fails.
    Body(fn(&CodecError) -> bool),
    /// The frame is fine; the session refuses its packet type.
    UnknownPtype,
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Obj {
    a: i64,
    b: String,
    c: Option<Vec<i64>>,
}

fn expected(id: &str) -> Option<(Want, usize)> {
    use ProtoError as P;
    let default = teleport_core::DEFAULT_READ_LIMIT;
    let w = match id {
        // Go returns EOF; no byte came, so this is a clean end here.
        "empty_input" => Want::CleanEnd,
        "short_length_prefix" => Want::Frame(|e| *e == P::Truncated { have: 2, need: 4 }),
        "length_only" => Want::Frame(|e| *e == P::Truncated { have: 4, need: 39 }),
        "truncated_body" => Want::Frame(|e| *e == P::Truncated { have: 30, need: 39 }),
        // Go panics on these (D-PANIC-BOUNDS); we name the field.
        "size_below_minimum" => Want::Frame(|e| *e == P::SizeTooSmall { size: 5, min: 24 }),
        "size_6_no_header" => Want::Frame(|e| *e == P::SizeTooSmall { size: 6, min: 24 }),
        "short_header_no_urilen" => Want::Frame(|e| *e == P::SizeTooSmall { size: 15, min: 24 }),
        "uri_len_past_end" => Want::Frame(|e| {
            matches!(
                e,
                P::PastEnd {
                    field: "uri",
                    need: 65535,
                    ..
                }
            )
        }),
        "missing_body_codec" => Want::Frame(|e| {
            matches!(
                e,
                P::PastEnd {
                    field: "body codec",
                    need: 1,
                    left: 0
                }
            )
        }),
        "wrong_proto_id" => Want::Frame(|e| {
            *e == P::WrongProtoId {
                found: b'x',
                expected: b'f',
            }
        }),
        "unknown_xfer_id" => Want::Frame(|e| *e == P::Xfer(XferError::Unknown { id: XferId(122) })),
        "bad_gzip" => Want::Frame(|e| {
            matches!(
                e,
                P::Xfer(XferError::Malformed {
                    id: XferId::GZIP,
                    ..
                })
            )
        }),
        "over_read_limit" => {
            return Some((
                Want::Frame(|e| {
                    *e == P::SizeOverLimit {
                        size: 1048577,
                        limit: 1048576,
                    }
                }),
                1048576,
            ))
        }
        "max_length" => Want::Frame(|e| {
            matches!(
                e,
                P::SizeOverLimit {
                    size: 0xFFFF_FFFF,
                    ..
                }
            )
        }),
        "http_garbage" => {
            return Some((
                Want::Frame(|e| {
                    matches!(
                        e,
                        P::SizeOverLimit {
                            size: 0x4745_5420,
                            ..
                        }
                    )
                }),
                1048576,
            ))
        }
        // With no limit at all, a declared 256 MiB waits for its bytes
        // without reserving them (D-PREALLOC), then is cut short at EOF.
        "declared_256MiB_unlimited" => {
            return Some((
                Want::Frame(|e| {
                    matches!(
                        e,
                        P::Truncated {
                            have: 39,
                            need: 268435456
                        }
                    )
                }),
                u32::MAX as usize,
            ))
        }
        "unknown_codec_with_body" => {
            Want::Body(|e| *e == CodecError::UnknownId { id: CodecId(120) })
        }
        "codec_zero_with_body" => Want::Body(|e| *e == CodecError::UnknownId { id: CodecId(0) }),
        "invalid_json_body" => {
            Want::Body(|e| matches!(e, CodecError::Decode { codec: "json", .. }))
        }
        "json_type_mismatch" => {
            Want::Body(|e| matches!(e, CodecError::Decode { codec: "json", .. }))
        }
        "ptype_unknown" | "ptype_zero" => Want::UnknownPtype,
        _ => return None,
    };
    Some((w, default))
}

#[test]
fn every_reject_gives_its_typed_error() {
    let codecs = CodecRegistry::default();
    let mut seen = 0;
    for v in vectors() {
        let id = v["id"].as_str().unwrap();
        if v["kind"] != "reject" {
            continue;
        }
        let (want, limit) =
            expected(id).unwrap_or_else(|| panic!("reject {id} has no expectation"));
        let wire = bytes_of(&v, "hex");
        let mut proto = FastProto::new(limit, Arc::new(XferRegistry::default()));
        let got = decode_all(&mut proto, &wire);
        match want {
            Want::CleanEnd => assert_eq!(got, Ok(vec![]), "{id}"),
            Want::Frame(ok) => {
                let e = got.expect_err(id);
                assert!(ok(&e), "{id}: unexpected error {e:?}");
            }
            Want::Body(ok) => {
                let p = got.unwrap_or_else(|e| panic!("{id}: frame should decode: {e}"));
                let e = codecs
                    .decode::<Obj>(p[0].body_codec, &p[0].body)
                    .expect_err(id);
                assert!(ok(&e), "{id}: unexpected error {e:?}");
            }
            Want::UnknownPtype => {
                let p = got.unwrap_or_else(|e| panic!("{id}: frame should decode: {e}"));
                assert!(!p[0].ptype.is_known(), "{id}");
            }
        }
        seen += 1;
    }
    assert_eq!(seen, 22, "every reject vector checked");
}

#[test]
fn a_declared_size_is_not_reserved_before_it_arrives() {
    let v = vectors()
        .into_iter()
        .find(|v| v["id"] == "declared_256MiB_unlimited")
        .unwrap();
    let mut proto = FastProto::new(u32::MAX as usize, Arc::new(XferRegistry::default()));
    let mut src = BytesMut::from(&bytes_of(&v, "hex")[..]);
    assert_eq!(proto.decode(&mut src), Ok(None));
    assert!(
        src.capacity() <= 39 + teleport_core::MAX_EAGER_RESERVE,
        "{}",
        src.capacity()
    );
}

#[test]
fn edges_decode_as_their_notes_say() {
    let all = vectors();
    let get = |id: &str| all.iter().find(|v| v["id"] == id).unwrap();
    let mut proto = FastProto::default();
    let codecs = CodecRegistry::default();

    // Two frames in one write come out as two packets, in order.
    let two = decode_all(&mut proto, &bytes_of(get("two_frames_one_write"), "hex")).unwrap();
    assert_eq!(two.iter().map(|p| p.seq.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(&two[1].body[..], b"def");

    // An unknown codec with an empty body is not noticed when reading.
    let p = &decode_all(
        &mut proto,
        &bytes_of(get("unknown_codec_empty_body"), "hex"),
    )
    .unwrap()[0];
    assert_eq!(p.body_codec, CodecId(b'x'));
    assert!(codecs
        .decode::<Option<Obj>>(p.body_codec, &p.body)
        .unwrap()
        .is_none());

    // A reply for an unknown seq and a URI Go cannot parse are still frames.
    let p = &decode_all(&mut proto, &bytes_of(get("reply_unknown_seq"), "hex")).unwrap()[0];
    assert_eq!((p.ptype, p.seq.0), (PacketType::REPLY, 77));
    let p = &decode_all(&mut proto, &bytes_of(get("bad_uri_escape"), "hex")).unwrap()[0];
    assert_eq!(p.uri.path(), b"/echo/json%zz");
}

#[test]
fn go_error_replies_read_back() {
    let all = vectors();
    let mut proto = FastProto::default();
    let reply_of = |id: &str| {
        let v = all.iter().find(|v| v["id"] == id).unwrap();
        if v["kind"] == "valid" {
            bytes_of(v, "hex")
        } else {
            bytes_of(&v["go_session"], "reply_hex")
        }
    };
    let nf = &decode_all(&mut proto, &reply_of("pull_not_found.1.s2c")).unwrap()[0];
    let e = Rerror::from_meta(&nf.meta).expect("an error reply");
    assert_eq!((e.code, e.message.as_str()), (404, "Not Found"));
    assert!(nf.body.is_empty());
    assert_eq!(e, Rerror::not_found());

    let code_only = &decode_all(&mut proto, &reply_of("pull_rerror_code_only.1.s2c")).unwrap()[0];
    let e = Rerror::from_meta(&code_only.meta).unwrap();
    assert!(e.message.is_empty() && e.detail.is_empty());
    // Our encoding of that error is byte-identical to Go's.
    assert_eq!(
        code_only.meta.get(Rerror::META_KEY).unwrap(),
        e.to_json(),
        "code-only JSON matches Go's"
    );

    let bad = &decode_all(&mut proto, &reply_of("pull_bad_uri.1.s2c")).unwrap()[0];
    let e = Rerror::from_meta(&bad.meta).unwrap();
    assert_eq!(e.code, 400);
    assert!(e.message.starts_with("Bad Packet"), "{}", e.message);

    let ok = &decode_all(&mut proto, &reply_of("pull_json.1.s2c")).unwrap()[0];
    assert_eq!(Rerror::from_meta(&ok.meta), None);
}

/// A server session fed the bytes a Go client sent answers as the live Go
/// server did: byte for byte, except where the notes say we differ on
/// purpose. Session-level rejects close the session as Go's does.
mod against_go_server {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use teleport_core::{CloseReason, Event, Role, Router, Session, Shared};

    /// Feeds `wire` to an acceptor whose `/echo/*` handlers echo the body
    /// in its codec; returns the frames it wrote and how it ended, if it did.
    fn serve(wire: &[u8]) -> (Vec<Vec<u8>>, Option<CloseReason>) {
        let mut r = Router::new();
        r.pull("/echo/string", ()).pull("/echo/json", ());
        let mut s: Session<(), ()> =
            Session::new(Arc::new(Shared::new(r)), Role::Acceptor, 1, Instant::now());
        let now = Instant::now();
        s.handle_input(now, wire);
        let mut closed = None;
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Pull(p) => {
                    let echo = Packet::default().with_body(p.reply_codec, p.packet.body.clone());
                    s.reply(now, p.seq, Ok(echo)).unwrap();
                }
                Event::Closed(reason) => closed = Some(reason),
                _ => {}
            }
        }
        let mut out = BytesMut::new();
        s.poll_transmit(&mut out);
        let mut frames = Vec::new();
        let mut proto = FastProto::default();
        while !out.is_empty() {
            let before = out.clone();
            proto.decode(&mut out).unwrap().expect("whole frames");
            frames.push(before[..before.len() - out.len()].to_vec());
        }
        (frames, closed)
    }

    #[test]
    fn replies_match_the_go_server_byte_for_byte() {
        let all = vectors();
        for id in ["ok_reference", "empty_uri_pull", "two_frames_one_write"] {
            let v = all.iter().find(|v| v["id"] == id).unwrap();
            let go = bytes_of(&v["go_session"], "reply_hex");
            let (ours, closed) = serve(&bytes_of(v, "hex"));
            assert!(closed.is_none(), "{id}: the session stays open");
            assert!(
                ours.contains(&go),
                "{id}: Go's reply {} not among ours",
                hex::encode(&go)
            );
        }
    }

    #[test]
    fn where_we_differ_from_the_go_server_on_purpose() {
        let all = vectors();
        let get = |id: &str| all.iter().find(|v| v["id"] == id).unwrap();

        // D-BADPACKET-MSG: same code and message; the parse error goes in
        // `detail` instead of being glued onto the message.
        let (ours, _) = serve(&bytes_of(get("bad_uri_escape"), "hex"));
        let p = FastProto::default()
            .decode(&mut BytesMut::from(&ours[0][..]))
            .unwrap()
            .unwrap();
        let e = Rerror::from_meta(&p.meta).unwrap();
        assert_eq!((e.code, e.message.as_str()), (400, "Bad Packet"));
        assert!(e.detail.contains("%zz"), "{e}");

        // gzip: our deflate bytes differ; the reply is the same packet.
        let v = get("gzip_ok_crafted");
        let (ours, _) = serve(&bytes_of(v, "hex"));
        let go = bytes_of(&v["go_session"], "reply_hex");
        let mut proto = FastProto::default();
        let a = proto.decode(&mut BytesMut::from(&ours[0][..])).unwrap();
        let b = proto.decode(&mut BytesMut::from(&go[..])).unwrap();
        assert_eq!(a, b);

        // D-UNKNOWN-CODEC-EMPTY: Go never answers; we answer in the default
        // codec.
        let (ours, closed) = serve(&bytes_of(get("unknown_codec_empty_body"), "hex"));
        assert!(closed.is_none());
        let p = proto
            .decode(&mut BytesMut::from(&ours[0][..]))
            .unwrap()
            .unwrap();
        assert_eq!((p.seq.0, p.body_codec), (1, CodecId::JSON));
    }

    #[test]
    fn session_level_rejects_close_the_session_as_go_does() {
        let all = vectors();
        let get = |id: &str| bytes_of(all.iter().find(|v| v["id"] == id).unwrap(), "hex");
        // Q-UNKNOWN-PTYPE: closed, nothing sent.
        for (id, t) in [("ptype_unknown", 9), ("ptype_zero", 0)] {
            let (ours, closed) = serve(&get(id));
            assert!(ours.is_empty(), "{id}");
            assert_eq!(closed, Some(CloseReason::UnknownPacketType(t)), "{id}");
        }
        // A reply for a seq never sent: dropped, the session stays open.
        let (ours, closed) = serve(&get("reply_unknown_seq"));
        assert!(ours.is_empty() && closed.is_none());
        // Framing errors close it with the typed error (no reply, as Go).
        let (ours, closed) = serve(&get("wrong_proto_id"));
        assert!(ours.is_empty());
        assert!(matches!(
            closed,
            Some(CloseReason::Protocol(ProtoError::WrongProtoId { .. }))
        ));
    }
}
