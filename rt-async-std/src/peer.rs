//! The peer on async-io: listen, dial, shut down; tasks on its executor.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_io::Timer;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::FutureExt as _;
use teleport_core::{Rerror, Role};
use teleport_peer::{PeerAddr, PeerBuilder, PeerConfig, PeerCore, Session, ShutdownReport};

use crate::executor::Executor;
use crate::net::{Listener, Stream};

/// A teleport peer on async-io: a server, a client, or both at once. Its
/// tasks run on the [`Executor`] it was made with.
#[derive(Clone, Debug)]
pub struct Peer {
    core: Arc<PeerCore>,
    exec: Executor,
}

impl Peer {
    /// A peer with no routes (a pure client) and these settings.
    pub fn new(config: PeerConfig, exec: Executor) -> io::Result<Peer> {
        Peer::from_builder(PeerBuilder::new(config), exec)
    }

    /// The peer a builder describes.
    pub fn from_builder(builder: PeerBuilder, exec: Executor) -> io::Result<Peer> {
        let core = builder.build()?;
        // Large inflations run on the blocking pool async-std and smol share.
        core.set_blocking(Arc::new(|f| blocking::unblock(f).detach()));
        Ok(Peer { core, exec })
    }

    /// The runtime-independent part (settings, routes, sessions).
    pub fn core(&self) -> &Arc<PeerCore> {
        &self.core
    }

    /// The settings.
    pub fn config(&self) -> &PeerConfig {
        self.core.config()
    }

    /// Where the peer's tasks run.
    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    fn start(
        &self,
        stream: Stream,
        remote: PeerAddr,
        local: PeerAddr,
        role: Role,
        dial_addr: Option<String>,
    ) -> Session {
        self.core
            .start_session(remote, local, role, dial_addr, None, |driver| {
                // Aborting wakes the task, which then drops the connection
                // future (its socket and handlers) at its next poll.
                let (abort, registration) = AbortHandle::new_pair();
                let task = Abortable::new(
                    crate::conn::run(driver, stream, self.exec.clone()),
                    registration,
                );
                self.exec.spawn(Box::pin(task.map(drop)));
                Box::new(move || abort.abort())
            })
    }

    /// Dials `addr` (`host:port`, or a path for unix) and starts a session.
    /// Refused (105 `Dial Failed`) while shutting down or if the dial fails.
    pub async fn dial(&self, addr: &str) -> Result<Session, Rerror> {
        self.core.check_dial()?;
        let (stream, remote, local) = crate::net::connect(self.config(), addr)
            .await
            .map_err(|e| PeerCore::dial_error(addr, e))?;
        Ok(self.start(stream, remote, local, Role::Dialer, Some(addr.to_string())))
    }

    /// Binds the configured listen address and serves in the background
    /// until [`Peer::shutdown`]; returns the bound address (useful with
    /// port 0).
    pub async fn bind(&self) -> io::Result<PeerAddr> {
        let listener = Listener::bind(self.config()).await?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening");
        let peer = self.clone();
        let mut stop = self.core.shutdown_signal();
        self.exec.spawn(Box::pin(async move {
            loop {
                let next = futures_lite::future::or(
                    async {
                        let _ = stop.wait_for(|s| *s).await;
                        None
                    },
                    async { Some(listener.accept(peer.config()).await) },
                )
                .await;
                match next {
                    None => break,
                    Some(Ok((stream, remote, local))) => {
                        peer.start(stream, remote, local, Role::Acceptor, None);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "accept failed");
                        // Out of descriptors, say: do not spin.
                        Timer::after(Duration::from_millis(50)).await;
                    }
                }
            }
            tracing::info!("listener closed");
        }));
        Ok(addr)
    }

    /// Serves on the configured listen address until [`Peer::shutdown`].
    pub async fn listen(&self) -> io::Result<()> {
        self.bind().await?;
        let mut stop = self.core.shutdown_signal();
        let _ = stop.wait_for(|s| *s).await;
        Ok(())
    }

    /// A handle to every open session.
    pub fn sessions(&self) -> Vec<Session> {
        self.core.sessions()
    }

    /// The open session with this id.
    pub fn session(&self, id: u64) -> Option<Session> {
        self.core.session(id)
    }

    /// Shuts down gracefully: stops accepting and dialing, lets running
    /// handlers finish and their replies flush and pending pulls complete,
    /// then closes every session. What is still running at `timeout` is
    /// cancelled, and counted in the report.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let deadline = PeerCore::deadline_after(timeout);
        let sessions = self.core.begin_shutdown(deadline);
        // The core abandons what is pending at the deadline; allow a moment
        // for the last flush before cancelling tasks.
        let hard = PeerCore::deadline_after(timeout.saturating_add(teleport_peer::FLUSH_GRACE));
        futures_lite::future::or(self.core.all_gone(), async {
            Timer::at(hard).await;
        })
        .await;
        let report = self.core.end_shutdown(sessions);
        // Closed connections wait (briefly) for their peers to read the last
        // replies: a process that exits now would reset them.
        futures_lite::future::or(self.core.lingering_done(), async {
            Timer::after(teleport_peer::LINGER).await;
        })
        .await;
        report
    }
}
