//! Edge cases around the required scenarios: panics outside the handler's
//! future, push handler panics, bodies that do not decode, late replies,
//! size limits, closing, stuck handlers at shutdown, pulling back.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use teleport_core::{CodecId, Rerror};
use teleport_tokio::{Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx, PushCtx, Session};
use tokio::sync::{mpsc, watch};

use common::{guard, test_logs};

async fn serve(b: PeerBuilder) -> (Peer, String) {
    test_logs();
    let server = Peer::from_builder(b).expect("server builds");
    let PeerAddr::Tcp(addr) = server.spawn_listener().await.expect("bind") else {
        panic!("tcp address expected")
    };
    (server, addr.to_string())
}

async fn dial(cfg: PeerConfig, addr: &str) -> (Peer, Session) {
    let client = Peer::new(cfg).unwrap();
    let s = guard("dial", client.dial(addr)).await.expect("dial");
    (client, s)
}

fn echo(b: &mut PeerBuilder) {
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
}

async fn assert_echoes(s: &Session, what: &str) {
    let r = guard(what, s.pull::<_, String>("/echo", what)).await;
    assert_eq!(r.unwrap_or_else(|e| panic!("{what}: {e}")).value, what);
}

fn sync_boom(msg: &str) -> String {
    panic!("boom {msg}")
}

