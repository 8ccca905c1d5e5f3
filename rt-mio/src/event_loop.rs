//! The poll loop: one thread owns every session of a peer, its listeners
//! and one [`mio::Waker`]. Nothing else touches a session's core, so the
//! hot path takes no lock but the inbox's, once per wakeup.
//!
//! Each turn it waits on the earliest of: a socket readable, a socket
//! writable while its output is pending, a message in the inbox (commands
//! from session handles, finished handlers, dialed connections), or the
//! earliest deadline of all sessions. Then it feeds the cores and drains
//! each touched session's events and transmits, with a budget per turn.
//! Everything else is the shared [`Driver`]'s.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;
use teleport_core::{CloseReason, Rerror, Role};
use teleport_peer::adapter::{
    finish_handler, refuse, Abort, Command, CoreSession, Done, Driver, Linger, PeerCore,
    SessionStart, Wake, FINAL_FLUSH, LINGER, LINGER_BYTES,
};
use teleport_peer::{BoxFuture, PeerConfig, ProtoFunc, Session};

use crate::exec::{self, Home, Pool, Task};
use crate::net::{self, Connected, DialTls, ListenTls, Listener, Stream};

const WAKER: Token = Token(usize::MAX);
/// Listener tokens start here; connections use the slab keys below.
const LISTENER_BASE: usize = usize::MAX / 2;
/// Tokens of lingering connections start here (below the listeners').
const LINGER_BASE: usize = usize::MAX / 4;
/// Tokens of accepted connections in their TLS handshake start here (below
/// the lingering ones').
#[cfg(feature = "tls")]
const HANDSHAKE_BASE: usize = usize::MAX / 8;
/// Reads (of [`READ_CHUNK`]) per connection per turn, so one fast sender
/// cannot starve the others.
const READ_BUDGET: usize = 16;
/// One read's worth: what every adapter reads at once, so a `unixpacket`
/// message (at most this) always arrives whole.
const READ_CHUNK: usize = teleport_peer::net::READ_CHUNK;
/// Connections accepted per listener per turn.
const ACCEPT_BUDGET: usize = 128;
/// Wait after an accept error (out of descriptors, say): do not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// What other threads ask of the loop.
pub(crate) enum Msg {
    /// A dialed connection, already registered with the peer.
    Open(Box<Pending>),
    /// A session's new connection after a re-dial, with the command that
    /// triggered it.
    Redialed(Box<Pending>, Vec<Command>),
    /// Serve a bound listener, its sessions with this proto (and TLS).
    Listen(Listener, Option<ProtoFunc>, ListenTls),
    /// Drop a session at once (shutdown timed out).
    Abort(u64),
    /// A handler finished on a worker.
    Done {
        conn: usize,
        session: u64,
        task: usize,
        done: Done,
    },
    /// A handler future run by the loop (inline mode) was woken.
    Poll(Arc<Task>),
    /// Shutdown began: stop accepting.
    ShutdownBegun,
    /// The peer was dropped: end every session and the loop.
    Stop,
}

/// A connection on its way to the loop.
pub(crate) struct Pending {
    driver: Driver,
    stream: Stream,
    slot: Arc<Slot>,
    /// The TLS its re-dials speak.
    tls: DialTls,
}

impl Pending {
    /// The session ends without ever running (its loop is gone).
    pub(crate) fn finish(self) {
        self.driver.finish();
    }
}

/// What a session's [`Wake`] hook needs: its id, and whether it is
/// already on the ready list (so a burst of commands wakes the loop once).
#[derive(Default)]
pub(crate) struct Slot {
    id: AtomicU64,
    queued: AtomicBool,
}

#[derive(Default)]
struct Inbox {
    msgs: Vec<Msg>,
    /// Sessions with commands waiting.
    ready: Vec<u64>,
    closed: bool,
}

/// The loop's side that other threads hold.
pub(crate) struct LoopShared {
    inbox: Mutex<Inbox>,
    /// A wake is on its way and the inbox will be read: no need for
    /// another `Waker::wake` (a syscall).
    notified: AtomicBool,
    waker: mio::Waker,
}

impl LoopShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                tracing::error!(target: "teleport::mio", error = %e, "could not wake the poll loop");
            }
        }
    }

    /// Hands `msg` to the loop; gives it back if the loop has ended.
    // Rarely an error; boxing every message to make it smaller would cost
    // an allocation per finished handler.
    #[allow(clippy::result_large_err)]
    pub(crate) fn post(&self, msg: Msg) -> Result<(), Msg> {
        {
            let mut inbox = self.lock();
            if inbox.closed {
                return Err(msg);
            }
            inbox.msgs.push(msg);
        }
        self.notify();
        Ok(())
    }

    fn ready(&self, id: u64) {
        {
            let mut inbox = self.lock();
            if inbox.closed {
                return;
            }
            inbox.ready.push(id);
        }
        self.notify();
    }
}

