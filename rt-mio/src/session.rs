//! The blocking session handle: [`teleport_peer::Session`]'s calls, each
//! waiting on the calling thread for its answer.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use teleport_core::{
    CloseReason, CodecId, CodecRegistry, DecodeBody, EncodeBody, Meta, Packet, Rerror, Shared, Uri,
    XferId, XferPipe,
};
use teleport_peer::adapter::Handler;
use teleport_peer::{PeerAddr, Reply};

use crate::exec;

/// A handle to one session: cheap to clone, `Send + Sync`. Its calls block
/// the calling thread until the answer, a timeout or an error; pulls from
/// many threads are pipelined over the one connection.
///
/// In a handler, wrap the context's session to call back blockingly:
/// `Session::from(ctx.session())`. With handlers on the loop
/// ([`Peer::with_workers`](crate::Peer::with_workers) `0`), a blocking
/// call on the handler's own peer would wait on the very thread that must
/// answer it: a pull fails at once with a 500 instead of hanging, a push
/// returns once handed to the loop, a close only starts.
///
/// Dropping handles does not close the session; [`Session::close`] or the
/// peer's shutdown does.
#[derive(Clone)]
pub struct Session(teleport_peer::Session);

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<teleport_peer::Session> for Session {
    fn from(s: teleport_peer::Session) -> Self {
        Session(s)
    }
}

impl From<&teleport_peer::Session> for Session {
    fn from(s: &teleport_peer::Session) -> Self {
        Session(s.clone())
    }
}

/// Fails a blocking call that would wait on the calling thread itself.
fn check_not_own_loop(s: &teleport_peer::Session) -> Result<(), Rerror> {
    if exec::on_loop_of(Arc::as_ptr(s.shared()) as usize) {
        return Err(Rerror::internal(
            "a blocking call on the peer's own poll loop (a handler run inline) would never \
             return; run handlers on workers",
        ));
    }
    Ok(())
}

impl Session {
    /// The runtime-independent handle (its calls are `async`).
    pub fn inner(&self) -> &teleport_peer::Session {
        &self.0
    }

    /// The runtime-independent handle.
    pub fn into_inner(self) -> teleport_peer::Session {
        self.0
    }

    /// The session's id, unique within its peer; it survives redials.
    pub fn id(&self) -> u64 {
        self.0.id()
    }

    /// The other end's address.
    pub fn remote_addr(&self) -> &PeerAddr {
        self.0.remote_addr()
    }

    /// This end's address (of the first connection, for a redialed one).
    pub fn local_addr(&self) -> &PeerAddr {
        self.0.local_addr()
    }

    /// Routes, plugins, codecs and settings of this session's peer (for
    /// adapters: not part of the API).
    #[doc(hidden)]
    pub fn shared(&self) -> &Arc<Shared<Handler>> {
        self.0.shared()
    }

    /// The codecs of this session's peer.
    pub fn codecs(&self) -> &CodecRegistry {
        self.0.codecs()
    }

    /// Pulls `uri` with `arg` in the peer's default codec and waits for
    /// the reply, decoded as `R`.
    pub fn pull<A, R>(&self, uri: &str, arg: &A) -> Result<Reply<R>, Rerror>
    where
        A: EncodeBody + ?Sized,
        R: DecodeBody,
    {
        self.call(uri).pull(arg)
    }

    /// Pushes `uri` with `arg` in the peer's default codec. Returns once
    /// the push is queued on the connection; the peer sends no answer.
    pub fn push<A: EncodeBody + ?Sized>(&self, uri: &str, arg: &A) -> Result<(), Rerror> {
        self.call(uri).push(arg)
    }

    /// A pull or push with options: meta, timeout, codec, filters.
    pub fn call(&self, uri: impl Into<Uri>) -> Call<'_> {
        Call {
            session: self,
            call: self.0.call(uri),
        }
    }

    /// Closes the session gracefully: pending calls may finish for the
    /// peer's close timeout; returns when the connection is closed. (On
    /// the peer's own loop thread it only starts the close.)
    pub fn close(&self) {
        if check_not_own_loop(&self.0).is_err() {
            let deadline = teleport_peer::adapter::PeerCore::deadline_after(
                self.0.shared().config.close_timeout,
            );
            self.0.close_by(deadline);
            return;
        }
        exec::block_on(self.0.close());
    }

    /// Starts a graceful close that must be over by `deadline`, without
    /// waiting for it.
    pub fn close_by(&self, deadline: Instant) {
        self.0.close_by(deadline);
    }

    /// Whether the session has ended for good.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Names the session (Go's `sess.SetId`): the peer then finds it by
    /// that name with [`PeerRef::session_by_id`](teleport_peer::PeerRef::session_by_id).
    pub fn set_id(&self, id: impl Into<String>) {
        self.0.set_id(id);
    }

    /// The name given with [`Session::set_id`], if any.
    pub fn custom_id(&self) -> Option<String> {
        self.0.custom_id()
    }

    /// The peer this session belongs to, while it runs.
    pub fn peer(&self) -> Option<teleport_peer::PeerRef> {
        self.0.peer()
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.0.close_reason()
    }

    /// Blocks until the session has ended for good (after any background
    /// redial gave up) and says why. On the peer's own poll loop (a
    /// handler run inline) it cannot wait and fails with a 500 at once.
    pub fn closed(&self) -> Result<CloseReason, Rerror> {
        check_not_own_loop(&self.0)?;
        Ok(exec::block_on(self.0.closed()))
    }
}

