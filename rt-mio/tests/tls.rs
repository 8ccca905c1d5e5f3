//! TLS on the poll loop (feature `tls`), with certificates made in the
//! test: sessions over TLS on every transport, each way a handshake fails
//! (named by a typed error on the dialing side, logged by the server,
//! which serves on), mutual TLS, handshake timeouts on both sides, the
//! per-listener and per-dial choices, and re-dials that speak TLS again.
#![cfg(feature = "tls")]

#[path = "../../testkit/src/certs.rs"]
mod certs;
mod common;

use std::io::{Read, Write};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use teleport_core::Rerror;
use teleport_mio::prelude::*;
use teleport_mio::{
    DialError, DialOptions, ListenOptions, Network, Peer, PeerAddr, PeerBuilder, PeerConfig,
    PullCtx, PushCtx, Session,
};
use teleport_peer::tls::{TlsAcceptor, TlsConnector, TlsError};
use teleport_testkit::{capture_logs, captured_logs};

use certs::{acceptor, client_connector, connector, mtls_acceptor, Ca, NAMES};
use common::{guard, recv, SockPath, GUARD};

fn routes(b: &mut PeerBuilder, notes: mpsc::Sender<String>) {
    let notes = Mutex::new(notes);
    b.pull_sync("/echo", |_ctx: PullCtx, s: String| Ok::<_, Rerror>(s));
    b.push_sync("/note", move |_ctx: PushCtx, s: String| {
        let _ = notes.lock().unwrap().send(s);
    });
}

/// A server of `/echo` and `/note` on `cfg`, serving TLS with `tls`; its
/// address to dial, and the notes pushed to it.
fn server(cfg: PeerConfig, tls: Option<TlsAcceptor>) -> (Peer, String, mpsc::Receiver<String>) {
    capture_logs();
    let (tx, rx) = mpsc::channel();
    let mut b = PeerBuilder::new(cfg);
    routes(&mut b, tx);
    if let Some(tls) = tls {
        b.listen_tls(tls);
    }
    let peer = Peer::from_builder(b).expect("server builds");
    let addr = peer.spawn_listener().expect("bind").dial_string();
    (peer, addr, rx)
}

fn tcp() -> PeerConfig {
    PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        ..PeerConfig::default()
    }
}

/// A client dialing with `tls`.
fn client(cfg: PeerConfig, tls: Option<TlsConnector>) -> Peer {
    let mut b = PeerBuilder::new(cfg);
    if let Some(tls) = tls {
        b.dial_tls(tls);
    }
    Peer::from_builder(b).expect("client builds")
}

fn dial(client: &Peer, addr: &str) -> Result<Session, DialError> {
    let (c, a) = (client.clone(), addr.to_string());
    guard("dial", move || c.dial(&a))
}

fn pull(s: &Session, what: &str) -> Result<String, Rerror> {
    let (s, what) = (s.clone(), what.to_string());
    guard("pull", move || s.pull::<_, String>("/echo", &what)).map(|r| r.value)
}

/// The TLS error of a failed dial.
fn tls_error(r: Result<Session, DialError>) -> TlsError {
    match r {
        Err(DialError::Tls { source, .. }) => source,
        Err(e) => panic!("not a TLS error: {e:?}"),
        Ok(_) => panic!("the dial succeeded"),
    }
}

/// Waits (at most [`GUARD`]) for the server's log to say `what`.
fn wait_for_log(what: &str) {
    let until = std::time::Instant::now() + GUARD;
    while !captured_logs().contains(what) {
        assert!(
            std::time::Instant::now() < until,
            "the log never said {what:?}:\n{}",
            captured_logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A body whose every byte depends on its place.
fn pattern(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i * 7 + i / 997) % 26) as u8))
        .collect()
}

