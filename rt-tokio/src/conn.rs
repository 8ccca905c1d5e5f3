//! The task that owns one session's connection.
//!
//! The core session, the write half and the bytes waiting to be written
//! sit behind one mutex that nobody holds across an `.await`. The task
//! takes it to read, run handlers, fire timers and carry out queued
//! commands. A caller on another task takes it too, but only with
//! `try_lock` ([`Conn`] is the session's [`DirectPath`]): it encodes its
//! pull or push and writes it to the socket itself, so a call costs no
//! hop to this task; when the lock is busy, or the connection down, the
//! command goes through the channel as before. The caller wakes the task
//! only when it left it something to do: bytes the socket would not take,
//! events, an earlier deadline.
//!
//! The task's loop waits on whichever comes first: a wake from a handle
//! (a command queued on the channel, or work left by a direct call), a
//! handler finishing, the socket readable, the socket writable while
//! output is pending, or the core's deadline. Everything else is the
//! shared [`Driver`]'s.

use std::future::poll_fn;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use futures_util::task::AtomicWaker;
use teleport_core::{CloseReason, State};
use teleport_peer::{
    carry_out_call, finish_handler, Command, CoreSession, DirectPath, Done, Driver, BUDGET,
    FINAL_FLUSH,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinSet;

use crate::net::Stream;

/// The write half of either kind of stream. Dropping it shuts down the
/// stream's write side.
enum Writer {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    #[cfg(unix)]
    Unix(tokio::net::unix::OwnedWriteHalf),
}

impl Writer {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Writer::Tcp(w) => w.try_write(buf),
            #[cfg(unix)]
            Writer::Unix(w) => w.try_write(buf),
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            Writer::Tcp(w) => w.writable().await,
            #[cfg(unix)]
            Writer::Unix(w) => w.writable().await,
        }
    }

    /// Writes all of `buf`, waiting for room as needed.
    async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            self.writable().await?;
            match self.try_write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One connection's state, shared by its task and the session's callers.
struct Live {
    core: CoreSession,
    wr: Arc<Writer>,
    /// Encoded bytes the socket has not taken yet, in order.
    wbuf: BytesMut,
    /// A write failed outside the task; the task closes the session.
    write_error: Option<io::Error>,
    /// What the task waits for, as of its last look: a caller that changes
    /// one of these wakes it.
    armed: Option<Instant>,
    wants_input: bool,
}

