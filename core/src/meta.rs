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
/// All keys and values live back to back in one byte buffer, with two
/// `u32` offsets per pair, so a parse makes two allocations whatever the
/// number of pairs, and a parsed `Meta` holds at most `len + 8 × pairs`
/// bytes of heap for an input of `len` bytes. A pair takes at least two
/// bytes of input (one byte and a separator), so that is never more than
/// `5 × len + 4` bytes; [`Meta::try_parse`], which the fast proto uses on
/// every frame, also refuses more than [`Meta::MAX_PAIRS`] pairs before it
/// allocates anything, so there it is at most `len + 32 KiB`.
///
/// Keys and values together are limited to 4 GiB − 1 (a frame's meta is
/// shorter than that); adding past it panics, as a `Vec` does past its
/// capacity limit.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Every pair's key then value, in order, with nothing in between or
    /// after: equal pair lists have equal buffers, so the derived
    /// comparisons and hash compare pairs.
    buf: Vec<u8>,
    /// Per pair, where its key and its value end in `buf`; the key starts
    /// where the previous pair's value ends (at 0 for the first).
    ends: Vec<Ends>,
}

/// Offsets into [`Meta::buf`] of one pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Ends {
    key: u32,
    value: u32,
}

/// The pairs of a [`Meta`], in order.
struct Pairs<'a> {
    buf: &'a [u8],
    ends: std::slice::Iter<'a, Ends>,
    /// Where the next pair's key starts.
    start: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let e = self.ends.next()?;
        let (k, v) = (e.key as usize, e.value as usize);
        let pair = (&self.buf[self.start..k], &self.buf[k..v]);
        self.start = v;
        Some(pair)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ends.size_hint()
    }
}

impl ExactSizeIterator for Pairs<'_> {}

/// `n` as a buffer offset; see the type's docs on the 4 GiB limit.
fn offset(n: usize) -> u32 {
    u32::try_from(n).expect("meta keys and values exceed 4 GiB")
}

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
        Meta {
            buf: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The first value of `key`, if present and UTF-8.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&str> {
        self.get_bytes(key)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `key` as bytes.
    pub fn get_bytes(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        let e = self.ends[self.find(key.as_ref())?];
        Some(&self.buf[e.key as usize..e.value as usize])
    }

    /// The index of the first pair with `key`; compares keys only.
    fn find(&self, key: &[u8]) -> Option<usize> {
        let mut start = 0;
        self.ends.iter().position(|e| {
            let k = &self.buf[start..e.key as usize];
            start = e.value as usize;
            k == key
        })
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().filter(move |(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Replaces the value of the first pair with `key`, or appends the pair.
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        let Some(i) = self.find(key) else {
            return self.add(key, value);
        };
        let e = self.ends[i];
        let old = (e.value - e.key) as usize;
        // Check the new total fits before touching anything.
        offset(self.buf.len() - old + value.len());
        self.buf
            .splice(e.key as usize..e.value as usize, value.iter().copied());
        // Every offset from this value's end on moves by the same amount;
        // the results fit (checked above), so wrapping arithmetic is exact.
        let shift = offset(value.len()).wrapping_sub(old as u32);
        self.ends[i].value = e.value.wrapping_add(shift);
        for later in &mut self.ends[i + 1..] {
            later.key = later.key.wrapping_add(shift);
            later.value = later.value.wrapping_add(shift);
        }
    }

    /// Appends a pair, even if the key is already present.
    pub fn add(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        let key_end = offset(self.buf.len() + key.len());
        let value_end = offset(key_end as usize + value.len());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
        self.ends.push(Ends {
            key: key_end,
            value: value_end,
        });
    }

    /// Removes every pair with `key`; returns how many were removed.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) -> usize {
        let key = key.as_ref();
        let before = self.ends.len();
        // Moves each kept pair down over the removed ones, in place: the
        // write position never passes the read position.
        let (mut read, mut write, mut kept) = (0usize, 0usize, 0usize);
        for i in 0..before {
            let e = self.ends[i];
            let (k, v) = (e.key as usize, e.value as usize);
            let start = read;
            read = v;
            if &self.buf[start..k] == key {
                continue;
            }
            self.buf.copy_within(start..v, write);
            // Offsets only shrink here, so they still fit.
            self.ends[kept] = Ends {
                key: (write + k - start) as u32,
                value: (write + v - start) as u32,
            };
            write += v - start;
            kept += 1;
        }
        self.buf.truncate(write);
        self.ends.truncate(kept);
        before - kept
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        Pairs {
            buf: &self.buf,
            ends: self.ends.iter(),
            start: 0,
        }
    }

    /// Appends every pair of `other`.
    pub fn extend_from(&mut self, other: &Meta) {
        let base = self.buf.len();
        offset(base + other.buf.len());
        self.buf.extend_from_slice(&other.buf);
        // `base + other offsets` fits: checked above.
        self.ends.extend(other.ends.iter().map(|e| Ends {
            key: e.key + base as u32,
            value: e.value + base as u32,
        }));
    }

    /// Parses the URL-query form as Go teleport reads it: split on `&`, then
    /// at the first `=`; `+` reads as a space; `%XX` is decoded and a `%`
    /// without two hex digits is kept literally; a segment whose key and
    /// value are both empty is dropped. Never fails, and takes any number
    /// of pairs: for bytes from a peer, [`Meta::try_parse`] also caps that.
    ///
    /// Two allocations whatever the number of pairs; the result holds at
    /// most `src.len() + 8 × pairs` bytes of heap (see the type's docs).
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
        // Unescaping only shortens, so `src.len()` bytes hold every key
        // and value.
        let mut m = Meta {
            buf: Vec::with_capacity(src.len()),
            ends: Vec::with_capacity(count),
        };
        for seg in segments(src) {
            let (k, v) = match seg.iter().position(|b| *b == b'=') {
                Some(i) => (&seg[..i], &seg[i + 1..]),
                None => (seg, &[][..]),
            };
            unescape_into(k, &mut m.buf);
            let key = offset(m.buf.len());
            unescape_into(v, &mut m.buf);
            let value = offset(m.buf.len());
            m.ends.push(Ends { key, value });
        }
        m
    }

    /// The heap this meta holds: the capacity of both buffers, in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buf.capacity() + self.ends.capacity() * std::mem::size_of::<Ends>()
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