fn over_tls(network: Network, listen: &str, server_name: Option<&str>) {
    let ca = Ca::new("test CA");
    let cfg = PeerConfig {
        network,
        listen_address: listen.into(),
        ..PeerConfig::default()
    };
    let (_server, addr, notes) = server(cfg.clone(), Some(acceptor(&ca.leaf(NAMES))));
    let mut tls = connector(&ca);
    if let Some(name) = server_name {
        tls = tls.with_server_name(name);
    }
    let client = client(cfg, Some(tls));
    let s = dial(&client, &addr).expect("dial over TLS");
    assert_eq!(pull(&s, "hello").expect("pull"), "hello");
    // Larger than rustls's record and buffer sizes, and than a seqpacket
    // message.
    let big = pattern(1 << 20);
    assert!(
        pull(&s, &big).expect("1 MiB pull") == big,
        "1 MiB body changed"
    );
    let s2 = s.clone();
    guard("push", move || s2.push("/note", "noted")).expect("push");
    assert_eq!(recv("push", &notes), "noted");
}

#[test]
fn pull_and_push_over_tls_on_tcp() {
    over_tls(Network::Tcp, "127.0.0.1:0", None);
}

#[cfg(unix)]
#[test]
fn pull_and_push_over_tls_on_unix() {
    let path = SockPath::new("tlsunix");
    over_tls(Network::Unix, path.as_str(), Some("localhost"));
}

#[cfg(unix)]
#[test]
fn pull_and_push_over_tls_on_unixpacket() {
    let path = SockPath::new("tlsupk");
    over_tls(Network::Unixpacket, path.as_str(), Some("localhost"));
}

#[test]
fn a_server_signed_by_another_ca_is_an_unknown_issuer() {
    let (ca, other) = (Ca::new("server CA"), Ca::new("another CA"));
    let (_server, addr, _) = server(tcp(), Some(acceptor(&ca.leaf(NAMES))));
    let client = client(PeerConfig::default(), Some(connector(&other)));
    let e = tls_error(dial(&client, &addr));
    assert!(matches!(e, TlsError::UnknownIssuer), "{e:?}");
}

#[test]
fn an_expired_certificate_is_named() {
    let ca = Ca::new("test CA");
    let (_server, addr, _) = server(tcp(), Some(acceptor(&ca.expired_leaf(NAMES))));
    let client = client(PeerConfig::default(), Some(connector(&ca)));
    let e = tls_error(dial(&client, &addr));
    assert!(matches!(e, TlsError::Expired), "{e:?}");
}

