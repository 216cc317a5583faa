//! Sync sessions with peers, both directions: hello, pull pages, push pages; and `verify`.
//!
//! Layout (the protocol never imports this module: it declares
//! [`crate::protocol::server::SyncService`], which [`Responder`] implements):
//! - [`session`]: the initiator loop, generic over a [`Peer`] (no JSON-RPC, no TLS).
//! - [`peer`]: the [`Peer`] trait, its JSON-RPC implementation and the connection cache.
//! - [`responder`]: the answering side over one store.
//! - [`receive`]: the one path for an incoming page (decode, admit, commit with its position)
//!   and the one hello bookkeeping, used by both sides.
//! - [`admit`]: revocation admission.
//! - [`reconcile`]: range-based set reconciliation (`fieldsync_reconcile`) and anti-entropy.
//! - [`bundle`]: sync by USB stick: writing a bundle's pages, reading one through `receive`.
//! - [`verify`]: `verify` over reconciliation, and the protocol-2 digest buckets.
//!
//! Both sides persist a page and the position it advances to in one store batch, so an
//! interrupted session resumes exactly where it stopped. See docs/PROTOCOL.md.

pub mod admit;
pub mod bundle;
pub mod peer;
pub mod receive;
pub mod reconcile;
pub mod responder;
pub mod session;
pub mod told;
pub mod verify;

pub use admit::admit;
pub mod signed;
pub use peer::{ClientCache, Peer, RpcPeer};
pub use receive::{identity_problems, IdentityProblem, DUPLICATE_FIX};
pub use reconcile::{anti_entropy, anti_entropy_with, AntiEntropyReport, TableDiff};
pub use responder::{Inbound, Responder};
pub use verify::{digest_buckets, verify, verify_with, TableCheck};

use crate::clock::wall_millis;
use crate::model::VersionVector;
use crate::protocol::client::CallError;
use crate::protocol::{self, Hello, Notify, PeerInfo, ProtocolError, ENC_ZSTD};
use crate::store::{Position, Store, StoreError};
use crate::tls::Transport;
use serde::Serialize;
use std::sync::Arc;
use tracing::{info, info_span, warn, Instrument};
use uuid::Uuid;

/// A session that failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The peer answered with a protocol error.
    #[error("peer refused: {0}")]
    Refused(ProtocolError),
    /// The connection failed or timed out.
    #[error("cannot reach {addr}: {message}")]
    Transport {
        /// The peer address.
        addr: String,
        /// What failed.
        message: String,
        /// The connection ended before an answer without a reason
        /// ([`crate::protocol::client::CallError::Ended`]): a TLS refusal may hide behind it.
        ended: bool,
    },
    /// The peer sent something we refuse.
    #[error("{0}")]
    Peer(ProtocolError),
    /// Our store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counts for one direction of a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirectionReport {
    /// Pages exchanged.
    pub pages: u64,
    /// Records sent or received.
    pub records: u64,
    /// Records that changed on the receiving side.
    pub applied: u64,
    /// Conflicts logged on the receiving side.
    pub conflicts: u64,
    /// Encoded page bytes.
    pub bytes: u64,
    /// Milliseconds spent.
    pub ms: u64,
}

/// What a session did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SessionReport {
    /// The peer.
    pub peer: PeerInfo,
    /// Changes we pulled.
    pub received: DirectionReport,
    /// Changes we pushed.
    pub sent: DirectionReport,
    /// The records comparison that the first session with a peer after an open or an
    /// incarnation change runs after its pages (`session::run`), if it ran and completed:
    /// `missed` counts the records the pages should have moved and did not. Not serialized
    /// (a session's JSON says what its pages moved).
    #[serde(skip)]
    pub compared: Option<AntiEntropyReport>,
}

