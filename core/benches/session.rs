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
use teleport_core::{AnyProto, CodecId, Event, Packet, Proto, Role, Router, Session, Shared, Uri};

use bench_message::{BenchmarkMessage, FILLED_LEN};

/// The round trip with sessions speaking the proto `make` gives.
fn round_trip_with<P: Proto>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    make: impl Fn(&Shared<u8>) -> P,
) {
    let body = Bytes::from(BenchmarkMessage::filled().encode_to_vec());
    assert_eq!(body.len(), FILLED_LEN);

    let mut router = Router::new();
    router.pull("/echo/proto", 1u8);
    let shared = Arc::new(Shared::new(router));
    let now = Instant::now();
    let (cp, sp) = (make(&shared), make(&shared));
    let mut client: Session<u8, u64, P> =
        Session::with_proto(shared.clone(), Role::Dialer, 1, cp, now);
    let mut server: Session<u8, u64, P> = Session::with_proto(shared, Role::Acceptor, 2, sp, now);
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

    let mut token = 1;
    g.bench_function(name, |b| {
        b.iter(|| {
            token += 1;
            black_box(one(token))
        })
    });
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    round_trip_with(&mut g, "pull_reply_round_trip_581B", |s| s.fast_proto());
    // The proto a peer picks at run time: the fast one inside `AnyProto`
    // (what every peer runs by default), and a boxed one (a user's).
    round_trip_with(&mut g, "pull_reply_round_trip_581B_any_fast", |s| {
        AnyProto::new(None, s.config.read_limit, &s.xfers)
    });
    round_trip_with(&mut g, "pull_reply_round_trip_581B_boxed", |s| {
        Box::new(s.fast_proto()) as Box<dyn Proto>
    });
    g.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
