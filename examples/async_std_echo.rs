//! An echo server and its client on loopback, in one program that exits by
//! itself: the server's tasks run on async-std, the client's on smol (both
//! drive the same async-io reactor), and the main future runs under
//! `async_io::block_on` (what `smol::block_on` is).
//!
//! ```sh
//! cargo run --features async-std,smol --example async_std_echo
//! ```

use std::time::Duration;

use teleport::runtime::{async_std, smol};
use teleport::{PeerBuilder, PeerConfig, PullCtx, PushCtx, Rerror};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `RUST_LOG=info` shows every packet and session event.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    async_io::block_on(async {
        // The server: a pull route and a push route.
        let mut b = PeerBuilder::new(PeerConfig::default());
        b.pull("/echo", |ctx: PullCtx, text: String| async move {
            println!("server: echoing {text:?} to {}", ctx.remote_addr());
            Ok::<_, Rerror>(text)
        });
        b.push("/note", |_ctx: PushCtx, note: String| async move {
            println!("server: got a push: {note}");
        });
        let server = async_std::Peer::from_builder(b)?;
        let addr = server.spawn_listener().await?;

        // The client.
        let client = smol::Peer::new(PeerConfig::default())?;
        let session = client.dial(&addr.to_string()).await?;
        for text in ["hello", "teleport", "on async-io"] {
            let reply = session.pull::<_, String>("/echo", text).await?;
            println!("{text} -> {}", reply.value);
        }
        // A push has no answer; frames are handled in order, so the server
        // has taken it by the time it answers the next pull.
        session.push("/note", "a push before the last pull").await?;
        let reply = session
            .call("/echo")
            .gzip()
            .pull::<_, String>(&"gzipped ".repeat(4))
            .await?;
        println!("gzipped round trip: {} bytes", reply.value.len());

        // The server closes the session gracefully; the client's end sees it.
        let report = server.shutdown(Duration::from_secs(1)).await;
        println!(
            "server shut down: {} session(s), {} cancelled",
            report.sessions, report.cancelled
        );
        session.close().await;
        println!("client session closed: {}", session.is_closed());
        Ok(())
    })
}
