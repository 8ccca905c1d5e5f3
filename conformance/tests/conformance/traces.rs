//! The trace context with no subscriber (this suite installs none, so no
//! span of ours is made): a `traceparent` that came in with a pull is
//! handed on unchanged by the calls its handler makes, and a call outside
//! any traced handler adds nothing to the wire. A pulls B's relay; B's
//! handler pulls A's leaf back over the same session; the leaf answers
//! with the `traceparent` it saw.

use teleport_core::Rerror;
use teleport_peer::{PeerBuilder, PeerConfig, PullCtx};

use crate::runtimes::Rt;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub fn pass_through(server_rt: Rt, client_rt: Rt, name: &str) {
    let mut sb = PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        ..PeerConfig::default()
    });
    sb.pull("/trace/relay", |ctx: PullCtx, _: ()| async move {
        let back = ctx.session().clone();
        back.pull::<_, String>("/trace/leaf", &())
            .await
            .map(|r| r.value)
    });
    let server = server_rt
        .serve(sb)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut cb = PeerBuilder::new(PeerConfig::default());
    cb.pull("/trace/leaf", |ctx: PullCtx, _: ()| async move {
        Ok::<_, Rerror>(ctx.meta().get("traceparent").unwrap_or("").to_string())
    });
    let client = client_rt.client(cb);
    let s = client
        .dial(&server.addr().dial_string())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (traced, untraced) = client.block_on(async {
        let traced = s
            .call("/trace/relay")
            .meta("traceparent", TRACEPARENT)
            .pull::<_, String>(&())
            .await;
        let untraced = s.pull::<_, String>("/trace/relay", &()).await;
        (traced, untraced)
    });
    assert_eq!(
        traced.map(|r| r.value).as_deref(),
        Ok(TRACEPARENT),
        "{name}: the traceparent handed on"
    );
    assert_eq!(
        untraced.map(|r| r.value).as_deref(),
        Ok(""),
        "{name}: no traceparent without a trace"
    );
    client.shutdown();
    server.shutdown(std::time::Duration::from_secs(5));
}
