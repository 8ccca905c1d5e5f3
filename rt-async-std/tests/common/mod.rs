//! Helpers shared by the integration tests: running each test on both
//! executors, hang guards, unix socket paths in the temp dir.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::time::Duration;

use async_io::Timer;
use teleport_async_std::Executor;
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

// Each test binary uses a different subset.
#[allow(unused_imports)]
pub use teleport_testkit::{configs, dial_addr, test_logs, SockPath, Transport};
