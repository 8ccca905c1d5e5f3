//! Integration tests of peers over loopback TCP and unix sockets, each on
//! async-std and on smol: codecs and gzip, pushes both ways, error replies,
//! panics, timeouts, concurrency, redial and graceful shutdown.

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_io::Timer;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use teleport_async_std::core::{CodecId, Protobuf, Rerror, XferId};
use teleport_async_std::{
    Answer, Executor, Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx, PushCtx, Session,
};
use tokio::sync::{mpsc, watch};

use common::{configs, dial_addr, guard, spawn, test_logs, Transport};

on_both_executors!(
    codecs_and_gzip_over_tcp,
    codecs_and_gzip_over_unix_socket,
    push_both_ways_over_tcp,
    push_both_ways_over_unix_socket,
    unknown_route_is_404,
    handler_error_and_panic_reach_the_caller_and_the_session_lives_on,
    pull_timeout_fails_with_408_and_the_session_lives_on,
    two_hundred_concurrent_pulls_on_one_session,
    redial_after_server_restart_on_the_same_port,
    graceful_shutdown_answers_every_pull_in_flight,
    shutdown_timeout_cancels_a_session_stuck_writing,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    y: i64,
    label: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint64, tag = "2")]
    n: u64,
}

/// Whether the pull came gzipped, as the handler saw it.
fn gz(ctx: &PullCtx) -> &'static str {
    if ctx.xfer().iter().any(|x| x == XferId::GZIP) {
        "yes"
    } else {
        "no"
    }
}

fn boom(msg: &str) -> Result<String, Rerror> {
    panic!("boom {msg}")
}

/// What the test server's push handler received: (path, body).
type Pushes = mpsc::UnboundedSender<(String, String)>;

/// The test server's routes.
fn server(cfg: PeerConfig, exec: Executor, pushes: Pushes) -> Peer {
    let mut b = PeerBuilder::new(cfg);
    b.pull("/json/echo", |ctx: PullCtx, p: Point| async move {
        let gz = gz(&ctx);
        Ok::<_, Rerror>(Answer::new(p).meta("gz", gz))
    });
    b.pull(
        "/proto/echo",
        |ctx: PullCtx, p: Protobuf<Ping>| async move {
            let gz = gz(&ctx);
            Ok::<_, Rerror>(Answer::new(p).meta("gz", gz))
        },
    );
    b.pull("/string/echo", |ctx: PullCtx, s: String| async move {
        let gz = gz(&ctx);
        Ok::<_, Rerror>(Answer::new(s).meta("gz", gz))
    });
    b.pull("/never", |_ctx: PullCtx, _: ()| async move {
        std::future::pending::<()>().await;
        Ok::<(), Rerror>(())
    });
    b.pull("/fail", |_ctx: PullCtx, detail: String| async move {
        Err::<(), _>(Rerror::new(1001, "demo error").with_detail(detail))
    });
    b.pull(
        "/panic/now",
        |_ctx: PullCtx, _: ()| async move { boom("now") },
    );
    b.pull("/panic/later", |_ctx: PullCtx, _: ()| async move {
        futures_lite::future::yield_now().await;
        boom("later")
    });
    b.pull("/double", |_ctx: PullCtx, n: u64| async move {
        // Yield so most of these wait in the connection's handler set
        // rather than finish on their first poll.
        futures_lite::future::yield_now().await;
        Ok::<_, Rerror>(n * 2)
    });
    let tx = pushes.clone();
    b.push("/push/in", move |ctx: PushCtx, s: String| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((ctx.path().into_owned(), s));
        }
    });
    // Pushes to the caller before replying.
    b.pull("/push/trigger", |ctx: PullCtx, msg: String| async move {
        ctx.session()
            .push("/push/out", &format!("echo {msg}"))
            .await?;
        Ok::<_, Rerror>("pushed".to_string())
    });
    Peer::from_builder(b, exec).expect("server builds")
}

