//! The deterministic simulation harness shared by the `sim_*` tests: two
//! sessions (with their router and plugins) joined by in-memory byte pipes
//! and a virtual clock. No threads, no sleeping, no clock read after the
//! start (STYLE §8; modelled on quinn-proto's `Pair`).
//!
//! - [`Pair::step`] moves bytes one chunk each way (chunk sizes from a
//!   [`Chunks`] schedule, so frames are split and coalesced), feeds them
//!   with `handle_input`, runs the handlers and records the events.
//! - [`Pair::drive`] steps until nothing moves, with a bound that turns a
//!   livelock into a failure.
//! - [`Pair::advance`] moves the clock, firing each side's timer at exactly
//!   the instant `poll_timeout` named, and drives after each firing.
//!
//! The harness checks invariants as it goes, so every test gets them for
//! free: every pull ends exactly once (a second `Reply` for a token, or one
//! for a token never sent, panics), `Reply::elapsed` is the virtual time
//! since the pull, `Closed` comes once and nothing comes after it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use teleport_core::bytes::{Bytes, BytesMut};
use teleport_core::{
    CloseReason, CodecId, Event, IncomingPull, Packet, Rerror, Role, Router, Seq, Session, Shared,
};

/// What the test router maps a path to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handler {
    /// Replies at once with the pull's body.
    Echo,
    /// Parks the pull in [`Side::deferred`]; the test answers it later.
    Defer,
    /// Replies at once with [`FAIL_CODE`].
    Fail,
    /// Takes pushes (recorded in [`Side::pushes`]).
    Sink,
}

/// The code the [`Handler::Fail`] handler answers with.
pub const FAIL_CODE: i32 = 599;

/// What the adapter attaches to each pull: a number unique per side.
pub type Token = u64;

/// The session type under test.
pub type Sess = Session<Handler, Token>;

/// `/echo`, `/defer`, `/fail` (pulls) and `/sink` (pushes).
pub fn router() -> Router<Handler> {
    let mut r = Router::new();
    r.pull("/echo", Handler::Echo)
        .pull("/defer", Handler::Defer)
        .pull("/fail", Handler::Fail)
        .push("/sink", Handler::Sink);
    r
}

/// Defaults and [`router`].
pub fn shared() -> Shared<Handler> {
    Shared::new(router())
}

/// A pull or push packet to `path` with a string-codec body.
pub fn packet(path: &str, body: impl Into<Bytes>) -> Packet {
    let mut p = Packet::default().with_body(CodecId::STRING, body);
    p.uri = path.into();
    p
}

/// A small deterministic PRNG (xorshift64*), so no dependency is needed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded; any seed works (0 included).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// How a pipe cuts its bytes into `handle_input` calls.
#[derive(Debug, Clone)]
pub enum Chunks {
    /// Everything in flight at once (frames coalesced).
    Whole,
    /// Uniform sizes in `1..=max`.
    Random(Rng, usize),
    /// These sizes in turn, cycling (from a proptest schedule).
    Script(Vec<usize>, usize),
}

impl Chunks {
    /// One byte at a time.
    pub fn bytewise() -> Self {
        Chunks::Script(vec![1], 0)
    }

    fn next(&mut self, avail: usize) -> usize {
        let n = match self {
            Chunks::Whole => avail,
            Chunks::Random(rng, max) => rng.range(1, (*max).max(1)),
            Chunks::Script(sizes, i) => {
                let n = sizes.get(*i % sizes.len().max(1)).copied().unwrap_or(avail);
                *i += 1;
                n
            }
        };
        n.clamp(1, avail.max(1)).min(avail)
    }
}

/// One direction of the connection.
#[derive(Debug)]
pub struct Link {
    /// Bytes written by one side and not yet read by the other.
    pub pipe: BytesMut,
    /// While set, nothing is delivered (the peer goes silent); bytes wait.
    pub held: bool,
    /// How bytes are cut into reads.
    pub chunks: Chunks,
    /// Bytes delivered so far.
    pub delivered: u64,
    /// When bytes were last delivered.
    pub last_delivery: Option<Instant>,
    /// Whether the reader was told the input ended.
    pub eof_sent: bool,
    /// The socket buffers' room: the writer's queue is moved into the
    /// pipe only while the pipe holds less than this.
    pub capacity: usize,
}

