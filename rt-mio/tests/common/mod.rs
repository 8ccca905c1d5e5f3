//! Helpers shared by the integration tests: hang guards, unix socket paths
//! in the temp dir.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::mpsc;
use std::time::Duration;

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

// Each test binary uses a different subset.
#[allow(unused_imports)]
pub use teleport_testkit::{configs, dial_addr, test_logs, SockPath, Transport};
