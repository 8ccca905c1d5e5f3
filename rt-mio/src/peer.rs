//! The blocking peer: a poll loop thread, and listen, dial, shut down.

use std::io;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use teleport_core::Role;
use teleport_peer::adapter::{PeerCore, SessionStart};
use teleport_peer::{
    DialError, DialOptions, ListenOptions, PeerAddr, PeerBuilder, PeerConfig, ServeOptions,
    ShutdownReport,
};

use crate::event_loop::{new_session, EventLoop, LoopShared, Msg};
use crate::exec;
use crate::net::{Connected, Listener, MioStream, Stream};
use crate::session::Session;

/// A teleport peer without an async runtime: a server, a client, or both
/// at once. Its sessions live on one poll loop thread; its handlers run on
/// worker threads (or on the loop: see [`Peer::with_workers`]).
///
/// Clones share the peer. When the last one is dropped the loop stops and
/// every session ends with it (use [`Peer::shutdown`] to end them
/// gracefully first).
#[derive(Clone)]
pub struct Peer(Arc<Inner>);

struct Inner {
    core: Arc<PeerCore>,
    shared: Arc<LoopShared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    workers: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shared.post(Msg::Stop);
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            // Dropped by a handler on the loop itself: it ends on its own.
            if t.thread().id() != thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("core", &self.0.core)
            .field("workers", &self.0.workers)
            .finish()
    }
}

/// Handler threads a peer starts unless told otherwise: one per CPU.
pub fn default_workers() -> usize {
    thread::available_parallelism().map_or(4, |n| n.get())
}

impl Peer {
    /// A peer with no routes (a pure client) and these settings.
    pub fn new(config: PeerConfig) -> io::Result<Peer> {
        Peer::from_builder(PeerBuilder::new(config))
    }

    /// The peer a builder describes, with [`default_workers`] handler
    /// threads.
    pub fn from_builder(builder: PeerBuilder) -> io::Result<Peer> {
        Peer::with_workers(builder, default_workers())
    }

    /// The peer a builder describes, running handlers on `workers`
    /// threads; `0` runs them on the poll loop itself. That is the fastest
    /// for handlers that never block (no thread hop per call), but one that
    /// blocks (sleeps, does blocking I/O, waits on a lock) stalls every
    /// session of the peer, and one that makes a blocking call on its own
    /// peer would wait forever (such a pull fails with a 500 instead).
    pub fn with_workers(builder: PeerBuilder, workers: usize) -> io::Result<Peer> {
        let core = builder.build()?;
        let (shared, thread) = EventLoop::start(core.clone(), workers)?;
        Ok(Peer(Arc::new(Inner {
            core,
            shared,
            thread: Mutex::new(Some(thread)),
            workers,
        })))
    }

    /// The runtime-independent part (settings, routes, sessions).
    pub fn core(&self) -> &Arc<PeerCore> {
        &self.0.core
    }

    /// The settings.
    pub fn config(&self) -> &PeerConfig {
        self.0.core.config()
    }

    /// Handler threads (0: handlers run on the poll loop).
    pub fn workers(&self) -> usize {
        self.0.workers
    }

    /// Dials `addr` (`host:port`, or a path for unix) and starts a session;
    /// blocks while connecting, and while the TLS handshake runs when the
    /// dial speaks TLS. Refused while shutting down; fails if the dial (or
    /// its handshake) does, or takes longer than the configured
    /// `dial_timeout` (the handshake: the connector's timeout).
    pub fn dial(&self, addr: &str) -> Result<Session, DialError> {
        self.dial_with(addr, DialOptions::default())
    }

    /// [`Peer::dial`] with options (a proto or TLS of this dial's own).
    pub fn dial_with(&self, addr: &str, opts: DialOptions) -> Result<Session, DialError> {
        let core = &self.0.core;
        core.check_dial()?;
        #[cfg(feature = "tls")]
        let tls = opts.tls_for(core);
        #[cfg(not(feature = "tls"))]
        let tls = None;
        let c = crate::net::connect(core.config(), addr, &tls)?;
        let conn = SessionStart::new(c.remote.clone(), c.local.clone(), Role::Dialer)
            .redial_at(addr)
            .proto(opts.proto_func());
        Ok(self.open(c, conn))
    }

    /// Serves a connection the caller already has (the seed's
    /// `ServeConn`): any non-blocking [`MioStream`], in the role and with
    /// the proto `opts` name, on the peer's poll loop. The session is not
    /// re-dialed when it breaks.
    pub fn serve_conn(&self, stream: impl MioStream, opts: ServeOptions) -> Session {
        let remote = PeerAddr::Other(opts.remote_name().to_string());
        let local = PeerAddr::Other(String::new());
        let conn = SessionStart::new(remote.clone(), local.clone(), opts.role_of())
            .proto(opts.proto_func());
        let c = Connected {
            stream: Stream::Custom(Box::new(stream)),
            remote,
            local,
            tls: None,
        };
        self.open(c, conn)
    }

    /// Hands a connection to the loop as a new session.
    fn open(&self, c: Connected, conn: SessionStart) -> Session {
        let shared = &self.0.shared;
        let session = new_session(&self.0.core, shared, c, conn, |p| {
            if let Err(Msg::Open(p)) = shared.post(Msg::Open(p)) {
                // The loop is gone (it failed): the session ends now.
                p.finish();
            }
        });
        Session::from(session)
    }

