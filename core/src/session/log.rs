//! One log line per packet, through `tracing` at INFO (target
//! `teleport::packet`): direction, type, seq, URI, frame size; for a reply
//! also its status, and the call's duration when `count_time` is on; the
//! meta and body only when `print_body` is on. A call slower than
//! `slow_threshold` is logged as a WARN instead. Our pulls that end without
//! a reply (timeout, connection lost) get a line too, with their error.

use std::fmt;
use std::time::Duration;

use crate::packet::{Packet, Seq, Uri};
use crate::rerror::Rerror;
use crate::session::{CloseReason, SessionConfig};

const MAX_BODY_LOG: usize = 4096;
const T: &str = "teleport::packet";

/// A body for a log line, cut at [`MAX_BODY_LOG`] bytes; formatted only
/// when a line is written.
struct Body<'a>(&'a Packet);

impl fmt::Display for Body<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0.body;
        f.write_str(&String::from_utf8_lossy(&b[..b.len().min(MAX_BODY_LOG)]))?;
        if b.len() > MAX_BODY_LOG {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// A reply's status: `ok`, or the error.
struct Status<'a>(Option<&'a Rerror>);

impl fmt::Display for Status<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("ok"),
            Some(e) => e.fmt(f),
        }
    }
}

fn enabled() -> bool {
    tracing::enabled!(target: T, tracing::Level::INFO)
}

fn slow(cfg: &SessionConfig, elapsed: Duration) -> bool {
    cfg.slow_threshold.is_some_and(|t| elapsed > t)
}

/// A pull or push we sent, or one the peer sent us (`dir`).
fn request(cfg: &SessionConfig, session: u64, dir: &'static str, p: &Packet, size: usize) {
    if !enabled() {
        return;
    }
    if cfg.print_body {
        tracing::info!(target: T, session, dir, ptype = %p.ptype, seq = p.seq.0, uri = %p.uri,
            size, meta = %p.meta, body = %Body(p));
    } else {
        tracing::info!(target: T, session, dir, ptype = %p.ptype, seq = p.seq.0, uri = %p.uri, size);
    }
}

pub(super) fn sent(cfg: &SessionConfig, session: u64, p: &Packet, size: usize) {
    request(cfg, session, "send", p, size);
}

/// A frame the peer sent; replies are logged when they resolve their pull.
pub(super) fn received(cfg: &SessionConfig, session: u64, p: &Packet, size: usize) {
    if p.ptype != crate::packet::PacketType::REPLY {
        request(cfg, session, "recv", p, size);
    }
}

/// A reply: ours to the peer's pull (`send`) or the peer's to ours (`recv`).
#[allow(clippy::too_many_arguments)]
fn reply(
    cfg: &SessionConfig,
    session: u64,
    dir: &'static str,
    seq: Seq,
    uri: &Uri,
    packet: Option<&Packet>,
    size: Option<usize>,
    error: Option<&Rerror>,
    cost: Option<Duration>,
) {
    let status = Status(error);
    let size = size.unwrap_or(0);
    if let Some(cost) = cost.filter(|c| slow(cfg, *c)) {
        tracing::warn!(target: T, session, dir, ptype = "REPLY", seq = seq.0, %uri, size,
            %status, ?cost, "slow call");
        return;
    }
    if !enabled() {
        return;
    }
    let cost = cost.filter(|_| cfg.count_time);
    match (packet.filter(|_| cfg.print_body), cost) {
        (Some(p), Some(cost)) => tracing::info!(target: T, session, dir, ptype = "REPLY",
            seq = seq.0, %uri, size, %status, ?cost, meta = %p.meta, body = %Body(p)),
        (Some(p), None) => tracing::info!(target: T, session, dir, ptype = "REPLY",
            seq = seq.0, %uri, size, %status, meta = %p.meta, body = %Body(p)),
        (None, Some(cost)) => tracing::info!(target: T, session, dir, ptype = "REPLY",
            seq = seq.0, %uri, size, %status, ?cost),
        (None, None) => tracing::info!(target: T, session, dir, ptype = "REPLY",
            seq = seq.0, %uri, size, %status),
    }
}

/// We answered a peer's pull.
pub(super) fn replied(
    cfg: &SessionConfig,
    session: u64,
    p: &Packet,
    size: usize,
    error: Option<&Rerror>,
    elapsed: Option<Duration>,
) {
    reply(
        cfg,
        session,
        "send",
        p.seq,
        &p.uri,
        Some(p),
        Some(size),
        error,
        elapsed,
    );
}

/// One of our pulls ended: with the peer's reply (`size` is its frame's),
/// or without one (timeout, connection lost).
pub(super) fn pull_done(
    cfg: &SessionConfig,
    session: u64,
    seq: Seq,
    uri: &Uri,
    result: &Result<Packet, Rerror>,
    size: Option<usize>,
    cost: Duration,
) {
    reply(
        cfg,
        session,
        "recv",
        seq,
        uri,
        result.as_ref().ok(),
        size,
        result.as_ref().err(),
        Some(cost),
    );
}

pub(super) fn closed(session: u64, reason: &CloseReason) {
    match reason {
        CloseReason::Local | CloseReason::PeerClosed | CloseReason::GoingAway => {
            tracing::debug!(target: "teleport::session", session, ?reason, "session closed")
        }
        _ => tracing::warn!(target: "teleport::session", session, ?reason, "session closed"),
    }
}
