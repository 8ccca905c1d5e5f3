//! The going-away notice, between two core sessions: a server that shuts
//! down tells its client to move, serves what the client sent before it
//! read the notice, and closes once the client has ended its input; the
//! client makes no call after the notice and ends once its calls are over.
//! At the close's deadline, a pull still being handled gets an error reply.

mod sim;

use std::time::Duration;

use sim::*;
use teleport_core::{CloseReason, Rerror, State, GOING_AWAY_URI};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn the_client_finishes_its_calls_then_moves_and_the_server_serves_them_all() {
    let mut pair = Pair::default_pair();
    // Pulls the server holds, and more still on the wire (not delivered)
    // when the server starts going away.
    let held: Vec<Token> = (0..3)
        .map(|i| pair.pull("/defer", format!("held {i}"), None).unwrap())
        .collect();
    pair.drive();
    assert_eq!(pair.server.deferred.len(), 3);
    pair.c2s.held = true;
    let in_flight: Vec<Token> = (0..4)
        .map(|i| pair.pull("/echo", format!("late {i}"), None).unwrap())
        .collect();
    pair.transmit();

    let deadline = pair.now + 10 * SEC;
    pair.server.session.go_away(pair.now, deadline);
    assert!(matches!(pair.server.session.state(), State::Closing { .. }));
    pair.drive();
    // The notice reached the client: it makes no new call here.
    assert!(pair.client.session.is_moving());
    assert!(pair.client.pushes.is_empty(), "the notice is not routed");
    let (e, _) = pair.pull("/echo", "after the notice", None).unwrap_err();
    assert_eq!(e.code, Rerror::conn_closed().code, "{e:?}");

    // The pulls the client sent before it read the notice are served, not
    // refused, although the server is closing.
    pair.c2s.held = false;
    pair.drive();
    for (i, t) in in_flight.iter().enumerate() {
        assert_eq!(pair.client.body(*t), format!("late {i}"));
    }
    assert!(pair.server.closed.is_none() && pair.client.closed.is_none());
    for p in pair.server.take_deferred() {
        pair.server.echo(pair.now, &p).unwrap();
    }
    pair.drive();
    for (i, t) in held.iter().enumerate() {
        assert_eq!(pair.client.body(*t), format!("held {i}"));
    }
    // The client ended first (it moved), the server at its end of input.
    assert_eq!(*pair.client.close_reason(), CloseReason::GoingAway);
    assert_eq!(*pair.server.close_reason(), CloseReason::PeerClosed);
    assert!(pair.now < deadline);
    assert_eq!(pair.server.session.stats().dropped_pushes, 0);
    assert_eq!(pair.client.session.stats().dropped_pushes, 0);
}

#[test]
fn without_the_end_of_input_the_server_closes_at_the_deadline_and_cuts_what_runs() {
    let mut pair = Pair::default_pair();
    // The client never learns of the notice (the server-to-client link is
    // held), like a peer that does not know it: it keeps pulling.
    pair.s2c.held = true;
    let deadline = pair.now + 5 * SEC;
    pair.server.session.go_away(pair.now, deadline);
    let served = pair.pull("/echo", "still served", None).unwrap();
    let slow = pair.pull("/defer", "too slow", None).unwrap();
    pair.drive();
    assert_eq!(pair.server.deferred.len(), 1);
    assert!(pair.server.closed.is_none());
    pair.advance_to(deadline);
    assert!(
        matches!(
            pair.server.close_reason(),
            CloseReason::DrainTimeout {
                pulls: 0,
                handlers: 1
            }
        ),
        "{:?}",
        pair.server.closed
    );
    // What the server wrote reaches the client now: the served pull's
    // reply, and for the cut one an error that says why.
    pair.s2c.held = false;
    pair.drive();
    assert_eq!(pair.client.body(served), "still served");
    let e = pair.client.error(slow);
    assert_eq!(e.code, Rerror::conn_closed().code, "{e:?}");
    assert!(
        e.detail.contains("before its handler finished"),
        "the error says the pull was cut: {e:?}"
    );
    // The handler's late reply is refused, not sent.
    let p = pair.server.take_deferred().pop().unwrap();
    assert!(pair.server.echo(pair.now, &p).is_err());
}

#[test]
fn with_nothing_running_the_deadline_closes_cleanly() {
    let mut pair = Pair::default_pair();
    pair.s2c.held = true;
    let deadline = pair.now + 5 * SEC;
    pair.server.session.go_away(pair.now, deadline);
    pair.drive();
    assert!(
        pair.server.closed.is_none(),
        "it waits for the peer's end of input"
    );
    pair.advance_to(deadline);
    assert_eq!(*pair.server.close_reason(), CloseReason::Local);
}

#[test]
fn a_dialing_session_that_goes_away_just_closes() {
    let mut pair = Pair::default_pair();
    let deadline = pair.now + 5 * SEC;
    pair.client.session.go_away(pair.now, deadline);
    pair.drive();
    assert_eq!(*pair.client.close_reason(), CloseReason::Local);
    assert!(!pair.server.session.is_moving());
    assert_eq!(pair.server.session.stats().dropped_pushes, 0);
}

#[test]
fn the_notice_is_an_ordinary_push_to_the_reserved_route() {
    let mut pair = Pair::default_pair();
    pair.s2c.held = true;
    pair.server.session.go_away(pair.now, pair.now + SEC);
    pair.transmit();
    let wire = pair.s2c.pipe.clone();
    let mut proto = teleport_core::FastProto::new(
        1 << 20,
        std::sync::Arc::new(teleport_core::XferRegistry::empty()),
    );
    let mut buf = bytes::BytesMut::from(&wire[..]);
    let p = teleport_core::Proto::decode(&mut proto, &mut buf)
        .unwrap()
        .unwrap();
    assert_eq!(p.ptype, teleport_core::PacketType::PUSH);
    assert_eq!(p.uri.path(), GOING_AWAY_URI.as_bytes());
    assert!(p.body.is_empty());
}
