//! Deterministic simulation of two sessions: pipelining, framing, timeouts,
//! the connection's end, graceful close, backpressure and routing errors.
//! The harness (`sim/mod.rs`) checks on every event that each pull ends
//! exactly once and that `Closed` comes last.

mod sim;

use std::collections::HashMap;
use std::time::Duration;

use sim::{frame_sizes, packet, shared, Chunks, Handler, Pair, Rng, Token, FAIL_CODE};
use teleport_core::bytes::Bytes;
use teleport_core::{CloseReason, ProtoError, Rerror, Seq, State};

const SEC: Duration = Duration::from_secs(1);
const NS: Duration = Duration::from_nanos(1);

fn body_of(i: u64) -> Bytes {
    Bytes::from(format!("pull-{i}-{}", "x".repeat((i % 41) as usize)))
}

#[test]
fn ten_thousand_pipelined_pulls_answered_out_of_order() {
    let mut pair = Pair::default_pair().random_chunks(7, 3000);
    let mut bodies = HashMap::new();
    for i in 0..10_000 {
        let t = pair.pull("/defer", body_of(i), None).unwrap();
        bodies.insert(t, body_of(i));
    }
    assert_eq!(pair.client.session.pending_pulls(), 10_000);
    pair.drive();
    let mut parked = pair.server.take_deferred();
    assert_eq!(parked.len(), 10_000);
    assert_eq!(pair.server.session.incoming_pulls(), 10_000);

    let token_of: HashMap<Seq, Token> = pair
        .client
        .outstanding
        .iter()
        .map(|(t, (seq, _))| (*seq, *t))
        .collect();
    Rng::new(42).shuffle(&mut parked);
    let answer_order: Vec<Token> = parked.iter().map(|p| token_of[&p.seq]).collect();
    for (k, p) in parked.iter().enumerate() {
        pair.server.echo(pair.now, p).unwrap();
        if k % 101 == 0 {
            pair.step(); // replies flow while others are still unanswered
        }
    }
    pair.drive();

    pair.client.assert_all_resolved();
    assert_eq!(pair.client.resolved.len(), 10_000);
    for (t, b) in &bodies {
        assert_eq!(
            &pair.client.body(*t),
            b,
            "token {t} got another pull's body"
        );
    }
    // Matched in the order the server answered, not the order of the pulls.
    let mut sorted = answer_order.clone();
    sorted.sort_unstable();
    assert_ne!(answer_order, sorted);
    assert_eq!(pair.client.order, answer_order);
    assert_eq!(pair.client.session.stats().unmatched_replies, 0);
    assert_eq!(pair.server.session.incoming_pulls(), 0);
    assert!(pair.client.closed.is_none() && pair.server.closed.is_none());
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Body(Bytes),
    Code(i32),
}

