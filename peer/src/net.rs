//! Socket details every adapter needs the same way, with no runtime in
//! them: which resolved addresses fit the configured network, sockets made
//! with the peer's options set before they connect or listen, a unix
//! socket file left by a previous run, and `unixpacket` connections read
//! and written as byte streams ([`SeqPacket`]; its rules are at
//! [`SEQPACKET_MESSAGE_MAX`]). Each adapter only waits for readiness its
//! own way.

use std::io;
use std::net::SocketAddr;

use crate::config::{Network, PeerConfig};

/// The error for a network this build cannot use (`unix` and
/// `unixpacket` off unix).
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

/// Sets the configured `SO_RCVBUF` and `SO_SNDBUF` (nothing when unset).
///
/// On TCP they take effect only before the connection is made: the
/// receive buffer decides the window scale announced in the handshake. So
/// a dialing socket gets them before `connect` ([`tcp_socket`]) and a
/// listener before `listen` ([`bind_tcp`]), which its accepted sockets
/// inherit. Unix sockets (stream and seqpacket) take them at any time.
pub fn set_buffer_sizes(sock: socket2::SockRef<'_>, cfg: &PeerConfig) -> io::Result<()> {
    if let Some(n) = cfg.read_buffer_size {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(n) = cfg.write_buffer_size {
        sock.set_send_buffer_size(n)?;
    }
    Ok(())
}

/// A socket of `ty` for `domain`, non-blocking if asked (in the same
/// system call where the platform allows).
fn new_socket(
    domain: socket2::Domain,
    ty: socket2::Type,
    nonblocking: bool,
) -> io::Result<socket2::Socket> {
    #[cfg(any(
        target_os = "android",
        target_os = "dragonfly",
        target_os = "freebsd",
        target_os = "fuchsia",
        target_os = "illumos",
        target_os = "linux",
        target_os = "netbsd",
        target_os = "openbsd"
    ))]
    if nonblocking {
        return socket2::Socket::new(domain, ty.nonblocking(), None);
    }
    let sock = socket2::Socket::new(domain, ty, None)?;
    if nonblocking {
        sock.set_nonblocking(true)?;
    }
    Ok(sock)
}

/// The options of a TCP socket of `network`'s before it connects or
/// listens: the buffer sizes, and `IPV6_V6ONLY` for `tcp6` (a `tcp6`
/// listener on `[::]` takes no IPv4 connections; `tcp` keeps the
/// system's default, dual stack on most).
fn tcp_options(sock: &socket2::Socket, cfg: &PeerConfig, addr: &SocketAddr) -> io::Result<()> {
    set_buffer_sizes(sock.into(), cfg)?;
    if cfg.network == Network::Tcp6 && addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    Ok(())
}

/// A TCP socket to dial `addr` with, not connected yet: `TCP_NODELAY`
/// (replies are small and latency matters more than packing), the buffer
/// sizes and the family options set while they still take effect (see
/// [`set_buffer_sizes`]). Non-blocking if asked: the async adapters
/// connect it with their reactor.
pub fn tcp_socket(
    cfg: &PeerConfig,
    addr: &SocketAddr,
    nonblocking: bool,
) -> io::Result<socket2::Socket> {
    let sock = new_socket(
        socket2::Domain::for_address(*addr),
        socket2::Type::STREAM,
        nonblocking,
    )?;
    sock.set_tcp_nodelay(true)?;
    tcp_options(&sock, cfg, addr)?;
    Ok(sock)
}

/// Dials `addr` with a [`tcp_socket`], blocking this thread for at most
/// the configured `dial_timeout` (`TimedOut` past it). The stream returned
/// is blocking.
pub fn connect_tcp_blocking(cfg: &PeerConfig, addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    let sock = tcp_socket(cfg, &addr, false)?;
    match cfg.dial_timeout {
        Some(t) => sock.connect_timeout(&addr.into(), t)?,
        None => sock.connect(&addr.into())?,
    }
    Ok(sock.into())
}

/// What a non-blocking `connect` said: `Ok(true)` while the connection is
/// still being made (wait until the socket is writable, then read
/// `take_error`), `Ok(false)` when it was made at once.
pub fn connect_started(r: io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e) if in_progress(&e) => Ok(true),
        Err(e) => Err(e),
    }
}

/// `EINPROGRESS`. Not `EAGAIN`: on a unix socket that is a full accept
/// queue, on TCP no local port left; neither connects later.
#[cfg(unix)]
fn in_progress(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error())
}

