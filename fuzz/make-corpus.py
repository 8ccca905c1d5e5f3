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
  same text as a complete gzip member, and plain text;
- session: scripts of operations for `teleport_core::fuzzing::session`
  (a flags byte, then op codes and their arguments in the layout its
  `Rig::op` reads; `Session` below writes them): echo, held and refused
  pulls, pushes, replies to our pulls, timeouts, deferred gzip decodes
  run, failed and dropped, backpressure, end of input, write and I/O
  errors, heartbeat, graceful close. A script whose bytes no longer mean
  the same after a change of the harness is still a valid input.

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


class Session:
    """Builds an input of the `session` target, op by op."""

    # Op codes: the first of each op's range in `Rig::op`.
    FRAME, GARBAGE, DELIVER, PULL, PUSH, ANSWER, STALE = 0, 6, 7, 10, 12, 13, 15
    ADVANCE, TIMEOUT, FIRE, DECODE, CLOSE, CLOSE_BY, EOF = 16, 18, 19, 20, 22, 23, 24
    WRITE_ERROR, IO_ERROR, TRANSMIT, WRITE = 25, 26, 27, 29
    # Flags (the first byte).
    DEFAULT_TIMEOUT, SMALL_INCOMING, IDLE, NO_FRAME_TIMEOUT = 1, 2, 4, 8
    ZERO_CLOSE, INLINE_ONLY, HEARTBEAT, HOLDS_OUTPUT = 16, 32, 64, 128
    # Indexes into `URIS`.
    ECHO, HOLD, SINK, HEARTBEAT_URI, NOPE = 0, 1, 2, 3, 4

    def __init__(self, flags: int = 0):
        self.b = bytearray([flags])

    def op(self, *bs: int) -> "Session":
        self.b.extend(bs)
        return self

    @staticmethod
    def text(t: bytes) -> list:
        return [2, len(t), *t]

    @staticmethod
    def repeat(n: int, byte: int) -> list:
        return [5, n & 0xFF, n >> 8, byte]

    def frame(self, kind: int, seq: int, uri: int, body: list,
              gzip: bool = False, read: bool = True) -> "Session":
        """kind 0 pull, 3 push, 4 reply (to our oldest waiting pull)."""
        b = [self.FRAME, kind]
        b += [6, 0] if kind == 4 else [0, seq]
        b += [uri, 0]  # no meta
        if kind == 4:
            b.append(1)  # no error in meta
        b.append(0)  # string codec
        b += body
        b.append(4 if gzip else 0)
        b += [0, 0 if read else 2]  # undamaged; a read or none
        return self.op(*b)

    def pull(self, uri: int, body: list, secs=None) -> "Session":
        b = [self.PULL, uri, 0, *body, 0]
        b += [2] if secs is None else [3, secs]
        return self.op(*b)

    def bytes(self) -> bytes:
        return bytes(self.b)


def session_seeds() -> dict:
    S = Session
    t = S.text
    seeds = {
        "echo": S().frame(0, 1, S.ECHO, t(b"hi")).frame(3, 2, S.SINK, t(b"p"))
        .frame(0, 3, S.NOPE, t(b"x")).op(S.PUSH, S.SINK, 0, 0, 0).op(S.TRANSMIT),
        "hold-eof": S(S.SMALL_INCOMING)
        .frame(0, 1, S.HOLD, S.repeat(3000, 97), read=False)
        .frame(0, 2, S.HOLD, S.repeat(3000, 98), read=False)
        .frame(0, 3, S.HOLD, t(b"c"), read=False)
        .op(S.DELIVER, 4).op(S.EOF).op(S.ANSWER, 0, 0).op(S.ANSWER, 0, 0)
        .op(S.STALE, 0).op(S.ANSWER, 0, 0).op(S.TRANSMIT),
        "own-pulls": S(S.HOLDS_OUTPUT).pull(S.ECHO, t(b"a"), 1)
        .pull(S.HOLD, t(b"b"), 2).pull(S.HOLD, t(b"c"))
        .op(S.TRANSMIT).op(S.WRITE, 2).frame(4, 0, S.ECHO, t(b"reply"))
        .op(S.FIRE, 3),
        "gzip-defer": S().frame(0, 1, S.ECHO, S.repeat(8000, 122), gzip=True)
        .frame(0, 2, S.ECHO, t(b"after")).op(S.DECODE, 2).op(S.DELIVER, 4)
        .op(S.TRANSMIT),
        "gzip-drop": S().frame(0, 1, S.ECHO, S.repeat(8000, 122), gzip=True)
        .op(S.DECODE, 0).op(S.EOF).op(S.CLOSE).op(S.FIRE, 0),
        "gzip-fail": S().frame(0, 1, S.HOLD, S.repeat(8000, 1), gzip=True)
        .op(S.DECODE, 1),
        "errors": S(S.DEFAULT_TIMEOUT).pull(S.ECHO, t(b"x"))
        .frame(0, 1, S.HOLD, t(b"h")).op(S.WRITE_ERROR).op(S.ANSWER, 0, 0)
        .op(S.FIRE, 1),
        "io-error": S().pull(S.ECHO, t(b"x")).op(S.IO_ERROR),
        "drip": S().op(S.GARBAGE, 3, 0, 0, 0).op(S.DELIVER, 4).op(S.FIRE, 0),
        "heartbeat": S(S.HEARTBEAT | S.IDLE).op(S.FIRE, 1).op(S.TRANSMIT)
        .frame(3, 1, S.HEARTBEAT_URI, [0]).op(S.FIRE, 3),
        "drain": S(S.HOLDS_OUTPUT).frame(0, 1, S.HOLD, t(b"h"))
        .pull(S.HOLD, t(b"q"), 30).op(S.CLOSE).frame(0, 2, S.ECHO, t(b"late"))
        .frame(4, 0, S.ECHO, t(b"r")).op(S.ADVANCE, 7).op(S.TIMEOUT),
        "backpressure": S(S.HOLDS_OUTPUT),
    }
    bp = seeds["backpressure"]
    for i in range(20):
        bp.frame(0, i, S.ECHO if i % 3 else S.HOLD, S.repeat(30000, i), read=False)
    for _ in range(8):
        bp.op(S.DELIVER, 4).op(S.ANSWER, 0, 0)
    bp.op(S.TRANSMIT).op(S.WRITE, 2)
    for _ in range(8):
        bp.op(S.DELIVER, 4).op(S.ANSWER, 0, 0).op(S.TRANSMIT).op(S.WRITE, 2)
    return {k: v.bytes() for k, v in seeds.items()}


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
        "session": session_seeds(),
    }


def main() -> None:
    seeds = {t: {} for t in ["unpack", "meta", "codecs", "gzip", "session"]}
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
