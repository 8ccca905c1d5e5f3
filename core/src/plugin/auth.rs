//! Auth: the dialer sends credentials in its first pull; the acceptor
//! checks them before any other route runs.
//!
//! The pull goes to [`AUTH_URI`] with the credentials as a string-codec
//! body. The acceptor's verifier says yes (the pull is answered with an
//! empty reply and the session goes on) or no (the pull is answered with
//! the verifier's error and the session is closed). Any other packet before
//! a successful check closes the session with a 401. On the dialer, an
//! error reply closes the session with that error.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::packet::{CodecId, Packet, PacketType, Seq};
use crate::plugin::{Plugin, PluginCtx};
use crate::rerror::Rerror;

/// The URI of the credentials pull.
pub const AUTH_URI: &str = "/auth/verify";

/// Checks credentials; `Err` is sent back to the dialer.
pub type Verify = Arc<dyn Fn(&[u8]) -> Result<(), Rerror> + Send + Sync>;

/// Sends credentials after dial, checks them after accept (either or both).
#[derive(Clone, Default)]
pub struct Auth {
    credentials: Option<Bytes>,
    verify: Option<Verify>,
}

#[derive(Default)]
struct Authed(bool);

impl Auth {
    /// A dialer that sends these credentials.
    pub fn dialer(credentials: impl Into<Bytes>) -> Self {
        Auth {
            credentials: Some(credentials.into()),
            verify: None,
        }
    }

    /// An acceptor that checks credentials with `verify`.
    pub fn acceptor(verify: impl Fn(&[u8]) -> Result<(), Rerror> + Send + Sync + 'static) -> Self {
        Auth {
            credentials: None,
            verify: Some(Arc::new(verify)),
        }
    }

    /// Also check credentials when accepting.
    pub fn with_verify(
        mut self,
        verify: impl Fn(&[u8]) -> Result<(), Rerror> + Send + Sync + 'static,
    ) -> Self {
        self.verify = Some(Arc::new(verify));
        self
    }

    /// 401 `Unauthorized`.
    pub fn unauthorized(detail: impl Into<String>) -> Rerror {
        Rerror::new(401, "Unauthorized").with_detail(detail)
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("sends_credentials", &self.credentials.is_some())
            .field("verifies", &self.verify.is_some())
            .finish()
    }
}

impl Plugin for Auth {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn after_dial(&self, ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        if let Some(c) = &self.credentials {
            let p = Packet::new(PacketType::PULL, Seq(0), AUTH_URI)
                .with_body(CodecId::STRING, c.clone());
            ctx.pull(p, None);
        }
        Ok(())
    }

    fn on_plugin_reply(&self, ctx: &mut PluginCtx<'_>, result: &Result<Packet, Rerror>) {
        if let Err(e) = result {
            ctx.close(e.clone());
        }
    }

    fn after_read_header(&self, ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        let Some(verify) = &self.verify else {
            return Ok(());
        };
        if ctx.role() != crate::session::Role::Acceptor || ctx.state::<Authed>().0 {
            return Ok(());
        }
        let is_auth = p.ptype == PacketType::PULL && p.uri.path() == AUTH_URI.as_bytes();
        let verdict = if is_auth {
            verify(&p.body)
        } else {
            Err(Self::unauthorized(format!(
                "{} {} before authentication",
                p.ptype, p.uri
            )))
        };
        match verdict {
            Ok(()) => {
                ctx.state::<Authed>().0 = true;
                ctx.swallow();
                let ok = Packet::default().with_body(CodecId::STRING, Bytes::new());
                ctx.reply(p.seq, Ok(ok));
            }
            Err(e) => {
                ctx.swallow();
                if p.ptype == PacketType::PULL {
                    ctx.reply(p.seq, Err(e.clone()));
                }
                ctx.close(e);
            }
        }
        Ok(())
    }
}
