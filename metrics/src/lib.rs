//! `teleport-metrics`: Prometheus metrics of a teleport peer.
//!
//! [`Metrics`] is a [`Plugin`]: added to a peer, it counts that peer's
//! calls, errors, bytes, sessions and pulls in flight and times its pulls,
//! into a [`prometheus_client`] registry. [`Metrics::encode`] gives the
//! text a Prometheus server scrapes; [`Metrics::serve`] opens an HTTP
//! endpoint (`GET /metrics`) for it on a thread of its own, so it works the
//! same beside every runtime (tokio, async-std, smol, mio). **Nothing
//! listens unless `serve` is called**, and the endpoint closes when its
//! [`MetricsServer`] is dropped or stopped.
//!
//! ```no_run
//! use teleport_core::Rerror;
//! use teleport_metrics::Metrics;
//! use teleport_tokio::{Peer, PeerBuilder, PeerConfig, PullCtx};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = Metrics::new();
//! let mut b = PeerBuilder::new(PeerConfig::default());
//! b.pull("/echo", |_ctx: PullCtx, s: String| async move { Ok::<_, Rerror>(s) });
//! b.plugin(metrics.clone()); // first, before the other plugins
//! let peer = Peer::from_builder(b)?;
//! peer.spawn_listener().await?;
//!
//! let text = metrics.encode(); // the text format, at any time
//! assert!(text.ends_with("# EOF\n"));
//!
//! // Opt in to the endpoint: http://127.0.0.1:9100/metrics until dropped.
//! let server = metrics.serve("127.0.0.1:9100")?;
//! # drop(server);
//! # Ok(()) }
//! ```
//!
//! # The metrics
//!
//! All are prefixed `teleport_`. `direction` is `incoming` (the peer
//! pulled or pushed; we answered) or `outgoing` (we pulled or pushed).
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `teleport_calls_total` | counter | `direction`, `kind` (`pull`, `push`), `route` | pulls when they end (answered, failed, timed out, cut off), pushes when sent or read |
//! | `teleport_call_errors_total` | counter | `direction`, `route`, `code` | pulls that ended with an `Rerror`, by its code |
//! | `teleport_call_duration_seconds` | histogram | `direction`, `route` | pulls, from sending the pull (receiving it) to the reply |
//! | `teleport_read_bytes_total` | counter | | bytes of the frames read (their size on the wire) |
//! | `teleport_written_bytes_total` | counter | | bytes of the frames encoded for writing |
//! | `teleport_sessions_open` | gauge | `role` (`dialer`, `acceptor`) | connections with a session open now |
//! | `teleport_pending_pulls` | gauge | `direction` | pulls in flight: ours awaiting replies, the peer's awaiting ours |
//! | `teleport_incoming_pull_bytes` | gauge | | the queue of the peer's pulls: see below |
//! | `teleport_redials_total` | counter | | dialed sessions that reconnected after their connection broke |
//!
//! `teleport_incoming_pull_bytes` is the bytes of the peer's pulls
//! being handled now (read, not yet answered), each counted as the
//! session counts it against `max_incoming_bytes`: the larger of its frame
//! size and its decoded body plus URI. It is the queue this peer holds on
//! the peer's behalf, and reaching `max_incoming_bytes` is what makes a
//! session stop reading. Bytes encoded but not yet written to the socket
//! are not counted: when the socket takes them is known to the runtime's
//! connection owner, not to a plugin.
//!
//! # Route labels, and bounds on every label
//!
//! A label is the route's path without its query. A peer can send any URI,
//! so an incoming call is labelled with its route only if this peer
//! registered that route (pull or push routes, as the router matches them:
//! the path `%`-decoded); every other path, the 404s and what an
//! `unknown_pull` / `unknown_push` handler serves, is counted under
//! [`UNKNOWN_ROUTE`] (`<unknown>`). Outgoing calls are labelled with the
//! path this peer sent; past [`DEFAULT_MAX_ROUTES`] distinct paths
//! ([`MetricsBuilder::max_routes`]) new ones are counted under
//! [`OTHER_ROUTE`] (`<other>`). Error codes come from the peer's replies
//! as well as ours: past [`DEFAULT_MAX_CODES`] distinct codes
//! ([`MetricsBuilder::max_codes`]) new ones are counted as [`OTHER_CODE`].
//! So the number of series is bounded whatever the peer sends.
//!
//! # Where it counts, and what it needs
//!
//! It counts from the plugin hooks, so it sees what every runtime does the
//! same way. Add it with `PeerBuilder::plugin` (peer-wide: a route or group
//! plugin would see only part of the traffic), **before the other
//! plugins**: a plugin that takes a frame over in `after_read_header` (a
//! heartbeat ping, an auth exchange) or refuses it there hides it from the
//! plugins after it, so one added later misses those frames' bytes and
//! calls. Added first, it sees every frame read. An incoming pull is
//! labelled with its URI as routed (after any plugin rewrote it: an
//! alias); an incoming push with its URI as received, before the plugins
//! after this one run. One `Metrics` may serve several peers (a server and
//! a client in one process): their counts add up, and the routes
//! registered by each are known.
//!
//! Redials are counted when a redialed connection's session starts (its
//! `after_dial` runs again, with the session's id): a dialed session whose
//! connection ended with any reason but a local close, and whose id dials
//! again within [`REDIAL_HORIZON`], counts one. Attempts that failed are
//! not seen by a plugin.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod http;
mod labels;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use teleport_core::plugin::{CallDone, PluginCtx};
use teleport_core::router::decode_path;
use teleport_core::{CloseReason, Packet, PacketType, Plugin, Rerror, Role, RouteKind, Uri};

