//! Helpers shared by the integration tests: hang guards, unix socket paths
//! in the temp dir, and a log capture for tests that check what was logged.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use teleport_tokio::{Network, PeerConfig};

/// How long anything may take before a test declares a hang. Only a guard:
/// no test asserts how fast something happened.
pub const GUARD: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it has not finished within [`GUARD`].
pub async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {GUARD:?} (hang?)"),
    }
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
            "tp-rs-{}-{n}-{nanos}-{tag}.sock",
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
