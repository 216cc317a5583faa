//! Which knowledge vector each peer holds of ours, so a hello leaves it out when it has not
//! changed (protocol 4, `Hello::knowledge_hash`).
//!
//! A peer stores our knowledge as we last told it: in our hello (it is the responder) or in our
//! hello reply (it is the initiator). We remember the [`knowledge_hash`] of what we told, per
//! (our instance, the peer), in this process's memory only: after a restart the first hello
//! carries the whole vector again. What we remember is only a guess about the peer's store (it
//! may have been restored); the hash makes a wrong guess harmless, because the responder
//! refuses a hash it does not hold (`KNOWLEDGE_NEEDED`) and the session says hello again in
//! full.

use crate::model::VersionVector;
use crate::protocol::knowledge_hash;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use uuid::Uuid;

/// Most peers remembered (the map is cleared when it would grow past this).
const MAX_PEERS: usize = 4096;

fn map() -> MutexGuard<'static, HashMap<(Uuid, Uuid), String>> {
    static TOLD: OnceLock<Mutex<HashMap<(Uuid, Uuid), String>>> = OnceLock::new();
    TOLD.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Remembers that `peer` now holds `knowledge` as `me`'s knowledge.
pub fn note(me: Uuid, peer: Uuid, knowledge: &VersionVector) {
    let mut m = map();
    if m.len() >= MAX_PEERS && !m.contains_key(&(me, peer)) {
        m.clear();
    }
    m.insert((me, peer), knowledge_hash(knowledge));
}

/// Forgets what `peer` holds of `me` (it refused our hash).
pub fn forget(me: Uuid, peer: Uuid) {
    map().remove(&(me, peer));
}

/// The hash to send instead of `knowledge` if `peer` already holds exactly it.
pub fn unchanged(me: Uuid, peer: Uuid, knowledge: &VersionVector) -> Option<String> {
    let h = knowledge_hash(knowledge);
    (map().get(&(me, peer)) == Some(&h)).then_some(h)
}

/// True if `a` holds every event `b` does (entry by entry).
pub fn covers(a: &VersionVector, b: &VersionVector) -> bool {
    b.iter().all(|(n, t)| a.get(n).copied().unwrap_or(0) >= *t)
}

/// The initiator's hello exchange (protocol 4): leaves out our knowledge when the peer at
/// `addr` holds it already, asks the peer to leave out its own when we hold it, and says hello
/// again in full if the peer does not hold what we named. Returns the hello as sent in full
/// (knowledge included) and the reply with the peer's knowledge filled in.
pub(crate) async fn say_hello<P: super::Peer>(
    store: &std::sync::Arc<crate::store::Store>,
    peer: &P,
    addr: &str,
    mut hello: crate::protocol::Hello,
) -> Result<(crate::protocol::Hello, crate::protocol::HelloReply), super::SyncError> {
    use crate::protocol::{client::CallError, codes, ProtocolError};
    let me = store.instance().id;
    let a = addr.to_string();
    // What we hold of the peer last reached at this address: its id and its knowledge.
    let known = super::blocking(store, move |s| {
        Ok(s.peers()?
            .into_iter()
            .find(|p| p.url == a || p.addresses.contains(&a))
            .map(|p| {
                let past = s.nothing_past(&p.knowledge);
                (p.instance, p.knowledge, p.received_upto, past)
            }))
    })
    .await?;
    for full in [false, true] {
        let mut sent = hello.clone();
        if let (Some((pid, theirs, upto, past)), false) = (&known, full) {
            sent.peer_knowledge_hash = Some(knowledge_hash(theirs));
            sent.received_upto = Some(*upto);
            sent.nothing_past = *past;
            if let Some(h) = unchanged(me, *pid, &hello.knowledge) {
                sent.knowledge_hash = Some(h);
                sent.knowledge.clear();
            }
        }
        let mut reply = match peer.hello(&sent).await {
            Ok(r) => r,
            Err(CallError::Protocol(e)) if e.code == codes::KNOWLEDGE_NEEDED && !full => {
                if let Some((pid, _, _, _)) = &known {
                    forget(me, *pid);
                }
                tracing::debug!(peer_addr = %addr, "peer lacks our knowledge: hello again in full");
                continue;
            }
            Err(e) => return Err(e.into_sync(addr)),
        };
        if let Some(h) = &reply.knowledge_hash {
            match &known {
                Some((_, theirs, _, _)) if knowledge_hash(theirs) == *h => {
                    reply.knowledge = theirs.clone();
                }
                _ => {
                    return Err(super::SyncError::Peer(ProtocolError::new(
                        codes::INVALID_PARAMS,
                        format!(
                            "peer at {addr} left out its knowledge (hash {h}) but that is not \
                             the knowledge held for it here"
                        ),
                    )))
                }
            }
        }
        hello.peer_knowledge_hash = sent.peer_knowledge_hash;
        hello.received_upto = sent.received_upto;
        hello.nothing_past = sent.nothing_past;
        return Ok((hello, reply));
    }
    unreachable!("the full hello either succeeds or returns its error")
}
