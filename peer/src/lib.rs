//! `teleport-peer`: the half of a teleport peer that does not depend on a
//! runtime, shared by every adapter (`teleport-tokio`, `teleport-async-std`,
//! `teleport-mio`) so none of them writes it again.
//!
//! - [`PeerConfig`]: settings, loadable from TOML or YAML.
//! - [`PeerBuilder`]: routes, controllers, plugins, codecs and filters.
//! - [`Handler`], [`PullCtx`], [`PushCtx`], [`IntoReply`]: handlers.
//! - [`Session`], [`Call`], [`Reply`]: the handle user code pulls and
//!   pushes through. Where the adapter shares the connection
//!   ([`direct`]), a call is encoded and written by its caller while the
//!   connection is free; otherwise it goes to the connection's owner by
//!   message, with channels that work on any executor.
//! - [`Driver`]: what a connection's owner does besides waiting.
//! - [`PeerCore`]: the session registry and graceful shutdown.
//! - [`direct`]: the connection shared by its owner and the session's
//!   callers, so a caller writes its own calls.
//! - [`net`]: socket details that are the same on every runtime.
#![warn(missing_docs)]

mod addr;
mod builder;
mod config;
pub mod direct;
mod driver;
mod handler;
pub mod net;
mod options;
mod peer_ref;
mod registry;
mod session;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "validate")]
mod valid;

pub use addr::PeerAddr;
pub use builder::{Controller, Group, PeerBuilder};
pub use config::{ConfigError, Network, PeerConfig, TlsDialSettings, TlsListenSettings};
pub use driver::{
    closed_error, finish_handler, panicked, refuse, CoreSession, Done, Driver, HandlerCall, Token,
    BUDGET, FINAL_FLUSH, FLUSH_GRACE, INLINE_DECODE_LIMIT, MAX_REDIAL_WAIT,
};
pub use handler::{
    pull_handler, push_handler, unknown_pull_handler, unknown_push_handler, BoxFuture, Handler,
    IntoReply, PullCtx, PushCtx, Replied, UnknownPullCtx, UnknownPushCtx,
};
pub use options::{DialError, DialOptions, ListenOptions, ServeOptions};
pub use peer_ref::{Broadcast, PeerRef};
pub use registry::{
    Abort, Blocking, Linger, PeerCore, PeerTls, ProtoFunc, SessionStart, ShutdownReport, LINGER,
    LINGER_BYTES,
};
pub use session::{Call, Command, DirectPath, Reply, Session, Wake};
#[cfg(feature = "validate")]
pub use valid::{garde, Valid};
