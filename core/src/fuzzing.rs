//! Entry points for the fuzz targets in `fuzz/`, kept here so they are
//! compiled and unit-tested with the crate.

use bytes::BytesMut;

use crate::proto::{FastProto, Proto};

/// The read limit the `unpack` target decodes under.
pub const FUZZ_LIMIT: usize = 4096;

/// Feeds `data` to a [`FastProto`] with a small read limit, in chunks whose
/// sizes come from the data itself, and checks the decoder's invariants:
///
/// - it never buffers more than the limit plus one read's worth;
/// - every packet it yields re-encodes to a frame that decodes to the same
///   packet, leaving nothing behind.
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
                    // Our gzip may be larger than the peer's: a frame over
                    // the limit after re-encoding is refused, not a bug.
                    if proto.encode(&p, &mut wire).is_err() {
                        continue;
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
}
