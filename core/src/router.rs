//! The router: maps a URI path to a handler of the adapter's type `H`.
//!
//! Pull and push routes are kept apart; each side has an optional fallback
//! for unknown paths. A pull to an unknown path with no fallback is answered
//! by the session with Go's 404 `Not Found`; an unknown push is dropped and
//! logged (SPEC §7, §9).
//!
//! # Route names
//!
//! Go teleport names a controller's routes `/<snake(struct)>/<snake(method)>`
//! (`Home.TestMethod` → `/home/test_method`), optionally under a group
//! prefix. [`to_snake_case`] applies the same rule to Rust names: a struct's
//! `CamelCase` becomes `camel_case`, and method names, already snake case in
//! Rust, are kept. So a controller struct `Home` with a method `test` serves
//! `/home/test` for Go and Rust peers alike.
//!
//! ```
//! use teleport_core::Router;
//! let mut r: Router<&str> = Router::new();
//! r.group("/v1").controller("MathService").pull("add", "add-handler");
//! r.push("/status", "status-handler");
//! assert_eq!(r.route_pull(b"/v1/math_service/add"), Some(&"add-handler"));
//! assert_eq!(r.route_pull(b"/v1/nope"), None);
//! r.set_unknown_pull("fallback");
//! assert_eq!(r.route_pull(b"/v1/nope"), Some(&"fallback"));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::plugin::{Plugin, Plugins};

/// Whether a route answers pulls or takes pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// Request/reply.
    Pull,
    /// One-way.
    Push,
}

/// Paths to handlers. The keys are the application's own routes and a
/// lookup never inserts, so a peer's paths cannot crowd a bucket: a fast
/// unkeyed hash is safe here.
type Routes<H> = HashMap<Vec<u8>, Route<H>, rustc_hash::FxBuildHasher>;

/// One route: its handler and the plugins of its groups and its own.
#[derive(Clone)]
struct Route<H> {
    handler: H,
    plugins: Option<Arc<Plugins>>,
}

/// What a path routes to: the handler, and the plugins that run for the
/// packets of this route only (its groups', outermost first, then its own).
#[derive(Debug)]
pub struct Routed<'a, H> {
    /// The handler.
    pub handler: &'a H,
    /// The route's plugins, if it has any.
    pub plugins: Option<&'a Arc<Plugins>>,
}

/// URI paths to handlers.
#[derive(Clone)]
pub struct Router<H> {
    pulls: Routes<H>,
    pushes: Routes<H>,
    unknown_pull: Option<H>,
    unknown_push: Option<H>,
    registered: Vec<(RouteKind, String)>,
}

impl<H> Default for Router<H> {
    fn default() -> Self {
        Router {
            pulls: Routes::default(),
            pushes: Routes::default(),
            unknown_pull: None,
            unknown_push: None,
            registered: Vec::new(),
        }
    }
}

impl<H> Router<H> {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a pull handler at `path`; replaces one already there
    /// (the route keeps its place in [`Router::routes`]).
    pub fn pull(&mut self, path: &str, handler: H) -> &mut Self {
        self.add(RouteKind::Pull, path.to_string(), handler, &[])
    }

    /// Registers a push handler at `path`; replaces one already there
    /// (the route keeps its place in [`Router::routes`]).
    pub fn push(&mut self, path: &str, handler: H) -> &mut Self {
        self.add(RouteKind::Push, path.to_string(), handler, &[])
    }

    /// Registers a route with plugins of its own (see [`Group::plugin`]);
    /// replaces one already there.
    pub fn add(
        &mut self,
        kind: RouteKind,
        path: String,
        handler: H,
        plugins: &[Arc<dyn Plugin>],
    ) -> &mut Self {
        let map = match kind {
            RouteKind::Pull => &mut self.pulls,
            RouteKind::Push => &mut self.pushes,
        };
        let plugins = (!plugins.is_empty()).then(|| {
            let mut list = Plugins::new();
            for p in plugins {
                list.add(p.clone());
            }
            Arc::new(list)
        });
        // A replaced route keeps its first place and is listed once, so
        // plugins' `after_register` sees each path once.
        let route = Route { handler, plugins };
        if map.insert(path.clone().into_bytes(), route).is_none() {
            self.registered.push((kind, path));
        }
        self
    }

