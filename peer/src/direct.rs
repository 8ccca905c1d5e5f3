//! A connection its owner and the session's callers share, so that a
//! caller can encode and write its own pull or push (see [`DirectPath`])
//! instead of handing it to the owner: one hop fewer per call.
//!
//! The core session, the writing side of the socket and the bytes not yet
//! written sit behind one mutex ([`SharedConn`]) that nobody holds across
//! an `.await` or a blocking wait. The owner (a connection task, a poll
//! loop) takes it to read, run handlers, fire timers and carry out queued
//! commands. A caller takes it only with `try_lock`: when the owner holds
//! it, or there is no connection (re-dialing), or the session is closing,
//! the command goes through the channel as before. A caller wakes the
//! owner only when it left it something to do: bytes the socket would not
//! take, events, an earlier deadline, a changed wish to read.
//!
//! The runtime-specific parts stay in the adapters: how the owner waits
//! (readable, writable, a timer, and [`SharedConn::poll_woken`]), and
//! a non-blocking write for their socket types.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use futures_util::task::AtomicWaker;
use teleport_core::{CloseReason, State};

use crate::driver::{carry_out_call, CoreSession};
use crate::session::{Command, DirectPath};

/// A connection's writing side, as its owner and the session's callers
/// share it. The owner writes with [`ConnWrite::poll_write`] (and is woken
/// when the connection takes more); a caller only ever tries
/// ([`ConnWrite::try_write`]), which must neither wait nor register a
/// wake-up: a stream that cannot write without one (TLS, a user's stream)
/// says `WouldBlock`, and its owner writes what the caller encoded.
pub trait ConnWrite: Send + 'static {
    /// Writes what the connection takes now, without waiting and without
    /// registering for a wake-up; `WouldBlock` when it takes nothing (or
    /// cannot write that way at all: the default). What it takes is on its
    /// way: no [`ConnWrite::poll_flush`] is owed for it (a writer that
    /// buffers keeps the default).
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = buf;
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Writes some of `buf`, or registers `cx` to be woken when it can.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;

    /// Pushes out what the writer buffers itself (TLS records).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Flushes, then ends the writing side (TLS: close_notify; then FIN).
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// A closed connection's writer and its last bytes, to write out and shut
/// down ([`Closing::poll_close`]) before the socket goes.
pub struct Closing<W> {
    /// The writer.
    pub wr: W,
    last: BytesMut,
}

impl<W: ConnWrite> Closing<W> {
    /// Writes the last bytes, then shuts the writing side down.
    pub fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.last.is_empty() {
            match self.wr.poll_write(cx, &self.last) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.last.advance(n),
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.wr.poll_shutdown(cx)
    }

    /// The last bytes are what the core had not handed out yet: nothing
    /// else waits.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// One connection's state, shared by its owner and the session's callers.
pub struct Live<W> {
    core: CoreSession,
    /// The socket's writing side.
    wr: W,
    /// Encoded bytes the socket has not taken yet, in order.
    wbuf: BytesMut,
    /// Written since the writer was last flushed.
    unflushed: bool,
    /// A write failed; [`SharedConn::turn`] hands it to the core.
    write_error: Option<io::Error>,
    /// A write failed: nothing is written any more (the core goes on
    /// reading what already came, then ends the session).
    write_dead: bool,
    /// The deadline the owner waits for, as of its last turn.
    armed: Option<Instant>,
    /// Whether the owner waits for input, as of its last turn.
    wants_input: bool,
}

impl<W: ConnWrite> Live<W> {
    /// The state of a new connection over `wr`.
    pub fn new(core: CoreSession, wr: W) -> Self {
        Live {
            core,
            wr,
            wbuf: BytesMut::new(),
            unflushed: false,
            write_error: None,
            write_dead: false,
            armed: None,
            wants_input: true,
        }
    }

