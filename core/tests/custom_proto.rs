//! A user-defined frame format plugs in through the `Proto` trait: here a
//! tiny text protocol, one packet per line, `seq ptype uri body-hex\n`.

use bytes::{BufMut, BytesMut};
use teleport_core::{CodecId, Packet, PacketType, Proto, ProtoError, Seq};

#[derive(Default)]
struct LineProto;

impl Proto for LineProto {
    fn id(&self) -> u8 {
        b'l'
    }

    fn name(&self) -> &'static str {
        "line"
    }

    fn encode(&mut self, p: &Packet, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let uri = p.uri.as_str().filter(|u| !u.contains([' ', '\n'])).ok_or(
            ProtoError::FieldTooLong {
                field: "uri (line proto takes no spaces)",
                len: p.uri.len(),
            },
        )?;
        let hex: String = p.body.iter().map(|b| format!("{b:02x}")).collect();
        dst.put_slice(format!("{} {} {} {}\n", p.seq, p.ptype.0, uri, hex).as_bytes());
        Ok(())
    }

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, ProtoError> {
        let Some(nl) = src.iter().position(|b| *b == b'\n') else {
            return Ok(None);
        };
        let line = src.split_to(nl + 1);
        let bad = |field| ProtoError::PastEnd {
            field,
            need: 1,
            left: 0,
        };
        let text = std::str::from_utf8(&line[..nl]).map_err(|_| bad("utf-8 line"))?;
        let mut it = text.split(' ');
        let seq = it.next().and_then(|s| s.parse().ok()).ok_or(bad("seq"))?;
        let ptype = it.next().and_then(|s| s.parse().ok()).ok_or(bad("ptype"))?;
        let uri = it.next().ok_or(bad("uri"))?;
        let hex = it.next().unwrap_or("");
        let body: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect();
        Ok(Some(
            Packet::new(PacketType(ptype), Seq(seq), uri)
                .with_body(CodecId::STRING, body.ok_or(bad("body hex"))?),
        ))
    }
}

/// Anything written against `dyn Proto` works with the user's proto.
fn round_trip(proto: &mut dyn Proto, packets: &[Packet]) -> Vec<Packet> {
    let mut wire = BytesMut::new();
    for p in packets {
        proto.encode(p, &mut wire).unwrap();
    }
    let mut out = Vec::new();
    while let Some(p) = proto.decode_eof(&mut wire).unwrap() {
        out.push(p);
    }
    out
}

#[test]
fn a_user_proto_round_trips_through_the_trait() {
    let packets = vec![
        Packet::new(PacketType::PULL, Seq(1), "/a").with_body(CodecId::STRING, &b"hi"[..]),
        Packet::new(PacketType::PUSH, Seq(2), "/b").with_body(CodecId::STRING, &b""[..]),
    ];
    assert_eq!(round_trip(&mut LineProto, &packets), packets);
    let mut fast = teleport_core::FastProto::default();
    assert_eq!(round_trip(&mut fast, &packets), packets);
}

#[test]
fn a_user_proto_reports_its_errors() {
    let mut src = BytesMut::from(&b"1 x /a 00\n"[..]);
    assert!(matches!(
        LineProto.decode(&mut src),
        Err(ProtoError::PastEnd { field: "ptype", .. })
    ));
    let mut half = BytesMut::from(&b"1 1 /a"[..]);
    assert_eq!(LineProto.decode(&mut half), Ok(None));
    assert!(LineProto.decode_eof(&mut half).is_err());
}
