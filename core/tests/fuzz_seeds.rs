//! The committed seed corpora of the fuzz targets (`fuzz/corpus/<target>/
//! seed-*`, written by `fuzz/make-corpus.py`) run clean through the
//! targets' entry points, without a fuzzer: a change that breaks an
//! invariant on a seed fails here, in the ordinary tests.

use std::path::PathBuf;
use std::time::Instant;

use teleport_core::fuzzing;

/// The seeds of `target`, by name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
        })
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no seeds in {}", dir.display());
    v
}

#[test]
fn every_seed_runs_clean() {
    for (name, data) in seeds("unpack") {
        eprintln!("unpack/{name}");
        fuzzing::unpack(&data);
    }
    for (name, data) in seeds("meta") {
        eprintln!("meta/{name}");
        fuzzing::meta(&data);
    }
    for (name, data) in seeds("codecs") {
        eprintln!("codecs/{name}");
        fuzzing::codecs(&data);
    }
    for (name, data) in seeds("gzip") {
        eprintln!("gzip/{name}");
        fuzzing::gzip(&data);
    }
}

/// Each session seed is a script (see `make-corpus.py`): it ends closed and
/// reaches the part of the session it was written for.
#[test]
fn session_seeds_run_clean_and_reach_their_paths() {
    for (name, data) in seeds("session") {
        let o = fuzzing::session(&data, Instant::now());
        assert!(o.closed.is_some(), "{name}: {o:?}");
        let reached = match name.as_str() {
            "seed-echo" => o.pulls_routed == 1 && o.pushes_routed == 1,
            "seed-hold-eof" => o.held_answered == 3 && o.closed_early,
            "seed-own-pulls" => o.own_replies == 1 && o.timeouts == 1,
            "seed-gzip-defer" | "seed-gzip-drop" | "seed-gzip-fail" => o.decodes == 1,
            "seed-errors" | "seed-io-error" | "seed-drip" | "seed-heartbeat" | "seed-drain" => {
                o.closed_early
            }
            "seed-backpressure" => o.pulls_routed > 0 && o.held_answered > 0,
            _ => true,
        };
        assert!(
            reached,
            "{name} no longer reaches what it was written for: {o:?}"
        );
    }
}
