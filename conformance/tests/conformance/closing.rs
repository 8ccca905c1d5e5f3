//! A reply sent just before a close reaches its caller (defect 1).
//!
//! The rule: every frame a peer queued before it decided to close reaches
//! the other side, and every frame that reached a peer is delivered to its
//! caller before the connection-closed error. A call made once the session
//! has closed fails with 102 and says why the session closed.
//!
//! The servers here answer a pull and close at once: a plugin of ours
//! swallows pulls to `/bye`, replies and closes; the built-in auth plugin
//! answers 401 and closes. Each exchange is repeated under the conditions
//! that lose such a reply when a close is abrupt:
//!
//! - the client keeps pushing right after its pull, so the server has
//!   unread input when it closes (a plain `close` then resets the
//!   connection, and what the server had not sent yet is discarded);
//! - the client is not reading (its one allowed incoming pull is being
//!   handled) while the server queues megabytes ahead of the reply, so
//!   the reply still waits in the server's buffers at the close;
//! - calls made right after the close, and once the session is gone.
//!
//! Each assertion holds for every interleaving, so a correct close always
//! passes; only how often a broken one is caught depends on timing, which
//! is why each exchange is repeated.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join;
use teleport_core::plugin::Auth;
use teleport_core::{CloseReason, CodecId, Packet, PacketType, Plugin, PluginCtx, Rerror, Seq};
use teleport_peer::{PeerBuilder, PeerConfig, PullCtx, PushCtx, Session};
use tokio::sync::{mpsc, Semaphore};

use crate::runtimes::{Client, Rt};
use crate::scenarios::{client_config, guard, server_config, Net};

/// Exchanges per transport and kind.
const BYE_ROUNDS: usize = 60;
const NO_CREDENTIALS_ROUNDS: usize = 30;
const WRONG_CREDENTIALS_ROUNDS: usize = 15;
const BLOCKED_ROUNDS: usize = 5;
/// Pushes the client sends right after its pull, at most.
const FLOOD: usize = 64;
const FLOOD_CHUNK: usize = 16 << 10;
/// What the server queues ahead of the reply to a blocked client.
const FILL_PUSHES: usize = 16;
const FILL_CHUNK: usize = 256 << 10;

/// Swallows pulls to `/bye`, pushes `?fill=N` big pushes to the client,
/// replies `bye` and closes the session, all in one go. Tells `closed`
/// each time one of its sessions ends.
struct Bye {
    fill: Bytes,
    closed: mpsc::UnboundedSender<()>,
}

impl Plugin for Bye {
    fn name(&self) -> &'static str {
        "bye"
    }

    fn after_read_header(&self, ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        if p.ptype != PacketType::PULL || p.uri.path() != b"/bye" {
            return Ok(());
        }
        ctx.swallow();
        let fill: usize = p
            .uri
            .query_pairs()
            .get("fill")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        for _ in 0..fill {
            ctx.push(
                Packet::new(PacketType::PUSH, Seq(0), "/client/sink")
                    .with_body(CodecId::STRING, self.fill.clone()),
            );
        }
        let reply = Packet::default().with_body(CodecId::STRING, Bytes::from_static(b"bye"));
        ctx.reply(p.seq, Ok(reply));
        ctx.close(Rerror::conn_closed().with_detail("bye: the server hangs up"));
        Ok(())
    }

    fn on_disconnect(&self, _ctx: &mut PluginCtx<'_>, _reason: &CloseReason) {
        let _ = self.closed.send(());
    }
}

/// Counts, on the client, the body bytes of pushes to `/client/sink` as
/// they are read: in order with the reply that follows them (a handler
/// might run later, on another thread).
#[derive(Clone, Default)]
struct CountSink(Arc<AtomicUsize>);

impl Plugin for CountSink {
    fn name(&self) -> &'static str {
        "count-sink"
    }

    fn after_read_header(&self, _ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        if p.ptype == PacketType::PUSH && p.uri.path() == b"/client/sink" {
            self.0.fetch_add(p.body.len(), Ordering::SeqCst);
        }
        Ok(())
    }
}

/// What went wrong in one kind of exchange, by check; reported all at
/// once at the end (so a failure says how often it happened).
#[derive(Default)]
struct Tally {
    failures: std::collections::BTreeMap<&'static str, Vec<String>>,
    rounds: usize,
}

impl Tally {
    fn check(&mut self, check: &'static str, ok: bool, what: impl FnOnce() -> String) {
        let seen = self.failures.entry(check).or_default();
        if !ok {
            seen.push(what());
        }
    }
}

/// Whether a call's error is the 102 of a closed session that says why:
/// its detail names one of `why`.
fn says_why(r: &Result<impl std::fmt::Debug, Rerror>, why: &[String]) -> bool {
    match r {
        Err(e) => e.code == Rerror::CODE_CONN_CLOSED && why.iter().any(|w| e.detail.contains(w)),
        Ok(_) => false,
    }
}

