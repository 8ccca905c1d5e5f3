//! TLS on every pair, with certificates made in the test: sessions over
//! TLS on TCP, unix and unixpacket (and one re-dialed under one),
//! mutual TLS, each way a handshake fails named by its typed error on the
//! dialing side, plaintext and TLS ends meeting, and a handshake that
//! never completes, after all of which the server still serves.

use std::io::Write;
use std::time::Duration;

use teleport_core::{CloseReason, Plugin, PluginCtx, Rerror};
use teleport_peer::tls::{TlsConnector, TlsError};
use teleport_peer::{DialError, DialOptions, ListenOptions, PeerBuilder, PeerConfig, Session};
use teleport_testkit::certs::{
    acceptor, client_connector, connector, mtls_acceptor, Ca, Leaf, NAMES,
};
use tokio::sync::mpsc;

use crate::protos::{basics, routes, whoami};
use crate::runtimes::{beside, join, raw_connect, read_until_dropped, Client, Rt, Server};
use crate::scenarios::{guard, server_config, Net};

/// The handshake timeout of the listener a silent client stalls: long
/// enough that a good client's handshake on a loaded machine fits in it
/// (it waits alongside the rest, so it costs little).
const HANDSHAKE: Duration = Duration::from_millis(1500);

pub fn run(server_rt: Rt, client_rt: Rt, pair: &str) {
    let ca = Ca::new("conformance CA");
    let leaf = ca.leaf(NAMES);
    let name = &format!("{pair} over Tcp (tls)");
    let (tx, _notes) = mpsc::unbounded_channel();
    let mut b = PeerBuilder::new(server_config(Net::Tcp, &None, "127.0.0.1:0"));
    routes(&mut b, tx);
    b.listen_tls(acceptor(&leaf));
    let server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: TLS server: {e}"));
    let good = server.addr().dial_string();

    // A client that starts a handshake and never finishes it: the server
    // lets go of it at the handshake timeout, while the rest goes on.
    let stalled = listener(
        name,
        &server,
        ListenOptions::default().tls(acceptor(&leaf).with_handshake_timeout(HANDSHAKE)),
    );
    let addr = stalled.clone();
    let silent = beside(format!("{name}: a stalled handshake"), move || {
        let mut conn = raw_connect(Net::Tcp, &addr)?;
        // A record header promising a client hello, and a byte of it.
        conn.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01])?;
        read_until_dropped(&mut *conn)
    });

    for net in Net::ALL {
        let name = format!("{pair} over {net:?} (tls)");
        sessions_over_tls(server_rt, client_rt, net, &name, &ca, &leaf);
    }
    refusals(client_rt, name, &server, &good, &ca);
    mutual(client_rt, name, &server, &leaf, &ca);
    from_files(server_rt, client_rt, pair, &ca, &leaf);

    join(silent).unwrap_or_else(|e| {
        panic!("{name}: a handshake that never completed was not dropped: {e}")
    });
    let client = client_rt.client(PeerBuilder::new(PeerConfig::default()));
    let s = client
        .dial_with(&stalled, DialOptions::default().tls(connector(&ca)))
        .unwrap_or_else(|e| panic!("{name}: a good dial after the stalled one: {e}"));
    pull(name, &client, &s, "after the stalled handshake");
    client.shutdown();
    let report = server.shutdown(Duration::from_secs(5));
    assert_eq!(report.cancelled, 0, "{name}");
}

/// Another listener of `server`'s on loopback TCP, with `opts`' TLS.
fn listener(name: &str, server: &Server, opts: ListenOptions) -> String {
    server
        .spawn_listener_with(opts.address("127.0.0.1:0"))
        .unwrap_or_else(|e| panic!("{name}: another listener: {e}"))
        .dial_string()
}

/// An echo over `s` that must work.
fn pull(name: &str, client: &Client, s: &Session, what: &str) {
    let r = client.block_on(guard(name, s.pull::<_, String>("/echo", what)));
    assert_eq!(
        r.unwrap_or_else(|e| panic!("{name}: {what}: {e}")).value,
        what,
        "{name}"
    );
}

/// The TLS error a dial failed with.
fn tls_error(name: &str, what: &str, r: Result<Session, DialError>) -> TlsError {
    match r {
        Err(DialError::Tls { source, .. }) => source,
        Err(e) => panic!("{name}: {what}: not a TLS error: {e:?}"),
        Ok(_) => panic!("{name}: {what}: the dial succeeded"),
    }
}

