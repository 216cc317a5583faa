//! One sync session with one peer, both directions: hello, pull pages, push pages.
//!
//! [`Responder`] answers a peer's requests (the server side); [`sync_with`] drives a session
//! as the initiator. Both sides persist a page and the position it advances to in one store
//! batch, so an interrupted session resumes exactly where it stopped. See docs/PROTOCOL.md.

use crate::clock::wall_millis;
use crate::formats::canonical_json;
use crate::mesh;
use crate::model::{validate_table, VersionVector};
use crate::protocol::client::Client;
use crate::protocol::server::Caller;
use crate::protocol::{
    self, codes, Bucket, DigestReply, DigestRequest, Hello, HelloReply, Notify, Page, PeerInfo,
    ProtocolError, PullRequest, PushReply, PushRequest, ENC_JSON, ENC_ZSTD,
};
use crate::store::RemoteChange;
use crate::store::{ApplyStats, PeerRow, Store, StoreError};
use crate::tls::Transport;
use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
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
    /// Mutual TLS, or plaintext for debugging.
    pub transport: Transport,
    /// Clients by peer address, so an agent's sessions reuse an established connection.
    pub clients: Arc<ClientCache>,
}

/// Connections kept per peer address: a no-op sync on an established connection is a few
/// small requests, not a new TLS handshake with two certificate chains.
#[derive(Debug, Default)]
pub struct ClientCache(std::sync::Mutex<std::collections::HashMap<String, CachedClient>>);

/// A client and the slot its TLS verifier fills with the server's instance.
type CachedClient = (Arc<Client>, Option<crate::tls::SeenPeer>);

impl ClientCache {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, CachedClient>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
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
            transport,
            clients: Arc::default(),
        }
    }
}

fn local_only(store: &Store) -> Vec<String> {
    store.config().local_only.iter().cloned().collect()
}

fn synced_tables(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(store
        .tables()?
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| !store.config().local_only.contains(t))
        .collect())
}

fn store_err(e: StoreError) -> ProtocolError {
    match e {
        StoreError::Invalid(_) | StoreError::LocalOnly(_) => {
            ProtocolError::new(codes::INVALID_PAGE, format!("page refused: {e}"))
        }
        other => ProtocolError::new(
            codes::STORE_FAILED,
            format!("store failed, nothing written: {other}"),
        ),
    }
}

/// The server side of the protocol, over one store.
pub struct Responder {
    store: Arc<Store>,
    url: Option<String>,
    on_notify: Option<tokio::sync::mpsc::Sender<Uuid>>,
    inbound: Arc<Inbound>,
    transport: Transport,
}

/// Checks that a request speaks for the instance its certificate names (with TLS).
fn check_caller(
    claimed: &Uuid,
    caller: &Caller,
    transport: &Transport,
) -> Result<(), ProtocolError> {
    match (transport, caller.instance) {
        (Transport::Plaintext, _) => Ok(()),
        (Transport::Tls { .. }, Some(cert)) if cert == *claimed => Ok(()),
        (Transport::Tls { .. }, Some(cert)) => Err(ProtocolError::new(
            codes::IDENTITY_MISMATCH,
            format!("the request claims instance {claimed} but the certificate is for {cert}"),
        )),
        (Transport::Tls { .. }, None) => Err(ProtocolError::new(
            codes::IDENTITY_MISMATCH,
            "no client certificate on this connection",
        )),
    }
}

