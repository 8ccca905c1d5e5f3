//! The mio loop's unixpacket and TLS against teleport-tokio's, both ways:
//! the seqpacket message rules and the TLS records of one adapter read by
//! the other.

#[cfg(feature = "tls")]
#[path = "../../testkit/src/certs.rs"]
mod certs;
mod common;

use std::time::Duration;

use teleport_core::Rerror;
use teleport_mio::prelude::*;

use common::{guard, test_logs, SockPath};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A body whose every byte depends on its place.
fn pattern(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i * 7 + i / 997) % 26) as u8))
        .collect()
}

fn config(network: teleport_mio::Network, listen: &str) -> teleport_mio::PeerConfig {
    teleport_mio::PeerConfig {
        network,
        listen_address: listen.into(),
        ..teleport_mio::PeerConfig::default()
    }
}

/// `/echo` on a mio server (TLS with `tls`); a tokio client dials it (TLS
/// with `dial`) and pulls a 1 MiB body and 200 small ones.
fn mio_server_tokio_client(cfg: teleport_mio::PeerConfig, tls: Tls) {
    test_logs();
    let mut b = teleport_mio::PeerBuilder::new(cfg.clone());
    b.pull_sync("/echo", |_ctx: teleport_mio::PullCtx, s: String| {
        Ok::<_, Rerror>(s)
    });
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut c = teleport_tokio::PeerBuilder::new(cfg);
    #[cfg(feature = "tls")]
    if let Some((a, d)) = tls {
        b.listen_tls(a);
        c.dial_tls(d);
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls;
    let server = teleport_mio::Peer::from_builder(b).unwrap();
    let addr = server.spawn_listener().unwrap().dial_string();
    let rt = runtime();
    let client = rt.block_on(async { teleport_tokio::Peer::from_builder(c).unwrap() });
    rt.block_on(async {
        let checks = async {
            let s = client.dial(&addr).await.expect("dial");
            let big = pattern(1 << 20);
            let r = s.pull::<_, String>("/echo", &big).await.expect("1 MiB");
            assert!(r.value == big, "1 MiB body changed");
            for i in 0..200 {
                let m = format!("{i} {}", pattern(i));
                assert_eq!(
                    s.pull::<_, String>("/echo", &m).await.expect("small").value,
                    m
                );
            }
        };
        tokio::time::timeout(common::GUARD, checks)
            .await
            .expect("checks hang");
        client.shutdown(Duration::from_secs(1)).await;
    });
}

/// `/echo` on a tokio server (TLS with `tls`); a mio client dials it.
fn tokio_server_mio_client(cfg: teleport_mio::PeerConfig, tls: Tls) {
    test_logs();
    let rt = runtime();
    let mut b = teleport_tokio::PeerBuilder::new(cfg.clone());
    b.pull(
        "/echo",
        |_ctx: teleport_tokio::PullCtx, s: String| async move { Ok::<_, Rerror>(s) },
    );
    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    let mut c = teleport_mio::PeerBuilder::new(cfg);
    #[cfg(feature = "tls")]
    if let Some((a, d)) = tls {
        b.listen_tls(a);
        c.dial_tls(d);
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls;
    let server = rt.block_on(async { teleport_tokio::Peer::from_builder(b).unwrap() });
    let addr = rt.block_on(server.spawn_listener()).unwrap().dial_string();
    let client = teleport_mio::Peer::from_builder(c).unwrap();
    guard("checks", move || {
        let s = client.dial(&addr).expect("dial");
        let big = pattern(1 << 20);
        let r = s.pull::<_, String>("/echo", &big).expect("1 MiB");
        assert!(r.value == big, "1 MiB body changed");
        for i in 0..200 {
            let m = format!("{i} {}", pattern(i));
            assert_eq!(s.pull::<_, String>("/echo", &m).expect("small").value, m);
        }
    });
    rt.block_on(server.shutdown(Duration::from_secs(1)));
}

/// A TLS acceptor and connector for a pair, or none.
#[cfg(feature = "tls")]
type Tls = Option<(
    teleport_peer::tls::TlsAcceptor,
    teleport_peer::tls::TlsConnector,
)>;
#[cfg(not(feature = "tls"))]
type Tls = Option<std::convert::Infallible>;

#[cfg(feature = "tls")]
fn tls(server_name: &str) -> Tls {
    let ca = certs::Ca::new("interop CA");
    Some((
        certs::acceptor(&ca.leaf(certs::NAMES)),
        certs::connector(&ca).with_server_name(server_name),
    ))
}

#[cfg(unix)]
#[test]
fn unixpacket_mio_server_tokio_client() {
    let path = SockPath::new("iupk1");
    mio_server_tokio_client(
        config(teleport_mio::Network::Unixpacket, path.as_str()),
        None,
    );
}

#[cfg(unix)]
#[test]
fn unixpacket_tokio_server_mio_client() {
    let path = SockPath::new("iupk2");
    tokio_server_mio_client(
        config(teleport_mio::Network::Unixpacket, path.as_str()),
        None,
    );
}

#[cfg(feature = "tls")]
#[test]
fn tls_mio_server_tokio_client() {
    mio_server_tokio_client(
        config(teleport_mio::Network::Tcp, "127.0.0.1:0"),
        tls("localhost"),
    );
}

#[cfg(feature = "tls")]
#[test]
fn tls_tokio_server_mio_client() {
    tokio_server_mio_client(
        config(teleport_mio::Network::Tcp, "127.0.0.1:0"),
        tls("localhost"),
    );
}

#[cfg(all(unix, feature = "tls"))]
#[test]
fn tls_over_unixpacket_mio_server_tokio_client() {
    let path = SockPath::new("iupk3");
    mio_server_tokio_client(
        config(teleport_mio::Network::Unixpacket, path.as_str()),
        tls("localhost"),
    );
}

#[cfg(all(unix, feature = "tls"))]
#[test]
fn tls_over_unixpacket_tokio_server_mio_client() {
    let path = SockPath::new("iupk4");
    tokio_server_mio_client(
        config(teleport_mio::Network::Unixpacket, path.as_str()),
        tls("localhost"),
    );
}