pub use http::{MetricsServer, CONTENT_TYPE, MAX_CONNECTIONS, MAX_HEAD, REQUEST_TIMEOUT};
/// The `prometheus-client` this crate builds on, for
/// [`Metrics::register_in`] and for metrics of your own.
pub use prometheus_client;

use labels::{
    CallLabels, Code, Direction, DirectionLabels, ErrorLabels, Kind, RoleLabels, RouteLabels, Text,
};

/// The route label of incoming calls to paths this peer has no route for.
pub const UNKNOWN_ROUTE: &str = "<unknown>";

/// The route label of outgoing calls past the bound on distinct paths.
pub const OTHER_ROUTE: &str = "<other>";

/// The code label of errors past the bound on distinct codes.
pub const OTHER_CODE: &str = "other";

/// Distinct outgoing paths labelled by default ([`MetricsBuilder::max_routes`]).
pub const DEFAULT_MAX_ROUTES: usize = 256;

/// Distinct error codes labelled by default ([`MetricsBuilder::max_codes`]).
pub const DEFAULT_MAX_CODES: usize = 64;

/// The latency histogram's buckets by default, in seconds: 100 µs to 30 s.
pub const DEFAULT_LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// How long after a dialed session's connection broke a new connection of
/// the same session still counts as a redial: longer than any sensible
/// redial backoff (the waits double up to 5 s).
pub const REDIAL_HORIZON: Duration = Duration::from_secs(600);

/// Most broken dialed sessions remembered at once for counting redials;
/// past it the oldest are forgotten.
const REDIAL_MEMORY: usize = 4096;

/// The metrics plugin and its registry. Cheap to clone: clones share the
/// counters; add one clone to the peer with `PeerBuilder::plugin` and keep
/// another to [`encode`](Metrics::encode) or [`serve`](Metrics::serve).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// Settings of a [`Metrics`] other than the defaults.
#[derive(Debug, Clone)]
pub struct MetricsBuilder {
    buckets: Vec<f64>,
    max_routes: usize,
    max_codes: usize,
}

impl Default for MetricsBuilder {
    fn default() -> Self {
        MetricsBuilder {
            buckets: DEFAULT_LATENCY_BUCKETS.to_vec(),
            max_routes: DEFAULT_MAX_ROUTES,
            max_codes: DEFAULT_MAX_CODES,
        }
    }
}

