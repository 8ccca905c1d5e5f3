//! teleport for Rust: a socket framework for peer-to-peer messaging, RPC,
//! gateways, micro-services, push and game services, wire-compatible with
//! Go teleport v3.
//!
//! Everything a program needs is here, at `teleport::` or in
//! [`teleport::prelude`](prelude); the crates under it (`teleport-core`,
//! `teleport-peer`, one per runtime) are its parts, not something to
//! import.
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use teleport::prelude::*;
//!
//! // A server: one pull route.
//! let mut b = PeerBuilder::new(PeerConfig::default());
//! b.pull("/echo", |_ctx: PullCtx, s: String| async move { Ok::<_, Rerror>(s) });
//! let server = Peer::from_builder(b)?;
//! let addr = server.spawn_listener().await?; // 127.0.0.1, a free port
//!
//! // A client: dial, pull, read the reply.
//! let client = Peer::new(PeerConfig::default())?;
//! let session = client.dial(&addr.to_string()).await?;
//! let reply = session.pull::<_, String>("/echo", "hi").await?;
//! assert_eq!(reply.value, "hi");
//!
//! client.shutdown(Duration::from_secs(1)).await;
//! server.shutdown(Duration::from_secs(1)).await;
//! # Ok(()) }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
//!
//! # Concepts
//!
//! - A **peer** ([`Peer`]) is one endpoint: it listens, dials, or both.
//!   Server and client are the same type; which one dialed matters only
//!   for redialing. Routes, plugins, codecs and settings are fixed when
//!   the peer is built ([`PeerBuilder`], [`PeerConfig`]).
//! - A **session** ([`Session`]) is one connection between two peers. Its
//!   handle is cheap to clone; either side may call the other over it.
//! - A session carries three kinds of **packet**: a **pull** asks and
//!   waits for one **reply** (request/response); a **push** is one-way and
//!   gets no answer. Every packet has a sequence number, a type, a **URI**
//!   (`/path?query`), **meta** and a body.
//! - **Meta** ([`Meta`]) is a per-packet set of `key=value` pairs in URL
//!   query form, for what is about the call rather than its argument:
//!   credentials, trace ids, a caller's name. The **query** is the URI's
//!   own `?a=1&b=2`, part of the route the caller names. A handler reads
//!   both ([`PullCtx::meta`], [`PullCtx::query`]); a reply can carry meta
//!   back ([`Answer::meta`]).
//! - The body is encoded by a **codec** chosen per packet and named in the
//!   packet by one byte ([`CodecId`]): JSON (`'j'`, the default), protobuf
//!   (`'p'`, for [`prost`](https://docs.rs/prost) messages wrapped in
//!   [`Protobuf`]), plain strings (`'s'`). Add your own with
//!   [`PeerBuilder::codec`]. A reply is encoded in its pull's codec.
//! - The **xfer pipe** ([`XferPipe`]) is a list of filters applied to the
//!   encoded body, also per packet: gzip (`'g'`, [`Call::gzip`]) is built
//!   in; add others with [`PeerBuilder::xfer_filter`].
//! - The **proto** is the frame format on the wire; the default is Go
//!   teleport v3's, byte for byte. A peer can speak another one
//!   ([`PeerBuilder::proto`], [`MakeProto`]).
//! - The **router** maps a pull's or push's path to its handler. Routes are
//!   closures ([`PeerBuilder::pull`], [`PeerBuilder::push`]), grouped under
//!   a prefix ([`PeerBuilder::group`]), or methods of a **controller**
//!   ([`PeerBuilder::controller_named`]: `/home/test` is method `test` of
//!   controller `home`). A path with no route goes to the unknown handler
//!   ([`PeerBuilder::unknown_pull`]) or is answered with 404.
//! - A **plugin** ([`Plugin`]) hooks every step of a session: dial, accept,
//!   reading and writing each packet, the end of each call, the close. It
//!   may change a packet or stop it with an error. Plugins belong to the
//!   peer, to a group or to one route; [`plugin`] says in which order they
//!   run, and holds the built-in ones (auth, heartbeat, stats).
//! - A failed call is a [`Rerror`]: a code, a message and a detail, the
//!   same on the wire as in Go. Codes below 200 are the framework's
//!   ([`Rerror::CODE_CONN_CLOSED`] 102, [`Rerror::CODE_WRITE_FAILED`] 104,
//!   [`Rerror::CODE_DIAL_FAILED`] 105); the others follow HTTP:
//!   400 bad packet or argument, 404 no such route, 408 timeout,
//!   500 handler failed, 501 not implemented, 503 backpressure. A handler
//!   returns its own codes with [`Rerror::new`].
//!
//! # A server and a client
//!
//! A controller, a group with a plugin, a push back to the caller, meta on
//! the pull and on the reply, and a push route on the client:
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use teleport::prelude::*;
//! use teleport::plugin::Stats;
//!
//! struct Home;
//!
//! impl Home {
//!     async fn test(self: Arc<Self>, ctx: PullCtx, args: Vec<i32>) -> Result<Answer<i32>, Rerror> {
//!         let who = ctx.meta().get("author").unwrap_or_default().to_string();
//!         ctx.session().push("/push/note", &format!("hello, {who}")).await?;
//!         Ok(Answer::new(args.iter().sum()).meta("served_by", "home"))
//!     }
//! }
//!
//! let mut b = PeerBuilder::new(PeerConfig::default());
//! let mut group = b.group("group");
//! group.plugin(Stats::new()); // sees only /group/... packets
//! group.controller_named("home", Home).pull("test", Home::test);
//! let server = Peer::from_builder(b)?;
//! let addr = server.spawn_listener().await?;
//!
//! let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
//! let mut b = PeerBuilder::new(PeerConfig::default());
//! b.push("/push/note", move |_ctx: PushCtx, note: String| {
//!     let tx = tx.clone();
//!     async move {
//!         let _ = tx.send(note);
//!     }
//! });
//! let client = Peer::from_builder(b)?;
//! let session = client.dial(&addr.to_string()).await?;
//! let reply = session
//!     .call("/group/home/test?peer_id=110")
//!     .meta("author", "henrylee2cn")
//!     .gzip()
//!     .pull::<_, i32>(&vec![1, 2, 3])
//!     .await?;
//! assert_eq!(reply.value, 6);
//! assert_eq!(reply.meta.get("served_by").as_deref(), Some("home"));
//! assert_eq!(notes.recv().await.as_deref(), Some("hello, henrylee2cn"));
//!
//! client.shutdown(Duration::from_secs(1)).await;
//! server.shutdown(Duration::from_secs(1)).await;
//! # Ok(()) }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
//!
//! A handler reaches its peer through [`PullCtx::peer`]: the sessions it
//! has, one by the name a client gave it ([`Session::set_id`],
//! [`PeerRef::session_by_id`]), and [`PeerRef::broadcast`], a push to every
//! session that never waits on a slow one.
//!
//! # Picking a runtime
//!
//! One feature per runtime; the same routes, handlers, plugins and
//! settings serve all of them.
//!
//! | feature | module | runtime |
//! |---|---|---|
//! | `tokio` (default) | [`runtime::tokio`] | tokio |
//! | `async-std` | [`runtime::async_std`] | async-std (sockets and timers on async-io) |
//! | `smol` | [`runtime::smol`] | smol (the same adapter as `async-std`) |
//! | `mio` | [`runtime::mio`] | none: a blocking `mio::Poll` loop, handlers on a thread pool |
//!
//! [`Peer`], [`Session`] and [`Call`] at the top level (and in the prelude)
//! are those of the first runtime enabled in that order, so a program
//! written for one runtime changes only its feature:
//!
//! ```toml
//! teleport = { version = "0.1", default-features = false, features = ["smol"] }
//! ```
//!
//! With several enabled, name the others by module
//! (`teleport::runtime::smol::Peer`). With `mio` the calls block instead of
//! being `async`, and sync handlers come from the prelude's
//! `SyncHandlers`, `SyncController` and `SyncGroup`.
//!
//! # Settings, and loading them from a file
//!
//! [`PeerConfig`] holds the Go peer's settings under snake-case names, and
//! the limits that keep a peer alive whatever the other side sends
//! (`read_limit`, `max_incoming_pulls`, `max_incoming_bytes`,
//! `max_queued_bytes`, `frame_timeout`). It loads from TOML or YAML, the
//! format picked by the file's extension; a bad value is an error naming
//! the setting ([`ConfigError`]):
//!
//! ```
//! use teleport::PeerConfig;
//!
//! let cfg = PeerConfig::from_toml(
//!     r#"
//!     listen_address = "127.0.0.1:9090"
//!     default_body_codec = "json"
//!     slow_call_threshold = "500ms"
//!     print_body = true
//!     count_time = true
//!     redial_times = 3
//!     "#,
//! )?;
//! assert_eq!(cfg.redial_times, 3);
//! // Or: PeerConfig::from_file("peer.toml")? / ("peer.yaml")?
//! # Ok::<(), teleport::ConfigError>(())
//! ```
//!
//! A dialed session whose connection breaks redials in the background, up
//! to `redial_times` times with a growing wait from `redial_interval`:
//! pulls made meanwhile wait for the new connection, and a client that
//! only receives pushes reconnects too. [`Session::closed`] resolves when
//! the session has ended for good, with the [`CloseReason`].
//!
//! # Logs
//!
//! Logs go through [`tracing`](https://docs.rs/tracing), every target under
//! `teleport` (`teleport::session`, `teleport::peer`, `teleport::plugin`,
//! one per runtime adapter), so `RUST_LOG=teleport=debug` shows them all.
//! With `print_body` a packet's log line shows its body; with `count_time`
//! it shows how long the call took; a call slower than
//! `slow_call_threshold` logs a warning.
//!
//! # Traces
//!
//! Every pull and push has a span (target `teleport::call`, DEBUG:
//! `RUST_LOG=info,teleport::call=debug`) on each side, with its route, seq, peer, codec, status, duration, direction and
//! trace id, and the W3C trace context travels in the `traceparent` meta:
//! a call that a handler makes while answering another is in the caller's
//! trace, across peers and runtimes (and through Go peers, which pass meta
//! on). With no subscriber that wants those spans they cost nothing worth
//! measuring. With the `otel` feature and a `tracing-opentelemetry` layer
//! the spans are exported to OpenTelemetry in the trace the wire names
//! (`examples/otel.rs`). [`trace`] has the details; [`TraceContext`] is
//! the context itself.
//!
//! # Shutdown
//!
//! [`Peer::shutdown`] stops accepting, closes every session gracefully
//! (pulls already accepted are answered and their replies written, pending
//! pulls of ours get their replies), and after the timeout cancels what is
//! left; its [`ShutdownReport`] says what that was. [`Session::close`] does
//! the same for one session. Nothing a peer queued before it decided to
//! close is dropped: it reaches the other side, and the other side hands it
//! to its callers before it reports the session closed.
//!
//! To stop on SIGINT or SIGTERM, as the seed's `GraceSignal` and
//! `SetShutdown(timeout, firstSweep, beforeExiting)` do: describe the stop
//! with [`Grace`], install its handlers with [`Grace::listen`], and wait in
//! [`grace_signal`] (each runtime module has its own), which runs the
//! first sweep, every peer's shutdown and the last hook, then returns a
//! [`GraceReport`] (it does not end the process: `main` returns). A second
//! signal during the stop ends the process at once.
//!
//! A peer's shutdown tells each client to move before it closes: a push
//! to the reserved route [`GOING_AWAY_URI`]. A Rust
//! client that gets it makes no new call over that connection: the
//! session dials the same address again at once (whatever `redial_times`
//! says, at least once) and the calls made from then on go out over the
//! new connection, while those already made finish on the old one (the
//! server still serves what was sent before the client read the notice),
//! which closes after its last answer. While it does, the client's peer
//! lists it as a session of its own (see [`Session::id`]). A client that
//! does not know the route (Go teleport) drops the push, and is served
//! until the shutdown's deadline, then closed. A pull still running at
//! the deadline is answered with an error (102) that says it was cut.
//!
//! # Graceful restart, systemd
//!
//! SIGHUP or SIGUSR2 restarts: [`grace_signal`] starts the successor (this
//! program again, or what [`Grace::restart_with`] names) and hands it the
//! peers' listening sockets, waits until it says it is ready (its own
//! `grace_signal` does, when it starts waiting), then shuts down as on
//! SIGTERM. The sockets never close, so no dial is refused, and clients
//! move to the successor without a failed call (`cargo run --example
//! restart` shows it under load). A listener finds a socket passed in
//! before it binds (see [`handoff`]): also systemd's socket activation
//! (`LISTEN_FDS`), for tcp, unix and unixpacket; readiness goes to
//! systemd too (`sd_notify` `READY=1`).
//!
//! ```no_run
//! # #[cfg(all(unix, feature = "tokio"))]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use teleport::prelude::*;
//!
//! let peer = Peer::new(PeerConfig::default())?;
//! let signals = Grace::new(Duration::from_secs(20))
//!     .first_sweep(|| Ok(())) // e.g. leave the service registry
//!     .before_exiting(|| Ok(()))
//!     .listen()?;
//! peer.spawn_listener().await?;
//! let report = grace_signal(signals, &[&peer]).await;
//! println!("{:?}: {:?}", report.signal, report.peers);
//! # Ok(()) }
//! ```
//!
//! # TLS (feature `tls`)
//!
//! rustls with the ring provider. Set `listen_tls` and `dial_tls` in the
//! config (certificate and key files, CA, client certificates), or hand
//! rustls configs to [`PeerBuilder::listen_tls`] and
//! [`PeerBuilder::dial_tls`]; the [`tls`] module builds them.
//!
//! ```no_run
//! # #[cfg(all(feature = "tls", feature = "tokio"))]
//! # async fn demo(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! use teleport::prelude::*;
//! use teleport::tls::{TlsAcceptor, TlsConnector};
//!
//! // cert, key, ca: PEM bytes (a chain, its key, the CA that signed it)
//! let mut b = PeerBuilder::new(PeerConfig::default());
//! b.listen_tls(TlsAcceptor::from_pem(cert, key)?);
//! b.pull("/echo", |_ctx: PullCtx, s: String| async move { Ok::<_, Rerror>(s) });
//! let server = Peer::from_builder(b)?;
//! let addr = server.spawn_listener().await?;
//!
//! let mut b = PeerBuilder::new(PeerConfig::default());
//! b.dial_tls(TlsConnector::from_ca_pem(ca)?); // checks the chain and the name dialed
//! let session = Peer::from_builder(b)?.dial(&addr.to_string()).await?;
//! session.pull::<_, String>("/echo", "over TLS").await?;
//! # Ok(()) }
//! ```
//!
//! # Checked arguments (feature `validate`)
//!
//! The seed's "binder": declare rules on an argument type with
//! [garde](https://docs.rs/garde)'s derive (add `garde` to your
//! dependencies) and take it as `Valid<T>`; a body that breaks a rule is
//! answered with 400 `Invalid Argument`, naming the field, and the handler
//! does not run. See [`validate`].
//!
//! # From Go teleport
//!
//! | Go teleport v3 | teleport for Rust |
//! |---|---|
//! | `tp.NewPeer(cfg)` | [`Peer::new`], or [`Peer::from_builder`] with routes |
//! | `tp.PeerConfig{...}` | [`PeerConfig`] (`SlowCometDuration` → `slow_call_threshold`, `DefaultBodyCodec` → `default_body_codec`, `RedialTimes` → `redial_times`, `ListenAddress` → `listen_address`, ...) |
//! | `peer.Listen()` | [`Peer::listen`] (blocks); [`Peer::spawn_listener`] serves in the background and returns the address |
//! | `peer.Dial(addr)` | [`Peer::dial`] (`dial_with` for a proto or TLS of its own) |
//! | `peer.ServeConn(conn)` | [`Peer::serve_conn`] |
//! | `peer.Close()` | [`Peer::shutdown`] |
//! | `tp.SetShutdown(timeout, firstSweep, beforeExiting)` | [`Grace::new`]`(timeout).first_sweep(f).before_exiting(g)`; the timeout alone: [`Peer::shutdown`]`(timeout)` |
//! | `peer.RangeSession`, `GetSession` | [`Peer::sessions`], [`Peer::session`]; in a handler [`PeerRef::sessions`], [`PeerRef::session_by_id`] |
//! | `peer.PullRouter.Reg(new(Home))` | [`PeerBuilder::controller_named`]`("home", Home).pull("test", Home::test)` |
//! | `peer.PullRouter.RegFunc(f)` | [`PeerBuilder::pull`]`("/f", f)` |
//! | `peer.PushRouter.Reg(..)` | [`PeerBuilder::push`], [`Controller::push`] |
//! | `Router.Group("pull", plugin)` | [`PeerBuilder::group`]`("pull")` then [`Group::plugin`] |
//! | `Router.SetUnknown(f)` | [`PeerBuilder::unknown_pull`], [`PeerBuilder::unknown_push`] |
//! | `tp.PullCtx` (embedded) | the [`PullCtx`] argument of a handler |
//! | `ctx.Session()`, `Query()`, `CopyMeta()`, `Ip()` | [`PullCtx::session`], [`PullCtx::query`], [`PullCtx::meta`], [`PullCtx::remote_addr`] |
//! | `ctx.Bind(&v)` in an unknown handler | [`UnknownPullCtx::bind`]`::<T>()`, which returns `(T, CodecId)` |
//! | a handler's `(result, *tp.Rerror)` | `Result<T, Rerror>`, or `Result<`[`Answer`]`<T>, Rerror>` to set the reply's meta or codec |
//! | `sess.Pull(uri, arg, &reply, opts...)` | [`Session::pull`], or [`Session::call`] with options, then `.pull(arg)` giving a [`Reply`] |
//! | `sess.Push(uri, arg)` | [`Session::push`] |
//! | `socket.WithSetMeta`, `WithAddMeta` | [`Call::set_meta`], [`Call::add_meta`] |
//! | `socket.WithXferPipe('g')` | [`Call::gzip`], [`Call::xfer`] |
//! | `socket.WithBodyCodec(id)` | [`Call::codec`] |
//! | `sess.SetId(id)`, `sess.Id()` | [`Session::set_id`], [`Session::custom_id`] |
//! | `sess.Close()` | [`Session::close`] |
//! | `tp.NewRerror(code, msg, reason)` | [`Rerror::new`]`(code, msg).with_detail(reason)` |
//! | `tp.Plugin` and its `PostDial`, `PreReadHeader`, ... hooks | [`Plugin`] (`after_dial`, `after_read_header`, ...) |
//! | `tp.Infof`, `tp.Debugf` | `tracing::info!`, `tracing::debug!` |
//! | `tp.GraceSignal()` | [`Grace::listen`] then [`grace_signal`]`(signals, &[&peer])` (SIGINT, SIGTERM stop; SIGHUP, SIGUSR2 restart with the listeners handed to a successor) |
//! | `protoFunc` (a custom proto), `tp.SetDefaultProtoFunc(f)` | [`MakeProto`], [`PeerBuilder::proto`] for the peer's default |
//! | `peer.Listen(protoFunc)`, `peer.Dial(addr, protoFunc)`, `peer.ServeConn(conn, protoFunc)` | `.proto(..)` of [`ListenOptions`], [`DialOptions`], [`ServeOptions`], given to `spawn_listener_with`, `dial_with`, `serve_conn` |
//! | `peer.DialContext(ctx, addr)` | [`Peer::dial`] under your own timeout or cancellation (drop the future); `dial_timeout` in [`PeerConfig`] |
//! | `tp.Proto` (`Version`, `Pack`, `Unpack`) | [`Proto`] (`id`, `encode`, `decode`) |
//! | `tp.Packet`, its `Seq`, `Ptype`, `Uri`, `Meta`, `BodyCodec`, `XferPipe`, `Body` | [`Packet`] and its fields `seq`, `ptype`, `uri`, `meta`, `body_codec`, `xfer`, `body` |
//! | `codec.Codec`, `codec.Reg(c)` | [`Codec`], [`PeerBuilder::codec`] |
//! | `xfer.XferFilter` (`Id`, `OnPack`, `OnUnpack`), `xfer.Reg(f)` | [`XferFilter`] (`id`, `encode`, `decode`), [`PeerBuilder::xfer_filter`] |
//! | `xfer.XferPipe` | [`XferPipe`] |
//! | `tp.SetReadLimit(n)` | `read_limit` in [`PeerConfig`] (16 MiB by default; Go's is 4 GiB) |
//! | `PeerConfig.PrintBody`, `CountTime`, `Network` | `print_body`, `count_time`, `network` ([`Network`]: `tcp`, `tcp4`, `tcp6`, `unix`, `unixpacket`) |
//! | `tp.PushCtx` | the [`PushCtx`] argument of a push handler |
//! | `tp.UnknownPullCtx`, `UnknownPushCtx`, `SetUnknownPull`/`SetUnknownPush` handlers | [`UnknownPullCtx`], [`UnknownPushCtx`], given to [`PeerBuilder::unknown_pull`], [`PeerBuilder::unknown_push`] |
//! | `Router.Reg(ctrl, plugin)`, `RegFunc(f, plugin)` (a route's own plugin) | [`PeerBuilder::route_plugin`], [`Controller::plugin`] |
//! | a controller method `XxZz` serving `/xx_zz` | the method name you give: `.pull("xx_zz", Ctrl::xx_zz)`; [`PeerBuilder::controller`] names the prefix from the type, [`PeerBuilder::controller_named`] from a string |
//! | `tp.ReadCtx` in a plugin, `ctx.Input().Header.Uri` | [`PluginCtx`] and the `&mut Packet` each hook gets (`p.uri.path_str()`, `p.uri.set_path(..)`) |
//! | `PostReadPullHeader`, `PostReadReplyHeader`, ... | [`Plugin::after_read_header`] (one hook; `p.ptype` says which), `after_read_body`, `before_write_pull`, ... |
//! | `pullcmd.Rerror()`, `pullcmd.Reply()` | the `Err` / `Ok(`[`Reply`]`)` of `.pull(..).await` |
//! | `meta.VisitAll(f)`, `meta.String()` | [`Meta::iter`], `meta.to_string()` (URL-query form) |
//! | `tp.Errorf`, `tp.Warnf`, `tp.Fatalf` | `tracing::error!`, `tracing::warn!`; a fatal error is the caller's to return from `main` |
//! | the `binder` plugin (`param:"<range: 1:9>"` tags) | [`Valid`]`<T>` with garde's derive (feature `validate`) |
//! | the `heartbeat` plugin | [`plugin::Heartbeat`] |
//! | the alias plugin (`AliasPlugin`) | `examples/alias.rs`: a peer-wide plugin rewriting the URI in `after_read_header` |
//!
//! # Modules
//!
//! - [`prelude`]: what `use teleport::prelude::*;` brings.
//! - [`runtime`]: each runtime's peer, under its feature.
//! - [`plugin`]: the plugin trait, its context, the built-in plugins.
//! - [`protocol`]: the sans-IO core (packets, frames, the session state
//!   machine), for custom protos and tools.
//! - [`adapter`]: the machinery runtime adapters are built from, for
//!   writing one.
//! - `metrics` (feature `metrics`): Prometheus metrics of a peer, and an
//!   opt-in scrape endpoint.
//! - [`trace`]: per-call spans and the trace context in meta.
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use teleport_core::bytes::{Bytes, BytesMut};
pub use teleport_core::{
    CloseReason, Codec, CodecError, CodecId, CodecRegistry, DecodeBody, EncodeBody, Gzip,
    JsonCodec, MakeProto, Meta, Packet, PacketType, Proto, ProtoError, Protobuf, ProtobufCodec,
    Rerror, RouteKind, Seq, SessionStats, StringCodec, Uri, XferError, XferFilter, XferId,
    XferPipe, XferRegistry, GOING_AWAY_URI,
};
/// Sockets passed in (systemd, a predecessor) and handing ours on: a
/// graceful restart's parts, for a process that drives it itself.
#[cfg(unix)]
pub use teleport_peer::handoff;
pub use teleport_peer::{
    Answer, BoxFuture, Broadcast, ConfigError, Controller, DialError, DialOptions, Group,
    IntoReply, ListenOptions, Network, PeerAddr, PeerBuilder, PeerConfig, PeerRef, ProtoFunc,
    PullCtx, PushCtx, Reply, ServeOptions, ShutdownReport, TlsDialSettings, TlsListenSettings,
    TraceContext, UnknownPullCtx, UnknownPushCtx,
};
#[cfg(unix)]
pub use teleport_peer::{Grace, GraceReport, GraceSignal, Signal};

