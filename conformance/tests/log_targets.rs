//! One log prefix: every event our crates emit, at every level, and every
//! span (the per-call spans), has a target under `teleport` (`teleport::session`, `teleport::peer`,
//! `teleport::tokio`, ...), so `RUST_LOG=teleport=trace` shows them all.
//! Events are caught by a layer that sees everything, while peers on every
//! runtime pull, push, meet an unknown route, inflate a large gzip body,
//! are refused, re-dial and shut down.
//!
//! Its own test binary: the subscriber is global.

#[path = "conformance/runtimes.rs"]
#[allow(dead_code, unused_imports)]
mod runtimes;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use runtimes::Rt;
use teleport_core::{CodecId, Rerror};
use teleport_peer::{PeerBuilder, PeerConfig, PullCtx, PushCtx};
use tracing_subscriber::layer::SubscriberExt;

/// `(module path, target)` of every event or span of ours under another
/// target.
static STRAYS: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
/// Targets of ours seen, to show the layer saw something.
static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

struct Targets;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Targets {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        note(e.metadata());
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        note(attrs.metadata());
    }
}

/// Notes the target of an event or span.
fn note(m: &tracing::Metadata<'_>) {
    let ours = m.module_path().is_some_and(|p| p.starts_with("teleport"));
    if !ours {
        return;
    }
    let t = m.target();
    if t == "teleport" || t.starts_with("teleport::") {
        SEEN.lock().unwrap().insert(t.to_string());
    } else {
        let path = m.module_path().unwrap_or_default().to_string();
        STRAYS.lock().unwrap().insert((path, t.to_string()));
    }
}

fn scenario(rt: Rt) {
    let mut b = PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        ..PeerConfig::default()
    });
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    b.pull("/fail", |_ctx: PullCtx, _: ()| async move {
        Err::<(), _>(Rerror::new(418, "no"))
    });
    b.push("/sink", |_ctx: PushCtx, _: String| async move {});
    let server = rt.serve(b).expect("serve");
    let client = rt.client(PeerBuilder::new(PeerConfig {
        redial_times: 1,
        ..PeerConfig::default()
    }));
    let addr = server.addr().dial_string();
    let s = client.dial(&addr).expect("dial");
    let big = "z".repeat(2 << 20);
    client.block_on(async {
        s.pull::<_, String>("/echo", "hi").await.expect("echo");
        let r = s
            .call("/echo")
            .codec(CodecId::STRING)
            .gzip()
            .pull::<_, String>(&big)
            .await
            .expect("gzip echo");
        assert_eq!(r.value.len(), big.len());
        s.pull::<_, ()>("/fail", &()).await.expect_err("fail");
        s.pull::<_, ()>("/nowhere", &()).await.expect_err("404");
        s.push("/sink", "x").await.expect("push");
    });
    // A dial nobody answers.
    let _ = client.dial("127.0.0.1:1");
    client.shutdown();
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn every_event_of_ours_is_under_teleport() {
    let subscriber = tracing_subscriber::registry().with(Targets);
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    for rt in [Rt::Tokio, Rt::AsyncStd, Rt::Smol, Rt::Mio] {
        scenario(rt);
    }
    let seen = SEEN.lock().unwrap().clone();
    assert!(
        seen.contains("teleport::session")
            && seen.contains("teleport::peer")
            && seen.contains("teleport::call"),
        "the layer saw too little: {seen:?}"
    );
    let strays = STRAYS.lock().unwrap().clone();
    assert!(
        strays.is_empty(),
        "events of ours outside `teleport::`: {strays:?} (targets seen: {seen:?})"
    );
}
