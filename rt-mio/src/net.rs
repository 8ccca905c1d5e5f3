//! Sockets: TCP and Unix streams and listeners as mio sources. Connecting
//! blocks the calling thread (never the poll loop's); the stream is then
//! made non-blocking and handed to the loop.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};

use mio::event::Source;
use mio::{Interest, Registry, Token};
use teleport_peer::net::{clear_stale_unix_socket, fit_family, tune_socket, unsupported_network};
use teleport_peer::{Network, PeerAddr, PeerConfig};

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
    Custom(Box<dyn MioStream>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Tcp(s) => s.fmt(f),
            #[cfg(unix)]
            Stream::Unix(s) => s.fmt(f),
            Stream::Custom(_) => f.write_str("Stream::Custom"),
        }
    }
}

/// A stream and both ends' addresses.
pub(crate) struct Connected {
    pub(crate) stream: Stream,
    pub(crate) remote: PeerAddr,
    pub(crate) local: PeerAddr,
}

impl Stream {
    pub(crate) fn shutdown_write(&mut self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Custom(s) => s.shutdown_write(),
        };
    }

    /// Whether the stream holds bytes of its own to write (see
    /// [`MioStream::wants_write`]).
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Stream::Custom(s) => s.wants_write(),
            _ => false,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
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
            Stream::Custom(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
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
            Stream::Custom(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            #[cfg(unix)]
            Stream::Unix(s) => s.reregister(r, t, i),
            Stream::Custom(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            #[cfg(unix)]
            Stream::Unix(s) => s.deregister(r),
            Stream::Custom(s) => s.deregister(r),
        }
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

/// Dials `addr` on the configured network, blocking this thread.
pub(crate) fn connect(cfg: &PeerConfig, addr: &str) -> io::Result<Connected> {
    match cfg.network {
        Network::Tcp | Network::Tcp4 | Network::Tcp6 => {
            let mut last = None;
            for a in resolve(cfg.network, addr)? {
                let connected = match cfg.dial_timeout {
                    Some(t) => std::net::TcpStream::connect_timeout(&a, t),
                    None => std::net::TcpStream::connect(a),
                };
                match connected {
                    Ok(s) => {
                        tune_socket(socket2::SockRef::from(&s), cfg, true)?;
                        s.set_nonblocking(true)?;
                        let local = PeerAddr::Tcp(s.local_addr()?);
                        return Ok(Connected {
                            stream: Stream::Tcp(mio::net::TcpStream::from_std(s)),
                            remote: PeerAddr::Tcp(a),
                            local,
                        });
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address to dial")))
        }
        #[cfg(unix)]
        Network::Unix => {
            let s = std::os::unix::net::UnixStream::connect(addr)?;
            tune_socket(socket2::SockRef::from(&s), cfg, false)?;
            s.set_nonblocking(true)?;
            Ok(Connected {
                stream: Stream::Unix(mio::net::UnixStream::from_std(s)),
                remote: PeerAddr::Unix(addr.into()),
                local: PeerAddr::Unix(String::new()),
            })
        }
        other => Err(unsupported_network(other)),
    }
}

/// A bound, non-blocking listener of either kind.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(mio::net::TcpListener),
    #[cfg(unix)]
    Unix(mio::net::UnixListener, String),
}

#[cfg(unix)]
delegate_source!(Listener, Tcp, Unix);
#[cfg(not(unix))]
delegate_source!(Listener, Tcp);

impl Listener {
    /// Binds the configured listen address (or `address`).
    pub(crate) fn bind(cfg: &PeerConfig) -> io::Result<Listener> {
        match cfg.network {
            Network::Tcp | Network::Tcp4 | Network::Tcp6 => {
                let addrs = resolve(cfg.network, &cfg.listen_address)?;
                let l = teleport_peer::net::bind_tcp(&addrs)?;
                Ok(Listener::Tcp(mio::net::TcpListener::from_std(l)))
            }
            #[cfg(unix)]
            Network::Unix => {
                let path = cfg.listen_address.clone();
                clear_stale_unix_socket(&path)?;
                Ok(Listener::Unix(mio::net::UnixListener::bind(&path)?, path))
            }
            other => Err(unsupported_network(other)),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<PeerAddr> {
        match self {
            Listener::Tcp(l) => Ok(PeerAddr::Tcp(l.local_addr()?)),
            #[cfg(unix)]
            Listener::Unix(_, p) => Ok(PeerAddr::Unix(p.clone())),
        }
    }

    /// Accepts one connection (`WouldBlock` when none is waiting).
    pub(crate) fn accept(&self, cfg: &PeerConfig) -> io::Result<Connected> {
        match self {
            Listener::Tcp(l) => {
                let (s, remote) = l.accept()?;
                tune_socket(socket2::SockRef::from(&s), cfg, true)?;
                let local = PeerAddr::Tcp(s.local_addr()?);
                Ok(Connected {
                    stream: Stream::Tcp(s),
                    remote: PeerAddr::Tcp(remote),
                    local,
                })
            }
            #[cfg(unix)]
            Listener::Unix(l, path) => {
                let (s, _) = l.accept()?;
                tune_socket(socket2::SockRef::from(&s), cfg, false)?;
                Ok(Connected {
                    stream: Stream::Unix(s),
                    remote: PeerAddr::Unix(String::new()),
                    local: PeerAddr::Unix(path.clone()),
                })
            }
        }
    }
}
