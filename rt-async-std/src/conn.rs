//! The task that owns one session's connection.
//!
//! The connection is shared with the session's callers
//! ([`teleport_peer::direct`]): a caller encodes and writes its own pull
//! or push when the connection is free, so a call costs no hop to this
//! task. The task reads, runs the session's handlers (a `FuturesUnordered`
//! it owns, so running them needs no executor), fires timers and takes
//! queued commands.
//!
//! Each turn polls, in a fixed order, whichever of these can make progress:
//! the wake-up (a command queued, or work a caller left), handlers, the
//! socket readable, the socket writable while output is pending, the
//! core's deadline. Everything that is ready is handled in that one turn;
//! the task sleeps only when none is. Everything else is the shared
//! [`Driver`]'s.

use std::future::{poll_fn, Future};
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::{Async, Timer};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use teleport_core::CloseReason;
use teleport_peer::direct::{Live, SharedConn, TryWrite, Turn};
use teleport_peer::{
    finish_handler, BoxFuture, Command, Done, Driver, Linger, BUDGET, FINAL_FLUSH, LINGER,
    LINGER_BYTES,
};

use crate::executor::Executor;

use crate::net::Stream;

/// Turns in a row that found work before the task yields to its executor:
/// async-io's sockets never say `Pending` while they have data, so a
/// flooded connection would otherwise keep its thread forever.
const YIELD_AFTER: u32 = 32;

/// The writing side the session's callers share: the socket itself
/// (`Async` sockets are non-blocking, so a plain write never waits).
enum Wr {
    Tcp(Arc<Async<std::net::TcpStream>>),
    #[cfg(unix)]
    Unix(Arc<Async<std::os::unix::net::UnixStream>>),
}

impl TryWrite for Wr {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wr::Tcp(s) => s.get_ref().write(buf),
            #[cfg(unix)]
            Wr::Unix(s) => s.get_ref().write(buf),
        }
    }
}

/// The connection as the task and the session's callers share it.
type Conn = SharedConn<Wr>;

/// Runs the session over `stream`, re-dialing as configured, until it is
/// closed for good.
pub(crate) async fn run(driver: Driver, stream: Stream, exec: Executor) {
    let cfg = driver.peer().config().clone();
    driver
        .run(
            stream,
            // Each arm drops its socket before any redial.
            async move |driver: &mut Driver,
                        s: Stream,
                        conn: Arc<Conn>,
                        backlog: &mut Vec<Command>| {
                match s {
                    Stream::Tcp(t) => {
                        let t = Arc::new(t);
                        let wr = Wr::Tcp(t.clone());
                        run_conn(driver, &conn, t, wr, backlog, &exec).await
                    }
                    #[cfg(unix)]
                    Stream::Unix(u) => {
                        let u = Arc::new(u);
                        let wr = Wr::Unix(u.clone());
                        run_conn(driver, &conn, u, wr, backlog, &exec).await
                    }
                }
            },
            |a| {
                let cfg = cfg.clone();
                async move { crate::net::connect(&cfg, &a).await.map(|(s, _, _)| s) }
            },
            |d| async move {
                Timer::after(d).await;
            },
        )
        .await;
}

/// What the task waits on besides the shared connection.
struct Waits {
    tasks: FuturesUnordered<BoxFuture<Done>>,
    timer: Timer,
    armed: Option<Instant>,
    /// The last read took all the socket had: wait for the reactor to say
    /// more came before reading again. (async-io's `poll_read` tries the
    /// read first, so without this every turn would cost a failed read.)
    drained: bool,
}

async fn run_conn<S: Send + Sync + 'static>(
    driver: &mut Driver,
    conn: &Conn,
    io: Arc<Async<S>>,
    wr: Wr,
    backlog: &mut Vec<Command>,
    exec: &Executor,
) -> CloseReason
where
    for<'a> &'a Async<S>: AsyncRead + AsyncWrite,
{
    let id = driver.session().id();
    let mut now = Instant::now();
    conn.open(Live::new(driver.open(now, backlog), wr));
    let mut w = Waits {
        tasks: FuturesUnordered::new(),
        timer: Timer::never(),
        armed: None,
        drained: false,
    };
    let mut busy_turns = 0u32;
    loop {
        let tasks = &w.tasks;
        let turn = conn.turn(now, |core| {
            driver.drain_events(core, now, &mut |fut| {
                tasks.push(fut);
            })
        });
        let (deadline, wants_input, wants_write) = match turn {
            Turn::Wait {
                deadline,
                wants_input,
                wants_write,
            } => (deadline, wants_input, wants_write),
            Turn::Closed(reason, last) => {
                // Every queued byte, then the end of our side (the peer reads
                // everything, then the end).
                let flush = async {
                    let mut s = &*io;
                    s.write_all(&last).await?;
                    s.close().await
                };
                let timeout = async {
                    Timer::after(FINAL_FLUSH).await;
                    Err(io::Error::from(io::ErrorKind::TimedOut))
                };
                if let Err(e) = futures_lite::future::or(flush, timeout).await {
                    tracing::debug!(session = id, error = %e, "could not flush the last bytes");
                }
                if !w.tasks.is_empty() {
                    tracing::warn!(
                        session = id,
                        handlers = w.tasks.len(),
                        "handlers still running at close are cancelled"
                    );
                }
                tracing::info!(session = id, ?reason, "session closed");
                if input_open(&reason) {
                    let guard = driver.peer().linger();
                    exec.spawn(Box::pin(linger(io, guard)));
                }
                return reason;
            }
        };
        if deadline != w.armed {
            w.armed = deadline;
            if let Some(d) = deadline {
                w.timer.set_at(d);
            }
        }
        let mut polls = 0u32;
        now = poll_fn(|cx| {
            polls += 1;
            w.poll(driver, conn, &io, wants_input, wants_write, cx)
        })
        .await;
        if polls > 1 {
            busy_turns = 0;
        } else {
            busy_turns += 1;
            if busy_turns >= YIELD_AFTER {
                busy_turns = 0;
                futures_lite::future::yield_now().await;
            }
        }
    }
}

