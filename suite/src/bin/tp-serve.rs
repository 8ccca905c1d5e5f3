//! `tp-serve`: a teleport server in a process of its own, for tests that
//! attack it, kill it or restart it.
//!
//! ```text
//! tp-serve --runtime tokio|async-std|smol|mio [--network tcp|unix]
//!          [--listen ADDR] [--config TOML | --config-file PATH]
//!          [--shutdown-timeout 10s] [--workers 64] [--signals]
//! ```
//!
//! It prints `LISTENING <addr>` on stdout once bound (or `ERROR <kind>
//! <message>` and exits 2 if it cannot start), logs warnings and errors on
//! stderr, and on end of stdin shuts down gracefully within
//! `--shutdown-timeout`, prints `SHUTDOWN sessions=.. cancelled=..
//! handlers_abandoned=.. pulls_abandoned=..` and exits 0.
//!
//! With `--signals` it stops on SIGTERM or SIGINT instead, and restarts on
//! SIGHUP (the library's `grace_signal`: a successor, this program again,
//! takes its listening socket over). It prints `PID <pid>` after
//! `LISTENING`, and `STOPPED signal=<signal> successor=<pid or ->` after
//! `SHUTDOWN`. A successor writes to the same stdout.
//!
//! Routes, the same on every runtime:
//! - `/echo/string`, `/echo/json`, `/echo/proto`: the argument back (a
//!   string; any JSON value; a protobuf [`Blob`]).
//! - `/slow?ms=N`: answers `"slept N ms, B bytes"` after N ms (B: the
//!   body's size, which may be anything), on the runtime's own timer
//!   (tokio's, async-io's; on mio a worker thread sleeps).
//! - `/sink` (push): counted, nothing else.
//! - `/probe`: answered by a plugin on the I/O side, before routing, so it
//!   answers even while every handler thread is busy: JSON counters of the
//!   process (pulls read, slow handlers started and finished, pushes,
//!   sessions accepted and closed).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::de::IgnoredAny;
use teleport_core::{
    CloseReason, CodecId, Packet, PacketType, Plugin, PluginCtx, Protobuf, Rerror,
};
use teleport_mio::prelude::*;
use teleport_peer::{Network, PeerAddr, PeerBuilder, PeerConfig, PullCtx, PushCtx, ShutdownReport};

