//! The session handle user code holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use teleport_core::{
    CloseReason, CodecId, CodecRegistry, DecodeBody, EncodeBody, Meta, Packet, PacketType, Rerror,
    Seq, Shared, Uri, XferId, XferPipe,
};
use tokio::sync::{mpsc, oneshot};

use crate::addr::PeerAddr;
use crate::handler::Handler;
use crate::trace::{ClientTrace, Kind};

/// Called after a command is queued, for an owner that waits on something
/// other than the channel (a poll loop's waker).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// A way for a handle to carry out a pull or push itself, on the caller's
/// thread, instead of queueing it for the connection's owner: one task
/// hop fewer per call. [`crate::adapter::Driver::run`] installs one
/// ([`crate::direct::SharedConn`]) for the adapters whose connection task it runs.
///
/// The owner stays the one that reads, runs handlers and waits on
/// timers; the direct path only ever *tries*: when the connection is busy
/// (its owner holds it), down (re-dialing) or closing, it gives the
/// command back and the handle queues it as usual. So per-caller order is
/// kept: a caller's next call starts only after its previous one was
/// carried out, whichever way that went.
pub trait DirectPath: Send + Sync {
    /// Carries out `cmd` (a [`Command::Pull`] or [`Command::Push`]) now,
    /// or gives it back untouched (to be queued: boxing it instead would
    /// cost every call an allocation).
    #[allow(clippy::result_large_err)]
    fn try_command(&self, cmd: Command) -> Result<(), Command>;

    /// A command went to the channel instead: the owner should take it.
    /// (So an owner with a direct path need not wait on the channel too.)
    fn queued(&self);
}

/// What a handle asks of the connection task that owns the session.
#[derive(Debug)]
pub enum Command {
    /// Send a pull; the reply goes to `tx`.
    Pull {
        /// The pull to send: URI, meta, codec, body and filters; the
        /// session sets the type and a fresh seq.
        packet: Packet,
        /// How long to wait for the reply: `None` for the configured
        /// default, `Duration::MAX` for no limit.
        timeout: Option<Duration>,
        /// Gets the reply packet, or the error the pull ended with (the
        /// peer's, or a local one: refused, timed out, connection lost).
        tx: oneshot::Sender<Result<Packet, Rerror>>,
    },
    /// Send a push; whether it was queued goes to `tx`.
    Push {
        /// The push to send; the session sets the type and a fresh seq.
        packet: Packet,
        /// Gets `Ok(())` once the push is queued for writing, or the
        /// error it was refused with.
        tx: oneshot::Sender<Result<(), Rerror>>,
    },
    /// Close gracefully by `deadline` (default: the close timeout);
    /// `done` fires when the session has ended.
    Close {
        /// When pending calls must be over; `None` for now plus the
        /// configured close timeout.
        deadline: Option<Instant>,
        /// Fired once the session has ended, if someone waits for it.
        done: Option<oneshot::Sender<()>>,
    },
    /// Close gracefully by `deadline`, telling the peer to move first (a
    /// session we accepted; see [`teleport_core::GOING_AWAY_URI`]): a
    /// peer's shutdown does this.
    GoAway {
        /// When what still runs is cut.
        deadline: Instant,
    },
}

pub(crate) struct SessionInner {
    pub(crate) id: u64,
    pub(crate) cmd: mpsc::UnboundedSender<Command>,
    pub(crate) remote: PeerAddr,
    pub(crate) local: PeerAddr,
    pub(crate) shared: Arc<Shared<Handler>>,
    pub(crate) wake: Option<Wake>,
    /// Set by the adapter, once; see [`DirectPath`].
    pub(crate) direct: OnceLock<Arc<dyn DirectPath>>,
    /// A close was asked for: calls go to the owner, behind the close.
    pub(crate) closing: AtomicBool,
    /// Commands sent to the owner and not taken yet.
    pub(crate) queued: std::sync::atomic::AtomicUsize,
    /// Why the session ended for good, once it has.
    pub(crate) closed: tokio::sync::watch::Sender<Option<CloseReason>>,
    /// The peer it belongs to.
    pub(crate) peer: std::sync::Weak<crate::registry::PeerCore>,
    /// The id given with [`Session::set_id`].
    pub(crate) custom_id: std::sync::Mutex<Option<String>>,
}

