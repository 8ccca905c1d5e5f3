//! What a handler and a session handle offer a program, over real sockets:
//! a session named with `set_id` and found by that name, a push to every
//! session that a client which never reads cannot hold up, `closed()`
//! resolving with the reason, a push-only client that redials in the
//! background (its plugins see the new connection), plugins on groups and
//! routes in their documented order, `after_listen`, set and add on call
//! meta, call timing for handlers that finish at once, and arguments checked
//! before the handler (`Valid`).

use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use teleport_core::plugin::{CallDone, Direction};
use teleport_core::{CloseReason, Packet, Plugin, PluginCtx, Rerror, RouteKind};
use teleport_peer::{PeerBuilder, PeerConfig, PullCtx, PushCtx, Session};
use tokio::sync::mpsc;

use crate::runtimes::Rt;
use crate::scenarios::{guard, server_config, until, Net};

/// Records, in order, `<plugin>:<hook>` for the hooks that route plugins
/// share with peer-wide ones.
#[derive(Clone)]
struct Order {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Order {
    fn note(&self, hook: &str, p: &Packet) {
        // Only the route under test: the peer-wide one sees everything.
        if p.uri.path_str().unwrap_or("").starts_with("/g/") {
            self.log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{}:{hook}", self.name));
        }
    }
}

impl Plugin for Order {
    fn name(&self) -> &'static str {
        self.name
    }

    fn after_read_body(&self, _ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        self.note("read", p);
        Ok(())
    }

    fn before_write_reply(&self, _ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        self.note("reply", p);
        Ok(())
    }
}

/// The addresses `after_listen` was called with.
#[derive(Clone, Default)]
struct Listened(Arc<Mutex<Vec<String>>>);

impl Plugin for Listened {
    fn name(&self) -> &'static str {
        "listened"
    }

    fn after_listen(&self, addr: &str) -> Result<(), Rerror> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(addr.to_string());
        Ok(())
    }
}

/// Counts the sessions a peer dialed, and keeps how long calls took.
#[derive(Clone, Default)]
struct Dials {
    dials: Arc<AtomicUsize>,
    elapsed: Arc<Mutex<Vec<(Direction, String, Duration)>>>,
}

impl Plugin for Dials {
    fn name(&self) -> &'static str {
        "dials"
    }

    fn after_dial(&self, _ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn on_call_done(&self, _ctx: &mut PluginCtx<'_>, call: &CallDone<'_>) {
        self.elapsed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((
                call.direction,
                call.uri.path_str().unwrap_or("").to_string(),
                call.elapsed,
            ));
    }
}

#[derive(serde::Deserialize, garde::Validate)]
struct SignUp {
    #[garde(length(min = 3, max = 16))]
    name: String,
    #[garde(range(min = 13))]
    age: u8,
}

/// A server-side body big enough that a client which never reads fills
/// its queue in a few pushes.
const FLOOD_BODY: usize = 64 * 1024;
/// Broadcasts before giving up on seeing the stuck client refused (the
/// kernel's socket buffers take a few megabytes first).
const FLOOD_ROUNDS: usize = 2000;

