//! Inflates arbitrary bytes under a limit, and compresses them to check
//! that every cut of the result is the original or an error;
//! `teleport_core::fuzzing::gzip` asserts the invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    teleport_core::fuzzing::gzip(data);
});
