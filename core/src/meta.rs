//! Packet metadata: an ordered multimap in URL-query text form (SPEC §6).

use std::fmt;

use bytes::{BufMut, BytesMut};

use crate::error::ProtoError;

/// Ordered key/value pairs sent in a packet's header; keys may repeat.
///
/// On the wire it is a URL-query string: pairs joined by `&`, `key=value` or
/// just `key` for an empty value, and every byte outside
/// `A-Z a-z 0-9 * - . _` escaped as upper-case `%XX`, which is what Go
/// teleport writes, so a re-encoded frame is byte-identical.
///
/// Keys and values are bytes, because `%FF` is a valid escape of a byte
/// that is not UTF-8; [`Meta::get`] gives text where it is text.
///
/// ```
/// use teleport_core::Meta;
/// let mut m = Meta::new();
/// m.add("X-Test", "hello world & 你好=1");
/// m.add("X-Empty", "");
/// assert_eq!(
///     m.to_string(),
///     "X-Test=hello%20world%20%26%20%E4%BD%A0%E5%A5%BD%3D1&X-Empty"
/// );
/// assert_eq!(Meta::parse(m.to_string().as_bytes()), m);
/// ```
///
/// # Memory
///
/// All pairs live in one byte buffer: a pair count, then each key and
/// value after its length (a LEB128 varint, one byte below 128). A parse
/// makes one allocation whatever the number of pairs, and a parsed `Meta`
/// holds at most `4 + len + len / 128 + 2 × pairs` bytes of heap for an
/// input of `len` bytes. A pair takes at least two bytes of input (one
/// byte and a separator), so that is never more than
/// `2 × len + len / 128 + 6` bytes. [`Meta::try_parse`], which the fast
/// proto uses on every frame, also refuses more than [`Meta::MAX_PAIRS`]
/// pairs before it allocates anything, so there it is at most
/// `len + len / 128 + 8 KiB + 4`. The struct itself is one `Vec`.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Empty when there is no pair. Else the number of pairs (`u32`,
    /// little-endian), then per pair the key's length, the key, the
    /// value's length, the value, lengths as minimal LEB128 varints. That
    /// form is canonical (one buffer per pair list), so the derived
    /// comparisons and hash compare pairs.
    buf: Vec<u8>,
}

/// Bytes of the pair count at the start of a non-empty [`Meta::buf`].
const HEAD: usize = 4;

/// Appends `n` as a minimal LEB128 varint.
fn put_varint(buf: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// Reads a varint at `*pos`, moving `pos` past it.
#[inline]
fn get_varint(buf: &[u8], pos: &mut usize) -> Option<usize> {
    // Lengths below 128, nearly all of them, are one byte.
    let first = *buf.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(usize::from(first));
    }
    get_long_varint(buf, pos)
}

#[cold]
fn get_long_varint(buf: &[u8], pos: &mut usize) -> Option<usize> {
    let mut n = 0usize;
    let mut shift = 0;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        n |= usize::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(n);
        }
        shift += 7;
        if shift >= usize::BITS {
            return None;
        }
    }
}

/// Where one pair lies in [`Meta::buf`].
#[derive(Clone, Copy)]
struct Span {
    /// The pair's first byte (its key length).
    start: usize,
    /// The key.
    key: (usize, usize),
    /// The value; its end is the pair's end.
    value: (usize, usize),
}

/// The pair at `pos` in `buf`, if the buffer holds one there.
fn span_at(buf: &[u8], pos: usize) -> Option<Span> {
    let mut p = pos;
    let k_len = get_varint(buf, &mut p)?;
    let key = (p, p.checked_add(k_len)?);
    p = key.1;
    let v_len = get_varint(buf, &mut p)?;
    let value = (p, p.checked_add(v_len)?);
    (value.1 <= buf.len()).then_some(Span {
        start: pos,
        key,
        value,
    })
}

