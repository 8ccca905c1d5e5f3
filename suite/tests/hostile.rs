//! One hostile suite, run against a `tp-serve` child process on every
//! runtime (tokio, async-std, smol, mio), over TCP and, where the
//! transport matters, over a unix socket. Each test is named
//! `<attack group>_<runtime>[_unix]`, so a failure names the runtime.
//!
//! In every test a well-behaved client (a tokio teleport peer in this
//! process) pulls over its own connection for the whole attack and must
//! see no failure; after the attack a fresh client must still be served;
//! and the server's peak memory (`VmHWM`, reset to `VmRSS` just before the
//! attack) must stay within a bound stated, in each test, in terms of the
//! limits configured for it. The figures are printed (`MEM ...` lines,
//! shown with `--nocapture`).
//!
//! The limits are kept small so the bounds mean something:
//! `read_limit` 1 MiB, `max_queued_bytes` 4 MiB, `frame_timeout` 1 s (and,
//! where an attack is about it, `max_incoming_bytes` 4 MiB,
//! `max_incoming_pulls` 64, an idle timeout of 2.5 s).

mod common;

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use futures_util::StreamExt;
use teleport_core::{CodecId, Packet, PacketType, Proto, Seq, XferId, XferPipe};
use teleport_suite::{raise_nofile_limit, Net, Runtime, Server, ServerOptions};

const READ_LIMIT: u64 = MIB;
const MAX_QUEUED: u64 = 4 * MIB;
const MAX_INCOMING_BYTES: u64 = 4 * MIB;

/// What the allocator, thread stacks touched for the first time and the
/// well-behaved client's traffic may add to a server's resident size on
/// their own, whatever the attack. Every bound below is this plus what the
/// attack may legitimately make the server hold.
const SLACK: u64 = 4 * MIB;

/// What one open, idle connection may cost the server: its session, its
/// socket's registration, its task or slot; never a read buffer (those
/// are per thread) nor a frame.
const PER_CONN: u64 = 16 << 10;

/// The attack config: small limits, a 1 s frame timeout.
fn base_config() -> String {
    format!("read_limit = {READ_LIMIT}\nmax_queued_bytes = {MAX_QUEUED}\nframe_timeout = \"1s\"\n")
}

/// Tests that open thousands of connections share this process's
/// descriptors: the 10,000-connection test runs alone (write lock), the
/// others (about a thousand each at most) side by side (read lock).
fn fd_budget() -> &'static RwLock<()> {
    static L: OnceLock<RwLock<()>> = OnceLock::new();
    L.get_or_init(|| RwLock::new(()))
}

/// A server for one test, its well-behaved client and the baseline.
struct Arena {
    label: String,
    net: Net,
    server: Server,
    good: Option<Good>,
    baseline_kib: u64,
    baseline_fds: usize,
    started: Instant,
}

impl Arena {
    fn new(group: &str, rt: Runtime, net: Net, config: &str) -> Arena {
        Arena::with(group, ServerOptions::new(BIN, rt, net, config))
    }

    fn with(group: &str, opts: ServerOptions) -> Arena {
        let _ = raise_nofile_limit(u64::MAX);
        let (rt, net) = (opts.runtime, opts.net);
        let label = format!("{group} on {rt}/{net}");
        let server =
            Server::start(opts).unwrap_or_else(|e| panic!("{label}: tp-serve did not start: {e}"));
        let good = Good::start(&label, net, server.addr());
        let baseline_fds = server.open_fds().expect("fds");
        let baseline_kib = mem_baseline(&server);
        Arena {
            label,
            net,
            server,
            good: Some(good),
            baseline_kib,
            baseline_fds,
            started: Instant::now(),
        }
    }

    fn addr(&self) -> String {
        self.server.addr().to_string()
    }

    fn raw(&self) -> Raw {
        Raw::open(self.net, self.server.addr())
    }

    /// The peak memory check.
    fn mem(&self, bound: u64, why: &str) {
        assert_mem(&self.server, &self.label, self.baseline_kib, bound, why);
    }

