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
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::Timer;
use futures_lite::io::{AsyncRead, AsyncReadExt};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt as _;
use teleport_core::CloseReason;
use teleport_peer::adapter::{
    finish_handler, Command, Done, Driver, Linger, BUDGET, FINAL_FLUSH, LINGER, LINGER_BYTES,
};
use teleport_peer::direct::{ConnWrite, Live, SharedConn, Turn};
use teleport_peer::BoxFuture;

use crate::executor::Executor;
use crate::transport::Connection;

/// Turns in a row that found work before the task yields to its executor:
/// async-io's sockets never say `Pending` while they have data, so a
/// flooded connection would otherwise keep its thread forever.
const YIELD_AFTER: u32 = 32;

/// Runs the session over `stream`, re-dialing with `connect` as
/// configured, until it is closed for good.
pub(crate) async fn run<S, C, CF>(driver: Driver, stream: S, connect: C, exec: Executor)
where
    S: Connection,
    C: Fn(String) -> CF + Send + Sync,
    CF: Future<Output = io::Result<S>> + Send,
{
    driver
        .run(
            stream,
            async move |driver: &mut Driver,
                        s: S,
                        conn: Arc<SharedConn<S::Write>>,
                        backlog: &mut Vec<Command>| {
                let (r, w) = s.split();
                let now = Instant::now();
                conn.open(Live::new(driver.open(now, backlog), w));
                match run_conn(driver, &conn, r, Waits::new(), now, &exec).await {
                    End::Closed(reason) => reason,
                    End::Moved(live, r, w) => {
                        hand_over(driver, *live, r, w, &exec);
                        CloseReason::GoingAway
                    }
                }
            },
            connect,
            |d| async move {
                Timer::after(d).await;
            },
        )
        .await;
}

/// How a connection's loop ended.
enum End<R, W> {
    /// The session closed this way.
    Closed(CloseReason),
    /// The peer is going away and the session re-dials: the connection,
    /// its read half and its running handlers, to finish what was called
    /// on it (see [`hand_over`]).
    Moved(Box<Live<W>>, R, Waits),
}

/// Runs a connection the peer is going away from under a session of its
/// own, on a task of its own, until the calls made on it are over.
fn hand_over<R, W>(driver: &Driver, live: Live<W>, rd: R, w: Waits, exec: &Executor)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: ConnWrite,
{
    driver.hand_over(None, |mut moved| {
        let (abort, registration) = AbortHandle::new_pair();
        let task_exec = exec.clone();
        let task = async move {
            let conn = moved.adopt(live);
            let reason = match run_conn(&mut moved, &conn, rd, w, Instant::now(), &task_exec).await
            {
                End::Closed(reason) => reason,
                // (Its connection is not one that moves.)
                End::Moved(..) => CloseReason::GoingAway,
            };
            moved.end(&reason);
        };
        exec.spawn(Box::pin(Abortable::new(task, registration).map(drop)));
        Box::new(move || abort.abort())
    });
}

/// What the task waits on besides the shared connection.
struct Waits {
    tasks: FuturesUnordered<BoxFuture<Done>>,
    timer: Timer,
    armed: Option<Instant>,
}

impl Waits {
    fn new() -> Self {
        Waits {
            tasks: FuturesUnordered::new(),
            timer: Timer::never(),
            armed: None,
        }
    }
}

/// Runs an open connection (see [`SharedConn::open`]) until its session
/// closes, or moves.
async fn run_conn<R, W>(
    driver: &mut Driver,
    conn: &SharedConn<W>,
    mut rd: R,
    mut w: Waits,
    mut now: Instant,
    exec: &Executor,
) -> End<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: ConnWrite,
{
    let id = driver.session().id();
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
            Turn::Moved(live) => return End::Moved(live, rd, w),
            Turn::Closed(reason, mut closing) => {
                // Every queued byte, then the end of our side: the peer reads
                // everything, then the end.
                let flush = poll_fn(|cx| closing.poll_close(cx));
                let timeout = async {
                    Timer::after(FINAL_FLUSH).await;
                    Err(io::Error::from(io::ErrorKind::TimedOut))
                };
                if let Err(e) = futures_lite::future::or(flush, timeout).await {
                    tracing::debug!(target: "teleport::async_io", session = id, error = %e, "could not flush the last bytes");
                }
                drop(closing);
                if !w.tasks.is_empty() {
                    tracing::warn!(target: "teleport::async_io", session = id,
                        handlers = w.tasks.len(),
                        "handlers still running at close are cancelled"
                    );
                }
                tracing::info!(target: "teleport::async_io", session = id, ?reason, "session closed");
                if input_open(&reason) {
                    let guard = driver.peer().linger();
                    exec.spawn(Box::pin(linger(rd, guard)));
                }
                return End::Closed(reason);
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
            w.poll(driver, conn, &mut rd, wants_input, wants_write, cx)
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
async fn linger<R: AsyncRead + Unpin>(mut rd: R, _guard: Linger) {
    let drain = async {
        let mut left = LINGER_BYTES;
        let mut buf = [0u8; 4096];
        while left > 0 {
            match rd.read(&mut buf).await {
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
    fn poll<R: AsyncRead + Unpin, W: ConnWrite>(
        &mut self,
        driver: &mut Driver,
        conn: &SharedConn<W>,
        rd: &mut R,
        wants_input: bool,
        wants_write: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Instant> {
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
            teleport_peer::net::with_read_buf(|buf| {
                let Poll::Ready(r) = Pin::new(&mut *rd).poll_read(cx, buf) else {
                    return;
                };
                let t = at();
                // From the thread's buffer into the session's: one copy.
                conn.with_core(|core| match r {
                    Ok(0) => core.handle_eof(t),
                    Ok(n) => core.handle_input(t, &buf[..n]),
                    Err(e) => core.handle_io_error(t, &e),
                });
            });
        }

        if wants_write && conn.poll_flush(cx).is_ready() {
            at();
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
