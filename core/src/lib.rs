//! `teleport-core`: the sans-IO protocol core of teleport for Rust.
//!
//! It turns packets into bytes and back, byte-compatible with Go teleport
//! v3's "fast" protocol, and never does I/O, reads a clock or spawns: the
//! runtime adapters feed it bytes and time.
//!
//! - [`Packet`], [`Meta`], [`Uri`]: the packet model.
//! - [`Proto`], [`FastProto`]: frame formats.
//! - [`Codec`], [`CodecRegistry`]: typed bodies (JSON, protobuf, string).
//! - [`XferFilter`], [`XferRegistry`]: payload filters (gzip).
//! - [`Rerror`]: the error that travels in a reply.
//! - [`Session`]: one connection's state machine; [`Router`], [`Plugin`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod meta;
mod packet;
pub mod plugin;
mod proto;
mod registry;
mod rerror;
pub mod router;
pub mod session;
mod xfer;

pub use codec::{
    Codec, CodecRegistry, DecodeBody, EncodeBody, JsonCodec, Protobuf, ProtobufCodec, StringCodec,
    Visit,
};
pub use error::{CodecError, ProtoError, XferError};
pub use meta::Meta;
pub use packet::{CodecId, Packet, PacketType, Seq, Uri, XferId, XferPipe};
pub use plugin::{Plugin, PluginCtx, Plugins};
pub use proto::{
    pipe_is_known, AnyProto, DecodeJob, Decoded, FastProto, MakeProto, Proto, DEFAULT_READ_LIMIT,
    MAX_EAGER_RESERVE, MIN_FRAME,
};
pub use rerror::Rerror;
pub use router::{RouteKind, Router};
pub use session::{
    CloseReason, Event, IncomingPull, IncomingPush, Role, Session, SessionConfig, SessionStats,
    Shared, State, DEFAULT_FRAME_TIMEOUT, DEFAULT_MAX_INCOMING_BYTES, GOING_AWAY_URI,
    WRITE_ERROR_GRACE,
};
pub use xfer::{Gzip, XferFilter, XferRegistry};

pub use bytes;
