//! A teleport-tokio server with a teleport-mio client, and the other way
//! round: pulls in every codec with and without gzip, errors, 404, pushes
//! both ways, and pulls back from a handler, across the two adapters.

mod common;

use std::sync::{mpsc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use teleport_core::{CodecId, Protobuf, Rerror, XferId};
use teleport_mio::prelude::*;

use common::{dial_addr, guard, recv, test_logs};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    label: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    text: String,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Whether the request came gzipped, as meta.
fn gz(xfer: &teleport_core::XferPipe) -> &'static str {
    if xfer.iter().any(|x| x == XferId::GZIP) {
        "yes"
    } else {
        "no"
    }
}

fn point() -> Point {
    Point {
        x: 7,
        label: "interop ".repeat(1000),
    }
}

/// The mio client's side of every check, against either server.
fn check_mio_client(session: &teleport_mio::Session, pushes: &mpsc::Receiver<String>) {
    for gzip in [false, true] {
        let want = if gzip { "yes" } else { "no" };
        let mut c = session.call("/json");
        if gzip {
            c = c.gzip();
        }
        let r = c.pull::<_, Point>(&point()).expect("json");
        assert_eq!(r.value, point());
        assert_eq!(r.meta.get("gz"), Some(want));

        let ping = Ping {
            text: "ping ".repeat(500),
        };
        let mut c = session.call("/proto").codec(CodecId::PROTOBUF);
        if gzip {
            c = c.gzip();
        }
        let r = c
            .pull::<_, Protobuf<Ping>>(&Protobuf(ping.clone()))
            .expect("protobuf");
        assert_eq!(r.value.0, ping);
        assert_eq!(r.codec, CodecId::PROTOBUF);
        assert_eq!(r.meta.get("gz"), Some(want));

        let s = "ünïcode ✓ ".repeat(500);
        let mut c = session.call("/string").codec(CodecId::STRING);
        if gzip {
            c = c.gzip();
        }
        let r = c.pull::<_, String>(&s).expect("string");
        assert_eq!(r.value, s);
        assert_eq!(r.codec, CodecId::STRING);
        assert_eq!(r.meta.get("gz"), Some(want));
    }
    let e = session
        .pull::<_, ()>("/fail", "why")
        .expect_err("handler error");
    assert_eq!(e, Rerror::new(1001, "demo error").with_detail("why"));
    let e = session.pull::<_, ()>("/nope", &()).expect_err("404");
    assert_eq!(e, Rerror::not_found());
    let e = session
        .call("/never")
        .timeout(Duration::from_millis(50))
        .pull::<_, ()>(&())
        .expect_err("timeout");
    assert_eq!(e.code, Rerror::CODE_TIMEOUT);
    // The server pushes back, then pulls back.
    let r = session.pull::<_, String>("/trigger", "x").expect("trigger");
    assert_eq!(r.value, "client said hi x");
    assert_eq!(recv("pushed back", pushes), "pushed x");
}

#[test]
fn tokio_server_and_mio_client() {
    test_logs();
    let rt = runtime();
    let mut b = teleport_tokio::PeerBuilder::new(teleport_tokio::PeerConfig::default());
    b.pull(
        "/json",
        |ctx: teleport_tokio::PullCtx, p: Point| async move {
            Ok::<_, Rerror>(teleport_tokio::Answer::new(p).meta("gz", gz(ctx.xfer())))
        },
    );
    b.pull(
        "/proto",
        |ctx: teleport_tokio::PullCtx, p: Protobuf<Ping>| async move {
            Ok::<_, Rerror>(teleport_tokio::Answer::new(p).meta("gz", gz(ctx.xfer())))
        },
    );
    b.pull(
        "/string",
        |ctx: teleport_tokio::PullCtx, s: String| async move {
            Ok::<_, Rerror>(teleport_tokio::Answer::new(s).meta("gz", gz(ctx.xfer())))
        },
    );
    b.pull(
        "/fail",
        |_ctx: teleport_tokio::PullCtx, d: String| async move {
            Err::<(), _>(Rerror::new(1001, "demo error").with_detail(d))
        },
    );
    b.pull(
        "/never",
        |_ctx: teleport_tokio::PullCtx, _: ()| async move {
            std::future::pending::<()>().await;
            Ok::<(), Rerror>(())
        },
    );
    b.pull(
        "/trigger",
        |ctx: teleport_tokio::PullCtx, s: String| async move {
            ctx.session()
                .push("/pushed", &format!("pushed {s}"))
                .await?;
            let r = ctx.session().pull::<_, String>("/hi", &s).await?;
            Ok::<_, Rerror>(format!("client said {}", r.value))
        },
    );
    let (tx, rx) = mpsc::channel();
    let server = teleport_tokio::Peer::from_builder(b).unwrap();
    let addr = rt.block_on(server.spawn_listener()).unwrap();

    let mut b = teleport_mio::PeerBuilder::new(teleport_mio::PeerConfig::default());
    let tx = Mutex::new(tx);
    b.push_sync("/pushed", move |_ctx: teleport_mio::PushCtx, s: String| {
        let _ = tx.lock().unwrap().send(s);
    });
    b.pull_sync("/hi", |_ctx: teleport_mio::PullCtx, s: String| {
        Ok::<_, Rerror>(format!("hi {s}"))
    });
    let client = teleport_mio::Peer::from_builder(b).unwrap();
    let a = dial_addr(&addr);
    guard("mio client", move || {
        let session = client.dial(&a).expect("dial");
        check_mio_client(&session, &rx);
        session.close();
        assert!(session.is_closed());
    });

    let report = rt.block_on(server.shutdown(Duration::from_secs(2)));
    assert_eq!(report.cancelled, 0);
}

