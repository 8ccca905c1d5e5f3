//! What a session runs over: any [`Connection`] — the built-in TCP and unix
//! sockets (async-io's `Async`), a TLS stream, or a futures-io stream of the
//! user's wrapped in [`Io`]. The connection task is written once for all of
//! them; a connection only says how it splits into a reading half and a
//! writing half.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_io::Async;
use futures_lite::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use teleport_peer::direct::ConnWrite;

/// A connection a session can run over.
///
/// The reading half belongs to the session's task; the writing half is
/// shared with the session's callers, who write their own pulls and pushes
/// when the connection is free (see [`ConnWrite`]). The built-in sockets
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

/// Any futures-io stream as a [`Connection`]: a TLS stream, a stream the
/// user accepted or dialed themselves.
#[derive(Debug)]
pub struct Io<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for Io<S> {
    type Read = ReadHalf<S>;
    type Write = IoWrite<S>;

    fn split(self) -> (ReadHalf<S>, IoWrite<S>) {
        let (r, w) = futures_lite::io::split(self.0);
        (r, IoWrite(w))
    }
}

/// The writing half of an [`Io`] stream: written by the session's task only
/// (it cannot be tried without registering a wake-up).
#[derive(Debug)]
pub struct IoWrite<S>(WriteHalf<S>);

impl<S: AsyncWrite + Send + Unpin + 'static> ConnWrite for IoWrite<S> {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// The reading half of a built-in socket. After a read that drained the
/// socket it waits for the reactor to say more came before reading again:
/// async-io's `poll_read` tries the read first, so without this every turn
/// of the connection's task would cost a failed read.
#[derive(Debug)]
pub struct SocketRead<T> {
    io: Arc<Async<T>>,
    drained: bool,
}

impl<T> AsyncRead for SocketRead<T>
where
    for<'a> &'a Async<T>: AsyncRead,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.drained {
            match self.io.poll_readable(cx) {
                Poll::Ready(Ok(())) => self.drained = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let io = self.io.clone();
        match Pin::new(&mut &*io).poll_read(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.drained = n < buf.len();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                // The reactor is watching for more.
                self.drained = true;
                Poll::Pending
            }
            r => r,
        }
    }
}

/// The writing half of a built-in socket: callers write to it directly
/// (async-io sockets are non-blocking, so a plain write never waits).
#[derive(Debug)]
pub struct SocketWrite<T>(Arc<Async<T>>);

impl<T> ConnWrite for SocketWrite<T>
where
    T: ShutdownWrite + Send + Sync + 'static,
    for<'a> &'a T: Write,
    for<'a> &'a Async<T>: AsyncWrite,
{
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.get_ref().write(buf)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write(cx, buf)
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the writing side at once (async-io's own `poll_close` only
    /// flushes, and the socket may live on a while: it lingers).
    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.get_ref().shutdown_write())
    }
}

/// A socket whose writing side can be shut down on its own.
pub trait ShutdownWrite {
    /// `shutdown(SHUT_WR)`: the peer reads everything sent, then the end.
    fn shutdown_write(&self) -> io::Result<()>;
}

impl ShutdownWrite for std::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

#[cfg(unix)]
impl ShutdownWrite for std::os::unix::net::UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// A built-in socket as a connection.
fn split_socket<T>(io: Async<T>) -> (SocketRead<T>, SocketWrite<T>) {
    let io = Arc::new(io);
    (
        SocketRead {
            io: io.clone(),
            drained: false,
        },
        SocketWrite(io),
    )
}

impl Connection for Async<std::net::TcpStream> {
    type Read = SocketRead<std::net::TcpStream>;
    type Write = SocketWrite<std::net::TcpStream>;

    fn split(self) -> (Self::Read, Self::Write) {
        split_socket(self)
    }
}

#[cfg(unix)]
impl Connection for Async<std::os::unix::net::UnixStream> {
    type Read = SocketRead<std::os::unix::net::UnixStream>;
    type Write = SocketWrite<std::os::unix::net::UnixStream>;

    fn split(self) -> (Self::Read, Self::Write) {
        split_socket(self)
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

/// A socket of async-io whose `close` also ends its writing side (async-io's
/// own only flushes), so a TLS stream over it sends its end as soon as the
/// session closes, not when the socket goes.
#[derive(Debug)]
pub struct EndOnClose<T>(pub Async<T>);

impl<T> AsyncRead for EndOnClose<T>
where
    for<'a> &'a Async<T>: AsyncRead,
    T: Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &self.0).poll_read(cx, buf)
    }
}

impl<T> AsyncWrite for EndOnClose<T>
where
    for<'a> &'a Async<T>: AsyncWrite,
    T: ShutdownWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &self.0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &self.0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.get_ref().shutdown_write())
    }
}

/// A built-in socket as a TLS stream runs over it (see [`EndOnClose`]).
pub trait ForTls: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The stream TLS runs over.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Readies the socket for TLS.
    fn for_tls(self) -> Self::Stream;
}

impl ForTls for Async<std::net::TcpStream> {
    type Stream = EndOnClose<std::net::TcpStream>;
    fn for_tls(self) -> Self::Stream {
        EndOnClose(self)
    }
}

#[cfg(unix)]
impl ForTls for Async<std::os::unix::net::UnixStream> {
    type Stream = EndOnClose<std::os::unix::net::UnixStream>;
    fn for_tls(self) -> Self::Stream {
        EndOnClose(self)
    }
}

#[cfg(unix)]
impl ForTls for crate::net::UnixPacket {
    type Stream = Self;
    fn for_tls(self) -> Self {
        self
    }
}
