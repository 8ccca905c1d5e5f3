//! A real server and client peer on loopback (tokio), each with its own
//! `Metrics` serving its endpoint; a known load; the endpoints scraped over
//! a plain `TcpStream` and every count checked exactly.
//!
//! Why one scrape after the load is exact, with no waiting: every count is
//! made inside the session's state machine before the frame it counts
//! leaves the process. The server counts an incoming pull (its call, error,
//! latency, the reply's bytes, the end of its in-flight share) in the
//! reply's write hooks, which run before the reply is handed to the socket;
//! so once the client's pull has returned, the server's counts for it are
//! made. The client counts its pull before the reply reaches the caller.
//! A push is counted by the server when its frame is read, before its
//! handler runs, and the test waits for the handlers. Only the end of a
//! session is seen by the server on its own time (when the client's close
//! reaches it): that one value is polled for, bounded.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use teleport_core::Rerror;
use teleport_metrics::{Metrics, MetricsServer, OTHER_CODE, UNKNOWN_ROUTE};
use teleport_tokio::{Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx, PushCtx};
use tokio::sync::mpsc;

use common::{guard, scrape, scrape_until, Samples};

const FAIL_CODE: i32 = 1234;

/// A server with `/a` (echo), `/b` (fails with [`FAIL_CODE`] when asked
/// "fail") and the push route `/p` (its bodies go to `pushes`).
fn server(metrics: &Metrics, pushes: mpsc::UnboundedSender<String>, cfg: PeerConfig) -> Peer {
    let mut b = PeerBuilder::new(cfg);
    b.pull("/a", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    b.pull("/b", |_ctx: PullCtx, s: String| async move {
        if s == "fail" {
            Err(Rerror::new(FAIL_CODE, "asked to fail"))
        } else {
            Ok(s)
        }
    });
    b.push("/p", move |_ctx: PushCtx, s: String| {
        let _ = pushes.send(s);
        async {}
    });
    b.plugin(metrics.clone());
    Peer::from_builder(b).unwrap()
}

fn client(metrics: &Metrics, cfg: PeerConfig) -> Peer {
    let mut b = PeerBuilder::new(cfg);
    b.plugin(metrics.clone());
    Peer::from_builder(b).unwrap()
}

fn tcp(addr: PeerAddr) -> SocketAddr {
    match addr {
        PeerAddr::Tcp(a) => a,
        other => panic!("a TCP address expected, got {other:?}"),
    }
}

async fn get(addr: SocketAddr) -> Samples {
    tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap()
}

fn serve(m: &Metrics) -> MetricsServer {
    let s = m.serve("127.0.0.1:0").expect("serve the metrics");
    assert_eq!(m.endpoints(), [s.local_addr()]);
    s
}

const CALLS: &str = "teleport_calls_total";
const ERRORS: &str = "teleport_call_errors_total";
const LATENCY_COUNT: &str = "teleport_call_duration_seconds_count";
const LATENCY_BUCKET: &str = "teleport_call_duration_seconds_bucket";

fn sum(s: &Samples, name: &str) -> f64 {
    s.all(name).iter().map(|(_, v)| v).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_load_is_counted_exactly_on_both_sides() {
    let (sm, cm) = (Metrics::new(), Metrics::new());
    let (push_tx, mut push_rx) = mpsc::unbounded_channel();
    let srv = server(&sm, push_tx, PeerConfig::default());
    let addr = tcp(guard("listen", srv.spawn_listener()).await.unwrap());
    let cli = client(&cm, PeerConfig::default());
    let (s_http, c_http) = (serve(&sm), serve(&cm));

    let session = guard("dial", cli.dial(&addr.to_string())).await.unwrap();
    // 7 pulls to /a (three with a query, which is not part of the label).
    for i in 0..7 {
        let uri = if i % 2 == 0 {
            "/a".to_string()
        } else {
            format!("/a?i={i}")
        };
        let r = guard("pull /a", session.pull::<_, String>(&uri, "hi")).await;
        assert_eq!(r.unwrap().value, "hi");
    }
    // 3 pulls to /b, 2 of them failing with FAIL_CODE.
    for arg in ["fail", "ok", "fail"] {
        let r = guard("pull /b", session.pull::<_, String>("/b", arg)).await;
        match arg {
            "ok" => assert_eq!(r.unwrap().value, "ok"),
            _ => assert_eq!(r.unwrap_err().code, FAIL_CODE),
        }
    }
    // 1 pull to a path with no route: 404.
    let r = guard("pull /nope", session.pull::<_, String>("/nope?x=1", "hi")).await;
    assert_eq!(r.unwrap_err().code, Rerror::CODE_NOT_FOUND);
    // 2 pushes, and both seen by the server's handler.
    for i in 0..2 {
        guard("push", session.push("/p", &format!("push {i}")))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        guard("push handled", push_rx.recv()).await.unwrap();
    }

    let (s, c) = (
        get(s_http.local_addr()).await,
        get(c_http.local_addr()).await,
    );

    // The server: incoming calls, by registered route or <unknown>.
    let inc = |kind, route| [("direction", "incoming"), ("kind", kind), ("route", route)];
    assert_eq!(s.value(CALLS, &inc("pull", "/a")), 7.0);
    assert_eq!(s.value(CALLS, &inc("pull", "/b")), 3.0);
    assert_eq!(s.value(CALLS, &inc("pull", UNKNOWN_ROUTE)), 1.0);
    assert_eq!(s.value(CALLS, &inc("push", "/p")), 2.0);
    assert_eq!(
        s.all(CALLS).len(),
        4,
        "no other call series: {:?}",
        s.all(CALLS)
    );
    let err = |dir, route, code| [("direction", dir), ("route", route), ("code", code)];
    assert_eq!(s.value(ERRORS, &err("incoming", "/b", "1234")), 2.0);
    assert_eq!(s.value(ERRORS, &err("incoming", UNKNOWN_ROUTE, "404")), 1.0);
    assert_eq!(s.all(ERRORS).len(), 2, "{:?}", s.all(ERRORS));
    let lat = |dir, route| [("direction", dir), ("route", route)];
    assert_eq!(s.value(LATENCY_COUNT, &lat("incoming", "/a")), 7.0);
    assert_eq!(s.value(LATENCY_COUNT, &lat("incoming", "/b")), 3.0);
    assert_eq!(s.value(LATENCY_COUNT, &lat("incoming", UNKNOWN_ROUTE)), 1.0);
    assert_eq!(s.all(LATENCY_COUNT).len(), 3);
    let inf = [("direction", "incoming"), ("route", "/a"), ("le", "+Inf")];
    assert_eq!(s.value(LATENCY_BUCKET, &inf), 7.0);
    assert_eq!(
        s.value("teleport_sessions_open", &[("role", "acceptor")]),
        1.0
    );
    assert_eq!(
        s.value("teleport_sessions_open", &[("role", "dialer")]),
        0.0
    );
    assert_eq!(
        s.value("teleport_pending_pulls", &[("direction", "outgoing")]),
        0.0
    );
    assert_eq!(
        s.value("teleport_pending_pulls", &[("direction", "incoming")]),
        0.0
    );
    assert_eq!(s.value("teleport_incoming_pull_bytes", &[]), 0.0);
    assert_eq!(s.value("teleport_redials_total", &[]), 0.0);

    // The client: outgoing calls, by the path sent.
    let out = |kind, route| [("direction", "outgoing"), ("kind", kind), ("route", route)];
    assert_eq!(c.value(CALLS, &out("pull", "/a")), 7.0);
    assert_eq!(c.value(CALLS, &out("pull", "/b")), 3.0);
    assert_eq!(c.value(CALLS, &out("pull", "/nope")), 1.0);
    assert_eq!(c.value(CALLS, &out("push", "/p")), 2.0);
    assert_eq!(c.all(CALLS).len(), 4, "{:?}", c.all(CALLS));
    assert_eq!(c.value(ERRORS, &err("outgoing", "/b", "1234")), 2.0);
    assert_eq!(c.value(ERRORS, &err("outgoing", "/nope", "404")), 1.0);
    assert_eq!(c.all(ERRORS).len(), 2, "{:?}", c.all(ERRORS));
    assert_eq!(c.value(LATENCY_COUNT, &lat("outgoing", "/a")), 7.0);
    assert_eq!(c.value(LATENCY_COUNT, &lat("outgoing", "/b")), 3.0);
    assert_eq!(c.value(LATENCY_COUNT, &lat("outgoing", "/nope")), 1.0);
    assert_eq!(
        c.value("teleport_sessions_open", &[("role", "dialer")]),
        1.0
    );
    assert_eq!(
        c.value("teleport_pending_pulls", &[("direction", "outgoing")]),
        0.0
    );
    assert_eq!(c.value("teleport_redials_total", &[]), 0.0);

    // Every frame one side wrote, the other read (nothing else was sent:
    // no heartbeat).
    let (s_in, s_out) = (
        s.value("teleport_read_bytes_total", &[]),
        s.value("teleport_written_bytes_total", &[]),
    );
    assert!(s_in > 0.0 && s_out > 0.0);
    assert_eq!(c.value("teleport_written_bytes_total", &[]), s_in);
    assert_eq!(c.value("teleport_read_bytes_total", &[]), s_out);
    // The histograms' counts are the pulls.
    assert_eq!(sum(&s, LATENCY_COUNT), 11.0);
    assert_eq!(sum(&c, LATENCY_COUNT), 11.0);

    // The client closes: its gauge drops when close returns; the server's
    // when the close reaches it.
    guard("close", session.close()).await;
    let c = get(c_http.local_addr()).await;
    assert_eq!(
        c.value("teleport_sessions_open", &[("role", "dialer")]),
        0.0
    );
    let s = scrape_until(s_http.local_addr(), "server sees the close", |s| {
        s.get("teleport_sessions_open", &[("role", "acceptor")]) == Some(0.0)
    })
    .await;
    assert_eq!(
        s.value("teleport_pending_pulls", &[("direction", "incoming")]),
        0.0
    );
    assert_eq!(
        s.value("teleport_redials_total", &[]),
        0.0,
        "a close on purpose is no redial"
    );
    assert_eq!(s.value(CALLS, &inc("pull", "/a")), 7.0, "counts stay");
    drop(srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_in_flight_and_their_bytes_are_gauged_until_answered() {
    let m = Metrics::new();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/hold", move |_ctx: PullCtx, s: String| {
        let _ = started_tx.send(());
        let mut release = release_rx.clone();
        async move {
            let _ = release.wait_for(|r| *r).await;
            Ok::<_, Rerror>(s)
        }
    });
    b.plugin(m.clone());
    let srv = Peer::from_builder(b).unwrap();
    let addr = tcp(guard("listen", srv.spawn_listener()).await.unwrap());
    let cm = Metrics::new();
    let cli = client(&cm, PeerConfig::default());
    let session = guard("dial", cli.dial(&addr.to_string())).await.unwrap();

    let body = "x".repeat(1000);
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (s, body) = (session.clone(), body.clone());
            tokio::spawn(async move { s.pull::<_, String>("/hold", &body).await })
        })
        .collect();
    for _ in 0..3 {
        guard("handler started", started_rx.recv()).await.unwrap();
    }
    // The handlers run: the server has read the three pulls.
    let s = m.encode();
    let s = Samples::parse(&s);
    assert_eq!(
        s.value("teleport_pending_pulls", &[("direction", "incoming")]),
        3.0
    );
    let held = s.value("teleport_incoming_pull_bytes", &[]);
    let read = s.value("teleport_read_bytes_total", &[]);
    assert_eq!(held, read, "three pulls' frames, nothing else read");
    assert!(held > 3000.0, "{held}");
    let c = Samples::parse(&cm.encode());
    assert_eq!(
        c.value("teleport_pending_pulls", &[("direction", "outgoing")]),
        3.0
    );

    release_tx.send(true).unwrap();
    for call in calls {
        assert_eq!(guard("pull", call).await.unwrap().unwrap().value, body);
    }
    let s = Samples::parse(&m.encode());
    assert_eq!(
        s.value("teleport_pending_pulls", &[("direction", "incoming")]),
        0.0
    );
    assert_eq!(s.value("teleport_incoming_pull_bytes", &[]), 0.0);
    let c = Samples::parse(&cm.encode());
    assert_eq!(
        c.value("teleport_pending_pulls", &[("direction", "outgoing")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_redialed_counts_one_redial() {
    let (sm, cm) = (Metrics::new(), Metrics::new());
    let (push_tx, _push_rx) = mpsc::unbounded_channel();
    let srv = server(&sm, push_tx, PeerConfig::default());
    let addr = tcp(guard("listen", srv.spawn_listener()).await.unwrap());
    let cli = client(
        &cm,
        PeerConfig {
            redial_times: 20,
            redial_interval: Duration::from_millis(20),
            ..PeerConfig::default()
        },
    );
    let session = guard("dial", cli.dial(&addr.to_string())).await.unwrap();
    let r = guard("first pull", session.pull::<_, String>("/a", "1")).await;
    assert_eq!(r.unwrap().value, "1");

    // The server ends its side: for the client the connection broke.
    let theirs = srv.sessions();
    assert_eq!(theirs.len(), 1);
    guard("server closes", theirs[0].close()).await;

    // Pulls fail with "connection closed" until the client has redialed;
    // the first that succeeds went over the new connection.
    let start = std::time::Instant::now();
    loop {
        match guard("pull", session.pull::<_, String>("/a", "2")).await {
            Ok(r) => {
                assert_eq!(r.value, "2");
                break;
            }
            Err(e) => assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{e}"),
        }
        assert!(start.elapsed() < common::GUARD, "no redial");
        tokio::time::sleep(Duration::from_millis(5)).await; // a retry interval
    }
    let c = Samples::parse(&cm.encode());
    assert_eq!(c.value("teleport_redials_total", &[]), 1.0);
    assert_eq!(
        c.value("teleport_sessions_open", &[("role", "dialer")]),
        1.0
    );
    // Every pull that failed on the way counted once, as an error.
    let calls = c.value(
        CALLS,
        &[("direction", "outgoing"), ("kind", "pull"), ("route", "/a")],
    );
    let failed = c
        .get(
            ERRORS,
            &[("direction", "outgoing"), ("route", "/a"), ("code", "102")],
        )
        .unwrap_or(0.0);
    assert_eq!(calls, 2.0 + failed);
    let s = Samples::parse(&sm.encode());
    assert_eq!(
        s.value("teleport_sessions_open", &[("role", "acceptor")]),
        1.0
    );
    assert_eq!(s.value("teleport_redials_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_codes_past_the_bound_are_counted_as_other() {
    let sm = Metrics::builder().max_codes(1).build();
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/code", |_ctx: PullCtx, code: i32| async move {
        Err::<String, _>(Rerror::new(code, "as asked"))
    });
    b.plugin(sm.clone());
    let srv = Peer::from_builder(b).unwrap();
    let addr = tcp(guard("listen", srv.spawn_listener()).await.unwrap());
    let cli = Peer::new(PeerConfig::default()).unwrap();
    let session = guard("dial", cli.dial(&addr.to_string())).await.unwrap();
    for code in [7, 8, 9, 7] {
        let r = guard("pull", session.pull::<_, String>("/code", &code)).await;
        assert_eq!(r.unwrap_err().code, code);
    }
    let s = Samples::parse(&sm.encode());
    let err = |code| {
        [
            ("direction", "incoming"),
            ("route", "/code"),
            ("code", code),
        ]
    };
    assert_eq!(s.value(ERRORS, &err("7")), 2.0);
    assert_eq!(s.value(ERRORS, &err(OTHER_CODE)), 2.0);
    assert_eq!(s.all(ERRORS).len(), 2);
}

/// After the metrics: rewrites `/alias` to `/a`, and answers pulls to
/// `/taken` itself (the session never routes them).
struct AliasAndTake;

impl teleport_core::Plugin for AliasAndTake {
    fn name(&self) -> &'static str {
        "alias-and-take"
    }

    fn after_read_header(
        &self,
        ctx: &mut teleport_core::PluginCtx<'_>,
        p: &mut teleport_core::Packet,
    ) -> Result<(), Rerror> {
        match p.uri.path() {
            b"/alias" => p.uri.set_path("/a"),
            b"/taken" if p.ptype == teleport_core::PacketType::PULL => {
                ctx.swallow();
                let reply = teleport_core::Packet::default()
                    .with_body(teleport_core::CodecId::STRING, &b"taken"[..]);
                ctx.reply(p.seq, Ok(reply));
            }
            _ => {}
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_taken_by_later_plugins_are_counted_and_aliased_pulls_labelled_as_routed() {
    let (sm, cm) = (Metrics::new(), Metrics::new());
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/a", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    b.plugin(sm.clone()).plugin(AliasAndTake);
    let srv = Peer::from_builder(b).unwrap();
    let addr = tcp(guard("listen", srv.spawn_listener()).await.unwrap());
    let cli = client(&cm, PeerConfig::default());
    let session = guard("dial", cli.dial(&addr.to_string())).await.unwrap();

    let r = guard("pull /alias", session.pull::<_, String>("/alias?q=1", "x")).await;
    assert_eq!(r.unwrap().value, "x");
    for _ in 0..2 {
        let r = guard("pull /taken", session.pull::<_, String>("/taken", "x")).await;
        assert_eq!(r.unwrap().value, "taken");
    }

    let s = Samples::parse(&sm.encode());
    let inc = |route| {
        [
            ("direction", "incoming"),
            ("kind", "pull"),
            ("route", route),
        ]
    };
    assert_eq!(s.value(CALLS, &inc("/a")), 1.0, "as routed");
    assert_eq!(s.value(CALLS, &inc(UNKNOWN_ROUTE)), 2.0, "no route of ours");
    assert_eq!(s.all(CALLS).len(), 2, "{:?}", s.all(CALLS));
    assert_eq!(s.all(ERRORS).len(), 0);
    assert_eq!(
        s.value("teleport_pending_pulls", &[("direction", "incoming")]),
        0.0
    );
    assert_eq!(s.value("teleport_incoming_pull_bytes", &[]), 0.0);
    let c = Samples::parse(&cm.encode());
    let out = |route| {
        [
            ("direction", "outgoing"),
            ("kind", "pull"),
            ("route", route),
        ]
    };
    assert_eq!(c.value(CALLS, &out("/alias")), 1.0, "as sent");
    assert_eq!(c.value(CALLS, &out("/taken")), 2.0);
    // Every frame the client wrote was seen, the taken ones too.
    assert_eq!(
        s.value("teleport_read_bytes_total", &[]),
        c.value("teleport_written_bytes_total", &[])
    );
    assert_eq!(
        s.value("teleport_written_bytes_total", &[]),
        c.value("teleport_read_bytes_total", &[])
    );
}
