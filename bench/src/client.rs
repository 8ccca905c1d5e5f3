//! `teleport-bench client`: `-c` clients, each on its own connection,
//! each dialing, making `--warmup` calls, waiting until every client has
//! done so, then making its share of the `-n` calls one after another
//! (the next starts when the previous reply is in). A call is OK when the
//! reply's field1 is "OK".
//!
//! - wall TPS = n / (first dial .. last reply): dials and warm-up
//!   included, as the seed's client measures;
//! - steady TPS = n / (every client connected and warmed up .. last reply);
//! - latency of each measured call; percentiles are nearest-rank;
//! - CPU per call = process CPU time (user + system) / every call made
//!   (n + warm-up), for this process and, with `--server-pid`, the
//!   server's over the same span.
//!
//! Prints a readable report and one `RESULT key=value...` line; exits 0
//! when every call was OK, 4 when one was not, 3 if `--max-secs` ran out.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use teleport_core::Protobuf;

use crate::args::Args;
use crate::procfs::cpu_time;
use crate::systems::{self, Caller, FloorCaller, SocketCaller};
use crate::BenchmarkMessage;

/// What one client saw.
struct PerClient {
    ok: u64,
    failed: u64,
    lat_ns: Vec<u64>,
}

/// What the whole run saw.
struct Measured {
    wall: Duration,
    steady: Duration,
    clients: Vec<PerClient>,
}

/// The calls client `i` of `c` makes, so that they add up to `n`.
fn share(n: usize, c: usize, i: usize) -> usize {
    n / c + usize::from(i < n % c)
}

/// Says why the first client that could not connect could not (one line,
/// not thousands).
fn connect_failed(e: &dyn std::fmt::Display) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!("client did not connect: {e}");
    }
}

/// One client: dial, warm up, wait for the others, measure.
async fn one_client<C: Caller>(
    connect: impl Future<Output = io::Result<C>>,
    warmup: usize,
    calls: usize,
    ready: Arc<tokio::sync::Barrier>,
) -> PerClient {
    let mut caller = connect.await.inspect_err(|e| connect_failed(e)).ok();
    if let Some(c) = caller.as_mut() {
        for _ in 0..warmup {
            c.call().await;
        }
    }
    ready.wait().await;
    let mut pc = PerClient {
        ok: 0,
        failed: 0,
        lat_ns: Vec::with_capacity(calls),
    };
    let Some(mut c) = caller else {
        pc.failed = calls as u64;
        return pc;
    };
    for _ in 0..calls {
        let t = Instant::now();
        let good = c.call().await;
        pc.lat_ns.push(t.elapsed().as_nanos() as u64);
        if good {
            pc.ok += 1;
        } else {
            pc.failed += 1;
        }
    }
    pc
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The executor the async clients run on: the same runtime as the server
/// of the system under test; for mio, which has none, one thread polling
/// the sessions' async handles.
enum Exec {
    Tokio(tokio::runtime::Runtime),
    AsyncStd,
    Smol,
    Pool(futures_executor::ThreadPool),
}

impl Exec {
    fn block_on<F: Future>(&self, f: F) -> F::Output {
        match self {
            Exec::Tokio(rt) => rt.block_on(f),
            Exec::AsyncStd => async_std::task::block_on(f),
            Exec::Smol => smol::block_on(f),
            Exec::Pool(_) => futures_executor::block_on(f),
        }
    }

    fn spawn<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> BoxFuture<T> {
        match self {
            Exec::Tokio(rt) => {
                let h = rt.spawn(f);
                Box::pin(async move { h.await.expect("client task") })
            }
            Exec::AsyncStd => Box::pin(async_std::task::spawn(f)),
            Exec::Smol => Box::pin(smol::spawn(f)),
            Exec::Pool(pool) => {
                use futures_util::task::SpawnExt;
                Box::pin(pool.spawn_with_handle(f).expect("pool task"))
            }
        }
    }
}

/// Runs `c` async clients; `connect` makes each one's connection future
/// (awaited in the client's own task, so the dials overlap).
fn run_async<C, F, Fut>(exec: &Exec, a: &Args, connect: F) -> Measured
where
    C: Caller,
    F: Fn() -> Fut,
    Fut: Future<Output = io::Result<C>> + Send + 'static,
{
    let (c, n, warmup) = (a.clients, a.calls, a.warmup);
    exec.block_on(async {
        let ready = Arc::new(tokio::sync::Barrier::new(c + 1));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..c)
            .map(|i| exec.spawn(one_client(connect(), warmup, share(n, c, i), ready.clone())))
            .collect();
        ready.wait().await;
        let t1 = Instant::now();
        let mut clients = Vec::with_capacity(c);
        for t in tasks {
            clients.push(t.await);
        }
        Measured {
            wall: t0.elapsed(),
            steady: t1.elapsed(),
            clients,
        }
    })
}

