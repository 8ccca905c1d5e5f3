//! A hostile peer: garbage, frames over the read limit, unknown packet
//! types and filters, replies for seqs never sent, reused seqs. The victim
//! must end cleanly (every pending pull failing once, `Closed` last) or,
//! for what can be dropped, drop it, count it and go on.

mod sim;

use sim::{packet, shared, Chunks, Pair, Token};
use teleport_core::bytes::BytesMut;
use teleport_core::{
    CloseReason, CodecId, FastProto, Packet, PacketType, Proto, ProtoError, Rerror, Seq, XferError,
    XferId, DEFAULT_READ_LIMIT, MIN_FRAME,
};

fn frame(p: &Packet) -> BytesMut {
    let mut w = BytesMut::new();
    FastProto::default().encode(p, &mut w).unwrap();
    w
}

fn reply(seq: u64, body: &str) -> BytesMut {
    frame(
        &Packet::new(PacketType::REPLY, Seq(seq), "/defer")
            .with_body(CodecId::STRING, body.to_string()),
    )
}

/// A client with one pull answered (its reply in flight, not delivered) and
/// one pending; `hostile` bytes follow the good reply on the wire.
fn victim(hostile: &[u8], chunks: Chunks) -> (Pair, Token, Token) {
    let mut pair = Pair::default_pair().chunks(Chunks::Whole, chunks);
    let answered = pair.pull("/defer", "answered", None).unwrap();
    let pending = pair.pull("/defer", "pending", None).unwrap();
    pair.drive();
    let mut deferred = pair.server.take_deferred();
    let first = deferred.remove(0);
    pair.server.deferred = deferred; // "pending" stays with its handler
    pair.server.echo(pair.now, &first).unwrap();
    pair.transmit();
    pair.s2c.pipe.extend_from_slice(hostile);
    (pair, answered, pending)
}

fn assert_failed_cleanly(pair: &mut Pair, answered: Token, pending: Token, detail: &str) {
    assert_eq!(pair.client.body(answered), "answered");
    pair.client.assert_all_resolved();
    let e = pair.client.error(pending);
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
    assert!(e.detail.contains(detail), "{e}");
    assert_eq!(pair.client.order, [answered, pending]);
    // The connection then ends for the server too, once the handler it
    // still runs for the client's other pull has answered (the end of
    // input may only be a half-close).
    assert!(!pair.server.session.is_closed(), "the server drains first");
    let left = pair.server.take_deferred().remove(0);
    pair.server.echo(pair.now, &left).unwrap();
    pair.server.pump(pair.now);
    assert_eq!(pair.server.close_reason(), &CloseReason::PeerClosed);
}

#[test]
fn garbage_closes_the_session_with_a_protocol_error() {
    let mut past_end = reply(0, "x");
    past_end[15..19].copy_from_slice(&0xFFFFu32.to_be_bytes()); // uri length
    let mut short_for_filters = vec![0, 0, 0, MIN_FRAME as u8, b'f', 9];
    short_for_filters.resize(MIN_FRAME, 0);
    let mut wrong_id = vec![0, 0, 0, 40, b'x'];
    wrong_id.resize(40, 0);
    type Case = (&'static str, Vec<u8>, fn(&ProtoError) -> bool);
    let cases: Vec<Case> = vec![
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), |e| {
            *e == ProtoError::SizeOverLimit {
                size: 0x4745_5420,
                limit: DEFAULT_READ_LIMIT,
            }
        }),
        ("wrong id", wrong_id, |e| {
            *e == ProtoError::WrongProtoId {
                found: b'x',
                expected: b'f',
            }
        }),
        ("tiny", vec![0, 0, 0, 3], |e| {
            *e == ProtoError::SizeTooSmall {
                size: 3,
                min: MIN_FRAME,
            }
        }),
        ("short for filters", short_for_filters, |e| {
            *e == ProtoError::SizeTooSmall {
                size: MIN_FRAME,
                min: MIN_FRAME + 9,
            }
        }),
        ("past end", past_end.to_vec(), |e| {
            matches!(e, ProtoError::PastEnd { field: "uri", .. })
        }),
    ];
    for (name, bytes, want) in cases {
        for chunks in [Chunks::Whole, Chunks::bytewise()] {
            let (mut pair, answered, pending) = victim(&bytes, chunks);
            pair.drive();
            match pair.client.close_reason() {
                CloseReason::Protocol(e) => assert!(want(e), "{name}: {e:?}"),
                r => panic!("{name}: closed for {r:?}"),
            }
            assert_failed_cleanly(&mut pair, answered, pending, "protocol error");
        }
    }
}