/// Why a dialed session closes when its server hangs up: the end of input
/// or a transport error (a reset), as the session tells its callers.
fn peer_hung_up() -> Vec<String> {
    vec![
        CloseReason::PeerClosed.pull_error().detail,
        CloseReason::Io(String::new())
            .pull_error()
            .detail
            .trim_end()
            .to_string(),
    ]
}

pub fn run_pair(server_rt: Rt, client_rt: Rt) {
    let mut report = Vec::new();
    for net in Net::ALL {
        let name = format!("{server_rt:?} server x {client_rt:?} client over {net:?}");
        run_net(server_rt, client_rt, net, &name, &mut report);
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

fn run_net(server_rt: Rt, client_rt: Rt, net: Net, name: &str, report: &mut Vec<String>) {
    // The /bye server.
    let sock = net.sock(name);
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let mut b = PeerBuilder::new(server_config(net, &sock, "127.0.0.1:0"));
    b.plugin(Bye {
        fill: Bytes::from(vec![b'f'; FILL_CHUNK]),
        closed: closed_tx,
    });
    b.push("/sink", |_ctx: PushCtx, _: String| async move {});
    b.push("/block_me", |ctx: PushCtx, _: ()| async move {
        // Gives the client a pull to handle, which it holds on to.
        let _ = ctx.session().pull::<_, ()>("/client/block", &()).await;
    });
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    let bye_server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: server: {e}"));
    let bye_addr = bye_server.addr().dial_string();

    // The auth server.
    let auth_sock = net.sock(name);
    let mut b = PeerBuilder::new(server_config(net, &auth_sock, "127.0.0.1:0"));
    b.plugin(Auth::acceptor(crate::plugins::verify));
    b.push("/sink", |_ctx: PushCtx, _: String| async move {});
    b.pull("/echo", |_ctx: PullCtx, s: String| async move {
        Ok::<_, Rerror>(s)
    });
    let auth_server = server_rt
        .serve(b)
        .unwrap_or_else(|e| panic!("{name}: auth server: {e}"));
    let auth_addr = auth_server.addr().dial_string();

    // The client: one incoming pull at a time, so holding one stops it
    // reading.
    let gate = Arc::new(Semaphore::new(0));
    let (blocked_tx, mut blocked_rx) = mpsc::unbounded_channel();
    let mut cb = PeerBuilder::new(PeerConfig {
        max_incoming_pulls: 1,
        ..client_config(net)
    });
    let g = gate.clone();
    cb.pull("/client/block", move |_ctx: PullCtx, _: ()| {
        let g = g.clone();
        let started = blocked_tx.clone();
        async move {
            let _ = started.send(());
            crate::scenarios::through(&g).await
        }
    });
    let sunk = CountSink::default();
    cb.plugin(sunk.clone());
    cb.push("/client/sink", |_ctx: PushCtx, _: String| async move {});
    let client = client_rt.client(cb);
    let mut wrong = PeerBuilder::new(client_config(net));
    wrong.plugin(Auth::dialer("let me in"));
    let wrong = client_rt.client(wrong);

    let dial = |c: &Client, addr: &str| {
        c.dial(addr)
            .unwrap_or_else(|e| panic!("{name}: dial {addr}: {e}"))
    };
    let chunk = "c".repeat(FLOOD_CHUNK);
    let flood = |s: &Session| {
        let chunk = chunk.clone();
        let s = s.clone();
        async move {
            for _ in 0..FLOOD {
                if s.call("/sink")
                    .codec(CodecId::STRING)
                    .push(&chunk)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    };
    let hung_up = peer_hung_up();
    let for_401 = vec!["401".to_string()];

    // The reply to /bye, with pushes right behind the pull.
    let mut bye = Tally::default();
    for _ in 0..BYE_ROUNDS {
        let s = dial(&client, &bye_addr);
        client.block_on(async {
            let call = s.call("/bye").codec(CodecId::STRING).pull::<_, String>("");
            let (r, ()) = join(
                guard(
                    &format!("{name}: /bye with pushes behind it: the pull"),
                    call,
                ),
                guard(
                    &format!("{name}: /bye with pushes behind it: the pushes"),
                    flood(&s),
                ),
            )
            .await;
            bye.rounds += 1;
            let got = r.as_ref().map(|r| r.value.as_str());
            bye.check("the reply arrives", got == Ok("bye"), || format!("{r:?}"));
            after_close(name, &s, &hung_up, &mut bye).await;
        });
    }
    tally(report, name, "reply then close, client pushing", &bye);

    // Auth with no credentials: the first pull gets the 401, then the
    // session closes.
    let mut plain = Tally::default();
    for _ in 0..NO_CREDENTIALS_ROUNDS {
        let s = dial(&client, &auth_addr);
        client.block_on(async {
            let call = s
                .call("/echo")
                .codec(CodecId::STRING)
                .pull::<_, String>("x");
            let (r, ()) = join(
                guard(
                    &format!("{name}: no credentials, with pushes behind: the pull"),
                    call,
                ),
                guard(
                    &format!("{name}: no credentials, with pushes behind: the pushes"),
                    flood(&s),
                ),
            )
            .await;
            plain.rounds += 1;
            plain.check(
                "the 401 arrives",
                matches!(&r, Err(e) if e.code == 401 && e.message == "Unauthorized"),
                || format!("{r:?}"),
            );
            after_close(name, &s, &hung_up, &mut plain).await;
        });
    }
    tally(report, name, "auth: 401 then close, client pushing", &plain);

    // Auth with the wrong credentials: the dialer's plugin closes the
    // session with the 401, which every call then names.
    let mut refused = Tally::default();
    for _ in 0..WRONG_CREDENTIALS_ROUNDS {
        let s = dial(&wrong, &auth_addr);
        wrong.block_on(async {
            let call = s
                .call("/echo")
                .codec(CodecId::STRING)
                .pull::<_, String>("x");
            let (r, ()) = join(
                guard(
                    &format!("{name}: wrong credentials, with pushes behind: the pull"),
                    call,
                ),
                guard(
                    &format!("{name}: wrong credentials, with pushes behind: the pushes"),
                    flood(&s),
                ),
            )
            .await;
            refused.rounds += 1;
            refused.check(
                "the pull's error names the 401",
                says_why(&r, &for_401),
                || format!("{r:?}"),
            );
            after_close(name, &s, &for_401, &mut refused).await;
        });
    }
    tally(report, name, "auth: wrong credentials", &refused);

    // The client is not reading while the server queues megabytes, the
    // reply and its close; it reads again once the server's session has
    // ended.
    let mut blocked = Tally::default();
    for _ in 0..BLOCKED_ROUNDS {
        let s = dial(&client, &bye_addr);
        while closed_rx.try_recv().is_ok() {}
        let before = sunk.0.load(Ordering::SeqCst);
        client.block_on(async {
            guard(&format!("{name}: push /block_me"), s.push("/block_me", &()))
                .await
                .unwrap_or_else(|e| panic!("{name}: /block_me: {e}"));
            guard(
                &format!("{name}: the client's /client/block starts"),
                blocked_rx.recv(),
            )
            .await;
            let call = s
                .call(format!("/bye?fill={FILL_PUSHES}"))
                .codec(CodecId::STRING)
                .pull::<_, String>("");
            let then_push = async {
                let _ = s.call("/sink").codec(CodecId::STRING).push(&chunk).await;
            };
            let release = async {
                guard(
                    &format!("{name}: the server's session ends"),
                    closed_rx.recv(),
                )
                .await;
                gate.add_permits(1);
            };
            let ((r, ()), ()) = guard(
                &format!("{name}: /bye?fill to a client not reading"),
                join(join(call, then_push), release),
            )
            .await;
            blocked.rounds += 1;
            let got = r.as_ref().map(|r| r.value.as_str());
            blocked.check("the reply arrives", got == Ok("bye"), || format!("{r:?}"));
            after_close(name, &s, &hung_up, &mut blocked).await;
        });
        let filled = sunk.0.load(Ordering::SeqCst) - before;
        blocked.check(
            "the pushes queued ahead of the reply arrive",
            filled == FILL_PUSHES * FILL_CHUNK,
            || format!("{filled} of {} bytes", FILL_PUSHES * FILL_CHUNK),
        );
    }
    tally(
        report,
        name,
        "reply then close to a client not reading",
        &blocked,
    );

    client.shutdown();
    wrong.shutdown();
    drop(bye_server);
    drop(auth_server);
}

/// Calls on a session its server closed: one right away, one once the
/// session is gone for good. Both fail with 102 naming one of `why`.
async fn after_close(name: &str, s: &Session, why: &[String], t: &mut Tally) {
    let r = guard(
        &format!("{name}: a pull right after the close"),
        s.pull::<_, String>("/echo", "right after"),
    )
    .await;
    t.check(
        "a call right after the close fails saying why",
        says_why(&r, why),
        || format!("{r:?} (wanted 102 naming one of {why:?})"),
    );
    guard(&format!("{name}: the session ends"), async {
        while !s.is_closed() {
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
    })
    .await;
    let r = guard(
        &format!("{name}: a pull on the closed session"),
        s.pull::<_, String>("/echo", "long after"),
    )
    .await;
    t.check(
        "a call on the closed session fails saying why",
        says_why(&r, why),
        || format!("{r:?} (wanted 102 naming one of {why:?})"),
    );
}

fn tally(report: &mut Vec<String>, name: &str, kind: &str, t: &Tally) {
    for (check, failures) in &t.failures {
        if failures.is_empty() {
            continue;
        }
        let mut samples: Vec<&str> = Vec::new();
        for f in failures {
            if !samples.contains(&f.as_str()) && samples.len() < 3 {
                samples.push(f);
            }
        }
        report.push(format!(
            "{name}: {kind}: {check}: failed {} times in {} rounds, e.g.:\n    {}",
            failures.len(),
            t.rounds,
            samples.join("\n    ")
        ));
    }
}
