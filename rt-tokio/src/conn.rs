//! The task that owns one session: it alone touches the core session, so
//! nothing on the hot path takes a lock.
//!
//! Its loop waits on whichever comes first: a command from a handle, a
//! handler finishing, the socket readable, the socket writable while output
//! is pending, or the core's deadline. Then it feeds the core, runs what
//! the core's events ask for, and writes everything queued in one call.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use teleport_core::{CloseReason, Event, Packet, Rerror, Role, Seq, State};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::handler::{BoxFuture, Handler, PullCtx, PushCtx};
use crate::net::Stream;
use crate::peer::PeerInner;
use crate::session::{Command, Session};

pub(crate) type Token = oneshot::Sender<Result<Packet, Rerror>>;
pub(crate) type CoreSession = teleport_core::Session<Handler, Token>;

/// Most commands or handler results taken in one turn, so one busy source
/// cannot starve the socket.
const BUDGET: usize = 256;
/// How long a closing session may take to flush its last bytes.
const FINAL_FLUSH: Duration = Duration::from_secs(2);

thread_local! {
    /// One read buffer per worker thread, not per connection: an idle
    /// connection holds no read buffer at all.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 << 10]);
}

/// A finished handler: the pull's seq and its reply, or a push.
type Done = Option<(Seq, Result<Packet, Rerror>)>;

pub(crate) struct Driver {
    pub(crate) session: Session,
    pub(crate) cmd_rx: mpsc::UnboundedReceiver<Command>,
    pub(crate) peer: Arc<PeerInner>,
    pub(crate) role: Role,
    /// Where to re-dial, for a dialed session.
    pub(crate) dial_addr: Option<String>,
    close_waiters: Vec<oneshot::Sender<()>>,
    close_requested: bool,
}

