//! Body codecs (SPEC §5): how a typed value becomes a packet body and back.
//!
//! A [`Codec`] is chosen per packet by its id byte. Serde types go through
//! any codec that speaks serde (JSON, string, or one a user registers);
//! prost messages go through protobuf wrapped in [`Protobuf`]. Offering a
//! value to a codec that cannot carry it is a [`CodecError::WrongPairing`],
//! never a panic.
//!
//! ```
//! use teleport_core::{CodecId, CodecRegistry, Protobuf};
//! let codecs = CodecRegistry::default();
//! let body = codecs.encode_to_bytes(CodecId::JSON, &vec![1, 2]).unwrap();
//! assert_eq!(&body[..], b"[1,2]");
//! let back: Vec<i32> = codecs.decode(CodecId::JSON, &body).unwrap();
//! assert_eq!(back, [1, 2]);
//! // A string through the string codec is its raw bytes.
//! let s = codecs.encode_to_bytes(CodecId::STRING, "héllo").unwrap();
//! assert_eq!(&s[..], "héllo".as_bytes());
//! // A struct cannot go through the string codec, nor serde through protobuf.
//! assert!(codecs.encode_to_bytes(CodecId::STRING, &vec![1]).is_err());
//! assert!(codecs.encode_to_bytes(CodecId::PROTOBUF, &vec![1]).is_err());
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::value::{
    BorrowedBytesDeserializer, BorrowedStrDeserializer, MapDeserializer, SeqDeserializer,
    UnitDeserializer,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CodecError;
use crate::packet::CodecId;
use crate::registry::IdTable;

/// The callback a codec hands its deserializer to.
pub type Visit<'a, 'de> =
    &'a mut dyn FnMut(&mut dyn erased_serde::Deserializer<'de>) -> Result<(), erased_serde::Error>;

/// A body encoding named by one id byte.
///
/// Serde-based codecs implement [`Codec::encode_serde`] and
/// [`Codec::decode_serde`]; the defaults refuse serde values with
/// [`CodecError::WrongPairing`].
pub trait Codec: Send + Sync + 'static {
    /// The id byte that names this codec in a frame.
    fn id(&self) -> CodecId;
    /// The codec's name (`"json"`, `"protobuf"`, `"string"`).
    fn name(&self) -> &'static str;

    /// Appends the encoding of a serde value to `dst`.
    fn encode_serde(
        &self,
        value: &dyn erased_serde::Serialize,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let _ = (value, dst);
        Err(CodecError::WrongPairing {
            codec: self.name(),
            value: "a serde value",
        })
    }

    /// Decodes `src` by handing a deserializer over it to `visit`. The whole
    /// of `src` must be one value.
    fn decode_serde<'de>(&self, src: &'de [u8], visit: Visit<'_, 'de>) -> Result<(), CodecError> {
        let _ = (src, visit);
        Err(CodecError::WrongPairing {
            codec: self.name(),
            value: "a serde value",
        })
    }
}

/// A value that can be written as a body through a codec.
///
/// Implemented for every `Serialize` type and for [`Protobuf`]. Implement it
/// for your own wrapper to carry a non-serde type through your own codec.
pub trait EncodeBody {
    /// Appends the encoding of `self` by `codec` to `dst`.
    fn encode_body(&self, codec: &dyn Codec, dst: &mut BytesMut) -> Result<(), CodecError>;
}

/// A value that can be read from a body through a codec.
pub trait DecodeBody: Sized {
    /// Decodes a non-empty body.
    fn decode_body(codec: &dyn Codec, src: &[u8]) -> Result<Self, CodecError>;

    /// The value of an empty body, which is never handed to a codec
    /// (SPEC §5): Go's zero value.
    fn empty_body() -> Result<Self, CodecError>;
}

impl<T: Serialize + ?Sized> EncodeBody for T {
    fn encode_body(&self, codec: &dyn Codec, dst: &mut BytesMut) -> Result<(), CodecError> {
        // `&T` is sized even when `T` is not, so it can be erased.
        codec.encode_serde(&self, dst)
    }
}

impl<T: DeserializeOwned> DecodeBody for T {
    fn decode_body(codec: &dyn Codec, src: &[u8]) -> Result<Self, CodecError> {
        let mut out = None;
        codec.decode_serde(src, &mut |de| {
            out = Some(erased_serde::deserialize::<T>(de)?);
            Ok(())
        })?;
        out.ok_or(CodecError::Decode {
            codec: codec.name(),
            reason: "codec produced no value".into(),
        })
    }

