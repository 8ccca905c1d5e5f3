//! TLS on the poll loop (feature `tls`): rustls's own sans-IO connection
//! driven by readiness, no async runtime under it.
//!
//! A dial's client handshake runs on the dialing thread, which blocks
//! anyway while it connects ([`client_handshake`]); an accepted
//! connection's server handshake is driven by the loop itself
//! ([`Handshake`]), so a slow or silent client holds up nothing else.
//! Either way the session starts only once the handshake is done, over a
//! [`TlsStream`].

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use rustls::{ClientConnection, Connection, ServerConnection};
use teleport_peer::tls::{TlsAcceptor, TlsConnector, TlsError};
use teleport_peer::{PeerAddr, ProtoFunc};

use crate::net::{Connected, Dialed, Stream};

/// A TLS connection over one of the loop's streams, once its handshake is
/// done. Non-blocking: reads and writes say `WouldBlock` when the socket
/// does, and records the socket did not take wait in rustls until the
/// loop sees it writable ([`TlsStream::wants_write`], [`TlsStream::flush`]).
pub(crate) struct TlsStream {
    io: Stream,
    tls: Connection,
    close_sent: bool,
}

impl TlsStream {
    pub(crate) fn new(io: Stream, tls: impl Into<Connection>) -> Self {
        TlsStream {
            io,
            tls: tls.into(),
            close_sent: false,
        }
    }

    /// The stream under it (its readiness is the TLS stream's).
    pub(crate) fn io_mut(&mut self) -> &mut Stream {
        &mut self.io
    }

    /// Plaintext into `buf`: what rustls holds, else what the next records
    /// carry. `Ok(0)` once the other side sent close_notify; a connection
    /// that ends without one is `UnexpectedEof`, as with tokio-rustls.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
            // Nothing decrypted is waiting: the next records.
            let n = self.tls.read_tls(&mut self.io)?;
            if let Err(e) = self.tls.process_new_packets() {
                // Tell the other side why (an alert), if the socket takes it.
                let _ = self.push_records();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    TlsError::from_rustls(e, None),
                ));
            }
            if n == 0 {
                // The end of input: what rustls makes of it is final.
                return match self.tls.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        Err(io::ErrorKind::UnexpectedEof.into())
                    }
                    r => r,
                };
            }
        }
    }

    /// Encrypts what rustls takes of `buf` (it holds at most its buffer
    /// limit, 64 KiB by default, of records unwritten) and writes records
    /// as far as the socket takes them. `WouldBlock` only when it took
    /// nothing and the socket is full.
    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut n = self.tls.writer().write(buf)?;
        if n == 0 {
            // Its buffer is full: make room.
            if self.push_records()? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            n = self.tls.writer().write(buf)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        self.push_records()?;
        Ok(n)
    }

    /// Writes the records rustls holds; `WouldBlock` if the socket would
    /// not take them all.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self.push_records()? {
            true => Err(io::ErrorKind::WouldBlock.into()),
            false => Ok(()),
        }
    }

    /// Writes held records until none is left (`false`) or the socket is
    /// full (`true`).
    fn push_records(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.io) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Records wait for the socket.
    pub(crate) fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Queues close_notify (once): the other side learns the end was
    /// meant, not a cut connection.
    pub(crate) fn begin_close(&mut self) {
        if !self.close_sent {
            self.close_sent = true;
            self.tls.send_close_notify();
        }
    }

    /// close_notify, written if the socket takes it now, then the end of
    /// the socket's writing side.
    pub(crate) fn shutdown_write(&mut self) {
        self.begin_close();
        let _ = self.push_records();
        self.io.shutdown_write();
    }
}

