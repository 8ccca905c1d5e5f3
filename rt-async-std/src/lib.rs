//! `teleport-async-std`: teleport peers on async-io, for async-std, smol or
//! any other executor.
//!
//! A [`Peer`] is a server and a client at once. Routes are registered on a
//! [`PeerBuilder`]; [`Peer::spawn_listener`] / [`Peer::listen`] serve them and
//! [`Peer::dial`] connects out. Either way you get a [`Session`] handle to
//! pull and push on, and handlers get one in their context to push or pull
//! back. The protocol work is done by `teleport-core` and the
//! runtime-independent peer by `teleport-peer`; this crate moves bytes,
//! arms one timer per session and runs handlers.
//!
//! Sockets and timers are async-io's, whose reactor async-std and smol
//! both drive; the one thing that differs between them, starting a task,
//! is the [`Executor`] a peer is made with. Feature `async-std` adds
//! `Executor::AsyncStd` and the preset module `async_std`, feature `smol`
//! adds `Executor::Smol` and `smol`; [`Executor::custom`] takes any other.
//!
//! ```
//! # #[cfg(feature = "smol")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use teleport_core::Rerror;
//! use teleport_async_std::{Executor, Peer, PeerBuilder, PeerConfig, PullCtx};
//!
//! smol::block_on(async {
//!     let mut server = PeerBuilder::new(PeerConfig::default());
//!     server.pull("/hello", |_ctx: PullCtx, name: String| async move {
//!         Ok::<_, Rerror>(format!("hello, {name}"))
//!     });
//!     let server = Peer::from_builder(server, Executor::Smol)?;
//!     let addr = server.spawn_listener().await?; // the default: 127.0.0.1, port 0
//!
//!     let client = Peer::new(PeerConfig::default(), Executor::Smol)?;
//!     let session = client.dial(&addr.to_string()).await?;
//!     let reply = session.pull::<_, String>("/hello", "teleport").await?;
//!     assert_eq!(reply.value, "hello, teleport");
//!
//!     client.shutdown(Duration::from_secs(1)).await;
//!     server.shutdown(Duration::from_secs(1)).await;
//!     Ok(())
//! })
//! # }
//! # #[cfg(not(feature = "smol"))]
//! # fn main() {}
//! ```
//!
//! Handlers run inside their session's connection task (concurrently with
//! each other and with the socket, not in parallel): a handler that blocks
//! its thread stalls its session, so hand CPU-heavy or blocking work to a
//! thread pool (`blocking::unblock`, `async_std::task::spawn_blocking`).
//!
//! Networks: `tcp`, `tcp4`, `tcp6`, `unix` and `unixpacket` (a
//! `SOCK_SEQPACKET` unix socket on async-io's reactor; see
//! `teleport_peer::net::SeqPacket` for how a byte stream travels in its
//! messages).
#![warn(missing_docs)]

mod conn;
mod executor;
mod net;
mod peer;
pub mod transport;

pub use executor::{Executor, Spawn};
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

/// A module of everything this crate exports, with a `Peer` whose
/// constructors take no executor: it is always this one.
#[cfg(any(feature = "async-std", feature = "smol"))]
macro_rules! preset {
    ($variant:ident, $module:literal, $runtime:literal, $block_on:literal) => {
        pub use crate::{
            core, BoxFuture, Call, Controller, DialError, DialOptions, Executor, Group, IntoReply,
            ListenOptions, Network, PeerAddr, PeerBuilder, PeerConfig, PullCtx, PushCtx, Answer,
            Reply, ServeOptions, Session, ShutdownReport, Spawn, UnknownPullCtx, UnknownPushCtx, PeerRef, Broadcast,
        };
        #[cfg(unix)]
        pub use crate::{grace_signal, Grace, GraceReport, GraceSignal, Signal};

        #[doc = concat!("A [`Peer`](crate::Peer) whose tasks run on ", $runtime, "'s global")]
        /// executor; everything else is the peer's (it dereferences to it).
        ///
        /// ```no_run
        /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
        #[doc = concat!("use teleport_async_std::", $module, "::{Peer, PeerBuilder, PeerConfig, PullCtx};")]
        /// use teleport_async_std::core::Rerror;
        ///
        /// let mut b = PeerBuilder::new(PeerConfig::default());
        /// b.pull("/echo", |_ctx: PullCtx, s: String| async move { Ok::<_, Rerror>(s) });
        /// let server = Peer::from_builder(b)?;
        /// let addr = server.spawn_listener().await?;
        /// let session = Peer::new(PeerConfig::default())?.dial(&addr.to_string()).await?;
        /// assert_eq!(session.pull::<_, String>("/echo", "hi").await?.value, "hi");
        /// # Ok(()) }
        #[doc = concat!("# ", $block_on, "(demo()).unwrap();")]
        /// ```
        #[derive(Clone, Debug)]
        pub struct Peer(crate::Peer);

        impl Peer {
            /// A peer with no routes (a pure client) and these settings.
            pub fn new(config: PeerConfig) -> std::io::Result<Peer> {
                crate::Peer::new(config, Executor::$variant).map(Peer)
            }

            /// The peer a builder describes.
            pub fn from_builder(builder: PeerBuilder) -> std::io::Result<Peer> {
                crate::Peer::from_builder(builder, Executor::$variant).map(Peer)
            }

            /// The peer itself.
            pub fn into_inner(self) -> crate::Peer {
                self.0
            }
        }

        impl std::ops::Deref for Peer {
            type Target = crate::Peer;
            fn deref(&self) -> &crate::Peer {
                &self.0
            }
        }

        impl AsRef<crate::Peer> for Peer {
            fn as_ref(&self) -> &crate::Peer {
                &self.0
            }
        }

        impl From<Peer> for crate::Peer {
            fn from(p: Peer) -> crate::Peer {
                p.0
            }
        }
    };
}

/// Peers whose tasks run on async-std (feature `async-std`).
#[cfg(feature = "async-std")]
pub mod async_std {
    preset!(
        AsyncStd,
        "async_std",
        "async-std",
        "::async_std::task::block_on"
    );
}

/// Peers whose tasks run on smol (feature `smol`).
#[cfg(feature = "smol")]
pub mod smol {
    preset!(Smol, "smol", "smol", "::smol::block_on");
}
