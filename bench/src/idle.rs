//! `teleport-bench idle`: the memory scenario. Opens `--sessions` TCP
//! connections to a server on loopback and keeps them idle, and reads the
//! server's resident memory (VmRSS, /proc/PID/status):
//!
//! 1. before any connection;
//! 2. once the server holds a socket for every connection (counted in
//!    /proc/PID/fd) and has settled (2 s): sessions that never called;
//! 3. after one call on every connection (the seed's message, answered),
//!    settled again: sessions that called once and went idle.
//!
//! Prints `MEMORY system=S sessions=N ... per_session_connected_b=..
//! per_session_after_call_b=..` (bytes of RSS per session); exits 0 when
//! every connection was held and every call answered OK.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message;
use teleport_core::{FastProto, PacketType, Proto, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::args::Args;
use crate::procfs::{open_fds, rss_kib};
use crate::systems::{floor_frame, socket_pull};
use crate::{reply_ok, BenchmarkMessage, ROUTE};

/// Dials (and calls) in flight at once. After each batch of dials the
/// server is given time to accept them all before the next, so its accept
/// queue never holds more than this: under every listener's backlog (128
/// for a listener bound through std), so no SYN is dropped and no dial
/// waits for a retransmission. This scenario measures memory, not dialing.
const BATCH: usize = 64;

/// How long memory is left to settle before it is read.
const SETTLE: Duration = Duration::from_secs(2);

/// One call on an idle connection, in the server's framing.
async fn call_once(s: &mut TcpStream, floor: bool, msg: &BenchmarkMessage) -> io::Result<bool> {
    let bad = |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    if floor {
        let mut buf = Vec::new();
        floor_frame(msg, &mut buf);
        s.write_all(&buf).await?;
        let len = s.read_u32().await? as usize;
        buf.resize(len, 0);
        s.read_exact(&mut buf).await?;
        let r = BenchmarkMessage::decode(&buf[..]).map_err(|e| bad(&e))?;
        return Ok(reply_ok(&r));
    }
    let mut proto = FastProto::default();
    let uri = Uri::from_bytes(Bytes::from_static(ROUTE.as_bytes()));
    let mut out = BytesMut::new();
    proto
        .encode(&socket_pull(&uri, 1, msg), &mut out)
        .map_err(|e| bad(&e))?;
    s.write_all(&out).await?;
    let mut inb = BytesMut::with_capacity(2048);
    loop {
        if let Some(p) = proto.decode(&mut inb).map_err(|e| bad(&e))? {
            if p.ptype != PacketType::REPLY {
                return Ok(false);
            }
            let r = BenchmarkMessage::decode(p.body).map_err(|e| bad(&e))?;
            return Ok(reply_ok(&r));
        }
        if s.read_buf(&mut inb).await? == 0 {
            return Ok(false);
        }
    }
}

/// Waits (up to `limit`) until server `pid` holds `want` more descriptors
/// than `fd0`; returns how many more it holds.
async fn wait_held(pid: u32, fd0: usize, want: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let held = open_fds(pid).unwrap_or(0).saturating_sub(fd0);
        if held >= want || Instant::now() >= deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn run(a: &Args) -> i32 {
    crate::watchdog("idle", a.max_secs.unwrap_or(300), 3);
    let Some(pid) = a.server_pid else {
        eprintln!("idle: --server-pid is required");
        return 2;
    };
    let n = a.sessions;
    let floor = a.system == "floor";
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async move {
        let rss0 = rss_kib(pid).unwrap_or(0);
        let fd0 = open_fds(pid).unwrap_or(0);

        // Connect, BATCH at a time.
        let t = Instant::now();
        let mut conns: Vec<TcpStream> = Vec::with_capacity(n);
        let mut refused = 0usize;
        while conns.len() + refused < n {
            let mut set = JoinSet::new();
            for _ in 0..BATCH.min(n - conns.len() - refused) {
                let addr = a.addr.clone();
                set.spawn(async move {
                    let s = TcpStream::connect(&addr).await?;
                    s.set_nodelay(true)?;
                    Ok::<_, io::Error>(s)
                });
            }
            while let Some(r) = set.join_next().await {
                match r.expect("connect task") {
                    Ok(s) => conns.push(s),
                    Err(e) => {
                        if refused == 0 {
                            eprintln!("idle: connect: {e}");
                        }
                        refused += 1;
                    }
                }
            }
            wait_held(pid, fd0, conns.len(), Duration::from_secs(2)).await;
        }
        // Wait until the server holds every one.
        let held = wait_held(pid, fd0, conns.len(), Duration::from_secs(60)).await;
        let connected_in = t.elapsed();
        tokio::time::sleep(SETTLE).await;
        let rss1 = rss_kib(pid).unwrap_or(0);

        // One call on each, BATCH at a time; the connections come back.
        let msg = Arc::new(BenchmarkMessage::filled());
        let mut ok = 0usize;
        let mut all = Vec::with_capacity(conns.len());
        while !conns.is_empty() {
            let mut set = JoinSet::new();
            let cut = conns.len().saturating_sub(BATCH);
            for mut s in conns.drain(cut..) {
                let msg = msg.clone();
                set.spawn(async move {
                    let good = call_once(&mut s, floor, &msg).await.unwrap_or(false);
                    (s, good)
                });
            }
            while let Some(r) = set.join_next().await {
                let (s, good) = r.expect("call task");
                ok += usize::from(good);
                all.push(s);
            }
        }
        tokio::time::sleep(SETTLE).await;
        let rss2 = rss_kib(pid).unwrap_or(0);

        let per = |rss: u64| (rss.saturating_sub(rss0) * 1024) as f64 / all.len().max(1) as f64;
        println!(
            "{}: {} sessions held by the server (connected in {:.1} s); RSS {} KiB before, {} KiB connected, {} KiB after one call each ({ok} OK)",
            a.system,
            held.min(all.len()),
            connected_in.as_secs_f64(),
            rss0,
            rss1,
            rss2
        );
        println!(
            "MEMORY system={} sessions={} held={} refused={refused} calls_ok={ok} rss_before_kib={rss0} rss_connected_kib={rss1} rss_after_call_kib={rss2} per_session_connected_b={:.0} per_session_after_call_b={:.0}",
            a.system,
            all.len(),
            held.min(all.len()),
            per(rss1),
            per(rss2)
        );
        let good = refused == 0 && held >= all.len() && ok == all.len();
        drop(all);
        if good {
            0
        } else {
            4
        }
    })
}
