//! Scripted runs of the `session` fuzz target (`teleport_core::fuzzing`):
//! each drives a server `Session` through one path (echo and push,
//! deferred gzip, a dropped decode, held pulls past the end of input, our
//! own pulls, every way of closing, a URI that nearly fills a frame) and
//! checks what came of it, so the target's invariants hold on known
//! inputs in every test run, not only under the fuzzer.

use teleport_core::fuzzing;

/// Builds inputs of the `session` target op by op, in the byte layout
/// `Rig::op` reads (each op code is the first of its range there).
mod script {
    pub const FRAME: u8 = 0;
    pub const GARBAGE: u8 = 6;
    pub const DELIVER: u8 = 7;
    pub const PULL: u8 = 10;
    pub const PUSH: u8 = 12;
    pub const ANSWER: u8 = 13;
    pub const STALE: u8 = 15;
    pub const ADVANCE: u8 = 16;
    pub const TIMEOUT: u8 = 18;
    pub const FIRE: u8 = 19;
    pub const DECODE: u8 = 20;
    pub const CLOSE: u8 = 22;
    pub const EOF: u8 = 24;
    pub const WRITE_ERROR: u8 = 25;
    pub const IO_ERROR: u8 = 26;
    pub const TRANSMIT: u8 = 27;
    pub const WRITE: u8 = 29;

    /// Flags (first byte of an input).
    pub const DEFAULT_TIMEOUT: u8 = 1;
    pub const SMALL_INCOMING: u8 = 2;
    pub const HEARTBEAT: u8 = 64;
    pub const HOLDS_OUTPUT: u8 = 128;

    /// Indexes into `URIS`.
    pub const ECHO: u8 = 0;
    pub const HOLD: u8 = 1;
    pub const SINK: u8 = 2;
    pub const NOPE: u8 = 4;

    /// A body: the selector byte and its arguments.
    pub fn bytes(b: &[u8]) -> Vec<u8> {
        let mut v = vec![2, b.len() as u8];
        v.extend_from_slice(b);
        v
    }
    pub fn repeat(n: u16, byte: u8) -> Vec<u8> {
        let [lo, hi] = n.to_le_bytes();
        vec![5, lo, hi, byte]
    }

    /// A frame of `kind` (0 pull, 3 push, 4 reply) to URI `uri` with
    /// seq `seq` (for a reply: ignored, it answers our oldest waiting
    /// pull), string codec, `body`, gzip or not, then a read of the
    /// wire.
    pub fn frame(kind: u8, seq: u8, uri: u8, body: &[u8], gzip: bool) -> Vec<u8> {
        let mut v = unread(kind, seq, uri, body, gzip);
        *v.last_mut().unwrap() = 0; // read at once
        v
    }

    /// [`frame`] left on the wire, unread.
    pub fn unread(kind: u8, seq: u8, uri: u8, body: &[u8], gzip: bool) -> Vec<u8> {
        let mut v = vec![FRAME, kind];
        if kind == 4 {
            v.extend_from_slice(&[6, 0]); // a waiting pull of ours
        } else {
            v.extend_from_slice(&[0, seq]);
        }
        v.extend_from_slice(&[uri, 0]); // no meta
        if kind == 4 {
            v.push(1); // no error in meta
        }
        v.push(0); // string codec
        v.extend_from_slice(body);
        v.push(if gzip { 4 } else { 0 });
        v.extend_from_slice(&[0, 2]); // undamaged; not read
        v
    }

    /// One of our pulls: `uri`, string body, a timeout of `secs` (or
    /// none).
    pub fn pull(uri: u8, body: &[u8], secs: Option<u8>) -> Vec<u8> {
        let mut v = vec![PULL, uri, 0];
        v.extend_from_slice(body);
        v.push(0); // no filter
        match secs {
            Some(s) => v.extend_from_slice(&[3, s]),
            None => v.push(2), // Duration::MAX: none
        }
        v
    }

