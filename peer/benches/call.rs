//! One pull through the peer layer, both sides, without sockets: a
//! `Session` handle's `pull` (its client span and `traceparent`), the
//! client's driver taking the command, the frame into the server's core
//! session, the server's driver running the handler inline (its server
//! span and trace context), the reply back, and the caller's future
//! resolving. What the traces add per call, with no subscriber, with one
//! at INFO (the spans are at DEBUG), and with one recording the spans.
//!
//! `cargo bench -p teleport-peer --bench call`

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use teleport_core::bytes::BytesMut;
use teleport_core::{Rerror, Role};
use teleport_peer::adapter::{CoreSession, Driver, SessionStart};
use teleport_peer::{PeerAddr, PeerBuilder, PeerConfig, PullCtx, Session};
use tracing_subscriber::layer::SubscriberExt;

/// A client and a server session, their drivers and core sessions.
struct Pair {
    client: Session,
    client_driver: Driver,
    client_core: CoreSession,
    server_driver: Driver,
    server_core: CoreSession,
    wire: BytesMut,
}

fn addr(port: u16) -> PeerAddr {
    PeerAddr::Tcp(([127, 0, 0, 1], port).into())
}

/// The driver of a new session of `peer`, and its handle.
fn session(b: PeerBuilder, role: Role) -> (Session, Driver) {
    let core = b.build().expect("peer");
    let driver = Arc::new(Mutex::new(None));
    let slot = driver.clone();
    let s = core.start_session(SessionStart::new(addr(1), addr(2), role), move |d| {
        *slot.lock().unwrap() = Some(d);
        Box::new(|| {})
    });
    let d = driver.lock().unwrap().take().expect("the driver");
    (s, d)
}

fn pair() -> Pair {
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/bench/say", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    let (_, mut server_driver) = session(b, Role::Acceptor);
    let (client, mut client_driver) =
        session(PeerBuilder::new(PeerConfig::default()), Role::Dialer);
    let now = Instant::now();
    let server_core = server_driver.open(now, &mut Vec::new());
    let client_core = client_driver.open(now, &mut Vec::new());
    Pair {
        client,
        client_driver,
        client_core,
        server_driver,
        server_core,
        wire: BytesMut::with_capacity(4096),
    }
}

impl Pair {
    #[inline(never)]
    fn round_trip(&mut self, now: Instant) {
        let waker = futures_util::task::noop_waker_ref();
        let mut cx = Context::from_waker(waker);
        let mut call = pin!(self.client.pull::<_, String>("/bench/say", "hello"));
        assert!(call.as_mut().poll(&mut cx).is_pending());
        self.client_driver.take_commands(&mut self.client_core, now);
        self.client_core.poll_transmit(&mut self.wire);
        self.server_core.handle_input(now, &self.wire);
        self.wire.clear();
        self.server_driver
            .drain_events(&mut self.server_core, now, &mut |_| {
                panic!("the handler does not wait")
            });
        self.server_core.poll_transmit(&mut self.wire);
        self.client_core.handle_input(now, &self.wire);
        self.wire.clear();
        self.client_driver
            .drain_events(&mut self.client_core, now, &mut |_| {});
        match call.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(r)) => {
                black_box(r);
            }
            other => panic!("no reply: {other:?}"),
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pull through the peer layer");
    let mut p = pair();
    let now = Instant::now();
    g.bench_function("no subscriber", |b| b.iter(|| p.round_trip(now)));

    // A program logging at INFO, but not teleport's packets.
    let info = tracing_subscriber::registry().with(
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::INFO)
            .with_target("teleport", tracing::Level::WARN),
    );
    tracing::subscriber::with_default(info, || {
        g.bench_function("subscriber at INFO", |b| b.iter(|| p.round_trip(now)));
    });

    let on = tracing_subscriber::registry().with(
        tracing_subscriber::filter::Targets::new()
            .with_target("teleport::call", tracing::Level::DEBUG),
    );
    tracing::subscriber::with_default(on, || {
        g.bench_function("subscriber recording teleport::call spans", |b| {
            b.iter(|| p.round_trip(now))
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