    /// The server logged `needle` at least `n` times.
    fn logged(&self, needle: &str, n: usize) {
        // Logs arrive through a pipe: give the last lines a moment.
        let deadline = Instant::now() + GUARD;
        loop {
            let got = self.server.log_count(needle);
            if got >= n {
                return;
            }
            if Instant::now() > deadline {
                let logs = self.server.logs();
                let lines: Vec<&str> = logs.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                panic!(
                    "{}: {needle:?} logged {got} times, {n} expected; last lines:\n{tail}",
                    self.label
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The end of every attack: the good client saw no failure, a fresh
    /// client is served, and the server holds no more descriptors than
    /// before the attack.
    fn finish(mut self) {
        if let Some(good) = self.good.take() {
            good.finish();
        }
        still_serves(&self.label, self.net, self.server.addr());
        await_fds_at_most(&self.server, self.baseline_fds, &self.label);
        println!("TIME {}: {:?}", self.label, self.started.elapsed());
    }
}

impl Drop for Arena {
    /// A failing test shows what the server logged last.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.server.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            eprintln!(
                "{}: the server's last log lines ({} in all):\n{}",
                self.label,
                lines.len(),
                tail.join("\n")
            );
        }
    }
}

macro_rules! per_runtime {
    ($($group:ident($net:expr) => $($name:ident: $rt:ident),+;)*) => {
        $($(
            #[test]
            fn $name() {
                $group(Runtime::$rt, $net);
            }
        )+)*
    };
}

per_runtime! {
    framing(Net::Tcp) => framing_tokio: Tokio, framing_async_std: AsyncStd, framing_smol: Smol, framing_mio: Mio;
    framing(Net::Unix) => framing_tokio_unix: Tokio, framing_async_std_unix: AsyncStd, framing_smol_unix: Smol, framing_mio_unix: Mio;
    slow_clients(Net::Tcp) => slow_clients_tokio: Tokio, slow_clients_async_std: AsyncStd, slow_clients_smol: Smol, slow_clients_mio: Mio;
    slow_clients(Net::Unix) => slow_clients_tokio_unix: Tokio, slow_clients_async_std_unix: AsyncStd, slow_clients_smol_unix: Smol, slow_clients_mio_unix: Mio;
    idle_connections(Net::Tcp) => idle_connections_tokio: Tokio, idle_connections_async_std: AsyncStd, idle_connections_smol: Smol, idle_connections_mio: Mio;
    half_close(Net::Tcp) => half_close_tokio: Tokio, half_close_async_std: AsyncStd, half_close_smol: Smol, half_close_mio: Mio;
    half_close(Net::Unix) => half_close_tokio_unix: Tokio, half_close_async_std_unix: AsyncStd, half_close_smol_unix: Smol, half_close_mio_unix: Mio;
    gzip(Net::Tcp) => gzip_tokio: Tokio, gzip_async_std: AsyncStd, gzip_smol: Smol, gzip_mio: Mio;
    gzip_inflations(Net::Tcp) => gzip_inflations_tokio: Tokio, gzip_inflations_async_std: AsyncStd, gzip_inflations_smol: Smol, gzip_inflations_mio: Mio;
    unknown_seqs(Net::Tcp) => unknown_seqs_tokio: Tokio, unknown_seqs_async_std: AsyncStd, unknown_seqs_smol: Smol, unknown_seqs_mio: Mio;
    flood(Net::Tcp) => flood_tokio: Tokio, flood_async_std: AsyncStd, flood_smol: Smol, flood_mio: Mio;
    bodies(Net::Tcp) => bodies_tokio: Tokio, bodies_async_std: AsyncStd, bodies_smol: Smol, bodies_mio: Mio;
    huge_meta(Net::Tcp) => huge_meta_tokio: Tokio, huge_meta_async_std: AsyncStd, huge_meta_smol: Smol, huge_meta_mio: Mio;
    large_pulls(Net::Tcp) => large_pulls_tokio: Tokio, large_pulls_async_std: AsyncStd, large_pulls_smol: Smol, large_pulls_mio: Mio;
    resets(Net::Tcp) => resets_tokio: Tokio, resets_async_std: AsyncStd, resets_smol: Smol, resets_mio: Mio;
    churn(Net::Tcp) => churn_tokio: Tokio, churn_async_std: AsyncStd, churn_smol: Smol, churn_mio: Mio;
    churn(Net::Unix) => churn_tokio_unix: Tokio, churn_async_std_unix: AsyncStd, churn_smol_unix: Smol, churn_mio_unix: Mio;
}

/// A frame must arrive whole within a bounded time by default: a peer
/// that drips a frame must not hold a session forever unless the user
/// asked for that.
#[test]
fn the_default_config_has_a_frame_timeout() {
    assert!(
        teleport_peer::PeerConfig::default().frame_timeout.is_some(),
        "PeerConfig::default().frame_timeout is None: a slow drip holds a session forever"
    );
}

/// Pseudo-random bytes (xorshift), the same every run.
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Bad frame prefixes and garbage, each on its own connection at once:
/// size fields 0, 1 and 3 (below the 24-byte minimum), 0xFFFFFFFF, the
/// read limit + 1 (only the prefix sent, and a whole frame of that size),
/// an HTTP request, the wrong protocol id, a uri length past the end, an
/// unknown packet type, noise, filter count 255 in a frame too short for
/// it and with 255 unknown filter ids. Each is cut off at once with
/// nothing sent back, and the typed error is logged. A frame exactly at
/// the read limit is served.
///
/// Bound: two frames of `read_limit` may be buffered at once (the one at
/// the limit, the one over it while it is refused), and the reply to the
/// one at the limit: 3 × read_limit + SLACK.
fn framing(rt: Runtime, net: Net) {
    framing_in(Arena::new("framing", rt, net, &base_config()));
}

/// The same on a mio server that runs its handlers on the poll loop
/// itself (no worker threads): one bad connection must not stall the
/// loop that serves every other.
#[test]
fn framing_mio_inline_handlers() {
    let mut opts = ServerOptions::new(BIN, Runtime::Mio, Net::Tcp, &base_config());
    opts.workers = 0;
    framing_in(Arena::with("framing (handlers on the loop)", opts));
}

fn framing_in(a: Arena) {
    let net = a.net;
    let limit = READ_LIMIT as usize;

    let mut wrong_id = vec![0, 0, 0, 64, 0xab];
    wrong_id.resize(64, 0);
    let mut lying = vec![0, 0, 0, 30, b'f', 0];
    lying.extend_from_slice(&1u64.to_be_bytes()); // seq
    lying.push(PULL);
    lying.extend_from_slice(&u32::MAX.to_be_bytes()); // uri length
    lying.resize(30, 0);
    let mut short_filters = vec![0, 0, 0, 30, b'f', 255];
    short_filters.resize(30, b'g');
    let unknown_filters = frame(
        &[0u8; 255],
        &payload(1, PULL, b"/echo/string", b"", STRING, b"x"),
    );
    let mut over = pull_of_size(1, limit + 1);
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "size 0",
            vec![0, 0, 0, 0],
            "frame size 0 is below the minimum 24".into(),
        ),
        (
            "size 1",
            vec![0, 0, 0, 1],
            "frame size 1 is below the minimum 24".into(),
        ),
        (
            "size 3",
            vec![0, 0, 0, 3, b'f'],
            "frame size 3 is below the minimum 24".into(),
        ),
        (
            "size 0xFFFFFFFF",
            vec![0xff, 0xff, 0xff, 0xff, b'f', 0],
            format!("frame size 4294967295 exceeds limit {limit}"),
        ),
        (
            "limit + 1, prefix only",
            ((limit + 1) as u32)
                .to_be_bytes()
                .into_iter()
                .chain([b'f', 0])
                .collect(),
            format!("frame size {} exceeds limit {limit}", limit + 1),
        ),
        (
            "limit + 1, whole frame",
            std::mem::take(&mut over),
            format!("frame size {} exceeds limit {limit}", limit + 1),
        ),
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec(),
            format!("frame size 1195725856 exceeds limit {limit}"),
        ),
        (
            "wrong protocol id",
            wrong_id,
            "protocol id 0xab is not 0x66".into(),
        ),
        (
            "uri length past the end",
            lying,
            "uri needs 4294967295 bytes but only 11 are left in the payload".into(),
        ),
        (
            "unknown packet type",
            frame(&[], &payload(1, 9, b"/echo/string", b"", STRING, b"x")),
            "UnknownPacketType(9)".into(),
        ),
        ("noise", noise(512, 0x2545_f491_4f6c_dd1d), String::new()),
        (
            "255 filters, frame too short",
            short_filters,
            "frame size 30 is below the minimum 279".into(),
        ),
        (
            "255 unknown filters",
            unknown_filters,
            "unsupported transfer filter id: 0".into(),
        ),
    ];
    let addr = a.addr();
    let mut at_limit = a.raw();
    at_limit.send(&pull_of_size(77, limit));
    let cut: Vec<_> = cases
        .iter()
        .map(|(what, bytes, _)| {
            let mut s = Raw::open(net, &addr);
            s.send(bytes);
            (s, *what)
        })
        .collect();
    for (s, what) in cut {
        expect_cut_off(s, &format!("{}: {what}", a.label));
    }
    for (_, _, needle) in &cases {
        if !needle.is_empty() {
            let n = cases.iter().filter(|c| &c.2 == needle).count();
            a.logged(needle, n);
        }
    }
    // The frame exactly at the limit is answered, whole.
    let mut buf = BytesMut::new();
    let reply = read_packet(&mut at_limit, &mut buf, &a.label);
    assert_eq!(reply.seq, Seq(77), "{}", a.label);
    assert!(reply_error(&reply).is_none(), "{}: {reply:?}", a.label);
    assert_eq!(
        reply.body.len(),
        limit - pull(0, "/echo/string", b"").len(),
        "{}",
        a.label
    );
    drop(at_limit);
    a.mem(
        3 * READ_LIMIT + SLACK,
        "3 x read_limit (a frame at the limit, its reply, one over it) + slack",
    );
    a.finish();
}

