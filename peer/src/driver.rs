//! What the owner of a connection does, whatever the runtime: carry out
//! commands, start handlers, deliver replies, re-dial, and clean up.
//!
//! An adapter's connection task (or poll loop) owns one [`Driver`] and one
//! [`CoreSession`] per connection. It only adds the waiting: on the socket,
//! on commands, on finished handlers and on the core's deadline.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use teleport_core::{AnyProto, CloseReason, Event, Packet, ProtoError, Rerror, Role, Seq, State};
use tokio::sync::{mpsc, oneshot};

use crate::direct::{ConnWrite, Live, SharedConn};
use crate::handler::{BoxFuture, Handler, PullCtx, PullFn, PushCtx, PushFn};
use crate::registry::{Abort, PeerCore, ProtoFunc, SessionStart};
use crate::session::{Command, DirectPath, Session, Wake};
use crate::trace::{Kind, Outcome, ServerTrace, Traced};

/// What a pull's caller waits on.
pub type Token = oneshot::Sender<Result<Packet, Rerror>>;

/// The core session as every adapter drives it: its proto is chosen per
/// connection ([`teleport_core::AnyProto`]).
pub type CoreSession = teleport_core::Session<Handler, Token, AnyProto>;

/// What a handler (or a frame's decoding, run away from the connection's
/// owner) hands back to the owner when it is over.
#[derive(Debug)]
pub enum Done {
    /// A pull handler's reply to the pull `seq`.
    Reply(Seq, Result<Packet, Rerror>),
    /// A push handler finished (it answers nothing).
    Push,
    /// A frame decoded away from the owner ([`teleport_core::Event::Decode`]).
    Decoded(Result<Packet, ProtoError>),
    /// The thread decoding a frame went away without an answer (its pool
    /// was shut down): the session cannot go on.
    DecodeLost,
}

/// The longest wait between two re-dial attempts (they double from
/// `redial_interval`).
pub const MAX_REDIAL_WAIT: Duration = Duration::from_secs(5);

/// How long after a shutdown's deadline a session task may still take to
/// flush its last bytes before it is cancelled.
pub const FLUSH_GRACE: Duration = Duration::from_millis(500);

/// How long a closing session may take to flush its last bytes before
/// its connection is dropped.
pub const FINAL_FLUSH: Duration = Duration::from_secs(2);

/// Most commands taken in one turn, so one busy handle cannot starve the
/// socket.
pub const BUDGET: usize = 256;

/// Frames whose transfer filters produce more than this (a large gzip
/// body) are decoded on the peer's decoding threads, not by the
/// connection's owner (see `SessionConfig::inline_decode_limit`): a
/// 16 MiB inflation takes tens of milliseconds, which would stall every
/// other session the owner's thread drives.
pub const INLINE_DECODE_LIMIT: usize = 256 << 10;

/// The runtime-independent state of a connection's owner.
pub struct Driver {
    session: Session,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    peer: Arc<PeerCore>,
    role: Role,
    dial_addr: Option<String>,
    close_waiters: Vec<oneshot::Sender<()>>,
    close_requested: bool,
    /// How the last connection ended, for what is refused afterwards.
    last_reason: Option<CloseReason>,
    /// Makes each connection's proto (`None`: the fast proto).
    proto: Option<ProtoFunc>,
    /// Calls made after the peer said it is going away, before the
    /// connection was handed over (or, for an adapter that does not hand
    /// it over, until it ends): they go out first over the next one.
    held: Vec<Command>,
}

impl Driver {
    /// The owner of `session`, reading its commands from `cmd_rx`.
    /// `dial_addr` is where to re-dial, for a dialed session.
    pub fn new(
        session: Session,
        cmd_rx: mpsc::UnboundedReceiver<Command>,
        peer: Arc<PeerCore>,
        role: Role,
        dial_addr: Option<String>,
        proto: Option<ProtoFunc>,
    ) -> Self {
        Driver {
            proto,
            session,
            cmd_rx,
            peer,
            role,
            dial_addr,
            close_waiters: Vec::new(),
            close_requested: false,
            last_reason: None,
            held: Vec::new(),
        }
    }

    /// The session handle.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The peer.
    pub fn peer(&self) -> &Arc<PeerCore> {
        &self.peer
    }

