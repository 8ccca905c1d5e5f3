//! The seed benchmark's message (BENCH.md) as derived in
//! `benches/support/bench_message.rs`: its size, its defaults, and its bytes
//! against the frames captured from Go teleport.

#[path = "../benches/support/bench_message.rs"]
#[allow(dead_code)]
mod bench_message;

use bench_message::{BenchmarkMessage, BENCH_INT, BENCH_TEXT, FILLED_LEN};
use prost::Message;
use teleport_core::bytes::BytesMut;
use teleport_core::{CodecId, CodecRegistry, FastProto, Packet, PacketType, Proto, Protobuf, Seq};

/// The body of a vector from `data/vectors.jsonl`.
fn vector_body(id: &str) -> Vec<u8> {
    let text = include_str!("data/vectors.jsonl");
    let v: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("vector line is JSON"))
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("vector {id} exists"));
    hex::decode(v["decoded"]["body_hex"].as_str().expect("body_hex")).expect("hex")
}

#[test]
fn filled_message_is_581_bytes() {
    assert_eq!(BENCH_TEXT.chars().count(), 18);
    assert_eq!(BENCH_TEXT.len(), 54);
    let m = BenchmarkMessage::filled();
    assert_eq!(m.encoded_len(), FILLED_LEN);
    assert_eq!(m.encode_to_vec().len(), FILLED_LEN);
    let body = CodecRegistry::default()
        .encode_to_bytes(CodecId::PROTOBUF, &Protobuf(m.clone()))
        .unwrap();
    assert_eq!(body.len(), FILLED_LEN);
    assert_eq!(BenchmarkMessage::decode(&body[..]).unwrap(), m);
}

#[test]
fn filled_message_is_byte_identical_to_go() {
    // pull_proto.0.c2s carries the benchmark request as Go's gogo/protobuf
    // marshalled it.
    let go = vector_body("pull_proto.0.c2s");
    assert_eq!(go.len(), FILLED_LEN);
    assert_eq!(BenchmarkMessage::filled().encode_to_vec(), go);
    assert_eq!(
        BenchmarkMessage::decode(&go[..]).unwrap(),
        BenchmarkMessage::filled()
    );
}

#[test]
fn server_reply_reads_as_the_benchmark_server_writes_it() {
    // The server sets field1 = "OK" and field2 = 100 and echoes the rest.
    let go = vector_body("pull_proto.1.s2c");
    let reply = BenchmarkMessage::decode(&go[..]).unwrap();
    let want = BenchmarkMessage {
        field1: "OK".into(),
        field2: 100,
        ..BenchmarkMessage::filled()
    };
    assert_eq!(reply, want);
    assert_eq!(want.encode_to_vec(), go);
}

#[test]
fn proto2_defaults_are_the_schema_ones() {
    let d = BenchmarkMessage::default();
    // Optional fields with a declared default read it when absent.
    assert!(d.field81() && d.field12() && d.field17() && d.field13() && d.field14());
    assert!(!d.field80() && !d.field59() && !d.field30() && !d.field24());
    assert_eq!((d.field60(), d.field271(), d.field272()), (-1, -1, -1));
    assert_eq!(d.field129(), "xxxxxxxxxxxxxxxxxxxxx");
    assert_eq!((d.field6(), d.field130(), d.field131()), (0, 0, 0));
    // Absent optionals are not written; the two required int32 fields and
    // the required string are (proto2 writes required fields always).
    assert_eq!(d.encode_to_vec(), [0x0a, 0x00, 0x10, 0x00, 0x18, 0x00]);
    // A filled field overrides its default.
    let f = BenchmarkMessage::filled();
    assert_eq!((f.field60(), f.field129()), (BENCH_INT, BENCH_TEXT));
}

#[test]
fn bench_packet_frame_is_615_bytes() {
    let body = BenchmarkMessage::filled().encode_to_vec();
    let p = Packet::new(PacketType::PULL, Seq(1), "/bench/say").with_body(CodecId::PROTOBUF, body);
    let mut proto = FastProto::default();
    let mut wire = BytesMut::new();
    proto.encode(&p, &mut wire).unwrap();
    // 24 fixed bytes + the 10-byte URI + the 581-byte body.
    assert_eq!(wire.len(), 24 + 10 + FILLED_LEN);
    let back = proto.decode(&mut wire).unwrap().unwrap();
    let Protobuf(m): Protobuf<BenchmarkMessage> = CodecRegistry::default()
        .decode(back.body_codec, &back.body)
        .unwrap();
    assert_eq!(m, BenchmarkMessage::filled());
}
