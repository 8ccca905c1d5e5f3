//! A cut gzip payload is never taken for a shorter one (SPEC §4, D-GZIP).
//!
//! Go's reader takes whatever inflated before a stream broke off as the
//! payload, so a frame cut inside its compressed bytes (by a bad peer, or
//! a buggy middlebox) arrives as a different, shorter packet. Ours must
//! give back either the exact bytes that were compressed or an error:
//!
//! - property tests cut the output of our encoder (complete gzip members,
//!   every level) and of a Go-style one (deflate ended by a sync flush, no
//!   trailer) at every byte, and at every byte around each deflate block
//!   boundary of larger inputs;
//! - every gzip frame of the golden vectors (Go's frames, and the same
//!   packets as we encode them) is cut at every byte of its payload, with
//!   the frame's size field fixed up, and decoded by the fast proto.

use std::ops::Range;

use proptest::prelude::*;
use serde_json::Value;
use teleport_core::bytes::{BufMut, BytesMut};
use teleport_core::{FastProto, Gzip, Packet, Proto, XferFilter};

/// Go's gzip header: no flags, no time, OS unknown (SPEC §4).
const GO_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// The read limit the cuts are decoded under: far above any body here.
const LIMIT: usize = 1 << 22;

/// `body` as our [`Gzip`] writes it at `level`.
fn ours(body: &[u8], level: u32) -> Vec<u8> {
    let mut out = BytesMut::new();
    Gzip::new(level).encode(body, &mut out).unwrap();
    out.to_vec()
}

/// `body` as Go teleport writes it: the header, a deflate stream ended by
/// one sync flush (`00 00 ff ff`), no final block and no trailer.
fn go_style(body: &[u8], level: u32) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out = GO_HEADER.to_vec();
    out.reserve(body.len() + body.len() / 8 + 64);
    loop {
        let done = c.total_in() as usize;
        c.compress_vec(&body[done..], &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        if c.total_in() as usize == body.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(4096);
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "a sync flush ends it");
    out
}

/// What decoding `src` gives: the bytes, or `None` for an error.
fn decode(src: &[u8]) -> Option<Vec<u8>> {
    let mut out = BytesMut::new();
    match Gzip::default().decode(src, LIMIT, &mut out) {
        Ok(()) => Some(out.to_vec()),
        Err(_) => {
            assert!(out.is_empty(), "a failed decode appended bytes");
            None
        }
    }
}

/// Byte offsets (into `gz`, a gzip member or Go's form with a plain
/// 10-byte header) at which a deflate block ends, found with miniz_oxide's
/// block-boundary mode.
fn block_ends(gz: &[u8]) -> Vec<usize> {
    use miniz_oxide::inflate::core::inflate_flags::*;
    use miniz_oxide::inflate::core::{decompress, DecompressorOxide};
    use miniz_oxide::inflate::TINFLStatus;
    let input = &gz[10..];
    let mut st = DecompressorOxide::new();
    let mut out = vec![0u8; LIMIT];
    let (mut i, mut o) = (0, 0);
    let mut ends = Vec::new();
    let flags = TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF
        | TINFL_FLAG_HAS_MORE_INPUT
        | TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY;
    loop {
        let (status, di, dout) = decompress(&mut st, &input[i..], &mut out, o, flags);
        i += di;
        o += dout;
        match status {
            TINFLStatus::BlockBoundary => ends.push(10 + i),
            _ => break,
        }
    }
    ends
}

/// The cut lengths to try: all of them for short streams; for long ones
/// every length within 24 bytes of a block end, of the start or of the end,
/// and 100 more spread evenly.
fn cuts(gz: &[u8]) -> Vec<usize> {
    if gz.len() <= 4096 {
        return (0..gz.len()).collect();
    }
    let near = |at: usize| -> Range<usize> { at.saturating_sub(24)..(at + 25).min(gz.len()) };
    let mut v: Vec<usize> = near(0).chain(near(gz.len())).collect();
    for end in block_ends(gz) {
        v.extend(near(end));
    }
    v.extend((0..gz.len()).step_by(gz.len() / 100 + 1));
    v.retain(|&n| n < gz.len());
    v.sort_unstable();
    v.dedup();
    v
}

/// Checks the whole stream decodes to `body` and no cut of it decodes to
/// anything else.
fn check_cuts(gz: &[u8], body: &[u8]) -> Result<(), TestCaseError> {
    let whole = decode(gz);
    prop_assert_eq!(whole.as_deref(), Some(body), "the whole stream");
    for n in cuts(gz) {
        if let Some(got) = decode(&gz[..n]) {
            prop_assert!(
                got == body,
                "cut at {} of {} bytes decoded to {} bytes, not the {} compressed",
                n,
                gz.len(),
                got.len(),
                body.len()
            );
        }
    }
    Ok(())
}

