//! Each runtime under test: how it serves, dials and runs client code.

use std::future::Future;
use std::io;
use std::time::Duration;

use teleport_core::Rerror;
use teleport_peer::{PeerAddr, PeerBuilder, Session, ShutdownReport};

/// The runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rt {
    Tokio,
    AsyncStd,
    Smol,
    Mio,
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A serving peer.
pub enum Server {
    Tokio(tokio::runtime::Runtime, teleport_tokio::Peer, PeerAddr),
    /// async-std or smol: the same adapter, its tasks on either executor.
    AsyncIo(Rt, teleport_async_std::Peer, PeerAddr),
    Mio(teleport_mio::Peer, PeerAddr),
}

impl Server {
    pub fn addr(&self) -> &PeerAddr {
        match self {
            Server::Tokio(_, _, a) | Server::AsyncIo(_, _, a) | Server::Mio(_, a) => a,
        }
    }

    pub fn is_draining(&self) -> bool {
        match self {
            Server::Tokio(_, p, _) => p.core().is_draining(),
            Server::AsyncIo(_, p, _) => p.core().is_draining(),
            Server::Mio(p, _) => p.core().is_draining(),
        }
    }

    /// How many sessions the peer holds.
    pub fn sessions_len(&self) -> usize {
        match self {
            Server::Tokio(_, p, _) => p.sessions().len(),
            Server::AsyncIo(_, p, _) => p.sessions().len(),
            Server::Mio(p, _) => p.sessions().len(),
        }
    }

    /// Shuts the peer down (blocking).
    pub fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        match self {
            Server::Tokio(rt, p, _) => rt.block_on(p.shutdown(timeout)),
            Server::AsyncIo(rt, p, _) => rt.block_on(p.shutdown(timeout)),
            Server::Mio(p, _) => p.shutdown(timeout),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown(Duration::ZERO);
    }
}

/// A dialing peer and the executor client code runs on.
pub enum Client {
    Tokio(tokio::runtime::Runtime, teleport_tokio::Peer),
    AsyncIo(Rt, teleport_async_std::Peer),
    /// Client code runs on a plain `block_on`; the mio loop does the I/O.
    Mio(teleport_mio::Peer),
}

impl Client {
    pub fn dial(&self, addr: &str) -> Result<Session, Rerror> {
        match self {
            Client::Tokio(rt, p) => rt.block_on(p.dial(addr)).map_err(Rerror::from),
            Client::AsyncIo(rt, p) => rt.block_on(p.dial(addr)).map_err(Rerror::from),
            Client::Mio(p) => p
                .dial(addr)
                .map(teleport_mio::Session::into_inner)
                .map_err(Rerror::from),
        }
    }

    /// Runs client code to completion on this runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        match self {
            Client::Tokio(rt, _) => rt.block_on(f),
            Client::AsyncIo(rt, _) => rt.block_on(f),
            Client::Mio(_) => futures_executor::block_on(f),
        }
    }

    pub fn shutdown(&self) {
        match self {
            Client::Tokio(rt, p) => {
                rt.block_on(p.shutdown(Duration::from_secs(1)));
            }
            Client::AsyncIo(rt, p) => {
                rt.block_on(p.shutdown(Duration::from_secs(1)));
            }
            Client::Mio(p) => {
                p.shutdown(Duration::from_secs(1));
            }
        }
    }
}

impl Rt {
    /// A peer serving `b`'s routes on `b`'s listen address.
    pub fn serve(self, b: PeerBuilder) -> io::Result<Server> {
        match self {
            Rt::Tokio => {
                let rt = tokio_rt();
                let peer = teleport_tokio::Peer::from_builder(b)?;
                let addr = rt.block_on(peer.bind())?;
                Ok(Server::Tokio(rt, peer, addr))
            }
            Rt::AsyncStd | Rt::Smol => {
                let peer = teleport_async_std::Peer::from_builder(b, self.executor())?;
                let addr = self.block_on(peer.bind())?;
                Ok(Server::AsyncIo(self, peer, addr))
            }
            Rt::Mio => {
                let peer = teleport_mio::Peer::from_builder(b)?;
                let addr = peer.bind()?;
                Ok(Server::Mio(peer, addr))
            }
        }
    }

    fn executor(self) -> teleport_async_std::Executor {
        match self {
            Rt::Smol => teleport_async_std::Executor::Smol,
            _ => teleport_async_std::Executor::AsyncStd,
        }
    }

    /// The executor's own `block_on` (async-std, smol), or a plain one.
    fn block_on<F: Future>(self, f: F) -> F::Output {
        match self {
            Rt::AsyncStd => async_std::task::block_on(f),
            Rt::Smol => smol::block_on(f),
            _ => futures_executor::block_on(f),
        }
    }

    /// A client peer with `b`'s push routes.
    pub fn client(self, b: PeerBuilder) -> Client {
        match self {
            Rt::Tokio => Client::Tokio(
                tokio_rt(),
                teleport_tokio::Peer::from_builder(b).expect("client peer"),
            ),
            Rt::AsyncStd | Rt::Smol => Client::AsyncIo(
                self,
                teleport_async_std::Peer::from_builder(b, self.executor()).expect("client peer"),
            ),
            Rt::Mio => Client::Mio(teleport_mio::Peer::from_builder(b).expect("client peer")),
        }
    }
}

/// Binds again at an address a previous server just left (the port may
/// take a moment to free up).
pub fn retry_bind(mut bind: impl FnMut() -> io::Result<Server>) -> Server {
    for _ in 0..500 {
        match bind() {
            Ok(s) => return s,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("rebind: {e}"),
        }
    }
    panic!("rebind: the address stayed in use");
}

pub use teleport_testkit::SockPath;
