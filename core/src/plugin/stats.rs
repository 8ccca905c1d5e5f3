//! Stats: counters of pulls, pushes, replies, errors and bytes, and a
//! latency histogram, shared by every session of a peer and readable at
//! any time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::packet::{Packet, PacketType};
use crate::plugin::{CallDone, Direction, Plugin, PluginCtx};
use crate::rerror::Rerror;

/// Histogram buckets: bucket `i` counts calls that took less than `2^i`
/// microseconds (the last one: everything slower).
pub const LATENCY_BUCKETS: usize = 32;

#[derive(Default)]
struct Counters {
    pulls_sent: AtomicU64,
    pushes_sent: AtomicU64,
    replies_sent: AtomicU64,
    pulls_received: AtomicU64,
    pushes_received: AtomicU64,
    replies_received: AtomicU64,
    errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

/// The stats plugin. Clone it before adding it to the plugins to keep a
/// handle for [`Stats::snapshot`].
#[derive(Clone, Default)]
pub struct Stats(Arc<Counters>);

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Pulls we sent.
    pub pulls_sent: u64,
    /// Pushes we sent.
    pub pushes_sent: u64,
    /// Replies we sent.
    pub replies_sent: u64,
    /// Pulls we received.
    pub pulls_received: u64,
    /// Pushes we received.
    pub pushes_received: u64,
    /// Replies we received.
    pub replies_received: u64,
    /// Calls that ended with an error, ours and the peer's.
    pub errors: u64,
    /// Frame bytes read.
    pub bytes_in: u64,
    /// Frame bytes written.
    pub bytes_out: u64,
    /// Outgoing calls' latency: `latency[i]` counts calls under `2^i` µs.
    pub latency: [u64; LATENCY_BUCKETS],
}

impl StatsSnapshot {
    /// An upper bound of the `q`-quantile (0.0..=1.0) of the latency
    /// histogram; `None` with no sample.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Duration::from_micros(1u64 << i));
            }
        }
        None
    }
}

impl Stats {
    /// New, zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.0;
        StatsSnapshot {
            pulls_sent: c.pulls_sent.load(Relaxed),
            pushes_sent: c.pushes_sent.load(Relaxed),
            replies_sent: c.replies_sent.load(Relaxed),
            pulls_received: c.pulls_received.load(Relaxed),
            pushes_received: c.pushes_received.load(Relaxed),
            replies_received: c.replies_received.load(Relaxed),
            errors: c.errors.load(Relaxed),
            bytes_in: c.bytes_in.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            latency: std::array::from_fn(|i| c.latency[i].load(Relaxed)),
        }
    }

    fn bytes_out(&self, ctx: &PluginCtx<'_>) {
        self.0
            .bytes_out
            .fetch_add(ctx.frame_len().unwrap_or(0) as u64, Relaxed);
    }
}

fn bucket(d: Duration) -> usize {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    // The smallest i with us < 2^i.
    ((u64::BITS - us.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
}

impl Plugin for Stats {
    fn name(&self) -> &'static str {
        "stats"
    }

    fn after_write_pull(&self, ctx: &mut PluginCtx<'_>, _: &Packet) {
        self.0.pulls_sent.fetch_add(1, Relaxed);
        self.bytes_out(ctx);
    }

    fn after_write_push(&self, ctx: &mut PluginCtx<'_>, _: &Packet) {
        self.0.pushes_sent.fetch_add(1, Relaxed);
        self.bytes_out(ctx);
    }

    fn after_write_reply(&self, ctx: &mut PluginCtx<'_>, _: &Packet) {
        self.0.replies_sent.fetch_add(1, Relaxed);
        self.bytes_out(ctx);
    }

    fn after_read_header(&self, ctx: &mut PluginCtx<'_>, p: &mut Packet) -> Result<(), Rerror> {
        let c = &self.0;
        c.bytes_in
            .fetch_add(ctx.frame_len().unwrap_or(0) as u64, Relaxed);
        match p.ptype {
            PacketType::PULL => &c.pulls_received,
            PacketType::PUSH => &c.pushes_received,
            _ => &c.replies_received,
        }
        .fetch_add(1, Relaxed);
        Ok(())
    }

    fn on_call_done(&self, _ctx: &mut PluginCtx<'_>, call: &CallDone<'_>) {
        if call.error.is_some() {
            self.0.errors.fetch_add(1, Relaxed);
        }
        if call.direction == Direction::Outgoing {
            self.0.latency[bucket(call.elapsed)].fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_microseconds() {
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_micros(1)), 1);
        assert_eq!(bucket(Duration::from_micros(3)), 2);
        assert_eq!(bucket(Duration::from_micros(1024)), 11);
        assert_eq!(bucket(Duration::from_secs(1 << 40)), LATENCY_BUCKETS - 1);
    }
}
