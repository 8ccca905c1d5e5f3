//! The session: one connection's protocol state machine, without I/O.
//!
//! A [`Session`] is fed bytes ([`Session::handle_input`]), the end of input
//! ([`Session::handle_eof`]) and time ([`Session::handle_timeout`]); it is
//! asked to send ([`Session::pull`], [`Session::push`], [`Session::reply`])
//! and to close ([`Session::close`]). It hands back bytes to write
//! ([`Session::poll_transmit`]), [`Event`]s ([`Session::poll_event`]) and the
//! next instant it wants to be woken at ([`Session::poll_timeout`]). It never
//! reads a clock: every method that needs the time takes `now`.
//!
//! After any call that feeds or asks it something, drain
//! [`Session::poll_event`] and [`Session::poll_transmit`], then re-arm the
//! timer at [`Session::poll_timeout`].
//!
//! # Driving a session from a socket-shaped loop
//!
//! An adapter's loop, with a pretend socket (bytes in, bytes out, and an
//! end of input) and a pretend clock, as every runtime adapter does it:
//! wait for input or the deadline, feed the session, act on its events,
//! write what it queued.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use bytes::BytesMut;
//! use teleport_core::{
//!     CloseReason, CodecId, Event, Packet, Rerror, Role, Router, Session, Shared,
//! };
//!
//! /// What the socket and the clock gave the loop this turn.
//! enum Wake { Read(Vec<u8>), Eof, Timer }
//!
//! /// One turn of the loop: feed, handle events, write. Returns replies
//! /// to our pulls (by token) and, once, why the session closed.
//! fn turn(
//!     s: &mut Session<&'static str, u32>,
//!     now: Instant,
//!     wake: Wake,
//!     socket_out: &mut BytesMut,
//!     replies: &mut Vec<(u32, Result<Packet, Rerror>)>,
//! ) -> Option<CloseReason> {
//!     match wake {
//!         Wake::Read(bytes) => s.handle_input(now, &bytes),
//!         Wake::Eof => s.handle_eof(now),
//!         Wake::Timer => s.handle_timeout(now),
//!     }
//!     let mut closed = None;
//!     while let Some(ev) = s.poll_event() {
//!         match ev {
//!             // A real adapter runs the routed handler (here a name).
//!             Event::Pull(p) if p.handler == "echo" => {
//!                 let echo = Packet::default().with_body(p.reply_codec, p.packet.body.clone());
//!                 s.reply(now, p.seq, Ok(echo)).unwrap();
//!             }
//!             Event::Pull(_) | Event::Push(_) => {} // "/hold": never answered
//!             // A big gzip body (none here): decode it off this thread.
//!             Event::Decode(job) => s.handle_decoded(now, job.run()),
//!             Event::Reply { token, result, .. } => replies.push((token, result)),
//!             Event::Closed(reason) => closed = Some(reason),
//!         }
//!     }
//!     s.poll_transmit(socket_out); // one write for every queued frame
//!     closed
//! }
//!
//! let mut router = Router::new();
//! router.pull("/echo", "echo").pull("/hold", "hold");
//! let shared = Arc::new(Shared::new(router));
//! let t0 = Instant::now(); // the adapter reads the clock, never the core
//! let mut client: Session<&str, u32> = Session::new(shared.clone(), Role::Dialer, 1, t0);
//! let mut server: Session<&str, u32> = Session::new(shared, Role::Acceptor, 2, t0);
//! let (mut c2s, mut s2c) = (BytesMut::new(), BytesMut::new());
//! let (mut got, mut none) = (Vec::new(), Vec::new());
//!
//! // Two pulls: one answered, one the server holds past its timeout.
//! let mut pull = |uri: &str, token| {
//!     let mut p = Packet::default().with_body(CodecId::STRING, &b"hi"[..]);
//!     p.uri = uri.into();
//!     client.pull(t0, p, Some(Duration::from_secs(1)), token).unwrap();
//! };
//! pull("/echo", 7);
//! pull("/hold", 8);
//! client.poll_transmit(&mut c2s);
//!
//! // The bytes arrive at the server; its replies arrive at the client.
//! turn(&mut server, t0, Wake::Read(c2s.split().to_vec()), &mut s2c, &mut none);
//! turn(&mut client, t0, Wake::Read(s2c.split().to_vec()), &mut c2s, &mut got);
//! assert_eq!(got.len(), 1);
//! assert_eq!(got[0].0, 7);
//! assert_eq!(&got[0].1.as_ref().unwrap().body[..], b"hi");
//!
//! // The timer: the session names its next deadline; at it, the held
//! // pull fails with 408.
//! let deadline = client.poll_timeout().unwrap();
//! assert_eq!(deadline, t0 + Duration::from_secs(1));
//! turn(&mut client, deadline, Wake::Timer, &mut c2s, &mut got);
//! assert_eq!((got[1].0, got[1].1.as_ref().unwrap_err().code), (8, Rerror::CODE_TIMEOUT));
//!
//! // The peer goes away: the session ends, once, saying why.
//! let closed = turn(&mut client, deadline, Wake::Eof, &mut c2s, &mut got);
//! assert_eq!(closed, Some(CloseReason::PeerClosed));
//! assert!(client.is_closed() && client.poll_timeout().is_none());
//! ```

mod log;

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::codec::CodecRegistry;
use crate::error::ProtoError;
use crate::packet::{CodecId, Packet, PacketType, Seq, Uri, XferPipe};
use crate::plugin::{Action, CallDone, Direction, Extensions, PluginCtx, Plugins};
use crate::proto::{DecodeJob, Decoded, FastProto, Proto};
use crate::rerror::Rerror;
use crate::router::RouteKind;
use crate::router::{decode_path, Router};
use crate::xfer::XferRegistry;

/// Settings of every session of a peer.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Timeout of a pull that names none; `None`: wait until the reply or
    /// the connection's end, as Go v3 does (it has no reply timeout).
    pub default_timeout: Option<Duration>,
    /// Most pulls of ours awaiting replies at once; more is backpressure.
    pub max_pending_pulls: usize,
    /// Most of the peer's pulls being handled at once; over it the session
    /// asks not to be fed ([`Session::wants_input`]).
    pub max_incoming_pulls: usize,
    /// Most bytes of the peer's pulls being handled at once (each counted
    /// at its frame size or decoded size, whichever is larger); over it the
    /// session asks not to be fed. One pull is always admitted when none is
    /// held, so a single pull larger than this still gets through.
    pub max_incoming_bytes: usize,
    /// Most encoded bytes queued for writing; over it new pulls and pushes
    /// are backpressure and the session asks not to be fed.
    pub max_queued_bytes: usize,
    /// Close the session when nothing was read for this long while no
    /// call was in flight. The timer does not run while calls (ours or the
    /// peer's) are in flight, nor while the session itself declines input
    /// (backpressure); it starts afresh when they end.
    pub idle_timeout: Option<Duration>,
    /// Close the session when a frame that has started arriving is not
    /// complete this long after its first byte: a peer that drips a frame
    /// a byte at a time keeps the idle timer fed but not this one. Time
    /// during which the session declines input does not count: the frame's
    /// clock starts afresh when reading resumes.
    pub frame_timeout: Option<Duration>,
    /// How long a graceful [`Session::close`] waits for pending calls.
    pub close_timeout: Duration,
    /// Calls (ours or the peer's) slower than this are logged as warnings.
    pub slow_threshold: Option<Duration>,
    /// Log each reply with the call's duration.
    pub count_time: bool,
    /// Log packet bodies.
    pub print_body: bool,
    /// The codec of bodies that name none, and of error replies.
    pub default_codec: CodecId,
    /// The read size limit: frame size and every filter's output.
    pub read_limit: usize,
    /// Frames whose transfer filters would produce more than this many
    /// bytes (a large gzip body) are not decoded in [`Session::handle_input`]
    /// but handed to the adapter as [`Event::Decode`], to run away from the
    /// thread that drives other sessions' sockets. `usize::MAX`: always
    /// decode in place.
    pub inline_decode_limit: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            default_timeout: None,
            max_pending_pulls: 1 << 16,
            max_incoming_pulls: 1 << 16,
            max_incoming_bytes: DEFAULT_MAX_INCOMING_BYTES,
            max_queued_bytes: 32 << 20,
            idle_timeout: None,
            frame_timeout: Some(DEFAULT_FRAME_TIMEOUT),
            close_timeout: Duration::from_secs(30),
            slow_threshold: None,
            count_time: false,
            print_body: false,
            default_codec: CodecId::JSON,
            read_limit: crate::proto::DEFAULT_READ_LIMIT,
            inline_decode_limit: usize::MAX,
        }
    }
}