pub use plugin::{Plugin, PluginCtx, Plugins};

/// Plugins: the [`Plugin`] trait, its context, and the built-in plugins
/// ([`Auth`](plugin::Auth), [`Heartbeat`](plugin::Heartbeat),
/// [`Stats`](plugin::Stats)).
///
/// Where plugins sit and the order they run in is described in
/// [`teleport_core::plugin`]: the peer's first, in the order added, then a
/// group's, the groups nested in it, and the route's own; on the way out
/// (a reply) the route's run first, being closest to the handler.
pub mod plugin {
    pub use teleport_core::plugin::*;
}

/// The sans-IO protocol core: packets, frame formats, codecs, filters and
/// the session state machine that the runtimes drive. A program needs it
/// for a proto of its own or to read frames outside a peer.
pub use teleport_core as protocol;

/// What runtime adapters are built from: the connection driver, the
/// peer's shared core, handler plumbing. For writing an adapter to a new
/// runtime; programs do not need it.
pub use teleport_peer::adapter;

/// Per-call spans and the W3C trace context carried in meta; their
/// OpenTelemetry export with the `otel` feature.
pub use teleport_peer::trace;

/// TLS under sessions (feature `tls`): rustls with the ring provider.
#[cfg(feature = "tls")]
pub use teleport_peer::tls;