impl MetricsBuilder {
    /// The latency histogram's upper bounds, in seconds (an `+Inf` bucket
    /// is always added). Bounds that are not finite and positive are left
    /// out, the rest sorted; none left means the default.
    pub fn latency_buckets(mut self, bounds: impl IntoIterator<Item = f64>) -> Self {
        let mut b: Vec<f64> = bounds
            .into_iter()
            .filter(|x| x.is_finite() && *x > 0.0)
            .collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        self.buckets = if b.is_empty() {
            DEFAULT_LATENCY_BUCKETS.to_vec()
        } else {
            b
        };
        self
    }

    /// Most distinct outgoing paths given a route label of their own; the
    /// rest are counted under [`OTHER_ROUTE`].
    pub fn max_routes(mut self, n: usize) -> Self {
        self.max_routes = n;
        self
    }

    /// Most distinct error codes given a label of their own; the rest are
    /// counted as [`OTHER_CODE`].
    pub fn max_codes(mut self, n: usize) -> Self {
        self.max_codes = n;
        self
    }

    /// The metrics, zeroed.
    pub fn build(self) -> Metrics {
        let buckets = Buckets(self.buckets.into());
        let families = Families {
            calls: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(buckets),
            read_bytes: Counter::default(),
            written_bytes: Counter::default(),
            sessions_open: Family::default(),
            pending_pulls: Family::default(),
            incoming_pull_bytes: Gauge::default(),
            redials: Counter::default(),
        };
        // The gauges' series exist from the start, at 0, so a dashboard
        // sees a zero rather than no data.
        for role in [labels::Role::Dialer, labels::Role::Acceptor] {
            drop(families.sessions_open.get_or_create(&RoleLabels { role }));
        }
        for direction in [Direction::Incoming, Direction::Outgoing] {
            drop(
                families
                    .pending_pulls
                    .get_or_create(&DirectionLabels { direction }),
            );
        }
        let mut registry = Registry::default();
        families.register(registry.sub_registry_with_prefix("teleport"));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                m: families,
                routes: RwLock::new(Routes::default()),
                codes: Mutex::new(HashSet::new()),
                max_routes: self.max_routes,
                max_codes: self.max_codes,
                broken: Mutex::new(Broken::default()),
                endpoints: Mutex::new((0, Vec::new())),
            }),
        }
    }
}

/// Makes each route's histogram with the configured buckets.
#[derive(Debug, Clone)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// The metrics themselves (each a handle: clones share the values).
#[derive(Debug, Clone)]
struct Families {
    calls: Family<CallLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<RouteLabels, Histogram, Buckets>,
    read_bytes: Counter,
    written_bytes: Counter,
    sessions_open: Family<RoleLabels, Gauge>,
    pending_pulls: Family<DirectionLabels, Gauge>,
    incoming_pull_bytes: Gauge,
    redials: Counter,
}

impl Families {
    fn register(&self, r: &mut Registry) {
        let m = self.clone();
        r.register(
            "calls",
            "Calls: pulls when they end, pushes when sent or read",
            m.calls,
        );
        r.register(
            "call_errors",
            "Pulls that ended with an error, by its code",
            m.errors,
        );
        r.register_with_unit(
            "call_duration",
            "Pulls from the pull to the reply",
            Unit::Seconds,
            m.latency,
        );
        r.register_with_unit(
            "read",
            "Bytes of the frames read",
            Unit::Bytes,
            m.read_bytes,
        );
        r.register_with_unit(
            "written",
            "Bytes of the frames encoded for writing",
            Unit::Bytes,
            m.written_bytes,
        );
        r.register(
            "sessions_open",
            "Connections with a session open",
            m.sessions_open,
        );
        r.register(
            "pending_pulls",
            "Pulls in flight: ours awaiting replies (outgoing), the peer's awaiting ours (incoming)",
            m.pending_pulls,
        );
        r.register_with_unit(
            "incoming_pull",
            "Bytes of the peer's pulls being handled (as counted against max_incoming_bytes)",
            Unit::Bytes,
            m.incoming_pull_bytes,
        );
        r.register(
            "redials",
            "Dialed sessions reconnected after their connection broke",
            m.redials,
        );
    }
}

