//! The task that owns one session: it alone touches the core session, so
//! nothing on the hot path takes a lock.
//!
//! Its loop waits on whichever comes first: a command from a handle, a
//! handler finishing, the socket readable, the socket writable while output
//! is pending, or the core's deadline. Everything else is the shared
//! [`Driver`]'s.

use std::future::poll_fn;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use teleport_core::CloseReason;
use teleport_peer::{finish_handler, Done, Driver, BUDGET, FINAL_FLUSH};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::task::JoinSet;

use crate::net::Stream;

/// Runs the session over `stream`, re-dialing as configured, until it is
/// closed for good.
pub(crate) async fn run(driver: Driver, stream: Stream) {
    let cfg = driver.peer().config().clone();
    driver
        .run(
            stream,
            async |driver: &mut Driver, s: Stream, backlog: &mut Vec<teleport_peer::Command>| {
                match s {
                    Stream::Tcp(mut t) => {
                        let (r, w) = t.split();
                        run_conn(driver, r, w, backlog).await
                    }
                    #[cfg(unix)]
                    Stream::Unix(mut u) => {
                        let (r, w) = u.split();
                        run_conn(driver, r, w, backlog).await
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

async fn run_conn<R, W>(
    driver: &mut Driver,
    mut rd: R,
    mut wr: W,
    backlog: &mut Vec<teleport_peer::Command>,
) -> CloseReason
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let id = driver.session().id();
    let mut core = driver.open(Instant::now(), backlog);
    let mut wbuf = BytesMut::new();
    let mut rbuf = BytesMut::new();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut sleep = pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
    let mut armed: Option<Instant> = None;
    loop {
        let closed = driver.drain_events(&mut core, Instant::now(), &mut |fut| {
            tasks.spawn(fut);
        });
        if wbuf.is_empty() {
            core.poll_transmit(&mut wbuf);
        }
        if let Some(reason) = closed {
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
            cmd = driver.commands().recv() => {
                let now = Instant::now();
                match cmd {
                    Some(c) => {
                        driver.on_command(&mut core, c, now);
                        driver.take_commands(&mut core, now);
                    }
                    None => core.close(now),
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let now = Instant::now();
                if let Ok(d) = done {
                    finish_handler(&mut core, d, now);
                }
                for _ in 0..BUDGET {
                    match tasks.try_join_next() {
                        Some(Ok(d)) => finish_handler(&mut core, d, now),
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

/// Reads what the socket has into the worker's buffer and appends it to
/// `dst`, so the bytes land in a buffer that exists only while there is
/// something to read.
fn poll_read_into<R: AsyncRead + Unpin>(
    rd: &mut R,
    cx: &mut Context<'_>,
    dst: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    teleport_peer::net::with_read_buf(|buf| {
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
