//! Local error types of the wire layer.
//!
//! These stay on this side of the connection: they say what was wrong with
//! bytes we read or values we were asked to write. What travels to the peer
//! is a [`Rerror`](crate::Rerror).

use crate::packet::{CodecId, XferId};

/// Why a frame could not be decoded or encoded by a [`Proto`](crate::Proto).
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The declared frame size cannot hold even the fixed header.
    #[error("frame size {size} is below the minimum {min}")]
    SizeTooSmall {
        /// The `size` field as read.
        size: usize,
        /// The smallest size a frame with this many filters can have.
        min: usize,
    },
    /// The declared frame size is over the configured limit.
    #[error("frame size {size} exceeds limit {limit}")]
    SizeOverLimit {
        /// The `size` field as read (or the size of a frame being written).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The protocol id byte is not the one this proto speaks.
    #[error("protocol id {found:#04x} is not {expected:#04x}")]
    WrongProtoId {
        /// The byte found.
        found: u8,
        /// The byte expected.
        expected: u8,
    },
    /// A length field points past the end of the (decoded) payload.
    #[error("{field} needs {need} bytes but only {left} are left in the payload")]
    PastEnd {
        /// Which field was being read.
        field: &'static str,
        /// How many bytes it needed.
        need: usize,
        /// How many bytes were left.
        left: usize,
    },
    /// The connection ended in the middle of a frame.
    #[error("connection ended inside a frame: {have} bytes buffered, {need} needed")]
    Truncated {
        /// Bytes buffered when the input ended.
        have: usize,
        /// Bytes the frame needs (4 while the size is not known yet).
        need: usize,
    },
    /// A field is too long for its length prefix.
    #[error("{field} is {len} bytes, longer than its length field allows")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// More than 255 transfer filters were requested.
    #[error("{count} transfer filters, at most 255 fit in a frame")]
    TooManyFilters {
        /// How many were requested.
        count: usize,
    },
    /// A frame's meta has more pairs than [`Meta::MAX_PAIRS`]: refused
    /// before any pair is built (see there for why it is an error).
    ///
    /// [`Meta::MAX_PAIRS`]: crate::Meta::MAX_PAIRS
    #[error("meta has {count} pairs, more than the {limit} allowed")]
    TooManyMetaPairs {
        /// How many pairs the meta has.
        count: usize,
        /// The most allowed.
        limit: usize,
    },
    /// A transfer filter failed.
    #[error(transparent)]
    Xfer(#[from] XferError),
}

/// Why a transfer filter could not transform a payload.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum XferError {
    /// No filter with this id is registered (vector `unknown_xfer_id`).
    #[error("unsupported transfer filter id: {id}")]
    Unknown {
        /// The id found in the frame.
        id: XferId,
    },
    /// The filter's output would exceed the read limit (e.g. a gzip bomb).
    #[error("transfer filter {id} output exceeds limit {limit}")]
    OutputOverLimit {
        /// The filter.
        id: XferId,
        /// The limit its output hit.
        limit: usize,
    },
    /// The filter's input stops before its end: a gzip member cut short
    /// (D-GZIP). Go takes whatever inflated before the cut as the payload;
    /// here the frame is refused.
    #[error("transfer filter {id}: stream is truncated: {reason}")]
    Truncated {
        /// The filter.
        id: XferId,
        /// Where it stopped.
        reason: &'static str,
    },
    /// The filter's input is malformed.
    #[error("transfer filter {id}: {reason}")]
    Malformed {
        /// The filter.
        id: XferId,
        /// What was wrong.
        reason: String,
    },
}

/// Why a body could not be encoded or decoded by a codec.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The body decoded, but the value breaks a rule of its type (a
    /// validated argument: see `teleport_peer::Valid`).
    #[error("invalid argument: {reason}")]
    Invalid {
        /// Which field broke which rule.
        reason: String,
    },
    /// No codec with this id is registered (vector `unknown_codec_with_body`).
    #[error("unsupported codec id: {id}")]
    UnknownId {
        /// The id.
        id: CodecId,
    },
    /// No codec with this name is registered.
    #[error("unsupported codec name: {name:?}")]
    UnknownName {
        /// The name.
        name: String,
    },
    /// The value's kind cannot go through this codec (for example a serde
    /// value through protobuf, or a struct through the string codec).
    #[error("codec {codec} cannot carry {value}")]
    WrongPairing {
        /// The codec's name.
        codec: &'static str,
        /// What kind of value was offered.
        value: &'static str,
    },
    /// The codec failed to encode the value.
    #[error("codec {codec} encode: {reason}")]
    Encode {
        /// The codec's name.
        codec: &'static str,
        /// The codec's message.
        reason: String,
    },
    /// The body bytes are not a valid value of the requested type
    /// [invalid_json_body, json_type_mismatch].
    #[error("codec {codec} decode: {reason}")]
    Decode {
        /// The codec's name.
        codec: &'static str,
        /// The codec's message.
        reason: String,
    },
}

impl From<ProtoError> for std::io::Error {
    fn from(e: ProtoError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

impl From<CodecError> for std::io::Error {
    fn from(e: CodecError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}
