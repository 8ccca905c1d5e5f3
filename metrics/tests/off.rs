//! The endpoint is off unless `serve` is called: no address, no thread,
//! while the plugin counts. A process of its own, so no other test's
//! endpoint is running beside it.

mod common;

use teleport_core::Rerror;
use teleport_metrics::Metrics;
use teleport_tokio::{Peer, PeerAddr, PeerBuilder, PeerConfig, PullCtx};

use common::guard;

/// Names of this process's threads (Linux: `/proc/self/task/*/comm`,
/// which keeps 15 bytes of a name).
#[cfg(target_os = "linux")]
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_string())
        .collect()
}

/// The TCP sockets of this process in the listening state (Linux: its
/// descriptors' socket inodes, looked up in `/proc/self/net/tcp{,6}`).
#[cfg(target_os = "linux")]
fn listening_sockets() -> usize {
    let ours: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|f| std::fs::read_link(f.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .filter(|cols| cols.get(3).map(String::as_str) == Some("0A"))
        .filter(|cols| cols.get(9).is_some_and(|inode| ours.contains(inode)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listens_unless_serve_is_called() {
    let m = Metrics::new();
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/a", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    b.plugin(m.clone());
    let srv = Peer::from_builder(b).unwrap();
    let PeerAddr::Tcp(addr) = guard("listen", srv.spawn_listener()).await.unwrap() else {
        panic!("tcp expected")
    };
    let session = guard(
        "dial",
        Peer::new(PeerConfig::default())
            .unwrap()
            .dial(&addr.to_string()),
    )
    .await
    .unwrap();
    guard("pull", session.pull::<_, String>("/a", "x"))
        .await
        .unwrap();

    // Counting goes on, with no endpoint, no thread of ours, and no
    // listening socket but the peer's.
    assert!(m.encode().contains("teleport_calls_total{"));
    assert!(m.endpoints().is_empty());
    #[cfg(target_os = "linux")]
    assert_eq!(listening_sockets(), 1, "the server peer's listener alone");
    #[cfg(target_os = "linux")]
    assert!(
        !thread_names()
            .iter()
            .any(|n| n.starts_with("teleport-metric")),
        "{:?}",
        thread_names()
    );

    // Opting in starts one; it is listed while it runs.
    let server = m.serve("127.0.0.1:0").unwrap();
    assert_eq!(m.endpoints(), [server.local_addr()]);
    #[cfg(target_os = "linux")]
    assert_eq!(listening_sockets(), 2);
    // (A new thread names itself once it runs: wait for that, bounded.)
    #[cfg(target_os = "linux")]
    {
        let start = std::time::Instant::now();
        while !thread_names().iter().any(|n| n == "teleport-metric") {
            assert!(start.elapsed() < common::GUARD, "{:?}", thread_names());
            std::thread::yield_now();
        }
    }
    drop(server);
    assert!(m.endpoints().is_empty());
    #[cfg(target_os = "linux")]
    assert_eq!(listening_sockets(), 1);
}
