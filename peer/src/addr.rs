//! Connection end addresses.

use std::fmt;
use std::net::SocketAddr;

/// The address of one end of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path (empty for an unnamed client socket).
    Unix(String),
    /// A connection the user handed over: what they said it is.
    Other(String),
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => a.fmt(f),
            PeerAddr::Unix(p) if p.is_empty() => f.write_str("unix:(unnamed)"),
            PeerAddr::Unix(p) => write!(f, "unix:{p}"),
            PeerAddr::Other(s) => f.write_str(s),
        }
    }
}

impl PeerAddr {
    /// The form a peer's `dial` takes: `host:port` or the path.
    pub fn dial_string(&self) -> String {
        match self {
            PeerAddr::Tcp(a) => a.to_string(),
            PeerAddr::Unix(p) | PeerAddr::Other(p) => p.clone(),
        }
    }
}

/// How a listener is named in a hand-off: its network and configured
/// address (not the bound one: a port 0 listener is found again).
pub fn listener_name(network: crate::Network, address: &str) -> String {
    let net = match network {
        crate::Network::Tcp => "tcp",
        crate::Network::Tcp4 => "tcp4",
        crate::Network::Tcp6 => "tcp6",
        crate::Network::Unix => "unix",
        crate::Network::Unixpacket => "unixpacket",
    };
    format!("{net} {address}")
}
