//! Traces: a `tracing` span per call on both sides, and the W3C trace
//! context carried in meta as `traceparent`, so a call that a handler makes
//! while answering another joins the caller's trace.
//!
//! # Spans
//!
//! Every pull and push gets a span under the target [`SPAN_TARGET`]
//! (`teleport::call`), at DEBUG, named `pull` or `push`, with the fields
//! `direction` (`client`: we sent it; `server`: we run its handler),
//! `route` (the URI's path), `seq`, `peer` (the remote address), `codec`,
//! `trace_id`, and once the call is over `status` (`ok`, or the
//! [`Rerror`]'s code), `error` (the error, if any) and `duration`.
//!
//! - A **client** span runs from the call's start (its first poll) to its
//!   end: the reply or the error for a pull, the push being queued for a
//!   push. Its `seq` is the reply's (a call that ends with an error does
//!   not learn its seq). A call dropped before its end gets `status =
//!   "cancelled"`.
//! - A **server** span runs from the handler's start (on the thread that
//!   runs it) to the moment its reply is produced (or, for a push, the
//!   handler returns). It is entered around every poll of the handler's
//!   future, and around the call of a plain (mio) handler, on whichever
//!   thread or task runs it; so the handler's own events and spans are
//!   inside it. A pull answered without a handler (no route: 404; a
//!   plugin's refusal) has no server span.
//!
//! They are at DEBUG so that a program logging at INFO does not pay for
//! them: turn them on with a filter such as `teleport::call=debug` (an
//! OpenTelemetry layer without a filter of its own gets them anyway).
//! When no subscriber wants them (none at all, or one filtering them
//! out) no span is made, no clock is read and no id drawn; what is left
//! per call is a level check, a thread-local read or swap, and a look for
//! `traceparent` in a non-empty meta.
//!
//! # Trace context
//!
//! A pull or push that comes in with a valid [`TRACEPARENT`] meta value is
//! part of that trace. While its handler runs, [`TraceContext::current`]
//! is the handler's context (its trace, and the server span's id as the
//! parent), and every pull and push made from it — through any
//! [`Session`] of any peer, on that thread or task — carries
//! a `traceparent` with that trace id and the client span's id. A call made
//! outside any handler starts a new trace (random ids), when its span is
//! enabled. A `traceparent` the caller set on a call is sent as it is.
//!
//! With no span of ours enabled, a handler's incoming context is passed on
//! unchanged: what it calls joins the caller's trace, as through a peer
//! that does not trace (a Go teleport peer passes meta along untouched).
//!
//! A value that is not a valid version-00 `traceparent` (W3C Trace Context
//! level 1: lowercase hex, ids not all zero, version `ff` refused, a later
//! version read by its first four fields) is ignored: the call starts a new
//! trace. `tracestate` is not read or written.
//!
//! # OpenTelemetry (feature `otel`)
//!
//! With the `otel` feature and a `tracing-opentelemetry` layer in the
//! subscriber, a server span's OpenTelemetry parent is set from the incoming
//! `traceparent`, and the `traceparent` we send is the client span's own
//! OpenTelemetry context: the exported trace is the one the ids on the
//! wire name. The spans carry `otel.name` (the route), `otel.kind`
//! (`client`, `server`, or `producer`/`consumer` for pushes) and
//! `otel.status_code` (`error` for a call that failed).

use std::cell::Cell;
use std::fmt;
use std::num::NonZeroU64;
use std::time::Instant;

use teleport_core::{CodecId, CodecRegistry, Meta, Packet, Rerror, Uri};
use tracing::field::{display, Empty};
use tracing::Span;

use crate::addr::PeerAddr;
use crate::session::Session;

/// The meta key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The target of the per-call spans (at DEBUG): `RUST_LOG=teleport::call=debug`
/// turns them on.
pub const SPAN_TARGET: &str = "teleport::call";

/// The length of a version-00 `traceparent`.
const HEADER_LEN: usize = 55;

/// A W3C trace context: the trace, the span that is the parent of the
/// next hop, and the trace flags. Parsed from and written as a
/// `traceparent` value (`00-<32 hex trace id>-<16 hex parent id>-<2 hex
/// flags>`, its [`Display`](fmt::Display)).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id's high and low halves (kept 8-aligned: a context is
    /// carried in every handler call).
    trace: [u64; 2],
    span_id: NonZeroU64,
    flags: u8,
}

