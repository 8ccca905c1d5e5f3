//! teleport for Rust: a socket framework for peer-to-peer messaging, RPC,
//! gateways, micro-services, push and game services, wire-compatible with
//! Go teleport v3.
//!
//! The protocol core's types (packets, codecs, `Rerror`, router, plugins)
//! are re-exported here; each runtime adapter is a module under its feature:
//!
//! | feature | module | runtime |
//! |---|---|---|
//! | `tokio` (default) | [`tokio`] | tokio |
//!
//! ```no_run
//! use teleport::tokio::{Peer, PeerBuilder, PeerConfig, PullCtx};
//! use teleport::Rerror;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut b = PeerBuilder::new(PeerConfig::default());
//! b.pull("/echo", |_ctx: PullCtx, s: String| async move { Ok::<_, Rerror>(s) });
//! let server = Peer::from_builder(b)?;
//! let addr = server.bind().await?;
//! let session = Peer::new(PeerConfig::default())?.dial(&addr.to_string()).await?;
//! assert_eq!(session.pull::<_, String>("/echo", "hi").await?.value, "hi");
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub use teleport_core::*;

/// Peers on tokio (feature `tokio`, on by default).
#[cfg(feature = "tokio")]
pub mod tokio {
    pub use teleport_tokio::*;
}
