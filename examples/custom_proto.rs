//! A frame format of your own (the seed's `ProtoFunc`): a server and a
//! client speak it over loopback, a default client is refused with a
//! clear error, and the program exits.
//!
//! Run: `cargo run --example custom_proto`
//!
//! The format, big-endian: `"R1"`, the payload's length (u32), then seq
//! (u64), type (u8), body codec (u8), the URI (u16 length + bytes), the
//! meta in its URL-query form (u32 length + bytes) and the body. It has no
//! transfer filters: a pull asking for gzip over it fails to encode.

use std::sync::Arc;
use std::time::Duration;

use teleport::prelude::*;
use teleport::{
    Bytes, BytesMut, MakeProto, Packet, PacketType, Proto, ProtoError, Seq, XferRegistry,
};

/// The first bytes of every frame.
const MAGIC: &[u8; 2] = b"R1";
/// Magic and length.
const HEAD: usize = 6;

/// Makes one [`R1`] per connection, with the peer's read limit.
struct R1Proto;

impl MakeProto for R1Proto {
    fn make_proto(&self, read_limit: usize, _xfers: &Arc<XferRegistry>) -> Box<dyn Proto> {
        Box::new(R1 { limit: read_limit })
    }
}

struct R1 {
    limit: usize,
}

fn too_long(field: &'static str, len: usize) -> ProtoError {
    ProtoError::FieldTooLong { field, len }
}

/// Takes `n` bytes off the front of `b`, or says which field ran out.
fn take(b: &mut Bytes, n: usize, field: &'static str) -> Result<Bytes, ProtoError> {
    if b.len() < n {
        return Err(ProtoError::PastEnd {
            field,
            need: n,
            left: b.len(),
        });
    }
    Ok(b.split_to(n))
}

fn int<const N: usize>(b: &mut Bytes, field: &'static str) -> Result<[u8; N], ProtoError> {
    let mut out = [0; N];
    out.copy_from_slice(&take(b, N, field)?);
    Ok(out)
}

impl Proto for R1 {
    fn id(&self) -> u8 {
        b'R'
    }

    fn name(&self) -> &'static str {
        "r1"
    }

    fn encode(&mut self, p: &Packet, dst: &mut BytesMut) -> Result<(), ProtoError> {
        if !p.xfer.is_empty() {
            return Err(ProtoError::TooManyFilters {
                count: p.xfer.len(),
            });
        }
        let uri = p.uri.as_bytes();
        let uri_len = u16::try_from(uri.len()).map_err(|_| too_long("uri", uri.len()))?;
        let meta_len = p.meta.encoded_len();
        let size = 8 + 1 + 1 + 2 + uri.len() + 4 + meta_len + p.body.len();
        if size > self.limit {
            return Err(ProtoError::SizeOverLimit {
                size,
                limit: self.limit,
            });
        }
        // Nothing can fail from here on: `dst` only grows.
        dst.reserve(HEAD + size);
        dst.extend_from_slice(MAGIC);
        dst.extend_from_slice(&(size as u32).to_be_bytes());
        dst.extend_from_slice(&p.seq.0.to_be_bytes());
        dst.extend_from_slice(&[p.ptype.0, p.body_codec.0]);
        dst.extend_from_slice(&uri_len.to_be_bytes());
        dst.extend_from_slice(uri);
        dst.extend_from_slice(&(meta_len as u32).to_be_bytes());
        p.meta.encode_into(dst);
        dst.extend_from_slice(&p.body);
        Ok(())
    }

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtoError> {
        // Another proto's bytes are refused at the first byte that differs.
        if let Some((found, want)) = src.iter().zip(MAGIC).find(|(a, b)| a != b) {
            return Err(ProtoError::WrongProtoId {
                found: *found,
                expected: *want,
            });
        }
        let Some(len) = src.get(2..HEAD) else {
            return Ok(None);
        };
        let size = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if size > self.limit {
            return Err(ProtoError::SizeOverLimit {
                size,
                limit: self.limit,
            });
        }
        if src.len() < HEAD + size {
            return Ok(None);
        }
        let _ = src.split_to(HEAD);
        let mut b = src.split_to(size).freeze();
        let seq = Seq(u64::from_be_bytes(int(&mut b, "seq")?));
        let [ptype, codec] = int(&mut b, "type and codec")?;
        let n = u16::from_be_bytes(int(&mut b, "uri length")?) as usize;
        let uri = Uri::from_bytes(take(&mut b, n, "uri")?);
        let n = u32::from_be_bytes(int(&mut b, "meta length")?) as usize;
        let meta = Meta::try_parse(&take(&mut b, n, "meta")?)?;
        let mut p = Packet::new(PacketType(ptype), seq, uri).with_body(CodecId(codec), b);
        p.meta = meta;
        Ok(Some(p))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.proto(R1Proto);
    b.pull("/greet", |_ctx: PullCtx, name: String| async move {
        if name.is_empty() {
            return Err(Rerror::new(400, "empty name"));
        }
        Ok(format!("hello, {name}"))
    });
    let server = Peer::from_builder(b)?;
    let addr = server.spawn_listener().await?.to_string();

    let mut b = PeerBuilder::new(PeerConfig::default());
    b.proto(R1Proto);
    let client = Peer::from_builder(b)?;
    let s = client.dial(&addr).await?;
    let hello = s.pull::<_, String>("/greet", "r1").await?;
    println!("over r1: {}", hello.value);
    assert_eq!(hello.value, "hello, r1");
    // An error reply travels in the meta, which r1 carries.
    let e = s.pull::<_, String>("/greet", "").await.unwrap_err();
    println!("over r1, an error reply: {e}");
    assert_eq!(e.code, 400);

    // A peer speaking the default proto gets a closed connection, at once.
    let plain = Peer::new(PeerConfig::default())?;
    let s = plain.dial(&addr).await?;
    let e = s.pull::<_, String>("/greet", "fast").await.unwrap_err();
    println!("a default client: {e}");
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED);

    client.shutdown(Duration::from_secs(1)).await;
    plain.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