struct Inner {
    registry: Registry,
    m: Families,
    routes: RwLock<Routes>,
    codes: Mutex<HashSet<i32>>,
    max_routes: usize,
    max_codes: usize,
    broken: Mutex<Broken>,
    /// The endpoints serving these metrics, by id, and the next id.
    endpoints: Mutex<(u64, Vec<(u64, SocketAddr)>)>,
}

/// Route labels: the registered routes (for incoming calls) and the
/// outgoing paths seen (bounded).
#[derive(Default)]
struct Routes {
    pulls: HashMap<Box<[u8]>, Text>,
    pushes: HashMap<Box<[u8]>, Text>,
    outgoing: HashMap<Box<[u8]>, Text>,
}

/// Dialed sessions whose connection broke in a way that may be followed by
/// a redial: id → when, and the order they broke in (for forgetting).
#[derive(Default)]
struct Broken {
    since: HashMap<u64, Instant>,
    order: VecDeque<(u64, Instant)>,
}

impl Broken {
    fn insert(&mut self, id: u64, now: Instant) {
        // Forget what is too old to be redialed, and the oldest past the
        // bound (an entry re-inserted since is kept: its time differs).
        while let Some(&(old, at)) = self.order.front() {
            let stale = now.saturating_duration_since(at) > REDIAL_HORIZON;
            if !stale && self.order.len() < REDIAL_MEMORY {
                break;
            }
            self.order.pop_front();
            if self.since.get(&old) == Some(&at) {
                self.since.remove(&old);
            }
        }
        self.since.insert(id, now);
        self.order.push_back((id, now));
    }

    /// Whether `id` broke within the horizon (and forgets it).
    fn take(&mut self, id: u64, now: Instant) -> bool {
        match self.since.remove(&id) {
            Some(at) => now.saturating_duration_since(at) <= REDIAL_HORIZON,
            None => false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn gauge_amount(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("endpoints", &self.endpoints())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Zeroed metrics with the default settings.
    pub fn new() -> Metrics {
        MetricsBuilder::default().build()
    }

    /// Settings other than the defaults.
    pub fn builder() -> MetricsBuilder {
        MetricsBuilder::default()
    }

    /// The metrics in the OpenMetrics text format (what Prometheus
    /// scrapes), ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if let Err(e) = self.encode_to(&mut s) {
            // Writing to a `String` does not fail, nor do these metrics'
            // labels: this is not reached.
            tracing::error!(target: "teleport::metrics", error = %e, "metrics could not be encoded");
        }
        s
    }

    /// [`Metrics::encode`] appending to `out`.
    pub fn encode_to(&self, out: &mut String) -> fmt::Result {
        prometheus_client::encoding::text::encode(out, &self.inner.registry)
    }

    /// Registers these metrics (handles sharing their values) in a
    /// registry of your own, under the prefix `teleport`, to be encoded
    /// with your other metrics.
    pub fn register_in(&self, registry: &mut Registry) {
        self.inner
            .m
            .register(registry.sub_registry_with_prefix("teleport"));
    }

    /// Serves the metrics at `http://<addr>/metrics` (`GET` or `HEAD`;
    /// other paths get 404) on a thread of its own, until the returned
    /// server is dropped or stopped. Port `0` picks a free port:
    /// [`MetricsServer::local_addr`] says which.
    pub fn serve(&self, addr: impl ToSocketAddrs) -> std::io::Result<MetricsServer> {
        MetricsServer::start(self, addr)
    }

    /// The addresses these metrics are being served at now: empty until
    /// [`Metrics::serve`] is called, and again once its servers stop.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        lock(&self.inner.endpoints)
            .1
            .iter()
            .map(|(_, a)| *a)
            .collect()
    }

    fn add_endpoint(&self, addr: SocketAddr) -> u64 {
        let mut e = lock(&self.inner.endpoints);
        e.0 += 1;
        let id = e.0;
        e.1.push((id, addr));
        id
    }

