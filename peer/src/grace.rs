//! Stopping on a signal: the seed's `GraceSignal` and `SetShutdown`.
//!
//! [`Grace`] says how a graceful stop goes (the seed's
//! `SetShutdown(timeout, firstSweep, beforeExiting)`);
//! [`Grace::listen`] installs the signal handlers and gives a
//! [`GraceSignal`], which waits for SIGINT or SIGTERM and then runs the
//! stop: the first sweep, every peer's graceful shutdown (each adapter's
//! `grace_signal` function passes its peers in), the last hook. It returns
//! what happened ([`GraceReport`]) instead of ending the process: `main`
//! returns, with the exit code it picks.
//!
//! From [`Grace::listen`] on, a first SIGINT or SIGTERM no longer ends the
//! process at once; a second one, while the stop is under way, does (exit
//! status 1), as an operator pressing Ctrl-C twice expects. Once the
//! [`GraceSignal`] is dropped (after its stop, or unused), the signals do
//! what they did before: end the process.
//!
//! SIGHUP or SIGUSR2 restarts gracefully (the seed's reboot): the
//! successor is started with the peers' listening sockets
//! ([`crate::handoff::hand_off`], as [`Grace::restart_with`] says), and
//! once it says it is ready the peers shut down gracefully, as on SIGTERM:
//! they stop accepting (the successor accepts on the same sockets, so no
//! dial is refused), tell their clients to move, answer what they
//! accepted, and the process ends. If the successor fails to start or to
//! be ready in time, the error is logged and this process serves on.
//!
//! Waiting for signals is also when the process is ready: the adapters'
//! `grace_signal` calls [`crate::handoff::notify_ready`] first (telling a
//! predecessor, and systemd).

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::{Handle, Signals};
use signal_hook::SigId;
use tokio::sync::{mpsc, oneshot};

use crate::handoff::{HandOff, HandOffError, Successor};
use crate::registry::{PeerCore, ShutdownReport};

/// What a hook may fail with.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// A hook run once during the stop.
type Hook = Box<dyn FnOnce() -> Result<(), HookError> + Send>;

/// How a graceful stop goes: the seed's `SetShutdown(timeout, firstSweep,
/// beforeExiting)`.
pub struct Grace {
    timeout: Duration,
    first_sweep: Option<Hook>,
    before_exiting: Option<Hook>,
    restart: HandOff,
}

impl fmt::Debug for Grace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grace")
            .field("timeout", &self.timeout)
            .field("first_sweep", &self.first_sweep.is_some())
            .field("before_exiting", &self.before_exiting.is_some())
            .field("restart", &self.restart)
            .finish()
    }
}

impl Grace {
    /// A stop in which every peer's shutdown gets `timeout` (as each
    /// adapter's `Peer::shutdown` takes it) and no hooks run.
    pub fn new(timeout: Duration) -> Grace {
        Grace {
            timeout,
            first_sweep: None,
            before_exiting: None,
            restart: HandOff::default(),
        }
    }

    /// How a restart on SIGHUP or SIGUSR2 starts the successor (by default
    /// this program again with its arguments, 30 s to be ready).
    pub fn restart_with(mut self, how: HandOff) -> Grace {
        self.restart = how;
        self
    }

    /// Runs `f` first, before any peer stops (the seed's `firstSweep`):
    /// take the service out of a registry, say, so no new caller comes.
    /// Its error is reported and the stop goes on.
    pub fn first_sweep(
        mut self,
        f: impl FnOnce() -> Result<(), HookError> + Send + 'static,
    ) -> Grace {
        self.first_sweep = Some(Box::new(f));
        self
    }

    /// Runs `f` last, once every peer has stopped (the seed's
    /// `beforeExiting`): flush a log, close a database. Its error is
    /// reported.
    pub fn before_exiting(
        mut self,
        f: impl FnOnce() -> Result<(), HookError> + Send + 'static,
    ) -> Grace {
        self.before_exiting = Some(Box::new(f));
        self
    }

    /// What each peer's shutdown gets.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Installs the handlers of SIGINT, SIGTERM, SIGHUP and SIGUSR2 now,
    /// before anything waits on them (a signal that comes in between is
    /// kept, not lost).
    pub fn listen(self) -> io::Result<GraceSignal> {
        GraceSignal::install(self)
    }
}

/// The signal that started a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (what `kill`, systemd and container runtimes send).
    Terminate,
    /// SIGHUP: a graceful restart.
    Hangup,
    /// SIGUSR2: a graceful restart.
    User2,
}

impl Signal {
    fn from_raw(sig: i32) -> Signal {
        match sig {
            SIGINT => Signal::Interrupt,
            SIGHUP => Signal::Hangup,
            SIGUSR2 => Signal::User2,
            _ => Signal::Terminate,
        }
    }