/// Admits a page: revocations must be signed by the deployment CA (else the page is refused);
/// changes written by a revoked instance after its revocation are dropped. Returns how many
/// changes were dropped.
pub fn admit(
    transport: &Transport,
    changes: &mut Vec<RemoteChange>,
) -> Result<usize, ProtocolError> {
    let invalid = |m: String| ProtocolError::new(codes::INVALID_PAGE, m);
    for ch in changes.iter().filter(|c| c.table == mesh::REVOCATIONS) {
        let Transport::Tls { identity, .. } = transport else {
            return Err(invalid(
                "revocations are only accepted within a deployment".into(),
            ));
        };
        if ch.state.deleted.is_some() {
            return Err(invalid("a revocation cannot be deleted".into()));
        }
        mesh::verify_revocation(&identity.ca_pem, &ch.state.live_fields())
            .map_err(|e| invalid(format!("page refused: {e}")))?;
    }
    let Transport::Tls { revoked, .. } = transport else {
        return Ok(0);
    };
    let all = revoked.all();
    if all.is_empty() {
        return Ok(0);
    }
    let cutoff: std::collections::HashMap<Uuid, u64> = all
        .iter()
        .map(|(id, at)| {
            (
                *id,
                crate::clock::ts_from_millis(at.timestamp_millis().max(0) as u64),
            )
        })
        .collect();
    let before = changes.len();
    changes.retain(|ch| {
        !ch.state
            .vv
            .iter()
            .any(|(node, ts)| cutoff.get(node).is_some_and(|c| ts > c))
    });
    let dropped = before - changes.len();
    if dropped > 0 {
        warn!(
            dropped,
            "refused changes written by revoked instances after their revocation"
        );
    }
    Ok(dropped)
}

/// Peers that have a session with us in progress (hello seen, last push not yet), so the agent
/// does not start a second, overlapping session with the same peer.
#[derive(Default)]
pub struct Inbound(std::sync::Mutex<std::collections::HashMap<Uuid, Instant>>);

/// How long an inbound session counts as in progress without its last push.
const INBOUND_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

impl Inbound {
    fn begin(&self, peer: Uuid) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, Instant::now());
    }

    fn end(&self, peer: &Uuid) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }

    /// True while `peer` runs a session with us.
    pub fn active(&self, peer: &Uuid) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .is_some_and(|t| t.elapsed() < INBOUND_GRACE)
    }
}

impl Responder {
    /// A responder for `store`; `url` is told to peers; notifications go to `on_notify`.
    pub fn new(
        store: Arc<Store>,
        url: Option<String>,
        on_notify: Option<tokio::sync::mpsc::Sender<Uuid>>,
        transport: Transport,
    ) -> Self {
        Self {
            store,
            url,
            on_notify,
            inbound: Arc::default(),
            transport,
        }
    }

    /// Sessions peers are running with us.
    pub fn inbound(&self) -> Arc<Inbound> {
        self.inbound.clone()
    }