/// 150 random pulls and pushes, some to unknown routes, bodies of 0..400
/// bytes, under every way of cutting the byte stream.
#[test]
fn frames_split_at_random_points_and_coalesced() {
    let modes = [
        Chunks::Whole,
        Chunks::bytewise(),
        Chunks::Random(Rng::new(1), 7),
        Chunks::Random(Rng::new(2), 300),
        Chunks::Script(vec![1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377], 0),
    ];
    for (m, mode) in modes.into_iter().enumerate() {
        let mut pair = Pair::default_pair().chunks(mode.clone(), mode.clone());
        let mut rng = Rng::new(m as u64);
        let mut expect = Vec::new();
        let mut pushed = Vec::new();
        let (mut pulls, mut pushes, mut dropped) = (0, 0, 0);
        for i in 0..150u64 {
            let body = Bytes::from(vec![b'a' + (i % 26) as u8; rng.below(400)]);
            match rng.below(5) {
                0 => expect.push((
                    pair.pull("/echo", body.clone(), None).unwrap(),
                    Expect::Body(body),
                )),
                1 => expect.push((
                    pair.pull("/fail", body, None).unwrap(),
                    Expect::Code(FAIL_CODE),
                )),
                2 => expect.push((pair.pull("/nope", body, None).unwrap(), Expect::Code(404))),
                3 => {
                    pair.push("/sink", body.clone()).unwrap();
                    pushed.push(body);
                }
                _ => {
                    pair.push("/nope", body).unwrap();
                    dropped += 1;
                }
            }
            if rng.below(3) == 0 {
                pair.step(); // sometimes one chunk moves between calls
            }
            pulls = expect.len() as u64;
            pushes = i + 1 - pulls;
        }
        pair.drive();

        pair.client.assert_all_resolved();
        for (t, e) in &expect {
            let got = match pair.client.result(*t) {
                Ok(p) => Expect::Body(p.body.clone()),
                Err(e) => Expect::Code(e.code),
            };
            assert_eq!(&got, e, "mode {m}, token {t}");
        }
        let got: Vec<Bytes> = pair
            .server
            .pushes
            .iter()
            .map(|(_, p)| p.body.clone())
            .collect();
        assert_eq!(
            got, pushed,
            "mode {m}: pushes lost, duplicated or reordered"
        );
        assert!(pair.server.pushes.iter().all(|(h, _)| *h == Handler::Sink));
        let (cs, ss) = (pair.client.session.stats(), pair.server.session.stats());
        assert_eq!(ss.dropped_pushes, dropped, "mode {m}");
        assert_eq!(ss.frames_in, pulls + pushes, "mode {m}");
        assert_eq!(ss.bytes_in, cs.bytes_out, "mode {m}");
        assert_eq!(cs.frames_in, pulls, "mode {m}");
        assert_eq!(cs.bytes_in, ss.bytes_out, "mode {m}");
        assert!(pair.client.closed.is_none() && pair.server.closed.is_none());
    }
}

#[test]
fn pull_timeouts_fire_exactly_at_their_deadline_and_not_before() {
    let mut pair = Pair::default_pair();
    let t0 = pair.now;
    let timeouts = [5 * SEC, SEC + NS, 3 * SEC, SEC, SEC];
    let tokens: Vec<Token> = timeouts
        .iter()
        .map(|t| pair.pull("/defer", "slow", Some(*t)).unwrap())
        .collect();
    let never = pair.pull("/defer", "never", Some(Duration::MAX)).unwrap();
    pair.drive();
    assert_eq!(pair.server.deferred.len(), 6);
    assert_eq!(pair.client.session.poll_timeout(), Some(t0 + SEC));

    // A timer that goes off early changes nothing.
    pair.client.session.handle_timeout(t0 + SEC - NS);
    assert!(!pair.client.pump(pair.now));
    assert_eq!(pair.client.session.poll_timeout(), Some(t0 + SEC));

    let mut by_deadline: Vec<(Duration, Token)> = timeouts.iter().copied().zip(tokens).collect();
    by_deadline.sort();
    for (timeout, token) in by_deadline {
        let deadline = t0 + timeout;
        if pair.now < deadline {
            pair.advance_to(deadline - NS);
            assert!(
                !pair.client.is_resolved(token),
                "{timeout:?} fired before its deadline"
            );
            pair.advance_to(deadline);
        }
        let r = &pair.client.resolved[&token];
        assert_eq!(r.result.as_ref().unwrap_err().code, Rerror::CODE_TIMEOUT);
        assert_eq!(r.at, deadline);
        assert_eq!(r.elapsed, timeout);
    }
    assert_eq!(pair.client.session.stats().timeouts, 5);
    assert!(!pair.client.is_resolved(never));
    assert_eq!(
        pair.client.session.poll_timeout(),
        None,
        "Duration::MAX: no timer"
    );
    pair.advance(1000 * SEC);
    assert!(!pair.client.is_resolved(never));
    assert!(pair.client.closed.is_none());
}