    /// Whether it asks for a restart rather than a stop.
    pub fn is_restart(self) -> bool {
        matches!(self, Signal::Hangup | Signal::User2)
    }
}

/// What a stop did, in order.
#[derive(Debug)]
pub struct GraceReport {
    /// The signal that started it.
    pub signal: Signal,
    /// On a restart, the successor that took over (its process id).
    pub successor: Option<u32>,
    /// The first sweep's result (`Ok` when there was none).
    pub first_sweep: Result<(), HookError>,
    /// Each peer's shutdown report, in the order the peers were given.
    pub peers: Vec<ShutdownReport>,
    /// The last hook's result (`Ok` when there was none).
    pub before_exiting: Result<(), HookError>,
    /// How long the stop took, from the signal's arrival.
    pub elapsed: Duration,
}

/// Handlers of SIGINT and SIGTERM, waiting for the first of them to stop
/// the process's peers as its [`Grace`] says (the seed's `GraceSignal`).
/// Made by [`Grace::listen`]; used by each adapter's `grace_signal`.
pub struct GraceSignal {
    grace: Grace,
    got: mpsc::UnboundedReceiver<Signal>,
    handle: Handle,
    flags: Vec<SigId>,
}

impl fmt::Debug for GraceSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraceSignal")
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// What SIGINT and SIGTERM do while no [`GraceSignal`] is alive, once one
/// has been: signal-hook keeps its handler installed when the last action
/// is removed (it cannot restore the default safely), so without this the
/// process would ignore them from then on. A default action, registered
/// once and first, runs while no `GraceSignal` is alive.
struct Fallback {
    /// Run the default action (`true` while no `GraceSignal` lives).
    default: Arc<AtomicBool>,
    /// `GraceSignal`s alive.
    live: usize,
    registered: bool,
}

static FALLBACK: std::sync::LazyLock<Mutex<Fallback>> = std::sync::LazyLock::new(|| {
    Mutex::new(Fallback {
        default: Arc::new(AtomicBool::new(false)),
        live: 0,
        registered: false,
    })
});

impl Fallback {
    fn lock() -> std::sync::MutexGuard<'static, Fallback> {
        FALLBACK.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `GraceSignal` is being installed: the default action is off.
    fn enter() -> io::Result<()> {
        let mut f = Fallback::lock();
        if !f.registered {
            for sig in [SIGINT, SIGTERM, SIGHUP, SIGUSR2] {
                signal_hook::flag::register_conditional_default(sig, f.default.clone())?;
            }
            f.registered = true;
        }
        f.live += 1;
        f.default.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// A `GraceSignal` is gone: with none left, the default action is back.
    fn leave() {
        let mut f = Fallback::lock();
        f.live = f.live.saturating_sub(1);
        if f.live == 0 {
            f.default.store(true, Ordering::SeqCst);
        }
    }
}

impl GraceSignal {
    fn install(grace: Grace) -> io::Result<GraceSignal> {
        Fallback::enter()?;
        let installed = GraceSignal::install_handlers(grace);
        if installed.is_err() {
            Fallback::leave();
        }
        installed
    }