    /// The store served.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn me(&self) -> PeerInfo {
        let i = self.store.instance();
        PeerInfo {
            instance: i.id,
            name: i.name,
            owner: i.owner,
            contact: i.contact,
            url: self.url.clone(),
        }
    }

    /// `fieldsync_hello`; `remote` is the TCP peer, used when the caller's url has no host.
    pub fn hello(&self, mut h: Hello, caller: Caller) -> Result<HelloReply, ProtocolError> {
        check_caller(&h.peer.instance, &caller, &self.transport)?;
        h.peer.url = h.peer.url.map(|u| reachable_url(&u, caller.addr));
        let protocol = protocol::negotiate(h.protocol_min, h.protocol_max)?;
        let me = self.me();
        if h.peer.instance == me.instance {
            return Err(ProtocolError::new(
                codes::SAME_INSTANCE,
                format!(
                    "peer has our own instance id {}: a copied data directory? \
                     Give one of them a new identity",
                    me.instance
                ),
            ));
        }
        self.inbound.begin(h.peer.instance);
        let received_upto = self
            .store
            .update_peer(&h.peer.instance, |row| {
                note_peer(row, &h.peer, h.clock_ms);
                row.last_seen = Some(Utc::now());
                if h.head < row.received_upto {
                    warn!(peer = %h.peer.instance, head = h.head, had = row.received_upto,
                          "peer's feed is behind what we received from it (restored?): resyncing from 0");
                    row.received_upto = 0;
                }
                row.received_upto
            })
            .map_err(store_err)?;
        let pos = self.store.position().map_err(store_err)?;
        let encoding = if h.encodings.iter().any(|e| e == ENC_ZSTD) {
            ENC_ZSTD
        } else {
            ENC_JSON
        };
        Ok(HelloReply {
            protocol,
            peer: me,
            clock_ms: wall_millis(),
            head: pos.head,
            knowledge: pos.knowledge,
            received_upto,
            encoding: encoding.to_string(),
            local_only: local_only(&self.store),
            tables: synced_tables(&self.store).map_err(store_err)?,
        })
    }

    /// `fieldsync_pull`.
    pub fn pull(&self, r: PullRequest, caller: Caller) -> Result<Page, ProtocolError> {
        check_caller(&r.from, &caller, &self.transport)?;
        let head = self.store.seq();
        if r.since > head {
            return Err(ProtocolError::new(
                codes::POSITION_FROM_FUTURE,
                format!(
                    "position {} is beyond this instance's feed head {head}: \
                     was this instance restored from a backup? Reset the position to 0",
                    r.since
                ),
            ));
        }
        let cfg = &self.store.config().sync;
        let limit = (r.limit as usize).clamp(1, cfg.page_records.min(protocol::MAX_PAGE_RECORDS));
        let max_bytes = (r.max_bytes as usize).clamp(1024, cfg.page_bytes);
        let skip: BTreeSet<String> = r.local_only.into_iter().collect();
        let out = self
            .store
            .outgoing(r.since, limit, max_bytes, &r.knowledge, &skip, Some(r.from))
            .map_err(store_err)?;
        Ok(Page {
            since: r.since,
            next: out.next,
            more: out.more,
            count: out.changes.len() as u32,
            data: protocol::encode_changes(&out.changes, &r.encoding)?,
            encoding: r.encoding,
        })
    }

    /// `fieldsync_push`: applies one page and advances our position for the caller atomically.
    pub fn push(&self, r: PushRequest, caller: Caller) -> Result<PushReply, ProtocolError> {
        check_caller(&r.from, &caller, &self.transport)?;
        let mut changes = protocol::decode_changes(&r.page)?;
        admit(&self.transport, &mut changes)?;
        if self.store.peer(&r.from).map_err(store_err)?.is_none() {
            return Err(ProtocolError::new(
                codes::UNKNOWN_PEER,
                format!("instance {} must say hello before pushing", r.from),
            ));
        }
        let page = &r.page;
        let mut gap = None;
        let mut received_upto = 0;
        let stats = self
            .store
            .apply_remote(Some(r.from), &changes, |txn| {
                let mut row = self.store.peer(&r.from)?.unwrap_or_default();
                if page.since > row.received_upto {
                    gap = Some(row.received_upto);
                    return Err(StoreError::BadResolution("gap".into()));
                }
                row.received_upto = row.received_upto.max(page.next);
                if !page.more {
                    if let Some(k) = &r.knowledge {
                        self.store.stage_knowledge(txn, k)?;
                    }
                    row.last_update = Some(Utc::now());
                    row.sync_count += 1;
                    row.last_error = None;
                }
                received_upto = row.received_upto;
                self.store.stage_peer(txn, &row);
                Ok(())
            })
            .inspect(|_| {
                if !page.more {
                    self.inbound.end(&r.from);
                }
            })
            .map_err(|e| match gap {
                Some(had) => ProtocolError::new(
                    codes::POSITION_GAP,
                    format!(
                        "page starts after position {} but only {had} was received: \
                         resend from {had}",
                        page.since
                    ),
                ),
                None => store_err(e),
            })?;
        Ok(PushReply {
            received_upto,
            stats,
        })
    }

    /// `fieldsync_notify`.
    pub fn notify(&self, n: Notify, caller: Caller) -> Result<(), ProtocolError> {
        check_caller(&n.from, &caller, &self.transport)?;
        if let Some(tx) = &self.on_notify {
            // A full queue means a sync is already pending; dropping the extra nudge is fine.
            let _ = tx.try_send(n.from);
        }
        Ok(())
    }

    /// `fieldsync_digest`.
    pub fn digest(&self, r: DigestRequest) -> Result<DigestReply, ProtocolError> {
        validate_table(&r.table)
            .map_err(|e| ProtocolError::new(codes::INVALID_TABLE, e.to_string()))?;
        let prefix = hex::decode(&r.prefix).map_err(|e| {
            ProtocolError::new(
                codes::INVALID_TABLE,
                format!("prefix {:?} is not hex: {e}", r.prefix),
            )
        })?;
        digest_buckets(&self.store, &r.table, &prefix, false).map_err(store_err)
    }
}

/// An agent listening on 0.0.0.0 tells peers "0.0.0.0:7437"; they reach it at the address the
/// connection came from, with the advertised port.
fn reachable_url(url: &str, remote: Option<std::net::SocketAddr>) -> String {
    match (url.parse::<std::net::SocketAddr>(), remote) {
        (Ok(a), Some(r)) if a.ip().is_unspecified() => {
            std::net::SocketAddr::new(r.ip(), a.port()).to_string()
        }
        _ => url.to_string(),
    }
}

