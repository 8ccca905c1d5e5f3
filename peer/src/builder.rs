//! Building a peer: routes, controllers, plugins, codecs, filters.

use std::future::Future;
use std::io;
use std::sync::Arc;

use teleport_core::router::to_snake_case;
use teleport_core::{
    Codec, CodecRegistry, DecodeBody, MakeProto, Plugin, Plugins, Rerror, RouteKind, Router,
    Shared, XferFilter, XferRegistry,
};

use crate::config::PeerConfig;
use crate::handler::{
    pull_handler, push_handler, unknown_pull_handler, unknown_push_handler, Handler, IntoReply,
    PullCtx, PushCtx, UnknownPullCtx, UnknownPushCtx,
};
use crate::registry::{PeerCore, ProtoFunc};

/// Builds a peer: routes, plugins, codecs and filters are fixed before
/// the first session starts.
///
/// ```
/// use teleport_peer::{PeerBuilder, PeerConfig, PullCtx};
/// use teleport_core::Rerror;
///
/// struct Math;
/// impl Math {
///     async fn add(self: std::sync::Arc<Self>, _ctx: PullCtx, arg: Vec<i64>) -> Result<i64, Rerror> {
///         Ok(arg.iter().sum())
///     }
/// }
///
/// let mut b = PeerBuilder::new(PeerConfig::default());
/// b.pull("/echo", |_ctx: PullCtx, s: String| async move { Ok::<_, Rerror>(s) });
/// b.controller(Math).pull("add", Math::add); // serves /math/add
/// let core = b.build().unwrap(); // a runtime adapter turns this into a peer
/// # drop(core);
/// ```
pub struct PeerBuilder {
    config: PeerConfig,
    router: Router<Handler>,
    plugins: Plugins,
    codecs: CodecRegistry,
    xfers: XferRegistry,
    proto: Option<ProtoFunc>,
    #[cfg(feature = "tls")]
    listen_tls: Option<crate::tls::TlsAcceptor>,
    #[cfg(feature = "tls")]
    dial_tls: Option<crate::tls::TlsConnector>,
}

impl PeerBuilder {
    /// A builder with these settings and the built-in codecs and filters.
    pub fn new(config: PeerConfig) -> Self {
        PeerBuilder {
            config,
            router: Router::new(),
            plugins: Plugins::new(),
            codecs: CodecRegistry::default(),
            xfers: XferRegistry::default(),
            proto: None,
            #[cfg(feature = "tls")]
            listen_tls: None,
            #[cfg(feature = "tls")]
            dial_tls: None,
        }
    }