impl Link {
    fn new() -> Self {
        Link {
            pipe: BytesMut::new(),
            held: false,
            chunks: Chunks::Whole,
            delivered: 0,
            last_delivery: None,
            eof_sent: false,
            capacity: usize::MAX,
        }
    }

    /// Feeds at most `limit` bytes (one chunk) to `to`, unless `to` asks
    /// not to be fed ([`Session::wants_input`]): that is how backpressure
    /// reaches the writer. A closed session is still fed (and ignores it).
    fn feed(&mut self, to: &mut Side, now: Instant, limit: usize) -> usize {
        if self.pipe.is_empty() || limit == 0 {
            return 0;
        }
        if !to.session.wants_input() && !to.session.is_closed() {
            return 0;
        }
        let n = self.chunks.next(self.pipe.len()).min(limit);
        let chunk = self.pipe.split_to(n);
        to.session.handle_input(now, &chunk);
        self.delivered += n as u64;
        self.last_delivery = Some(now);
        n
    }
}

/// How one of our pulls ended.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The pull's seq.
    pub seq: Seq,
    /// The reply, or why there is none.
    pub result: Result<Packet, Rerror>,
    /// As the event reported it.
    pub elapsed: Duration,
    /// When the pull was sent.
    pub sent_at: Instant,
    /// When the event came.
    pub at: Instant,
}

/// One end: a session, what its handlers did, and its pulls' outcomes.
pub struct Side {
    /// `"client"` or `"server"`, for messages.
    pub name: &'static str,
    /// The session under test.
    pub session: Sess,
    /// Pulls accepted by the session that have not ended: token -> (seq,
    /// sent at).
    pub outstanding: HashMap<Token, (Seq, Instant)>,
    /// Pulls that ended, by token.
    pub resolved: HashMap<Token, Resolved>,
    /// Tokens in the order their pulls ended.
    pub order: Vec<Token>,
    /// Pushes routed to a handler, in order.
    pub pushes: Vec<(Handler, Packet)>,
    /// Peer pulls parked by [`Handler::Defer`], in arrival order.
    pub deferred: Vec<IncomingPull<Handler>>,
    /// Peer pulls routed to a handler (any).
    pub pulls_routed: u64,
    /// `Closed` and when it came.
    pub closed: Option<(CloseReason, Instant)>,
    /// Frames whose decoding the session handed out (`Event::Decode`).
    pub decodes: u64,
    next_token: Token,
}

impl Side {
    fn new(name: &'static str, session: Sess) -> Self {
        Side {
            name,
            session,
            outstanding: HashMap::new(),
            resolved: HashMap::new(),
            order: Vec::new(),
            pushes: Vec::new(),
            deferred: Vec::new(),
            pulls_routed: 0,
            closed: None,
            decodes: 0,
            next_token: 0,
        }
    }

    /// Sends a pull with a fresh token; a refusal must hand the token back.
    pub fn pull(
        &mut self,
        now: Instant,
        p: Packet,
        timeout: Option<Duration>,
    ) -> Result<Token, (Rerror, Token)> {
        let token = self.next_token;
        self.next_token += 1;
        match self.session.pull(now, p, timeout, token) {
            Ok(seq) => {
                assert!(
                    self.outstanding.insert(token, (seq, now)).is_none(),
                    "{}: token {token} reused",
                    self.name
                );
                Ok(token)
            }
            Err((e, t)) => {
                assert_eq!(
                    t, token,
                    "{}: a refused pull hands its token back",
                    self.name
                );
                Err((e, t))
            }
        }
    }