/// Slow and silent clients, over a server with a 1 s frame timeout and a
/// 2.5 s idle timeout (well apart, so a late timer cannot make one look
/// like the other): a valid pull dripped one byte per 100 ms (each byte
/// feeds the idle timer, so only the frame timeout stops it, long before
/// the 24 s the whole frame would take), 1,000 connections that send 3
/// bytes of a length prefix and nothing more (cut by the frame timeout),
/// and one that sends nothing (cut by the idle timeout).
///
/// Bound: 1,002 open connections, none holding more than a few bytes:
/// 1,002 × PER_CONN + SLACK.
fn slow_clients(rt: Runtime, net: Net) {
    let _fds = fd_budget().read().unwrap_or_else(|e| e.into_inner());
    let config = format!(
        "{}default_session_idle_timeout = \"2500ms\"\n",
        base_config()
    );
    let a = Arena::new("slow clients", rt, net, &config);
    let addr = a.addr();

    // The drip, on a thread of its own.
    let drip_frame = pull(1, "/echo/string", &[b'd'; 200]);
    let total = drip_frame.len();
    let mut drip = a.raw();
    let mut writer = match &drip {
        Raw::Tcp(s) => Raw::Tcp(s.try_clone().expect("clone")),
        Raw::Unix(s) => Raw::Unix(s.try_clone().expect("clone")),
    };
    let dripper = std::thread::spawn(move || {
        let mut sent = 0;
        for b in drip_frame {
            if writer.write_all(&[b]).is_err() {
                break;
            }
            sent += 1;
            // The pace of the attack, not a wait for anything.
            std::thread::sleep(Duration::from_millis(100));
        }
        sent
    });

    let stalled: Vec<Raw> = (0..1000)
        .map(|_| {
            let mut s = Raw::open(net, &addr);
            s.send(&[0, 0, 1]);
            s
        })
        .collect();
    let silent = a.raw();
    for (i, s) in stalled.into_iter().enumerate() {
        expect_cut_off(s, &format!("{}: stalled connection {i}", a.label));
    }
    expect_cut_off(silent, &format!("{}: silent connection", a.label));
    let (got, _) = read_to_close(&mut drip, &format!("{}: drip", a.label));
    assert!(
        got.is_empty(),
        "{}: the dripped frame was answered",
        a.label
    );
    let sent = dripper.join().expect("dripper");
    assert!(
        sent < total,
        "{}: the server took the whole dripped frame ({sent} bytes)",
        a.label
    );
    a.logged("FrameTimeout(1s)", 1001);
    a.logged("Idle(2.5s)", 1);
    a.mem(
        1002 * PER_CONN + SLACK,
        "1,002 connections x PER_CONN + slack",
    );
    a.finish();
}

