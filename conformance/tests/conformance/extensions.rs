//! Every extension point a user plugs in, over real sockets: a plugin
//! written here (hooks in order, a URI rewrite, refusals), a codec and a
//! transfer filter of our own, the fallback routes, controllers and
//! groups, and a handler that pulls the caller back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use teleport_core::plugin::{CallDone, Direction};
use teleport_core::{
    Codec, CodecError, CodecId, Packet, Plugin, PluginCtx, Rerror, Visit, XferError, XferFilter,
    XferId,
};
use teleport_peer::{
    Answer, PeerBuilder, PullCtx, PushCtx, Session, UnknownPullCtx, UnknownPushCtx,
};
use tokio::sync::mpsc;

use crate::runtimes::{Rt, Server};
use crate::scenarios::{client_config, guard, server_config, Net};

/// Our codec: JSON, written as lowercase hex.
pub const HEX: CodecId = CodecId(b'h');
/// Our filter: every byte plus one.
pub const SHIFT: XferId = XferId(b'+');

/// The codec: a serde value as the hex digits of its JSON.
struct HexJson;

impl Codec for HexJson {
    fn id(&self) -> CodecId {
        HEX
    }

    fn name(&self) -> &'static str {
        "hexjson"
    }

    fn encode_serde(
        &self,
        value: &dyn erased_serde::Serialize,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let json = serde_json::to_vec(value).map_err(|e| CodecError::Encode {
            codec: "hexjson",
            reason: e.to_string(),
        })?;
        dst.extend_from_slice(hex::encode(json).as_bytes());
        Ok(())
    }

    fn decode_serde<'de>(&self, src: &'de [u8], visit: Visit<'_, 'de>) -> Result<(), CodecError> {
        let err = |reason: String| CodecError::Decode {
            codec: "hexjson",
            reason,
        };
        let json = hex::decode(src).map_err(|e| err(e.to_string()))?;
        // A reader-backed deserializer owns its input, so it serves any 'de.
        let mut de = serde_json::Deserializer::from_reader(std::io::Cursor::new(json));
        visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de))
            .map_err(|e| err(e.to_string()))?;
        de.end().map_err(|e| err(e.to_string()))
    }
}

/// The filter, counting what it did (so a test sees it really ran).
#[derive(Clone, Default)]
struct Shift {
    encoded: Arc<AtomicUsize>,
    decoded: Arc<AtomicUsize>,
}

impl Shift {
    fn counts(&self) -> (usize, usize) {
        (
            self.encoded.load(Ordering::SeqCst),
            self.decoded.load(Ordering::SeqCst),
        )
    }
}

impl XferFilter for Shift {
    fn id(&self) -> XferId {
        SHIFT
    }

    fn name(&self) -> &'static str {
        "shift"
    }

    fn encode(&self, src: &[u8], dst: &mut BytesMut) -> Result<(), XferError> {
        self.encoded.fetch_add(1, Ordering::SeqCst);
        dst.extend(src.iter().map(|b| b.wrapping_add(1)));
        Ok(())
    }

    fn decode(&self, src: &[u8], limit: usize, dst: &mut BytesMut) -> Result<(), XferError> {
        if src.len() > limit {
            return Err(XferError::OutputOverLimit { id: SHIFT, limit });
        }
        self.decoded.fetch_add(1, Ordering::SeqCst);
        dst.extend(src.iter().map(|b| b.wrapping_sub(1)));
        Ok(())
    }
}

/// The error the server's plugin answers pulls to `/forbidden` with.
fn forbidden() -> Rerror {
    Rerror::new(403, "Forbidden").with_detail("the tap plugin says no")
}

/// The error the client's plugin refuses pulls to `/hooks/never` with.
fn refused_here() -> Rerror {
    Rerror::new(499, "Not Sent").with_detail("the tap plugin keeps it home")
}

/// A plugin written here, on both sides: notes every hook it sees for
/// packets under `/hooks/` (and the session's own hooks), tags what it
/// writes, rewrites `/alias...` to `/echo/string...`, answers pulls to
/// `/forbidden` and `/hooks/forbidden` with [`forbidden`] and refuses to
/// send pulls to `/hooks/never`.
#[derive(Clone)]
struct Tap {
    side: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Tap {
    fn new(side: &'static str) -> Self {
        Tap {
            side,
            log: Arc::default(),
        }
    }

    fn push_note(&self, note: String) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(note);
    }

