//! Deterministic simulation of the plugins between two sessions:
//! heartbeat, auth and stats.

mod sim;

use std::time::Duration;

use sim::{router, shared, Handler, Pair, Token};
use teleport_core::plugin::{Auth, Heartbeat, Stats, HEARTBEAT_URI};
use teleport_core::{CloseReason, Plugins, Rerror, Shared};

const SEC: Duration = Duration::from_secs(1);
const NS: Duration = Duration::from_nanos(1);

fn with_plugins(plugins: Plugins) -> Shared<Handler> {
    shared().with_plugins(plugins)
}

/// Pings every second, gives up after three silent seconds; a push route at
/// the ping's URI, so a ping that was not swallowed would show as an event.
fn heartbeat() -> Shared<Handler> {
    let mut r = router();
    r.push(HEARTBEAT_URI, Handler::Sink);
    Shared::new(r).with_plugins(Plugins::new().with(Heartbeat::new(SEC, 3 * SEC)))
}

#[test]
fn heartbeat_keeps_a_quiet_but_live_session_open_and_swallows_pings() {
    let mut pair = Pair::new(heartbeat(), heartbeat());
    pair.advance(60 * SEC);
    assert!(pair.client.closed.is_none() && pair.server.closed.is_none());
    for side in [&pair.client, &pair.server] {
        let st = side.session.stats();
        assert!(st.frames_in >= 59, "{}: {st:?}", side.name);
        assert!(st.frames_out >= 59, "{}: {st:?}", side.name);
        assert!(side.pushes.is_empty(), "{}: a ping was routed", side.name);
        assert_eq!(st.dropped_pushes, 0, "{}", side.name);
    }
    // Calls still work, and time keeps them alive as well.
    let t = pair.pull("/echo", "alive", None).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(t), "alive");
}

#[test]
fn pings_are_real_pushes_a_peer_without_the_plugin_drops() {
    let mut pair = Pair::new(heartbeat(), shared());
    pair.advance(10 * SEC + NS);
    // The server has no heartbeat and no route: each ping is dropped (at
    // 1 s and 2 s; at 3 s the client, having heard nothing back, gives up).
    assert_eq!(pair.server.session.stats().dropped_pushes, 2);
    assert!(matches!(
        pair.client.close_reason(),
        CloseReason::Plugin(e) if e.code == Rerror::CODE_CONN_CLOSED
    ));
    assert_eq!(pair.client.closed.as_ref().unwrap().1, pair.start + 3 * SEC);
}

#[test]
fn heartbeat_silence_closes_the_session_at_the_deadline() {
    let mut pair = Pair::new(heartbeat(), heartbeat());
    let t = pair.pull("/defer", "waits", None).unwrap();
    pair.drive();
    pair.advance(10 * SEC);
    assert!(pair.client.closed.is_none());
    // The server goes silent: nothing it writes reaches the client.
    pair.s2c.held = true;
    pair.advance(SEC / 2);
    let last_read = pair.s2c.last_delivery.unwrap();
    let deadline = last_read + 3 * SEC;
    pair.advance_to(deadline - NS);
    assert!(
        pair.client.closed.is_none(),
        "closed before the silence deadline"
    );
    pair.advance_to(deadline);
    match pair.client.close_reason() {
        CloseReason::Plugin(e) => {
            assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
            assert!(e.detail.contains("heartbeat"), "{e}");
        }
        r => panic!("closed for {r:?}"),
    }
    assert_eq!(pair.client.closed.as_ref().unwrap().1, deadline);
    pair.client.assert_all_resolved();
    let e = pair.client.error(t);
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
    assert!(e.detail.contains("closed by plugin"), "{e}");
    // The server still hears the client until its connection ends; it
    // then finishes the handler it runs for the client's pull (the end of
    // input may be a half-close) and closes.
    assert!(pair.server.closed.is_none(), "the server drains first");
    for p in pair.server.take_deferred() {
        pair.server.echo(pair.now, &p).unwrap();
    }
    pair.server.pump(pair.now);
    assert_eq!(pair.server.close_reason(), &CloseReason::PeerClosed);
    assert!(pair.client.session.poll_timeout().is_none());
}

fn check_secret(c: &[u8]) -> Result<(), Rerror> {
    if c == b"secret" {
        Ok(())
    } else {
        Err(Auth::unauthorized("bad credentials"))
    }
}

#[test]
fn auth_success_lets_the_following_pulls_through() {
    let mut pair = Pair::new(
        with_plugins(Plugins::new().with(Auth::dialer("secret"))),
        with_plugins(Plugins::new().with(Auth::acceptor(check_secret))),
    );
    // Pipelined right behind the credentials.
    let t: Vec<Token> = (0..3)
        .map(|i| pair.pull("/echo", format!("call {i}"), None).unwrap())
        .collect();
    pair.drive();
    for (i, t) in t.iter().enumerate() {
        assert_eq!(pair.client.body(*t), format!("call {i}"));
    }
    // The credentials pull was answered (and is no user event).
    assert_eq!(pair.client.session.pending_pulls(), 0);
    assert_eq!(pair.client.order, t);
    assert_eq!(pair.server.pulls_routed, 3, "the auth pull is not routed");
    assert_eq!(pair.server.session.incoming_pulls(), 0);
    assert!(pair.client.closed.is_none() && pair.server.closed.is_none());
    // Later calls need no new credentials.
    let more = pair.pull("/echo", "later", None).unwrap();
    pair.push("/sink", "later push").unwrap();
    pair.drive();
    assert_eq!(pair.client.body(more), "later");
    assert_eq!(pair.server.pushes.len(), 1);
}

