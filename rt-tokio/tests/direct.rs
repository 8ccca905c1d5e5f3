//! A close stops the calls a caller would carry out itself (encoding and
//! writing on its own task): refused, and nothing reaches the peer. The
//! other guarantees of that path (deadlines, large bodies, the queue
//! limit) are checked on every runtime by the conformance suite.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use teleport_core::Rerror;
use teleport_tokio::{Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx};

use common::{guard, test_logs};

/// A server with `/echo` and a count of the pulls that reached it.
async fn server() -> (Peer, String, Arc<AtomicUsize>) {
    test_logs();
    let seen = Arc::new(AtomicUsize::new(0));
    let mut b = PeerBuilder::new(PeerConfig::default());
    let s = seen.clone();
    b.pull("/echo", move |_ctx: PullCtx, body: String| {
        s.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Rerror>(body) }
    });
    let server = Peer::from_builder(b).expect("server builds");
    let PeerAddr::Tcp(addr) = server.spawn_listener().await.expect("bind") else {
        panic!("tcp address expected")
    };
    (server, addr.to_string(), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_after_close_by_is_refused_and_never_sent() {
    let (_server, addr, seen) = server().await;
    let client = Peer::new(PeerConfig::default()).unwrap();
    let s = guard("dial", client.dial(&addr)).await.expect("dial");
    let r = guard("first pull", s.pull::<_, String>("/echo", "one")).await;
    assert_eq!(r.expect("echo").value, "one");

    s.close_by(Instant::now() + Duration::from_secs(5));
    let r = guard("pull after close", s.pull::<_, String>("/echo", "two")).await;
    assert_eq!(r.expect_err("refused").code, Rerror::CODE_CONN_CLOSED);
    guard("closed", async {
        while !s.is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        1,
        "only the first pull arrived"
    );
}
