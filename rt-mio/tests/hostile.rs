//! Hostile input against a running server: an oversize length, garbage, a
//! frame dripped one byte per 100 ms, a client that says nothing. Each is
//! cut off (the server closes the connection) with a logged typed error or
//! the idle timeout, while a well-behaved client on the same server sees no
//! failed pull. The loop serves them all on one thread, so this is also a
//! test that one bad connection does not stall the others.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use teleport_core::{CodecId, FastProto, Packet, PacketType, Proto, Rerror, Seq};
use teleport_mio::prelude::*;
use teleport_mio::{Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx};

use common::{capture_logs, captured_logs, guard};

const READ_LIMIT: usize = 4096;

/// How soon a hostile client must be cut off. Generous: the idle timeouts
/// below are a few hundred ms and the frame timeout 1 s.
const CUT_OFF: Duration = Duration::from_secs(5);

/// A server with a small read limit, the given idle timeout (each test uses
/// its own, so the captured logs tell them apart) and a frame timeout.
fn server(idle: Duration, workers: usize) -> (Peer, String) {
    capture_logs();
    let mut b = PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        read_limit: READ_LIMIT,
        default_session_idle_timeout: Some(idle),
        frame_timeout: Some(Duration::from_secs(1)),
        ..PeerConfig::default()
    });
    b.pull_sync("/echo", |_ctx: PullCtx, s: String| Ok::<_, Rerror>(s));
    let server = Peer::with_workers(b, workers).unwrap();
    let PeerAddr::Tcp(addr) = server.bind().unwrap() else {
        panic!("tcp address expected")
    };
    (server, addr.to_string())
}

type Good = (Arc<AtomicBool>, JoinHandle<(usize, Vec<Rerror>)>);

/// A client pulling in a loop on a thread until told to stop; returns how
/// many pulls succeeded and every failure. It has pulled once before this
/// returns.
fn well_behaved(addr: &str) -> Good {
    let client = Peer::new(PeerConfig::default()).unwrap();
    let session = client.dial(addr).expect("good dial");
    let r = session.pull::<_, String>("/echo", "first");
    assert_eq!(r.expect("first good pull").value, "first");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let task = std::thread::spawn(move || {
        let _client = client;
        let mut ok = 1;
        let mut failed = Vec::new();
        let mut i = 0u64;
        // At least 20 pulls, however fast the hostile side is cut off, so
        // the check below does not depend on timing.
        while !stopped.load(Ordering::Relaxed) || i < 20 {
            i += 1;
            let arg = format!("pull {i}");
            match session.pull::<_, String>("/echo", &arg) {
                Ok(r) if r.value == arg => ok += 1,
                Ok(r) => failed.push(Rerror::internal(format!("wrong reply {:?}", r.value))),
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    });
    (stop, task)
}

fn finish_good((stop, task): Good) {
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = guard("good client", move || task.join().expect("good client"));
    assert!(
        failed.is_empty(),
        "the well-behaved client saw failures: {failed:?}"
    );
    assert!(ok > 1, "the well-behaved client pulled only {ok} times");
}

/// Waits until the server closes `s` (EOF or reset); panics if it has not
/// within [`CUT_OFF`]. Returns whatever the server sent first.
fn expect_cut_off(mut s: TcpStream, what: &str) -> Vec<u8> {
    s.set_read_timeout(Some(CUT_OFF)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{what}: the server did not cut the connection off within {CUT_OFF:?}")
            }
            Err(_) => return got,
        }
    }
}