/// The `sampled` trace flag.
const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// A context from its parts; `None` if either id is zero (invalid).
    pub fn new(trace_id: u128, span_id: u64, flags: u8) -> Option<Self> {
        let span_id = NonZeroU64::new(span_id)?;
        (trace_id != 0).then_some(TraceContext {
            trace: [(trace_id >> 64) as u64, trace_id as u64],
            span_id,
            flags,
        })
    }

    /// Parses a `traceparent` value; `None` for anything that is not a
    /// valid one (never a panic, whatever the bytes).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < HEADER_LEN {
            return None;
        }
        let version = hex_u8(&value[0..2])?;
        // Version 00 is exactly 55 bytes; `ff` is forbidden; a later
        // version may add fields after a dash.
        match version {
            0 if value.len() != HEADER_LEN => return None,
            0xff => return None,
            0 => {}
            _ if value.len() > HEADER_LEN && value[HEADER_LEN] != b'-' => return None,
            _ => {}
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let trace_id = hex_u128(&value[3..35])?;
        let span_id = hex_u64(&value[36..52])?;
        let flags = hex_u8(&value[53..55])?;
        TraceContext::new(trace_id, span_id, flags)
    }

    /// The first `traceparent` in `meta`, if it is valid.
    #[inline]
    pub fn from_meta(meta: &Meta) -> Option<Self> {
        if meta.is_empty() {
            return None;
        }
        TraceContext::find_in(meta)
    }

    #[inline(never)]
    fn find_in(meta: &Meta) -> Option<Self> {
        meta.get_bytes(TRACEPARENT).and_then(TraceContext::parse)
    }

    /// The context of the handler running on this thread (its trace, and
    /// its server span as the parent), while it is being called or polled;
    /// `None` outside handlers, or in a handler of a call that is not
    /// traced.
    ///
    /// It follows the handler's polls, not tasks it spawns: a task spawned
    /// from a handler starts traces of its own.
    #[inline]
    pub fn current() -> Option<Self> {
        CURRENT.with(Cell::get)
    }

    /// A new trace, sampled, with random ids.
    pub fn new_root() -> Self {
        let trace = loop {
            let id = [next_id(), next_id()];
            if id != [0, 0] {
                break id;
            }
        };
        TraceContext {
            trace,
            span_id: nonzero_id(),
            flags: SAMPLED,
        }
    }

    /// The same trace and flags with a new (random) span id: the context
    /// a span that is a child of this one hands on.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: nonzero_id(),
            ..*self
        }
    }

    /// The trace id.
    pub fn trace_id(&self) -> u128 {
        (u128::from(self.trace[0]) << 64) | u128::from(self.trace[1])
    }

    /// The span id: the parent of the next hop.
    pub fn span_id(&self) -> u64 {
        self.span_id.get()
    }

    /// The trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the `sampled` flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> impl fmt::Display {
        TraceIdHex(self.trace_id())
    }

    /// The `traceparent` value, version 00.
    fn header(&self) -> [u8; HEADER_LEN] {
        let mut out = [b'-'; HEADER_LEN];
        out[0] = b'0';
        out[1] = b'0';
        put_hex(&mut out[3..35], self.trace_id());
        put_hex(&mut out[36..52], u128::from(self.span_id.get()));
        put_hex(&mut out[53..55], u128::from(self.flags));
        out
    }

    /// Runs `f` as if in a handler of this context: calls made in it carry
    /// it on (and are children of it).
    pub fn in_scope<R>(self, f: impl FnOnce() -> R) -> R {
        let _scope = Scope::enter(Some(self));
        f()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.header();
        // Only ASCII hex digits and dashes were written.
        f.write_str(std::str::from_utf8(&h).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

/// A trace id in hex, for the `trace_id` field.
struct TraceIdHex(u128);

impl fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_u128(s: &[u8]) -> Option<u128> {
    s.iter().try_fold(0u128, |acc, &b| {
        Some((acc << 4) | u128::from(hex_digit(b)?))
    })
}

fn hex_u64(s: &[u8]) -> Option<u64> {
    s.iter()
        .try_fold(0u64, |acc, &b| Some((acc << 4) | u64::from(hex_digit(b)?)))
}

fn hex_u8(s: &[u8]) -> Option<u8> {
    s.iter()
        .try_fold(0u8, |acc, &b| Some((acc << 4) | hex_digit(b)?))
}

/// Writes the low `4 * dst.len()` bits of `v` as lowercase hex.
fn put_hex(dst: &mut [u8], mut v: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in dst.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

thread_local! {
    /// The context of the handler being called or polled on this thread.
    static CURRENT: Cell<Option<TraceContext>> = const { Cell::new(None) };
    /// The state of this thread's id generator (0: not seeded yet).
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// Sets the current context until dropped, then puts back what was there
/// (so nested handler runs, and unwinding, leave the thread as it was).
struct Scope(Option<TraceContext>);

impl Scope {
    fn enter(cx: Option<TraceContext>) -> Scope {
        Scope(CURRENT.with(|c| c.replace(cx)))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// A seed no other thread of this process (nor, but by chance, another
/// process) starts from: the process's random hash keys over a counter.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static THREADS: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(THREADS.fetch_add(1, Ordering::Relaxed));
    h.finish() | 1
}

/// The next id of this thread's SplitMix64 sequence (ids, not secrets).
fn next_id() -> u64 {
    RNG.with(|state| {
        let mut s = state.get();
        if s == 0 {
            s = seed();
        }
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn nonzero_id() -> NonZeroU64 {
    loop {
        if let Some(id) = NonZeroU64::new(next_id()) {
            return id;
        }
    }
}

/// Pull or push, for a span's name and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Pull,
    Push,
}

/// A URI's path, as text.
struct Route<'a>(&'a Uri);

impl fmt::Display for Route<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.0.path()))
    }
}

/// A codec's name, or its id when the peer does not know it.
struct CodecName<'a>(&'a CodecRegistry, CodecId);

impl fmt::Display for CodecName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.get(self.1) {
            Ok(c) => f.write_str(c.name()),
            Err(_) => self.1.fmt(f),
        }
    }
}

