//! Socket details every adapter needs the same way, with no runtime in
//! them: which resolved addresses fit the configured network, the socket
//! options a peer sets, and a unix socket file left by a previous run.

use std::io;
use std::net::SocketAddr;

use crate::config::{Network, PeerConfig};

/// The error for a network this build cannot use (`unixpacket`, or
/// `unix` off unix).
pub fn unsupported_network(network: Network) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("network {network:?} is not supported"),
    )
}

/// Whether `addr` is of the family `network` asks for (`tcp4`, `tcp6`).
pub fn check_family(network: Network, addr: &SocketAddr) -> io::Result<()> {
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

/// The addresses `name` resolved to that fit `network`, in order; an
/// error naming `name` if none does.
pub fn fit_family(
    network: Network,
    name: &str,
    resolved: impl IntoIterator<Item = SocketAddr>,
) -> io::Result<Vec<SocketAddr>> {
    let fit: Vec<SocketAddr> = resolved
        .into_iter()
        .filter(|a| check_family(network, a).is_ok())
        .collect();
    if fit.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{name} has no {network:?} address"),
        ));
    }
    Ok(fit)
}

thread_local! {
    /// One read buffer per thread, not per connection: an idle connection
    /// holds no read buffer at all.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

/// The size of the per-thread read buffer (one read's worth).
pub const READ_CHUNK: usize = 64 << 10;

/// Runs `f` with this thread's read buffer. Adapters read a socket into
/// it and hand the bytes to the session, which copies only what it keeps.
pub fn with_read_buf<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_BUF.with_borrow_mut(|buf| f(buf))
}

/// How many connections may wait to be accepted. A burst of dials (a
/// thousand clients connecting at once) overflows a small queue, and each
/// dropped handshake costs its client a one-second retry.
pub const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking TCP listener on the first of `addrs` that binds, with
/// `SO_REUSEADDR` (a restarted server takes its port back at once, as Go's
/// does) and a [`LISTEN_BACKLOG`] accept queue.
pub fn bind_tcp(addrs: &[SocketAddr]) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let mut last = None;
    for addr in addrs {
        let bound = Socket::new(Domain::for_address(*addr), Type::STREAM, None).and_then(|sock| {
            #[cfg(unix)]
            sock.set_reuse_address(true)?;
            sock.bind(&(*addr).into())?;
            sock.listen(LISTEN_BACKLOG)?;
            sock.set_nonblocking(true)?;
            Ok(sock)
        });
        match bound {
            Ok(sock) => return Ok(sock.into()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address to bind")))
}

/// Sets the configured socket buffer sizes, and `TCP_NODELAY` on a TCP
/// socket (replies are small and latency matters more than packing).
pub fn tune_socket(sock: socket2::SockRef<'_>, cfg: &PeerConfig, tcp: bool) -> io::Result<()> {
    if tcp {
        sock.set_tcp_nodelay(true)?;
    }
    if let Some(n) = cfg.read_buffer_size {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(n) = cfg.write_buffer_size {
        sock.set_send_buffer_size(n)?;
    }
    Ok(())
}

/// Makes way for a unix listener at `path`: a socket file left by a
/// previous run would make bind fail, so it is removed; one a live
/// server still answers on is not ours to take (`AddrInUse`). The probe
/// is a local connect, answered or refused at once.
#[cfg(unix)]
pub fn clear_stale_unix_socket(path: &str) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{path}: a server is listening there"),
            ));
        }
        std::fs::remove_file(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_filter_keeps_order_and_names_the_address() {
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(
            fit_family(Network::Tcp, "x", [v6, v4]).unwrap(),
            vec![v6, v4]
        );
        assert_eq!(fit_family(Network::Tcp4, "x", [v6, v4]).unwrap(), vec![v4]);
        let e = fit_family(Network::Tcp6, "host:1", [v4]).unwrap_err();
        assert!(e.to_string().contains("host:1"), "{e}");
        assert!(check_family(Network::Tcp4, &v6).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn stale_socket_file_is_removed_live_one_is_kept() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("tp-peer-net-{}.sock", std::process::id()));
        let p = path.to_str().unwrap();
        let _ = std::fs::remove_file(&path);
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = clear_stale_unix_socket(p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(live);
        clear_stale_unix_socket(p).unwrap();
        assert!(!path.exists());
        // Nothing there is fine too.
        clear_stale_unix_socket(p).unwrap();
    }
}