/// The spans of every pair, in order.
struct Spans<'a> {
    buf: &'a [u8],
    pos: usize,
    left: usize,
}

impl Iterator for Spans<'_> {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        self.left = self.left.checked_sub(1)?;
        let s = span_at(self.buf, self.pos)?;
        self.pos = s.value.1;
        Some(s)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Spans<'_> {}

/// The segments of `src` that make a pair: split on `&`, those that are
/// empty or just `=` (empty key and value) left out.
fn segments(src: &[u8]) -> impl Iterator<Item = &[u8]> {
    src.split(|b| *b == b'&')
        .filter(|seg| !seg.is_empty() && *seg != b"=")
}

impl Meta {
    /// The most pairs [`Meta::try_parse`] accepts, and so the most a frame
    /// the fast proto reads may carry.
    ///
    /// Go has no such limit, but nothing real sends thousands of header
    /// pairs, while every lookup is a scan of them: a peer sending a frame
    /// that is all `a&a&a&…` would make each [`Meta::get`] of a handler walk
    /// half a million pairs. Such a frame is refused like any other broken
    /// frame (the connection closes with
    /// [`ProtoError::TooManyMetaPairs`]) rather than trimmed, because a
    /// trimmed meta could silently lose the one key that mattered.
    pub const MAX_PAIRS: usize = 4096;

    /// An empty set of pairs (allocates nothing).
    pub const fn new() -> Self {
        Meta { buf: Vec::new() }
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.buf
            .first_chunk::<HEAD>()
            .map_or(0, |n| u32::from_le_bytes(*n) as usize)
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Records `n` pairs: an empty buffer for none (the canonical form).
    ///
    /// # Panics
    ///
    /// Past `u32::MAX` pairs (each takes at least two bytes: 8 GiB).
    fn set_len(&mut self, n: usize) {
        if n == 0 {
            self.buf.clear();
            return;
        }
        let n = u32::try_from(n).expect("more than u32::MAX meta pairs");
        if self.buf.len() < HEAD {
            self.buf.splice(..0, [0; HEAD]);
        }
        self.buf[..HEAD].copy_from_slice(&n.to_le_bytes());
    }

    fn spans(&self) -> Spans<'_> {
        Spans {
            buf: &self.buf,
            pos: HEAD,
            left: self.len(),
        }
    }

    fn slice(&self, (from, to): (usize, usize)) -> &[u8] {
        self.buf.get(from..to).unwrap_or_default()
    }

    /// Where the first value of `key` is: the position of its length and
    /// the value itself (the hot path of every lookup: other pairs are
    /// skipped by their lengths alone).
    #[inline]
    fn find(&self, key: &[u8]) -> Option<(usize, (usize, usize))> {
        let buf = self.buf.as_slice();
        let mut pos = HEAD;
        for _ in 0..self.len() {
            let k_len = get_varint(buf, &mut pos)?;
            let k_end = pos.checked_add(k_len)?;
            let hit = k_len == key.len() && buf.get(pos..k_end) == Some(key);
            let value_at = k_end;
            pos = k_end;
            let v_len = get_varint(buf, &mut pos)?;
            let v_end = pos.checked_add(v_len)?;
            if hit {
                return Some((value_at, (pos, v_end)));
            }
            pos = v_end;
        }
        None
    }

