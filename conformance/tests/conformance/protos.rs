//! A frame format of our own (not the fast proto) over real sockets: on
//! both peers (`PeerBuilder::proto`), on one listener and one dial only
//! (`ListenOptions::proto`, `DialOptions::proto`), and two ends that speak
//! different protos refusing each other with an error, not a hang.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::join_all;
use teleport_core::{
    CodecId, MakeProto, Meta, Packet, PacketType, Proto, ProtoError, Rerror, Seq, Uri, XferId,
    XferPipe, XferRegistry,
};
use teleport_peer::{
    Answer, DialOptions, ListenOptions, PeerBuilder, PeerConfig, PullCtx, PushCtx, Reply, Session,
};
use tokio::sync::mpsc;

use crate::runtimes::{Client, Rt};
use crate::scenarios::{client_config, guard, server_config, Net};

/// Every frame starts with these bytes.
const MAGIC: &[u8; 3] = b"TPK";
/// The magic and the payload's length (u32, big-endian).
const HEAD: usize = MAGIC.len() + 4;

/// The "tagged" proto: `TPK`, the payload's length, then seq (u64), type,
/// codec, the URI (u16 length), the meta as pairs (u16 count; u16 key
/// length, key, u32 value length, value), the filter ids (u8 count) and
/// the body, every filter applied in order. All numbers big-endian.
struct Tagged {
    limit: usize,
    xfers: Arc<XferRegistry>,
    frames: Arc<AtomicUsize>,
}

/// Makes a [`Tagged`] proto per connection, counting the frames all of
/// them wrote and read (so a test sees it was this proto that ran).
#[derive(Clone, Default)]
pub struct TaggedProto {
    frames: Arc<AtomicUsize>,
}

impl TaggedProto {
    /// Frames written and read so far.
    pub fn frames(&self) -> usize {
        self.frames.load(Ordering::SeqCst)
    }
}

impl MakeProto for TaggedProto {
    fn make_proto(&self, read_limit: usize, xfers: &Arc<XferRegistry>) -> Box<dyn Proto> {
        Box::new(Tagged {
            limit: read_limit,
            xfers: xfers.clone(),
            frames: self.frames.clone(),
        })
    }
}

fn too_long(field: &'static str, len: usize) -> ProtoError {
    ProtoError::FieldTooLong { field, len }
}

/// Reads a payload front to back, every length checked.
struct Fields(Bytes);