    /// Tries, in turn: unit (`()`, `Option`), the empty string (`String`,
    /// bytes), the empty map (structs whose fields all have defaults), the
    /// empty sequence.
    fn empty_body() -> Result<Self, CodecError> {
        type E = serde::de::value::Error;
        T::deserialize(UnitDeserializer::<E>::new())
            .or_else(|_| T::deserialize(BorrowedStrDeserializer::<E>::new("")))
            .or_else(|_| {
                T::deserialize(MapDeserializer::<_, E>::new(std::iter::empty::<((), ())>()))
            })
            .or_else(|_| T::deserialize(SeqDeserializer::<_, E>::new(std::iter::empty::<()>())))
            .map_err(|e| CodecError::Decode {
                codec: "empty body",
                reason: format!("no zero value for {}: {e}", std::any::type_name::<T>()),
            })
    }
}

/// A prost message as a body, for the protobuf codec.
///
/// ```
/// use teleport_core::{CodecId, CodecRegistry, Protobuf};
/// #[derive(Clone, PartialEq, prost::Message)]
/// struct Ping { #[prost(string, tag = "1")] text: String }
/// let codecs = CodecRegistry::default();
/// let body = codecs
///     .encode_to_bytes(CodecId::PROTOBUF, &Protobuf(Ping { text: "hi".into() }))
///     .unwrap();
/// let Protobuf(back): Protobuf<Ping> = codecs.decode(CodecId::PROTOBUF, &body).unwrap();
/// assert_eq!(back.text, "hi");
/// // A protobuf message cannot go through JSON.
/// assert!(codecs.encode_to_bytes(CodecId::JSON, &Protobuf(back)).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Protobuf<M>(pub M);

impl<M: prost::Message> EncodeBody for Protobuf<M> {
    fn encode_body(&self, codec: &dyn Codec, dst: &mut BytesMut) -> Result<(), CodecError> {
        if codec.id() != CodecId::PROTOBUF {
            return Err(CodecError::WrongPairing {
                codec: codec.name(),
                value: "a protobuf message",
            });
        }
        dst.reserve(self.0.encoded_len());
        self.0.encode(dst).map_err(|e| CodecError::Encode {
            codec: codec.name(),
            reason: e.to_string(),
        })
    }
}

impl<M: prost::Message + Default> DecodeBody for Protobuf<M> {
    fn decode_body(codec: &dyn Codec, src: &[u8]) -> Result<Self, CodecError> {
        if codec.id() != CodecId::PROTOBUF {
            return Err(CodecError::WrongPairing {
                codec: codec.name(),
                value: "a protobuf message",
            });
        }
        M::decode(src)
            .map(Protobuf)
            .map_err(|e| CodecError::Decode {
                codec: codec.name(),
                reason: e.to_string(),
            })
    }

    fn empty_body() -> Result<Self, CodecError> {
        Ok(Protobuf(M::default()))
    }
}

/// JSON through serde_json, id `'j'`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn id(&self) -> CodecId {
        CodecId::JSON
    }

    fn name(&self) -> &'static str {
        "json"
    }

    fn encode_serde(
        &self,
        value: &dyn erased_serde::Serialize,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        serde_json::to_writer(dst.writer(), value).map_err(|e| CodecError::Encode {
            codec: "json",
            reason: e.to_string(),
        })
    }

    fn decode_serde<'de>(&self, src: &'de [u8], visit: Visit<'_, 'de>) -> Result<(), CodecError> {
        let err = |e: &dyn fmt::Display| CodecError::Decode {
            codec: "json",
            reason: e.to_string(),
        };
        let mut de = serde_json::Deserializer::from_slice(src);
        visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de)).map_err(|e| err(&e))?;
        de.end().map_err(|e| err(&e))
    }
}

/// Protobuf, id `'p'`. Carries [`Protobuf`] values only (prost messages are
/// not serde types); a serde value offered to it is a wrong pairing.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProtobufCodec;

impl Codec for ProtobufCodec {
    fn id(&self) -> CodecId {
        CodecId::PROTOBUF
    }

    fn name(&self) -> &'static str {
        "protobuf"
    }
}

/// Raw text or bytes, id `'s'`: the body is the value's bytes unchanged.
///
/// Carries serde values that are strings, chars or byte strings (`String`,
/// `&str`, `serde_bytes`, `bytes::Bytes` with its serde feature); anything
/// else is a wrong pairing. A body that is not UTF-8 decodes into byte types
/// only, as Go takes it verbatim.
#[derive(Debug, Default, Clone, Copy)]
pub struct StringCodec;

