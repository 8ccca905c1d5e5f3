//! Sockets: TCP and Unix streams behind one small trait, listeners, and
//! socket options (socket2).

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};

use teleport_peer::{Network, PeerAddr, PeerConfig};

/// A connected stream of either kind.
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("network {what} is not supported"),
    )
}

fn set_buffers(sock: socket2::SockRef<'_>, cfg: &PeerConfig) -> io::Result<()> {
    if let Some(n) = cfg.read_buffer_size {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(n) = cfg.write_buffer_size {
        sock.set_send_buffer_size(n)?;
    }
    Ok(())
}

fn tune_tcp(s: &TcpStream, cfg: &PeerConfig) -> io::Result<()> {
    s.set_nodelay(true)?;
    set_buffers(socket2::SockRef::from(s), cfg)
}

fn check_family(network: Network, addr: &SocketAddr) -> io::Result<()> {
    match (network, addr) {
        (Network::Tcp4, SocketAddr::V6(_)) | (Network::Tcp6, SocketAddr::V4(_)) => {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr} is not {network:?}"),
            ))
        }
        _ => Ok(()),
    }
}

async fn resolve(network: Network, addr: &str) -> io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    let fit: Vec<SocketAddr> = all
        .into_iter()
        .filter(|a| check_family(network, a).is_ok())
        .collect();
    if fit.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{addr} has no {network:?} address"),
        ));
    }
    Ok(fit)
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
                match TcpStream::connect(a).await {
                    Ok(s) => {
                        tune_tcp(&s, cfg)?;
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
            set_buffers(socket2::SockRef::from(&s), cfg)?;
            Ok((
                Stream::Unix(s),
                PeerAddr::Unix(addr.into()),
                PeerAddr::Unix(String::new()),
            ))
        }
        other => Err(unsupported(&format!("{other:?}"))),
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
                Ok(Listener::Tcp(TcpListener::bind(&addrs[..]).await?))
            }
            #[cfg(unix)]
            Network::Unix => {
                let path = cfg.listen_address.clone();
                // A socket file left by a previous run would make bind fail;
                // one a live server still answers on is not ours to take.
                let is_socket = std::fs::metadata(&path)
                    .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                    .unwrap_or(false);
                if is_socket {
                    if UnixStream::connect(&path).await.is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{path}: a server is listening there"),
                        ));
                    }
                    std::fs::remove_file(&path)?;
                }
                Ok(Listener::Unix(UnixListener::bind(&path)?, path))
            }
            other => Err(unsupported(&format!("{other:?}"))),
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
                tune_tcp(&s, cfg)?;
                let local = PeerAddr::Tcp(s.local_addr()?);
                Ok((Stream::Tcp(s), PeerAddr::Tcp(remote), local))
            }
            #[cfg(unix)]
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                set_buffers(socket2::SockRef::from(&s), cfg)?;
                Ok((
                    Stream::Unix(s),
                    PeerAddr::Unix(String::new()),
                    PeerAddr::Unix(path.clone()),
                ))
            }
        }
    }
}
