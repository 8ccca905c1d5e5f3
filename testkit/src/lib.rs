//! Helpers every adapter's integration tests share (a dev-dependency only):
//! unix socket paths in the temp dir, server/client configs per
//! transport, and (feature `tls`) certificates made in the test.
#![warn(missing_docs)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use teleport_peer::{Network, PeerAddr, PeerConfig};

/// A unix socket path in the temp dir, unique in this process and across
/// concurrent test processes; the file is removed on drop.
pub struct SockPath(pub PathBuf);

impl SockPath {
    /// A fresh path; `tag` (letters and digits kept, at most 24) helps tell
    /// which test made it, while keeping under the unix path limit.
    pub fn new(tag: &str) -> SockPath {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(24)
            .collect();
        let path = std::env::temp_dir().join(format!(
            "tp-rs-{}-{n}-{nanos}-{tag}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        SockPath(path)
    }

    /// The path as text.
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
    /// Loopback TCP.
    Tcp,
    /// A unix socket in the temp dir.
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
    // `RUST_LOG` picks more when debugging; warnings by default.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(filter)
        .with_ansi(false)
        .try_init();
}

static CAPTURED: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures warnings and errors of every test in this binary (tests run in
/// parallel, so look for something only one test logs).
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
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

#[cfg(feature = "tls")]
pub mod certs;