fn measure(a: &Args) -> Measured {
    let addr = a.addr.clone();
    let msg = Arc::new(BenchmarkMessage::filled());
    let pmsg = Arc::new(Protobuf(BenchmarkMessage::filled()));
    let tokio_rt = || Exec::Tokio(tokio::runtime::Runtime::new().expect("tokio runtime"));
    match a.system.as_str() {
        "floor" => run_async(&tokio_rt(), a, || {
            FloorCaller::connect(addr.clone(), msg.clone())
        }),
        "socket" => run_async(&tokio_rt(), a, || {
            SocketCaller::connect(addr.clone(), msg.clone())
        }),
        "tokio" | "tokio-tls" => {
            let mut b = teleport_peer::PeerBuilder::new(systems::peer_config(""));
            if a.system == "tokio-tls" {
                b.dial_tls(crate::tls::connector());
            }
            let peer = teleport_tokio::Peer::from_builder(b).expect("peer");
            run_async(&tokio_rt(), a, || {
                let (peer, addr, msg) = (peer.clone(), addr.clone(), pmsg.clone());
                async move {
                    let session = peer.dial(&addr).await.map_err(io::Error::other)?;
                    Ok(systems::TeleportCaller { session, msg })
                }
            })
        }
        "async-std" | "smol" => {
            let (exec, pexec) = if a.system == "smol" {
                (Exec::Smol, teleport_async_std::Executor::Smol)
            } else {
                (Exec::AsyncStd, teleport_async_std::Executor::AsyncStd)
            };
            let peer =
                teleport_async_std::Peer::new(systems::peer_config(""), pexec).expect("peer");
            run_async(&exec, a, || {
                let (peer, addr, msg) = (peer.clone(), addr.clone(), pmsg.clone());
                async move {
                    let session = peer.dial(&addr).await.map_err(io::Error::other)?;
                    Ok(systems::TeleportCaller { session, msg })
                }
            })
        }
        "mio" => {
            // The mio adapter's calls block, so its blocking handle would
            // need a thread per connection; its sessions' async handles
            // (`Session::inner`) run on any executor. One thread polls them
            // all, next to the mio loop's thread that does the I/O (two
            // pool threads measured 0.69 of the floor at c = 100, one 0.73).
            let pool = futures_executor::ThreadPool::builder()
                .pool_size(1)
                .name_prefix("client-")
                .create()
                .expect("client pool");
            let peer = teleport_mio::Peer::new(systems::peer_config("")).expect("peer");
            run_async(&Exec::Pool(pool), a, || {
                let (peer, addr, msg) = (peer.clone(), addr.clone(), pmsg.clone());
                async move {
                    let session = peer.dial(&addr).map_err(io::Error::other)?;
                    Ok(systems::TeleportCaller {
                        session: session.into_inner(),
                        msg,
                    })
                }
            })
        }
        other => unreachable!("system {other}"),
    }
}

