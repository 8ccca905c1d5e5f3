//! What the owner of a connection does, whatever the runtime: carry out
//! commands, start handlers, deliver replies, re-dial, and clean up.
//!
//! An adapter's connection task (or poll loop) owns one [`Driver`] and one
//! [`CoreSession`] per connection. It only adds the waiting: on the socket,
//! on commands, on finished handlers and on the core's deadline.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use teleport_core::{CloseReason, Event, Packet, Rerror, Role, Seq, State};
use tokio::sync::{mpsc, oneshot};

use crate::handler::{BoxFuture, Handler, PullCtx, PushCtx};
use crate::registry::PeerCore;
use crate::session::{Command, Session};

/// What a pull's caller waits on.
pub type Token = oneshot::Sender<Result<Packet, Rerror>>;

/// The core session as every adapter drives it.
pub type CoreSession = teleport_core::Session<Handler, Token>;

/// A finished handler: the pull's seq and its reply, or `None` for a push.
pub type Done = Option<(Seq, Result<Packet, Rerror>)>;

/// Most commands taken in one turn, so one busy handle cannot starve the
/// socket.
pub const BUDGET: usize = 256;

/// The runtime-independent state of a connection's owner.
pub struct Driver {
    session: Session,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    peer: Arc<PeerCore>,
    role: Role,
    dial_addr: Option<String>,
    close_waiters: Vec<oneshot::Sender<()>>,
    close_requested: bool,
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
    ) -> Self {
        Driver {
            session,
            cmd_rx,
            peer,
            role,
            dial_addr,
            close_waiters: Vec::new(),
            close_requested: false,
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

    /// The command channel (to wait on it).
    pub fn commands(&mut self) -> &mut mpsc::UnboundedReceiver<Command> {
        &mut self.cmd_rx
    }

    /// A core session for a new connection, with `backlog` (commands that
    /// waited for a re-dial) carried out, and closing at once if the peer
    /// is shutting down.
    pub fn open(&mut self, now: Instant, backlog: &mut Vec<Command>) -> CoreSession {
        let id = self.session.id();
        let mut core = CoreSession::new(self.session.shared().clone(), self.role, id, now);
        tracing::info!(session = id, remote = %self.session.remote_addr(), role = ?self.role, "session open");
        for cmd in backlog.drain(..) {
            self.on_command(&mut core, cmd, now);
        }
        if self.peer.is_shutting_down() && core.state() == State::Open {
            core.close_by(now, self.peer.shutdown_deadline().unwrap_or(now));
        }
        core
    }

    /// Carries out one command.
    pub fn on_command(&mut self, core: &mut CoreSession, cmd: Command, now: Instant) {
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
            Command::Close { deadline, done } => {
                self.close_requested = true;
                self.close_waiters.extend(done);
                match deadline {
                    Some(d) => core.close_by(now, d),
                    None => core.close(now),
                }
            }
        }
    }

    /// Carries out every queued command, up to [`BUDGET`]; whether any was.
    pub fn take_commands(&mut self, core: &mut CoreSession, now: Instant) -> bool {
        let mut any = false;
        for _ in 0..BUDGET {
            match self.cmd_rx.try_recv() {
                Ok(c) => {
                    any = true;
                    self.on_command(core, c, now);
                }
                Err(_) => break,
            }
        }
        any
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
        let mut closed = None;
        while let Some(ev) = core.poll_event() {
            match ev {
                Event::Reply { token, result, .. } => {
                    let _ = token.send(result);
                }
                Event::Closed(reason) => closed = Some(reason),
                ev => self.start_handler(core, ev, now, spawn),
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
        let (seq, mut fut): (Option<Seq>, BoxFuture<Done>) = match ev {
            Event::Pull(p) => {
                let seq = p.seq;
                let Handler::Pull(f) = p.handler else {
                    let _ = core.reply(
                        now,
                        seq,
                        Err(Rerror::internal("push handler routed as pull")),
                    );
                    return;
                };
                let ctx = PullCtx {
                    session: self.session.clone(),
                    packet: p.packet,
                    reply_codec: p.reply_codec,
                };
                let made = std::panic::catch_unwind(AssertUnwindSafe(|| f(ctx)));
                let fut: BoxFuture<Done> = match made {
                    Ok(fut) => Box::pin(fut.map(move |r| Some((seq, r)))),
                    Err(panic) => Box::pin(std::future::ready(Some((seq, Err(panicked(&*panic)))))),
                };
                (Some(seq), fut)
            }
            Event::Push(p) => {
                let Handler::Push(f) = p.handler else {
                    return;
                };
                let ctx = PushCtx {
                    session: self.session.clone(),
                    packet: p.packet,
                };
                match std::panic::catch_unwind(AssertUnwindSafe(|| f(ctx))) {
                    Ok(fut) => (None, Box::pin(fut.map(|()| None))),
                    Err(panic) => {
                        tracing::error!(session = self.session.id(), error = %panicked(&*panic), "push handler panicked");
                        return;
                    }
                }
            }
            _ => return,
        };
        let waker = futures_util::task::noop_waker_ref();
        let first = std::panic::catch_unwind(AssertUnwindSafe(|| {
            fut.as_mut().poll(&mut Context::from_waker(waker))
        }));
        match first {
            Ok(Poll::Ready(done)) => finish_handler(core, done, now),
            // Whoever runs it next polls it with a real waker.
            Ok(Poll::Pending) => spawn(Box::pin(async move {
                match AssertUnwindSafe(fut).catch_unwind().await {
                    Ok(done) => done,
                    Err(panic) => seq.map(|s| (s, Err(panicked(&*panic)))),
                }
            })),
            Err(panic) => {
                let msg = panicked(&*panic);
                tracing::error!(session = self.session.id(), error = %msg, "handler panicked");
                if let Some(s) = seq {
                    finish_handler(core, Some((s, Err(msg))), now);
                }
            }
        }
    }

    /// Where to re-dial after the connection ended this way, if anywhere:
    /// a dialed session with redials configured, not closed on purpose.
    pub fn redial_target(&self, reason: &CloseReason) -> Option<String> {
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

    /// Waits for the next command, then re-dials with backoff (`connect`,
    /// `sleep`) before carrying it out: the command goes to `backlog` for
    /// [`Driver::open`]. Pulls in flight at the break already failed;
    /// nothing is re-sent. `None`: closed meanwhile, or the handles are
    /// gone.
    pub async fn redial_when_used<S, C, CF, SF>(
        &mut self,
        addr: &str,
        backlog: &mut Vec<Command>,
        connect: C,
        sleep: impl Fn(Duration) -> SF,
    ) -> Option<S>
    where
        C: Fn(String) -> CF,
        CF: Future<Output = std::io::Result<S>>,
        SF: Future<Output = ()>,
    {
        loop {
            let cmd = self.cmd_rx.recv().await?;
            if let Command::Close { done, .. } = cmd {
                self.close_requested = true;
                self.close_waiters.extend(done);
                return None;
            }
            let cfg = self.peer.config();
            let mut wait = cfg.redial_interval;
            let mut last_err = None;
            for attempt in 1..=cfg.redial_times {
                match connect(addr.to_string()).await {
                    Ok(s) => {
                        tracing::info!(session = self.session.id(), %addr, attempt, "redialed");
                        backlog.push(cmd);
                        return Some(s);
                    }
                    Err(e) => {
                        tracing::warn!(session = self.session.id(), %addr, attempt, error = %e, "redial failed");
                        last_err = Some(e);
                        sleep(wait).await;
                        wait = wait.saturating_mul(2);
                    }
                }
            }
            let detail = last_err.map(|e| e.to_string()).unwrap_or_default();
            refuse(cmd, Rerror::dial_failed(detail));
        }
    }

    /// The session is over for good: queued commands fail, the registry
    /// forgets it, and `close()` callers return.
    pub fn finish(mut self) {
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            refuse(cmd, Rerror::conn_closed().with_detail("session is closed"));
        }
        self.peer.forget(self.session.id());
        // Last, so a `close().await` returns on a session that reads closed.
        for w in self.close_waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// Sends a finished handler's reply (a push has none).
pub fn finish_handler(core: &mut CoreSession, done: Done, now: Instant) {
    if let Some((seq, result)) = done {
        if let Err(e) = core.reply(now, seq, result) {
            tracing::debug!(session = core.id(), %seq, error = %e, "reply not sent");
        }
    }
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

/// Answers a command that will not be carried out.
pub fn refuse(cmd: Command, e: Rerror) {
    match cmd {
        Command::Pull { tx, .. } => {
            let _ = tx.send(Err(e));
        }
        Command::Push { tx, .. } => {
            let _ = tx.send(Err(e));
        }
        Command::Close { done, .. } => {
            if let Some(d) = done {
                let _ = d.send(());
            }
        }
    }
}