    /// Whether commands wait to be taken.
    pub fn has_commands(&self) -> bool {
        !self.cmd_rx.is_empty()
    }

    /// The next queued command, if one is there.
    fn try_take(&mut self) -> Result<Command, mpsc::error::TryRecvError> {
        let cmd = self.cmd_rx.try_recv()?;
        self.session.0.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(cmd)
    }

    /// The next command; `None` once every handle is gone.
    async fn take(&mut self) -> Option<Command> {
        let cmd = self.cmd_rx.recv().await?;
        self.session.0.queued.fetch_sub(1, Ordering::AcqRel);
        Some(cmd)
    }

    /// A core session for a new connection, with `backlog` (commands that
    /// waited for a re-dial) carried out, and going away at once if the
    /// peer is shutting down.
    pub fn open(&mut self, now: Instant, backlog: &mut Vec<Command>) -> CoreSession {
        let id = self.session.id();
        let shared = self.session.shared().clone();
        let proto = AnyProto::new(
            self.proto.as_deref(),
            shared.config.read_limit,
            &shared.xfers,
        );
        let mut core = CoreSession::with_proto(shared, self.role, id, proto, now);
        tracing::info!(target: "teleport::peer", session = id, remote = %self.session.remote_addr(), role = ?self.role, "session open");
        for cmd in backlog.drain(..) {
            self.on_command(&mut core, cmd, now);
        }
        // A connection accepted as the shutdown began (its listener had not
        // seen it yet) is told to move on at once, as the others were: what
        // its peer sends before it reads the notice is still served.
        if self.peer.is_shutting_down() && core.state() == State::Open {
            core.go_away(now, self.peer.shutdown_deadline().unwrap_or(now));
        }
        core
    }

    /// Whether this session moves to a new connection when its peer says
    /// it is going away (it re-dials), rather than ending with the old one.
    pub fn moves_on_notice(&self) -> bool {
        self.dial_addr.is_some()
    }

    /// The peer of this session's connection said it is going away
    /// ([`teleport_core::GOING_AWAY_URI`]): the connection goes on under a
    /// session of its own until the calls made on it are over, while this
    /// one dials the same address again for the calls made from now on
    /// (the adapter then ends this connection with
    /// [`CloseReason::GoingAway`]). The new session is registered with the
    /// peer (a shutdown waits for it, and closes it, like any other); it
    /// never re-dials. `start` gets its driver (whose first connection is
    /// the moved one: see [`Driver::adopt`]), starts what runs it, and
    /// returns how to abort that; `wake` is its command hook, for a poll
    /// loop.
    pub fn hand_over(&self, wake: Option<Wake>, start: impl FnOnce(Driver) -> Abort) -> Session {
        let conn = SessionStart::new(
            self.session.remote_addr().clone(),
            self.session.local_addr().clone(),
            self.role,
        )
        .proto(self.proto.clone())
        .wake(wake);
        let from = self.session.id();
        self.peer.start_session(conn, |driver| {
            tracing::info!(target: "teleport::peer", session = from, moved_to = driver.session().id(),
                remote = %self.session.remote_addr(),
                "the peer is going away: calls made on its connection finish there, new ones go over a new connection");
            start(driver)
        })
    }

    /// Takes the connection handed over by [`Driver::hand_over`] as this
    /// session's own: what it shares with the session's handles.
    pub fn adopt<W: ConnWrite>(&self, live: Live<W>) -> Arc<SharedConn<W>> {
        let shared = Arc::new(SharedConn::new());
        self.set_direct_path(shared.clone());
        shared.open(live);
        shared
    }

    /// The moved connection of a session started by [`Driver::hand_over`]
    /// ended this way: the session is over (it never re-dials).
    pub fn end(mut self, reason: &CloseReason) {
        let _ = self.connection_ended(reason);
        self.finish();
    }

    /// Lets the session's handles carry out their pulls and pushes
    /// themselves when they can (see [`DirectPath`]). Once per session;
    /// later calls are ignored.
    fn set_direct_path(&self, direct: Arc<dyn DirectPath>) {
        let _ = self.session.0.direct.set(direct);
    }