/// Whether the connection's input may still hold bytes when the session
/// closed this way (not when the peer ended it, or the socket failed).
fn input_open(reason: &CloseReason) -> bool {
    !matches!(reason, CloseReason::PeerClosed | CloseReason::Io(_))
}

/// Reads and discards what the peer still sends until it ends its side,
/// for at most [`LINGER`] and [`LINGER_BYTES`], then drops the socket:
/// closing with unread input would reset the connection, and a reset can
/// destroy replies the peer has not read yet.
async fn linger<S>(io: Arc<Async<S>>, _guard: Linger)
where
    for<'a> &'a Async<S>: AsyncRead,
{
    let drain = async {
        let mut left = LINGER_BYTES;
        let mut buf = [0u8; 4096];
        while left > 0 {
            match (&*io).read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    futures_lite::future::or(drain, async {
        Timer::after(LINGER).await;
    })
    .await;
}

impl Waits {
    /// Polls every source once, in a fixed order, and handles what is
    /// ready; `Pending` (with every source's waker registered) if nothing
    /// was, else ready with when.
    #[allow(clippy::too_many_arguments)]
    fn poll<S>(
        &mut self,
        driver: &mut Driver,
        conn: &Conn,
        io: &Async<S>,
        wants_input: bool,
        wants_write: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Instant>
    where
        for<'a> &'a Async<S>: AsyncRead + AsyncWrite,
    {
        let mut now = None;
        let mut at = || *now.get_or_insert_with(Instant::now);

        if conn.poll_woken(cx).is_ready() {
            let t = at();
            if conn.with_core(|core| driver.take_commands(core, t)) == Some(BUDGET) {
                // More may wait: come back next turn.
                conn.wake();
            }
        }

        for _ in 0..BUDGET {
            match self.tasks.poll_next_unpin(cx) {
                Poll::Ready(Some(done)) => {
                    let t = at();
                    conn.with_core(|core| finish_handler(core, done, t));
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }

        if wants_input {
            let readable = if self.drained {
                match io.poll_readable(cx) {
                    Poll::Ready(Ok(())) => true,
                    Poll::Ready(Err(e)) => {
                        let t = at();
                        conn.with_core(|core| core.handle_io_error(t, &e));
                        false
                    }
                    Poll::Pending => false,
                }
            } else {
                true
            };
            if readable {
                let drained = &mut self.drained;
                teleport_peer::net::with_read_buf(|buf| {
                    let Poll::Ready(r) = Pin::new(&mut &*io).poll_read(cx, buf) else {
                        // The reactor is watching for more.
                        *drained = true;
                        return;
                    };
                    let t = at();
                    // From the thread's buffer into the session's: one copy.
                    conn.with_core(|core| match r {
                        Ok(0) => core.handle_eof(t),
                        Ok(n) => {
                            *drained = n < buf.len();
                            core.handle_input(t, &buf[..n]);
                        }
                        Err(e) => core.handle_io_error(t, &e),
                    });
                });
            }
        }

        if wants_write {
            match io.poll_writable(cx) {
                Poll::Ready(Ok(())) => {
                    at();
                }
                Poll::Ready(Err(e)) => {
                    let t = at();
                    conn.with_core(|core| core.handle_io_error(t, &e));
                }
                Poll::Pending => {}
            }
        }

        if self.armed.is_some() && Pin::new(&mut self.timer).poll(cx).is_ready() {
            self.armed = None;
            let t = at();
            conn.with_core(|core| core.handle_timeout(t));
        }

        match now {
            Some(t) => Poll::Ready(t),
            None => Poll::Pending,
        }
    }
}