/// A client whose push handler forwards to `pushes`.
fn client(cfg: PeerConfig, exec: Executor, pushes: Pushes) -> Peer {
    let mut b = PeerBuilder::new(cfg);
    b.push("/push/out", move |ctx: PushCtx, s: String| {
        let tx = pushes.clone();
        async move {
            let _ = tx.send((ctx.path().into_owned(), s));
        }
    });
    Peer::from_builder(b, exec).expect("client builds")
}

/// A server and a connected client session over `t`.
struct Setup {
    server: Peer,
    addr: PeerAddr,
    client: Peer,
    session: Session,
    server_pushes: mpsc::UnboundedReceiver<(String, String)>,
    client_pushes: mpsc::UnboundedReceiver<(String, String)>,
    _path: Option<common::SockPath>,
}

async fn setup(exec: Executor, t: Transport, tag: &str) -> Setup {
    test_logs();
    let (scfg, ccfg, path) = configs(t, tag);
    let (stx, srx) = mpsc::unbounded_channel();
    let (ctx, crx) = mpsc::unbounded_channel();
    let server = server(scfg, exec.clone(), stx);
    let addr = server.spawn_listener().await.expect("bind");
    let client = client(ccfg, exec, ctx);
    let session = guard("dial", client.dial(&dial_addr(&addr)))
        .await
        .expect("dial");
    Setup {
        server,
        addr,
        client,
        session,
        server_pushes: srx,
        client_pushes: crx,
        _path: path,
    }
}

async fn codecs_round_trip(session: &Session) {
    for gzip in [false, true] {
        let want_gz = if gzip { "yes" } else { "no" };

        let p = Point {
            x: 7,
            y: -7,
            // Long and repetitive, so gzip has something to do.
            label: "teleport ".repeat(2000),
        };
        let mut call = session.call("/json/echo");
        if gzip {
            call = call.gzip();
        }
        let r = guard("json pull", call.pull::<_, Point>(&p))
            .await
            .expect("json pull");
        assert_eq!(r.value, p);
        assert_eq!(r.codec, CodecId::JSON);
        assert_eq!(r.meta.get("gz"), Some(want_gz), "json gzip={gzip}");

        let ping = Ping {
            text: "ping ".repeat(2000),
            n: 42,
        };
        let mut call = session.call("/proto/echo").codec(CodecId::PROTOBUF);
        if gzip {
            call = call.gzip();
        }
        let r = guard(
            "protobuf pull",
            call.pull::<_, Protobuf<Ping>>(&Protobuf(ping.clone())),
        )
        .await
        .expect("protobuf pull");
        assert_eq!(r.value.0, ping);
        assert_eq!(r.codec, CodecId::PROTOBUF);
        assert_eq!(r.meta.get("gz"), Some(want_gz), "protobuf gzip={gzip}");

        let s = "héllo, teleport ✓ ".repeat(1000);
        let mut call = session.call("/string/echo").codec(CodecId::STRING);
        if gzip {
            call = call.gzip();
        }
        let r = guard("string pull", call.pull::<_, String>(&s))
            .await
            .expect("string pull");
        assert_eq!(r.value, s);
        assert_eq!(r.codec, CodecId::STRING);
        assert_eq!(r.meta.get("gz"), Some(want_gz), "string gzip={gzip}");
    }

    // The reply to a gzipped pull comes gzipped too.
    let body = b"\"gzip me gzip me gzip me gzip me\"".to_vec();
    let p = guard(
        "raw gzip pull",
        session
            .call("/string/echo")
            .gzip()
            .pull_raw(CodecId::JSON, body.clone().into()),
    )
    .await
    .expect("raw gzip pull");
    assert!(
        p.xfer.iter().any(|x| x == XferId::GZIP),
        "reply xfer: {:?}",
        p.xfer
    );
    assert_eq!(&p.body[..], &body[..]);
}

async fn codecs_and_gzip_over_tcp(exec: Executor) {
    let s = setup(exec, Transport::Tcp, "codecs").await;
    codecs_round_trip(&s.session).await;
}

