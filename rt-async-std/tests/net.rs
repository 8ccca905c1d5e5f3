//! Networks and socket options end to end on async-io, each test on
//! async-std and on smol: unixpacket sessions (frames larger than one
//! seqpacket message, many small ones at once, tiny socket buffers, a
//! stale socket file, TLS over it), a real IPv6 loopback connection on
//! tcp6, and the dial timeout.
#![cfg(unix)]

#[cfg(feature = "tls")]
#[path = "../../testkit/src/certs.rs"]
mod certs;
mod common;

use std::time::Duration;

use teleport_async_std::core::Rerror;
use teleport_async_std::{
    DialError, Executor, Network, Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx, PushCtx,
    Session,
};
use tokio::sync::mpsc;

use common::{guard, spawn, test_logs, SockPath};

on_both_executors!(
    unixpacket_carries_large_and_many_small_frames,
    unixpacket_with_small_socket_buffers,
    tcp_with_small_socket_buffers,
    unixpacket_listener_replaces_a_stale_socket_file_not_a_live_one,
    tcp6_on_the_ipv6_loopback,
    dial_timeout_ends_a_dial_nobody_answers,
);

/// A body whose every byte depends on its place, so a lost or reordered
/// piece shows.
fn pattern(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i * 7 + i / 997) % 26) as u8))
        .collect()
}

/// A server with `/echo` (pull) and `/note` (push, forwarded to the
/// channel).
fn server(b: PeerBuilder, exec: Executor) -> (Peer, mpsc::UnboundedReceiver<String>) {
    test_logs();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut b = b;
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    b.push("/note", move |_ctx: PushCtx, s: String| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(s);
        }
    });
    (Peer::from_builder(b, exec).expect("server builds"), rx)
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
/// pulls from 4 tasks at once and 100 pushes.
async fn large_and_small_frames(server_b: PeerBuilder, client: Peer, exec: Executor) {
    let (server, mut notes) = server(server_b, exec.clone());
    let addr = server.spawn_listener().await.expect("bind");
    let s = guard("dial", client.dial(&addr.dial_string()))
        .await
        .expect("dial");
    assert_eq!(s.remote_addr(), &addr);
    exchange(&s, &mut notes, &exec).await;
}