    fn note(&self, hook: &str, p: &Packet) {
        if p.uri.path().starts_with(b"/hooks/") {
            self.push_note(format!(
                "{hook} {} {}",
                p.ptype.name(),
                String::from_utf8_lossy(p.uri.path())
            ));
        }
    }

    /// The notes so far, clearing them.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Plugin for Tap {
    fn name(&self) -> &'static str {
        "tap"
    }

    fn after_dial(&self, _ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        self.push_note("after_dial".into());
        Ok(())
    }

    fn after_accept(&self, _ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        self.push_note("after_accept".into());
        Ok(())
    }

    fn before_write_pull(&self, _ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        self.note("before_write_pull", p);
        if p.uri.path() == b"/hooks/never" {
            return Err(refused_here());
        }
        p.meta.set("tap", self.side);
        Ok(())
    }

    fn after_write_pull(&self, _ctx: &mut PluginCtx<'_>, p: &Packet) {
        self.note("after_write_pull", p);
    }

    fn before_write_push(&self, _ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        self.note("before_write_push", p);
        p.meta.set("tap", self.side);
        Ok(())
    }

    fn after_write_push(&self, _ctx: &mut PluginCtx<'_>, p: &Packet) {
        self.note("after_write_push", p);
    }

    fn before_write_reply(&self, _ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        self.note("before_write_reply", p);
        p.meta.set("tap-reply", self.side);
        Ok(())
    }

    fn after_write_reply(&self, _ctx: &mut PluginCtx<'_>, p: &Packet) {
        self.note("after_write_reply", p);
    }

    fn after_read_header(&self, _ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        self.note("after_read_header", p);
        let path = p.uri.path();
        if path == b"/alias" {
            let rest = p.uri.as_bytes()[path.len()..].to_vec();
            let mut uri = b"/echo/string".to_vec();
            uri.extend_from_slice(&rest);
            p.uri = teleport_core::Uri::from_bytes(uri.into());
        } else if p.ptype == teleport_core::PacketType::PULL
            && (path == b"/forbidden" || path == b"/hooks/forbidden")
        {
            return Err(forbidden());
        }
        Ok(())
    }

    fn after_read_body(&self, _ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        self.note("after_read_body", p);
        Ok(())
    }

    fn on_call_done(&self, _ctx: &mut PluginCtx<'_>, call: &CallDone<'_>) {
        if call.uri.path().starts_with(b"/hooks/") {
            let dir = match call.direction {
                Direction::Outgoing => "Outgoing",
                Direction::Incoming => "Incoming",
            };
            let result = call.error.map_or("ok".to_string(), |e| e.code.to_string());
            self.push_note(format!(
                "on_call_done {dir} {} {result}",
                String::from_utf8_lossy(call.uri.path())
            ));
        }
    }

    fn on_disconnect(&self, _ctx: &mut PluginCtx<'_>, _reason: &teleport_core::CloseReason) {
        self.push_note("on_disconnect".into());
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    label: String,
}

/// A controller: its methods serve `/math_ctl/...`.
struct MathCtl {
    notes: mpsc::UnboundedSender<(String, String)>,
}

impl MathCtl {
    async fn add_all(self: Arc<Self>, ctx: PullCtx, xs: Vec<i64>) -> Result<Answer<i64>, Rerror> {
        let path = ctx.path().into_owned();
        Ok(Answer::new(xs.iter().sum()).meta("path", path))
    }

    async fn note(self: Arc<Self>, ctx: PushCtx, s: String) {
        let _ = self.notes.send((ctx.path().into_owned(), s));
    }
}

fn xfer_ids(x: &teleport_core::XferPipe) -> String {
    x.iter().map(|id| char::from(id.0)).collect()
}

