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

    // The server relays every /chat/say push to every session as
    // /chat/line: the handler reaches them through its peer. A client
    // that stops reading is refused (listed in the report), never waited
    // for.
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.push("/chat/say", |ctx: PushCtx, text: String| async move {
        let line = Line {
            from: format!("user{}", ctx.session().id()),
            text,
        };
        match ctx.peer().broadcast("/chat/line", &line).await {
            Ok(report) => {
                for (id, e) in report.failed {
                    eprintln!("push to {id} failed: {e}");
                }
            }
            Err(e) => eprintln!("broadcast failed: {e}"),
        }
    });
    let server = Peer::from_builder(b)?;
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