#[test]
fn a_frame_over_the_read_limit_is_refused_from_its_size_field() {
    let mut small = shared();
    small.config.read_limit = 1024;
    let mut pair = Pair::new(small, shared());
    // Our own pull over our limit is refused before anything is queued.
    let (e, token) = pair.pull("/echo", vec![0u8; 2000], None).unwrap_err();
    assert_eq!((e.code, token), (Rerror::CODE_WRITE_FAILED, 0));
    assert_eq!(pair.client.session.queued_bytes(), 0);
    assert!(pair.client.closed.is_none());

    let t = pair.pull("/defer", "small", None).unwrap();
    pair.drive();
    let p = pair.server.take_deferred().pop().unwrap();
    pair.server
        .answer(
            pair.now,
            p.seq,
            Ok(Packet::default().with_body(CodecId::STRING, vec![b'b'; 2000])),
        )
        .unwrap();
    pair.transmit();
    let size = u32::from_be_bytes(pair.s2c.pipe[..4].try_into().unwrap()) as usize;
    assert!(size > 2000);
    // Four bytes are enough to refuse it; the rest is never waited for.
    pair.deliver_s2c(4);
    assert_eq!(
        pair.client.close_reason(),
        &CloseReason::Protocol(ProtoError::SizeOverLimit { size, limit: 1024 })
    );
    assert_eq!(pair.client.error(t).code, Rerror::CODE_CONN_CLOSED);
    pair.client.assert_all_resolved();
}

#[test]
fn an_unknown_packet_type_closes_the_session() {
    for ptype in [0u8, 4, 9, 255] {
        let bad = frame(&Packet::new(PacketType(ptype), Seq(1), "/defer"));
        let (mut pair, answered, pending) = victim(&bad, Chunks::Whole);
        pair.drive();
        assert_eq!(
            pair.client.close_reason(),
            &CloseReason::UnknownPacketType(ptype)
        );
        assert_failed_cleanly(&mut pair, answered, pending, "unsupported packet type");
    }
}

#[test]
fn an_unknown_transfer_filter_closes_the_session() {
    let good = reply(1, "x");
    let mut bad = BytesMut::new();
    bad.extend_from_slice(&(good.len() as u32 + 1).to_be_bytes());
    bad.extend_from_slice(&[b'f', 1, b'z']);
    bad.extend_from_slice(&good[6..]);
    let (mut pair, answered, pending) = victim(&bad, Chunks::Whole);
    pair.drive();
    assert_eq!(
        pair.client.close_reason(),
        &CloseReason::Protocol(ProtoError::Xfer(XferError::Unknown { id: XferId(b'z') }))
    );
    assert_failed_cleanly(&mut pair, answered, pending, "protocol error");
}

#[test]
fn replies_for_unknown_seqs_are_dropped_counted_and_harmless() {
    let mut pair = Pair::default_pair().chunks(Chunks::Whole, Chunks::bytewise());
    let pending = pair.pull("/defer", "pending", None).unwrap(); // seq 0
    let answered = pair.pull("/echo", "answered", None).unwrap(); // seq 1
    pair.drive();
    assert_eq!(pair.client.body(answered), "answered");

    for hostile in [
        reply(12345, "never sent"),
        reply(1, "duplicate"),
        reply(u64::MAX, "max"),
    ] {
        pair.s2c.pipe.extend_from_slice(&hostile);
    }
    pair.drive();
    assert_eq!(pair.client.session.stats().unmatched_replies, 3);
    assert_eq!(pair.client.order, [answered], "no event for a stray reply");
    assert!(pair.client.closed.is_none());
    assert_eq!(pair.client.session.pending_pulls(), 1);

    let p = pair.server.take_deferred().pop().unwrap();
    pair.server.echo(pair.now, &p).unwrap();
    let later = pair.pull("/echo", "later", None).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(pending), "pending");
    assert_eq!(pair.client.body(later), "later");
    pair.client.assert_all_resolved();
}

#[test]
fn a_pull_reusing_a_seq_in_flight_is_dropped() {
    let mut pair = Pair::default_pair();
    let pull = |body: &str| {
        let mut p = packet("/defer", body.to_string());
        p.ptype = PacketType::PULL;
        p.seq = Seq(7);
        frame(&p)
    };
    pair.c2s.pipe.extend_from_slice(&pull("first"));
    pair.c2s.pipe.extend_from_slice(&pull("second"));
    pair.drive();
    assert_eq!(pair.server.deferred.len(), 1);
    assert_eq!(pair.server.deferred[0].packet.body, "first");
    assert_eq!(pair.server.session.incoming_pulls(), 1);

    // Once answered, the seq may be used again.
    let p = pair.server.take_deferred().pop().unwrap();
    pair.server.echo(pair.now, &p).unwrap();
    pair.c2s.pipe.extend_from_slice(&pull("third"));
    pair.drive();
    assert_eq!(pair.server.deferred.len(), 1);
    assert_eq!(pair.server.deferred[0].packet.body, "third");
    // The client never sent seq 7: both replies are strays to it.
    let p = pair.server.take_deferred().pop().unwrap();
    pair.server.echo(pair.now, &p).unwrap();
    pair.drive();
    assert_eq!(pair.client.session.stats().unmatched_replies, 2);
    assert!(pair.client.closed.is_none() && pair.server.closed.is_none());
}

