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
//! | `async-std` | `async_std` | async-std (sockets and timers on async-io) |
//! | `smol` | `smol` | smol (the same adapter as `async-std`) |
//! | `mio` | [`mio`] | none: a blocking `mio::Poll` loop |
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use teleport::tokio::{Peer, PeerBuilder, PeerConfig, PullCtx};
//! use teleport::Rerror;
//!
//! let mut b = PeerBuilder::new(PeerConfig::default());
//! b.pull("/echo", |_ctx: PullCtx, s: String| async move { Ok::<_, Rerror>(s) });
//! let server = Peer::from_builder(b)?;
//! let addr = server.bind().await?; // the default: 127.0.0.1, port 0
//! let client = Peer::new(PeerConfig::default())?;
//! let session = client.dial(&addr.to_string()).await?;
//! assert_eq!(session.pull::<_, String>("/echo", "hi").await?.value, "hi");
//! client.shutdown(Duration::from_secs(1)).await;
//! server.shutdown(Duration::from_secs(1)).await;
//! # Ok(()) }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
#![warn(missing_docs)]

pub use teleport_core::*;

/// Peers on tokio (feature `tokio`, on by default).
#[cfg(feature = "tokio")]
pub mod tokio {
    pub use teleport_tokio::*;
}

/// Peers on async-std (feature `async-std`): sockets and timers on
/// async-io, tasks on async-std's global executor.
#[cfg(feature = "async-std")]
pub mod async_std {
    pub use teleport_async_std::async_std::*;
}

/// Peers on smol (feature `smol`): the `async_std` module's adapter, with
/// tasks on smol's global executor.
#[cfg(feature = "smol")]
pub mod smol {
    pub use teleport_async_std::smol::*;
}

/// Blocking peers on a mio poll loop, without an async runtime (feature
/// `mio`).
#[cfg(feature = "mio")]
pub mod mio {
    pub use teleport_mio::*;
}