/// A handle to one session: cheap to clone, `Send + Sync`. Pulls from many
/// tasks are pipelined over the one connection.
///
/// Dropping handles does not close the session; [`Session::close`] or the
/// peer's shutdown does.
#[derive(Clone)]
pub struct Session(pub(crate) Arc<SessionInner>);

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.0.id)
            .field("remote", &self.0.remote)
            .finish()
    }
}

/// A reply's decoded body, with its meta and codec.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply<T> {
    /// The decoded body.
    pub value: T,
    /// The reply's meta.
    pub meta: Meta,
    /// The codec the body came in.
    pub codec: CodecId,
}

impl<T> Reply<T> {
    /// The body, without meta.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> std::ops::Deref for Reply<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl Session {
    /// The session's id, unique within its peer; it survives redials.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Gives the session an id of the application's (a user name, a device
    /// id), by which [`PeerRef::session_by_id`] finds it: the seed's
    /// `SetId`. The numeric [`Session::id`] stays what logs show. A session
    /// that had the same id before loses it.
    ///
    /// [`PeerRef::session_by_id`]: crate::PeerRef::session_by_id
    pub fn set_id(&self, id: impl Into<String>) {
        let id = id.into();
        let old = self
            .0
            .custom_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(id.clone());
        if let Some(peer) = self.0.peer.upgrade() {
            peer.name_session(self.0.id, old.as_deref(), &id);
        }
    }

    /// The id given with [`Session::set_id`], if any.
    pub fn custom_id(&self) -> Option<String> {
        self.0
            .custom_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The peer this session belongs to (gone once the peer is dropped).
    pub fn peer(&self) -> Option<crate::PeerRef> {
        self.0.peer.upgrade().map(crate::PeerRef)
    }

    /// The other end's address.
    pub fn remote_addr(&self) -> &PeerAddr {
        &self.0.remote
    }

    /// This end's address (of the first connection, for a redialed one).
    pub fn local_addr(&self) -> &PeerAddr {
        &self.0.local
    }

    /// Routes, plugins, codecs and settings of this session's peer (for
    /// adapters: not part of the API).
    #[doc(hidden)]
    pub fn shared(&self) -> &Arc<Shared<Handler>> {
        &self.0.shared
    }

    /// The codecs of this session's peer.
    pub fn codecs(&self) -> &CodecRegistry {
        &self.0.shared.codecs
    }

    /// Pulls `uri` with `arg` in the peer's default codec and decodes the
    /// reply as `R`.
    pub async fn pull<A, R>(&self, uri: &str, arg: &A) -> Result<Reply<R>, Rerror>
    where
        A: EncodeBody + ?Sized,
        R: DecodeBody,
    {
        self.call(uri).pull(arg).await
    }

    /// Pushes `uri` with `arg` in the peer's default codec. Returns once
    /// the push is queued on the connection; the peer sends no answer.
    pub async fn push<A: EncodeBody + ?Sized>(&self, uri: &str, arg: &A) -> Result<(), Rerror> {
        self.call(uri).push(arg).await
    }

    /// A pull or push with options: meta, timeout, codec, filters.
    pub fn call(&self, uri: impl Into<Uri>) -> Call<'_> {
        Call {
            session: self,
            packet: Packet::new(PacketType::PULL, Seq(0), uri),
            timeout: None,
        }
    }

    /// Closes the session gracefully: pending calls may finish for the
    /// peer's close timeout; returns when the connection is closed.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .send(Command::Close {
                deadline: None,
                done: Some(tx),
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Starts a graceful close that must be over by `deadline`, without
    /// waiting for it.
    pub fn close_by(&self, deadline: Instant) {
        let _ = self.send(Command::Close {
            deadline: Some(deadline),
            done: None,
        });
    }