    fn remove_endpoint(&self, id: u64) {
        lock(&self.inner.endpoints).1.retain(|(i, _)| *i != id);
    }

    // ---- labels ------------------------------------------------------------

    /// The label of an incoming call: its route, if registered.
    fn incoming_route(&self, kind: RouteKind, uri: &Uri) -> Text {
        let routes = self
            .inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let map = match kind {
            RouteKind::Pull => &routes.pulls,
            RouteKind::Push => &routes.pushes,
        };
        decode_path(uri.path())
            .ok()
            .and_then(|p| map.get(&*p).cloned())
            .unwrap_or_else(|| Text::new(UNKNOWN_ROUTE))
    }

    /// The label of an outgoing call: the path sent, within the bound.
    fn outgoing_route(&self, uri: &Uri) -> Text {
        let path = uri.path();
        {
            let routes = self
                .inner
                .routes
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(t) = routes.outgoing.get(path) {
                return t.clone();
            }
        }
        let mut routes = self
            .inner
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = routes.outgoing.get(path) {
            return t.clone();
        }
        if routes.outgoing.len() >= self.inner.max_routes {
            return Text::new(OTHER_ROUTE);
        }
        let t = Text::new(&String::from_utf8_lossy(path));
        routes.outgoing.insert(path.into(), t.clone());
        t
    }

    fn code(&self, e: &Rerror) -> Code {
        let mut seen = lock(&self.inner.codes);
        if seen.contains(&e.code) {
            return Code::Code(e.code);
        }
        if seen.len() >= self.inner.max_codes {
            return Code::Other;
        }
        seen.insert(e.code);
        Code::Code(e.code)
    }

    // ---- per-session state ---------------------------------------------------

    /// This plugin's state on the session of `ctx`.
    fn tracked<'c>(&self, ctx: &'c mut PluginCtx<'_>) -> &'c mut Tracked {
        let list = &mut ctx.state::<SessionState>().0;
        let i = match list.iter().position(|t| Arc::ptr_eq(&t.owner, &self.inner)) {
            Some(i) => i,
            None => {
                list.push(Tracked::new(self.inner.clone()));
                list.len() - 1
            }
        };
        &mut list[i]
    }

    fn opened(&self, ctx: &mut PluginCtx<'_>, role: Role) {
        let t = self.tracked(ctx);
        if t.open.is_none() {
            t.open = Some(role);
            self.inner
                .m
                .sessions_open
                .get_or_create(&RoleLabels { role: role.into() })
                .inc();
        }
    }

    fn count_call(&self, direction: Direction, kind: Kind, route: Text) {
        self.inner
            .m
            .calls
            .get_or_create(&CallLabels {
                direction,
                kind,
                route,
            })
            .inc();
    }
}

/// What a session holds for each `Metrics` that sees it (usually one).
#[derive(Default)]
struct SessionState(Vec<Tracked>);

/// One session's share of the gauges, given back when the session ends
/// (or, if it is dropped without ending, when this is dropped).
struct Tracked {
    owner: Arc<Inner>,
    /// Counted in `teleport_sessions_open`.
    open: Option<Role>,
    /// Our pulls in flight.
    outgoing: usize,
    /// The peer's pulls in flight: seq → bytes.
    incoming: HashMap<u64, usize>,
    incoming_bytes: usize,
}

impl Tracked {
    fn new(owner: Arc<Inner>) -> Self {
        Tracked {
            owner,
            open: None,
            outgoing: 0,
            incoming: HashMap::new(),
            incoming_bytes: 0,
        }
    }

    fn pending(&self, direction: Direction) -> prometheus_client::metrics::gauge::Gauge {
        self.owner
            .m
            .pending_pulls
            .get_or_create_owned(&DirectionLabels { direction })
    }

