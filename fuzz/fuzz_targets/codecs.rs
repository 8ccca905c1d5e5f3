//! Decodes arbitrary bytes through each built-in codec (JSON into a
//! `serde_json::Value` and a struct, protobuf into a prost message, string
//! into `String` and bytes); `teleport_core::fuzzing::codecs` asserts the
//! invariants (no panic or stack overflow, round trips).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    teleport_core::fuzzing::codecs(data);
});
