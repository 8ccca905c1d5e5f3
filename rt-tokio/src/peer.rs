//! The peer on tokio: listen, dial, shut down.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use teleport_core::{Rerror, Role};
use teleport_peer::{
    PeerAddr, PeerBuilder, PeerConfig, PeerCore, Session, ShutdownReport, FLUSH_GRACE, LINGER,
};

use crate::net::{Listener, Stream};

/// A teleport peer on tokio: a server, a client, or both at once.
#[derive(Clone, Debug)]
pub struct Peer(Arc<PeerCore>);

impl Peer {
    /// A peer with no routes (a pure client) and these settings.
    pub fn new(config: PeerConfig) -> io::Result<Peer> {
        Peer::from_builder(PeerBuilder::new(config))
    }

    /// The peer a builder describes.
    pub fn from_builder(builder: PeerBuilder) -> io::Result<Peer> {
        let core = builder.build()?;
        // Large inflations run on tokio's blocking pool.
        core.set_blocking(Arc::new(|f| {
            tokio::task::spawn_blocking(f);
        }));
        Ok(Peer(core))
    }

    /// The runtime-independent part (settings, routes, sessions).
    pub fn core(&self) -> &Arc<PeerCore> {
        &self.0
    }

    /// The settings.
    pub fn config(&self) -> &PeerConfig {
        self.0.config()
    }

    fn start(
        &self,
        stream: Stream,
        remote: PeerAddr,
        local: PeerAddr,
        role: Role,
        dial_addr: Option<String>,
    ) -> Session {
        self.0
            .start_session(remote, local, role, dial_addr, None, |driver| {
                let task = tokio::spawn(crate::conn::run(driver, stream)).abort_handle();
                Box::new(move || task.abort())
            })
    }

    /// Dials `addr` (`host:port`, or a path for unix) and starts a session.
    /// Refused (105 `Dial Failed`) while shutting down or if the dial fails.
    pub async fn dial(&self, addr: &str) -> Result<Session, Rerror> {
        self.0.check_dial()?;
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
        let mut stop = self.0.shutdown_signal();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s).map(drop) => break,
                    r = listener.accept(peer.config()) => match r {
                        Ok((stream, remote, local)) => {
                            peer.start(stream, remote, local, Role::Acceptor, None);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            // Out of descriptors, say: do not spin.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                }
            }
            tracing::info!("listener closed");
        });
        Ok(addr)
    }

    /// Serves on the configured listen address until [`Peer::shutdown`].
    pub async fn listen(&self) -> io::Result<()> {
        self.bind().await?;
        let mut stop = self.0.shutdown_signal();
        let _ = stop.wait_for(|s| *s).await;
        Ok(())
    }

    /// A handle to every open session.
    pub fn sessions(&self) -> Vec<Session> {
        self.0.sessions()
    }

    /// The open session with this id.
    pub fn session(&self, id: u64) -> Option<Session> {
        self.0.session(id)
    }

    /// Shuts down gracefully: stops accepting and dialing, lets running
    /// handlers finish and their replies flush and pending pulls complete,
    /// then closes every session. What is still running at `timeout` is
    /// cancelled, and counted in the report.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let deadline = PeerCore::deadline_after(timeout);
        let sessions = self.0.begin_shutdown(deadline);
        // The core abandons what is pending at the deadline; allow a moment
        // for the last flush before cancelling tasks.
        let hard = PeerCore::deadline_after(timeout.saturating_add(FLUSH_GRACE));
        let _ = tokio::time::timeout_at(hard.into(), self.0.all_gone()).await;
        let report = self.0.end_shutdown(sessions);
        // Closed connections wait (briefly) for their peers to read the last
        // replies: a process that exits now would reset them.
        let _ = tokio::time::timeout(LINGER, self.0.lingering_done()).await;
        report
    }
}