/// Notes the session-start and session-end hooks of a client's sessions,
/// in order.
struct Hooks(mpsc::UnboundedSender<&'static str>);

impl Plugin for Hooks {
    fn name(&self) -> &'static str {
        "hooks"
    }

    fn after_dial(&self, _ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        let _ = self.0.send("after_dial");
        Ok(())
    }

    fn on_disconnect(&self, _ctx: &mut PluginCtx<'_>, _reason: &CloseReason) {
        let _ = self.0.send("on_disconnect");
    }
}

/// A session over TLS on `net` (a pull, 1 MiB each way, a push, a pull
/// back from a handler); then the server closes it, and the same session
/// re-dials, with a handshake of its own, and pulls again.
fn sessions_over_tls(server_rt: Rt, client_rt: Rt, net: Net, name: &str, ca: &Ca, leaf: &Leaf) {
    let sock = net.sock(name);
    let (tx, mut notes) = mpsc::unbounded_channel();
    let mut b = PeerBuilder::new(server_config(net, &sock, "127.0.0.1:0"));
    routes(&mut b, tx);
    b.listen_tls(acceptor(leaf));
    let server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: server: {e}"));
    let addr = server.addr().dial_string();
    let mut cb = PeerBuilder::new(PeerConfig {
        network: net.network(),
        redial_times: 20,
        redial_interval: Duration::from_millis(20),
        ..PeerConfig::default()
    });
    whoami(&mut cb);
    let (hooks_tx, mut hooks) = mpsc::unbounded_channel();
    cb.plugin(Hooks(hooks_tx));
    let mut tls = connector(ca);
    if net.is_unix() {
        // No host name in a path: the name the certificate must carry.
        tls = tls.with_server_name("localhost");
    }
    cb.dial_tls(tls);
    let client = client_rt.client(cb);
    let s = client
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial {addr}: {e}"));
    client.block_on(basics(name, &s, &mut notes));

    // The server ends the session (its close returns once the connection
    // is closed); once the client has seen the end, its next pull goes
    // over a connection re-dialed with a TLS handshake of its own.
    let served = server.sessions();
    assert_eq!(served.len(), 1, "{name}: the server's sessions");
    let old_served = served[0].id();
    server.block_on(guard(name, served[0].close()));
    client.block_on(async {
        for want in ["after_dial", "on_disconnect"] {
            assert_eq!(guard(name, hooks.recv()).await, Some(want), "{name}");
        }
    });
    let old_id = s.id();
    pull(name, &client, &s, "after the server closed it");
    assert_eq!(s.id(), old_id, "{name}: the session keeps its id");
    assert_eq!(hooks.try_recv(), Ok("after_dial"), "{name}: a re-dial");
    let served = server.sessions();
    assert_eq!(served.len(), 1, "{name}: the server's sessions");
    assert_ne!(served[0].id(), old_served, "{name}: a session of its own");
    client.shutdown();
    let report = server.shutdown(Duration::from_secs(5));
    assert_eq!(report.cancelled, 0, "{name}");
}