/// The default frame timeout: a frame must arrive whole within 30 s of its
/// first byte. Without one, a peer that sends three bytes and stops, or
/// drips a byte every 100 ms, holds a session (and its buffer) forever.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a session whose writes failed goes on reading what the peer
/// had sent before (see [`Session::handle_write_error`]).
pub const WRITE_ERROR_GRACE: Duration = Duration::from_millis(500);

/// The default bound on the bytes of the peer's pulls held at once: 32 MiB.
pub const DEFAULT_MAX_INCOMING_BYTES: usize = 32 << 20;

/// The reserved route of the "going away" notice: an ordinary push, with
/// an empty body, that a peer shutting down or restarting sends on each
/// session it accepted ([`Session::go_away`]). A dialing session that gets
/// it makes no new call on this connection: its pending calls finish,
/// then it ends ([`CloseReason::GoingAway`]). Its owner dials the same
/// address again meanwhile, at once, and new calls go there (a peer's
/// adapters hand the old connection to a session of its own for its last
/// calls). A peer that does not know the route
/// (Go teleport) drops the push, as it drops any push with no handler,
/// and sees its session closed at the end of the drain.
pub const GOING_AWAY_URI: &str = "/teleport/going_away";

/// What every session of one peer shares: routes, plugins, codecs,
/// filters and settings.
#[derive(Debug)]
pub struct Shared<H> {
    /// URI paths to handlers.
    pub router: Router<H>,
    /// Hooks, in order.
    pub plugins: Plugins,
    /// Body codecs.
    pub codecs: CodecRegistry,
    /// Transfer filters.
    pub xfers: Arc<XferRegistry>,
    /// Session settings.
    pub config: SessionConfig,
}

impl<H> Shared<H> {
    /// Defaults for everything but the router.
    pub fn new(router: Router<H>) -> Self {
        Shared {
            router,
            plugins: Plugins::new(),
            codecs: CodecRegistry::default(),
            xfers: Arc::new(XferRegistry::default()),
            config: SessionConfig::default(),
        }
    }

    /// With these plugins.
    pub fn with_plugins(mut self, plugins: Plugins) -> Self {
        self.plugins = plugins;
        self
    }

    /// With this configuration.
    pub fn with_config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// A fast proto with this peer's read limit and filters.
    pub fn fast_proto(&self) -> FastProto {
        FastProto::new(self.config.read_limit, self.xfers.clone())
    }
}

/// Which end of the connection this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// This side dialed.
    Dialer,
    /// This side accepted.
    Acceptor,
}

/// Why a session ended.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// A graceful close finished: every pending call completed.
    Local,
    /// A graceful close reached its deadline with calls still pending;
    /// those pulls failed, those handlers' replies will be dropped.
    DrainTimeout {
        /// Our pulls that got no reply.
        pulls: usize,
        /// The peer's pulls we had not answered.
        handlers: usize,
    },
    /// The peer closed the connection between frames.
    PeerClosed,
    /// The peer sent bytes that are not a valid frame (or ended inside one).
    Protocol(ProtoError),
    /// The peer sent a frame of an unknown type (vector `ptype_unknown`).
    UnknownPacketType(u8),
    /// The transport failed.
    Io(String),
    /// Nothing was read for the idle timeout.
    Idle(Duration),
    /// A frame took longer than the frame timeout to arrive whole.
    FrameTimeout(Duration),
    /// A plugin closed the session.
    Plugin(Rerror),
    /// The peer said it is going away ([`GOING_AWAY_URI`]: it is shutting
    /// down or restarting); our calls on this connection were over, and a
    /// dialed session carries on over a new one.
    GoingAway,
}

impl CloseReason {
    /// The error pending pulls fail with when the session ends this way.
    pub fn pull_error(&self) -> Rerror {
        let detail = match self {
            CloseReason::Local => "session closed".to_string(),
            CloseReason::DrainTimeout { .. } => "session closed: close timed out".to_string(),
            CloseReason::PeerClosed => "connection closed by peer".to_string(),
            CloseReason::Protocol(e) => format!("protocol error: {e}"),
            CloseReason::UnknownPacketType(t) => format!("unsupported packet type: {t}"),
            CloseReason::Io(e) => format!("transport error: {e}"),
            CloseReason::Idle(d) => format!("idle for {d:?}"),
            CloseReason::FrameTimeout(d) => format!("a frame took over {d:?} to arrive"),
            CloseReason::Plugin(e) => format!("closed by plugin: {e}"),
            CloseReason::GoingAway => {
                "the peer went away (shutting down or restarting)".to_string()
            }
        };
        Rerror::conn_closed().with_detail(detail)
    }
}

/// A pull from the peer, routed to a handler, waiting for
/// [`Session::reply`].
#[derive(Debug)]
pub struct IncomingPull<H> {
    /// The seq to reply to.
    pub seq: Seq,
    /// The pull as received (URI, meta, codec, body, filters).
    pub packet: Packet,
    /// The handler the router chose.
    pub handler: H,
    /// The codec a reply body should use: the pull's if this peer knows
    /// it, else the default (Go would fail to reply at all,
    /// D-UNKNOWN-CODEC-EMPTY).
    pub reply_codec: CodecId,
}

/// A push from the peer, routed to a handler.
#[derive(Debug)]
pub struct IncomingPush<H> {
    /// The push as received.
    pub packet: Packet,
    /// The handler the router chose.
    pub handler: H,
}

/// What a session has to tell its adapter. `Closed` comes exactly once,
/// last.
#[derive(Debug)]
pub enum Event<H, T> {
    /// The peer pulled; run the handler and [`Session::reply`].
    Pull(IncomingPull<H>),
    /// The peer pushed; run the handler.
    Push(IncomingPush<H>),
    /// One of our pulls ended: with the reply, its error, a timeout, or the
    /// connection's end. Each pull ends exactly once.
    Reply {
        /// The pull's seq.
        seq: Seq,
        /// What the adapter attached to the pull.
        token: T,
        /// The reply packet, or why there is none.
        result: Result<Packet, Rerror>,
        /// From the pull to its end.
        elapsed: Duration,
    },
    /// A frame too costly to decode in place (see
    /// [`SessionConfig::inline_decode_limit`]): run [`DecodeJob::run`]
    /// away from the I/O thread and hand the result to
    /// [`Session::handle_decoded`]. Until then the session takes no further
    /// frame off its input (frames keep their order) and declines input.
    Decode(DecodeJob),
    /// The session is over; flush [`Session::poll_transmit`] once more,
    /// then close the connection.
    Closed(CloseReason),
}

/// Counters of one session, readable at any time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames decoded.
    pub frames_in: u64,
    /// Frames encoded.
    pub frames_out: u64,
    /// Bytes of frames decoded.
    pub bytes_in: u64,
    /// Bytes of frames encoded.
    pub bytes_out: u64,
    /// Replies whose seq matched no pending pull (dropped).
    pub unmatched_replies: u64,
    /// Pushes with no route (dropped).
    pub dropped_pushes: u64,
    /// Pulls of ours that timed out.
    pub timeouts: u64,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Sending and receiving.
    Open,
    /// Closing gracefully: no new calls, pending ones may finish until the
    /// deadline.
    Closing {
        /// When pending calls are abandoned.
        deadline: Instant,
    },
    /// Over; `Closed` was emitted.
    Closed,
}

enum Origin<T> {
    User(T),
    Plugin(usize),
}