    /// Carries out one command.
    pub fn on_command(&mut self, core: &mut CoreSession, cmd: Command, now: Instant) {
        match cmd {
            Command::Close { deadline, done } => {
                self.close_requested = true;
                self.close_waiters.extend(done);
                match deadline {
                    Some(d) => core.close_by(now, d),
                    None => core.close(now),
                }
            }
            Command::GoAway { deadline } => core.go_away(now, deadline),
            // The peer is going away: this connection takes no new call,
            // the next one (dialed once this one is over) does.
            call if core.is_moving() && self.dial_addr.is_some() => self.held.push(call),
            call => {
                let _ = carry_out_call(core, call, now);
            }
        }
    }

    /// Carries out every queued command, up to [`BUDGET`]; how many were.
    pub fn take_commands(&mut self, core: &mut CoreSession, now: Instant) -> usize {
        let mut taken = 0;
        while taken < BUDGET {
            match self.try_take() {
                Ok(c) => {
                    taken += 1;
                    self.on_command(core, c, now);
                }
                Err(_) => break,
            }
        }
        taken
    }

    /// Drains the core's events: replies go to their callers, handlers
    /// start (see [`Driver::start_handler`]); returns why the session
    /// closed, if it did.
    pub fn drain_events(
        &self,
        core: &mut CoreSession,
        now: Instant,
        spawn: &mut dyn FnMut(BoxFuture<Done>),
    ) -> Option<CloseReason> {
        self.drain(core, |core, call| self.run_inline(core, call, now, spawn))
    }

    /// [`Driver::drain_events`] for an adapter that runs handlers away from
    /// the connection's owner (mio's worker threads): each handler call is
    /// handed to `run` unstarted; the owner later gets its [`Done`] back
    /// and calls [`finish_handler`].
    pub fn drain_events_deferred(
        &self,
        core: &mut CoreSession,
        run: &mut dyn FnMut(HandlerCall),
    ) -> Option<CloseReason> {
        self.drain(core, |_, call| run(call))
    }

    fn drain(
        &self,
        core: &mut CoreSession,
        mut on_call: impl FnMut(&mut CoreSession, HandlerCall),
    ) -> Option<CloseReason> {
        let mut closed = None;
        while let Some(ev) = core.poll_event() {
            match ev {
                Event::Reply { token, result, .. } => {
                    let _ = token.send(result);
                }
                Event::Closed(reason) => closed = Some(reason),
                ev => {
                    if let Some(call) = self.handler_call(ev) {
                        on_call(core, call);
                    }
                }
            }
        }
        closed
    }

    /// Starts a handler. It is polled once right here: a handler that
    /// finishes without waiting (most do) costs no task; one that waits is
    /// handed to `spawn`, whose output goes to [`finish_handler`]. Panics,
    /// in the handler's synchronous part or in its future, become a 500.
    pub fn start_handler(
        &self,
        core: &mut CoreSession,
        ev: Event<Handler, Token>,
        now: Instant,
        spawn: &mut dyn FnMut(BoxFuture<Done>),
    ) {
        if let Some(call) = self.handler_call(ev) {
            self.run_inline(core, call, now, spawn);
        }
    }

    fn run_inline(
        &self,
        core: &mut CoreSession,
        call: HandlerCall,
        now: Instant,
        spawn: &mut dyn FnMut(BoxFuture<Done>),
    ) {
        match call.run_now() {
            Ok(done) => {
                // The turn's clock was read before the handler ran: where
                // its cost is logged or measured, read it again after.
                let end = if self.times_calls(core) {
                    Instant::now()
                } else {
                    now
                };
                finish_handler(core, done, end)
            }
            // Whoever runs it next polls it with a real waker.
            Err(fut) => spawn(fut),
        }
    }

    /// Whether a call's duration is looked at: logged (`count_time`, the
    /// slow-call alarm) or given to plugins (which may measure latency).
    fn times_calls(&self, core: &CoreSession) -> bool {
        let shared = core.shared();
        shared.config.count_time
            || shared.config.slow_threshold.is_some()
            || !shared.plugins.is_empty()
    }