    /// The first value of `key`, if present and UTF-8.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&str> {
        self.get_bytes(key)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `key` as bytes.
    pub fn get_bytes(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        self.find(key.as_ref()).map(|(_, value)| self.slice(value))
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().filter(move |(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Replaces the value of the first pair with `key`, or appends the pair.
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        let Some((value_at, (_, end))) = self.find(key) else {
            return self.add(key, value);
        };
        let mut len = Vec::with_capacity(10);
        put_varint(&mut len, value.len());
        self.buf
            .splice(value_at..end, len.into_iter().chain(value.iter().copied()));
    }

    /// Appends a pair, even if the key is already present.
    pub fn add(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        let n = self.len();
        self.set_len(n + 1);
        put_varint(&mut self.buf, key.len());
        self.buf.extend_from_slice(key);
        put_varint(&mut self.buf, value.len());
        self.buf.extend_from_slice(value);
    }

    /// Removes every pair with `key`; returns how many were removed.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) -> usize {
        let key = key.as_ref();
        let before = self.len();
        // Moves each kept pair down over the removed ones, in place: the
        // write position never passes the read position, so every pair is
        // read before anything is written over it.
        let (mut read, mut write, mut kept) = (HEAD, HEAD, 0usize);
        for _ in 0..before {
            let Some(s) = span_at(&self.buf, read) else {
                break;
            };
            read = s.value.1;
            if self.slice(s.key) == key {
                continue;
            }
            self.buf.copy_within(s.start..s.value.1, write);
            write += s.value.1 - s.start;
            kept += 1;
        }
        self.buf.truncate(write);
        self.set_len(kept);
        before - kept
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        self.spans()
            .map(move |s| (self.slice(s.key), self.slice(s.value)))
    }

    /// Appends every pair of `other`.
    pub fn extend_from(&mut self, other: &Meta) {
        let (mine, theirs) = (self.len(), other.len());
        if theirs == 0 {
            return;
        }
        self.set_len(mine + theirs);
        self.buf
            .extend_from_slice(other.buf.get(HEAD..).unwrap_or_default());
    }

    /// Parses the URL-query form as Go teleport reads it: split on `&`, then
    /// at the first `=`; `+` reads as a space; `%XX` is decoded and a `%`
    /// without two hex digits is kept literally; a segment whose key and
    /// value are both empty is dropped. Never fails, and takes any number
    /// of pairs: for bytes from a peer, [`Meta::try_parse`] also caps that.
    ///
    /// One allocation whatever the number of pairs; the result holds at
    /// most `4 + len + len / 128 + 2 × pairs` bytes of heap (see the
    /// type's docs).
    pub fn parse(src: &[u8]) -> Meta {
        Self::build(src, segments(src).count())
    }

    /// Like [`Meta::parse`], but a meta of more than [`Meta::MAX_PAIRS`]
    /// pairs is refused with [`ProtoError::TooManyMetaPairs`], after one
    /// pass over `src` that allocates nothing. The fast proto parses every
    /// frame's meta with this.
    ///
    /// ```
    /// use teleport_core::{Meta, ProtoError};
    /// let ok = "k=v&".repeat(Meta::MAX_PAIRS);
    /// assert_eq!(Meta::try_parse(ok.as_bytes()).unwrap().len(), Meta::MAX_PAIRS);
    /// let over = "a&".repeat(Meta::MAX_PAIRS + 1);
    /// assert_eq!(
    ///     Meta::try_parse(over.as_bytes()),
    ///     Err(ProtoError::TooManyMetaPairs { count: 4097, limit: 4096 })
    /// );
    /// ```
    pub fn try_parse(src: &[u8]) -> Result<Meta, ProtoError> {
        if src.is_empty() {
            return Ok(Meta::new()); // most frames: no meta at all
        }
        let count = segments(src).count();
        if count > Self::MAX_PAIRS {
            return Err(ProtoError::TooManyMetaPairs {
                count,
                limit: Self::MAX_PAIRS,
            });
        }
        Ok(Self::build(src, count))
    }

    /// Parses `src`, which has `count` pairs.
    fn build(src: &[u8], count: usize) -> Meta {
        if count == 0 {
            return Meta::new();
        }
        // Unescaping only shortens, so the keys and values take at most
        // `src.len()` bytes; their lengths take one byte each, plus one for
        // every 128 bytes of a key or value past the first 127.
        let mut m = Meta {
            buf: Vec::with_capacity(HEAD + src.len() + src.len() / 128 + 2 * count),
        };
        m.set_len(count);
        for seg in segments(src) {
            let (k, v) = match seg.iter().position(|b| *b == b'=') {
                Some(i) => (&seg[..i], &seg[i + 1..]),
                None => (seg, &[][..]),
            };
            for part in [k, v] {
                put_varint(&mut m.buf, unescaped_len(part));
                unescape_into(part, &mut m.buf);
            }
        }
        m
    }

    /// The heap this meta holds: the capacity of its buffer, in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// The pairs that go on the wire: not both key and value empty.
    fn written(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().filter(|(k, v)| !(k.is_empty() && v.is_empty()))
    }

    /// The exact number of bytes [`Meta::encode_into`] appends.
    pub fn encoded_len(&self) -> usize {
        let mut n = 0;
        for (k, v) in self.written() {
            if n > 0 {
                n += 1;
            }
            n += escaped_len(k);
            if !v.is_empty() {
                n += 1 + escaped_len(v);
            }
        }
        n
    }

    /// Appends the URL-query form. Pairs whose key and value are both empty
    /// are skipped: a reader drops them anyway.
    pub fn encode_into(&self, dst: &mut impl BufMut) {
        let mut first = true;
        for (k, v) in self.written() {
            if !first {
                dst.put_u8(b'&');
            }
            first = false;
            escape_into(k, dst);
            if !v.is_empty() {
                dst.put_u8(b'=');
                escape_into(v, dst);
            }
        }
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut b);
        // The escaped form is pure ASCII.
        f.write_str(std::str::from_utf8(&b).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for Meta {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = Meta::new();
        for (k, v) in iter {
            m.add(k, v);
        }
        m
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_')
}

fn escaped_len(s: &[u8]) -> usize {
    s.iter()
        .map(|b| if is_unreserved(*b) { 1 } else { 3 })
        .sum()
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn escape_into(s: &[u8], dst: &mut impl BufMut) {
    for &b in s {
        if is_unreserved(b) {
            dst.put_u8(b);
        } else {
            dst.put_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The length of `s` unescaped: each `%XX` with two hex digits is one byte.
fn unescaped_len(s: &[u8]) -> usize {
    let mut n = s.len();
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%'
            && s.get(i + 1).copied().and_then(hex_val).is_some()
            && s.get(i + 2).copied().and_then(hex_val).is_some()
        {
            n -= 2;
            i += 3;
        } else {
            i += 1;
        }
    }
    n
}

/// Appends the unescaped `s` to `out`.
fn unescape_into(s: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = s.get(i + 1).copied().and_then(hex_val);
                let lo = s.get(i + 2).copied().and_then(hex_val);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            _ => out.push(b),
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_rules() {
        let m = Meta::parse(b"a+b=c%2x&&=&=v&k&%41=%zz%4");
        let pairs: Vec<_> = m.iter().collect();
        assert_eq!(
            pairs,
            vec![
                (&b"a b"[..], &b"c%2x"[..]),
                (&b""[..], &b"v"[..]),
                (&b"k"[..], &b""[..]),
                (&b"A"[..], &b"%zz%4"[..]),
            ]
        );
    }

    #[test]
    fn set_replaces_first_or_appends() {
        let mut m = Meta::parse(b"a=1&b=2&a=3");
        m.set("a", "x");
        m.set("c", "y");
        assert_eq!(m.to_string(), "a=x&b=2&a=3&c=y");
        assert_eq!(m.get("a"), Some("x"));
        assert_eq!(m.get_all(b"a").count(), 2);
        assert_eq!(m.remove("a"), 2);
        assert_eq!(m.to_string(), "b=2&c=y");
    }

    #[test]
    fn escapes_like_go() {
        let mut m = Meta::new();
        m.add("k~ ", "+/?");
        assert_eq!(m.to_string(), "k%7E%20=%2B%2F%3F");
        assert_eq!(m.encoded_len(), m.to_string().len());
    }
}
