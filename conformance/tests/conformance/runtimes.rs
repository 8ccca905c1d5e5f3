//! Each runtime under test: how it serves, dials, serves a connection
//! the test hands it, and runs client code; and raw connections of the
//! test's own.

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use teleport_core::Rerror;
use teleport_peer::{
    DialError, DialOptions, ListenOptions, PeerAddr, PeerBuilder, ServeOptions, Session,
    ShutdownReport,
};

/// The runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rt {
    Tokio,
    AsyncStd,
    Smol,
    Mio,
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A serving peer.
pub enum Server {
    Tokio(tokio::runtime::Runtime, teleport_tokio::Peer, PeerAddr),
    /// async-std or smol: the same adapter, its tasks on either executor.
    AsyncIo(Rt, teleport_async_std::Peer, PeerAddr),
    Mio(teleport_mio::Peer, PeerAddr),
}

impl Server {
    pub fn addr(&self) -> &PeerAddr {
        match self {
            Server::Tokio(_, _, a) | Server::AsyncIo(_, _, a) | Server::Mio(_, a) => a,
        }
    }

    pub fn is_draining(&self) -> bool {
        match self {
            Server::Tokio(_, p, _) => p.core().is_draining(),
            Server::AsyncIo(_, p, _) => p.core().is_draining(),
            Server::Mio(p, _) => p.core().is_draining(),
        }
    }

    /// How many sessions the peer holds.
    pub fn sessions_len(&self) -> usize {
        match self {
            Server::Tokio(_, p, _) => p.sessions().len(),
            Server::AsyncIo(_, p, _) => p.sessions().len(),
            Server::Mio(p, _) => p.sessions().len(),
        }
    }

    /// A handle to each session the peer holds.
    pub fn sessions(&self) -> Vec<Session> {
        match self {
            Server::Tokio(_, p, _) => p.sessions(),
            Server::AsyncIo(_, p, _) => p.sessions(),
            Server::Mio(p, _) => p
                .sessions()
                .into_iter()
                .map(teleport_mio::Session::into_inner)
                .collect(),
        }
    }

    /// Runs code of the server's to completion on its runtime (for mio, a
    /// plain `block_on`; the mio loop does the I/O).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        match self {
            Server::Tokio(rt, _, _) => rt.block_on(f),
            Server::AsyncIo(rt, _, _) => rt.block_on(f),
            Server::Mio(_, _) => futures_executor::block_on(f),
        }
    }

    /// The peer, for what servers and clients both do.
    pub fn any(&self) -> Any<'_> {
        match self {
            Server::Tokio(rt, p, _) => Any::Tokio(rt, p),
            Server::AsyncIo(rt, p, _) => Any::AsyncIo(*rt, p),
            Server::Mio(p, _) => Any::Mio(p),
        }
    }

    /// Serves another listener (`opts` names its address, proto, TLS).
    pub fn spawn_listener_with(&self, opts: ListenOptions) -> io::Result<PeerAddr> {
        self.any().spawn_listener_with(opts)
    }

    /// Shuts the peer down (blocking).
    pub fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        match self {
            Server::Tokio(rt, p, _) => rt.block_on(p.shutdown(timeout)),
            Server::AsyncIo(rt, p, _) => rt.block_on(p.shutdown(timeout)),
            Server::Mio(p, _) => p.shutdown(timeout),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown(Duration::ZERO);
    }
}

/// A dialing peer and the executor client code runs on.
pub enum Client {
    Tokio(tokio::runtime::Runtime, teleport_tokio::Peer),
    AsyncIo(Rt, teleport_async_std::Peer),
    /// Client code runs on a plain `block_on`; the mio loop does the I/O.
    Mio(teleport_mio::Peer),
}