fn server_routes(b: &mut PeerBuilder, order: &Order, server_dials: &Dials) {
    // Named sessions: a caller names its own session, another finds it.
    b.pull("/api/name", |ctx: PullCtx, id: String| async move {
        ctx.session().set_id(id.clone());
        Ok::<_, Rerror>(ctx.session().custom_id().unwrap_or_default())
    });
    b.pull(
        "/api/tell",
        |ctx: PullCtx, (to, note): (String, String)| async move {
            let Some(target) = ctx.peer().session_by_id(&to) else {
                return Err(Rerror::not_found().with_detail(format!("no session {to}")));
            };
            target.push("/note", &note).await?;
            Ok::<_, Rerror>(target.id() != ctx.session().id())
        },
    );
    b.pull("/api/count", |ctx: PullCtx, _: ()| async move {
        Ok::<_, Rerror>(ctx.peer().session_count())
    });
    // One push to all; says whether a session other than the caller's
    // refused it (and with which code), or fails if the caller's did.
    b.pull("/api/flood", |ctx: PullCtx, _: ()| async move {
        let me = ctx.session().id();
        let report = ctx
            .peer()
            .broadcast("/flood", &"x".repeat(FLOOD_BODY))
            .await?;
        if let Some((_, e)) = report.failed.iter().find(|(id, _)| *id == me) {
            return Err(Rerror::internal(format!("the caller was refused: {e}")));
        }
        Ok::<_, Rerror>(report.failed.first().map(|(_, e)| e.code))
    });
    b.pull("/api/all", |ctx: PullCtx, note: String| async move {
        let report = ctx.peer().broadcast("/note", &note).await?;
        Ok::<_, Rerror>(report.sent)
    });
    // Closes the caller's session after answering.
    b.pull("/api/bye", |ctx: PullCtx, _: ()| async move {
        ctx.session()
            .close_by(Instant::now() + Duration::from_secs(5));
        Ok::<_, Rerror>("bye")
    });
    b.pull("/api/meta", |ctx: PullCtx, _: ()| async move {
        let all: Vec<String> = ctx
            .meta()
            .get_all(b"k")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        Ok::<_, Rerror>(all.join(","))
    });
    b.pull("/api/instant", |_ctx: PullCtx, _: ()| async move {
        Ok::<_, Rerror>(1)
    });
    b.pull(
        "/api/sign_up",
        |_ctx: PullCtx, teleport_peer::Valid(s): teleport_peer::Valid<SignUp>| async move {
            Ok::<_, Rerror>(format!("welcome, {} ({})", s.name, s.age))
        },
    );

    // Plugins on a group, a nested group and one route, and the peer's.
    let mut g = b.group("g");
    g.plugin(Order {
        name: "group",
        ..order.clone()
    });
    let mut sub = g.group("sub");
    sub.plugin(Order {
        name: "sub",
        ..order.clone()
    });
    sub.pull(
        "x",
        |_ctx: PullCtx, s: String| async move { Ok::<_, Rerror>(s) },
    );
    b.route_plugin(
        RouteKind::Pull,
        "/g/sub/x",
        Order {
            name: "route",
            ..order.clone()
        },
    )
    .expect("the route exists");
    b.plugin(Order {
        name: "peer",
        ..order.clone()
    })
    .plugin(server_dials.clone());
}

fn client_config(redial: bool) -> PeerConfig {
    PeerConfig {
        redial_times: if redial { 50 } else { 0 },
        redial_interval: Duration::from_millis(10),
        ..PeerConfig::default()
    }
}

/// A client peer whose `/note` and `/flood` pushes go to channels.
fn client_builder(
    redial: bool,
    notes: mpsc::UnboundedSender<String>,
    floods: Arc<AtomicUsize>,
    dials: &Dials,
) -> PeerBuilder {
    let mut b = PeerBuilder::new(client_config(redial));
    b.push("/note", move |_ctx: PushCtx, note: String| {
        let _ = notes.send(note);
        async {}
    });
    b.push("/flood", move |_ctx: PushCtx, _: String| {
        floods.fetch_add(1, Ordering::SeqCst);
        async {}
    });
    b.plugin(dials.clone());
    b
}

pub fn run(server_rt: Rt, client_rt: Rt, name: &str) {
    let name = &format!("{name} (api)");
    let order = Order {
        name: "",
        log: Arc::default(),
    };
    let server_dials = Dials::default();
    let listened = Listened::default();
    let mut b = PeerBuilder::new(PeerConfig {
        max_queued_bytes: 4 * FLOOD_BODY,
        ..server_config(Net::Tcp, &None, "127.0.0.1:0")
    });
    server_routes(&mut b, &order, &server_dials);
    b.plugin(listened.clone());
    let server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: server: {e}"));
    let addr = server.addr().dial_string();
    assert_eq!(
        *listened.0.lock().unwrap(),
        [addr.as_str()],
        "{name}: after_listen saw the listener once, with its address"
    );

    let (notes_tx, notes) = mpsc::unbounded_channel();
    let floods = Arc::new(AtomicUsize::new(0));
    let dials = Dials::default();
    let client = client_rt.client(client_builder(false, notes_tx, floods.clone(), &dials));
    let s = client
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial {addr}: {e}"));
    // The push-only client: redials in the background.
    let (bg_tx, mut bg_notes) = mpsc::unbounded_channel();
    let bg_dials = Dials::default();
    let bg_client = client_rt.client(client_builder(true, bg_tx, Arc::default(), &bg_dials));
    let bg = bg_client
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial {addr}: {e}"));

    // For `closed()`: a session of the client that does not redial.
    let third = client
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial {addr}: {e}"));

    client.block_on(async {
        named_sessions(name, &s, &bg, &mut bg_notes).await;
        call_meta(name, &s).await;
        route_plugins(name, &s, &order).await;
        instant_handlers_take_time(name, &s, &dials, &server_dials).await;
        validated(name, &s).await;
        broadcast_past_a_stuck_client(name, &s, &addr, &floods).await;
        push_only_client_redials(name, &s, &bg, &bg_dials, &mut bg_notes).await;
        closed_says_why(name, &third).await;
    });
    drop(notes);
    client.shutdown();
    bg_client.shutdown();
    let report = server.shutdown(Duration::from_secs(5));
    assert_eq!(report.cancelled, 0, "{name}");
}

