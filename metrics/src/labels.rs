//! The label sets of the metrics, and their values as the text format
//! writes them.

use std::fmt::Write;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// A label value that is text chosen at run time (a route path): shared,
/// so a lookup clones a pointer, not the text, and escaped on the way out.
///
/// The encoder writes label values as given, and a route may hold any
/// character: `\`, `"` and line feeds are escaped here, as the text format
/// wants inside a quoted value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Text(pub(crate) Arc<str>);

impl Text {
    pub(crate) fn new(s: &str) -> Self {
        Text(Arc::from(s))
    }
}

impl EncodeLabelValue for Text {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let mut rest: &str = &self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..i])?;
            encoder.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        encoder.write_str(rest)
    }
}

/// Which side started a call: `incoming` (the peer pulled or pushed) or
/// `outgoing` (we did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    Incoming,
    Outgoing,
}

impl From<teleport_core::plugin::Direction> for Direction {
    fn from(d: teleport_core::plugin::Direction) -> Self {
        match d {
            teleport_core::plugin::Direction::Incoming => Direction::Incoming,
            teleport_core::plugin::Direction::Outgoing => Direction::Outgoing,
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        })
    }
}

/// `pull` or `push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Pull,
    Push,
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Kind::Pull => "pull",
            Kind::Push => "push",
        })
    }
}

/// `dialer` or `acceptor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    Dialer,
    Acceptor,
}

impl From<teleport_core::Role> for Role {
    fn from(r: teleport_core::Role) -> Self {
        match r {
            teleport_core::Role::Dialer => Role::Dialer,
            teleport_core::Role::Acceptor => Role::Acceptor,
        }
    }
}

impl EncodeLabelValue for Role {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Role::Dialer => "dialer",
            Role::Acceptor => "acceptor",
        })
    }
}

/// An `Rerror` code, or `other` once the codes seen are at their bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Code {
    Code(i32),
    Other,
}

impl EncodeLabelValue for Code {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Code::Code(c) => write!(encoder, "{c}"),
            Code::Other => encoder.write_str(crate::OTHER_CODE),
        }
    }
}

/// `teleport_calls_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CallLabels {
    pub(crate) direction: Direction,
    pub(crate) kind: Kind,
    pub(crate) route: Text,
}

/// `teleport_call_errors_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    pub(crate) direction: Direction,
    pub(crate) route: Text,
    pub(crate) code: Code,
}

/// `teleport_call_duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub(crate) direction: Direction,
    pub(crate) route: Text,
}

/// `teleport_pending_pulls`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    pub(crate) direction: Direction,
}

/// `teleport_sessions_open`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RoleLabels {
    pub(crate) role: Role,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    #[test]
    fn route_labels_are_escaped() {
        let mut r = Registry::default();
        let f = Family::<RouteLabels, Counter>::default();
        r.register("x", "x", f.clone());
        f.get_or_create(&RouteLabels {
            direction: Direction::Incoming,
            route: Text::new("/a\"b\\c\nd"),
        })
        .inc();
        let mut s = String::new();
        encode(&mut s, &r).unwrap();
        assert!(
            s.contains(r#"x_total{direction="incoming",route="/a\"b\\c\nd"} 1"#),
            "{s}"
        );
    }

    #[test]
    fn codes_are_numbers_or_other() {
        let mut r = Registry::default();
        let f = Family::<ErrorLabels, Counter>::default();
        r.register("e", "e", f.clone());
        for code in [Code::Code(-7), Code::Other] {
            f.get_or_create(&ErrorLabels {
                direction: Direction::Outgoing,
                route: Text::new("/a"),
                code,
            })
            .inc();
        }
        let mut s = String::new();
        encode(&mut s, &r).unwrap();
        assert!(s.contains(r#"code="-7""#), "{s}");
        assert!(s.contains(r#"code="other""#), "{s}");
    }
}