/// A call's end, as the `status` field shows it.
struct Status<'a>(Option<&'a Rerror>);

impl fmt::Display for Status<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("ok"),
            Some(e) => e.code.fmt(f),
        }
    }
}

/// Records the end of a call on its span.
#[inline(never)]
fn record_end(span: &Span, started: Instant, error: Option<&Rerror>) {
    span.record("status", display(Status(error)));
    if let Some(e) = error {
        span.record("error", display(e));
        span.record("otel.status_code", "error");
    }
    span.record("duration", tracing::field::debug(started.elapsed()));
}

/// Names the span for OpenTelemetry; before anything reads its context
/// (the kind cannot change once its OpenTelemetry span is started).
fn record_otel(span: &Span, kind: &'static str, uri: &Uri) {
    if cfg!(feature = "otel") {
        span.record("otel.name", display(Route(uri)));
        span.record("otel.kind", kind);
    }
}

/// The server side of one call: its span and the context its handler runs
/// in.
pub(crate) struct ServerTrace {
    span: Span,
    /// What [`TraceContext::current`] is while the handler runs.
    cx: Option<TraceContext>,
    /// When the call was routed; `Some` only when the span is enabled.
    started: Option<Instant>,
}

impl ServerTrace {
    /// The span of an incoming pull or push `p` on `session`, whose
    /// handler starts now. With the spans off: only the incoming context,
    /// no span, no clock.
    #[inline]
    pub(crate) fn start(kind: Kind, session: &Session, p: &Packet) -> Self {
        let incoming = TraceContext::from_meta(&p.meta);
        if !tracing::enabled!(target: SPAN_TARGET, tracing::Level::DEBUG) {
            return ServerTrace {
                span: Span::none(),
                cx: incoming,
                started: None,
            };
        }
        ServerTrace::begin(kind, session, p, incoming)
    }