impl Live {
    /// Writes what the socket takes without waiting: first what waits,
    /// then the core's output. That is taken only once the previous batch
    /// is out (swapping buffers, no copy), so what the socket will not
    /// take piles up in the core, where `max_queued_bytes` bounds it.
    fn flush(&mut self) {
        while self.write_error.is_none() {
            if self.wbuf.is_empty() {
                if !self.core.has_transmit() {
                    break;
                }
                self.core.poll_transmit(&mut self.wbuf);
            }
            match self.wr.try_write(&self.wbuf) {
                Ok(0) => self.write_error = Some(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.write_error = Some(e),
            }
        }
    }

    /// Whether the task must look again after a caller's call: something
    /// to write once the socket has room, a failed write, events, or a
    /// deadline earlier than the one it waits for.
    fn task_must_look(&self) -> bool {
        let earlier = match (self.core.poll_timeout(), self.armed) {
            (Some(new), Some(armed)) => new < armed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        !self.wbuf.is_empty()
            || self.write_error.is_some()
            || self.core.has_events()
            || earlier
            || self.core.wants_input() != self.wants_input
    }
}

/// A session's connection, as its task and its callers share it.
pub(crate) struct Conn {
    /// `None` while there is no connection (before the first, between a
    /// break and a redial, after the end).
    live: Mutex<Option<Live>>,
    /// Wakes the task (a caller left it something to do).
    wake: Signal,
}

/// A wake-up for one waiting task: cheaper to wait on in every turn of a
/// loop than a `Notify`, which queues each waiter under a lock.
#[derive(Default)]
struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once raised since the last time it was.
    fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Raised between the check and the registration: not lost.
        if self.raised.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, Option<Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl DirectPath for Conn {
    fn queued(&self) {
        self.wake.raise();
    }

    fn try_command(&self, cmd: Command) -> Result<(), Command> {
        let mut guard = match self.live.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => return Err(cmd),
        };
        let Some(live) = guard.as_mut() else {
            return Err(cmd);
        };
        // A closing session answers calls as its task does (a peer's
        // shutdown or `Session::close` also turns this path off).
        if live.core.state() != State::Open {
            return Err(cmd);
        }
        carry_out_call(&mut live.core, cmd, Instant::now())?;
        live.flush();
        let look = live.task_must_look();
        drop(guard);
        if look {
            self.wake.raise();
        }
        Ok(())
    }
}

/// Runs the session over `stream`, re-dialing as configured, until it is
/// closed for good.
pub(crate) async fn run(driver: Driver, stream: Stream) {
    let cfg = driver.peer().config().clone();
    let conn = Arc::new(Conn {
        live: Mutex::new(None),
        wake: Signal::default(),
    });
    driver.set_direct_path(conn.clone());
    // Each connection comes with the shared state to install it in.
    let redial_conn = conn.clone();
    driver
        .run(
            (stream, conn),
            async |driver: &mut Driver,
                   (s, conn): (Stream, Arc<Conn>),
                   backlog: &mut Vec<Command>| {
                match s {
                    Stream::Tcp(t) => {
                        let (r, w) = t.into_split();
                        run_conn(driver, conn, r, Writer::Tcp(w), backlog).await
                    }
                    #[cfg(unix)]
                    Stream::Unix(u) => {
                        let (r, w) = u.into_split();
                        run_conn(driver, conn, r, Writer::Unix(w), backlog).await
                    }
                }
            },
            move |a| {
                let cfg = cfg.clone();
                let conn = redial_conn.clone();
                async move {
                    let (s, _, _) = crate::net::connect(&cfg, &a).await?;
                    Ok((s, conn))
                }
            },
            tokio::time::sleep,
        )
        .await;
}

async fn run_conn<R: AsyncRead + Unpin>(
    driver: &mut Driver,
    conn: Arc<Conn>,
    mut rd: R,
    wr: Writer,
    backlog: &mut Vec<Command>,
) -> CloseReason {
    let id = driver.session().id();
    let wr = Arc::new(wr);
    // When the last thing the task waited for happened: one clock read per
    // wake-up serves the whole turn.
    let mut now = Instant::now();
    let core = driver.open(now, backlog);
    *conn.lock() = Some(Live {
        core,
        wr: wr.clone(),
        wbuf: BytesMut::new(),
        write_error: None,
        armed: None,
        wants_input: true,
    });
    // Commands queued before this connection existed are taken at once.
    conn.wake.raise();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut sleep = pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
    let mut armed: Option<Instant> = None;
    loop {
        let (deadline, wants_input, wants_write) = match turn(driver, &conn, &mut tasks, now) {
            Turn::Wait {
                deadline,
                wants_input,
                wants_write,
            } => (deadline, wants_input, wants_write),
            Turn::Again => continue,
            Turn::Closed(reason, live) => {
                if let Some(mut live) = live {
                    live.core.poll_transmit(&mut live.wbuf);
                    let flushed = tokio::time::timeout(FINAL_FLUSH, wr.write_all(&live.wbuf)).await;
                    if !matches!(flushed, Ok(Ok(()))) {
                        tracing::debug!(session = id, "could not flush the last bytes");
                    }
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
                // Dropping the last handle of the write half shuts it down.
                return reason;
            }
        };
        if deadline != armed {
            armed = deadline;
            if let Some(d) = deadline {
                sleep.as_mut().reset(tokio::time::Instant::from_std(d));
            }
        }
        tokio::select! {
            biased;
            // A caller left work (a command on the channel, bytes to
            // write, events, an earlier deadline).
            () = poll_fn(|cx| conn.wake.poll_raised(cx)) => {
                now = Instant::now();
                if let Some(live) = conn.lock().as_mut() {
                    if driver.take_commands(&mut live.core, now) == BUDGET {
                        // More may wait: come back after the socket's turn.
                        conn.wake.raise();
                    }
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                now = Instant::now();
                let mut guard = conn.lock();
                if let Some(live) = guard.as_mut() {
                    if let Ok(d) = done {
                        finish_handler(&mut live.core, d, now);
                    }
                    for _ in 0..BUDGET {
                        match tasks.try_join_next() {
                            Some(Ok(d)) => finish_handler(&mut live.core, d, now),
                            Some(Err(_)) => {}
                            None => break,
                        }
                    }
                }
            }
            r = poll_fn(|cx| poll_read_into_core(&mut rd, cx, &conn)), if wants_input => {
                match r {
                    Ok(at) => now = at,
                    Err(e) => {
                        now = Instant::now();
                        if let Some(live) = conn.lock().as_mut() {
                            live.core.handle_io_error(now, &e);
                        }
                    }
                }
            }
            r = wr.writable(), if wants_write => {
                now = Instant::now();
                if let Err(e) = r {
                    if let Some(live) = conn.lock().as_mut() {
                        live.core.handle_io_error(now, &e);
                    }
                }
            }
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                now = Instant::now();
                if let Some(live) = conn.lock().as_mut() {
                    live.core.handle_timeout(now);
                }
            }
        }
    }
}

/// What the task does after a [`turn`].
enum Turn {
    /// Wait for one of these (and commands, wakes, handlers).
    Wait {
        deadline: Option<Instant>,
        wants_input: bool,
        wants_write: bool,
    },
    /// A write failed: look again (the session closes).
    Again,
    /// The session closed; the connection is taken away from callers, to
    /// flush its last bytes.
    Closed(CloseReason, Option<Box<Live>>),
}

/// The task's work between two waits, under the lock: events go out
/// (replies to callers, handlers started), output is written, and what
/// to wait for is noted where callers see it.
fn turn(driver: &Driver, conn: &Conn, tasks: &mut JoinSet<Done>, now: Instant) -> Turn {
    let mut guard = conn.lock();
    let Some(live) = guard.as_mut() else {
        // Only the task takes the connection away, and it returns then.
        return Turn::Closed(CloseReason::Local, None);
    };
    if let Some(e) = live.write_error.take() {
        live.core.handle_io_error(now, &e);
    }
    let closed = driver.drain_events(&mut live.core, now, &mut |fut| {
        tasks.spawn(fut);
    });
    if let Some(reason) = closed {
        return Turn::Closed(reason, guard.take().map(Box::new));
    }
    live.flush();
    if live.write_error.is_some() {
        return Turn::Again;
    }
    live.armed = live.core.poll_timeout();
    live.wants_input = live.core.wants_input();
    Turn::Wait {
        deadline: live.armed,
        wants_input: live.wants_input,
        wants_write: !live.wbuf.is_empty(),
    }
}

/// Reads what the socket has into the worker's buffer and feeds it to the
/// core (or tells it of the end of input), so the bytes land in a buffer
/// that exists only while there is something to read. Ready with when
/// they arrived.
fn poll_read_into_core<R: AsyncRead + Unpin>(
    rd: &mut R,
    cx: &mut Context<'_>,
    conn: &Conn,
) -> Poll<io::Result<Instant>> {
    teleport_peer::net::with_read_buf(|buf| {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(rd).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let now = Instant::now();
                if let Some(live) = conn.lock().as_mut() {
                    match rb.filled() {
                        [] => live.core.handle_eof(now),
                        bytes => live.core.handle_input(now, bytes),
                    }
                }
                Poll::Ready(Ok(now))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}