    /// Serves pulls to `path` with `f(ctx, arg) -> Result<reply, Rerror>`.
    /// `arg` is decoded with the pull's codec; the reply value is encoded
    /// with it too (see [`IntoReply`]).
    pub fn pull<F, Fut, A, R>(&mut self, path: &str, f: F) -> &mut Self
    where
        F: Fn(PullCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Rerror>> + Send + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + 'static,
    {
        self.router.pull(path, pull_handler(f));
        self
    }

    /// Takes pushes to `path` with `f(ctx, arg)`.
    pub fn push<F, Fut, A>(&mut self, path: &str, f: F) -> &mut Self
    where
        F: Fn(PushCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        A: DecodeBody + Send + 'static,
    {
        self.router.push(path, push_handler(f));
        self
    }

    /// Answers pulls to paths with no route (else they get 404): the
    /// seed's `SetUnknown`. The body is not decoded before the handler
    /// runs: it has the raw body, and [`UnknownPullCtx::bind`] decodes it
    /// as whatever type fits, saying with which codec.
    pub fn unknown_pull<F, Fut, R>(&mut self, f: F) -> &mut Self
    where
        F: Fn(UnknownPullCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Rerror>> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.router.set_unknown_pull(unknown_pull_handler(f));
        self
    }

    /// Takes pushes to paths with no route (else they are dropped). As for
    /// [`PeerBuilder::unknown_pull`], the body is not decoded first.
    pub fn unknown_push<F, Fut>(&mut self, f: F) -> &mut Self
    where
        F: Fn(UnknownPushCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.router.set_unknown_push(unknown_push_handler(f));
        self
    }

    /// Routes under a prefix (`"/v1"`).
    pub fn group(&mut self, prefix: &str) -> Group<'_> {
        Group {
            builder: self,
            prefix: normalize_prefix(prefix),
            plugins: Vec::new(),
        }
    }

    /// A controller: `value`'s methods become routes
    /// `/<snake(type name)>/<method>`, as Go names them (a generic type's
    /// arguments are left out: `Cache<Db>` serves `/cache/...`). Renaming
    /// the type renames its routes on the wire: where that matters, name
    /// them with [`PeerBuilder::controller_named`].
    pub fn controller<C: Send + Sync + 'static>(&mut self, value: C) -> Controller<'_, C> {
        let name = to_snake_case(std::any::type_name::<C>());
        self.controller_named(&name, value)
    }

    /// A controller whose routes are `/<name>/<method>`, whatever its type
    /// is called.
    pub fn controller_named<C: Send + Sync + 'static>(
        &mut self,
        name: &str,
        value: C,
    ) -> Controller<'_, C> {
        Controller {
            builder: self,
            prefix: normalize_prefix(name),
            value: Arc::new(value),
            plugins: Vec::new(),
        }
    }

    /// Adds a plugin to one route (registered before), to run for its
    /// packets only, after the peer's and its groups' plugins. Fails if
    /// there is no such route.
    pub fn route_plugin(
        &mut self,
        kind: RouteKind,
        path: &str,
        plugin: impl Plugin,
    ) -> io::Result<&mut Self> {
        if self.router.add_route_plugin(kind, path, Arc::new(plugin)) {
            Ok(self)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no {kind:?} route {path} to add a plugin to"),
            ))
        }
    }

    /// Adds a plugin (they run in the order added).
    pub fn plugin(&mut self, plugin: impl Plugin) -> &mut Self {
        self.plugins.add(Arc::new(plugin));
        self
    }

    /// Adds (or replaces) a body codec.
    pub fn codec(&mut self, codec: impl Codec) -> &mut Self {
        self.codecs.register(Arc::new(codec));
        self
    }

    /// The frame format of every session that names none (the seed's
    /// `SetDefaultProtoFunc`); the default is Go teleport's fast proto.
    /// Both ends of a connection must speak the same one.
    pub fn proto(&mut self, make: impl MakeProto) -> &mut Self {
        self.proto = Some(Arc::new(make));
        self
    }

    /// Listeners serve TLS with this acceptor (instead of the config's
    /// `listen_tls` files).
    #[cfg(feature = "tls")]
    pub fn listen_tls(&mut self, acceptor: crate::tls::TlsAcceptor) -> &mut Self {
        self.listen_tls = Some(acceptor);
        self
    }

    /// Dials speak TLS with this connector (instead of the config's
    /// `dial_tls` files).
    #[cfg(feature = "tls")]
    pub fn dial_tls(&mut self, connector: crate::tls::TlsConnector) -> &mut Self {
        self.dial_tls = Some(connector);
        self
    }

    /// Adds (or replaces) a transfer filter.
    pub fn xfer_filter(&mut self, filter: impl XferFilter) -> &mut Self {
        self.xfers.register(Arc::new(filter));
        self
    }

    /// The runtime-independent peer a runtime adapter serves. Fails if
    /// the config names an unknown default codec or a plugin refuses a
    /// route.
    pub fn build(self) -> io::Result<Arc<PeerCore>> {
        let session_config = self.config.session_config(&self.codecs)?;
        let tls = self.tls()?;
        self.plugins
            .after_register(&self.router)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let shared = Arc::new(Shared {
            router: self.router,
            plugins: self.plugins,
            codecs: self.codecs,
            xfers: Arc::new(self.xfers),
            config: session_config,
        });
        Ok(Arc::new(PeerCore::new(
            self.config,
            shared,
            self.proto,
            tls,
        )))
    }

    /// The TLS ends: set in code, else from the config's files.
    #[cfg(feature = "tls")]
    fn tls(&self) -> io::Result<crate::registry::PeerTls> {
        use crate::tls::{TlsAcceptor, TlsConnector};
        let invalid = |e: crate::tls::TlsError| io::Error::new(io::ErrorKind::InvalidInput, e);
        let acceptor = match (&self.listen_tls, &self.config.listen_tls) {
            (Some(a), _) => Some(a.clone()),
            (None, Some(s)) => Some(TlsAcceptor::from_settings(s).map_err(invalid)?),
            (None, None) => None,
        };
        let connector = match (&self.dial_tls, &self.config.dial_tls) {
            (Some(c), _) => Some(c.clone()),
            (None, Some(s)) => Some(TlsConnector::from_settings(s).map_err(invalid)?),
            (None, None) => None,
        };
        Ok(crate::registry::PeerTls {
            acceptor,
            connector,
        })
    }

    /// Without the `tls` feature, TLS settings are an error, not ignored.
    #[cfg(not(feature = "tls"))]
    fn tls(&self) -> io::Result<crate::registry::PeerTls> {
        if self.config.listen_tls.is_some() || self.config.dial_tls.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "listen_tls / dial_tls need the `tls` feature",
            ));
        }
        Ok(crate::registry::PeerTls {})
    }
}

/// `"group"`, `"/group"` and `"/group/"` are the same prefix: `/group`
/// (Go's `Group("group")` serves `/group/...`).
fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("/{p}")
    }
}

