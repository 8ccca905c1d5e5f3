//! Each system's two halves: what serves one connection and what makes
//! one call on it.
//!
//! - `floor`: raw tokio, a 4-byte big-endian length then the protobuf
//!   bytes; no RPC layer.
//! - `socket`: teleport's framing alone, over tokio: the client writes a
//!   PULL [`Packet`] (`FastProto`, protobuf body) and reads the REPLY; the
//!   server decodes the frame and the body, answers with the packet turned
//!   into a REPLY. No session, no router (the seed's second table).
//! - `tokio`, `async-std`, `smol`, `mio`: teleport peers; each call is a
//!   pull to [`ROUTE`] with the protobuf codec.
//! - `tokio-tls`: the tokio peers with TLS under each session
//!   ([`crate::tls`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use prost::Message;
use teleport_core::{CodecId, FastProto, Packet, PacketType, Proto, Protobuf, Rerror, Seq, Uri};
use teleport_peer::{PeerBuilder, PeerConfig, PullCtx};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::{reply_ok, reply_to, BenchmarkMessage, ROUTE};

/// One connection's worth of async client: makes one call, says whether
/// the reply was the right one.
pub trait Caller: Send + 'static {
    fn call(&mut self) -> impl Future<Output = bool> + Send;
}

/// A tokio listener with a deep accept backlog (the kernel caps it at
/// `net.core.somaxconn`), so thousands of simultaneous dials are not
/// throttled by dropped SYNs. For the floor and the socket layer; the
/// teleport peers bind as they do for any user.
pub fn tokio_listener(addr: &str) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(65535)?;
    sock.set_nonblocking(true)?;
    TcpListener::from_std(sock.into())
}

/// Serves connections of `listener` forever, one task each.
pub async fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve(s));
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

// ---- floor -------------------------------------------------------------------

/// Largest frame the floor accepts.
const FLOOR_MAX_FRAME: usize = 16 << 20;

