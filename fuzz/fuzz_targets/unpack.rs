//! Feeds arbitrary bytes, in chunks whose size the first byte picks, to the
//! fast proto's decoder; `teleport_core::fuzzing::unpack` asserts the
//! invariants (bounded buffering, re-encoding round-trips).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    teleport_core::fuzzing::unpack(data);
});