async fn codecs_and_gzip_over_unix_socket(exec: Executor) {
    let s = setup(exec, Transport::Unix, "codecs").await;
    assert!(matches!(s.addr, PeerAddr::Unix(_)));
    codecs_round_trip(&s.session).await;
}

async fn push_both_ways(t: Transport, mut s: Setup) {
    // Client -> server.
    guard("push", s.session.push("/push/in", "hello server"))
        .await
        .expect("push queued");
    let got = guard("server push handler", s.server_pushes.recv()).await;
    assert_eq!(
        got,
        Some(("/push/in".to_string(), "hello server".to_string()))
    );

    // Server handler -> client.
    let r = guard(
        "trigger",
        s.session.pull::<_, String>("/push/trigger", "abc"),
    )
    .await
    .expect("trigger");
    assert_eq!(r.value, "pushed");
    let got = guard("client push handler", s.client_pushes.recv()).await;
    assert_eq!(got, Some(("/push/out".to_string(), "echo abc".to_string())));

    // Server, outside any handler, through its session handle -> client.
    let sessions = s.server.sessions();
    assert_eq!(sessions.len(), 1, "{t:?}");
    guard(
        "server push",
        sessions[0].push("/push/out", "from the server"),
    )
    .await
    .expect("server push");
    let got = guard("client push handler", s.client_pushes.recv()).await;
    assert_eq!(
        got,
        Some(("/push/out".to_string(), "from the server".to_string()))
    );
}

async fn push_both_ways_over_tcp(exec: Executor) {
    let s = setup(exec, Transport::Tcp, "push").await;
    push_both_ways(Transport::Tcp, s).await;
}

async fn push_both_ways_over_unix_socket(exec: Executor) {
    let s = setup(exec, Transport::Unix, "push").await;
    push_both_ways(Transport::Unix, s).await;
}

async fn unknown_route_is_404(exec: Executor) {
    let s = setup(exec, Transport::Tcp, "404").await;
    let e = guard("pull", s.session.pull::<_, ()>("/no/such/route", &()))
        .await
        .expect_err("no route");
    assert_eq!(e.code, Rerror::CODE_NOT_FOUND);
    assert_eq!(e, Rerror::not_found());
    // Not fatal to the session.
    let r = guard("pull", s.session.pull::<_, String>("/string/echo", "ok")).await;
    assert_eq!(r.expect("pull after 404").value, "ok");
}

async fn handler_error_and_panic_reach_the_caller_and_the_session_lives_on(exec: Executor) {
    let s = setup(exec, Transport::Tcp, "err").await;
    let detail = "quote \" backslash \\ newline \n ünï ✓";
    let e = guard("pull", s.session.pull::<_, ()>("/fail", detail))
        .await
        .expect_err("the handler fails");
    assert_eq!(e, Rerror::new(1001, "demo error").with_detail(detail));

    for path in ["/panic/now", "/panic/later"] {
        let e = guard(path, s.session.pull::<_, String>(path, &()))
            .await
            .expect_err("the handler panics");
        assert_eq!(e.code, Rerror::CODE_INTERNAL, "{path}: {e}");
        assert!(e.detail.contains("boom"), "{path}: {e}");
        // The same session still serves.
        let r = guard(
            "pull after panic",
            s.session.pull::<_, String>("/string/echo", path),
        )
        .await
        .expect("pull after panic");
        assert_eq!(r.value, path);
        assert!(!s.session.is_closed());
    }
    // And the peer takes new sessions.
    let other = guard("dial", s.client.dial(&dial_addr(&s.addr)))
        .await
        .unwrap();
    let r = guard("pull", other.pull::<_, String>("/string/echo", "new")).await;
    assert_eq!(r.expect("pull on a new session").value, "new");
}