/// Appends `m` as a floor frame: its length (4 bytes, big-endian), then it.
pub fn floor_frame(m: &BenchmarkMessage, out: &mut Vec<u8>) {
    let len = m.encoded_len();
    out.reserve(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    m.encode(out).expect("a Vec grows");
}

/// Reads one floor frame's body into `buf`; `Ok(false)` on a clean end.
async fn floor_read(r: &mut BufReader<TcpStream>, buf: &mut Vec<u8>) -> io::Result<bool> {
    let len = match r.read_u32().await {
        Ok(len) => len as usize,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    };
    if len > FLOOR_MAX_FRAME {
        return Err(invalid("frame too large"));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(true)
}

pub async fn floor_serve(s: TcpStream) -> io::Result<()> {
    let mut r = BufReader::with_capacity(8192, s);
    let (mut inb, mut outb) = (Vec::with_capacity(1024), Vec::with_capacity(1024));
    while floor_read(&mut r, &mut inb).await? {
        let m = BenchmarkMessage::decode(&inb[..]).map_err(invalid)?;
        outb.clear();
        floor_frame(&reply_to(m), &mut outb);
        r.get_mut().write_all(&outb).await?;
    }
    Ok(())
}

pub struct FloorCaller {
    r: BufReader<TcpStream>,
    buf: Vec<u8>,
    msg: Arc<BenchmarkMessage>,
}

impl FloorCaller {
    pub async fn connect(addr: String, msg: Arc<BenchmarkMessage>) -> io::Result<Self> {
        let s = TcpStream::connect(&addr).await?;
        s.set_nodelay(true)?;
        Ok(FloorCaller {
            r: BufReader::with_capacity(8192, s),
            buf: Vec::with_capacity(1024),
            msg,
        })
    }

    async fn try_call(&mut self) -> io::Result<bool> {
        self.buf.clear();
        floor_frame(&self.msg, &mut self.buf);
        self.r.get_mut().write_all(&self.buf).await?;
        if !floor_read(&mut self.r, &mut self.buf).await? {
            return Ok(false);
        }
        let reply = BenchmarkMessage::decode(&self.buf[..]).map_err(invalid)?;
        Ok(reply_ok(&reply))
    }
}

impl Caller for FloorCaller {
    async fn call(&mut self) -> bool {
        self.try_call().await.unwrap_or(false)
    }
}

// ---- socket layer alone ------------------------------------------------------

/// Room kept free in a read buffer before each read.
const READ_CHUNK: usize = 8192;

/// Reads more bytes into `inb`; `Ok(false)` at the end of the stream.
async fn read_more(s: &mut TcpStream, inb: &mut BytesMut) -> io::Result<bool> {
    if inb.capacity() - inb.len() < READ_CHUNK / 2 {
        inb.reserve(READ_CHUNK);
    }
    Ok(s.read_buf(inb).await? > 0)
}

/// The socket layer's server: decode every whole frame read, answer each
/// PULL (body decoded, modified, re-encoded) with a REPLY of the same seq
/// and uri, and write the replies of one read with one write.
pub async fn socket_serve(mut s: TcpStream) -> io::Result<()> {
    let mut proto = FastProto::default();
    let mut inb = BytesMut::with_capacity(READ_CHUNK);
    let mut outb = BytesMut::with_capacity(READ_CHUNK);
    loop {
        while let Some(mut p) = proto.decode(&mut inb).map_err(invalid)? {
            if p.ptype != PacketType::PULL {
                continue;
            }
            let m = BenchmarkMessage::decode(p.body.clone()).map_err(invalid)?;
            p.ptype = PacketType::REPLY;
            p.body = Bytes::from(reply_to(m).encode_to_vec());
            proto.encode(&p, &mut outb).map_err(invalid)?;
        }
        if !outb.is_empty() {
            s.write_all(&outb).await?;
            outb.clear();
        }
        if !read_more(&mut s, &mut inb).await? {
            return Ok(());
        }
    }
}

/// The PULL frame of the benchmark with sequence number `seq`.
pub fn socket_pull(uri: &Uri, seq: u64, m: &BenchmarkMessage) -> Packet {
    Packet::new(PacketType::PULL, Seq(seq), uri.clone())
        .with_body(CodecId::PROTOBUF, Bytes::from(m.encode_to_vec()))
}

pub struct SocketCaller {
    s: TcpStream,
    proto: FastProto,
    inb: BytesMut,
    outb: BytesMut,
    seq: u64,
    uri: Uri,
    msg: Arc<BenchmarkMessage>,
}

impl SocketCaller {
    pub async fn connect(addr: String, msg: Arc<BenchmarkMessage>) -> io::Result<Self> {
        let s = TcpStream::connect(&addr).await?;
        s.set_nodelay(true)?;
        Ok(SocketCaller {
            s,
            proto: FastProto::default(),
            inb: BytesMut::with_capacity(READ_CHUNK),
            outb: BytesMut::with_capacity(READ_CHUNK),
            seq: 0,
            uri: Uri::from_bytes(Bytes::from_static(ROUTE.as_bytes())),
            msg,
        })
    }

    async fn try_call(&mut self) -> io::Result<bool> {
        self.seq += 1;
        let p = socket_pull(&self.uri, self.seq, &self.msg);
        self.outb.clear();
        self.proto.encode(&p, &mut self.outb).map_err(invalid)?;
        self.s.write_all(&self.outb).await?;
        loop {
            if let Some(r) = self.proto.decode(&mut self.inb).map_err(invalid)? {
                if r.ptype != PacketType::REPLY || r.seq != Seq(self.seq) {
                    return Ok(false);
                }
                let reply = BenchmarkMessage::decode(r.body).map_err(invalid)?;
                return Ok(reply_ok(&reply));
            }
            if !read_more(&mut self.s, &mut self.inb).await? {
                return Ok(false);
            }
        }
    }
}

impl Caller for SocketCaller {
    async fn call(&mut self) -> bool {
        self.try_call().await.unwrap_or(false)
    }
}

// ---- teleport peers ------------------------------------------------------------

/// Settings of both sides: bodies are protobuf unless a call says
/// otherwise, everything else as a user gets it.
pub fn peer_config(listen: &str) -> PeerConfig {
    PeerConfig {
        listen_address: listen.to_string(),
        default_body_codec: "protobuf".into(),
        ..PeerConfig::default()
    }
}

/// The server's one route, as an async handler (tokio, async-std, smol).
pub fn async_server(listen: &str) -> PeerBuilder {
    let mut b = PeerBuilder::new(peer_config(listen));
    b.pull(
        ROUTE,
        |_ctx: PullCtx, Protobuf(m): Protobuf<BenchmarkMessage>| async move {
            Ok::<_, Rerror>(Protobuf(reply_to(m)))
        },
    );
    b
}

/// The server's one route, as a plain function (mio).
pub fn sync_server(listen: &str) -> PeerBuilder {
    use teleport_mio::prelude::*;
    let mut b = PeerBuilder::new(peer_config(listen));
    b.pull_sync(
        ROUTE,
        |_ctx: PullCtx, Protobuf(m): Protobuf<BenchmarkMessage>| {
            Ok::<_, Rerror>(Protobuf(reply_to(m)))
        },
    );
    b
}

/// A teleport session's async handle (tokio, async-std, smol, or a mio
/// peer's `Session::inner`).
pub struct TeleportCaller {
    pub session: teleport_peer::Session,
    pub msg: Arc<Protobuf<BenchmarkMessage>>,
}

impl Caller for TeleportCaller {
    async fn call(&mut self) -> bool {
        self.session
            .call(ROUTE)
            .codec(CodecId::PROTOBUF)
            .pull::<_, Protobuf<BenchmarkMessage>>(&*self.msg)
            .await
            .is_ok_and(|r| reply_ok(&r.value.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both hand-made layers answer in-process, every call OK.
    #[test]
    fn floor_and_socket_round_trip() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let msg = Arc::new(BenchmarkMessage::filled());
            let l = tokio_listener("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap().to_string();
            tokio::spawn(accept_loop(l, floor_serve));
            let mut c = FloorCaller::connect(a, msg.clone()).await.unwrap();
            for _ in 0..3 {
                assert!(c.call().await);
            }
            let l = tokio_listener("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap().to_string();
            tokio::spawn(accept_loop(l, socket_serve));
            let mut c = SocketCaller::connect(a, msg).await.unwrap();
            for _ in 0..3 {
                assert!(c.call().await);
            }
        });
    }
}