/// What the scenario observes of the server.
struct Seen {
    hooks_push: mpsc::UnboundedReceiver<String>,
    xfer_push: mpsc::UnboundedReceiver<(String, String)>,
    unknown_push: mpsc::UnboundedReceiver<(String, Option<String>, serde_json::Value)>,
    notes: mpsc::UnboundedReceiver<(String, String)>,
    forbidden_runs: Arc<AtomicUsize>,
}

fn server_routes(b: &mut PeerBuilder) -> Seen {
    let (hooks_tx, hooks_push) = mpsc::unbounded_channel();
    let (xfer_tx, xfer_push) = mpsc::unbounded_channel();
    let (unknown_tx, unknown_push) = mpsc::unbounded_channel();
    let (notes_tx, notes) = mpsc::unbounded_channel();
    let forbidden_runs = Arc::new(AtomicUsize::new(0));

    b.pull("/echo/string", |ctx: PullCtx, s: String| async move {
        let uri = ctx.uri().to_string();
        Ok::<_, Rerror>(Answer::new(s).meta("uri", uri))
    });
    let runs = forbidden_runs.clone();
    b.pull("/forbidden", move |_ctx: PullCtx, _: ()| {
        runs.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<(), Rerror>(()) }
    });
    b.pull("/hooks/pull", |ctx: PullCtx, s: String| async move {
        let saw = ctx.meta().get("tap").unwrap_or("").to_string();
        Ok::<_, Rerror>(Answer::new(s).meta("saw-tap", saw))
    });
    b.pull("/hooks/fail", |_ctx: PullCtx, _: ()| async move {
        Err::<(), _>(Rerror::new(418, "Teapot"))
    });
    b.pull("/hooks/forbidden", |_ctx: PullCtx, _: ()| async move {
        Ok::<(), Rerror>(())
    });
    b.push("/hooks/push", move |ctx: PushCtx, s: String| {
        let tx = hooks_tx.clone();
        let saw = ctx.meta().get("tap").unwrap_or("").to_string();
        async move {
            let _ = tx.send(format!("{s} tagged {saw}"));
        }
    });
    b.pull("/codec/point", |ctx: PullCtx, p: Point| async move {
        let raw = String::from_utf8_lossy(ctx.raw_body()).into_owned();
        let codec = char::from(ctx.body_codec().0).to_string();
        Ok::<_, Rerror>(Answer::new(p).meta("raw", raw).meta("codec", codec))
    });
    b.pull("/xfer/echo", |ctx: PullCtx, s: String| async move {
        let ids = xfer_ids(ctx.xfer());
        Ok::<_, Rerror>(Answer::new(s).meta("xfer", ids))
    });
    b.pull("/xfer/extra", |_ctx: PullCtx, s: String| async move {
        let mut r = Answer::new(s);
        r.xfer.push(SHIFT);
        Ok::<_, Rerror>(r)
    });
    b.push("/xfer/push", move |ctx: PushCtx, s: String| {
        let tx = xfer_tx.clone();
        let ids = xfer_ids(ctx.xfer());
        async move {
            let _ = tx.send((s, ids));
        }
    });
    b.unknown_pull(|ctx: UnknownPullCtx| async move {
        // The body is not decoded before the handler runs: it binds it.
        let (body, codec): (serde_json::Value, _) = ctx.bind()?;
        let mut r = Answer::new(body)
            .meta("codec", codec.0.to_string())
            .meta("unknown", "yes")
            .meta("uri", ctx.uri().to_string());
        for (k, v) in ctx.meta().iter() {
            r.meta.add([b"m-", k].concat(), v);
        }
        Ok::<_, Rerror>(r)
    });
    b.unknown_push(move |ctx: UnknownPushCtx| {
        let body: serde_json::Value = ctx.bind().map(|(b, _)| b).unwrap_or_default();
        let tx = unknown_tx.clone();
        let k = ctx.meta().get("k").map(str::to_string);
        let uri = ctx.uri().to_string();
        async move {
            let _ = tx.send((uri, k, body));
        }
    });
    b.controller(MathCtl {
        notes: notes_tx.clone(),
    })
    .pull("AddAll", MathCtl::add_all)
    .push("Note", MathCtl::note);
    let mut v1 = b.group("/v1");
    v1.pull("Echo", |ctx: PullCtx, s: String| async move {
        let path = ctx.path().into_owned();
        Ok::<_, Rerror>(Answer::new(s).meta("path", path))
    });
    v1.controller(MathCtl { notes: notes_tx })
        .pull("AddAll", MathCtl::add_all);
    b.pull("/ask_client", |ctx: PullCtx, q: String| async move {
        let answer = ctx
            .session()
            .pull::<_, String>("/client/whoami", &q)
            .await?;
        Ok::<_, Rerror>(format!("server heard: {}", answer.value))
    });
    Seen {
        hooks_push,
        xfer_push,
        unknown_push,
        notes,
        forbidden_runs,
    }
}