/// 10,000 idle connections at once (the descriptor limits of this process
/// and of the server are raised first; where that is not possible the
/// attack is skipped and says why). While they are open the server still
/// serves; once they close it is back to its descriptors of before.
///
/// Bound: 10,000 × PER_CONN + SLACK.
fn idle_connections(rt: Runtime, net: Net) {
    const N: usize = 10_000;
    let _fds = fd_budget().write().unwrap_or_else(|e| e.into_inner());
    let ours = raise_nofile_limit(u64::MAX).unwrap_or(0);
    if ours < (N + 1000) as u64 {
        println!(
            "SKIPPED idle_connections on {rt}: this process may open only {ours} descriptors \
             (hard limit), {} needed",
            N + 1000
        );
        return;
    }
    let a = Arena::new("idle connections", rt, net, &base_config());
    let theirs = a.server.nofile_limit().unwrap_or(0);
    if theirs < (N + 200) as u64 {
        println!(
            "SKIPPED idle_connections on {rt}: the server may open only {theirs} descriptors, \
             {} needed",
            N + 200
        );
        return;
    }
    let addr = a.addr();
    let conns: Vec<Raw> = (0..N).map(|_| Raw::open(net, &addr)).collect();
    await_fds_at_least(&a.server, a.baseline_fds + N, &a.label);
    still_serves(&a.label, net, &addr);
    a.mem(
        N as u64 * PER_CONN + SLACK,
        "10,000 connections x PER_CONN + slack",
    );
    drop(conns);
    a.finish();
}

/// A client writes a pull to a 200 ms route and one to a fast route, then
/// shuts down its write side: it must get both replies, then end of
/// stream (not a reset).
///
/// Bound: SLACK (nothing is held).
fn half_close(rt: Runtime, net: Net) {
    let a = Arena::new("half close", rt, net, &base_config());
    for round in 0..3 {
        let mut s = a.raw();
        s.send(&pull(1, "/slow?ms=200", b""));
        s.send(&pull(2, "/echo/string", b"fast"));
        s.shutdown_write();
        let what = format!("{} (round {round})", a.label);
        let (bytes, ending) = read_to_close(&mut s, &what);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut p = proto();
        let mut replies = Vec::new();
        while let Some(r) = p
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: bad frame from the server: {e}"))
        {
            replies.push(r);
        }
        let summary: Vec<_> = replies
            .iter()
            .map(|r| {
                (
                    r.seq.0,
                    reply_error(r).map(|e| e.to_string()),
                    r.body.clone(),
                )
            })
            .collect();
        let body = |seq| {
            replies
                .iter()
                .find(|r| r.seq == Seq(seq) && r.ptype == PacketType::REPLY)
                .filter(|r| reply_error(r).is_none())
                .map(|r| r.body.clone())
        };
        assert_eq!(
            (body(1), body(2)),
            (
                Some(Bytes::from_static(b"slept 200 ms, 0 bytes")),
                Some(Bytes::from_static(b"fast"))
            ),
            "{what}: both replies must arrive after the half-close; got {summary:?}"
        );
        assert!(buf.is_empty(), "{what}: a partial frame after the replies");
        assert_eq!(ending, Ending::Eof, "{what}: the replies must end with EOF");
    }
    a.mem(SLACK, "slack");
    a.finish();
}

/// A pull of `body` to `/echo/string` behind `layers` gzip filters (each
/// layer gzips the one inside it).
fn gzip_frame(seq: u64, layers: usize, body: Bytes) -> Vec<u8> {
    let mut p =
        Packet::new(PacketType::PULL, Seq(seq), "/echo/string").with_body(CodecId::STRING, body);
    p.xfer = XferPipe::from_ids(&vec![XferId::GZIP; layers]);
    encode(&p)
}

/// The gzip bombs, made once: bodies of 4 × read_limit zeros and of
/// zeros just over the limit (read_limit + 1 KiB), each gzipped once and
/// three times over.
fn bombs() -> &'static [Vec<u8>; 4] {
    static B: OnceLock<[Vec<u8>; 4]> = OnceLock::new();
    B.get_or_init(|| {
        let big = Bytes::from(vec![0u8; 4 * READ_LIMIT as usize]);
        let over = Bytes::from(vec![0u8; READ_LIMIT as usize + 1024]);
        [
            gzip_frame(1, 1, big.clone()),
            gzip_frame(1, 3, big),
            gzip_frame(1, 1, over.clone()),
            gzip_frame(1, 3, over),
        ]
    })
}

