//! Sockets: TCP, unix and unixpacket streams registered with async-io's
//! reactor, and listeners. What is the same on every runtime (address
//! families, sockets made with their options, stale unix socket files,
//! seqpacket messages) is `teleport_peer::net`'s; async-io only waits for
//! readiness.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};
#[cfg(unix)]
use std::pin::Pin;
#[cfg(unix)]
use std::sync::Arc;
#[cfg(unix)]
use std::task::{ready, Context, Poll};

use async_io::Async;
#[cfg(unix)]
use futures_lite::io::{AsyncRead, AsyncWrite};
use teleport_peer::net::{accepted_tcp, connect_started, fit_family, tcp_socket};
#[cfg(unix)]
use teleport_peer::net::{set_buffer_sizes, SeqPacketRead, SeqPacketWrite};
use teleport_peer::{Network, PeerAddr, PeerConfig};

/// `host:port` to addresses of the network's family (a literal address
/// resolves without a lookup thread).
async fn resolve(network: Network, addr: &str) -> io::Result<Vec<SocketAddr>> {
    fit_family(network, addr, async_net::resolve(addr).await?)
}

/// A stream and both ends' addresses (remote, local).
pub(crate) type Connected<S> = (S, PeerAddr, PeerAddr);

/// Connects a non-blocking [`tcp_socket`] to `a` on the reactor (the
/// options are set before the connect, which `Async::connect` leaves no
/// room for).
async fn connect_one(cfg: &PeerConfig, a: SocketAddr) -> io::Result<Async<TcpStream>> {
    let sock = tcp_socket(cfg, &a, true)?;
    let started = connect_started(sock.connect(&a.into()))?;
    let s = Async::new_nonblocking(TcpStream::from(sock))?;
    if started {
        // Writable once connected, or once the connect failed.
        s.writable().await?;
        if let Some(e) = s.get_ref().take_error()? {
            return Err(e);
        }
    }
    Ok(s)
}

/// Dials `addr` over TCP (the configured family); the first address that
/// answers wins.
pub(crate) async fn connect_tcp(
    cfg: &PeerConfig,
    addr: &str,
) -> io::Result<Connected<Async<TcpStream>>> {
    let mut last = None;
    for a in resolve(cfg.network, addr).await? {
        match connect_one(cfg, a).await {
            Ok(s) => {
                let local = PeerAddr::Tcp(s.get_ref().local_addr()?);
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
) -> io::Result<Connected<Async<UnixStream>>> {
    let s = Async::<UnixStream>::connect(path).await?;
    set_buffer_sizes(s.get_ref().into(), cfg)?;
    Ok((
        s,
        PeerAddr::Unix(path.into()),
        PeerAddr::Unix(String::new()),
    ))
}

/// A TCP listener on the configured address and family.
pub(crate) async fn bind_tcp_listener(cfg: &PeerConfig) -> io::Result<Async<TcpListener>> {
    let addrs = resolve(cfg.network, &cfg.listen_address).await?;
    Async::new(teleport_peer::net::bind_tcp(cfg, &addrs)?)
}

/// Accepts one TCP connection (its buffer sizes it has from the listener).
pub(crate) async fn accept_tcp(
    l: &Async<TcpListener>,
    _cfg: &PeerConfig,
) -> io::Result<Connected<Async<TcpStream>>> {
    let (s, remote) = l.accept().await?;
    accepted_tcp(s.get_ref().into())?;
    let local = PeerAddr::Tcp(s.get_ref().local_addr()?);
    Ok((s, PeerAddr::Tcp(remote), local))
}

/// A unix listener at the configured path (a stale socket file of an
/// earlier run is removed first).
#[cfg(unix)]
pub(crate) fn bind_unix_listener(cfg: &PeerConfig) -> io::Result<Async<UnixListener>> {
    Async::new(teleport_peer::net::bind_unix(cfg)?)
}

/// Accepts one unix connection on the listener at `path`.
#[cfg(unix)]
pub(crate) async fn accept_unix(
    l: &Async<UnixListener>,
    path: &str,
    cfg: &PeerConfig,
) -> io::Result<Connected<Async<UnixStream>>> {
    let (s, _) = l.accept().await?;
    set_buffer_sizes(s.get_ref().into(), cfg)?;
    Ok((
        s,
        PeerAddr::Unix(String::new()),
        PeerAddr::Unix(path.into()),
    ))
}

/// A `unixpacket` connection on async-io's reactor. Its message rules are
/// `teleport_peer::net::SeqPacket`'s (writes cut into messages no larger
/// than every reader reads; reads whole messages whatever the buffer); it
/// reads and writes like a byte stream, so TLS runs over it as over any
/// stream, and it splits into halves for a session.
#[cfg(unix)]
#[derive(Debug)]
pub struct UnixPacket {
    io: Arc<Async<socket2::Socket>>,
    rd: SeqPacketRead,
    wr: SeqPacketWrite,
}

/// Reads one message's worth (or what is held of one) into `buf`. Each
/// read tries the socket first: a message read says nothing about whether
/// another waits.
#[cfg(unix)]
fn poll_read_packet(
    io: &Async<socket2::Socket>,
    rd: &mut SeqPacketRead,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    loop {
        match rd.read(io.get_ref(), buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return Poll::Ready(r),
        }
        ready!(io.poll_readable(cx))?;
    }
}

/// Sends the start of `buf` as one message, waiting until the socket takes
/// it.
#[cfg(unix)]
fn poll_write_packet(
    io: &Async<socket2::Socket>,
    wr: &mut SeqPacketWrite,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    loop {
        match wr.write(io.get_ref(), buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return Poll::Ready(r),
        }
        ready!(io.poll_writable(cx))?;
    }
}

#[cfg(unix)]
fn shutdown_packet(io: &Async<socket2::Socket>) -> Poll<io::Result<()>> {
    Poll::Ready(match io.get_ref().shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    })
}

#[cfg(unix)]
impl UnixPacket {
    /// A connected socket on the reactor.
    fn new(io: Async<socket2::Socket>) -> io::Result<UnixPacket> {
        let wr = SeqPacketWrite::new(io.get_ref())?;
        Ok(UnixPacket {
            io: Arc::new(io),
            rd: SeqPacketRead::new(),
            wr,
        })
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
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
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

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        shutdown_packet(&self.io)
    }
}

/// The reading half of a [`UnixPacket`].
#[cfg(unix)]
#[derive(Debug)]
pub struct UnixPacketRead {
    io: Arc<Async<socket2::Socket>>,
    rd: SeqPacketRead,
}

#[cfg(unix)]
impl AsyncRead for UnixPacketRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        poll_read_packet(&this.io, &mut this.rd, cx, buf)
    }
}