impl Driver {
    pub(crate) fn new(
        session: Session,
        cmd_rx: mpsc::UnboundedReceiver<Command>,
        peer: Arc<PeerInner>,
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

    /// Runs the session over `stream`, re-dialing as configured, until it
    /// is closed for good.
    pub(crate) async fn run(mut self, stream: Stream) {
        let id = self.session.id();
        let mut stream = Some(stream);
        let mut backlog = Vec::new();
        while let Some(s) = stream.take() {
            let reason = match s {
                Stream::Tcp(mut t) => {
                    let (r, w) = t.split();
                    self.run_conn(r, w, &mut backlog).await
                }
                #[cfg(unix)]
                Stream::Unix(mut u) => {
                    let (r, w) = u.split();
                    self.run_conn(r, w, &mut backlog).await
                }
            };
            let local_end = matches!(
                reason,
                CloseReason::Local | CloseReason::DrainTimeout { .. }
            );
            if self.close_requested || local_end || self.peer.is_shutting_down() {
                break;
            }
            if let Some(addr) = self.dial_addr.clone() {
                if self.peer.config.redial_times > 0 {
                    stream = self.redial_when_used(&addr, &mut backlog).await;
                }
            }
        }
        // Whatever is still queued fails now rather than hanging.
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            refuse(cmd, Rerror::conn_closed().with_detail("session is closed"));
        }
        self.peer.forget(id);
        // Last, so a `close().await` returns on a session that reads closed.
        for w in self.close_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    /// Waits for the next command, then re-dials (with backoff) before
    /// carrying it out. Pulls that were in flight at the break already
    /// failed; nothing is re-sent.
    async fn redial_when_used(&mut self, addr: &str, backlog: &mut Vec<Command>) -> Option<Stream> {
        loop {
            let cmd = self.cmd_rx.recv().await?;
            if let Command::Close { done, .. } = cmd {
                self.close_requested = true;
                self.close_waiters.extend(done);
                return None;
            }
            let cfg = &self.peer.config;
            let mut wait = cfg.redial_interval;
            let mut last_err = None;
            for attempt in 1..=cfg.redial_times {
                match crate::net::connect(cfg, addr).await {
                    Ok((s, _, _)) => {
                        tracing::info!(session = self.session.id(), %addr, attempt, "redialed");
                        backlog.push(cmd);
                        return Some(s);
                    }
                    Err(e) => {
                        tracing::warn!(session = self.session.id(), %addr, attempt, error = %e, "redial failed");
                        last_err = Some(e);
                        tokio::time::sleep(wait).await;
                        wait = wait.saturating_mul(2);
                    }
                }
            }
            let detail = last_err.map(|e| e.to_string()).unwrap_or_default();
            refuse(cmd, Rerror::dial_failed(detail));
        }
    }

    fn on_command(&mut self, core: &mut CoreSession, cmd: Command, now: Instant) {
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

    /// Starts a handler. It is polled once right here: a handler that
    /// finishes without waiting (most do) costs no task spawn.
    fn start_handler(
        &self,
        tasks: &mut JoinSet<Done>,
        core: &mut CoreSession,
        ev: Event<Handler, Token>,
        now: Instant,
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
                // The handler's synchronous part runs here too: guard it.
                let made = std::panic::catch_unwind(AssertUnwindSafe(|| f(ctx)));
                let fut: BoxFuture<Done> = match made {
                    Ok(fut) => Box::pin(fut.map(move |r| Some((seq, r)))),
                    Err(panic) => Box::pin(std::future::ready(Some((seq, Err(panicked(&panic)))))),
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
                let made = std::panic::catch_unwind(AssertUnwindSafe(|| f(ctx)));
                let fut: BoxFuture<Done> = match made {
                    Ok(fut) => Box::pin(fut.map(|()| None)),
                    Err(panic) => {
                        tracing::error!(session = self.session.id(), error = %panicked(&panic), "push handler panicked");
                        return;
                    }
                };
                (None, fut)
            }
            _ => return,
        };
        let waker = futures_util::task::noop_waker_ref();
        let first = std::panic::catch_unwind(AssertUnwindSafe(|| {
            fut.as_mut().poll(&mut Context::from_waker(waker))
        }));
        match first {
            Ok(Poll::Ready(done)) => finish(core, done, now),
            Ok(Poll::Pending) => {
                // Spawning polls it again with a real waker.
                tasks.spawn(async move {
                    match AssertUnwindSafe(fut).catch_unwind().await {
                        Ok(done) => done,
                        Err(panic) => seq.map(|s| (s, Err(panicked(&panic)))),
                    }
                });
            }
            Err(panic) => {
                let msg = panicked(&panic);
                tracing::error!(session = self.session.id(), error = %msg, "handler panicked");
                if let Some(s) = seq {
                    finish(core, Some((s, Err(msg))), now);
                }
            }
        }
    }

    fn drain_events(
        &self,
        core: &mut CoreSession,
        tasks: &mut JoinSet<Done>,
        closed: &mut Option<CloseReason>,
    ) {
        let now = Instant::now();
        while let Some(ev) = core.poll_event() {
            match ev {
                Event::Reply { token, result, .. } => {
                    let _ = token.send(result);
                }
                Event::Closed(reason) => *closed = Some(reason),
                ev => self.start_handler(tasks, core, ev, now),
            }
        }
    }

    async fn run_conn<R, W>(
        &mut self,
        mut rd: R,
        mut wr: W,
        backlog: &mut Vec<Command>,
    ) -> CloseReason
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let id = self.session.id();
        let now = Instant::now();
        let mut core = CoreSession::new(self.session.shared().clone(), self.role, id, now);
        tracing::info!(session = id, remote = %self.session.remote_addr(), role = ?self.role, "session open");
        for cmd in backlog.drain(..) {
            self.on_command(&mut core, cmd, now);
        }
        if self.peer.is_shutting_down() && core.state() == State::Open {
            core.close_by(now, self.peer.shutdown_deadline().unwrap_or(now));
        }
        let mut wbuf = BytesMut::new();
        let mut rbuf = BytesMut::new();
        let mut tasks: JoinSet<Done> = JoinSet::new();
        let mut sleep = pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
        let mut armed: Option<Instant> = None;
        let mut closed = None;
        loop {
            self.drain_events(&mut core, &mut tasks, &mut closed);
            if wbuf.is_empty() {
                core.poll_transmit(&mut wbuf);
            }
            if let Some(reason) = closed.take() {
                core.poll_transmit(&mut wbuf);
                let flushed = tokio::time::timeout(FINAL_FLUSH, async {
                    wr.write_all(&wbuf).await?;
                    wr.shutdown().await
                })
                .await;
                if !matches!(flushed, Ok(Ok(()))) {
                    tracing::debug!(session = id, "could not flush the last bytes");
                }
                if !tasks.is_empty() {
                    tracing::warn!(
                        session = id,
                        handlers = tasks.len(),
                        "handlers still running at close are cancelled"
                    );
                    tasks.abort_all();
                }
                tracing::info!(session = id, ?reason, "session closed");
                return reason;
            }
            let deadline = core.poll_timeout();
            if deadline != armed {
                armed = deadline;
                if let Some(d) = deadline {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(d));
                }
            }
            let wants_input = core.wants_input();
            tokio::select! {
                biased;
                cmd = self.cmd_rx.recv() => {
                    let now = Instant::now();
                    match cmd {
                        Some(c) => {
                            self.on_command(&mut core, c, now);
                            for _ in 0..BUDGET {
                                match self.cmd_rx.try_recv() {
                                    Ok(c) => self.on_command(&mut core, c, now),
                                    Err(_) => break,
                                }
                            }
                        }
                        None => core.close(now),
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    let now = Instant::now();
                    if let Ok(d) = done {
                        finish(&mut core, d, now);
                    }
                    for _ in 0..BUDGET {
                        match tasks.try_join_next() {
                            Some(Ok(d)) => finish(&mut core, d, now),
                            Some(Err(_)) => {}
                            None => break,
                        }
                    }
                }
                r = poll_fn(|cx| poll_read_into(&mut rd, cx, &mut rbuf)), if wants_input => {
                    let now = Instant::now();
                    match r {
                        Ok(0) => core.handle_eof(now),
                        Ok(_) => {
                            core.handle_input(now, &rbuf);
                            rbuf.clear();
                        }
                        Err(e) => core.handle_io_error(now, &e),
                    }
                }
                r = wr.write(&wbuf), if !wbuf.is_empty() => {
                    match r {
                        Ok(0) => core.handle_io_error(Instant::now(), &io::Error::from(io::ErrorKind::WriteZero)),
                        Ok(n) => wbuf.advance(n),
                        Err(e) => core.handle_io_error(Instant::now(), &e),
                    }
                }
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    core.handle_timeout(Instant::now());
                }
            }
        }
    }
}

/// Reads what the socket has into the worker's buffer and appends it to
/// `dst`, so the bytes are copied once into a buffer that exists only while
/// there is something to read.
fn poll_read_into<R: AsyncRead + Unpin>(
    rd: &mut R,
    cx: &mut Context<'_>,
    dst: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    READ_BUF.with_borrow_mut(|buf| {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(rd).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                dst.extend_from_slice(rb.filled());
                Poll::Ready(Ok(rb.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}

fn finish(core: &mut CoreSession, done: Done, now: Instant) {
    if let Some((seq, result)) = done {
        if let Err(e) = core.reply(now, seq, result) {
            tracing::debug!(session = core.id(), %seq, error = %e, "reply not sent");
        }
    }
}

fn panicked(panic: &Box<dyn std::any::Any + Send>) -> Rerror {
    let msg = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into());
    Rerror::internal(format!("handler panicked: {msg}"))
}

pub(crate) fn refuse(cmd: Command, e: Rerror) {
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
