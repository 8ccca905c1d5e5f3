//! The quick end-to-end bench: the seed's workload (a 581-byte protobuf
//! `BenchmarkMessage`; the server sets field1 and field2 and replies), `c`
//! clients each on its own connection making sequential pulls, `n` calls
//! in all. Each system's server runs as a child process, as in the seed.
//!
//! Systems: `teleport` (teleport-tokio, route `/bench/say`, protobuf
//! codec) and `floor` (raw tokio, 4-byte length prefix, same message, no
//! RPC layer). Compare them only within one run.
//!
//! ```text
//! cargo run --release --example bench -- [-c 100] [-n 20000] [--system all|teleport|floor]
//! ```

#[path = "../core/benches/support/bench_message.rs"]
#[allow(dead_code)]
mod bench_message;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_message::BenchmarkMessage;
use prost::Message;
use teleport::tokio::{Peer, PeerBuilder, PeerConfig, PullCtx};
use teleport::{CodecId, Protobuf, Rerror};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SYSTEMS: [&str; 2] = ["floor", "teleport"];

fn reply_to(mut m: BenchmarkMessage) -> BenchmarkMessage {
    m.field1 = "OK".into();
    m.field2 = 100;
    m
}

// ---- servers -------------------------------------------------------------

async fn serve_teleport() -> String {
    let mut b = PeerBuilder::new(PeerConfig {
        default_body_codec: "protobuf".into(),
        ..PeerConfig::default()
    });
    b.pull(
        "/bench/say",
        |_ctx: PullCtx, Protobuf(m): Protobuf<BenchmarkMessage>| async move {
            Ok::<_, Rerror>(Protobuf(reply_to(m)))
        },
    );
    let peer = Peer::from_builder(b).expect("peer");
    let addr = peer.bind().await.expect("bind").to_string();
    std::mem::forget(peer); // serve until killed
    addr
}

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

// ---- clients -------------------------------------------------------------

enum Caller {
    Teleport(teleport::tokio::Session),
    Floor(tokio::io::BufReader<TcpStream>, Vec<u8>),
}

impl Caller {
    async fn connect(system: &str, addr: &str, peer: &Peer) -> Caller {
        match system {
            "teleport" => Caller::Teleport(peer.dial(addr).await.expect("dial")),
            _ => {
                let s = TcpStream::connect(addr).await.expect("connect");
                s.set_nodelay(true).expect("nodelay");
                Caller::Floor(tokio::io::BufReader::with_capacity(8192, s), Vec::new())
            }
        }
    }

    async fn call(&mut self, m: &BenchmarkMessage) -> bool {
        match self {
            Caller::Teleport(s) => s
                .call("/bench/say")
                .codec(CodecId::PROTOBUF)
                .pull::<_, Protobuf<BenchmarkMessage>>(&Protobuf(m.clone()))
                .await
                .is_ok_and(|r| r.value.0.field1 == "OK"),
            Caller::Floor(s, buf) => {
                buf.clear();
                buf.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
                m.encode(buf).expect("vec grows");
                if s.get_mut().write_all(buf).await.is_err() {
                    return false;
                }
                let Ok(len) = s.read_u32().await else {
                    return false;
                };
                buf.resize(len as usize, 0);
                if s.read_exact(buf).await.is_err() {
                    return false;
                }
                BenchmarkMessage::decode(&buf[..]).is_ok_and(|r| r.field1 == "OK")
            }
        }
    }
}

struct Outcome {
    wall: Duration,
    steady: Duration,
    ok: usize,
    failed: usize,
    lat_us: Vec<u32>,
}

async fn run_clients(system: &'static str, addr: String, c: usize, n: usize) -> Outcome {
    let peer = Peer::new(PeerConfig {
        default_body_codec: "protobuf".into(),
        ..PeerConfig::default()
    })
    .expect("peer");
    let start = Instant::now();
    let ready = Arc::new(tokio::sync::Barrier::new(c + 1));
    let mut tasks = Vec::new();
    for i in 0..c {
        let (addr, peer, ready) = (addr.clone(), peer.clone(), ready.clone());
        let calls = n / c + usize::from(i < n % c);
        tasks.push(tokio::spawn(async move {
            let mut caller = Caller::connect(system, &addr, &peer).await;
            ready.wait().await;
            let m = BenchmarkMessage::filled();
            let (mut ok, mut lat) = (0, Vec::with_capacity(calls));
            for _ in 0..calls {
                let t = Instant::now();
                if caller.call(&m).await {
                    ok += 1;
                }
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            (ok, lat)
        }));
    }
    ready.wait().await;
    let steady_start = Instant::now();
    let (mut ok, mut lat_us) = (0, Vec::with_capacity(n));
    for t in tasks {
        let (k, l) = t.await.expect("client task");
        ok += k;
        lat_us.extend(l);
    }
    Outcome {
        wall: start.elapsed(),
        steady: steady_start.elapsed(),
        ok,
        failed: n - ok,
        lat_us,
    }
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
        let system = args.get(1).cloned().unwrap_or_default();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let addr = match system.as_str() {
                "teleport" => serve_teleport().await,
                _ => serve_floor().await,
            };
            println!("{addr}");
            // Serve until the parent kills us (bounded, in case it dies).
            tokio::time::sleep(Duration::from_secs(600)).await;
        });
        return;
    }
    let (mut c, mut n, mut systems) = (100usize, 20_000usize, SYSTEMS.to_vec());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().map(String::as_str).unwrap_or_default();
        match a.as_str() {
            "-c" => c = v.parse().expect("-c N"),
            "-n" => n = v.parse().expect("-n N"),
            "--system" if v != "all" => {
                systems = SYSTEMS.iter().copied().filter(|s| *s == v).collect();
            }
            "--system" => {}
            other => panic!("unknown argument {other}; see the example's docs"),
        }
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!("c={c} n={n}; wall TPS from first dial, steady TPS from all connected; latency in ms");
    println!(
        "{:<9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10} {:>7}",
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
        "failed"
    );
    let mut floor_tps = None;
    for system in systems {
        let (mut child, addr) = spawn_server(system);
        let pid = child.id().to_string();
        let srv0 = cpu_time(&pid).unwrap_or_default();
        let cli0 = cpu_time("self").unwrap_or_default();
        let out = rt.block_on(run_clients(system, addr, c, n));
        let cli = cpu_time("self").unwrap_or_default().saturating_sub(cli0);
        let srv = cpu_time(&pid).unwrap_or_default().saturating_sub(srv0);
        let _ = child.kill();
        let _ = child.wait();
        let mut lat = out.lat_us;
        lat.sort_unstable();
        let mean =
            lat.iter().map(|x| f64::from(*x)).sum::<f64>() / lat.len().max(1) as f64 / 1000.0;
        let wall_tps = out.ok as f64 / out.wall.as_secs_f64();
        let steady_tps = out.ok as f64 / out.steady.as_secs_f64();
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!(
            "{:<9} {:>9.0} {:>9.0} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>8.3} {:>10.1} {:>10.1} {:>7}",
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
            out.failed
        );
        if system == "floor" {
            floor_tps = Some(wall_tps);
        } else if let Some(f) = floor_tps {
            println!("{:<9} {:.2}x the floor's wall TPS", "", wall_tps / f);
        }
    }
}