/// The command line.
#[derive(Parser, Debug)]
#[command(name = "tp-serve", about = "A teleport server for tests")]
struct Args {
    /// The runtime that serves.
    #[arg(long, value_enum)]
    runtime: Runtime,
    /// The transport (overrides the config's `network`).
    #[arg(long, value_enum)]
    network: Option<Net>,
    /// Where to listen (overrides the config's `listen_address`).
    #[arg(long)]
    listen: Option<String>,
    /// A `PeerConfig` as TOML text.
    #[arg(long, conflicts_with = "config_file")]
    config: Option<String>,
    /// A `PeerConfig` in a TOML file.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// How long the graceful shutdown at end of stdin may take.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    shutdown_timeout: Duration,
    /// Handler threads of the mio peer (its `/slow` handler sleeps on one).
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Stop on SIGTERM/SIGINT and restart on SIGHUP, not at end of stdin.
    #[arg(long)]
    signals: bool,
    /// With `--signals`: the program a restart starts (default: this one,
    /// with the same arguments).
    #[arg(long)]
    successor: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Runtime {
    Tokio,
    AsyncStd,
    Smol,
    Mio,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Net {
    Tcp,
    Unix,
    Unixpacket,
}

/// The protobuf message `/echo/proto` takes and gives back.
#[derive(Clone, PartialEq, prost::Message)]
struct Blob {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
    #[prost(uint64, repeated, tag = "3")]
    nums: Vec<u64>,
}

static PULLS_READ: AtomicU64 = AtomicU64::new(0);
static SLOW_STARTED: AtomicU64 = AtomicU64::new(0);
static SLOW_DONE: AtomicU64 = AtomicU64::new(0);
static PUSHES: AtomicU64 = AtomicU64::new(0);
static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static CLOSED: AtomicU64 = AtomicU64::new(0);

/// Counts what the sessions read and answers `/probe` itself.
struct Probe;

impl Plugin for Probe {
    fn name(&self) -> &'static str {
        "tp-serve-probe"
    }

    fn after_accept(&self, _ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        ACCEPTED.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn after_read_header(&self, ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        if p.ptype != PacketType::PULL {
            return Ok(());
        }
        if p.uri.path() == b"/probe" {
            let counters = serde_json::json!({
                "pulls_read": PULLS_READ.load(Ordering::SeqCst),
                "slow_started": SLOW_STARTED.load(Ordering::SeqCst),
                "slow_done": SLOW_DONE.load(Ordering::SeqCst),
                "pushes": PUSHES.load(Ordering::SeqCst),
                "accepted": ACCEPTED.load(Ordering::SeqCst),
                "closed": CLOSED.load(Ordering::SeqCst),
            });
            let body =
                serde_json::to_vec(&counters).map_err(|e| Rerror::internal(e.to_string()))?;
            ctx.swallow();
            ctx.reply(p.seq, Ok(Packet::default().with_body(CodecId::JSON, body)));
        } else {
            PULLS_READ.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn on_disconnect(&self, _ctx: &mut PluginCtx<'_>, _reason: &CloseReason) {
        CLOSED.fetch_add(1, Ordering::SeqCst);
    }
}

/// `/slow`'s wait, from its query (`ms=N`, at most ten minutes).
fn slow_ms(ctx: &PullCtx) -> u64 {
    ctx.query()
        .get("ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(600_000)
}

fn slow_reply(ms: u64, bytes: usize) -> String {
    SLOW_DONE.fetch_add(1, Ordering::SeqCst);
    format!("slept {ms} ms, {bytes} bytes")
}

/// The routes every runtime serves; `/slow` is the runtime's own.
fn builder(cfg: PeerConfig, rt: Runtime) -> PeerBuilder {
    let mut b = PeerBuilder::new(cfg);
    b.plugin(Probe);
    b.pull("/echo/string", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    b.pull(
        "/echo/json",
        |_ctx: PullCtx, v: serde_json::Value| async move { Ok::<_, Rerror>(v) },
    );
    b.pull(
        "/echo/proto",
        |_ctx: PullCtx, Protobuf(m): Protobuf<Blob>| async move { Ok::<_, Rerror>(Protobuf(m)) },
    );
    b.push("/sink", |_ctx: PushCtx, _: IgnoredAny| async move {
        PUSHES.fetch_add(1, Ordering::SeqCst);
    });
    match rt {
        Runtime::Tokio => {
            b.pull("/slow", |ctx: PullCtx, _: IgnoredAny| {
                let (ms, n) = (slow_ms(&ctx), ctx.raw_body().len());
                SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<_, Rerror>(slow_reply(ms, n))
                }
            });
        }
        Runtime::AsyncStd | Runtime::Smol => {
            b.pull("/slow", |ctx: PullCtx, _: IgnoredAny| {
                let (ms, n) = (slow_ms(&ctx), ctx.raw_body().len());
                SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
                async move {
                    async_io::Timer::after(Duration::from_millis(ms)).await;
                    Ok::<_, Rerror>(slow_reply(ms, n))
                }
            });
        }
        Runtime::Mio => {
            b.pull_sync("/slow", |ctx: PullCtx, _: IgnoredAny| {
                let (ms, n) = (slow_ms(&ctx), ctx.raw_body().len());
                SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
                // mio has no timer for handlers: this worker thread sleeps.
                std::thread::sleep(Duration::from_millis(ms));
                Ok::<_, Rerror>(slow_reply(ms, n))
            });
        }
    }
    b
}

fn load_config(args: &Args) -> Result<PeerConfig, String> {
    let text = match (&args.config, &args.config_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?,
        (None, None) => String::new(),
    };
    let mut cfg: PeerConfig = toml::from_str(&text).map_err(|e| format!("config: {e}"))?;
    match args.network {
        Some(Net::Tcp) => cfg.network = Network::Tcp,
        Some(Net::Unix) => cfg.network = Network::Unix,
        Some(Net::Unixpacket) => cfg.network = Network::Unixpacket,
        None => {}
    }
    if let Some(l) = &args.listen {
        cfg.listen_address = l.clone();
    }
    Ok(cfg)
}

/// Says why the server cannot start, on stdout where the parent reads.
fn fail(kind: std::io::ErrorKind, what: &str) -> ExitCode {
    println!("ERROR {kind:?} {}", what.replace('\n', " "));
    let _ = std::io::stdout().flush();
    ExitCode::from(2)
}

fn announce(addr: &PeerAddr) {
    println!("LISTENING {}", addr.dial_string());
    println!("PID {}", std::process::id());
    let _ = std::io::stdout().flush();
}

/// The signal handlers, installed before the listener is announced (a
/// signal sent right after it is not lost).
fn grace(args: &Args) -> std::io::Result<Option<teleport_peer::GraceSignal>> {
    if !args.signals {
        return Ok(None);
    }
    let mut how = teleport_peer::handoff::HandOff::default().ready_timeout(Duration::from_secs(10));
    if let Some(p) = &args.successor {
        how = how.program(p);
    }
    teleport_peer::Grace::new(args.shutdown_timeout)
        .restart_with(how)
        .listen()
        .map(Some)
}

fn stopped(r: teleport_peer::GraceReport) -> ExitCode {
    for p in r.peers {
        report(p);
    }
    let successor = r.successor.map_or("-".to_string(), |p| p.to_string());
    println!("STOPPED signal={:?} successor={successor}", r.signal);
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

/// Blocks until stdin ends (the parent closed it, or died).
fn wait_for_stdin_eof() {
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn report(r: ShutdownReport) -> ExitCode {
    println!(
        "SHUTDOWN sessions={} cancelled={} handlers_abandoned={} pulls_abandoned={}",
        r.sessions, r.cancelled, r.handlers_abandoned, r.pulls_abandoned
    );
    let _ = std::io::stdout().flush();
    ExitCode::SUCCESS
}

/// Runs `f` on smol's or async-std's own `block_on`.
fn block_on_io<F: std::future::Future>(smol: bool, f: F) -> F::Output {
    if smol {
        smol::block_on(f)
    } else {
        async_std::task::block_on(f)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .init();
    // Many connections are part of some attacks: take every descriptor
    // the hard limit allows (the parent reads the result in /proc).
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "could not raise the descriptor limit");
    }
    let cfg = match load_config(&args) {
        Ok(c) => c,
        Err(e) => return fail(std::io::ErrorKind::InvalidInput, &e),
    };
    let timeout = args.shutdown_timeout;
    let signals = match grace(&args) {
        Ok(s) => s,
        Err(e) => return fail(e.kind(), &format!("signals: {e}")),
    };
    let b = builder(cfg, args.runtime);
    match args.runtime {
        Runtime::Tokio => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(e.kind(), &format!("tokio runtime: {e}")),
            };
            let peer = match teleport_tokio::Peer::from_builder(b) {
                Ok(p) => p,
                Err(e) => return fail(e.kind(), &format!("peer: {e}")),
            };
            match rt.block_on(peer.spawn_listener()) {
                Ok(a) => announce(&a),
                Err(e) => return fail(e.kind(), &format!("bind: {e}")),
            }
            if let Some(signals) = signals {
                return stopped(rt.block_on(teleport_tokio::grace_signal(signals, &[&peer])));
            }
            wait_for_stdin_eof();
            report(rt.block_on(peer.shutdown(timeout)))
        }
        Runtime::AsyncStd | Runtime::Smol => {
            let exec = if args.runtime == Runtime::Smol {
                teleport_async_std::Executor::Smol
            } else {
                teleport_async_std::Executor::AsyncStd
            };
            let peer = match teleport_async_std::Peer::from_builder(b, exec) {
                Ok(p) => p,
                Err(e) => return fail(e.kind(), &format!("peer: {e}")),
            };
            let smol = args.runtime == Runtime::Smol;
            match block_on_io(smol, peer.spawn_listener()) {
                Ok(a) => announce(&a),
                Err(e) => return fail(e.kind(), &format!("bind: {e}")),
            }
            if let Some(signals) = signals {
                let r = block_on_io(smol, teleport_async_std::grace_signal(signals, &[&peer]));
                return stopped(r);
            }
            wait_for_stdin_eof();
            let r = block_on_io(smol, peer.shutdown(timeout));
            report(r)
        }
        Runtime::Mio => {
            let peer = match teleport_mio::Peer::with_workers(b, args.workers) {
                Ok(p) => p,
                Err(e) => return fail(e.kind(), &format!("peer: {e}")),
            };
            match peer.spawn_listener() {
                Ok(a) => announce(&a),
                Err(e) => return fail(e.kind(), &format!("bind: {e}")),
            }
            if let Some(signals) = signals {
                return stopped(teleport_mio::grace_signal(signals, &[&peer]));
            }
            wait_for_stdin_eof();
            report(peer.shutdown(timeout))
        }
    }
}
