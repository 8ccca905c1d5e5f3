//! Plain functions as handlers: `Fn(ctx, arg) -> Result<reply, Rerror>`
//! for pulls, `Fn(ctx, arg)` for pushes. They are the builder's async
//! handlers with a future that is ready at once, so they finish in their
//! first poll, wherever the peer runs handlers.

use std::sync::Arc;

use teleport_core::{DecodeBody, Rerror};
use teleport_peer::{
    Controller, Group, IntoReply, PeerBuilder, PullCtx, PushCtx, UnknownPullCtx, UnknownPushCtx,
};

/// Synchronous routes on a [`PeerBuilder`].
///
/// ```
/// use teleport_mio::prelude::*;
/// use teleport_mio::{PeerBuilder, PeerConfig, PullCtx, PushCtx};
/// use teleport_core::Rerror;
///
/// let mut b = PeerBuilder::new(PeerConfig::default());
/// b.pull_sync("/add", |_ctx: PullCtx, v: Vec<i64>| Ok::<_, Rerror>(v.iter().sum::<i64>()));
/// b.push_sync("/log", |ctx: PushCtx, line: String| println!("{}: {line}", ctx.path()));
/// ```
pub trait SyncHandlers {
    /// Serves pulls to `path` with `f(ctx, arg) -> Result<reply, Rerror>`.
    fn pull_sync<F, A, R>(&mut self, path: &str, f: F) -> &mut Self
    where
        F: Fn(PullCtx, A) -> Result<R, Rerror> + Send + Sync + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + Send + 'static;

    /// Takes pushes to `path` with `f(ctx, arg)`.
    fn push_sync<F, A>(&mut self, path: &str, f: F) -> &mut Self
    where
        F: Fn(PushCtx, A) + Send + Sync + 'static,
        A: DecodeBody + Send + 'static;

    /// Answers pulls to paths with no route (else they get 404); the body
    /// is not decoded first (see [`UnknownPullCtx::bind`]).
    fn unknown_pull_sync<F, R>(&mut self, f: F) -> &mut Self
    where
        F: Fn(UnknownPullCtx) -> Result<R, Rerror> + Send + Sync + 'static,
        R: IntoReply + Send + 'static;

    /// Takes pushes to paths with no route (else they are dropped).
    fn unknown_push_sync<F>(&mut self, f: F) -> &mut Self
    where
        F: Fn(UnknownPushCtx) + Send + Sync + 'static;
}

impl SyncHandlers for PeerBuilder {
    fn pull_sync<F, A, R>(&mut self, path: &str, f: F) -> &mut Self
    where
        F: Fn(PullCtx, A) -> Result<R, Rerror> + Send + Sync + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + Send + 'static,
    {
        self.pull(path, move |ctx, a| std::future::ready(f(ctx, a)))
    }

    fn push_sync<F, A>(&mut self, path: &str, f: F) -> &mut Self
    where
        F: Fn(PushCtx, A) + Send + Sync + 'static,
        A: DecodeBody + Send + 'static,
    {
        self.push(path, move |ctx, a| {
            f(ctx, a);
            std::future::ready(())
        })
    }

    fn unknown_pull_sync<F, R>(&mut self, f: F) -> &mut Self
    where
        F: Fn(UnknownPullCtx) -> Result<R, Rerror> + Send + Sync + 'static,
        R: IntoReply + Send + 'static,
    {
        self.unknown_pull(move |ctx| std::future::ready(f(ctx)))
    }

    fn unknown_push_sync<F>(&mut self, f: F) -> &mut Self
    where
        F: Fn(UnknownPushCtx) + Send + Sync + 'static,
    {
        self.unknown_push(move |ctx| {
            f(ctx);
            std::future::ready(())
        })
    }
}

/// Synchronous routes in a [`Group`]: `prefix/<snake(name)>`.
pub trait SyncGroup {
    /// A pull route served by `f(ctx, arg) -> Result<reply, Rerror>`.
    fn pull_sync<F, A, R>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(PullCtx, A) -> Result<R, Rerror> + Send + Sync + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + Send + 'static;

    /// A push route served by `f(ctx, arg)`.
    fn push_sync<F, A>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(PushCtx, A) + Send + Sync + 'static,
        A: DecodeBody + Send + 'static;
}

impl SyncGroup for Group<'_> {
    fn pull_sync<F, A, R>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(PullCtx, A) -> Result<R, Rerror> + Send + Sync + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + Send + 'static,
    {
        self.pull(name, move |ctx, a| std::future::ready(f(ctx, a)))
    }

    fn push_sync<F, A>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(PushCtx, A) + Send + Sync + 'static,
        A: DecodeBody + Send + 'static,
    {
        self.push(name, move |ctx, a| {
            f(ctx, a);
            std::future::ready(())
        })
    }
}

/// Synchronous methods of a [`Controller`]: each takes `Arc<Self>`, the
/// context and the argument.
pub trait SyncController<C> {
    /// The pull route `prefix/<snake(name)>` served by `method`.
    fn pull_sync<F, A, R>(&mut self, name: &str, method: F) -> &mut Self
    where
        F: Fn(Arc<C>, PullCtx, A) -> Result<R, Rerror> + Send + Sync + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + Send + 'static;

    /// The push route `prefix/<snake(name)>` served by `method`.
    fn push_sync<F, A>(&mut self, name: &str, method: F) -> &mut Self
    where
        F: Fn(Arc<C>, PushCtx, A) + Send + Sync + 'static,
        A: DecodeBody + Send + 'static;
}

impl<C: Send + Sync + 'static> SyncController<C> for Controller<'_, C> {
    fn pull_sync<F, A, R>(&mut self, name: &str, method: F) -> &mut Self
    where
        F: Fn(Arc<C>, PullCtx, A) -> Result<R, Rerror> + Send + Sync + 'static,
        A: DecodeBody + Send + 'static,
        R: IntoReply + Send + 'static,
    {
        self.pull(name, move |c, ctx, a| std::future::ready(method(c, ctx, a)))
    }

    fn push_sync<F, A>(&mut self, name: &str, method: F) -> &mut Self
    where
        F: Fn(Arc<C>, PushCtx, A) + Send + Sync + 'static,
        A: DecodeBody + Send + 'static,
    {
        self.push(name, move |c, ctx, a| {
            method(c, ctx, a);
            std::future::ready(())
        })
    }
}