/// A session named by its caller is found by that name from another
/// session's handler, which pushes to it.
async fn named_sessions(
    name: &str,
    s: &Session,
    bg: &Session,
    bg_notes: &mut mpsc::UnboundedReceiver<String>,
) {
    let id = format!("bg-{}", bg.local_addr());
    let r = guard(name, bg.pull::<_, String>("/api/name", &id))
        .await
        .unwrap_or_else(|e| panic!("{name}: /api/name: {e}"));
    assert_eq!(r.value, id, "{name}: set_id is read back");
    let r = guard(name, s.pull::<_, bool>("/api/tell", &(&id, "found you")))
        .await
        .unwrap_or_else(|e| panic!("{name}: /api/tell: {e}"));
    assert!(r.value, "{name}: session_by_id found the other session");
    assert_eq!(
        guard(name, bg_notes.recv()).await.as_deref(),
        Some("found you"),
        "{name}"
    );
    let e = guard(name, s.pull::<_, bool>("/api/tell", &("nobody", "x")))
        .await
        .expect_err("no session has that id");
    assert_eq!(e.code, Rerror::CODE_NOT_FOUND, "{name}: {e}");
}

/// `set_meta` replaces what `meta` added under the key; `add_meta` keeps
/// both, as Go's `WithSetMeta` and `WithAddMeta` do.
async fn call_meta(name: &str, s: &Session) {
    let r = guard(
        name,
        s.call("/api/meta")
            .meta("k", "a")
            .set_meta("k", "b")
            .add_meta("k", "c")
            .pull::<_, String>(&()),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: /api/meta: {e}"));
    assert_eq!(r.value, "b,c", "{name}");
}

/// The peer's plugins see a routed pull first, then the group's, the
/// nested group's and the route's own; the reply goes through the route
/// plugins (outermost group first) before the peer's. A route outside
/// the group is seen by the peer's plugin only (it notes `/g/` only, so
/// nothing is noted).
async fn route_plugins(name: &str, s: &Session, order: &Order) {
    order.log.lock().unwrap().clear();
    let r = guard(name, s.pull::<_, String>("/g/sub/x", "through"))
        .await
        .unwrap_or_else(|e| panic!("{name}: /g/sub/x: {e}"));
    assert_eq!(r.value, "through", "{name}");
    assert_eq!(
        *order.log.lock().unwrap(),
        [
            "peer:read",
            "group:read",
            "sub:read",
            "route:read",
            "group:reply",
            "sub:reply",
            "route:reply",
            "peer:reply"
        ],
        "{name}: plugin order"
    );
    // A path in the group with no route: the peer's plugin sees it, the
    // group's do not (it is not routed into the group).
    order.log.lock().unwrap().clear();
    let e = guard(name, s.pull::<_, String>("/g/sub/none", "x"))
        .await
        .expect_err("no such route");
    assert_eq!(e.code, Rerror::CODE_NOT_FOUND, "{name}");
    assert_eq!(*order.log.lock().unwrap(), ["peer:reply"], "{name}");
}

/// A handler that finishes on its first poll still took time: both sides'
/// `CallDone.elapsed` is above zero.
async fn instant_handlers_take_time(name: &str, s: &Session, dials: &Dials, server: &Dials) {
    guard(name, s.pull::<_, i32>("/api/instant", &()))
        .await
        .unwrap_or_else(|e| panic!("{name}: /api/instant: {e}"));
    let find = |d: &Dials, dir: Direction| {
        d.elapsed
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(d, p, _)| *d == dir && p == "/api/instant")
            .map(|(_, _, e)| *e)
    };
    let ours = find(dials, Direction::Outgoing).expect("the client timed its pull");
    assert!(ours > Duration::ZERO, "{name}: client elapsed {ours:?}");
    // The server's call is done once its reply is queued, which may come
    // a moment after the client has it.
    until(name, || find(server, Direction::Incoming).is_some()).await;
    let theirs = find(server, Direction::Incoming).expect("noted");
    assert!(theirs > Duration::ZERO, "{name}: server elapsed {theirs:?}");
}