#[test]
fn a_certificate_for_another_name_is_a_wrong_name() {
    let ca = Ca::new("test CA");
    let (_server, addr, _) = server(tcp(), Some(acceptor(&ca.leaf(&["other.test"]))));
    let client = client(PeerConfig::default(), Some(connector(&ca)));
    match tls_error(dial(&client, &addr)) {
        TlsError::WrongName { name } => assert_eq!(name, "127.0.0.1"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn a_tls_client_to_a_plaintext_server_fails_fast() {
    let ca = Ca::new("test CA");
    let (_server, addr, _) = server(tcp(), None);
    let client = client(PeerConfig::default(), Some(connector(&ca)));
    // The server takes the client hello for a frame far over its limit and
    // hangs up: the handshake ends with the connection.
    let e = tls_error(dial(&client, &addr));
    assert!(matches!(e, TlsError::Closed), "{e:?}");
}

#[test]
fn a_plaintext_client_to_a_tls_server_fails_fast() {
    let ca = Ca::new("test CA");
    let (server, addr, _) = server(tcp(), Some(acceptor(&ca.leaf(NAMES))));
    let client = client(PeerConfig::default(), None);
    let s = dial(&client, &addr).expect("a plain TCP connect succeeds");
    pull(&s, "plain").expect_err("a TLS server does not answer plaintext");
    wait_for_log("does not speak TLS");
    assert!(
        server.sessions().is_empty(),
        "no session for a failed handshake"
    );
}

#[test]
fn mutual_tls_takes_the_right_client_certificate_only() {
    let (server_ca, client_ca, rogue_ca) = (
        Ca::new("server CA"),
        Ca::new("client CA"),
        Ca::new("rogue CA"),
    );
    let (_server, addr, _) = server(
        tcp(),
        Some(mtls_acceptor(&server_ca.leaf(NAMES), &client_ca)),
    );
    let good = client(
        PeerConfig::default(),
        Some(client_connector(
            &server_ca,
            &client_ca.leaf(&["client.test"]),
        )),
    );
    let s = dial(&good, &addr).expect("dial with the right certificate");
    assert_eq!(pull(&s, "mutual").expect("pull"), "mutual");

    // With TLS 1.3 a client's handshake ends before the server has checked
    // its certificate: the refusal comes as the session's first read, or
    // as the dial's error.
    let refused = |tls: TlsConnector| {
        let c = client(PeerConfig::default(), Some(tls));
        let r = dial(&c, &addr).map_err(|e| e.to_string());
        r.and_then(|s| pull(&s, "refused?").map_err(|e| e.to_string()))
    };
    refused(connector(&server_ca)).expect_err("no client certificate");
    wait_for_log("the other side sent no certificate");
    refused(client_connector(
        &server_ca,
        &rogue_ca.leaf(&["client.test"]),
    ))
    .expect_err("a client certificate of another CA");
    wait_for_log("the other side's certificate is not signed by a trusted CA");
    // And the right one still gets in.
    let s = dial(&good, &addr).expect("dial again");
    assert_eq!(pull(&s, "again").expect("pull"), "again");
}

#[test]
fn the_server_keeps_serving_after_bad_handshakes() {
    let (ca, other) = (Ca::new("test CA"), Ca::new("another CA"));
    let (server, addr, _) = server(tcp(), Some(acceptor(&ca.leaf(NAMES))));
    let sock_addr: std::net::SocketAddr = addr.parse().unwrap();
    for round in 0..3 {
        // Something that is not TLS at all, read until the server hangs up.
        let mut raw = std::net::TcpStream::connect(sock_addr).unwrap();
        raw.set_read_timeout(Some(GUARD)).unwrap();
        raw.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut sink = Vec::new();
        let _ = raw.read_to_end(&mut sink);
        // A connection closed at once.
        drop(std::net::TcpStream::connect(sock_addr).unwrap());
        // A client that does not trust the server.
        let wary = client(PeerConfig::default(), Some(connector(&other)));
        let e = tls_error(dial(&wary, &addr));
        assert!(matches!(e, TlsError::UnknownIssuer), "round {round}: {e:?}");
    }
    let good = client(PeerConfig::default(), Some(connector(&ca)));
    let s = dial(&good, &addr).expect("a good client after the bad ones");
    assert_eq!(pull(&s, "served").expect("pull"), "served");
    assert_eq!(
        server.sessions().len(),
        1,
        "only the good client has a session"
    );
}

#[test]
fn a_handshake_that_never_starts_is_dropped_at_the_timeout() {
    let ca = Ca::new("test CA");
    let tls = acceptor(&ca.leaf(NAMES)).with_handshake_timeout(Duration::from_millis(300));
    let (server, addr, _) = server(tcp(), Some(tls));
    let mut silent =
        std::net::TcpStream::connect(addr.parse::<std::net::SocketAddr>().unwrap()).unwrap();
    silent.set_read_timeout(Some(GUARD)).unwrap();
    let mut buf = [0u8; 64];
    // The server lets go of it: the end of input (never our read timeout).
    match silent.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        r => panic!("the silent connection was not dropped: {r:?}"),
    }
    wait_for_log("the TLS handshake took longer than 300ms");
    let good = client(PeerConfig::default(), Some(connector(&ca)));
    let s = dial(&good, &addr).expect("dial after the silent one");
    assert_eq!(pull(&s, "after").expect("pull"), "after");
    assert_eq!(server.sessions().len(), 1);
}

#[test]
fn a_dial_whose_server_never_answers_the_handshake_times_out() {
    let ca = Ca::new("test CA");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    // Accepts, reads the client hello, says nothing.
    let (held_tx, held_rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            let _ = held_tx.send(s);
        }
    });
    let tls = connector(&ca).with_handshake_timeout(Duration::from_millis(300));
    let c = client(PeerConfig::default(), Some(tls));
    let e = tls_error(dial(&c, &addr));
    assert!(
        matches!(e, TlsError::Timeout(t) if t == Duration::from_millis(300)),
        "{e:?}"
    );
    drop(recv("the held connection", &held_rx));
}

