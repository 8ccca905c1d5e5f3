//! `teleport-tokio`: teleport peers on the tokio runtime.
//!
//! A [`Peer`] is a server and a client at once. Routes are registered on a
//! [`PeerBuilder`]; [`Peer::spawn_listener`] / [`Peer::listen`] serve them and
//! [`Peer::dial`] connects out. Either way you get a [`Session`] handle to
//! pull and push on, and handlers get one in their context to push or pull
//! back. The protocol work is done by `teleport-core` and the
//! runtime-independent peer by `teleport-peer`; this crate moves bytes,
//! arms one timer per session and runs handlers.
//!
//! ```
//! use std::time::Duration;
//! use teleport_core::Rerror;
//! use teleport_tokio::{PeerBuilder, PeerConfig, PullCtx, Peer};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut server = PeerBuilder::new(PeerConfig::default());
//!     server.pull("/hello", |_ctx: PullCtx, name: String| async move {
//!         Ok::<_, Rerror>(format!("hello, {name}"))
//!     });
//!     let server = Peer::from_builder(server)?;
//!     let addr = server.spawn_listener().await?; // the default: 127.0.0.1, port 0
//!
//!     let client = Peer::new(PeerConfig::default())?;
//!     let session = client.dial(&addr.to_string()).await?;
//!     let reply = session.pull::<_, String>("/hello", "teleport").await?;
//!     assert_eq!(reply.value, "hello, teleport");
//!
//!     client.shutdown(Duration::from_secs(1)).await;
//!     server.shutdown(Duration::from_secs(1)).await;
//!     Ok(())
//! }
//! ```
//!
//! Networks: `tcp`, `tcp4`, `tcp6`, `unix` and `unixpacket` (a
//! `SOCK_SEQPACKET` unix socket on tokio's reactor; see
//! `teleport_peer::net::SeqPacket` for how a byte stream travels in its
//! messages).
#![warn(missing_docs)]

mod conn;
mod net;
mod peer;
pub mod transport;

#[cfg(unix)]
pub use peer::grace_signal;
pub use peer::Peer;
pub use teleport_peer::{
    Answer, BoxFuture, Broadcast, Call, Controller, DialError, DialOptions, Group, IntoReply,
    ListenOptions, Network, PeerAddr, PeerBuilder, PeerConfig, PeerRef, PullCtx, PushCtx, Reply,
    ServeOptions, Session, ShutdownReport, UnknownPullCtx, UnknownPushCtx,
};
#[cfg(unix)]
pub use teleport_peer::{Grace, GraceReport, GraceSignal, Signal};

pub use teleport_core as core;