pub fn run(server_rt: Rt, client_rt: Rt, net: Net, name: &str) {
    let name = &format!("{name} (extensions)");
    let sock = net.sock(name);
    let server_tap = Tap::new("server");
    let server_shift = Shift::default();
    let mut b = PeerBuilder::new(server_config(net, &sock, "127.0.0.1:0"));
    let mut seen = server_routes(&mut b);
    b.plugin(server_tap.clone())
        .codec(HexJson)
        .xfer_filter(server_shift.clone());
    let server: Server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: server: {e}"));
    let addr = server.addr().dial_string();

    let client_tap = Tap::new("client");
    let client_shift = Shift::default();
    let mut cb = PeerBuilder::new(client_config(net));
    cb.plugin(client_tap.clone())
        .codec(HexJson)
        .xfer_filter(client_shift.clone());
    cb.pull("/client/whoami", |_ctx: PullCtx, q: String| async move {
        Ok::<_, Rerror>(format!("client answers {q}"))
    });
    let client = client_rt.client(cb);
    let s = client
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial {addr}: {e}"));
    let s = &s;
    let taps = (&client_tap, &server_tap);

    client.block_on(async {
        hooks_in_order(name, s, taps, &mut seen).await;
        alias_and_refusals(name, s, &seen).await;
        user_codec(name, s).await;
        user_filter(name, s, (&client_shift, &server_shift), &mut seen).await;
        fallback_routes(name, s, &mut seen).await;
        controllers_and_groups(name, s, &mut seen).await;
        server_pulls_the_client(name, s).await;
        // Closing: the session's last hook, on both sides.
        guard(name, s.close()).await;
        assert_eq!(client_tap.take(), ["on_disconnect"], "{name}: client");
        let mut server_notes = Vec::new();
        while server_notes.is_empty() {
            server_notes = server_tap.take();
            if server_notes.is_empty() {
                guard(name, async_io::Timer::after(Duration::from_millis(1))).await;
            }
        }
        assert_eq!(server_notes, ["on_disconnect"], "{name}: server");
    });
    client.shutdown();
    let report = server.shutdown(Duration::from_secs(5));
    assert_eq!(report.cancelled, 0, "{name}");
}

