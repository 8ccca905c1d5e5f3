//! `teleport-peer`: the half of a teleport peer that does not depend on a
//! runtime, shared by every adapter (`teleport-tokio`, `teleport-async-std`,
//! `teleport-mio`) so none of them writes it again. Users reach it through
//! the `teleport` crate; what is at the top here is theirs:
//!
//! - [`PeerConfig`]: settings, loadable from TOML or YAML.
//! - [`PeerBuilder`]: routes, groups, controllers, plugins, codecs, filters.
//! - [`PullCtx`], [`PushCtx`], [`UnknownPullCtx`], [`UnknownPushCtx`],
//!   [`IntoReply`], [`Answer`]: handlers.
//! - [`Session`], [`Call`], [`Reply`]: the handle user code pulls and
//!   pushes through; [`PeerRef`]: the peer as handlers see it.
//! - [`DialOptions`], [`ListenOptions`], [`ServeOptions`], [`DialError`].
//! - [`Grace`], [`GraceSignal`]: stopping on SIGINT or SIGTERM, with hooks.
//! - [`trace`]: a span per call, and the W3C trace context carried in
//!   meta ([`TraceContext`]); OpenTelemetry export with the `otel` feature.
//!
//! The machinery adapters are built from (the connection driver, the
//! session registry, the shared connection, socket helpers) is in
//! [`adapter`].
#![warn(missing_docs)]

mod addr;
mod builder;
mod config;
#[doc(hidden)] // shown under `adapter`
pub mod direct;
mod driver;
#[cfg(unix)]
pub mod grace;
mod handler;
#[cfg(unix)]
pub mod handoff;
#[doc(hidden)] // shown under `adapter`
pub mod net;
mod options;
mod peer_ref;
mod registry;
mod session;
#[cfg(feature = "tls")]
pub mod tls;
pub mod trace;
#[cfg(feature = "validate")]
mod valid;

pub use addr::PeerAddr;
pub use builder::{Controller, Group, PeerBuilder};
pub use config::{ConfigError, Network, PeerConfig, TlsDialSettings, TlsListenSettings};
#[cfg(unix)]
pub use grace::{Grace, GraceReport, GraceSignal, Signal};
pub use handler::{Answer, BoxFuture, IntoReply, PullCtx, PushCtx, UnknownPullCtx, UnknownPushCtx};
pub use options::{DialError, DialOptions, ListenOptions, ServeOptions};
pub use peer_ref::{Broadcast, PeerRef};
pub use registry::{ProtoFunc, ShutdownReport};
pub use session::{Call, Reply, Session};
pub use trace::TraceContext;
#[cfg(feature = "validate")]
pub use valid::{garde, Valid};

/// For adapter authors: what a runtime adapter is built from. A
/// connection's owner drives a [`Driver`](adapter::Driver) and waits on its
/// runtime; [`PeerCore`](adapter::PeerCore) keeps the sessions and the
/// shutdown; [`direct`] shares a connection with the session's callers;
/// [`net`] has the socket details that are the same everywhere.
pub mod adapter {
    pub use crate::driver::{
        closed_error, finish_handler, panicked, refuse, CoreSession, Done, Driver, HandlerCall,
        Token, BUDGET, FINAL_FLUSH, FLUSH_GRACE, INLINE_DECODE_LIMIT, MAX_REDIAL_WAIT,
    };
    pub use crate::handler::{
        pull_handler, push_handler, unknown_pull_handler, unknown_push_handler, Handler,
    };
    pub use crate::registry::{
        Abort, Accepting, Linger, PeerCore, PeerTls, SessionStart, LINGER, LINGER_BYTES,
    };
    pub use crate::session::{Command, DirectPath, Wake};
    pub use crate::{direct, net};
}