    pub fn input(flags: u8, ops: &[&[u8]]) -> Vec<u8> {
        let mut v = vec![flags];
        for op in ops {
            v.extend_from_slice(op);
        }
        v
    }
}

/// Runs the target on `data`. The clock is read here, in the test: the
/// core never reads it.
fn run_session(data: &[u8]) -> fuzzing::SessionOutcome {
    fuzzing::session(data, std::time::Instant::now())
}

#[test]
fn session_on_odd_input() {
    for data in [&b""[..], &[0], &[0xff; 64], &[7; 300], &[0x55; 1000]] {
        let o = run_session(data);
        assert!(o.closed.is_some());
    }
}

#[test]
fn session_echoes_a_pull_and_takes_a_push() {
    use script::*;
    let o = run_session(&input(
        0,
        &[
            &frame(0, 1, ECHO, &bytes(b"hi"), false),
            &frame(3, 2, SINK, &bytes(b"push"), false),
            &frame(0, 3, NOPE, &bytes(b"x"), false),
            &[PUSH, SINK, 0, 0, 0],
            &[TRANSMIT],
        ],
    ));
    assert_eq!((o.pulls_routed, o.pushes_routed), (1, 1), "{o:?}");
    // The echo, the 404 and our push reached the peer whole.
    assert_eq!(o.frames_out, 3, "{o:?}");
    assert_eq!(o.closed, Some(teleport_core::CloseReason::Local));
    assert!(!o.closed_early);
}

#[test]
fn session_defers_a_large_gzip_frame_and_runs_it() {
    use script::*;
    let o = run_session(&input(
        0,
        &[
            &frame(0, 1, ECHO, &repeat(8000, b'z'), true),
            // Not read while the frame decodes away.
            &frame(0, 2, ECHO, &bytes(b"after"), false),
            &[DECODE, 2],
            &[DELIVER, 4],
            &[TRANSMIT],
        ],
    ));
    assert_eq!(
        (o.decodes, o.pulls_routed, o.frames_out),
        (1, 2, 2),
        "{o:?}"
    );
    assert_eq!(o.closed, Some(teleport_core::CloseReason::Local));
}

#[test]
fn session_with_a_dropped_or_failed_decode() {
    use script::*;
    let gz = frame(0, 1, ECHO, &repeat(8000, b'z'), true);
    // Dropped: nothing more is read; the final close still ends it.
    let o = run_session(&input(
        0,
        &[&gz, &frame(0, 2, ECHO, &[0], false), &[DECODE, 0]],
    ));
    assert_eq!((o.decodes, o.pulls_routed), (1, 0), "{o:?}");
    assert_eq!(o.closed, Some(teleport_core::CloseReason::Local));
    // Failed: a protocol error.
    let o = run_session(&input(0, &[&gz, &[DECODE, 1]]));
    assert!(o.closed_early, "{o:?}");
    assert!(matches!(
        o.closed,
        Some(teleport_core::CloseReason::Protocol(_))
    ));
}

#[test]
fn session_held_pulls_are_answered_after_the_end_of_input() {
    use script::*;
    let o = run_session(&input(
        SMALL_INCOMING,
        &[
            &unread(0, 1, HOLD, &repeat(3000, b'a'), false),
            &unread(0, 2, HOLD, &repeat(3000, b'b'), false),
            // Over the small max_incoming_bytes: this one waits in
            // the session's buffer.
            &unread(0, 3, HOLD, &bytes(b"c"), false),
            &[DELIVER, 4],
            &[EOF],
            &[ANSWER, 0, 0],
            &[ANSWER, 0, 0],
            &[STALE, 0],
            &[ANSWER, 0, 0],
            &[TRANSMIT],
        ],
    ));
    assert_eq!((o.pulls_routed, o.held_answered), (3, 3), "{o:?}");
    assert_eq!(o.frames_out, 3, "{o:?}");
    assert!(o.closed_early);
    assert_eq!(o.closed, Some(teleport_core::CloseReason::PeerClosed));
}

