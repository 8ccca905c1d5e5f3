//! The peer: server and client alike. It listens, dials, and keeps its
//! sessions.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use teleport_core::router::to_snake_case;
use teleport_core::{
    Codec, CodecRegistry, DecodeBody, Plugin, Plugins, Rerror, Role, Router, Shared, XferFilter,
    XferRegistry,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::AbortHandle;

use crate::config::PeerConfig;
use crate::conn::Driver;
use crate::handler::{pull_handler, push_handler, Handler, IntoReply, PullCtx, PushCtx};
use crate::net::{Listener, PeerAddr, Stream};
use crate::session::{Session, SessionInner};

/// Builds a [`Peer`]: routes, plugins, codecs and filters are fixed before
/// the first session starts.
///
/// ```
/// use teleport_tokio::{PeerBuilder, PeerConfig, PullCtx};
/// use teleport_core::Rerror;
///
/// struct Math;
/// impl Math {
///     async fn add(self: std::sync::Arc<Self>, _ctx: PullCtx, arg: Vec<i64>) -> Result<i64, Rerror> {
///         Ok(arg.iter().sum())
///     }
/// }
///
/// let mut b = PeerBuilder::new(PeerConfig::default());
/// b.pull("/echo", |_ctx: PullCtx, s: String| async move { Ok::<_, Rerror>(s) });
/// b.controller(Math).pull("add", Math::add); // serves /math/add
/// let peer = b.build().unwrap();
/// # drop(peer);
/// ```
pub struct PeerBuilder {
    config: PeerConfig,
    router: Router<Handler>,
    plugins: Plugins,
    codecs: CodecRegistry,
    xfers: XferRegistry,
}

impl PeerBuilder {
    /// A builder with these settings and the built-in codecs and filters.
    pub fn new(config: PeerConfig) -> Self {
        PeerBuilder {
            config,
            router: Router::new(),
            plugins: Plugins::new(),
            codecs: CodecRegistry::default(),
            xfers: XferRegistry::default(),
        }
    }

    /// Serves pulls to `path` with `f(ctx, arg) -> Result<reply, Rerror>`.
    /// `arg` is decoded with the pull's codec; the reply value is encoded
    /// with it too (see [`IntoReply`]).
    pub fn pull<F, Fut, A, R>(&mut self, path: &str, f: F) -> &mut Self
    where
        F: Fn(PullCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Rerror>> + Send + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + 'static,
    {
        self.router.pull(path, pull_handler(f));
        self
    }

    /// Takes pushes to `path` with `f(ctx, arg)`.
    pub fn push<F, Fut, A>(&mut self, path: &str, f: F) -> &mut Self
    where
        F: Fn(PushCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        A: DecodeBody + Send + 'static,
    {
        self.router.push(path, push_handler(f));
        self
    }

    /// Answers pulls to paths with no route (else they get 404).
    pub fn unknown_pull<F, Fut, A, R>(&mut self, f: F) -> &mut Self
    where
        F: Fn(PullCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Rerror>> + Send + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + 'static,
    {
        self.router.set_unknown_pull(pull_handler(f));
        self
    }

    /// Takes pushes to paths with no route (else they are dropped).
    pub fn unknown_push<F, Fut, A>(&mut self, f: F) -> &mut Self
    where
        F: Fn(PushCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        A: DecodeBody + Send + 'static,
    {
        self.router.set_unknown_push(push_handler(f));
        self
    }

    /// Routes under a prefix (`"/v1"`).
    pub fn group(&mut self, prefix: &str) -> Group<'_> {
        Group {
            builder: self,
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// A controller: `value`'s methods become routes
    /// `/<snake(type name)>/<method>`, as Go names them.
    pub fn controller<C: Send + Sync + 'static>(&mut self, value: C) -> Controller<'_, C> {
        let prefix = format!("/{}", to_snake_case(std::any::type_name::<C>()));
        Controller {
            builder: self,
            prefix,
            value: Arc::new(value),
        }
    }

    /// Adds a plugin (they run in the order added).
    pub fn plugin(&mut self, plugin: impl Plugin) -> &mut Self {
        self.plugins.add(Arc::new(plugin));
        self
    }

    /// Adds (or replaces) a body codec.
    pub fn codec(&mut self, codec: impl Codec) -> &mut Self {
        self.codecs.register(Arc::new(codec));
        self
    }

    /// Adds (or replaces) a transfer filter.
    pub fn xfer_filter(&mut self, filter: impl XferFilter) -> &mut Self {
        self.xfers.register(Arc::new(filter));
        self
    }

    /// The peer. Fails if the config names an unknown default codec or a
    /// plugin refuses a route.
    pub fn build(self) -> io::Result<Peer> {
        let session_config = self.config.session_config(&self.codecs)?;
        self.plugins
            .after_register(&self.router)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let shared = Arc::new(Shared {
            router: self.router,
            plugins: self.plugins,
            codecs: self.codecs,
            xfers: Arc::new(self.xfers),
            config: session_config,
        });
        let (shutdown, _) = watch::channel(false);
        Ok(Peer(Arc::new(PeerInner {
            config: self.config,
            shared,
            sessions: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            shutdown_deadline: Mutex::new(None),
            shutdown,
            gone: Notify::new(),
        })))
    }
}

/// Routes under a common prefix.
pub struct Group<'a> {
    builder: &'a mut PeerBuilder,
    prefix: String,
}

impl Group<'_> {
    /// A pull route `prefix/<snake(name)>`.
    pub fn pull<F, Fut, A, R>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(PullCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Rerror>> + Send + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + 'static,
    {
        let path = format!("{}/{}", self.prefix, to_snake_case(name));
        self.builder.router.pull(&path, pull_handler(f));
        self
    }

    /// A push route `prefix/<snake(name)>`.
    pub fn push<F, Fut, A>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(PushCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        A: DecodeBody + Send + 'static,
    {
        let path = format!("{}/{}", self.prefix, to_snake_case(name));
        self.builder.router.push(&path, push_handler(f));
        self
    }

    /// A controller in this group: `prefix/<snake(type)>/<method>`.
    pub fn controller<C: Send + Sync + 'static>(&mut self, value: C) -> Controller<'_, C> {
        let prefix = format!(
            "{}/{}",
            self.prefix,
            to_snake_case(std::any::type_name::<C>())
        );
        Controller {
            builder: self.builder,
            prefix,
            value: Arc::new(value),
        }
    }
}

/// A controller's routes: each method takes `Arc<Self>`, the context and
/// the argument.
pub struct Controller<'a, C> {
    builder: &'a mut PeerBuilder,
    prefix: String,
    value: Arc<C>,
}

impl<C: Send + Sync + 'static> Controller<'_, C> {
    /// The pull route `prefix/<snake(name)>` served by `method`.
    pub fn pull<F, Fut, A, R>(&mut self, name: &str, method: F) -> &mut Self
    where
        F: Fn(Arc<C>, PullCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Rerror>> + Send + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + 'static,
    {
        let c = self.value.clone();
        let path = format!("{}/{}", self.prefix, to_snake_case(name));
        self.builder
            .router
            .pull(&path, pull_handler(move |ctx, a| method(c.clone(), ctx, a)));
        self
    }

    /// The push route `prefix/<snake(name)>` served by `method`.
    pub fn push<F, Fut, A>(&mut self, name: &str, method: F) -> &mut Self
    where
        F: Fn(Arc<C>, PushCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        A: DecodeBody + Send + 'static,
    {
        let c = self.value.clone();
        let path = format!("{}/{}", self.prefix, to_snake_case(name));
        self.builder
            .router
            .push(&path, push_handler(move |ctx, a| method(c.clone(), ctx, a)));
        self
    }
}

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

struct Entry {
    session: Session,
    task: AbortHandle,
}

pub(crate) struct PeerInner {
    pub(crate) config: PeerConfig,
    pub(crate) shared: Arc<Shared<Handler>>,
    sessions: Mutex<HashMap<u64, Entry>>,
    shutting_down: AtomicBool,
    shutdown_deadline: Mutex<Option<Instant>>,
    shutdown: watch::Sender<bool>,
    gone: Notify,
}

impl PeerInner {
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn shutdown_deadline(&self) -> Option<Instant> {
        *self
            .shutdown_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn forget(&self, id: u64) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.gone.notify_waiters();
    }
}

/// What [`Peer::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Sessions open when shutdown began.
    pub sessions: usize,
    /// Sessions still running at the timeout, cancelled.
    pub cancelled: usize,
}

/// A teleport peer: a server, a client, or both at once.
#[derive(Clone)]
pub struct Peer(pub(crate) Arc<PeerInner>);

impl Peer {
    /// A peer with no routes (a pure client) and these settings.
    pub fn new(config: PeerConfig) -> io::Result<Peer> {
        PeerBuilder::new(config).build()
    }

    /// The settings.
    pub fn config(&self) -> &PeerConfig {
        &self.0.config
    }

    fn start(
        &self,
        stream: Stream,
        remote: PeerAddr,
        local: PeerAddr,
        role: Role,
        dial_addr: Option<String>,
    ) -> Session {
        // Ids are unique in the process, so logs of two peers in one
        // program do not mix up their sessions.
        let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Session(Arc::new(SessionInner {
            id,
            cmd: tx,
            remote,
            local,
            shared: self.0.shared.clone(),
        }));
        let driver = Driver::new(session.clone(), rx, self.0.clone(), role, dial_addr);
        // Register before the task can finish and forget it.
        let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let task = tokio::spawn(driver.run(stream)).abort_handle();
        sessions.insert(
            id,
            Entry {
                session: session.clone(),
                task,
            },
        );
        session
    }

    /// Dials `addr` (`host:port`, or a path for unix) and starts a session.
    /// Refused (105 `Dial Failed`) while shutting down or if the dial fails.
    pub async fn dial(&self, addr: &str) -> Result<Session, Rerror> {
        if self.0.is_shutting_down() {
            return Err(Rerror::dial_failed("peer is shutting down"));
        }
        let (stream, remote, local) = crate::net::connect(&self.0.config, addr)
            .await
            .map_err(|e| Rerror::dial_failed(format!("{addr}: {e}")))?;
        Ok(self.start(stream, remote, local, Role::Dialer, Some(addr.to_string())))
    }

    /// Binds the configured listen address and serves in the background
    /// until [`Peer::shutdown`]; returns the bound address (useful with
    /// port 0).
    pub async fn bind(&self) -> io::Result<PeerAddr> {
        let listener = Listener::bind(&self.0.config).await?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening");
        let peer = self.clone();
        let mut stop = self.0.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s).map(drop) => break,
                    r = listener.accept(&peer.0.config) => match r {
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
        let mut stop = self.0.shutdown.subscribe();
        let _ = stop.wait_for(|s| *s).await;
        Ok(())
    }

    /// A handle to every open session.
    pub fn sessions(&self) -> Vec<Session> {
        self.0
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|e| e.session.clone())
            .collect()
    }

    /// The open session with this id.
    pub fn session(&self, id: u64) -> Option<Session> {
        self.0
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map(|e| e.session.clone())
    }

    /// Shuts down gracefully: stops accepting and dialing, lets running
    /// handlers finish and their replies flush and pending pulls complete,
    /// then closes every session. What is still running at `timeout` is
    /// cancelled, and counted in the report.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let deadline = Instant::now() + timeout;
        *self
            .0
            .shutdown_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(deadline);
        self.0.shutting_down.store(true, Ordering::Release);
        self.0.shutdown.send_replace(true);
        let sessions = self.sessions();
        let total = sessions.len();
        for s in &sessions {
            let _ = s.0.cmd.send(crate::session::Command::Close {
                deadline: Some(deadline),
                done: None,
            });
        }
        drop(sessions);
        // The core abandons what is pending at the deadline; allow a moment
        // for the last flush before cancelling tasks.
        let hard = tokio::time::Instant::from_std(deadline) + Duration::from_millis(500);
        loop {
            let gone = self.0.gone.notified();
            if self
                .0
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                break;
            }
            if tokio::time::timeout_at(hard, gone).await.is_err() {
                break;
            }
        }
        let left: Vec<Entry> = self
            .0
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, e)| e)
            .collect();
        for e in &left {
            tracing::warn!(
                session = e.session.id(),
                "session still running at shutdown timeout; cancelled"
            );
            e.task.abort();
        }
        tracing::info!(sessions = total, cancelled = left.len(), "peer shut down");
        ShutdownReport {
            sessions: total,
            cancelled: left.len(),
        }
    }
}