    /// Handles every queued event; whether there was one.
    pub fn pump(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(ev) = self.session.poll_event() {
            any = true;
            if let Some((r, _)) = &self.closed {
                panic!("{}: event after Closed({r:?}): {ev:?}", self.name);
            }
            match ev {
                Event::Pull(p) => {
                    self.pulls_routed += 1;
                    let seq = p.seq;
                    let r = match p.handler {
                        Handler::Echo => {
                            let reply = Packet::default().with_body(p.reply_codec, p.packet.body);
                            self.session.reply(now, seq, Ok(reply))
                        }
                        Handler::Fail => self.session.reply(
                            now,
                            seq,
                            Err(Rerror::new(FAIL_CODE, "handler failed")),
                        ),
                        Handler::Defer => {
                            self.deferred.push(p);
                            Ok(())
                        }
                        Handler::Sink => panic!("{}: a pull routed to a push handler", self.name),
                    };
                    if let Err(e) = r {
                        // Only a session that ended in the meantime may
                        // refuse to answer a pull it handed out.
                        assert!(
                            self.session.is_closed(),
                            "{}: reply to {seq} refused: {e}",
                            self.name
                        );
                    }
                }
                Event::Push(p) => self.pushes.push((p.handler, p.packet)),
                Event::Decode(job) => {
                    self.decodes += 1;
                    self.session.handle_decoded(now, job.run());
                }
                Event::Reply {
                    seq,
                    token,
                    result,
                    elapsed,
                } => {
                    let Some((sent_seq, sent_at)) = self.outstanding.remove(&token) else {
                        panic!(
                            "{}: token {token} (seq {seq}) ended twice or was never sent: {result:?}",
                            self.name
                        );
                    };
                    assert_eq!(
                        sent_seq, seq,
                        "{}: token {token} ended under another seq",
                        self.name
                    );
                    assert_eq!(
                        elapsed,
                        now.duration_since(sent_at),
                        "{}: elapsed of token {token} is not the virtual time since the pull",
                        self.name
                    );
                    self.order.push(token);
                    self.resolved.insert(
                        token,
                        Resolved {
                            seq,
                            result,
                            elapsed,
                            sent_at,
                            at: now,
                        },
                    );
                }
                Event::Closed(r) => self.closed = Some((r, now)),
            }
        }
        any
    }

    /// Answers a peer pull (one taken with [`Side::take_deferred`]).
    pub fn answer(
        &mut self,
        now: Instant,
        seq: Seq,
        result: Result<Packet, Rerror>,
    ) -> Result<(), Rerror> {
        self.session.reply(now, seq, result)
    }

    /// Echoes a parked pull's body back.
    pub fn echo(&mut self, now: Instant, pull: &IncomingPull<Handler>) -> Result<(), Rerror> {
        let reply = Packet::default().with_body(pull.reply_codec, pull.packet.body.clone());
        self.session.reply(now, pull.seq, Ok(reply))
    }

    /// Takes the parked pulls out (answer them with [`Side::answer`]).
    pub fn take_deferred(&mut self) -> Vec<IncomingPull<Handler>> {
        std::mem::take(&mut self.deferred)
    }

    /// How `token`'s pull ended; panics if it has not.
    pub fn result(&self, token: Token) -> &Result<Packet, Rerror> {
        match self.resolved.get(&token) {
            Some(r) => &r.result,
            None => panic!("{}: token {token} has not ended", self.name),
        }
    }

    /// The reply body of `token`; panics on an error.
    pub fn body(&self, token: Token) -> Bytes {
        match self.result(token) {
            Ok(p) => p.body.clone(),
            Err(e) => panic!("{}: token {token} failed: {e}", self.name),
        }
    }

    /// The error of `token`; panics on a reply.
    pub fn error(&self, token: Token) -> &Rerror {
        match self.result(token) {
            Err(e) => e,
            Ok(p) => panic!("{}: token {token} succeeded: {p:?}", self.name),
        }
    }

    /// Whether `token`'s pull has ended.
    pub fn is_resolved(&self, token: Token) -> bool {
        self.resolved.contains_key(&token)
    }

    /// Why the session closed; panics if it is open.
    pub fn close_reason(&self) -> &CloseReason {
        match &self.closed {
            Some((r, _)) => r,
            None => panic!("{}: still open ({:?})", self.name, self.session.state()),
        }
    }