    /// The handler call an incoming pull or push asks for (or the
    /// decoding of a frame, which is run like a handler that waits: never
    /// on the owner), not started yet (`None` for other events).
    pub fn handler_call(&self, ev: Event<Handler, Token>) -> Option<HandlerCall> {
        let session = self.session.id();
        match ev {
            Event::Decode(job) => Some(HandlerCall {
                seq: None,
                session,
                kind: CallKind::Decode(self.peer.decode(job)),
            }),
            Event::Pull(p) => {
                let seq = p.seq;
                let kind = match p.handler {
                    Handler::Pull(f) => CallKind::Pull(
                        seq,
                        f,
                        PullCtx {
                            session: self.session.clone(),
                            peer: self.peer.clone(),
                            packet: p.packet,
                            reply_codec: p.reply_codec,
                        },
                    ),
                    Handler::Push(_) => {
                        CallKind::Refused(Rerror::internal("push handler routed as pull"))
                    }
                };
                Some(HandlerCall {
                    seq: Some(seq),
                    session,
                    kind,
                })
            }
            Event::Push(p) => {
                let Handler::Push(f) = p.handler else {
                    return None;
                };
                let ctx = PushCtx {
                    session: self.session.clone(),
                    peer: self.peer.clone(),
                    packet: p.packet,
                };
                Some(HandlerCall {
                    seq: None,
                    session,
                    kind: CallKind::Push(f, ctx),
                })
            }
            _ => None,
        }
    }

    /// The connection ended this way: records it (for the shutdown
    /// report) and says where to re-dial, if anywhere: a dialed session
    /// with redials configured, not closed on purpose.
    pub fn connection_ended(&mut self, reason: &CloseReason) -> Option<String> {
        self.peer.note_close(reason);
        self.last_reason = Some(reason.clone());
        if *reason == CloseReason::GoingAway
            && !self.close_requested
            && !self.peer.is_shutting_down()
        {
            // Asked to move: dialed again whatever `redial_times` says.
            return self.dial_addr.clone();
        }
        let local_end = matches!(
            reason,
            CloseReason::Local | CloseReason::DrainTimeout { .. }
        );
        if self.close_requested
            || local_end
            || self.peer.is_shutting_down()
            || self.peer.config().redial_times == 0
        {
            return None;
        }
        self.dial_addr.clone()
    }

    /// Re-dials at once, in the background, with backoff (`connect`,
    /// `sleep`): up to `redial_times` attempts, waiting `redial_interval`
    /// before the second and doubling up to [`MAX_REDIAL_WAIT`]. Calls made
    /// meanwhile wait in `backlog` for [`Driver::open`]; pulls in flight at
    /// the break already failed, and nothing is re-sent. A close stops it.
    /// `None`: closed meanwhile, the peer is shutting down, or every
    /// attempt failed (what waited fails with 105 then, and the session is
    /// over).
    pub async fn redial<S, C, CF, SF>(
        &mut self,
        addr: &str,
        backlog: &mut Vec<Command>,
        connect: &C,
        sleep: &impl Fn(Duration) -> SF,
    ) -> Option<S>
    where
        C: Fn(String) -> CF,
        CF: Future<Output = std::io::Result<S>>,
        SF: Future<Output = ()>,
    {
        use futures_util::future::{select, Either};
        let cfg = self.peer.config();
        // Calls kept back since the peer said it was going away go first.
        let mut held = std::mem::take(&mut self.held);
        held.append(backlog);
        *backlog = held;
        let attempts = match self.last_reason {
            Some(CloseReason::GoingAway) => cfg.redial_times.max(1),
            _ => cfg.redial_times,
        };
        let mut wait = cfg.redial_interval;
        let mut last_err = None;
        for attempt in 1..=attempts {
            if self.peer.is_shutting_down() {
                break;
            }
            // An attempt (or a wait between two) and the commands that
            // arrive meanwhile: a close ends the redial at once.
            let this_wait = wait;
            let step = async {
                if attempt > 1 {
                    sleep(this_wait).await;
                }
                connect(addr.to_string()).await
            };
            let mut step = std::pin::pin!(step);
            let outcome = loop {
                let next = {
                    let recv = std::pin::pin!(self.take());
                    match select(step.as_mut(), recv).await {
                        Either::Left((r, _)) => Either::Left(r),
                        Either::Right((cmd, _)) => Either::Right(cmd),
                    }
                };
                match next {
                    Either::Left(r) => break r,
                    Either::Right(Some(Command::Close { done, .. })) => {
                        self.close_requested = true;
                        self.close_waiters.extend(done);
                        refuse_all(backlog, closed_error(None));
                        return None;
                    }
                    Either::Right(Some(cmd)) => backlog.push(cmd),
                    // Every handle is gone: nobody can use the session.
                    Either::Right(None) => return None,
                }
            };
            match outcome {
                Ok(s) => {
                    tracing::info!(target: "teleport::peer", session = self.session.id(), %addr, attempt, "redialed");
                    return Some(s);
                }
                Err(e) => {
                    tracing::warn!(target: "teleport::peer", session = self.session.id(), %addr, attempt, error = %e, "redial failed");
                    last_err = Some(e);
                    if attempt > 1 {
                        wait = wait.saturating_mul(2).min(MAX_REDIAL_WAIT);
                    }
                }
            }
        }
        let detail = match last_err {
            Some(e) => format!("{addr}: {e}"),
            None => format!("{addr}: the peer is shutting down"),
        };
        refuse_all(backlog, Rerror::dial_failed(detail));
        None
    }

