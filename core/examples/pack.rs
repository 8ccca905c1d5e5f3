//! Packs a pull the way Go teleport v3 does, prints its bytes, and unpacks
//! them again: `cargo run -p teleport-core --example pack`.

use bytes::BytesMut;
use teleport_core::{
    CodecId, CodecRegistry, FastProto, Meta, Packet, PacketType, Proto, Seq, XferId, XferPipe,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let codecs = CodecRegistry::default();
    let mut proto = FastProto::default();

    #[derive(serde::Serialize)]
    struct Arg {
        a: i32,
        b: &'static str,
    }
    let body = codecs.encode_to_bytes(CodecId::JSON, &Arg { a: 1, b: "x" })?;
    let mut pull = Packet::new(PacketType::PULL, Seq(0), "/home/test?peer_id=110")
        .with_body(CodecId::JSON, body);
    pull.meta = Meta::from_iter([("author", "henrylee2cn"), ("greeting", "你好")]);

    for pipe in [XferPipe::new(), XferPipe::from_ids(&[XferId::GZIP])] {
        pull.xfer = pipe;
        let mut wire = BytesMut::new();
        proto.encode(&pull, &mut wire)?;
        println!("xfer {:?}: {} bytes", pull.xfer, wire.len());
        for line in wire.chunks(32) {
            let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
            println!("  {}", hex.join(""));
        }
        let back = proto.decode(&mut wire)?.ok_or("frame incomplete")?;
        println!(
            "  unpacked: seq={} type={} uri={} path={:?} query={:?} meta={:?} body={}",
            back.seq,
            back.ptype,
            back.uri,
            String::from_utf8_lossy(back.uri.path()),
            back.uri.query_pairs(),
            back.meta,
            String::from_utf8_lossy(&back.body),
        );
        assert_eq!(back, pull);
    }
    Ok(())
}