    /// The owner's write: what waits, then the core's output, then a
    /// flush, registering `cx` where the writer cannot go on. Ready once
    /// nothing is left to write (or a write failed: the next turn ends
    /// the session).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.write_dead {
            return Poll::Ready(());
        }
        while self.write_error.is_none() {
            if self.wbuf.is_empty() {
                if !self.core.has_transmit() {
                    break;
                }
                self.core.poll_transmit(&mut self.wbuf);
            }
            match self.wr.poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => self.write_error = Some(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => self.write_error = Some(e),
                Poll::Pending => {
                    self.core.set_unwritten(self.wbuf.len());
                    return Poll::Pending;
                }
            }
        }
        self.core.set_unwritten(self.wbuf.len());
        if self.unflushed && self.write_error.is_none() {
            match self.wr.poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => self.write_error = Some(e),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }

    /// Whether the owner has writing to do: bytes wait, or a flush.
    fn wants_write(&self) -> bool {
        !self.write_dead && (!self.wbuf.is_empty() || self.unflushed)
    }

    /// Writes what the socket takes without waiting: first what waits,
    /// then the core's output. That is taken only once the previous batch
    /// is out (swapping buffers, no copy), so what the socket will not
    /// take piles up in the core, where `max_queued_bytes` bounds it.
    fn flush(&mut self) {
        if self.write_dead {
            return;
        }
        while self.write_error.is_none() {
            if self.wbuf.is_empty() {
                if !self.core.has_transmit() {
                    break;
                }
                self.core.poll_transmit(&mut self.wbuf);
            }
            match self.wr.try_write(&self.wbuf) {
                Ok(0) => self.write_error = Some(io::ErrorKind::WriteZero.into()),
                // No flush owed (see `ConnWrite::try_write`): the owner is
                // not sent round again for one.
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.write_error = Some(e),
            }
        }
        self.core.set_unwritten(self.wbuf.len());
    }

    /// Notes, where callers see it, what the owner waits for now: the
    /// core's deadline and whether it wants input. Returns the deadline.
    fn note_waits(&mut self) -> Option<Instant> {
        self.armed = self.core.poll_timeout();
        self.wants_input = self.core.wants_input();
        self.armed
    }

    /// Whether the owner must look again after a caller's call: something
    /// to write once the socket has room, a failed write, events, a
    /// deadline earlier than the one it waits for, or a changed wish to
    /// read.
    fn owner_must_look(&self) -> bool {
        let earlier = match (self.core.poll_timeout(), self.armed) {
            (Some(new), Some(armed)) => new < armed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        self.wants_write()
            || self.write_error.is_some()
            || self.core.has_events()
            || earlier
            || self.core.wants_input() != self.wants_input
    }
}

/// What the owner does after [`SharedConn::turn`].
pub enum Turn<W> {
    /// Wait for these, besides the wake-up, handlers and the adapter's own.
    Wait {
        /// Call `handle_timeout` at this instant.
        deadline: Option<Instant>,
        /// Wait for the socket to be readable.
        wants_input: bool,
        /// Wait for the socket to be writable (bytes wait to be written).
        wants_write: bool,
    },
    /// The session closed. The connection is taken away from callers; its
    /// writer and last bytes are to be written out and shut down
    /// ([`Closing::poll_close`]) before the socket is dropped.
    Closed(CloseReason, Closing<W>),
    /// The peer said it is going away (see
    /// [`teleport_core::GOING_AWAY_URI`]) and this session re-dials: the
    /// connection is taken away from callers, to finish the calls made on
    /// it under a session of its own ([`crate::adapter::Driver::hand_over`]),
    /// while this one dials a new connection for the calls made from now
    /// on. Only for a [`SharedConn::moving_on_notice`].
    Moved(Box<Live<W>>),
}

/// A session's connection, as its owner and its callers share it: the
/// session's [`DirectPath`]. `None` inside while there is no connection.
pub struct SharedConn<W> {
    live: Mutex<Option<Live<W>>>,
    /// A going-away notice hands the connection over ([`Turn::Moved`]).
    moves: bool,
    /// Raised when the owner should take a turn (in the same allocation
    /// as the state, as the owner looks at both on every wake-up).
    signal: Signal,
}

impl<W: ConnWrite> Default for SharedConn<W> {
    fn default() -> Self {
        SharedConn {
            live: Mutex::new(None),
            moves: false,
            signal: Signal::default(),
        }
    }
}

impl<W: ConnWrite> SharedConn<W> {
    /// No connection yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// No connection yet; when the peer of one says it is going away,
    /// [`SharedConn::turn`] hands it over ([`Turn::Moved`]) instead of
    /// keeping new calls back until its pending ones are over: for a
    /// session that re-dials.
    pub fn moving_on_notice() -> Self {
        SharedConn {
            moves: true,
            ..Self::default()
        }
    }