    /// Runs the session over `first`, then, as configured, over each
    /// re-dialed connection, until it is closed for good; then
    /// [`Driver::finish`]. The connections are shared with the session's
    /// callers through one [`SharedConn`], installed as its direct path:
    /// `conn` runs one connection to its end with it (opening it with
    /// [`SharedConn::open`]); `connect` and `sleep` are the runtime's, for
    /// re-dialing.
    pub async fn run<S, W, C, CF, SF>(
        mut self,
        first: S,
        mut conn: impl AsyncFnMut(&mut Driver, S, Arc<SharedConn<W>>, &mut Vec<Command>) -> CloseReason,
        connect: C,
        sleep: impl Fn(Duration) -> SF,
    ) where
        W: ConnWrite,
        C: Fn(String) -> CF,
        CF: Future<Output = std::io::Result<S>>,
        SF: Future<Output = ()>,
    {
        let shared = Arc::new(if self.moves_on_notice() {
            SharedConn::<W>::moving_on_notice()
        } else {
            SharedConn::<W>::new()
        });
        self.set_direct_path(shared.clone());
        let mut next = Some(first);
        let mut backlog = Vec::new();
        while let Some(stream) = next.take() {
            let reason = conn(&mut self, stream, shared.clone(), &mut backlog).await;
            if let Some(addr) = self.connection_ended(&reason) {
                next = self.redial(&addr, &mut backlog, &connect, &sleep).await;
            }
        }
        self.finish();
    }

