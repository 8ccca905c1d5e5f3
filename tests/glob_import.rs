//! A user's first lines: `use teleport::*;` and `use teleport::prelude::*;`
//! next to `#[tokio::main]` (here `#[tokio::test]`), with `tokio::` and
//! `Session` meaning what the user means. If a glob brought in a second
//! `tokio` or `Session`, this file would not compile.

use std::time::Duration;

#[allow(unused_imports)]
use teleport::prelude::*;
#[allow(unused_imports)]
use teleport::*;

#[tokio::test]
async fn glob_imports_leave_tokio_and_session_unambiguous() {
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok::<_, Rerror>(s)
    });
    let server = Peer::from_builder(b).expect("server");
    let addr = server.spawn_listener().await.expect("listen");
    let client = Peer::new(PeerConfig::default()).expect("client");
    let s: Session = client.dial(&addr.to_string()).await.expect("dial");
    let r: Reply<String> = s.pull("/echo", "hi").await.expect("pull");
    assert_eq!(r.value, "hi");
    client.shutdown(Duration::from_secs(1)).await;
    let report: ShutdownReport = server.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.cancelled, 0);
}