#[test]
fn session_own_pulls_end_by_reply_and_by_timeout() {
    use script::*;
    let o = run_session(&input(
        HOLDS_OUTPUT,
        &[
            &pull(ECHO, &bytes(b"a"), Some(1)),
            &pull(HOLD, &bytes(b"b"), Some(2)),
            &pull(HOLD, &bytes(b"c"), None),
            &[TRANSMIT],
            &[WRITE, 2],
            &frame(4, 0, ECHO, &bytes(b"reply"), false),
            &[FIRE, 3],
        ],
    ));
    assert_eq!((o.own_pulls, o.own_replies, o.timeouts), (3, 1, 1), "{o:?}");
    // The third has no deadline: the final close waits for it, then
    // fails it.
    assert_eq!(
        o.closed,
        Some(teleport_core::CloseReason::DrainTimeout {
            pulls: 1,
            handlers: 0
        })
    );
    assert_eq!(o.frames_out, 3);
}

#[test]
fn session_closes_on_errors_and_timers() {
    use script::*;
    let io = run_session(&input(0, &[&pull(ECHO, &[0], None), &[IO_ERROR]]));
    assert_eq!(
        io.closed,
        Some(teleport_core::CloseReason::Io("connection reset".into()))
    );
    let write = run_session(&input(
        0,
        &[&pull(ECHO, &[0], None), &[WRITE_ERROR], &[FIRE, 0]],
    ));
    assert_eq!(
        write.closed,
        Some(teleport_core::CloseReason::Io("broken pipe".into()))
    );
    assert!(write.closed_early);
    // Three bytes of a frame, then nothing: the frame timeout.
    let drip = run_session(&input(
        0,
        &[&[GARBAGE, 3, 0, 0, 0], &[DELIVER, 4], &[FIRE, 0]],
    ));
    assert_eq!(
        drip.closed,
        Some(teleport_core::CloseReason::FrameTimeout(
            std::time::Duration::from_secs(5)
        ))
    );
    // The heartbeat pings at 4 s and 8 s, then gives up at 12 s.
    let hb = run_session(&input(HEARTBEAT | DEFAULT_TIMEOUT, &[&[FIRE, 3]]));
    assert_eq!(hb.frames_out, 2, "{hb:?}");
    assert!(hb.closed_early && matches!(hb.closed, Some(teleport_core::CloseReason::Plugin(_))));
    // A graceful close with a held pull ends at its deadline.
    let drain = run_session(&input(
        0,
        &[
            &frame(0, 1, HOLD, &[0], false),
            &[CLOSE],
            &[ADVANCE, 7],
            &[TIMEOUT],
        ],
    ));
    assert!(drain.closed_early, "{drain:?}");
    assert_eq!(
        drain.closed,
        Some(teleport_core::CloseReason::DrainTimeout {
            pulls: 0,
            handlers: 1
        })
    );
}

/// A library bug this target found: a pull whose URI nearly fills a
/// frame, to a path with no route. The 404 carries the URI and an
/// escaped error and goes over the read limit, so did the 500 that
/// replaced it, and the pull got no reply at all. (The 500 now goes
/// without the URI; `sim_hostile.rs` has the library's own test.)
#[test]
fn session_pull_with_a_huge_uri_gets_a_reply() {
    use script::*;
    let huge = |kind: u8| {
        vec![
            FRAME, kind, 0, 9, // pull, seq 9
            14, 1, 200, // "/nope?" + a URI of 64 KiB - 56
            0, 0, 0, 0, 0, 0, // no meta, string codec, empty body, no filter, undamaged, read
        ]
    };
    let more = [DELIVER, 4, DELIVER, 4, DELIVER, 4, DELIVER, 4];
    run_session(&input(0, &[&huge(0), &more, &[TRANSMIT]]));
}