    /// The session is over for good: queued commands fail, the registry
    /// forgets it, and `close()` callers return.
    pub fn finish(mut self) {
        // The reason first: a call that finds the channel closed reads it.
        let refusal = closed_error(self.last_reason.as_ref());
        refuse_all(&mut self.held, refusal.clone());
        self.session.set_closed(self.last_reason.take());
        self.cmd_rx.close();
        // Until the channel says no send is in flight: a caller that got in
        // before the close may still be adding its command, which must be
        // refused too, not left unanswered.
        loop {
            match self.try_take() {
                Ok(cmd) => refuse(cmd, refusal.clone()),
                Err(mpsc::error::TryRecvError::Empty) => std::thread::yield_now(),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        self.peer.forget(self.session.id());
        // Last, so a `close().await` returns on a session that reads closed.
        for w in self.close_waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// A routed pull or push whose handler has not been called yet: an
/// adapter calls [`HandlerCall::start`] where it runs handlers (inline, a
/// task, a worker thread).
pub struct HandlerCall {
    seq: Option<Seq>,
    session: u64,
    kind: CallKind,
}

enum CallKind {
    Pull(Seq, Arc<PullFn>, PullCtx),
    Push(Arc<PushFn>, PushCtx),
    Refused(Rerror),
    Decode(BoxFuture<Done>),
}

impl std::fmt::Debug for HandlerCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerCall")
            .field("seq", &self.seq)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl HandlerCall {
    /// The seq of the pull to answer; `None` for a push.
    pub fn seq(&self) -> Option<Seq> {
        self.seq
    }

    /// The id of the session the call came on.
    pub fn session_id(&self) -> u64 {
        self.session
    }

    /// Calls the handler and polls its future once, right here: a handler
    /// that does not wait (most) is done without another allocation. One
    /// that waits comes back as a future to run elsewhere, wrapped like
    /// [`HandlerCall::start`]'s. Panics are caught as there. The call and
    /// every poll are inside the call's span and trace context.
    pub fn run_now(self) -> Result<Done, BoxFuture<Done>> {
        let HandlerCall { seq, session, kind } = self;
        let waker = futures_util::task::noop_waker_ref();
        let mut cx = Context::from_waker(waker);
        match kind {
            CallKind::Refused(e) => Ok(refused(seq, e)),
            CallKind::Decode(fut) => Err(fut),
            CallKind::Pull(seq, f, ctx) => {
                let trace = ServerTrace::start(Kind::Pull, &ctx.session, &ctx.packet);
                let waiting = 'first: {
                    let _in = trace.enter();
                    let e = match std::panic::catch_unwind(AssertUnwindSafe(|| f(ctx))) {
                        Ok(mut fut) => match std::panic::catch_unwind(AssertUnwindSafe(|| {
                            fut.as_mut().poll(&mut cx)
                        })) {
                            Ok(Poll::Ready(r)) => {
                                trace.finish(r.as_ref().err());
                                return Ok(Done::Reply(seq, r));
                            }
                            Ok(Poll::Pending) => break 'first fut,
                            Err(panic) => logged(session, &*panic),
                        },
                        Err(panic) => logged(session, &*panic),
                    };
                    trace.finish(Some(&e));
                    return Ok(Done::Reply(seq, Err(e)));
                };
                Err(Box::pin(Traced::new(
                    pull_rest(seq, session, waiting),
                    trace,
                )))
            }
            CallKind::Push(f, ctx) => {
                let trace = ServerTrace::start(Kind::Push, &ctx.session, &ctx.packet);
                let waiting = 'first: {
                    let _in = trace.enter();
                    match std::panic::catch_unwind(AssertUnwindSafe(|| f(ctx))) {
                        Ok(mut fut) => match std::panic::catch_unwind(AssertUnwindSafe(|| {
                            fut.as_mut().poll(&mut cx)
                        })) {
                            Ok(Poll::Ready(())) => {}
                            Ok(Poll::Pending) => break 'first fut,
                            Err(panic) => {
                                logged(session, &*panic);
                            }
                        },
                        Err(panic) => {
                            logged(session, &*panic);
                        }
                    }
                    trace.finish(None);
                    return Ok(Done::Push);
                };
                Err(Box::pin(Traced::new(push_rest(session, waiting), trace)))
            }
        }
    }

    /// Calls the handler. A panic, in the call or in any poll of the
    /// future it returns, is caught: a pull's becomes a 500 reply, a
    /// push's is logged. So the future never panics. The call and every
    /// poll are inside the call's span and trace context.
    pub fn start(self) -> BoxFuture<Done> {
        let HandlerCall { seq, session, kind } = self;
        match kind {
            CallKind::Refused(e) => Box::pin(std::future::ready(refused(seq, e))),
            CallKind::Decode(fut) => fut,
            CallKind::Pull(seq, f, ctx) => {
                let trace = ServerTrace::start(Kind::Pull, &ctx.session, &ctx.packet);
                let called = {
                    let _in = trace.enter();
                    std::panic::catch_unwind(AssertUnwindSafe(|| f(ctx)))
                        .map_err(|panic| logged(session, &*panic))
                };
                match called {
                    Ok(fut) => Box::pin(Traced::new(pull_rest(seq, session, fut), trace)),
                    Err(e) => {
                        let done = Done::Reply(seq, Err(e));
                        trace.finish(done.error());
                        Box::pin(std::future::ready(done))
                    }
                }
            }
            CallKind::Push(f, ctx) => {
                let trace = ServerTrace::start(Kind::Push, &ctx.session, &ctx.packet);
                let called = {
                    let _in = trace.enter();
                    std::panic::catch_unwind(AssertUnwindSafe(|| f(ctx)))
                        .map_err(|panic| logged(session, &*panic))
                };
                match called {
                    Ok(fut) => Box::pin(Traced::new(push_rest(session, fut), trace)),
                    Err(_) => {
                        trace.finish(None);
                        Box::pin(std::future::ready(Done::Push))
                    }
                }
            }
        }
    }
}

/// The rest of a pull handler's run: its reply, or the 500 a panic in a
/// poll becomes.
fn pull_rest(
    seq: Seq,
    session: u64,
    fut: BoxFuture<Result<Packet, Rerror>>,
) -> impl Future<Output = Done> + Send + Unpin {
    AssertUnwindSafe(fut.map(move |r| Done::Reply(seq, r)))
        .catch_unwind()
        .map(move |r| r.unwrap_or_else(|panic| Done::Reply(seq, Err(logged(session, &*panic)))))
}

/// The rest of a push handler's run; a panic in a poll is logged.
fn push_rest(session: u64, fut: BoxFuture<()>) -> impl Future<Output = Done> + Send + Unpin {
    AssertUnwindSafe(fut.map(|()| Done::Push))
        .catch_unwind()
        .map(move |r| {
            r.unwrap_or_else(|panic| {
                logged(session, &*panic);
                Done::Push
            })
        })
}

impl Outcome for Done {
    fn error(&self) -> Option<&Rerror> {
        match self {
            Done::Reply(_, Err(e)) => Some(e),
            _ => None,
        }
    }
}

/// [`panicked`], logged.
fn logged(session: u64, panic: &(dyn std::any::Any + Send)) -> Rerror {
    let e = panicked(panic);
    tracing::error!(target: "teleport::peer", session, error = %e, "handler panicked");
    e
}

/// What a refused call is done with: an error reply for a pull.
fn refused(seq: Option<Seq>, e: Rerror) -> Done {
    match seq {
        Some(s) => Done::Reply(s, Err(e)),
        None => Done::Push,
    }
}

/// Hands what a handler (or a decoding) finished with to the core: a
/// pull's reply, a decoded frame.
pub fn finish_handler(core: &mut CoreSession, done: Done, now: Instant) {
    match done {
        Done::Reply(seq, result) => {
            if let Err(e) = core.reply(now, seq, result) {
                tracing::debug!(target: "teleport::peer", session = core.id(), %seq, error = %e, "reply not sent");
            }
        }
        Done::Push => {}
        Done::Decoded(result) => core.handle_decoded(now, result),
        Done::DecodeLost => core.handle_io_error(now, &"the frame decoder was lost"),
    }
}

/// The error a call gets once its session is over: 102, saying why the
/// session ended when that is known.
pub fn closed_error(reason: Option<&CloseReason>) -> Rerror {
    let detail = match reason {
        Some(r) => format!("session is closed: {}", r.pull_error().detail),
        None => "session is closed".to_string(),
    };
    Rerror::conn_closed().with_detail(detail)
}

/// The 500 a panic becomes.
pub fn panicked(panic: &(dyn std::any::Any + Send)) -> Rerror {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into());
    Rerror::internal(format!("handler panicked: {msg}"))
}

/// Carries out a pull or push on `core`: the caller hears of a refusal
/// at once, of a push as soon as it is queued. A close is given back.
// The command comes back whole, to be queued instead; boxing it would
// cost every call an allocation.
#[allow(clippy::result_large_err)]
pub(crate) fn carry_out_call(
    core: &mut CoreSession,
    cmd: Command,
    now: Instant,
) -> Result<(), Command> {
    match cmd {
        Command::Pull {
            packet,
            timeout,
            tx,
        } => {
            if let Err((e, tx)) = core.pull(now, packet, timeout, tx) {
                let _ = tx.send(Err(e));
            }
        }
        Command::Push { packet, tx } => {
            let _ = tx.send(core.push(now, packet).map(drop));
        }
        close @ (Command::Close { .. } | Command::GoAway { .. }) => return Err(close),
    }
    Ok(())
}

/// Refuses every command in `backlog` with `e`.
fn refuse_all(backlog: &mut Vec<Command>, e: Rerror) {
    for cmd in backlog.drain(..) {
        refuse(cmd, e.clone());
    }
}

/// Answers a command that will not be carried out.
pub fn refuse(cmd: Command, e: Rerror) {
    match cmd {
        Command::Pull { tx, .. } => {
            let _ = tx.send(Err(e));
        }
        Command::Push { tx, .. } => {
            let _ = tx.send(Err(e));
        }
        Command::GoAway { .. } => {}
        Command::Close { done, .. } => {
            if let Some(d) = done {
                let _ = d.send(());
            }
        }
    }
}