    /// [`ServerTrace::start`] with the spans on.
    #[inline(never)]
    fn begin(kind: Kind, session: &Session, p: &Packet, incoming: Option<TraceContext>) -> Self {
        let remote = session.remote_addr();
        let (route, codec) = (Route(&p.uri), CodecName(session.codecs(), p.body_codec));
        macro_rules! server_span {
            ($name:literal) => {
                tracing::debug_span!(target: SPAN_TARGET, parent: None, $name,
                    direction = "server", route = %route, seq = p.seq.0, peer = %remote,
                    codec = %codec, trace_id = Empty, status = Empty, error = Empty,
                    duration = Empty, otel.name = Empty, otel.kind = Empty,
                    otel.status_code = Empty)
            };
        }
        let span = match kind {
            Kind::Pull => server_span!("pull"),
            Kind::Push => server_span!("push"),
        };
        if span.is_disabled() {
            return ServerTrace {
                span,
                cx: incoming,
                started: None,
            };
        }
        let started = Instant::now();
        record_otel(
            &span,
            if kind == Kind::Pull {
                "server"
            } else {
                "consumer"
            },
            &p.uri,
        );
        if let Some(parent) = incoming {
            otel::set_parent(&span, parent);
        }
        let cx = otel::context_of(&span).unwrap_or_else(|| match incoming {
            Some(parent) => parent.child(),
            None => TraceContext::new_root(),
        });
        span.record("trace_id", display(cx.trace_id_hex()));
        ServerTrace {
            span,
            cx: Some(cx),
            started: Some(started),
        }
    }

    /// Enters the span and the handler's context until the guard drops.
    #[inline]
    pub(crate) fn enter(&self) -> Entered<'_> {
        Entered {
            _scope: Scope::enter(self.cx),
            _span: self.span.enter(),
        }
    }

    /// The handler produced its reply (`error`: the error it is), or a
    /// push handler returned.
    #[inline]
    pub(crate) fn finish(&self, error: Option<&Rerror>) {
        if let Some(started) = self.started {
            record_end(&self.span, started, error);
        }
    }
}

/// A server span entered, with its handler's context current.
pub(crate) struct Entered<'a> {
    _scope: Scope,
    _span: tracing::span::Entered<'a>,
}

/// The client side of one call, from its start to its end.
pub(crate) struct ClientTrace {
    span: Span,
    /// `Some` while the span is enabled and the call not over.
    started: Option<Instant>,
}

impl ClientTrace {
    /// The span of a pull or push about to be sent on a session to
    /// `remote`; fills in `p`'s `traceparent` unless it has one. With the
    /// spans off: only the handler's context, passed on.
    #[inline]
    pub(crate) fn start(
        kind: Kind,
        remote: &PeerAddr,
        codecs: &CodecRegistry,
        p: &mut Packet,
    ) -> Self {
        if !tracing::enabled!(target: SPAN_TARGET, tracing::Level::DEBUG) {
            if let Some(cx) = TraceContext::current() {
                pass_on(cx, p);
            }
            return ClientTrace {
                span: Span::none(),
                started: None,
            };
        }
        ClientTrace::begin(kind, remote, codecs, p)
    }

    /// [`ClientTrace::start`] with the spans on.
    #[inline(never)]
    fn begin(kind: Kind, remote: &PeerAddr, codecs: &CodecRegistry, p: &mut Packet) -> Self {
        let current = TraceContext::current();
        let (route, codec) = (Route(&p.uri), CodecName(codecs, p.body_codec));
        macro_rules! client_span {
            ($name:literal) => {
                tracing::debug_span!(target: SPAN_TARGET, $name,
                    direction = "client", route = %route, seq = Empty, peer = %remote,
                    codec = %codec, trace_id = Empty, status = Empty, error = Empty,
                    duration = Empty, otel.name = Empty, otel.kind = Empty,
                    otel.status_code = Empty)
            };
        }
        let span = match kind {
            Kind::Pull => client_span!("pull"),
            Kind::Push => client_span!("push"),
        };
        if span.is_disabled() {
            if let Some(cx) = current {
                pass_on(cx, p);
            }
            return ClientTrace {
                span,
                started: None,
            };
        }
        let started = Instant::now();
        record_otel(
            &span,
            if kind == Kind::Pull {
                "client"
            } else {
                "producer"
            },
            &p.uri,
        );
        let cx = match p.meta.get_bytes(TRACEPARENT) {
            // The caller's own: sent as it is, and the span is in its trace.
            Some(theirs) => {
                let theirs = TraceContext::parse(theirs);
                if let Some(parent) = theirs {
                    otel::set_parent(&span, parent);
                }
                theirs
            }
            None => {
                let cx = otel::context_of(&span).unwrap_or_else(|| match current {
                    Some(parent) => parent.child(),
                    None => TraceContext::new_root(),
                });
                p.meta.add(TRACEPARENT, cx.header());
                Some(cx)
            }
        };
        if let Some(cx) = cx {
            span.record("trace_id", display(cx.trace_id_hex()));
        }
        ClientTrace {
            span,
            started: Some(started),
        }
    }

