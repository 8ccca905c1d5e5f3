//! Sockets: TCP, unix and unixpacket streams and listeners on tokio. What
//! is the same on every runtime (address families, sockets made with their
//! options, stale unix socket files, seqpacket messages) is
//! `teleport_peer::net`'s; tokio only waits for readiness.

use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::pin::Pin;
#[cfg(unix)]
use std::sync::Arc;
#[cfg(unix)]
use std::task::{ready, Context, Poll};

use teleport_peer::net::{accepted_tcp, bind_tcp, fit_family, tcp_socket};
#[cfg(unix)]
use teleport_peer::net::{set_buffer_sizes, SeqPacketRead, SeqPacketWrite};
use teleport_peer::{Network, PeerAddr, PeerConfig};
#[cfg(unix)]
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};

async fn resolve(network: Network, addr: &str) -> io::Result<Vec<SocketAddr>> {
    fit_family(network, addr, tokio::net::lookup_host(addr).await?)
}

/// A stream and both ends' addresses (remote, local).
pub(crate) type Connected<S> = (S, PeerAddr, PeerAddr);

/// Dials `addr` over TCP (the configured family); the first address that
/// answers wins. The socket has its options before it connects.
pub(crate) async fn connect_tcp(cfg: &PeerConfig, addr: &str) -> io::Result<Connected<TcpStream>> {
    let mut last = None;
    for a in resolve(cfg.network, addr).await? {
        let connected = match tcp_socket(cfg, &a, true) {
            Ok(sock) => {
                TcpSocket::from_std_stream(std::net::TcpStream::from(sock))
                    .connect(a)
                    .await
            }
            Err(e) => Err(e),
        };
        match connected {
            Ok(s) => {
                let local = PeerAddr::Tcp(s.local_addr()?);
                return Ok((s, PeerAddr::Tcp(a), local));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address to dial")))
}

/// Dials the unix socket at `path`.
#[cfg(unix)]
pub(crate) async fn connect_unix(
    cfg: &PeerConfig,
    path: &str,
) -> io::Result<Connected<UnixStream>> {
    let s = UnixStream::connect(path).await?;
    set_buffer_sizes((&s).into(), cfg)?;
    Ok((
        s,
        PeerAddr::Unix(path.into()),
        PeerAddr::Unix(String::new()),
    ))
}

/// A TCP listener on the configured address and family.
pub(crate) async fn bind_tcp_listener(cfg: &PeerConfig) -> io::Result<TcpListener> {
    let addrs = resolve(cfg.network, &cfg.listen_address).await?;
    TcpListener::from_std(bind_tcp(cfg, &addrs)?)
}

/// Accepts one TCP connection (its buffer sizes it has from the listener).
pub(crate) async fn accept_tcp(
    l: &TcpListener,
    _cfg: &PeerConfig,
) -> io::Result<Connected<TcpStream>> {
    let (s, remote) = l.accept().await?;
    accepted_tcp((&s).into())?;
    let local = PeerAddr::Tcp(s.local_addr()?);
    Ok((s, PeerAddr::Tcp(remote), local))
}

/// A unix listener at the configured path (a stale socket file of an
/// earlier run is removed first).
#[cfg(unix)]
pub(crate) fn bind_unix_listener(cfg: &PeerConfig) -> io::Result<UnixListener> {
    UnixListener::from_std(teleport_peer::net::bind_unix(cfg)?)
}

/// Accepts one unix connection on the listener at `path`.
#[cfg(unix)]
pub(crate) async fn accept_unix(
    l: &UnixListener,
    path: &str,
    cfg: &PeerConfig,
) -> io::Result<Connected<UnixStream>> {
    let (s, _) = l.accept().await?;
    set_buffer_sizes((&s).into(), cfg)?;
    Ok((
        s,
        PeerAddr::Unix(String::new()),
        PeerAddr::Unix(path.into()),
    ))
}

/// A `unixpacket` connection on tokio's reactor. Its message rules are
/// `teleport_peer::net::SeqPacket`'s (writes cut into messages no larger
/// than every reader reads; reads whole messages whatever the buffer); it
/// reads and writes like a byte stream, so TLS runs over it as over any
/// stream, and it splits into halves for a session.
///
/// The socket is held as a tokio `UnixStream` for its readiness only: a
/// safe way onto the reactor (tokio's `AsyncFd` constructors are deprecated
/// or unsafe). Every read and write goes through `SeqPacketRead` and
/// `SeqPacketWrite` (recvmsg and send), never the stream's own.
#[cfg(unix)]
#[derive(Debug)]
pub struct UnixPacket {
    io: Arc<UnixStream>,
    rd: SeqPacketRead,
    wr: SeqPacketWrite,
}

/// Reads one message's worth (or what is held of one) into `buf`.
#[cfg(unix)]
fn poll_read_packet(
    io: &UnixStream,
    rd: &mut SeqPacketRead,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let sock = socket2::SockRef::from(io);
    loop {
        if rd.has_held() {
            // Bytes of a message already read: no socket involved (and no
            // readiness to wait for).
            let n = rd.read(&sock, buf.initialize_unfilled())?;
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        ready!(io.poll_read_ready(cx))?;
        match io.try_io(Interest::READABLE, || {
            rd.read(&sock, buf.initialize_unfilled())
        }) {
            Ok(n) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Sends the start of `buf` as one message, waiting until the socket takes
/// it.
#[cfg(unix)]
fn poll_write_packet(
    io: &UnixStream,
    wr: &mut SeqPacketWrite,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    let sock = socket2::SockRef::from(io);
    loop {
        ready!(io.poll_write_ready(cx))?;
        match io.try_io(Interest::WRITABLE, || wr.write(&sock, buf)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

#[cfg(unix)]
fn shutdown_packet(io: &UnixStream) -> Poll<io::Result<()>> {
    Poll::Ready(
        match socket2::SockRef::from(io).shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
            _ => Ok(()),
        },
    )
}

#[cfg(unix)]
impl UnixPacket {
    /// A connected, non-blocking socket on the reactor.
    fn new(io: UnixStream) -> io::Result<UnixPacket> {
        let wr = SeqPacketWrite::new(&socket2::SockRef::from(&io))?;
        Ok(UnixPacket {
            io: Arc::new(io),
            rd: SeqPacketRead::new(),
            wr,
        })
    }

    /// The socket, for its options.
    #[cfg(test)]
    fn sock(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(&*self.io)
    }

    /// The halves a session runs over.
    pub(crate) fn into_split(self) -> (UnixPacketRead, UnixPacketWrite) {
        (
            UnixPacketRead {
                io: self.io.clone(),
                rd: self.rd,
            },
            UnixPacketWrite {
                io: self.io,
                wr: self.wr,
            },
        )
    }
}

#[cfg(unix)]
impl AsyncRead for UnixPacket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        poll_read_packet(&this.io, &mut this.rd, cx, buf)
    }
}

#[cfg(unix)]
impl AsyncWrite for UnixPacket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        poll_write_packet(&this.io, &mut this.wr, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        shutdown_packet(&self.io)
    }
}

/// The reading half of a [`UnixPacket`].
#[cfg(unix)]
#[derive(Debug)]
pub struct UnixPacketRead {
    io: Arc<UnixStream>,
    rd: SeqPacketRead,
}

#[cfg(unix)]
impl AsyncRead for UnixPacketRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        poll_read_packet(&this.io, &mut this.rd, cx, buf)
    }
}

/// The writing half of a [`UnixPacket`]: callers write to it directly.
#[cfg(unix)]
#[derive(Debug)]
pub struct UnixPacketWrite {
    io: Arc<UnixStream>,
    wr: SeqPacketWrite,
}

#[cfg(unix)]
impl UnixPacketWrite {
    pub(crate) fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wr.write(&socket2::SockRef::from(&*self.io), buf)
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write_packet(&self.io, &mut self.wr, cx, buf)
    }

    pub(crate) fn poll_shutdown(&mut self) -> Poll<io::Result<()>> {
        shutdown_packet(&self.io)
    }
}

/// A connected or listening `unixpacket` socket as the tokio type that
/// carries its readiness.
#[cfg(unix)]
fn on_reactor<T: From<std::os::fd::OwnedFd>>(sock: socket2::Socket) -> T {
    T::from(std::os::fd::OwnedFd::from(sock))
}

/// Dials the `unixpacket` listener at `path`.
#[cfg(unix)]
pub(crate) async fn connect_unixpacket(
    cfg: &PeerConfig,
    path: &str,
) -> io::Result<Connected<UnixPacket>> {
    let sock = teleport_peer::net::seqpacket_socket(cfg, true)?;
    let started =
        teleport_peer::net::connect_started(sock.connect(&socket2::SockAddr::unix(path)?))?;
    let io = UnixStream::from_std(on_reactor::<std::os::unix::net::UnixStream>(sock))?;
    if started {
        io.writable().await?;
        if let Some(e) = io.take_error()? {
            return Err(e);
        }
    }
    Ok((
        UnixPacket::new(io)?,
        PeerAddr::Unix(path.into()),
        PeerAddr::Unix(String::new()),
    ))
}

/// A `unixpacket` listener on the reactor (held as a tokio `UnixListener`,
/// whose accept works on any unix socket type).
#[cfg(unix)]
pub(crate) struct UnixPacketListener(UnixListener);

#[cfg(unix)]
impl std::os::fd::AsFd for UnixPacketListener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A `unixpacket` listener at the configured path (a stale socket file of
/// an earlier run is removed first).
#[cfg(unix)]
pub(crate) fn bind_unixpacket_listener(cfg: &PeerConfig) -> io::Result<UnixPacketListener> {
    let sock = teleport_peer::net::bind_seqpacket(cfg)?;
    Ok(UnixPacketListener(UnixListener::from_std(on_reactor::<
        std::os::unix::net::UnixListener,
    >(sock))?))
}

/// Accepts one `unixpacket` connection on the listener at `path`.
#[cfg(unix)]
pub(crate) async fn accept_unixpacket(
    l: &UnixPacketListener,
    path: &str,
    cfg: &PeerConfig,
) -> io::Result<Connected<UnixPacket>> {
    let (s, _) = l.0.accept().await?;
    set_buffer_sizes((&s).into(), cfg)?;
    Ok((
        UnixPacket::new(s)?,
        PeerAddr::Unix(String::new()),
        PeerAddr::Unix(path.into()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffered(network: Network, listen: &str) -> PeerConfig {
        PeerConfig {
            network,
            listen_address: listen.into(),
            read_buffer_size: Some(150_000),
            write_buffer_size: Some(9_000),
            ..PeerConfig::default()
        }
    }

    fn assert_buffers(sock: socket2::SockRef<'_>, what: &str) {
        // Linux doubles what is set; at least what was asked either way.
        let rcv = sock.recv_buffer_size().unwrap();
        let snd = sock.send_buffer_size().unwrap();
        assert!(rcv >= 150_000, "{what}: SO_RCVBUF {rcv}");
        assert!((9_000..100_000).contains(&snd), "{what}: SO_SNDBUF {snd}");
    }

    #[tokio::test]
    async fn dialed_and_accepted_tcp_sockets_have_the_buffer_sizes() {
        let cfg = buffered(Network::Tcp4, "127.0.0.1:0");
        let l = bind_tcp_listener(&cfg).await.unwrap();
        assert_buffers((&l).into(), "listener");
        let addr = l.local_addr().unwrap().to_string();
        let (dialed, accepted) = tokio::join!(connect_tcp(&cfg, &addr), accept_tcp(&l, &cfg));
        let (dialed, accepted) = (dialed.unwrap().0, accepted.unwrap().0);
        assert_buffers((&dialed).into(), "dialed");
        assert_buffers((&accepted).into(), "accepted");
        assert!(dialed.nodelay().unwrap() && accepted.nodelay().unwrap());
    }

    #[tokio::test]
    async fn tcp6_listener_is_v6_only() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipped: this machine has no IPv6 loopback ([::1] does not bind)");
            return;
        }
        let l = bind_tcp_listener(&buffered(Network::Tcp6, "[::1]:0"))
            .await
            .unwrap();
        assert!(socket2::SockRef::from(&l).only_v6().unwrap());
    }

    #[tokio::test]
    async fn unixpacket_sockets_have_the_buffer_sizes() {
        let path = std::env::temp_dir().join(format!("tp-tokio-net-{}.sock", std::process::id()));
        let p = path.to_str().unwrap();
        let cfg = buffered(Network::Unixpacket, p);
        let l = bind_unixpacket_listener(&cfg).unwrap();
        let (dialed, accepted) =
            tokio::join!(connect_unixpacket(&cfg, p), accept_unixpacket(&l, p, &cfg));
        let (dialed, accepted) = (dialed.unwrap().0, accepted.unwrap().0);
        assert_buffers(dialed.sock(), "dialed");
        assert_buffers(accepted.sock(), "accepted");
        drop(l);
        let _ = std::fs::remove_file(&path);
    }
}