    /// Binds the configured listen address and serves in the background
    /// (Go: `go peer.Listen()`, but returning once the socket is bound)
    /// until [`Peer::shutdown`]; returns the bound address (useful with
    /// port 0). [`Peer::listen`] is the same, then waits for the shutdown.
    pub fn spawn_listener(&self) -> io::Result<PeerAddr> {
        self.spawn_listener_with(ListenOptions::default())
    }

    /// [`Peer::spawn_listener`] with options (another address, a proto or TLS of this
    /// listener's own). A TLS listener's handshakes run on the poll loop,
    /// each within the acceptor's timeout; one that fails is logged and the
    /// listener serves on.
    pub fn spawn_listener_with(&self, opts: ListenOptions) -> io::Result<PeerAddr> {
        let mut cfg = self.config().clone();
        if let Some(a) = opts.address_override() {
            cfg.listen_address = a.to_string();
        }
        let listener = Listener::bind(&cfg)?;
        let addr = listener.local_addr()?;
        self.0.core.after_listen(&addr, &cfg, listener.socket())?;
        tracing::info!(target: "teleport::mio", %addr, "listening");
        self.0
            .shared
            .post(Msg::Listen(
                listener,
                opts.proto_func(),
                self.listen_tls(&opts),
            ))
            .map_err(|_| io::Error::other("the peer's poll loop has ended"))?;
        Ok(addr)
    }

    /// The TLS a listener serves: its own, else the peer's.
    fn listen_tls(&self, opts: &ListenOptions) -> crate::net::ListenTls {
        #[cfg(feature = "tls")]
        return opts.tls_for(&self.0.core);
        #[cfg(not(feature = "tls"))]
        {
            let _ = opts;
            None
        }
    }

    /// Serves on the configured listen address, blocking until
    /// [`Peer::shutdown`] (from another thread, or a handler).
    pub fn listen(&self) -> io::Result<()> {
        self.spawn_listener()?;
        let mut stop = self.0.core.shutdown_signal();
        let _ = exec::block_on(stop.wait_for(|s| *s));
        Ok(())
    }

    /// A handle to every open session.
    pub fn sessions(&self) -> Vec<Session> {
        self.0
            .core
            .sessions()
            .into_iter()
            .map(Session::from)
            .collect()
    }

    /// The open session with this id.
    pub fn session(&self, id: u64) -> Option<Session> {
        self.0.core.session(id).map(Session::from)
    }

    /// Shuts down gracefully, blocking until done: stops accepting and
    /// dialing, lets running handlers finish and their replies flush and
    /// pending pulls complete, then closes every session. What is still
    /// running at `timeout` is cancelled, and counted in the report.
    pub fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let core = &self.0.core;
        let deadline = PeerCore::deadline_after(timeout);
        let sessions = core.begin_shutdown(deadline);
        let _ = self.0.shared.post(Msg::ShutdownBegun);
        if exec::on_loop_of(Arc::as_ptr(core.shared()) as usize) {
            // A handler on the loop: waiting would stop the very loop that
            // closes the sessions. They close by the deadline all the same.
            tracing::warn!(target: "teleport::mio", "shutdown called on the peer's own poll loop; not waiting for it");
            return ShutdownReport {
                sessions,
                ..ShutdownReport::default()
            };
        }
        // The core abandons what is pending at the deadline; allow a moment
        // for the last flush before cancelling.
        let hard =
            PeerCore::deadline_after(timeout.saturating_add(teleport_peer::adapter::FLUSH_GRACE));
        let _ = exec::block_on_until(core.all_gone(), Some(hard));
        let report = core.end_shutdown(sessions);
        // Closed connections wait (briefly) for their peers to read the last
        // replies: a process that exits now would reset them.
        let linger = PeerCore::deadline_after(teleport_peer::adapter::LINGER);
        let _ = exec::block_on_until(core.lingering_done(), Some(linger));
        report
    }
}

impl AsRef<Peer> for Peer {
    fn as_ref(&self) -> &Peer {
        self
    }
}

/// The seed's `GraceSignal`, blocking this thread: says the process is
/// ready (to a predecessor and to systemd:
/// [`notify_ready`](teleport_peer::handoff::notify_ready)), waits for
/// SIGINT or SIGTERM (handled from
/// [`Grace::listen`](teleport_peer::Grace::listen) on), then runs the
/// first sweep, shuts every one of `peers` down gracefully at once (a
/// thread each, all with the [`Grace`](teleport_peer::Grace)'s timeout),
/// and runs the last hook. SIGHUP or SIGUSR2 first hands the peers'
/// listening sockets to a successor and stops once it is ready (a
/// graceful restart; see [`teleport_peer::grace`]). Returns what happened;
/// the caller's `main` returns after it. Not to be called from a handler.
#[cfg(unix)]
pub fn grace_signal<P: AsRef<Peer>>(
    signals: teleport_peer::GraceSignal,
    peers: &[P],
) -> teleport_peer::GraceReport {
    let cores: Vec<_> = peers.iter().map(|p| p.as_ref().core().clone()).collect();
    signals.run_blocking(&cores, |timeout| {
        std::thread::scope(|s| {
            let stops: Vec<_> = peers
                .iter()
                .map(|p| {
                    let p: &Peer = p.as_ref();
                    s.spawn(move || p.shutdown(timeout))
                })
                .collect();
            stops
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    })
}
