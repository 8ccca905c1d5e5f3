//! The peer's shared state: settings, routes, and the registry of its
//! sessions, with what a graceful shutdown needs.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::sync::OnceLock;

use teleport_core::{DecodeJob, MakeProto, Role, Shared};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

use crate::addr::PeerAddr;
use crate::config::PeerConfig;
use crate::driver::{Done, Driver};
use crate::handler::BoxFuture;
use crate::handler::Handler;
use crate::options::DialError;
use crate::session::{Command, Session, SessionInner, Wake};

/// Ids are unique in the process, so logs of two peers in one program do
/// not mix up their sessions.
static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Stops a session's task when a shutdown times out.
pub type Abort = Box<dyn Fn() + Send + Sync>;

/// Makes the proto of a connection (the seed's `ProtoFunc`).
pub type ProtoFunc = Arc<dyn MakeProto>;

/// What a new session's connection is, for [`PeerCore::start_session`].
pub struct SessionStart {
    /// The other end.
    pub remote: PeerAddr,
    /// This end.
    pub local: PeerAddr,
    /// Whether this side dialed.
    pub role: Role,
    /// Where to re-dial, for a dialed session (`None`: never).
    pub dial_addr: Option<String>,
    /// The frame format; `None`: the peer's default.
    pub proto: Option<ProtoFunc>,
    /// Called after each command is queued (a poll loop's waker).
    pub wake: Option<Wake>,
}

impl SessionStart {
    /// A connection between these ends, in this role, with the peer's
    /// default proto, never re-dialed.
    pub fn new(remote: PeerAddr, local: PeerAddr, role: Role) -> Self {
        SessionStart {
            remote,
            local,
            role,
            dial_addr: None,
            proto: None,
            wake: None,
        }
    }

    /// Re-dialed at `addr` when its connection breaks (as configured).
    pub fn redial_at(mut self, addr: impl Into<String>) -> Self {
        self.dial_addr = Some(addr.into());
        self
    }

    /// With this proto instead of the peer's default.
    pub fn proto(mut self, proto: Option<ProtoFunc>) -> Self {
        self.proto = proto;
        self
    }

    /// With a hook called after each command is queued.
    pub fn wake(mut self, wake: Option<Wake>) -> Self {
        self.wake = wake;
        self
    }
}

/// A frame's decoding, sent to a decoding thread.
type DecodeWork = Box<dyn FnOnce() + Send>;

/// The peer's decoding threads: large frames are inflated here, never on a
/// thread that drives sockets or runs handlers, on every runtime. As many
/// threads as decode slots (one per CPU), started with the first large
/// frame and ended with the peer. A fixed set, not a runtime's blocking
/// pool, so the memory the allocator keeps for them (an arena per thread)
/// is bounded by the slots too, however many bombs arrive.
struct DecodePool {
    threads: usize,
    tx: OnceLock<std::sync::mpsc::Sender<DecodeWork>>,
}

impl DecodePool {
    fn new(threads: usize) -> Self {
        DecodePool {
            threads,
            tx: OnceLock::new(),
        }
    }

    /// Runs `work` on one of the threads. If none could be started, the
    /// work is dropped (and whoever waits on it hears so).
    fn run(&self, work: DecodeWork) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<DecodeWork>();
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..self.threads {
                let rx = rx.clone();
                let started = std::thread::Builder::new()
                    .name(format!("teleport-decode-{i}"))
                    .spawn(move || loop {
                        // The lock is held only to take one job.
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match next {
                            // A panic (in a user's filter, say) loses that
                            // frame only: its waiter hears so, and the
                            // thread goes on serving.
                            Ok(work) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
                            }
                            Err(_) => return, // the peer is gone
                        }
                    });
                if let Err(e) = started {
                    tracing::warn!(target: "teleport::peer", error = %e, "could not start a decoding thread");
                }
            }
            tx
        });
        let _ = tx.send(work);
    }
}

struct Entry {
    session: Session,
    abort: Abort,
}

/// What a graceful shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Sessions open when shutdown began.
    pub sessions: usize,
    /// Sessions whose task was still running after the timeout (and a
    /// moment to flush), cancelled.
    pub cancelled: usize,
    /// The peer's pulls whose handlers were still running at the deadline:
    /// cancelled, their replies never sent.
    pub handlers_abandoned: usize,
    /// Our pulls still awaiting replies at the deadline: failed with 102.
    pub pulls_abandoned: usize,
}

