//! The answering side of a session: [`Responder`] implements the protocol's
//! [`SyncService`] over one store. Pages pushed to us go through the one receive path
//! ([`super::receive`]), exactly like the pages we pull as initiator.

use super::receive::{self, note_hello, store_refusal, HelloSeen};
use super::reconcile;
use super::verify::digest_buckets;
use super::{held_summaries, local_only, synced_tables};
use crate::clock::wall_millis;
use crate::model::validate_table;
use crate::progress::Way;
use crate::protocol::server::{Caller, SyncService};
use crate::protocol::{
    self, codes, DigestReply, DigestRequest, FetchRequest, Hello, HelloReply, Notify, Page,
    PeerInfo, ProtocolError, PullRequest, PushReply, PushRequest, ReconcileReply, ReconcileRequest,
    ENC_JSON, ENC_ZSTD,
};
use crate::store::Store;
use crate::tls::Transport;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The server side of the protocol, over one store.
pub struct Responder {
    store: Arc<Store>,
    url: Option<String>,
    on_notify: Option<tokio::sync::mpsc::Sender<Uuid>>,
    inbound: Arc<Inbound>,
    transport: Transport,
    /// Progress of the sessions peers run with us, by peer (see [`crate::progress`]).
    live: Mutex<HashMap<Uuid, Shown>>,
    /// Pushes in progress, by peer: the `since` of each (see [`Pushes`]).
    pushes: Pushes,
}

/// Pushes in progress, by peer, each by the position its page starts after. A caller may send
/// page k+1 before page k is answered (pipelined pushes): k+1 is decoded and its signatures
/// checked at once, then waits for its turn ([`Responder::wait_turn`]) until k's batch is
/// applied, and merges while k's flush runs (the group commit makes both durable, in order).
#[derive(Default)]
struct Pushes(Mutex<HashMap<Uuid, Vec<u64>>>);

/// One push in [`Pushes`]; leaves it when dropped.
struct PushSlot<'a> {
    pushes: &'a Pushes,
    peer: Uuid,
    since: u64,
}

impl Pushes {
    fn begin(&self, peer: Uuid, since: u64) -> PushSlot<'_> {
        lock(&self.0).entry(peer).or_default().push(since);
        PushSlot {
            pushes: self,
            peer,
            since,
        }
    }

    /// True while a push of `peer` whose page starts before `since` is in progress.
    fn earlier_in_flight(&self, peer: &Uuid, since: u64) -> bool {
        lock(&self.0)
            .get(peer)
            .is_some_and(|v| v.iter().any(|s| *s < since))
    }
}

impl Drop for PushSlot<'_> {
    fn drop(&mut self) {
        let mut m = lock(&self.pushes.0);
        if let Some(v) = m.get_mut(&self.peer) {
            if let Some(i) = v.iter().position(|s| *s == self.since) {
                v.swap_remove(i);
            }
            if v.is_empty() {
                m.remove(&self.peer);
            }
        }
    }
}

/// Longest a pushed page waits for the page before it (pipelined pushes); then it is judged as
/// it stands (a gap is refused and resent by the caller).
const PUSH_TURN_WAIT: Duration = Duration::from_secs(60);

/// A session a peer runs with us, as shown on the progress board.
struct Shown {
    tracker: crate::progress::Tracker,
    /// Where the peer's last pull ended: it has our feed up to here once it pushes.
    pulled_to: u64,
    /// True once the peer's first pull set the sending direction.
    sending: bool,
}

/// Peers that have a session with us in progress (hello seen, last push not yet), so the agent
/// does not start a second, overlapping session with the same peer.
#[derive(Default)]
pub struct Inbound(Mutex<HashMap<Uuid, Instant>>);

/// How long an inbound session counts as in progress without its last push.
const INBOUND_GRACE: Duration = Duration::from_secs(60);

/// How recent an inbound session's last request must be for [`Inbound::any_active_but`].
const INBOUND_RECENT: Duration = Duration::from_secs(10);

