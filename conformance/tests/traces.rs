//! One trace across three peers, on every runtime: A pulls B, and B's
//! handler pulls C while answering. A layer of the test's records each
//! `teleport::call` span's fields; A's client span, B's server and client
//! spans and C's server span must carry one `trace_id`, and the
//! `traceparent` C's handler saw must name that trace. Also: a
//! `traceparent` the caller sets is kept, and one that is not valid is
//! ignored (B starts a new trace) without harm. On mio, B's handler is a
//! plain function calling C through the blocking API, on a worker thread.
//!
//! Its own test binary: the subscriber is global (handlers run on the
//! runtimes' threads).

#[path = "conformance/runtimes.rs"]
#[allow(dead_code, unused_imports)]
mod runtimes;

use std::collections::BTreeMap;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use runtimes::{Client, Rt, Server};
use teleport_core::Rerror;
use teleport_mio::prelude::*;
use teleport_peer::{PeerBuilder, PeerConfig, PullCtx, Session, TraceContext};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A closed call span: its name and fields.
#[derive(Debug, Clone, Default)]
struct CallSpan {
    name: &'static str,
    fields: BTreeMap<String, String>,
}

impl CallSpan {
    fn get(&self, k: &str) -> Option<&str> {
        self.fields.get(k).map(String::as_str)
    }
}

impl Visit for CallSpan {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields
            .insert(field.name().to_string(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .insert(field.name().to_string(), value.to_string());
    }
}

/// Every `teleport::call` span closed so far.
static CLOSED: Mutex<Vec<CallSpan>> = Mutex::new(Vec::new());

struct Calls;

impl<S> tracing_subscriber::Layer<S> for Calls
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let meta = attrs.metadata();
        if meta.target() != teleport_peer::trace::SPAN_TARGET {
            return;
        }
        let mut span = CallSpan {
            name: meta.name(),
            ..CallSpan::default()
        };
        attrs.record(&mut span);
        if let Some(s) = ctx.span(id) {
            s.extensions_mut().insert(span);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(s) = ctx.span(id) {
            if let Some(span) = s.extensions_mut().get_mut::<CallSpan>() {
                values.record(span);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(s) = ctx.span(&id) {
            if let Some(span) = s.extensions_mut().remove::<CallSpan>() {
                CLOSED.lock().unwrap().push(span);
            }
        }
    }
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(Calls);
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    });
}

/// The closed spans of `route`, once `n` of them are there.
fn spans_of(route: &str, n: usize) -> Vec<CallSpan> {
    let until = Instant::now() + runtimes::GUARD;
    loop {
        let found: Vec<CallSpan> = CLOSED
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.get("route") == Some(route))
            .cloned()
            .collect();
        if found.len() >= n || Instant::now() > until {
            return found;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The one span of `route` on the `direction` side.
fn one(spans: &[CallSpan], direction: &str) -> CallSpan {
    let of: Vec<_> = spans
        .iter()
        .filter(|s| s.get("direction") == Some(direction))
        .collect();
    assert_eq!(of.len(), 1, "{direction} spans: {spans:#?}");
    of[0].clone()
}

fn listen() -> PeerBuilder {
    PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        ..PeerConfig::default()
    })
}

/// The three peers of a chain: C answers `/<tag>/leaf` with the
/// `traceparent` it was sent; B answers `/<tag>/relay` by pulling C's leaf
/// and handing its answer back; A is a client.
struct Chain {
    _c: Server,
    /// B's own client peer, that dialed C.
    _bc: Client,
    b: Server,
    a: Client,
    a_to_b: Session,
    relay: String,
    leaf: String,
}

impl Chain {
    /// `b_sync`: B's handler is a plain function (mio only).
    fn new(tag: &str, a_rt: Rt, b_rt: Rt, c_rt: Rt, b_sync: bool) -> Chain {
        let relay = format!("/{tag}/relay");
        let leaf = format!("/{tag}/leaf");
        let mut cb = listen();
        cb.pull(&leaf, |ctx: PullCtx, _: ()| async move {
            Ok::<_, Rerror>(ctx.meta().get("traceparent").unwrap_or("").to_string())
        });
        let c = c_rt.serve(cb).expect("serve C");
        let bc = b_rt.client(PeerBuilder::new(PeerConfig::default()));
        let b_to_c = bc.dial(&c.addr().dial_string()).expect("B dials C");
        let mut bb = listen();
        let to_leaf = leaf.clone();
        if b_sync {
            // A plain function, calling C through the blocking API on the
            // worker thread that runs it.
            let b_to_c = teleport_mio::Session::from(b_to_c);
            bb.pull_sync(&relay, move |_ctx: PullCtx, _: ()| {
                b_to_c.pull::<_, String>(&to_leaf, &()).map(|r| r.value)
            });
        } else {
            bb.pull(&relay, move |_ctx: PullCtx, _: ()| {
                let (s, leaf) = (b_to_c.clone(), to_leaf.clone());
                async move { s.pull::<_, String>(&leaf, &()).await.map(|r| r.value) }
            });
        }
        let b = b_rt.serve(bb).expect("serve B");
        let a = a_rt.client(PeerBuilder::new(PeerConfig::default()));
        let a_to_b = a.dial(&b.addr().dial_string()).expect("A dials B");
        Chain {
            _c: c,
            _bc: bc,
            b,
            a,
            a_to_b,
            relay,
            leaf,
        }
    }

