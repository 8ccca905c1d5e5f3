//! The peer on tokio: listen, dial, serve a connection, shut down.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use teleport_core::Role;
use teleport_peer::adapter::{Accepting, PeerCore, SessionStart, FLUSH_GRACE, LINGER};
#[cfg(feature = "tls")]
use teleport_peer::tls::{TlsAcceptor, TlsConnector, TlsError};
use teleport_peer::{
    DialError, DialOptions, ListenOptions, Network, PeerAddr, PeerBuilder, PeerConfig, ProtoFunc,
    ServeOptions, Session, ShutdownReport,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::net;
use crate::transport::{Connection, Io};

/// A teleport peer on tokio: a server, a client, or both at once.
#[derive(Clone, Debug)]
pub struct Peer(Arc<PeerCore>);

/// How a listener's connections are accepted: TLS or not.
#[cfg(feature = "tls")]
type ListenTls = TlsAcceptor;
#[cfg(not(feature = "tls"))]
type ListenTls = NoTls;

/// Without the `tls` feature no listener serves TLS.
#[cfg(not(feature = "tls"))]
#[derive(Clone, Copy)]
enum NoTls {}

/// Connects with `f` within the configured dial timeout.
async fn connect<'a, S, F>(
    cfg: &'a PeerConfig,
    addr: &'a str,
    f: impl FnOnce(&'a PeerConfig, &'a str) -> F,
) -> Result<net::Connected<S>, DialError>
where
    F: Future<Output = io::Result<net::Connected<S>>>,
{
    let connect = f(cfg, addr);
    let r = match cfg.dial_timeout {
        Some(after) => match tokio::time::timeout(after, connect).await {
            Ok(r) => r,
            Err(_) => {
                return Err(DialError::Timeout {
                    addr: addr.to_string(),
                    after,
                })
            }
        },
        None => connect.await,
    };
    r.map_err(|e| PeerCore::dial_error(addr, e))
}

/// A connect function for sessions that are never re-dialed.
fn no_redial<S>(_: String) -> std::future::Ready<io::Result<S>> {
    std::future::ready(Err(io::Error::other("this session is not re-dialed")))
}

impl Peer {
    /// A peer with no routes (a pure client) and these settings.
    pub fn new(config: PeerConfig) -> io::Result<Peer> {
        Peer::from_builder(PeerBuilder::new(config))
    }

    /// The peer a builder describes.
    pub fn from_builder(builder: PeerBuilder) -> io::Result<Peer> {
        Ok(Peer(builder.build()?))
    }

    /// The runtime-independent part (settings, routes, sessions).
    pub fn core(&self) -> &Arc<PeerCore> {
        &self.0
    }

    /// The settings.
    pub fn config(&self) -> &PeerConfig {
        self.0.config()
    }

    /// Starts a session over `stream`; `connect` re-dials it.
    fn start<S, C, CF>(&self, stream: S, conn: SessionStart, connect: C) -> Session
    where
        S: Connection,
        C: Fn(String) -> CF + Send + Sync + 'static,
        CF: Future<Output = io::Result<S>> + Send + 'static,
    {
        self.0.start_session(conn, |driver| {
            let task = tokio::spawn(crate::conn::run(driver, stream, connect)).abort_handle();
            Box::new(move || task.abort())
        })
    }

    /// Dials `addr` (`host:port`, or a path for unix) and starts a session.
    /// Refused while shutting down; fails if the dial (or its TLS handshake)
    /// does, or takes longer than the configured `dial_timeout`.
    pub async fn dial(&self, addr: &str) -> Result<Session, DialError> {
        self.dial_with(addr, DialOptions::default()).await
    }

