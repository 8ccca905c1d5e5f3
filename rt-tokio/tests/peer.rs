//! Integration tests of peers over loopback TCP and unix sockets: codecs and
//! gzip, meta and query, timeouts, error replies, panics, pushes both ways,
//! concurrency, redial and graceful shutdown.

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use teleport_core::{CodecId, Protobuf, Rerror, XferId};
use teleport_tokio::{Answer, Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx, PushCtx, Session};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use common::{configs, dial_addr, guard, test_logs, Transport};

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
fn server(cfg: PeerConfig, pushes: Pushes) -> Peer {
    let mut b = PeerBuilder::new(cfg);
    b.pull("/json/echo", |ctx: PullCtx, p: Point| async move {
        let gz = gz(&ctx);
        Ok::<_, Rerror>(
            Answer::new(p)
                .meta("gz", gz)
                .meta("codec", ctx.body_codec().to_string()),
        )
    });
    b.pull(
        "/proto/echo",
        |ctx: PullCtx, p: Protobuf<Ping>| async move {
            let gz = gz(&ctx);
            Ok::<_, Rerror>(
                Answer::new(p)
                    .meta("gz", gz)
                    .meta("codec", ctx.body_codec().to_string()),
            )
        },
    );
    b.pull("/string/echo", |ctx: PullCtx, s: String| async move {
        let gz = gz(&ctx);
        Ok::<_, Rerror>(
            Answer::new(s)
                .meta("gz", gz)
                .meta("codec", ctx.body_codec().to_string()),
        )
    });
    // Meta and query come back as reply meta.
    b.pull("/meta/echo", |ctx: PullCtx, body: String| async move {
        let q = ctx.query();
        let m = ctx.meta();
        let r = Answer::new(format!("{}|{body}", ctx.path()))
            .meta("q-id", q.get("id").unwrap_or("-"))
            .meta("q-name", q.get("name").unwrap_or("-"))
            .meta("m-author", m.get("author").unwrap_or("-"))
            .meta("m-trace", m.get("trace").unwrap_or("-"));
        Ok::<_, Rerror>(r)
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
        tokio::task::yield_now().await;
        boom("later")
    });
    b.pull("/double", |_ctx: PullCtx, n: u64| async move {
        // Yield so most of these finish on a spawned task, not inline.
        tokio::task::yield_now().await;
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
    Peer::from_builder(b).expect("server builds")
}

/// A client whose push handler forwards to `pushes`.
fn client(cfg: PeerConfig, pushes: Pushes) -> Peer {
    let mut b = PeerBuilder::new(cfg);
    b.push("/push/out", move |ctx: PushCtx, s: String| {
        let tx = pushes.clone();
        async move {
            let _ = tx.send((ctx.path().into_owned(), s));
        }
    });
    Peer::from_builder(b).expect("client builds")
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

async fn setup(t: Transport, tag: &str) -> Setup {
    test_logs();
    let (scfg, ccfg, path) = configs(t, tag);
    let (stx, srx) = mpsc::unbounded_channel();
    let (ctx, crx) = mpsc::unbounded_channel();
    let server = server(scfg, stx);
    let addr = server.spawn_listener().await.expect("bind");
    let client = client(ccfg, ctx);
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

fn point(n: i64) -> Point {
    Point {
        x: n,
        y: -n,
        // Long and repetitive, so gzip has something to do.
        label: "teleport ".repeat(2000),
    }
}

async fn codecs_round_trip(session: &Session) {
    for gzip in [false, true] {
        let want_gz = if gzip { "yes" } else { "no" };

        let p = point(7);
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
        assert_eq!(
            r.meta.get("codec"),
            Some(CodecId::JSON.to_string().as_str())
        );

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

    // The reply to a gzipped pull comes gzipped too, and is smaller on the
    // wire than the body it carries.
    let body = serde_json::to_vec(&point(1)).unwrap();
    let p = guard(
        "raw gzip pull",
        session
            .call("/json/echo")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codecs_and_gzip_over_tcp() {
    let s = setup(Transport::Tcp, "codecs").await;
    codecs_round_trip(&s.session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codecs_and_gzip_over_unix_socket() {
    let s = setup(Transport::Unix, "codecs").await;
    assert!(matches!(s.addr, PeerAddr::Unix(_)));
    codecs_round_trip(&s.session).await;
}

async fn meta_and_query(session: &Session) {
    let r = guard(
        "meta pull",
        session
            .call("/meta/echo?id=42&name=a%20b")
            .meta("author", "henrylee2cn")
            .meta("trace", "t-1")
            .codec(CodecId::STRING)
            .pull::<_, String>("body"),
    )
    .await
    .expect("meta pull");
    assert_eq!(r.value, "/meta/echo|body");
    assert_eq!(r.meta.get("q-id"), Some("42"));
    assert_eq!(r.meta.get("q-name"), Some("a b"));
    assert_eq!(r.meta.get("m-author"), Some("henrylee2cn"));
    assert_eq!(r.meta.get("m-trace"), Some("t-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_and_query_round_trip_over_tcp() {
    let s = setup(Transport::Tcp, "meta").await;
    meta_and_query(&s.session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_and_query_round_trip_over_unix_socket() {
    let s = setup(Transport::Unix, "meta").await;
    meta_and_query(&s.session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_timeout_fails_with_408_and_the_session_lives_on() {
    let s = setup(Transport::Tcp, "timeout").await;
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
    let (_, mut ccfg, _) = configs(Transport::Tcp, "timeout");
    ccfg.default_pull_timeout = Some(Duration::from_millis(100));
    let client = Peer::new(ccfg).unwrap();
    let session = guard("dial", client.dial(&dial_addr(&s.addr)))
        .await
        .unwrap();
    let e = guard("default-timed pull", session.pull::<_, ()>("/never", &()))
        .await
        .expect_err("the default timeout applies");
    assert_eq!(e.code, Rerror::CODE_TIMEOUT, "{e}");
    assert!(!session.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404() {
    let s = setup(Transport::Tcp, "404").await;
    let e = guard("pull", s.session.pull::<_, ()>("/no/such/route", &()))
        .await
        .expect_err("no route");
    assert_eq!(e.code, Rerror::CODE_NOT_FOUND);
    assert_eq!(e.code, 404);
    assert_eq!(e, Rerror::not_found());
    // Not fatal to the session.
    let r = guard("pull", s.session.pull::<_, String>("/string/echo", "ok")).await;
    assert_eq!(r.expect("pull after 404").value, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_error_reaches_the_caller() {
    let s = setup(Transport::Tcp, "err").await;
    // Characters JSON must escape survive the trip.
    for detail in [
        "this route always fails",
        "quote \" backslash \\ newline \n tab \t ünï ✓",
    ] {
        let e = guard("pull", s.session.pull::<_, ()>("/fail", detail))
            .await
            .expect_err("the handler fails");
        assert_eq!(e, Rerror::new(1001, "demo error").with_detail(detail));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_is_500_and_session_and_peer_live_on() {
    let s = setup(Transport::Tcp, "panic").await;
    for path in ["/panic/now", "/panic/later"] {
        let e = guard(path, s.session.pull::<_, String>(path, &()))
            .await
            .expect_err("the handler panics");
        assert_eq!(e.code, Rerror::CODE_INTERNAL, "{path}: {e}");
        assert_eq!(e.code, 500);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_both_ways() {
    let mut s = setup(Transport::Tcp, "push").await;

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
    assert_eq!(sessions.len(), 1);
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

    // Pushes over a unix socket too.
    let mut u = setup(Transport::Unix, "push").await;
    guard("push", u.session.push("/push/in", "over unix"))
        .await
        .unwrap();
    let got = guard("server push handler", u.server_pushes.recv()).await;
    assert_eq!(got.map(|g| g.1), Some("over unix".to_string()));
    guard("trigger", u.session.pull::<_, String>("/push/trigger", "u"))
        .await
        .unwrap();
    let got = guard("client push handler", u.client_pushes.recv()).await;
    assert_eq!(got.map(|g| g.1), Some("echo u".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_pulls_on_one_session() {
    let s = setup(Transport::Tcp, "1000").await;
    let mut set = JoinSet::new();
    for n in 0..1000u64 {
        let session = s.session.clone();
        set.spawn(async move { (n, session.pull::<_, u64>("/double", &n).await) });
    }
    let mut seen = HashSet::new();
    guard("1000 pulls", async {
        while let Some(r) = set.join_next().await {
            let (n, r) = r.expect("task");
            let r = r.unwrap_or_else(|e| panic!("pull {n} failed: {e}"));
            assert_eq!(r.value, n * 2);
            assert!(seen.insert(n));
        }
    })
    .await;
    assert_eq!(seen.len(), 1000);
    assert_eq!(s.server.sessions().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_at_once() {
    let s = setup(Transport::Tcp, "200").await;
    let addr = dial_addr(&s.addr);
    let mut set = JoinSet::new();
    for i in 0..200u64 {
        let client = s.client.clone();
        let addr = addr.clone();
        set.spawn(async move {
            let session = client.dial(&addr).await.expect("dial");
            for k in 0..3u64 {
                let n = i * 10 + k;
                let r = session.pull::<_, u64>("/double", &n).await;
                assert_eq!(r.expect("pull").value, n * 2);
            }
            session
        });
    }
    let mut sessions = Vec::new();
    guard("200 sessions", async {
        while let Some(r) = set.join_next().await {
            sessions.push(r.expect("session task"));
        }
    })
    .await;
    let ids: HashSet<u64> = sessions.iter().map(|s| s.id()).collect();
    assert_eq!(ids.len(), 200);
    // 200 plus the setup's session, all open at once on the server.
    assert_eq!(s.server.sessions().len(), 201);
    let report = guard("shutdown", s.server.shutdown(Duration::from_secs(5))).await;
    assert_eq!(report.sessions, 201);
    assert_eq!(report.cancelled, 0);
}

/// Binds `cfg` again (the old listener's task may not have let go of the
/// port yet: there is no event for it, so retry briefly).
async fn rebind(build: impl Fn() -> Peer) -> (Peer, PeerAddr) {
    guard("rebind", async {
        loop {
            let p = build();
            match p.spawn_listener().await {
                Ok(a) => return (p, a),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("rebind: {e}"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redial_after_server_restart_on_the_same_port() {
    test_logs();
    let slow_count = Arc::new(AtomicUsize::new(0));
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let make_server = |listen: String| {
        let slow_count = slow_count.clone();
        let started_tx = started_tx.clone();
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
            Peer::from_builder(b).unwrap()
        }
    };
    let server1 = make_server("127.0.0.1:0".into())();
    let addr = server1.spawn_listener().await.unwrap();
    let PeerAddr::Tcp(sock_addr) = addr else {
        panic!("tcp address expected")
    };

    let client = Peer::new(PeerConfig {
        redial_times: 5,
        redial_interval: Duration::from_millis(20),
        ..PeerConfig::default()
    })
    .unwrap();
    let session = guard("dial", client.dial(&sock_addr.to_string()))
        .await
        .unwrap();
    let id = session.id();
    let r = guard("first ping", session.pull::<_, String>("/ping", "1")).await;
    assert_eq!(r.unwrap().value, "pong 1");

    // A pull in flight when the server goes away.
    let in_flight = tokio::spawn({
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
    // The in-flight pull was not re-sent: had it been, it would have been
    // written before the ping and its handler would have started first.
    assert_eq!(slow_count.load(Ordering::SeqCst), 1);
    assert!(started_rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_answers_every_accepted_pull() {
    test_logs();
    const SESSIONS: usize = 4;
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
    let server = Peer::from_builder(b).unwrap();
    let addr = dial_addr(&server.spawn_listener().await.unwrap());

    let client = Peer::new(PeerConfig::default()).unwrap();
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(guard("dial", client.dial(&addr)).await.unwrap());
    }
    let mut accepted = JoinSet::new();
    for (i, s) in sessions.iter().enumerate() {
        for k in 0..PER_SESSION {
            let n = i as u64 * 1000 + k;
            let s = s.clone();
            accepted.spawn(async move { (n, s.pull::<_, u64>("/work", &n).await) });
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
    let mut late = JoinSet::new();
    for (i, s) in sessions.iter().enumerate() {
        for k in 0..10u64 {
            let n = 900_000 + i as u64 * 1000 + k;
            let s = s.clone();
            late.spawn(async move { (n, s.pull::<_, u64>("/work", &n).await) });
        }
    }
    {
        let client = client.clone();
        let addr = addr.clone();
        late.spawn(async move {
            let n = 999_999;
            match client.dial(&addr).await {
                Ok(s) => (n, s.pull::<_, u64>("/work", &n).await),
                Err(e) => (n, Err(e.into())),
            }
        });
    }

    // Release the handlers; the shutdown completes and every accepted pull
    // got its reply.
    gate_tx.send(true).unwrap();
    let report = guard("shutdown", shutdown).await;
    assert_eq!(report.sessions, SESSIONS);
    assert_eq!(report.cancelled, 0);
    let mut results = HashMap::new();
    guard("accepted pulls", async {
        while let Some(r) = accepted.join_next().await {
            let (n, r) = r.expect("task");
            results.insert(n, r);
        }
    })
    .await;
    let mut late_served = 0;
    guard("late pulls", async {
        while let Some(r) = late.join_next().await {
            let (n, r) = r.expect("late task");
            match r {
                Ok(v) => {
                    assert_eq!(v.value, n + 1, "late pull {n}");
                    late_served += 1;
                }
                Err(e) if n == 999_999 => assert!(
                    e.code == Rerror::CODE_CONN_CLOSED || e.code == Rerror::CODE_DIAL_FAILED,
                    "late dial: unexpected error {e}"
                ),
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

#[test]
fn config_loads_from_toml_and_yaml() {
    use teleport_tokio::Network;

    let check = |cfg: &PeerConfig| {
        assert_eq!(cfg.listen_address, "/tmp/tp.sock");
        assert_eq!(cfg.network, Network::Unix);
        assert_eq!(cfg.read_limit, 1 << 20);
        assert_eq!(cfg.default_pull_timeout, Some(Duration::from_secs(5)));
        assert_eq!(cfg.redial_times, 3);
        assert_eq!(cfg.redial_interval, Duration::from_millis(150));
        assert_eq!(cfg.slow_call_threshold, Some(Duration::from_millis(200)));
        assert_eq!(
            cfg.default_session_idle_timeout,
            Some(Duration::from_secs(60))
        );
        assert_eq!(cfg.frame_timeout, Some(Duration::from_secs(2)));
        assert_eq!(cfg.close_timeout, Duration::from_secs(10));
        assert_eq!(cfg.default_body_codec, "protobuf");
        assert!(cfg.print_body);
        assert!(cfg.count_time);
        assert_eq!(cfg.max_pending_pulls, 100);
        assert_eq!(cfg.max_incoming_pulls, 50);
        assert_eq!(cfg.read_buffer_size, Some(65536));
    };

    let toml_cfg: PeerConfig = toml::from_str(
        r#"
        listen_address = "/tmp/tp.sock"
        network = "unix"
        read_limit = 1048576
        default_pull_timeout = "5s"
        redial_times = 3
        redial_interval = "150ms"
        slow_call_threshold = "200ms"
        default_session_idle_timeout = "1m"
        frame_timeout = "2s"
        close_timeout = "10s"
        default_body_codec = "protobuf"
        print_body = true
        count_time = true
        max_pending_pulls = 100
        max_incoming_pulls = 50
        read_buffer_size = 65536
        "#,
    )
    .expect("toml config");
    check(&toml_cfg);

    let yaml_cfg: PeerConfig = serde_yaml_ng::from_str(
        r#"
listen_address: /tmp/tp.sock
network: unix
read_limit: 1048576
default_pull_timeout: 5s
redial_times: 3
redial_interval: 150ms
slow_call_threshold: 200ms
default_session_idle_timeout: 1m
frame_timeout: 2s
close_timeout: 10s
default_body_codec: protobuf
print_body: true
count_time: true
max_pending_pulls: 100
max_incoming_pulls: 50
read_buffer_size: 65536
"#,
    )
    .expect("yaml config");
    check(&yaml_cfg);

    // Every field has a default.
    let empty: PeerConfig = toml::from_str("").unwrap();
    let default = PeerConfig::default();
    assert_eq!(empty.listen_address, default.listen_address);
    assert_eq!(empty.redial_interval, default.redial_interval);
    assert_eq!(empty.default_pull_timeout, None);
    let empty: PeerConfig = serde_yaml_ng::from_str("{}").unwrap();
    assert_eq!(empty.network, Network::Tcp);
    let tcp4: PeerConfig = serde_yaml_ng::from_str("network: tcp4").unwrap();
    assert_eq!(tcp4.network, Network::Tcp4);

    // Unknown keys and bad durations are errors, not silently ignored.
    assert!(toml::from_str::<PeerConfig>("redial_tims = 3").is_err());
    assert!(serde_yaml_ng::from_str::<PeerConfig>("redial_tims: 3").is_err());
    assert!(toml::from_str::<PeerConfig>(r#"default_pull_timeout = "five""#).is_err());
    assert!(serde_yaml_ng::from_str::<PeerConfig>("network: carrier-pigeon").is_err());

    // A loaded config builds a peer; an unknown codec name does not.
    assert!(Peer::from_builder(PeerBuilder::new(toml_cfg)).is_ok());
    let bad: PeerConfig = toml::from_str(r#"default_body_codec = "xml""#).unwrap();
    assert!(Peer::from_builder(PeerBuilder::new(bad)).is_err());
}

/// A connection that starts once the shutdown began (accepted as the
/// listener stopped, say) is told to move at once, like the others, and
/// what its client sent before it read the notice is served, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_started_during_the_shutdown_is_served_and_told_to_move() {
    use teleport_core::{CloseReason, Role};
    use teleport_tokio::ServeOptions;
    test_logs();
    let (gate_tx, gate_rx) = watch::channel(false);
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    b.pull("/held", move |_ctx: PullCtx, s: String| {
        let mut gate = gate_rx.clone();
        let _ = started_tx.send(());
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Ok::<_, Rerror>(s)
        }
    });
    let server = Peer::from_builder(b).unwrap();
    let client = Peer::new(PeerConfig::default()).unwrap();
    // A session whose running pull keeps the shutdown from finishing.
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let _first = server.serve_conn(a, ServeOptions::default());
    let first_client = client.serve_conn(b, ServeOptions::default().role(Role::Dialer));
    let held = {
        let s = first_client.clone();
        tokio::spawn(async move { s.pull::<_, String>("/held", "held").await })
    };
    guard("held pull starts", started_rx.recv()).await.unwrap();
    let shutdown = {
        let server = server.clone();
        tokio::spawn(async move { server.shutdown(Duration::from_secs(10)).await })
    };
    guard("shutdown begins", async {
        while !server.core().is_draining() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The latecomer: its pull is on the wire before the server's session
    // for it starts.
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let late_client = client.serve_conn(b, ServeOptions::default().role(Role::Dialer));
    let late = {
        let s = late_client.clone();
        tokio::spawn(async move { s.pull::<_, String>("/echo", "late").await })
    };
    guard("late pull written", a.readable()).await.unwrap();
    let _late_server = server.serve_conn(a, ServeOptions::default());
    let r = guard("late pull", late).await.unwrap();
    assert_eq!(r.expect("served, not refused").value, "late");
    assert_eq!(
        guard("notice", late_client.closed()).await,
        CloseReason::GoingAway
    );
    gate_tx.send(true).unwrap();
    assert_eq!(guard("held", held).await.unwrap().unwrap().value, "held");
    let report = guard("shutdown", shutdown).await.unwrap();
    assert_eq!(report.cancelled, 0);
}
