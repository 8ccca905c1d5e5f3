//! The task that owns one session: it alone touches the core session and
//! runs the session's handlers, so nothing on the hot path takes a lock.
//!
//! Each turn polls, in a fixed order, whichever of these can make progress:
//! a command from a handle, handlers (a `FuturesUnordered` the task owns,
//! so running them needs no executor), the socket readable, the socket
//! writable while output is pending, the core's deadline. Everything that
//! is ready is handled in that one turn; the task sleeps only when none
//! is. Everything else is the shared [`Driver`]'s.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::{Async, Timer};
use bytes::{Buf, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use teleport_core::CloseReason;
use teleport_peer::{finish_handler, BoxFuture, Command, Done, Driver, BUDGET, FINAL_FLUSH};

use crate::net::Stream;

/// Turns in a row that found work before the task yields to its executor:
/// async-io's sockets never say `Pending` while they have data, so a
/// flooded connection would otherwise keep its thread forever.
const YIELD_AFTER: u32 = 32;

/// Runs the session over `stream`, re-dialing as configured, until it is
/// closed for good.
pub(crate) async fn run(driver: Driver, stream: Stream) {
    let cfg = driver.peer().config().clone();
    driver
        .run(
            stream,
            // Each arm drops its socket before any redial.
            async |driver: &mut Driver, s: Stream, backlog: &mut Vec<teleport_peer::Command>| {
                match s {
                    Stream::Tcp(t) => run_conn(driver, &t, backlog).await,
                    #[cfg(unix)]
                    Stream::Unix(u) => run_conn(driver, &u, backlog).await,
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

/// The connection's state besides the driver and the socket.
struct Conn {
    core: teleport_peer::CoreSession,
    wbuf: BytesMut,
    tasks: FuturesUnordered<BoxFuture<Done>>,
    timer: Timer,
    armed: Option<Instant>,
    commands_open: bool,
    /// The last read took all the socket had: wait for the reactor to say
    /// more came before reading again. (async-io's `poll_read` tries the
    /// read first, so without this every turn would cost a failed read.)
    drained: bool,
}

async fn run_conn<S>(driver: &mut Driver, io: &Async<S>, backlog: &mut Vec<Command>) -> CloseReason
where
    for<'a> &'a Async<S>: AsyncRead + AsyncWrite,
{
    let id = driver.session().id();
    let mut c = Conn {
        core: driver.open(Instant::now(), backlog),
        wbuf: BytesMut::new(),
        tasks: FuturesUnordered::new(),
        timer: Timer::never(),
        armed: None,
        commands_open: true,
        drained: false,
    };
    let mut busy_turns = 0u32;
    loop {
        let tasks = &c.tasks;
        let closed = driver.drain_events(&mut c.core, Instant::now(), &mut |fut| {
            tasks.push(fut);
        });
        if let Some(reason) = closed {
            c.core.poll_transmit(&mut c.wbuf);
            let flush = async {
                let mut w = io;
                w.write_all(&c.wbuf).await?;
                w.close().await
            };
            let timeout = async {
                Timer::after(FINAL_FLUSH).await;
                Err(io::Error::from(io::ErrorKind::TimedOut))
            };
            if let Err(e) = futures_lite::future::or(flush, timeout).await {
                tracing::debug!(session = id, error = %e, "could not flush the last bytes");
            }
            if !c.tasks.is_empty() {
                tracing::warn!(
                    session = id,
                    handlers = c.tasks.len(),
                    "handlers still running at close are cancelled"
                );
            }
            tracing::info!(session = id, ?reason, "session closed");
            return reason;
        }
        let deadline = c.core.poll_timeout();
        if deadline != c.armed {
            c.armed = deadline;
            if let Some(d) = deadline {
                c.timer.set_at(d);
            }
        }
        let mut polls = 0u32;
        poll_fn(|cx| {
            polls += 1;
            c.turn(driver, io, cx)
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

impl Conn {
    /// Polls every source once, in a fixed order, and handles what is
    /// ready; `Pending` (with every source's waker registered) if nothing
    /// was.
    fn turn<S>(&mut self, driver: &mut Driver, io: &Async<S>, cx: &mut Context<'_>) -> Poll<()>
    where
        for<'a> &'a Async<S>: AsyncRead + AsyncWrite,
    {
        let mut progress = false;
        let core = &mut self.core;

        if self.commands_open {
            match driver.commands().poll_recv(cx) {
                Poll::Ready(Some(cmd)) => {
                    let now = Instant::now();
                    driver.on_command(core, cmd, now);
                    driver.take_commands(core, now);
                    progress = true;
                }
                Poll::Ready(None) => {
                    self.commands_open = false;
                    core.close(Instant::now());
                    progress = true;
                }
                Poll::Pending => {}
            }
        }

        let mut now = None;
        for _ in 0..BUDGET {
            match self.tasks.poll_next_unpin(cx) {
                Poll::Ready(Some(done)) => {
                    let now = *now.get_or_insert_with(Instant::now);
                    finish_handler(core, done, now);
                    progress = true;
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }

        if core.wants_input() {
            let readable = if self.drained {
                match io.poll_readable(cx) {
                    Poll::Ready(Ok(())) => true,
                    Poll::Ready(Err(e)) => {
                        core.handle_io_error(Instant::now(), &e);
                        progress = true;
                        false
                    }
                    Poll::Pending => false,
                }
            } else {
                true
            };
            if readable {
                let drained = &mut self.drained;
                let read = teleport_peer::net::with_read_buf(|buf| {
                    let r = Pin::new(&mut &*io).poll_read(cx, buf);
                    // From the thread's buffer into the session's: one copy.
                    let Poll::Ready(r) = r else {
                        // The reactor is watching for more.
                        *drained = true;
                        return false;
                    };
                    let now = Instant::now();
                    match r {
                        Ok(0) => core.handle_eof(now),
                        Ok(n) => {
                            *drained = n < buf.len();
                            core.handle_input(now, &buf[..n]);
                        }
                        Err(e) => core.handle_io_error(now, &e),
                    }
                    true
                });
                progress |= read;
            }
        }

        if self.wbuf.is_empty() {
            // What this turn's commands and handlers queued goes out now.
            core.poll_transmit(&mut self.wbuf);
        }
        if !self.wbuf.is_empty() {
            match Pin::new(&mut &*io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    core.handle_io_error(Instant::now(), &e);
                    progress = true;
                }
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    core.handle_io_error(Instant::now(), &e);
                    progress = true;
                }
                Poll::Pending => {}
            }
        }

        if self.armed.is_some() && Pin::new(&mut self.timer).poll(cx).is_ready() {
            self.armed = None;
            core.handle_timeout(Instant::now());
            progress = true;
        }

        if progress {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