/// An argument breaking its declared rules is a 400 naming the field,
/// and the handler does not run.
async fn validated(name: &str, s: &Session) {
    let ok = guard(
        name,
        s.pull::<_, String>(
            "/api/sign_up",
            &serde_json::json!({"name": "ada", "age": 36}),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: valid sign-up: {e}"));
    assert_eq!(ok.value, "welcome, ada (36)", "{name}");
    let e = guard(
        name,
        s.pull::<_, String>(
            "/api/sign_up",
            &serde_json::json!({"name": "al", "age": 36}),
        ),
    )
    .await
    .expect_err("a two-letter name breaks the rule");
    assert_eq!(e.code, Rerror::CODE_BAD_PACKET, "{name}: {e}");
    assert_eq!(e.message, "Invalid Argument", "{name}: {e}");
    assert!(e.detail.contains("name"), "{name}: names the field: {e}");
    assert!(
        !e.detail.contains("age"),
        "{name}: only the broken rule: {e}"
    );
}

/// A client that never reads fills its session's queue and is refused
/// (503); the caller's own session gets every push meanwhile.
async fn broadcast_past_a_stuck_client(name: &str, s: &Session, addr: &str, floods: &AtomicUsize) {
    let before = guard(name, s.pull::<_, usize>("/api/count", &()))
        .await
        .unwrap_or_else(|e| panic!("{name}: /api/count: {e}"))
        .value;
    let stuck = TcpStream::connect(addr).expect("raw connect");
    // The server registers the stuck session when it accepts it.
    let mut now = before;
    guard(name, async {
        while now == before {
            now = s
                .pull::<_, usize>("/api/count", &())
                .await
                .unwrap_or_else(|e| panic!("{name}: /api/count: {e}"))
                .value;
        }
    })
    .await;
    // Round after round, until the stuck session is refused. The caller
    // takes each round's pushes (on both of this client's sessions: the
    // caller's and the one kept for `closed()`) before asking for the
    // next, so only the stuck one's queue grows.
    floods.store(0, Ordering::SeqCst);
    let mut refused = None;
    for round in 1..=FLOOD_ROUNDS {
        refused = guard(name, s.pull::<_, Option<i32>>("/api/flood", &()))
            .await
            .unwrap_or_else(|e| panic!("{name}: /api/flood round {round}: {e}"))
            .value;
        until(name, || floods.load(Ordering::SeqCst) >= 2 * round).await;
        assert_eq!(floods.load(Ordering::SeqCst), 2 * round, "{name}");
        if refused.is_some() {
            break;
        }
    }
    assert_eq!(
        refused,
        Some(Rerror::CODE_BACKPRESSURE),
        "{name}: the client that never reads is refused, not waited for"
    );
    drop(stuck);
}

/// The server ends the push-only client's session; the client redials on
/// its own (its plugin sees a second dial), keeps the same handle, and a
/// broadcast reaches it on the new connection.
async fn push_only_client_redials(
    name: &str,
    s: &Session,
    bg: &Session,
    bg_dials: &Dials,
    bg_notes: &mut mpsc::UnboundedReceiver<String>,
) {
    assert_eq!(bg_dials.dials.load(Ordering::SeqCst), 1, "{name}");
    let r = guard(name, bg.pull::<_, String>("/api/bye", &()))
        .await
        .unwrap_or_else(|e| panic!("{name}: /api/bye: {e}"));
    assert_eq!(
        r.value, "bye",
        "{name}: the answer before the close arrives"
    );
    // Nothing more is asked on `bg`: it redials by itself.
    until(name, || bg_dials.dials.load(Ordering::SeqCst) == 2).await;
    assert!(!bg.is_closed(), "{name}: the handle lives on");
    // The server may register the new session a moment after the
    // client's plugin saw the dial: broadcast until one reaches it.
    guard(name, async {
        loop {
            guard(name, s.pull::<_, usize>("/api/all", "after the redial"))
                .await
                .unwrap_or_else(|e| panic!("{name}: /api/all: {e}"));
            async_io::Timer::after(Duration::from_millis(2)).await;
            if let Ok(got) = bg_notes.try_recv() {
                assert_eq!(got, "after the redial", "{name}");
                break;
            }
        }
    })
    .await;
}

/// `closed()` resolves when the peer ends a session that does not redial,
/// with why; `close_reason()` then says the same.
async fn closed_says_why(name: &str, s: &Session) {
    assert_eq!(s.close_reason(), None, "{name}");
    let waiter = s.clone();
    let closed = async move { waiter.closed().await };
    let bye = async {
        guard(name, s.pull::<_, String>("/api/bye", &()))
            .await
            .unwrap_or_else(|e| panic!("{name}: /api/bye: {e}"))
    };
    let (reason, bye) = futures_util::future::join(guard(name, closed), bye).await;
    assert_eq!(bye.value, "bye", "{name}");
    assert!(
        matches!(reason, CloseReason::PeerClosed),
        "{name}: {reason:?}"
    );
    let again = s.close_reason();
    assert!(
        matches!(again, Some(CloseReason::PeerClosed)),
        "{name}: {again:?}"
    );
    assert!(s.is_closed(), "{name}");
}