impl Codec for StringCodec {
    fn id(&self) -> CodecId {
        CodecId::STRING
    }

    fn name(&self) -> &'static str {
        "string"
    }

    fn encode_serde(
        &self,
        value: &dyn erased_serde::Serialize,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        value
            .serialize(RawSerializer { dst })
            .map_err(|RawError(value)| CodecError::WrongPairing {
                codec: "string",
                value,
            })
    }

    fn decode_serde<'de>(&self, src: &'de [u8], visit: Visit<'_, 'de>) -> Result<(), CodecError> {
        type E = erased_serde::Error;
        let r = match std::str::from_utf8(src) {
            Ok(s) => visit(&mut <dyn erased_serde::Deserializer>::erase(
                BorrowedStrDeserializer::<E>::new(s),
            )),
            Err(_) => visit(&mut <dyn erased_serde::Deserializer>::erase(
                BorrowedBytesDeserializer::<E>::new(src),
            )),
        };
        r.map_err(|e| CodecError::Decode {
            codec: "string",
            reason: e.to_string(),
        })
    }
}

/// The codecs a peer knows, by id and by name. [`CodecRegistry::default`]
/// holds JSON, protobuf and string.
#[derive(Clone)]
pub struct CodecRegistry {
    table: IdTable<dyn Codec>,
}

impl CodecRegistry {
    /// A registry with no codec.
    pub fn empty() -> Self {
        CodecRegistry {
            table: IdTable::new(),
        }
    }

    /// Adds a codec, replacing one with the same id; returns the old one.
    pub fn register(&mut self, codec: Arc<dyn Codec>) -> Option<Arc<dyn Codec>> {
        self.table.insert(codec.id().0, codec)
    }

    /// The codec with this id.
    pub fn get(&self, id: CodecId) -> Result<&Arc<dyn Codec>, CodecError> {
        self.table.get(id.0).ok_or(CodecError::UnknownId { id })
    }

    /// The codec with this name.
    pub fn by_name(&self, name: &str) -> Result<&Arc<dyn Codec>, CodecError> {
        self.table
            .find(|c| c.name() == name)
            .ok_or_else(|| CodecError::UnknownName { name: name.into() })
    }

    /// Appends `value` encoded by codec `id` to `dst`; on error `dst` is as
    /// it was.
    pub fn encode<T: EncodeBody + ?Sized>(
        &self,
        id: CodecId,
        value: &T,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let codec = self.get(id)?;
        let mark = dst.len();
        value
            .encode_body(&**codec, dst)
            .inspect_err(|_| dst.truncate(mark))
    }

    /// `value` encoded by codec `id`, as a body.
    pub fn encode_to_bytes<T: EncodeBody + ?Sized>(
        &self,
        id: CodecId,
        value: &T,
    ) -> Result<Bytes, CodecError> {
        let mut b = BytesMut::new();
        self.encode(id, value, &mut b)?;
        Ok(b.freeze())
    }

    /// Decodes a body. An empty body is never handed to the codec, so its id
    /// is not even looked up (SPEC §5; vector `unknown_codec_empty_body`); the
    /// value is `T`'s zero value ([`DecodeBody::empty_body`]).
    pub fn decode<T: DecodeBody>(&self, id: CodecId, body: &[u8]) -> Result<T, CodecError> {
        if body.is_empty() {
            return T::empty_body();
        }
        T::decode_body(&**self.get(id)?, body)
    }
}

impl Default for CodecRegistry {
    fn default() -> Self {
        let mut r = CodecRegistry::empty();
        r.register(Arc::new(JsonCodec));
        r.register(Arc::new(ProtobufCodec));
        r.register(Arc::new(StringCodec));
        r
    }
}

impl fmt::Debug for CodecRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.table.iter().map(|c| (char::from(c.id().0), c.name())))
            .finish()
    }
}

/// Serializes strings, chars and byte strings as their raw bytes; anything
/// else fails, naming the kind of value.
struct RawSerializer<'a> {
    dst: &'a mut BytesMut,
}

#[derive(Debug)]
struct RawError(&'static str);

impl fmt::Display for RawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot carry {}", self.0)
    }
}

impl std::error::Error for RawError {}

impl serde::ser::Error for RawError {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        RawError("this value")
    }
}

macro_rules! refuse {
    ($($name:ident($($t:ty),*) => $what:literal;)*) => {
        $(fn $name(self, $(_: $t),*) -> Result<(), RawError> { Err(RawError($what)) })*
    };
}