    /// Adds a plugin to the route at `path`, after its groups' and any
    /// added before; `false` if there is no such route.
    pub fn add_route_plugin(
        &mut self,
        kind: RouteKind,
        path: &str,
        plugin: Arc<dyn Plugin>,
    ) -> bool {
        let map = match kind {
            RouteKind::Pull => &mut self.pulls,
            RouteKind::Push => &mut self.pushes,
        };
        let Some(route) = map.get_mut(path.as_bytes()) else {
            return false;
        };
        let mut list = route.plugins.as_deref().cloned().unwrap_or_default();
        list.add(plugin);
        route.plugins = Some(Arc::new(list));
        true
    }

    /// Routes registered under `prefix` (`"/v1"`; no trailing slash).
    pub fn group(&mut self, prefix: &str) -> Group<'_, H> {
        Group {
            router: self,
            prefix: prefix.trim_end_matches('/').to_string(),
            plugins: Vec::new(),
        }
    }

    /// Routes of a controller at the root: `/<snake(name)>/<method>`.
    pub fn controller(&mut self, name: &str) -> Group<'_, H> {
        let prefix = format!("/{}", to_snake_case(name));
        Group {
            router: self,
            prefix,
            plugins: Vec::new(),
        }
    }

    /// The handler for pulls to paths with no route.
    pub fn set_unknown_pull(&mut self, handler: H) -> &mut Self {
        self.unknown_pull = Some(handler);
        self
    }

    /// The handler for pushes to paths with no route.
    pub fn set_unknown_push(&mut self, handler: H) -> &mut Self {
        self.unknown_push = Some(handler);
        self
    }

    /// The pull handler for a (decoded) path, else the unknown-pull one.
    pub fn route_pull(&self, path: &[u8]) -> Option<&H> {
        self.route(RouteKind::Pull, path).map(|r| r.handler)
    }

    /// The push handler for a (decoded) path, else the unknown-push one.
    pub fn route_push(&self, path: &[u8]) -> Option<&H> {
        self.route(RouteKind::Push, path).map(|r| r.handler)
    }

    /// The handler and route plugins for a (decoded) path, else the
    /// fallback's (which has no route plugins).
    pub fn route(&self, kind: RouteKind, path: &[u8]) -> Option<Routed<'_, H>> {
        let (map, unknown) = match kind {
            RouteKind::Pull => (&self.pulls, &self.unknown_pull),
            RouteKind::Push => (&self.pushes, &self.unknown_push),
        };
        match map.get(path) {
            Some(r) => Some(Routed {
                handler: &r.handler,
                plugins: r.plugins.as_ref(),
            }),
            None => unknown.as_ref().map(|handler| Routed {
                handler,
                plugins: None,
            }),
        }
    }

    /// Every registered route, in registration order (for logs and for
    /// plugins' `after_register`).
    pub fn routes(&self) -> impl Iterator<Item = (RouteKind, &str)> {
        self.registered.iter().map(|(k, p)| (*k, p.as_str()))
    }
}

impl<H> fmt::Debug for Router<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.registered)
            .field("unknown_pull", &self.unknown_pull.is_some())
            .field("unknown_push", &self.unknown_push.is_some())
            .finish()
    }
}

/// Routes under a common prefix, with plugins of their own.
pub struct Group<'a, H> {
    router: &'a mut Router<H>,
    prefix: String,
    plugins: Vec<Arc<dyn Plugin>>,
}

impl<H> Group<'_, H> {
    /// A nested group: `prefix/sub`, with this group's plugins.
    pub fn group(&mut self, sub: &str) -> Group<'_, H> {
        let prefix = format!("{}/{}", self.prefix, sub.trim_matches('/'));
        Group {
            router: self.router,
            prefix,
            plugins: self.plugins.clone(),
        }
    }

    /// A controller inside this group: `prefix/<snake(name)>`.
    pub fn controller(&mut self, name: &str) -> Group<'_, H> {
        let prefix = format!("{}/{}", self.prefix, to_snake_case(name));
        Group {
            router: self.router,
            prefix,
            plugins: self.plugins.clone(),
        }
    }

    /// A plugin for the routes registered through this group from now on
    /// (and its nested groups): it sees only their packets, after the
    /// peer's plugins and the outer groups'.
    pub fn plugin(&mut self, plugin: Arc<dyn Plugin>) -> &mut Self {
        self.plugins.push(plugin);
        self
    }

    /// A pull route `prefix/<snake(name)>`.
    pub fn pull(&mut self, name: &str, handler: H) -> &mut Self {
        let path = format!("{}/{}", self.prefix, to_snake_case(name));
        self.router
            .add(RouteKind::Pull, path, handler, &self.plugins);
        self
    }

    /// A push route `prefix/<snake(name)>`.
    pub fn push(&mut self, name: &str, handler: H) -> &mut Self {
        let path = format!("{}/{}", self.prefix, to_snake_case(name));
        self.router
            .add(RouteKind::Push, path, handler, &self.plugins);
        self
    }

    /// The group's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Go teleport's route naming: `CamelCase` → `camel_case`; an upper-case