#[test]
fn the_default_timeout_applies_to_pulls_that_name_none() {
    let mut cfg = shared();
    cfg.config.default_timeout = Some(2 * SEC);
    let mut pair = Pair::new(cfg, shared());
    let t0 = pair.now;
    let a = pair.pull("/defer", "a", None).unwrap();
    let b = pair.pull("/defer", "b", Some(7 * SEC)).unwrap();
    pair.drive();
    pair.advance_to(t0 + 2 * SEC - NS);
    assert!(pair.client.order.is_empty());
    pair.advance_to(t0 + 2 * SEC);
    assert_eq!(pair.client.order, vec![a]);
    assert_eq!(pair.client.error(a).code, Rerror::CODE_TIMEOUT);
    pair.advance_to(t0 + 7 * SEC);
    assert_eq!(pair.client.order, vec![a, b]);
}

#[test]
fn a_reply_after_its_timeout_is_dropped_and_counted() {
    let mut pair = Pair::default_pair();
    let t = pair.pull("/defer", "late", Some(SEC)).unwrap();
    pair.drive();
    pair.advance(SEC);
    assert_eq!(pair.client.error(t).code, Rerror::CODE_TIMEOUT);

    for p in pair.server.take_deferred() {
        pair.server.echo(pair.now, &p).unwrap();
    }
    pair.drive(); // a second event for `t` would fail inside the harness
    let stats = pair.client.session.stats();
    assert_eq!(stats.unmatched_replies, 1);
    assert_eq!(stats.timeouts, 1);
    assert_eq!(pair.client.resolved.len(), 1);
    assert_eq!(pair.client.error(t).code, Rerror::CODE_TIMEOUT);

    let next = pair.pull("/echo", "still works", None).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(next), "still works");
    assert!(pair.client.closed.is_none());
}

/// Five pulls, three answered; the connection ends inside the third reply
/// (at several offsets, the size field included).
#[test]
fn connection_cut_mid_frame_fails_every_pending_pull_once() {
    for cut in [1, 3, 4, 5, 20, 30] {
        let mut pair = Pair::default_pair().random_chunks(cut as u64, 9);
        let tokens: Vec<Token> = (0..5)
            .map(|i| pair.pull("/defer", body_of(i), None).unwrap())
            .collect();
        pair.drive();
        let parked = pair.server.take_deferred();
        for p in &parked[..3] {
            pair.server.echo(pair.now, p).unwrap();
        }
        pair.transmit();
        let sizes = frame_sizes(&pair.s2c.pipe);
        assert_eq!(sizes.len(), 3);
        assert!(cut < sizes[2]);
        pair.deliver_s2c(sizes[0] + sizes[1] + cut);
        assert_eq!(pair.client.order, tokens[..2]);
        pair.eof_to_client();

        pair.client.assert_all_resolved();
        assert_eq!(pair.client.order, tokens, "pending pulls fail in seq order");
        for (i, t) in tokens.iter().enumerate() {
            if i < 2 {
                assert_eq!(pair.client.body(*t), body_of(i as u64));
            } else {
                let e = pair.client.error(*t);
                assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
                assert!(e.detail.contains("protocol error"), "{e}");
            }
        }
        let need = if cut < 4 { 4 } else { sizes[2] };
        assert_eq!(
            pair.client.close_reason(),
            &CloseReason::Protocol(ProtoError::Truncated { have: cut, need })
        );
        assert!(pair.client.session.is_closed());
        assert_eq!(pair.client.session.poll_timeout(), None);
        // Nothing more can start or end.
        assert_eq!(
            pair.pull("/echo", "x", None).unwrap_err().0.code,
            Rerror::CODE_CONN_CLOSED
        );
        pair.drive();
        assert_eq!(pair.client.resolved.len(), 5);
    }
}

#[test]
fn connection_end_between_frames_is_peer_closed() {
    let mut pair = Pair::default_pair();
    let a = pair.pull("/echo", "a", None).unwrap();
    let b = pair.pull("/defer", "b", Some(SEC)).unwrap();
    pair.drive();
    pair.eof_to_client();
    assert_eq!(pair.client.body(a), "a");
    let e = pair.client.error(b);
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
    assert_eq!(pair.client.close_reason(), &CloseReason::PeerClosed);
    // The timer of the failed pull is gone with it.
    assert_eq!(pair.client.session.poll_timeout(), None);
    pair.advance(5 * SEC);
    assert_eq!(pair.client.session.stats().timeouts, 0);
}

