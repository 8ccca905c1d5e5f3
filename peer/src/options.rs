//! Options of one dial, one listener, one connection served: what the
//! seed passes as extra arguments to `Dial`, `Listen` and `ServeConn`.

use std::sync::Arc;

use teleport_core::{MakeProto, Role};

use crate::registry::ProtoFunc;

/// How to dial one address: [`DialOptions::default`] dials with the peer's
/// settings.
///
/// ```
/// use std::sync::Arc;
/// use teleport_core::{FastProto, Proto, XferRegistry};
/// use teleport_peer::DialOptions;
///
/// // This dial's sessions speak a proto of their own (here the fast one).
/// let opts = DialOptions::default().proto(|limit: usize, x: &Arc<XferRegistry>| {
///     Box::new(FastProto::new(limit, x.clone())) as Box<dyn Proto>
/// });
/// # drop(opts);
/// ```
#[derive(Clone, Default)]
pub struct DialOptions {
    pub(crate) proto: Option<ProtoFunc>,
    /// `None`: the peer's; `Some(None)`: plaintext.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Option<crate::tls::TlsConnector>>,
}

impl DialOptions {
    /// The frame format of this dial's session (and of its re-dials),
    /// instead of the peer's default.
    pub fn proto(mut self, make: impl MakeProto) -> Self {
        self.proto = Some(Arc::new(make));
        self
    }

    /// The proto chosen, if any.
    pub fn proto_func(&self) -> Option<ProtoFunc> {
        self.proto.clone()
    }

    /// This dial speaks TLS with `connector`, whatever the peer's.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, connector: crate::tls::TlsConnector) -> Self {
        self.tls = Some(Some(connector));
        self
    }

    /// This dial is plaintext, whatever the peer's.
    #[cfg(feature = "tls")]
    pub fn no_tls(mut self) -> Self {
        self.tls = Some(None);
        self
    }

    /// The TLS connector of this dial: its own, else the peer's.
    #[cfg(feature = "tls")]
    pub fn tls_for(&self, peer: &crate::adapter::PeerCore) -> Option<crate::tls::TlsConnector> {
        match &self.tls {
            Some(choice) => choice.clone(),
            None => peer.tls().connector.clone(),
        }
    }
}

impl std::fmt::Debug for DialOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialOptions")
            .field("proto", &self.proto.is_some())
            .finish()
    }
}

/// How to serve one listener: [`ListenOptions::default`] serves the
/// configured address with the peer's settings.
#[derive(Clone, Default)]
pub struct ListenOptions {
    pub(crate) proto: Option<ProtoFunc>,
    pub(crate) address: Option<String>,
    /// `None`: the peer's; `Some(None)`: plaintext.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Option<crate::tls::TlsAcceptor>>,
}

impl ListenOptions {
    /// The frame format of the sessions this listener accepts.
    pub fn proto(mut self, make: impl MakeProto) -> Self {
        self.proto = Some(Arc::new(make));
        self
    }

    /// Listen here instead of the configured `listen_address`.
    pub fn address(mut self, addr: impl Into<String>) -> Self {
        self.address = Some(addr.into());
        self
    }

    /// The proto chosen, if any.
    pub fn proto_func(&self) -> Option<ProtoFunc> {
        self.proto.clone()
    }

    /// The address chosen, if any.
    pub fn address_override(&self) -> Option<&str> {
        self.address.as_deref()
    }

    /// This listener serves TLS with `acceptor`, whatever the peer's.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, acceptor: crate::tls::TlsAcceptor) -> Self {
        self.tls = Some(Some(acceptor));
        self
    }

    /// This listener is plaintext, whatever the peer's.
    #[cfg(feature = "tls")]
    pub fn no_tls(mut self) -> Self {
        self.tls = Some(None);
        self
    }

    /// The TLS acceptor of this listener: its own, else the peer's.
    #[cfg(feature = "tls")]
    pub fn tls_for(&self, peer: &crate::adapter::PeerCore) -> Option<crate::tls::TlsAcceptor> {
        match &self.tls {
            Some(choice) => choice.clone(),
            None => peer.tls().acceptor.clone(),
        }
    }
}

impl std::fmt::Debug for ListenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenOptions")
            .field("proto", &self.proto.is_some())
            .field("address", &self.address)
            .finish()
    }
}

/// How to serve a connection the user already has (the seed's
/// `ServeConn`): in which role, with which proto, named how in logs.
#[derive(Clone)]
pub struct ServeOptions {
    pub(crate) proto: Option<ProtoFunc>,
    pub(crate) role: Role,
    pub(crate) remote: String,
}

impl Default for ServeOptions {
    /// The accepting side, the peer's proto, named "served".
    fn default() -> Self {
        ServeOptions {
            proto: None,
            role: Role::Acceptor,
            remote: "served".into(),
        }
    }
}

impl ServeOptions {
    /// The connection is served as the dialing side (plugins run
    /// `after_dial`) or the accepting one (`after_accept`, the default).
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// The frame format of the session.
    pub fn proto(mut self, make: impl MakeProto) -> Self {
        self.proto = Some(Arc::new(make));
        self
    }

    /// What the other end is, for logs and `Session::remote_addr`.
    pub fn remote(mut self, name: impl Into<String>) -> Self {
        self.remote = name.into();
        self
    }

    /// The role chosen.
    pub fn role_of(&self) -> Role {
        self.role
    }

    /// The proto chosen, if any.
    pub fn proto_func(&self) -> Option<ProtoFunc> {
        self.proto.clone()
    }

    /// The name of the other end.
    pub fn remote_name(&self) -> &str {
        &self.remote
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("proto", &self.proto.is_some())
            .field("role", &self.role)
            .field("remote", &self.remote)
            .finish()
    }
}

/// Why a dial failed. It becomes the seed's 105 `Dial Failed` [`Rerror`]
/// (`From`), with this error's text as the detail.
///
/// [`Rerror`]: teleport_core::Rerror
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The peer is shutting down: it dials no more.
    #[error("peer is shutting down")]
    ShuttingDown,
    /// The connection could not be made.
    #[error("{addr}: {source}")]
    Connect {
        /// What was dialed.
        addr: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Connecting took longer than the configured dial timeout.
    #[error("{addr}: no connection within {after:?}")]
    Timeout {
        /// What was dialed.
        addr: String,
        /// The dial timeout.
        after: std::time::Duration,
    },
    /// The TLS handshake failed.
    #[cfg(feature = "tls")]
    #[error("{addr}: {source}")]
    Tls {
        /// What was dialed.
        addr: String,
        /// What was wrong.
        source: crate::tls::TlsError,
    },
}

impl From<DialError> for teleport_core::Rerror {
    fn from(e: DialError) -> Self {
        teleport_core::Rerror::dial_failed(e.to_string())
    }
}

impl From<DialError> for std::io::Error {
    fn from(e: DialError) -> Self {
        use std::io::{Error, ErrorKind};
        match e {
            DialError::Connect { source, .. } => source,
            DialError::Timeout { .. } => Error::new(ErrorKind::TimedOut, e),
            #[cfg(feature = "tls")]
            DialError::Tls { source, .. } => source.into(),
            DialError::ShuttingDown => Error::other(e),
        }
    }
}