#[test]
fn listeners_and_dials_choose_their_own_tls() {
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(NAMES);
    // A TLS peer with a plaintext listener besides its TLS one.
    let (tls_server, tls_addr, _) = server(tcp(), Some(acceptor(&leaf)));
    let plain_addr = tls_server
        .spawn_listener_with(ListenOptions::default().address("127.0.0.1:0").no_tls())
        .unwrap()
        .dial_string();
    let c = client(PeerConfig::default(), Some(connector(&ca)));
    let s = dial(&c, &tls_addr).expect("TLS dial to the TLS listener");
    assert_eq!(pull(&s, "tls").unwrap(), "tls");
    let (c2, a) = (c.clone(), plain_addr.clone());
    let s = guard("dial", move || {
        c2.dial_with(&a, DialOptions::default().no_tls())
    })
    .expect("plaintext dial to the plaintext listener");
    assert_eq!(pull(&s, "plain").unwrap(), "plain");
    tls_error(dial(&c, &plain_addr));

    // A plaintext peer with a TLS listener, and a plaintext client dialing
    // it with TLS of this dial's own.
    let (plain_server, _, _) = server(tcp(), None);
    let tls_only = plain_server
        .spawn_listener_with(
            ListenOptions::default()
                .address("127.0.0.1:0")
                .tls(acceptor(&leaf)),
        )
        .unwrap()
        .dial_string();
    let plain = client(PeerConfig::default(), None);
    let (p, a) = (plain.clone(), tls_only.clone());
    let s = guard("dial", move || {
        p.dial_with(&a, DialOptions::default().tls(connector(&ca)))
    })
    .expect("TLS of the dial's own");
    assert_eq!(pull(&s, "own").unwrap(), "own");
}

/// Binds a new server at `addr` once the old one's port is free.
fn rebind(addr: String, tls: TlsAcceptor) -> Peer {
    guard("rebind", move || loop {
        let (tx, _) = mpsc::channel();
        let mut b = PeerBuilder::new(PeerConfig {
            listen_address: addr.clone(),
            ..PeerConfig::default()
        });
        routes(&mut b, tx);
        b.listen_tls(tls.clone());
        let p = Peer::from_builder(b).unwrap();
        match p.spawn_listener() {
            Ok(_) => return p,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("rebind: {e}"),
        }
    })
}

#[test]
fn a_redial_speaks_tls_again() {
    let ca = Ca::new("test CA");
    let tls = acceptor(&ca.leaf(NAMES));
    let (first, addr, _) = server(tcp(), Some(tls.clone()));
    let c = client(
        PeerConfig {
            redial_times: 5,
            redial_interval: Duration::from_millis(20),
            ..PeerConfig::default()
        },
        Some(connector(&ca)),
    );
    let s = dial(&c, &addr).expect("dial");
    assert_eq!(pull(&s, "one").unwrap(), "one");
    guard("shutdown", move || first.shutdown(Duration::ZERO));
    let second = rebind(addr, tls);
    assert_eq!(pull(&s, "two").expect("pull after the redial"), "two");
    assert_eq!(second.sessions().len(), 1);
    assert!(matches!(s.remote_addr(), PeerAddr::Tcp(_)));
}