    /// Starts a graceful close by `deadline` that first tells the peer to
    /// move (the going-away notice, on a session we accepted; see
    /// [`teleport_core::GOING_AWAY_URI`]): the peer's calls are served
    /// until it stops making them. A peer's shutdown does this to every
    /// session.
    pub fn go_away(&self, deadline: Instant) {
        let _ = self.send(Command::GoAway { deadline });
    }

    /// Whether the session has ended for good (true from the moment
    /// [`Session::closed`] resolves).
    pub fn is_closed(&self) -> bool {
        self.0.closed.borrow().is_some() || self.0.cmd.is_closed()
    }

    /// Why the session ended, once it has for good (`None` while it runs).
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.0.closed.borrow().clone()
    }

    /// Resolves once the session has ended for good (after its re-dials,
    /// if any), with why. Works on any executor.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.0.closed.subscribe();
        let r = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        r.unwrap_or(CloseReason::Local)
    }

    /// Records why the session ended (its owner does, once, at the end).
    pub(crate) fn set_closed(&self, reason: Option<CloseReason>) {
        // The owner may go without a reason (a cancelled task): it ended.
        self.0
            .closed
            .send_replace(Some(reason.unwrap_or(CloseReason::Local)));
    }

    fn send(&self, mut cmd: Command) -> Result<(), Rerror> {
        match &cmd {
            Command::Close { .. } | Command::GoAway { .. } => {
                self.0.closing.store(true, Ordering::Release)
            }
            _ => {
                if let Some(direct) = self.0.direct.get() {
                    // Not past calls still queued for the owner: calls are
                    // carried out in the order they were made.
                    if !self.0.closing.load(Ordering::Acquire)
                        && self.0.queued.load(Ordering::Acquire) == 0
                    {
                        match direct.try_command(cmd) {
                            Ok(()) => return Ok(()),
                            Err(back) => cmd = back,
                        }
                    }
                }
            }
        }
        // Counted before it is sent, so the owner's count never goes below.
        self.0.queued.fetch_add(1, Ordering::AcqRel);
        if self.0.cmd.send(cmd).is_err() {
            self.0.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(crate::driver::closed_error(self.close_reason().as_ref()));
        }
        if let Some(direct) = self.0.direct.get() {
            direct.queued();
        }
        if let Some(wake) = &self.0.wake {
            wake();
        }
        Ok(())
    }
}

/// Options of one call, then [`Call::pull`] or [`Call::push`].
///
/// ```no_run
/// # async fn f(s: teleport_peer::Session) -> Result<(), teleport_core::Rerror> {
/// use std::time::Duration;
/// let reply = s
///     .call("/home/test?peer_id=110")
///     .meta("author", "henrylee2cn")
///     .timeout(Duration::from_secs(2))
///     .gzip()
///     .pull::<_, serde_json::Value>(&serde_json::json!({"a": 1}))
///     .await?;
/// println!("{:?} {:?}", reply.value, reply.meta.get("echo"));
/// # Ok(()) }
/// ```
#[must_use = "a call does nothing until pulled or pushed"]
pub struct Call<'a> {
    session: &'a Session,
    packet: Packet,
    timeout: Option<Duration>,
}