    fn release(&mut self) {
        let m = &self.owner.m;
        if let Some(role) = self.open.take() {
            m.sessions_open
                .get_or_create(&RoleLabels { role: role.into() })
                .dec();
        }
        if self.outgoing > 0 {
            self.pending(Direction::Outgoing)
                .dec_by(gauge_amount(self.outgoing));
            self.outgoing = 0;
        }
        if !self.incoming.is_empty() {
            self.pending(Direction::Incoming)
                .dec_by(gauge_amount(self.incoming.len()));
            self.incoming.clear();
        }
        if self.incoming_bytes > 0 {
            m.incoming_pull_bytes
                .dec_by(gauge_amount(self.incoming_bytes));
            self.incoming_bytes = 0;
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.release();
    }
}

impl Plugin for Metrics {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn after_register(&self, kind: RouteKind, path: &str) -> Result<(), Rerror> {
        let mut routes = self
            .inner
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let map = match kind {
            RouteKind::Pull => &mut routes.pulls,
            RouteKind::Push => &mut routes.pushes,
        };
        map.entry(path.as_bytes().into())
            .or_insert_with(|| Text::new(path));
        Ok(())
    }

    fn after_dial(&self, ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        if lock(&self.inner.broken).take(ctx.session_id(), ctx.now()) {
            self.inner.m.redials.inc();
        }
        self.opened(ctx, Role::Dialer);
        Ok(())
    }

    fn after_accept(&self, ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        self.opened(ctx, Role::Acceptor);
        Ok(())
    }

    fn after_write_pull(&self, ctx: &mut PluginCtx<'_>, _p: &Packet) {
        self.inner
            .m
            .written_bytes
            .inc_by(ctx.frame_len().unwrap_or(0) as u64);
        let t = self.tracked(ctx);
        t.outgoing += 1;
        t.pending(Direction::Outgoing).inc();
    }

    fn after_write_push(&self, ctx: &mut PluginCtx<'_>, p: &Packet) {
        self.inner
            .m
            .written_bytes
            .inc_by(ctx.frame_len().unwrap_or(0) as u64);
        self.count_call(Direction::Outgoing, Kind::Push, self.outgoing_route(&p.uri));
    }

    fn after_write_reply(&self, ctx: &mut PluginCtx<'_>, p: &Packet) {
        self.inner
            .m
            .written_bytes
            .inc_by(ctx.frame_len().unwrap_or(0) as u64);
        let t = self.tracked(ctx);
        if let Some(bytes) = t.incoming.remove(&p.seq.0) {
            t.pending(Direction::Incoming).dec();
            t.incoming_bytes = t.incoming_bytes.saturating_sub(bytes);
            t.owner.m.incoming_pull_bytes.dec_by(gauge_amount(bytes));
        }
    }

    fn after_read_header(&self, ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        let len = ctx.frame_len().unwrap_or(0);
        self.inner.m.read_bytes.inc_by(len as u64);
        match p.ptype {
            PacketType::PULL => {
                // As the session counts it against `max_incoming_bytes`;
                // a seq still in flight is dropped by the session, so not
                // counted twice here.
                let bytes = len.max(p.body.len() + p.uri.len());
                let t = self.tracked(ctx);
                if let std::collections::hash_map::Entry::Vacant(v) = t.incoming.entry(p.seq.0) {
                    v.insert(bytes);
                    t.incoming_bytes += bytes;
                    t.pending(Direction::Incoming).inc();
                    t.owner.m.incoming_pull_bytes.inc_by(gauge_amount(bytes));
                }
            }
            PacketType::PUSH => {
                let route = self.incoming_route(RouteKind::Push, &p.uri);
                self.count_call(Direction::Incoming, Kind::Push, route);
            }
            _ => {}
        }
        Ok(())
    }