fn note_peer(row: &mut PeerRow, p: &PeerInfo, clock_ms: u64) {
    let now = Utc::now();
    row.instance = p.instance;
    row.name = p.name.clone();
    row.owner = p.owner.clone();
    row.contact = p.contact.clone();
    if let Some(u) = &p.url {
        row.url = u.clone();
    }
    row.first_seen.get_or_insert(now);
    row.last_attempt = Some(now);
    // A peer's clock is whatever it says: clamp so an absurd one cannot overflow the offset.
    row.clock_offset_ms = clock_ms.min(i64::MAX as u64) as i64 - wall_millis() as i64;
}

/// Buckets of records with ids under `prefix`, or the records themselves when there are few.
pub fn digest_buckets(
    store: &Store,
    table: &str,
    prefix: &[u8],
    force_records: bool,
) -> Result<DigestReply, StoreError> {
    const LEAF: usize = 256;
    let mut items: Vec<(Uuid, [u8; 32])> = Vec::new();
    for r in store.scan_ids(table, prefix) {
        let (id, rec) = r?;
        let content = serde_json::json!({
            "deleted": !rec.state.is_alive(),
            "fields": serde_json::Value::Object(rec.state.live_fields()),
        });
        items.push((
            id,
            Sha256::digest(canonical_json(&content).as_bytes()).into(),
        ));
    }
    let bucket = |p: &[u8], items: &[(Uuid, [u8; 32])]| {
        let mut h = Sha256::new();
        for (id, c) in items {
            h.update(id.as_bytes());
            h.update(c);
        }
        Bucket {
            prefix: hex::encode(p),
            count: items.len() as u64,
            hash: hex::encode(h.finalize()),
        }
    };
    let total = bucket(prefix, &items);
    if items.len() <= LEAF || force_records || prefix.len() >= 16 {
        let records = items.iter().map(|(id, c)| (*id, hex::encode(c))).collect();
        return Ok(DigestReply {
            total,
            buckets: vec![],
            records: Some(records),
        });
    }
    let depth = prefix.len();
    let mut buckets = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let b = items[start].0.as_bytes()[depth];
        let end = start + items[start..].partition_point(|(id, _)| id.as_bytes()[depth] == b);
        let mut p = prefix.to_vec();
        p.push(b);
        buckets.push(bucket(&p, &items[start..end]));
        start = end;
    }
    Ok(DigestReply {
        total,
        buckets,
        records: None,
    })
}

/// A client for `addr` over `transport`, and the slot where TLS puts the peer's instance.
fn connect(
    addr: &str,
    transport: &Transport,
) -> Result<(Client, Option<crate::tls::SeenPeer>), SyncError> {
    let terr = |message: String| SyncError::Transport {
        addr: addr.to_string(),
        message,
    };
    match transport {
        Transport::Plaintext => Ok((Client::connect(addr, None).map_err(terr)?, None)),
        Transport::Tls { identity, revoked } => {
            let (cfg, seen) = crate::tls::client_config(identity, revoked.clone())
                .map_err(|e| terr(e.to_string()))?;
            Ok((Client::connect(addr, Some(cfg)).map_err(terr)?, Some(seen)))
        }
    }
}

/// Fails unless the peer's certificate is for the instance it says it is.
fn check_server(seen: &Option<crate::tls::SeenPeer>, claimed: &Uuid) -> Result<(), SyncError> {
    let Some(slot) = seen else { return Ok(()) };
    let cert = *slot.lock().unwrap_or_else(|e| e.into_inner());
    if cert != Some(*claimed) {
        return Err(SyncError::Peer(ProtocolError::new(
            codes::IDENTITY_MISMATCH,
            format!("peer claims instance {claimed} but its certificate is for {cert:?}"),
        )));
    }
    Ok(())
}