async fn pull_timeout_fails_with_408_and_the_session_lives_on(exec: Executor) {
    let s = setup(exec.clone(), Transport::Tcp, "timeout").await;
    let e = guard(
        "timed pull",
        s.session
            .call("/never")
            .timeout(Duration::from_millis(100))
            .pull::<_, ()>(&()),
    )
    .await
    .expect_err("a pull nobody answers times out");
    assert_eq!(e.code, Rerror::CODE_TIMEOUT, "{e}");

    // The same session still works.
    let r = guard(
        "pull after timeout",
        s.session.pull::<_, String>("/string/echo", "x"),
    )
    .await
    .expect("pull after timeout");
    assert_eq!(r.value, "x");

    // The configured default timeout applies to pulls that name none.
    let client = Peer::new(
        PeerConfig {
            default_pull_timeout: Some(Duration::from_millis(100)),
            ..PeerConfig::default()
        },
        exec,
    )
    .unwrap();
    let session = guard("dial", client.dial(&dial_addr(&s.addr)))
        .await
        .unwrap();
    let e = guard("default-timed pull", session.pull::<_, ()>("/never", &()))
        .await
        .expect_err("the default timeout applies");
    assert_eq!(e.code, Rerror::CODE_TIMEOUT, "{e}");
    assert!(!session.is_closed());
}

async fn two_hundred_concurrent_pulls_on_one_session(exec: Executor) {
    let s = setup(exec, Transport::Tcp, "200").await;
    let mut pulls: FuturesUnordered<_> = (0..200u64)
        .map(|n| {
            let session = s.session.clone();
            async move { (n, session.pull::<_, u64>("/double", &n).await) }
        })
        .collect();
    let mut seen = HashSet::new();
    guard("200 pulls", async {
        while let Some((n, r)) = pulls.next().await {
            let r = r.unwrap_or_else(|e| panic!("pull {n} failed: {e}"));
            assert_eq!(r.value, n * 2);
            assert!(seen.insert(n));
        }
    })
    .await;
    assert_eq!(seen.len(), 200);
    assert_eq!(s.server.sessions().len(), 1);
}

