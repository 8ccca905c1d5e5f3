//! The README's demo: a server and a client on loopback in one process.
//! The server has a controller group, the client pulls with meta and a
//! query, the server pushes to the client, and everything is logged.
//!
//! Run: `cargo run --example demo`

#[path = "support/signal.rs"]
mod signal;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use teleport::prelude::*;

/// The seed's `Home` controller: `Home::test` serves `/home/test`.
struct Home;

#[derive(Debug, Serialize, Deserialize)]
struct Args {
    a: i32,
    b: i32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Sum {
    sum: i32,
    peer_id: String,
    author: String,
}

impl Home {
    async fn test(self: Arc<Self>, ctx: PullCtx, args: Args) -> Result<Answer<Sum>, Rerror> {
        // Push to the caller before replying, as the seed's demo does.
        let note = format!("server got {args:?}");
        ctx.session().push("/push/note", &note).await?;
        let peer_id = ctx.query().get("peer_id").unwrap_or_default().to_string();
        let author = ctx.meta().get("author").unwrap_or_default().to_string();
        Ok(Answer::new(Sum {
            sum: args.a + args.b,
            peer_id,
            author,
        })
        .meta("served-by", "teleport-rs"))
    }

    async fn fail(self: Arc<Self>, _ctx: PullCtx, _args: ()) -> Result<(), Rerror> {
        Err(Rerror::new(1001, "demo error").with_detail("this route always fails"))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_ansi(false)
        .init();

    // Server: listens on a free loopback port.
    let cfg = PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        count_time: true,
        print_body: true,
        slow_call_threshold: Some(Duration::from_millis(500)),
        ..PeerConfig::default()
    };
    let mut b = PeerBuilder::new(cfg);
    b.group("/v1")
        .controller(Home)
        .pull("test", Home::test)
        .pull("fail", Home::fail);
    let server = Peer::from_builder(b)?;
    let addr = server.spawn_listener().await?;

    // The client's part; Ctrl-C or SIGTERM cuts it short, and the server
    // shuts down gracefully either way.
    let addr = addr.to_string();
    let session = tokio::select! {
        r = client_part(&addr) => Some(r?),
        () = signal::interrupted() => {
            println!("interrupted: shutting down");
            None
        }
    };

    // The server shuts down gracefully while the client is still
    // connected: it closes that session (the client sees it end) and
    // reports what it had to cut (nothing, here).
    let report = server.shutdown(Duration::from_secs(2)).await;
    println!("server shut down: {report:?}");
    if let Some(s) = session {
        let e = s.pull::<_, ()>("/v1/home/fail", &()).await.unwrap_err();
        println!("client <- after the server shut down: {e}");
    }
    Ok(())
}

/// Pulls with meta and a query, a gzipped pull, an error reply, a 404,
/// and takes the server's pushes.
async fn client_part(addr: &str) -> Result<Session, Box<dyn std::error::Error>> {
    // Client: takes pushes on /push/note.
    let mut b = PeerBuilder::new(PeerConfig {
        count_time: true,
        ..PeerConfig::default()
    });
    b.push("/push/note", |ctx: PushCtx, note: String| async move {
        println!("client <- push {}: {note}", ctx.uri());
    });
    let client = Peer::from_builder(b)?;
    let session = client.dial(addr).await?;

    for i in 0..3 {
        let reply = session
            .call(format!("/v1/home/test?peer_id={}", 100 + i))
            .meta("author", "henrylee2cn")
            .pull::<_, Sum>(&Args { a: i, b: 10 })
            .await?;
        println!(
            "client <- reply {:?} (meta served-by={:?})",
            reply.value,
            reply.meta.get("served-by")
        );
    }
    let gz = session
        .call("/v1/home/test?peer_id=gzip")
        .gzip()
        .pull::<_, Sum>(&Args { a: 1, b: 1 })
        .await?;
    println!("client <- gzipped reply {:?}", gz.value);
    match session.pull::<_, ()>("/v1/home/fail", &()).await {
        Err(e) => println!("client <- error reply: {e}"),
        Ok(_) => return Err("the fail route succeeded".into()),
    }
    match session.pull::<_, ()>("/nowhere", &()).await {
        Err(e) => println!("client <- unknown route: {e}"),
        Ok(_) => return Err("an unknown route answered".into()),
    }

    Ok(session)
}