/// A peer without a runtime: what every adapter's `Peer` wraps.
pub struct PeerCore {
    config: PeerConfig,
    shared: Arc<Shared<Handler>>,
    sessions: Mutex<HashMap<u64, Entry>>,
    shutting_down: AtomicBool,
    draining: AtomicBool,
    handlers_abandoned: AtomicUsize,
    pulls_abandoned: AtomicUsize,
    shutdown_deadline: Mutex<Option<Instant>>,
    shutdown: watch::Sender<bool>,
    gone: Notify,
    /// Frames being decoded away from their connection's owner at once,
    /// across the peer: each may hold up to the read limit.
    decode_slots: Arc<Semaphore>,
    decoders: Arc<DecodePool>,
    /// Connections closed by their session that still wait for the peer's
    /// end of input ([`Linger`]).
    lingering: AtomicUsize,
    /// The proto of sessions that name none.
    default_proto: Option<ProtoFunc>,
    tls: PeerTls,
    /// Ids given to sessions with `Session::set_id`.
    names: Mutex<HashMap<String, u64>>,
    /// The listening sockets (a duplicate of each, named for a hand-off),
    /// until the shutdown lets them go.
    listeners: Mutex<Vec<(String, socket2::Socket)>>,
    /// Accept loops and accepted connections not started yet
    /// ([`Accepting`]): a shutdown waits for them before it counts the
    /// sessions gone.
    accepting: AtomicUsize,
}

/// Held by an accept loop for as long as it may start sessions (and by a
/// TLS handshake of a connection it accepted): [`PeerCore::all_gone`]
/// waits for every one to be dropped, so a connection accepted as the
/// shutdown began is waited for like the others, not cut when the
/// process exits.
pub struct Accepting(Arc<PeerCore>);

impl Clone for Accepting {
    fn clone(&self) -> Self {
        self.0.accepting.fetch_add(1, Ordering::AcqRel);
        Accepting(self.0.clone())
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.0.accepting.fetch_sub(1, Ordering::AcqRel);
        self.0.gone.notify_waiters();
    }
}

impl std::fmt::Debug for Accepting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Accepting")
    }
}

/// The TLS ends of a peer: how its listeners accept and its dials connect,
/// unless an option says otherwise.
#[derive(Clone, Debug, Default)]
pub struct PeerTls {
    /// For listeners.
    #[cfg(feature = "tls")]
    pub acceptor: Option<crate::tls::TlsAcceptor>,
    /// For dials.
    #[cfg(feature = "tls")]
    pub connector: Option<crate::tls::TlsConnector>,
}

impl std::fmt::Debug for PeerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCore")
            .field("sessions", &self.lock().len())
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}

impl PeerCore {
    pub(crate) fn new(
        config: PeerConfig,
        shared: Arc<Shared<Handler>>,
        default_proto: Option<ProtoFunc>,
        tls: PeerTls,
    ) -> Self {
        let (shutdown, _) = watch::channel(false);
        PeerCore {
            config,
            shared,
            sessions: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            handlers_abandoned: AtomicUsize::new(0),
            pulls_abandoned: AtomicUsize::new(0),
            shutdown_deadline: Mutex::new(None),
            shutdown,
            gone: Notify::new(),
            decode_slots: Arc::new(Semaphore::new(decode_slots())),
            decoders: Arc::new(DecodePool::new(decode_slots())),
            lingering: AtomicUsize::new(0),
            default_proto,
            tls,
            names: Mutex::new(HashMap::new()),
            listeners: Mutex::new(Vec::new()),
            accepting: AtomicUsize::new(0),
        }
    }

    /// A guard for an accept loop (see [`Accepting`]).
    pub fn accepting(self: &Arc<Self>) -> Accepting {
        self.accepting.fetch_add(1, Ordering::AcqRel);
        Accepting(self.clone())
    }