impl Fields {
    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::PastEnd {
                field,
                need: n,
                left: self.0.len(),
            });
        }
        Ok(self.0.split_to(n))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ProtoError> {
        Ok(self.take(1, field)?.get_u8())
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ProtoError> {
        Ok(self.take(2, field)?.get_u16())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ProtoError> {
        Ok(self.take(4, field)?.get_u32())
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        Ok(self.take(8, field)?.get_u64())
    }
}

impl Proto for Tagged {
    fn id(&self) -> u8 {
        b'k'
    }

    fn name(&self) -> &'static str {
        "tagged"
    }

    fn encode(&mut self, p: &Packet, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let mut body = BytesMut::from(&p.body[..]);
        for id in p.xfer.iter() {
            let mut out = BytesMut::new();
            self.xfers.get(id)?.encode(&body, &mut out)?;
            body = out;
        }
        let uri = p.uri.as_bytes();
        let mut payload = BytesMut::with_capacity(32 + uri.len() + body.len());
        payload.put_u64(p.seq.0);
        payload.put_u8(p.ptype.0);
        payload.put_u8(p.body_codec.0);
        payload.put_u16(u16::try_from(uri.len()).map_err(|_| too_long("uri", uri.len()))?);
        payload.put_slice(uri);
        let pairs = p.meta.len();
        payload.put_u16(u16::try_from(pairs).map_err(|_| too_long("meta", pairs))?);
        for (k, v) in p.meta.iter() {
            payload.put_u16(u16::try_from(k.len()).map_err(|_| too_long("meta key", k.len()))?);
            payload.put_slice(k);
            payload.put_u32(u32::try_from(v.len()).map_err(|_| too_long("meta value", v.len()))?);
            payload.put_slice(v);
        }
        let ids = p.xfer.as_bytes();
        payload.put_u8(
            u8::try_from(ids.len()).map_err(|_| ProtoError::TooManyFilters { count: ids.len() })?,
        );
        payload.put_slice(ids);
        payload.put_slice(&body);
        if payload.len() > self.limit {
            return Err(ProtoError::SizeOverLimit {
                size: payload.len(),
                limit: self.limit,
            });
        }
        dst.reserve(HEAD + payload.len());
        dst.put_slice(MAGIC);
        dst.put_u32(payload.len() as u32);
        dst.put_slice(&payload);
        self.frames.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtoError> {
        // The magic as far as it has come: another proto's bytes are
        // refused at the first one that differs, not waited on.
        if let Some((found, expected)) = src.iter().zip(MAGIC).find(|(a, b)| a != b) {
            return Err(ProtoError::WrongProtoId {
                found: *found,
                expected: *expected,
            });
        }
        let Some(len) = src.get(MAGIC.len()..HEAD) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > self.limit {
            return Err(ProtoError::SizeOverLimit {
                size: len,
                limit: self.limit,
            });
        }
        if src.len() < HEAD + len {
            return Ok(None);
        }
        src.advance(HEAD);
        let mut f = Fields(src.split_to(len).freeze());
        let seq = Seq(f.u64("seq")?);
        let ptype = PacketType(f.u8("type")?);
        let codec = CodecId(f.u8("codec")?);
        let n = f.u16("uri length")?.into();
        let uri = Uri::from_bytes(f.take(n, "uri")?);
        let pairs = usize::from(f.u16("meta pairs")?);
        if pairs > Meta::MAX_PAIRS {
            return Err(ProtoError::TooManyMetaPairs {
                count: pairs,
                limit: Meta::MAX_PAIRS,
            });
        }
        let mut meta = Meta::new();
        for _ in 0..pairs {
            let n = f.u16("meta key length")?.into();
            let k = f.take(n, "meta key")?;
            let n = f.u32("meta value length")? as usize;
            let v = f.take(n, "meta value")?;
            meta.add(k, v);
        }
        let n = f.u8("filter count")?.into();
        let ids = f.take(n, "filters")?;
        let mut body = BytesMut::from(&f.0[..]);
        for id in ids.iter().rev() {
            let mut out = BytesMut::new();
            self.xfers
                .get(XferId(*id))?
                .decode(&body, self.limit, &mut out)?;
            body = out;
        }
        let mut p = Packet::new(ptype, seq, uri).with_body(codec, body.freeze());
        p.meta = meta;
        p.xfer = XferPipe::from_bytes(ids);
        self.frames.fetch_add(1, Ordering::SeqCst);
        Ok(Some(p))
    }
}

/// 1 MiB whose every byte depends on its place (made once: it is slow
/// to build unoptimized).
pub fn big() -> &'static str {
    static BIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIG.get_or_init(|| {
        (0..1 << 20)
            .map(|i| char::from(b'a' + ((i * 7 + i / 997) % 26) as u8))
            .collect()
    })
}

pub fn run(server_rt: Rt, client_rt: Rt, pair: &str) {
    for net in [Net::Tcp, Net::Unixpacket] {
        let name = format!("{pair} over {net:?} (a proto of our own on both peers)");
        on_both_peers(server_rt, client_rt, net, &name);
    }
    let name = format!("{pair} over Tcp (a proto of our own on one listener and one dial)");
    per_listener_and_dial(server_rt, client_rt, &name);
}

/// `/echo` (saying whether gzip came), `/meta` (the pull's meta back),
/// `/ask_client` (pulls the caller back), `/note` (pushes to `notes`).
pub fn routes(b: &mut PeerBuilder, notes: mpsc::UnboundedSender<String>) {
    b.pull("/echo", |ctx: PullCtx, s: String| async move {
        let gz = if ctx.xfer().iter().any(|x| x == XferId::GZIP) {
            "yes"
        } else {
            "no"
        };
        Ok::<_, Rerror>(Answer::new(s).meta("gz", gz))
    });
    b.pull("/meta", |ctx: PullCtx, _: ()| async move {
        let mut r = Answer::new(());
        for (k, v) in ctx.query().iter() {
            r.meta.add([b"q-", k].concat(), v);
        }
        for (k, v) in ctx.meta().iter() {
            r.meta.add([b"m-", k].concat(), v);
        }
        Ok::<_, Rerror>(r)
    });
    b.pull("/ask_client", |ctx: PullCtx, q: String| async move {
        let answer = ctx
            .session()
            .pull::<_, String>("/client/whoami", &q)
            .await?;
        Ok::<_, Rerror>(format!("server heard: {}", answer.value))
    });
    b.push("/note", move |_ctx: PushCtx, s: String| {
        let tx = notes.clone();
        async move {
            let _ = tx.send(s);
        }
    });
}