/// Bodies of every kind deflate treats differently: random (stored
/// blocks), small alphabets (Huffman only), repeats (long matches), text.
fn body(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..max),
        prop::collection::vec(prop::sample::select(&b"ab \n"[..]), 0..max),
        (prop::collection::vec(any::<u8>(), 1..40), 1..max / 8 + 2)
            .prop_map(|(unit, n)| unit.repeat(n)),
        "[a-z ]{0,60}".prop_map(move |s| s.repeat(max / 64 + 1).into_bytes()),
        Just(vec![0u8; max]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Our complete gzip members, at every level: each cut is the body or
    /// an error.
    #[test]
    fn cuts_of_our_gzip_never_give_another_body(b in body(1500), level in 0u32..=9) {
        check_cuts(&ours(&b, level), &b)?;
    }

    /// Go's trailer-less form: the whole stream decodes, each cut is the
    /// body or an error.
    #[test]
    fn cuts_of_go_style_gzip_never_give_another_body(b in body(1500), level in 0u32..=9) {
        check_cuts(&go_style(&b, level), &b)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Inputs large enough for many deflate blocks, cut around every block
    /// boundary (where a decoder that only looks at "all input consumed"
    /// goes wrong).
    #[test]
    fn cuts_at_block_boundaries_never_give_another_body(
        b in body(200_000),
        level in prop::sample::select(vec![0u32, 1, 5, 9]),
    ) {
        check_cuts(&ours(&b, level), &b)?;
        check_cuts(&go_style(&b, level), &b)?;
    }
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

fn vectors() -> Vec<Value> {
    include_str!("data/vectors.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("vector line is JSON"))
        .collect()
}

/// Every gzip frame of the vectors that Go decodes: requests, and Go's
/// replies.
fn go_gzip_frames() -> Vec<(String, Vec<u8>)> {
    let mut frames = Vec::new();
    for v in vectors() {
        let id = v["id"].as_str().unwrap();
        let has_gzip = |d: &Value| {
            d["xfer"]
                .as_array()
                .is_some_and(|x| x.iter().any(|x| x == "g"))
        };
        if v["kind"] != "reject" && has_gzip(&v["decoded"]) {
            frames.push((
                id.to_string(),
                hex::decode(v["hex"].as_str().unwrap()).unwrap(),
            ));
        }
        if let Some(s) = v.get("go_session").filter(|s| has_gzip(&s["reply"])) {
            let wire = hex::decode(s["reply_hex"].as_str().unwrap()).unwrap();
            frames.push((format!("{id} (Go's reply)"), wire));
        }
    }
    frames
}

fn decode_frame(wire: &[u8]) -> Result<Option<Packet>, teleport_core::ProtoError> {
    let mut src = BytesMut::from(wire);
    FastProto::default().decode_eof(&mut src)
}

/// `wire` with its payload cut to `n` bytes and its size field saying so.
fn cut_frame(wire: &[u8], n: usize) -> Vec<u8> {
    let head = 6 + usize::from(wire[5]);
    let mut f = BytesMut::with_capacity(head + n);
    f.put_u32((head + n) as u32);
    f.put_slice(&wire[4..head + n]);
    f.to_vec()
}

/// Cuts every payload of `frames` at every byte; returns how many cuts
/// were tried.
fn check_frame_cuts(frames: &[(String, Vec<u8>)]) -> usize {
    let mut tried = 0;
    for (id, wire) in frames {
        let whole = decode_frame(wire)
            .unwrap_or_else(|e| panic!("{id}: {e}"))
            .unwrap_or_else(|| panic!("{id}: no packet"));
        let head = 6 + usize::from(wire[5]);
        for n in 0..wire.len() - head {
            match decode_frame(&cut_frame(wire, n)) {
                Err(_) => {}
                Ok(got) => assert_eq!(
                    got.as_ref(),
                    Some(&whole),
                    "{id}: payload cut to {n} of {} bytes decoded to another packet",
                    wire.len() - head
                ),
            }
            tried += 1;
        }
    }
    tried
}

#[test]
fn go_gzip_frames_cut_anywhere_are_the_packet_or_an_error() {
    let frames = go_gzip_frames();
    assert!(frames.len() >= 6, "only {} gzip frames", frames.len());
    let tried = check_frame_cuts(&frames);
    assert!(tried > 500, "only {tried} cuts");
}

#[test]
fn our_gzip_frames_cut_anywhere_are_the_packet_or_an_error() {
    // The same packets as we encode them: complete members with a trailer.
    let mut proto = FastProto::default();
    let frames: Vec<(String, Vec<u8>)> = go_gzip_frames()
        .into_iter()
        .map(|(id, wire)| {
            let p = decode_frame(&wire).unwrap().unwrap();
            let mut ours = BytesMut::new();
            proto.encode(&p, &mut ours).unwrap();
            (format!("{id} (ours)"), ours.to_vec())
        })
        .collect();
    let tried = check_frame_cuts(&frames);
    assert!(tried > 500, "only {tried} cuts");
}
