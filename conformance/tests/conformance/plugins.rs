//! The core's built-in plugins over real sockets: auth in front of every
//! route, stats counting both sides, heartbeat keeping a quiet session
//! alive and closing a silent one.

use std::time::Duration;

use teleport_core::plugin::{Auth, Heartbeat, Stats};
use teleport_core::{CloseReason, Plugin, PluginCtx, Rerror};
use teleport_peer::{PeerBuilder, PullCtx, Session};

use crate::runtimes::{Client, Rt, Server, SockPath};
use crate::scenarios::{client_config, guard, server_config, Net};

fn echo_server(b: &mut PeerBuilder) {
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
}

pub fn verify(cred: &[u8]) -> Result<(), Rerror> {
    if cred == b"open sesame" {
        Ok(())
    } else {
        Err(Auth::unauthorized("wrong password"))
    }
}

/// Pings every [`PING`]; a peer not heard from for [`SILENCE`] is closed.
/// The silence is long against the interval: a loaded machine can stall
/// the pinging side for hundreds of milliseconds (seen: over 600 ms with
/// both cores busy several times over), and the pair's other scenarios
/// run meanwhile, so the wait costs little.
const PING: Duration = Duration::from_millis(50);
const SILENCE: Duration = Duration::from_millis(1500);

/// The heartbeat check, started before a pair's other scenarios and
/// finished after them, so its silence costs no time of its own.
pub struct HeartbeatCheck {
    name: String,
    server: Server,
    live_client: Client,
    live: Session,
    silent: std::thread::JoinHandle<std::io::Result<usize>>,
    ended: LastWords,
    _sock: Option<SockPath>,
}

/// Keeps why a session ended, for a failure to say.
#[derive(Clone, Default)]
struct LastWords(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl Plugin for LastWords {
    fn name(&self) -> &'static str {
        "last-words"
    }

    fn on_disconnect(&self, _ctx: &mut PluginCtx<'_>, reason: &CloseReason) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{reason:?}"));
    }
}

impl HeartbeatCheck {
    /// A server with the heartbeat plugin, a client with it that stays
    /// quiet, and a raw client that never sends anything.
    pub fn start(server_rt: Rt, client_rt: Rt, net: Net, name: &str) -> HeartbeatCheck {
        let name = format!("{name} (heartbeat)");
        let hb = Heartbeat::new(PING, SILENCE);
        let sock = net.sock(&name);
        let mut b = PeerBuilder::new(server_config(net, &sock, "127.0.0.1:0"));
        echo_server(&mut b);
        b.plugin(hb);
        let server = server_rt
            .serve(b)
            .unwrap_or_else(|e| panic!("{name}: heartbeat server: {e}"));
        let addr = server.addr().dial_string();
        // A client with the plugin pings: its session outlives the silence.
        let mut cb = PeerBuilder::new(client_config(net));
        let ended = LastWords::default();
        cb.plugin(hb).plugin(ended.clone());
        let live_client = client_rt.client(cb);
        let live = live_client
            .dial(&addr)
            .unwrap_or_else(|e| panic!("{name}: dial the heartbeat server: {e}"));
        // The raw client: the server's pings arrive, then the connection
        // ends.
        let silent = std::thread::spawn(move || -> std::io::Result<usize> {
            let mut conn = crate::runtimes::raw_connect(net, &addr)?;
            crate::runtimes::read_until_dropped(&mut *conn)
        });
        HeartbeatCheck {
            name,
            server,
            live_client,
            live,
            silent,
            ended,
            _sock: sock,
        }
    }