/// Page sizes and encoding for sessions we start.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Most records per page.
    pub page_records: usize,
    /// About this many bytes per page.
    pub page_bytes: usize,
    /// Preferred page encoding.
    pub encoding: String,
    /// Our agent's address, told to the peer (`None` for a one-shot CLI sync).
    pub url: Option<String>,
    /// The caller says a failed session to the person itself (the agent's own sessions print
    /// "sync with NAME failed …"), so the sync layer logs it at info instead of as a warning:
    /// one failure, one line in the agent's output.
    pub caller_reports_failure: bool,
    /// Mutual TLS, or plaintext for debugging (also decides what pages are admitted).
    pub transport: Transport,
    /// Clients by peer address, so an agent's sessions reuse an established connection.
    pub clients: Arc<ClientCache>,
}

impl SessionOptions {
    /// Options from the store's config.
    pub fn from_store(store: &Store, transport: Transport) -> Self {
        let c = &store.config().sync;
        Self {
            page_records: c.page_records,
            page_bytes: c.page_bytes,
            encoding: ENC_ZSTD.to_string(),
            url: None,
            caller_reports_failure: false,
            transport,
            clients: Arc::default(),
        }
    }
}

pub(crate) fn local_only(store: &Store) -> Vec<String> {
    store.config().local_only.iter().cloned().collect()
}

/// The pending holds a hello reply names (`HelloReply::held`): none when they cannot be read,
/// since they only inform `verify`'s advice.
pub(crate) fn held_summaries(store: &Store) -> Vec<crate::protocol::HeldSummary> {
    store
        .holds()
        .unwrap_or_default()
        .iter()
        .take(crate::protocol::MAX_HELD_SUMMARIES)
        .map(|h| crate::protocol::HeldSummary {
            table: h.table.clone(),
            from: if h.peer_name.is_empty() {
                h.peer.to_string()
            } else {
                h.peer_name.clone()
            },
            deletes: h.changes.len() as u64,
        })
        .collect()
}

pub(crate) fn synced_tables(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(store
        .tables()?
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| !store.config().local_only.contains(t))
        .collect())
}

