//! Plugins: hooks around dial, accept, read, write and disconnect.
//!
//! A [`Plugin`] sees (and may change) every packet at the points the seed
//! names and can stop it with an [`Rerror`]. A [`Plugins`] container runs
//! them in order and is shared by every session of a peer; per-session state
//! lives in the session, reached through [`PluginCtx::state`].
//!
//! Hooks run inside the session's state machine, so they get no I/O either:
//! a plugin acts through its context (send a pull or a push, reply, close
//! the session, ask to be woken at an instant).
//!
//! # Where plugins sit, and in which order they run
//!
//! - **Peer-wide** plugins ([`Plugins`] in [`crate::Shared`]) see every
//!   packet of every session, in the order they were added. Their
//!   `after_read_header` runs before routing, so it may rewrite the URI
//!   (an alias) or take the packet over.
//! - **Route** plugins belong to a router group (`Group::plugin`) or to
//!   one route (`Router::add_route_plugin`) and see only the packets routed
//!   there, after the peer-wide ones: a group's before the groups nested in
//!   it, those before the route's own. For an incoming pull or push they
//!   run `after_read_header` (on the routed packet; one may take it over)
//!   and `after_read_body`; for its reply `before_write_reply` (before the
//!   peer-wide ones: they are closest to the handler), `after_write_reply`
//!   and `on_call_done`. Their own pulls and timers are peer-wide plugins'
//!   tools: a route plugin's `PluginCtx::pull` and `wake_at` go nowhere.

mod auth;
mod heartbeat;
mod stats;

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use auth::{Auth, Verify, AUTH_URI};
pub use heartbeat::{Heartbeat, HEARTBEAT_URI};
pub use stats::{Stats, StatsSnapshot, LATENCY_BUCKETS};

use crate::packet::{Packet, Seq};
use crate::rerror::Rerror;
use crate::router::RouteKind;
use crate::session::{CloseReason, Role};

/// What a hook may do besides changing the packet it is given.
#[derive(Debug)]
pub(crate) enum Action {
    Pull {
        plugin: usize,
        packet: Packet,
        timeout: Option<Duration>,
    },
    Push(Packet),
    Reply {
        seq: Seq,
        result: Result<Packet, Rerror>,
    },
    Close(Rerror),
    WakeAt {
        plugin: usize,
        at: Instant,
    },
}

/// Typed per-session state, one value per type.
#[derive(Default)]
pub struct Extensions(Vec<(TypeId, Box<dyn Any + Send>)>);

impl Extensions {
    /// The value of type `T`, created with `Default` on first use.
    pub fn get_or_default<T: Default + Send + 'static>(&mut self) -> &mut T {
        let id = TypeId::of::<T>();
        let i = match self.0.iter().position(|(t, _)| *t == id) {
            Some(i) => i,
            None => {
                self.0.push((id, Box::new(T::default())));
                self.0.len() - 1
            }
        };
        // The entry at `i` was stored under `TypeId::of::<T>()`, so the
        // downcast succeeds; the fallback keeps this free of panics anyway.
        let slot = &mut self.0[i].1;
        if !slot.is::<T>() {
            *slot = Box::new(T::default());
        }
        slot.downcast_mut::<T>().expect("checked above")
    }

    /// The value of type `T`, if set.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.0
            .iter()
            .find(|(t, _)| *t == TypeId::of::<T>())
            .and_then(|(_, v)| v.downcast_ref())
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extensions({} values)", self.0.len())
    }
}

/// What a hook knows about the session and can ask of it.
pub struct PluginCtx<'a> {
    pub(crate) now: Instant,
    pub(crate) role: Role,
    pub(crate) session_id: u64,
    pub(crate) plugin: usize,
    pub(crate) frame_len: Option<usize>,
    pub(crate) ext: &'a mut Extensions,
    pub(crate) actions: &'a mut Vec<Action>,
    pub(crate) swallowed: bool,
}

impl<'a> PluginCtx<'a> {
    /// The context of a session's hooks; names no plugin until one runs.
    pub(crate) fn new(
        now: Instant,
        role: Role,
        session_id: u64,
        frame_len: Option<usize>,
        ext: &'a mut Extensions,
        actions: &'a mut Vec<Action>,
    ) -> Self {
        PluginCtx {
            now,
            role,
            session_id,
            plugin: usize::MAX,
            frame_len,
            ext,
            actions,
            swallowed: false,
        }
    }

    /// The time the session was given with the input being handled.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Whether this side dialed or accepted the connection.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The session's id (unique within its peer).
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The size on the wire of the frame being read or written, in read
    /// and write hooks.
    pub fn frame_len(&self) -> Option<usize> {
        self.frame_len
    }

    /// This session's value of type `T` (created on first use).
    pub fn state<T: Default + Send + 'static>(&mut self) -> &mut T {
        self.ext.get_or_default()
    }

    /// Sends a pull from this plugin; its reply comes to
    /// [`Plugin::on_plugin_reply`]. URI, meta, codec, body and filters come
    /// from `packet`; the session sets type and seq.
    pub fn pull(&mut self, packet: Packet, timeout: Option<Duration>) {
        self.actions.push(Action::Pull {
            plugin: self.plugin,
            packet,
            timeout,
        });
    }

    /// Sends a push.
    pub fn push(&mut self, packet: Packet) {
        self.actions.push(Action::Push(packet));
    }

    /// Answers an incoming pull (one a read hook [swallowed](Self::swallow)).
    pub fn reply(&mut self, seq: Seq, result: Result<Packet, Rerror>) {
        self.actions.push(Action::Reply { seq, result });
    }

    /// Closes the session with this error once the hook returns; what is
    /// already queued (a reply this hook sent, say) is still flushed.
    pub fn close(&mut self, reason: Rerror) {
        self.actions.push(Action::Close(reason));
    }

    /// Asks for [`Plugin::on_timer`] at or after `at` (replaces this
    /// plugin's previous wake-up on this session).
    pub fn wake_at(&mut self, at: Instant) {
        self.actions.push(Action::WakeAt {
            plugin: self.plugin,
            at,
        });
    }

    /// In a read hook: the plugin has consumed the packet; it is not routed
    /// and later plugins do not see it. A swallowed pull must be answered
    /// with [`PluginCtx::reply`].
    pub fn swallow(&mut self) {
        self.swallowed = true;
    }
}

