//! Sockets: TCP, unix and unixpacket streams and listeners as mio
//! sources, and TLS over any of them. Connecting (and a dial's TLS
//! handshake) blocks the calling thread, never the poll loop's; the
//! stream is then made non-blocking and handed to the loop. What is the
//! same on every runtime (sockets made with their options, seqpacket
//! messages) is `teleport_peer::net`'s.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};

use mio::event::Source;
use mio::{Interest, Registry, Token};
use teleport_peer::adapter::PeerCore;
use teleport_peer::net::{connect_tcp_blocking, fit_family};
#[cfg(unix)]
use teleport_peer::net::{set_buffer_sizes, SeqPacket};
use teleport_peer::{DialError, Network, PeerAddr, PeerConfig};

/// A connection the poll loop can run a session over, besides its own TCP
/// and unix streams: a TLS stream, or one of the user's (see
/// `Peer::serve_conn`). It is non-blocking: reads and writes say
/// `WouldBlock` rather than wait, and readiness comes from its [`Source`].
pub trait MioStream: Source + Read + Write + Send + 'static {
    /// Ends the writing side (after the last bytes were written).
    fn shutdown_write(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Whether it holds bytes of its own still to write (TLS records):
    /// the loop then waits for the stream to be writable and calls
    /// [`Write::flush`].
    fn wants_write(&self) -> bool {
        false
    }
}

/// A connected, non-blocking stream.
pub(crate) enum Stream {
    Tcp(mio::net::TcpStream),
    #[cfg(unix)]
    Unix(mio::net::UnixStream),
    #[cfg(unix)]
    Packet(PacketStream),
    #[cfg(feature = "tls")]
    Tls(Box<crate::tls::TlsStream>),
    Custom(Box<dyn MioStream>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Tcp(s) => s.fmt(f),
            #[cfg(unix)]
            Stream::Unix(s) => s.fmt(f),
            #[cfg(unix)]
            Stream::Packet(s) => s.fmt(f),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => f.write_str("Stream::Tls"),
            Stream::Custom(_) => f.write_str("Stream::Custom"),
        }
    }
}

/// The TLS connector a dial uses (and its re-dials): none without the
/// `tls` feature.
#[cfg(feature = "tls")]
pub(crate) type DialTls = Option<teleport_peer::tls::TlsConnector>;
#[cfg(not(feature = "tls"))]
pub(crate) type DialTls = Option<NoTls>;

/// The TLS acceptor a listener serves with: none without the `tls`
/// feature.
#[cfg(feature = "tls")]
pub(crate) type ListenTls = Option<teleport_peer::tls::TlsAcceptor>;
#[cfg(not(feature = "tls"))]
pub(crate) type ListenTls = Option<NoTls>;

/// Without the `tls` feature there is no TLS to dial or serve with.
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
pub(crate) enum NoTls {}

/// A stream and both ends' addresses, and for a dialed one the TLS its
/// re-dials speak.
pub(crate) struct Connected {
    pub(crate) stream: Stream,
    pub(crate) remote: PeerAddr,
    pub(crate) local: PeerAddr,
    pub(crate) tls: DialTls,
}

