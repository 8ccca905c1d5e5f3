//! Where a large filtered frame is unfiltered, on every server runtime:
//! on one of the peer's decoding threads, never on a thread that drives
//! sockets or runs handlers, while a small one is unfiltered where it was
//! read; both pulls are answered. (Defect 5c of issue 11: an inflation
//! stalls every session its thread drives.)

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use teleport_core::{CodecId, Rerror, XferError, XferFilter, XferId};
use teleport_peer::{PeerBuilder, PeerConfig, PullCtx};

use crate::runtimes::Rt;
use crate::scenarios::guard;

const WHERE: XferId = XferId(b'w');

/// Notes the thread each frame is unfiltered on, and its size.
#[derive(Clone, Default)]
struct WhereDecoded(Arc<Mutex<Vec<(String, usize)>>>);

impl XferFilter for WhereDecoded {
    fn id(&self) -> XferId {
        WHERE
    }

    fn name(&self) -> &'static str {
        "where"
    }

    fn encode(&self, src: &[u8], dst: &mut BytesMut) -> Result<(), XferError> {
        dst.extend_from_slice(src);
        Ok(())
    }

    fn decode(&self, src: &[u8], limit: usize, dst: &mut BytesMut) -> Result<(), XferError> {
        if src.len() > limit {
            // The session tries in place up to a budget, then defers.
            return Err(XferError::OutputOverLimit { id: WHERE, limit });
        }
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.0.lock().unwrap().push((name, src.len()));
        dst.extend_from_slice(src);
        Ok(())
    }
}

/// The server's builder: a `/len` route and the noting filter.
fn server(seen: &WhereDecoded) -> PeerBuilder {
    let mut b = PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        ..PeerConfig::default()
    });
    b.xfer_filter(seen.clone());
    b.pull("/len", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s.len())
    });
    b
}

pub fn large_frames_off_the_socket_threads(server_rt: Rt) {
    let name = &format!("{server_rt:?} server (decoding)");
    let seen = WhereDecoded::default();
    let server = server_rt
        .serve(server(&seen))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    pull_and_check(name, &server.addr().dial_string(), &seen);
    server.shutdown(std::time::Duration::from_secs(5));
}

/// The same with mio's handlers on its poll loop (no workers), where an
/// inflation would stall every session of the peer.
pub fn large_frames_off_the_mio_loop() {
    let name = "Mio server, handlers on the loop (decoding)";
    let seen = WhereDecoded::default();
    let server = teleport_mio::Peer::with_workers(server(&seen), 0)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let addr = server
        .spawn_listener()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    pull_and_check(name, &addr.dial_string(), &seen);
    server.shutdown(std::time::Duration::from_secs(5));
}

/// A large and a small filtered pull to `addr`, answered; then where the
/// server unfiltered each.
fn pull_and_check(name: &str, addr: &str, seen: &WhereDecoded) {
    let mut b = PeerBuilder::new(PeerConfig::default());
    b.xfer_filter(WhereDecoded::default());
    let client = Rt::Tokio.client(b);
    let s = client
        .dial(addr)
        .unwrap_or_else(|e| panic!("{name}: dial: {e}"));
    let big = "x".repeat(1 << 20);
    for body in [big.as_str(), "small"] {
        let r = client.block_on(guard(
            name,
            s.call("/len")
                .codec(CodecId::JSON)
                .xfer(WHERE)
                .pull::<_, usize>(body),
        ));
        let r = r.unwrap_or_else(|e| panic!("{name}: pull of {} bytes: {e}", body.len()));
        assert_eq!(r.value, body.len(), "{name}");
    }
    client.shutdown();
    let seen = seen.0.lock().unwrap().clone();
    let big_on: Vec<&str> = seen
        .iter()
        .filter(|(_, n)| *n >= 1 << 20)
        .map(|(t, _)| t.as_str())
        .collect();
    assert!(
        big_on.len() == 1 && big_on[0].starts_with("teleport-decode-"),
        "{name}: the large frame was unfiltered on {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(t, n)| *n < 100 && !t.starts_with("teleport-decode-")),
        "{name}: the small frame took a hop: {seen:?}"
    );
}
