#!/usr/bin/env python3
"""Regenerates the seed corpora of the fuzz targets.

Seeds come from core/tests/data/vectors.jsonl (frames captured from Go
teleport) plus a few crafted inputs, one file per seed, named
`corpus/<target>/seed-<name>`:

- unpack: a first byte 0xff, which `teleport_core::fuzzing::unpack` reads
  as the chunk size (255 bytes per read), then each vector's frame bytes;
- meta:   each distinct meta of the vectors (as sent), and edge cases;
- codecs: each distinct non-empty body of the vectors, and one value of
  each sample type of `teleport_core::fuzzing::codecs`;
- gzip:   each gzip payload of the vectors (Go's sync-flushed form), the
  same text as a complete gzip member, and plain text.

Seeds with the same bytes are written once (except for unpack, one per
vector). Stale seed-* files are removed first; other corpus files (the fuzzer's own
finds, which git ignores) are left alone.

Usage: python3 fuzz/make-corpus.py   (from anywhere; stdlib only)
"""

import gzip
import json
import pathlib
import zlib

CHUNK_BYTE = b"\xff"

here = pathlib.Path(__file__).resolve().parent
vectors = here.parent / "core" / "tests" / "data" / "vectors.jsonl"
corpus = here / "corpus"


def proto_sample() -> bytes:
    """A `ProtoSample` with every field set, encoded by hand."""
    fixed64 = (0x0102030405060708).to_bytes(8, "little")
    return b"".join(
        [
            b"\x0a\x04name",  # 1: string
            b"\x12\x02\x00\xff",  # 2: bytes
            b"\x18\x03",  # 3: sint64 -2 (zigzag 3)
            b"\x21" + fixed64,  # 4: fixed64
            b"\x2a\x08" + (1).to_bytes(4, "little") + (2).to_bytes(4, "little"),
            b"\x32\x05\x0a\x01k\x10\x07",  # 6: map entry "k" -> 7
            b"\x3a\x04\x0a\x02ch",  # 7: a child named "ch"
            b"\x40\x01",  # 8: optional bool true
        ]
    )


def go_style_gzip(plain: bytes) -> bytes:
    """Go teleport's gzip: header, deflate ended by a sync flush, no trailer."""
    c = zlib.compressobj(5, zlib.DEFLATED, -15)
    return (
        bytes.fromhex("1f8b08000000000000ff")
        + c.compress(plain)
        + c.flush(zlib.Z_SYNC_FLUSH)
    )


def crafted() -> dict:
    text = b"hello teleport, " * 8
    return {
        "meta": {
            "escapes": b"a+b=c%2x&&=&=v&k&%41=%zz%4",
            "utf8": "k=\u4f60\u597d&%E4%BD%A0=%FF%fe".encode(),
            "over-pair-cap": b"a&" * 4097,
        },
        "codecs": {
            "json-sample": json.dumps(
                {
                    "id": 1,
                    "name": "x",
                    "tags": ["a", "b"],
                    "flags": {"k": True},
                    "kind": {"Named": {"who": "w", "n": -1}},
                    "inner": {"id": 2, "kind": "Plain"},
                }
            ).encode(),
            "json-deep": b"[" * 2000,
            "proto-sample": proto_sample(),
            "not-utf8": b"\xff\xfeab",
        },
        "gzip": {
            "member": gzip.compress(text, compresslevel=5, mtime=0),
            "go-style": go_style_gzip(text),
            "plain": text,
        },
    }


def main() -> None:
    seeds = {t: {} for t in ["unpack", "meta", "codecs", "gzip"]}
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
            seeds["unpack"][vid] = CHUNK_BYTE + frame
            d = v.get("decoded")
            if not isinstance(d, dict):
                continue
            if d.get("meta_raw"):
                seeds["meta"][vid] = d["meta_raw"].encode()
            if d.get("body_hex"):
                seeds["codecs"][vid] = bytes.fromhex(d["body_hex"])
            if "g" in (d.get("xfer") or []) and len(frame) > 6:
                seeds["gzip"][vid] = frame[6 + frame[5] :]
    for target, extra in crafted().items():
        seeds[target].update(extra)
    for target, named in seeds.items():
        out = corpus / target
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("seed-*"):
            old.unlink()
        contents = set()
        for name, data in named.items():
            if data in contents and target != "unpack":
                continue  # the fuzzer gains nothing from a duplicate
            contents.add(data)
            (out / f"seed-{name}").write_bytes(data)
        print(f"{target}: {len(list(out.glob('seed-*')))} seeds in {out}")


if __name__ == "__main__":
    main()
