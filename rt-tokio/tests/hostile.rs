//! Hostile input against a running server: an oversize length, garbage, a
//! frame dripped one byte per 100 ms, a client that says nothing. Each is
//! cut off (the server closes the connection) with a logged typed error or
//! the idle timeout, while a well-behaved client on the same server sees no
//! failed pull.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use teleport_core::{CodecId, FastProto, Packet, PacketType, Proto, Rerror, Seq};
use teleport_tokio::{Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use common::{capture_logs, captured_logs, guard};

const READ_LIMIT: usize = 4096;

/// How soon a hostile client must be cut off. Generous: the idle timeouts
/// below are a few hundred ms and the frame timeout 1 s.
const CUT_OFF: Duration = Duration::from_secs(5);

/// A server with a small read limit, the given idle timeout (each test uses
/// its own, so the captured logs tell them apart) and a frame timeout.
async fn server(idle: Duration) -> (Peer, String) {
    capture_logs();
    let mut b = PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        read_limit: READ_LIMIT,
        default_session_idle_timeout: Some(idle),
        frame_timeout: Some(Duration::from_secs(1)),
        ..PeerConfig::default()
    });
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    let server = Peer::from_builder(b).unwrap();
    let PeerAddr::Tcp(addr) = server.bind().await.unwrap() else {
        panic!("tcp address expected")
    };
    (server, addr.to_string())
}

/// A client pulling in a loop until told to stop; returns how many pulls
/// succeeded and every failure. It has pulled once before this returns.
async fn well_behaved(addr: &str) -> (watch::Sender<bool>, JoinHandle<(usize, Vec<Rerror>)>) {
    let client = Peer::new(PeerConfig::default()).unwrap();
    let session = guard("good dial", client.dial(addr))
        .await
        .expect("good dial");
    let r = guard("good pull", session.pull::<_, String>("/echo", "first")).await;
    assert_eq!(r.expect("first good pull").value, "first");
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let _client = client;
        let mut ok = 1;
        let mut failed = Vec::new();
        let mut i = 0u64;
        // At least 20 pulls, however fast the hostile side is cut off.
        while !*stop_rx.borrow() || i < 20 {
            i += 1;
            let arg = format!("pull {i}");
            match session.pull::<_, String>("/echo", &arg).await {
                Ok(r) if r.value == arg => ok += 1,
                Ok(r) => failed.push(Rerror::internal(format!("wrong reply {:?}", r.value))),
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    });
    (stop_tx, task)
}

async fn finish_good(stop: watch::Sender<bool>, task: JoinHandle<(usize, Vec<Rerror>)>) {
    stop.send(true).unwrap();
    let (ok, failed) = guard("good client", task).await.expect("good client task");
    assert!(
        failed.is_empty(),
        "the well-behaved client saw failures: {failed:?}"
    );
    assert!(ok > 1, "the well-behaved client pulled only {ok} times");
}

/// Waits until the server closes `s` (EOF or reset); panics if it has not
/// within [`CUT_OFF`]. Returns whatever the server sent first.
async fn expect_cut_off(mut s: TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(CUT_OFF, async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "{what}: the server did not cut the connection off within {CUT_OFF:?}"
    );
    got
}

