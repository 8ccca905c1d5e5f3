//! Limits that protect a session without losing what it accepted:
//! backpressure does not count against the frame and idle timers, the end
//! of input lets running handlers answer, the bytes of the peer's pulls
//! are bounded, large filtered frames are decoded away from the I/O
//! thread, and a call on a closed session says why it closed.

mod sim;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sim::*;
use teleport_core::{CloseReason, Event, Packet, Rerror, Role, Session, State, XferId};

const SEC: Duration = Duration::from_secs(1);

fn body_of(i: usize) -> String {
    format!("body {i}")
}

/// The server of `/defer` pulls that a test answers by hand.
fn guarded(f: impl FnOnce(&mut teleport_core::SessionConfig)) -> teleport_core::Shared<Handler> {
    let mut s = shared();
    f(&mut s.config);
    s
}

#[test]
fn pulls_held_back_by_backpressure_are_all_answered_past_the_timers() {
    // The server handles at most 4 of the client's pulls at once and
    // stops reading meanwhile; its frame and idle timers are short.
    let server = guarded(|c| {
        c.max_incoming_pulls = 4;
        c.frame_timeout = Some(SEC);
        c.idle_timeout = Some(5 * SEC);
    });
    // Odd chunk sizes: a partial frame sits in the server's buffer while
    // it declines input.
    let mut pair = Pair::new(shared(), server).random_chunks(7, 333);
    let tokens: Vec<Token> = (0..40)
        .map(|i| pair.pull("/defer", body_of(i), None).unwrap())
        .collect();
    pair.drive();
    for round in 0..10 {
        // Far past both timeouts while the server holds its four.
        pair.advance(20 * SEC);
        assert!(
            pair.server.closed.is_none(),
            "round {round}: the server closed while it was the one not reading: {:?}",
            pair.server.closed
        );
        assert!(pair.server.deferred.len() <= 4);
        for p in pair.server.take_deferred() {
            pair.server.echo(pair.now, &p).unwrap();
        }
        pair.drive();
    }
    for p in pair.server.take_deferred() {
        pair.server.echo(pair.now, &p).unwrap();
    }
    pair.drive();
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(pair.client.body(*t), body_of(i), "pull {i}");
    }
    assert!(pair.server.closed.is_none() && pair.client.closed.is_none());
}

#[test]
fn a_full_write_queue_does_not_count_against_the_frame_timeout() {
    // The client pulls and does not read the replies: the server's queue
    // reaches its bound and it stops reading, mid-frame.
    let server = guarded(|c| {
        c.max_queued_bytes = 16 << 10;
        c.frame_timeout = Some(SEC);
    });
    let mut pair = Pair::new(shared(), server).random_chunks(11, 1000);
    pair.s2c.held = true;
    pair.s2c.capacity = 8 << 10;
    let tokens: Vec<Token> = (0..200)
        .map(|i| pair.pull("/echo", format!("{i:0>500}"), None).unwrap())
        .collect();
    pair.drive();
    assert!(
        !pair.server.session.wants_input(),
        "the server's queue is full"
    );
    pair.advance(30 * SEC);
    assert!(pair.server.closed.is_none(), "{:?}", pair.server.closed);
    pair.s2c.held = false;
    pair.drive();
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(pair.client.body(*t), format!("{i:0>500}"));
    }
}

#[test]
fn the_frame_timeout_still_cuts_a_dripping_peer() {
    let server = guarded(|c| c.frame_timeout = Some(SEC));
    let mut pair = Pair::new(shared(), server);
    let t = pair.pull("/echo", "x".repeat(100), None).unwrap();
    pair.transmit();
    // Three bytes arrive, then nothing: the server reads on, in vain.
    pair.deliver_c2s(3);
    pair.c2s.held = true;
    let start = pair.now;
    pair.advance(2 * SEC);
    assert_eq!(pair.server.close_reason(), &CloseReason::FrameTimeout(SEC));
    assert_eq!(pair.server.closed.as_ref().unwrap().1, start + SEC);
    pair.c2s.held = false;
    pair.drive();
    assert_eq!(pair.client.error(t).code, Rerror::CODE_CONN_CLOSED);
}

