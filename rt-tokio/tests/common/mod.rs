//! Helpers shared by the integration tests: hang guards, unix socket paths
//! in the temp dir.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::time::Duration;

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

// Each test binary uses a different subset.
#[allow(unused_imports)]
pub use teleport_testkit::{configs, dial_addr, test_logs, SockPath, Transport};
