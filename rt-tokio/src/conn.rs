//! The task that owns one session's connection.
//!
//! The connection is shared with the session's callers
//! ([`teleport_peer::direct`]): a caller encodes and writes its own pull
//! or push when the connection is free, so a call costs no hop to this
//! task. The task reads, runs handlers, fires timers and takes queued
//! commands. Its loop waits on whichever comes first: the wake-up (a
//! command queued, or work a caller left), a handler finishing, the socket
//! readable, the socket writable while output is pending, or the core's
//! deadline. Everything else is the shared [`Driver`]'s.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use teleport_core::CloseReason;
use teleport_peer::adapter::{
    finish_handler, Command, Done, Driver, Linger, BUDGET, FINAL_FLUSH, LINGER, LINGER_BYTES,
};
use teleport_peer::direct::{ConnWrite, Live, SharedConn, Turn};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::task::JoinSet;

use crate::transport::Connection;

/// Runs the session over `stream`, re-dialing with `connect` as
/// configured, until it is closed for good.
pub(crate) async fn run<S, C, CF>(driver: Driver, stream: S, connect: C)
where
    S: Connection,
    C: Fn(String) -> CF + Send + Sync,
    CF: Future<Output = io::Result<S>> + Send,
{
    driver
        .run(
            stream,
            async |driver: &mut Driver,
                   s: S,
                   conn: Arc<SharedConn<S::Write>>,
                   backlog: &mut Vec<Command>| {
                let (r, w) = s.split();
                let now = Instant::now();
                conn.open(Live::new(driver.open(now, backlog), w));
                match run_conn(driver, &conn, r, JoinSet::new(), now).await {
                    End::Closed(reason) => reason,
                    End::Moved(live, r, tasks) => {
                        hand_over(driver, *live, r, tasks);
                        CloseReason::GoingAway
                    }
                }
            },
            connect,
            tokio::time::sleep,
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
    Moved(Box<Live<W>>, R, JoinSet<Done>),
}

/// Runs a connection the peer is going away from under a session of its
/// own, on a task of its own, until the calls made on it are over.
fn hand_over<R, W>(driver: &Driver, live: Live<W>, rd: R, tasks: JoinSet<Done>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: ConnWrite,
{
    driver.hand_over(None, move |mut moved| {
        let task = tokio::spawn(async move {
            let conn = moved.adopt(live);
            let reason = match run_conn(&mut moved, &conn, rd, tasks, Instant::now()).await {
                End::Closed(reason) => reason,
                // (Its connection is not one that moves.)
                End::Moved(..) => CloseReason::GoingAway,
            };
            moved.end(&reason);
        });
        let abort = task.abort_handle();
        Box::new(move || abort.abort())
    });
}

/// Runs an open connection (see [`SharedConn::open`]) until its session
/// closes, or moves.
async fn run_conn<R, W>(
    driver: &mut Driver,
    conn: &SharedConn<W>,
    mut rd: R,
    mut tasks: JoinSet<Done>,
    mut now: Instant,
) -> End<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: ConnWrite,
{
    let id = driver.session().id();
    let mut sleep = pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
    let mut armed: Option<Instant> = None;
    // Commands are waiting beyond the last batch taken.
    let mut backlog = false;
    loop {
        let turn = conn.turn(now, |core| {
            driver.drain_events(core, now, &mut |fut| {
                tasks.spawn(fut);
            })
        });
        let (deadline, wants_input, wants_write) = match turn {
            Turn::Wait {
                deadline,
                wants_input,
                wants_write,
            } => (deadline, wants_input, wants_write),
            Turn::Moved(live) => return End::Moved(live, rd, tasks),
            Turn::Closed(reason, mut closing) => {
                // Every queued byte, then the end of our side: the peer reads
                // everything, then the end.
                let closed =
                    tokio::time::timeout(FINAL_FLUSH, poll_fn(|cx| closing.poll_close(cx))).await;
                if !matches!(closed, Ok(Ok(()))) {
                    tracing::debug!(target: "teleport::tokio", session = id, "could not flush the last bytes");
                }
                drop(closing);
                if !tasks.is_empty() {
                    tracing::warn!(target: "teleport::tokio", session = id,
                        handlers = tasks.len(),
                        "handlers still running at close are cancelled"
                    );
                    tasks.abort_all();
                }
                tracing::info!(target: "teleport::tokio", session = id, ?reason, "session closed");
                // The read half lingers until the peer's end of input.
                if input_open(&reason) {
                    let guard = driver.peer().linger();
                    tokio::spawn(linger(rd, guard));
                }
                return End::Closed(reason);
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
            // While a backlog of commands is being worked off, the wake-up
            // waits (it stays raised): a flood of commands must not keep
            // the socket, handlers and timers from their turns.
            () = poll_fn(|cx| conn.poll_woken(cx)), if !backlog => {
                now = Instant::now();
                backlog = take_commands(driver, conn, now);
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                now = Instant::now();
                conn.with_core(|core| {
                    if let Ok(d) = done {
                        finish_handler(core, d, now);
                    }
                    for _ in 0..BUDGET {
                        match tasks.try_join_next() {
                            Some(Ok(d)) => finish_handler(core, d, now),
                            Some(Err(_)) => {}
                            None => break,
                        }
                    }
                });
            }
            r = poll_fn(|cx| poll_read_into_core(&mut rd, cx, conn)), if wants_input => {
                match r {
                    Ok(at) => now = at,
                    Err(e) => {
                        now = Instant::now();
                        conn.with_core(|core| core.handle_io_error(now, &e));
                    }
                }
            }
            () = poll_fn(|cx| conn.poll_flush(cx)), if wants_write => {
                now = Instant::now();
            }
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                now = Instant::now();
                conn.with_core(|core| core.handle_timeout(now));
            }
            // Last: the next batch of a backlog, once everything else had
            // its chance.
            () = std::future::ready(()), if backlog => {
                now = Instant::now();
                backlog = take_commands(driver, conn, now);
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
            match tokio::io::AsyncReadExt::read(&mut rd, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Carries out queued commands, up to [`BUDGET`]; whether more may wait.
fn take_commands<W: ConnWrite>(driver: &mut Driver, conn: &SharedConn<W>, now: Instant) -> bool {
    conn.with_core(|core| driver.take_commands(core, now)) == Some(BUDGET)
}

/// Reads what the socket has into the worker's buffer and feeds it to the
/// core (or tells it of the end of input), so the bytes land in a buffer
/// that exists only while there is something to read. Ready with when
/// they arrived.
fn poll_read_into_core<R: AsyncRead + Unpin, W: ConnWrite>(
    rd: &mut R,
    cx: &mut Context<'_>,
    conn: &SharedConn<W>,
) -> Poll<io::Result<Instant>> {
    teleport_peer::net::with_read_buf(|buf| {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(rd).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let now = Instant::now();
                conn.with_core(|core| match rb.filled() {
                    [] => core.handle_eof(now),
                    bytes => core.handle_input(now, bytes),
                });
                Poll::Ready(Ok(now))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
}