/// Nearest-rank percentile of sorted data, `per_mille` thousandths in
/// (990 for p99, 999 for p99.9); integer arithmetic, so no rounding error
/// moves the rank.
fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (per_mille * sorted.len()).div_ceil(1000);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn run(a: &Args) -> i32 {
    crate::watchdog("client", a.max_secs.unwrap_or(600), 3);
    let server_pid = a.server_pid.map(|p| p.to_string());
    let srv0 = server_pid.as_deref().and_then(cpu_time);
    let m = measure(a);
    let srv1 = server_pid.as_deref().and_then(cpu_time);
    let cli = cpu_time("self").unwrap_or_default();

    let ok: u64 = m.clients.iter().map(|c| c.ok).sum();
    let failed: u64 = m.clients.iter().map(|c| c.failed).sum();
    let mut lat: Vec<u64> = Vec::with_capacity(a.calls);
    for c in &m.clients {
        lat.extend_from_slice(&c.lat_ns);
    }
    lat.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let mean = lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len().max(1) as f64 / 1000.0;
    let (p50, p99, p999, max) = (
        us(percentile(&lat, 500)),
        us(percentile(&lat, 990)),
        us(percentile(&lat, 999)),
        us(lat.last().copied().unwrap_or(0)),
    );
    let n = a.calls as f64;
    let tps = n / m.wall.as_secs_f64();
    let tps_steady = n / m.steady.as_secs_f64();
    let calls = a.calls + a.warmup * a.clients;
    let per_call = |d: Duration| d.as_secs_f64() * 1e6 / calls as f64;
    let srv = match (srv0, srv1) {
        (Some(s0), Some(s1)) => Some(s1.saturating_sub(s0)),
        _ => None,
    };

    println!(
        "system {} c={} n={} (+{} warm-up calls per client)",
        a.system, a.clients, a.calls, a.warmup
    );
    println!(
        "wall {:.3} s, {tps:.0} TPS (first dial to last reply); steady {:.3} s, {tps_steady:.0} TPS (all connected to last reply)",
        m.wall.as_secs_f64(),
        m.steady.as_secs_f64()
    );
    println!(
        "latency µs: mean {mean:.1}, p50 {p50:.1}, p99 {p99:.1}, p99.9 {p999:.1}, max {max:.1}"
    );
    println!("calls OK {ok}, failed {failed}");
    print!(
        "CPU µs per call (of {calls} calls): client {:.2}",
        per_call(cli)
    );
    match srv {
        Some(s) => println!(", server {:.2}", per_call(s)),
        None => println!(),
    }
    let srv_field = srv
        .map(|s| format!(" srv_cpu_ms={}", s.as_millis()))
        .unwrap_or_default();
    println!(
        "RESULT system={} c={} n={} sent={} ok={ok} failed={failed} calls={calls} wall_ms={:.3} steady_ms={:.3} tps_wall={tps:.0} tps_steady={tps_steady:.0} mean_us={mean:.1} p50_us={p50:.1} p99_us={p99:.1} p999_us={p999:.1} max_us={max:.1} cli_cpu_ms={}{srv_field}",
        a.system,
        a.clients,
        a.calls,
        a.calls,
        m.wall.as_secs_f64() * 1e3,
        m.steady.as_secs_f64() * 1e3,
        cli.as_millis(),
    );
    if failed == 0 {
        0
    } else {
        4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (n, c) in [(200_000, 100), (20_000, 3), (7, 7), (400, 4)] {
            assert_eq!((0..c).map(|i| share(n, c, i)).sum::<usize>(), n);
        }
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 500), 500);
        assert_eq!(percentile(&v, 990), 990);
        assert_eq!(percentile(&v, 999), 999);
        assert_eq!(percentile(&v, 1000), 1000);
        assert_eq!(percentile(&v[..7], 999), 7);
        assert_eq!(percentile(&[], 990), 0);
    }
}