impl Client {
    pub fn dial(&self, addr: &str) -> Result<Session, Rerror> {
        match self {
            Client::Tokio(rt, p) => rt.block_on(p.dial(addr)).map_err(Rerror::from),
            Client::AsyncIo(rt, p) => rt.block_on(p.dial(addr)).map_err(Rerror::from),
            Client::Mio(p) => p
                .dial(addr)
                .map(teleport_mio::Session::into_inner)
                .map_err(Rerror::from),
        }
    }

    /// Dials with options; the dial's own error.
    pub fn dial_with(&self, addr: &str, opts: DialOptions) -> Result<Session, DialError> {
        self.any().dial_with(addr, opts)
    }

    /// The peer, for what servers and clients both do.
    pub fn any(&self) -> Any<'_> {
        match self {
            Client::Tokio(rt, p) => Any::Tokio(rt, p),
            Client::AsyncIo(rt, p) => Any::AsyncIo(*rt, p),
            Client::Mio(p) => Any::Mio(p),
        }
    }

    /// Runs client code to completion on this runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        match self {
            Client::Tokio(rt, _) => rt.block_on(f),
            Client::AsyncIo(rt, _) => rt.block_on(f),
            Client::Mio(_) => futures_executor::block_on(f),
        }
    }

    pub fn shutdown(&self) {
        match self {
            Client::Tokio(rt, p) => {
                rt.block_on(p.shutdown(Duration::from_secs(1)));
            }
            Client::AsyncIo(rt, p) => {
                rt.block_on(p.shutdown(Duration::from_secs(1)));
            }
            Client::Mio(p) => {
                p.shutdown(Duration::from_secs(1));
            }
        }
    }
}

impl Rt {
    /// A peer serving `b`'s routes on `b`'s listen address.
    pub fn serve(self, b: PeerBuilder) -> io::Result<Server> {
        match self {
            Rt::Tokio => {
                let rt = tokio_rt();
                let peer = teleport_tokio::Peer::from_builder(b)?;
                let addr = rt.block_on(peer.spawn_listener())?;
                Ok(Server::Tokio(rt, peer, addr))
            }
            Rt::AsyncStd | Rt::Smol => {
                let peer = teleport_async_std::Peer::from_builder(b, self.executor())?;
                let addr = self.block_on(peer.spawn_listener())?;
                Ok(Server::AsyncIo(self, peer, addr))
            }
            Rt::Mio => {
                let peer = teleport_mio::Peer::from_builder(b)?;
                let addr = peer.spawn_listener()?;
                Ok(Server::Mio(peer, addr))
            }
        }
    }

    fn executor(self) -> teleport_async_std::Executor {
        match self {
            Rt::Smol => teleport_async_std::Executor::Smol,
            _ => teleport_async_std::Executor::AsyncStd,
        }
    }

    /// The executor's own `block_on` (async-std, smol), or a plain one.
    fn block_on<F: Future>(self, f: F) -> F::Output {
        match self {
            Rt::AsyncStd => async_std::task::block_on(f),
            Rt::Smol => smol::block_on(f),
            _ => futures_executor::block_on(f),
        }
    }

    /// A client peer with `b`'s push routes.
    pub fn client(self, b: PeerBuilder) -> Client {
        match self {
            Rt::Tokio => Client::Tokio(
                tokio_rt(),
                teleport_tokio::Peer::from_builder(b).expect("client peer"),
            ),
            Rt::AsyncStd | Rt::Smol => Client::AsyncIo(
                self,
                teleport_async_std::Peer::from_builder(b, self.executor()).expect("client peer"),
            ),
            Rt::Mio => Client::Mio(teleport_mio::Peer::from_builder(b).expect("client peer")),
        }
    }
}

