//! One pull/reply round trip between two in-memory sessions: the client
//! encodes a pull, the server decodes and routes it, the handler's reply is
//! encoded, and the client decodes it and matches it to its pull. The body
//! is the seed benchmark's 581-byte protobuf `BenchmarkMessage`.
//!
//! `cargo bench -p teleport-core --bench session`

#[path = "support/bench_message.rs"]
#[allow(dead_code)]
mod bench_message;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use teleport_core::bytes::{Bytes, BytesMut};
use teleport_core::{CodecId, Event, Packet, Role, Router, Session, Shared, Uri};

use bench_message::{BenchmarkMessage, FILLED_LEN};

fn round_trip(c: &mut Criterion) {
    let body = Bytes::from(BenchmarkMessage::filled().encode_to_vec());
    assert_eq!(body.len(), FILLED_LEN);

    let mut router = Router::new();
    router.pull("/echo/proto", 1u8);
    let shared = Arc::new(Shared::new(router));
    let now = Instant::now();
    let mut client: Session<u8, u64> = Session::new(shared.clone(), Role::Dialer, 1, now);
    let mut server: Session<u8, u64> = Session::new(shared, Role::Acceptor, 2, now);
    let mut wire = BytesMut::with_capacity(4096);

    let mut one = |token: u64| {
        let mut pull = Packet::default().with_body(CodecId::PROTOBUF, body.clone());
        pull.uri = Uri::from_static("/echo/proto");
        client.pull(now, pull, None, token).unwrap();
        client.poll_transmit(&mut wire);
        server.handle_input(now, &wire);
        wire.clear();
        let Some(Event::Pull(p)) = server.poll_event() else {
            panic!("the server got no pull")
        };
        let reply = Packet::default().with_body(p.reply_codec, p.packet.body);
        server.reply(now, p.seq, Ok(reply)).unwrap();
        server.poll_transmit(&mut wire);
        client.handle_input(now, &wire);
        wire.clear();
        match client.poll_event() {
            Some(Event::Reply {
                token: t,
                result: Ok(p),
                ..
            }) if t == token => p,
            e => panic!("no reply: {e:?}"),
        }
    };
    // The reply is the pull's body, matched to its token.
    assert_eq!(one(0).body, body);

    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    let mut token = 1;
    g.bench_function("pull_reply_round_trip_581B", |b| {
        b.iter(|| {
            token += 1;
            black_box(one(token))
        })
    });
    g.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