/// How many frames the server inflates away from its sockets at once
/// (its decode slots: one per CPU, and the child sees the CPUs we see).
fn decode_slots() -> u64 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u64)
}

/// Gzip: forty bombs at once, each on its own connection, while the good
/// client pulls: payloads that inflate to 4 × read_limit or to just over
/// it from frames of a few KiB, once or behind three nested gzip filters
/// (`g,g,g`); each is cut off at the limit (the filter's over-limit error
/// logged). And a valid `g,g,g` pull of 100 KiB, answered through the
/// same three filters.
///
/// Bound: large inflations run only in the server's decode slots (one per
/// CPU), each holding its frame, one layer's output up to the limit and
/// the next layer's (3 × read_limit); the threads that drive sockets try
/// each frame in place first, within a budget of a quarter of this limit
/// (input and output: under read_limit for both threads): (3 × slots + 1)
/// × read_limit + SLACK, whatever the number of bombs.
fn gzip(rt: Runtime, net: Net) {
    let a = Arena::new("gzip", rt, net, &base_config());
    let bombs = bombs();
    assert!(bombs.iter().all(|b| b.len() < READ_LIMIT as usize / 16));

    let body = Bytes::from(
        noise(100 << 10, 7)
            .iter()
            .map(|b| b'a' + b % 26)
            .collect::<Vec<u8>>(),
    );
    let mut ok = a.raw();
    ok.send(&gzip_frame(5, 3, body.clone()));
    let mut buf = BytesMut::new();
    let reply = read_packet(&mut ok, &mut buf, &a.label);
    assert_eq!(reply.seq, Seq(5), "{}", a.label);
    assert!(reply_error(&reply).is_none(), "{}: {reply:?}", a.label);
    assert_eq!(reply.body, body, "{}: the g,g,g echo", a.label);
    assert_eq!(
        reply.xfer.iter().collect::<Vec<_>>(),
        vec![XferId::GZIP; 3],
        "{}: the reply keeps the pull's filters",
        a.label
    );

    let conns: Vec<Raw> = (0..40)
        .map(|i| {
            let mut s = a.raw();
            s.send(&bombs[i % 4]);
            s
        })
        .collect();
    for (i, s) in conns.into_iter().enumerate() {
        expect_cut_off(s, &format!("{}: bomb {i}", a.label));
    }
    a.logged(&format!("output exceeds limit {READ_LIMIT}"), 40);
    a.mem(
        (3 * decode_slots() + 1) * READ_LIMIT + SLACK,
        "(3 x decode slots + 1) x read_limit + slack",
    );
    a.finish();
}

/// Twenty gzip pulls of a few KiB that each inflate to just under the
/// read limit (1 MiB − 1 KiB of zeros), to a 20 ms route, ten in flight on
/// each of two connections, under max_incoming_bytes of 4 MiB: every pull
/// is answered with its inflated size, and what the server holds is
/// bounded by the inflated bytes it admits, not by what was sent.
///
/// Bound: per session, the pulls admitted (max_incoming_bytes, counted
/// inflated, plus the last one admitted, up to read_limit) and one frame
/// being inflated (its input and output, 2 × read_limit): 2 ×
/// (max_incoming_bytes + 3 × read_limit) + SLACK.
fn gzip_inflations(rt: Runtime, net: Net) {
    let config = format!(
        "{}max_incoming_bytes = {MAX_INCOMING_BYTES}\n",
        base_config()
    );
    let a = Arena::new("gzip inflations", rt, net, &config);
    let body = Bytes::from(vec![0u8; READ_LIMIT as usize - 1024]);
    let expect = format!("slept 20 ms, {} bytes", body.len());
    let peer = teleport_tokio::Peer::new(client_config(net)).expect("client");
    let addr = a.addr();
    let results: Vec<Result<Bytes, String>> = rt_block(&a.label, async {
        let sessions: Vec<_> = futures_util::future::join_all((0..2).map(|_| peer.dial(&addr)))
            .await
            .into_iter()
            .map(|s| s.unwrap_or_else(|e| panic!("{}: dial: {e}", a.label)))
            .collect();
        let calls = (0..20).map(|i| {
            let (s, body) = (&sessions[i % 2], body.clone());
            async move {
                s.call("/slow?ms=20")
                    .xfer(XferId::GZIP)
                    .pull_raw(CodecId::STRING, body)
                    .await
                    .map(|p| p.body)
                    .map_err(|e| e.to_string())
            }
        });
        let results = futures_util::future::join_all(calls).await;
        for s in &sessions {
            s.close().await;
        }
        results
    });
    for (i, r) in results.iter().enumerate() {
        assert!(
            matches!(r, Ok(b) if b == expect.as_bytes()),
            "{}: pull {i}: {r:?}",
            a.label
        );
    }
    a.mem(
        2 * (MAX_INCOMING_BYTES + 3 * READ_LIMIT) + SLACK,
        "2 sessions x (max_incoming_bytes + 3 x read_limit) + slack",
    );
    a.finish();
}

