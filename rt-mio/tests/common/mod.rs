//! Helpers shared by the integration tests: hang guards, unix socket paths
//! in the temp dir, and a log capture for tests that check what was logged.
#![allow(dead_code)] // each test binary uses a different subset

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, Once};
use std::time::Duration;

use teleport_mio::{Network, PeerAddr, PeerConfig};

/// How long anything may take before a test declares a hang. Only a guard:
/// no test asserts how fast something happened.
pub const GUARD: Duration = Duration::from_secs(10);

/// Runs `f` on a thread of its own, failing the test if it has not
/// returned within [`GUARD`] (a blocking call that hangs would otherwise
/// hang the test run). A panic in `f` is the test's.
pub fn guard<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(GUARD) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Disconnected) => match t.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("sent nothing yet returned"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: did not finish within {GUARD:?} (hang?)")
        }
    }
}

/// Receives from `rx` or fails the test after [`GUARD`].
pub fn recv<T>(what: &str, rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(GUARD)
        .unwrap_or_else(|e| panic!("{what}: nothing within {GUARD:?}: {e}"))
}

/// Runs a future to completion on this thread (for the runtime-free
/// channels of `teleport-peer`, such as the shutdown signal).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A future that is pending once, so a handler finishes after its first
/// poll (on whoever polls it next).
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// A unix socket path in the temp dir, unique in this process and across
/// concurrent test processes; the file is removed on drop.
pub struct SockPath(pub PathBuf);

impl SockPath {
    pub fn new(tag: &str) -> SockPath {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tp-mio-{}-{n}-{nanos}-{tag}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        SockPath(path)
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("temp dir path is UTF-8")
    }
}

impl Drop for SockPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The two transports the tests run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
}

/// Configs for a server and its clients over `t`; the path guard (unix)
/// must outlive the test.
pub fn configs(t: Transport, tag: &str) -> (PeerConfig, PeerConfig, Option<SockPath>) {
    match t {
        Transport::Tcp => (
            PeerConfig {
                listen_address: "127.0.0.1:0".into(),
                ..PeerConfig::default()
            },
            PeerConfig::default(),
            None,
        ),
        Transport::Unix => {
            let path = SockPath::new(tag);
            (
                PeerConfig {
                    network: Network::Unix,
                    listen_address: path.as_str().to_string(),
                    ..PeerConfig::default()
                },
                PeerConfig {
                    network: Network::Unix,
                    ..PeerConfig::default()
                },
                Some(path),
            )
        }
    }
}

/// What `dial` takes to reach `addr`.
pub fn dial_addr(addr: &PeerAddr) -> String {
    addr.dial_string()
}

/// Warnings and errors to the test output (shown for failing tests).
pub fn test_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .try_init();
}

static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        CAPTURED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Captures warnings and errors of every test in this binary (tests run in
/// parallel, so look for something only one test logs).
pub fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .init();
    });
}

/// Everything captured so far.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&CAPTURED.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}