/// run stays one word (`HTTPServer` → `http_server`); names that are
/// already snake case (Rust methods) are unchanged; a Rust path such as
/// `my_mod::Home` uses its last segment, and generic arguments are dropped
/// first (`my_mod::Home<other::Bar>` → `home`).
pub fn to_snake_case(name: &str) -> String {
    let name = name.split('<').next().unwrap_or(name);
    let name = name.rsplit("::").next().unwrap_or(name);
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
            let next = chars.get(i + 1).copied();
            let boundary = match prev {
                None | Some('_') => false,
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                Some(_) => false,
            };
            if boundary {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes the `%XX` escapes of a URI path for routing, as Go's `url.Parse`
/// does; a `%` not followed by two hex digits is an error naming the bad
/// escape (Go answers 400 `Bad Packet`; vector `bad_uri_escape`).
pub fn decode_path(path: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    if !path.contains(&b'%') {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        if b == b'%' {
            match (
                path.get(i + 1).copied().and_then(hex),
                path.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => {
                    let end = (i + 3).min(path.len());
                    return Err(format!(
                        "invalid URL escape {:?}",
                        String::from_utf8_lossy(&path[i..end])
                    ));
                }
            }
        }
        out.push(b);
        i += 1;
    }
    Ok(std::borrow::Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_like_go() {
        for (from, to) in [
            ("Home", "home"),
            ("TestMethod", "test_method"),
            ("XxZz", "xx_zz"),
            ("HTTPServer", "http_server"),
            ("already_snake", "already_snake"),
            ("crate::ctrl::MathService", "math_service"),
            ("V2Api", "v2_api"),
        ] {
            assert_eq!(to_snake_case(from), to, "{from}");
        }
    }

    #[test]
    fn snake_case_drops_generic_arguments() {
        for (from, to) in [
            ("my::Foo<other::Bar>", "foo"),
            (
                "my::MathService<other::Bar, std::vec::Vec<u8>>",
                "math_service",
            ),
            ("Home<u8>", "home"),
        ] {
            assert_eq!(to_snake_case(from), to, "{from}");
        }
        struct Wrap<T>(T);
        let name = std::any::type_name::<Wrap<std::string::String>>();
        assert_eq!(to_snake_case(name), "wrap", "{name}");
    }

    #[test]
    fn replacing_a_route_registers_it_once() {
        let mut r = Router::new();
        r.pull("/a", 1).push("/a", 2).pull("/b", 3);
        r.pull("/a", 4).push("/a", 5);
        assert_eq!(r.route_pull(b"/a"), Some(&4));
        assert_eq!(r.route_push(b"/a"), Some(&5));
        let routes: Vec<_> = r.routes().collect();
        assert_eq!(
            routes,
            [
                (RouteKind::Pull, "/a"),
                (RouteKind::Push, "/a"),
                (RouteKind::Pull, "/b"),
            ]
        );
    }

    #[test]
    fn pull_and_push_routes_are_apart() {
        let mut r = Router::new();
        r.pull("/a", 1).push("/a", 2);
        r.controller("Home").pull("test", 3).push("Note", 4);
        assert_eq!(r.route_pull(b"/a"), Some(&1));
        assert_eq!(r.route_push(b"/a"), Some(&2));
        assert_eq!(r.route_pull(b"/home/test"), Some(&3));
        assert_eq!(r.route_push(b"/home/note"), Some(&4));
        assert_eq!(r.route_push(b"/home/test"), None);
        r.set_unknown_push(9);
        assert_eq!(r.route_push(b"/home/test"), Some(&9));
        assert_eq!(r.routes().count(), 4);
    }

    #[test]
    fn paths_are_unescaped_for_routing() {
        assert_eq!(&*decode_path(b"/a%2Fb").unwrap(), b"/a/b");
        assert!(decode_path(b"/echo/json%zz").unwrap_err().contains("%zz"));
        assert!(decode_path(b"/x%4").is_err());
    }
}