/// The hook a session handle calls after queueing a command.
fn wake_hook(shared: &Arc<LoopShared>, slot: Arc<Slot>) -> Wake {
    let shared = Arc::downgrade(shared);
    Arc::new(move || {
        if !slot.queued.swap(true, Ordering::AcqRel) {
            if let Some(shared) = shared.upgrade() {
                shared.ready(slot.id.load(Ordering::Acquire));
            }
        }
    })
}

/// How [`PeerCore::cancel_remaining`] stops one of the loop's sessions.
fn abort_hook(shared: &Arc<LoopShared>, id: u64) -> Abort {
    let shared = Arc::downgrade(shared);
    Box::new(move || {
        if let Some(shared) = shared.upgrade() {
            let _ = shared.post(Msg::Abort(id));
        }
    })
}

/// A session for a new connection: its handle, registered with the peer,
/// and what the loop needs to run it.
pub(crate) fn new_session(
    peer: &Arc<PeerCore>,
    shared: &Arc<LoopShared>,
    c: Connected,
    conn: SessionStart,
    start: impl FnOnce(Box<Pending>),
) -> Session {
    let slot = Arc::new(Slot::default());
    let wake = Some(wake_hook(shared, slot.clone()));
    let conn = conn.wake(wake);
    peer.start_session(conn, |driver| {
        let id = driver.session().id();
        slot.id.store(id, Ordering::Release);
        start(Box::new(Pending {
            driver,
            stream: c.stream,
            slot,
            tls: c.tls,
        }));
        abort_hook(shared, id)
    })
}

struct Conn {
    stream: Stream,
    core: CoreSession,
    driver: Driver,
    /// The session the connection was opened for: its handler tasks are
    /// known by it (the driver changes when the connection is handed
    /// over, see [`move_on`]).
    origin: u64,
    slot: Arc<Slot>,
    /// Bytes to write, many frames batched.
    wbuf: BytesMut,
    /// Readiness not yet drained to `WouldBlock` (edge-triggered).
    readable: bool,
    writable: bool,
    /// `WRITABLE` is registered (only while output is pending).
    write_interest: bool,
    /// Commands may be waiting.
    cmds: bool,
    /// The armed deadline is due.
    due: bool,
    /// On this turn's service list.
    touched: bool,
    /// The deadline in the timer set.
    armed: Option<Instant>,
    /// Handlers running for this session.
    tasks: Slab<Arc<Task>>,
    /// The session ended: flushing its last bytes until the instant.
    closing: Option<(CloseReason, Instant)>,
    /// The TLS its re-dials speak.
    tls: DialTls,
}

/// A dialed session whose connection broke, waiting for its next use to
/// re-dial.
struct Broken {
    driver: Driver,
    slot: Arc<Slot>,
    addr: String,
    tls: DialTls,
}

struct Listening {
    listener: Listener,
    proto: Option<ProtoFunc>,
    tls: ListenTls,
    ready: bool,
    retry_at: Option<Instant>,
    /// A shutdown waits for this listener to be closed: what it accepted
    /// before is a session by then.
    _accepting: teleport_peer::adapter::Accepting,
}

/// A connection whose session ended, its write side shut down, read and
/// discarded until the peer's end of input (see [`LINGER`]).
struct Lingering {
    stream: Stream,
    until: Instant,
    left: usize,
    readable: bool,
    _guard: Linger,
}

pub(crate) struct EventLoop {
    poll: Poll,
    events: Events,
    shared: Arc<LoopShared>,
    peer: Arc<PeerCore>,
    /// `None`: handlers run on the loop (inline mode).
    pool: Option<Arc<Pool>>,
    conns: Slab<Conn>,
    ids: HashMap<u64, usize>,
    listeners: Slab<Listening>,
    lingering: Slab<Lingering>,
    /// (deadline, lingering connection).
    linger_timers: BTreeSet<(Instant, usize)>,
    /// Accepted connections in their TLS handshake.
    #[cfg(feature = "tls")]
    handshakes: Slab<crate::tls::Handshake>,
    /// (deadline, handshake).
    #[cfg(feature = "tls")]
    handshake_timers: BTreeSet<(Instant, usize)>,
    /// Handshakes whose socket is ready.
    #[cfg(feature = "tls")]
    handshakes_ready: Vec<usize>,
    /// (deadline, connection): the earliest is the poll timeout.
    timers: BTreeSet<(Instant, usize)>,
    touched: Vec<usize>,
    /// Connections with work left after their budget, for the next turn.
    again: Vec<usize>,
    /// Inline mode: handler futures still pending after their first poll.
    spawned: Vec<BoxFuture<Done>>,
    rbuf: Vec<u8>,
    msgs: Vec<Msg>,
    ready: Vec<u64>,
    stop: bool,
}