#[test]
fn graceful_close_refuses_new_pulls_and_lets_pending_ones_finish() {
    let mut pair = Pair::default_pair();
    let tokens: Vec<Token> = (0..3)
        .map(|i| pair.pull("/defer", body_of(i), None).unwrap())
        .collect();
    pair.drive();
    pair.client.session.close(pair.now);
    assert_eq!(
        pair.client.session.state(),
        State::Closing {
            deadline: pair.now + 30 * SEC
        }
    );
    let (e, _) = pair.pull("/echo", "refused", None).unwrap_err();
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
    assert_eq!(
        pair.push("/sink", "refused").unwrap_err().code,
        Rerror::CODE_CONN_CLOSED
    );
    pair.advance(SEC);
    assert!(pair.client.closed.is_none(), "pending pulls keep it open");

    let mut parked = pair.server.take_deferred();
    parked.reverse();
    let last = parked.pop().unwrap();
    for p in &parked {
        pair.server.echo(pair.now, p).unwrap();
    }
    pair.drive();
    assert_eq!(pair.client.order, [tokens[2], tokens[1]]);
    assert!(pair.client.closed.is_none(), "one pull still pending");
    pair.advance(SEC);
    pair.server.echo(pair.now, &last).unwrap();
    pair.drive();

    pair.client.assert_all_resolved();
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(pair.client.body(*t), body_of(i as u64));
    }
    assert_eq!(pair.client.close_reason(), &CloseReason::Local);
    assert_eq!(pair.client.closed.as_ref().unwrap().1, pair.now);
    // The connection then ends; the server sees its peer go.
    assert_eq!(pair.server.close_reason(), &CloseReason::PeerClosed);
}

#[test]
fn graceful_close_with_nothing_pending_closes_at_once() {
    let mut pair = Pair::default_pair();
    pair.client.session.close(pair.now);
    pair.drive();
    assert_eq!(pair.client.close_reason(), &CloseReason::Local);
    assert_eq!(pair.server.close_reason(), &CloseReason::PeerClosed);
}

#[test]
fn a_closing_side_answers_new_peer_pulls_with_102_and_finishes_its_handlers() {
    let mut pair = Pair::default_pair();
    let a = pair.pull("/defer", "a", None).unwrap();
    pair.drive();
    pair.server.session.close(pair.now);
    let b = pair.pull("/echo", "b", None).unwrap();
    pair.drive();
    let e = pair.client.error(b);
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
    assert!(e.detail.contains("closing"), "{e}");
    assert!(pair.server.closed.is_none(), "a handler is still running");

    let p = pair.server.take_deferred().pop().unwrap();
    pair.server.echo(pair.now, &p).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(a), "a");
    assert_eq!(pair.server.close_reason(), &CloseReason::Local);
    assert_eq!(pair.client.close_reason(), &CloseReason::PeerClosed);
}

#[test]
fn close_deadline_abandons_pending_calls_with_drain_timeout() {
    let mut cfg = shared();
    cfg.config.close_timeout = 10 * SEC;
    let mut pair = Pair::new(cfg, shared());
    let tokens: Vec<Token> = (0..2)
        .map(|i| pair.pull("/defer", body_of(i), None).unwrap())
        .collect();
    // And one of the server's pulls the client is handling.
    let now = pair.now;
    let s = pair.server.pull(now, packet("/defer", "s"), None).unwrap();
    pair.drive();
    let theirs = pair.client.take_deferred().pop().unwrap();
    let deadline = pair.now + 10 * SEC;
    pair.client.session.close(pair.now);
    assert_eq!(pair.client.session.poll_timeout(), Some(deadline));

    pair.advance_to(deadline - NS);
    assert!(pair.client.closed.is_none());
    assert!(matches!(pair.client.session.state(), State::Closing { .. }));
    pair.advance_to(deadline);
    assert_eq!(
        pair.client.close_reason(),
        &CloseReason::DrainTimeout {
            pulls: 2,
            handlers: 1
        }
    );
    assert_eq!(pair.client.closed.as_ref().unwrap().1, deadline);
    pair.client.assert_all_resolved();
    for t in tokens {
        let e = pair.client.error(t);
        assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
        assert!(e.detail.contains("close timed out"), "{e}");
    }
    // The abandoned handler's reply goes nowhere.
    assert!(pair.client.echo(pair.now, &theirs).is_err());
    pair.drive();
    // The server's own pull can get no answer once the client's input
    // ended; the handlers it runs for the client finish first, then it
    // closes.
    assert_eq!(pair.server.error(s).code, Rerror::CODE_CONN_CLOSED);
    assert!(pair.server.closed.is_none(), "the server drains first");
    for p in pair.server.take_deferred() {
        pair.server.echo(pair.now, &p).unwrap();
    }
    pair.server.pump(pair.now);
    assert_eq!(pair.server.close_reason(), &CloseReason::PeerClosed);
}