/// A handler is any `Fn(ctx, arg) -> Future`; code before the `async`
/// block runs when the handler is called. A panic there is a handler panic
/// like any other: 500 to the caller, session and peer live on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_before_the_handler_future_is_500_and_session_lives_on() {
    let mut b = PeerBuilder::new(PeerConfig::default());
    echo(&mut b);
    b.pull("/panic/sync", |_ctx: PullCtx, s: String| {
        let v = sync_boom(&s);
        async move { Ok::<_, Rerror>(v) }
    });
    let (server, addr) = serve(b).await;
    let (_client, s) = dial(PeerConfig::default(), &addr).await;
    let e = guard("pull", s.pull::<_, String>("/panic/sync", "sync"))
        .await
        .expect_err("the handler panics");
    assert_eq!(e.code, Rerror::CODE_INTERNAL, "{e}");
    assert_echoes(&s, "after a sync panic").await;
    assert_eq!(server.sessions().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_handler_panic_does_not_kill_the_session() {
    let mut b = PeerBuilder::new(PeerConfig::default());
    echo(&mut b);
    b.push("/panic/now", |_ctx: PushCtx, s: String| async move {
        sync_boom(&s);
    });
    b.push("/panic/later", |_ctx: PushCtx, s: String| async move {
        tokio::task::yield_now().await;
        sync_boom(&s);
    });
    let (_server, addr) = serve(b).await;
    let (_client, s) = dial(PeerConfig::default(), &addr).await;
    for path in ["/panic/now", "/panic/later"] {
        guard("push", s.push(path, path))
            .await
            .expect("push queued");
        assert_echoes(&s, path).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_that_does_not_decode_is_400_and_the_handler_does_not_run() {
    let (ran_tx, mut ran_rx) = mpsc::unbounded_channel::<u64>();
    let mut b = PeerBuilder::new(PeerConfig::default());
    echo(&mut b);
    b.pull("/double", move |_ctx: PullCtx, n: u64| {
        let _ = ran_tx.send(n);
        async move { Ok::<_, Rerror>(n * 2) }
    });
    let (_server, addr) = serve(b).await;
    let (_client, s) = dial(PeerConfig::default(), &addr).await;
    let e = guard("pull", s.pull::<_, u64>("/double", "not a number"))
        .await
        .expect_err("a string is not a u64");
    assert_eq!(e.code, Rerror::CODE_BAD_PACKET, "{e}");
    // The session lives on, and only the good pull reached the handler.
    let r = guard("pull", s.pull::<_, u64>("/double", &21u64)).await;
    assert_eq!(r.expect("good pull").value, 42);
    assert_eq!(ran_rx.try_recv(), Ok(21));
    assert!(ran_rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_reply_after_a_timeout_is_dropped() {
    let (gate_tx, gate_rx) = watch::channel(false);
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let mut b = PeerBuilder::new(PeerConfig::default());
    echo(&mut b);
    b.pull("/late", move |_ctx: PullCtx, s: String| {
        let mut gate = gate_rx.clone();
        let _ = started_tx.send(());
        let done_tx = done_tx.clone();
        async move {
            let _ = gate.wait_for(|g| *g).await;
            let _ = done_tx.send(());
            Ok::<_, Rerror>(s)
        }
    });
    let (_server, addr) = serve(b).await;
    let (_client, s) = dial(PeerConfig::default(), &addr).await;
    let e = guard(
        "timed pull",
        s.call("/late")
            .timeout(Duration::from_millis(50))
            .pull::<_, String>("late"),
    )
    .await
    .expect_err("times out");
    assert_eq!(e.code, Rerror::CODE_TIMEOUT);
    guard("handler started", started_rx.recv()).await;
    gate_tx.send(true).unwrap();
    guard("handler done", done_rx.recv()).await;
    // The late reply is written before the reply to this pull; it matches
    // nothing and is dropped, and this pull gets its own reply.
    assert_echoes(&s, "after the late reply").await;
    assert!(!s.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_read_limit_are_refused_and_the_session_lives_on() {
    let mut b = PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        read_limit: 4096,
        ..PeerConfig::default()
    });
    echo(&mut b);
    b.pull("/big", |_ctx: PullCtx, n: usize| async move {
        Ok::<_, Rerror>("b".repeat(n))
    });
    let (_server, addr) = serve(b).await;
    let (_client, s) = dial(
        PeerConfig {
            read_limit: 4096,
            ..PeerConfig::default()
        },
        &addr,
    )
    .await;

    // Our pull over our own limit is not sent.
    let e = guard(
        "big pull",
        s.call("/echo")
            .codec(CodecId::STRING)
            .pull::<_, String>(&"p".repeat(8000)),
    )
    .await
    .expect_err("over the limit");
    assert_eq!(e.code, Rerror::CODE_WRITE_FAILED, "{e}");
    assert_echoes(&s, "after a big pull").await;

    // A reply over the server's limit becomes a 500.
    let e = guard("big reply", s.pull::<_, String>("/big", &8000usize))
        .await
        .expect_err("reply over the limit");
    assert_eq!(e.code, Rerror::CODE_INTERNAL, "{e}");
    assert_echoes(&s, "after a big reply").await;
}

/// Gzip makes a reply fit on the wire, but its unzipped payload is over the
/// read limit the peer (same settings) applies to filter output. The sender
/// must refuse it as it does an unzipped one (a 500, session lives on);
/// sending it makes the receiver drop the whole connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzipped_reply_over_the_limit_unzipped_is_refused_by_the_sender() {
    let mut b = PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        read_limit: 4096,
        ..PeerConfig::default()
    });
    echo(&mut b);
    b.pull("/big", |_ctx: PullCtx, n: usize| async move {
        Ok::<_, Rerror>("b".repeat(n))
    });
    let (_server, addr) = serve(b).await;
    let (_client, s) = dial(
        PeerConfig {
            read_limit: 4096,
            ..PeerConfig::default()
        },
        &addr,
    )
    .await;
    let e = guard(
        "big gzipped reply",
        s.call("/big").gzip().pull::<_, String>(&8000usize),
    )
    .await
    .expect_err("unzipped reply over the limit");
    assert_eq!(e.code, Rerror::CODE_INTERNAL, "{e}");
    assert_echoes(&s, "after a big gzipped reply").await;

    // The same from the client's side: a gzipped pull over the limit
    // unzipped is refused locally (104), not sent to be cut off.
    let e = guard(
        "big gzipped pull",
        s.call("/echo").gzip().pull::<_, String>(&"p".repeat(8000)),
    )
    .await
    .expect_err("over the limit unzipped");
    assert_eq!(e.code, Rerror::CODE_WRITE_FAILED, "{e}");
    assert_echoes(&s, "after a big gzipped pull").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_close_returns_the_session_is_closed_and_pulls_fail() {
    let mut b = PeerBuilder::new(PeerConfig::default());
    echo(&mut b);
    let (_server, addr) = serve(b).await;
    let client = Peer::new(PeerConfig::default()).unwrap();
    for i in 0..50 {
        let s = guard("dial", client.dial(&addr)).await.expect("dial");
        assert_echoes(&s, "before close").await;
        guard("close", s.close()).await;
        assert!(
            s.is_closed(),
            "round {i}: close() returned but is_closed() is false"
        );
        let e = guard("pull after close", s.pull::<_, String>("/echo", "x"))
            .await
            .expect_err("closed");
        assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_a_pending_pull() {
    let (gate_tx, gate_rx) = watch::channel(false);
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/held", move |_ctx: PullCtx, s: String| {
        let mut gate = gate_rx.clone();
        let _ = started_tx.send(());
        async move {
            let _ = gate.wait_for(|g| *g).await;
            Ok::<_, Rerror>(s)
        }
    });
    let (_server, addr) = serve(b).await;
    let (_client, s) = dial(PeerConfig::default(), &addr).await;
    let pull = tokio::spawn({
        let s = s.clone();
        async move { s.pull::<_, String>("/held", "held").await }
    });
    guard("handler started", started_rx.recv()).await;
    // close() polled once has queued the close command; a pull queued
    // after it is refused, while the pending one may complete.
    let mut close = pin!(s.close());
    let first = std::future::poll_fn(|cx| Poll::Ready(close.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "close finished with a pull pending");
    let e = guard("pull while closing", s.pull::<_, String>("/held", "late"))
        .await
        .expect_err("refused while closing");
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{e}");
    gate_tx.send(true).unwrap();
    let r = guard("held pull", pull).await.unwrap();
    assert_eq!(r.expect("the pending pull completes").value, "held");
    guard("close", close).await;
    let e = guard("pull after close", s.pull::<_, String>("/held", "x"))
        .await
        .expect_err("closed");
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_stuck_handler_ends_and_the_caller_gets_102() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/stuck", move |_ctx: PullCtx, _: ()| {
        let _ = started_tx.send(());
        async move {
            std::future::pending::<()>().await;
            Ok::<(), Rerror>(())
        }
    });
    let (server, addr) = serve(b).await;
    let (_client, s) = dial(PeerConfig::default(), &addr).await;
    let pull = tokio::spawn({
        let s = s.clone();
        async move { s.pull::<_, ()>("/stuck", &()).await }
    });
    guard("handler started", started_rx.recv()).await;
    let report = guard("shutdown", server.shutdown(Duration::from_millis(100))).await;
    assert_eq!(report.sessions, 1);
    // The stuck handler is what the deadline cut: reported, not hidden.
    assert_eq!(report.handlers_abandoned, 1, "{report:?}");
    let e = guard("stuck pull", pull)
        .await
        .unwrap()
        .expect_err("nobody answered");
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{e}");
    // A shut down peer dials no more.
    let e = guard("dial", server.dial(&addr))
        .await
        .expect_err("shut down");
    assert!(matches!(e, teleport_tokio::DialError::ShuttingDown), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_handler_pulls_back_the_client() {
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/ask", |ctx: PullCtx, q: String| async move {
        let r = ctx
            .session()
            .pull::<_, String>("/client/answer", &q)
            .await?;
        Ok::<_, Rerror>(format!("client said {}", r.value))
    });
    let (_server, addr) = serve(b).await;
    let mut cb = PeerBuilder::new(PeerConfig::default());
    cb.pull("/client/answer", |_ctx: PullCtx, q: String| async move {
        Ok::<_, Rerror>(format!("{q}!"))
    });
    let client = Peer::from_builder(cb).unwrap();
    let s = guard("dial", client.dial(&addr)).await.unwrap();
    let r = guard("ask", s.pull::<_, String>("/ask", "hi")).await;
    assert_eq!(r.expect("ask").value, "client said hi!");
}

/// A unix listener whose socket file was left by an earlier run binds.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_listener_replaces_a_stale_socket_file() {
    test_logs();
    let path = common::SockPath::new("stale");
    // A socket file with no listener behind it.
    drop(std::os::unix::net::UnixListener::bind(&path.0).unwrap());
    assert!(path.0.exists());
    let mut b = PeerBuilder::new(PeerConfig {
        network: teleport_tokio::Network::Unix,
        listen_address: path.as_str().into(),
        ..PeerConfig::default()
    });
    echo(&mut b);
    let server = Peer::from_builder(b).unwrap();
    server
        .spawn_listener()
        .await
        .expect("bind over a stale socket file");
    let client = Peer::new(PeerConfig {
        network: teleport_tokio::Network::Unix,
        ..PeerConfig::default()
    })
    .unwrap();
    let s = guard("dial", client.dial(path.as_str())).await.unwrap();
    assert_echoes(&s, "unix").await;
}
