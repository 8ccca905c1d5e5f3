//! Connections the user already has, served by a peer (`serve_conn`):
//! each runtime takes a socket the test made, converted to its own
//! stream type, in the accepting role and in the dialing one, and talks
//! over it to a peer of the other runtime.

use std::sync::{Arc, Mutex};

use teleport_core::{Plugin, PluginCtx, Rerror, Role};
use teleport_peer::{PeerAddr, PeerBuilder, PeerConfig, PullCtx, ServeOptions, Session};

use crate::protos::TaggedProto;
use crate::runtimes::{Client, Rt};
use crate::scenarios::guard;

/// Notes which of the session-start hooks ran: the role a session was
/// served in.
#[derive(Clone, Default)]
struct Roles(Arc<Mutex<Vec<&'static str>>>);

impl Roles {
    fn seen(&self) -> Vec<&'static str> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn note(&self, hook: &'static str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(hook);
    }
}

impl Plugin for Roles {
    fn name(&self) -> &'static str {
        "roles"
    }

    fn after_dial(&self, _ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        self.note("after_dial");
        Ok(())
    }

    fn after_accept(&self, _ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        self.note("after_accept");
        Ok(())
    }
}

/// A peer that never listens, on `rt`: `/echo`, `/ask` (pulls the caller's
/// `/whoami` back) and `/whoami` (says who `me` is).
fn peer(rt: Rt, me: &'static str, roles: &Roles) -> Client {
    let mut b = PeerBuilder::new(PeerConfig::default());
    routes(&mut b, me, roles);
    rt.client(b)
}

fn routes(b: &mut PeerBuilder, me: &'static str, roles: &Roles) {
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    b.pull("/ask", |ctx: PullCtx, q: String| async move {
        let a = ctx.session().pull::<_, String>("/whoami", &q).await?;
        Ok::<_, Rerror>(format!("heard: {}", a.value))
    });
    b.pull("/whoami", move |_ctx: PullCtx, q: String| async move {
        Ok::<_, Rerror>(format!("{me} answers {q}"))
    });
    b.plugin(roles.clone());
}

/// Each side pulls the other, directly and through a handler that pulls
/// back.
fn both_ways(name: &str, (a, a_is): (&Session, &str), (b, b_is): (&Session, &str), on: &Client) {
    on.block_on(async {
        for (s, other, me) in [(a, b_is, a_is), (b, a_is, b_is)] {
            let r = guard(name, s.pull::<_, String>("/echo", me)).await;
            assert_eq!(r.unwrap_or_else(|e| panic!("{name}: {e}")).value, me);
            let r = guard(name, s.pull::<_, String>("/ask", "who?")).await;
            assert_eq!(
                r.unwrap_or_else(|e| panic!("{name}: {me} asks {other}: {e}"))
                    .value,
                format!("heard: {me} answers who?"),
                "{name}"
            );
        }
    });
}

/// `s` ends when the other side closes, and is not re-dialed: a pull on
/// it then fails with 102.
fn ends_with_its_connection(name: &str, s: &Session, on: &Client) {
    on.block_on(async {
        guard(&format!("{name}: the served session ends"), s.closed()).await;
        let e = guard(name, s.pull::<_, String>("/echo", "after"))
            .await
            .expect_err("a pull on a served session whose connection ended");
        assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{name}: {e}");
    });
}

pub fn run(server_rt: Rt, client_rt: Rt, pair: &str) {
    accepted_tcp(
        server_rt,
        client_rt,
        &format!("{pair} (serve_conn: accepted TCP)"),
    );
    dialed_tcp(
        server_rt,
        client_rt,
        &format!("{pair} (serve_conn: dialed TCP)"),
    );
    socket_pair(
        server_rt,
        client_rt,
        &format!("{pair} (serve_conn: a unix socket pair, a proto of our own)"),
    );
}

/// The test accepts a TCP connection a client peer dialed and hands it to
/// the server runtime, which serves it as the accepting side.
fn accepted_tcp(server_rt: Rt, client_rt: Rt, name: &str) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = l.local_addr().expect("address").to_string();
    let (server_roles, client_roles) = (Roles::default(), Roles::default());
    let server = peer(server_rt, "server", &server_roles);
    let client = peer(client_rt, "client", &client_roles);
    let dialed = client
        .dial(&addr)
        .unwrap_or_else(|e| panic!("{name}: dial {addr}: {e}"));
    let (conn, _) = l.accept().expect("accept");
    let served = server
        .any()
        .serve_tcp(conn, ServeOptions::default().remote("accepted by the test"))
        .unwrap_or_else(|e| panic!("{name}: serve_conn: {e}"));
    assert_eq!(
        served.remote_addr(),
        &PeerAddr::Other("accepted by the test".into()),
        "{name}"
    );
    both_ways(name, (&dialed, "client"), (&served, "server"), &client);
    assert_eq!(server_roles.seen(), ["after_accept"], "{name}: server");
    assert_eq!(client_roles.seen(), ["after_dial"], "{name}: client");
    client.block_on(guard(name, dialed.close()));
    ends_with_its_connection(name, &served, &server);
    client.shutdown();
    server.shutdown();
}