/// Runs one full session with the peer at `addr`: hello, pull everything new, push everything new.
pub async fn sync_with(
    store: Arc<Store>,
    addr: &str,
    opts: &SessionOptions,
) -> Result<SessionReport, SyncError> {
    let span = info_span!("sync", peer_addr = %addr, peer = tracing::field::Empty);
    info!(parent: &span, "session started");
    let cached = opts.clients.map().get(addr).cloned();
    let reused = cached.is_some();
    let (client, seen) = match cached {
        Some(c) => c,
        None => {
            let (c, s) = connect(addr, &opts.transport)?;
            let c = (Arc::new(c), s);
            opts.clients.map().insert(addr.to_string(), c.clone());
            c
        }
    };
    let tracker = crate::progress::start(addr);
    let mut result = session(&store, &client, &seen, addr, opts, &tracker)
        .instrument(span.clone())
        .await;
    if result.is_err() {
        opts.clients.map().remove(addr);
    }
    if reused && matches!(result, Err(SyncError::Transport { .. })) {
        // The kept connection may have been closed by the peer (idle timeout, restart): one
        // retry on a fresh connection; the session resumes from the stored positions.
        let (c, s) = connect(addr, &opts.transport)?;
        let c = (Arc::new(c), s);
        opts.clients.map().insert(addr.to_string(), c.clone());
        result = session(&store, &c.0, &c.1, addr, opts, &tracker)
            .instrument(span.clone())
            .await;
        if result.is_err() {
            opts.clients.map().remove(addr);
        }
    }
    tracker.finish(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    match &result {
        Ok(r) => info!(parent: &span, peer = %r.peer.instance, name = %r.peer.name,
                       received = r.received.records, applied = r.received.applied,
                       sent = r.sent.records, conflicts = r.received.conflicts + r.sent.conflicts,
                       ms = r.received.ms + r.sent.ms, "session finished"),
        Err(e) => {
            let known = store
                .peers()
                .ok()
                .and_then(|ps| ps.into_iter().find(|p| p.url == addr));
            warn!(parent: &span, error = %e, peer = ?known.as_ref().map(|p| p.instance),
                  name = ?known.map(|p| p.name), "session failed")
        }
    }
    result
}

async fn session(
    store: &Arc<Store>,
    client: &Client,
    seen: &Option<crate::tls::SeenPeer>,
    addr: &str,
    opts: &SessionOptions,
    tracker: &crate::progress::Tracker,
) -> Result<SessionReport, SyncError> {
    use crate::progress::Way;
    let pos = blocking(store, |s| s.position()).await?;
    let me = store.instance();
    let hello = our_hello(
        store,
        &pos,
        opts.url.clone(),
        vec![opts.encoding.clone(), ENC_JSON.to_string()],
    )?;
    let reply = client.hello(&hello).await.map_err(|e| e.into_sync(addr))?;
    let peer = reply.peer.clone();
    tracing::Span::current().record("peer", tracing::field::display(peer.instance));
    check_server(seen, &peer.instance)?;
    if peer.instance == me.id {
        return Err(SyncError::Peer(ProtocolError::new(
            codes::SAME_INSTANCE,
            format!("peer at {addr} has our own instance id {}", me.id),
        )));
    }
    protocol::negotiate(reply.protocol, reply.protocol)?;
    tracker.peer(peer.instance, &peer.name, reply.received_upto);
    let mut report = SessionReport {
        peer: peer.clone(),
        ..Default::default()
    };
    let mut since = {
        let store = store.clone();
        let peer = peer.clone();
        let url = addr.to_string();
        let (clock_ms, head) = (reply.clock_ms, reply.head);
        blocking(&store, move |s| {
            s.update_peer(&peer.instance, |row| {
                note_peer(row, &peer, clock_ms);
                // The address we just reached it at beats whatever it says about itself.
                row.url = url;
                if head < row.received_upto {
                    warn!(head, had = row.received_upto,
                          "peer's feed is behind what we received from it (restored?): resyncing from 0");
                    row.received_upto = 0;
                }
                row.received_upto
            })
        })
        .await?
    };

    // Pull: pages of the peer's changes, each applied with its position in one batch.
    let started = Instant::now();
    let their_knowledge = reply.knowledge.clone();
    tracker.direction(Way::Pull, since, reply.head);
    for _ in 0..u32::MAX {
        let req = PullRequest {
            from: me.id,
            since,
            limit: opts.page_records as u32,
            max_bytes: opts.page_bytes as u32,
            knowledge: pos.knowledge.clone(),
            encoding: reply.encoding.clone(),
            local_only: hello.local_only.clone(),
        };
        let page = client.pull(&req).await.map_err(|e| e.into_sync(addr))?;
        if page.since != since || (page.more && page.next <= since) {
            return Err(SyncError::Peer(ProtocolError::new(
                codes::INVALID_PAGE,
                format!(
                    "peer sent a page for position {}..{} when asked for {since}",
                    page.since, page.next
                ),
            )));
        }
        let mut changes = protocol::decode_changes(&page).map_err(SyncError::Peer)?;
        admit(&opts.transport, &mut changes).map_err(SyncError::Peer)?;
        let (n, page_bytes) = (changes.len() as u64, page.data.to_string().len() as u64);
        report.received.pages += 1;
        report.received.records += n;
        report.received.bytes += page_bytes;
        let (next, more) = (page.next, page.more);
        let k = their_knowledge.clone();
        let pid = peer.instance;
        let stats: ApplyStats = blocking(store, move |s| {
            s.apply_remote(Some(pid), &changes, |txn| {
                let mut row = s.peer(&pid)?.unwrap_or_default();
                row.received_upto = row.received_upto.max(next);
                if !more {
                    s.stage_knowledge(txn, &k)?;
                }
                s.stage_peer(txn, &row);
                Ok(())
            })
        })
        .await?;
        report.received.applied += stats.applied;
        report.received.conflicts += stats.conflicts;
        tracker.page(Way::Pull, n, page_bytes, stats.conflicts, next, !more);
        since = next;
        if !more {
            break;
        }
    }
    report.received.ms = started.elapsed().as_millis() as u64;

    // Push: our changes since what the peer has, skipping what it already knows.
    let started = Instant::now();
    let skip: BTreeSet<String> = reply.local_only.iter().cloned().collect();
    let mut since = reply.received_upto;
    tracker.direction(Way::Push, since, pos.head);
    for _ in 0..u32::MAX {
        let (k, sk, limit, bytes) = (
            reply.knowledge.clone(),
            skip.clone(),
            opts.page_records.min(protocol::MAX_PAGE_RECORDS),
            opts.page_bytes,
        );
        let pid = peer.instance;
        let out = blocking(store, move |s| {
            s.outgoing(since, limit, bytes, &k, &sk, Some(pid))
        })
        .await?;
        let page = Page {
            since,
            next: out.next,
            more: out.more,
            count: out.changes.len() as u32,
            data: protocol::encode_changes(&out.changes, &reply.encoding)
                .map_err(SyncError::Peer)?,
            encoding: reply.encoding.clone(),
        };
        let page_bytes = page.data.to_string().len() as u64;
        report.sent.pages += 1;
        report.sent.records += out.changes.len() as u64;
        report.sent.bytes += page_bytes;
        let req = PushRequest {
            from: me.id,
            knowledge: (!out.more).then(|| pos.knowledge.clone()),
            page,
        };
        let r = client.push(&req).await.map_err(|e| e.into_sync(addr))?;
        report.sent.applied += r.stats.applied;
        report.sent.conflicts += r.stats.conflicts;
        tracker.page(
            Way::Push,
            out.changes.len() as u64,
            page_bytes,
            r.stats.conflicts,
            out.next,
            !out.more,
        );
        since = out.next;
        if !out.more {
            break;
        }
    }
    report.sent.ms = started.elapsed().as_millis() as u64;

    let pid = peer.instance;
    blocking(store, move |s| {
        s.update_peer(&pid, |row| {
            row.last_update = Some(Utc::now());
            row.sync_count += 1;
            row.last_error = None;
        })
    })
    .await?;
    Ok(report)
}

/// Records a failed session in the peer's row (best effort: the session already failed).
pub fn note_failure(store: &Store, peer: Option<Uuid>, error: &SyncError) {
    let Some(pid) = peer else { return };
    if let Ok(Some(_)) = store.peer(&pid) {
        let _ = store.update_peer(&pid, |row| {
            row.last_error = Some(error.to_string());
            row.last_attempt = Some(Utc::now());
        });
    }
}

/// Runs store work off the async threads (sled and fsync block).
async fn blocking<T, F>(store: &Arc<Store>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| StoreError::Decode(format!("store task failed: {e}")))?
}