    /// A pulls B's relay (with `traceparent` set to `theirs`, if given);
    /// what C saw.
    fn pull(&self, theirs: Option<&str>) -> String {
        self.a.block_on(async {
            let call = self.a_to_b.call(self.relay.as_str());
            let call = match theirs {
                Some(v) => call.set_meta("traceparent", v),
                None => call,
            };
            call.pull::<_, String>(&()).await.expect("A pulls B").value
        })
    }

    /// The four spans: A's and B's of the relay, B's and C's of the leaf.
    fn spans(&self) -> [CallSpan; 4] {
        let relay = spans_of(&self.relay, 2);
        let leaf = spans_of(&self.leaf, 2);
        [
            one(&relay, "client"),
            one(&relay, "server"),
            one(&leaf, "client"),
            one(&leaf, "server"),
        ]
    }

    fn shutdown(self) {
        self.a.shutdown();
        self.b.shutdown(Duration::from_secs(5));
    }
}

/// The trace id C saw, from its `traceparent`.
fn seen_trace(seen: &str) -> String {
    let cx = TraceContext::parse(seen.as_bytes())
        .unwrap_or_else(|| panic!("C saw no valid traceparent: {seen:?}"));
    cx.trace_id_hex().to_string()
}

fn one_trace(tag: &str, a_rt: Rt, b_rt: Rt, c_rt: Rt) {
    one_trace_with(tag, a_rt, b_rt, c_rt, b_rt == Rt::Mio);
}

fn one_trace_with(tag: &str, a_rt: Rt, b_rt: Rt, c_rt: Rt, b_sync: bool) {
    install();
    let chain = Chain::new(tag, a_rt, b_rt, c_rt, b_sync);
    let seen = chain.pull(None);
    let spans = chain.spans();
    let trace = spans[0].get("trace_id").expect("A's span has a trace id");
    assert_eq!(trace.len(), 32, "{spans:#?}");
    assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()), "{trace}");
    for s in &spans {
        assert_eq!(s.get("trace_id"), Some(trace), "one trace: {spans:#?}");
        assert_eq!(s.name, "pull");
        assert_eq!(s.get("status"), Some("ok"), "{s:#?}");
        assert!(s.get("duration").is_some(), "{s:#?}");
        assert!(s.get("seq").is_some(), "{s:#?}");
        assert!(s.get("peer").is_some_and(|p| !p.is_empty()), "{s:#?}");
        assert_eq!(s.get("codec"), Some("json"), "{s:#?}");
    }
    assert_eq!(seen_trace(&seen), trace, "what C saw: {seen}");
    // A second call is a trace of its own.
    let again = chain.pull(None);
    assert_ne!(seen_trace(&again), trace);
    chain.shutdown();
}

#[test]
fn one_trace_on_tokio() {
    one_trace("tokio", Rt::Tokio, Rt::Tokio, Rt::Tokio);
}

#[test]
fn one_trace_on_async_std() {
    one_trace("async_std", Rt::AsyncStd, Rt::AsyncStd, Rt::AsyncStd);
}

#[test]
fn one_trace_on_smol() {
    one_trace("smol", Rt::Smol, Rt::Smol, Rt::Smol);
}

#[test]
fn one_trace_on_mio() {
    one_trace("mio", Rt::Mio, Rt::Mio, Rt::Mio);
}

/// B on mio with an async handler, polled again by a worker after C's
/// answer wakes it.
#[test]
fn one_trace_on_mio_async_handler() {
    one_trace_with("mio_async", Rt::Mio, Rt::Mio, Rt::Mio, false);
}

#[test]
fn one_trace_across_runtimes() {
    one_trace("mixed", Rt::Tokio, Rt::Mio, Rt::Smol);
    one_trace("mixed2", Rt::Mio, Rt::AsyncStd, Rt::Tokio);
}

/// A `traceparent` the caller set is sent as it is, and the chain is in
/// its trace.
#[test]
fn the_callers_traceparent_is_kept() {
    install();
    let chain = Chain::new("theirs", Rt::Tokio, Rt::Tokio, Rt::Tokio, false);
    let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let seen = chain.pull(Some(theirs));
    let spans = chain.spans();
    for s in &spans {
        assert_eq!(
            s.get("trace_id"),
            Some("0af7651916cd43dd8448eb211c80319c"),
            "{spans:#?}"
        );
    }
    assert_eq!(seen_trace(&seen), "0af7651916cd43dd8448eb211c80319c");
    // C's parent is B's client span, not A's.
    assert_ne!(seen, theirs);
    chain.shutdown();
}

/// Hostile values from the network are ignored: B starts a new trace,
/// which C joins; nothing panics, every call is answered.
#[test]
fn an_invalid_traceparent_starts_a_new_trace() {
    install();
    for (i, bad) in [
        "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\u{0}",
        "",
    ]
    .into_iter()
    .enumerate()
    {
        let tag = format!("bad{i}");
        let chain = Chain::new(&tag, Rt::Tokio, Rt::Tokio, Rt::Tokio, false);
        let seen = chain.pull(Some(bad));
        let [a, b, bc, c] = chain.spans();
        // A left the value alone, and so has no trace of its own.
        assert_eq!(a.get("trace_id"), None, "{a:#?}");
        let trace = b.get("trace_id").expect("B started a trace");
        assert_eq!(bc.get("trace_id"), Some(trace));
        assert_eq!(c.get("trace_id"), Some(trace));
        assert_eq!(seen_trace(&seen), trace);
        chain.shutdown();
    }
}