/// The traffic of [`large_and_small_frames`] over a session.
async fn exchange(s: &Session, notes: &mut mpsc::UnboundedReceiver<String>, exec: &Executor) {
    let body = pattern(1 << 20);
    let got = guard("1 MiB echo", s.pull::<_, String>("/echo", &body)).await;
    assert!(
        got.expect("1 MiB echo").value == body,
        "1 MiB body changed on the way"
    );

    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            spawn(exec, async move {
                for i in 0..100 {
                    let msg = format!("{t}-{i}-{}", pattern(i));
                    let r = s
                        .pull::<_, String>("/echo", &msg)
                        .await
                        .expect("small pull");
                    assert_eq!(r.value, msg);
                }
            })
        })
        .collect();
    guard("small pulls", async {
        for t in tasks {
            t.await.expect("puller");
        }
        for i in 0..100 {
            s.push("/note", &format!("note {i}")).await.expect("push");
        }
    })
    .await;
    let mut got = Vec::new();
    for _ in 0..100 {
        got.push(guard("push", notes.recv()).await.expect("a push"));
    }
    got.sort();
    let mut want: Vec<String> = (0..100).map(|i| format!("note {i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

async fn unixpacket_carries_large_and_many_small_frames(exec: Executor) {
    let path = SockPath::new("upk");
    let client = Peer::new(unixpacket(&path, None), exec.clone()).unwrap();
    large_and_small_frames(PeerBuilder::new(unixpacket(&path, None)), client, exec).await;
}

async fn unixpacket_with_small_socket_buffers(exec: Executor) {
    // SO_SNDBUF of 4 KiB: messages must be cut to fit it (EMSGSIZE
    // otherwise).
    let path = SockPath::new("upksmall");
    let client = Peer::new(unixpacket(&path, Some(4096)), exec.clone()).unwrap();
    large_and_small_frames(
        PeerBuilder::new(unixpacket(&path, Some(4096))),
        client,
        exec,
    )
    .await;
}

async fn tcp_with_small_socket_buffers(exec: Executor) {
    let cfg = PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        read_buffer_size: Some(4096),
        write_buffer_size: Some(4096),
        ..PeerConfig::default()
    };
    let client = Peer::new(cfg.clone(), exec.clone()).unwrap();
    large_and_small_frames(PeerBuilder::new(cfg), client, exec).await;
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;

    on_both_executors!(tls_over_unixpacket);

    async fn tls_over_unixpacket(exec: Executor) {
        // rustls reads records 4 KiB at a time: each seqpacket message must
        // still arrive whole.
        let path = SockPath::new("upktls");
        let ca = certs::Ca::new("test CA");
        let mut b = PeerBuilder::new(unixpacket(&path, None));
        b.listen_tls(certs::acceptor(&ca.leaf(certs::NAMES)));
        let mut c = PeerBuilder::new(unixpacket(&path, None));
        c.dial_tls(certs::connector(&ca).with_server_name("localhost"));
        let client = Peer::from_builder(c, exec.clone()).unwrap();
        large_and_small_frames(b, client, exec).await;
    }
}

async fn unixpacket_listener_replaces_a_stale_socket_file_not_a_live_one(exec: Executor) {
    let path = SockPath::new("upklive");
    let cfg = unixpacket(&path, None);
    let (first, _) = server(PeerBuilder::new(cfg.clone()), exec.clone());
    assert_eq!(
        first.spawn_listener().await.unwrap(),
        PeerAddr::Unix(path.as_str().into())
    );
    // A live server keeps its socket (a unix stream server too).
    let e = Peer::new(cfg.clone(), exec.clone())
        .unwrap()
        .spawn_listener()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    let stream = PeerConfig {
        network: Network::Unix,
        ..cfg.clone()
    };
    let e = Peer::new(stream, exec.clone())
        .unwrap()
        .spawn_listener()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    // A socket file a gone seqpacket listener left behind is taken over.
    let stale = SockPath::new("upkstale");
    {
        use socket2::{Domain, SockAddr, Socket, Type};
        let l = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        l.bind(&SockAddr::unix(&stale.0).unwrap()).unwrap();
        l.listen(1).unwrap();
    }
    assert!(stale.0.exists());
    let cfg = unixpacket(&stale, None);
    let (second, _) = server(PeerBuilder::new(cfg.clone()), exec.clone());
    second
        .spawn_listener()
        .await
        .expect("bind over a stale socket file");
    let client = Peer::new(cfg, exec).unwrap();
    let s = guard("dial", client.dial(stale.as_str()))
        .await
        .expect("dial");
    let r = guard("pull", s.pull::<_, String>("/echo", "again")).await;
    assert_eq!(r.expect("pull").value, "again");
    drop(first);
}

/// Whether this machine has an IPv6 loopback (a container may not).
fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

async fn tcp6_on_the_ipv6_loopback(exec: Executor) {
    if !has_ipv6_loopback() {
        eprintln!("skipped: this machine has no IPv6 loopback ([::1] does not bind)");
        return;
    }
    let cfg = PeerConfig {
        network: Network::Tcp6,
        listen_address: "[::1]:0".into(),
        ..PeerConfig::default()
    };
    let (server, _) = server(PeerBuilder::new(cfg.clone()), exec.clone());
    let addr = server.spawn_listener().await.expect("bind [::1]");
    let PeerAddr::Tcp(sa) = addr else {
        panic!("{addr:?}")
    };
    assert!(sa.is_ipv6(), "{sa}");
    let client = Peer::new(cfg, exec).unwrap();
    let s = guard("dial", client.dial(&addr.dial_string()))
        .await
        .expect("dial [::1]");
    let r = guard("pull", s.pull::<_, String>("/echo", "v6")).await;
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

async fn dial_timeout_ends_a_dial_nobody_answers(exec: Executor) {
    let (_l, _queued, addr) = full_listener();
    let client = Peer::new(
        PeerConfig {
            dial_timeout: Some(Duration::from_millis(300)),
            ..PeerConfig::default()
        },
        exec,
    )
    .unwrap();
    let e = guard("dial", client.dial(&addr.to_string()))
        .await
        .expect_err("no answer");
    match e {
        DialError::Timeout { after, .. } => assert_eq!(after, Duration::from_millis(300)),
        e => panic!("{e:?}"),
    }
}