/// One table's verify result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TableCheck {
    /// Table.
    pub table: String,
    /// Same content on both sides.
    pub in_sync: bool,
    /// Records here (deleted included).
    pub local_count: u64,
    /// Records there.
    pub remote_count: u64,
    /// Ids whose content differs or that only one side has.
    pub differing: Vec<Uuid>,
}

/// The hello this instance sends: identity, versions, position and knowledge.
fn our_hello(
    store: &Store,
    pos: &crate::store::Position,
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
        encodings,
        local_only: local_only(store),
        tables: synced_tables(store)?,
    })
}

/// Compares every table with the peer by bisecting digest buckets; transfers no records.
pub async fn verify_with(
    store: Arc<Store>,
    addr: &str,
    transport: &Transport,
) -> Result<Vec<TableCheck>, SyncError> {
    let (client, seen) = connect(addr, transport)?;
    let pos = blocking(&store, |s| s.position()).await?;
    let hello = our_hello(&store, &pos, None, vec![ENC_ZSTD.into()])?;
    let reply = client.hello(&hello).await.map_err(|e| e.into_sync(addr))?;
    check_server(&seen, &reply.peer.instance)?;
    let mut tables: BTreeSet<String> = reply.tables.iter().cloned().collect();
    tables.extend(hello.tables.iter().cloned());
    let mut out = Vec::new();
    for table in tables {
        let mut differing = Vec::new();
        let mut stack: Vec<Vec<u8>> = vec![vec![]];
        let (mut local_count, mut remote_count) = (None, None);
        // Bounded: each level adds one id byte, and ids have 16.
        while let Some(prefix) = stack.pop() {
            let remote = client
                .digest(&DigestRequest {
                    table: table.clone(),
                    prefix: hex::encode(&prefix),
                })
                .await
                .map_err(|e| e.into_sync(addr))?;
            let force = remote.records.is_some();
            let (t, p) = (table.clone(), prefix.clone());
            let local = blocking(&store, move |s| digest_buckets(s, &t, &p, force)).await?;
            remote_count.get_or_insert(remote.total.count);
            local_count.get_or_insert(local.total.count);
            if remote.total == local.total {
                continue;
            }
            match (remote.records, local.records) {
                (Some(r), Some(l)) => {
                    let r: std::collections::BTreeMap<Uuid, String> = r.into_iter().collect();
                    let l: std::collections::BTreeMap<Uuid, String> = l.into_iter().collect();
                    let ids: BTreeSet<&Uuid> = r.keys().chain(l.keys()).collect();
                    differing.extend(ids.into_iter().filter(|id| r.get(id) != l.get(id)));
                }
                _ => {
                    let mut sub: std::collections::BTreeMap<
                        String,
                        (Option<Bucket>, Option<Bucket>),
                    > = Default::default();
                    for b in remote.buckets {
                        let key = b.prefix.clone();
                        sub.entry(key).or_default().0 = Some(b);
                    }
                    for b in local.buckets {
                        let key = b.prefix.clone();
                        sub.entry(key).or_default().1 = Some(b);
                    }
                    for (p, (r, l)) in sub {
                        if r != l {
                            stack.push(hex::decode(p).unwrap_or_default());
                        }
                    }
                }
            }
        }
        differing.sort();
        out.push(TableCheck {
            in_sync: differing.is_empty(),
            table,
            local_count: local_count.unwrap_or(0),
            remote_count: remote_count.unwrap_or(0),
            differing,
        });
    }
    Ok(out)
}

/// Tells a peer we have new changes.
pub async fn notify(store: &Store, addr: &str, transport: &Transport) -> Result<(), SyncError> {
    let (client, _) = connect(addr, transport)?;
    client
        .notify(&Notify {
            from: store.id(),
            head: store.seq(),
        })
        .await
        .map_err(|e| e.into_sync(addr))
}

impl crate::protocol::client::CallError {
    /// Turns a failed call to the peer at `addr` into a session error.
    pub fn into_sync(self, addr: &str) -> SyncError {
        match self {
            crate::protocol::client::CallError::Protocol(e) => SyncError::Refused(e),
            crate::protocol::client::CallError::Transport(message) => SyncError::Transport {
                addr: addr.to_string(),
                message,
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