/// Connects and writes `bytes` (a write error is fine: the server may cut
/// us off mid-write).
async fn send(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut s = guard("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let _ = s.write_all(bytes).await;
    s
}

fn frame(ptype: PacketType, uri: &str, body: &str) -> Vec<u8> {
    let p = Packet::new(ptype, Seq(1), uri).with_body(CodecId::STRING, body.to_string());
    let mut buf = BytesMut::new();
    FastProto::default().encode(&p, &mut buf).unwrap();
    buf.to_vec()
}

/// A frame of exactly `size` bytes (a pull with a padded body).
fn frame_of_size(size: usize) -> Vec<u8> {
    let base = frame(PacketType::PULL, "/echo", "").len();
    let f = frame(PacketType::PULL, "/echo", &"x".repeat(size - base));
    assert_eq!(f.len(), size);
    f
}

fn assert_logged(needle: &str) {
    let logs = captured_logs();
    assert!(
        logs.contains(needle),
        "no log line contains {needle:?}; logs:\n{logs}"
    );
}

/// Still serving after it all.
async fn still_serves(addr: &str) {
    let client = Peer::new(PeerConfig::default()).unwrap();
    let s = guard("dial after", client.dial(addr))
        .await
        .expect("dial after");
    let r = guard("pull after", s.pull::<_, String>("/echo", "after")).await;
    assert_eq!(r.expect("pull after").value, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_length_is_cut_off() {
    let (_server, addr) = server(Duration::from_millis(410)).await;
    let (stop, good) = well_behaved(&addr).await;

    // A length prefix asking for 2 GiB.
    let huge = send(&addr, &[0x7f, 0xff, 0xff, 0xf1, b'f', 0]).await;
    // A real frame one byte over the limit.
    let over = send(&addr, &frame_of_size(READ_LIMIT + 1)).await;
    // A frame exactly at the limit is accepted (as in Go).
    let at = frame_of_size(READ_LIMIT);
    let mut fine = send(&addr, &at).await;

    let (a, b) = tokio::join!(
        expect_cut_off(huge, "2 GiB length"),
        expect_cut_off(over, "limit + 1 frame")
    );
    assert!(
        a.is_empty() && b.is_empty(),
        "the server answered a bad frame"
    );
    assert_logged("frame size 2147483633 exceeds limit 4096");
    assert_logged("frame size 4097 exceeds limit 4096");

    // The frame at the limit got a reply: some bytes, starting with a
    // length prefix.
    let mut head = [0u8; 4];
    guard(
        "reply to the frame at the limit",
        fine.read_exact(&mut head),
    )
    .await
    .expect("a reply to a frame at the limit");
    assert!(u32::from_be_bytes(head) as usize >= teleport_core::MIN_FRAME);

    finish_good(stop, good).await;
    still_serves(&addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_cut_off() {
    let (_server, addr) = server(Duration::from_millis(420)).await;
    let (stop, good) = well_behaved(&addr).await;

    // An HTTP request: "GET " read as a length.
    let http = send(&addr, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").await;
    // A plausible length and the wrong protocol id.
    let mut wrong_id = vec![0, 0, 0, 64, 0xab];
    wrong_id.resize(64, 0);
    let wrong_id = send(&addr, &wrong_id).await;
    // A well-formed prefix whose payload lies about the uri's length.
    let mut lying = vec![0, 0, 0, 30, b'f', 0];
    lying.extend_from_slice(&1u64.to_be_bytes()); // seq
    lying.push(1); // pull
    lying.extend_from_slice(&u32::MAX.to_be_bytes()); // uri length
    lying.resize(30, 0);
    let lying = send(&addr, &lying).await;
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

    let (a, b, c, d, e) = tokio::join!(
        expect_cut_off(http, "http request"),
        expect_cut_off(wrong_id, "wrong protocol id"),
        expect_cut_off(lying, "lying uri length"),
        expect_cut_off(unknown, "unknown packet type"),
        expect_cut_off(noise, "noise"),
    );
    for got in [a, b, c, d, e] {
        assert!(got.is_empty(), "the server answered garbage: {got:?}");
    }
    assert_logged("frame size 1195725856 exceeds limit 4096");
    assert_logged("protocol id 0xab is not 0x66");
    assert_logged("uri needs 4294967295 bytes but only 11 are left in the payload");
    assert_logged("UnknownPacketType(9)");

    finish_good(stop, good).await;
    still_serves(&addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_cut_off_by_the_idle_timeout() {
    let (_server, addr) = server(Duration::from_millis(300)).await;
    let (stop, good) = well_behaved(&addr).await;
    let silent = send(&addr, &[]).await;
    let got = expect_cut_off(silent, "silent client").await;
    assert!(got.is_empty());
    assert_logged("Idle(300ms)");
    finish_good(stop, good).await;
    still_serves(&addr).await;
}

/// Writes `frame` one byte per 100 ms until it is all sent or the server
/// hangs up.
fn drip(stream: TcpStream, frame: Vec<u8>) -> (tokio::net::tcp::OwnedReadHalf, JoinHandle<()>) {
    let (rd, mut wr) = stream.into_split();
    let task = tokio::spawn(async move {
        for b in frame {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (rd, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_drip_is_cut_off() {
    let (_server, addr) = server(Duration::from_millis(430)).await;
    let (stop, good) = well_behaved(&addr).await;

    // A valid pull of ~240 bytes: dripped whole it would take ~24 s. Each
    // byte resets the idle timer (430 ms), so only a frame timeout stops it.
    let f = frame(PacketType::PULL, "/echo", &"d".repeat(200));
    let s = guard("connect", TcpStream::connect(&addr)).await.unwrap();
    let (mut rd, writer) = drip(s, f);
    let r = tokio::time::timeout(CUT_OFF, async {
        let mut buf = [0u8; 256];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    writer.abort();
    assert!(
        r.is_ok(),
        "a client dripping a frame one byte per 100 ms was not cut off within {CUT_OFF:?}"
    );

    finish_good(stop, good).await;
    still_serves(&addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_hostile_clients_at_once() {
    let (_server, addr) = server(Duration::from_millis(250)).await;
    let (stop, good) = well_behaved(&addr).await;

    let huge = send(&addr, &[0x7f, 0xff, 0xff, 0xf2, b'f', 0]).await;
    let mut wrong_id = vec![0, 0, 0, 64, 0xcd];
    wrong_id.resize(64, 0);
    let garbage = send(&addr, &wrong_id).await;
    let silent = send(&addr, &[]).await;
    let (a, b, c) = tokio::join!(
        expect_cut_off(huge, "oversize"),
        expect_cut_off(garbage, "garbage"),
        expect_cut_off(silent, "silent"),
    );
    assert!(a.is_empty() && b.is_empty() && c.is_empty());
    assert_logged("frame size 2147483634 exceeds limit 4096");
    assert_logged("protocol id 0xcd is not 0x66");
    assert_logged("Idle(250ms)");

    finish_good(stop, good).await;
    still_serves(&addr).await;
}