/// 20,000 replies whose seqs match no pull, then a pull on the same
/// connection: the replies are dropped (logged), the connection stays
/// open and the pull is answered.
///
/// Bound: nothing accumulates: one read's worth of frames is decoded at a
/// time: read_limit + SLACK.
fn unknown_seqs(rt: Runtime, net: Net) {
    let a = Arena::new("unknown seqs", rt, net, &base_config());
    let mut s = a.raw();
    let mut batch = Vec::new();
    for i in 0..20_000u64 {
        batch.extend_from_slice(&frame(
            &[],
            &payload(1_000_000 + i, REPLY, b"/echo/string", b"", STRING, b"x"),
        ));
    }
    batch.extend_from_slice(&pull(7, "/echo/string", b"still open"));
    s.send(&batch);
    let mut buf = BytesMut::new();
    let reply = read_packet(&mut s, &mut buf, &a.label);
    assert_eq!(
        (reply.seq, reply_error(&reply), &reply.body[..]),
        (Seq(7), None, &b"still open"[..]),
        "{}",
        a.label
    );
    a.logged("reply matches no pending pull", 1);
    a.mem(READ_LIMIT + SLACK, "read_limit + slack");
    a.finish();
}

/// A pull flood that never reads its replies: 4 KiB pulls written until
/// the writes block for a second (the server stopped reading: its queue
/// of replies is full), or 16 × max_queued_bytes were written (the server
/// kept reading: a failure). Then the flooder closes.
///
/// This server queues at most 16 MiB (max_queued_bytes) and handles at
/// most 64 pulls at once (max_incoming_pulls): a queue well above SLACK,
/// so that the bound tells one queue from two.
///
/// Bound: the replies queued for writing, in whatever buffers the session
/// keeps them, max_queued_bytes; the pulls being handled and their
/// replies, 64 × 2 × 4 KiB; one read's worth of frames and a partial
/// frame, 2 × read_limit: max_queued_bytes + 128 × 4 KiB + 2 × read_limit
/// + SLACK.
fn flood(rt: Runtime, net: Net) {
    const QUEUE: u64 = 16 * MIB;
    let config = base_config().replace(
        &format!("max_queued_bytes = {MAX_QUEUED}"),
        &format!("max_queued_bytes = {QUEUE}\nmax_incoming_pulls = 64"),
    );
    assert!(config.contains("max_incoming_pulls"));
    let a = Arena::new("flood", rt, net, &config);
    let mut s = a.raw();
    s.set_write_timeout(Some(Duration::from_secs(1)));
    let body = vec![b'f'; 4096];
    let cap = 16 * QUEUE;
    let mut written = 0u64;
    let mut seq = 0u64;
    let blocked = loop {
        let mut batch = Vec::with_capacity(64 * 4200);
        for _ in 0..64 {
            seq += 1;
            batch.extend_from_slice(&pull(seq, "/echo/string", &body));
        }
        match s.write_all(&batch) {
            Ok(()) => written += batch.len() as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break true
            }
            Err(e) => panic!("{}: the flood's connection failed: {e}", a.label),
        }
        if written >= cap {
            break false;
        }
    };
    assert!(
        blocked,
        "{}: the server read {written} bytes of pulls whose replies were never read",
        a.label
    );
    a.mem(
        QUEUE + 128 * 4096 + 2 * READ_LIMIT + SLACK,
        "max_queued_bytes + 128 x 4 KiB + 2 x read_limit + slack",
    );
    drop(s);
    a.finish();
}

