//! The quick end-to-end bench: the seed's workload (a 581-byte protobuf
//! `BenchmarkMessage`; the server sets field1 and field2 and replies), `c`
//! clients each on its own connection making sequential pulls, `n` calls
//! in all. Each system's server runs as a child process, as in the seed.
//!
//! Systems: `floor` (raw tokio, 4-byte length prefix, same message, no RPC
//! layer), and teleport on `tokio`, `async-std`, `smol` and `mio` (route
//! `/bench/say`, protobuf codec; client and server on the same runtime).
//! Compare them only within one run.
//!
//! ```text
//! cargo run --release --example bench -- [-c 100] [-n 20000] [--system all|floor|tokio|async-std|smol|mio]
//! ```

#[path = "../core/benches/support/bench_message.rs"]
#[allow(dead_code)]
mod bench_message;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_message::BenchmarkMessage;
use prost::Message;
use teleport::{CodecId, Protobuf, Rerror};
use teleport_peer::{PeerBuilder, PeerConfig, PullCtx, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;

const SYSTEMS: [&str; 5] = ["floor", "tokio", "async-std", "smol", "mio"];

fn reply_to(mut m: BenchmarkMessage) -> BenchmarkMessage {
    m.field1 = "OK".into();
    m.field2 = 100;
    m
}

fn config() -> PeerConfig {
    PeerConfig {
        default_body_codec: "protobuf".into(),
        ..PeerConfig::default()
    }
}

fn server_builder() -> PeerBuilder {
    let mut b = PeerBuilder::new(config());
    b.pull(
        "/bench/say",
        |_ctx: PullCtx, Protobuf(m): Protobuf<BenchmarkMessage>| async move {
            Ok::<_, Rerror>(Protobuf(reply_to(m)))
        },
    );
    b
}

// ---- servers (child process) -----------------------------------------------

async fn serve_floor() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (mut r, mut w) = s.into_split();
                let mut r = tokio::io::BufReader::with_capacity(8192, &mut r);
                let (mut inb, mut outb) = (Vec::new(), Vec::new());
                loop {
                    let Ok(len) = r.read_u32().await else { return };
                    inb.resize(len as usize, 0);
                    if r.read_exact(&mut inb).await.is_err() {
                        return;
                    }
                    let Ok(m) = BenchmarkMessage::decode(&inb[..]) else {
                        return;
                    };
                    let m = reply_to(m);
                    outb.clear();
                    outb.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
                    m.encode(&mut outb).expect("vec grows");
                    if w.write_all(&outb).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Serves `system` and prints the address; serves until killed (bounded,
/// in case the parent dies).
fn serve(system: &str) {
    const MAX: Duration = Duration::from_secs(900);
    match system {
        "floor" | "tokio" => {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async {
                let addr = if system == "floor" {
                    serve_floor().await
                } else {
                    let peer = teleport_tokio::Peer::from_builder(server_builder()).expect("peer");
                    let a = peer.bind().await.expect("bind").to_string();
                    std::mem::forget(peer);
                    a
                };
                println!("{addr}");
                tokio::time::sleep(MAX).await;
            });
        }
        "async-std" | "smol" => {
            let exec = async_executor(system);
            let peer =
                teleport_async_std::Peer::from_builder(server_builder(), exec).expect("peer");
            let addr = block_on_async(system, peer.bind()).expect("bind");
            println!("{addr}");
            std::mem::forget(peer);
            std::thread::sleep(MAX);
        }
        "mio" => {
            // The handler never blocks, so it runs on the loop (no hand-off
            // to a worker pool).
            let peer = teleport_mio::Peer::with_workers(server_builder(), 0).expect("peer");
            println!("{}", peer.bind().expect("bind"));
            std::mem::forget(peer);
            std::thread::sleep(MAX);
        }
        other => panic!("unknown system {other}"),
    }
}

fn async_executor(system: &str) -> teleport_async_std::Executor {
    if system == "smol" {
        teleport_async_std::Executor::Smol
    } else {
        teleport_async_std::Executor::AsyncStd
    }
}

fn block_on_async<F: Future>(system: &str, f: F) -> F::Output {
    if system == "smol" {
        smol::block_on(f)
    } else {
        async_std::task::block_on(f)
    }
}

// ---- clients -----------------------------------------------------------------

/// One client: `calls` sequential pulls; returns (ok, latencies in µs).
async fn pulls(session: Session, calls: usize, ready: Arc<Barrier>) -> (usize, Vec<u32>) {
    ready.wait().await;
    let m = Protobuf(BenchmarkMessage::filled());
    let (mut ok, mut lat) = (0, Vec::with_capacity(calls));
    for _ in 0..calls {
        let t = Instant::now();
        let r = session
            .call("/bench/say")
            .codec(CodecId::PROTOBUF)
            .pull::<_, Protobuf<BenchmarkMessage>>(&m)
            .await;
        if r.is_ok_and(|r| r.value.0.field1 == "OK") {
            ok += 1;
        }
        lat.push(micros(t.elapsed()));
    }
    (ok, lat)
}

async fn floor_calls(addr: String, calls: usize, ready: Arc<Barrier>) -> (usize, Vec<u32>) {
    let s = TcpStream::connect(&addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut s = tokio::io::BufReader::with_capacity(8192, s);
    ready.wait().await;
    let m = BenchmarkMessage::filled();
    let (mut ok, mut lat, mut buf) = (0, Vec::with_capacity(calls), Vec::new());
    for _ in 0..calls {
        let t = Instant::now();
        buf.clear();
        buf.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
        m.encode(&mut buf).expect("vec grows");
        let good = async {
            s.get_mut().write_all(&buf).await.ok()?;
            let len = s.read_u32().await.ok()?;
            buf.resize(len as usize, 0);
            s.read_exact(&mut buf).await.ok()?;
            BenchmarkMessage::decode(&buf[..]).ok()
        }
        .await
        .is_some_and(|r| r.field1 == "OK");
        ok += usize::from(good);
        lat.push(micros(t.elapsed()));
    }
    (ok, lat)
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

struct Outcome {
    wall: Duration,
    steady: Duration,
    ok: usize,
    lat_us: Vec<u32>,
}

fn share(n: usize, c: usize, i: usize) -> usize {
    n / c + usize::from(i < n % c)
}

/// Runs `c` clients of `system` against `addr`, `n` calls in all.
fn run_clients(system: &str, addr: &str, c: usize, n: usize) -> Outcome {
    let start = Instant::now();
    let ready = Arc::new(Barrier::new(c + 1));
    let results: Vec<(usize, Vec<u32>)>;
    let steady_start;
    match system {
        "floor" | "tokio" => {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let peer = teleport_tokio::Peer::new(config()).expect("peer");
            (results, steady_start) = rt.block_on(async {
                let mut tasks = Vec::new();
                for i in 0..c {
                    let (ready, addr) = (ready.clone(), addr.to_string());
                    let calls = share(n, c, i);
                    if system == "floor" {
                        tasks.push(tokio::spawn(floor_calls(addr, calls, ready)));
                    } else {
                        let s = peer.dial(&addr).await.expect("dial");
                        tasks.push(tokio::spawn(pulls(s, calls, ready)));
                    }
                }
                ready.wait().await;
                let t = Instant::now();
                let mut out = Vec::new();
                for task in tasks {
                    out.push(task.await.expect("client task"));
                }
                (out, t)
            });
        }
        "async-std" | "smol" => {
            let peer =
                teleport_async_std::Peer::new(config(), async_executor(system)).expect("peer");
            (results, steady_start) = block_on_async(system, async {
                let mut tasks = Vec::new();
                for i in 0..c {
                    let s = peer.dial(addr).await.expect("dial");
                    let f = pulls(s, share(n, c, i), ready.clone());
                    tasks.push(if system == "smol" {
                        Either::Smol(smol::spawn(f))
                    } else {
                        Either::AsyncStd(async_std::task::spawn(f))
                    });
                }
                ready.wait().await;
                let t = Instant::now();
                let mut out = Vec::new();
                for task in tasks {
                    out.push(match task {
                        Either::Smol(t) => t.await,
                        Either::AsyncStd(t) => t.await,
                    });
                }
                (out, t)
            });
        }
        "mio" => {
            let peer = teleport_mio::Peer::new(config()).expect("peer");
            let m = Arc::new(Protobuf(BenchmarkMessage::filled()));
            let threads: Vec<_> = (0..c)
                .map(|i| {
                    let s = peer.dial(addr).expect("dial");
                    let (ready, m) = (ready.clone(), m.clone());
                    let calls = share(n, c, i);
                    std::thread::Builder::new()
                        .stack_size(256 << 10)
                        .spawn(move || {
                            futures_executor::block_on(ready.wait());
                            let (mut ok, mut lat) = (0, Vec::with_capacity(calls));
                            for _ in 0..calls {
                                let t = Instant::now();
                                let r = s
                                    .call("/bench/say")
                                    .codec(CodecId::PROTOBUF)
                                    .pull::<_, Protobuf<BenchmarkMessage>>(&*m);
                                ok += usize::from(r.is_ok_and(|r| r.value.0.field1 == "OK"));
                                lat.push(micros(t.elapsed()));
                            }
                            (ok, lat)
                        })
                        .expect("client thread")
                })
                .collect();
            futures_executor::block_on(ready.wait());
            steady_start = Instant::now();
            results = threads
                .into_iter()
                .map(|t| t.join().expect("client"))
                .collect();
        }
        other => panic!("unknown system {other}"),
    }
    let wall = start.elapsed();
    let steady = steady_start.elapsed();
    let ok = results.iter().map(|r| r.0).sum();
    let lat_us = results.into_iter().flat_map(|r| r.1).collect();
    Outcome {
        wall,
        steady,
        ok,
        lat_us,
    }
}

enum Either<A, B> {
    Smol(A),
    AsyncStd(B),
}

/// CPU time (user + system) of a process, from /proc (Linux only).
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux
}

fn spawn_server(system: &str) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(["serve", system])
        .stdout(Stdio::piped())
        .spawn()
        .expect("server process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server address");
    (child, line.trim().to_string())
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        serve(args.get(1).map(String::as_str).unwrap_or("floor"));
        return;
    }
    let (mut c, mut n, mut systems) = (100usize, 20_000usize, SYSTEMS.to_vec());
    // `--addr A`: use a server already running there (one system), e.g.
    // one started with `bench serve tokio` under a profiler.
    let mut external: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().map(String::as_str).unwrap_or_default();
        match a.as_str() {
            "-c" => c = v.parse().expect("-c N"),
            "-n" => n = v.parse().expect("-n N"),
            "--system" if v != "all" => {
                systems = v
                    .split(',')
                    .filter_map(|s| SYSTEMS.iter().copied().find(|x| *x == s))
                    .collect();
            }
            "--system" => {}
            "--addr" => external = Some(v.to_string()),
            other => panic!("unknown argument {other}; see the example's docs"),
        }
    }
    println!("c={c} n={n}; wall TPS from first dial, steady TPS from all connected; latency in ms");
    println!(
        "{:<9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10} {:>6} {:>7}",
        "system",
        "wall TPS",
        "steady",
        "mean",
        "p50",
        "p99",
        "p99.9",
        "max",
        "cli µs/op",
        "srv µs/op",
        "floor",
        "failed"
    );
    let mut floor_tps = None;
    for system in systems {
        let (mut child, addr) = match &external {
            Some(a) => (None, a.clone()),
            None => {
                let (c, a) = spawn_server(system);
                (Some(c), a)
            }
        };
        let pid = child
            .as_ref()
            .map(|c| c.id().to_string())
            .unwrap_or_default();
        let srv0 = cpu_time(&pid).unwrap_or_default();
        let cli0 = cpu_time("self").unwrap_or_default();
        let out = run_clients(system, &addr, c, n);
        let cli = cpu_time("self").unwrap_or_default().saturating_sub(cli0);
        let srv = cpu_time(&pid).unwrap_or_default().saturating_sub(srv0);
        if let Some(child) = child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut lat = out.lat_us;
        lat.sort_unstable();
        let mean =
            lat.iter().map(|x| f64::from(*x)).sum::<f64>() / lat.len().max(1) as f64 / 1000.0;
        let wall_tps = out.ok as f64 / out.wall.as_secs_f64();
        let steady_tps = out.ok as f64 / out.steady.as_secs_f64();
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        if system == "floor" {
            floor_tps = Some(wall_tps);
        }
        let ratio = floor_tps
            .map(|f| format!("{:.2}", wall_tps / f))
            .unwrap_or_default();
        println!(
            "{:<9} {:>9.0} {:>9.0} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>8.3} {:>10.1} {:>10.1} {:>6} {:>7}",
            system,
            wall_tps,
            steady_tps,
            mean,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 0.999),
            percentile(&lat, 1.0),
            per_op(cli),
            per_op(srv),
            ratio,
            n - out.ok
        );
    }
}
