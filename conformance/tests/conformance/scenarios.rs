//! The scenarios every runtime pair must pass, in one place.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join, join_all, select, Either};
use serde::{Deserialize, Serialize};
use teleport_core::{CodecId, Protobuf, Rerror, XferId};
use teleport_peer::{Answer, PeerBuilder, PeerConfig, PullCtx, PushCtx, Session};
use tokio::sync::{mpsc, Semaphore};

use crate::runtimes::{Rt, SockPath};

pub use crate::runtimes::{Net, GUARD};

/// Awaits `f`, failing with `what` if it hangs.
pub async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    let f = std::pin::pin!(f);
    let timer = std::pin::pin!(async_io::Timer::after(GUARD));
    match select(f, timer).await {
        Either::Left((v, _)) => v,
        Either::Right(_) => panic!("{what}: did not finish within {GUARD:?} (hang?)"),
    }
}

/// Waits (bounded by [`guard`]) until `ok` holds, looking again every
/// couple of milliseconds.
pub async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    guard(what, async {
        while !ok() {
            async_io::Timer::after(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// What a handler held by `gate` waits for: one permit, taken for good.
pub async fn through(gate: &Semaphore) -> Result<(), Rerror> {
    gate.acquire()
        .await
        .map_err(|e| Rerror::internal(e.to_string()))?
        .forget();
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    label: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    text: String,
}

fn gz(ctx: &PullCtx) -> &'static str {
    if ctx.xfer().iter().any(|x| x == XferId::GZIP) {
        "yes"
    } else {
        "no"
    }
}

/// What the scenarios observe of the server.
#[derive(Clone)]
pub struct Probe {
    /// Pushes the server's `/server/sink` took.
    pushes: mpsc::UnboundedSender<String>,
    /// `/gate` handlers that started.
    started: mpsc::UnboundedSender<()>,
    /// What `/gate` handlers wait for.
    gate: Arc<Semaphore>,
    /// What `/slow` handlers wait for.
    slow: Arc<Semaphore>,
    /// How many `/gate` handlers ran.
    gate_runs: Arc<AtomicUsize>,
}

/// The server's routes, the same on every runtime.
fn server_routes(b: &mut PeerBuilder, probe: &Probe) {
    b.pull("/echo/json", |ctx: PullCtx, p: Point| async move {
        let gz = gz(&ctx);
        Ok::<_, Rerror>(Answer::new(p).meta("gz", gz))
    });
    b.pull(
        "/echo/proto",
        |ctx: PullCtx, Protobuf(p): Protobuf<Ping>| async move {
            let gz = gz(&ctx);
            Ok::<_, Rerror>(Answer::new(Protobuf(p)).meta("gz", gz))
        },
    );
    b.pull("/echo/string", |ctx: PullCtx, s: String| async move {
        let gz = gz(&ctx);
        Ok::<_, Rerror>(Answer::new(s).meta("gz", gz))
    });
    b.pull("/meta", |ctx: PullCtx, _: ()| async move {
        let mut r = Answer::new(());
        for (k, v) in ctx.query().iter() {
            r.meta.add([b"q-", k].concat(), v);
        }
        for (k, v) in ctx.meta().iter() {
            r.meta.add([b"m-", k].concat(), v);
        }
        Ok::<_, Rerror>(r)
    });
    let p = probe.clone();
    b.pull("/slow", move |_ctx: PullCtx, _: ()| {
        let p = p.clone();
        async move {
            // Held until the caller has timed out, then answers late.
            through(&p.slow).await
        }
    });
    b.pull("/fail", |_ctx: PullCtx, _: ()| async move {
        Err::<(), _>(Rerror::new(599, "it failed").with_detail("\"quoted\" \\ detail"))
    });
    b.pull("/panic", |_ctx: PullCtx, _: ()| async move {
        if true {
            panic!("handler panics on purpose");
        }
        Ok::<(), Rerror>(())
    });
    b.pull("/pushback", |ctx: PullCtx, s: String| async move {
        ctx.session()
            .push("/client/note", &format!("note {s}"))
            .await?;
        Ok::<_, Rerror>(s)
    });
    let p = probe.clone();
    b.pull("/gate", move |_ctx: PullCtx, s: String| {
        let p = p.clone();
        async move {
            let _ = p.started.send(());
            p.gate_runs.fetch_add(1, Ordering::SeqCst);
            through(&p.gate).await?;
            Ok::<_, Rerror>(s)
        }
    });
    let p = probe.clone();
    b.push("/server/sink", move |_ctx: PushCtx, s: String| {
        let tx = p.pushes.clone();
        async move {
            let _ = tx.send(s);
        }
    });
}

pub fn run_pair(server_rt: Rt, client_rt: Rt) {
    let name = |net: Net| format!("{server_rt:?} server x {client_rt:?} client over {net:?}");
    // Heartbeat waits out a silence: it runs alongside the rest.
    let heartbeats: Vec<_> = Net::ALL
        .into_iter()
        .map(|net| crate::plugins::HeartbeatCheck::start(server_rt, client_rt, net, &name(net)))
        .collect();
    // TLS, protos, served connections and tcp6 have servers and clients of
    // their own, and waits of their own (a handshake timeout): alongside.
    let pair = format!("{server_rt:?} server x {client_rt:?} client");
    let beside = crate::runtimes::beside(format!("{pair}: tls, protos, served"), move || {
        crate::tls::run(server_rt, client_rt, &pair);
        crate::protos::run(server_rt, client_rt, &pair);
        crate::served::run(server_rt, client_rt, &pair);
        crate::sockets::tcp6(server_rt, client_rt, &pair);
        crate::traces::pass_through(server_rt, client_rt, &pair);
        crate::moving::new_calls_move_while_old_ones_finish(server_rt, client_rt, &pair);
    });
    for net in Net::ALL {
        let name = name(net);
        run_net(server_rt, client_rt, net, &name);
        crate::extensions::run(server_rt, client_rt, net, &name);
    }
    for h in heartbeats {
        h.finish();
    }
    // Last, as its refusals close sessions right after answering, which
    // is where a reply can still be lost (see `closing`).
    for net in Net::ALL {
        crate::plugins::auth_and_stats(server_rt, client_rt, net, &name(net));
    }
    crate::runtimes::join(beside);
}

/// A server's settings for `net`: the unix socket at `sock`, or TCP at
/// `listen_tcp`.
pub fn server_config(net: Net, sock: &Option<SockPath>, listen_tcp: &str) -> PeerConfig {
    match sock {
        Some(p) if net.is_unix() => PeerConfig {
            network: net.network(),
            listen_address: p.as_str().to_string(),
            ..PeerConfig::default()
        },
        _ => PeerConfig {
            listen_address: listen_tcp.to_string(),
            ..PeerConfig::default()
        },
    }
}

/// A client's settings for `net` (no redial).
pub fn client_config(net: Net) -> PeerConfig {
    PeerConfig {
        network: net.network(),
        ..PeerConfig::default()
    }
}

fn run_net(server_rt: Rt, client_rt: Rt, net: Net, name: &str) {
    let sock = net.sock(name);
    let (push_tx, mut push_rx) = mpsc::unbounded_channel();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let probe = Probe {
        pushes: push_tx,
        started: started_tx,
        gate: Arc::new(Semaphore::new(0)),
        slow: Arc::new(Semaphore::new(0)),
        gate_runs: Arc::new(AtomicUsize::new(0)),
    };
    let make_server = |listen: &str| {
        let mut b = PeerBuilder::new(server_config(net, &sock, listen));
        server_routes(&mut b, &probe);
        server_rt.serve(b)
    };
    let server =
        Arc::new(make_server("127.0.0.1:0").unwrap_or_else(|e| panic!("{name}: server: {e}")));
    let addr = server.addr().dial_string();

    let (note_tx, mut note_rx) = mpsc::unbounded_channel();
    let mut cb = PeerBuilder::new(PeerConfig {
        network: net.network(),
        redial_times: 20,
        redial_interval: Duration::from_millis(20),
        ..PeerConfig::default()
    });
    cb.push("/client/note", move |_ctx: PushCtx, s: String| {
        let tx = note_tx.clone();
        async move {
            let _ = tx.send(s);
        }
    });
    let client = client_rt.client(cb);
    let session = client
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial {addr}: {e}"));
    let s = &session;

    client.block_on(async {
        codecs_and_gzip(name, s).await;
        meta_and_query(name, s).await;
        // Push both ways.
        guard(name, s.push("/server/sink", "to the server"))
            .await
            .unwrap();
        assert_eq!(
            guard(name, push_rx.recv()).await.as_deref(),
            Some("to the server"),
            "{name}"
        );
        let r = guard(name, s.pull::<_, String>("/pushback", "x")).await;
        assert_eq!(r.unwrap_or_else(|e| panic!("{name}: {e}")).value, "x");
        assert_eq!(
            guard(name, note_rx.recv()).await.as_deref(),
            Some("note x"),
            "{name}"
        );
        errors(name, s).await;
        // The timed-out pull's handler finishes; its late reply is dropped.
        probe.slow.add_permits(1);
        concurrency(name, s).await;
        callers_write_their_own_calls(name, s).await;
        probe.slow.add_permits(2);
    });
    queue_limit_holds(name, net, client_rt);
    refused_after_close(name, &client, &addr);
    hostile(name, net, &server, &client, s);
    let old_id = session.id();
    let late = graceful_shutdown(name, &server, &client, s, &probe, &mut started_rx);

    // Redial: a server comes back at the same address; the same handle
    // reconnects on its next use.
    let listen = server.addr().dial_string();
    drop(server);
    let server2 = crate::runtimes::retry_bind(|| make_server(&listen));
    // The pull made after the shutdown began was served by the old server
    // (made before the notice reached the client), or it waited and went
    // out over the next connection: to this server, or, while no server
    // listened, to a refused dial (105) or into the accept queue of the
    // old listener as it closed (a reset: 102). Never anything else, and
    // it never hangs.
    let late = late.join().expect("late pull thread");
    match late {
        Ok(v) => assert_eq!(v.value, "late", "{name}"),
        Err(e) => assert!(
            e.code == Rerror::CODE_DIAL_FAILED || e.code == Rerror::CODE_CONN_CLOSED,
            "{name}: late pull: unexpected error {e}"
        ),
    }
    // A pull that went out before the client noticed the old connection
    // had ended fails (102) and is not re-sent; the next one redials.
    let again = || {
        client.block_on(guard(
            name,
            s.pull::<_, String>("/echo/string", "after restart"),
        ))
    };
    let mut r = again();
    if let Err(e) = &r {
        assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{name}: {e}");
        r = again();
    }
    assert_eq!(
        r.unwrap_or_else(|e| panic!("{name}: pull after restart: {e}"))
            .value,
        "after restart"
    );
    assert_eq!(session.id(), old_id, "{name}: the session keeps its id");
    let report = server2.shutdown(Duration::from_secs(5));
    assert_eq!(report.cancelled, 0, "{name}");
    client.shutdown();
}

async fn codecs_and_gzip(name: &str, s: &Session) {
    for gzip in [false, true] {
        fn with(c: teleport_peer::Call<'_>, gzip: bool) -> teleport_peer::Call<'_> {
            if gzip {
                c.gzip()
            } else {
                c
            }
        }
        let want = if gzip { "yes" } else { "no" };
        let p = Point {
            x: 7,
            label: "héllo \"quoted\"".into(),
        };
        let r = guard(name, with(s.call("/echo/json"), gzip).pull::<_, Point>(&p)).await;
        let r = r.unwrap_or_else(|e| panic!("{name}: json gzip={gzip}: {e}"));
        assert_eq!((r.value, r.meta.get("gz")), (p, Some(want)), "{name}");
        assert_eq!(r.codec, CodecId::JSON);

        let ping = Ping {
            text: "proto".repeat(50),
        };
        let r = guard(
            name,
            with(s.call("/echo/proto"), gzip)
                .codec(CodecId::PROTOBUF)
                .pull::<_, Protobuf<Ping>>(&Protobuf(ping.clone())),
        )
        .await;
        let r = r.unwrap_or_else(|e| panic!("{name}: protobuf gzip={gzip}: {e}"));
        assert_eq!((r.value.0, r.meta.get("gz")), (ping, Some(want)), "{name}");
        assert_eq!(r.codec, CodecId::PROTOBUF);

        let r = guard(
            name,
            with(s.call("/echo/string"), gzip)
                .codec(CodecId::STRING)
                .pull::<_, String>("raw text ✓"),
        )
        .await;
        let r = r.unwrap_or_else(|e| panic!("{name}: string gzip={gzip}: {e}"));
        assert_eq!(
            (r.value.as_str(), r.meta.get("gz")),
            ("raw text ✓", Some(want))
        );
        assert_eq!(r.codec, CodecId::STRING);
    }
}

async fn meta_and_query(name: &str, s: &Session) {
    let r = guard(
        name,
        s.call("/meta?a=1&b=two%20words")
            .meta("k", "v & w")
            .meta("empty", "")
            .pull::<_, ()>(&()),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: meta: {e}"));
    assert_eq!(r.meta.get("q-a"), Some("1"), "{name}");
    assert_eq!(r.meta.get("q-b"), Some("two words"), "{name}");
    assert_eq!(r.meta.get("m-k"), Some("v & w"), "{name}");
    assert_eq!(r.meta.get("m-empty"), Some(""), "{name}");
}

async fn errors(name: &str, s: &Session) {
    let e = guard(name, s.pull::<_, ()>("/nowhere", &()))
        .await
        .unwrap_err();
    assert_eq!(e, Rerror::not_found(), "{name}");
    let e = guard(name, s.pull::<_, ()>("/fail", &()))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str(), e.detail.as_str()),
        (599, "it failed", "\"quoted\" \\ detail"),
        "{name}"
    );
    let e = guard(name, s.pull::<_, ()>("/panic", &()))
        .await
        .unwrap_err();
    assert_eq!(e.code, Rerror::CODE_INTERNAL, "{name}: {e}");
    let e = guard(
        name,
        s.call("/slow")
            .timeout(Duration::from_millis(50))
            .pull::<_, ()>(&()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, Rerror::CODE_TIMEOUT, "{name}: {e}");
    // The session lives on after all of that.
    let r = guard(name, s.pull::<_, String>("/echo/string", "still here")).await;
    assert_eq!(
        r.unwrap_or_else(|e| panic!("{name}: {e}")).value,
        "still here"
    );
}

async fn concurrency(name: &str, s: &Session) {
    let calls = (0..500).map(|i| async move {
        let body = format!("call {i}");
        let r = s.pull::<_, String>("/echo/string", &body).await;
        (body, r)
    });
    for (body, r) in guard(name, join_all(calls)).await {
        assert_eq!(r.unwrap_or_else(|e| panic!("{name}: {e}")).value, body);
    }
}

/// Calls a caller writes itself, with no hop to the connection's owner
/// (when the connection is free), behave as queued ones: a deadline
/// earlier than the one the owner waits for fires, and bodies larger than
/// the socket takes at once arrive whole. (Leaves two `/slow` handlers
/// waiting.)
async fn callers_write_their_own_calls(name: &str, s: &Session) {
    // The owner waits for this pull's hour-long deadline (the echo's round
    // trip lets it take that in) ...
    let long = s
        .call("/slow")
        .timeout(Duration::from_secs(3600))
        .pull::<_, ()>(&());
    let then_short = async {
        let r = s.pull::<_, String>("/echo/string", "first").await;
        assert_eq!(r.unwrap_or_else(|e| panic!("{name}: {e}")).value, "first");
        // ... when the idle session's next pull asks for an earlier one.
        s.call("/slow")
            .timeout(Duration::from_millis(100))
            .pull::<_, ()>(&())
            .await
    };
    match guard(
        name,
        select(std::pin::pin!(long), std::pin::pin!(then_short)),
    )
    .await
    {
        Either::Right((r, _)) => {
            let e = r.expect_err("no reply comes in time");
            assert_eq!(e.code, Rerror::CODE_TIMEOUT, "{name}: {e}");
        }
        Either::Left((r, _)) => panic!("{name}: the hour-long pull ended first: {r:?}"),
    }

    // Raw strings: the test is the transport, not JSON on 8 MiB.
    let body = "z".repeat(8 << 20);
    let r = guard(
        name,
        s.call("/echo/string")
            .codec(CodecId::STRING)
            .pull::<_, String>(&body),
    )
    .await;
    assert!(
        r.unwrap_or_else(|e| panic!("{name}: {e}")).value == body,
        "{name}: the 8 MiB echo is the body sent"
    );
    let calls = (0..4u8).map(|i| async move {
        let body = char::from(b'a' + i).to_string().repeat(1 << 20);
        let r = s
            .call("/echo/string")
            .codec(CodecId::STRING)
            .pull::<_, String>(&body)
            .await;
        (body, r)
    });
    for (body, r) in guard(name, join_all(calls)).await {
        assert!(
            r.unwrap_or_else(|e| panic!("{name}: {e}")).value == body,
            "{name}: a 1 MiB echo is its body"
        );
    }
}

/// Pushes to a peer that does not read are refused (503) once
/// `max_queued_bytes` wait, rather than piling up without end.
fn queue_limit_holds(name: &str, net: Net, client_rt: Rt) {
    if net != Net::Tcp {
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = l.local_addr().expect("address").to_string();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        // Accepts, never reads, and keeps the connection until told.
        let conn = l.accept();
        let _ = stop_rx.recv_timeout(GUARD);
        drop(conn);
    });
    let client = client_rt.client(PeerBuilder::new(PeerConfig {
        max_queued_bytes: 1 << 20,
        ..PeerConfig::default()
    }));
    let s = client
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial the silent peer: {e}"));
    let body = "x".repeat(256 << 10);
    let refused = client.block_on(async {
        // The kernel's buffers take some megabytes, then the session's
        // queue fills up to the limit.
        for _ in 0..512 {
            let push = s.call("/sink").codec(CodecId::STRING).push(&body);
            if let Err(e) = guard(name, push).await {
                return Some(e);
            }
        }
        None
    });
    let e = refused.unwrap_or_else(|| panic!("{name}: 128 MiB of pushes, none refused"));
    assert_eq!(e.code, Rerror::CODE_BACKPRESSURE, "{name}: {e}");
    let _ = stop_tx.send(());
    holder.join().expect("holder thread");
    client.shutdown();
}

/// Once a close is asked for, new calls are refused (102) and the session
/// ends.
fn refused_after_close(name: &str, client: &crate::runtimes::Client, addr: &str) {
    let s = client
        .dial(addr)
        .unwrap_or_else(|e| panic!("{name}: second dial: {e}"));
    client.block_on(async {
        let r = guard(name, s.pull::<_, String>("/echo/string", "before")).await;
        assert_eq!(r.unwrap_or_else(|e| panic!("{name}: {e}")).value, "before");
        s.close_by(std::time::Instant::now() + Duration::from_secs(5));
        let e = guard(name, s.pull::<_, String>("/echo/string", "after"))
            .await
            .expect_err("a pull after close_by");
        assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{name}: {e}");
        let e = guard(name, s.push("/server/sink", "after"))
            .await
            .expect_err("a push after close_by");
        assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{name}: {e}");
    });
}

/// A client that sends garbage is cut off while a good one goes on.
fn hostile(
    name: &str,
    net: Net,
    server: &crate::runtimes::Server,
    client: &crate::runtimes::Client,
    s: &Session,
) {
    use std::io::Write;
    let addr = server.addr().dial_string();
    let bad = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut conn = crate::runtimes::raw_connect(net, &addr)?;
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        // The server closes: end of stream (or a reset), with nothing said.
        crate::runtimes::read_until_dropped(&mut *conn)
    });
    client.block_on(async {
        for i in 0..50 {
            let body = format!("good {i}");
            let r = guard(name, s.pull::<_, String>("/echo/string", &body)).await;
            assert_eq!(r.unwrap_or_else(|e| panic!("{name}: {e}")).value, body);
        }
    });
    let n = bad
        .join()
        .expect("hostile thread")
        .unwrap_or_else(|e| panic!("{name}: the hostile client was not cut off: {e}"));
    assert_eq!(n, 0, "{name}: the server answered garbage");
}

/// Shutdown with pulls in flight: every pull the server accepted gets its
/// reply; a pull made once the shutdown began is not refused on the spot
/// (the server told the client to move): it is served, if it reached the
/// server before the notice reached the client, or it waits for the old
/// connection to drain and goes over the next one (here: once the server
/// is back). Returned unfinished: the caller brings the server back.
fn graceful_shutdown(
    name: &str,
    server: &Arc<crate::runtimes::Server>,
    client: &crate::runtimes::Client,
    s: &Session,
    probe: &Probe,
    started: &mut mpsc::UnboundedReceiver<()>,
) -> std::thread::JoinHandle<Result<teleport_peer::Reply<String>, Rerror>> {
    let mut late = None;
    const N: usize = 20;
    let runs_before = probe.gate_runs.load(Ordering::SeqCst);
    client.block_on(async {
        let calls = join_all(
            (0..N).map(|i| async move { s.pull::<_, String>("/gate", &format!("gate {i}")).await }),
        );
        let control = async {
            for _ in 0..N {
                guard(name, started.recv()).await;
            }
            let srv = server.clone();
            let shut = std::thread::spawn(move || srv.shutdown(Duration::from_secs(10)));
            while !server.is_draining() {
                async_io::Timer::after(Duration::from_millis(1)).await;
            }
            let s = s.clone();
            late = Some(std::thread::spawn(move || {
                // Bounded: a hang fails the test rather than blocking it.
                let call = s.call("/echo/string").timeout(GUARD);
                futures_executor::block_on(call.pull::<_, String>(&"late"))
            }));
            probe.gate.add_permits(N);
            shut
        };
        let (results, shut) = guard(name, join(calls, control)).await;
        for (i, r) in results.into_iter().enumerate() {
            assert_eq!(
                r.unwrap_or_else(|e| panic!("{name}: accepted pull {i} failed: {e}"))
                    .value,
                format!("gate {i}")
            );
        }
        let report = shut.join().expect("shutdown thread");
        assert_eq!(
            (
                report.cancelled,
                report.handlers_abandoned,
                report.pulls_abandoned
            ),
            (0, 0, 0),
            "{name}: {report:?}"
        );
    });
    assert_eq!(
        probe.gate_runs.load(Ordering::SeqCst) - runs_before,
        N,
        "{name}"
    );
    late.expect("the late pull was made")
}