/// Each way a handshake fails, named on the dialing side; plaintext and
/// TLS ends meeting; the server serves on.
fn refusals(client_rt: Rt, name: &str, server: &Server, good: &str, ca: &Ca) {
    // A plaintext peer: TLS of each dial's own.
    let client = client_rt.client(PeerBuilder::new(PeerConfig::default()));
    let with = |tls: TlsConnector| DialOptions::default().tls(tls);

    let other = Ca::new("another CA");
    let e = tls_error(
        name,
        "a server signed by another CA",
        client.dial_with(good, with(connector(&other))),
    );
    assert!(matches!(e, TlsError::UnknownIssuer), "{name}: {e:?}");

    let expired = listener(
        name,
        server,
        ListenOptions::default().tls(acceptor(&ca.expired_leaf(NAMES))),
    );
    let e = tls_error(
        name,
        "an expired certificate",
        client.dial_with(&expired, with(connector(ca))),
    );
    assert!(matches!(e, TlsError::Expired), "{name}: {e:?}");

    let elsewhere = listener(
        name,
        server,
        ListenOptions::default().tls(acceptor(&ca.leaf(&["other.test"]))),
    );
    match tls_error(
        name,
        "a certificate for another name",
        client.dial_with(&elsewhere, with(connector(ca))),
    ) {
        TlsError::WrongName { name: n } => assert_eq!(n, "127.0.0.1", "{name}"),
        e => panic!("{name}: a certificate for another name: {e:?}"),
    }

    // A TLS client to a plaintext listener: the server takes the client
    // hello for a frame far over its limit and hangs up.
    let plain = listener(name, server, ListenOptions::default().no_tls());
    let e = tls_error(
        name,
        "a TLS dial to a plaintext listener",
        client.dial_with(&plain, with(connector(ca))),
    );
    assert!(matches!(e, TlsError::Closed), "{name}: {e:?}");
    // A TLS peer's plaintext dial of its own to it works.
    let mut tb = PeerBuilder::new(PeerConfig::default());
    tb.dial_tls(connector(ca));
    let tls_peer = client_rt.client(tb);
    let s = tls_peer
        .dial_with(&plain, DialOptions::default().no_tls())
        .unwrap_or_else(|e| panic!("{name}: a plaintext dial of a TLS peer: {e}"));
    pull(name, &tls_peer, &s, "plaintext on purpose");
    tls_peer.shutdown();

    // A plaintext client to the TLS listener: the connection is made, the
    // server refuses what is not TLS, the pull fails.
    let s = client
        .dial(good)
        .unwrap_or_else(|e| panic!("{name}: a plaintext dial to a TLS listener: {e}"));
    let e = client
        .block_on(guard(name, s.pull::<_, String>("/echo", "plaintext")))
        .expect_err("a TLS server answered plaintext");
    assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{name}: {e}");

    // And a good client is served.
    let s = client
        .dial_with(good, with(connector(ca)))
        .unwrap_or_else(|e| panic!("{name}: a good dial after the refusals: {e}"));
    pull(name, &client, &s, "after the refusals");
    client.shutdown();
}

/// Mutual TLS: the right client certificate gets in, a missing one or one
/// of another CA does not (at the dial or the first pull: with TLS 1.3
/// the client's handshake ends before the server has checked it), and the
/// server serves on.
fn mutual(client_rt: Rt, name: &str, server: &Server, leaf: &Leaf, ca: &Ca) {
    let name = &format!("{name} (mutual)");
    let (clients, rogue) = (Ca::new("client CA"), Ca::new("rogue CA"));
    let addr = listener(
        name,
        server,
        ListenOptions::default().tls(mtls_acceptor(leaf, &clients)),
    );
    let client = client_rt.client(PeerBuilder::new(PeerConfig::default()));
    let me = clients.leaf(&["client.test"]);
    let dial = |tls: TlsConnector| client.dial_with(&addr, DialOptions::default().tls(tls));
    let s = dial(client_connector(ca, &me))
        .unwrap_or_else(|e| panic!("{name}: dial with the right certificate: {e}"));
    pull(name, &client, &s, "mutual");

    // Refused with the server's alert, which the error names: at the dial,
    // or at the first pull (TLS 1.3 ends the client's handshake first).
    let refused = |what: &str, tls: TlsConnector, alert: &str| match dial(tls) {
        Err(DialError::Tls { source, .. }) => {
            assert!(
                source.to_string().contains(alert),
                "{name}: {what}: {source:?}, not {alert}"
            )
        }
        Err(e) => panic!("{name}: {what}: not a TLS error: {e:?}"),
        Ok(s) => {
            let r = client.block_on(guard(name, s.pull::<_, String>("/echo", "let me in")));
            let e = r.expect_err(what);
            assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{name}: {what}: {e}");
            assert!(
                e.to_string().contains(alert),
                "{name}: {what}: {e}, not {alert}"
            );
        }
    };
    refused(
        "no client certificate",
        connector(ca),
        "CertificateRequired",
    );
    refused(
        "a client certificate of another CA",
        client_connector(ca, &rogue.leaf(&["client.test"])),
        "UnknownCA",
    );
    let s = dial(client_connector(ca, &me))
        .unwrap_or_else(|e| panic!("{name}: dial again with the right certificate: {e}"));
    pull(name, &client, &s, "mutual again");
    client.shutdown();
}