    fn on_call_done(&self, ctx: &mut PluginCtx<'_>, call: &CallDone<'_>) {
        let direction = Direction::from(call.direction);
        let route = match direction {
            Direction::Incoming => self.incoming_route(RouteKind::Pull, call.uri),
            Direction::Outgoing => {
                let t = self.tracked(ctx);
                if t.outgoing > 0 {
                    t.outgoing -= 1;
                    t.pending(Direction::Outgoing).dec();
                }
                self.outgoing_route(call.uri)
            }
        };
        let m = &self.inner.m;
        if let Some(e) = call.error {
            m.errors
                .get_or_create(&ErrorLabels {
                    direction,
                    route: route.clone(),
                    code: self.code(e),
                })
                .inc();
        }
        m.latency
            .get_or_create(&RouteLabels {
                direction,
                route: route.clone(),
            })
            .observe(call.elapsed.as_secs_f64());
        self.count_call(direction, Kind::Pull, route);
    }

    fn on_disconnect(&self, ctx: &mut PluginCtx<'_>, reason: &CloseReason) {
        let (id, now) = (ctx.session_id(), ctx.now());
        let list = &mut ctx.state::<SessionState>().0;
        let Some(i) = list.iter().position(|t| Arc::ptr_eq(&t.owner, &self.inner)) else {
            return;
        };
        let mut t = list.swap_remove(i);
        // A connection this side dialed that did not end on purpose may be
        // redialed (`Driver::connection_ended` decides; a plugin cannot
        // tell): remember it, so its next `after_dial` counts.
        let on_purpose = matches!(
            reason,
            CloseReason::Local | CloseReason::DrainTimeout { .. }
        );
        if t.open == Some(Role::Dialer) && !on_purpose {
            lock(&self.inner.broken).insert(id, now);
        }
        t.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_sessions_are_forgotten_after_the_horizon_and_past_the_bound() {
        let t0 = Instant::now();
        let mut b = Broken::default();
        b.insert(1, t0);
        assert!(b.take(1, t0 + REDIAL_HORIZON));
        assert!(!b.take(1, t0), "taken once");
        b.insert(2, t0);
        assert!(!b.take(2, t0 + REDIAL_HORIZON + Duration::from_secs(1)));
        for id in 0..(REDIAL_MEMORY as u64 + 10) {
            b.insert(id, t0);
        }
        assert!(b.since.len() <= REDIAL_MEMORY && b.order.len() <= REDIAL_MEMORY);
        assert!(!b.take(0, t0), "the oldest went first");
        assert!(b.take(REDIAL_MEMORY as u64 + 9, t0));
    }

    #[test]
    fn latency_buckets_keep_finite_positive_bounds_in_order() {
        let b = Metrics::builder().latency_buckets([2.0, f64::NAN, -1.0, 0.5, 2.0, f64::INFINITY]);
        assert_eq!(b.buckets, [0.5, 2.0]);
        let b = Metrics::builder().latency_buckets([]);
        assert_eq!(b.buckets, DEFAULT_LATENCY_BUCKETS);
    }

    #[test]
    fn outgoing_routes_and_codes_are_bounded() {
        let m = Metrics::builder().max_routes(2).max_codes(1).build();
        let labels: Vec<_> = ["/a?x=1", "/b", "/c", "/a"]
            .iter()
            .map(|u| m.outgoing_route(&Uri::from(*u)).0.to_string())
            .collect();
        assert_eq!(labels, ["/a", "/b", OTHER_ROUTE, "/a"]);
        let codes: Vec<_> = [7, 8, 7]
            .iter()
            .map(|c| m.code(&Rerror::new(*c, "x")))
            .collect();
        assert_eq!(codes, [Code::Code(7), Code::Other, Code::Code(7)]);
    }

    #[test]
    fn incoming_routes_are_the_registered_ones() {
        let m = Metrics::new();
        m.after_register(RouteKind::Pull, "/a b").unwrap();
        let label = |kind, u: &str| m.incoming_route(kind, &Uri::from(u)).0.to_string();
        assert_eq!(label(RouteKind::Pull, "/a%20b?q=1"), "/a b");
        assert_eq!(label(RouteKind::Push, "/a%20b"), UNKNOWN_ROUTE);
        assert_eq!(label(RouteKind::Pull, "/nope"), UNKNOWN_ROUTE);
        assert_eq!(label(RouteKind::Pull, "/bad%zz"), UNKNOWN_ROUTE);
    }
}
