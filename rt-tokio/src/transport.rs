//! What a session runs over: any [`Connection`] — the built-in TCP and unix
//! streams, a TLS stream, or a stream of the user's wrapped in [`Io`]. The
//! connection task is written once for all of them; a connection only says
//! how it splits into a reading half and a writing half.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use teleport_peer::direct::ConnWrite;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::{tcp, TcpStream};
#[cfg(unix)]
use tokio::net::{unix, UnixStream};

/// A connection a session can run over.
///
/// The reading half belongs to the session's task; the writing half is
/// shared with the session's callers, who write their own pulls and pushes
/// when the connection is free (see [`ConnWrite`]). TCP and unix streams
/// let callers write directly; any other stream ([`Io`]) is written by its
/// task, callers only encode.
pub trait Connection: Send + 'static {
    /// The reading half.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The writing half.
    type Write: ConnWrite;
    /// Splits the connection.
    fn split(self) -> (Self::Read, Self::Write);
}

/// Any tokio stream as a [`Connection`]: a TLS stream, an in-memory duplex,
/// a stream the user accepted or dialed themselves.
#[derive(Debug)]
pub struct Io<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for Io<S> {
    type Read = ReadHalf<S>;
    type Write = IoWrite<S>;

    fn split(self) -> (ReadHalf<S>, IoWrite<S>) {
        let (r, w) = tokio::io::split(self.0);
        (r, IoWrite(w))
    }
}

/// The writing half of an [`Io`] stream: written by the session's task only
/// (it cannot be tried without registering a wake-up).
#[derive(Debug)]
pub struct IoWrite<S>(WriteHalf<S>);

impl<S: AsyncWrite + Send + 'static> ConnWrite for IoWrite<S> {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The writing half of a TCP stream: callers write to it directly.
#[derive(Debug)]
pub struct TcpWrite(tcp::OwnedWriteHalf);

impl ConnWrite for TcpWrite {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for TcpStream {
    type Read = tcp::OwnedReadHalf;
    type Write = TcpWrite;

    fn split(self) -> (tcp::OwnedReadHalf, TcpWrite) {
        let (r, w) = self.into_split();
        (r, TcpWrite(w))
    }
}

/// The writing half of a unix stream: callers write to it directly.
#[cfg(unix)]
#[derive(Debug)]
pub struct UnixWrite(unix::OwnedWriteHalf);

#[cfg(unix)]
impl ConnWrite for UnixWrite {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(unix)]
impl Connection for UnixStream {
    type Read = unix::OwnedReadHalf;
    type Write = UnixWrite;

    fn split(self) -> (unix::OwnedReadHalf, UnixWrite) {
        let (r, w) = self.into_split();
        (r, UnixWrite(w))
    }
}

#[cfg(unix)]
impl ConnWrite for crate::net::UnixPacketWrite {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::net::UnixPacketWrite::try_write(self, buf)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        crate::net::UnixPacketWrite::poll_write(self, cx, buf)
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        crate::net::UnixPacketWrite::poll_shutdown(self)
    }
}

/// A `unixpacket` connection: callers write to it directly.
#[cfg(unix)]
impl Connection for crate::net::UnixPacket {
    type Read = crate::net::UnixPacketRead;
    type Write = crate::net::UnixPacketWrite;

    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}
