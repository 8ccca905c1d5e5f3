//! Socket options as the kernel holds them, on every pair: the configured
//! `SO_RCVBUF` and `SO_SNDBUF` on the client runtime's dialed socket and
//! the server runtime's accepted one (TCP, unix, unixpacket, tcp6), set
//! before the connect and before the listen (the TCP window scale each
//! end offered in its handshake follows from the receive buffer it had
//! then), and `IPV6_V6ONLY` on tcp6 sockets (it cannot be set once a
//! socket is bound); and tcp6 over the IPv6 loopback on every pair.
//!
//! The peers give no access to their sockets, so the test finds them
//! among this process's own descriptors (on Linux, `pidfd_getfd` on
//! itself yields a duplicate of each; a duplicate names the same socket)
//! by their addresses, and reads the options back.

use std::time::Duration;

use teleport_core::Rerror;
use teleport_peer::{Network, PeerAddr, PeerBuilder, PeerConfig, PullCtx};

use crate::runtimes::Rt;
use crate::scenarios::{guard, Net};

/// Whether this machine has an IPv6 loopback (a container may not).
fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

fn echo(b: &mut PeerBuilder) {
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
}

/// A session over tcp6 on `[::1]`: both ends' addresses are IPv6.
pub fn tcp6(server_rt: Rt, client_rt: Rt, pair: &str) {
    let name = &format!("{pair} over tcp6");
    if !has_ipv6_loopback() {
        eprintln!("{name}: skipped: this machine has no IPv6 loopback ([::1] does not bind)");
        return;
    }
    let cfg = PeerConfig {
        network: Network::Tcp6,
        listen_address: "[::1]:0".into(),
        ..PeerConfig::default()
    };
    let mut b = PeerBuilder::new(cfg.clone());
    echo(&mut b);
    let server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: bind [::1]: {e}"));
    let addr = server.addr().clone();
    assert!(
        matches!(addr, PeerAddr::Tcp(a) if a.is_ipv6()),
        "{name}: {addr:?}"
    );
    let client = client_rt.client(PeerBuilder::new(cfg));
    let s = client
        .dial(&addr.dial_string())
        .unwrap_or_else(|e| panic!("{name}: dial {addr}: {e}"));
    let r = client.block_on(guard(name, s.pull::<_, String>("/echo", "v6")));
    assert_eq!(r.unwrap_or_else(|e| panic!("{name}: {e}")).value, "v6");
    assert_eq!(s.remote_addr(), &addr, "{name}");
    assert!(
        matches!(s.local_addr(), PeerAddr::Tcp(a) if a.is_ipv6()),
        "{name}: {:?}",
        s.local_addr()
    );
    client.shutdown();
    let report = server.shutdown(Duration::from_secs(5));
    assert_eq!(report.cancelled, 0, "{name}");
}

/// The buffer sizes configured on both peers (odd ones, no default).
const RCVBUF: usize = 60_000;
const SNDBUF: usize = 30_000;

/// A server on `server_rt` and a client on `client_rt`, both with buffer
/// sizes set: the dialed and the accepted socket of a session on each
/// transport read back what a socket set to the same sizes here reads
/// back (Linux doubles them, for one), TCP ones offered the window scale
/// such a socket offers, and tcp6 sockets are v6-only.
pub fn options(server_rt: Rt, client_rt: Rt) {
    let pair = &format!("{server_rt:?} server x {client_rt:?} client");
    #[cfg(target_os = "linux")]
    {
        let mut nets = vec![Tcp::V4, Tcp::V6];
        if !has_ipv6_loopback() {
            eprintln!("{pair}: tcp6 skipped: this machine has no IPv6 loopback");
            nets.pop();
        }
        for t in nets {
            linux::tcp(server_rt, client_rt, pair, t);
        }
        for net in [Net::Unix, Net::Unixpacket] {
            linux::unix(server_rt, client_rt, pair, net);
        }
    }
    #[cfg(not(target_os = "linux"))]
    eprintln!("{pair}: skipped: the peers' own sockets are found with pidfd_getfd, on Linux only");
}

