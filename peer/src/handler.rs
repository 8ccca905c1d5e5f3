//! Handlers and their contexts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use teleport_core::{
    CodecId, CodecRegistry, DecodeBody, EncodeBody, Meta, Packet, Rerror, Seq, Uri, XferPipe,
};

use crate::addr::PeerAddr;
use crate::registry::PeerCore;
use crate::session::Session;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pub(crate) type PullFn = dyn Fn(PullCtx) -> BoxFuture<Result<Packet, Rerror>> + Send + Sync;
pub(crate) type PushFn = dyn Fn(PushCtx) -> BoxFuture<()> + Send + Sync;

/// A routed handler, as the router stores it.
#[derive(Clone)]
pub enum Handler {
    /// Answers pulls.
    Pull(Arc<PullFn>),
    /// Takes pushes.
    Push(Arc<PushFn>),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handler::Pull(_) => "Handler::Pull",
            Handler::Push(_) => "Handler::Push",
        })
    }
}

/// What a pull handler knows: the session (to push or pull back), the
/// pull's URI, query, meta and body codec, and the peer's address.
pub struct PullCtx {
    pub(crate) session: Session,
    pub(crate) peer: Arc<PeerCore>,
    pub(crate) packet: Packet,
    pub(crate) reply_codec: CodecId,
}

/// What a push handler knows.
pub struct PushCtx {
    pub(crate) session: Session,
    pub(crate) peer: Arc<PeerCore>,
    pub(crate) packet: Packet,
}

macro_rules! ctx_common {
    ($t:ty) => {
        impl $t {
            /// The session the packet came on; push or pull back through it.
            pub fn session(&self) -> &Session {
                &self.session
            }

            /// The packet's URI (path and query).
            pub fn uri(&self) -> &Uri {
                &self.packet.uri
            }

            /// The URI's path, as text.
            pub fn path(&self) -> std::borrow::Cow<'_, str> {
                String::from_utf8_lossy(self.packet.uri.path())
            }

            /// The URI's query pairs.
            pub fn query(&self) -> Meta {
                self.packet.uri.query_pairs()
            }

            /// The packet's meta.
            pub fn meta(&self) -> &Meta {
                &self.packet.meta
            }

            /// The codec the body was encoded with.
            pub fn body_codec(&self) -> CodecId {
                self.packet.body_codec
            }

            /// The body as received.
            pub fn raw_body(&self) -> &Bytes {
                &self.packet.body
            }

            /// The packet's seq.
            pub fn seq(&self) -> Seq {
                self.packet.seq
            }

            /// The transfer filters the packet came through.
            pub fn xfer(&self) -> &XferPipe {
                &self.packet.xfer
            }

            /// The peer's address.
            pub fn remote_addr(&self) -> &PeerAddr {
                self.session.remote_addr()
            }

            /// This peer: its other sessions, a push to all of them.
            pub fn peer(&self) -> crate::PeerRef {
                crate::PeerRef(self.peer.clone())
            }

            /// Decodes the body as `T` with its codec (an empty body gives
            /// `T`'s zero value). A body that does not decode is a 400.
            pub fn bind<T: DecodeBody>(&self) -> Result<T, Rerror> {
                self.session
                    .codecs()
                    .decode(self.packet.body_codec, &self.packet.body)
                    .map_err(body_error)
            }
        }
    };
}

/// The error a body that does not decode (400 `Bad Packet`) or breaks a
/// rule of its type (400 `Invalid Argument`, naming the field) is answered
/// with.
fn body_error(e: teleport_core::CodecError) -> Rerror {
    match e {
        teleport_core::CodecError::Invalid { reason } => {
            Rerror::new(Rerror::CODE_BAD_PACKET, "Invalid Argument").with_detail(reason)
        }
        e => Rerror::bad_packet(format!("body: {e}")),
    }
}

ctx_common!(PullCtx);
ctx_common!(PushCtx);

impl PullCtx {
    /// The codec the reply body will use unless the handler picks one.
    pub fn reply_codec(&self) -> CodecId {
        self.reply_codec
    }
}

/// What a pull handler may return: any body value (encoded with the
/// pull's codec), or [`Answer`] to add meta, pick a codec or filters.
pub trait IntoReply {
    /// Turns the handler's value into a reply packet (meta, codec, body,
    /// extra filters).
    fn into_reply(self, codecs: &CodecRegistry, codec: CodecId) -> Result<Packet, Rerror>;
}

fn encode_reply<T: EncodeBody + ?Sized>(
    value: &T,
    codecs: &CodecRegistry,
    codec: CodecId,
) -> Result<Packet, Rerror> {
    let body = codecs
        .encode_to_bytes(codec, value)
        .map_err(|e| Rerror::internal(format!("reply body: {e}")))?;
    Ok(Packet::default().with_body(codec, body))
}

impl<T: EncodeBody> IntoReply for T {
    fn into_reply(self, codecs: &CodecRegistry, codec: CodecId) -> Result<Packet, Rerror> {
        encode_reply(&self, codecs, codec)
    }
}

/// A reply value with meta, and optionally its own codec and extra
/// transfer filters (added after the pull's, which a reply always keeps).
#[derive(Debug, Clone, Default)]
pub struct Answer<T> {
    /// The body value.
    pub value: T,
    /// Meta for the reply.
    pub meta: Meta,
    /// A codec other than the pull's.
    pub codec: Option<CodecId>,
    /// Filters to add.
    pub xfer: XferPipe,
}