/// Every hook fires once per packet, in order, on both sides: for a pull
/// and its reply, an error reply, a pull the server's plugin refuses, a
/// pull the client's plugin refuses to send, and a push.
async fn hooks_in_order(name: &str, s: &Session, (client, server): (&Tap, &Tap), seen: &mut Seen) {
    let r = guard(
        name,
        s.call("/hooks/pull")
            .codec(CodecId::STRING)
            .pull::<_, String>("hooked"),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: /hooks/pull: {e}"));
    assert_eq!(r.value, "hooked", "{name}");
    // Each side's plugin tagged what it wrote; the other side saw it.
    assert_eq!(r.meta.get("saw-tap"), Some("client"), "{name}");
    assert_eq!(r.meta.get("tap-reply"), Some("server"), "{name}");
    assert_eq!(
        client.take(),
        [
            "after_dial",
            "before_write_pull PULL /hooks/pull",
            "after_write_pull PULL /hooks/pull",
            "after_read_header REPLY /hooks/pull",
            "after_read_body REPLY /hooks/pull",
            "on_call_done Outgoing /hooks/pull ok",
        ],
        "{name}: client hooks of a pull"
    );
    // The server wrote its reply (and ran its hooks) before the client
    // could read it.
    assert_eq!(
        server.take(),
        [
            "after_accept",
            "after_read_header PULL /hooks/pull",
            "after_read_body PULL /hooks/pull",
            "before_write_reply REPLY /hooks/pull",
            "after_write_reply REPLY /hooks/pull",
            "on_call_done Incoming /hooks/pull ok",
        ],
        "{name}: server hooks of a pull"
    );

    let e = guard(name, s.pull::<_, ()>("/hooks/fail", &()))
        .await
        .expect_err("an error reply");
    assert_eq!((e.code, e.message.as_str()), (418, "Teapot"), "{name}");
    assert_eq!(
        client.take(),
        [
            "before_write_pull PULL /hooks/fail",
            "after_write_pull PULL /hooks/fail",
            "after_read_header REPLY /hooks/fail",
            "after_read_body REPLY /hooks/fail",
            "on_call_done Outgoing /hooks/fail 418",
        ],
        "{name}: client hooks of an error reply"
    );
    assert_eq!(
        server.take(),
        [
            "after_read_header PULL /hooks/fail",
            "after_read_body PULL /hooks/fail",
            "before_write_reply REPLY /hooks/fail",
            "after_write_reply REPLY /hooks/fail",
            "on_call_done Incoming /hooks/fail 418",
        ],
        "{name}: server hooks of an error reply"
    );

    // Refused by the server's plugin on reading the header: not routed,
    // so no body hook, and answered with the plugin's error.
    let e = guard(name, s.pull::<_, ()>("/hooks/forbidden", &()))
        .await
        .expect_err("refused by the server's plugin");
    assert_eq!(e, forbidden(), "{name}");
    assert_eq!(
        server.take(),
        [
            "after_read_header PULL /hooks/forbidden",
            "before_write_reply REPLY /hooks/forbidden",
            "after_write_reply REPLY /hooks/forbidden",
            "on_call_done Incoming /hooks/forbidden 403",
        ],
        "{name}: server hooks of a refused pull"
    );
    assert_eq!(
        client.take(),
        [
            "before_write_pull PULL /hooks/forbidden",
            "after_write_pull PULL /hooks/forbidden",
            "after_read_header REPLY /hooks/forbidden",
            "after_read_body REPLY /hooks/forbidden",
            "on_call_done Outgoing /hooks/forbidden 403",
        ],
        "{name}: client hooks of a refused pull"
    );

    // Refused by the client's own plugin: never written.
    let e = guard(name, s.pull::<_, ()>("/hooks/never", &()))
        .await
        .expect_err("refused before writing");
    assert_eq!(e, refused_here(), "{name}");
    assert_eq!(
        client.take(),
        ["before_write_pull PULL /hooks/never"],
        "{name}: client hooks of a pull its plugin refused"
    );

    guard(
        name,
        s.call("/hooks/push").codec(CodecId::STRING).push("pushed"),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: /hooks/push: {e}"));
    assert_eq!(
        client.take(),
        [
            "before_write_push PUSH /hooks/push",
            "after_write_push PUSH /hooks/push",
        ],
        "{name}: client hooks of a push"
    );
    assert_eq!(
        guard(name, seen.hooks_push.recv()).await.as_deref(),
        Some("pushed tagged client"),
        "{name}"
    );
    assert_eq!(
        server.take(),
        [
            "after_read_header PUSH /hooks/push",
            "after_read_body PUSH /hooks/push",
        ],
        "{name}: server hooks of a push"
    );
}

/// The test plugin rewrites `/alias` to `/echo/string` (the handler sees
/// the new URI, query kept) and answers `/forbidden` itself, with exactly
/// its error, before the route's handler could run.
async fn alias_and_refusals(name: &str, s: &Session, seen: &Seen) {
    let r = guard(
        name,
        s.call("/alias?x=1")
            .codec(CodecId::STRING)
            .pull::<_, String>("via the alias"),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: /alias: {e}"));
    assert_eq!(r.value, "via the alias", "{name}");
    assert_eq!(r.meta.get("uri"), Some("/echo/string?x=1"), "{name}");

    for _ in 0..3 {
        let e = guard(name, s.pull::<_, ()>("/forbidden", &()))
            .await
            .expect_err("the plugin refuses /forbidden");
        assert_eq!(e, forbidden(), "{name}");
    }
    assert_eq!(
        seen.forbidden_runs.load(Ordering::SeqCst),
        0,
        "{name}: the refused route's handler ran"
    );
    // The session goes on.
    let r = guard(name, s.pull::<_, String>("/echo/string", "still open")).await;
    assert_eq!(
        r.unwrap_or_else(|e| panic!("{name}: {e}")).value,
        "still open"
    );
}

/// A codec registered on both peers carries a pull and its reply, and is
/// what goes on the wire both ways.
async fn user_codec(name: &str, s: &Session) {
    let p = Point {
        x: -3,
        label: "hex ✓".into(),
    };
    let wire = hex::encode(serde_json::to_vec(&p).expect("json"));
    let r = guard(name, s.call("/codec/point").codec(HEX).pull::<_, Point>(&p))
        .await
        .unwrap_or_else(|e| panic!("{name}: /codec/point: {e}"));
    assert_eq!(r.value, p, "{name}");
    assert_eq!(r.codec, HEX, "{name}: the reply keeps the pull's codec");
    assert_eq!(r.meta.get("codec"), Some("h"), "{name}");
    assert_eq!(r.meta.get("raw"), Some(wire.as_str()), "{name}");
    // The reply's own bytes, undecoded.
    let raw = guard(
        name,
        s.call("/codec/point")
            .pull_raw(HEX, bytes::Bytes::from(wire.clone())),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: /codec/point raw: {e}"));
    assert_eq!(raw.body_codec, HEX, "{name}");
    assert_eq!(&raw.body[..], wire.as_bytes(), "{name}");
}

/// A filter registered on both peers transforms a pull, its reply and a
/// push, alone and stacked with gzip either way round; a handler can add
/// it to its reply.
async fn user_filter(name: &str, s: &Session, (client, server): (&Shift, &Shift), seen: &mut Seen) {
    let body = "shift me, then maybe gzip me ".repeat(300);
    for (pipe, ids) in [
        (&[SHIFT][..], "+"),
        (&[SHIFT, XferId::GZIP][..], "+g"),
        (&[XferId::GZIP, SHIFT][..], "g+"),
    ] {
        let (c0, s0) = (client.counts(), server.counts());
        let mut call = s.call("/xfer/echo").codec(CodecId::STRING);
        for id in pipe {
            call = call.xfer(*id);
        }
        let r = guard(name, call.pull::<_, String>(&body))
            .await
            .unwrap_or_else(|e| panic!("{name}: /xfer/echo {ids}: {e}"));
        assert!(r.value == body, "{name}: {ids}: the echo is the body");
        assert_eq!(r.meta.get("xfer"), Some(ids), "{name}");
        // Client: the pull out, the reply in; server: the other way.
        assert_eq!(
            (client.counts(), server.counts()),
            ((c0.0 + 1, c0.1 + 1), (s0.0 + 1, s0.1 + 1)),
            "{name}: {ids}: the filter ran once per packet on each side"
        );
    }

    // Added by the handler to its reply, after the pull's gzip.
    let (c0, s0) = (client.counts(), server.counts());
    let r = guard(
        name,
        s.call("/xfer/extra")
            .codec(CodecId::STRING)
            .gzip()
            .pull::<_, String>(&body),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: /xfer/extra: {e}"));
    assert!(r.value == body, "{name}: the extra-filtered reply");
    assert_eq!(
        (client.counts(), server.counts()),
        ((c0.0, c0.1 + 1), (s0.0 + 1, s0.1)),
        "{name}: only the reply went through the filter"
    );

    let (c0, s0) = (client.counts(), server.counts());
    guard(
        name,
        s.call("/xfer/push")
            .codec(CodecId::STRING)
            .xfer(SHIFT)
            .gzip()
            .push(&body),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: /xfer/push: {e}"));
    let (got, ids) = guard(name, seen.xfer_push.recv())
        .await
        .expect("the push arrives");
    assert!(got == body, "{name}: the filtered push is the body sent");
    assert_eq!(ids, "+g", "{name}");
    assert_eq!(
        (client.counts(), server.counts()),
        ((c0.0 + 1, c0.1), (s0.0, s0.1 + 1)),
        "{name}: the push went through the filter"
    );
}

/// Pulls and pushes to paths with no route reach the fallback handlers,
/// with their URI, meta and body.
async fn fallback_routes(name: &str, s: &Session, seen: &mut Seen) {
    let r = guard(
        name,
        s.call("/no/such/route?q=1")
            .meta("k", "v")
            .codec(CodecId::STRING)
            .pull::<_, String>("anything"),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: unknown pull: {e}"));
    assert_eq!(r.value, "anything", "{name}");
    assert_eq!(r.meta.get("unknown"), Some("yes"), "{name}");
    assert_eq!(r.meta.get("uri"), Some("/no/such/route?q=1"), "{name}");
    assert_eq!(r.meta.get("m-k"), Some("v"), "{name}");

    let r = guard(name, s.pull::<_, Vec<i64>>("/another/unknown", &vec![4, 5]))
        .await
        .unwrap_or_else(|e| panic!("{name}: unknown json pull: {e}"));
    assert_eq!(r.value, [4, 5], "{name}");

    guard(
        name,
        s.call("/no/such/push?q=2")
            .meta("k", "w")
            .push(&serde_json::json!({"n": 1})),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: unknown push: {e}"));
    let got = guard(name, seen.unknown_push.recv()).await;
    assert_eq!(
        got,
        Some((
            "/no/such/push?q=2".to_string(),
            Some("w".to_string()),
            serde_json::json!({"n": 1})
        )),
        "{name}"
    );
}

/// A controller's methods and a group's routes answer at their snake-case
/// URIs; the type and method names as written are not routes.
async fn controllers_and_groups(name: &str, s: &Session, seen: &mut Seen) {
    for path in ["/math_ctl/add_all", "/v1/math_ctl/add_all"] {
        let r = guard(name, s.pull::<_, i64>(path, &vec![1, 2, 3]))
            .await
            .unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
        assert_eq!((r.value, r.meta.get("path")), (6, Some(path)), "{name}");
        assert_eq!(r.meta.get("unknown"), None, "{name}: {path} is routed");
    }
    let r = guard(name, s.pull::<_, String>("/v1/echo", "grouped"))
        .await
        .unwrap_or_else(|e| panic!("{name}: /v1/echo: {e}"));
    assert_eq!(
        (r.value.as_str(), r.meta.get("path")),
        ("grouped", Some("/v1/echo")),
        "{name}"
    );
    // Not routes: these reach the fallback.
    for path in ["/MathCtl/AddAll", "/math_ctl/AddAll", "/v1/Echo"] {
        let r = guard(name, s.pull::<_, serde_json::Value>(path, &vec![1]))
            .await
            .unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
        assert_eq!(r.meta.get("unknown"), Some("yes"), "{name}: {path}");
    }
    guard(name, s.push("/math_ctl/note", "noted"))
        .await
        .unwrap_or_else(|e| panic!("{name}: /math_ctl/note: {e}"));
    assert_eq!(
        guard(name, seen.notes.recv()).await,
        Some(("/math_ctl/note".to_string(), "noted".to_string())),
        "{name}"
    );
}

/// A handler pulls the client it serves and answers with what it heard;
/// many at once, so pulls cross in both directions.
async fn server_pulls_the_client(name: &str, s: &Session) {
    let r = guard(name, s.pull::<_, String>("/ask_client", "who?"))
        .await
        .unwrap_or_else(|e| panic!("{name}: /ask_client: {e}"));
    assert_eq!(r.value, "server heard: client answers who?", "{name}");
    let calls = (0..50).map(|i| async move {
        let q = format!("q{i}");
        let r = s.pull::<_, String>("/ask_client", &q).await;
        (q, r)
    });
    for (q, r) in guard(name, join_all(calls)).await {
        assert_eq!(
            r.unwrap_or_else(|e| panic!("{name}: /ask_client {q}: {e}"))
                .value,
            format!("server heard: client answers {q}"),
            "{name}"
        );
    }
}
