//! The seed's `GraceSignal` and `SetShutdown` on every runtime: a signal
//! sent to this process while a pull is in flight stops the server
//! gracefully. The first sweep runs before the peer stops, the pull is
//! answered, the last hook runs once its handler is done, and the report
//! says which signal it was.
//!
//! Signals belong to the whole process, so this file is a test binary of
//! its own with one test that takes the runtimes one after the other; the
//! tests of what a signal does to the process itself run in a child
//! process each (this binary, started again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use teleport_core::Rerror;
use teleport_mio::prelude::SyncHandlers as _;
use teleport_peer::{Grace, GraceReport, GraceSignal, PeerBuilder, PeerConfig, PullCtx, Signal};

/// How long the pull in flight at the signal takes once the first sweep
/// has run (it cannot end before: the order is the test's, not a race).
const SLOW: Duration = Duration::from_millis(100);

/// What the stop's hooks saw, in order.
#[derive(Clone, Default)]
struct Seen {
    notes: Arc<Mutex<Vec<String>>>,
    started: Arc<AtomicBool>,
    swept: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl Seen {
    fn note(&self, s: &str) {
        self.notes.lock().unwrap().push(s.to_string());
    }

    /// The stop described, with hooks that note whether the handler had
    /// finished when each ran.
    fn grace(&self) -> std::io::Result<GraceSignal> {
        let (a, b) = (self.clone(), self.clone());
        Grace::new(Duration::from_secs(10))
            .first_sweep(move || {
                let done = a.done.load(Ordering::SeqCst);
                a.note(&format!("first sweep, handler done: {done}"));
                a.swept.store(true, Ordering::SeqCst);
                Ok(())
            })
            .before_exiting(move || {
                let done = b.done.load(Ordering::SeqCst);
                b.note(&format!("before exiting, handler done: {done}"));
                Err("the last hook's error is reported".into())
            })
            .listen()
    }

    /// Waits (blocking) until the server's handler has started.
    fn wait_started(&self) {
        while !self.started.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn check(&self, rt: &str, report: &GraceReport, signal: Signal) {
        assert_eq!(report.signal, signal, "{rt}");
        assert!(report.first_sweep.is_ok(), "{rt}");
        assert_eq!(
            report.before_exiting.as_ref().map_err(|e| e.to_string()),
            Err("the last hook's error is reported".to_string()),
            "{rt}"
        );
        assert_eq!(report.peers.len(), 1, "{rt}");
        assert_eq!(report.peers[0].cancelled, 0, "{rt}: {:?}", report.peers);
        assert_eq!(
            *self.notes.lock().unwrap(),
            [
                "first sweep, handler done: false",
                "before exiting, handler done: true"
            ],
            "{rt}"
        );
    }
}

/// The server's routes: `/slow` waits for the first sweep, then answers
/// after [`SLOW`], noting when it starts and ends.
fn server(
    seen: &Seen,
    sleep: fn(Duration) -> futures_util::future::BoxFuture<'static, ()>,
) -> PeerBuilder {
    let mut b = PeerBuilder::new(PeerConfig::default());
    let seen = seen.clone();
    b.pull("/slow", move |_ctx: PullCtx, s: String| {
        let seen = seen.clone();
        seen.started.store(true, Ordering::SeqCst);
        async move {
            while !seen.swept.load(Ordering::SeqCst) {
                sleep(Duration::from_millis(1)).await;
            }
            sleep(SLOW).await;
            seen.done.store(true, Ordering::SeqCst);
            Ok::<_, Rerror>(format!("slow {s}"))
        }
    });
    b
}

fn raise(sig: i32) {
    signal_hook::low_level::raise(sig).expect("raise");
}

fn tokio_sleep(d: Duration) -> futures_util::future::BoxFuture<'static, ()> {
    Box::pin(tokio::time::sleep(d))
}

fn timer_sleep(d: Duration) -> futures_util::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        async_io::Timer::after(d).await;
    })
}

fn on_tokio() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let seen = Seen::default();
        let server = teleport_tokio::Peer::from_builder(server(&seen, tokio_sleep)).unwrap();
        let addr = server.spawn_listener().await.unwrap();
        let client = teleport_tokio::Peer::new(PeerConfig::default()).unwrap();
        let s = client.dial(&addr.to_string()).await.unwrap();
        let pull = tokio::spawn(async move { s.pull::<_, String>("/slow", "tokio").await });
        let signals = seen.grace().unwrap();
        let waiter = seen.clone();
        tokio::task::spawn_blocking(move || waiter.wait_started())
            .await
            .unwrap();
        raise(SIGTERM);
        let report = teleport_tokio::grace_signal(signals, &[&server]).await;
        seen.check("tokio", &report, Signal::Terminate);
        let r = pull.await.unwrap().expect("the pull in flight is answered");
        assert_eq!(r.value, "slow tokio");
    });
}