#[test]
fn idle_timeout_closes_a_session_that_reads_nothing() {
    let mut cfg = shared();
    cfg.config.idle_timeout = Some(5 * SEC);
    let mut pair = Pair::new(cfg, shared());
    let t0 = pair.now;
    pair.advance(4 * SEC);
    // Reading at t0+4s pushes the idle deadline to t0+9s.
    let answered = pair.pull("/echo", "y", None).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(answered), "y");
    pair.advance_to(t0 + 9 * SEC - NS);
    assert!(pair.client.closed.is_none());
    pair.advance_to(t0 + 9 * SEC);
    assert_eq!(pair.client.close_reason(), &CloseReason::Idle(5 * SEC));
}

#[test]
fn idle_timeout_waits_while_calls_are_in_flight() {
    let idle = || {
        let mut cfg = shared();
        cfg.config.idle_timeout = Some(5 * SEC);
        cfg
    };
    let mut pair = Pair::new(idle(), idle());
    let t0 = pair.now;
    // A slow call: neither side is idle while it runs, however long.
    let t = pair.pull("/defer", "x", None).unwrap();
    pair.drive();
    pair.advance(60 * SEC);
    assert!(pair.client.closed.is_none() && pair.server.closed.is_none());
    let p = pair.server.take_deferred().remove(0);
    pair.server.echo(pair.now, &p).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(t), "x");
    // The idle timer starts when the call ends.
    pair.advance_to(t0 + 65 * SEC - NS);
    assert!(pair.client.closed.is_none() && pair.server.closed.is_none());
    pair.advance_to(t0 + 65 * SEC);
    assert_eq!(pair.client.close_reason(), &CloseReason::Idle(5 * SEC));
}

#[test]
fn pending_pull_bound_is_backpressure() {
    let mut cfg = shared();
    cfg.config.max_pending_pulls = 4;
    let mut pair = Pair::new(cfg, shared());
    let ok: Vec<Token> = (0..4)
        .map(|i| pair.pull("/defer", body_of(i), None).unwrap())
        .collect();
    let (e, token) = pair.pull("/defer", "fifth", None).unwrap_err();
    assert_eq!(e.code, Rerror::CODE_BACKPRESSURE);
    assert_eq!(token, 4, "the refused pull's token comes back");
    assert_eq!(pair.client.session.pending_pulls(), 4);
    pair.push("/sink", "pushes are not pulls").unwrap();
    pair.drive();
    assert_eq!(
        pair.server.deferred.len(),
        4,
        "the refused pull was not sent"
    );

    let p = pair.server.take_deferred().remove(0);
    pair.server.echo(pair.now, &p).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(ok[0]), body_of(0));
    let again = pair.pull("/echo", "fits now", None).unwrap();
    assert!(pair.pull("/echo", "full again", None).is_err());
    pair.drive();
    assert_eq!(pair.client.body(again), "fits now");
}

