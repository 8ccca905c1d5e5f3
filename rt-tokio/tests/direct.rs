//! Calls a caller carries out itself (encoding and writing on its own
//! task, without a hop to the connection's task) behave as queued ones
//! do: their deadlines fire, what the socket will not take is written
//! later and bounded, and a close stops them.

mod common;

use std::future::pending;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use teleport_core::Rerror;
use teleport_tokio::{Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx};

use common::{guard, test_logs};

/// A server with `/echo`, `/never` (no reply, ever) and a count of the
/// pulls that reached it.
async fn server() -> (Peer, String, Arc<AtomicUsize>) {
    test_logs();
    let seen = Arc::new(AtomicUsize::new(0));
    let mut b = PeerBuilder::new(PeerConfig::default());
    let s = seen.clone();
    b.pull("/echo", move |_ctx: PullCtx, body: String| {
        s.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, Rerror>(body) }
    });
    let s = seen.clone();
    b.pull("/never", move |_ctx: PullCtx, _: String| {
        s.fetch_add(1, Ordering::SeqCst);
        async move { pending::<Result<String, Rerror>>().await }
    });
    let server = Peer::from_builder(b).expect("server builds");
    let PeerAddr::Tcp(addr) = server.bind().await.expect("bind") else {
        panic!("tcp address expected")
    };
    (server, addr.to_string(), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_timeout_fires_although_a_longer_one_was_armed_first() {
    let (_server, addr, seen) = server().await;
    let client = Peer::new(PeerConfig::default()).unwrap();
    let s = guard("dial", client.dial(&addr)).await.expect("dial");

    // The connection's task waits for this pull's hour-long deadline ...
    let long = tokio::spawn({
        let s = s.clone();
        async move {
            s.call("/never")
                .timeout(Duration::from_secs(3600))
                .pull::<_, String>("long")
                .await
        }
    });
    while seen.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // ... when an idle session's next pull, written by its caller, asks
    // for an earlier one: the task must hear of it.
    let r = guard(
        "short pull",
        s.call("/never")
            .timeout(Duration::from_millis(200))
            .pull::<_, String>("short"),
    )
    .await;
    assert_eq!(r.expect_err("no reply comes").code, Rerror::CODE_TIMEOUT);
    assert!(!long.is_finished(), "the long pull is still waiting");
    long.abort();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_than_the_socket_takes_at_once_arrive_whole() {
    let (_server, addr, _) = server().await;
    let client = Peer::new(PeerConfig::default()).unwrap();
    let s = guard("dial", client.dial(&addr)).await.expect("dial");
    // The caller writes what the socket takes; the rest goes out from the
    // connection's task as the peer reads.
    let body = "z".repeat(8 << 20);
    let r = guard("one big echo", s.pull::<_, String>("/echo", &body)).await;
    assert!(r.expect("reply").value == body, "the echo is the body sent");
    // The same from several callers at once.
    let calls = (0..4u8).map(|i| {
        let s = s.clone();
        let body = char::from(b'a' + i).to_string().repeat(3 << 20);
        tokio::spawn(async move {
            let r = s.pull::<_, String>("/echo", &body).await;
            r.map(|r| r.value == body)
        })
    });
    for c in calls.collect::<Vec<_>>() {
        let same = guard("big echo", c).await.expect("task").expect("reply");
        assert!(same, "the echo is the body sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_peer_that_does_not_read_hit_the_queue_limit() {
    test_logs();
    // A listener that accepts and never reads.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let (conn, _) = l.accept().await.unwrap();
        pending::<()>().await;
        drop(conn);
    });
    let cfg = PeerConfig {
        max_queued_bytes: 1 << 20,
        ..PeerConfig::default()
    };
    let client = Peer::new(cfg).unwrap();
    let s = guard("dial", client.dial(&addr)).await.expect("dial");
    let body = "x".repeat(256 << 10);
    // The kernel's buffers take some megabytes; after that the bytes
    // queue in the session, up to the limit, then pushes are refused.
    let mut refused = None;
    for _ in 0..512 {
        if let Err(e) = guard("push", s.push("/sink", &body)).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("a push is refused before 128 MiB is queued");
    assert_eq!(e.code, Rerror::CODE_BACKPRESSURE, "{e:?}");
    held.abort();
}
