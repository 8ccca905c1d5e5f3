//! Sockets: TCP and unix streams registered with async-io's reactor, and
//! listeners. What is the same on every runtime (address families, socket
//! options, stale unix socket files) is `teleport_peer::net`'s.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};

use async_io::Async;
use teleport_peer::net::{fit_family, tune_socket};
use teleport_peer::{Network, PeerAddr, PeerConfig};

/// `host:port` to addresses of the network's family (a literal address
/// resolves without a lookup thread).
async fn resolve(network: Network, addr: &str) -> io::Result<Vec<SocketAddr>> {
    fit_family(network, addr, async_net::resolve(addr).await?)
}

/// A stream and both ends' addresses (remote, local).
pub(crate) type Connected<S> = (S, PeerAddr, PeerAddr);

/// Dials `addr` over TCP (the configured family); the first address that
/// answers wins.
pub(crate) async fn connect_tcp(
    cfg: &PeerConfig,
    addr: &str,
) -> io::Result<Connected<Async<TcpStream>>> {
    let mut last = None;
    for a in resolve(cfg.network, addr).await? {
        match Async::<TcpStream>::connect(a).await {
            Ok(s) => {
                tune_socket(s.get_ref().into(), cfg, true)?;
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
    tune_socket(s.get_ref().into(), cfg, false)?;
    Ok((
        s,
        PeerAddr::Unix(path.into()),
        PeerAddr::Unix(String::new()),
    ))
}

/// A TCP listener on the configured address and family.
pub(crate) async fn bind_tcp_listener(cfg: &PeerConfig) -> io::Result<Async<TcpListener>> {
    let addrs = resolve(cfg.network, &cfg.listen_address).await?;
    Async::new(teleport_peer::net::bind_tcp(&addrs)?)
}

/// Accepts one TCP connection.
pub(crate) async fn accept_tcp(
    l: &Async<TcpListener>,
    cfg: &PeerConfig,
) -> io::Result<Connected<Async<TcpStream>>> {
    let (s, remote) = l.accept().await?;
    tune_socket(s.get_ref().into(), cfg, true)?;
    let local = PeerAddr::Tcp(s.get_ref().local_addr()?);
    Ok((s, PeerAddr::Tcp(remote), local))
}

/// A unix listener at the configured path (a stale socket file of an
/// earlier run is removed first).
#[cfg(unix)]
pub(crate) fn bind_unix_listener(cfg: &PeerConfig) -> io::Result<Async<UnixListener>> {
    teleport_peer::net::clear_stale_unix_socket(&cfg.listen_address)?;
    Async::<UnixListener>::bind(&cfg.listen_address)
}

/// Accepts one unix connection on the listener at `path`.
#[cfg(unix)]
pub(crate) async fn accept_unix(
    l: &Async<UnixListener>,
    path: &str,
    cfg: &PeerConfig,
) -> io::Result<Connected<Async<UnixStream>>> {
    let (s, _) = l.accept().await?;
    tune_socket(s.get_ref().into(), cfg, false)?;
    Ok((
        s,
        PeerAddr::Unix(String::new()),
        PeerAddr::Unix(path.into()),
    ))
}
