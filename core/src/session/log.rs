//! One log line per packet, through `tracing` (target `teleport::packet`):
//! direction, type, seq, URI, frame size, status, and the call's duration
//! when `count_time` is on; bodies only when `print_body` is on; a warning
//! for calls slower than `slow_threshold`.

use std::time::Duration;

use crate::packet::{Packet, Seq, Uri};
use crate::rerror::Rerror;
use crate::session::{CloseReason, SessionConfig};

const MAX_BODY_LOG: usize = 4096;

fn body_text(p: &Packet) -> String {
    let b = &p.body[..p.body.len().min(MAX_BODY_LOG)];
    let mut s = String::from_utf8_lossy(b).into_owned();
    if p.body.len() > MAX_BODY_LOG {
        s.push_str("...");
    }
    s
}

pub(super) fn sent(cfg: &SessionConfig, session: u64, p: &Packet, size: usize) {
    if !tracing::enabled!(target: "teleport::packet", tracing::Level::DEBUG) {
        return;
    }
    if cfg.print_body {
        tracing::debug!(target: "teleport::packet", session, dir = "send", ptype = %p.ptype,
            seq = p.seq.0, uri = %p.uri, size, meta = %p.meta, body = %body_text(p));
    } else {
        tracing::debug!(target: "teleport::packet", session, dir = "send", ptype = %p.ptype,
            seq = p.seq.0, uri = %p.uri, size);
    }
}

pub(super) fn received(cfg: &SessionConfig, session: u64, p: &Packet, size: usize) {
    if !tracing::enabled!(target: "teleport::packet", tracing::Level::DEBUG) {
        return;
    }
    if cfg.print_body {
        tracing::debug!(target: "teleport::packet", session, dir = "recv", ptype = %p.ptype,
            seq = p.seq.0, uri = %p.uri, size, meta = %p.meta, body = %body_text(p));
    } else {
        tracing::debug!(target: "teleport::packet", session, dir = "recv", ptype = %p.ptype,
            seq = p.seq.0, uri = %p.uri, size);
    }
}

/// A reply's status for a log line: `ok`, or the error. Formatted only
/// when a line is actually written.
struct Status<'a>(Option<&'a Rerror>);

impl std::fmt::Display for Status<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("ok"),
            Some(e) => e.fmt(f),
        }
    }
}

fn slow(cfg: &SessionConfig, elapsed: Duration) -> bool {
    cfg.slow_threshold.is_some_and(|t| elapsed > t)
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
    let status = Status(error);
    match elapsed {
        Some(cost) if slow(cfg, cost) => {
            tracing::warn!(target: "teleport::packet", session, dir = "send", ptype = "REPLY",
                seq = p.seq.0, uri = %p.uri, size, %status, ?cost, "slow pull handler");
        }
        Some(cost) if cfg.count_time => {
            tracing::info!(target: "teleport::packet", session, dir = "send", ptype = "REPLY",
                seq = p.seq.0, uri = %p.uri, size, %status, ?cost);
        }
        _ => {
            tracing::info!(target: "teleport::packet", session, dir = "send", ptype = "REPLY",
                seq = p.seq.0, uri = %p.uri, size, %status);
        }
    }
    if cfg.print_body {
        tracing::info!(target: "teleport::packet", session, seq = p.seq.0, meta = %p.meta,
            body = %body_text(p), "reply body");
    }
}

/// One of our pulls ended.
pub(super) fn pull_done(
    cfg: &SessionConfig,
    session: u64,
    seq: Seq,
    uri: &Uri,
    error: Option<&Rerror>,
    cost: Duration,
) {
    let status = Status(error);
    if slow(cfg, cost) {
        tracing::warn!(target: "teleport::packet", session, dir = "recv", ptype = "REPLY",
            seq = seq.0, %uri, %status, ?cost, "slow pull");
    } else if cfg.count_time {
        tracing::info!(target: "teleport::packet", session, dir = "recv", ptype = "REPLY",
            seq = seq.0, %uri, %status, ?cost);
    } else {
        tracing::info!(target: "teleport::packet", session, dir = "recv", ptype = "REPLY",
            seq = seq.0, %uri, %status);
    }
}

pub(super) fn closed(session: u64, reason: &CloseReason) {
    match reason {
        CloseReason::Local | CloseReason::PeerClosed => {
            tracing::debug!(target: "teleport::session", session, ?reason, "session closed")
        }
        _ => tracing::warn!(target: "teleport::session", session, ?reason, "session closed"),
    }
}