#[test]
fn a_frame_dripped_too_slowly_is_cut_off_at_the_frame_timeout() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let mut cfg = shared();
    cfg.config.frame_timeout = Some(Duration::from_secs(1));
    cfg.config.idle_timeout = Some(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut server: sim::Sess =
        teleport_core::Session::new(Arc::new(cfg), teleport_core::Role::Acceptor, 1, t0);
    let mut pull = packet("/echo", "a body long enough to drip");
    pull.ptype = PacketType::PULL;
    pull.seq = Seq(3);
    let wire = frame(&pull);
    // A whole frame in two pieces well within the timeout is fine.
    let (a, b) = wire.split_at(10);
    server.handle_input(t0, a);
    assert_eq!(server.poll_timeout(), Some(t0 + Duration::from_millis(300)));
    server.handle_input(t0 + Duration::from_millis(200), b);
    assert!(matches!(
        server.poll_event(),
        Some(teleport_core::Event::Pull(_))
    ));
    // Then a byte every 100 ms: the idle timer is fed, the frame timer is not.
    let start = t0 + Duration::from_millis(250);
    let mut now = start;
    for byte in wire.iter() {
        server.handle_input(now, &[*byte][..]);
        now += Duration::from_millis(100);
        let deadline = start + Duration::from_secs(1);
        if now >= deadline {
            server.handle_timeout(deadline - Duration::from_nanos(1));
            assert!(!server.is_closed(), "not before the deadline");
            server.handle_timeout(deadline);
            break;
        }
    }
    assert!(server.is_closed());
    let mut reason = None;
    while let Some(ev) = server.poll_event() {
        if let teleport_core::Event::Closed(r) = ev {
            reason = Some(r);
        }
    }
    assert_eq!(
        reason,
        Some(CloseReason::FrameTimeout(Duration::from_secs(1)))
    );
}

/// The server's read limit in [`a_pull_whose_uri_nearly_fills_a_frame_still_gets_a_reply`].
const SMALL_LIMIT: usize = 4096;

/// A pull frame of exactly `len` bytes to `path?aaa…`.
fn pull_of_len(path: &str, seq: u64, len: usize) -> BytesMut {
    let with_uri = |n: usize| {
        let mut uri = format!("{path}?").into_bytes();
        uri.resize(n, b'a');
        let mut p = Packet::new(
            PacketType::PULL,
            Seq(seq),
            teleport_core::Uri::from_bytes(uri.into()),
        );
        p.body_codec = CodecId::STRING;
        frame(&p)
    };
    let n = len - (with_uri(64).len() - 64);
    let f = with_uri(n);
    assert_eq!(f.len(), len);
    f
}

/// Found by the `session` fuzz target: a pull whose URI nearly fills a
/// frame. Its reply repeats the URI, so the 404 (or a handler's reply) goes
/// over the read limit, and so did the 500 that replaces it: the pull got
/// no reply at all and the peer waited for ever. Now the 500 goes without
/// the URI.
#[test]
fn a_pull_whose_uri_nearly_fills_a_frame_still_gets_a_reply() {
    use std::sync::Arc;
    use std::time::Instant;
    let mut cfg = shared();
    cfg.config.read_limit = SMALL_LIMIT;
    let t0 = Instant::now();
    let mut server: sim::Sess =
        teleport_core::Session::new(Arc::new(cfg), teleport_core::Role::Acceptor, 1, t0);
    // Unrouted (the session's own 404), and routed then answered with a
    // body (the handler's reply).
    let mut wire = pull_of_len("/nope", 9, SMALL_LIMIT - 8);
    wire.extend_from_slice(&pull_of_len("/defer", 10, SMALL_LIMIT - 8));
    server.handle_input(t0, &wire);
    let mut held = Vec::new();
    while let Some(ev) = server.poll_event() {
        match ev {
            teleport_core::Event::Pull(p) => held.push(p.seq),
            ev => panic!("unexpected {ev:?}"),
        }
    }
    assert_eq!(held, [Seq(10)]);
    let big = Packet::default().with_body(CodecId::STRING, "x".repeat(100));
    let e = server.reply(t0, Seq(10), Ok(big)).unwrap_err();
    assert_eq!(e.code, Rerror::CODE_INTERNAL);
    assert_eq!(server.incoming_pulls(), 0);

    let mut out = BytesMut::new();
    server.poll_transmit(&mut out);
    let mut peer = FastProto::default().with_limit(SMALL_LIMIT);
    let mut replies = Vec::new();
    while let Some(p) = peer.decode(&mut out).unwrap() {
        assert_eq!(p.ptype, PacketType::REPLY);
        let e = Rerror::from_meta(&p.meta).expect("an error reply");
        replies.push((p.seq, e.code, p.uri.len()));
    }
    assert!(out.is_empty());
    assert_eq!(
        replies,
        [
            (Seq(9), Rerror::CODE_INTERNAL, 0),
            (Seq(10), Rerror::CODE_INTERNAL, 0)
        ]
    );
    assert!(!server.is_closed());
}