#[cfg(target_os = "linux")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tcp {
    V4,
    V6,
}

#[cfg(target_os = "linux")]
mod linux {
    use std::os::fd::OwnedFd;

    use rustix::process::{getpid, pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};
    use socket2::{Domain, SockAddr, SockRef, Socket, Type};

    use super::*;
    use crate::runtimes::{Client, Server};

    /// Duplicates of this process's sockets whose addresses `pick` takes,
    /// one per socket (a socket may have several descriptors: ours, or
    /// another test's duplicates).
    fn find(pick: impl Fn(&SockRef<'_>) -> bool) -> Vec<OwnedFd> {
        use std::os::unix::fs::MetadataExt;
        let me = pidfd_open(getpid(), PidfdFlags::empty()).expect("pidfd_open on this process");
        // The descriptors as they are now, before ours are added.
        let fds: Vec<_> = std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|e| e.ok())
            // Sockets only: nothing else is duplicated.
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
            })
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        let mut found = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for n in fds {
            // It may have been closed since: then it is not ours.
            let Ok(fd) = pidfd_getfd(&me, n, PidfdGetfdFlags::empty()) else {
                continue;
            };
            if !pick(&SockRef::from(&fd)) {
                continue;
            }
            let file = std::fs::File::from(fd);
            let inode = file.metadata().expect("fstat").ino();
            if seen.insert(inode) {
                found.push(OwnedFd::from(file));
            }
        }
        found
    }

    /// The one socket `pick` takes.
    fn the_one(what: &str, pick: impl Fn(&SockRef<'_>) -> bool) -> OwnedFd {
        let mut found = find(pick);
        assert_eq!(found.len(), 1, "{what}: sockets found");
        found.pop().expect("one")
    }

    /// What a socket of `domain` and `ty` reads back once set to the
    /// configured sizes.
    fn expected(domain: Domain, ty: Type) -> (usize, usize) {
        let s = Socket::new(domain, ty, None).expect("a socket");
        s.set_recv_buffer_size(RCVBUF).expect("SO_RCVBUF");
        s.set_send_buffer_size(SNDBUF).expect("SO_SNDBUF");
        (
            s.recv_buffer_size().expect("SO_RCVBUF"),
            s.send_buffer_size().expect("SO_SNDBUF"),
        )
    }

    fn sizes(fd: &OwnedFd) -> (usize, usize) {
        let s = SockRef::from(fd);
        (
            s.recv_buffer_size().expect("SO_RCVBUF"),
            s.send_buffer_size().expect("SO_SNDBUF"),
        )
    }

    fn config(network: Network, listen: &str) -> PeerConfig {
        PeerConfig {
            network,
            listen_address: listen.into(),
            read_buffer_size: Some(RCVBUF),
            write_buffer_size: Some(SNDBUF),
            ..PeerConfig::default()
        }
    }

    /// A server on `server_rt` and a client on `client_rt` with `cfg`, a
    /// session between them that has carried a pull (so the server has
    /// accepted it).
    fn session(
        server_rt: Rt,
        client_rt: Rt,
        cfg: PeerConfig,
        name: &str,
    ) -> (Server, Client, teleport_peer::Session) {
        let mut b = PeerBuilder::new(cfg.clone());
        echo(&mut b);
        let server = server_rt
            .serve(b)
            .unwrap_or_else(|e| panic!("{name}: server: {e}"));
        let client = client_rt.client(PeerBuilder::new(cfg));
        let s = client
            .dial(&server.addr().dial_string())
            .unwrap_or_else(|e| panic!("{name}: dial: {e}"));
        let r = client.block_on(guard(name, s.pull::<_, String>("/echo", "hi")));
        assert_eq!(r.unwrap_or_else(|e| panic!("{name}: {e}")).value, "hi");
        (server, client, s)
    }

    /// The window scales a TCP socket's handshake settled (`TCP_INFO`):
    /// the one it offered (its receive side's) and the one the other end
    /// offered. An end offers what the receive buffer it had at its
    /// SYN (or SYN-ACK) allows: a buffer set after the connect or the
    /// accept comes too late for it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Wscale {
        offered: u8,
        taken: u8,
    }

    fn wscale(fd: &OwnedFd) -> Wscale {
        use std::os::fd::AsRawFd;
        use std::os::raw::{c_int, c_void};
        // <netinet/in.h>, <linux/tcp.h>; the start of `struct tcp_info`:
        // state, ca_state, retransmits, probes, backoff, options, then a
        // byte of two 4-bit fields, snd_wscale (low) and rcv_wscale.
        const IPPROTO_TCP: c_int = 6;
        const TCP_INFO: c_int = 11;
        const TCPI_OPT_WSCALE: u8 = 4;
        extern "C" {
            fn getsockopt(
                fd: c_int,
                level: c_int,
                name: c_int,
                value: *mut c_void,
                len: *mut u32,
            ) -> c_int;
        }
        let mut info = [0u8; 8];
        let mut len = info.len() as u32;
        // SAFETY: `info` is writable for `len` bytes, and the kernel
        // writes at most `len` of them.
        let r = unsafe {
            getsockopt(
                fd.as_raw_fd(),
                IPPROTO_TCP,
                TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        assert_eq!(len as usize, info.len(), "TCP_INFO: a short answer");
        if info[5] & TCPI_OPT_WSCALE == 0 {
            // Window scaling off (a sysctl): no scale either way.
            return Wscale {
                offered: 0,
                taken: 0,
            };
        }
        let (snd, rcv) = if cfg!(target_endian = "little") {
            (info[6] & 0xf, info[6] >> 4)
        } else {
            (info[6] >> 4, info[6] & 0xf)
        };
        Wscale {
            offered: rcv,
            taken: snd,
        }
    }

    /// A connection of the test's own over `domain` on loopback, each end
    /// given the configured sizes before (`early`) or after (not) its
    /// connect and listen: (what the dialed socket, what the accepted
    /// socket reads back).
    fn reference(domain: Domain, early: bool) -> (Wscale, Wscale) {
        let sized = |s: &Socket| {
            s.set_recv_buffer_size(RCVBUF).expect("SO_RCVBUF");
            s.set_send_buffer_size(SNDBUF).expect("SO_SNDBUF");
        };
        let any: std::net::SocketAddr = if domain == Domain::IPV6 {
            "[::1]:0".parse().expect("address")
        } else {
            "127.0.0.1:0".parse().expect("address")
        };
        let l = Socket::new(domain, Type::STREAM, None).expect("a socket");
        if early {
            sized(&l);
        }
        l.bind(&any.into()).expect("bind");
        l.listen(1).expect("listen");
        let c = Socket::new(domain, Type::STREAM, None).expect("a socket");
        if early {
            sized(&c);
        }
        c.connect(&l.local_addr().expect("address"))
            .expect("connect");
        let (a, _) = l.accept().expect("accept");
        if !early {
            sized(&c);
            sized(&a);
        }
        (wscale(&OwnedFd::from(c)), wscale(&OwnedFd::from(a)))
    }

    pub(super) fn tcp(server_rt: Rt, client_rt: Rt, pair: &str, t: Tcp) {
        let name = &format!("{pair} over {t:?} (socket options)");
        let (network, listen, domain) = match t {
            Tcp::V4 => (Network::Tcp, "127.0.0.1:0", Domain::IPV4),
            Tcp::V6 => (Network::Tcp6, "[::1]:0", Domain::IPV6),
        };
        let (server, client, s) = session(server_rt, client_rt, config(network, listen), name);
        let PeerAddr::Tcp(listening) = server.addr().clone() else {
            panic!("{name}: {:?}", server.addr())
        };
        let PeerAddr::Tcp(dialing) = s.local_addr().clone() else {
            panic!("{name}: {:?}", s.local_addr())
        };
        let at = |local, peer| {
            move |r: &SockRef<'_>| {
                let (l, p) = (r.local_addr().ok(), r.peer_addr().ok());
                l.as_ref().and_then(SockAddr::as_socket) == Some(local)
                    && p.as_ref().and_then(SockAddr::as_socket) == Some(peer)
            }
        };
        let dialed = the_one(
            &format!("{name}: the dialed socket"),
            at(dialing, listening),
        );
        let accepted = the_one(
            &format!("{name}: the accepted socket"),
            at(listening, dialing),
        );
        let want = expected(domain, Type::STREAM);
        assert_eq!(sizes(&dialed), want, "{name}: the dialed socket's buffers");
        assert_eq!(
            sizes(&accepted),
            want,
            "{name}: the accepted socket's buffers"
        );
        // Set in time, the sizes shaped the handshake: each end offered
        // the window scale of a socket sized before its connect or listen.
        let (early, late) = (reference(domain, true), reference(domain, false));
        if early == late {
            eprintln!(
                "{name}: the window scales do not tell early sizes from late ones here \
                 ({early:?}): not checked"
            );
        } else {
            let got = (wscale(&dialed), wscale(&accepted));
            assert_eq!(
                got.0.offered, early.0.offered,
                "{name}: the dialed socket's handshake (the client's buffers were set \
                 after its connect?); {got:?}, early {early:?}, late {late:?}"
            );
            assert_eq!(
                got.1.offered, early.1.offered,
                "{name}: the accepted socket's handshake (the server's buffers were set \
                 after its listen?); {got:?}, early {early:?}, late {late:?}"
            );
            assert_eq!(got.0.taken, got.1.offered, "{name}: {got:?}");
        }
        if t == Tcp::V6 {
            let listener = the_one(&format!("{name}: the listener"), |r| {
                r.local_addr().ok().and_then(|a| a.as_socket()) == Some(listening)
                    && r.is_listener().unwrap_or(false)
            });
            for (what, fd) in [("listener", &listener), ("dialed socket", &dialed)] {
                assert!(
                    SockRef::from(fd).only_v6().expect("IPV6_V6ONLY"),
                    "{name}: the tcp6 {what} takes IPv4 too"
                );
            }
        }
        client.shutdown();
        drop(server);
    }

    pub(super) fn unix(server_rt: Rt, client_rt: Rt, pair: &str, net: Net) {
        let name = &format!("{pair} over {net:?} (socket options)");
        let path = crate::runtimes::SockPath::new(name);
        let (ty, network) = match net {
            Net::Unixpacket => (Type::SEQPACKET, Network::Unixpacket),
            _ => (Type::STREAM, Network::Unix),
        };
        let (server, client, _s) =
            session(server_rt, client_rt, config(network, path.as_str()), name);
        let named = |a: Option<SockAddr>| a.is_some_and(|a| a.as_pathname() == Some(&path.0));
        let unnamed = |a: Option<SockAddr>| a.is_some_and(|a| a.is_unnamed());
        let of_type = |r: &SockRef<'_>| r.r#type().is_ok_and(|t| t == ty);
        let dialed = the_one(&format!("{name}: the dialed socket"), |r| {
            of_type(r) && unnamed(r.local_addr().ok()) && named(r.peer_addr().ok())
        });
        // The listener has the path too, but no peer.
        let accepted = the_one(&format!("{name}: the accepted socket"), |r| {
            of_type(r) && named(r.local_addr().ok()) && r.peer_addr().is_ok()
        });
        let want = expected(Domain::UNIX, ty);
        assert_eq!(sizes(&dialed), want, "{name}: the dialed socket's buffers");
        assert_eq!(
            sizes(&accepted),
            want,
            "{name}: the accepted socket's buffers"
        );
        client.shutdown();
        drop(server);
    }
}
