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