/// Prometheus metrics (feature `metrics`): the [`Metrics`](metrics::Metrics)
/// plugin counts a peer's calls (per route and direction), errors by code,
/// bytes, open sessions, pulls in flight and redials, and times its pulls;
/// [`Metrics::encode`](metrics::Metrics::encode) gives the text format and
/// [`Metrics::serve`](metrics::Metrics::serve) an HTTP endpoint on a thread
/// of its own, for every runtime. Nothing listens unless `serve` is called.
#[cfg(feature = "metrics")]
pub use teleport_metrics as metrics;

/// Arguments checked before the handler runs (feature `validate`).
#[cfg(feature = "validate")]
pub mod validate {
    pub use teleport_peer::{garde, Valid};
}
#[cfg(feature = "validate")]
pub use teleport_peer::Valid;

/// Each runtime's peer, one module per feature.
pub mod runtime {
    /// Peers on tokio (feature `tokio`, on by default).
    #[cfg(feature = "tokio")]
    pub mod tokio {
        pub use teleport_peer::{Call, Session};
        #[cfg(unix)]
        pub use teleport_tokio::grace_signal;
        pub use teleport_tokio::{transport, Peer};
    }

    /// Peers on async-std (feature `async-std`): sockets and timers on
    /// async-io, tasks on async-std's global executor.
    #[cfg(feature = "async-std")]
    pub mod async_std {
        pub use teleport_async_std::async_std::Peer;
        #[cfg(unix)]
        pub use teleport_async_std::grace_signal;
        pub use teleport_async_std::{transport, Executor, Spawn};
        pub use teleport_peer::{Call, Session};
    }