/// Bodies and headers a codec or the router must refuse without harm, all
/// on one connection that must stay open: JSON nested 100,000 deep (arrays
/// and objects) to a JSON route, bogus protobuf varints (an overlong one,
/// a length of 2^63, a truncated one), a string body that is not UTF-8
/// (each answered 400), a URI path that is not UTF-8 (404), bytes that
/// are not UTF-8 in a URI query and in meta (served), a push to no route
/// and a push whose body does not decode (dropped, logged).
///
/// Bound: the largest body is 200 KB: read_limit + SLACK.
fn bodies(rt: Runtime, net: Net) {
    let a = Arena::new("bodies", rt, net, &base_config());
    let mut s = a.raw();
    let deep_arrays = [vec![b'['; 100_000], vec![b']'; 100_000]].concat();
    let deep_objects = [
        b"{\"a\":".repeat(100_000),
        b"1".to_vec(),
        vec![b'}'; 100_000],
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>, Option<i32>)> = vec![
        (
            "JSON arrays 100,000 deep",
            frame(
                &[],
                &payload(1, PULL, b"/echo/json", b"", JSON, &deep_arrays),
            ),
            Some(400),
        ),
        (
            "JSON objects 100,000 deep",
            frame(
                &[],
                &payload(2, PULL, b"/echo/json", b"", JSON, &deep_objects),
            ),
            Some(400),
        ),
        (
            "overlong varint",
            frame(
                &[],
                &payload(
                    3,
                    PULL,
                    b"/echo/proto",
                    b"",
                    PROTOBUF,
                    &[&[0x18u8][..], &[0xff; 11]].concat(),
                ),
            ),
            Some(400),
        ),
        (
            "length 2^63",
            frame(
                &[],
                &payload(
                    4,
                    PULL,
                    b"/echo/proto",
                    b"",
                    PROTOBUF,
                    &[
                        0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 1, 2, 3,
                    ],
                ),
            ),
            Some(400),
        ),
        (
            "truncated varint",
            frame(
                &[],
                &payload(5, PULL, b"/echo/proto", b"", PROTOBUF, &[0x18, 0x80]),
            ),
            Some(400),
        ),
        (
            "string body not UTF-8",
            pull(6, "/echo/string", b"\xff\xfe\xfd"),
            Some(400),
        ),
        (
            "URI path not UTF-8",
            frame(
                &[],
                &payload(7, PULL, b"/echo/string\xff\xfe", b"", STRING, b"x"),
            ),
            Some(404),
        ),
        (
            "URI query not UTF-8",
            frame(
                &[],
                &payload(8, PULL, b"/echo/string?q=\xff\xfe", b"", STRING, b"q"),
            ),
            None,
        ),
        (
            "meta not UTF-8",
            frame(
                &[],
                &payload(
                    9,
                    PULL,
                    b"/echo/string",
                    b"k=\xff\xfe&\xc3\x28=%FF",
                    STRING,
                    b"m",
                ),
            ),
            None,
        ),
    ];
    let mut buf = BytesMut::new();
    for (i, (what, bytes, code)) in cases.iter().enumerate() {
        let what = format!("{}: {what}", a.label);
        s.send(bytes);
        let reply = read_packet(&mut s, &mut buf, &what);
        assert_eq!(reply.seq, Seq(i as u64 + 1), "{what}");
        assert_eq!(
            reply_error(&reply).map(|e| e.code),
            *code,
            "{what}: {:?}",
            reply_error(&reply)
        );
    }
    // Pushes answer nothing: one to a path with no route, one whose JSON
    // body does not decode. Both are dropped and logged.
    s.send(&frame(
        &[],
        &payload(50, PUSH, b"/nowhere", b"", STRING, b"p"),
    ));
    s.send(&frame(&[], &payload(51, PUSH, b"/sink", b"", JSON, b"{{{")));
    s.send(&pull(99, "/echo/string", b"after"));
    let reply = read_packet(&mut s, &mut buf, &a.label);
    assert_eq!(
        (reply.seq, &reply.body[..]),
        (Seq(99), &b"after"[..]),
        "{}",
        a.label
    );
    a.logged("push dropped", 1);
    a.logged("push body does not decode", 1);
    a.mem(READ_LIMIT + SLACK, "read_limit + slack");
    a.finish();
}

/// Frames just under the read limit whose meta is `a&` repeated (about
/// half a million one-byte keys each), on four connections at once: each
/// is refused (`TooManyMetaPairs`, the connection closed without a reply)
/// before a single pair is built. Then, on four more, two frames each with
/// meta at the pair cap (`Meta::MAX_PAIRS` pairs of long keys, just under
/// the read limit): all answered.
///
/// The frame timeout is 10 s here: the attack is about memory, and a
/// server busy decoding four such frames must not make the test depend on
/// how fast it reads the others.
///
/// Bound: per connection, the frame in the input buffer (which grows by
/// doubling: 2 × read_limit), its own copy once whole (read_limit), and
/// the decoded meta (at most 2 × its length: 2 × read_limit):
/// 4 × 5 × read_limit + SLACK.
fn huge_meta(rt: Runtime, net: Net) {
    let config = base_config().replace("frame_timeout = \"1s\"", "frame_timeout = \"10s\"");
    let a = Arena::new("huge meta", rt, net, &config);
    let limit = READ_LIMIT as usize;
    let base = frame(&[], &payload(0, PULL, b"/echo/string", b"", STRING, b"m")).len();
    let tiny_pairs = b"a&".repeat((limit - base) / 2);
    let results = on_threads(4, {
        let addr = a.addr();
        let label = a.label.clone();
        let meta = tiny_pairs.clone();
        move |t| {
            let mut s = Raw::open(net, &addr);
            let f = frame(&[], &payload(0, PULL, b"/echo/string", &meta, STRING, b"m"));
            assert!(f.len() <= limit);
            s.send(&f);
            let (got, _) = read_to_close(&mut s, &format!("{label}: conn {t}"));
            if !got.is_empty() {
                return Err(format!(
                    "conn {t}: {} bytes of reply to a refused frame",
                    got.len()
                ));
            }
            Ok(())
        }
    });
    for r in results {
        r.unwrap_or_else(|e| panic!("{}: {e}", a.label));
    }
    a.logged("TooManyMetaPairs", 4);
    // At the cap: 4096 pairs of keys long enough to fill the frame.
    let cap = teleport_core::Meta::MAX_PAIRS;
    let key_len = (limit - base) / cap - 2;
    let key = "k".repeat(key_len);
    let at_cap: Vec<u8> = (0..cap)
        .map(|_| format!("{key}&"))
        .collect::<String>()
        .into_bytes();
    let results = on_threads(4, {
        let addr = a.addr();
        let label = a.label.clone();
        move |t| {
            let mut s = Raw::open(net, &addr);
            let mut buf = BytesMut::new();
            for i in 0..2u64 {
                let f = frame(
                    &[],
                    &payload(i, PULL, b"/echo/string", &at_cap, STRING, b"m"),
                );
                assert!(f.len() <= limit);
                s.send(&f);
                let r = read_packet(&mut s, &mut buf, &format!("{label}: conn {t}"));
                if (r.seq, reply_error(&r), &r.body[..]) != (Seq(i), None, &b"m"[..]) {
                    return Err(format!("conn {t} pull {i}: {r:?}"));
                }
            }
            Ok(())
        }
    });
    for r in results {
        r.unwrap_or_else(|e| panic!("{}: {e}", a.label));
    }
    a.mem(
        20 * READ_LIMIT + SLACK,
        "4 connections x 5 x read_limit + slack",
    );
    a.finish();
}