/// The writing half of a [`UnixPacket`]: callers write to it directly.
#[cfg(unix)]
#[derive(Debug)]
pub struct UnixPacketWrite {
    io: Arc<Async<socket2::Socket>>,
    wr: SeqPacketWrite,
}

#[cfg(unix)]
impl UnixPacketWrite {
    pub(crate) fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wr.write(self.io.get_ref(), buf)
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

/// Dials the `unixpacket` listener at `path`.
#[cfg(unix)]
pub(crate) async fn connect_unixpacket(
    cfg: &PeerConfig,
    path: &str,
) -> io::Result<Connected<UnixPacket>> {
    let sock = teleport_peer::net::seqpacket_socket(cfg, true)?;
    let started = connect_started(sock.connect(&socket2::SockAddr::unix(path)?))?;
    let io = Async::new_nonblocking(sock)?;
    if started {
        io.writable().await?;
        if let Some(e) = io.get_ref().take_error()? {
            return Err(e);
        }
    }
    Ok((
        UnixPacket::new(io)?,
        PeerAddr::Unix(path.into()),
        PeerAddr::Unix(String::new()),
    ))
}

/// A `unixpacket` listener at the configured path (a stale socket file of
/// an earlier run is removed first).
#[cfg(unix)]
pub(crate) fn bind_unixpacket_listener(cfg: &PeerConfig) -> io::Result<Async<socket2::Socket>> {
    Async::new_nonblocking(teleport_peer::net::bind_seqpacket(cfg)?)
}

/// Accepts one `unixpacket` connection on the listener at `path`.
#[cfg(unix)]
pub(crate) async fn accept_unixpacket(
    l: &Async<socket2::Socket>,
    path: &str,
    cfg: &PeerConfig,
) -> io::Result<Connected<UnixPacket>> {
    let sock = l
        .read_with(|l| teleport_peer::net::accept_seqpacket(l, cfg))
        .await?;
    Ok((
        UnixPacket::new(Async::new_nonblocking(sock)?)?,
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

    #[test]
    fn dialed_and_accepted_tcp_sockets_have_the_buffer_sizes() {
        futures_lite::future::block_on(async {
            let cfg = buffered(Network::Tcp4, "127.0.0.1:0");
            let l = bind_tcp_listener(&cfg).await.unwrap();
            assert_buffers(l.get_ref().into(), "listener");
            let addr = l.get_ref().local_addr().unwrap().to_string();
            let (dialed, accepted) =
                futures_lite::future::zip(connect_tcp(&cfg, &addr), accept_tcp(&l, &cfg)).await;
            let (dialed, accepted) = (dialed.unwrap().0, accepted.unwrap().0);
            assert_buffers(dialed.get_ref().into(), "dialed");
            assert_buffers(accepted.get_ref().into(), "accepted");
            assert!(dialed.get_ref().nodelay().unwrap());
            assert!(accepted.get_ref().nodelay().unwrap());
        });
    }

    #[test]
    fn tcp6_listener_is_v6_only() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipped: this machine has no IPv6 loopback ([::1] does not bind)");
            return;
        }
        futures_lite::future::block_on(async {
            let l = bind_tcp_listener(&buffered(Network::Tcp6, "[::1]:0"))
                .await
                .unwrap();
            assert!(socket2::SockRef::from(l.get_ref()).only_v6().unwrap());
        });
    }

    #[test]
    fn unixpacket_sockets_have_the_buffer_sizes() {
        let path = std::env::temp_dir().join(format!("tp-aio-net-{}.sock", std::process::id()));
        let p = path.to_str().unwrap();
        futures_lite::future::block_on(async {
            let cfg = buffered(Network::Unixpacket, p);
            let l = bind_unixpacket_listener(&cfg).unwrap();
            let (dialed, accepted) = futures_lite::future::zip(
                connect_unixpacket(&cfg, p),
                accept_unixpacket(&l, p, &cfg),
            )
            .await;
            let (dialed, accepted) = (dialed.unwrap().0, accepted.unwrap().0);
            assert_buffers(dialed.io.get_ref().into(), "dialed");
            assert_buffers(accepted.io.get_ref().into(), "accepted");
        });
        let _ = std::fs::remove_file(&path);
    }
}