#[test]
fn mio_server_and_tokio_client() {
    test_logs();
    let mut b = teleport_mio::PeerBuilder::new(teleport_mio::PeerConfig::default());
    b.pull_sync("/json", |ctx: teleport_mio::PullCtx, p: Point| {
        Ok::<_, Rerror>(teleport_mio::Answer::new(p).meta("gz", gz(ctx.xfer())))
    });
    b.pull_sync("/proto", |ctx: teleport_mio::PullCtx, p: Protobuf<Ping>| {
        Ok::<_, Rerror>(teleport_mio::Answer::new(p).meta("gz", gz(ctx.xfer())))
    });
    b.pull_sync("/string", |ctx: teleport_mio::PullCtx, s: String| {
        Ok::<_, Rerror>(teleport_mio::Answer::new(s).meta("gz", gz(ctx.xfer())))
    });
    b.pull_sync("/fail", |_ctx: teleport_mio::PullCtx, d: String| {
        Err::<(), _>(Rerror::new(1001, "demo error").with_detail(d))
    });
    b.pull("/never", |_ctx: teleport_mio::PullCtx, _: ()| async move {
        std::future::pending::<()>().await;
        Ok::<(), Rerror>(())
    });
    b.pull_sync("/trigger", |ctx: teleport_mio::PullCtx, s: String| {
        let session = teleport_mio::Session::from(ctx.session());
        session.push("/pushed", &format!("pushed {s}"))?;
        let r = session.pull::<_, String>("/hi", &s)?;
        Ok::<_, Rerror>(format!("client said {}", r.value))
    });
    let server = teleport_mio::Peer::from_builder(b).unwrap();
    let addr = server.spawn_listener().unwrap();

    let rt = runtime();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut b = teleport_tokio::PeerBuilder::new(teleport_tokio::PeerConfig::default());
    b.push(
        "/pushed",
        move |_ctx: teleport_tokio::PushCtx, s: String| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(s);
            }
        },
    );
    b.pull("/hi", |_ctx: teleport_tokio::PullCtx, s: String| async move {
        Ok::<_, Rerror>(format!("hi {s}"))
    });
    let client = teleport_tokio::Peer::from_builder(b).unwrap();
    rt.block_on(async {
        let checks = async {
            let session = client.dial(&dial_addr(&addr)).await.expect("dial");
            for gzip in [false, true] {
                let want = if gzip { "yes" } else { "no" };
                let mut c = session.call("/json");
                if gzip {
                    c = c.gzip();
                }
                let r = c.pull::<_, Point>(&point()).await.expect("json");
                assert_eq!(r.value, point());
                assert_eq!(r.meta.get("gz"), Some(want));

                let ping = Ping {
                    text: "ping ".repeat(500),
                };
                let mut c = session.call("/proto").codec(CodecId::PROTOBUF);
                if gzip {
                    c = c.gzip();
                }
                let r = c
                    .pull::<_, Protobuf<Ping>>(&Protobuf(ping.clone()))
                    .await
                    .expect("protobuf");
                assert_eq!(r.value.0, ping);
                assert_eq!(r.meta.get("gz"), Some(want));

                let s = "ünïcode ✓ ".repeat(500);
                let mut c = session.call("/string").codec(CodecId::STRING);
                if gzip {
                    c = c.gzip();
                }
                let r = c.pull::<_, String>(&s).await.expect("string");
                assert_eq!(r.value, s);
                assert_eq!(r.meta.get("gz"), Some(want));
            }
            let e = session
                .pull::<_, ()>("/fail", "why")
                .await
                .expect_err("handler error");
            assert_eq!(e, Rerror::new(1001, "demo error").with_detail("why"));
            let e = session.pull::<_, ()>("/nope", &()).await.expect_err("404");
            assert_eq!(e, Rerror::not_found());
            let e = session
                .call("/never")
                .timeout(Duration::from_millis(50))
                .pull::<_, ()>(&())
                .await
                .expect_err("timeout");
            assert_eq!(e.code, Rerror::CODE_TIMEOUT);
            let r = session
                .pull::<_, String>("/trigger", "x")
                .await
                .expect("trigger");
            assert_eq!(r.value, "client said hi x");
            assert_eq!(rx.recv().await.as_deref(), Some("pushed x"));
            session.close().await;
        };
        tokio::time::timeout(common::GUARD, checks)
            .await
            .expect("tokio client: hang?");
    });

    let report = guard("mio shutdown", move || {
        server.shutdown(Duration::from_secs(2))
    });
    assert_eq!(report.cancelled, 0);
}