#[test]
fn a_half_closed_peer_gets_the_replies_of_its_running_pulls() {
    let mut pair = Pair::default_pair();
    let fast = pair.pull("/echo", "fast", None).unwrap();
    let slow = pair.pull("/defer", "slow", None).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(fast), "fast");
    // The client shuts down its writing side: the server's input ends.
    pair.eof_to_server();
    assert!(
        matches!(pair.server.session.state(), State::Closing { .. }),
        "{:?}",
        pair.server.session.state()
    );
    assert!(!pair.server.session.wants_input());
    // The handler finishes later; its reply goes out, then the session ends.
    pair.advance(SEC / 5);
    let p = pair.server.take_deferred().remove(0);
    pair.server.echo(pair.now, &p).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(slow), "slow");
    assert_eq!(pair.server.close_reason(), &CloseReason::PeerClosed);
}

#[test]
fn the_end_of_input_fails_our_pulls_it_can_no_longer_answer() {
    let mut pair = Pair::default_pair();
    // The server pulls the client; the client handles one of the
    // client's pulls... the server's input ends with its own pull pending
    // and a client pull it is handling.
    let theirs = pair.pull("/defer", "theirs", None).unwrap();
    let now = pair.now;
    let ours = pair
        .server
        .pull(now, packet("/defer", "ours"), None)
        .unwrap();
    pair.drive();
    pair.eof_to_server();
    let e = pair.server.error(ours);
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
    assert!(e.detail.contains("closed by peer"), "{e}");
    // Its own pending pull ended, the one it is handling has not.
    assert!(pair.server.closed.is_none());
    let p = pair.server.take_deferred().remove(0);
    pair.server.echo(pair.now, &p).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(theirs), "theirs");
    assert_eq!(pair.server.close_reason(), &CloseReason::PeerClosed);
}

#[test]
fn a_half_closed_session_that_handles_nothing_ends_at_once() {
    let mut pair = Pair::default_pair();
    let t = pair.pull("/echo", "x", None).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(t), "x");
    pair.eof_to_server();
    assert_eq!(pair.server.close_reason(), &CloseReason::PeerClosed);
}

#[test]
fn bytes_of_the_peers_pulls_held_at_once_are_bounded() {
    const BODY: usize = 16 << 10;
    const BOUND: usize = 64 << 10;
    let server = guarded(|c| c.max_incoming_bytes = BOUND);
    let mut pair = Pair::new(shared(), server).random_chunks(3, 4096);
    let tokens: Vec<Token> = (0..20)
        .map(|i| {
            pair.pull("/defer", vec![b'a' + i as u8; BODY], None)
                .unwrap()
        })
        .collect();
    pair.drive();
    let mut answered = 0;
    while answered < tokens.len() {
        let held = pair.server.session.incoming_bytes();
        assert!(
            held <= BOUND + BODY + 64,
            "{held} bytes held, bound {BOUND} (+ one pull)"
        );
        let d = pair.server.take_deferred();
        assert!(!d.is_empty(), "the server takes more once it answered");
        assert!(
            d.len() <= BOUND / BODY + 1,
            "{} pulls held at once",
            d.len()
        );
        for p in d {
            pair.server.echo(pair.now, &p).unwrap();
            answered += 1;
        }
        pair.drive();
    }
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(pair.client.body(*t), vec![b'a' + i as u8; BODY]);
    }
    assert_eq!(pair.server.session.incoming_bytes(), 0);
}

#[test]
fn one_pull_larger_than_the_byte_bound_still_gets_through() {
    let server = guarded(|c| c.max_incoming_bytes = 1024);
    let mut pair = Pair::new(shared(), server);
    let t = pair.pull("/echo", vec![7u8; 10_000], None).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(t), vec![7u8; 10_000]);
}

fn gzip_pull(path: &str, body: Vec<u8>) -> Packet {
    let mut p = packet(path, body);
    p.xfer.push(XferId::GZIP);
    p
}

