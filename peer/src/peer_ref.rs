//! What handlers and user code see of a peer: its sessions, and a push to
//! all of them.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use teleport_core::{CodecId, EncodeBody, Rerror};

use crate::registry::PeerCore;
use crate::session::Session;

/// A handle to a peer, from any of its sessions ([`Session::peer`]) or
/// handler contexts (`ctx.peer()`): list its sessions, find one, push to
/// all. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PeerRef(pub(crate) Arc<PeerCore>);

/// What [`PeerRef::broadcast`] did.
#[derive(Debug, Default)]
pub struct Broadcast {
    /// Sessions the push was queued on.
    pub sent: usize,
    /// Sessions that refused it (closing, or a full queue: a peer that does
    /// not read gets 503 rather than holding up the others), with why.
    pub failed: Vec<(u64, Rerror)>,
}

impl PeerRef {
    /// Every open session.
    pub fn sessions(&self) -> Vec<Session> {
        self.0.sessions()
    }

    /// The open session with this (numeric) id.
    pub fn session(&self, id: u64) -> Option<Session> {
        self.0.session(id)
    }

    /// The open session given this id with [`Session::set_id`].
    pub fn session_by_id(&self, id: &str) -> Option<Session> {
        self.0.session_by_id(id)
    }

    /// How many sessions are open.
    pub fn session_count(&self) -> usize {
        self.0.sessions().len()
    }

    /// Pushes `arg` (encoded once, in the peer's default codec) to every
    /// open session. A push is done once it is queued on its connection,
    /// so a slow client never holds up the rest: its full queue refuses
    /// the push at once (503), which the report lists.
    pub async fn broadcast<A: EncodeBody + ?Sized>(
        &self,
        uri: &str,
        arg: &A,
    ) -> Result<Broadcast, Rerror> {
        let codec = self.0.shared().config.default_codec;
        let body = self
            .0
            .shared()
            .codecs
            .encode_to_bytes(codec, arg)
            .map_err(|e| Rerror::write_failed(format!("body: {e}")))?;
        Ok(self.broadcast_raw(uri, codec, body).await)
    }

    /// [`PeerRef::broadcast`] with a body already encoded with `codec`.
    pub async fn broadcast_raw(&self, uri: &str, codec: CodecId, body: Bytes) -> Broadcast {
        let sessions = self.0.sessions();
        let pushes = sessions.iter().map(|s| {
            let body = body.clone();
            async move { (s.id(), s.call(uri).push_raw(codec, body).await) }
        });
        let mut report = Broadcast::default();
        for (id, r) in join_all(pushes).await {
            match r {
                Ok(()) => report.sent += 1,
                Err(e) => report.failed.push((id, e)),
            }
        }
        report
    }
}
