//! The conformance suite of teleport for Rust: one set of scenarios run for
//! every server runtime × every client runtime (`tests/conformance`), and
//! the packet log read back on every runtime (`tests/logs.rs`). It has no
//! library of its own; run it with `cargo test -p teleport-conformance`.