/// 1,000 pulls of 512 KiB to a 10 ms route over four connections, 32 in
/// flight on each, under a 1 MiB read limit and max_incoming_bytes 4 MiB:
/// every pull is answered and the server holds at most max_incoming_bytes
/// of pulls per session at a time (the rest waits in the sockets).
///
/// Bound: per session, the pulls being handled (max_incoming_bytes, plus
/// the one admitted last, up to read_limit) and the input buffer, which
/// grows by doubling while a frame arrives (up to 2 × read_limit):
/// 4 × (max_incoming_bytes + 3 × read_limit) + SLACK.
fn large_pulls(rt: Runtime, net: Net) {
    let config = format!(
        "{}max_incoming_bytes = {MAX_INCOMING_BYTES}\n",
        base_config()
    );
    let a = Arena::new("large pulls", rt, net, &config);
    let body = Bytes::from(vec![b'L'; 512 << 10]);
    let expect = format!("slept 10 ms, {} bytes", body.len());
    let failures = Arc::new(AtomicUsize::new(0));
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let peer = teleport_tokio::Peer::new(client_config(net)).expect("client");
    let addr = a.addr();
    rt_block(&a.label, async {
        let sessions: Vec<_> = futures_util::future::join_all((0..4).map(|_| peer.dial(&addr)))
            .await
            .into_iter()
            .map(|s| s.unwrap_or_else(|e| panic!("{}: dial: {e}", a.label)))
            .collect();
        futures_util::future::join_all(sessions.iter().map(|s| {
            let (body, expect) = (body.clone(), expect.clone());
            let (failures, first) = (failures.clone(), first_failure.clone());
            futures_util::stream::iter(0..250)
                .map(move |_| {
                    let body = body.clone();
                    async move { s.call("/slow?ms=10").pull_raw(CodecId::STRING, body).await }
                })
                .buffer_unordered(32)
                .for_each(move |r| {
                    let ok = matches!(&r, Ok(p) if p.body == expect.as_bytes());
                    if !ok {
                        failures.fetch_add(1, Ordering::SeqCst);
                        first
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(|| format!("{:?}", r.map(|p| p.body)));
                    }
                    async {}
                })
        }))
        .await;
        for s in &sessions {
            s.close().await;
        }
    });
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "{}: large pulls failed, the first: {:?}",
        a.label,
        first_failure.lock().unwrap_or_else(|e| e.into_inner())
    );
    a.mem(
        4 * (MAX_INCOMING_BYTES + 3 * READ_LIMIT) + SLACK,
        "4 sessions x (max_incoming_bytes + 3 x read_limit) + slack",
    );
    a.finish();
}

/// Runs `f` on the test runtime with a hang guard.
fn rt_block<F: std::future::Future>(label: &str, f: F) -> F::Output {
    rt().block_on(guard(label, f))
}

/// Resets: 100 connections reset (`SO_LINGER` 0, then close) in the
/// middle of a frame, and 100 reset right after a pull to a 100 ms route
/// (its reply then has nowhere to go). The server must drop them all and
/// go back to its descriptors of before.
///
/// Bound: 200 × PER_CONN + SLACK.
fn resets(rt: Runtime, net: Net) {
    let _fds = fd_budget().read().unwrap_or_else(|e| e.into_inner());
    let a = Arena::new("resets", rt, net, &base_config());
    let half = {
        let f = pull(1, "/echo/string", &[b'r'; 300]);
        f[..f.len() / 2].to_vec()
    };
    let conns: Vec<Raw> = (0..200)
        .map(|i| {
            let mut s = a.raw();
            if i % 2 == 0 {
                s.send(&half);
            } else {
                s.send(&pull(1, "/slow?ms=100", b""));
            }
            s
        })
        .collect();
    for s in conns {
        s.reset();
    }
    a.mem(200 * PER_CONN + SLACK, "200 connections x PER_CONN + slack");
    a.finish();
}

/// 5,000 connections opened and closed at once (four threads), some after
/// a pull. Afterwards the server holds the descriptors it held before.
///
/// Bound: the server may lag behind the closes: 5,000 × PER_CONN + SLACK.
fn churn(rt: Runtime, net: Net) {
    let _fds = fd_budget().read().unwrap_or_else(|e| e.into_inner());
    let a = Arena::new("churn", rt, net, &base_config());
    let addr = a.addr();
    let failures = on_threads(4, move |t| {
        let mut failed = 0;
        for i in 0..1250 {
            match Raw::connect(net, &addr) {
                Ok(mut s) => {
                    if i % 10 == 0 {
                        s.send(&pull(1, "/echo/string", b"c"));
                    }
                    drop(s);
                }
                Err(e) => {
                    failed += 1;
                    if failed == 1 {
                        eprintln!("churn thread {t}: connect failed: {e}");
                    }
                }
            }
        }
        failed
    });
    assert_eq!(
        failures.iter().sum::<usize>(),
        0,
        "{}: connects failed",
        a.label
    );
    a.mem(
        5000 * PER_CONN + SLACK,
        "5,000 connections x PER_CONN + slack",
    );
    a.finish();
}
