//! `Rerror`: the error that travels to the peer in a reply (SPEC §7).

use std::fmt;

use crate::meta::Meta;

/// An error a pull ends with: sent by the peer in a reply, or made locally
/// when the call could not complete (connection lost, timeout, ...).
///
/// On the wire it is the JSON object `{"code":..,"message":..,"detail":..}`
/// under the meta key [`Rerror::META_KEY`]; `message` and `detail` are left
/// out when empty. We write proper JSON (Go escapes only `"`, see
/// D-RERROR-JSON) and read Go's malformed form too.
///
/// ```
/// use teleport_core::Rerror;
/// let e = Rerror::new(1001, "bind error").with_detail("field a");
/// let json = e.to_json();
/// assert_eq!(json, r#"{"code":1001,"message":"bind error","detail":"field a"}"#);
/// assert_eq!(Rerror::from_json(json.as_bytes()), e);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Rerror {
    /// Error code; the built-in ones are the `CODE_*` constants.
    pub code: i32,
    /// Short message.
    pub message: String,
    /// Longer detail, often empty.
    pub detail: String,
}

impl Rerror {
    /// The meta key an error reply carries its JSON under.
    pub const META_KEY: &'static str = "X-Reply-Error";

    /// Normally local: the connection went away while the pull was pending,
    /// the read side failed, or the session was already closing or closed
    /// when the pull was made. Also sent on the wire: a session that is
    /// closing answers a pull that arrives from the peer with this code
    /// (detail `session is closing`).
    pub const CODE_CONN_CLOSED: i32 = 102;
    /// Local: the pull could not be written. Never sent.
    pub const CODE_WRITE_FAILED: i32 = 104;
    /// Local: dialing failed. Never sent.
    pub const CODE_DIAL_FAILED: i32 = 105;
    /// The pull's URI cannot be parsed.
    pub const CODE_BAD_PACKET: i32 = 400;
    /// No handler for the pull's path.
    pub const CODE_NOT_FOUND: i32 = 404;
    /// The pull did not complete in time. Go v3 has no reply timeout; this
    /// code is the one later teleport versions use for it. Local only.
    pub const CODE_TIMEOUT: i32 = 408;
    /// The handler failed unexpectedly (for example it panicked).
    pub const CODE_INTERNAL: i32 = 500;
    /// Unknown message kind. Go builds but never sends it.
    pub const CODE_NOT_IMPLEMENTED: i32 = 501;
    /// Local: the session refused the call because a bound was reached
    /// (too many pending pulls, too many queued bytes). Never sent.
    pub const CODE_BACKPRESSURE: i32 = 503;

    /// An error with a code and a message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Rerror {
            code,
            message: message.into(),
            detail: String::new(),
        }
    }

    /// Sets the detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// 404 `Not Found`, as Go answers a pull with no handler.
    pub fn not_found() -> Self {
        Rerror::new(Self::CODE_NOT_FOUND, "Not Found")
    }

    /// 400 `Bad Packet` with what was wrong in the detail.
    pub fn bad_packet(detail: impl Into<String>) -> Self {
        Rerror::new(Self::CODE_BAD_PACKET, "Bad Packet").with_detail(detail)
    }

    /// 102 `Connection Closed`.
    pub fn conn_closed() -> Self {
        Rerror::new(Self::CODE_CONN_CLOSED, "Connection Closed")
    }

    /// 104 `Write Failed`.
    pub fn write_failed(detail: impl Into<String>) -> Self {
        Rerror::new(Self::CODE_WRITE_FAILED, "Write Failed").with_detail(detail)
    }

    /// 105 `Dial Failed`.
    pub fn dial_failed(detail: impl Into<String>) -> Self {
        Rerror::new(Self::CODE_DIAL_FAILED, "Dial Failed").with_detail(detail)
    }

    /// 408 `Timeout`.
    pub fn timeout() -> Self {
        Rerror::new(Self::CODE_TIMEOUT, "Timeout")
    }

    /// 500 `Internal Server Error`.
    pub fn internal(detail: impl Into<String>) -> Self {
        Rerror::new(Self::CODE_INTERNAL, "Internal Server Error").with_detail(detail)
    }

    /// 501 `Not Implemented`.
    pub fn not_implemented() -> Self {
        Rerror::new(Self::CODE_NOT_IMPLEMENTED, "Not Implemented")
    }

    /// The JSON form, properly escaped.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(32 + self.message.len() + self.detail.len());
        s.push_str("{\"code\":");
        s.push_str(&self.code.to_string());
        for (name, val) in [("message", &self.message), ("detail", &self.detail)] {
            if !val.is_empty() {
                s.push_str(",\"");
                s.push_str(name);
                s.push_str("\":");
                // Serialising a &str to JSON cannot fail.
                s.push_str(&serde_json::to_string(val).unwrap_or_default());
            }
        }
        s.push('}');
        s
    }

    /// Reads the JSON form leniently: by field name, unknown fields ignored,
    /// and Go's hand-made JSON (raw backslashes and control characters,
    /// D-RERROR-JSON) read as Go meant it. Never fails: text that is no
    /// error object at all gives code 0 with the text as the message.
    pub fn from_json(src: &[u8]) -> Rerror {
        #[derive(serde::Deserialize)]
        struct Wire {
            #[serde(default)]
            code: i64,
            #[serde(default)]
            message: String,
            #[serde(default)]
            detail: String,
        }
        if let Ok(w) = serde_json::from_slice::<Wire>(src) {
            return Rerror {
                code: clamp_code(w.code),
                message: w.message,
                detail: w.detail,
            };
        }
        lenient_parse(src).unwrap_or_else(|| Rerror {
            code: 0,
            message: String::from_utf8_lossy(src).into_owned(),
            detail: String::new(),
        })
    }

    /// The error a reply's meta carries, if any: present and non-empty.
    pub fn from_meta(meta: &Meta) -> Option<Rerror> {
        match meta.get_bytes(Self::META_KEY) {
            Some(v) if !v.is_empty() => Some(Rerror::from_json(v)),
            _ => None,
        }
    }

    /// Puts this error into a reply's meta.
    pub fn set_in_meta(&self, meta: &mut Meta) {
        meta.set(Self::META_KEY, self.to_json());
    }
}

