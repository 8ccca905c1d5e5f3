//! A graceful restart under load, with real processes.
//!
//! `cargo run --example restart` starts this program again as a server
//! (`restart serve`), which listens and waits in `grace_signal`. Clients
//! then pull without pause while the server is sent SIGHUP three times,
//! as an operator deploying would: each time the running server starts
//! its successor (this program again) with its listening socket, waits
//! until it is ready, tells its clients to move, answers what it had
//! accepted and exits. At the end the clients' count of failed pulls is
//! printed (it is 0), with the count of dials a prober saw refused (0).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use teleport::prelude::*;

const RESTARTS: usize = 3;
const CLIENTS: usize = 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        return serve().await;
    }
    orchestrate().await
}

/// The server: what a deployed service's `main` looks like.
async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let signals = Grace::new(Duration::from_secs(10)).listen()?;
    let mut b = PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        ..PeerConfig::default()
    });
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        // A little work, so that restarts meet pulls in flight.
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok::<_, Rerror>(s)
    });
    let peer = Peer::from_builder(b)?;
    // A successor gets its predecessor's socket here, instead of binding.
    let addr = peer.spawn_listener().await?;
    println!("LISTENING {addr} PID {}", std::process::id());
    std::io::stdout().flush()?;
    // Ready from here on: the predecessor (if any) stops and drains.
    let report = grace_signal(signals, &[&peer]).await;
    println!(
        "STOPPED {:?} successor {:?} {:?}",
        report.signal, report.successor, report.peers
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// Starts the server, loads it, restarts it, counts.
async fn orchestrate() -> Result<(), Box<dyn std::error::Error>> {
    let mut first = Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    // Every generation writes to this pipe.
    let mut lines = BufReader::new(first.stdout.take().ok_or("no stdout")?).lines();
    let mut next_line = move || -> Result<String, Box<dyn std::error::Error>> {
        Ok(lines.next().ok_or("the servers closed their output")??)
    };
    let started = |line: String| -> Result<(String, i32), Box<dyn std::error::Error>> {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next(), w.next()) {
            (Some("LISTENING"), Some(addr), Some("PID"), Some(pid)) => {
                Ok((addr.to_string(), pid.parse()?))
            }
            _ => Err(format!("unexpected line: {line}").into()),
        }
    };
    let (addr, mut pid) = started(next_line()?)?;
    println!("server pid {pid} listening on {addr}");

    let client = Peer::new(PeerConfig {
        redial_times: 5,
        ..PeerConfig::default()
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let session = client.dial(&addr).await?;
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("client {i} call {k}");
                match session.pull::<_, String>("/echo", &body).await {
                    Ok(r) if r.value == body => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => panic!("wrong answer: {}", r.value),
                    Err(e) => {
                        eprintln!("client {i}: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                k += 1;
            }
        }));
    }
    // A prober dials every 5 ms: a refused dial would mean a moment with
    // nobody listening.
    let refused = Arc::new(AtomicU64::new(0));
    let prober = {
        let (stop, refused, addr) = (stop.clone(), refused.clone(), addr.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if tokio::net::TcpStream::connect(&addr).await.is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    for round in 1..=RESTARTS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = ok.load(Ordering::Relaxed);
        signal(pid, rustix::process::Signal::HUP)?;
        let (addr2, next) = started(next_line()?)?;
        let stopped = next_line()?;
        println!(
            "restart {round}: pid {pid} -> {next} on {addr2}; {} pulls answered during the hand-off; old server: {stopped}",
            ok.load(Ordering::Relaxed) - before
        );
        pid = next;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    prober.await?;
    signal(pid, rustix::process::Signal::TERM)?;
    println!("last server: {}", next_line()?);
    let _ = first.wait();
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "{RESTARTS} restarts, {} pulls answered, {failed} failed, {} dials refused",
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    if failed > 0 || refused.load(Ordering::Relaxed) > 0 {
        return Err("calls were lost".into());
    }
    Ok(())
}

fn signal(pid: i32, sig: rustix::process::Signal) -> std::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or(std::io::ErrorKind::InvalidInput)?;
    Ok(rustix::process::kill_process(pid, sig)?)
}