/// Connects and writes `bytes` (a write error is fine: the server may cut
/// us off mid-write).
fn send(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.write_all(bytes);
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
fn still_serves(addr: &str) {
    let addr = addr.to_string();
    let r = guard("pull after", move || {
        let client = Peer::new(PeerConfig::default()).unwrap();
        client
            .dial(&addr)
            .expect("dial after")
            .pull::<_, String>("/echo", "after")
    });
    assert_eq!(r.expect("pull after").value, "after");
}

/// [`expect_cut_off`] on every stream at once, each on its own thread.
fn all_cut_off(streams: Vec<(TcpStream, &'static str)>) -> Vec<Vec<u8>> {
    let threads: Vec<_> = streams
        .into_iter()
        .map(|(s, what)| std::thread::spawn(move || expect_cut_off(s, what)))
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        .collect()
}

#[test]
fn oversize_length_is_cut_off() {
    let (_server, addr) = server(Duration::from_millis(410), 2);
    let good = well_behaved(&addr);

    // A length prefix asking for 2 GiB.
    let huge = send(&addr, &[0x7f, 0xff, 0xff, 0xf1, b'f', 0]);
    // A real frame one byte over the limit.
    let over = send(&addr, &frame_of_size(READ_LIMIT + 1));
    // A frame exactly at the limit is accepted (as in Go).
    let mut fine = send(&addr, &frame_of_size(READ_LIMIT));

    let got = all_cut_off(vec![(huge, "2 GiB length"), (over, "limit + 1 frame")]);
    assert!(
        got.iter().all(|g| g.is_empty()),
        "the server answered a bad frame"
    );
    assert_logged("frame size 2147483633 exceeds limit 4096");
    assert_logged("frame size 4097 exceeds limit 4096");

    // The frame at the limit got a reply: some bytes, starting with a
    // length prefix.
    fine.set_read_timeout(Some(CUT_OFF)).unwrap();
    let mut head = [0u8; 4];
    fine.read_exact(&mut head)
        .expect("a reply to a frame at the limit");
    assert!(u32::from_be_bytes(head) as usize >= teleport_core::MIN_FRAME);

    finish_good(good);
    still_serves(&addr);
}

#[test]
fn garbage_is_cut_off() {
    for (idle, workers) in [(420, 2), (421, 0)] {
        let (_server, addr) = server(Duration::from_millis(idle), workers);
        let good = well_behaved(&addr);

        // An HTTP request: "GET " read as a length.
        let http = send(&addr, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
        // A plausible length and the wrong protocol id.
        let mut wrong_id = vec![0, 0, 0, 64, 0xab];
        wrong_id.resize(64, 0);
        let wrong_id = send(&addr, &wrong_id);
        // A well-formed prefix whose payload lies about the uri's length.
        let mut lying = vec![0, 0, 0, 30, b'f', 0];
        lying.extend_from_slice(&1u64.to_be_bytes()); // seq
        lying.push(1); // pull
        lying.extend_from_slice(&u32::MAX.to_be_bytes()); // uri length
        lying.resize(30, 0);
        let lying = send(&addr, &lying);
        // A frame of an unknown packet type.
        let unknown = send(&addr, &frame(PacketType(9), "/echo", "x"));
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
        let noise = send(&addr, &noise);

        let got = all_cut_off(vec![
            (http, "http request"),
            (wrong_id, "wrong protocol id"),
            (lying, "lying uri length"),
            (unknown, "unknown packet type"),
            (noise, "noise"),
        ]);
        for g in got {
            assert!(g.is_empty(), "the server answered garbage: {g:?}");
        }
        assert_logged("frame size 1195725856 exceeds limit 4096");
        assert_logged("protocol id 0xab is not 0x66");
        assert_logged("uri needs 4294967295 bytes but only 11 are left in the payload");
        assert_logged("UnknownPacketType(9)");

        finish_good(good);
        still_serves(&addr);
    }
}

#[test]
fn silent_client_is_cut_off_by_the_idle_timeout() {
    let (_server, addr) = server(Duration::from_millis(300), 2);
    let good = well_behaved(&addr);
    let silent = send(&addr, &[]);
    let got = expect_cut_off(silent, "silent client");
    assert!(got.is_empty());
    assert_logged("Idle(300ms)");
    finish_good(good);
    still_serves(&addr);
}

#[test]
fn slow_drip_is_cut_off() {
    let (_server, addr) = server(Duration::from_millis(430), 2);
    let good = well_behaved(&addr);

    // A valid pull of ~240 bytes: dripped whole it would take ~24 s. Each
    // byte resets the idle timer (430 ms), so only a frame timeout stops it.
    let f = frame(PacketType::PULL, "/echo", &"d".repeat(200));
    let s = TcpStream::connect(&addr).unwrap();
    let mut wr = s.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let writer = std::thread::spawn(move || {
        for b in f {
            if stopped.load(Ordering::Relaxed) || wr.write_all(&[b]).is_err() {
                return;
            }
            // The pace of the attack, not a wait for anything.
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    expect_cut_off(s, "a client dripping a frame one byte per 100 ms");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    finish_good(good);
    still_serves(&addr);
}

#[test]
fn all_hostile_clients_at_once() {
    let (_server, addr) = server(Duration::from_millis(250), 2);
    let good = well_behaved(&addr);

    let huge = send(&addr, &[0x7f, 0xff, 0xff, 0xf2, b'f', 0]);
    let mut wrong_id = vec![0, 0, 0, 64, 0xcd];
    wrong_id.resize(64, 0);
    let garbage = send(&addr, &wrong_id);
    let silent = send(&addr, &[]);
    let got = all_cut_off(vec![
        (huge, "oversize"),
        (garbage, "garbage"),
        (silent, "silent"),
    ]);
    assert!(got.iter().all(|g| g.is_empty()));
    assert_logged("frame size 2147483634 exceeds limit 4096");
    assert_logged("protocol id 0xcd is not 0x66");
    assert_logged("Idle(250ms)");

    finish_good(good);
    still_serves(&addr);
}