#[test]
fn auth_failure_closes_the_acceptor_and_the_dialer_gets_the_error() {
    let mut pair = Pair::new(
        with_plugins(Plugins::new().with(Auth::dialer("wrong"))),
        with_plugins(Plugins::new().with(Auth::acceptor(check_secret))),
    );
    let t = pair.pull("/echo", "never runs", None).unwrap();
    pair.drive();
    let want = Auth::unauthorized("bad credentials");
    assert_eq!(
        pair.server.close_reason(),
        &CloseReason::Plugin(want.clone())
    );
    assert_eq!(pair.server.pulls_routed, 0);
    // The dialer read the error reply and closed with it.
    assert_eq!(pair.client.close_reason(), &CloseReason::Plugin(want));
    pair.client.assert_all_resolved();
    let e = pair.client.error(t);
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
    assert!(e.detail.contains("401"), "{e}");
}

#[test]
fn a_pull_before_auth_is_answered_401_and_closes_the_acceptor() {
    let mut pair = Pair::new(
        shared(),
        with_plugins(Plugins::new().with(Auth::acceptor(check_secret))),
    );
    let t = pair.pull("/echo", "no credentials", None).unwrap();
    pair.drive();
    let e = pair.client.error(t);
    assert_eq!(e.code, 401);
    assert!(e.detail.contains("before authentication"), "{e}");
    assert!(matches!(
        pair.server.close_reason(),
        CloseReason::Plugin(e) if e.code == 401
    ));
    assert_eq!(pair.server.pulls_routed, 0);
    assert_eq!(pair.client.close_reason(), &CloseReason::PeerClosed);
}

#[test]
fn a_push_before_auth_closes_the_acceptor_unanswered() {
    let mut pair = Pair::new(
        shared(),
        with_plugins(Plugins::new().with(Auth::acceptor(check_secret))),
    );
    pair.push("/sink", "no credentials").unwrap();
    pair.drive();
    assert!(pair.server.pushes.is_empty());
    assert!(matches!(
        pair.server.close_reason(),
        CloseReason::Plugin(e) if e.code == 401
    ));
    assert_eq!(pair.client.session.stats().frames_in, 0);
    assert_eq!(pair.client.close_reason(), &CloseReason::PeerClosed);
}

#[test]
fn an_auth_pull_with_no_acceptor_plugin_is_an_ordinary_404() {
    // A dialer with credentials against a server without auth: the server
    // answers 404, and the dialer closes with it.
    let mut pair = Pair::new(
        with_plugins(Plugins::new().with(Auth::dialer("secret"))),
        shared(),
    );
    pair.drive();
    assert_eq!(
        pair.client.close_reason(),
        &CloseReason::Plugin(Rerror::not_found())
    );
    assert_eq!(pair.server.session.stats().frames_in, 1);
    assert_eq!(pair.server.pulls_routed, 0);
}

#[test]
fn stats_count_both_sides_of_every_call() {
    let (cs, ss) = (Stats::new(), Stats::new());
    let mut pair = Pair::new(
        with_plugins(Plugins::new().with(cs.clone())),
        with_plugins(Plugins::new().with(ss.clone())),
    );
    for i in 0..10 {
        pair.pull("/echo", format!("{i}"), None).unwrap();
    }
    pair.pull("/fail", "x", None).unwrap();
    pair.pull("/nope", "x", None).unwrap();
    pair.push("/sink", "a").unwrap();
    pair.push("/sink", "b").unwrap();
    pair.drive();
    let (c, s) = (cs.snapshot(), ss.snapshot());
    assert_eq!(
        (c.pulls_sent, c.pushes_sent, c.replies_received),
        (12, 2, 12)
    );
    assert_eq!(
        (s.pulls_received, s.pushes_received, s.replies_sent),
        (12, 2, 12)
    );
    assert_eq!((c.errors, s.errors), (2, 2));
    assert_eq!(c.bytes_out, s.bytes_in);
    assert_eq!(s.bytes_out, c.bytes_in);
    assert_eq!(c.bytes_out, pair.client.session.stats().bytes_out);
    assert_eq!(c.latency.iter().sum::<u64>(), 12);
    // Virtual time: every call took zero.
    assert_eq!(c.latency[0], 12);
}

#[test]
fn heartbeat_keeps_pinging_while_a_graceful_close_drains() {
    let mut pair = Pair::new(heartbeat(), heartbeat());
    let t = pair.pull("/defer", "slow", None).unwrap();
    pair.drive();
    pair.client.session.close(pair.now);
    // The handler takes far longer than the heartbeat's silence.
    pair.advance(20 * SEC);
    assert!(pair.server.closed.is_none(), "{:?}", pair.server.closed);
    assert!(pair.client.closed.is_none(), "{:?}", pair.client.closed);
    let p = pair.server.take_deferred().pop().unwrap();
    pair.server.echo(pair.now, &p).unwrap();
    pair.drive();
    assert_eq!(pair.client.body(t), "slow");
    assert_eq!(pair.client.close_reason(), &CloseReason::Local);
    assert!(pair.client.pushes.is_empty() && pair.server.pushes.is_empty());
}