    /// Every pull the session accepted has ended.
    pub fn assert_all_resolved(&self) {
        assert!(
            self.outstanding.is_empty(),
            "{}: pulls never ended: {:?}",
            self.name,
            self.outstanding
        );
        assert_eq!(self.session.pending_pulls(), 0, "{}", self.name);
    }
}

/// Two sessions, two pipes, one virtual clock.
pub struct Pair {
    /// The dialer.
    pub client: Side,
    /// The acceptor.
    pub server: Side,
    /// The virtual clock: `start` plus whatever was advanced.
    pub now: Instant,
    /// When the pair was made (the only clock read).
    pub start: Instant,
    /// Client to server.
    pub c2s: Link,
    /// Server to client.
    pub s2c: Link,
    /// Model the connection's end: once a side is closed and everything it
    /// wrote was delivered, the other side gets `handle_eof`.
    pub close_connection: bool,
    /// Bound of [`Pair::drive`].
    pub max_steps: usize,
}

impl Pair {
    /// Client with `client`'s routes, plugins and config; server with
    /// `server`'s. Whole-chunk pipes.
    pub fn new(client: Shared<Handler>, server: Shared<Handler>) -> Self {
        let start = Instant::now();
        Pair {
            client: Side::new(
                "client",
                Session::new(Arc::new(client), Role::Dialer, 1, start),
            ),
            server: Side::new(
                "server",
                Session::new(Arc::new(server), Role::Acceptor, 2, start),
            ),
            now: start,
            start,
            c2s: Link::new(),
            s2c: Link::new(),
            close_connection: true,
            max_steps: 1_000_000,
        }
    }

    /// Both sides with [`shared`].
    pub fn default_pair() -> Self {
        Pair::new(shared(), shared())
    }

    /// Both pipes cut reads this way.
    pub fn chunks(mut self, c2s: Chunks, s2c: Chunks) -> Self {
        self.c2s.chunks = c2s;
        self.s2c.chunks = s2c;
        self
    }

    /// Random chunks of `1..=max` bytes both ways, from `seed`.
    pub fn random_chunks(self, seed: u64, max: usize) -> Self {
        self.chunks(
            Chunks::Random(Rng::new(seed), max),
            Chunks::Random(Rng::new(seed ^ 0xABCD), max),
        )
    }

    /// The clock since the start.
    pub fn elapsed(&self) -> Duration {
        self.now.duration_since(self.start)
    }

