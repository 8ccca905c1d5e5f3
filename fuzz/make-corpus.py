#!/usr/bin/env python3
"""Regenerates the seed corpus of the `unpack` fuzz target.

One file per vector of core/tests/data/vectors.jsonl, named
`corpus/unpack/seed-<vector id>`: a first byte 0xff, which
`teleport_core::fuzzing::unpack` reads as the chunk size (255 bytes per
read), then the vector's frame bytes. Stale seed-* files are removed first;
other corpus files (the fuzzer's own finds) are left alone.

Usage: python3 fuzz/make-corpus.py   (from anywhere; stdlib only)
"""

import json
import pathlib

CHUNK_BYTE = b"\xff"

here = pathlib.Path(__file__).resolve().parent
vectors = here.parent / "core" / "tests" / "data" / "vectors.jsonl"
out = here / "corpus" / "unpack"


def main() -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("seed-*"):
        old.unlink()
    seen = set()
    with vectors.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            v = json.loads(line)
            vid = v["id"]
            if vid in seen or "/" in vid or vid.startswith("."):
                raise SystemExit(f"unusable or duplicate vector id: {vid!r}")
            seen.add(vid)
            frame = bytes.fromhex(v.get("hex") or "")
            (out / f"seed-{vid}").write_bytes(CHUNK_BYTE + frame)
    print(f"wrote {len(seen)} seeds to {out}")


if __name__ == "__main__":
    main()
