//! The per-call spans exported to OpenTelemetry (feature `otel`): three
//! peers in one process over loopback, A pulling B and B's handler pulling
//! C, with a `tracing-opentelemetry` layer exporting to memory. The four
//! spans (A's client, B's server and client, C's server) are one trace,
//! each the child of the one before (the server spans' parents remote),
//! of the right kinds; the `traceparent` C saw names B's client span.
//! A pull that fails is exported with an error status.
//!
//! Its own test binary: the subscriber is global.

use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use teleport::prelude::*;
use teleport::TraceContext;
use tracing_subscriber::layer::SubscriberExt;

fn attr(s: &SpanData, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The exported span of `route` on the `direction` side.
fn span<'a>(spans: &'a [SpanData], route: &str, direction: &str) -> &'a SpanData {
    let of: Vec<_> = spans
        .iter()
        .filter(|s| {
            attr(s, "route").as_deref() == Some(route)
                && attr(s, "direction").as_deref() == Some(direction)
        })
        .collect();
    assert_eq!(of.len(), 1, "{direction} {route}: {spans:#?}");
    of[0]
}

fn listen() -> PeerBuilder {
    PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        ..PeerConfig::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_three_peers_is_one_exported_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("teleport-test"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .expect("the only subscriber");

    let mut c = listen();
    c.pull("/c/leaf", |ctx: PullCtx, _: ()| async move {
        Ok::<_, Rerror>(ctx.meta().get("traceparent").unwrap_or("").to_string())
    });
    c.pull("/c/fail", |_ctx: PullCtx, _: ()| async move {
        Err::<(), _>(Rerror::new(418, "no"))
    });
    let c = Peer::from_builder(c).expect("C");
    let c_addr = c.spawn_listener().await.expect("C listens");

    let b_client = Peer::new(PeerConfig::default()).expect("B's client");
    let to_c = b_client.dial(&c_addr.to_string()).await.expect("B dials C");
    let mut b = listen();
    b.pull("/b/relay", move |_ctx: PullCtx, _: ()| {
        let to_c = to_c.clone();
        async move {
            let _ = to_c.pull::<_, ()>("/c/fail", &()).await;
            to_c.pull::<_, String>("/c/leaf", &())
                .await
                .map(|r| r.value)
        }
    });
    let b = Peer::from_builder(b).expect("B");
    let b_addr = b.spawn_listener().await.expect("B listens");

    let a = Peer::new(PeerConfig::default()).expect("A");
    let to_b = a.dial(&b_addr.to_string()).await.expect("A dials B");
    let seen = to_b
        .pull::<_, String>("/b/relay", &())
        .await
        .expect("A pulls B")
        .value;

    // The server spans end once their reply is out; give them a moment.
    let mut spans = Vec::new();
    for _ in 0..400 {
        provider.force_flush().expect("flush");
        spans = exporter.get_finished_spans().expect("spans");
        if spans.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a_relay = span(&spans, "/b/relay", "client");
    let b_relay = span(&spans, "/b/relay", "server");
    let b_leaf = span(&spans, "/c/leaf", "client");
    let c_leaf = span(&spans, "/c/leaf", "server");
    let b_fail = span(&spans, "/c/fail", "client");
    let c_fail = span(&spans, "/c/fail", "server");

    let trace = a_relay.span_context.trace_id();
    for s in &spans {
        assert_eq!(s.span_context.trace_id(), trace, "one trace: {spans:#?}");
        // Our own trace_id field names the exported trace.
        assert_eq!(attr(s, "trace_id"), Some(format!("{trace}")), "{s:#?}");
    }
    // Each the child of the one before; a server's parent is remote.
    assert_eq!(b_relay.parent_span_id, a_relay.span_context.span_id());
    assert!(b_relay.parent_span_is_remote);
    assert_eq!(b_leaf.parent_span_id, b_relay.span_context.span_id());
    assert!(!b_leaf.parent_span_is_remote);
    assert_eq!(c_leaf.parent_span_id, b_leaf.span_context.span_id());
    assert_eq!(c_fail.parent_span_id, b_fail.span_context.span_id());

    assert_eq!(a_relay.span_kind, SpanKind::Client);
    assert_eq!(b_relay.span_kind, SpanKind::Server);
    assert_eq!(b_leaf.name, "/c/leaf");
    assert_eq!(attr(c_leaf, "status").as_deref(), Some("ok"));
    assert!(matches!(b_fail.status, Status::Error { .. }), "{b_fail:#?}");
    assert_eq!(attr(c_fail, "status").as_deref(), Some("418"));

    // What C saw is B's client span, in the trace.
    let cx = TraceContext::parse(seen.as_bytes()).expect("a traceparent");
    assert_eq!(cx.trace_id().to_be_bytes(), trace.to_bytes());
    assert_eq!(
        cx.span_id().to_be_bytes(),
        b_leaf.span_context.span_id().to_bytes()
    );
    assert!(cx.is_sampled());

    a.shutdown(Duration::from_secs(1)).await;
    b_client.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
    c.shutdown(Duration::from_secs(1)).await;
    provider.shutdown().expect("provider shutdown");
}