/// Options of one call, then [`Call::pull`] or [`Call::push`], which
/// block.
///
/// ```no_run
/// # fn f(s: teleport_mio::Session) -> Result<(), teleport_core::Rerror> {
/// use std::time::Duration;
/// let reply = s
///     .call("/home/test?peer_id=110")
///     .meta("author", "henrylee2cn")
///     .timeout(Duration::from_secs(2))
///     .gzip()
///     .pull::<_, String>("hello")?;
/// println!("{} {:?}", reply.value, reply.meta.get("echo"));
/// # Ok(()) }
/// ```
#[must_use = "a call does nothing until pulled or pushed"]
pub struct Call<'a> {
    session: &'a Session,
    call: teleport_peer::Call<'a>,
}

impl Call<'_> {
    /// Adds a meta pair.
    pub fn meta(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.call = self.call.meta(key, value);
        self
    }

    /// Adds every pair of `meta`.
    pub fn meta_all(mut self, meta: &Meta) -> Self {
        self.call = self.call.meta_all(meta);
        self
    }

    /// Adds a meta pair, keeping pairs of the same key (Go's
    /// `WithAddMeta`).
    pub fn add_meta(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.call = self.call.add_meta(key, value);
        self
    }

    /// Sets a meta key to one value, replacing its earlier pairs (Go's
    /// `WithSetMeta`).
    pub fn set_meta(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.call = self.call.set_meta(key, value);
        self
    }

    /// A timeout for this pull (`Duration::MAX`: none, whatever the
    /// default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.call = self.call.timeout(timeout);
        self
    }

    /// The body codec.
    pub fn codec(mut self, codec: CodecId) -> Self {
        self.call = self.call.codec(codec);
        self
    }

    /// Adds a transfer filter (the first added is the outermost).
    pub fn xfer(mut self, id: XferId) -> Self {
        self.call = self.call.xfer(id);
        self
    }

    /// Gzips the payload.
    pub fn gzip(mut self) -> Self {
        self.call = self.call.gzip();
        self
    }

    /// Sets the whole filter pipe.
    pub fn xfer_pipe(mut self, pipe: XferPipe) -> Self {
        self.call = self.call.xfer_pipe(pipe);
        self
    }

    /// Sends the pull with `arg` and waits for the reply, decoded as `R`.
    pub fn pull<A, R>(self, arg: &A) -> Result<Reply<R>, Rerror>
    where
        A: EncodeBody + ?Sized,
        R: DecodeBody,
    {
        check_not_own_loop(&self.session.0)?;
        exec::block_on(self.call.pull(arg))
    }

    /// Sends the pull with an already encoded body and waits for the reply
    /// packet, undecoded (for proxies: the body is never copied).
    pub fn pull_raw(self, codec: CodecId, body: Bytes) -> Result<Packet, Rerror> {
        check_not_own_loop(&self.session.0)?;
        exec::block_on(self.call.pull_raw(codec, body))
    }

    /// Sends a push with an already encoded body; returns once it is
    /// queued.
    pub fn push_raw(self, codec: CodecId, body: Bytes) -> Result<(), Rerror> {
        check_not_own_loop(&self.session.0)?;
        exec::block_on(self.call.push_raw(codec, body))
    }

    /// Sends a push with `arg`; returns once it is queued. (On the peer's
    /// own loop thread, once it is handed to the loop: whether the session
    /// took it is not known yet.)
    pub fn push<A: EncodeBody + ?Sized>(self, arg: &A) -> Result<(), Rerror> {
        if check_not_own_loop(&self.session.0).is_err() {
            // The first poll sends the command; waiting for the verdict is
            // what would hang.
            let mut push = std::pin::pin!(self.call.push(arg));
            let waker = std::task::Waker::noop();
            return match push
                .as_mut()
                .poll(&mut std::task::Context::from_waker(waker))
            {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => Ok(()),
            };
        }
        exec::block_on(self.call.push(arg))
    }
}
