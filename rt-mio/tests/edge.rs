//! Edge cases: panics outside a handler's future and in push handlers,
//! bodies that do not decode, `listen` blocking until shutdown, a stuck
//! handler at shutdown, unix socket files, address families.

mod common;

use std::sync::{mpsc, Mutex};
use std::time::Duration;

use teleport_core::Rerror;
use teleport_mio::prelude::*;
use teleport_mio::{Network, Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx, PushCtx, Session};

use common::{dial_addr, guard, recv, test_logs, SockPath};

fn echo(b: &mut PeerBuilder) {
    b.pull_sync("/echo", |_ctx: PullCtx, s: String| Ok::<_, Rerror>(s));
}

fn serve(b: PeerBuilder) -> (Peer, String) {
    test_logs();
    let server = Peer::from_builder(b).expect("server builds");
    let addr = dial_addr(&server.spawn_listener().expect("bind"));
    (server, addr)
}

fn dial(addr: &str) -> (Peer, Session) {
    let client = Peer::new(PeerConfig::default()).unwrap();
    let addr = addr.to_string();
    guard("dial", move || {
        let s = client.dial(&addr).expect("dial");
        (client, s)
    })
}

fn assert_echoes(s: &Session, what: &'static str) {
    let s = s.clone();
    let r = guard(what, move || s.pull::<_, String>("/echo", what));
    assert_eq!(r.unwrap_or_else(|e| panic!("{what}: {e}")).value, what);
}

#[test]
fn push_handler_panic_does_not_kill_the_session() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut b = PeerBuilder::new(PeerConfig::default());
    echo(&mut b);
    b.push_sync("/boom", |_ctx: PushCtx, s: String| panic!("push boom {s}"));
    b.push_sync("/ok", move |_ctx: PushCtx, s: String| {
        let _ = tx.lock().unwrap().send(s);
    });
    let (_server, addr) = serve(b);
    let (_client, s) = dial(&addr);
    let s2 = s.clone();
    guard("pushes", move || {
        s2.push("/boom", "x").expect("push queued");
        s2.push("/ok", "after").expect("push queued");
    });
    assert_eq!(recv("push after the panic", &rx), "after");
    assert_echoes(&s, "session lives on");
}

#[test]
fn body_that_does_not_decode_is_400_and_the_handler_does_not_run() {
    let (tx, rx) = mpsc::channel::<()>();
    let tx = Mutex::new(tx);
    let mut b = PeerBuilder::new(PeerConfig::default());
    echo(&mut b);
    b.pull_sync("/typed", move |_ctx: PullCtx, n: u64| {
        let _ = tx.lock().unwrap().send(());
        Ok::<_, Rerror>(n)
    });
    let (_server, addr) = serve(b);
    let (_client, s) = dial(&addr);
    let s2 = s.clone();
    let e = guard("bad body", move || {
        s2.pull::<_, u64>("/typed", "not a number")
    })
    .expect_err("a body that does not decode");
    assert_eq!(e.code, Rerror::CODE_BAD_PACKET, "{e}");
    assert!(rx.try_recv().is_err(), "the handler ran");
    assert_echoes(&s, "after a bad body");
}

#[test]
fn listen_blocks_until_shutdown() {
    test_logs();
    let mut b = PeerBuilder::new(PeerConfig::default());
    echo(&mut b);
    let server = Peer::from_builder(b).unwrap();
    let (tx, rx) = mpsc::channel();
    let listening = server.clone();
    let t = std::thread::spawn(move || {
        let r = listening.listen();
        let _ = tx.send(());
        r
    });
    // `listen` has not returned: it serves until shutdown.
    assert!(rx.try_recv().is_err());
    let srv = server.clone();
    let report = guard("shutdown", move || srv.shutdown(Duration::from_secs(1)));
    assert_eq!(report.cancelled, 0);
    recv("listen returns", &rx);
    t.join().unwrap().expect("listen");
    // And a dial is refused now.
    let e = server.dial("127.0.0.1:1").expect_err("dial after shutdown");
    assert!(matches!(e, teleport_mio::DialError::ShuttingDown), "{e}");
    assert_eq!(Rerror::from(e).code, Rerror::CODE_DIAL_FAILED);
}

#[test]
fn shutdown_with_a_stuck_handler_ends_and_the_caller_gets_102() {
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let started_tx = Mutex::new(started_tx);
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/stuck", move |_ctx: PullCtx, _: ()| {
        let _ = started_tx.lock().unwrap().send(());
        async move {
            std::future::pending::<()>().await;
            Ok::<(), Rerror>(())
        }
    });
    let (server, addr) = serve(b);
    let (_client, s) = dial(&addr);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(s.pull::<_, ()>("/stuck", &()));
    });
    recv("handler starts", &started_rx);
    let report = guard("shutdown", move || {
        server.shutdown(Duration::from_millis(100))
    });
    assert_eq!(report.sessions, 1);
    let e = recv("stuck pull", &rx).expect_err("the stuck pull fails");
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{e}");
}

#[cfg(unix)]
#[test]
fn unix_listener_replaces_a_stale_socket_file_not_a_live_one() {
    test_logs();
    let path = SockPath::new("stale");
    let cfg = PeerConfig {
        network: Network::Unix,
        listen_address: path.as_str().to_string(),
        ..PeerConfig::default()
    };
    let mut b = PeerBuilder::new(cfg.clone());
    echo(&mut b);
    let first = Peer::from_builder(b).unwrap();
    assert_eq!(
        first.spawn_listener().unwrap(),
        PeerAddr::Unix(path.as_str().into())
    );
    // A live server keeps its socket.
    let e = Peer::new(cfg.clone())
        .unwrap()
        .spawn_listener()
        .expect_err("a live server's socket is not taken");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    // Gone, it leaves the file behind: the next server takes its place.
    drop(first);
    assert!(path.0.exists());
    let mut b = PeerBuilder::new(cfg);
    echo(&mut b);
    let second = Peer::from_builder(b).unwrap();
    second
        .spawn_listener()
        .expect("bind over a stale socket file");
    let client = Peer::new(PeerConfig {
        network: Network::Unix,
        ..PeerConfig::default()
    })
    .unwrap();
    let p = path.as_str().to_string();
    let r = guard("pull", move || {
        client
            .dial(&p)
            .expect("dial")
            .pull::<_, String>("/echo", "unix")
    });
    assert_eq!(r.expect("pull").value, "unix");
}

#[test]
fn tcp4_and_tcp6_pick_their_family() {
    let peer = Peer::new(PeerConfig {
        network: Network::Tcp6,
        listen_address: "127.0.0.1:0".into(),
        ..PeerConfig::default()
    })
    .unwrap();
    let e = peer.spawn_listener().expect_err("an IPv4 address on tcp6");
    assert!(e.to_string().contains("Tcp6"), "{e}");
    let e = peer
        .dial("127.0.0.1:1")
        .expect_err("an IPv4 address on tcp6");
    assert!(e.to_string().contains("Tcp6"), "{e}");
}