/// Runs one full session with the peer at `addr`: hello, pull everything new, push everything
/// new; over a kept connection when `opts.clients` has one.
pub async fn sync_with(
    store: Arc<Store>,
    addr: &str,
    opts: &SessionOptions,
) -> Result<SessionReport, SyncError> {
    let span = info_span!("sync", peer_addr = %addr, peer = tracing::field::Empty);
    // One session per address at a time (see `ClientCache::session`).
    let _one = opts.clients.session(addr).await;
    info!(parent: &span, "session started");
    let cached = opts.clients.get(addr);
    let reused = cached.is_some();
    let peer = match cached {
        Some(p) => p,
        None => {
            let p = RpcPeer::connect(addr, &opts.transport)?;
            opts.clients.put(addr, p.clone());
            p
        }
    };
    let tracker = crate::progress::start(addr);
    tracker.socket(peer.client().bytes().clone());
    let mut result = session::run_tracked(&store, &peer, addr, opts, Some(&tracker))
        .instrument(span.clone())
        .await;
    if result.is_err() {
        opts.clients.forget(addr);
    }
    if reused && matches!(result, Err(SyncError::Transport { .. })) {
        // The kept connection may have been closed by the peer (idle timeout, restart): one
        // retry on a fresh connection; the session resumes from the stored positions.
        let peer = RpcPeer::connect(addr, &opts.transport)?;
        opts.clients.put(addr, peer.clone());
        tracker.socket(peer.client().bytes().clone());
        result = session::run_tracked(&store, &peer, addr, opts, Some(&tracker))
            .instrument(span.clone())
            .await;
        if result.is_err() {
            opts.clients.forget(addr);
        }
    }
    // A connection closed before it answered may hide a TLS alert (a peer refusing this
    // laptop's certificate as revoked or foreign): ask once more, at the TLS level only.
    if let (
        Err(SyncError::Transport { message, ended, .. }),
        Transport::Tls { identity, revoked },
    ) = (&mut result, &opts.transport)
    {
        // Only a connection that ended without a reason (decided by the error's type, see
        // `ended_unexplained`): a refusal already told (an alert read in time) or an
        // unreachable address needs no second connection.
        if *ended {
            if let Ok((cfg, _)) = crate::tls::client_config_for(addr, identity, revoked.clone()) {
                if let Some(words) = crate::protocol::client::tls_refusal(addr, cfg).await {
                    *message = words;
                }
            }
        }
    }
    tracker.finish(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    // The peer a failed session was with, as this laptop knows it (by its address), with the
    // failure kept in its row (a one-shot CLI sync has no other place, so `status`, `peers`
    // and `doctor` show why, e.g. a refused duplicate identity). Off the async threads: the
    // row's write waits for the writer lock, which a page commit, an import or a snapshot may
    // hold for a while, and an agent's two async workers must keep serving meanwhile.
    let known = match &result {
        Ok(_) => None,
        Err(e) => {
            let (at, text) = (addr.to_string(), e.to_string());
            blocking(&store, move |s| {
                let row = s
                    .peers()?
                    .into_iter()
                    .find(|p| p.url == at || p.addresses.contains(&at));
                if let Some(p) = &row {
                    record_failure(s, p.instance, &text);
                }
                Ok(row)
            })
            .await
            .ok()
            .flatten()
        }
    };
    match (&result, &known) {
        (Ok(r), _) => crate::presence::contact(r.peer.instance),
        (Err(SyncError::Transport { .. }), Some(p)) => crate::presence::unreachable(p.instance),
        _ => {}
    }
    match &result {
        Ok(r) => info!(parent: &span, peer = %r.peer.instance, name = %r.peer.name,
                       received = r.received.records, applied = r.received.applied,
                       sent = r.sent.records, conflicts_here = r.received.conflicts, conflicts_there = r.sent.conflicts,
                       ms = r.received.ms + r.sent.ms, "session finished"),
        Err(e) => {
            // Fields only when known: an empty `peer= name=` reads like a bug in the log.
            match (known, opts.url.is_some() && !opts.caller_reports_failure) {
                (Some(p), true) => {
                    warn!(parent: &span, error = %e, peer = %p.instance, name = %p.name, "session failed")
                }
                (None, true) => warn!(parent: &span, error = %e, "session failed"),
                // A session someone asked for (`sync`): the error goes back to them as the
                // command's one line; a warning here would print it twice.
                (Some(p), false) => {
                    info!(parent: &span, error = %e, peer = %p.instance, name = %p.name, "session failed")
                }
                (None, false) => info!(parent: &span, error = %e, "session failed"),
            }
        }
    }
    result
}

/// Records a failed session in the peer's row (best effort: the session already failed).
/// Blocks on the writer lock: call it off the async threads.
pub fn note_failure(store: &Store, peer: Option<Uuid>, error: &SyncError) {
    if let Some(pid) = peer {
        record_failure(store, pid, &error.to_string());
    }
}

/// [`note_failure`] with the error in words; only for a peer that has a row.
fn record_failure(store: &Store, pid: Uuid, error: &str) {
    if let Ok(Some(_)) = store.peer(&pid) {
        let _ = store.update_peer(&pid, |row| {
            row.last_error = Some(error.to_string());
            row.last_attempt = Some(chrono::Utc::now());
        });
    }
}

/// Runs store work off the async threads (sled and fsync block).
pub(crate) async fn blocking<T, F>(store: &Arc<Store>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| StoreError::Decode(format!("store task failed: {e}")))?
}