    /// A client pull of `body` to `path`.
    pub fn pull(
        &mut self,
        path: &str,
        body: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Token, (Rerror, Token)> {
        self.client.pull(self.now, packet(path, body), timeout)
    }

    /// A client push of `body` to `path`.
    pub fn push(&mut self, path: &str, body: impl Into<Bytes>) -> Result<Seq, Rerror> {
        self.client.session.push(self.now, packet(path, body))
    }

    /// Moves what both sessions encoded into the pipes (no delivery).
    pub fn transmit(&mut self) -> bool {
        let mut moved = 0;
        if self.c2s.pipe.len() < self.c2s.capacity {
            moved += self.client.session.poll_transmit(&mut self.c2s.pipe);
        }
        if self.s2c.pipe.len() < self.s2c.capacity {
            moved += self.server.session.poll_transmit(&mut self.s2c.pipe);
        }
        moved > 0
    }

    /// Events, transmits, one chunk each way, handlers, and the
    /// connection's end; whether anything happened.
    pub fn step(&mut self) -> bool {
        let now = self.now;
        let mut progress = self.client.pump(now) | self.server.pump(now);
        progress |= self.transmit();
        if !self.c2s.held {
            progress |= self.c2s.feed(&mut self.server, now, usize::MAX) > 0;
            progress |= self.server.pump(now);
        }
        if !self.s2c.held {
            progress |= self.s2c.feed(&mut self.client, now, usize::MAX) > 0;
            progress |= self.client.pump(now);
        }
        if self.close_connection {
            progress |= Self::hang_up(&self.client, &mut self.c2s, &mut self.server, now);
            progress |= Self::hang_up(&self.server, &mut self.s2c, &mut self.client, now);
        }
        progress
    }

    /// A closed side's connection ends once what it wrote was read.
    fn hang_up(from: &Side, link: &mut Link, to: &mut Side, now: Instant) -> bool {
        if from.closed.is_none()
            || link.eof_sent
            || link.held
            || !link.pipe.is_empty()
            || from.session.queued_bytes() > 0
        {
            return false;
        }
        link.eof_sent = true;
        to.session.handle_eof(now);
        to.pump(now);
        true
    }

    /// Steps until nothing moves; a livelock fails the test.
    pub fn drive(&mut self) {
        for _ in 0..self.max_steps {
            if !self.step() {
                return;
            }
        }
        panic!("no quiescence after {} steps (livelock?)", self.max_steps);
    }

    /// Delivers exactly `n` bytes of `s2c` (in its chunks) to the client,
    /// held or not, and runs the client's handlers.
    pub fn deliver_s2c(&mut self, n: usize) {
        self.transmit();
        assert!(
            n <= self.s2c.pipe.len(),
            "only {} bytes in flight",
            self.s2c.pipe.len()
        );
        let mut left = n;
        while left > 0 {
            let fed = self.s2c.feed(&mut self.client, self.now, left);
            assert!(fed > 0, "the client does not want input");
            left -= fed;
            self.client.pump(self.now);
        }
    }

    /// Delivers exactly `n` bytes of `c2s` to the server.
    pub fn deliver_c2s(&mut self, n: usize) {
        self.transmit();
        assert!(
            n <= self.c2s.pipe.len(),
            "only {} bytes in flight",
            self.c2s.pipe.len()
        );
        let mut left = n;
        while left > 0 {
            let fed = self.c2s.feed(&mut self.server, self.now, left);
            assert!(fed > 0, "the server does not want input");
            left -= fed;
            self.server.pump(self.now);
        }
    }

    /// The client's input ends now (whatever is in flight is lost).
    pub fn eof_to_client(&mut self) {
        self.s2c.pipe.clear();
        self.s2c.eof_sent = true;
        self.client.session.handle_eof(self.now);
        self.client.pump(self.now);
    }

    /// The server's input ends now.
    pub fn eof_to_server(&mut self) {
        self.c2s.pipe.clear();
        self.c2s.eof_sent = true;
        self.server.session.handle_eof(self.now);
        self.server.pump(self.now);
    }

    /// The earlier of the two sessions' timers.
    pub fn next_timeout(&self) -> Option<Instant> {
        [
            self.client.session.poll_timeout(),
            self.server.session.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Moves the clock to `t`, firing each side's timer at exactly the
    /// instant its `poll_timeout` names (never earlier) and driving after
    /// each firing. Bytes in flight when this is called arrive at the first
    /// firing (or at the next step): late, like a slow link. Call
    /// [`Pair::drive`] first for an instant delivery.
    pub fn advance_to(&mut self, t: Instant) {
        assert!(t >= self.now, "the clock never goes back");
        for _ in 0..100_000 {
            match self.next_timeout() {
                Some(at) if at <= t => {
                    self.now = self.now.max(at);
                    let now = self.now;
                    for side in [&mut self.client, &mut self.server] {
                        if side.session.poll_timeout().is_some_and(|w| w <= now) {
                            side.session.handle_timeout(now);
                            side.pump(now);
                        }
                    }
                    self.drive();
                }
                _ => {
                    self.now = t;
                    return;
                }
            }
        }
        panic!("timer livelock: poll_timeout keeps naming due instants");
    }

    /// [`Pair::advance_to`] `now + d`.
    pub fn advance(&mut self, d: Duration) {
        self.advance_to(self.now + d);
    }
}

/// The sizes of the whole frames at the front of `wire` (fast proto: a
/// 4-byte big-endian size that counts itself); stops at a partial one.
pub fn frame_sizes(wire: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = wire;
    while let Some(head) = rest.first_chunk::<4>() {
        let n = u32::from_be_bytes(*head) as usize;
        if n < 4 || n > rest.len() {
            break;
        }
        out.push(n);
        rest = &rest[n..];
    }
    out
}
