//! Socket options as the kernel holds them: the configured `SO_RCVBUF` and
//! `SO_SNDBUF` on a dialed and an accepted socket of each runtime (TCP,
//! unix, unixpacket, tcp6), `IPV6_V6ONLY` on its tcp6 sockets; and tcp6
//! over the IPv6 loopback on every pair.
//!
//! The peers give no access to their sockets, so the test finds them
//! among this process's own descriptors (on Linux, `pidfd_getfd` on
//! itself yields a duplicate of each; a duplicate names the same socket)
//! by their addresses, and reads the options back with socket2.

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

/// Both peers on `rt`, with buffer sizes set: the dialed and the accepted
/// socket of a session on each transport read back what a socket set to
/// the same sizes here reads back (Linux doubles them, for one); tcp6
/// sockets are v6-only.
pub fn options(rt: Rt) {
    #[cfg(target_os = "linux")]
    {
        let mut nets = vec![Tcp::V4, Tcp::V6];
        if !has_ipv6_loopback() {
            eprintln!("{rt:?}: tcp6 skipped: this machine has no IPv6 loopback");
            nets.pop();
        }
        for t in nets {
            linux::tcp(rt, t);
        }
        for net in [Net::Unix, Net::Unixpacket] {
            linux::unix(rt, net);
        }
    }
    #[cfg(not(target_os = "linux"))]
    eprintln!("{rt:?}: skipped: the peers' own sockets are found with pidfd_getfd, on Linux only");
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

    /// A server and a client on `rt` with `cfg`, a session between them
    /// that has carried a pull (so the server has accepted it).
    fn session(rt: Rt, cfg: PeerConfig, name: &str) -> (Server, Client, teleport_peer::Session) {
        let mut b = PeerBuilder::new(cfg.clone());
        echo(&mut b);
        let server = rt
            .serve(b)
            .unwrap_or_else(|e| panic!("{name}: server: {e}"));
        let client = rt.client(PeerBuilder::new(cfg));
        let s = client
            .dial(&server.addr().dial_string())
            .unwrap_or_else(|e| panic!("{name}: dial: {e}"));
        let r = client.block_on(guard(name, s.pull::<_, String>("/echo", "hi")));
        assert_eq!(r.unwrap_or_else(|e| panic!("{name}: {e}")).value, "hi");
        (server, client, s)
    }

    pub(super) fn tcp(rt: Rt, t: Tcp) {
        let name = &format!("{rt:?} over {t:?} (socket options)");
        let (network, listen, domain) = match t {
            Tcp::V4 => (Network::Tcp, "127.0.0.1:0", Domain::IPV4),
            Tcp::V6 => (Network::Tcp6, "[::1]:0", Domain::IPV6),
        };
        let (server, client, s) = session(rt, config(network, listen), name);
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

    pub(super) fn unix(rt: Rt, net: Net) {
        let name = &format!("{rt:?} over {net:?} (socket options)");
        let path = crate::runtimes::SockPath::new(name);
        let (ty, network) = match net {
            Net::Unixpacket => (Type::SEQPACKET, Network::Unixpacket),
            _ => (Type::STREAM, Network::Unix),
        };
        let (server, client, _s) = session(rt, config(network, path.as_str()), name);
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