fn on_async_io(rt: &str, exec: teleport_async_std::Executor, signal: (i32, Signal)) {
    let seen = Seen::default();
    let server =
        teleport_async_std::Peer::from_builder(server(&seen, timer_sleep), exec.clone()).unwrap();
    let client = teleport_async_std::Peer::new(PeerConfig::default(), exec).unwrap();
    futures_executor::block_on(async {
        let addr = server.spawn_listener().await.unwrap();
        let s = client.dial(&addr.to_string()).await.unwrap();
        let signals = seen.grace().unwrap();
        let pull = async { s.pull::<_, String>("/slow", rt).await };
        let stop = async {
            started(&seen).await;
            raise(signal.0);
            teleport_async_std::grace_signal(signals, &[&server]).await
        };
        let (r, report) = futures_util::future::join(pull, stop).await;
        seen.check(rt, &report, signal.1);
        assert_eq!(
            r.expect("the pull in flight is answered").value,
            format!("slow {rt}")
        );
    });
}

/// Waits until the server's handler started.
async fn started(seen: &Seen) {
    while !seen.started.load(Ordering::SeqCst) {
        async_io::Timer::after(Duration::from_millis(1)).await;
    }
}

fn on_mio() {
    let seen = Seen::default();
    let mut b = PeerBuilder::new(PeerConfig::default());
    {
        let seen = seen.clone();
        b.pull_sync("/slow", move |_ctx: PullCtx, s: String| {
            seen.started.store(true, Ordering::SeqCst);
            while !seen.swept.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(SLOW);
            seen.done.store(true, Ordering::SeqCst);
            Ok::<_, Rerror>(format!("slow {s}"))
        });
    }
    let server = teleport_mio::Peer::from_builder(b).unwrap();
    let addr = server.spawn_listener().unwrap();
    let client = teleport_mio::Peer::new(PeerConfig::default()).unwrap();
    let s = client.dial(&addr.to_string()).unwrap();
    let pull = std::thread::spawn(move || s.pull::<_, String>("/slow", "mio"));
    let signals = seen.grace().unwrap();
    seen.wait_started();
    raise(SIGTERM);
    let report = teleport_mio::grace_signal(signals, &[&server]);
    seen.check("mio", &report, Signal::Terminate);
    let r = pull
        .join()
        .unwrap()
        .expect("the pull in flight is answered");
    assert_eq!(r.value, "slow mio");
}

#[test]
fn a_signal_stops_every_runtime_gracefully() {
    if std::env::var_os(CHILD).is_some() {
        return; // a child of another test here
    }
    on_tokio();
    on_async_io(
        "async-std",
        teleport_async_std::Executor::AsyncStd,
        (SIGTERM, Signal::Terminate),
    );
    on_async_io(
        "smol",
        teleport_async_std::Executor::Smol,
        (SIGINT, Signal::Interrupt),
    );
    on_mio();
}

/// Which child this process is, when the tests below start it again.
const CHILD: &str = "TELEPORT_GRACE_CHILD";

/// Runs this test binary again with only `test` and [`CHILD`] set to
/// `role`; its exit status.
fn child(test: &str, role: &str) -> std::process::ExitStatus {
    std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", test, "--test-threads=1", "--nocapture"])
        .env(CHILD, role)
        .status()
        .expect("the child ran")
}

/// Once a `GraceSignal` is gone (used or not), SIGTERM ends the process as
/// it did before: it is not left ignored.
#[test]
fn sigterm_ends_the_process_once_the_grace_signal_is_gone() {
    use std::os::unix::process::ExitStatusExt;
    if std::env::var(CHILD).as_deref() == Ok("dropped") {
        drop(Grace::new(Duration::from_secs(1)).listen().unwrap());
        raise(SIGTERM);
        // Reached only if the signal was ignored.
        std::process::exit(0);
    }
    let status = child(
        "sigterm_ends_the_process_once_the_grace_signal_is_gone",
        "dropped",
    );
    assert!(
        status.signal() == Some(SIGTERM) || status.code() == Some(128 + SIGTERM),
        "{status:?}"
    );
}

/// A second signal while the first one's stop runs ends the process at
/// once, with status 1.
#[test]
fn a_second_signal_exits_at_once() {
    if std::env::var(CHILD).as_deref() == Ok("twice") {
        let _signals = Grace::new(Duration::from_secs(1)).listen().unwrap();
        raise(SIGTERM); // the stop would begin
        raise(SIGINT); // the operator insists
        std::process::exit(0);
    }
    let status = child("a_second_signal_exits_at_once", "twice");
    assert_eq!(status.code(), Some(1), "{status:?}");
}
