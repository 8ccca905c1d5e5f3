//! Hostile input against a running server, on async-std and on smol:
//! garbage, an oversize length, a client that says nothing, a frame
//! dripped byte by byte. Each is cut off (the server closes the
//! connection) while a well-behaved client on the same server sees no
//! failed pull.

mod common;

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_io::{Async, Timer};
use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use teleport_async_std::core::{CodecId, FastProto, Packet, PacketType, Proto, Rerror, Seq};
use teleport_async_std::{Executor, Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx};
use tokio::sync::oneshot;

use common::{guard, spawn, test_logs};

on_both_executors!(hostile_clients_are_cut_off_and_a_good_client_sees_no_failure);

const READ_LIMIT: usize = 4096;

/// A server with a small read limit, an idle timeout and a frame timeout.
async fn server(exec: &Executor) -> (Peer, String) {
    test_logs();
    let mut b = PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        read_limit: READ_LIMIT,
        default_session_idle_timeout: Some(Duration::from_millis(300)),
        frame_timeout: Some(Duration::from_millis(500)),
        ..PeerConfig::default()
    });
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    let server = Peer::from_builder(b, exec.clone()).unwrap();
    let PeerAddr::Tcp(addr) = server.bind().await.unwrap() else {
        panic!("tcp address expected")
    };
    (server, addr.to_string())
}

type GoodResult = (usize, Vec<Rerror>);

/// A client pulling in a loop until told to stop; returns how many pulls
/// succeeded and every failure. It has pulled once before this returns.
async fn well_behaved(
    exec: &Executor,
    addr: &str,
) -> (Arc<AtomicBool>, oneshot::Receiver<GoodResult>) {
    let client = Peer::new(PeerConfig::default(), exec.clone()).unwrap();
    let session = guard("good dial", client.dial(addr))
        .await
        .expect("good dial");
    let r = guard("good pull", session.pull::<_, String>("/echo", "first")).await;
    assert_eq!(r.expect("first good pull").value, "first");
    let stop = Arc::new(AtomicBool::new(false));
    let task = spawn(exec, {
        let stop = stop.clone();
        async move {
            let _client = client;
            let mut ok = 1;
            let mut failed = Vec::new();
            let mut i = 0u64;
            // At least 20 pulls, however fast the hostile side is cut off.
            while !stop.load(Ordering::Relaxed) || i < 20 {
                i += 1;
                let arg = format!("pull {i}");
                match session.pull::<_, String>("/echo", &arg).await {
                    Ok(r) if r.value == arg => ok += 1,
                    Ok(r) => failed.push(Rerror::internal(format!("wrong reply {:?}", r.value))),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }
    });
    (stop, task)
}

/// Connects and writes `bytes` (a write error is fine: the server may cut
/// us off mid-write).
async fn send(addr: &str, bytes: &[u8]) -> Async<TcpStream> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let mut s = guard("connect", Async::<TcpStream>::connect(addr))
        .await
        .expect("connect");
    let _ = s.write_all(bytes).await;
    s
}

/// Waits until the server closes `s` (EOF or reset); the guard fails the
/// test if it does not. Returns whatever the server sent first.
async fn expect_cut_off(mut s: Async<TcpStream>, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    guard(what, async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}

fn frame(ptype: PacketType, uri: &str, body: &str) -> Vec<u8> {
    let p = Packet::new(ptype, Seq(1), uri).with_body(CodecId::STRING, body.to_string());
    let mut buf = BytesMut::new();
    FastProto::default().encode(&p, &mut buf).unwrap();
    buf.to_vec()
}

/// Writes `frame` one byte at a time, slower than the frame timeout
/// allows, until it is all sent or the server hangs up.
async fn drip(mut s: &Async<TcpStream>, frame: Vec<u8>) {
    for b in frame {
        if s.write_all(&[b]).await.is_err() {
            return;
        }
        Timer::after(Duration::from_millis(100)).await;
    }
}

async fn hostile_clients_are_cut_off_and_a_good_client_sees_no_failure(exec: Executor) {
    let (_server, addr) = server(&exec).await;
    let (stop, good) = well_behaved(&exec, &addr).await;

    // An HTTP request: "GET " read as a length.
    let http = send(&addr, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").await;
    // A plausible length and the wrong protocol id.
    let mut wrong_id = vec![0, 0, 0, 64, 0xab];
    wrong_id.resize(64, 0);
    let wrong_id = send(&addr, &wrong_id).await;
    // A length prefix asking for 2 GiB.
    let huge = send(&addr, &[0x7f, 0xff, 0xff, 0xf1, b'f', 0]).await;
    // A frame of an unknown packet type.
    let unknown = send(&addr, &frame(PacketType(9), "/echo", "x")).await;
    // Pseudo-random bytes.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..512)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let noise = send(&addr, &noise).await;
    // Says nothing: the idle timeout cuts it off.
    let silent = send(&addr, &[]).await;
    // A valid pull dripped a byte per 100 ms: each byte resets the idle
    // timer, so only the frame timeout stops it.
    let dripping = send(&addr, &[]).await;
    let drip_frame = frame(PacketType::PULL, "/echo", &"d".repeat(200));

    let cut = futures_lite::future::zip(
        async {
            let mut got = Vec::new();
            for (s, what) in [
                (http, "http request"),
                (wrong_id, "wrong protocol id"),
                (huge, "2 GiB length"),
                (unknown, "unknown packet type"),
                (noise, "noise"),
                (silent, "silent client"),
            ] {
                got.push(expect_cut_off(s, what).await);
            }
            got
        },
        futures_lite::future::or(
            async {
                drip(&dripping, drip_frame).await;
                panic!("the whole dripped frame was taken");
            },
            async {
                let mut buf = [0u8; 256];
                let mut r = &dripping;
                guard("dripping client", async {
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
            },
        ),
    )
    .await;
    for got in cut.0 {
        assert!(got.is_empty(), "the server answered garbage: {got:?}");
    }

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = guard("good client", good).await.expect("good client task");
    assert!(
        failed.is_empty(),
        "the well-behaved client saw failures: {failed:?}"
    );
    assert!(ok > 1, "the well-behaved client pulled only {ok} times");

    // Still serving after it all.
    let client = Peer::new(PeerConfig::default(), exec).unwrap();
    let s = guard("dial after", client.dial(&addr))
        .await
        .expect("dial after");
    let r = guard("pull after", s.pull::<_, String>("/echo", "after")).await;
    assert_eq!(r.expect("pull after").value, "after");
}
