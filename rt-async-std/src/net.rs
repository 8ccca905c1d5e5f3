//! Sockets: TCP and Unix streams registered with async-io's reactor, and
//! listeners. What is the same on every runtime (address families, socket
//! options, stale unix socket files) is `teleport_peer::net`'s.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};

use async_io::Async;
use teleport_peer::net::{fit_family, tune_socket, unsupported_network};
use teleport_peer::{Network, PeerAddr, PeerConfig};

/// A connected stream of either kind. `&Async<T>` reads and writes, so
/// the connection task needs no split halves and no `Arc`.
pub(crate) enum Stream {
    Tcp(Async<TcpStream>),
    #[cfg(unix)]
    Unix(Async<UnixStream>),
}

/// `host:port` to addresses of the network's family (a literal address
/// resolves without a lookup thread).
async fn resolve(network: Network, addr: &str) -> io::Result<Vec<SocketAddr>> {
    fit_family(network, addr, async_net::resolve(addr).await?)
}

/// Dials `addr` on the configured network; returns the stream and both ends'
/// addresses.
pub(crate) async fn connect(
    cfg: &PeerConfig,
    addr: &str,
) -> io::Result<(Stream, PeerAddr, PeerAddr)> {
    match cfg.network {
        Network::Tcp | Network::Tcp4 | Network::Tcp6 => {
            let mut last = None;
            for a in resolve(cfg.network, addr).await? {
                match Async::<TcpStream>::connect(a).await {
                    Ok(s) => {
                        tune_socket(s.get_ref().into(), cfg, true)?;
                        let local = PeerAddr::Tcp(s.get_ref().local_addr()?);
                        return Ok((Stream::Tcp(s), PeerAddr::Tcp(a), local));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address to dial")))
        }
        #[cfg(unix)]
        Network::Unix => {
            let s = Async::<UnixStream>::connect(addr).await?;
            tune_socket(s.get_ref().into(), cfg, false)?;
            Ok((
                Stream::Unix(s),
                PeerAddr::Unix(addr.into()),
                PeerAddr::Unix(String::new()),
            ))
        }
        other => Err(unsupported_network(other)),
    }
}

/// A bound listener of either kind.
pub(crate) enum Listener {
    Tcp(Async<TcpListener>),
    #[cfg(unix)]
    Unix(Async<UnixListener>, String),
}

impl Listener {
    pub(crate) async fn bind(cfg: &PeerConfig) -> io::Result<Listener> {
        match cfg.network {
            Network::Tcp | Network::Tcp4 | Network::Tcp6 => {
                let addrs = resolve(cfg.network, &cfg.listen_address).await?;
                let l = teleport_peer::net::bind_tcp(&addrs)?;
                Ok(Listener::Tcp(Async::new(l)?))
            }
            #[cfg(unix)]
            Network::Unix => {
                let path = cfg.listen_address.clone();
                teleport_peer::net::clear_stale_unix_socket(&path)?;
                Ok(Listener::Unix(Async::<UnixListener>::bind(&path)?, path))
            }
            other => Err(unsupported_network(other)),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<PeerAddr> {
        match self {
            Listener::Tcp(l) => Ok(PeerAddr::Tcp(l.get_ref().local_addr()?)),
            #[cfg(unix)]
            Listener::Unix(_, p) => Ok(PeerAddr::Unix(p.clone())),
        }
    }

    pub(crate) async fn accept(
        &self,
        cfg: &PeerConfig,
    ) -> io::Result<(Stream, PeerAddr, PeerAddr)> {
        match self {
            Listener::Tcp(l) => {
                let (s, remote) = l.accept().await?;
                tune_socket(s.get_ref().into(), cfg, true)?;
                let local = PeerAddr::Tcp(s.get_ref().local_addr()?);
                Ok((Stream::Tcp(s), PeerAddr::Tcp(remote), local))
            }
            #[cfg(unix)]
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                tune_socket(s.get_ref().into(), cfg, false)?;
                Ok((
                    Stream::Unix(s),
                    PeerAddr::Unix(String::new()),
                    PeerAddr::Unix(path.clone()),
                ))
            }
        }
    }
}
