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

use std::future::poll_fn;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use teleport_core::CloseReason;
use teleport_peer::direct::{Live, SharedConn, TryWrite, Turn};
use teleport_peer::{
    finish_handler, Command, Done, Driver, Linger, BUDGET, FINAL_FLUSH, LINGER, LINGER_BYTES,
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

impl TryWrite for Writer {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Writer::Tcp(w) => w.try_write(buf),
            #[cfg(unix)]
            Writer::Unix(w) => w.try_write(buf),
        }
    }
}

impl Writer {
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

/// The connection as the task and the session's callers share it.
type Conn = SharedConn<Arc<Writer>>;

/// Runs the session over `stream`, re-dialing as configured, until it is
/// closed for good.
pub(crate) async fn run(driver: Driver, stream: Stream) {
    let cfg = driver.peer().config().clone();
    driver
        .run(
            stream,
            async |driver: &mut Driver, s: Stream, conn: Arc<Conn>, backlog: &mut Vec<Command>| {
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
            |a| {
                let cfg = cfg.clone();
                async move { crate::net::connect(&cfg, &a).await.map(|(s, _, _)| s) }
            },
            tokio::time::sleep,
        )
        .await;
}

async fn run_conn<R: AsyncRead + Unpin + Send + 'static>(
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
    conn.open(Live::new(driver.open(now, backlog), wr.clone()));
    let mut tasks: JoinSet<Done> = JoinSet::new();
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
            Turn::Closed(reason, last) => {
                let flushed = tokio::time::timeout(FINAL_FLUSH, wr.write_all(&last)).await;
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
                // Dropping the last handle of the write half shuts it down
                // (the peer reads everything, then the end); the read half
                // lingers until the peer's end of input.
                drop(wr);
                if input_open(&reason) {
                    let guard = driver.peer().linger();
                    tokio::spawn(linger(rd, guard));
                }
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
            // While a backlog of commands is being worked off, the wake-up
            // waits (it stays raised): a flood of commands must not keep
            // the socket, handlers and timers from their turns.
            () = poll_fn(|cx| conn.poll_woken(cx)), if !backlog => {
                now = Instant::now();
                backlog = take_commands(driver, &conn, now);
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
            r = poll_fn(|cx| poll_read_into_core(&mut rd, cx, &conn)), if wants_input => {
                match r {
                    Ok(at) => now = at,
                    Err(e) => {
                        now = Instant::now();
                        conn.with_core(|core| core.handle_io_error(now, &e));
                    }
                }
            }
            r = wr.writable(), if wants_write => {
                now = Instant::now();
                if let Err(e) = r {
                    conn.with_core(|core| core.handle_io_error(now, &e));
                }
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
                backlog = take_commands(driver, &conn, now);
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
fn take_commands(driver: &mut Driver, conn: &Conn, now: Instant) -> bool {
    conn.with_core(|core| driver.take_commands(core, now)) == Some(BUDGET)
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