impl<T> Answer<T> {
    /// The value with no meta.
    pub fn new(value: T) -> Self {
        Answer {
            value,
            meta: Meta::new(),
            codec: None,
            xfer: XferPipe::new(),
        }
    }

    /// Adds a meta pair.
    pub fn meta(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.meta.add(key, value);
        self
    }

    /// Encodes the body with this codec.
    pub fn codec(mut self, codec: CodecId) -> Self {
        self.codec = Some(codec);
        self
    }
}

impl<T: EncodeBody> IntoReply for Answer<T> {
    fn into_reply(self, codecs: &CodecRegistry, codec: CodecId) -> Result<Packet, Rerror> {
        let mut p = encode_reply(&self.value, codecs, self.codec.unwrap_or(codec))?;
        p.meta = self.meta;
        p.xfer = self.xfer;
        Ok(p)
    }
}

/// Wraps a typed pull handler: decodes the argument, runs it, encodes the
/// result. An argument that does not decode is answered with a 400 and
/// the handler does not run (Go closes the connection, D-BODY-KILLS-CONN).
pub fn pull_handler<F, Fut, A, R>(f: F) -> Handler
where
    F: Fn(PullCtx, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Rerror>> + Send + 'static,
    A: DecodeBody + Send + 'static,
    R: IntoReply + 'static,
{
    Handler::Pull(Arc::new(move |ctx: PullCtx| {
        let arg = match ctx.bind::<A>() {
            Ok(a) => a,
            Err(e) => return Box::pin(std::future::ready(Err(e))) as BoxFuture<_>,
        };
        let codecs = ctx.session.shared().clone();
        let codec = ctx.reply_codec;
        let fut = f(ctx, arg);
        Box::pin(async move { fut.await?.into_reply(&codecs.codecs, codec) })
    }))
}

/// Wraps a typed push handler. An argument that does not decode is logged
/// and dropped.
pub fn push_handler<F, Fut, A>(f: F) -> Handler
where
    F: Fn(PushCtx, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
    A: DecodeBody + Send + 'static,
{
    Handler::Push(Arc::new(move |ctx: PushCtx| match ctx.bind::<A>() {
        Ok(a) => match ctx.session.shared().config.slow_threshold {
            None => Box::pin(f(ctx, a)) as BoxFuture<()>,
            // A push has no reply to time: the handler is timed here, for
            // the slow-call alarm.
            Some(slow) => {
                let (session, uri) = (ctx.session.id(), ctx.uri().clone());
                let started = std::time::Instant::now();
                let fut = f(ctx, a);
                Box::pin(async move {
                    fut.await;
                    let cost = started.elapsed();
                    if cost > slow {
                        tracing::warn!(target: "teleport::packet", session, %uri, ?cost,
                            "slow push handler");
                    }
                })
            }
        },
        Err(e) => {
            tracing::warn!(target: "teleport::peer", uri = %ctx.uri(), error = %e, "push body does not decode; dropped");
            Box::pin(std::future::ready(()))
        }
    }))
}

/// What a handler of pulls to unknown routes knows: all a [`PullCtx`] does
/// (it dereferences to one), with the body not decoded yet.
pub struct UnknownPullCtx(PullCtx);

/// What a handler of pushes to unknown routes knows (see
/// [`UnknownPullCtx`]).
pub struct UnknownPushCtx(PushCtx);

macro_rules! unknown_ctx {
    ($t:ident, $inner:ty) => {
        impl std::ops::Deref for $t {
            type Target = $inner;
            fn deref(&self) -> &$inner {
                &self.0
            }
        }

        impl $t {
            /// Decodes the body as `T` with the codec it came in, and says
            /// which that was (the seed's `ctx.Bind`). An empty body gives
            /// `T`'s zero value; a body that does not decode is a 400.
            pub fn bind<T: DecodeBody>(&self) -> Result<(T, CodecId), Rerror> {
                Ok((self.0.bind()?, self.0.body_codec()))
            }

            /// The context itself.
            pub fn into_inner(self) -> $inner {
                self.0
            }
        }
    };
}

unknown_ctx!(UnknownPullCtx, PullCtx);
unknown_ctx!(UnknownPushCtx, PushCtx);

/// Wraps a handler of pulls to unknown routes: it runs on the raw packet.
pub fn unknown_pull_handler<F, Fut, R>(f: F) -> Handler
where
    F: Fn(UnknownPullCtx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Rerror>> + Send + 'static,
    R: IntoReply + 'static,
{
    Handler::Pull(Arc::new(move |ctx: PullCtx| {
        let codecs = ctx.session.shared().clone();
        let codec = ctx.reply_codec;
        let fut = f(UnknownPullCtx(ctx));
        Box::pin(async move { fut.await?.into_reply(&codecs.codecs, codec) }) as BoxFuture<_>
    }))
}

/// Wraps a handler of pushes to unknown routes: it runs on the raw packet.
pub fn unknown_push_handler<F, Fut>(f: F) -> Handler
where
    F: Fn(UnknownPushCtx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Handler::Push(Arc::new(move |ctx: PushCtx| {
        Box::pin(f(UnknownPushCtx(ctx))) as BoxFuture<()>
    }))
}