    /// [`Peer::dial`] with options (a proto or TLS of this dial's own).
    pub async fn dial_with(&self, addr: &str, opts: DialOptions) -> Result<Session, DialError> {
        self.0.check_dial()?;
        let cfg = Arc::new(self.config().clone());
        let conn = |remote, local| {
            SessionStart::new(remote, local, Role::Dialer)
                .redial_at(addr)
                .proto(opts.proto_func())
        };
        #[cfg(feature = "tls")]
        if let Some(tls) = opts.tls_for(&self.0) {
            return self.dial_tls(addr, cfg, tls, conn).await;
        }
        match cfg.network {
            Network::Tcp | Network::Tcp4 | Network::Tcp6 => {
                let (s, remote, local) = connect(&cfg, addr, net::connect_tcp).await?;
                Ok(self.start(s, conn(remote, local), move |a| {
                    let cfg = cfg.clone();
                    async move { Ok(connect(&cfg, &a, net::connect_tcp).await?.0) }
                }))
            }
            #[cfg(unix)]
            Network::Unix => {
                let (s, remote, local) = connect(&cfg, addr, net::connect_unix).await?;
                Ok(self.start(s, conn(remote, local), move |a| {
                    let cfg = cfg.clone();
                    async move { Ok(connect(&cfg, &a, net::connect_unix).await?.0) }
                }))
            }
            #[cfg(unix)]
            Network::Unixpacket => {
                let (s, remote, local) = connect(&cfg, addr, net::connect_unixpacket).await?;
                Ok(self.start(s, conn(remote, local), move |a| {
                    let cfg = cfg.clone();
                    async move { Ok(connect(&cfg, &a, net::connect_unixpacket).await?.0) }
                }))
            }
            #[cfg(not(unix))]
            other => Err(PeerCore::dial_error(
                addr,
                teleport_peer::net::unsupported_network(other),
            )),
        }
    }

    /// A dial with a TLS handshake after the connect (and after each
    /// re-dial's).
    #[cfg(feature = "tls")]
    async fn dial_tls(
        &self,
        addr: &str,
        cfg: Arc<PeerConfig>,
        tls: TlsConnector,
        conn: impl FnOnce(PeerAddr, PeerAddr) -> SessionStart,
    ) -> Result<Session, DialError> {
        async fn over<S: AsyncRead + AsyncWrite + Unpin>(
            tls: &TlsConnector,
            addr: &str,
            s: S,
        ) -> Result<Io<tokio_rustls::client::TlsStream<S>>, DialError> {
            let err = |source| DialError::Tls {
                addr: addr.to_string(),
                source,
            };
            let name = tls.server_name_for(addr).map_err(err)?;
            let shown = name.to_str().into_owned();
            let connector = tokio_rustls::TlsConnector::from(tls.config().clone());
            match tokio::time::timeout(tls.handshake_timeout(), connector.connect(name, s)).await {
                Err(_) => Err(err(TlsError::Timeout(tls.handshake_timeout()))),
                Ok(Err(e)) => Err(err(TlsError::from_handshake(e, Some(&shown)))),
                Ok(Ok(s)) => Ok(Io(s)),
            }
        }
        match cfg.network {
            Network::Tcp | Network::Tcp4 | Network::Tcp6 => {
                let (s, remote, local) = connect(&cfg, addr, net::connect_tcp).await?;
                let s = over(&tls, addr, s).await?;
                Ok(self.start(s, conn(remote, local), move |a| {
                    let (cfg, tls) = (cfg.clone(), tls.clone());
                    async move {
                        let s = connect(&cfg, &a, net::connect_tcp).await?.0;
                        Ok(over(&tls, &a, s).await?)
                    }
                }))
            }
            #[cfg(unix)]
            Network::Unix => {
                let (s, remote, local) = connect(&cfg, addr, net::connect_unix).await?;
                let s = over(&tls, addr, s).await?;
                Ok(self.start(s, conn(remote, local), move |a| {
                    let (cfg, tls) = (cfg.clone(), tls.clone());
                    async move {
                        let s = connect(&cfg, &a, net::connect_unix).await?.0;
                        Ok(over(&tls, &a, s).await?)
                    }
                }))
            }
            #[cfg(unix)]
            Network::Unixpacket => {
                let (s, remote, local) = connect(&cfg, addr, net::connect_unixpacket).await?;
                let s = over(&tls, addr, s).await?;
                Ok(self.start(s, conn(remote, local), move |a| {
                    let (cfg, tls) = (cfg.clone(), tls.clone());
                    async move {
                        let s = connect(&cfg, &a, net::connect_unixpacket).await?.0;
                        Ok(over(&tls, &a, s).await?)
                    }
                }))
            }
            #[cfg(not(unix))]
            other => Err(PeerCore::dial_error(
                addr,
                teleport_peer::net::unsupported_network(other),
            )),
        }
    }