impl Stream {
    pub(crate) fn shutdown_write(&mut self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            #[cfg(unix)]
            Stream::Packet(s) => s.0.socket().shutdown(std::net::Shutdown::Write),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => {
                s.shutdown_write();
                Ok(())
            }
            Stream::Custom(s) => s.shutdown_write(),
        };
    }

    /// Whether the stream holds bytes of its own to write (see
    /// [`MioStream::wants_write`]).
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.wants_write(),
            Stream::Custom(s) => s.wants_write(),
            _ => false,
        }
    }

    /// The session is over and its last bytes are written: a TLS stream
    /// queues its close_notify (written by the flushes that follow).
    pub(crate) fn begin_close(&mut self) {
        #[cfg(feature = "tls")]
        if let Stream::Tls(s) = self {
            s.begin_close();
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Packet(s) => s.0.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
            Stream::Custom(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.write(buf),
            #[cfg(unix)]
            Stream::Packet(s) => s.0.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
            Stream::Custom(s) => s.write(buf),
        }
    }

    /// Gathered writes where the socket takes them (TLS writes its records
    /// this way); a seqpacket message is one buffer.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            #[cfg(unix)]
            Stream::Unix(s) => s.write_vectored(bufs),
            other => {
                let first = bufs.iter().find(|b| !b.is_empty());
                other.write(first.map_or(&[][..], |b| &b[..]))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
            Stream::Custom(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            #[cfg(unix)]
            Stream::Unix(s) => s.register(r, t, i),
            #[cfg(unix)]
            Stream::Packet(s) => s.register(r, t, i),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.io_mut().register(r, t, i),
            Stream::Custom(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            #[cfg(unix)]
            Stream::Unix(s) => s.reregister(r, t, i),
            #[cfg(unix)]
            Stream::Packet(s) => s.reregister(r, t, i),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.io_mut().reregister(r, t, i),
            Stream::Custom(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            #[cfg(unix)]
            Stream::Unix(s) => s.deregister(r),
            #[cfg(unix)]
            Stream::Packet(s) => s.deregister(r),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.io_mut().deregister(r),
            Stream::Custom(s) => s.deregister(r),
        }
    }
}

/// A `unixpacket` connection as a mio source; reads and writes follow
/// `teleport_peer::net::SeqPacket`'s message rules (the loop reads
/// [`READ_CHUNK`](teleport_peer::net::READ_CHUNK) at a time, whole
/// messages).
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct PacketStream(SeqPacket);

#[cfg(unix)]
impl PacketStream {
    /// A connected, non-blocking seqpacket socket.
    fn new(sock: socket2::Socket) -> io::Result<Self> {
        Ok(PacketStream(SeqPacket::new(sock)?))
    }
}

#[cfg(unix)]
impl Source for PacketStream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        mio::unix::SourceFd(&self.0.socket().as_raw_fd()).register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        mio::unix::SourceFd(&self.0.socket().as_raw_fd()).reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        mio::unix::SourceFd(&self.0.socket().as_raw_fd()).deregister(r)
    }
}

/// A `unixpacket` listener as a mio source.
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct PacketListener(socket2::Socket);

#[cfg(unix)]
impl Source for PacketListener {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        mio::unix::SourceFd(&self.0.as_raw_fd()).register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        mio::unix::SourceFd(&self.0.as_raw_fd()).reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        mio::unix::SourceFd(&self.0.as_raw_fd()).deregister(r)
    }
}

macro_rules! delegate_source {
    ($t:ty, $($v:ident),+) => {
        impl Source for $t {
            fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
                match self { $(Self::$v(s, ..) => s.register(r, t, i),)+ }
            }
            fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
                match self { $(Self::$v(s, ..) => s.reregister(r, t, i),)+ }
            }
            fn deregister(&mut self, r: &Registry) -> io::Result<()> {
                match self { $(Self::$v(s, ..) => s.deregister(r),)+ }
            }
        }
    };
}

fn resolve(network: Network, addr: &str) -> io::Result<Vec<SocketAddr>> {
    fit_family(network, addr, addr.to_socket_addrs()?)
}

/// What a failed connect to `addr` becomes.
fn dial_error(cfg: &PeerConfig, addr: &str, e: io::Error) -> DialError {
    match e.kind() {
        io::ErrorKind::TimedOut => DialError::Timeout {
            addr: addr.to_string(),
            after: cfg.dial_timeout.unwrap_or_default(),
        },
        _ => PeerCore::dial_error(addr, e),
    }
}

/// A blocking stream just connected, on its way to the loop: the TLS
/// handshake (if the dial speaks TLS) runs over it before it is made
/// non-blocking.
pub(crate) trait Dialed: Read + Write {
    /// Bounds each blocking read (`read`) or write to `t`.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    fn set_timeout(&self, read: bool, t: std::time::Duration) -> io::Result<()>;
    /// Non-blocking, as the loop's stream.
    fn into_stream(self) -> io::Result<Stream>;
}

impl Dialed for std::net::TcpStream {
    fn set_timeout(&self, read: bool, t: std::time::Duration) -> io::Result<()> {
        match read {
            true => self.set_read_timeout(Some(t)),
            false => self.set_write_timeout(Some(t)),
        }
    }
    fn into_stream(self) -> io::Result<Stream> {
        self.set_nonblocking(true)?;
        Ok(Stream::Tcp(mio::net::TcpStream::from_std(self)))
    }
}

#[cfg(unix)]
impl Dialed for std::os::unix::net::UnixStream {
    fn set_timeout(&self, read: bool, t: std::time::Duration) -> io::Result<()> {
        match read {
            true => self.set_read_timeout(Some(t)),
            false => self.set_write_timeout(Some(t)),
        }
    }
    fn into_stream(self) -> io::Result<Stream> {
        self.set_nonblocking(true)?;
        Ok(Stream::Unix(mio::net::UnixStream::from_std(self)))
    }
}

