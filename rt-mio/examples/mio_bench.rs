//! A quick in-process bench of the blocking peer on the seed's workload (a
//! 581-byte protobuf `BenchmarkMessage`; the server sets field1 and field2
//! and replies): `c` client threads, each on its own connection making
//! sequential pulls, `n` calls in all, against a server whose handlers run
//! on `w` worker threads, or on the loop (`w = 0`). Server and clients
//! share this process; compare runs only with each other.
//!
//! ```text
//! cargo run -p teleport-mio --release --example mio_bench -- [-c 64] [-n 100000] [-w 0,2]
//! ```

#[path = "../../core/benches/support/bench_message.rs"]
#[allow(dead_code)]
mod bench_message;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bench_message::BenchmarkMessage;
use teleport_core::{Protobuf, Rerror};
use teleport_mio::prelude::*;
use teleport_mio::{Peer, PeerBuilder, PeerConfig, PullCtx};

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run(workers: usize, c: usize, n: usize) {
    let mut b = PeerBuilder::new(PeerConfig {
        default_body_codec: "protobuf".into(),
        ..PeerConfig::default()
    });
    b.pull_sync(
        "/bench/say",
        |_ctx: PullCtx, Protobuf(mut m): Protobuf<BenchmarkMessage>| {
            m.field1 = "OK".into();
            m.field2 = 100;
            Ok::<_, Rerror>(Protobuf(m))
        },
    );
    let server = Peer::with_workers(b, workers).expect("server");
    let addr = server.spawn_listener().expect("bind").to_string();
    let client = Peer::new(PeerConfig {
        default_body_codec: "protobuf".into(),
        ..PeerConfig::default()
    })
    .expect("client");

    let per = n / c;
    let start = Arc::new(Barrier::new(c + 1));
    let threads: Vec<_> = (0..c)
        .map(|_| {
            let session = client.dial(&addr).expect("dial");
            let start = start.clone();
            std::thread::spawn(move || {
                let msg = Protobuf(BenchmarkMessage::filled());
                let mut lat = Vec::with_capacity(per);
                for _ in 0..5 {
                    session
                        .pull::<_, Protobuf<BenchmarkMessage>>("/bench/say", &msg)
                        .expect("warm-up");
                }
                start.wait();
                for _ in 0..per {
                    let t = Instant::now();
                    let r = session
                        .pull::<_, Protobuf<BenchmarkMessage>>("/bench/say", &msg)
                        .expect("pull");
                    assert_eq!(r.value.0.field1, "OK");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    let mut lat: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    let wall = t0.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "workers={workers:<2} c={c:<4} n={:<7} TPS {:>8.0}  p50 {:>6}µs  p99 {:>6}µs  p99.9 {:>6}µs",
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(0.50).as_micros(),
        pct(0.99).as_micros(),
        pct(0.999).as_micros(),
    );
    server.shutdown(Duration::from_secs(2));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let c: usize = arg(&args, "-c").map_or(64, |v| v.parse().expect("-c"));
    let n: usize = arg(&args, "-n").map_or(100_000, |v| v.parse().expect("-n"));
    let ws: Vec<usize> = arg(&args, "-w")
        .unwrap_or_else(|| format!("0,{}", teleport_mio::default_workers()))
        .split(',')
        .map(|w| w.parse().expect("-w"))
        .collect();
    for w in ws {
        run(w, c, n);
    }
}
