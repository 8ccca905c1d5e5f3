//! `teleport-bench`: the seed's end-to-end benchmark (`shared/protocol/BENCH.md`)
//! for teleport on every runtime, its socket layer alone, and a raw tokio
//! floor. One binary, four subcommands:
//!
//! ```text
//! teleport-bench server    --system S [--addr 127.0.0.1:0] [--max-secs 900]
//! teleport-bench client    --system S --addr A [-c 100] [-n 200000] [--warmup 5]
//!                          [--server-pid PID] [--max-secs 600]
//! teleport-bench idle      --system S --addr A --server-pid PID [--sessions 10000]
//! teleport-bench summarize FILE... [--smoke]
//! ```
//!
//! Systems: `floor` (raw tokio, 4-byte length prefix + protobuf), `socket`
//! (teleport's framing over tokio: `FastProto` packets with the protobuf
//! body, no session or router), and teleport peers on `tokio`,
//! `async-std`, `smol` and `mio`; `tokio-tls` is the tokio peer with TLS
//! 1.3 (rustls, ring) under every session. `bench/run.sh` drives the whole matrix.

#[path = "../../core/benches/support/bench_message.rs"]
#[allow(dead_code)]
mod bench_message;

mod args;
mod client;
mod idle;
mod procfs;
mod server;
mod summary;
mod systems;
mod tls;

use std::time::Duration;

pub use bench_message::BenchmarkMessage;

/// Every system this binary serves and drives, in table order.
pub const SYSTEMS: [&str; 7] = [
    "floor",
    "socket",
    "tokio",
    "tokio-tls",
    "async-std",
    "smol",
    "mio",
];

/// The route every teleport call goes to.
pub const ROUTE: &str = "/bench/say";

/// What the server does with a request (BENCH.md): field1 = "OK",
/// field2 = 100, and the message goes back.
pub fn reply_to(mut m: BenchmarkMessage) -> BenchmarkMessage {
    m.field1.clear();
    m.field1.push_str("OK");
    m.field2 = 100;
    m
}

/// Whether a reply is the one the server should send.
pub fn reply_ok(m: &BenchmarkMessage) -> bool {
    m.field1 == "OK"
}

/// Ends the process with `code` after `secs`, whatever it is doing, so
/// every run stops by itself.
pub fn watchdog(what: &'static str, secs: u64, code: i32) {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            eprintln!("{what}: watchdog fired after {secs}s, exiting");
            std::process::exit(code);
        })
        .expect("watchdog thread");
}

fn main() {
    let a = args::parse();
    match a.command.as_str() {
        "server" => server::run(&a),
        "client" => std::process::exit(client::run(&a)),
        "idle" => std::process::exit(idle::run(&a)),
        "summarize" => std::process::exit(summary::run(&a)),
        _ => args::usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn message_is_581_bytes_and_the_reply_is_ok() {
        let m = BenchmarkMessage::filled();
        assert_eq!(m.encoded_len(), bench_message::FILLED_LEN);
        assert_eq!(m.encode_to_vec().len(), 581);
        let back = BenchmarkMessage::decode(&m.encode_to_vec()[..]).unwrap();
        assert_eq!(back, m);
        assert!(!reply_ok(&back));
        let r = reply_to(back);
        assert!(reply_ok(&r));
        assert_eq!(r.field2, 100);
    }
}