fn clamp_code(c: i64) -> i32 {
    // Go truncates; a clamp keeps the sign and says "out of range" better.
    c.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// Reads `{"code":N,"message":"..","detail":".."}` where strings end at the
/// first `"` not preceded by a backslash and only `\"` is an escape, which
/// is how Go's writer produces them.
fn lenient_parse(src: &[u8]) -> Option<Rerror> {
    let s = std::str::from_utf8(src).ok()?.trim();
    let s = s.strip_prefix('{')?.strip_suffix('}')?;
    let mut e = Rerror::default();
    let mut rest = s;
    let mut seen = false;
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ']);
        let r = rest.strip_prefix('"')?;
        let end = r.find('"')?;
        let key = &r[..end];
        rest = r[end + 1..].trim_start().strip_prefix(':')?.trim_start();
        if let Some(r) = rest.strip_prefix('"') {
            let mut val = String::new();
            let mut chars = r.char_indices();
            let mut close = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' if r[i + 1..].starts_with('"') => {
                        val.push('"');
                        chars.next();
                    }
                    '"' => {
                        close = Some(i);
                        break;
                    }
                    c => val.push(c),
                }
            }
            rest = &r[close? + 1..];
            match key {
                "message" => e.message = val,
                "detail" => e.detail = val,
                _ => {}
            }
        } else {
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            if key == "code" {
                e.code = clamp_code(rest[..end].trim().parse().ok()?);
                seen = true;
            }
            rest = &rest[end..];
        }
    }
    seen.then_some(e)
}

impl fmt::Debug for Rerror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl fmt::Display for Rerror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.message)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for Rerror {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_only() {
        let e = Rerror::new(7, "");
        assert_eq!(e.to_json(), r#"{"code":7}"#);
        assert_eq!(Rerror::from_json(br#"{"code":7}"#), e);
    }

    #[test]
    fn escapes_what_go_does_not() {
        let e = Rerror::new(1, "a\\b\nc\"d");
        assert_eq!(Rerror::from_json(e.to_json().as_bytes()), e);
    }

    #[test]
    fn reads_go_raw_json() {
        // Go emits backslashes and newlines raw and escapes only quotes.
        let go = b"{\"code\":9,\"message\":\"a\\b\nc \\\"q\\\"\",\"detail\":\"x\"}";
        let e = Rerror::from_json(go);
        assert_eq!(e.code, 9);
        assert_eq!(e.message, "a\\b\nc \"q\"");
        assert_eq!(e.detail, "x");
    }

    #[test]
    fn out_of_range_code_clamps_and_garbage_is_kept() {
        assert_eq!(Rerror::from_json(br#"{"code":99999999999}"#).code, i32::MAX);
        let g = Rerror::from_json(b"not json");
        assert_eq!((g.code, g.message.as_str()), (0, "not json"));
    }
}