struct Pending<T> {
    origin: Origin<T>,
    uri: Uri,
    started: Instant,
    deadline: Option<Instant>,
}

struct Incoming {
    uri: Uri,
    xfer: XferPipe,
    started: Instant,
    /// What the pull counts against `max_incoming_bytes`.
    bytes: usize,
    /// The plugins of the route it was routed to, for its reply.
    plugins: Option<Arc<Plugins>>,
}

/// Our own seqs are sequential and chosen by us, so a multiplicative hash
/// is safe and fast. (The peer's seqs use the default, keyed hasher.)
/// Runs `f` for each of `plugins` in order, with `ctx` naming each one if
/// they are the peer's (`peer_wide`: a peer-wide plugin's pulls and timers
/// come back to it by its index; a group's or route's name none); stops at
/// the first error. `Ok(true)`: a plugin swallowed the packet.
fn run_plugins(
    plugins: &Plugins,
    peer_wide: bool,
    ctx: &mut PluginCtx<'_>,
    f: &mut impl FnMut(&dyn crate::plugin::Plugin, &mut PluginCtx<'_>) -> Result<(), Rerror>,
) -> Result<bool, Rerror> {
    for (i, plugin) in plugins.iter().enumerate() {
        ctx.plugin = if peer_wide { i } else { usize::MAX };
        f(&**plugin, ctx)?;
        if ctx.swallowed {
            return Ok(true);
        }
    }
    Ok(false)
}

#[derive(Default)]
struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type SeqMap<V> = HashMap<u64, V, BuildHasherDefault<SeqHasher>>;

/// One connection's protocol state, driven by an adapter.
///
/// `H` is the adapter's handler type (cloned out of the router for each
/// call), `T` what it attaches to each of its pulls to find the caller
/// again (a one-shot sender, say), `P` the frame format.
pub struct Session<H, T, P: Proto = FastProto> {
    id: u64,
    role: Role,
    shared: Arc<Shared<H>>,
    proto: P,
    rx: BytesMut,
    tx: BytesMut,
    next_seq: u64,
    pending: SeqMap<Pending<T>>,
    deadlines: BTreeSet<(Instant, u64)>,
    incoming: HashMap<u64, Incoming>,
    events: VecDeque<Event<H, T>>,
    state: State,
    last_read: Instant,
    /// When the partial frame now buffered began to arrive.
    partial_since: Option<Instant>,
    /// Bytes of the peer's pulls now held (see `max_incoming_bytes`).
    incoming_bytes: usize,
    /// Bytes handed out by `poll_transmit` the adapter still holds.
    unwritten: usize,
    /// The idle timer counts from here or `last_read`, whichever is later:
    /// moved on when calls stop being in flight and when reading resumes.
    idle_from: Instant,
    /// As last seen: the session declined input (backpressure).
    paused: bool,
    /// As last seen: calls were in flight.
    busy: bool,
    /// The input ended (the peer shut down its side); what is buffered is
    /// still handled.
    input_ended: bool,
    /// A frame of this size is being decoded away ([`Event::Decode`]).
    decoding: Option<usize>,
    /// `process_input` is running (plugin actions can re-enter the session).
    processing: bool,
    /// The last frame loop stopped at a limit with frames still buffered.
    rx_held: bool,
    /// Why a graceful close that is under way will end (a half-close ends
    /// as `PeerClosed`, a requested close as `Local`).
    closing_reason: Option<CloseReason>,
    /// We told the peer we are going away ([`Session::go_away`]): its
    /// calls are still served until its input ends (or the deadline).
    notice_sent: bool,
    /// The peer told us it is going away: no new call is made here.
    moving: bool,
    /// Why the session ended, once it has: refusals say so.
    closed_reason: Option<CloseReason>,
    /// Writing failed: the error, and until when what the peer sent before
    /// is still read.
    write_failed: Option<(String, Instant)>,
    wakes: Vec<Option<Instant>>,
    ext: Extensions,
    actions: Vec<Action>,
    stats: SessionStats,
}

impl<H: Clone, T> Session<H, T, FastProto> {
    /// A session speaking the fast proto with the peer's limits.
    pub fn new(shared: Arc<Shared<H>>, role: Role, id: u64, now: Instant) -> Self {
        let proto = shared.fast_proto();
        Session::with_proto(shared, role, id, proto, now)
    }
}

impl<H: Clone, T, P: Proto> Session<H, T, P> {
    /// A session speaking `proto`. Runs the plugins' `after_dial` or
    /// `after_accept`; if one fails, the session starts closed.
    pub fn with_proto(shared: Arc<Shared<H>>, role: Role, id: u64, proto: P, now: Instant) -> Self {
        let n = shared.plugins.len();
        let mut s = Session {
            id,
            role,
            shared,
            proto,
            // Buffers grow with use: an idle session holds none.
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            next_seq: 0,
            pending: SeqMap::default(),
            deadlines: BTreeSet::new(),
            incoming: HashMap::new(),
            events: VecDeque::new(),
            state: State::Open,
            last_read: now,
            partial_since: None,
            incoming_bytes: 0,
            unwritten: 0,
            idle_from: now,
            paused: false,
            busy: false,
            input_ended: false,
            decoding: None,
            processing: false,
            rx_held: false,
            closing_reason: None,
            notice_sent: false,
            moving: false,
            closed_reason: None,
            write_failed: None,
            wakes: vec![None; n],
            ext: Extensions::default(),
            actions: Vec::new(),
            stats: SessionStats::default(),
        };
        let r = s.hooks(now, None, |p, ctx| match role {
            Role::Dialer => p.after_dial(ctx),
            Role::Acceptor => p.after_accept(ctx),
        });
        match r {
            Ok(_) => s.apply_actions(now),
            Err(e) => s.abort(now, CloseReason::Plugin(e)),
        }
        s
    }

    /// The session's id, as given at creation.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether this side dialed or accepted.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where the session is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether `Closed` was emitted.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The peer's shared settings.
    pub fn shared(&self) -> &Arc<Shared<H>> {
        &self.shared
    }

    /// This session's counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Our pulls awaiting replies.
    pub fn pending_pulls(&self) -> usize {
        self.pending.len()
    }

    /// The peer's pulls awaiting our replies.
    pub fn incoming_pulls(&self) -> usize {
        self.incoming.len()
    }

    /// Bytes encoded and not yet taken by [`Session::poll_transmit`].
    pub fn queued_bytes(&self) -> usize {
        self.tx.len()
    }

    /// Tells the session how many of the bytes [`Session::poll_transmit`]
    /// handed out the adapter still holds unwritten: they count against
    /// `max_queued_bytes` with the session's own, so what waits for a slow
    /// peer stays within the bound however the adapter batches its writes.
    /// (An adapter that writes everything it takes at once never calls it.)
    pub fn set_unwritten(&mut self, bytes: usize) {
        self.unwritten = bytes;
    }

    /// Bytes waiting to be written: queued here and held by the adapter.
    fn pending_output(&self) -> usize {
        self.tx.len() + self.unwritten
    }

    /// Bytes of the peer's pulls being handled now (see
    /// [`SessionConfig::max_incoming_bytes`]).
    pub fn incoming_bytes(&self) -> usize {
        self.incoming_bytes
    }

    /// Whether the adapter should read more input now. `false` while the
    /// peer's unanswered pulls (count or bytes) or our unwritten bytes are
    /// over their bounds, while a frame is being decoded away, and once the
    /// input has ended: not reading is how backpressure reaches the peer.
    pub fn wants_input(&self) -> bool {
        self.state != State::Closed
            && !self.input_ended
            && self.admits_frames()
            && (self.write_failed.is_some()
                || self.pending_output() < self.shared.config.max_queued_bytes)
    }

    /// Whether another frame may be taken off the buffered input: the
    /// peer's pulls are within their bounds and no frame is being decoded
    /// away. (Our own unwritten bytes stop reading from the socket, not the
    /// handling of frames already read: those are bounded by the buffer.)
    fn admits_frames(&self) -> bool {
        let cfg = &self.shared.config;
        if self.write_failed.is_some() {
            // Nothing will be answered: only replies and pushes matter now.
            return self.decoding.is_none();
        }
        self.decoding.is_none()
            && self.incoming.len() < cfg.max_incoming_pulls
            && (self.incoming_bytes == 0 || self.incoming_bytes < cfg.max_incoming_bytes)
    }

    /// The error a refused call gets once the session is over: it says why
    /// the session ended.
    fn closed_error(&self) -> Rerror {
        let why = match &self.closed_reason {
            Some(r) => format!("session is closed: {}", r.pull_error().detail),
            None => "session is closed".to_string(),
        };
        Rerror::conn_closed().with_detail(why)
    }

    /// Why the session ended, once it has.
    pub fn closed_reason(&self) -> Option<&CloseReason> {
        self.closed_reason.as_ref()
    }

    // ---- sending -------------------------------------------------------

    /// `plugin_push`: a plugin's own push (a heartbeat ping, say), which
    /// still goes out while a graceful close drains: without it, a peer
    /// watching for silence would cut the drain short.
    fn check_can_send(&self, pulls: bool, plugin_push: bool) -> Result<(), Rerror> {
        let cfg = &self.shared.config;
        match self.state {
            State::Open => {}
            State::Closing { .. } if plugin_push => {}
            State::Closing { .. } => {
                return Err(Rerror::conn_closed().with_detail("session is closing"))
            }
            State::Closed => return Err(self.closed_error()),
        }
        if let Some((e, _)) = &self.write_failed {
            return Err(Rerror::conn_closed().with_detail(format!("write failed: {e}")));
        }
        if pulls && self.pending.len() >= cfg.max_pending_pulls {
            return Err(Rerror::new(Rerror::CODE_BACKPRESSURE, "Backpressure")
                .with_detail(format!("{} pulls pending, the limit", self.pending.len())));
        }
        if self.pending_output() >= cfg.max_queued_bytes {
            return Err(
                Rerror::new(Rerror::CODE_BACKPRESSURE, "Backpressure").with_detail(format!(
                    "{} bytes queued for writing, limit {}",
                    self.pending_output(),
                    cfg.max_queued_bytes
                )),
            );
        }
        Ok(())
    }

    fn encode(&mut self, p: &Packet) -> Result<usize, ProtoError> {
        let before = self.tx.len();
        self.proto.encode(p, &mut self.tx)?;
        let n = self.tx.len() - before;
        self.stats.frames_out += 1;
        self.stats.bytes_out += n as u64;
        Ok(n)
    }

    /// Sends a pull. URI, meta, codec, body and filters come from `packet`
    /// (a codec of [`CodecId::NONE`] becomes the default); the session sets
    /// the type and a fresh seq. `timeout`: `None` for the configured
    /// default, `Duration::MAX` for none at all.
    ///
    /// The reply (or timeout, or the connection's end) comes back once as
    /// [`Event::Reply`] with `token`. A refusal (closing, backpressure, a
    /// plugin's error, a frame over the limit) hands the token back.
    pub fn pull(
        &mut self,
        now: Instant,
        packet: Packet,
        timeout: Option<Duration>,
        token: T,
    ) -> Result<Seq, (Rerror, T)> {
        let r = self.pull_inner(now, packet, timeout, Origin::User(token));
        self.observe(now);
        match r {
            Ok(seq) => Ok(seq),
            Err((e, Origin::User(t))) => Err((e, t)),
            Err((_, Origin::Plugin(_))) => unreachable!("a user pull keeps its origin"),
        }
    }

    fn pull_inner(
        &mut self,
        now: Instant,
        mut packet: Packet,
        timeout: Option<Duration>,
        origin: Origin<T>,
    ) -> Result<Seq, (Rerror, Origin<T>)> {
        if let Err(e) = self.check_can_send(true, false) {
            return Err((e, origin));
        }
        let seq = Seq(self.next_seq);
        packet.ptype = PacketType::PULL;
        packet.seq = seq;
        if packet.body_codec == CodecId::NONE {
            packet.body_codec = self.shared.config.default_codec;
        }
        if let Err(e) = self.hooks(now, None, |p, ctx| p.before_write_pull(ctx, &mut packet)) {
            return Err((e, origin));
        }
        let len = match self.encode(&packet) {
            Ok(n) => n,
            Err(e) => return Err((Rerror::write_failed(e.to_string()), origin)),
        };
        self.next_seq += 1;
        let deadline = timeout
            .or(self.shared.config.default_timeout)
            .and_then(|t| now.checked_add(t));
        if let Some(d) = deadline {
            self.deadlines.insert((d, seq.0));
        }
        log::sent(&self.shared.config, self.id, &packet, len);
        self.pending.insert(
            seq.0,
            Pending {
                origin,
                uri: packet.uri.clone(),
                started: now,
                deadline,
            },
        );
        let _ = self.hooks(now, Some(len), |p, ctx| {
            p.after_write_pull(ctx, &packet);
            Ok(())
        });
        self.apply_actions(now);
        Ok(seq)
    }

    /// Sends a push (one-way). Like [`Session::pull`] for what the packet
    /// carries and for refusals.
    pub fn push(&mut self, now: Instant, packet: Packet) -> Result<Seq, Rerror> {
        let r = self.push_inner(now, packet, false);
        self.observe(now);
        r
    }

    fn push_inner(
        &mut self,
        now: Instant,
        mut packet: Packet,
        from_plugin: bool,
    ) -> Result<Seq, Rerror> {
        self.check_can_send(false, from_plugin)?;
        let seq = Seq(self.next_seq);
        packet.ptype = PacketType::PUSH;
        packet.seq = seq;
        if packet.body_codec == CodecId::NONE {
            packet.body_codec = self.shared.config.default_codec;
        }
        self.hooks(now, None, |p, ctx| p.before_write_push(ctx, &mut packet))?;
        let len = self
            .encode(&packet)
            .map_err(|e| Rerror::write_failed(e.to_string()))?;
        self.next_seq += 1;
        log::sent(&self.shared.config, self.id, &packet, len);
        let _ = self.hooks(now, Some(len), |p, ctx| {
            p.after_write_push(ctx, &packet);
            Ok(())
        });
        self.apply_actions(now);
        Ok(seq)
    }

    /// Answers the peer's pull `seq`, once. `Ok(packet)`: its meta, codec
    /// (none: the pull's, see [`IncomingPull::reply_codec`]), body and any
    /// filters to add to the pull's; URI and seq are the pull's. `Err`: an
    /// error reply (empty body, the error in meta).
    ///
    /// Fails if no pull with this seq awaits a reply (already answered, or
    /// abandoned by a close). A reply that cannot be encoded (over the size
    /// limit, say) is replaced by a 500 error reply and reported here; when
    /// even that does not fit with the pull's URI (a URI near the read
    /// limit), the 500 goes with an empty URI: every admitted pull gets a
    /// reply.
    pub fn reply(
        &mut self,
        now: Instant,
        seq: Seq,
        result: Result<Packet, Rerror>,
    ) -> Result<(), Rerror> {
        let Some(inc) = self.incoming.remove(&seq.0) else {
            return Err(Rerror::new(Rerror::CODE_BAD_PACKET, "No Such Pull")
                .with_detail(format!("no pull with seq {seq} awaits a reply")));
        };
        self.incoming_bytes -= inc.bytes;
        let r = self.send_reply(now, seq, inc, result);
        self.check_drained(now);
        self.apply_actions(now);
        // Room for frames that waited in the buffer for this one to end.
        if self.rx_held && !self.processing {
            self.process_input(now);
        }
        self.observe(now);
        r
    }

    /// Registers the peer's pull `seq` as awaiting a reply; `false` if a
    /// pull with that seq is still being handled.
    fn admit_pull(&mut self, now: Instant, p: &Packet, frame_len: usize) -> bool {
        match self.incoming.entry(p.seq.0) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                let bytes = frame_len.max(p.body.len() + p.uri.len());
                self.incoming_bytes += bytes;
                v.insert(Incoming {
                    uri: p.uri.clone(),
                    xfer: p.xfer.clone(),
                    started: now,
                    bytes,
                    plugins: None,
                });
                true
            }
        }
    }

    /// Notes, at `now`, whether the session declines input and whether
    /// calls are in flight: the idle and frame timers start afresh when
    /// reading resumes, and the idle timer when the last call ends.
    fn observe(&mut self, now: Instant) {
        let paused = !self.wants_input();
        if self.paused && !paused {
            self.idle_from = now;
            if self.partial_since.is_some() {
                self.partial_since = Some(now);
            }
        }
        self.paused = paused;
        let busy = !self.pending.is_empty() || !self.incoming.is_empty();
        if self.busy && !busy {
            self.idle_from = now;
        }
        self.busy = busy;
    }

    fn error_reply(&self, seq: Seq, uri: Uri, xfer: XferPipe, e: &Rerror) -> Packet {
        let mut p = Packet::new(PacketType::REPLY, seq, uri);
        p.body_codec = self.shared.config.default_codec;
        p.xfer = xfer;
        e.set_in_meta(&mut p.meta);
        p
    }

    fn send_reply(
        &mut self,
        now: Instant,
        seq: Seq,
        inc: Incoming,
        result: Result<Packet, Rerror>,
    ) -> Result<(), Rerror> {
        let Incoming {
            uri,
            xfer,
            started,
            plugins: route,
            ..
        } = inc;
        let started = Some(started);
        let mut packet = match result {
            Ok(mut p) => {
                p.ptype = PacketType::REPLY;
                p.seq = seq;
                p.uri = uri.clone();
                if p.xfer.is_empty() {
                    p.xfer = xfer.clone();
                } else {
                    let mut ids: Vec<_> = xfer.iter().collect();
                    ids.extend(p.xfer.iter());
                    p.xfer = XferPipe::from_ids(&ids);
                }
                if p.body_codec == CodecId::NONE {
                    p.body_codec = self.shared.config.default_codec;
                }
                p
            }
            Err(e) => self.error_reply(seq, uri.clone(), xfer.clone(), &e),
        };
        // The route's plugins first (they are closest to the handler), then
        // the peer's.
        let route_said = match &route {
            Some(r) => self
                .route_hooks(r, now, None, |p, ctx| {
                    p.before_write_reply(ctx, &mut packet)
                })
                .map(drop),
            None => Ok(()),
        };
        let said = route_said.and_then(|()| {
            self.hooks(now, None, |p, ctx| p.before_write_reply(ctx, &mut packet))
                .map(drop)
        });
        if let Err(e) = said {
            packet = self.error_reply(seq, uri.clone(), xfer.clone(), &e);
        }
        let mut outcome = Ok(());
        let len = match self.encode(&packet) {
            Ok(n) => n,
            Err(err) => {
                let e = Rerror::internal(format!("reply could not be encoded: {err}"));
                outcome = Err(e.clone());
                packet = self.error_reply(seq, uri, xfer, &e);
                match self.encode(&packet) {
                    Ok(n) => n,
                    // The pull's URI alone can nearly fill a frame: then
                    // no reply that repeats it fits, and the 500 goes
                    // without it (and without filters, which a bare error
                    // does not need). The peer matches a reply by its seq,
                    // so its pull still ends, rather than waiting forever.
                    Err(_) => {
                        packet = self.error_reply(seq, Uri::default(), XferPipe::new(), &e);
                        match self.encode(&packet) {
                            Ok(n) => n,
                            Err(err) => {
                                return Err(Rerror::write_failed(format!(
                                    "error reply could not be encoded either: {err}"
                                )))
                            }
                        }
                    }
                }
            }
        };
        let error = Rerror::from_meta(&packet.meta);
        let elapsed = started.map(|s| now.saturating_duration_since(s));
        log::replied(
            &self.shared.config,
            self.id,
            &packet,
            len,
            error.as_ref(),
            elapsed,
        );
        let mut after = |p: &dyn crate::plugin::Plugin, ctx: &mut PluginCtx<'_>| {
            p.after_write_reply(ctx, &packet);
            if let Some(elapsed) = elapsed {
                p.on_call_done(
                    ctx,
                    &CallDone {
                        direction: Direction::Incoming,
                        uri: &packet.uri,
                        elapsed,
                        error: error.as_ref(),
                    },
                );
            }
            Ok(())
        };
        if let Some(r) = &route {
            let _ = self.route_hooks(r, now, Some(len), &mut after);
        }
        let _ = self.hooks(now, Some(len), after);
        outcome
    }

    /// Runs `f` for every plugin of a route, in order; stops at the first
    /// error. `Ok(true)`: a plugin swallowed the packet. A route plugin's
    /// context names no peer-wide plugin, so its own pulls and timers (which
    /// are peer-wide plugins' tools) go nowhere.
    fn route_hooks(
        &mut self,
        plugins: &Plugins,
        now: Instant,
        frame_len: Option<usize>,
        mut f: impl FnMut(&dyn crate::plugin::Plugin, &mut PluginCtx<'_>) -> Result<(), Rerror>,
    ) -> Result<bool, Rerror> {
        let mut ctx = PluginCtx::new(
            now,
            self.role,
            self.id,
            frame_len,
            &mut self.ext,
            &mut self.actions,
        );
        run_plugins(plugins, false, &mut ctx, &mut f)
    }

    /// Starts a graceful close: new pulls and pushes are refused (a
    /// plugin's own pushes, such as heartbeat pings, still go out), the
    /// peer's new pulls are answered with an error, pending calls may
    /// finish until `now + close_timeout`; then `Closed`.
    pub fn close(&mut self, now: Instant) {
        let timeout = self.shared.config.close_timeout;
        self.close_by(now, now.checked_add(timeout).unwrap_or(now));
    }

    /// [`Session::close`] with an explicit deadline. On a session already
    /// closing, an earlier deadline than the one it has replaces it.
    pub fn close_by(&mut self, now: Instant, deadline: Instant) {
        match self.state {
            State::Open => {
                self.state = State::Closing { deadline };
                self.check_drained(now);
            }
            State::Closing { deadline: d } if deadline < d => {
                self.state = State::Closing { deadline };
            }
            _ => {}
        }
        self.observe(now);
    }

    /// Starts a graceful close in which the peer is told to move: on a
    /// session we accepted, the [`GOING_AWAY_URI`] notice goes out, and the
    /// peer's calls are still served (not refused, as [`Session::close`]
    /// does) until the peer ends its input, which a peer that moves does
    /// once its own calls here are over; our pending calls and handlers
    /// finish as in any close. What is still running at `deadline` ends
    /// it: each pull we were still handling gets an error reply saying so.
    /// A peer that never ends its input (one that does not know the
    /// notice) is closed at `deadline`, cleanly if nothing was running. On
    /// a dialed session (the peer does not redial us) this is
    /// [`Session::close_by`].
    pub fn go_away(&mut self, now: Instant, deadline: Instant) {
        if self.state == State::Open && self.role == Role::Acceptor {
            let mut notice = Packet::new(PacketType::PUSH, Seq(0), GOING_AWAY_URI);
            notice.body_codec = self.shared.config.default_codec;
            match self.push_inner(now, notice, true) {
                Ok(_) => self.notice_sent = true,
                Err(e) => {
                    tracing::debug!(target: "teleport::session", session = self.id, error = %e,
                        "going-away notice not sent; closing as usual")
                }
            }
        }
        self.close_by(now, deadline);
    }

    /// Whether the peer told us it is going away: calls made now belong on
    /// the next connection (the session's owner keeps them for it).
    pub fn is_moving(&self) -> bool {
        self.moving
    }

    /// The peer's going-away notice: a dialed session stops making calls
    /// here and ends once those it has made are over.
    fn start_moving(&mut self, now: Instant) {
        if self.state != State::Open || self.role != Role::Dialer {
            return;
        }
        self.moving = true;
        let timeout = self.shared.config.close_timeout;
        self.state = State::Closing {
            deadline: now.checked_add(timeout).unwrap_or(now),
        };
        self.closing_reason = Some(CloseReason::GoingAway);
        tracing::info!(target: "teleport::session", session = self.id, pending = self.pending.len(),
            "the peer is going away; new calls go to the next connection");
        self.check_drained(now);
    }

    // ---- input ---------------------------------------------------------

    /// Feeds bytes read from the connection. Complete frames are handled at
    /// once, as far as the peer's pulls are within their bounds (the rest
    /// wait in the buffer until replies make room); a partial frame waits
    /// for the rest.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.state == State::Closed || self.input_ended {
            return;
        }
        self.rx.extend_from_slice(data);
        self.last_read = now;
        self.process_input(now);
        self.observe(now);
    }

    fn process_input(&mut self, now: Instant) {
        if self.processing {
            return;
        }
        self.processing = true;
        let mut decoded = false;
        self.rx_held = false;
        let budget = self.shared.config.inline_decode_limit;
        while self.state != State::Closed {
            if !self.admits_frames() {
                self.rx_held = !self.rx.is_empty();
                break;
            }
            let before = self.rx.len();
            match self.proto.decode_within(&mut self.rx, budget) {
                Ok(Some(Decoded::Packet(p))) => {
                    let len = before - self.rx.len();
                    self.stats.frames_in += 1;
                    self.stats.bytes_in += len as u64;
                    decoded = true;
                    self.on_packet(now, p, len);
                }
                Ok(Some(Decoded::Deferred(job))) => {
                    decoded = true;
                    self.decoding = Some(before - self.rx.len());
                    self.events.push_back(Event::Decode(job));
                }
                Ok(None) => {
                    // A proto that does not bound its frames (a user's) is
                    // bounded here: an unfinished frame over the read limit
                    // is an error, not a buffer that grows without end.
                    let limit = self.shared.config.read_limit;
                    if self.rx.len() > limit {
                        let e = ProtoError::SizeOverLimit {
                            size: self.rx.len(),
                            limit,
                        };
                        tracing::warn!(target: "teleport::session", session = self.id, error = %e, "bad frame, closing session");
                        self.abort(now, CloseReason::Protocol(e));
                        break;
                    }
                    // A frame that began in this input starts its clock now;
                    // one still incomplete from before keeps its start.
                    if self.rx.is_empty() {
                        self.partial_since = None;
                    } else if decoded || self.partial_since.is_none() {
                        self.partial_since = Some(now);
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(target: "teleport::session", session = self.id, error = %e, "bad frame, closing session");
                    self.abort(now, CloseReason::Protocol(e));
                }
            }
        }
        self.processing = false;
        self.apply_actions(now);
        self.check_input_end(now);
    }

    /// The result of an [`Event::Decode`]'s job: the frame is handled as if
    /// it had just been decoded, then the buffered input after it.
    pub fn handle_decoded(&mut self, now: Instant, result: Result<Packet, ProtoError>) {
        let Some(len) = self.decoding.take() else {
            return; // closed meanwhile
        };
        if self.state == State::Closed {
            return;
        }
        match result {
            Ok(p) => {
                self.stats.frames_in += 1;
                self.stats.bytes_in += len as u64;
                self.on_packet(now, p, len);
                self.apply_actions(now);
            }
            Err(e) => {
                tracing::warn!(target: "teleport::session", session = self.id, error = %e, "bad frame, closing session");
                self.abort(now, CloseReason::Protocol(e));
            }
        }
        self.process_input(now);
        self.observe(now);
    }

    /// The connection's input ended (the peer closed or shut down its
    /// write side). Frames already buffered are still handled; a partial
    /// frame left over is a protocol error. Our pulls can get no reply any
    /// more and fail; pulls of the peer's that are being handled finish
    /// and their replies go out (the peer may only have shut down its
    /// writing side), then the session ends as [`CloseReason::PeerClosed`].
    pub fn handle_eof(&mut self, now: Instant) {
        if self.state == State::Closed || self.input_ended {
            return;
        }
        self.input_ended = true;
        self.process_input(now);
        self.observe(now);
    }

    /// Once the input has ended and every buffered frame is handled: the
    /// end of the session, or of its input only, as [`Session::handle_eof`]
    /// says.
    fn check_input_end(&mut self, now: Instant) {
        if !self.input_ended || self.state == State::Closed {
            return;
        }
        if self.rx_held || self.decoding.is_some() {
            return; // frames still to handle first
        }
        if let Err(e) = self.proto.decode_eof(&mut self.rx) {
            self.abort(now, CloseReason::Protocol(e));
            return;
        }
        if let Some((e, _)) = &self.write_failed {
            let e = e.clone();
            self.abort(now, CloseReason::Io(e));
            return;
        }
        if self.incoming.is_empty() {
            self.abort(now, CloseReason::PeerClosed);
            return;
        }
        // Our pulls cannot be answered any more.
        self.fail_pending(now, &CloseReason::PeerClosed);
        if self.state == State::Open {
            let timeout = self.shared.config.close_timeout;
            self.state = State::Closing {
                deadline: now.checked_add(timeout).unwrap_or(now),
            };
        }
        self.closing_reason.get_or_insert(CloseReason::PeerClosed);
        tracing::debug!(target: "teleport::session", session = self.id,
            handlers = self.incoming.len(),
            "input ended; finishing the peer's pulls before closing"
        );
        self.check_drained(now);
    }

    /// The transport failed; the session ends.
    pub fn handle_io_error(&mut self, now: Instant, error: &dyn std::fmt::Display) {
        let reason = match &self.write_failed {
            // Reading after a failed write: the write's error says more.
            Some((e, _)) => e.clone(),
            None => error.to_string(),
        };
        self.abort(now, CloseReason::Io(reason));
    }

    /// Writing to the connection failed (the peer went away, say). Nothing
    /// more is written, but what the peer sent before is still read: a
    /// reply that arrived before the failure reaches its caller rather than
    /// the connection-closed error. The session ends, with this error, when
    /// the input ends or fails, or after [`WRITE_ERROR_GRACE`].
    pub fn handle_write_error(&mut self, now: Instant, error: &dyn std::fmt::Display) {
        if self.state == State::Closed || self.write_failed.is_some() {
            return;
        }
        tracing::debug!(target: "teleport::session", session = self.id, %error, "write failed; reading what already came");
        let until = now.checked_add(WRITE_ERROR_GRACE).unwrap_or(now);
        self.write_failed = Some((error.to_string(), until));
        self.tx.clear();
        self.unwritten = 0;
        if self.input_ended {
            self.abort(now, CloseReason::Io(error.to_string()));
            return;
        }
        // Frames held back by the limits are read now: nothing they ask can
        // be answered any more, but replies among them end our pulls.
        self.process_input(now);
        self.observe(now);
    }

    fn on_packet(&mut self, now: Instant, mut p: Packet, len: usize) {
        if !p.ptype.is_known() {
            tracing::error!(target: "teleport::session", session = self.id, ptype = p.ptype.0, seq = %p.seq, uri = %p.uri,
                "unsupported packet type, closing session");
            self.abort(now, CloseReason::UnknownPacketType(p.ptype.0));
            return;
        }
        log::received(&self.shared.config, self.id, &p, len);
        let header = self.hooks(now, Some(len), |pl, ctx| pl.after_read_header(ctx, &mut p));
        let result = match header {
            Ok(true) => {
                // Swallowed by a plugin. A swallowed pull is the plugin's to
                // answer (`PluginCtx::reply`): register it so the reply
                // finds it, as a routed pull would be.
                if p.ptype == PacketType::PULL && !self.admit_pull(now, &p, len) {
                    tracing::warn!(target: "teleport::session", session = self.id, seq = %p.seq, uri = %p.uri,
                        "swallowed pull reuses the seq of a pull still being handled");
                }
                return self.apply_actions(now);
            }
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        match p.ptype {
            PacketType::PULL => self.on_pull(now, p, result, len),
            PacketType::PUSH => self.on_push(now, p, result),
            _ => self.on_reply(now, p, result, len),
        }
    }

    fn on_pull(&mut self, now: Instant, mut p: Packet, header: Result<(), Rerror>, len: usize) {
        let seq = p.seq;
        if self.write_failed.is_some() {
            tracing::debug!(target: "teleport::session", session = self.id, %seq, uri = %p.uri,
                "pull after a failed write: it cannot be answered; dropped");
            return;
        }
        // Registered first: whatever happens next, the pull gets exactly
        // one reply.
        if !self.admit_pull(now, &p, len) {
            tracing::warn!(target: "teleport::session", session = self.id, %seq, uri = %p.uri,
                "pull reuses the seq of a pull still being handled; dropped");
            return;
        }
        let routed = header.and_then(|()| {
            // After our going-away notice the peer's calls are still
            // served: it may have sent them before it read the notice.
            if matches!(self.state, State::Closing { .. }) && !self.notice_sent {
                return Err(Rerror::conn_closed().with_detail("session is closing"));
            }
            let path = decode_path(p.uri.path()).map_err(Rerror::bad_packet)?;
            self.shared
                .router
                .route(RouteKind::Pull, &path)
                .map(|r| (r.handler.clone(), r.plugins.cloned()))
                .ok_or_else(Rerror::not_found)
        });
        let routed = routed.and_then(|(h, route)| {
            if let Some(route) = &route {
                if let Some(inc) = self.incoming.get_mut(&seq.0) {
                    inc.plugins = Some(route.clone());
                }
                // The route's own plugins see the routed packet; one may
                // take it over (and answer it).
                if self.route_hooks(route, now, Some(len), |pl, ctx| {
                    pl.after_read_header(ctx, &mut p)
                })? {
                    return Ok(None);
                }
            }
            self.hooks(now, None, |pl, ctx| pl.after_read_body(ctx, &mut p))?;
            if let Some(route) = &route {
                self.route_hooks(route, now, None, |pl, ctx| pl.after_read_body(ctx, &mut p))?;
            }
            Ok(Some(h))
        });
        match routed {
            Ok(Some(handler)) => {
                let reply_codec = if self.shared.codecs.get(p.body_codec).is_ok() {
                    p.body_codec
                } else {
                    self.shared.config.default_codec
                };
                self.events.push_back(Event::Pull(IncomingPull {
                    seq,
                    packet: p,
                    handler,
                    reply_codec,
                }));
            }
            Ok(None) => {}
            Err(e) => {
                let _ = self.reply(now, seq, Err(e));
            }
        }
    }

    fn on_push(&mut self, now: Instant, mut p: Packet, header: Result<(), Rerror>) {
        if header.is_ok() && p.uri.path() == GOING_AWAY_URI.as_bytes() {
            self.start_moving(now);
            return;
        }
        let routed = header.and_then(|()| {
            let path = decode_path(p.uri.path()).map_err(Rerror::bad_packet)?;
            self.shared
                .router
                .route(RouteKind::Push, &path)
                .map(|r| (r.handler.clone(), r.plugins.cloned()))
                .ok_or_else(Rerror::not_found)
        });
        let routed = routed.and_then(|(h, route)| {
            if let Some(route) = &route {
                if self.route_hooks(route, now, None, |pl, ctx| {
                    pl.after_read_header(ctx, &mut p)
                })? {
                    return Ok(None);
                }
            }
            self.hooks(now, None, |pl, ctx| pl.after_read_body(ctx, &mut p))?;
            if let Some(route) = &route {
                self.route_hooks(route, now, None, |pl, ctx| pl.after_read_body(ctx, &mut p))?;
            }
            Ok(Some(h))
        });
        match routed {
            Ok(Some(handler)) => self
                .events
                .push_back(Event::Push(IncomingPush { packet: p, handler })),
            Ok(None) => self.apply_actions(now),
            Err(e) => {
                self.stats.dropped_pushes += 1;
                tracing::warn!(target: "teleport::session", session = self.id, uri = %p.uri, error = %e, "push dropped");
            }
        }
    }

    fn on_reply(&mut self, now: Instant, mut p: Packet, header: Result<(), Rerror>, len: usize) {
        let seq = p.seq;
        let Some(pend) = self.pending.remove(&seq.0) else {
            self.stats.unmatched_replies += 1;
            tracing::warn!(target: "teleport::session", session = self.id, seq = %p.seq, uri = %p.uri,
                "reply matches no pending pull; dropped");
            return;
        };
        if let Some(d) = pend.deadline {
            self.deadlines.remove(&(d, seq.0));
        }
        let result = header
            .and_then(|()| self.hooks(now, None, |pl, ctx| pl.after_read_body(ctx, &mut p)))
            .and_then(|_| match Rerror::from_meta(&p.meta) {
                Some(e) => Err(e),
                None => Ok(p),
            });
        self.resolve(now, seq, pend, result, Some(len));
        self.check_drained(now);
    }

    /// Ends one of our pulls: logs, plugins, then the event (or the
    /// plugin's callback).
    fn resolve(
        &mut self,
        now: Instant,
        seq: Seq,
        pend: Pending<T>,
        result: Result<Packet, Rerror>,
        size: Option<usize>,
    ) {
        let elapsed = now.saturating_duration_since(pend.started);
        log::pull_done(
            &self.shared.config,
            self.id,
            seq,
            &pend.uri,
            &result,
            size,
            elapsed,
        );
        let _ = self.hooks(now, None, |pl, ctx| {
            pl.on_call_done(
                ctx,
                &CallDone {
                    direction: Direction::Outgoing,
                    uri: &pend.uri,
                    elapsed,
                    error: result.as_ref().err(),
                },
            );
            Ok(())
        });
        match pend.origin {
            Origin::User(token) => self.events.push_back(Event::Reply {
                seq,
                token,
                result,
                elapsed,
            }),
            Origin::Plugin(i) => {
                let _ = self.hook_one(now, i, |pl, ctx| {
                    pl.on_plugin_reply(ctx, &result);
                    Ok(())
                });
            }
        }
    }

    // ---- time ----------------------------------------------------------

    /// Whether the idle and frame timers run: not while the session
    /// declines input (it chose not to read) or its input has ended.
    fn input_timers_run(&self) -> bool {
        self.wants_input()
    }

    fn frame_deadline(&self) -> Option<Instant> {
        if !self.input_timers_run() {
            return None;
        }
        let limit = self.shared.config.frame_timeout?;
        self.partial_since?.checked_add(limit)
    }

    /// The idle timer runs while no call is in flight and input is wanted,
    /// from the last read or the last time that began to hold, whichever
    /// is later.
    fn idle_deadline(&self) -> Option<Instant> {
        let idle = self.shared.config.idle_timeout?;
        if !self.input_timers_run() || !self.pending.is_empty() || !self.incoming.is_empty() {
            return None;
        }
        self.last_read.max(self.idle_from).checked_add(idle)
    }

    /// The earliest instant the session wants [`Session::handle_timeout`]
    /// called at; `None` when it waits on nothing.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut t = self.deadlines.first().map(|(d, _)| *d);
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if let State::Closing { deadline } = self.state {
            consider(Some(deadline));
        }
        consider(self.idle_deadline());
        consider(self.frame_deadline());
        consider(self.write_failed.as_ref().map(|(_, until)| *until));
        for w in &self.wakes {
            consider(*w);
        }
        t
    }

    /// Fires whatever is due at `now`: pull timeouts (exactly at their
    /// deadline, never before), the idle timeout, the close deadline,
    /// plugin timers. Calling it early or twice does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        // Reading may have resumed, or the last call ended, since the last
        // look (a flush makes room without a clock): the timers start
        // afresh from then, not from before.
        self.observe(now);
        while let Some(&(d, seq)) = self.deadlines.first() {
            if d > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(pend) = self.pending.remove(&seq) {
                self.stats.timeouts += 1;
                let e = Rerror::timeout().with_detail(format!("no reply to {} in time", pend.uri));
                self.resolve(now, Seq(seq), pend, Err(e), None);
            }
        }
        if let Some((e, until)) = &self.write_failed {
            if *until <= now {
                let e = e.clone();
                self.abort(now, CloseReason::Io(e));
                return;
            }
        }
        if let (Some(at), Some(idle)) = (self.idle_deadline(), self.shared.config.idle_timeout) {
            if at <= now {
                self.abort(now, CloseReason::Idle(idle));
                return;
            }
        }
        if let (Some(at), Some(limit)) = (self.frame_deadline(), self.shared.config.frame_timeout) {
            if at <= now {
                tracing::warn!(target: "teleport::session", session = self.id,
                    ?limit,
                    buffered = self.rx.len(),
                    "frame not complete in time, closing session"
                );
                self.abort(now, CloseReason::FrameTimeout(limit));
                return;
            }
        }
        for i in 0..self.wakes.len() {
            if self.wakes[i].is_some_and(|w| w <= now) {
                self.wakes[i] = None;
                let _ = self.hook_one(now, i, |pl, ctx| {
                    pl.on_timer(ctx);
                    Ok(())
                });
            }
        }
        self.apply_actions(now);
        // Calls that ended just now (timed out at the deadline, say) make
        // a clean close, not a drain timeout.
        self.check_drained(now);
        if let State::Closing { deadline } = self.state {
            if deadline <= now {
                if self.pending.is_empty() && self.incoming.is_empty() {
                    // Only the peer's end of input was awaited (after a
                    // going-away notice): nothing was cut.
                    self.finish(now, CloseReason::Local);
                } else {
                    let reason = CloseReason::DrainTimeout {
                        pulls: self.pending.len(),
                        handlers: self.incoming.len(),
                    };
                    self.answer_cut_pulls(now);
                    self.abort(now, reason);
                }
            }
        }
        self.observe(now);
    }

    // ---- output --------------------------------------------------------

    /// Moves every encoded byte into `dst` (swapping buffers when `dst` is
    /// empty, so no copy); returns how many. Write them all, in order.
    pub fn poll_transmit(&mut self, dst: &mut BytesMut) -> usize {
        if self.write_failed.is_some() {
            self.tx.clear();
            return 0;
        }
        let n = self.tx.len();
        if dst.is_empty() {
            std::mem::swap(dst, &mut self.tx);
        } else {
            dst.extend_from_slice(&self.tx);
            self.tx.clear();
        }
        n
    }

    /// Whether [`Session::poll_event`] has something to give.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Whether encoded bytes wait for [`Session::poll_transmit`].
    pub fn has_transmit(&self) -> bool {
        !self.tx.is_empty()
    }

    /// The next event, in the order they happened.
    pub fn poll_event(&mut self) -> Option<Event<H, T>> {
        self.events.pop_front()
    }

    // ---- ending --------------------------------------------------------

    fn check_drained(&mut self, now: Instant) {
        if let State::Closing { .. } = self.state {
            // After a going-away notice, the peer ending its input says it
            // sends nothing more: until then a pull of its may be on its way.
            let peer_done = !self.notice_sent || self.input_ended;
            if self.pending.is_empty() && self.incoming.is_empty() && peer_done {
                let reason = self.closing_reason.take().unwrap_or(CloseReason::Local);
                self.finish(now, reason);
            }
        }
    }

    /// At a close's deadline: each of the peer's pulls still being handled
    /// gets an error reply saying it was cut (its handler's reply, if it
    /// ever comes, is dropped), so its caller learns why at once rather
    /// than from the connection's end.
    fn answer_cut_pulls(&mut self, now: Instant) {
        if self.write_failed.is_some() {
            return;
        }
        let mut seqs: Vec<u64> = self.incoming.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            let Some(inc) = self.incoming.remove(&seq) else {
                continue;
            };
            self.incoming_bytes -= inc.bytes;
            let e = Rerror::conn_closed()
                .with_detail("the peer shut down before its handler finished (close deadline)");
            let _ = self.send_reply(now, Seq(seq), inc, Err(e));
        }
    }

    /// Fails every pending pull of ours, in seq order, with the error of
    /// `reason`.
    fn fail_pending(&mut self, now: Instant, reason: &CloseReason) {
        if self.pending.is_empty() {
            return;
        }
        let err = reason.pull_error();
        self.deadlines.clear();
        let mut pending: Vec<_> = self.pending.drain().collect();
        pending.sort_unstable_by_key(|(seq, _)| *seq);
        for (seq, pend) in pending {
            self.resolve(now, Seq(seq), pend, Err(err.clone()), None);
        }
    }

    /// Ends the session now: every pending pull fails once with the
    /// connection-closed error, unanswered peer pulls are abandoned.
    fn abort(&mut self, now: Instant, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.fail_pending(now, &reason);
        self.incoming.clear();
        self.incoming_bytes = 0;
        self.finish(now, reason);
    }

    fn finish(&mut self, now: Instant, reason: CloseReason) {
        self.state = State::Closed;
        self.closed_reason = Some(reason.clone());
        self.decoding = None;
        self.rx = BytesMut::new();
        self.wakes.iter_mut().for_each(|w| *w = None);
        self.actions.clear();
        let _ = self.hooks(now, None, |pl, ctx| {
            pl.on_disconnect(ctx, &reason);
            Ok(())
        });
        self.actions.clear();
        log::closed(self.id, &reason);
        self.events.push_back(Event::Closed(reason));
    }

    // ---- plugins -------------------------------------------------------

    /// Runs `f` for every plugin in order; stops at the first error.
    /// `Ok(true)`: a plugin swallowed the packet.
    fn hooks(
        &mut self,
        now: Instant,
        frame_len: Option<usize>,
        mut f: impl FnMut(&dyn crate::plugin::Plugin, &mut PluginCtx<'_>) -> Result<(), Rerror>,
    ) -> Result<bool, Rerror> {
        let mut ctx = PluginCtx::new(
            now,
            self.role,
            self.id,
            frame_len,
            &mut self.ext,
            &mut self.actions,
        );
        run_plugins(&self.shared.plugins, true, &mut ctx, &mut f)
    }

    fn hook_one(
        &mut self,
        now: Instant,
        i: usize,
        f: impl FnOnce(&dyn crate::plugin::Plugin, &mut PluginCtx<'_>) -> Result<(), Rerror>,
    ) -> Result<(), Rerror> {
        let Some(plugin) = self.shared.plugins.iter().nth(i) else {
            return Ok(());
        };
        let mut ctx = PluginCtx::new(
            now,
            self.role,
            self.id,
            None,
            &mut self.ext,
            &mut self.actions,
        );
        ctx.plugin = i;
        f(&**plugin, &mut ctx)
    }

    /// Carries out what hooks asked for. Bounded, so plugins that keep
    /// asking cannot loop forever.
    fn apply_actions(&mut self, now: Instant) {
        for _ in 0..64 {
            if self.actions.is_empty() {
                return;
            }
            for action in std::mem::take(&mut self.actions) {
                match action {
                    Action::Pull {
                        plugin,
                        packet,
                        timeout,
                    } => {
                        if let Err((e, _)) =
                            self.pull_inner(now, packet, timeout, Origin::Plugin(plugin))
                        {
                            let _ = self.hook_one(now, plugin, |pl, ctx| {
                                pl.on_plugin_reply(ctx, &Err(e));
                                Ok(())
                            });
                        }
                    }
                    Action::Push(packet) => {
                        if let Err(e) = self.push_inner(now, packet, true) {
                            tracing::debug!(target: "teleport::session", session = self.id, error = %e, "plugin push refused");
                        }
                    }
                    Action::Reply { seq, result } => {
                        if let Err(e) = self.reply(now, seq, result) {
                            tracing::debug!(target: "teleport::session", session = self.id, error = %e, "plugin reply refused");
                        }
                    }
                    Action::Close(e) => {
                        tracing::info!(target: "teleport::session", session = self.id, error = %e, "plugin closes the session");
                        self.abort(now, CloseReason::Plugin(e));
                    }
                    Action::WakeAt { plugin, at } => {
                        if self.state != State::Closed {
                            if let Some(w) = self.wakes.get_mut(plugin) {
                                *w = Some(at);
                            }
                        }
                    }
                }
            }
        }
        tracing::warn!(target: "teleport::session", session = self.id,
            "plugins kept queueing actions; the rest were dropped"
        );
        self.actions.clear();
    }
}