impl Call<'_> {
    /// Adds a meta pair (the seed's `WithAddMeta`; see [`Call::set_meta`]).
    pub fn meta(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.packet.meta.add(key, value);
        self
    }

    /// Adds a meta pair, even if the key is there already (the seed's
    /// `WithAddMeta`; the same as [`Call::meta`]).
    pub fn add_meta(self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.meta(key, value)
    }

    /// Sets a meta key: replaces the first pair with it, or adds one (the
    /// seed's `WithSetMeta`).
    pub fn set_meta(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.packet.meta.set(key, value);
        self
    }

    /// Adds every pair of `meta`.
    pub fn meta_all(mut self, meta: &Meta) -> Self {
        self.packet.meta.extend_from(meta);
        self
    }

    /// A timeout for this pull (`Duration::MAX`: none, whatever the
    /// default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The body codec.
    pub fn codec(mut self, codec: CodecId) -> Self {
        self.packet.body_codec = codec;
        self
    }

    /// Adds a transfer filter (the first added is the outermost).
    pub fn xfer(mut self, id: XferId) -> Self {
        self.packet.xfer.push(id);
        self
    }

    /// Gzips the payload.
    pub fn gzip(self) -> Self {
        self.xfer(XferId::GZIP)
    }

    /// Sets the whole filter pipe.
    pub fn xfer_pipe(mut self, pipe: XferPipe) -> Self {
        self.packet.xfer = pipe;
        self
    }

    fn encode<A: EncodeBody + ?Sized>(&mut self, arg: &A) -> Result<(), Rerror> {
        if self.packet.body_codec == CodecId::NONE {
            self.packet.body_codec = self.session.0.shared.config.default_codec;
        }
        self.packet.body = self
            .session
            .codecs()
            .encode_to_bytes(self.packet.body_codec, arg)
            .map_err(|e| Rerror::write_failed(format!("body: {e}")))?;
        Ok(())
    }

    /// Sends the pull with `arg` and decodes the reply as `R`.
    pub async fn pull<A, R>(mut self, arg: &A) -> Result<Reply<R>, Rerror>
    where
        A: EncodeBody + ?Sized,
        R: DecodeBody,
    {
        self.encode(arg)?;
        let session = self.session;
        let p = self.pull_packet().await?;
        let value = session
            .codecs()
            .decode(p.body_codec, &p.body)
            .map_err(|e| Rerror::bad_packet(format!("reply body: {e}")))?;
        Ok(Reply {
            value,
            meta: p.meta,
            codec: p.body_codec,
        })
    }

    /// Sends the pull with an already encoded body; returns the reply
    /// packet undecoded (for proxies: the body is never copied).
    pub async fn pull_raw(mut self, codec: CodecId, body: Bytes) -> Result<Packet, Rerror> {
        self.packet.body_codec = codec;
        self.packet.body = body;
        self.pull_packet().await
    }

    async fn pull_packet(mut self) -> Result<Packet, Rerror> {
        let trace = self.trace(Kind::Pull);
        let (tx, rx) = oneshot::channel();
        let result = match self.session.send(Command::Pull {
            packet: self.packet,
            timeout: self.timeout,
            tx,
        }) {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err(Rerror::conn_closed().with_detail("session task ended"))),
            Err(e) => Err(e),
        };
        trace.pulled(&result);
        result
    }

    /// The call's span, begun; the packet gets its `traceparent`.
    #[inline]
    fn trace(&mut self, kind: Kind) -> ClientTrace {
        let session = self.session;
        ClientTrace::start(
            kind,
            session.remote_addr(),
            session.codecs(),
            &mut self.packet,
        )
    }

    /// Sends a push with an already encoded body (forwarded as is).
    pub async fn push_raw(mut self, codec: CodecId, body: Bytes) -> Result<(), Rerror> {
        self.packet.body_codec = codec;
        self.packet.body = body;
        self.push_packet().await
    }

    /// Sends a push with `arg`.
    pub async fn push<A: EncodeBody + ?Sized>(mut self, arg: &A) -> Result<(), Rerror> {
        self.encode(arg)?;
        self.push_packet().await
    }

    async fn push_packet(mut self) -> Result<(), Rerror> {
        let trace = self.trace(Kind::Push);
        let (tx, rx) = oneshot::channel();
        let result = match self.session.send(Command::Push {
            packet: self.packet,
            tx,
        }) {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err(Rerror::conn_closed().with_detail("session task ended"))),
            Err(e) => Err(e),
        };
        trace.pushed(&result);
        result
    }
}