    /// Serves a connection the caller already has (the seed's
    /// `ServeConn`): any tokio stream, in the role and with the proto
    /// `opts` name. The session is not re-dialed when it breaks. Call it
    /// inside a tokio runtime.
    pub fn serve_conn<S>(&self, stream: S, opts: ServeOptions) -> Session
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.serve_connection(Io(stream), opts)
    }

    /// [`Peer::serve_conn`] for any [`Connection`] (a TCP or unix stream
    /// serves this way with no extra copy, and callers write to it
    /// directly).
    pub fn serve_connection<S: Connection>(&self, conn: S, opts: ServeOptions) -> Session {
        let remote = PeerAddr::Other(opts.remote_name().to_string());
        let start = SessionStart::new(remote, PeerAddr::Other(String::new()), opts.role_of())
            .proto(opts.proto_func());
        self.start(conn, start, no_redial::<S>)
    }

    /// Binds the configured listen address and serves in the background
    /// (Go: `go peer.Listen()`, but returning once the socket is bound)
    /// until [`Peer::shutdown`]; returns the bound address (useful with
    /// port 0). [`Peer::listen`] is the same, then waits for the shutdown.
    pub async fn spawn_listener(&self) -> io::Result<PeerAddr> {
        self.spawn_listener_with(ListenOptions::default()).await
    }

    /// [`Peer::spawn_listener`] with options (another address, a proto of this
    /// listener's own).
    pub async fn spawn_listener_with(&self, opts: ListenOptions) -> io::Result<PeerAddr> {
        let mut cfg = self.config().clone();
        if let Some(a) = opts.address_override() {
            cfg.listen_address = a.to_string();
        }
        let proto = opts.proto_func();
        #[cfg(feature = "tls")]
        let tls = opts.tls_for(&self.0);
        #[cfg(not(feature = "tls"))]
        let tls: Option<NoTls> = None;
        let peer = self.clone();
        let mut stop = self.0.shutdown_signal();
        // Until the loop stops, a shutdown waits for what it accepts.
        let accepting = self.0.accepting();
        match cfg.network {
            Network::Tcp | Network::Tcp4 | Network::Tcp6 => {
                let l = net::bind_tcp_listener(&cfg).await?;
                let addr = PeerAddr::Tcp(l.local_addr()?);
                self.0.after_listen(&addr, &cfg, (&l).into())?;
                tracing::info!(target: "teleport::tokio", %addr, "listening");
                tokio::spawn(async move {
                    let accepting = accepting;
                    loop {
                        tokio::select! {
                            _ = stop.wait_for(|s| *s).map(drop) => break,
                            r = net::accept_tcp(&l, &cfg) => peer.accepted(r, &proto, &tls, &accepting).await,
                        }
                    }
                    tracing::info!(target: "teleport::tokio", "listener closed");
                });
                Ok(addr)
            }
            #[cfg(unix)]
            Network::Unix => {
                let l = net::bind_unix_listener(&cfg)?;
                let path = cfg.listen_address.clone();
                let addr = PeerAddr::Unix(path.clone());
                self.0.after_listen(&addr, &cfg, (&l).into())?;
                tracing::info!(target: "teleport::tokio", %addr, "listening");
                tokio::spawn(async move {
                    let accepting = accepting;
                    loop {
                        tokio::select! {
                            _ = stop.wait_for(|s| *s).map(drop) => break,
                            r = net::accept_unix(&l, &path, &cfg) => {
                                peer.accepted(r, &proto, &tls, &accepting).await
                            }
                        }
                    }
                    tracing::info!(target: "teleport::tokio", "listener closed");
                });
                Ok(addr)
            }
            #[cfg(unix)]
            Network::Unixpacket => {
                let l = net::bind_unixpacket_listener(&cfg)?;
                let path = cfg.listen_address.clone();
                let addr = PeerAddr::Unix(path.clone());
                self.0.after_listen(&addr, &cfg, (&l).into())?;
                tracing::info!(target: "teleport::tokio", %addr, "listening");
                tokio::spawn(async move {
                    let accepting = accepting;
                    loop {
                        tokio::select! {
                            _ = stop.wait_for(|s| *s).map(drop) => break,
                            r = net::accept_unixpacket(&l, &path, &cfg) => {
                                peer.accepted(r, &proto, &tls, &accepting).await
                            }
                        }
                    }
                    tracing::info!(target: "teleport::tokio", "listener closed");
                });
                Ok(addr)
            }
            #[cfg(not(unix))]
            other => Err(teleport_peer::net::unsupported_network(other)),
        }
    }

    /// Starts the session of an accepted connection (after its TLS
    /// handshake, in a task of its own, when the listener serves TLS), or
    /// waits a moment after a failed accept (out of descriptors, say: do
    /// not spin).
    async fn accepted<S>(
        &self,
        r: io::Result<net::Connected<S>>,
        proto: &Option<ProtoFunc>,
        tls: &Option<ListenTls>,
        #[cfg_attr(not(feature = "tls"), allow(unused_variables))] accepting: &Accepting,
    ) where
        S: Connection + AsyncRead + AsyncWrite + Unpin,
    {
        let (stream, remote, local) = match r {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: "teleport::tokio", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        };
        let conn = SessionStart::new(remote, local, Role::Acceptor).proto(proto.clone());
        match tls {
            None => {
                self.start(stream, conn, no_redial::<S>);
            }
            #[cfg(feature = "tls")]
            Some(tls) => {
                let (peer, tls) = (self.clone(), tls.clone());
                let accepting = accepting.clone();
                tokio::spawn(async move {
                    let _accepting = accepting;
                    let remote = conn.remote.clone();
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config().clone());
                    let hs = tokio::time::timeout(tls.handshake_timeout(), acceptor.accept(stream));
                    let e = match hs.await {
                        Ok(Ok(s)) => {
                            peer.start(Io(s), conn, no_redial::<Io<_>>);
                            return;
                        }
                        Ok(Err(e)) => TlsError::from_handshake(e, None),
                        Err(_) => TlsError::Timeout(tls.handshake_timeout()),
                    };
                    tracing::warn!(target: "teleport::tokio", %remote, error = %e, "TLS handshake failed");
                });
            }
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
        }
    }

    /// Serves on the configured listen address until [`Peer::shutdown`].
    pub async fn listen(&self) -> io::Result<()> {
        self.spawn_listener().await?;
        let mut stop = self.0.shutdown_signal();
        let _ = stop.wait_for(|s| *s).await;
        Ok(())
    }

    /// A handle to every open session.
    pub fn sessions(&self) -> Vec<Session> {
        self.0.sessions()
    }

    /// The open session with this id.
    pub fn session(&self, id: u64) -> Option<Session> {
        self.0.session(id)
    }

    /// Shuts down gracefully: stops accepting and dialing, lets running
    /// handlers finish and their replies flush and pending pulls complete,
    /// then closes every session. What is still running at `timeout` is
    /// cancelled, and counted in the report.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let deadline = PeerCore::deadline_after(timeout);
        let sessions = self.0.begin_shutdown(deadline);
        // The core abandons what is pending at the deadline; allow a moment
        // for the last flush before cancelling tasks.
        let hard = PeerCore::deadline_after(timeout.saturating_add(FLUSH_GRACE));
        let _ = tokio::time::timeout_at(hard.into(), self.0.all_gone()).await;
        let report = self.0.end_shutdown(sessions);
        // Closed connections wait (briefly) for their peers to read the last
        // replies: a process that exits now would reset them.
        let _ = tokio::time::timeout(LINGER, self.0.lingering_done()).await;
        report
    }
}

