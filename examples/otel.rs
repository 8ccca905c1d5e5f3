//! Traces exported to OpenTelemetry: a gateway, a service and a store on
//! loopback in one process. A client pulls the gateway's `/api/price`; its
//! handler pulls the service's `/svc/quote`, whose handler pulls the
//! store's `/store/get` and pushes to its `/store/hit`. Every call's span
//! on both sides goes through a `tracing-opentelemetry` layer to an
//! OpenTelemetry exporter (here the SDK's in-memory one, so the example
//! can print them; a real program installs an OTLP exporter instead), all
//! in one trace: the ids travel from peer to peer in the `traceparent`
//! meta. The spans are printed as a tree.
//!
//! Run: `cargo run --features otel --example otel`

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use teleport::prelude::*;
use tracing_subscriber::layer::SubscriberExt;

fn listen() -> PeerBuilder {
    PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        ..PeerConfig::default()
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The exporter and the layer that feeds it every `teleport::call` span.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("otel-example"));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::filter::Targets::new()
                    .with_target("teleport::call", tracing::Level::DEBUG),
            )
            .with(otel),
    )?;

    // The store.
    let mut b = listen();
    b.pull("/store/get", |_ctx: PullCtx, item: String| async move {
        Ok::<_, Rerror>(item.len() as u32 * 100)
    });
    b.push("/store/hit", |_ctx: PushCtx, _item: String| async move {});
    let store = Peer::from_builder(b)?;
    let store_addr = store.spawn_listener().await?;

    // The service: a session to the store, used from its handler.
    let to_store = Peer::new(PeerConfig::default())?
        .dial(&store_addr.to_string())
        .await?;
    let mut b = listen();
    b.pull("/svc/quote", move |_ctx: PullCtx, item: String| {
        let to_store = to_store.clone();
        async move {
            let cents = to_store.pull::<_, u32>("/store/get", &item).await?.value;
            to_store.push("/store/hit", &item).await?;
            Ok::<_, Rerror>(format!("{item}: {cents} cents"))
        }
    });
    let service = Peer::from_builder(b)?;
    let service_addr = service.spawn_listener().await?;

    // The gateway.
    let to_service = Peer::new(PeerConfig::default())?
        .dial(&service_addr.to_string())
        .await?;
    let mut b = listen();
    b.pull("/api/price", move |_ctx: PullCtx, item: String| {
        let to_service = to_service.clone();
        async move {
            Ok::<_, Rerror>(
                to_service
                    .pull::<_, String>("/svc/quote", &item)
                    .await?
                    .value,
            )
        }
    });
    let gateway = Peer::from_builder(b)?;
    let gateway_addr = gateway.spawn_listener().await?;

    // The client, outside any handler: its call starts the trace.
    let client = Peer::new(PeerConfig::default())?;
    let s = client.dial(&gateway_addr.to_string()).await?;
    let reply = s.pull::<_, String>("/api/price", "apple").await?;
    println!("reply: {}", reply.value);

    // The server spans end as their replies go out: wait for all eight (four calls, two sides each).
    let mut spans = Vec::new();
    for _ in 0..400 {
        provider.force_flush()?;
        spans = exporter.get_finished_spans()?;
        if spans.len() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    print_tree(&spans);

    client.shutdown(Duration::from_secs(1)).await;
    for peer in [&gateway, &service, &store] {
        peer.shutdown(Duration::from_secs(1)).await;
    }
    provider.shutdown()?;
    Ok(())
}

fn attr(s: &SpanData, key: &str) -> String {
    s.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
        .unwrap_or_default()
}

/// Each trace, its spans under their parents.
fn print_tree(spans: &[SpanData]) {
    let mut children: HashMap<SpanId, Vec<&SpanData>> = HashMap::new();
    let ids: Vec<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    let mut roots = Vec::new();
    for s in spans {
        if ids.contains(&s.parent_span_id) {
            children.entry(s.parent_span_id).or_default().push(s);
        } else {
            roots.push(s);
        }
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start_time);
    }
    for root in roots {
        println!("trace {}", root.span_context.trace_id());
        print_span(root, &children, 1);
    }
}

fn print_span(s: &SpanData, children: &HashMap<SpanId, Vec<&SpanData>>, depth: usize) {
    let took = s.end_time.duration_since(s.start_time).unwrap_or_default();
    println!(
        "{:indent$}{} {:?} span {} peer {} status {} ({took:?})",
        "",
        s.name,
        s.span_kind,
        s.span_context.span_id(),
        attr(s, "peer"),
        attr(s, "status"),
        indent = depth * 2,
    );
    for c in children
        .get(&s.span_context.span_id())
        .into_iter()
        .flatten()
    {
        print_span(c, children, depth + 1);
    }
}
