//! Packet metadata: an ordered multimap in URL-query text form (SPEC §6).

use std::fmt;

use bytes::{BufMut, BytesMut};

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
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Meta {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// An empty set of pairs (allocates nothing).
    pub const fn new() -> Self {
        Meta { pairs: Vec::new() }
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The first value of `key`, if present and UTF-8.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Option<&str> {
        self.get_bytes(key)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `key` as bytes.
    pub fn get_bytes(&self, key: impl AsRef<[u8]>) -> Option<&[u8]> {
        let key = key.as_ref();
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// Replaces the value of the first pair with `key`, or appends the pair.
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let key = key.as_ref();
        match self.pairs.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.as_ref().to_vec(),
            None => self.pairs.push((key.to_vec(), value.as_ref().to_vec())),
        }
    }

    /// Appends a pair, even if the key is already present.
    pub fn add(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.pairs
            .push((key.as_ref().to_vec(), value.as_ref().to_vec()));
    }

    /// Removes every pair with `key`; returns how many were removed.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) -> usize {
        let key = key.as_ref();
        let before = self.pairs.len();
        self.pairs.retain(|(k, _)| k != key);
        before - self.pairs.len()
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> {
        self.pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Appends every pair of `other`.
    pub fn extend_from(&mut self, other: &Meta) {
        self.pairs.extend(other.pairs.iter().cloned());
    }

    /// Parses the URL-query form as Go teleport reads it: split on `&`, then
    /// at the first `=`; `+` reads as a space; `%XX` is decoded and a `%`
    /// without two hex digits is kept literally; a segment whose key and
    /// value are both empty is dropped. Never fails.
    pub fn parse(src: &[u8]) -> Meta {
        let mut pairs = Vec::new();
        if src.is_empty() {
            return Meta { pairs };
        }
        for seg in src.split(|b| *b == b'&') {
            let (k, v) = match seg.iter().position(|b| *b == b'=') {
                Some(i) => (&seg[..i], &seg[i + 1..]),
                None => (seg, &[][..]),
            };
            if k.is_empty() && v.is_empty() {
                continue;
            }
            pairs.push((unescape(k), unescape(v)));
        }
        Meta { pairs }
    }

    /// The exact number of bytes [`Meta::encode_into`] appends.
    pub fn encoded_len(&self) -> usize {
        let mut n = 0;
        for (k, v) in self
            .pairs
            .iter()
            .filter(|(k, v)| !(k.is_empty() && v.is_empty()))
        {
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
        for (k, v) in self
            .pairs
            .iter()
            .filter(|(k, v)| !(k.is_empty() && v.is_empty()))
        {
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
                self.pairs
                    .iter()
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

fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
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
    out
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