/// The client handshake of a dial, on the dialing thread over its still
/// blocking stream, within the connector's handshake timeout (each read
/// and write is bounded by what is left of it).
pub(crate) fn client_handshake<S: Dialed>(
    tls: &TlsConnector,
    addr: &str,
    io: &mut S,
) -> Result<ClientConnection, TlsError> {
    let name = tls.server_name_for(addr)?;
    let shown = name.to_str().into_owned();
    let mut conn = ClientConnection::new(tls.config().clone(), name)
        .map_err(|e| TlsError::from_rustls(e, Some(&shown)))?;
    let timeout = tls.handshake_timeout();
    let deadline = Instant::now() + timeout;
    let left = || match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(TlsError::Timeout(timeout)),
    };
    let failed = |e: io::Error| match e.kind() {
        // SO_RCVTIMEO/SO_SNDTIMEO ran out.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TlsError::Timeout(timeout),
        io::ErrorKind::UnexpectedEof => TlsError::Closed,
        _ => TlsError::Io(e),
    };
    loop {
        while conn.wants_write() {
            io.set_timeout(false, left()?).map_err(TlsError::Io)?;
            match conn.write_tls(io) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(failed(e)),
                Ok(_) => {}
            }
        }
        if !conn.is_handshaking() {
            return Ok(conn);
        }
        io.set_timeout(true, left()?).map_err(TlsError::Io)?;
        match conn.read_tls(io) {
            Ok(0) => return Err(TlsError::Closed),
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // The alert that says why, if the socket takes it.
                    let _ = conn.write_tls(io);
                    return Err(TlsError::from_rustls(e, Some(&shown)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(e)),
        }
    }
}

/// An accepted connection whose server handshake the loop drives.
pub(crate) struct Handshake {
    pub(crate) stream: Stream,
    tls: ServerConnection,
    pub(crate) remote: PeerAddr,
    pub(crate) local: PeerAddr,
    pub(crate) proto: Option<ProtoFunc>,
    /// When it is given up.
    pub(crate) until: Instant,
    pub(crate) timeout: Duration,
    /// Readiness not yet drained to `WouldBlock` (edge-triggered).
    pub(crate) readable: bool,
    pub(crate) writable: bool,
}

/// Where a handshake stands after [`Handshake::advance`].
pub(crate) enum Progress {
    /// Waiting for the socket.
    Waiting,
    /// Done: the session may start.
    Done,
    /// Failed (an alert may be queued: see [`Handshake::fail`]).
    Failed(TlsError),
}

impl Handshake {
    /// A handshake for an accepted connection, due by `now` plus the
    /// acceptor's timeout.
    pub(crate) fn new(
        c: Connected,
        acceptor: &TlsAcceptor,
        proto: Option<ProtoFunc>,
        now: Instant,
    ) -> Result<Handshake, (Stream, TlsError)> {
        let tls = match ServerConnection::new(acceptor.config().clone()) {
            Ok(tls) => tls,
            Err(e) => return Err((c.stream, TlsError::from_rustls(e, None))),
        };
        Ok(Handshake {
            stream: c.stream,
            tls,
            remote: c.remote,
            local: c.local,
            proto,
            until: now + acceptor.handshake_timeout(),
            timeout: acceptor.handshake_timeout(),
            readable: true,
            writable: true,
        })
    }

    /// Reads and writes handshake records as far as the socket allows.
    pub(crate) fn advance(&mut self) -> Progress {
        loop {
            while self.writable && self.tls.wants_write() {
                match self.tls.write_tls(&mut self.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Progress::Failed(TlsError::Io(e)),
                }
            }
            if !self.tls.is_handshaking() {
                // Records still unwritten (session tickets) go out with the
                // session's first writes.
                return Progress::Done;
            }
            if !self.readable || !self.tls.wants_read() {
                return Progress::Waiting;
            }
            match self.tls.read_tls(&mut self.stream) {
                Ok(0) => return Progress::Failed(TlsError::Closed),
                Ok(_) => {
                    if let Err(e) = self.tls.process_new_packets() {
                        return Progress::Failed(TlsError::from_rustls(e, None));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Failed(TlsError::Io(e)),
            }
        }
    }

    /// The stream, after writing the alert rustls queued for the failure
    /// if the socket takes it now.
    pub(crate) fn fail(mut self) -> Stream {
        if self.writable {
            let _ = self.tls.write_tls(&mut self.stream);
        }
        self.stream
    }

    /// The finished handshake as the session's stream, and its addresses.
    pub(crate) fn into_connected(self) -> (Connected, Option<ProtoFunc>) {
        let stream = Stream::Tls(Box::new(TlsStream::new(self.stream, self.tls)));
        (
            Connected {
                stream,
                remote: self.remote,
                local: self.local,
                tls: None,
            },
            self.proto,
        )
    }
}