/// Binds again on a port just given up (the old listener's task may not
/// have let go of it yet: there is no event for that, so retry briefly).
async fn rebind(build: impl Fn() -> Peer) -> (Peer, PeerAddr) {
    guard("rebind", async {
        loop {
            let p = build();
            match p.spawn_listener().await {
                Ok(a) => return (p, a),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    Timer::after(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("rebind: {e}"),
            }
        }
    })
    .await
}

async fn redial_after_server_restart_on_the_same_port(exec: Executor) {
    test_logs();
    let slow_count = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let make_server = |listen: String| {
        let slow_count = slow_count.clone();
        let started_tx = started_tx.clone();
        let exec = exec.clone();
        move || {
            let mut b = PeerBuilder::new(PeerConfig {
                listen_address: listen.clone(),
                ..PeerConfig::default()
            });
            let slow_count = slow_count.clone();
            let started_tx = started_tx.clone();
            b.pull("/slow", move |_ctx: PullCtx, _: ()| {
                slow_count.fetch_add(1, Ordering::SeqCst);
                let _ = started_tx.send(());
                async move {
                    std::future::pending::<()>().await;
                    Ok::<(), Rerror>(())
                }
            });
            b.pull("/ping", |_ctx: PullCtx, s: String| async move {
                Ok::<_, Rerror>(format!("pong {s}"))
            });
            Peer::from_builder(b, exec.clone()).unwrap()
        }
    };
    let server1 = make_server("127.0.0.1:0".into())();
    let addr = server1.spawn_listener().await.unwrap();
    let PeerAddr::Tcp(sock_addr) = addr else {
        panic!("tcp address expected")
    };

    let client = Peer::new(
        PeerConfig {
            redial_times: 5,
            redial_interval: Duration::from_millis(20),
            ..PeerConfig::default()
        },
        exec.clone(),
    )
    .unwrap();
    let session = guard("dial", client.dial(&sock_addr.to_string()))
        .await
        .unwrap();
    let id = session.id();
    let r = guard("first ping", session.pull::<_, String>("/ping", "1")).await;
    assert_eq!(r.unwrap().value, "pong 1");

    // A pull in flight when the server goes away.
    let in_flight = spawn(&exec, {
        let session = session.clone();
        async move { session.pull::<_, ()>("/slow", &()).await }
    });
    guard("slow handler starts", started_rx.recv()).await;

    // The server stops (its handler is cancelled) and comes back.
    let report = guard("shutdown", server1.shutdown(Duration::ZERO)).await;
    assert_eq!(report.sessions, 1);
    let e = guard("in-flight pull", in_flight)
        .await
        .unwrap()
        .expect_err("the in-flight pull fails");
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{e}");
    assert!(!session.is_closed(), "a redialing session stays open");

    let (server2, addr2) = rebind(make_server(sock_addr.to_string())).await;
    assert_eq!(addr2, addr);

    // The first pull after the restart succeeds, on the same handle.
    let r = guard(
        "ping after restart",
        session.pull::<_, String>("/ping", "2"),
    )
    .await;
    assert_eq!(r.expect("pull after restart").value, "pong 2");
    assert_eq!(session.id(), id);
    assert_eq!(client.session(id).map(|s| s.id()), Some(id));
    assert_eq!(client.sessions().len(), 1);
    assert_eq!(server2.sessions().len(), 1);
    // The in-flight pull was not re-sent.
    assert_eq!(slow_count.load(Ordering::SeqCst), 1);
    assert!(started_rx.try_recv().is_err());
}

async fn graceful_shutdown_answers_every_pull_in_flight(exec: Executor) {
    test_logs();
    const SESSIONS: usize = 2;
    const PER_SESSION: u64 = 50;
    const TOTAL: usize = SESSIONS * PER_SESSION as usize;

    let started: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<u64>();
    let (gate_tx, gate_rx) = watch::channel(false);
    let mut b = PeerBuilder::new(PeerConfig::default());
    {
        let started = started.clone();
        b.pull("/work", move |_ctx: PullCtx, n: u64| {
            started.lock().unwrap().insert(n);
            let _ = started_tx.send(n);
            let mut gate = gate_rx.clone();
            async move {
                gate.wait_for(|open| *open)
                    .await
                    .map_err(|_| Rerror::internal("gate dropped"))?;
                Ok::<_, Rerror>(n + 1)
            }
        });
    }
    let server = Peer::from_builder(b, exec.clone()).unwrap();
    let addr = dial_addr(&server.spawn_listener().await.unwrap());

    let client = Peer::new(PeerConfig::default(), exec.clone()).unwrap();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(guard("dial", client.dial(&addr)).await.unwrap());
    }
    let mut accepted = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        for k in 0..PER_SESSION {
            let n = i as u64 * 1000 + k;
            let s = s.clone();
            accepted.push(spawn(&exec, async move {
                (n, s.pull::<_, u64>("/work", &n).await)
            }));
        }
    }
    // Every pull is in a handler, held at the gate.
    guard("handlers start", async {
        for _ in 0..TOTAL {
            started_rx.recv().await.expect("handler started");
        }
    })
    .await;

    // Shutdown begins (polled once: it has flagged the peer and told every
    // session to close) but cannot finish while handlers run.
    let mut shutdown = pin!(server.shutdown(Duration::from_secs(10)));
    let first = std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx))).await;
    assert!(
        first.is_pending(),
        "shutdown finished with handlers running"
    );

    // Pulls issued after shutdown began are not refused on the spot: the
    // server told its clients to move, so a pull made after the notice
    // waits for the old connection to drain, then tries the address again
    // (nobody listens any more: 105). One made before the notice reached
    // the client is served, gate and all.
    let mut late = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        for k in 0..10u64 {
            let n = 900_000 + i as u64 * 1000 + k;
            let s = s.clone();
            late.push(spawn(&exec, async move {
                (n, s.pull::<_, u64>("/work", &n).await)
            }));
        }
    }

    // Release the handlers; the shutdown completes and every accepted pull
    // got its reply.
    gate_tx.send(true).unwrap();
    let report = guard("shutdown", shutdown).await;
    assert_eq!(report.sessions, SESSIONS);
    assert_eq!(report.cancelled, 0);
    let mut results = HashMap::new();
    guard("accepted pulls", async {
        for rx in accepted {
            let (n, r) = rx.await.expect("pull task");
            results.insert(n, r);
        }
    })
    .await;
    let mut late_served = 0;
    guard("late pulls", async {
        for rx in late {
            let (n, r) = rx.await.expect("late task");
            match r {
                Ok(v) => {
                    assert_eq!(v.value, n + 1, "late pull {n}");
                    late_served += 1;
                }
                // 105: the move found nobody listening; 102: made once
                // the session was over after that.
                Err(e) => assert!(
                    e.code == Rerror::CODE_DIAL_FAILED || e.code == Rerror::CODE_CONN_CLOSED,
                    "late pull {n}: unexpected error {e}"
                ),
            }
        }
    })
    .await;
    let e = guard("late dial", client.dial(&addr)).await;
    if let Ok(s) = e {
        let r = guard("late dial pull", s.pull::<_, u64>("/work", &1)).await;
        assert!(r.is_err(), "a session dialed after shutdown was served");
    }
    let started = started.lock().unwrap().clone();
    assert_eq!(
        started.len(),
        TOTAL + late_served,
        "only the pulls served reached a handler"
    );
    for n in started.iter().filter(|n| **n < 900_000) {
        match results.get(n) {
            Some(Ok(r)) => assert_eq!(r.value, n + 1),
            other => panic!("pull {n} was accepted but got {other:?}"),
        }
    }
    assert_eq!(results.len(), TOTAL);
}