#[cfg(unix)]
impl Dialed for SeqPacket {
    fn set_timeout(&self, read: bool, t: std::time::Duration) -> io::Result<()> {
        match read {
            true => self.socket().set_read_timeout(Some(t)),
            false => self.socket().set_write_timeout(Some(t)),
        }
    }
    fn into_stream(self) -> io::Result<Stream> {
        self.socket().set_nonblocking(true)?;
        Ok(Stream::Packet(PacketStream(self)))
    }
}

/// The dialed stream as the loop's, after the TLS handshake if `tls`.
fn finish_dial(
    cfg: &PeerConfig,
    addr: &str,
    s: impl Dialed,
    tls: &DialTls,
) -> Result<Stream, DialError> {
    match tls {
        None => s.into_stream().map_err(|e| dial_error(cfg, addr, e)),
        #[cfg(feature = "tls")]
        Some(tls) => {
            let mut s = s;
            let conn = crate::tls::client_handshake(tls, addr, &mut s).map_err(|source| {
                DialError::Tls {
                    addr: addr.to_string(),
                    source,
                }
            })?;
            let io = s.into_stream().map_err(|e| dial_error(cfg, addr, e))?;
            Ok(Stream::Tls(Box::new(crate::tls::TlsStream::new(io, conn))))
        }
        #[cfg(not(feature = "tls"))]
        Some(never) => match *never {},
    }
}

