//! The core's plugins plug into a tokio peer unchanged: auth in front of
//! every route, stats counting both sides, heartbeat keeping a quiet
//! session alive and closing a silent one.

mod common;

use std::time::Duration;

use teleport_core::plugin::{Auth, Heartbeat, Stats};
use teleport_core::Rerror;
use teleport_tokio::{Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx};

use common::{guard, test_logs};

fn echo_server(b: &mut PeerBuilder) {
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
}

async fn bind(b: PeerBuilder) -> (Peer, String) {
    test_logs();
    let server = Peer::from_builder(b).expect("server builds");
    let PeerAddr::Tcp(addr) = server.bind().await.expect("bind") else {
        panic!("tcp address expected")
    };
    (server, addr.to_string())
}

fn verify(cred: &[u8]) -> Result<(), Rerror> {
    if cred == b"open sesame" {
        Ok(())
    } else {
        Err(Auth::unauthorized("wrong password"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_lets_the_right_credentials_in_and_keeps_the_wrong_ones_out() {
    let server_stats = Stats::new();
    let mut b = PeerBuilder::new(PeerConfig::default());
    echo_server(&mut b);
    // Plugins run in order, and auth consumes its own pull: stats goes
    // first to count it too.
    b.plugin(server_stats.clone())
        .plugin(Auth::acceptor(verify));
    let (_server, addr) = bind(b).await;

    // The right credentials: the dialer's first pull, then routes work.
    let client_stats = Stats::new();
    let mut cb = PeerBuilder::new(PeerConfig::default());
    cb.plugin(Auth::dialer("open sesame"))
        .plugin(client_stats.clone());
    let good = Peer::from_builder(cb).unwrap();
    let s = guard("dial", good.dial(&addr)).await.expect("dial");
    let r = guard("pull", s.pull::<_, String>("/echo", "in")).await;
    assert_eq!(r.expect("authenticated pull").value, "in");
    // Stats saw both pulls (auth and echo) on both sides.
    let c = client_stats.snapshot();
    assert_eq!((c.pulls_sent, c.replies_received), (2, 2), "{c:?}");
    assert!(c.bytes_out > 0 && c.bytes_in > 0, "{c:?}");
    assert!(c.latency_quantile(1.0).is_some());
    let sv = server_stats.snapshot();
    assert_eq!((sv.pulls_received, sv.replies_sent), (2, 2), "{sv:?}");

    // The wrong credentials: the session is closed with the 401.
    let mut cb = PeerBuilder::new(PeerConfig::default());
    cb.plugin(Auth::dialer("let me in"));
    let bad = Peer::from_builder(cb).unwrap();
    let s = guard("dial", bad.dial(&addr)).await.expect("dial");
    let e = guard("pull", s.pull::<_, String>("/echo", "no"))
        .await
        .expect_err("refused");
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{e}");
    assert!(e.detail.contains("401"), "{e}");

    // No credentials at all: the first pull gets the 401 itself.
    let plain = Peer::new(PeerConfig::default()).unwrap();
    let s = guard("dial", plain.dial(&addr)).await.expect("dial");
    let e = guard("pull", s.pull::<_, String>("/echo", "no"))
        .await
        .expect_err("refused");
    assert_eq!(e.code, 401, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_closes_a_silent_peer_and_keeps_a_live_one() {
    let hb = Heartbeat::new(Duration::from_millis(50), Duration::from_millis(300));
    let mut b = PeerBuilder::new(PeerConfig::default());
    echo_server(&mut b);
    b.plugin(hb);
    let (server, addr) = bind(b).await;

    // A client with the plugin pings: its session outlives many silences.
    let mut cb = PeerBuilder::new(PeerConfig::default());
    cb.plugin(hb);
    let live = Peer::from_builder(cb).unwrap();
    let s = guard("dial", live.dial(&addr)).await.expect("dial");

    // A raw client that never sends anything is closed by the server.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 256];
    loop {
        // The server's pings arrive, then the connection ends.
        let n = guard(
            "silent client cut off",
            tokio::io::AsyncReadExt::read(&mut silent, &mut buf),
        )
        .await
        .unwrap_or(0);
        if n == 0 {
            break;
        }
    }
    // Meanwhile the pinging client's session lived on the whole time.
    let r = guard("pull", s.pull::<_, String>("/echo", "alive")).await;
    assert_eq!(r.expect("live session").value, "alive");
    assert_eq!(server.sessions().len(), 1, "only the live session remains");
}