impl serde::Serializer for RawSerializer<'_> {
    type Ok = ();
    type Error = RawError;
    type SerializeSeq = serde::ser::Impossible<(), RawError>;
    type SerializeTuple = serde::ser::Impossible<(), RawError>;
    type SerializeTupleStruct = serde::ser::Impossible<(), RawError>;
    type SerializeTupleVariant = serde::ser::Impossible<(), RawError>;
    type SerializeMap = serde::ser::Impossible<(), RawError>;
    type SerializeStruct = serde::ser::Impossible<(), RawError>;
    type SerializeStructVariant = serde::ser::Impossible<(), RawError>;

    fn serialize_str(self, v: &str) -> Result<(), RawError> {
        self.dst.extend_from_slice(v.as_bytes());
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), RawError> {
        self.dst.extend_from_slice(v);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), RawError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), RawError> {
        value.serialize(self)
    }

    refuse! {
        serialize_bool(bool) => "a bool";
        serialize_i8(i8) => "a number";
        serialize_i16(i16) => "a number";
        serialize_i32(i32) => "a number";
        serialize_i64(i64) => "a number";
        serialize_u8(u8) => "a number";
        serialize_u16(u16) => "a number";
        serialize_u32(u32) => "a number";
        serialize_u64(u64) => "a number";
        serialize_f32(f32) => "a number";
        serialize_f64(f64) => "a number";
        serialize_none() => "an option";
        serialize_unit() => "a unit";
        serialize_unit_struct(&'static str) => "a unit struct";
        serialize_unit_variant(&'static str, u32, &'static str) => "an enum";
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), RawError> {
        Err(RawError("an option"))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), RawError> {
        Err(RawError("an enum"))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, RawError> {
        Err(RawError("a sequence"))
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, RawError> {
        Err(RawError("a tuple"))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, RawError> {
        Err(RawError("a tuple struct"))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, RawError> {
        Err(RawError("an enum"))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, RawError> {
        Err(RawError("a map"))
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, RawError> {
        Err(RawError("a struct"))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, RawError> {
        Err(RawError("an enum"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize, serde::Serialize, Default)]
    struct Obj {
        #[serde(default)]
        a: i32,
        #[serde(default)]
        b: String,
    }

    #[test]
    fn empty_body_is_the_zero_value() {
        let c = CodecRegistry::default();
        // The codec id is not even looked up.
        let o: Obj = c.decode(CodecId(b'x'), b"").unwrap();
        assert_eq!(o, Obj::default());
        assert_eq!(c.decode::<String>(CodecId::JSON, b"").unwrap(), "");
        assert_eq!(c.decode::<Option<i32>>(CodecId::JSON, b"").unwrap(), None);
        assert_eq!(
            c.decode::<Vec<i32>>(CodecId::JSON, b"").unwrap(),
            Vec::<i32>::new()
        );
        assert!(c.decode::<i32>(CodecId::JSON, b"").is_err());
    }

    #[test]
    fn json_errors_are_typed() {
        let c = CodecRegistry::default();
        let e = c.decode::<Obj>(CodecId::JSON, b"{not json").unwrap_err();
        assert!(matches!(e, CodecError::Decode { codec: "json", .. }), "{e}");
        assert!(c.decode::<Obj>(CodecId::JSON, b"[1,2]").is_err());
        assert!(c.decode::<Obj>(CodecId::JSON, b"{} x").is_err());
        assert_eq!(
            c.decode::<Obj>(CodecId(b'x'), b"{}").unwrap_err(),
            CodecError::UnknownId { id: CodecId(b'x') }
        );
    }

    #[test]
    fn string_codec_is_verbatim() {
        let c = CodecRegistry::default();
        assert_eq!(c.decode::<String>(CodecId::STRING, b"abc").unwrap(), "abc");
        // Not UTF-8: a String refuses, raw bytes are fine.
        assert!(c.decode::<String>(CodecId::STRING, b"\xff\xfe").is_err());
        let e = c
            .encode_to_bytes(CodecId::STRING, &Obj::default())
            .unwrap_err();
        assert_eq!(
            e,
            CodecError::WrongPairing {
                codec: "string",
                value: "a struct"
            }
        );
        assert_eq!(
            &c.encode_to_bytes(CodecId::STRING, &'é').unwrap()[..],
            "é".as_bytes()
        );
    }

    #[test]
    fn failed_encode_leaves_dst_alone() {
        let c = CodecRegistry::default();
        let mut dst = BytesMut::from(&b"keep"[..]);
        assert!(c.encode(CodecId::STRING, &1u8, &mut dst).is_err());
        assert_eq!(&dst[..], b"keep");
    }
}