    /// Tells the owner to take a turn.
    pub fn wake(&self) {
        self.signal.raise();
    }

    /// Ready once [`SharedConn::wake`] was called since the last time it
    /// was ready (the owner's wait for its wake-up).
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.signal.poll_raised(cx)
    }

    /// The shared state, for the owner (never held across a wait).
    pub fn lock(&self) -> MutexGuard<'_, Option<Live<W>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a connection: callers may use it from now on.
    pub fn open(&self, live: Live<W>) {
        *self.lock() = Some(live);
        // Commands queued while there was none are taken at once.
        self.wake();
    }

    /// The owner's work between two waits, under the lock: `drain`
    /// delivers the core's events (replies to callers, handlers started),
    /// output is written, and what to wait for is noted where callers see
    /// it.
    pub fn turn(
        &self,
        now: Instant,
        mut drain: impl FnMut(&mut CoreSession) -> Option<CloseReason>,
    ) -> Turn<W> {
        let mut guard = self.lock();
        let idle = Turn::Wait {
            deadline: None,
            wants_input: false,
            wants_write: false,
        };
        // (Only the owner takes the connection away, and it stops then: the
        // `idle` answers are never reached.)
        let closed = loop {
            let Some(live) = guard.as_mut() else {
                return idle;
            };
            if let Some(e) = live.write_error.take() {
                // What the peer sent before the failure is still read.
                live.core.handle_write_error(now, &e);
                live.write_dead = true;
                live.wbuf.clear();
                live.unflushed = false;
            }
            if let Some(reason) = drain(&mut live.core) {
                break reason;
            }
            if self.moves && live.core.is_moving() {
                let Some(live) = guard.take() else {
                    return idle;
                };
                return Turn::Moved(Box::new(live));
            }
            live.flush();
            if live.write_error.is_none() {
                return Turn::Wait {
                    deadline: live.note_waits(),
                    wants_input: live.wants_input,
                    wants_write: live.wants_write(),
                };
            }
            // The write failed: the next round closes the session.
        };
        let Some(mut live) = guard.take() else {
            return idle;
        };
        let mut last = std::mem::take(&mut live.wbuf);
        live.core.poll_transmit(&mut last);
        Turn::Closed(closed, Closing { wr: live.wr, last })
    }

    /// The owner writes what waits (see [`Turn::Wait::wants_write`]),
    /// registering `cx` where the connection cannot take more. Ready when
    /// it is done for now: take a turn then.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self.lock().as_mut() {
            Some(live) => live.poll_flush(cx),
            None => Poll::Ready(()),
        }
    }

    /// Runs `f` on the core, if there is a connection.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut CoreSession) -> R) -> Option<R> {
        self.lock().as_mut().map(|live| f(&mut live.core))
    }
}

impl<W: ConnWrite> DirectPath for SharedConn<W> {
    fn queued(&self) {
        self.wake();
    }

    fn try_command(&self, cmd: Command) -> Result<(), Command> {
        let mut guard = match self.live.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => return Err(cmd),
        };
        let Some(live) = guard.as_mut() else {
            return Err(cmd);
        };
        // A closing session answers calls as its owner does (a peer's
        // shutdown or `Session::close` also turns this path off).
        if live.core.state() != State::Open {
            return Err(cmd);
        }
        carry_out_call(&mut live.core, cmd, Instant::now())?;
        live.flush();
        let look = live.owner_must_look();
        drop(guard);
        if look {
            self.wake();
        }
        Ok(())
    }
}

/// A wake-up for one waiting task, cheap to wait on in every turn of a
/// loop (a `Notify` queues each waiter under a lock).
#[derive(Default)]
struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Wakes the task, or makes its next poll ready.
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