impl AsRef<Peer> for Peer {
    fn as_ref(&self) -> &Peer {
        self
    }
}

/// The seed's `GraceSignal`: says the process is ready (to a predecessor
/// and to systemd: [`notify_ready`](teleport_peer::handoff::notify_ready)),
/// waits for SIGINT or SIGTERM (handled from
/// [`Grace::listen`](teleport_peer::Grace::listen) on), then runs the
/// first sweep, shuts every one of `peers` down gracefully at once with
/// the [`Grace`](teleport_peer::Grace)'s timeout, and runs the last hook.
/// SIGHUP or SIGUSR2 first hands the peers' listening sockets to a
/// successor and stops once it is ready (a graceful restart; see
/// [`teleport_peer::grace`]). Returns what happened; the caller's `main`
/// returns after it.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use std::time::Duration;
/// use teleport_tokio::{grace_signal, Grace, Peer, PeerConfig};
///
/// let peer = Peer::new(PeerConfig::default())?;
/// let signals = Grace::new(Duration::from_secs(20))
///     .before_exiting(|| Ok(()))
///     .listen()?;
/// peer.spawn_listener().await?;
/// let report = grace_signal(signals, &[&peer]).await;
/// println!("stopped on {:?}: {:?}", report.signal, report.peers);
/// # Ok(()) }
/// ```
#[cfg(unix)]
pub async fn grace_signal<P: AsRef<Peer>>(
    signals: teleport_peer::GraceSignal,
    peers: &[P],
) -> teleport_peer::GraceReport {
    let cores: Vec<_> = peers.iter().map(|p| p.as_ref().core().clone()).collect();
    signals
        .run(&cores, |timeout| {
            futures_util::future::join_all(peers.iter().map(|p| p.as_ref().shutdown(timeout)))
        })
        .await
}