/// Routes under a common prefix, with plugins of their own.
pub struct Group<'a> {
    builder: &'a mut PeerBuilder,
    prefix: String,
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Group<'_> {
    /// A plugin for the routes registered through this group from now on
    /// (and its nested groups and controllers): it sees only their
    /// packets, after the peer's plugins (the seed's
    /// `Group("pull", plugin)`).
    pub fn plugin(&mut self, plugin: impl Plugin) -> &mut Self {
        self.plugins.push(Arc::new(plugin));
        self
    }

    /// A nested group `prefix/sub`, with this group's plugins.
    pub fn group(&mut self, sub: &str) -> Group<'_> {
        Group {
            prefix: format!("{}{}", self.prefix, normalize_prefix(sub)),
            builder: self.builder,
            plugins: self.plugins.clone(),
        }
    }

    /// A pull route `prefix/<snake(name)>`.
    pub fn pull<F, Fut, A, R>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(PullCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Rerror>> + Send + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + 'static,
    {
        let path = format!("{}/{}", self.prefix, to_snake_case(name));
        self.builder
            .router
            .add(RouteKind::Pull, path, pull_handler(f), &self.plugins);
        self
    }

    /// A push route `prefix/<snake(name)>`.
    pub fn push<F, Fut, A>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(PushCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        A: DecodeBody + Send + 'static,
    {
        let path = format!("{}/{}", self.prefix, to_snake_case(name));
        self.builder
            .router
            .add(RouteKind::Push, path, push_handler(f), &self.plugins);
        self
    }

    /// A controller in this group: `prefix/<snake(type)>/<method>`.
    pub fn controller<C: Send + Sync + 'static>(&mut self, value: C) -> Controller<'_, C> {
        let name = to_snake_case(std::any::type_name::<C>());
        self.controller_named(&name, value)
    }

    /// A controller in this group at `prefix/<name>/<method>`.
    pub fn controller_named<C: Send + Sync + 'static>(
        &mut self,
        name: &str,
        value: C,
    ) -> Controller<'_, C> {
        Controller {
            prefix: format!("{}{}", self.prefix, normalize_prefix(name)),
            builder: self.builder,
            value: Arc::new(value),
            plugins: self.plugins.clone(),
        }
    }
}

/// A controller's routes: each method takes `Arc<Self>`, the context and
/// the argument.
pub struct Controller<'a, C> {
    builder: &'a mut PeerBuilder,
    prefix: String,
    value: Arc<C>,
    plugins: Vec<Arc<dyn Plugin>>,
}

impl<C: Send + Sync + 'static> Controller<'_, C> {
    /// A plugin for this controller's routes registered from now on (the
    /// seed's `Reg(controller, plugin)`).
    pub fn plugin(&mut self, plugin: impl Plugin) -> &mut Self {
        self.plugins.push(Arc::new(plugin));
        self
    }

    /// The pull route `prefix/<snake(name)>` served by `method`.
    pub fn pull<F, Fut, A, R>(&mut self, name: &str, method: F) -> &mut Self
    where
        F: Fn(Arc<C>, PullCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, Rerror>> + Send + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + 'static,
    {
        let c = self.value.clone();
        let path = format!("{}/{}", self.prefix, to_snake_case(name));
        let h = pull_handler(move |ctx, a| method(c.clone(), ctx, a));
        self.builder
            .router
            .add(RouteKind::Pull, path, h, &self.plugins);
        self
    }

    /// The push route `prefix/<snake(name)>` served by `method`.
    pub fn push<F, Fut, A>(&mut self, name: &str, method: F) -> &mut Self
    where
        F: Fn(Arc<C>, PushCtx, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        A: DecodeBody + Send + 'static,
    {
        let c = self.value.clone();
        let path = format!("{}/{}", self.prefix, to_snake_case(name));
        let h = push_handler(move |ctx, a| method(c.clone(), ctx, a));
        self.builder
            .router
            .add(RouteKind::Push, path, h, &self.plugins);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Cache<T>(T);

    impl<T: Send + Sync + 'static> Cache<T> {
        async fn get(self: Arc<Self>, _ctx: PullCtx, _key: String) -> Result<String, Rerror> {
            let _ = &self.0;
            Ok(String::new())
        }
    }

    #[test]
    fn generic_controller_is_named_without_its_arguments() {
        let mut b = PeerBuilder::new(PeerConfig::default());
        b.controller(Cache(Vec::<std::string::String>::new()))
            .pull("get", Cache::get);
        b.group("/v1")
            .controller(Cache(0u8))
            .pull("get", Cache::get);
        let routes: Vec<_> = b.router.routes().collect();
        assert_eq!(
            routes,
            [
                (RouteKind::Pull, "/cache/get"),
                (RouteKind::Pull, "/v1/cache/get")
            ]
        );
    }
}