pub fn whoami(b: &mut PeerBuilder) {
    b.pull("/client/whoami", |_ctx: PullCtx, q: String| async move {
        Ok::<_, Rerror>(format!("client answers {q}"))
    });
}

/// What a pull to `/echo` brought back, failing the test if it failed.
fn echoed(name: &str, r: Result<Reply<String>, Rerror>) -> String {
    r.unwrap_or_else(|e| panic!("{name}: {e}")).value
}

/// Everything a session does, over `s`: pulls with meta, query and gzip,
/// 1 MiB each way, many at once, a push, a pull back from a handler.
pub async fn exchange(name: &str, s: &Session, notes: &mut mpsc::UnboundedReceiver<String>) {
    let r = guard(
        name,
        s.call("/meta?a=1&b=two%20words")
            .meta("k", "v & w")
            .meta("empty", "")
            .pull::<_, ()>(&()),
    )
    .await
    .unwrap_or_else(|e| panic!("{name}: meta: {e}"));
    assert_eq!(r.meta.get("q-a"), Some("1"), "{name}");
    assert_eq!(r.meta.get("q-b"), Some("two words"), "{name}");
    assert_eq!(r.meta.get("m-k"), Some("v & w"), "{name}");
    assert_eq!(r.meta.get("m-empty"), Some(""), "{name}");
    let text = "gzip me ".repeat(500);
    let r = guard(name, s.call("/echo").gzip().pull::<_, String>(&text))
        .await
        .unwrap_or_else(|e| panic!("{name}: gzip: {e}"));
    assert!(r.value == text, "{name}: the gzipped echo is its body");
    assert_eq!(r.meta.get("gz"), Some("yes"), "{name}");
    let calls = (0..100).map(|i| async move {
        let body = format!("call {i}");
        (body.clone(), s.pull::<_, String>("/echo", &body).await)
    });
    for (body, r) in guard(name, join_all(calls)).await {
        assert_eq!(echoed(name, r), body, "{name}");
    }
    basics(name, s, notes).await;
}

/// The least a session does, over `s`: a pull, 1 MiB each way, a push, a
/// pull back from a handler.
pub async fn basics(name: &str, s: &Session, notes: &mut mpsc::UnboundedReceiver<String>) {
    let r = guard(name, s.pull::<_, String>("/echo", "hello")).await;
    assert_eq!(echoed(name, r), "hello", "{name}");
    let r = guard(
        name,
        s.call("/echo")
            .codec(CodecId::STRING)
            .pull::<_, String>(big()),
    )
    .await;
    assert!(
        echoed(name, r) == big(),
        "{name}: the 1 MiB echo is its body"
    );
    guard(name, s.push("/note", "noted"))
        .await
        .unwrap_or_else(|e| panic!("{name}: push: {e}"));
    assert_eq!(
        guard(name, notes.recv()).await.as_deref(),
        Some("noted"),
        "{name}"
    );
    let r = guard(name, s.pull::<_, String>("/ask_client", "who?")).await;
    assert_eq!(
        echoed(name, r),
        "server heard: client answers who?",
        "{name}"
    );
}

/// Both peers speak our proto for every session.
fn on_both_peers(server_rt: Rt, client_rt: Rt, net: Net, name: &str) {
    let sock = net.sock(name);
    let (server_proto, client_proto) = (TaggedProto::default(), TaggedProto::default());
    let (tx, mut notes) = mpsc::unbounded_channel();
    let mut b = PeerBuilder::new(server_config(net, &sock, "127.0.0.1:0"));
    routes(&mut b, tx);
    b.proto(server_proto.clone());
    let server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: server: {e}"));
    let addr = server.addr().dial_string();
    let mut cb = PeerBuilder::new(client_config(net));
    whoami(&mut cb);
    cb.proto(client_proto.clone());
    let client = client_rt.client(cb);
    let s = client
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial {addr}: {e}"));
    client.block_on(exchange(name, &s, &mut notes));
    // 106 pulls (one of them the handler's pull back) and their replies,
    // and a push, on each side.
    for (side, proto) in [("server", &server_proto), ("client", &client_proto)] {
        assert!(
            proto.frames() > 2 * 106,
            "{name}: the {side}'s sessions spoke our proto for {} frames only",
            proto.frames()
        );
    }
    // A peer of the fast proto is refused by this one.
    let fast = client_rt.client(PeerBuilder::new(client_config(net)));
    refused(
        name,
        "a fast-proto dialer to our proto's server",
        &fast,
        &addr,
    );
    fast.shutdown();
    client.shutdown();
    let report = server.shutdown(std::time::Duration::from_secs(5));
    assert_eq!(report.cancelled, 0, "{name}");
}

