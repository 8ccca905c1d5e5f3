//! Sockets: TCP and Unix streams and listeners on tokio. What is the same
//! on every runtime (address families, socket options, stale unix socket
//! files) is `teleport_peer::net`'s.

use std::io;
use std::net::SocketAddr;

use teleport_peer::net::{
    bind_tcp, clear_stale_unix_socket, fit_family, tune_socket, unsupported_network,
};
use teleport_peer::{Network, PeerAddr, PeerConfig};
use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};

/// A connected stream of either kind.
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

async fn resolve(network: Network, addr: &str) -> io::Result<Vec<SocketAddr>> {
    fit_family(network, addr, tokio::net::lookup_host(addr).await?)
}

/// Dials `addr` on the configured network; returns the stream and both
/// ends' addresses.
pub(crate) async fn connect(
    cfg: &PeerConfig,
    addr: &str,
) -> io::Result<(Stream, PeerAddr, PeerAddr)> {
    match cfg.network {
        Network::Tcp | Network::Tcp4 | Network::Tcp6 => {
            let mut last = None;
            for a in resolve(cfg.network, addr).await? {
                match TcpStream::connect(a).await {
                    Ok(s) => {
                        tune_socket((&s).into(), cfg, true)?;
                        let local = PeerAddr::Tcp(s.local_addr()?);
                        return Ok((Stream::Tcp(s), PeerAddr::Tcp(a), local));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address to dial")))
        }
        #[cfg(unix)]
        Network::Unix => {
            let s = UnixStream::connect(addr).await?;
            tune_socket((&s).into(), cfg, false)?;
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
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener, String),
}

impl Listener {
    pub(crate) async fn bind(cfg: &PeerConfig) -> io::Result<Listener> {
        match cfg.network {
            Network::Tcp | Network::Tcp4 | Network::Tcp6 => {
                let addrs = resolve(cfg.network, &cfg.listen_address).await?;
                Ok(Listener::Tcp(TcpListener::from_std(bind_tcp(&addrs)?)?))
            }
            #[cfg(unix)]
            Network::Unix => {
                let path = cfg.listen_address.clone();
                clear_stale_unix_socket(&path)?;
                Ok(Listener::Unix(UnixListener::bind(&path)?, path))
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

    pub(crate) async fn accept(
        &self,
        cfg: &PeerConfig,
    ) -> io::Result<(Stream, PeerAddr, PeerAddr)> {
        match self {
            Listener::Tcp(l) => {
                let (s, remote) = l.accept().await?;
                tune_socket((&s).into(), cfg, true)?;
                let local = PeerAddr::Tcp(s.local_addr()?);
                Ok((Stream::Tcp(s), PeerAddr::Tcp(remote), local))
            }
            #[cfg(unix)]
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                tune_socket((&s).into(), cfg, false)?;
                Ok((
                    Stream::Unix(s),
                    PeerAddr::Unix(String::new()),
                    PeerAddr::Unix(path.clone()),
                ))
            }
        }
    }
}
