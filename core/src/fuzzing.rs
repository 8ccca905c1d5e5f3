//! Entry points for the fuzz targets in `fuzz/`, kept here so they are
//! compiled and unit-tested with the crate.

use bytes::BytesMut;

use crate::error::ProtoError;
use crate::proto::{FastProto, Proto};

/// The read limit the `unpack` target decodes under.
pub const FUZZ_LIMIT: usize = 4096;

/// Feeds `data` to a [`FastProto`] with a small read limit, in chunks whose
/// sizes come from the data itself, and checks the decoder's invariants:
///
/// - it never buffers more than the limit plus one read's worth;
/// - every packet it yields re-encodes to a frame that decodes to the same
///   packet, leaving nothing behind. The one encode error allowed is
///   [`ProtoError::SizeOverLimit`] for a packet with transfer filters or
///   meta: our gzip may be larger than the sender's, and meta is written
///   back in Go's canonical escaping (`%XX` for every byte outside
///   `A-Z a-z 0-9 * - . _`), which may be longer than what was read; either
///   can legitimately push a frame that fit past the limit.
///
/// Panics (which is what a fuzzer looks for) when an invariant breaks.
pub fn unpack(data: &[u8]) {
    let (split, data) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s).max(1), rest),
        None => (1, data),
    };
    let mut proto = FastProto::default().with_limit(FUZZ_LIMIT);
    let mut src = BytesMut::new();
    let mut wire = BytesMut::new();
    for chunk in data.chunks(split) {
        src.extend_from_slice(chunk);
        loop {
            match proto.decode(&mut src) {
                Ok(Some(p)) => {
                    wire.clear();
                    match proto.encode(&p, &mut wire) {
                        Ok(()) => {}
                        // Our gzip output, or meta re-escaped as `%XX`, may be
                        // larger than what was read: a frame pushed over the
                        // limit is refused, not a bug.
                        Err(ProtoError::SizeOverLimit { .. })
                            if !p.xfer.is_empty() || !p.meta.is_empty() =>
                        {
                            continue;
                        }
                        Err(e) => panic!("decoded packet does not re-encode: {e}"),
                    }
                    let again = proto.decode(&mut wire).expect("re-encoded frame decodes");
                    assert_eq!(again.as_ref(), Some(&p), "round trip changed the packet");
                    assert!(wire.is_empty(), "re-encoded frame left bytes behind");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            src.len() <= FUZZ_LIMIT + split,
            "decoder holds {} bytes over a limit of {}",
            src.len(),
            FUZZ_LIMIT
        );
    }
    let _ = proto.decode_eof(&mut src);
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_on_odd_input() {
        super::unpack(b"");
        super::unpack(&[3, 0, 0, 0, 24, b'f', 0]);
        super::unpack(&[0xff; 64]);
    }

    /// The crash libFuzzer found (`fuzz/artifacts/unpack/crash-cd1f61dc…`):
    /// a gzip frame whose packet re-encodes over the limit.
    #[test]
    fn fuzz_crash_cd1f61dc() {
        let data = hex::decode(concat!(
            "ff000000ea6601671f8b08000000000000ff6280004e260606066efd28e48c7c",
            "fd82a2ffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "ffffffffff878787878787878787878787878787878787878787878787878787",
            "878787878787878787878787878787878787878787878787878787878787ffff",
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "fffffffffffffffffffffffffffffffffffffffffffffffffffc927c90600117",
            "93bfb74034c4825e3625b3172ce865b3de4b50e799fa121833180b181b1817f4",
            "b27530324e6224d3980d2003768088138c8c2740f40b10f18191f1b2fd100099",
            "28080a021001000000ffff",
        ))
        .unwrap();
        super::unpack(&data);
    }
}