/// A peer of any runtime, server or client.
pub enum Any<'a> {
    Tokio(&'a tokio::runtime::Runtime, &'a teleport_tokio::Peer),
    AsyncIo(Rt, &'a teleport_async_std::Peer),
    Mio(&'a teleport_mio::Peer),
}

impl Any<'_> {
    /// How many sessions the peer holds.
    pub fn sessions_len(&self) -> usize {
        match self {
            Any::Tokio(_, p) => p.sessions().len(),
            Any::AsyncIo(_, p) => p.sessions().len(),
            Any::Mio(p) => p.sessions().len(),
        }
    }

    /// Serves another listener.
    pub fn spawn_listener_with(&self, opts: ListenOptions) -> io::Result<PeerAddr> {
        match self {
            Any::Tokio(rt, p) => rt.block_on(p.spawn_listener_with(opts)),
            Any::AsyncIo(rt, p) => rt.block_on(p.spawn_listener_with(opts)),
            Any::Mio(p) => p.spawn_listener_with(opts),
        }
    }

    /// Dials with options.
    pub fn dial_with(&self, addr: &str, opts: DialOptions) -> Result<Session, DialError> {
        match self {
            Any::Tokio(rt, p) => rt.block_on(p.dial_with(addr, opts)),
            Any::AsyncIo(rt, p) => rt.block_on(p.dial_with(addr, opts)),
            Any::Mio(p) => p
                .dial_with(addr, opts)
                .map(teleport_mio::Session::into_inner),
        }
    }

    /// Serves a TCP connection the test made as any stream of the
    /// runtime's (`serve_conn`).
    pub fn serve_tcp(&self, s: std::net::TcpStream, opts: ServeOptions) -> io::Result<Session> {
        // As the peers' own sockets: small frames go out at once.
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        Ok(match self {
            Any::Tokio(rt, p) => {
                let _in_rt = rt.enter();
                p.serve_conn(tokio::net::TcpStream::from_std(s)?, opts)
            }
            Any::AsyncIo(_, p) => p.serve_conn(async_io::Async::new(s)?, opts),
            Any::Mio(p) => p
                .serve_conn(MioConn(mio::net::TcpStream::from_std(s)), opts)
                .into_inner(),
        })
    }

    /// Serves a unix stream the test made as the runtime's own socket type
    /// (`serve_connection`; mio: `serve_conn`).
    pub fn serve_unix(
        &self,
        s: std::os::unix::net::UnixStream,
        opts: ServeOptions,
    ) -> io::Result<Session> {
        s.set_nonblocking(true)?;
        Ok(match self {
            Any::Tokio(rt, p) => {
                let _in_rt = rt.enter();
                p.serve_connection(tokio::net::UnixStream::from_std(s)?, opts)
            }
            Any::AsyncIo(_, p) => p.serve_connection(async_io::Async::new(s)?, opts),
            Any::Mio(p) => p
                .serve_conn(MioConn(mio::net::UnixStream::from_std(s)), opts)
                .into_inner(),
        })
    }

    /// Serves a unix stream the test made as a stream of the user's
    /// (`serve_conn`): tokio's unix stream; for async-io, one of ours
    /// ([`EndsOnClose`]); for mio, ours as for [`Any::serve_unix`].
    pub fn serve_unix_stream(
        &self,
        s: std::os::unix::net::UnixStream,
        opts: ServeOptions,
    ) -> io::Result<Session> {
        s.set_nonblocking(true)?;
        Ok(match self {
            Any::Tokio(rt, p) => {
                let _in_rt = rt.enter();
                p.serve_conn(tokio::net::UnixStream::from_std(s)?, opts)
            }
            Any::AsyncIo(_, p) => p.serve_conn(EndsOnClose(async_io::Async::new(s)?), opts),
            Any::Mio(p) => p
                .serve_conn(MioConn(mio::net::UnixStream::from_std(s)), opts)
                .into_inner(),
        })
    }
}

/// A futures-io stream of the test's, as a user hands one to `serve_conn`:
/// an async-io unix stream whose close ends its writing side (async-io's
/// own `poll_close` only flushes, so its end would wait for the socket to
/// go).
struct EndsOnClose(async_io::Async<std::os::unix::net::UnixStream>);