#[test]
fn outgoing_bytes_bound_is_backpressure_until_drained() {
    let mut cfg = shared();
    cfg.config.max_queued_bytes = 256;
    let mut pair = Pair::new(cfg, shared());
    let big = pair.pull("/echo", vec![b'z'; 300], None).unwrap();
    assert!(pair.client.session.queued_bytes() > 256);
    assert!(!pair.client.session.wants_input());
    let (e, _) = pair.pull("/echo", "small", None).unwrap_err();
    assert_eq!(e.code, Rerror::CODE_BACKPRESSURE);
    assert_eq!(
        pair.push("/sink", "small").unwrap_err().code,
        Rerror::CODE_BACKPRESSURE
    );
    assert_eq!(pair.client.session.pending_pulls(), 1);

    pair.transmit(); // the adapter wrote the bytes out
    assert_eq!(pair.client.session.queued_bytes(), 0);
    assert!(pair.client.session.wants_input());
    let small = pair.pull("/echo", "small", None).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(big).len(), 300);
    assert_eq!(pair.client.body(small), "small");
}

#[test]
fn routing_errors_come_back_as_rerrors() {
    let mut pair = Pair::default_pair();
    let unknown = pair.pull("/nope", "x", None).unwrap();
    let push_route = pair.pull("/sink", "x", None).unwrap();
    let bad_escape = pair.pull("/echo%zz", "x", None).unwrap();
    let escaped = pair.pull("/ec%68o", "escaped", None).unwrap();
    let query = pair.pull("/echo?a=1#f", "query", None).unwrap();
    let failing = pair.pull("/fail", "x", None).unwrap();
    pair.push("/nope", "dropped").unwrap();
    pair.push("/sink%zz", "dropped").unwrap();
    pair.push("/echo", "pull route").unwrap();
    pair.push("/sink", "kept").unwrap();
    pair.drive();

    assert_eq!(pair.client.error(unknown), &Rerror::not_found());
    assert_eq!(pair.client.error(push_route), &Rerror::not_found());
    let e = pair.client.error(bad_escape);
    assert_eq!((e.code, e.message.as_str()), (400, "Bad Packet"));
    assert!(e.detail.contains("%zz"), "{e}");
    assert_eq!(pair.client.body(escaped), "escaped");
    assert_eq!(pair.client.body(query), "query");
    assert_eq!(pair.client.error(failing).code, FAIL_CODE);

    assert_eq!(pair.server.session.stats().dropped_pushes, 3);
    assert_eq!(pair.server.pushes.len(), 1);
    assert_eq!(pair.server.pushes[0].1.body, "kept");
    assert_eq!(pair.server.pulls_routed, 3, "errors never reach a handler");
    assert!(pair.client.closed.is_none() && pair.server.closed.is_none());
}

#[test]
fn the_incoming_pull_bound_stops_reading_until_a_handler_finishes() {
    let mut cfg = shared();
    cfg.config.max_incoming_pulls = 3;
    let mut pair = Pair::new(shared(), cfg).chunks(Chunks::bytewise(), Chunks::Whole);
    let tokens: Vec<Token> = (0..10)
        .map(|i| pair.pull("/defer", body_of(i), None).unwrap())
        .collect();
    pair.drive();
    assert_eq!(pair.server.deferred.len(), 3);
    assert!(!pair.server.session.wants_input());
    assert!(!pair.c2s.pipe.is_empty(), "the rest waits in the pipe");

    let mut answered = 0;
    while answered < 10 {
        let p = pair.server.deferred.remove(0);
        pair.server.echo(pair.now, &p).unwrap();
        answered += 1;
        pair.drive();
        assert!(pair.server.session.incoming_pulls() <= 3);
    }
    pair.client.assert_all_resolved();
    assert_eq!(pair.client.order, tokens, "answered in arrival order");
}

#[test]
fn a_close_deadline_that_meets_the_last_pull_timeout_is_a_clean_close() {
    let mut cfg = shared();
    cfg.config.close_timeout = 5 * SEC;
    let mut pair = Pair::new(cfg, shared());
    let t = pair.pull("/defer", "x", Some(5 * SEC)).unwrap();
    pair.drive();
    pair.client.session.close(pair.now);
    pair.advance(5 * SEC);
    assert_eq!(pair.client.error(t).code, Rerror::CODE_TIMEOUT);
    // Nothing was pending when the deadline came: every call had ended.
    assert_eq!(pair.client.close_reason(), &CloseReason::Local);
}
