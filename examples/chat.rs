//! A chat room: clients push what they say to the server, the server pushes
//! it to every connected client. Runs a server and three clients on
//! loopback, then exits.
//!
//! Run: `cargo run --example chat`

#[path = "support/signal.rs"]
mod signal;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use teleport::prelude::*;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    from: String,
    text: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // The server relays every /chat/say push to every session as /chat/line.
    // A handler reaches the other sessions through the peer, which it gets
    // from a channel once the peer is built.
    let (peer_tx, peer_rx) = tokio::sync::watch::channel::<Option<Peer>>(None);
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.push("/chat/say", move |ctx: PushCtx, text: String| {
        let peer = peer_rx.borrow().clone();
        async move {
            let line = Line {
                from: format!("user{}", ctx.session().id()),
                text,
            };
            for s in peer.map(|p| p.sessions()).unwrap_or_default() {
                if let Err(e) = s.push("/chat/line", &line).await {
                    eprintln!("push to {} failed: {e}", s.id());
                }
            }
        }
    });
    let server = Peer::from_builder(b)?;
    peer_tx.send_replace(Some(server.clone()));
    let addr = server.spawn_listener().await?.to_string();

    // Three clients; each prints what it hears.
    let (heard_tx, mut heard_rx) = mpsc::unbounded_channel();
    let mut sessions = Vec::new();
    for name in ["ann", "bob", "cy"] {
        let heard = heard_tx.clone();
        let mut b = PeerBuilder::new(PeerConfig::default());
        b.push("/chat/line", move |_ctx: PushCtx, line: Line| {
            let heard = heard.clone();
            async move {
                let _ = heard.send((name, line));
            }
        });
        sessions.push((name, Peer::from_builder(b)?.dial(&addr).await?));
    }
    drop(heard_tx);

    for (name, s) in &sessions {
        s.push("/chat/say", &format!("hello from {name}")).await?;
    }
    // 3 lines said, each heard by 3 clients; Ctrl-C or SIGTERM stops early.
    let hear_all = async {
        for _ in 0..9 {
            let (who, line) = tokio::time::timeout(Duration::from_secs(5), heard_rx.recv())
                .await?
                .ok_or("a client went away")?;
            println!("{who:>4} hears {}: {}", line.from, line.text);
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    tokio::select! {
        r = hear_all => r?,
        () = signal::interrupted() => println!("interrupted: shutting down"),
    }
    for (_, s) in &sessions {
        s.close().await;
    }
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
