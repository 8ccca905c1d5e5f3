//! Parses arbitrary bytes as meta; `teleport_core::fuzzing::meta` asserts
//! the invariants (memory bound, pair cap, stable re-encoding).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    teleport_core::fuzzing::meta(data);
});