async fn shutdown_timeout_cancels_a_session_stuck_writing(exec: Executor) {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use teleport_async_std::core::{FastProto, Packet, PacketType, Proto, Seq};

    test_logs();
    const PULLS: usize = 16;
    let (called_tx, mut called_rx) = mpsc::unbounded_channel::<()>();
    let mut b = PeerBuilder::new(PeerConfig {
        write_buffer_size: Some(4096),
        ..PeerConfig::default()
    });
    b.pull("/big", move |_ctx: PullCtx, _: String| {
        let _ = called_tx.send(());
        async move { Ok::<_, Rerror>("x".repeat(1 << 20)) }
    });
    let server = Peer::from_builder(b, exec).unwrap();
    let PeerAddr::Tcp(addr) = server.spawn_listener().await.unwrap() else {
        panic!("tcp address expected")
    };

    // A raw client that asks for 16 MiB of replies (more than any socket
    // buffers) and reads none of them.
    let mut raw = guard(
        "connect",
        async_io::Async::<std::net::TcpStream>::connect(addr),
    )
    .await
    .unwrap();
    let mut frames = bytes::BytesMut::new();
    for i in 0..PULLS {
        let p = Packet::new(PacketType::PULL, Seq(i as u64 + 1), "/big")
            .with_body(CodecId::STRING, String::new());
        FastProto::default().encode(&p, &mut frames).unwrap();
    }
    guard("send pulls", raw.write_all(&frames)).await.unwrap();
    guard("handlers run", async {
        for _ in 0..PULLS {
            called_rx.recv().await.expect("handler called");
        }
    })
    .await;

    // Every reply is queued, most of it behind a full socket: the session
    // cannot finish its last flush, so the shutdown cancels it.
    let report = guard("shutdown", server.shutdown(Duration::ZERO)).await;
    assert_eq!(report.sessions, 1);
    assert_eq!(report.cancelled, 1);
    assert!(server.sessions().is_empty());

    // The cancelled task let go of its socket.
    guard("connection closed", async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}