    fn install_handlers(grace: Grace) -> io::Result<GraceSignal> {
        // A second signal while the first one's stop runs ends the process:
        // the exit is registered before the flag it tests is set, so the
        // first signal only sets it.
        let stopping = Arc::new(AtomicBool::new(false));
        let mut flags = Vec::with_capacity(4);
        for sig in [SIGINT, SIGTERM] {
            flags.push(signal_hook::flag::register_conditional_shutdown(
                sig,
                1,
                stopping.clone(),
            )?);
            flags.push(signal_hook::flag::register(sig, stopping.clone())?);
        }
        let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2]) {
            Ok(s) => s,
            Err(e) => {
                for id in flags {
                    signal_hook::low_level::unregister(id);
                }
                return Err(e);
            }
        };
        let handle = signals.handle();
        let (tx, got) = mpsc::unbounded_channel();
        let waiter = std::thread::Builder::new()
            .name("teleport-signals".into())
            .spawn(move || {
                // Ends when the handle is closed.
                for sig in signals.forever() {
                    if tx.send(Signal::from_raw(sig)).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = waiter {
            handle.close();
            for id in flags {
                signal_hook::low_level::unregister(id);
            }
            return Err(e);
        }
        Ok(GraceSignal {
            grace,
            got,
            handle,
            flags,
        })
    }

    /// Says the process is ready ([`crate::handoff::notify_ready`]), waits
    /// for a signal (on any runtime), then stops: the first sweep, `stop`
    /// (given the timeout; an adapter shuts its peers down there), the
    /// last hook. On SIGHUP or SIGUSR2 the successor is started with the
    /// listening sockets of `peers` first, and the stop follows once it is
    /// ready; if it fails, this process waits for the next signal.
    pub async fn run<F, Fut>(mut self, peers: &[Arc<PeerCore>], stop: F) -> GraceReport
    where
        F: FnOnce(Duration) -> Fut,
        Fut: std::future::Future<Output = Vec<ShutdownReport>>,
    {
        self.ready();
        let (signal, successor) = loop {
            let signal = self.got.recv().await.unwrap_or(Signal::Terminate);
            if !signal.is_restart() {
                break (signal, None);
            }
            let (tx, rx) = oneshot::channel();
            let listeners = listeners_of(peers);
            let how = self.grace.restart.clone();
            let started = std::thread::Builder::new()
                .name("teleport-handoff".into())
                .spawn(move || {
                    let _ = tx.send(listeners.and_then(|l| crate::handoff::hand_off(l, &how)));
                });
            let r = match started {
                Ok(_) => rx
                    .await
                    .unwrap_or_else(|_| Err(io::Error::other("hand-off thread lost").into())),
                Err(e) => Err(e.into()),
            };
            if let Some(s) = restarted(signal, r) {
                break (signal, Some(s.pid));
            }
        };
        let (since, first_sweep) = self.begin(signal);
        let peers = stop(self.grace.timeout).await;
        self.end(signal, successor, since, first_sweep, peers)
    }

    /// [`GraceSignal::run`] for a blocking caller (the mio adapter): this
    /// thread waits for the signal. Not to be called from async code.
    pub fn run_blocking(
        mut self,
        peers: &[Arc<PeerCore>],
        stop: impl FnOnce(Duration) -> Vec<ShutdownReport>,
    ) -> GraceReport {
        self.ready();
        let (signal, successor) = loop {
            let signal = self.got.blocking_recv().unwrap_or(Signal::Terminate);
            if !signal.is_restart() {
                break (signal, None);
            }
            let r =
                listeners_of(peers).and_then(|l| crate::handoff::hand_off(l, &self.grace.restart));
            if let Some(s) = restarted(signal, r) {
                break (signal, Some(s.pid));
            }
        };
        let (since, first_sweep) = self.begin(signal);
        let peers = stop(self.grace.timeout);
        self.end(signal, successor, since, first_sweep, peers)
    }

    fn ready(&self) {
        if let Err(e) = crate::handoff::notify_ready() {
            tracing::warn!(target: "teleport::grace", error = %e,
                "could not tell the predecessor this process is ready");
        }
    }

    fn begin(&mut self, signal: Signal) -> (Instant, Result<(), HookError>) {
        let since = Instant::now();
        tracing::info!(target: "teleport::grace", ?signal, timeout = ?self.grace.timeout, "stopping gracefully");
        (
            since,
            run_hook(self.grace.first_sweep.take(), "first sweep"),
        )
    }

    fn end(
        &mut self,
        signal: Signal,
        successor: Option<u32>,
        since: Instant,
        first_sweep: Result<(), HookError>,
        peers: Vec<ShutdownReport>,
    ) -> GraceReport {
        let before_exiting = run_hook(self.grace.before_exiting.take(), "before exiting");
        tracing::info!(target: "teleport::grace", ?signal, elapsed = ?since.elapsed(), "stopped");
        GraceReport {
            signal,
            successor,
            first_sweep,
            peers,
            before_exiting,
            elapsed: since.elapsed(),
        }
    }
}

impl Drop for GraceSignal {
    fn drop(&mut self) {
        self.handle.close();
        for id in self.flags.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        Fallback::leave();
    }
}

/// The listening sockets of every peer, for a hand-off.
fn listeners_of(peers: &[Arc<PeerCore>]) -> Result<Vec<(String, socket2::Socket)>, HandOffError> {
    let mut all = Vec::new();
    for p in peers {
        all.extend(p.listening_sockets()?);
    }
    Ok(all)
}

/// A hand-off's outcome, logged; the successor if it took over.
fn restarted(signal: Signal, r: Result<Successor, HandOffError>) -> Option<Successor> {
    match r {
        Ok(s) => {
            tracing::info!(target: "teleport::grace", ?signal, successor = s.pid,
                "successor ready; stopping gracefully");
            Some(s)
        }
        Err(e) => {
            tracing::error!(target: "teleport::grace", ?signal, error = %e,
                "restart failed; serving on");
            None
        }
    }
}

fn run_hook(hook: Option<Hook>, what: &str) -> Result<(), HookError> {
    let Some(hook) = hook else {
        return Ok(());
    };
    let r = hook();
    if let Err(e) = &r {
        tracing::warn!(target: "teleport::grace", error = %e, "the {what} hook failed");
    }
    r
}