/// Dials `addr` on the configured network, blocking this thread: the
/// connect within the configured `dial_timeout`, the TLS handshake (with
/// `tls`) within the connector's handshake timeout.
pub(crate) fn connect(cfg: &PeerConfig, addr: &str, tls: &DialTls) -> Result<Connected, DialError> {
    let err = |e| dial_error(cfg, addr, e);
    let (stream, remote, local) = match cfg.network {
        Network::Tcp | Network::Tcp4 | Network::Tcp6 => {
            let mut last = None;
            let mut dialed = None;
            for a in resolve(cfg.network, addr).map_err(err)? {
                match connect_tcp_blocking(cfg, a) {
                    Ok(s) => {
                        dialed = Some((s, a));
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let Some((s, a)) = dialed else {
                return Err(err(
                    last.unwrap_or_else(|| io::Error::other("no address to dial"))
                ));
            };
            let local = PeerAddr::Tcp(s.local_addr().map_err(err)?);
            (finish_dial(cfg, addr, s, tls)?, PeerAddr::Tcp(a), local)
        }
        #[cfg(unix)]
        Network::Unix => {
            let s = std::os::unix::net::UnixStream::connect(addr).map_err(err)?;
            set_buffer_sizes((&s).into(), cfg).map_err(err)?;
            let stream = finish_dial(cfg, addr, s, tls)?;
            (
                stream,
                PeerAddr::Unix(addr.into()),
                PeerAddr::Unix(String::new()),
            )
        }
        #[cfg(unix)]
        Network::Unixpacket => {
            let sock = teleport_peer::net::connect_seqpacket_blocking(cfg, addr).map_err(err)?;
            let s = SeqPacket::new(sock).map_err(err)?;
            let stream = finish_dial(cfg, addr, s, tls)?;
            (
                stream,
                PeerAddr::Unix(addr.into()),
                PeerAddr::Unix(String::new()),
            )
        }
        #[cfg(not(unix))]
        other => return Err(err(teleport_peer::net::unsupported_network(other))),
    };
    Ok(Connected {
        stream,
        remote,
        local,
        tls: tls.clone(),
    })
}

/// A bound, non-blocking listener of any kind.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(mio::net::TcpListener),
    #[cfg(unix)]
    Unix(mio::net::UnixListener, String),
    #[cfg(unix)]
    Packet(PacketListener, String),
}

#[cfg(unix)]
delegate_source!(Listener, Tcp, Unix, Packet);
#[cfg(not(unix))]
delegate_source!(Listener, Tcp);

impl Listener {
    /// The listening socket.
    pub(crate) fn socket(&self) -> socket2::SockRef<'_> {
        match self {
            Listener::Tcp(l) => l.into(),
            #[cfg(unix)]
            Listener::Unix(l, _) => l.into(),
            #[cfg(unix)]
            Listener::Packet(l, _) => (&l.0).into(),
        }
    }

    /// Binds the configured listen address (or `address`).
    pub(crate) fn bind(cfg: &PeerConfig) -> io::Result<Listener> {
        match cfg.network {
            Network::Tcp | Network::Tcp4 | Network::Tcp6 => {
                let addrs = resolve(cfg.network, &cfg.listen_address)?;
                let l = teleport_peer::net::bind_tcp(cfg, &addrs)?;
                Ok(Listener::Tcp(mio::net::TcpListener::from_std(l)))
            }
            #[cfg(unix)]
            Network::Unix => {
                let path = cfg.listen_address.clone();
                let l = teleport_peer::net::bind_unix(cfg)?;
                Ok(Listener::Unix(mio::net::UnixListener::from_std(l), path))
            }
            #[cfg(unix)]
            Network::Unixpacket => {
                let l = teleport_peer::net::bind_seqpacket(cfg)?;
                Ok(Listener::Packet(
                    PacketListener(l),
                    cfg.listen_address.clone(),
                ))
            }
            #[cfg(not(unix))]
            other => Err(teleport_peer::net::unsupported_network(other)),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<PeerAddr> {
        match self {
            Listener::Tcp(l) => Ok(PeerAddr::Tcp(l.local_addr()?)),
            #[cfg(unix)]
            Listener::Unix(_, p) | Listener::Packet(_, p) => Ok(PeerAddr::Unix(p.clone())),
        }
    }

    /// Accepts one connection (`WouldBlock` when none is waiting).
    pub(crate) fn accept(&self, cfg: &PeerConfig) -> io::Result<Connected> {
        match self {
            Listener::Tcp(l) => {
                let (s, remote) = l.accept()?;
                // The buffer sizes it has from the listener.
                teleport_peer::net::accepted_tcp((&s).into())?;
                let local = PeerAddr::Tcp(s.local_addr()?);
                Ok(Connected {
                    stream: Stream::Tcp(s),
                    remote: PeerAddr::Tcp(remote),
                    local,
                    tls: None,
                })
            }
            #[cfg(unix)]
            Listener::Unix(l, path) => {
                let (s, _) = l.accept()?;
                set_buffer_sizes((&s).into(), cfg)?;
                Ok(Connected {
                    stream: Stream::Unix(s),
                    remote: PeerAddr::Unix(String::new()),
                    local: PeerAddr::Unix(path.clone()),
                    tls: None,
                })
            }
            #[cfg(unix)]
            Listener::Packet(l, path) => {
                let s = teleport_peer::net::accept_seqpacket(&l.0, cfg)?;
                Ok(Connected {
                    stream: Stream::Packet(PacketStream::new(s)?),
                    remote: PeerAddr::Unix(String::new()),
                    local: PeerAddr::Unix(path.clone()),
                    tls: None,
                })
            }
        }
    }
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

    fn sock_of(s: &Stream) -> socket2::SockRef<'_> {
        match s {
            Stream::Tcp(s) => s.into(),
            #[cfg(unix)]
            Stream::Packet(s) => s.0.socket().into(),
            other => panic!("not a socket of ours: {other:?}"),
        }
    }

    /// Accepts once, waiting for the dial to arrive.
    fn accept_one(l: &Listener, cfg: &PeerConfig) -> Connected {
        for _ in 0..1000 {
            match l.accept(cfg) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                r => return r.unwrap(),
            }
        }
        panic!("no connection to accept");
    }

    #[test]
    fn dialed_and_accepted_tcp_sockets_have_the_buffer_sizes() {
        let cfg = buffered(Network::Tcp4, "127.0.0.1:0");
        let l = Listener::bind(&cfg).unwrap();
        let Listener::Tcp(tl) = &l else { panic!() };
        assert_buffers(tl.into(), "listener");
        let addr = l.local_addr().unwrap().dial_string();
        let dialed = connect(&cfg, &addr, &None).unwrap();
        let accepted = accept_one(&l, &cfg);
        assert_buffers(sock_of(&dialed.stream), "dialed");
        assert_buffers(sock_of(&accepted.stream), "accepted");
        assert!(sock_of(&dialed.stream).tcp_nodelay().unwrap());
        assert!(sock_of(&accepted.stream).tcp_nodelay().unwrap());
    }

    #[test]
    fn tcp6_listener_is_v6_only() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("skipped: this machine has no IPv6 loopback ([::1] does not bind)");
            return;
        }
        let l = Listener::bind(&buffered(Network::Tcp6, "[::1]:0")).unwrap();
        let Listener::Tcp(tl) = &l else { panic!() };
        assert!(socket2::SockRef::from(tl).only_v6().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn unixpacket_sockets_have_the_buffer_sizes() {
        let path = std::env::temp_dir().join(format!("tp-mio-net-{}.sock", std::process::id()));
        let p = path.to_str().unwrap();
        let cfg = buffered(Network::Unixpacket, p);
        let l = Listener::bind(&cfg).unwrap();
        let dialed = connect(&cfg, p, &None).unwrap();
        let accepted = accept_one(&l, &cfg);
        assert_buffers(sock_of(&dialed.stream), "dialed");
        assert_buffers(sock_of(&accepted.stream), "accepted");
        drop(l);
        let _ = std::fs::remove_file(&path);
    }
}