/// Windows says `WSAEWOULDBLOCK` for a connect under way.
#[cfg(not(unix))]
fn in_progress(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// What an accepted TCP socket needs set (`TCP_NODELAY`); its buffer sizes
/// it has from its listener.
pub fn accepted_tcp(sock: socket2::SockRef<'_>) -> io::Result<()> {
    sock.set_tcp_nodelay(true)
}

/// A non-blocking TCP listener on the first of `addrs` that binds, with
/// `SO_REUSEADDR` (a restarted server takes its port back at once, as Go's
/// does), the configured buffer sizes and family options (set before
/// `listen`: see [`set_buffer_sizes`]) and a [`LISTEN_BACKLOG`] accept
/// queue.
///
/// A socket passed in for this listener (systemd, a predecessor's
/// hand-off: see [`crate::handoff`]) is served instead, as it is.
pub fn bind_tcp(cfg: &PeerConfig, addrs: &[SocketAddr]) -> io::Result<std::net::TcpListener> {
    #[cfg(unix)]
    if let Some(sock) = crate::handoff::take_listener(cfg.network, &cfg.listen_address, addrs)? {
        return Ok(sock.into());
    }
    let mut last = None;
    for addr in addrs {
        let bound = new_socket(
            socket2::Domain::for_address(*addr),
            socket2::Type::STREAM,
            true,
        )
        .and_then(|sock| {
            #[cfg(unix)]
            sock.set_reuse_address(true)?;
            tcp_options(&sock, cfg, addr)?;
            sock.bind(&(*addr).into())?;
            sock.listen(LISTEN_BACKLOG)?;
            Ok(sock)
        });
        match bound {
            Ok(sock) => return Ok(sock.into()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address to bind")))
}

/// Makes way for a unix listener at `path`: a socket file left by a
/// previous run would make bind fail, so it is removed; one a live
/// server still answers on is not ours to take (`AddrInUse`). The probe
/// is a local connect, answered or refused at once. Only a refusal means
/// nobody listens there: a live listener of the other kind (seqpacket for
/// a stream probe) answers with another error, and its file stays.
#[cfg(unix)]
pub fn clear_stale_unix_socket(path: &str) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket {
        let in_use = || {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{path}: a server is listening there"),
            )
        };
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(in_use()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // A full accept queue, or a listener of the other kind.
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(rustix::io::Errno::PROTOTYPE.raw_os_error()) =>
            {
                return Err(in_use())
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{path}: {e}"))),
        }
    }
    Ok(())
}

/// A non-blocking unix stream listener at the configured path (a stale
/// socket file of an earlier run is removed first), or the socket passed
/// in for it (see [`crate::handoff`]).
#[cfg(unix)]
pub fn bind_unix(cfg: &PeerConfig) -> io::Result<std::os::unix::net::UnixListener> {
    let path = &cfg.listen_address;
    if let Some(sock) = crate::handoff::take_listener(cfg.network, path, &[])? {
        return Ok(sock.into());
    }
    clear_stale_unix_socket(path)?;
    let l = std::os::unix::net::UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The largest message a seqpacket connection sends: what every reader
/// reads at once ([`READ_CHUNK`]).
///
/// A `unixpacket` (`SOCK_SEQPACKET`) socket keeps message boundaries: a
/// read returns one message, and cuts it short (losing the rest) if the
/// buffer is smaller. So the byte stream a session writes is cut into
/// messages of at most this size, and the reading side reads whole
/// messages: the adapters read [`READ_CHUNK`] at a time, and a reader with
/// a smaller buffer (TLS reads records 4 KiB at a time) is served from a
/// message read in full ([`SeqPacketRead`]). A message must also fit the
/// sender's `SO_SNDBUF` (else `EMSGSIZE`): [`SeqPacketWrite`] sends
/// messages no larger than the buffer allows, and halves them if the
/// system still refuses one. A message that arrives cut short (a foreign
/// peer sending more than this at once) is an error, never silently lost
/// bytes. Readers treat an empty message as the end of input, so none is
/// ever sent.
#[cfg(unix)]
pub const SEQPACKET_MESSAGE_MAX: usize = READ_CHUNK;

/// What `SO_SNDBUF` leaves for one message (Linux refuses a message larger
/// than the buffer less a small overhead).
#[cfg(unix)]
const SEQPACKET_OVERHEAD: usize = 256;

/// Messages are never cut smaller than this after `EMSGSIZE`.
#[cfg(unix)]
const SEQPACKET_MESSAGE_MIN: usize = 512;

/// A `unixpacket` socket, not connected yet, with the configured buffer
/// sizes; non-blocking if asked.
#[cfg(unix)]
pub fn seqpacket_socket(cfg: &PeerConfig, nonblocking: bool) -> io::Result<socket2::Socket> {
    let sock = new_socket(socket2::Domain::UNIX, socket2::Type::SEQPACKET, nonblocking)?;
    set_buffer_sizes((&sock).into(), cfg)?;
    Ok(sock)
}

/// Dials the `unixpacket` listener at `path`, blocking this thread (a
/// local connect is answered at once). The socket returned is blocking.
#[cfg(unix)]
pub fn connect_seqpacket_blocking(cfg: &PeerConfig, path: &str) -> io::Result<socket2::Socket> {
    let sock = seqpacket_socket(cfg, false)?;
    sock.connect(&socket2::SockAddr::unix(path)?)?;
    Ok(sock)
}

/// A non-blocking `unixpacket` listener at the configured path (a stale
/// socket file of an earlier run is removed first), with the configured
/// buffer sizes and a [`LISTEN_BACKLOG`] accept queue.
///
/// A socket passed in for this listener is served instead (see
/// [`crate::handoff`]).
#[cfg(unix)]
pub fn bind_seqpacket(cfg: &PeerConfig) -> io::Result<socket2::Socket> {
    let path = &cfg.listen_address;
    if let Some(sock) = crate::handoff::take_listener(cfg.network, path, &[])? {
        return Ok(sock);
    }
    clear_stale_unix_socket(path)?;
    let sock = seqpacket_socket(cfg, true)?;
    sock.bind(&socket2::SockAddr::unix(path)?)?;
    sock.listen(LISTEN_BACKLOG)?;
    Ok(sock)
}

/// Accepts one connection on a `unixpacket` listener (`WouldBlock` when
/// none waits); the socket is non-blocking, with the configured buffer
/// sizes (unix sockets do not inherit them from the listener).
#[cfg(unix)]
pub fn accept_seqpacket(l: &socket2::Socket, cfg: &PeerConfig) -> io::Result<socket2::Socket> {
    let (sock, _) = l.accept()?;
    sock.set_nonblocking(true)?;
    set_buffer_sizes((&sock).into(), cfg)?;
    Ok(sock)
}

/// The reading side of a `unixpacket` connection: reads whole messages
/// whatever the caller's buffer (see [`SEQPACKET_MESSAGE_MAX`]). A caller
/// reading at least that much at a time reads straight into its buffer;
/// for a smaller one a message is read into a buffer of its own (made on
/// first need) and handed out from there.
#[cfg(unix)]
#[derive(Debug, Default)]
pub struct SeqPacketRead {
    /// A message read for a smaller buffer, and how much of it is left
    /// (`held[start..end]`).
    held: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

#[cfg(unix)]
impl SeqPacketRead {
    /// A reader with nothing held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether bytes of a message already read wait to be handed out:
    /// [`SeqPacketRead::read`] then returns them without touching the
    /// socket, so do not wait for it to be readable first.
    pub fn has_held(&self) -> bool {
        self.start < self.end
    }

    /// Reads from `sock` into `buf`: what is held first, else the next
    /// message; `Ok(0)` at the end of input, `WouldBlock` when nothing
    /// waits (a non-blocking socket).
    pub fn read(&mut self, sock: &socket2::Socket, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.has_held() {
            return Ok(self.hand_out(buf));
        }
        if buf.len() >= SEQPACKET_MESSAGE_MAX {
            return recv_message(sock, buf);
        }
        let held = self
            .held
            .get_or_insert_with(|| vec![0; SEQPACKET_MESSAGE_MAX].into_boxed_slice());
        let n = recv_message(sock, held)?;
        self.start = 0;
        self.end = n;
        Ok(self.hand_out(buf))
    }

    fn hand_out(&mut self, buf: &mut [u8]) -> usize {
        let Some(held) = &self.held else { return 0 };
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&held[self.start..self.start + n]);
        self.start += n;
        n
    }
}

/// One message into `buf`; an error if it did not fit.
#[cfg(unix)]
fn recv_message(sock: &socket2::Socket, buf: &mut [u8]) -> io::Result<usize> {
    use rustix::net::{RecvAncillaryBuffer, RecvFlags, ReturnFlags};
    let len = buf.len();
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut control = RecvAncillaryBuffer::new(&mut []);
    let got = rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::empty())?;
    if got.flags.contains(ReturnFlags::TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a unixpacket message larger than {len} bytes arrived (cut short)"),
        ));
    }
    Ok(got.bytes)
}

/// The writing side of a `unixpacket` connection: a write sends one
/// message of at most [`SEQPACKET_MESSAGE_MAX`] bytes, and no more than
/// the socket's send buffer takes (see there).
#[cfg(unix)]
#[derive(Debug)]
pub struct SeqPacketWrite {
    max: usize,
}

#[cfg(unix)]
impl SeqPacketWrite {
    /// A writer for `sock` (its buffer sizes already set: the largest
    /// message follows from `SO_SNDBUF`).
    pub fn new(sock: &socket2::Socket) -> io::Result<Self> {
        let sndbuf = sock.send_buffer_size()?;
        let max = sndbuf
            .saturating_sub(SEQPACKET_OVERHEAD)
            .clamp(SEQPACKET_MESSAGE_MIN, SEQPACKET_MESSAGE_MAX);
        Ok(SeqPacketWrite { max })
    }

    /// The largest message this writer sends now.
    pub fn max_message(&self) -> usize {
        self.max
    }

    /// Sends the start of `buf` as one message; how many bytes it took
    /// (`WouldBlock` when the socket's buffer is full).
    pub fn write(&mut self, sock: &socket2::Socket, buf: &[u8]) -> io::Result<usize> {
        use rustix::net::SendFlags;
        if buf.is_empty() {
            return Ok(0);
        }
        // No SIGPIPE for a peer that is gone: an EPIPE error instead.
        #[cfg(not(any(target_vendor = "apple", target_os = "redox")))]
        let flags = SendFlags::NOSIGNAL;
        #[cfg(any(target_vendor = "apple", target_os = "redox"))]
        let flags = SendFlags::empty();
        loop {
            let n = buf.len().min(self.max);
            match rustix::net::send(sock, &buf[..n], flags) {
                Ok(sent) => return Ok(sent),
                Err(e) if e == rustix::io::Errno::MSGSIZE && self.max > SEQPACKET_MESSAGE_MIN => {
                    self.max = (self.max / 2).max(SEQPACKET_MESSAGE_MIN);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A whole `unixpacket` connection: the socket and both sides' state,
/// reading and writing like a byte stream (blocking or not, as the socket
/// is).
#[cfg(unix)]
#[derive(Debug)]
pub struct SeqPacket {
    sock: socket2::Socket,
    rd: SeqPacketRead,
    wr: SeqPacketWrite,
}

#[cfg(unix)]
impl SeqPacket {
    /// Wraps a connected socket (its buffer sizes already set).
    pub fn new(sock: socket2::Socket) -> io::Result<Self> {
        let wr = SeqPacketWrite::new(&sock)?;
        Ok(SeqPacket {
            sock,
            rd: SeqPacketRead::new(),
            wr,
        })
    }

    /// The socket.
    pub fn socket(&self) -> &socket2::Socket {
        &self.sock
    }

    /// The parts: the socket, the reading and the writing side.
    pub fn into_parts(self) -> (socket2::Socket, SeqPacketRead, SeqPacketWrite) {
        (self.sock, self.rd, self.wr)
    }

    /// Whether bytes of a message already read wait (see
    /// [`SeqPacketRead::has_held`]).
    pub fn has_held(&self) -> bool {
        self.rd.has_held()
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for SeqPacket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

#[cfg(unix)]
impl io::Read for SeqPacket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.rd.read(&self.sock, buf)
    }
}

#[cfg(unix)]
impl io::Write for SeqPacket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wr.write(&self.sock, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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

    /// What a socket's `SO_RCVBUF`/`SO_SNDBUF` read back as: at least what
    /// was asked (Linux doubles it for its own bookkeeping).
    fn assert_buffers(sock: socket2::SockRef<'_>, rcv: usize, snd: usize, what: &str) {
        let got_rcv = sock.recv_buffer_size().unwrap();
        let got_snd = sock.send_buffer_size().unwrap();
        assert!(got_rcv >= rcv, "{what}: SO_RCVBUF {got_rcv} < {rcv}");
        assert!(got_snd >= snd, "{what}: SO_SNDBUF {got_snd} < {snd}");
    }

    fn buffered(network: Network) -> PeerConfig {
        PeerConfig {
            network,
            // Well above the default (212992 on Linux), below the usual
            // rmem_max/wmem_max caps a test machine leaves...
            read_buffer_size: Some(150_000),
            // ...and one well below it, so a value left at the default
            // cannot pass for it.
            write_buffer_size: Some(9_000),
            ..PeerConfig::default()
        }
    }

    #[test]
    fn tcp_buffer_sizes_are_set_before_listen_and_connect() {
        let cfg = buffered(Network::Tcp4);
        let v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let l = bind_tcp(&cfg, &[v4]).unwrap();
        assert_buffers((&l).into(), 150_000, 9_000, "listener");
        let sock = tcp_socket(&cfg, &l.local_addr().unwrap(), false).unwrap();
        assert_buffers((&sock).into(), 150_000, 9_000, "before connect");
        assert!(sock.tcp_nodelay().unwrap());
        let dialed = connect_tcp_blocking(&cfg, l.local_addr().unwrap()).unwrap();
        assert_buffers((&dialed).into(), 150_000, 9_000, "dialed");
        l.set_nonblocking(false).unwrap();
        let (accepted, _) = l.accept().unwrap();
        accepted_tcp((&accepted).into()).unwrap();
        // Inherited from the listener.
        assert_buffers((&accepted).into(), 150_000, 9_000, "accepted");
        assert!(socket2::SockRef::from(&accepted).tcp_nodelay().unwrap());
        // The send buffer is the small one asked for, not the default.
        let snd = socket2::SockRef::from(&accepted)
            .send_buffer_size()
            .unwrap();
        assert!(
            snd < 100_000,
            "accepted SO_SNDBUF {snd} is not what was set"
        );
    }

    /// Whether this machine has an IPv6 loopback (a container may not).
    fn has_ipv6_loopback() -> bool {
        std::net::TcpListener::bind("[::1]:0").is_ok()
    }

    #[test]
    fn tcp6_sockets_are_v6_only_tcp_keeps_the_default() {
        if !has_ipv6_loopback() {
            eprintln!("skipped: this machine has no IPv6 loopback ([::1] does not bind)");
            return;
        }
        let any6: SocketAddr = "[::]:0".parse().unwrap();
        let l6 = bind_tcp(&buffered(Network::Tcp6), &[any6]).unwrap();
        assert!(socket2::SockRef::from(&l6).only_v6().unwrap());
        let d6 = tcp_socket(&buffered(Network::Tcp6), &any6, false).unwrap();
        assert!(d6.only_v6().unwrap());
        // `tcp` leaves the option as the system has it.
        let system = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
            .unwrap()
            .only_v6()
            .unwrap();
        let l = bind_tcp(&PeerConfig::default(), &[any6]).unwrap();
        assert_eq!(socket2::SockRef::from(&l).only_v6().unwrap(), system);
    }

    #[cfg(unix)]
    fn seqpacket_pair(cfg: &PeerConfig) -> (SeqPacket, SeqPacket) {
        let (a, b) =
            socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
        set_buffer_sizes((&a).into(), cfg).unwrap();
        set_buffer_sizes((&b).into(), cfg).unwrap();
        (SeqPacket::new(a).unwrap(), SeqPacket::new(b).unwrap())
    }

    #[cfg(unix)]
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Writes `data` on one thread and reads it back with reads of
    /// `chunk` bytes on this one.
    #[cfg(unix)]
    fn round_trip(cfg: &PeerConfig, data: Vec<u8>, chunk: usize) -> (Vec<u8>, usize) {
        use std::io::{Read, Write};
        let (mut a, mut b) = seqpacket_pair(cfg);
        let max = a.wr.max_message();
        let writer = std::thread::spawn(move || {
            a.write_all(&data).unwrap();
            a.socket().shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        let mut buf = vec![0; chunk];
        loop {
            match b.read(&mut buf).unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        writer.join().unwrap();
        (got, max)
    }

    #[cfg(unix)]
    #[test]
    fn seqpacket_carries_a_byte_stream_in_messages() {
        let data = pattern(1 << 20);
        // Read as the adapters do, whole messages into a large buffer.
        let (got, max) = round_trip(&PeerConfig::default(), data.clone(), READ_CHUNK);
        assert_eq!(max, SEQPACKET_MESSAGE_MAX);
        assert!(got == data, "1 MiB read back in READ_CHUNK reads differs");
        // Read in pieces smaller than a message (as TLS does): nothing is
        // lost to truncation.
        let (got, _) = round_trip(&PeerConfig::default(), data.clone(), 1000);
        assert!(got == data, "1 MiB read back in 1000-byte reads differs");
    }

    #[cfg(unix)]
    #[test]
    fn seqpacket_messages_fit_a_small_send_buffer() {
        let cfg = PeerConfig {
            write_buffer_size: Some(4096),
            ..PeerConfig::default()
        };
        let data = pattern(300_000);
        let (got, max) = round_trip(&cfg, data.clone(), READ_CHUNK);
        assert!(max < SEQPACKET_MESSAGE_MAX, "{max}");
        assert!(got == data);
    }

    #[cfg(unix)]
    #[test]
    fn seqpacket_message_size_is_learned_from_emsgsize() {
        use std::io::Write;
        let (mut a, b) = seqpacket_pair(&PeerConfig::default());
        // Shrink the buffer behind the writer's back: its first send is
        // refused, and it halves its messages until one fits.
        a.socket().set_send_buffer_size(4096).unwrap();
        let n = a.write(&pattern(READ_CHUNK)).unwrap();
        assert!((SEQPACKET_MESSAGE_MIN..READ_CHUNK).contains(&n), "{n}");
        assert_eq!(a.wr.max_message(), n);
        drop(b);
    }

    #[cfg(unix)]
    #[test]
    fn a_cut_short_message_is_an_error() {
        use std::io::Read;
        let (a, mut b) = seqpacket_pair(&PeerConfig::default());
        // A foreign sender's message larger than any read.
        let big = pattern(READ_CHUNK + 100);
        assert_eq!(a.socket().send(&big).unwrap(), big.len());
        let mut buf = vec![0; READ_CHUNK];
        let e = b.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("cut short"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn seqpacket_listener_dials_and_clears_its_stale_file() {
        use std::io::{Read, Write};
        let path = std::env::temp_dir().join(format!("tp-peer-seq-{}.sock", std::process::id()));
        let p = path.to_str().unwrap().to_string();
        let _ = std::fs::remove_file(&path);
        let cfg = PeerConfig {
            network: Network::Unixpacket,
            listen_address: p.clone(),
            read_buffer_size: Some(150_000),
            ..PeerConfig::default()
        };
        let l = bind_seqpacket(&cfg).unwrap();
        // A live listener of either kind keeps its file.
        let e = clear_stale_unix_socket(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let dialed = connect_seqpacket_blocking(&cfg, &p).unwrap();
        assert!(socket2::SockRef::from(&dialed).recv_buffer_size().unwrap() >= 150_000);
        let accepted = accept_seqpacket(&l, &cfg).unwrap();
        assert!(
            socket2::SockRef::from(&accepted)
                .recv_buffer_size()
                .unwrap()
                >= 150_000
        );
        let mut a = SeqPacket::new(dialed).unwrap();
        let mut b = SeqPacket::new(accepted).unwrap();
        b.socket().set_nonblocking(false).unwrap();
        a.write_all(b"hello").unwrap();
        let mut buf = [0; 16];
        assert_eq!(b.read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        drop((a, b, l));
        // The listener is gone, its file stays: the next bind clears it.
        assert!(path.exists());
        let l = bind_seqpacket(&cfg).unwrap();
        drop(l);
        let _ = std::fs::remove_file(&path);
    }

    #[cfg(unix)]
    #[test]
    fn a_full_unixpacket_accept_queue_is_an_error_not_a_connect_under_way() {
        let path = std::env::temp_dir().join(format!("tp-peer-full-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let addr = socket2::SockAddr::unix(&path).unwrap();
        let l =
            socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
        l.bind(&addr).unwrap();
        l.listen(0).unwrap();
        let mut queued = Vec::new();
        let e = loop {
            let s = seqpacket_socket(&PeerConfig::default(), true).unwrap();
            match connect_started(s.connect(&addr)) {
                Ok(false) => queued.push(s),
                Ok(true) => panic!("a unix connect is never under way"),
                Err(e) => break e,
            }
            assert!(queued.len() < 16, "the accept queue never filled");
        };
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        drop(l);
        let _ = std::fs::remove_file(&path);
    }
}