/// A dial whose proto the other end does not speak: the connection is
/// made, and its first pull fails with 102 saying the peer closed (or what
/// was wrong), not a hang.
fn refused(name: &str, what: &str, client: &Client, addr: &str) {
    refused_with(name, what, client, addr, DialOptions::default());
}

fn refused_with(name: &str, what: &str, client: &Client, addr: &str, opts: DialOptions) {
    let s = client
        .dial_with(addr, opts)
        .unwrap_or_else(|e| panic!("{name}: {what}: the dial: {e}"));
    let e = client
        .block_on(guard(
            &format!("{name}: {what}"),
            s.pull::<_, String>("/echo", "which proto?"),
        ))
        .expect_err("a pull in a proto the server does not speak");
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{name}: {what}: {e}");
    assert!(
        ["protocol error", "connection closed by peer"]
            .iter()
            .any(|w| e.detail.contains(w)),
        "{name}: {what}: the error says the peer refused (closed) or what was wrong: {e}"
    );
}

/// A fast-proto peer with one listener of our proto; a fast-proto client
/// with one dial of it.
fn per_listener_and_dial(server_rt: Rt, client_rt: Rt, name: &str) {
    let (tx, mut notes) = mpsc::unbounded_channel();
    let mut b = PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        ..PeerConfig::default()
    });
    routes(&mut b, tx);
    let server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: server: {e}"));
    let fast_addr = server.addr().dial_string();
    let listener_proto = TaggedProto::default();
    let ours_addr = server
        .spawn_listener_with(
            ListenOptions::default()
                .address("127.0.0.1:0")
                .proto(listener_proto.clone()),
        )
        .unwrap_or_else(|e| panic!("{name}: the listener of our proto: {e}"))
        .dial_string();
    let dial_proto = TaggedProto::default();
    let mut cb = PeerBuilder::new(PeerConfig::default());
    whoami(&mut cb);
    let client = client_rt.client(cb);
    let ours = client
        .dial_with(&ours_addr, DialOptions::default().proto(dial_proto.clone()))
        .unwrap_or_else(|e| panic!("{name}: dial {ours_addr} with our proto: {e}"));
    client.block_on(basics(name, &ours, &mut notes));
    assert!(
        listener_proto.frames() > 0 && dial_proto.frames() > 0,
        "{name}: our proto was not spoken"
    );
    // The same peers' other listener and other dials speak the fast proto.
    let (on_listener, on_dial) = (listener_proto.frames(), dial_proto.frames());
    let fast = client
        .dial(&fast_addr)
        .unwrap_or_else(|e| panic!("{name}: dial {fast_addr}: {e}"));
    let r = client.block_on(guard(name, fast.pull::<_, String>("/echo", "fast")));
    assert_eq!(echoed(name, r), "fast", "{name}");
    assert_eq!(
        (listener_proto.frames(), dial_proto.frames()),
        (on_listener, on_dial),
        "{name}: the fast-proto session went through our proto"
    );
    // Mismatches, either way round.
    refused(
        name,
        "a fast-proto dial to our proto's listener",
        &client,
        &ours_addr,
    );
    refused_with(
        name,
        "a dial of our proto to the fast-proto listener",
        &client,
        &fast_addr,
        DialOptions::default().proto(dial_proto.clone()),
    );
    let mut ours_only = PeerBuilder::new(PeerConfig::default());
    ours_only.proto(TaggedProto::default());
    let ours_only = client_rt.client(ours_only);
    refused(
        name,
        "a peer of our proto dialing the fast-proto listener",
        &ours_only,
        &fast_addr,
    );
    ours_only.shutdown();
    // Both sessions and both listeners go on.
    client.block_on(async {
        for (s, what) in [(&ours, "ours"), (&fast, "fast")] {
            let r = guard(name, s.pull::<_, String>("/echo", what)).await;
            assert_eq!(echoed(name, r), what, "{name}");
        }
    });
    let again = client
        .dial_with(&ours_addr, DialOptions::default().proto(dial_proto))
        .unwrap_or_else(|e| panic!("{name}: dial {ours_addr} again: {e}"));
    let r = client.block_on(guard(name, again.pull::<_, String>("/echo", "again")));
    assert_eq!(echoed(name, r), "again", "{name}");
    client.shutdown();
    let report = server.shutdown(std::time::Duration::from_secs(5));
    assert_eq!(report.cancelled, 0, "{name}");
}
