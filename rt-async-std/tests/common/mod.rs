//! Helpers shared by the integration tests: running each test on both
//! executors, hang guards, unix socket paths in the temp dir.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_io::Timer;
use teleport_async_std::{Executor, Network, PeerAddr, PeerConfig};
use tokio::sync::oneshot;

/// Makes a `#[test]` per executor of each `async fn name(exec: Executor)`
/// listed, run under that executor's own `block_on`: `on_async_std::name`
/// and `on_smol::name`.
#[macro_export]
macro_rules! on_both_executors {
    ($($name:ident),* $(,)?) => {
        mod on_async_std {
            $(
                #[test]
                fn $name() {
                    ::async_std::task::block_on(super::$name(
                        ::teleport_async_std::Executor::AsyncStd,
                    ));
                }
            )*
        }
        mod on_smol {
            $(
                #[test]
                fn $name() {
                    ::smol::block_on(super::$name(::teleport_async_std::Executor::Smol));
                }
            )*
        }
    };
}

/// How long anything may take before a test declares a hang. Only a guard:
/// no test asserts how fast something happened.
pub const GUARD: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it has not finished within [`GUARD`].
pub async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    futures_lite::future::or(f, async {
        Timer::after(GUARD).await;
        panic!("{what}: did not finish within {GUARD:?} (hang?)")
    })
    .await
}

/// Runs `f` on `exec`; its output comes back through the receiver.
pub fn spawn<T, F>(exec: &Executor, f: F) -> oneshot::Receiver<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    exec.spawn(Box::pin(async move {
        let _ = tx.send(f.await);
    }));
    rx
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
            "tp-as-{}-{n}-{nanos}-{tag}.sock",
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