    /// The silent client was cut off, after pings; the quiet one lives on.
    pub fn finish(self) {
        let name = &self.name;
        let heard = self
            .silent
            .join()
            .expect("silent client thread")
            .unwrap_or_else(|e| panic!("{name}: the silent client was not cut off: {e}"));
        assert!(
            heard > 0,
            "{name}: the server sent the silent client no ping"
        );
        // The pinging session lived on the whole time.
        let r = self
            .live_client
            .block_on(guard(name, self.live.pull::<_, String>("/echo", "alive")));
        assert_eq!(
            r.unwrap_or_else(|e| panic!(
                "{name}: the pinging session: {e} (it ended: {:?})",
                self.ended.0.lock().unwrap_or_else(|e| e.into_inner())
            ))
            .value,
            "alive"
        );
        // The silent session goes away; the pinging one stays.
        let server = &self.server;
        self.live_client.block_on(guard(name, async {
            while server.sessions_len() > 1 {
                async_io::Timer::after(Duration::from_millis(1)).await;
            }
        }));
        assert_eq!(server.sessions_len(), 1, "{name}: the live session");
        self.live_client.shutdown();
    }
}

/// Auth in front of every route, with stats on both sides: the right
/// credentials, the wrong ones, none.
pub fn auth_and_stats(server_rt: Rt, client_rt: Rt, net: Net, name: &str) {
    let name = &format!("{name} (auth)");
    let sock = net.sock(name);
    let server_stats = Stats::new();
    let mut b = PeerBuilder::new(server_config(net, &sock, "127.0.0.1:0"));
    echo_server(&mut b);
    // Plugins run in order, and auth consumes its own pull: stats goes
    // first to count it too.
    b.plugin(server_stats.clone())
        .plugin(Auth::acceptor(verify));
    let server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: auth server: {e}"));
    let addr = server.addr().dial_string();

    // The right credentials: the dialer's first pull, then routes work.
    let client_stats = Stats::new();
    let mut cb = PeerBuilder::new(client_config(net));
    cb.plugin(Auth::dialer("open sesame"))
        .plugin(client_stats.clone());
    let good = client_rt.client(cb);
    let s = good
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial: {e}"));
    let r = good.block_on(guard(name, s.pull::<_, String>("/echo", "in")));
    assert_eq!(
        r.unwrap_or_else(|e| panic!("{name}: authenticated pull: {e}"))
            .value,
        "in"
    );
    // Stats saw both pulls (auth and echo) on both sides.
    let c = client_stats.snapshot();
    assert_eq!(
        (c.pulls_sent, c.replies_received, c.errors),
        (2, 2, 0),
        "{name}: {c:?}"
    );
    assert!(c.bytes_out > 0 && c.bytes_in > 0, "{name}: {c:?}");
    assert!(c.latency_quantile(1.0).is_some(), "{name}: {c:?}");
    let sv = server_stats.snapshot();
    assert_eq!(
        (sv.pulls_received, sv.replies_sent, sv.errors),
        (2, 2, 0),
        "{name}: {sv:?}"
    );
    assert!(sv.bytes_out > 0 && sv.bytes_in > 0, "{name}: {sv:?}");
    good.shutdown();

    // The wrong credentials: the session is closed with the 401.
    let mut cb = PeerBuilder::new(client_config(net));
    cb.plugin(Auth::dialer("let me in"));
    let bad = client_rt.client(cb);
    let s = bad
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial: {e}"));
    let e = bad
        .block_on(guard(name, s.pull::<_, String>("/echo", "no")))
        .expect_err("refused");
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{name}: {e}");
    assert!(
        e.detail.contains("401") && e.detail.contains("wrong password"),
        "{name}: the pull's error says the session closed for the 401: {e}"
    );
    bad.shutdown();

    // No credentials at all: the first pull gets the 401 itself.
    let plain = client_rt.client(PeerBuilder::new(client_config(net)));
    let s = plain
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial: {e}"));
    let e = plain
        .block_on(guard(name, s.pull::<_, String>("/echo", "no")))
        .expect_err("refused");
    assert_eq!(
        (e.code, e.message.as_str()),
        (401, "Unauthorized"),
        "{name}: {e}"
    );
    plain.shutdown();
    let report = server.shutdown(Duration::from_secs(5));
    assert_eq!(report.cancelled, 0, "{name}");
}