    /// A pull's end: its reply (whose seq is the pull's) or error.
    #[inline]
    pub(crate) fn pulled(mut self, result: &Result<Packet, Rerror>) {
        if let Some(started) = self.started.take() {
            if let Ok(reply) = result {
                self.span.record("seq", reply.seq.0);
            }
            record_end(&self.span, started, result.as_ref().err());
        }
    }

    /// A push's end: queued, or refused.
    #[inline]
    pub(crate) fn pushed(mut self, result: &Result<(), Rerror>) {
        if let Some(started) = self.started.take() {
            record_end(&self.span, started, result.as_ref().err());
        }
    }
}

impl Drop for ClientTrace {
    #[inline]
    fn drop(&mut self) {
        if let Some(started) = self.started.take() {
            cancelled(&self.span, started);
        }
    }
}

/// A call dropped before its end.
#[inline(never)]
fn cancelled(span: &Span, started: Instant) {
    span.record("status", "cancelled");
    span.record("duration", tracing::field::debug(started.elapsed()));
}

/// With no span of ours to be its parent, the handler's context goes on
/// as it came (unless the caller set a `traceparent` of their own).
#[inline(never)]
fn pass_on(cx: TraceContext, p: &mut Packet) {
    if p.meta.get_bytes(TRACEPARENT).is_none() {
        p.meta.add(TRACEPARENT, cx.header());
    }
}

/// What a handler's future ends with, for its span.
pub(crate) trait Outcome {
    /// The error the call ended with, if any.
    fn error(&self) -> Option<&Rerror>;
}

/// A handler's future, polled inside its span and trace context; the end
/// is recorded when it is ready.
pub(crate) struct Traced<F> {
    fut: F,
    trace: ServerTrace,
}

impl<F> Traced<F> {
    pub(crate) fn new(fut: F, trace: ServerTrace) -> Self {
        Traced { fut, trace }
    }
}

impl<F> std::future::Future for Traced<F>
where
    F: std::future::Future + Unpin,
    F::Output: Outcome,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        let out = {
            let _in = this.trace.enter();
            std::pin::Pin::new(&mut this.fut).poll(cx)
        };
        if let std::task::Poll::Ready(done) = &out {
            this.trace.finish(done.error());
        }
        out
    }
}

/// OpenTelemetry: the spans' parents and contexts (feature `otel`).
#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    /// Makes the remote `parent` the span's OpenTelemetry parent (without
    /// an OpenTelemetry layer, nothing happens).
    pub(super) fn set_parent(span: &Span, parent: TraceContext) {
        let remote = SpanContext::new(
            TraceId::from(parent.trace_id()),
            SpanId::from(parent.span_id()),
            TraceFlags::new(parent.flags()),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }

    /// The span's own OpenTelemetry ids, when an OpenTelemetry layer
    /// tracks it.
    pub(super) fn context_of(span: &Span) -> Option<TraceContext> {
        let cx = span.context();
        let otel_span = cx.span();
        let sc = otel_span.span_context();
        if !sc.is_valid() {
            return None;
        }
        TraceContext::new(
            u128::from_be_bytes(sc.trace_id().to_bytes()),
            u64::from_be_bytes(sc.span_id().to_bytes()),
            sc.trace_flags().to_u8(),
        )
    }
}

/// Without OpenTelemetry, spans have no other ids than ours.
#[cfg(not(feature = "otel"))]
mod otel {
    use tracing::Span;

    use super::TraceContext;

    pub(super) fn set_parent(_: &Span, _: TraceContext) {}

