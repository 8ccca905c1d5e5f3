//! The seed's alias plugin: a pull to `/alias` is served by the handler of
//! `/origin`, as if the caller had named it. Runs a server and a client on
//! loopback, checks the answers and exits.
//!
//! Run: `cargo run --example alias`
//!
//! In Go the plugin rewrites the URI in `PostReadPullHeader`. Here it is
//! `after_read_header`, which a peer-wide plugin runs before routing, so
//! the rewritten path is the one routed. (A group's or route's plugins see
//! packets already routed to them: an alias belongs to the peer.)

use std::collections::HashMap;
use std::time::Duration;

use teleport::prelude::*;
use teleport::Packet;

/// Maps an alias path to the path that serves it.
#[derive(Default)]
struct AliasPlugin {
    aliases: HashMap<String, String>,
}

impl AliasPlugin {
    /// `Alias("/arith/mul", "/mul")`: pulls and pushes to `alias` go to
    /// `uri`'s handler.
    fn alias(&mut self, alias: &str, uri: &str) -> &mut Self {
        self.aliases.insert(alias.to_string(), uri.to_string());
        self
    }
}

impl Plugin for AliasPlugin {
    fn name(&self) -> &'static str {
        "AliasPlugin"
    }

    fn after_read_header(&self, _ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        // The path only: a query the caller sent stays on the packet.
        let target = p.uri.path_str().and_then(|path| self.aliases.get(path));
        if let Some(target) = target.cloned() {
            p.uri.set_path(&target);
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut aliases = AliasPlugin::default();
    aliases.alias("/alias", "/origin");

    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/origin", |ctx: PullCtx, who: String| async move {
        Ok::<_, Rerror>(format!("origin serves {who} (asked as {})", ctx.uri()))
    });
    b.plugin(aliases);
    let server = Peer::from_builder(b)?;
    let addr = server.spawn_listener().await?;

    let client = Peer::new(PeerConfig::default())?;
    let s = client.dial(&addr.to_string()).await?;
    for path in ["/origin", "/alias?x=1"] {
        let reply = s.pull::<_, String>(path, "ann").await?;
        println!("{path} -> {}", reply.value);
        assert!(reply.value.starts_with("origin serves ann"));
    }
    // A path that is neither is still a 404.
    let e = s
        .pull::<_, String>("/nowhere", "ann")
        .await
        .expect_err("no route");
    println!("/nowhere -> {e}");
    assert_eq!(e.code, Rerror::CODE_NOT_FOUND);

    client.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