/// A finished call, for timing and statistics.
#[derive(Debug, Clone, Copy)]
pub struct CallDone<'a> {
    /// `Outgoing`: our pull got its reply (or failed); `Incoming`: we
    /// replied to a peer's pull.
    pub direction: Direction,
    /// The pull's URI.
    pub uri: &'a crate::packet::Uri,
    /// From sending the pull (or receiving it) to the reply.
    pub elapsed: Duration,
    /// The error the call ended with, if any.
    pub error: Option<&'a Rerror>,
}

/// Which side started a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We sent the pull.
    Outgoing,
    /// The peer sent the pull.
    Incoming,
}

/// Hooks around a session's life. Every method has a default that does
/// nothing, so a plugin implements only what it needs.
///
/// A hook that returns `Err` stops the packet: an outgoing pull or push
/// fails with that error at the caller; an incoming pull is answered with it
/// (the handler does not run); an incoming push is dropped; a reply resolves
/// its pull with it. A failing `after_dial`/`after_accept` closes the
/// session.
#[allow(unused_variables)]
pub trait Plugin: Send + Sync + 'static {
    /// The plugin's name, for logs.
    fn name(&self) -> &'static str;

    /// A route was registered (called by [`Plugins::after_register`]).
    fn after_register(&self, kind: RouteKind, path: &str) -> Result<(), Rerror> {
        Ok(())
    }

    /// A listener of the peer started accepting at `addr` (peer-wide
    /// plugins only). An `Err` stops that listener before it serves.
    fn after_listen(&self, addr: &str) -> Result<(), Rerror> {
        Ok(())
    }

    /// A session was created for a connection this side dialed.
    fn after_dial(&self, ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        Ok(())
    }

    /// A session was created for a connection this side accepted.
    fn after_accept(&self, ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        Ok(())
    }

    /// Before a pull is encoded; may change it.
    fn before_write_pull(&self, ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        Ok(())
    }

    /// After a pull was queued for writing.
    fn after_write_pull(&self, ctx: &mut PluginCtx<'_>, p: &Packet) {}

    /// Before a push is encoded; may change it.
    fn before_write_push(&self, ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        Ok(())
    }

    /// After a push was queued for writing.
    fn after_write_push(&self, ctx: &mut PluginCtx<'_>, p: &Packet) {}

    /// Before a reply is encoded; may change it. An `Err` replaces the
    /// reply with that error.
    fn before_write_reply(&self, ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        Ok(())
    }

    /// After a reply was queued for writing.
    fn after_write_reply(&self, ctx: &mut PluginCtx<'_>, p: &Packet) {}

    /// A frame was read and its header decoded, before routing.
    fn after_read_header(&self, ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        Ok(())
    }

    /// A packet was routed to a handler (or matched to its pull), before
    /// its body is handed on.
    fn after_read_body(&self, ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        Ok(())
    }

    /// A pull or an answer to one finished.
    fn on_call_done(&self, ctx: &mut PluginCtx<'_>, call: &CallDone<'_>) {}

    /// The reply to a pull this plugin sent with [`PluginCtx::pull`].
    fn on_plugin_reply(&self, ctx: &mut PluginCtx<'_>, result: &Result<Packet, Rerror>) {}

    /// The instant asked for with [`PluginCtx::wake_at`] has come.
    fn on_timer(&self, ctx: &mut PluginCtx<'_>) {}

    /// The session closed.
    fn on_disconnect(&self, ctx: &mut PluginCtx<'_>, reason: &CloseReason) {}
}

/// Plugins run in order, shared by every session of a peer.
#[derive(Clone, Default)]
pub struct Plugins {
    list: Vec<Arc<dyn Plugin>>,
}

impl Plugins {
    /// No plugin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a plugin; it runs after those added before it.
    pub fn add(&mut self, plugin: Arc<dyn Plugin>) -> &mut Self {
        self.list.push(plugin);
        self
    }

    /// Builder form of [`Plugins::add`].
    pub fn with(mut self, plugin: impl Plugin) -> Self {
        self.list.push(Arc::new(plugin));
        self
    }

    /// The plugins, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Plugin>> {
        self.list.iter()
    }

    /// How many plugins.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Runs `after_listen` of every plugin, in order; the first error
    /// stops.
    pub fn after_listen(&self, addr: &str) -> Result<(), Rerror> {
        self.list.iter().try_for_each(|p| p.after_listen(addr))
    }

    /// Runs `after_register` of every plugin for every route of `router`.
    pub fn after_register<H>(&self, router: &crate::router::Router<H>) -> Result<(), Rerror> {
        for (kind, path) in router.routes() {
            for p in &self.list {
                p.after_register(kind, path)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Plugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|p| p.name()))
            .finish()
    }
}