/// Marks `key` for service this turn.
fn touch(conns: &mut Slab<Conn>, touched: &mut Vec<usize>, key: usize) {
    if let Some(c) = conns.get_mut(key) {
        if !c.touched {
            c.touched = true;
            touched.push(key);
        }
    }
}

/// Asks for `WRITABLE` only while output is pending; `false` if the
/// registration failed (the core then has the error to close with).
fn set_write_interest(registry: &Registry, c: &mut Conn, key: usize, on: bool) -> bool {
    if c.write_interest == on {
        return true;
    }
    let interest = if on {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    match registry.reregister(&mut c.stream, Token(key), interest) {
        Ok(()) => {
            c.write_interest = on;
            true
        }
        Err(e) => {
            c.core.handle_io_error(Instant::now(), &e);
            false
        }
    }
}

fn rearm(timers: &mut BTreeSet<(Instant, usize)>, c: &mut Conn, key: usize, at: Option<Instant>) {
    if c.armed != at {
        if let Some(old) = c.armed {
            timers.remove(&(old, key));
        }
        if let Some(new) = at {
            timers.insert((new, key));
        }
        c.armed = at;
    }
}

impl EventLoop {
    /// Starts the loop of `peer` on a thread of its own, with `workers`
    /// handler threads (0: handlers run on the loop).
    pub(crate) fn start(
        peer: Arc<PeerCore>,
        workers: usize,
    ) -> io::Result<(Arc<LoopShared>, thread::JoinHandle<()>)> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(LoopShared {
            inbox: Mutex::new(Inbox::default()),
            notified: AtomicBool::new(false),
            waker,
        });
        let pool = match workers {
            0 => None,
            n => Some(Pool::start(n, &shared)?),
        };
        let lp = EventLoop {
            poll,
            events: Events::with_capacity(1024),
            shared: shared.clone(),
            peer,
            pool,
            conns: Slab::new(),
            ids: HashMap::new(),
            listeners: Slab::new(),
            lingering: Slab::new(),
            linger_timers: BTreeSet::new(),
            #[cfg(feature = "tls")]
            handshakes: Slab::new(),
            #[cfg(feature = "tls")]
            handshake_timers: BTreeSet::new(),
            #[cfg(feature = "tls")]
            handshakes_ready: Vec::new(),
            timers: BTreeSet::new(),
            touched: Vec::new(),
            again: Vec::new(),
            spawned: Vec::new(),
            rbuf: vec![0; READ_CHUNK],
            msgs: Vec::new(),
            ready: Vec::new(),
            stop: false,
        };
        let thread = thread::Builder::new()
            .name("teleport-mio-loop".into())
            .spawn(move || lp.run())?;
        Ok((shared, thread))
    }

    fn run(mut self) {
        exec::set_on_loop(Arc::as_ptr(self.peer.shared()) as usize);
        while !self.stop {
            let timeout = self.timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut self.events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(target: "teleport::mio", error = %e, "poll failed; the peer's loop stops");
                break;
            }
            let now = Instant::now();
            self.readiness();
            if self.shared.notified.swap(false, Ordering::AcqRel) {
                self.read_inbox(now);
            }
            if self.peer.is_shutting_down() {
                self.close_listeners();
            }
            self.accept(now);
            #[cfg(feature = "tls")]
            self.handshake(now);
            self.expire(now);
            self.drain_lingering(now);
            for key in std::mem::take(&mut self.again) {
                touch(&mut self.conns, &mut self.touched, key);
            }
            let mut touched = std::mem::take(&mut self.touched);
            for key in touched.drain(..) {
                self.service(key, now);
            }
            self.touched = touched;
        }
        self.teardown();
    }

    /// How long to wait: until the earliest deadline, or not at all while
    /// work is left over.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty()
            || self
                .listeners
                .iter()
                .any(|(_, l)| l.ready && l.retry_at.is_none())
        {
            return Some(Duration::ZERO);
        }
        let mut at = self.timers.first().map(|(d, _)| *d);
        if let Some(&(l, _)) = self.linger_timers.first() {
            at = Some(at.map_or(l, |a| a.min(l)));
        }
        #[cfg(feature = "tls")]
        if let Some(&(h, _)) = self.handshake_timers.first() {
            at = Some(at.map_or(h, |a| a.min(h)));
        }
        for (_, l) in &self.listeners {
            if let Some(r) = l.retry_at {
                at = Some(at.map_or(r, |a| a.min(r)));
            }
        }
        at.map(|d| d.saturating_duration_since(now))
    }

    fn readiness(&mut self) {
        let EventLoop {
            events,
            conns,
            listeners,
            lingering,
            touched,
            #[cfg(feature = "tls")]
            handshakes,
            #[cfg(feature = "tls")]
            handshakes_ready,
            ..
        } = self;
        for ev in events.iter() {
            let t = ev.token().0;
            if t == WAKER.0 {
                continue;
            }
            if t >= LISTENER_BASE {
                if let Some(l) = listeners.get_mut(t - LISTENER_BASE) {
                    l.ready = true;
                }
                continue;
            }
            if t >= LINGER_BASE {
                if let Some(l) = lingering.get_mut(t - LINGER_BASE) {
                    l.readable = true;
                }
                continue;
            }
            #[cfg(feature = "tls")]
            if t >= HANDSHAKE_BASE {
                if let Some(h) = handshakes.get_mut(t - HANDSHAKE_BASE) {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        h.readable = true;
                    }
                    if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                        h.writable = true;
                    }
                    handshakes_ready.push(t - HANDSHAKE_BASE);
                }
                continue;
            }
            if let Some(c) = conns.get_mut(t) {
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    c.readable = true;
                }
                if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                    c.writable = true;
                }
                touch(conns, touched, t);
            }
        }
    }

    fn read_inbox(&mut self, now: Instant) {
        {
            let mut inbox = self.shared.lock();
            std::mem::swap(&mut inbox.msgs, &mut self.msgs);
            std::mem::swap(&mut inbox.ready, &mut self.ready);
        }
        let mut msgs = std::mem::take(&mut self.msgs);
        for msg in msgs.drain(..) {
            match msg {
                Msg::Open(p) => self.insert(*p, Vec::new(), now),
                Msg::Redialed(p, backlog) => self.insert(*p, backlog, now),
                Msg::Listen(l, proto, tls) => self.add_listener(l, proto, tls),
                Msg::Abort(id) => self.abort(id),
                Msg::Done {
                    conn,
                    session,
                    task,
                    done,
                } => {
                    if let Some(c) = self.conns.get_mut(conn) {
                        if c.origin == session && c.tasks.try_remove(task).is_some() {
                            finish_handler(&mut c.core, done, now);
                            touch(&mut self.conns, &mut self.touched, conn);
                        }
                    }
                }
                Msg::Poll(task) => {
                    if let Some(c) = self.conns.get_mut(task.conn) {
                        if c.origin == task.session && c.tasks.contains(task.key) {
                            if let Some(done) = task.run() {
                                c.tasks.remove(task.key);
                                finish_handler(&mut c.core, done, now);
                                touch(&mut self.conns, &mut self.touched, task.conn);
                            }
                        }
                    }
                }
                Msg::ShutdownBegun => self.close_listeners(),
                Msg::Stop => self.stop = true,
            }
        }
        self.msgs = msgs;
        let mut ready = std::mem::take(&mut self.ready);
        for id in ready.drain(..) {
            if let Some(&key) = self.ids.get(&id) {
                self.conns[key].cmds = true;
                touch(&mut self.conns, &mut self.touched, key);
            }
        }
        self.ready = ready;
    }

    /// Takes a connection into the loop and opens its core session.
    fn insert(&mut self, p: Pending, mut backlog: Vec<Command>, now: Instant) {
        let Pending {
            mut driver,
            mut stream,
            slot,
            tls,
        } = p;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
        {
            tracing::error!(target: "teleport::mio", session = driver.session().id(), error = %e, "could not register the connection");
            for cmd in backlog.drain(..) {
                refuse(cmd, Rerror::conn_closed().with_detail(e.to_string()));
            }
            driver.finish();
            return;
        }
        slot.queued.store(false, Ordering::Release);
        let core = driver.open(now, &mut backlog);
        let id = driver.session().id();
        entry.insert(Conn {
            stream,
            core,
            driver,
            origin: id,
            slot,
            wbuf: BytesMut::new(),
            readable: true,
            writable: true,
            write_interest: false,
            cmds: true,
            due: false,
            touched: false,
            armed: None,
            tasks: Slab::new(),
            closing: None,
            tls,
        });
        self.ids.insert(id, key);
        touch(&mut self.conns, &mut self.touched, key);
    }

    fn add_listener(&mut self, mut listener: Listener, proto: Option<ProtoFunc>, tls: ListenTls) {
        if self.peer.is_shutting_down() {
            tracing::info!(target: "teleport::mio", "listener closed");
            return;
        }
        let entry = self.listeners.vacant_entry();
        let token = Token(LISTENER_BASE + entry.key());
        match self
            .poll
            .registry()
            .register(&mut listener, token, Interest::READABLE)
        {
            Ok(()) => {
                entry.insert(Listening {
                    listener,
                    proto,
                    tls,
                    ready: true,
                    retry_at: None,
                    _accepting: self.peer.accepting(),
                });
            }
            Err(e) => {
                tracing::error!(target: "teleport::mio", error = %e, "could not register the listener")
            }
        }
    }

    fn close_listeners(&mut self) {
        for mut l in self.listeners.drain() {
            let _ = self.poll.registry().deregister(&mut l.listener);
            tracing::info!(target: "teleport::mio", "listener closed");
        }
        // Handshakes not done are connections not accepted yet.
        #[cfg(feature = "tls")]
        {
            for mut h in self.handshakes.drain() {
                let _ = self.poll.registry().deregister(&mut h.stream);
            }
            self.handshake_timers.clear();
        }
    }

    fn accept(&mut self, now: Instant) {
        let mut accepted = Vec::new();
        let cfg = self.peer.config();
        for (_, l) in self.listeners.iter_mut() {
            if !l.ready || l.retry_at.is_some_and(|r| r > now) {
                continue;
            }
            l.retry_at = None;
            for _ in 0..ACCEPT_BUDGET {
                match l.listener.accept(cfg) {
                    Ok(c) => accepted.push((c, l.proto.clone(), l.tls.clone())),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        l.ready = false;
                        break;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                        ) => {}
                    Err(e) => {
                        tracing::warn!(target: "teleport::mio", error = %e, "accept failed");
                        l.retry_at = Some(now + ACCEPT_RETRY);
                        break;
                    }
                }
            }
        }
        for (c, proto, tls) in accepted {
            match tls {
                None => {}
                #[cfg(feature = "tls")]
                Some(acceptor) => {
                    self.start_handshake(c, proto, &acceptor, now);
                    continue;
                }
                #[cfg(not(feature = "tls"))]
                Some(never) => match never {},
            }
            let mut pending = None;
            let conn =
                SessionStart::new(c.remote.clone(), c.local.clone(), Role::Acceptor).proto(proto);
            new_session(&self.peer, &self.shared, c, conn, |p| pending = Some(p));
            if let Some(p) = pending {
                self.insert(*p, Vec::new(), now);
            }
        }
    }

    /// Takes an accepted connection into its TLS handshake, driven by the
    /// loop from now on.
    #[cfg(feature = "tls")]
    fn start_handshake(
        &mut self,
        c: Connected,
        proto: Option<ProtoFunc>,
        acceptor: &teleport_peer::tls::TlsAcceptor,
        now: Instant,
    ) {
        let remote = c.remote.clone();
        let mut h = match crate::tls::Handshake::new(c, acceptor, proto, now) {
            Ok(h) => h,
            Err((_, e)) => {
                tracing::warn!(target: "teleport::mio", %remote, error = %e, "TLS handshake failed");
                return;
            }
        };
        let entry = self.handshakes.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut h.stream, Token(HANDSHAKE_BASE + key), interest)
        {
            tracing::warn!(target: "teleport::mio", %remote, error = %e, "could not register the connection");
            return;
        }
        self.handshake_timers.insert((h.until, key));
        entry.insert(h);
        self.handshakes_ready.push(key);
    }

    /// Gives up the handshakes whose time is up, and moves on those whose
    /// socket is ready: a finished one starts its session, a failed one is
    /// logged and let go. The listener serves on either way.
    #[cfg(feature = "tls")]
    fn handshake(&mut self, now: Instant) {
        use crate::tls::Progress;
        while let Some(&(at, key)) = self.handshake_timers.first() {
            if at > now {
                break;
            }
            self.handshake_timers.pop_first();
            if let Some(mut h) = self.handshakes.try_remove(key) {
                let _ = self.poll.registry().deregister(&mut h.stream);
                let e = teleport_peer::tls::TlsError::Timeout(h.timeout);
                tracing::warn!(target: "teleport::mio", remote = %h.remote, error = %e, "TLS handshake failed");
                let mut stream = h.fail();
                stream.shutdown_write();
                self.linger(stream);
            }
        }
        let mut ready = std::mem::take(&mut self.handshakes_ready);
        for key in ready.drain(..) {
            let Some(h) = self.handshakes.get_mut(key) else {
                continue;
            };
            let failed = match h.advance() {
                Progress::Waiting => continue,
                Progress::Done => None,
                Progress::Failed(e) => Some(e),
            };
            let mut h = self.handshakes.remove(key);
            self.handshake_timers.remove(&(h.until, key));
            let _ = self.poll.registry().deregister(&mut h.stream);
            if let Some(e) = failed {
                tracing::warn!(target: "teleport::mio", remote = %h.remote, error = %e, "TLS handshake failed");
                let mut stream = h.fail();
                stream.shutdown_write();
                // Read what the other side still sends, so the alert is not
                // lost to a reset.
                self.linger(stream);
                continue;
            }
            let (c, proto) = h.into_connected();
            let mut pending = None;
            let conn =
                SessionStart::new(c.remote.clone(), c.local.clone(), Role::Acceptor).proto(proto);
            new_session(&self.peer, &self.shared, c, conn, |p| pending = Some(p));
            if let Some(p) = pending {
                self.insert(*p, Vec::new(), now);
            }
        }
        self.handshakes_ready = ready;
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(c) = self.conns.get_mut(key) {
                c.armed = None;
                c.due = true;
                touch(&mut self.conns, &mut self.touched, key);
            }
        }
    }

    /// Feeds one connection's core with what is waiting (commands, the
    /// timer, input) and writes what it produced, until nothing moves or
    /// the budget is spent.
    fn service(&mut self, key: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        c.touched = false;
        if c.closing.is_some() || self.drive(key, now) {
            self.flush_closing(key, now);
        }
    }

    /// [`EventLoop::service`] of an open session; whether it closed.
    fn drive(&mut self, key: usize, mut now: Instant) -> bool {
        let EventLoop {
            poll,
            shared,
            peer,
            pool,
            conns,
            ids,
            timers,
            again,
            spawned,
            rbuf,
            ..
        } = self;
        let c = &mut conns[key];
        let id = c.origin;
        if c.due {
            c.due = false;
            c.core.handle_timeout(now);
        }
        if c.cmds {
            c.cmds = false;
            c.slot.queued.store(false, Ordering::Release);
            c.driver.take_commands(&mut c.core, now);
            if c.driver.has_commands() {
                c.cmds = true;
                again.push(key);
            }
        }
        let mut reads = 0;
        loop {
            let mut progress = false;
            let closed = match pool {
                Some(pool) => c.driver.drain_events_deferred(&mut c.core, &mut |call| {
                    let entry = c.tasks.vacant_entry();
                    let home = Home::Pool(Arc::downgrade(pool));
                    let task = Task::unstarted(call, key, id, entry.key(), home);
                    entry.insert(task.clone());
                    pool.submit(task);
                }),
                None => c
                    .driver
                    .drain_events(&mut c.core, now, &mut |fut| spawned.push(fut)),
            };
            // Inline mode: a handler that waited on its first poll becomes a
            // task of the loop, polled again with a real waker.
            for fut in spawned.drain(..) {
                let entry = c.tasks.vacant_entry();
                let home = Home::Loop(Arc::downgrade(shared));
                let task = Task::running(fut, key, id, entry.key(), home);
                entry.insert(task.clone());
                if let Some(done) = task.run() {
                    c.tasks.remove(task.key);
                    finish_handler(&mut c.core, done, now);
                    progress = true;
                }
            }
            if c.wbuf.is_empty() {
                c.core.poll_transmit(&mut c.wbuf);
            }
            if let Some(reason) = closed {
                c.core.poll_transmit(&mut c.wbuf);
                c.closing = Some((reason, now + FINAL_FLUSH));
                return true;
            }
            if c.core.is_moving() && c.driver.moves_on_notice() {
                move_on(c, key, peer, shared, ids);
            }
            while c.writable && !c.wbuf.is_empty() {
                match c.stream.write(&c.wbuf) {
                    Ok(0) => {
                        let e = io::Error::from(io::ErrorKind::WriteZero);
                        // What the peer sent before is still read.
                        c.core.handle_write_error(now, &e);
                        c.wbuf.clear();
                        progress = true;
                        break;
                    }
                    Ok(n) => c.wbuf.advance(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        c.core.handle_write_error(now, &e);
                        c.wbuf.clear();
                        progress = true;
                        break;
                    }
                }
            }
            // A stream with bytes of its own to write (TLS records).
            if c.writable && c.stream.wants_write() {
                match c.stream.flush() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                    Err(e) => {
                        c.core.handle_write_error(now, &e);
                        c.wbuf.clear();
                        progress = true;
                    }
                }
            }
            c.core.set_unwritten(c.wbuf.len());
            if c.wbuf.is_empty() && c.writable && c.core.queued_bytes() > 0 {
                progress = true;
            }
            if c.readable && c.core.wants_input() {
                if reads == READ_BUDGET {
                    again.push(key);
                } else {
                    reads += 1;
                    let read = c.stream.read(rbuf);
                    // Commands that came while we read go first: a close
                    // (a shutdown's, say) asked for before these bytes were
                    // sent must already hold when they are handled.
                    if read.is_ok() && c.driver.has_commands() {
                        c.driver.take_commands(&mut c.core, now);
                    }
                    match read {
                        Ok(0) => {
                            c.readable = false;
                            c.core.handle_eof(now);
                            progress = true;
                        }
                        Ok(n) => {
                            // When the bytes came, not when the turn
                            // began: a reply read in the turn that sent
                            // its pull took time all the same.
                            now = Instant::now();
                            c.core.handle_input(now, &rbuf[..n]);
                            progress = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                        Err(e) => {
                            c.core.handle_io_error(now, &e);
                            progress = true;
                        }
                    }
                }
            }
            if !progress {
                break;
            }
        }
        let wants_write = !c.wbuf.is_empty() || c.stream.wants_write();
        if !set_write_interest(poll.registry(), c, key, wants_write) {
            again.push(key);
        }
        let at = c.core.poll_timeout();
        rearm(timers, c, key, at);
        false
    }

    /// Writes what a closed session has left, then lets it go.
    fn flush_closing(&mut self, key: usize, now: Instant) {
        let c = &mut self.conns[key];
        let Some((_, until)) = c.closing else { return };
        let mut failed = false;
        while c.writable && !c.wbuf.is_empty() {
            match c.stream.write(&c.wbuf) {
                Ok(0) => failed = true,
                Ok(n) => c.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => failed = true,
            }
            if failed {
                break;
            }
        }
        if c.wbuf.is_empty() {
            // Everything is written: TLS says the end is meant.
            c.stream.begin_close();
        }
        if c.writable && !failed && c.stream.wants_write() {
            match c.stream.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                Err(_) => failed = true,
            }
        }
        let done = c.wbuf.is_empty() && !c.stream.wants_write();
        if done || failed || now >= until {
            if !c.wbuf.is_empty() {
                tracing::debug!(target: "teleport::mio", session = c.driver.session().id(),
                    "could not flush the last bytes"
                );
            }
            self.finalize(key);
            return;
        }
        if !c.write_interest {
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .reregister(&mut c.stream, Token(key), interest)
                .is_err()
            {
                self.finalize(key);
                return;
            }
            c.write_interest = true;
        }
        rearm(&mut self.timers, c, key, Some(until));
    }

    /// Takes a connection out of the loop: its socket, timer and running
    /// handlers go.
    fn remove(&mut self, key: usize) -> Conn {
        let mut c = self.conns.remove(key);
        self.ids.remove(&c.driver.session().id());
        if let Some(at) = c.armed {
            self.timers.remove(&(at, key));
        }
        let _ = self.poll.registry().deregister(&mut c.stream);
        if !c.tasks.is_empty() {
            tracing::warn!(target: "teleport::mio", session = c.driver.session().id(),
                handlers = c.tasks.len(),
                "handlers still running at close are cancelled"
            );
            for t in c.tasks.drain() {
                t.cancel();
            }
        }
        c
    }

    /// The session's connection is over: re-dial later, or finish. Its
    /// socket lingers while the peer may still send.
    fn finalize(&mut self, key: usize) {
        let mut c = self.remove(key);
        c.stream.shutdown_write();
        let Some((reason, _)) = c.closing.take() else {
            return;
        };
        if !matches!(reason, CloseReason::PeerClosed | CloseReason::Io(_)) {
            self.linger(c.stream);
        } else {
            drop(c.stream);
        }
        let id = c.driver.session().id();
        tracing::info!(target: "teleport::mio", session = id, ?reason, "session closed");
        match c.driver.connection_ended(&reason) {
            // Re-dialed at once, in the background.
            Some(addr) => self.spawn_redial(Broken {
                driver: c.driver,
                slot: c.slot,
                addr,
                tls: c.tls,
            }),
            None => c.driver.finish(),
        }
    }

    /// Keeps a closed connection (write side already shut down) until the
    /// peer's end of input, for at most [`LINGER`]: closing with unread
    /// input would reset the connection, and a reset can destroy replies
    /// the peer has not read yet.
    fn linger(&mut self, mut stream: Stream) {
        let entry = self.lingering.vacant_entry();
        let key = entry.key();
        if self
            .poll
            .registry()
            .register(&mut stream, Token(LINGER_BASE + key), Interest::READABLE)
            .is_err()
        {
            return;
        }
        let until = Instant::now() + LINGER;
        entry.insert(Lingering {
            stream,
            until,
            left: LINGER_BYTES,
            readable: true,
            _guard: self.peer.linger(),
        });
        self.linger_timers.insert((until, key));
    }

    /// Reads what lingering connections were sent, and lets go of those
    /// whose peer ended its side, or whose time or byte allowance is up.
    fn drain_lingering(&mut self, now: Instant) {
        let mut done = Vec::new();
        while let Some(&(at, key)) = self.linger_timers.first() {
            if at > now {
                break;
            }
            self.linger_timers.pop_first();
            done.push(key);
        }
        for (key, l) in self.lingering.iter_mut() {
            while l.readable {
                match l.stream.read(&mut self.rbuf) {
                    Ok(0) => {
                        done.push(key);
                        break;
                    }
                    Ok(n) if n < l.left => l.left -= n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => l.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(_) | Err(_) => {
                        done.push(key);
                        break;
                    }
                }
            }
        }
        for key in done {
            if let Some(mut l) = self.lingering.try_remove(key) {
                self.linger_timers.remove(&(l.until, key));
                let _ = self.poll.registry().deregister(&mut l.stream);
            }
        }
    }

    /// Drops a session at once, as a cancelled task would be.
    fn abort(&mut self, id: u64) {
        if let Some(&key) = self.ids.get(&id) {
            drop(self.remove(key));
        }
    }

    /// Re-dials on a thread of its own (see [`spawn_redial`]).
    fn spawn_redial(&self, b: Broken) {
        spawn_redial(b, &self.peer, &self.shared);
    }

    /// The loop ends: every session with it.
    fn teardown(&mut self) {
        let left = {
            let mut inbox = self.shared.lock();
            inbox.closed = true;
            std::mem::take(&mut inbox.msgs)
        };
        for msg in left {
            if let Msg::Open(p) | Msg::Redialed(p, _) = msg {
                p.driver.finish();
            }
        }
        self.close_listeners();
        self.lingering.clear();
        self.linger_timers.clear();
        let now = Instant::now();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let mut c = self.remove(key);
            if c.closing.is_none() {
                c.core.handle_io_error(now, &"the peer was dropped");
                let _ = c.driver.drain_events_deferred(&mut c.core, &mut |_| {});
                tracing::info!(target: "teleport::mio", session = c.driver.session().id(),
                    "session closed: peer dropped"
                );
            }
            drop(c.stream);
            c.driver.finish();
        }
        // Left: sessions on a re-dial thread. Closing them ends those
        // threads.
        for s in self.peer.sessions() {
            s.close_by(now);
        }
        if let Some(pool) = self.pool.take() {
            pool.close();
        }
    }
}