#[test]
fn large_filtered_frames_are_decoded_off_the_input_path_in_order() {
    let server = guarded(|c| c.inline_decode_limit = 4096);
    let mut pair = Pair::new(shared(), server);
    let now = pair.now;
    let big = pair
        .client
        .pull(now, gzip_pull("/echo", vec![b'z'; 1 << 20]), None)
        .unwrap();
    let small_gz = pair
        .client
        .pull(now, gzip_pull("/echo", b"small".to_vec()), None)
        .unwrap();
    let plain = pair.pull("/echo", "plain", None).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(big), vec![b'z'; 1 << 20]);
    assert_eq!(pair.client.body(small_gz), "small");
    assert_eq!(pair.client.body(plain), "plain");
    // Only the big one left the input path (its reply is big too, but the
    // client decodes in place: its limit is the default).
    assert_eq!(pair.server.decodes, 1);
    assert_eq!(pair.client.decodes, 0);
    assert_eq!(pair.client.order, [big, small_gz, plain]);
}

#[test]
fn while_a_frame_is_decoded_away_the_session_takes_nothing_else() {
    let mut shared = shared();
    shared.config.inline_decode_limit = 1024;
    let shared = Arc::new(shared);
    let t0 = Instant::now();
    let mut client: Session<Handler, u32> = Session::new(shared.clone(), Role::Dialer, 1, t0);
    let mut server: Session<Handler, u32> = Session::new(shared, Role::Acceptor, 2, t0);
    client
        .pull(t0, gzip_pull("/echo", vec![1u8; 100_000]), None, 1)
        .unwrap();
    client.pull(t0, packet("/echo", "after"), None, 2).unwrap();
    let mut wire = teleport_core::bytes::BytesMut::new();
    client.poll_transmit(&mut wire);
    server.handle_input(t0, &wire);
    let Some(Event::Decode(job)) = server.poll_event() else {
        panic!("the big frame is handed out to decode");
    };
    assert!(server.poll_event().is_none(), "nothing overtakes it");
    assert!(!server.wants_input());
    server.handle_decoded(t0, job.run());
    let mut bodies = Vec::new();
    while let Some(ev) = server.poll_event() {
        let Event::Pull(p) = ev else { panic!("{ev:?}") };
        bodies.push(p.packet.body.len());
    }
    assert_eq!(bodies, [100_000, 5]);
    assert!(server.wants_input());
}

#[test]
fn a_failed_deferred_decode_closes_with_the_error() {
    let mut shared = shared();
    shared.config.inline_decode_limit = 1024;
    shared.config.read_limit = 64 << 10;
    let shared = Arc::new(shared);
    let t0 = Instant::now();
    let mut server: Session<Handler, u32> = Session::new(shared, Role::Acceptor, 2, t0);
    // A gzip bomb: a small frame that inflates past the read limit.
    let mut big =
        teleport_core::Session::<Handler, u32>::new(Arc::new(sim::shared()), Role::Dialer, 1, t0);
    big.pull(t0, gzip_pull("/echo", vec![0u8; 1 << 20]), None, 1)
        .unwrap();
    let mut wire = teleport_core::bytes::BytesMut::new();
    big.poll_transmit(&mut wire);
    assert!(wire.len() < 64 << 10);
    server.handle_input(t0, &wire);
    let Some(Event::Decode(job)) = server.poll_event() else {
        panic!("the bomb is decoded away");
    };
    server.handle_decoded(t0, job.run());
    match server.poll_event() {
        Some(Event::Closed(CloseReason::Protocol(e))) => {
            assert!(e.to_string().contains("limit"), "{e}")
        }
        ev => panic!("{ev:?}"),
    }
}

#[test]
fn a_call_on_a_closed_session_says_why_it_closed() {
    let mut pair = Pair::default_pair();
    pair.client
        .session
        .handle_io_error(pair.now, &"the cable was cut");
    pair.client.pump(pair.now);
    let now = pair.now;
    let e = pair
        .client
        .session
        .push(now, packet("/sink", "late"))
        .unwrap_err();
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
    assert!(e.detail.contains("the cable was cut"), "{e}");
    let (e, _) = pair
        .client
        .session
        .pull(now, packet("/echo", "late"), None, 99)
        .unwrap_err();
    assert!(e.detail.contains("the cable was cut"), "{e}");
}

#[test]
fn the_defaults_guard_against_slow_peers() {
    let c = teleport_core::SessionConfig::default();
    assert_eq!(c.frame_timeout, Some(teleport_core::DEFAULT_FRAME_TIMEOUT));
    assert_eq!(
        c.max_incoming_bytes,
        teleport_core::DEFAULT_MAX_INCOMING_BYTES
    );
    assert_eq!(c.read_limit, 16 << 20);
}
