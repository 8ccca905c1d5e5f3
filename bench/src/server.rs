//! `teleport-bench server`: serves one system on loopback, prints
//! `listening ADDR pid=PID` once ready, and serves until killed (or until
//! `--max-secs`, 900 by default, in case its parent is gone).
//!
//! Runtimes are their defaults: tokio's multi-thread runtime (one worker
//! per CPU), async-std's global executor (one thread per CPU), smol's
//! global executor (one thread unless `SMOL_THREADS` says otherwise); the
//! mio peer runs its handler on the poll loop (`with_workers(builder, 0)`:
//! the handler never blocks, so no hand-off to a worker thread).

use std::io::Write;

use crate::args::Args;
use crate::systems;

fn announce(addr: impl std::fmt::Display) {
    println!("listening {addr} pid={}", std::process::id());
    let _ = std::io::stdout().flush();
}

pub fn run(a: &Args) {
    crate::watchdog("server", a.max_secs.unwrap_or(900), 0);
    let addr = a.addr.as_str();
    match a.system.as_str() {
        "floor" | "socket" => {
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            rt.block_on(async {
                let l = systems::tokio_listener(addr).expect("bind");
                announce(l.local_addr().expect("local addr"));
                if a.system == "floor" {
                    systems::accept_loop(l, systems::floor_serve).await
                } else {
                    systems::accept_loop(l, systems::socket_serve).await
                }
            });
        }
        "tokio" | "tokio-tls" => {
            let mut b = systems::async_server(addr);
            if a.system == "tokio-tls" {
                b.listen_tls(crate::tls::acceptor());
            }
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            rt.block_on(async {
                let peer = teleport_tokio::Peer::from_builder(b).expect("peer");
                announce(peer.spawn_listener().await.expect("bind"));
                std::future::pending::<()>().await
            });
        }
        "async-std" => {
            let exec = teleport_async_std::Executor::AsyncStd;
            let peer = teleport_async_std::Peer::from_builder(systems::async_server(addr), exec)
                .expect("peer");
            announce(async_std::task::block_on(peer.spawn_listener()).expect("bind"));
            async_std::task::block_on(std::future::pending::<()>());
        }
        "smol" => {
            let exec = teleport_async_std::Executor::Smol;
            let peer = teleport_async_std::Peer::from_builder(systems::async_server(addr), exec)
                .expect("peer");
            announce(smol::block_on(peer.spawn_listener()).expect("bind"));
            smol::block_on(std::future::pending::<()>());
        }
        "mio" => {
            let peer =
                teleport_mio::Peer::with_workers(systems::sync_server(addr), 0).expect("peer");
            announce(peer.spawn_listener().expect("bind"));
            loop {
                std::thread::park();
            }
        }
        other => unreachable!("system {other}"),
    }
}