/// The hello this instance sends: identity, versions, position and knowledge.
pub(crate) fn our_hello(
    store: &Store,
    pos: &Position,
    url: Option<String>,
    encodings: Vec<String>,
) -> Result<Hello, SyncError> {
    let me = store.instance();
    Ok(Hello {
        protocol_min: protocol::MIN_PROTOCOL_VERSION,
        protocol_max: protocol::PROTOCOL_VERSION,
        peer: PeerInfo {
            instance: me.id,
            name: me.name,
            owner: me.owner,
            contact: me.contact,
            url,
        },
        clock_ms: wall_millis(),
        head: pos.head,
        knowledge: pos.knowledge.clone(),
        knowledge_hash: None,
        peer_knowledge_hash: None,
        received_upto: None,
        nothing_past: None,
        encodings,
        local_only: local_only(store),
        tables: synced_tables(store)?,
        incarnation: Some(store.incarnation()),
    })
}

/// Tells a peer we have new changes.
pub async fn notify(store: &Store, addr: &str, transport: &Transport) -> Result<(), SyncError> {
    notify_with(store, addr, transport, false).await
}

/// Tells a peer this laptop's agent is stopping (a notify with `leaving`), so the peer shows
/// it offline at once.
pub async fn notify_leaving(
    store: &Store,
    addr: &str,
    transport: &Transport,
) -> Result<(), SyncError> {
    notify_with(store, addr, transport, true).await
}

async fn notify_with(
    store: &Store,
    addr: &str,
    transport: &Transport,
    leaving: bool,
) -> Result<(), SyncError> {
    let peer = RpcPeer::connect(addr, transport)?;
    peer.client()
        .notify(&Notify {
            from: store.id(),
            head: store.seq(),
            leaving,
        })
        .await
        .map_err(|e| e.into_sync(addr))
}

impl CallError {
    /// Turns a failed call to the peer at `addr` into a session error.
    pub fn into_sync(self, addr: &str) -> SyncError {
        match self {
            CallError::Protocol(e) => SyncError::Refused(e),
            CallError::Transport(message) => SyncError::Transport {
                addr: addr.to_string(),
                message,
                ended: false,
            },
            CallError::Ended(message) => SyncError::Transport {
                addr: addr.to_string(),
                message,
                ended: true,
            },
        }
    }
}

impl From<ProtocolError> for SyncError {
    fn from(e: ProtocolError) -> Self {
        SyncError::Peer(e)
    }
}

/// The knowledge type re-exported for callers of this module.
pub type Knowledge = VersionVector;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// A failed session's bookkeeping (the peer row's `last_error`) waits for the writer lock,
    /// which a page commit, an import chunk or a snapshot may hold for seconds: it must wait
    /// on a blocking thread, not on the async worker that also serves the agent's listener,
    /// API and signals. On a one-worker runtime, a timer due meanwhile fires while the lock is
    /// still held; the row is written once it is free.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_session_waits_for_the_writer_lock_off_the_async_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Config::default()).unwrap());
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = gone.local_addr().unwrap().to_string();
        drop(gone);
        let pid = Uuid::new_v4();
        store.update_peer(&pid, |r| r.url = addr.clone()).unwrap();
        let opts = SessionOptions::from_store(&store, Transport::Plaintext);

        let released = Arc::new(AtomicBool::new(false));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = {
            let (s, released) = (store.clone(), released.clone());
            std::thread::spawn(move || {
                let _writer = s.hold_writer();
                held_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_secs(5));
                released.store(true, Ordering::SeqCst);
            })
        };
        held_rx.recv().unwrap();
        let timer = {
            let released = released.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                !released.load(Ordering::SeqCst)
            })
        };
        let failed = sync_with(store.clone(), &addr, &opts).await;
        assert!(failed.is_err(), "nobody listens at {addr}");
        assert!(
            timer.await.unwrap(),
            "the timer could not fire before the writer lock was released"
        );
        holder.join().unwrap();
        let row = store.peer(&pid).unwrap().unwrap();
        assert!(
            row.last_error
                .is_some_and(|e| e.contains("connection refused")),
            "the failure is kept in the peer's row"
        );
    }
}
