//! The seed's demo (`server.go` and `client.go` of Go teleport v3's README)
//! in Rust, both sides in one process on loopback; it exits by itself.
//! Each step carries the Go line it translates where the names differ.
//!
//! Run: `cargo run --example seed_demo` (`RUST_LOG=teleport=debug` for
//! every packet).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use teleport::prelude::*;
use teleport::GraceReport;
use tracing::{debug, error, info};

// ---------------------------------------------------------------- server.go

/// `type Home struct { tp.PullCtx }`: the context is the handler's
/// argument instead of an embedded field.
struct Home;

impl Home {
    /// `func (h *Home) Test(args *map[string]interface{}) (map[string]interface{}, *tp.Rerror)`
    async fn test(
        self: Arc<Self>,
        ctx: PullCtx,
        args: Map<String, Value>,
    ) -> Result<Value, Rerror> {
        // h.Session().Push("/push/test?tag=from home-test", map[string]interface{}{"your_id": h.Query().Get("peer_id")})
        let your_id = ctx.query().get("peer_id").unwrap_or_default().to_string();
        ctx.session()
            .push(
                "/push/test?tag=from home-test",
                &json!({ "your_id": your_id }),
            )
            .await?;
        // meta := h.CopyMeta(); meta.VisitAll(func(k, v []byte) { tp.Infof(...) })
        let meta = ctx.meta().clone();
        for (k, v) in meta.iter() {
            info!(
                "meta: key: {}, value: {}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            );
        }
        // time.Sleep(5e9): shortened so the demo ends soon, still past
        // SlowCometDuration (500 ms), so the slow-call warning shows.
        tokio::time::sleep(Duration::from_millis(600)).await;
        Ok(json!({
            "your_args": args,
            "server_time": unix_millis(),
            "meta": meta.to_string(),
        }))
    }
}

/// The body `UnknownPullHandle` binds: `struct { RawMessage json.RawMessage; Bytes []byte }`.
/// (Go writes `[]byte` in JSON as base64; here it is a string.)
#[derive(Debug, Default, Serialize, Deserialize)]
struct Unknown {
    #[serde(rename = "RawMessage")]
    raw_message: Value,
    #[serde(rename = "Bytes")]
    bytes: String,
}

/// `func UnknownPullHandle(ctx tp.UnknownPullCtx) (interface{}, *tp.Rerror)`
async fn unknown_pull_handle(ctx: UnknownPullCtx) -> Result<Value, Rerror> {
    // var v = struct{...}{}; codecId, err := ctx.Bind(&v)
    let (v, codec_id) = ctx
        .bind::<Unknown>()
        .map_err(|e| Rerror::new(1001, "bind error").with_detail(e.to_string()))?;
    // tp.Debugf("UnknownPullHandle: codec: %d, RawMessage: %s, bytes: %s", ...)
    debug!(
        "UnknownPullHandle: codec: {}, RawMessage: {}, bytes: {}",
        codec_id.0, v.raw_message, v.bytes
    );
    // ctx.Session().Push("/push/test?tag=from home-test", ...)
    let your_id = ctx.query().get("peer_id").unwrap_or_default().to_string();
    ctx.session()
        .push(
            "/push/test?tag=from home-test",
            &json!({ "your_id": your_id }),
        )
        .await?;
    Ok(json!({
        "your_args": v,
        "server_time": unix_millis(),
        "meta": ctx.meta().to_string(),
    }))
}

/// `server.go`'s `main`, up to `peer.Listen()`; the server stops when the
/// process gets SIGTERM or SIGINT (the returned task ends then).
async fn server(
) -> Result<(tokio::task::JoinHandle<GraceReport>, String), Box<dyn std::error::Error>> {
    // tp.SetShutdown(time.Second*20, nil, nil)
    let signals = Grace::new(Duration::from_secs(20)).listen()?;
    // var peer = tp.NewPeer(tp.PeerConfig{...})
    let cfg = PeerConfig {
        slow_call_threshold: Some(Duration::from_millis(500)), // SlowCometDuration
        print_body: true,                                      // PrintBody
        count_time: true,                                      // CountTime
        listen_address: "127.0.0.1:0".into(), // ListenAddress "0.0.0.0:9090"; any free port here
        ..PeerConfig::default()
    };
    let mut b = PeerBuilder::new(cfg);
    // group := peer.PullRouter.Group("group"); group.Reg(new(Home))
    b.group("group")
        .controller_named("home", Home)
        .pull("test", Home::test);
    // peer.PullRouter.SetUnknown(UnknownPullHandle)
    b.unknown_pull(unknown_pull_handle);
    let peer = Peer::from_builder(b)?;
    // peer.Listen(), in the background so the client can run here too.
    let addr = peer.spawn_listener().await?;
    info!("server listening on {addr}");
    // go tp.GraceSignal()
    let stopped = tokio::spawn(async move { grace_signal(signals, &[&peer]).await });
    Ok((stopped, addr.to_string()))
}

// ---------------------------------------------------------------- client.go

/// `type Push struct { tp.PushCtx }`
struct Push;

impl Push {
    /// `func (p *Push) Test(args *map[string]interface{}) *tp.Rerror`
    async fn test(self: Arc<Self>, ctx: PushCtx, args: Map<String, Value>) {
        // tp.Infof("receive push(%s):\nargs: %#v\nquery: %#v\n", p.Ip(), args, p.Query())
        info!(
            "receive push({}):\nargs: {:?}\nquery: {}\n",
            ctx.remote_addr(),
            args,
            ctx.query()
        );
    }
}

/// `client.go`'s `main`.
async fn client(addr: &str) -> Result<Peer, Box<dyn std::error::Error>> {
    // var peer = tp.NewPeer(tp.PeerConfig{...})
    let cfg = PeerConfig {
        slow_call_threshold: Some(Duration::from_millis(500)),
        print_body: true,
        count_time: true,
        redial_times: 3, // RedialTimes
        ..PeerConfig::default()
    };
    let mut b = PeerBuilder::new(cfg);
    // peer.PushRouter.Reg(new(Push))
    b.controller_named("push", Push).push("test", Push::test);
    let peer = Peer::from_builder(b)?;

    // var sess, err = peer.Dial("127.0.0.1:9090")
    let sess = peer.dial(addr).await?;
    // sess.SetId("testId")
    sess.set_id("testId");

    // for { var pullcmd = sess.Pull(uri, args, &reply, socket.WithXferPipe('g'), ...) ... }
    let reply = loop {
        let pull = sess
            .call("/group/home/test?peer_id=call-1")
            .gzip() //                  socket.WithXferPipe('g')
            .set_meta("set", "0") //    socket.WithSetMeta("set", "0")
            .add_meta("add", "1") //    socket.WithAddMeta("add", "1")
            .add_meta("add", "2") //    socket.WithAddMeta("add", "2")
            .pull::<_, Value>(&json!({ "bytes": "test bytes" }))
            .await;
        match pull {
            Ok(reply) => break reply,
            Err(e) => {
                // tp.Errorf("pull error: %v", pullcmd.Rerror()); time.Sleep(time.Second * 2)
                error!("pull error: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    // tp.Infof("test: %#v", reply)
    info!("test: {:?}", reply.value);

    // var pullcmd = sess.Pull("/group/home/test_unknown?peer_id=call-2", struct{...}{...}, &reply, socket.WithXferPipe('g'))
    let reply = sess
        .call("/group/home/test_unknown?peer_id=call-2")
        .gzip()
        .pull::<_, Value>(&Unknown {
            raw_message: json!({ "RawMessage": "test_unknown" }),
            bytes: "test bytes".into(),
        })
        .await?; // if pullcmd.Rerror() != nil { tp.Fatalf(...) }
                 // tp.Infof("test_unknown: %#v", reply)
    info!("test_unknown: {:?}", reply.value);
    Ok(peer)
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (server, addr) = server().await?;
    let client = client(&addr).await?;
    // defer peer.Close()
    client.shutdown(Duration::from_secs(20)).await;
    // What an operator's `kill <pid>` (or Ctrl-C) does to server.go: its
    // GraceSignal shuts the peer down gracefully.
    signal_hook::low_level::raise(signal_hook::consts::SIGTERM)?;
    let report = server.await?;
    info!(
        "server stopped on {:?} in {:?}: {:?}",
        report.signal, report.elapsed, report.peers
    );
    Ok(())
}