impl Inbound {
    fn begin(&self, peer: Uuid) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, Instant::now());
    }

    /// A request of the session arrived: it is still in progress (a long session under load
    /// must not look finished after [`INBOUND_GRACE`], or the agent would start a second one
    /// with the same peer that sends the same pages again).
    fn touch(&self, peer: &Uuid) {
        if let Some(t) = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(peer)
        {
            *t = Instant::now();
        }
    }

    fn end(&self, peer: &Uuid) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }

    /// True while a laptop other than `peer` (any, if `None`) runs a session with us that
    /// made a request in the last [`INBOUND_RECENT`]. The agent only defers notifies on it
    /// (`agent.rs`), so a session that ended without its last push (a failure) must not hold
    /// them back for the whole [`INBOUND_GRACE`] (a trial saw a chain converge ~50 s late).
    pub fn any_active_but(&self, peer: Option<Uuid>) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(p, t)| Some(*p) != peer && t.elapsed() < INBOUND_RECENT)
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

/// Checks that a request speaks for the instance its certificate names (with TLS), and that
/// this instance is not revoked by now ([`check_not_revoked`]).
fn check_caller(
    claimed: &Uuid,
    caller: &Caller,
    transport: &Transport,
) -> Result<(), ProtocolError> {
    check_not_revoked(caller, transport)?;
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

/// Refuses a request whose certificate names an instance revoked since its connection opened.
///
/// The handshake refuses revoked certificates, but a keep-alive connection opened before the
/// revocation arrived would otherwise keep working: so every request is checked against the
/// revocations held now (`Transport::Tls.revoked`, refreshed by the agent on every store change).
/// Code [`codes::REVOKED`] also makes the server close the connection after this answer, and
/// its words are the ones the revoked laptop's client reads as "revoked"
/// ([`crate::protocol::client::REVOKED_BY_PEER`]).
fn check_not_revoked(caller: &Caller, transport: &Transport) -> Result<(), ProtocolError> {
    let (Transport::Tls { revoked, .. }, Some(cert)) = (transport, caller.instance) else {
        return Ok(());
    };
    match revoked.get(&cert) {
        None => Ok(()),
        Some(at) => Err(ProtocolError::new(
            codes::REVOKED,
            format!(
                "{}: instance {cert} was revoked by the deployment on {} after this connection \
                 opened; the connection is closed. Ask the coordinator for a new credential",
                crate::protocol::client::REVOKED_BY_PEER,
                at.format("%Y-%m-%d %H:%M UTC")
            ),
        )),
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
            live: Mutex::default(),
            pushes: Pushes::default(),
        }
    }

    /// Waits until the page a push of `peer` starting after `since` follows is in: our
    /// position for the peer has reached `since`, or no earlier push of it is in progress
    /// (it failed: this page is then refused as a gap), or [`PUSH_TURN_WAIT`] passed. Woken by
    /// every batch applied to the store, so it goes on while the earlier page is flushed.
    fn wait_turn(&self, peer: &Uuid, since: u64) {
        let deadline = Instant::now() + PUSH_TURN_WAIT;
        loop {
            let seen = self.store.applied_batches();
            let had = self
                .store
                .peer(peer)
                .ok()
                .flatten()
                .map_or(0, |row| row.received_upto);
            if since <= had || !self.pushes.earlier_in_flight(peer, since) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            // An earlier push that fails applies nothing: look again now and then anyway.
            self.store
                .wait_applied(seen, left.min(Duration::from_millis(50)));
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
}

impl SyncService for Responder {
    /// `fieldsync_hello`; the caller's TCP address fills in a url without a host.
    fn hello(&self, mut h: Hello, caller: Caller) -> Result<HelloReply, ProtocolError> {
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
        // Protocol 4: a caller that left out its knowledge named it by hash; it must be the
        // knowledge we hold for it.
        if let Some(hash) = h.knowledge_hash.clone() {
            let held = self
                .store
                .peer(&h.peer.instance)
                .map_err(|e| store_refusal(&e))?
                .map(|row| row.knowledge)
                .filter(|k| protocol::knowledge_hash(k) == hash);
            match held {
                Some(k) => h.knowledge = k,
                None => {
                    return Err(ProtocolError::new(
                        codes::KNOWLEDGE_NEEDED,
                        format!(
                            "this instance does not hold knowledge with hash {hash} for {}: \
                             say hello again with the knowledge",
                            h.peer.instance
                        ),
                    ))
                }
            }
        }
        let received_upto = note_hello(
            &self.store,
            &h.peer,
            h.clock_ms,
            h.head,
            &h.knowledge,
            h.incarnation.as_ref(),
            HelloSeen::Inbound,
        )
        .map_err(|e| e.to_protocol())?;
        self.inbound.begin(h.peer.instance);
        crate::presence::contact(h.peer.instance);
        self.show_hello(&h, received_upto, &caller);
        // The caller holds our own events up to its claim: if we hold fewer, we were rolled
        // back, and the new incarnation in this reply makes the caller resend them.
        if let Some(mine) = h.knowledge.get(&me.instance) {
            self.store
                .note_self_claim(&h.peer.instance, *mine)
                .map_err(|e| store_refusal(&e))?;
        }
        let pos = self.store.position().map_err(|e| store_refusal(&e))?;
        let encoding = if h.encodings.iter().any(|e| e == ENC_ZSTD) {
            ENC_ZSTD
        } else {
            ENC_JSON
        };
        // The caller holds our knowledge already: name it instead of sending it.
        let ours = protocol::knowledge_hash(&pos.knowledge);
        let same = h.peer_knowledge_hash.as_ref() == Some(&ours);
        // The caller says its feed past what we received holds nothing for us, judged by the
        // knowledge we hold now (`Hello::nothing_past`): what it would push is an empty page
        // (the first sync back after we pushed it records: its feed moved by their echoes).
        let nothing_for_us = same && h.nothing_past.is_some_and(|p| p <= received_upto);
        // Nothing to move either way (protocol 4): the session ends with this reply, as a last
        // push would end it (`sync_count`, `last_update`, the board). Our feed may have moved
        // past the caller's position with nothing in it for the caller: the echoes of pages it
        // just pushed (the sync right after one that moved records).
        let done = h
            .received_upto
            .is_some_and(|u| u >= pos.head || self.store.nothing_to_send(u, &h.knowledge))
            && (h.head <= received_upto || nothing_for_us)
            && super::told::covers(&pos.knowledge, &h.knowledge)
            && super::told::covers(&h.knowledge, &pos.knowledge);
        let received_upto = if done {
            received_upto.max(h.head)
        } else {
            received_upto
        };
        if done {
            self.store
                .update_peer(&h.peer.instance, |row| {
                    row.last_update = Some(chrono::Utc::now());
                    row.sync_count += 1;
                    // As the empty push would have: the caller's feed is received to its head.
                    row.received_upto = row.received_upto.max(received_upto);
                })
                .map_err(|e| store_refusal(&e))?;
            self.inbound.end(&h.peer.instance);
            if let Some(s) = lock(&self.live).remove(&h.peer.instance) {
                s.tracker.finish(Ok(()));
            }
        }
        // The caller stores this reply's knowledge as ours: our next hello to it may leave it
        // out (see `told`).
        super::told::note(me.instance, h.peer.instance, &pos.knowledge);
        Ok(HelloReply {
            protocol,
            peer: me,
            clock_ms: wall_millis(),
            head: pos.head,
            knowledge: if same {
                Default::default()
            } else {
                pos.knowledge
            },
            knowledge_hash: same.then_some(ours),
            done,
            received_upto,
            encoding: encoding.to_string(),
            local_only: local_only(&self.store),
            tables: synced_tables(&self.store).map_err(|e| store_refusal(&e))?,
            incarnation: Some(self.store.incarnation()),
            held: held_summaries(&self.store),
        })
    }

    /// `fieldsync_pull`: reads the published head and the feed, never the writer's lock, so it
    /// is answered while another peer's page is being committed.
    fn pull(&self, r: PullRequest, caller: Caller) -> Result<Page, ProtocolError> {
        check_caller(&r.from, &caller, &self.transport)?;
        self.inbound.touch(&r.from);
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
        // A small sync goes whole in one page, as the initiator asks (`session::page_limit`).
        let most = super::session::whole_small_sync(cfg.page_records, head.saturating_sub(r.since))
            .unwrap_or(cfg.page_records);
        let limit = (r.limit as usize).clamp(1, most.min(protocol::MAX_PAGE_RECORDS));
        let max_bytes = (r.max_bytes as usize).clamp(1024, cfg.page_bytes);
        let skip: BTreeSet<String> = r.local_only.into_iter().collect();
        // Taken before the feed is read: every event it covers is in the feed at or before
        // the head the read below reaches, so once the caller has the last page it holds all
        // of them and may adopt this instead of our hello knowledge, which misses whatever
        // arrived here during the session (an import still rolling forward, a third laptop's
        // pushes). Adopting the older one made the caller re-send those records to the next
        // laptop it met (trial 8, finding 9).
        let knowledge = self
            .store
            .position()
            .map_err(|e| store_refusal(&e))?
            .knowledge;
        let out = self
            .store
            .outgoing(r.since, limit, max_bytes, &r.knowledge, &skip, Some(r.from))
            .map_err(|e| store_refusal(&e))?;
        let page = Page {
            since: r.since,
            next: out.next,
            more: out.more,
            count: out.changes.len() as u32,
            data: protocol::encode_changes(&out.changes, &r.encoding)?,
            encoding: r.encoding,
            proofs: super::signed::proofs_for(&self.store, &self.transport, &out.changes)
                .map_err(|e| store_refusal(&e))?,
            // Only when it would teach the caller something (a no-op or reverse sync's last
            // page stays as small as before).
            knowledge: (!out.more && !super::told::covers(&r.knowledge, &knowledge))
                .then_some(knowledge),
        };
        self.show(&r.from, |s| {
            // Asking from `since` says the peer has our feed up to there.
            s.tracker.peer_has(r.since);
            if !s.sending {
                s.sending = true;
                s.tracker.direction(Way::Push, r.since, head);
            }
            let bytes = encoded_len(&page.data);
            s.tracker.page(
                Way::Push,
                page.count as u64,
                bytes,
                0,
                page.next,
                !page.more,
            );
            s.pulled_to = page.next;
        });
        Ok(page)
    }

    /// `fieldsync_push`: applies one page and advances our position for the caller atomically.
    fn push(&self, r: PushRequest, caller: Caller) -> Result<PushReply, ProtocolError> {
        check_caller(&r.from, &caller, &self.transport)?;
        self.inbound.touch(&r.from);
        let _slot = self.pushes.begin(r.from, r.page.since);
        // Decoding and signatures need nothing from the store: done before this page's turn.
        let checked = receive::check_page(&self.transport, &r.page).map_err(|e| e.to_protocol())?;
        // So is reading ahead the versions its merge will read (while the page before merges).
        self.store.warm_records(checked.records());
        self.wait_turn(&r.from, r.page.since);
        let got = receive::commit_checked(
            &self.store,
            &self.transport,
            r.from,
            &r.page,
            checked,
            r.knowledge.as_ref(),
            true,
        )
        .map_err(|e: receive::ReceiveError| e.to_protocol())?;
        self.show(&r.from, |s| {
            // A push comes after the peer's last pull: it has everything it pulled.
            s.tracker.peer_has(s.pulled_to);
            let bytes = encoded_len(&r.page.data);
            s.tracker.page(
                Way::Pull,
                got.records,
                bytes,
                got.committed.stats.conflicts,
                r.page.next,
                !r.page.more,
            );
        });
        if !r.page.more {
            self.inbound.end(&r.from);
            if let Some(s) = lock(&self.live).remove(&r.from) {
                s.tracker.finish(Ok(()));
            }
            // The session's pages are freed: hand the memory back so an idle agent is small
            // (after this reply, not before it).
            crate::store::trim_heap_soon();
        }
        Ok(PushReply {
            received_upto: got.committed.received_upto,
            stats: got.committed.stats,
        })
    }

    /// `fieldsync_notify`.
    fn notify(&self, n: Notify, caller: Caller) -> Result<(), ProtocolError> {
        check_caller(&n.from, &caller, &self.transport)?;
        if n.leaving {
            // Its agent is stopping: offline now, not at our next failed attempt.
            crate::presence::unreachable(n.from);
            return Ok(());
        }
        crate::presence::contact(n.from);
        if let Some(tx) = &self.on_notify {
            // A full queue means a sync is already pending; dropping the extra nudge is fine.
            let _ = tx.try_send(n.from);
        }
        Ok(())
    }

    /// `fieldsync_digest`.
    fn digest(&self, r: DigestRequest, caller: Caller) -> Result<DigestReply, ProtocolError> {
        // `digest` names no instance of its own: only the certificate's revocation is checked.
        check_not_revoked(&caller, &self.transport)?;
        validate_table(&r.table)
            .map_err(|e| ProtocolError::new(codes::INVALID_TABLE, e.to_string()))?;
        // A local-only table never leaves this laptop, not even as ids and content hashes
        // (a hash of a short value is guessed offline): refused exactly as `pull` leaves it out.
        if self.store.config().local_only.contains(&r.table) {
            return Err(ProtocolError::new(
                codes::INVALID_TABLE,
                format!(
                    "table {} is local-only on this instance and never synced: \
                     leave it out of verify",
                    r.table
                ),
            ));
        }
        let prefix = hex::decode(&r.prefix).map_err(|e| {
            ProtocolError::new(
                codes::INVALID_TABLE,
                format!("prefix {:?} is not hex: {e}", r.prefix),
            )
        })?;
        digest_buckets(&self.store, &r.table, &prefix, false).map_err(|e| store_refusal(&e))
    }

    /// `fieldsync_reconcile`: answers each range from the store's range sums.
    fn reconcile(
        &self,
        r: ReconcileRequest,
        caller: Caller,
    ) -> Result<ReconcileReply, ProtocolError> {
        check_caller(&r.from, &caller, &self.transport)?;
        if r.ranges.len() > protocol::MAX_RECONCILE_RANGES {
            return Err(ProtocolError::new(
                codes::INVALID_PARAMS,
                format!(
                    "{} ranges in one reconcile request, at most {} allowed: split it",
                    r.ranges.len(),
                    protocol::MAX_RECONCILE_RANGES
                ),
            ));
        }
        let mut checked = BTreeSet::new();
        let mut out = Vec::with_capacity(r.ranges.len());
        for q in &r.ranges {
            if checked.insert(q.table.as_str()) {
                self.check_synced_table(&q.table, "verify")?;
            }
            out.push(reconcile::answer(&self.store, q)?);
        }
        Ok(ReconcileReply { ranges: out })
    }

    /// `fieldsync_fetch`: whole records (state and every revision), whatever the caller's
    /// knowledge; ids we lack are left out.
    fn fetch(&self, r: FetchRequest, caller: Caller) -> Result<Page, ProtocolError> {
        check_caller(&r.from, &caller, &self.transport)?;
        self.check_synced_table(&r.table, "anti-entropy")?;
        if r.ids.len() > protocol::MAX_FETCH_IDS {
            return Err(ProtocolError::new(
                codes::INVALID_PARAMS,
                format!(
                    "{} ids in one fetch, at most {} allowed: split it",
                    r.ids.len(),
                    protocol::MAX_FETCH_IDS
                ),
            ));
        }
        let mut changes = Vec::new();
        for id in &r.ids {
            let c = self
                .store
                .outgoing_change(&r.table, id, &Default::default())
                .map_err(|e| store_refusal(&e))?;
            changes.extend(c);
        }
        Ok(Page {
            since: 0,
            next: 0,
            more: true,
            count: changes.len() as u32,
            data: protocol::encode_changes(&changes, &r.encoding)?,
            encoding: r.encoding,
            proofs: super::signed::proofs_for(&self.store, &self.transport, &changes)
                .map_err(|e| store_refusal(&e))?,
            knowledge: None,
        })
    }
}

impl Responder {
    /// A valid table name that is not local-only here (refused like `digest` refuses it).
    fn check_synced_table(&self, table: &str, what: &str) -> Result<(), ProtocolError> {
        validate_table(table)
            .map_err(|e| ProtocolError::new(codes::INVALID_TABLE, e.to_string()))?;
        if self.store.config().local_only.contains(table) {
            return Err(ProtocolError::new(
                codes::INVALID_TABLE,
                format!(
                    "table {table} is local-only on this instance and never synced: \
                     leave it out of {what}"
                ),
            ));
        }
        Ok(())
    }
}

impl Responder {
    /// A peer said hello: a new session on the board (replacing an unfinished one, which is
    /// recorded as stopped).
    fn show_hello(&self, h: &Hello, received_upto: u64, caller: &Caller) {
        let addr = caller
            .addr
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let tracker = crate::progress::start_inbound(&addr);
        if let Some(i) = caller.instance {
            tracker.socket(crate::protocol::counters::peer(i));
        }
        tracker.peer_named(h.peer.instance, &h.peer.name);
        tracker.direction(Way::Pull, received_upto, h.head);
        let shown = Shown {
            tracker,
            pulled_to: 0,
            sending: false,
        };
        let old = lock(&self.live).insert(h.peer.instance, shown);
        drop(old);
    }

    /// Updates the peer's session on the board, if it has one that is still shown.
    fn show(&self, peer: &Uuid, f: impl FnOnce(&mut Shown)) {
        let mut live = lock(&self.live);
        if let Some(s) = live.get_mut(peer) {
            if s.tracker.running() {
                f(s);
            } else {
                live.remove(peer);
            }
        }
    }
}

/// A page's encoded size: its base64 text as is (no copy), else its JSON.
fn encoded_len(data: &serde_json::Value) -> u64 {
    data.as_str()
        .map_or_else(|| data.to_string().len(), str::len) as u64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
