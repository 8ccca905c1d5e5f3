//! Networks and socket options end to end: unixpacket sessions (frames
//! larger than one seqpacket message, many small ones at once, tiny socket
//! buffers, a stale socket file), a real IPv6 loopback connection on
//! tcp6, and the dial timeout.

mod common;

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use teleport_core::Rerror;
use teleport_mio::prelude::*;
use teleport_mio::{DialError, Network, Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx, PushCtx};

use common::{guard, recv, test_logs, SockPath};

/// A body whose every byte depends on its place, so a lost or reordered
/// piece shows.
fn pattern(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i * 7 + i / 997) % 26) as u8))
        .collect()
}

/// A server with `/echo` (pull) and `/note` (push, forwarded to the
/// channel).
fn server(cfg: PeerConfig) -> (Peer, mpsc::Receiver<String>) {
    test_logs();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut b = PeerBuilder::new(cfg);
    b.pull_sync("/echo", |_ctx: PullCtx, s: String| Ok::<_, Rerror>(s));
    b.push_sync("/note", move |_ctx: PushCtx, s: String| {
        let _ = tx.lock().unwrap().send(s);
    });
    (Peer::from_builder(b).expect("server builds"), rx)
}

fn unixpacket(path: &SockPath, buffers: Option<usize>) -> PeerConfig {
    PeerConfig {
        network: Network::Unixpacket,
        listen_address: path.as_str().to_string(),
        read_buffer_size: buffers,
        write_buffer_size: buffers,
        ..PeerConfig::default()
    }
}

/// A 1 MiB pull and reply (each many seqpacket messages), then 400 small
/// pulls from 4 threads at once and 100 pushes, over `cfg`'s network.
fn large_and_small_frames(server_cfg: PeerConfig, client_cfg: PeerConfig) {
    let (server, notes) = server(server_cfg);
    let addr = server.spawn_listener().expect("bind");
    let client = Peer::new(client_cfg).unwrap();
    let a = addr.dial_string();
    let (_client, s) = guard("dial", move || client.dial(&a).map(|s| (client, s))).expect("dial");
    assert_eq!(s.remote_addr(), &addr);

    let body = pattern(1 << 20);
    let (s2, sent) = (s.clone(), body.clone());
    let got = guard("1 MiB echo", move || s2.pull::<_, String>("/echo", &sent));
    assert!(
        got.expect("1 MiB echo").value == body,
        "1 MiB body changed on the way"
    );

    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    let msg = format!("{t}-{i}-{}", pattern(i));
                    let r = s.pull::<_, String>("/echo", &msg).expect("small pull");
                    assert_eq!(r.value, msg);
                }
            })
        })
        .collect();
    let s2 = s.clone();
    guard("small pulls", move || {
        for t in threads {
            t.join().expect("puller");
        }
        for i in 0..100 {
            s2.push("/note", &format!("note {i}")).expect("push");
        }
    });
    // Push handlers run on several workers: in any order, each once.
    let mut got: Vec<String> = (0..100).map(|_| recv("push", &notes)).collect();
    got.sort();
    let mut want: Vec<String> = (0..100).map(|i| format!("note {i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[cfg(unix)]
#[test]
fn unixpacket_carries_large_and_many_small_frames() {
    let path = SockPath::new("upk");
    large_and_small_frames(unixpacket(&path, None), unixpacket(&path, None));
}

#[cfg(unix)]
#[test]
fn unixpacket_with_small_socket_buffers() {
    // SO_SNDBUF of 4 KiB: messages must be cut to fit it (EMSGSIZE
    // otherwise).
    let path = SockPath::new("upksmall");
    large_and_small_frames(unixpacket(&path, Some(4096)), unixpacket(&path, Some(4096)));
}

#[test]
fn tcp_with_small_socket_buffers() {
    let cfg = PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        read_buffer_size: Some(4096),
        write_buffer_size: Some(4096),
        ..PeerConfig::default()
    };
    large_and_small_frames(cfg.clone(), cfg);
}

#[cfg(unix)]
#[test]
fn unixpacket_listener_replaces_a_stale_socket_file_not_a_live_one() {
    let path = SockPath::new("upkstale");
    let cfg = unixpacket(&path, None);
    let (first, _) = server(cfg.clone());
    assert_eq!(
        first.spawn_listener().unwrap(),
        PeerAddr::Unix(path.as_str().into())
    );
    // A live server keeps its socket (a unix stream server too).
    let e = Peer::new(cfg.clone())
        .unwrap()
        .spawn_listener()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    let e = Peer::new(PeerConfig {
        network: Network::Unix,
        ..cfg.clone()
    })
    .unwrap()
    .spawn_listener()
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    // Gone, it leaves the file behind: the next server takes its place.
    drop(first);
    assert!(path.0.exists());
    let (second, _) = server(cfg.clone());
    second
        .spawn_listener()
        .expect("bind over a stale socket file");
    let client = Peer::new(cfg).unwrap();
    let p = path.as_str().to_string();
    let r = guard("pull", move || {
        client
            .dial(&p)
            .expect("dial")
            .pull::<_, String>("/echo", "again")
    });
    assert_eq!(r.expect("pull").value, "again");
}

/// Whether this machine has an IPv6 loopback (a container may not).
fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[test]
fn tcp6_on_the_ipv6_loopback() {
    if !has_ipv6_loopback() {
        eprintln!("skipped: this machine has no IPv6 loopback ([::1] does not bind)");
        return;
    }
    let cfg = PeerConfig {
        network: Network::Tcp6,
        listen_address: "[::1]:0".into(),
        ..PeerConfig::default()
    };
    let (server, _) = server(cfg.clone());
    let addr = server.spawn_listener().expect("bind [::1]");
    let PeerAddr::Tcp(sa) = addr else {
        panic!("{addr:?}")
    };
    assert!(sa.is_ipv6(), "{sa}");
    let client = Peer::new(cfg).unwrap();
    let a = addr.dial_string();
    let (s, r) = guard("pull over [::1]", move || {
        let s = client.dial(&a).expect("dial [::1]");
        let r = s.pull::<_, String>("/echo", "v6");
        (s, r)
    });
    assert_eq!(r.expect("pull").value, "v6");
    assert_eq!(s.remote_addr(), &addr);
    let PeerAddr::Tcp(local) = s.local_addr() else {
        panic!()
    };
    assert!(local.is_ipv6(), "{local}");
}

/// A listener whose accept queue is full (backlog 0, never accepting, one
/// connection queued): a further SYN is dropped, so a dial to it neither
/// succeeds nor fails until its timeout.
fn full_listener() -> (
    socket2::Socket,
    Vec<std::net::TcpStream>,
    std::net::SocketAddr,
) {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (l, queued, addr),
            Err(e) => panic!("filling the accept queue: {e}"),
        }
    }
    panic!("the accept queue never filled");
}

#[test]
fn dial_timeout_ends_a_dial_nobody_answers() {
    let (_l, _queued, addr) = full_listener();
    let client = Peer::new(PeerConfig {
        dial_timeout: Some(Duration::from_millis(300)),
        ..PeerConfig::default()
    })
    .unwrap();
    let e = guard("dial", move || client.dial(&addr.to_string())).expect_err("no answer");
    match e {
        DialError::Timeout { after, .. } => assert_eq!(after, Duration::from_millis(300)),
        e => panic!("{e:?}"),
    }
}
