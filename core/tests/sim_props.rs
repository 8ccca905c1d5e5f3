//! Randomised schedules over the simulation harness, with shrinking: a
//! failure prints the smallest schedule that still fails.
//!
//! The invariant throughout: every pull the session accepted ends exactly
//! once (the harness panics on a second end), with its own body or the
//! error its route, its timeout or the connection's end calls for; `Closed`
//! comes once, last.

mod sim;

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use sim::{frame_sizes, shared, Chunks, Pair, Token, FAIL_CODE};
use teleport_core::bytes::Bytes;
use teleport_core::{CloseReason, CodecId, Packet, ProtoError, Rerror};

/// The code deferred pulls are failed with when a schedule says so.
const DEFERRED_FAIL: i32 = 598;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Echo,
    Defer,
    Fail,
    Unknown,
    BadEscape,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Route::Echo => "/echo",
            Route::Defer => "/defer",
            Route::Fail => "/fail",
            Route::Unknown => "/unknown",
            Route::BadEscape => "/echo%g1",
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A client pull; `timeout_ms: None` waits for ever.
    Pull {
        route: Route,
        len: usize,
        timeout_ms: Option<u64>,
    },
    /// A client push to `/sink` (known) or `/nowhere`.
    Push { known: bool, len: usize },
    /// One step of the pair.
    Step,
    /// Steps until idle.
    Drive,
    /// Moves the clock, firing timers on the way.
    Advance { ms: u64 },
    /// The server answers one of its parked pulls.
    Answer { pick: Index, ok: bool },
    /// The server's bytes stop (or resume) reaching the client.
    HoldReplies(bool),
}

fn route() -> impl Strategy<Value = Route> {
    prop_oneof![
        3 => Just(Route::Echo),
        3 => Just(Route::Defer),
        1 => Just(Route::Fail),
        1 => Just(Route::Unknown),
        1 => Just(Route::BadEscape),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (route(), 0usize..300, proptest::option::of(1u64..3000))
            .prop_map(|(route, len, timeout_ms)| Op::Pull { route, len, timeout_ms }),
        1 => (any::<bool>(), 0usize..100).prop_map(|(known, len)| Op::Push { known, len }),
        2 => Just(Op::Step),
        1 => Just(Op::Drive),
        2 => (0u64..2000).prop_map(|ms| Op::Advance { ms }),
        3 => (any::<Index>(), any::<bool>()).prop_map(|(pick, ok)| Op::Answer { pick, ok }),
        1 => any::<bool>().prop_map(Op::HoldReplies),
    ]
}

/// Read sizes, cycled: small ones split every field, large ones coalesce.
fn chunk_schedule() -> impl Strategy<Value = Chunks> {
    prop::collection::vec(prop_oneof![1usize..=8, 1usize..=700], 1..6)
        .prop_map(|sizes| Chunks::Script(sizes, 0))
}

fn body(i: usize, len: usize) -> Bytes {
    let mut b = format!("#{i}:").into_bytes();
    b.resize(b.len() + len, b'a' + (i % 26) as u8);
    Bytes::from(b)
}

struct Sent {
    route: Route,
    body: Bytes,
    timeout: Option<Duration>,
}

