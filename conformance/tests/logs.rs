//! The packet log a user turns on with `print_body`, `count_time` and
//! `slow_call_threshold`, read back from a capturing subscriber, on every
//! runtime: one line per packet, the body only with `print_body`, the
//! call's cost (never a zero one) only with `count_time`, and a warning
//! for a pull or a push handler slower than the threshold.
//!
//! Its own test binary: the subscriber is global, and these lines are at
//! INFO, which the conformance suite does not pay for.

#[path = "conformance/runtimes.rs"]
#[allow(dead_code, unused_imports)]
mod runtimes;

use std::sync::Mutex;
use std::time::Duration;

use runtimes::Rt;
use teleport_core::Rerror;
use teleport_peer::{PeerBuilder, PeerConfig, PullCtx, PushCtx};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter writes one event per call.
        LINES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_env_filter(tracing_subscriber::EnvFilter::new("teleport::packet=info"))
            .with_ansi(false)
            .init();
    });
}

/// The captured lines that mention `needle`.
fn lines(needle: &str) -> Vec<String> {
    LINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Longer than the threshold by far, so "slow" is never in doubt; no
/// assertion depends on anything being fast.
const SLOW: Duration = Duration::from_millis(120);
const THRESHOLD: Duration = Duration::from_millis(40);

fn run(rt: Rt, tag: &str) {
    capture();
    let loud = format!("/logs/{tag}/loud");
    let quiet = format!("/logs/{tag}/quiet");
    let slow = format!("/logs/{tag}/slow");
    let slow_push = format!("/logs/{tag}/slow_push");

    let config = |print_body: bool, count_time: bool| PeerConfig {
        listen_address: "127.0.0.1:0".into(),
        print_body,
        count_time,
        slow_call_threshold: Some(THRESHOLD),
        ..PeerConfig::default()
    };
    let serve = |print_body: bool, count_time: bool| {
        let mut b = PeerBuilder::new(config(print_body, count_time));
        b.pull(&loud, |_ctx: PullCtx, s: String| async move {
            Ok::<_, Rerror>(format!("{s} back"))
        });
        b.pull(&quiet, |_ctx: PullCtx, s: String| async move {
            Ok::<_, Rerror>(format!("{s} back"))
        });
        b.pull(&slow, |_ctx: PullCtx, _: ()| async move {
            async_io::Timer::after(SLOW).await;
            Ok::<_, Rerror>(())
        });
        let (tx, rx) = std::sync::mpsc::channel();
        b.push(&slow_push, move |_ctx: PushCtx, _: ()| {
            let tx = tx.clone();
            async move {
                async_io::Timer::after(SLOW).await;
                let _ = tx.send(());
            }
        });
        (rt.serve(b).expect("serve"), rx)
    };

    // print_body and count_time on.
    let (server, pushed) = serve(true, true);
    let client = rt.client(PeerBuilder::new(config(true, true)));
    let s = client.dial(&server.addr().dial_string()).expect("dial");
    client.block_on(async {
        let r = s
            .pull::<_, String>(&loud, &format!("hello-{tag}"))
            .await
            .expect("loud pull");
        assert_eq!(r.value, format!("hello-{tag} back"));
        s.pull::<_, ()>(&slow, &()).await.expect("slow pull");
        s.push(&slow_push, &()).await.expect("slow push");
    });
    pushed
        .recv_timeout(Duration::from_secs(20))
        .expect("the slow push ran");
    // The slow push handler's warning is written once the handler ends,
    // just after it reports.
    let mut warned = Vec::new();
    for _ in 0..1000 {
        warned = lines(&format!("uri={slow_push}"));
        if warned.iter().any(|l| l.contains("slow push handler")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    client.shutdown();
    server.shutdown(Duration::from_secs(5));

    let loud_lines = lines(&format!("uri={loud}"));
    // Client send, server recv, server reply send, client reply recv.
    assert_eq!(loud_lines.len(), 4, "{tag}: {loud_lines:#?}");
    for l in &loud_lines {
        assert!(l.contains("INFO"), "{tag}: {l}");
        assert!(l.contains(&format!("hello-{tag}")), "{tag}: the body: {l}");
    }
    let replies: Vec<_> = loud_lines.iter().filter(|l| l.contains("REPLY")).collect();
    assert_eq!(replies.len(), 2, "{tag}: {loud_lines:#?}");
    for l in replies {
        assert!(l.contains("status=ok"), "{tag}: {l}");
        assert!(l.contains(&format!("hello-{tag} back")), "{tag}: {l}");
        let cost = l.split("cost=").nth(1).expect("a cost");
        assert!(!cost.starts_with("0ns"), "{tag}: a call takes time: {l}");
    }
    let slow_lines = lines(&format!("uri={slow}"));
    let slow_replies: Vec<_> = slow_lines
        .iter()
        .filter(|l| l.contains("REPLY") && !l.contains("slow_push"))
        .collect();
    assert_eq!(slow_replies.len(), 2, "{tag}: {slow_lines:#?}");
    for l in slow_replies {
        assert!(l.contains("WARN") && l.contains("slow call"), "{tag}: {l}");
    }
    assert!(
        warned
            .iter()
            .any(|l| l.contains("WARN") && l.contains("slow push handler")),
        "{tag}: {warned:#?}"
    );

    // Both off: one line per packet still, without body or cost.
    let (server, _pushed) = serve(false, false);
    let client = rt.client(PeerBuilder::new(config(false, false)));
    let s = client.dial(&server.addr().dial_string()).expect("dial");
    client.block_on(async {
        s.pull::<_, String>(&quiet, &format!("secret-{tag}"))
            .await
            .expect("quiet pull");
    });
    client.shutdown();
    server.shutdown(Duration::from_secs(5));
    let quiet_lines = lines(&format!("uri={quiet}"));
    assert_eq!(quiet_lines.len(), 4, "{tag}: {quiet_lines:#?}");
    for l in &quiet_lines {
        assert!(!l.contains("secret"), "{tag}: no body: {l}");
        assert!(!l.contains("cost="), "{tag}: no cost: {l}");
    }
}

#[test]
fn tokio_logs() {
    run(Rt::Tokio, "tokio");
}

#[test]
fn async_std_logs() {
    run(Rt::AsyncStd, "async_std");
}

#[test]
fn smol_logs() {
    run(Rt::Smol, "smol");
}

#[test]
fn mio_logs() {
    run(Rt::Mio, "mio");
}
