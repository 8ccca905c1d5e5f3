//! A server and a client on loopback, no async runtime anywhere: the
//! server echoes pulls with a synchronous handler and pushes a greeting
//! back; the client pulls from a few threads at once, then both shut down.
//!
//! ```text
//! cargo run --no-default-features --features mio --example mio_echo
//! ```

use std::sync::mpsc;
use std::time::Duration;

use teleport::prelude::*;
use teleport::runtime::mio::{Peer, Session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();

    // The server: a pull route and a push back to the caller.
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull_sync("/echo", |ctx: PullCtx, s: String| {
        // Handlers run on worker threads, so a blocking push is fine here.
        Session::from(ctx.session()).push("/greet", &format!("you said {s:?}"))?;
        Ok::<_, Rerror>(s)
    });
    let server = Peer::from_builder(b)?;
    let addr = server.spawn_listener()?;
    println!("serving on {addr}");

    // The client: takes the server's pushes.
    let (tx, rx) = mpsc::channel();
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.push_sync("/greet", move |_ctx: PushCtx, s: String| {
        let _ = tx.send(s);
    });
    let client = Peer::from_builder(b)?;
    let session = client.dial(&addr.to_string())?;

    std::thread::scope(|scope| {
        for t in 0..4 {
            let session = &session;
            scope.spawn(move || {
                let msg = format!("hello from thread {t}");
                let reply = session.pull::<_, String>("/echo", &msg).expect("pull");
                assert_eq!(reply.value, msg);
                println!("reply: {}", reply.value);
            });
        }
    });
    for _ in 0..4 {
        println!("push:  {}", rx.recv_timeout(Duration::from_secs(5))?);
    }

    let report = server.shutdown(Duration::from_secs(2));
    println!("server shut down: {report:?}");
    drop(client);
    Ok(())
}