    /// Peers on smol (feature `smol`): the `async_std` module's adapter,
    /// with tasks on smol's global executor.
    #[cfg(feature = "smol")]
    pub mod smol {
        #[cfg(unix)]
        pub use teleport_async_std::grace_signal;
        pub use teleport_async_std::smol::Peer;
        pub use teleport_async_std::{transport, Executor, Spawn};
        pub use teleport_peer::{Call, Session};
    }

    /// Blocking peers on a mio poll loop, without an async runtime
    /// (feature `mio`): calls block the calling thread; handlers run on a
    /// worker pool.
    #[cfg(feature = "mio")]
    pub mod mio {
        #[cfg(unix)]
        pub use teleport_mio::grace_signal;
        pub use teleport_mio::{
            default_workers, Call, MioStream, Peer, Session, SyncController, SyncGroup,
            SyncHandlers,
        };
    }
}

#[cfg(all(unix, feature = "tokio"))]
pub use runtime::tokio::grace_signal;
#[cfg(feature = "tokio")]
pub use runtime::tokio::{Call, Peer, Session};

#[cfg(all(unix, all(not(feature = "tokio"), feature = "async-std")))]
pub use runtime::async_std::grace_signal;
#[cfg(all(not(feature = "tokio"), feature = "async-std"))]
pub use runtime::async_std::{Call, Peer, Session};