/// Re-dials on a thread of its own (connecting blocks, and backs off
/// between attempts), with the shared re-dial logic.
fn spawn_redial(b: Broken, peer: &PeerCore, shared: &Arc<LoopShared>) {
    let shared = Arc::downgrade(shared);
    let cfg = peer.config().clone();
    let id = b.driver.session().id();
    let spawned = thread::Builder::new()
        .name(format!("teleport-mio-redial-{id}"))
        .spawn(move || redial(b, &cfg, &shared));
    if let Err(e) = spawned {
        tracing::error!(target: "teleport::mio", session = id, error = %e, "could not start a re-dial thread");
    }
}

/// The peer of `c` is going away and its session re-dials: the connection
/// stays in the loop under a session of its own until the calls made on
/// it are over, while the session dials a new one (on a re-dial thread)
/// for the calls made from now on.
fn move_on(
    c: &mut Conn,
    key: usize,
    peer: &PeerCore,
    shared: &Arc<LoopShared>,
    ids: &mut HashMap<u64, usize>,
) {
    let slot = Arc::new(Slot::default());
    let wake = Some(wake_hook(shared, slot.clone()));
    let mut moved = None;
    c.driver.hand_over(wake, |driver| {
        let id = driver.session().id();
        slot.id.store(id, Ordering::Release);
        moved = Some(driver);
        abort_hook(shared, id)
    });
    let Some(moved) = moved else { return };
    ids.remove(&c.driver.session().id());
    ids.insert(moved.session().id(), key);
    let mut session = std::mem::replace(&mut c.driver, moved);
    let slot = std::mem::replace(&mut c.slot, slot);
    match session.connection_ended(&CloseReason::GoingAway) {
        Some(addr) => spawn_redial(
            Broken {
                driver: session,
                slot,
                addr,
                tls: c.tls.clone(),
            },
            peer,
            shared,
        ),
        None => session.finish(),
    }
}

fn redial(b: Broken, cfg: &PeerConfig, shared: &Weak<LoopShared>) {
    let Broken {
        mut driver,
        slot,
        addr,
        tls,
    } = b;
    let mut backlog = Vec::new();
    // A connect and, for a TLS dial, its handshake.
    let connect = |a: String| {
        let c = net::connect(cfg, &a, &tls).map_err(io::Error::from);
        std::future::ready(c.map(|c| c.stream))
    };
    let stream = exec::block_on(driver.redial(&addr, &mut backlog, &connect, &exec::sleep));
    let Some(stream) = stream else {
        driver.finish();
        return;
    };
    let msg = Msg::Redialed(
        Box::new(Pending {
            driver,
            stream,
            slot,
            tls,
        }),
        backlog,
    );
    let undelivered = match shared.upgrade() {
        Some(s) => s.post(msg).err(),
        None => Some(msg),
    };
    if let Some(Msg::Redialed(p, backlog)) = undelivered {
        for cmd in backlog {
            refuse(cmd, Rerror::conn_closed().with_detail("peer dropped"));
        }
        p.driver.finish();
    }
}
