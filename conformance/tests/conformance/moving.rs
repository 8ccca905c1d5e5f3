//! A server going away (the notice of [`teleport_core::GOING_AWAY_URI`]):
//! a client that re-dials makes its new calls over a new connection at
//! once, while the calls it had made finish on the old one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use teleport_core::Rerror;
use teleport_peer::{PeerBuilder, PullCtx};
use tokio::sync::{mpsc, Semaphore};

use crate::runtimes::{Net, Rt};
use crate::scenarios::{client_config, guard, server_config, through, until};

/// Over each transport: a pull held by its handler on the old connection,
/// the notice, then new pulls answered by a new session of the same
/// server while the held one still runs; the held one answered last, on
/// the old connection, which then ends on both sides.
pub fn new_calls_move_while_old_ones_finish(server_rt: Rt, client_rt: Rt, pair: &str) {
    for net in Net::ALL {
        let name = format!("{pair} over {net:?}: moving");
        let sock = net.sock(&name);
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let mut b = PeerBuilder::new(server_config(net, &sock, "127.0.0.1:0"));
        let g = gate.clone();
        b.pull("/hold", move |ctx: PullCtx, _: ()| {
            let (g, started) = (g.clone(), started_tx.clone());
            async move {
                let _ = started.send(());
                through(&g).await?;
                Ok::<_, Rerror>(ctx.session().id())
            }
        });
        b.pull("/where", |ctx: PullCtx, _: ()| async move {
            Ok::<_, Rerror>(ctx.session().id())
        });
        let server = server_rt.serve(b).expect("server");
        let client = client_rt.client(PeerBuilder::new(client_config(net)));
        let s = client.dial(&server.addr().dial_string()).expect("dial");
        client.block_on(async {
            let first: u64 = guard(&name, s.pull("/where", &()))
                .await
                .expect("first")
                .value;
            let held = {
                let s = s.clone();
                async move { s.pull::<_, u64>("/hold", &()).await }
            };
            let control = async {
                guard(&name, started.recv())
                    .await
                    .expect("the held pull runs");
                // The server tells the client to move (as a restart does).
                let old = server.sessions();
                assert_eq!(old.len(), 1, "{name}");
                old[0].go_away(Instant::now() + Duration::from_secs(60));
                // The client dials again at once, its held pull still running.
                until(&name, || server.sessions_len() == 2).await;
                for _ in 0..3 {
                    let r = guard(&name, s.pull::<_, u64>("/where", &()))
                        .await
                        .unwrap_or_else(|e| panic!("{name}: a pull after the notice failed: {e}"));
                    assert_ne!(r.value, first, "{name}: answered on the old connection");
                }
                assert!(!s.is_closed(), "{name}: the session moved, it did not end");
                gate.add_permits(1);
            };
            let (held, ()) = futures_util::future::join(guard(&name, held), control).await;
            let held = held.unwrap_or_else(|e| panic!("{name}: the held pull failed: {e}"));
            assert_eq!(
                held.value, first,
                "{name}: the held pull finished on its connection"
            );
            // The old connection ends once its last call is answered.
            until(&name, || server.sessions_len() == 1).await;
            until(&name, || client.any().sessions_len() == 1).await;
            let r = guard(&name, s.pull::<_, u64>("/where", &()))
                .await
                .expect("after");
            assert_ne!(r.value, first, "{name}");
        });
        client.shutdown();
        drop(server);
    }
}