    pub(super) fn context_of(_: &Span) -> Option<TraceContext> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let cx = TraceContext::parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(cx.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(cx.span_id(), 0x00f067aa0ba902b7);
        assert_eq!(cx.flags(), 1);
        assert!(cx.is_sampled());
        assert_eq!(cx.to_string(), GOOD);
        assert_eq!(
            cx.trace_id_hex().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let bad = [
            "",
            "00",
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Version 00 with more after it.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            // A later version must go on with a dash.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            // Wrong separators, short fields, not hex.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for b in bad {
            assert_eq!(TraceContext::parse(b.as_bytes()), None, "{b:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let cx = TraceContext::parse(v.as_bytes()).expect("valid");
        // Sent on as version 00.
        assert_eq!(cx.to_string(), GOOD);
        let exact = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(TraceContext::parse(exact.as_bytes()).is_some());
    }

    #[test]
    fn the_first_traceparent_of_the_meta_counts() {
        let mut m = Meta::new();
        m.add(TRACEPARENT, GOOD);
        m.add(TRACEPARENT, "nonsense");
        assert_eq!(
            TraceContext::from_meta(&m),
            TraceContext::parse(GOOD.as_bytes())
        );
        let mut m = Meta::new();
        m.add(TRACEPARENT, "nonsense");
        m.add(TRACEPARENT, GOOD);
        assert_eq!(TraceContext::from_meta(&m), None);
    }

    #[test]
    fn roots_and_children() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id(), b.trace_id());
        assert!(a.is_sampled());
        let c = a.child();
        assert_eq!(c.trace_id(), a.trace_id());
        assert_eq!(c.flags(), a.flags());
        assert_ne!(c.span_id(), a.span_id());
        assert_eq!(TraceContext::parse(c.to_string().as_bytes()), Some(c));
        assert_eq!(TraceContext::new(0, 1, 0), None);
        assert_eq!(TraceContext::new(1, 0, 0), None);
    }

    #[test]
    fn the_current_context_is_scoped_and_restored() {
        assert_eq!(TraceContext::current(), None);
        let outer = TraceContext::new_root();
        let inner = TraceContext::new_root();
        outer.in_scope(|| {
            assert_eq!(TraceContext::current(), Some(outer));
            inner.in_scope(|| assert_eq!(TraceContext::current(), Some(inner)));
            assert_eq!(TraceContext::current(), Some(outer));
            // A panic inside a scope leaves the thread as it was.
            let r = std::panic::catch_unwind(|| inner.in_scope(|| panic!("in a handler")));
            assert!(r.is_err());
            assert_eq!(TraceContext::current(), Some(outer));
        });
        assert_eq!(TraceContext::current(), None);
    }

    #[test]
    fn ids_differ_across_threads() {
        let here = TraceContext::new_root();
        let there = std::thread::spawn(TraceContext::new_root)
            .join()
            .expect("thread");
        assert_ne!(here.trace_id(), there.trace_id());
    }

    proptest::proptest! {
        /// Whatever the bytes: no panic, and what parses writes back as
        /// the version-00 form of its first 55 bytes.
        #[test]
        fn any_bytes_parse_without_panic(v in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            if let Some(cx) = TraceContext::parse(&v) {
                let back = cx.to_string();
                proptest::prop_assert_eq!(&back.as_bytes()[2..], &v[2..HEADER_LEN]);
            }
        }

        /// Near-valid values (one byte changed in a valid one): no panic,
        /// and any that parse round-trip.
        #[test]
        fn one_byte_off_parses_without_panic(i in 0usize..HEADER_LEN, b in proptest::num::u8::ANY) {
            let mut v = GOOD.as_bytes().to_vec();
            v[i] = b;
            if let Some(cx) = TraceContext::parse(&v) {
                proptest::prop_assert_eq!(TraceContext::parse(cx.to_string().as_bytes()), Some(cx));
            }
        }

        /// Every valid context writes a value that parses back to it.
        #[test]
        fn contexts_round_trip(t in 1u128.., s in 1u64.., f in proptest::num::u8::ANY) {
            let cx = TraceContext::new(t, s, f).expect("non-zero ids");
            proptest::prop_assert_eq!(TraceContext::parse(cx.to_string().as_bytes()), Some(cx));
        }
    }
}