/// TLS from PEM files named in `PeerConfig` (what a deployment writes in
/// its TOML): a server with its chain, key and a client CA (mutual TLS), a
/// client with its CA bundle, chain, key and a server name; and the same
/// client with a server name the certificate does not carry, or without
/// its certificate, refused.
fn from_files(server_rt: Rt, client_rt: Rt, pair: &str, ca: &Ca, leaf: &Leaf) {
    let name = &format!("{pair} (tls from files)");
    let dir = std::env::temp_dir().join(format!(
        "teleport-conf-tls-{}-{}",
        std::process::id(),
        pair.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{name}: {dir:?}: {e}"));
    let clients = Ca::new("file client CA");
    let me = clients.leaf(&["client.test"]);
    let file = |f: &str, pem: &str| {
        let path = dir.join(f);
        std::fs::write(&path, pem).unwrap_or_else(|e| panic!("{name}: {path:?}: {e}"));
        // TOML strings: backslashes would need escaping; temp paths have none.
        path.display().to_string()
    };
    let (cert, key) = (
        file("server.pem", &leaf.cert),
        file("server.key", &leaf.key),
    );
    let (client_ca, ca_pem) = (
        file("clients-ca.pem", &clients.pem),
        file("ca.pem", &ca.pem),
    );
    let (my_cert, my_key) = (file("client.pem", &me.cert), file("client.key", &me.key));

    let server_toml = format!(
        "listen_address = \"127.0.0.1:0\"\n[listen_tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{client_ca}\"\n"
    );
    let cfg: PeerConfig =
        toml::from_str(&server_toml).unwrap_or_else(|e| panic!("{name}: {server_toml}: {e}"));
    let mut b = PeerBuilder::new(cfg);
    let (tx, _notes) = mpsc::unbounded_channel();
    routes(&mut b, tx);
    let server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: server from files: {e}"));
    let addr = server.addr().dial_string();

    let client_with = |extra: &str| {
        let toml = format!("[dial_tls]\nca = \"{ca_pem}\"\n{extra}");
        let cfg: PeerConfig =
            toml::from_str(&toml).unwrap_or_else(|e| panic!("{name}: {toml}: {e}"));
        client_rt.client(PeerBuilder::new(cfg))
    };
    let mine = format!("cert = \"{my_cert}\"\nkey = \"{my_key}\"\n");
    // The config's TLS is every dial's unless a dial says otherwise.
    let client = client_with(&format!("{mine}server_name = \"localhost\"\n"));
    let s = client
        .dial_with(&addr, DialOptions::default())
        .unwrap_or_else(|e| panic!("{name}: dial with the files' TLS: {e}"));
    pull(name, &client, &s, "from files");
    client.shutdown();

    let client = client_with(&format!("{mine}server_name = \"wrong.test\"\n"));
    match tls_error(
        name,
        "a server name the certificate lacks",
        client.dial_with(&addr, DialOptions::default()),
    ) {
        TlsError::WrongName { name: n } => assert_eq!(n, "wrong.test", "{name}"),
        e => panic!("{name}: a server name the certificate lacks: {e:?}"),
    }
    client.shutdown();

    // Without this side's certificate: refused at the dial or at the first
    // pull (TLS 1.3 ends the client's handshake first).
    let client = client_with("");
    match client.dial_with(&addr, DialOptions::default()) {
        Err(DialError::Tls { source, .. }) => assert!(
            source.to_string().contains("CertificateRequired"),
            "{name}: {source:?}"
        ),
        Err(e) => panic!("{name}: no client certificate: not a TLS error: {e:?}"),
        Ok(s) => {
            let r = client.block_on(guard(name, s.pull::<_, String>("/echo", "let me in")));
            let e = r.expect_err("a client without a certificate was served");
            assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{name}: {e}");
            assert!(e.to_string().contains("CertificateRequired"), "{name}: {e}");
        }
    }
    client.shutdown();

    // A file that is not there is an error that names it.
    let missing = dir.join("missing.pem").display().to_string();
    let toml = format!("[dial_tls]\nca = \"{missing}\"\n");
    let cfg: PeerConfig = toml::from_str(&toml).unwrap_or_else(|e| panic!("{name}: {e}"));
    let e = PeerBuilder::new(cfg)
        .build()
        .expect_err("a missing CA file was accepted");
    assert!(e.to_string().contains("missing.pem"), "{name}: {e}");

    let report = server.shutdown(Duration::from_secs(5));
    assert_eq!(report.cancelled, 0, "{name}");
    let _ = std::fs::remove_dir_all(&dir);
}
