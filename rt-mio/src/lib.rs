//! `teleport-mio`: blocking teleport peers for programs that do not want an
//! async runtime.
//!
//! A [`Peer`] runs one `mio::Poll` loop on a thread it starts. The loop owns
//! every session of the peer (socket, protocol core, write buffer) and its
//! listeners, waits on readiness, on one `mio::Waker` for messages from
//! other threads, and on the earliest deadline of all its sessions. User
//! code holds [`Session`] handles whose calls block the calling thread:
//! [`Session::pull`] returns the reply, a timeout (408) or an error.
//!
//! Handlers are registered on a [`PeerBuilder`] as with any adapter; plain
//! functions go in through the [`prelude`]'s `pull_sync` / `push_sync`.
//! They run on a pool of worker threads ([`default_workers`], one per CPU),
//! so a handler may block, even on a pull back to the caller; with
//! [`Peer::with_workers`] `0` they run on the loop itself, which saves a
//! thread hop per call but lets a slow handler stall every session.
//!
//! ```
//! use teleport_core::Rerror;
//! use teleport_mio::prelude::*;
//! use teleport_mio::{Peer, PeerBuilder, PeerConfig, PullCtx};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut server = PeerBuilder::new(PeerConfig::default());
//! server.pull_sync("/hello", |_ctx: PullCtx, name: String| {
//!     Ok::<_, Rerror>(format!("hello, {name}"))
//! });
//! let server = Peer::from_builder(server)?;
//! let addr = server.spawn_listener()?;
//!
//! let client = Peer::new(PeerConfig::default())?;
//! let session = client.dial(&addr.to_string())?;
//! let reply = session.pull::<_, String>("/hello", "teleport")?;
//! assert_eq!(reply.value, "hello, teleport");
//!
//! server.shutdown(std::time::Duration::from_secs(1));
//! # Ok(()) }
//! ```
//!
//! Async handlers (`PeerBuilder::pull` with an `async` block) work too:
//! their futures are polled by the worker pool (or the loop), so they may
//! await runtime-independent things (a session's async calls, channels),
//! not a runtime's timers or sockets.
//!
//! Networks: `tcp`, `tcp4`, `tcp6`, `unix` and `unixpacket` (a
//! `SOCK_SEQPACKET` unix socket; see `teleport_peer::net::SeqPacket` for
//! how a byte stream travels in its messages).
//!
//! With the feature `tls`, a listener serves TLS and a dial speaks it
//! (`PeerBuilder::listen_tls` / `dial_tls`, the config's `listen_tls` /
//! `dial_tls` files, or per listener and dial in `ListenOptions` /
//! `DialOptions`): rustls with its ring provider, driven by the poll loop
//! itself. A dial's handshake runs on the dialing thread before
//! [`Peer::dial`] returns, and fails with a typed `DialError::Tls`; an
//! accepted connection's handshake runs on the loop, and one that fails or
//! times out is logged while the listener serves on.
#![warn(missing_docs)]

mod event_loop;
mod exec;
mod net;
mod peer;
mod session;
mod sync;
#[cfg(feature = "tls")]
mod tls;

pub use net::MioStream;
#[cfg(unix)]
pub use peer::grace_signal;
pub use peer::{default_workers, Peer};
pub use session::{Call, Session};
pub use sync::{SyncController, SyncGroup, SyncHandlers};
pub use teleport_peer::{
    Answer, BoxFuture, Broadcast, Controller, DialError, DialOptions, Group, IntoReply,
    ListenOptions, Network, PeerAddr, PeerBuilder, PeerConfig, PeerRef, PullCtx, PushCtx, Reply,
    ServeOptions, ShutdownReport, UnknownPullCtx, UnknownPushCtx,
};
#[cfg(unix)]
pub use teleport_peer::{Grace, GraceReport, GraceSignal, Signal};

pub use teleport_core as core;

/// The synchronous-handler traits, to `use teleport_mio::prelude::*`.
pub mod prelude {
    pub use crate::sync::{SyncController, SyncGroup, SyncHandlers};
}