    /// Runs the plugins' `after_listen` for a listener bound at `addr`
    /// (`cfg`'s network and listen address, `socket` the listening one); an
    /// error keeps the listener from serving. The socket is kept (a
    /// duplicate) until the shutdown, for a hand-off to a successor
    /// ([`PeerCore::listening_sockets`]).
    pub fn after_listen(
        &self,
        addr: &PeerAddr,
        cfg: &PeerConfig,
        socket: socket2::SockRef<'_>,
    ) -> std::io::Result<()> {
        self.shared
            .plugins
            .after_listen(&addr.to_string())
            .map_err(|e| std::io::Error::other(format!("a plugin refused to listen: {e}")))?;
        let name = crate::addr::listener_name(cfg.network, &cfg.listen_address);
        let dup = socket.try_clone()?;
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, dup));
        Ok(())
    }

    /// A duplicate of each listening socket, named for the listener (its
    /// network and configured address): what a hand-off passes on. Empty
    /// once the shutdown began.
    pub fn listening_sockets(&self) -> std::io::Result<Vec<(String, socket2::Socket)>> {
        let l = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        l.iter()
            .map(|(name, s)| Ok((name.clone(), s.try_clone()?)))
            .collect()
    }

    /// The peer's TLS ends (set in code or from the config).
    pub fn tls(&self) -> &PeerTls {
        &self.tls
    }

    /// The decoding of a deferred frame, as a handler-like future: it
    /// waits for one of the peer's decode slots, runs the job on one of the
    /// peer's decoding threads, and hands the result back as
    /// [`Done::Decoded`].
    pub(crate) fn decode(&self, job: DecodeJob) -> BoxFuture<Done> {
        let slots = self.decode_slots.clone();
        let decoders = self.decoders.clone();
        Box::pin(async move {
            let _slot = slots.acquire_owned().await;
            let (tx, rx) = oneshot::channel();
            decoders.run(Box::new(move || {
                let _ = tx.send(job.run());
            }));
            match rx.await {
                Ok(r) => Done::Decoded(r),
                Err(_) => Done::DecodeLost,
            }
        })
    }

    /// Counts a connection that lingers after its session ended, until the
    /// guard is dropped; a shutdown waits for it (bounded by [`LINGER`]).
    pub fn linger(self: &Arc<Self>) -> Linger {
        self.lingering.fetch_add(1, Ordering::AcqRel);
        Linger(self.clone())
    }

    /// Resolves once no connection lingers.
    pub async fn lingering_done(&self) {
        loop {
            let gone = self.gone.notified();
            if self.lingering.load(Ordering::Acquire) == 0 {
                return;
            }
            gone.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings.
    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// Routes, plugins, codecs and session settings.
    pub fn shared(&self) -> &Arc<Shared<Handler>> {
        &self.shared
    }

    /// A new session handle and the receiving end of its commands. `wake`
    /// is called after each command is queued (a poll loop's waker).
    pub fn new_session(
        self: &Arc<Self>,
        remote: PeerAddr,
        local: PeerAddr,
        wake: Option<Wake>,
    ) -> (Session, mpsc::UnboundedReceiver<Command>) {
        let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Session(Arc::new(SessionInner {
            id,
            cmd: tx,
            remote,
            local,
            shared: self.shared.clone(),
            wake,
            direct: std::sync::OnceLock::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            closed: watch::channel(None).0,
            peer: Arc::downgrade(self),
            custom_id: Mutex::new(None),
        }));
        (session, rx)
    }

    /// Registers a session; `start` starts its task and returns how to
    /// abort it. The registry is locked meanwhile, so the task cannot
    /// forget itself before it is registered.
    pub fn register(&self, session: &Session, start: impl FnOnce() -> Abort) {
        let mut sessions = self.lock();
        let abort = start();
        sessions.insert(
            session.id(),
            Entry {
                session: session.clone(),
                abort,
            },
        );
    }

    /// A session for a new connection: its handle and its [`Driver`],
    /// registered with the peer. `start` gets the driver, starts what runs
    /// it, and returns how to abort that.
    pub fn start_session(
        self: &Arc<Self>,
        conn: SessionStart,
        start: impl FnOnce(Driver) -> Abort,
    ) -> Session {
        let SessionStart {
            remote,
            local,
            role,
            dial_addr,
            proto,
            wake,
        } = conn;
        let (session, rx) = self.new_session(remote, local, wake);
        let proto = proto.or_else(|| self.default_proto.clone());
        let driver = Driver::new(session.clone(), rx, self.clone(), role, dial_addr, proto);
        self.register(&session, || start(driver));
        session
    }

    /// Refuses a dial while shutting down.
    pub fn check_dial(&self) -> Result<(), DialError> {
        if self.is_shutting_down() {
            return Err(DialError::ShuttingDown);
        }
        Ok(())
    }

    /// The error a failed connect to `addr` becomes.
    pub fn dial_error(addr: &str, e: std::io::Error) -> DialError {
        DialError::Connect {
            addr: addr.to_string(),
            source: e,
        }
    }

    /// Removes a finished session.
    pub fn forget(&self, id: u64) {
        if let Some(e) = self.lock().remove(&id) {
            if let Some(name) = e.session.custom_id() {
                let mut names = self.names();
                if names.get(&name) == Some(&id) {
                    names.remove(&name);
                }
            }
        }
        self.gone.notify_waiters();
    }

    fn names(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives session `id` the id `name` (see `Session::set_id`); a session
    /// that had it before loses it.
    pub(crate) fn name_session(&self, id: u64, old: Option<&str>, name: &str) {
        let mut names = self.names();
        if let Some(old) = old {
            if names.get(old) == Some(&id) {
                names.remove(old);
            }
        }
        names.insert(name.to_string(), id);
    }

    /// The open session with this id, given with `Session::set_id` (the
    /// seed's `GetSession`).
    pub fn session_by_id(&self, name: &str) -> Option<Session> {
        let id = *self.names().get(name)?;
        self.session(id)
    }

    /// A handle to every open session.
    pub fn sessions(&self) -> Vec<Session> {
        self.lock().values().map(|e| e.session.clone()).collect()
    }

    /// The open session with this id.
    pub fn session(&self, id: u64) -> Option<Session> {
        self.lock().get(&id).map(|e| e.session.clone())
    }

    /// Whether [`PeerCore::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// The deadline of the shutdown in progress.
    pub fn shutdown_deadline(&self) -> Option<Instant> {
        *self
            .shutdown_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Fires when shutdown begins (for accept loops).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// `now + timeout`, or a century from now if that overflows (so a
    /// `Duration::MAX` timeout means "no deadline", not a panic).
    pub fn deadline_after(timeout: Duration) -> Instant {
        let now = Instant::now();
        now.checked_add(timeout)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
            .unwrap_or(now)
    }

    /// Stops accepting and dialing and asks every session to close by
    /// `deadline`; returns how many sessions there were. Sessions that
    /// start meanwhile see [`PeerCore::is_shutting_down`] and close at once.
    pub fn begin_shutdown(&self, deadline: Instant) -> usize {
        *self
            .shutdown_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(deadline);
        self.shutting_down.store(true, Ordering::Release);
        self.shutdown.send_replace(true);
        // Kept open, a listening socket would take connections that no one
        // accepts (a successor has its own copies).
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let sessions = self.sessions();
        for s in &sessions {
            s.go_away(deadline);
        }
        self.draining.store(true, Ordering::Release);
        sessions.len()
    }

    /// Whether shutdown began and every session was asked to close (so a
    /// pull arriving now is refused).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Records how a session ended, for the shutdown report.
    pub fn note_close(&self, reason: &teleport_core::CloseReason) {
        if let teleport_core::CloseReason::DrainTimeout { pulls, handlers } = reason {
            self.pulls_abandoned.fetch_add(*pulls, Ordering::Relaxed);
            self.handlers_abandoned
                .fetch_add(*handlers, Ordering::Relaxed);
        }
    }

    /// Cancels what still runs and says what the shutdown did.
    pub fn end_shutdown(&self, sessions: usize) -> ShutdownReport {
        let cancelled = self.cancel_remaining();
        let report = ShutdownReport {
            sessions,
            cancelled,
            handlers_abandoned: self.handlers_abandoned.load(Ordering::Relaxed),
            pulls_abandoned: self.pulls_abandoned.load(Ordering::Relaxed),
        };
        if report.cancelled + report.handlers_abandoned + report.pulls_abandoned > 0 {
            tracing::warn!(target: "teleport::peer", ?report,
                "peer shut down; work still running at the deadline was cancelled"
            );
        } else {
            tracing::info!(target: "teleport::peer", ?report, "peer shut down");
        }
        report
    }

    /// Resolves once every accept loop has stopped (see [`Accepting`])
    /// and every session has ended.
    pub async fn all_gone(&self) {
        loop {
            let gone = self.gone.notified();
            if self.accepting.load(Ordering::Acquire) == 0 && self.lock().is_empty() {
                return;
            }
            gone.await;
        }
    }

    /// Aborts every session still running; returns how many.
    pub fn cancel_remaining(&self) -> usize {
        let left: Vec<Entry> = self.lock().drain().map(|(_, e)| e).collect();
        for e in &left {
            tracing::warn!(target: "teleport::peer", session = e.session.id(),
                "session still running at shutdown timeout; cancelled"
            );
            (e.abort)();
            e.session
                .set_closed(Some(teleport_core::CloseReason::Local));
        }
        self.gone.notify_waiters();
        left.len()
    }
}

/// How many frames a peer decodes away from its connections' owners at
/// once: one per CPU.
fn decode_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The longest a closed connection waits for the peer's end of input
/// (after its last bytes were written and its write side shut down) before
/// it is dropped anyway. Closing with unread input makes the kernel reset
/// the connection, and a reset can destroy the replies still in flight to
/// the peer; waiting for the peer's end of input avoids it.
pub const LINGER: Duration = Duration::from_secs(2);

/// Most input a lingering connection reads (and discards) before it is
/// dropped anyway.
pub const LINGER_BYTES: usize = 16 << 20;

/// A lingering connection, counted by its peer ([`PeerCore::linger`]).
pub struct Linger(Arc<PeerCore>);

impl Drop for Linger {
    fn drop(&mut self) {
        self.0.lingering.fetch_sub(1, Ordering::AcqRel);
        self.0.gone.notify_waiters();
    }
}

impl std::fmt::Debug for Linger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Linger")
    }
}
