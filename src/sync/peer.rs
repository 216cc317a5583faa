//! The other end of a session as the initiator sees it: [`Peer`] is the four requests a session
//! makes. [`RpcPeer`] is the real one (the JSON-RPC client over HTTP, with mutual TLS), and
//! [`ClientCache`] keeps one per peer address so an agent's sessions reuse a connection. Tests
//! run whole sessions in one process with an in-memory implementation (tests/session.rs).

use super::SyncError;
use crate::protocol::client::{CallError, Client};
use crate::protocol::{
    codes, DigestReply, DigestRequest, FetchRequest, Hello, HelloReply, Page, ProtocolError,
    PullRequest, PushReply, PushRequest, ReconcileReply, ReconcileRequest,
};
use crate::tls::{SeenPeer, Transport};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// The requests a session sends to the other instance. Errors are the peer's refusals
/// ([`CallError::Protocol`]) or a failed exchange ([`CallError::Transport`]).
pub trait Peer: Sync {
    /// `fieldsync_hello`.
    fn hello(&self, h: &Hello) -> impl Future<Output = Result<HelloReply, CallError>> + Send;
    /// `fieldsync_pull`: one page of the peer's changes.
    fn pull(&self, r: &PullRequest) -> impl Future<Output = Result<Page, CallError>> + Send;
    /// `fieldsync_push`: one page of ours.
    fn push(&self, r: &PushRequest) -> impl Future<Output = Result<PushReply, CallError>> + Send;
    /// `fieldsync_digest`.
    fn digest(
        &self,
        r: &DigestRequest,
    ) -> impl Future<Output = Result<DigestReply, CallError>> + Send;
    /// `fieldsync_reconcile` (protocol 3). The default refuses, for peers that predate it.
    fn reconcile(
        &self,
        r: &ReconcileRequest,
    ) -> impl Future<Output = Result<ReconcileReply, CallError>> + Send {
        let _ = r;
        async {
            Err(CallError::Transport(
                "fieldsync_reconcile is not supported".into(),
            ))
        }
    }
    /// `fieldsync_fetch` (protocol 3). The default refuses, for peers that predate it.
    fn fetch(&self, r: &FetchRequest) -> impl Future<Output = Result<Page, CallError>> + Send {
        let _ = r;
        async {
            Err(CallError::Transport(
                "fieldsync_fetch is not supported".into(),
            ))
        }
    }
    /// Fails unless the transport authenticated the peer as `claimed` (the instance its hello
    /// names) and `claimed` is not revoked by now (`1012`, also on a connection older than the
    /// revocation). Without authentication (plaintext, in memory) there is nothing to check.
    fn check_identity(&self, claimed: &Uuid) -> Result<(), ProtocolError> {
        let _ = claimed;
        Ok(())
    }
}

/// A peer reached over the network: the JSON-RPC client and, with TLS, the slot where the
/// verifier put the instance named by the server's certificate.
#[derive(Clone)]
pub struct RpcPeer {
    client: Arc<Client>,
    seen: Option<SeenPeer>,
    /// The revocations held now (with TLS): a kept connection opened before the peer's
    /// revocation arrived must not carry another session.
    revoked: Option<Arc<crate::tls::Revoked>>,
}

impl std::fmt::Debug for RpcPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RpcPeer")
    }
}

impl RpcPeer {
    /// A new connection to `addr` over `transport` (no request is sent yet).
    pub fn connect(addr: &str, transport: &Transport) -> Result<Self, SyncError> {
        let terr = |message: String| SyncError::Transport {
            addr: addr.to_string(),
            message,
            ended: false,
        };
        let (client, seen, revoked) = match transport {
            Transport::Plaintext => (Client::connect(addr, None).map_err(terr)?, None, None),
            Transport::Tls { identity, revoked } => {
                let (cfg, seen) = crate::tls::client_config_for(addr, identity, revoked.clone())
                    .map_err(|e| terr(e.to_string()))?;
                let client = Client::connect(addr, Some(cfg)).map_err(terr)?;
                (client, Some(seen), Some(revoked.clone()))
            }
        };
        Ok(Self {
            client: Arc::new(client),
            seen,
            revoked,
        })
    }

    /// The JSON-RPC client (for `notify`, which is not part of a session).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Peer for RpcPeer {
    async fn hello(&self, h: &Hello) -> Result<HelloReply, CallError> {
        self.client.hello(h).await
    }

    async fn pull(&self, r: &PullRequest) -> Result<Page, CallError> {
        self.client.pull(r).await
    }

    async fn push(&self, r: &PushRequest) -> Result<PushReply, CallError> {
        self.client.push(r).await
    }

    async fn digest(&self, r: &DigestRequest) -> Result<DigestReply, CallError> {
        self.client.digest(r).await
    }

    async fn reconcile(&self, r: &ReconcileRequest) -> Result<ReconcileReply, CallError> {
        self.client.reconcile(r).await
    }

    async fn fetch(&self, r: &FetchRequest) -> Result<Page, CallError> {
        self.client.fetch(r).await
    }

    fn check_identity(&self, claimed: &Uuid) -> Result<(), ProtocolError> {
        let Some(slot) = &self.seen else {
            return Ok(());
        };
        let cert = *slot.lock().unwrap_or_else(|e| e.into_inner());
        if cert != Some(*claimed) {
            let named = cert.map_or_else(|| "no instance".to_string(), |c| c.to_string());
            return Err(ProtocolError::new(
                codes::IDENTITY_MISMATCH,
                format!("peer claims instance {claimed} but its certificate is for {named}"),
            ));
        }
        // The handshake refused revoked servers, but this connection may be older than the
        // revocation (kept between sessions, or a resumed TLS session).
        if let Some(at) = self.revoked.as_ref().and_then(|r| r.get(claimed)) {
            return Err(ProtocolError::new(
                codes::REVOKED,
                format!(
                    "peer {claimed} was revoked by the deployment on {}: not syncing with it",
                    at.format("%Y-%m-%d %H:%M UTC")
                ),
            ));
        }
        Ok(())
    }
}

/// Connections kept per peer address: a no-op sync on an established connection is a few
/// small requests, not a new TLS handshake with two certificate chains. Also one session at a
/// time per address: a session someone asked for (`sync`) and the agent's own (periodic,
/// notified) wait for each other instead of pushing the same pages twice.
#[derive(Debug, Default)]
pub struct ClientCache(
    Mutex<HashMap<String, RpcPeer>>,
    Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
);

impl ClientCache {
    fn map(&self) -> MutexGuard<'_, HashMap<String, RpcPeer>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no other session with `addr` runs through this cache; the session holds
    /// the guard while it runs.
    pub(crate) async fn session(&self, addr: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut m = self.1.lock().unwrap_or_else(|e| e.into_inner());
            // Locks nobody holds or waits for are dropped, so the map stays as small as the
            // set of addresses in use.
            m.retain(|_, l| Arc::strong_count(l) > 1);
            m.entry(addr.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// The kept connection to `addr`, if any.
    pub(crate) fn get(&self, addr: &str) -> Option<RpcPeer> {
        self.map().get(addr).cloned()
    }

    /// Keeps `peer` as the connection to `addr`.
    pub(crate) fn put(&self, addr: &str, peer: RpcPeer) {
        self.map().insert(addr.to_string(), peer);
    }

    /// Forgets the connection to `addr` (after a failed session).
    pub(crate) fn forget(&self, addr: &str) {
        self.map().remove(addr);
    }
}
