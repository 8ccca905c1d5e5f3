//! Heartbeat: a ping every interval, and the session closed after a silence.
//!
//! Go teleport v3 has no heartbeat message (SPEC header notes); its
//! heartbeat plugin lived elsewhere and used ordinary packets. Ours does
//! the same: a ping is a PUSH to [`HEARTBEAT_URI`] with an empty body. A
//! peer without this plugin drops it as an unknown push (and logs it);
//! with it, pings are swallowed before routing. Any frame read counts as a
//! sign of life, so a busy session sends pings but never waits on them.

use std::time::{Duration, Instant};

use crate::packet::{Packet, PacketType, Seq};
use crate::plugin::{Plugin, PluginCtx};
use crate::rerror::Rerror;
use crate::session::CloseReason;

/// The URI of a ping.
pub const HEARTBEAT_URI: &str = "/heartbeat";

/// Pings every `interval`; closes the session after `silence` with
/// nothing read.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    interval: Duration,
    silence: Duration,
}

#[derive(Default)]
struct Beat {
    last_read: Option<Instant>,
    next_ping: Option<Instant>,
}

impl Heartbeat {
    /// Ping every `interval`, give up after `silence` (say, 3 intervals).
    pub fn new(interval: Duration, silence: Duration) -> Self {
        Heartbeat { interval, silence }
    }

    fn start(&self, ctx: &mut PluginCtx<'_>) {
        let now = ctx.now();
        let b = ctx.state::<Beat>();
        b.last_read = Some(now);
        b.next_ping = now.checked_add(self.interval);
        self.rearm(ctx);
    }

    fn rearm(&self, ctx: &mut PluginCtx<'_>) {
        let b = ctx.state::<Beat>();
        let give_up = b.last_read.and_then(|t| t.checked_add(self.silence));
        let next = match (b.next_ping, give_up) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = next {
            ctx.wake_at(at);
        }
    }
}

impl Plugin for Heartbeat {
    fn name(&self) -> &'static str {
        "heartbeat"
    }

    fn after_dial(&self, ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        self.start(ctx);
        Ok(())
    }

    fn after_accept(&self, ctx: &mut PluginCtx<'_>) -> Result<(), Rerror> {
        self.start(ctx);
        Ok(())
    }

    fn after_read_header(&self, ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        let now = ctx.now();
        ctx.state::<Beat>().last_read = Some(now);
        if p.ptype == PacketType::PUSH && p.uri.path() == HEARTBEAT_URI.as_bytes() {
            ctx.swallow();
        }
        Ok(())
    }

    fn on_timer(&self, ctx: &mut PluginCtx<'_>) {
        let now = ctx.now();
        let b = ctx.state::<Beat>();
        if b.last_read
            .and_then(|t| t.checked_add(self.silence))
            .is_some_and(|t| t <= now)
        {
            ctx.close(
                Rerror::conn_closed()
                    .with_detail(format!("heartbeat: nothing heard for {:?}", self.silence)),
            );
            return;
        }
        if b.next_ping.is_some_and(|t| t <= now) {
            b.next_ping = now.checked_add(self.interval);
            ctx.push(Packet::new(PacketType::PUSH, Seq(0), HEARTBEAT_URI));
        }
        self.rearm(ctx);
    }

    fn on_disconnect(&self, ctx: &mut PluginCtx<'_>, _reason: &CloseReason) {
        *ctx.state::<Beat>() = Beat::default();
    }
}
