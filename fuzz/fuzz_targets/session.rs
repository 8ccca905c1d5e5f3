//! Drives a server-side `Session` through an interleaving of the peer's
//! bytes (garbage and well-formed frames, read in chunks), clock advances,
//! timeouts, calls of its own, replies, deferred decodes, closes, end of
//! input, write backpressure and errors; `teleport_core::fuzzing::session`
//! asserts the invariants (one `Closed`, last; every pull ends once and for
//! one cause; every peer pull gets one reply; nothing accepted is dropped;
//! memory within stated multiples of the limits; no timer livelock).
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    teleport_core::fuzzing::session(data, Instant::now());
});