#[cfg(all(
    unix,
    all(not(feature = "tokio"), not(feature = "async-std"), feature = "smol")
))]
pub use runtime::smol::grace_signal;
#[cfg(all(not(feature = "tokio"), not(feature = "async-std"), feature = "smol"))]
pub use runtime::smol::{Call, Peer, Session};

#[cfg(all(
    unix,
    not(feature = "tokio"),
    not(feature = "async-std"),
    not(feature = "smol"),
    feature = "mio"
))]
pub use runtime::mio::grace_signal;
#[cfg(all(
    not(feature = "tokio"),
    not(feature = "async-std"),
    not(feature = "smol"),
    feature = "mio"
))]
pub use runtime::mio::{Call, Peer, Session};

/// `use teleport::prelude::*;`: the peer of the runtime the features pick,
/// its builder and settings, handler contexts, the session handle, errors,
/// meta, plugins. Nothing in it is named like a crate, so it sits beside
/// `#[tokio::main]` or `smol::block_on` without ambiguity.
pub mod prelude {
    #[cfg(all(
        unix,
        any(
            feature = "tokio",
            feature = "async-std",
            feature = "smol",
            feature = "mio"
        )
    ))]
    pub use crate::{grace_signal, Grace};
    pub use crate::{
        Answer, CloseReason, CodecId, Controller, DialOptions, Group, ListenOptions, Meta, Network,
        PeerAddr, PeerBuilder, PeerConfig, PeerRef, Plugin, PluginCtx, Protobuf, PullCtx, PushCtx,
        Reply, Rerror, ServeOptions, UnknownPullCtx, UnknownPushCtx, Uri,
    };
    #[cfg(any(
        feature = "tokio",
        feature = "async-std",
        feature = "smol",
        feature = "mio"
    ))]
    pub use crate::{Call, Peer, Session};
    #[cfg(feature = "mio")]
    pub use teleport_mio::{SyncController, SyncGroup, SyncHandlers};
    #[cfg(feature = "validate")]
    pub use teleport_peer::Valid;
}