fn run_schedule(
    ops: Vec<Op>,
    close_at: Option<Index>,
    c2s: Chunks,
    s2c: Chunks,
) -> Result<(), TestCaseError> {
    let mut client = shared();
    client.config.close_timeout = Duration::from_secs(3);
    let mut pair = Pair::new(client, shared()).chunks(c2s, s2c);
    let close_at = close_at.map(|i| i.index(ops.len()));
    let mut closing = false;
    let mut sent: HashMap<Token, Sent> = HashMap::new();
    let mut answered_ok: HashMap<Bytes, bool> = HashMap::new();
    let (mut pushed, mut dropped) = (Vec::new(), 0u64);

    for (i, op) in ops.into_iter().enumerate() {
        if close_at == Some(i) {
            pair.client.session.close(pair.now);
            closing = true;
        }
        match op {
            Op::Pull {
                route,
                len,
                timeout_ms,
            } => {
                let b = body(i, len);
                let timeout = timeout_ms.map(Duration::from_millis);
                let t = match pair.pull(route.path(), b.clone(), timeout.or(Some(Duration::MAX))) {
                    Ok(t) => t,
                    Err((e, _)) if closing && e.code == Rerror::CODE_CONN_CLOSED => continue,
                    Err((e, _)) => return Err(TestCaseError::fail(format!("pull refused: {e}"))),
                };
                sent.insert(
                    t,
                    Sent {
                        route,
                        body: b,
                        timeout,
                    },
                );
            }
            Op::Push { known, len } => {
                let b = body(i, len);
                let path = if known { "/sink" } else { "/nowhere" };
                match pair.push(path, b.clone()) {
                    Ok(_) => {}
                    Err(e) if closing && e.code == Rerror::CODE_CONN_CLOSED => continue,
                    Err(e) => return Err(TestCaseError::fail(format!("push refused: {e}"))),
                }
                if known {
                    pushed.push(b);
                } else {
                    dropped += 1;
                }
            }
            Op::Step => {
                pair.step();
            }
            Op::Drive => pair.drive(),
            Op::Advance { ms } => pair.advance(Duration::from_millis(ms)),
            Op::Answer { pick, ok } => {
                if !pair.server.deferred.is_empty() {
                    let p = pair
                        .server
                        .deferred
                        .remove(pick.index(pair.server.deferred.len()));
                    answered_ok.insert(p.packet.body.clone(), ok);
                    let r = if ok {
                        pair.server.echo(pair.now, &p)
                    } else {
                        pair.server.answer(
                            pair.now,
                            p.seq,
                            Err(Rerror::new(DEFERRED_FAIL, "deferred failure")),
                        )
                    };
                    if let Err(e) = r {
                        // Only once the connection is gone.
                        prop_assert!(pair.server.closed.is_some(), "reply refused: {e}");
                    }
                }
            }
            Op::HoldReplies(h) => pair.s2c.held = h,
        }
    }

    // Let everything finish: release the link, answer what is parked, let
    // every timer fire.
    pair.s2c.held = false;
    pair.drive();
    for p in pair.server.take_deferred() {
        answered_ok.insert(p.packet.body.clone(), true);
        if let Err(e) = pair.server.echo(pair.now, &p) {
            prop_assert!(pair.server.closed.is_some(), "reply refused: {e}");
        }
    }
    pair.drive();
    pair.advance(Duration::from_secs(3600));
    pair.drive();

    // A drain timeout ends the pulls still waiting then with 102.
    let drained_at = match &pair.client.closed {
        None => {
            prop_assert!(!closing, "a graceful close never finished");
            prop_assert!(pair.server.closed.is_none(), "{:?}", pair.server.closed);
            None
        }
        Some((CloseReason::Local, _)) => {
            prop_assert!(closing);
            prop_assert_eq!(pair.server.close_reason(), &CloseReason::PeerClosed);
            None
        }
        Some((CloseReason::DrainTimeout { pulls, .. }, at)) => {
            prop_assert!(closing);
            prop_assert!(*pulls > 0 || pair.server.pulls_routed > 0);
            Some(*at)
        }
        Some((r, _)) => return Err(TestCaseError::fail(format!("client closed: {r:?}"))),
    };
    pair.client.assert_all_resolved();
    prop_assert_eq!(pair.client.resolved.len(), sent.len());
    if pair.server.closed.is_none() {
        prop_assert_eq!(pair.server.session.incoming_pulls(), 0);
    }

    let mut timed_out = 0;
    for (t, s) in &sent {
        let r = &pair.client.resolved[t];
        match &r.result {
            Err(e) if e.code == Rerror::CODE_TIMEOUT => {
                timed_out += 1;
                prop_assert_eq!(
                    Some(r.elapsed),
                    s.timeout,
                    "token {} timed out off its deadline",
                    t
                );
            }
            Err(e) if e.code == Rerror::CODE_CONN_CLOSED => {
                prop_assert_eq!(Some(r.at), drained_at, "token {} ended with {}", t, e);
            }
            result => {
                if let Some(limit) = s.timeout {
                    prop_assert!(r.elapsed < limit, "token {t} outlived its timeout");
                }
                let got = result.as_ref().map(|p| p.body.clone()).map_err(|e| e.code);
                let want = match s.route {
                    Route::Echo => Ok(s.body.clone()),
                    Route::Defer if answered_ok[&s.body] => Ok(s.body.clone()),
                    Route::Defer => Err(DEFERRED_FAIL),
                    Route::Fail => Err(FAIL_CODE),
                    Route::Unknown => Err(Rerror::CODE_NOT_FOUND),
                    Route::BadEscape => Err(Rerror::CODE_BAD_PACKET),
                };
                prop_assert_eq!(got, want, "token {}", t);
            }
        }
    }
    let stats = pair.client.session.stats();
    prop_assert_eq!(stats.timeouts, timed_out);
    // Every pull was answered in the end, so each timed-out one's reply
    // came late and was dropped (unless the session was gone by then).
    if pair.client.closed.is_none() {
        prop_assert_eq!(stats.unmatched_replies, timed_out);
    } else {
        prop_assert!(stats.unmatched_replies <= timed_out);
    }
    let got: Vec<Bytes> = pair
        .server
        .pushes
        .iter()
        .map(|(_, p)| p.body.clone())
        .collect();
    prop_assert_eq!(got, pushed);
    prop_assert_eq!(pair.server.session.stats().dropped_pushes, dropped);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random pulls, pushes, reply orders, read sizes, link stalls and
    /// clock moves; in some schedules, a graceful close somewhere.
    #[test]
    fn every_pull_ends_once_with_its_own_outcome(
        ops in prop::collection::vec(op(), 1..60),
        close_at in proptest::option::weighted(0.3, any::<Index>()),
        c2s in chunk_schedule(),
        s2c in chunk_schedule(),
    ) {
        run_schedule(ops, close_at, c2s, s2c)?;
    }

    /// The connection ends at any byte of the reply stream: the replies
    /// read in whole succeed, every other pull fails once with 102, and the
    /// reason says whether the end fell between frames or inside one.
    #[test]
    fn a_cut_anywhere_fails_exactly_the_unread_pulls(
        lens in prop::collection::vec(0usize..200, 1..12),
        cut in any::<Index>(),
        s2c in chunk_schedule(),
    ) {
        let mut pair = Pair::default_pair().chunks(Chunks::Whole, s2c);
        let tokens: Vec<Token> = lens
            .iter()
            .enumerate()
            .map(|(i, len)| pair.pull("/echo", body(i, *len), None).unwrap())
            .collect();
        pair.s2c.held = true;
        pair.drive();
        pair.transmit();
        let sizes = frame_sizes(&pair.s2c.pipe);
        prop_assert_eq!(sizes.len(), lens.len());
        let cut = cut.index(pair.s2c.pipe.len() + 1);
        pair.deliver_s2c(cut);
        pair.eof_to_client();

        let (mut whole, mut boundary) = (0, 0);
        while whole < sizes.len() && boundary + sizes[whole] <= cut {
            boundary += sizes[whole];
            whole += 1;
        }
        pair.client.assert_all_resolved();
        prop_assert_eq!(&pair.client.order, &tokens);
        for (i, t) in tokens.iter().enumerate() {
            if i < whole {
                prop_assert_eq!(pair.client.body(*t), body(i, lens[i]));
            } else {
                prop_assert_eq!(pair.client.error(*t).code, Rerror::CODE_CONN_CLOSED);
            }
        }
        let have = cut - boundary;
        let want = if have == 0 {
            CloseReason::PeerClosed
        } else {
            let need = if have < 4 { 4 } else { sizes[whole] };
            CloseReason::Protocol(ProtoError::Truncated { have, need })
        };
        prop_assert_eq!(pair.client.close_reason(), &want);
    }

    /// Valid frames with random bytes flipped and junk appended, to either
    /// side: it must not panic, and each pull must still end exactly once.
    #[test]
    fn corrupted_streams_end_cleanly(
        n in 1usize..6,
        flips in prop::collection::vec((any::<Index>(), 1u8..=255), 0..4),
        junk in prop::collection::vec(any::<u8>(), 0..64),
        to_server in any::<bool>(),
        chunks in chunk_schedule(),
    ) {
        let mut pair = Pair::default_pair().chunks(chunks.clone(), chunks);
        let tokens: Vec<Token> = (0..n)
            .map(|i| pair.pull("/defer", body(i, i * 10), None).unwrap())
            .collect();
        if to_server {
            pair.c2s.held = true;
            pair.transmit();
        } else {
            pair.drive();
            for p in pair.server.take_deferred() {
                pair.server.echo(pair.now, &p).unwrap();
            }
            pair.s2c.held = true;
            pair.transmit();
        }
        let pipe = if to_server { &mut pair.c2s.pipe } else { &mut pair.s2c.pipe };
        let len = pipe.len();
        for (at, x) in &flips {
            pipe[at.index(len)] ^= x;
        }
        pipe.extend_from_slice(&junk);
        pair.c2s.held = false;
        pair.s2c.held = false;
        pair.drive();
        for p in pair.server.take_deferred() {
            let _ = pair.server.echo(pair.now, &p);
        }
        pair.drive();
        // Whatever is left open now sees its input end.
        if pair.server.closed.is_none() {
            pair.eof_to_server();
        }
        pair.drive();
        if pair.client.closed.is_none() {
            pair.eof_to_client();
        }

        pair.client.assert_all_resolved();
        prop_assert_eq!(pair.client.order.len(), tokens.len());
        for side in [&pair.client, &pair.server] {
            let ok = matches!(
                side.close_reason(),
                CloseReason::Protocol(_)
                    | CloseReason::UnknownPacketType(_)
                    | CloseReason::PeerClosed
            );
            prop_assert!(ok, "{}: {:?}", side.name, side.close_reason());
            prop_assert_eq!(side.session.incoming_pulls(), 0);
            prop_assert_eq!(side.session.poll_timeout(), None);
        }
        if flips.is_empty() && junk.is_empty() {
            for (i, t) in tokens.iter().enumerate() {
                prop_assert_eq!(pair.client.body(*t), body(i, i * 10));
            }
        }
    }

    /// Pull timeouts (nanosecond resolution) against random clock moves:
    /// after each move, exactly the pulls whose deadline has come are
    /// over, each at its deadline to the nanosecond.
    #[test]
    fn timeouts_fire_exactly_when_due(
        timeouts in prop::collection::vec(1u64..5_000_000_000, 1..20),
        moves in prop::collection::vec(0u64..1_500_000_000, 1..20),
    ) {
        let mut pair = Pair::default_pair();
        let t0 = pair.now;
        let tokens: Vec<(Token, Duration)> = timeouts
            .iter()
            .map(|ns| {
                let d = Duration::from_nanos(*ns);
                (pair.pull("/defer", "x", Some(d)).unwrap(), d)
            })
            .collect();
        pair.drive();
        let check = |pair: &Pair| -> Result<(), TestCaseError> {
            for (t, d) in &tokens {
                let due = t0 + *d <= pair.now;
                prop_assert_eq!(
                    pair.client.is_resolved(*t),
                    due,
                    "token {} ({:?}) at {:?}",
                    t,
                    d,
                    pair.elapsed()
                );
                if let Some(r) = pair.client.resolved.get(t) {
                    prop_assert_eq!(r.at, t0 + *d);
                    prop_assert_eq!(r.result.as_ref().unwrap_err().code, Rerror::CODE_TIMEOUT);
                }
            }
            Ok(())
        };
        for m in moves {
            // Waking the session when nothing is due changes nothing.
            let now = pair.now;
            pair.client.session.handle_timeout(now);
            prop_assert!(!pair.client.pump(now));
            pair.advance(Duration::from_nanos(m));
            check(&pair)?;
        }
        pair.advance(Duration::from_secs(5));
        check(&pair)?;
        pair.client.assert_all_resolved();
        prop_assert_eq!(pair.client.session.stats().timeouts, tokens.len() as u64);
    }
}

/// A fixed body codec keeps the round trip honest: a reply carries the
/// pull's codec back (D-UNKNOWN-CODEC-EMPTY aside).
#[test]
fn replies_keep_the_pulls_codec() {
    let mut pair = Pair::default_pair();
    let mut p = Packet::default().with_body(CodecId::PROTOBUF, &b"\x08\x01"[..]);
    p.uri = "/echo".into();
    let now = pair.now;
    let t = pair.client.pull(now, p, None).unwrap();
    pair.drive();
    let r = pair.client.result(t).as_ref().unwrap();
    assert_eq!(r.body_codec, CodecId::PROTOBUF);
    assert_eq!(r.body, &b"\x08\x01"[..]);
}