/// The test connects to a listening server peer and hands the connection
/// to the client runtime, which serves it as the dialing side.
fn dialed_tcp(server_rt: Rt, client_rt: Rt, name: &str) {
    let (server_roles, client_roles) = (Roles::default(), Roles::default());
    let mut b = PeerBuilder::new(PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        ..PeerConfig::default()
    });
    routes(&mut b, "server", &server_roles);
    let server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: server: {e}"));
    let addr = server.addr().dial_string();
    let client = peer(client_rt, "client", &client_roles);
    let conn = std::net::TcpStream::connect(&addr).expect("connect");
    let s = client
        .any()
        .serve_tcp(
            conn,
            ServeOptions::default()
                .role(Role::Dialer)
                .remote("the server"),
        )
        .unwrap_or_else(|e| panic!("{name}: serve_conn: {e}"));
    assert_eq!(s.remote_addr(), &PeerAddr::Other("the server".into()));
    client.block_on(async {
        let r = guard(name, s.pull::<_, String>("/echo", "dialer")).await;
        assert_eq!(r.unwrap_or_else(|e| panic!("{name}: {e}")).value, "dialer");
        let r = guard(name, s.pull::<_, String>("/ask", "who?")).await;
        assert_eq!(
            r.unwrap_or_else(|e| panic!("{name}: {e}")).value,
            "heard: client answers who?",
            "{name}"
        );
    });
    assert_eq!(client_roles.seen(), ["after_dial"], "{name}: client");
    assert_eq!(server_roles.seen(), ["after_accept"], "{name}: server");
    // The server going away ends the session: nothing re-dials it.
    let report = server.shutdown(std::time::Duration::from_secs(5));
    assert_eq!(report.cancelled, 0, "{name}");
    ends_with_its_connection(name, &s, &client);
    client.shutdown();
}

/// Both ends of a unix socket pair, served by the two runtimes (one in
/// each role), speaking our proto (`ServeOptions::proto`).
fn socket_pair(server_rt: Rt, client_rt: Rt, name: &str) {
    let (a, b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let (server_roles, client_roles) = (Roles::default(), Roles::default());
    let (server_proto, client_proto) = (TaggedProto::default(), TaggedProto::default());
    let server = peer(server_rt, "server", &server_roles);
    let client = peer(client_rt, "client", &client_roles);
    let served = server
        .any()
        .serve_unix(a, ServeOptions::default().proto(server_proto.clone()))
        .unwrap_or_else(|e| panic!("{name}: serve_conn: {e}"));
    let dialer = client
        .any()
        .serve_unix(
            b,
            ServeOptions::default()
                .role(Role::Dialer)
                .proto(client_proto.clone()),
        )
        .unwrap_or_else(|e| panic!("{name}: serve_conn: {e}"));
    both_ways(name, (&dialer, "client"), (&served, "server"), &client);
    assert_eq!(server_roles.seen(), ["after_accept"], "{name}: server");
    assert_eq!(client_roles.seen(), ["after_dial"], "{name}: client");
    // Three pulls each way (one of them a handler's pull back), each a
    // pull and a reply on both sides.
    for (side, p) in [("server", &server_proto), ("client", &client_proto)] {
        assert!(
            p.frames() >= 12,
            "{name}: the {side} spoke our proto for {} frames only",
            p.frames()
        );
    }
    client.block_on(guard(name, dialer.close()));
    ends_with_its_connection(name, &served, &server);
    client.shutdown();
    server.shutdown();
}

/// Closing a served session ends the connection's writing side by the
/// time `close` returns ("returns when the connection is closed"): the
/// other end reads the end of input then, though the socket itself
/// lingers (its reading side waits for the other end's). Over a unix
/// socket pair, where the end is there as soon as it is sent, so a
/// non-blocking read finds it or it was not sent: both as the runtime's
/// own socket type and as a stream of the user's whose close ends it.
pub fn close_ends_the_writing_side(rt: Rt) {
    use std::io::Read;
    type Serve = fn(
        &crate::runtimes::Any<'_>,
        std::os::unix::net::UnixStream,
        ServeOptions,
    ) -> std::io::Result<Session>;
    let ways: [(&str, Serve); 2] = [
        (
            "serve_connection over the runtime's own unix stream",
            |p, s, o| p.serve_unix(s, o),
        ),
        ("serve_conn over a stream of the user's", |p, s, o| {
            p.serve_unix_stream(s, o)
        }),
    ];
    for (way, serve) in ways {
        let name = &format!("{rt:?}: {way}: close ends the writing side");
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        let peer = peer(rt, "served", &Roles::default());
        let s = serve(&peer.any(), theirs, ServeOptions::default())
            .unwrap_or_else(|e| panic!("{name}: serve_conn: {e}"));
        peer.block_on(guard(name, s.close()));
        ours.set_nonblocking(true).expect("non-blocking");
        let mut buf = [0u8; 64];
        match ours.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("{name}: the session sent {n} bytes"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => panic!(
                "{name}: close() returned, and the other end reads no end of input: \
                 the writing side was not shut down"
            ),
            Err(e) => panic!("{name}: {e}"),
        }
        // Our end too: the lingering socket goes at once.
        drop(ours);
        peer.shutdown();
    }
}