impl smol::io::AsyncRead for EndsOnClose {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl smol::io::AsyncWrite for EndsOnClose {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

/// A mio stream of the test's, as a user hands one to the poll loop.
struct MioConn<S>(S);

impl<S: mio::event::Source> mio::event::Source for MioConn<S> {
    fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        self.0.register(r, t, i)
    }

    fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
        self.0.reregister(r, t, i)
    }

    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        self.0.deregister(r)
    }
}

impl<S: Read> Read for MioConn<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<S: Write> Write for MioConn<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl teleport_mio::MioStream for MioConn<mio::net::TcpStream> {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Write)
    }
}

impl teleport_mio::MioStream for MioConn<mio::net::UnixStream> {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Write)
    }
}

/// A connection of the test's own, not a peer: to send what no peer
/// would, or to stay silent.
pub trait RawConn: Read + Write + Send {}

impl<T: Read + Write + Send> RawConn for T {}

/// Connects to `addr` over `net` with blocking reads that give up after
/// [`GUARD`] (a read that hangs says so rather than hanging the test).
pub fn raw_connect(net: Net, addr: &str) -> io::Result<Box<dyn RawConn>> {
    Ok(match net {
        Net::Tcp => {
            let c = std::net::TcpStream::connect(addr)?;
            c.set_read_timeout(Some(GUARD))?;
            Box::new(c)
        }
        Net::Unix => {
            let c = std::os::unix::net::UnixStream::connect(addr)?;
            c.set_read_timeout(Some(GUARD))?;
            Box::new(c)
        }
        Net::Unixpacket => {
            use socket2::{Domain, SockAddr, Socket, Type};
            let c = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
            c.connect(&SockAddr::unix(addr)?)?;
            c.set_read_timeout(Some(GUARD))?;
            Box::new(c)
        }
    })
}

/// Reads until the other side lets go of the connection: the end of
/// input or a reset (`Ok` with the bytes read), or an error (a read
/// timeout: it never did).
pub fn read_until_dropped(conn: &mut dyn RawConn) -> io::Result<usize> {
    let mut total = 0;
    let mut buf = [0u8; 512];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(total),
            Err(e) => return Err(e),
        }
    }
}

/// Runs `f` on a thread named `name`, alongside the caller's work.
pub fn beside<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("a thread")
}

/// The thread's result; its panic is the caller's.
pub fn join<T>(t: std::thread::JoinHandle<T>) -> T {
    t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Binds again at an address a previous server just left (the port may
/// take a moment to free up).
pub fn retry_bind(mut bind: impl FnMut() -> io::Result<Server>) -> Server {
    for _ in 0..500 {
        match bind() {
            Ok(s) => return s,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("rebind: {e}"),
        }
    }
    panic!("rebind: the address stayed in use");
}

pub use teleport_testkit::SockPath;

/// Only a guard against hangs; nothing asserts how fast anything was.
pub const GUARD: Duration = Duration::from_secs(20);

/// Which transport a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Tcp,
    /// A unix stream socket.
    Unix,
    /// A unix `SOCK_SEQPACKET` socket.
    Unixpacket,
}

impl Net {
    /// Every transport.
    pub const ALL: [Net; 3] = [Net::Tcp, Net::Unix, Net::Unixpacket];

    /// Whether it listens at a path.
    pub fn is_unix(self) -> bool {
        matches!(self, Net::Unix | Net::Unixpacket)
    }

    /// A fresh socket path for a server over a unix transport.
    pub fn sock(self, tag: &str) -> Option<SockPath> {
        self.is_unix().then(|| SockPath::new(tag))
    }

    /// The config's name for it.
    pub fn network(self) -> teleport_peer::Network {
        match self {
            Net::Tcp => teleport_peer::Network::Tcp,
            Net::Unix => teleport_peer::Network::Unix,
            Net::Unixpacket => teleport_peer::Network::Unixpacket,
        }
    }
}
