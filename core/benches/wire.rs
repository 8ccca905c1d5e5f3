//! The wire layer on the seed benchmark's packet: a PULL to `/bench/say`
//! carrying `BenchmarkMessage` (BENCH.md) as a 581-byte protobuf body.
//!
//! Run with `cargo bench -p teleport-core --bench wire`; add `-- --quick`
//! for a short run.

#[path = "support/bench_message.rs"]
#[allow(dead_code)]
mod bench_message;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bench_message::{BenchmarkMessage, FILLED_LEN};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use teleport_core::bytes::{Bytes, BytesMut};
use teleport_core::{
    CodecId, CodecRegistry, FastProto, Packet, PacketType, Proto, Protobuf, Seq, XferId, XferPipe,
};

/// Frames in the batch decoded from one buffer.
const BATCH: usize = 64;

/// The benchmark's PULL, its body encoded through the codec registry.
fn bench_packet(gzip: bool) -> Packet {
    let body = CodecRegistry::default()
        .encode_to_bytes(CodecId::PROTOBUF, &Protobuf(BenchmarkMessage::filled()))
        .expect("the message encodes");
    // The figures are only comparable if this is the seed's message.
    assert_eq!(body.len(), FILLED_LEN, "BenchmarkMessage is not 581 bytes");
    let mut p =
        Packet::new(PacketType::PULL, Seq(1), "/bench/say").with_body(CodecId::PROTOBUF, body);
    if gzip {
        p.xfer = XferPipe::from_ids(&[XferId::GZIP]);
    }
    p
}

fn frame_of(p: &Packet) -> Bytes {
    let mut wire = BytesMut::new();
    FastProto::default().encode(p, &mut wire).expect("encodes");
    wire.freeze()
}

fn round_trip(c: &mut Criterion, name: &str, gzip: bool) {
    let p = bench_packet(gzip);
    let mut proto = FastProto::default();
    let mut buf = BytesMut::with_capacity(1024);
    c.bench_function(name, |b| {
        b.iter(|| {
            proto.encode(black_box(&p), &mut buf).unwrap();
            let got = proto.decode(&mut buf).unwrap().unwrap();
            debug_assert!(buf.is_empty());
            black_box(got)
        })
    });
}

fn encode_decode(c: &mut Criterion) {
    round_trip(c, "encode+decode", false);
    round_trip(c, "encode+decode gzip", true);
}

fn encode(c: &mut Criterion) {
    let p = bench_packet(false);
    let mut proto = FastProto::default();
    let mut buf = BytesMut::with_capacity(1024);
    c.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            proto.encode(black_box(&p), &mut buf).unwrap();
            black_box(buf.len())
        })
    });
}

fn decode(c: &mut Criterion) {
    let p = bench_packet(false);
    let frame = frame_of(&p);
    let mut proto = FastProto::default();
    // Sanity: the frame decodes to the packet being measured.
    assert_eq!(
        proto
            .decode(&mut BytesMut::from(&frame[..]))
            .unwrap()
            .as_ref(),
        Some(&p)
    );
    let mut batch = BytesMut::new();
    for _ in 0..BATCH {
        batch.extend_from_slice(&frame);
    }
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    // A fresh read buffer holding one frame per iteration, made outside the
    // measurement (64 at a time, so they are still in cache). The first
    // split of a fresh buffer makes it shared: one small allocation.
    g.bench_function("1 frame, fresh buffer", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&frame[..]),
            |src| black_box(proto.decode(src).unwrap().unwrap()),
            BatchSize::NumIterations(BATCH as u64),
        )
    });
    // The steady state of a connection: one read buffer, refilled (outside
    // the measurement) once its frames are decoded and dropped, so it is
    // reclaimed rather than reallocated.
    g.bench_function("1 frame, reused buffer", |b| {
        let mut src = BytesMut::with_capacity(batch.len());
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH as u64) as usize;
                src.extend_from_slice(&batch[..n * frame.len()]);
                let t = Instant::now();
                for _ in 0..n {
                    black_box(proto.decode(&mut src).unwrap().unwrap());
                }
                total += t.elapsed();
                debug_assert!(src.is_empty());
                left -= n as u64;
            }
            total
        })
    });
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("64 frames, one buffer", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&batch[..]),
            |src| {
                for _ in 0..BATCH {
                    black_box(proto.decode(src).unwrap().unwrap());
                }
                debug_assert!(src.is_empty());
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, encode_decode, encode, decode);
criterion_main!(benches);
