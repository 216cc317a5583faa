//! The daemon behind `fieldsync run`: serves the sync protocol, runs the control endpoint for
//! the CLI, finds peers with mDNS, and keeps them in sync on its own.
//!
//! Sessions start when a peer is discovered, when a peer notifies us of changes, periodically
//! as a fallback, and our local changes are announced to peers (debounced) so they pull. At
//! most one session per peer runs at a time; failures back off exponentially per peer. Every
//! task watches one shutdown signal; store work runs on blocking threads.

use crate::config::DiscoveryConfig;
use crate::control::{self, Executor};
use crate::discovery::{Advert, Discovery, PeerEvent};
use crate::protocol::server::{self, Traffic};
use crate::store::{PeerRow, Store};
use crate::sync::{self, Inbound, Responder, SessionOptions, SyncError};
use crate::tls::Transport;
use chrono::Utc;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use uuid::Uuid;

/// What the agent shows to `fieldsync status` while it runs.
pub type LiveStatus = Arc<Live>;

/// The running agent's state for `status`: a snapshot refreshed every second, plus the socket
/// counters read at query time (a sync shorter than a second must show up at once).
#[derive(Debug, Default)]
pub struct Live {
    snapshot: Mutex<serde_json::Value>,
    traffic: std::sync::OnceLock<Arc<Traffic>>,
    /// The sync address the agent serves (`HOST:PORT`), once bound.
    listen: std::sync::OnceLock<String>,
}

impl Live {
    /// The sync address the agent serves, once bound: what a session started inside the
    /// agent tells its peer in the hello, so the peer can answer our notifies and sync back.
    pub fn sync_url(&self) -> Option<String> {
        self.listen.get().cloned()
    }

    /// The current status as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = lock(&self.snapshot).clone();
        if let (Some(t), Some(m)) = (self.traffic.get(), v.as_object_mut()) {
            // Both roles: the server's sockets (sessions peers run with us) and our clients'
            // (sessions we run), both counted as bytes move.
            let (cr, cw) = crate::protocol::counters::client_total().get();
            m.insert(
                "bytes_received".into(),
                json!(t.read.load(Ordering::Relaxed) + cr),
            );
            m.insert(
                "bytes_sent".into(),
                json!(t.written.load(Ordering::Relaxed) + cw),
            );
            m.insert(
                "refused_connections".into(),
                json!(t.refused.load(Ordering::Relaxed)),
            );
            m.insert(
                "resumed_connections".into(),
                json!(t.resumed.load(Ordering::Relaxed)),
            );
            m.insert(
                "bytes_by_method".into(),
                json!(crate::protocol::counters::by_method()),
            );
            m.insert(
                "throttled_connections".into(),
                json!(t.throttled.load(Ordering::Relaxed)),
            );
        }
        v
    }
}

/// How the agent was started.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Sync listen address.
    pub listen: String,
    /// Static peers (`host:port`) to sync with, besides discovered ones.
    pub peers: Vec<String>,
    /// Seconds between fallback syncs.
    pub interval: Duration,
    /// mDNS settings; `None` disables discovery.
    pub discovery: Option<DiscoveryConfig>,
    /// Where to publish live status.
    pub live: LiveStatus,
    /// Mutual TLS within the deployment, or plaintext for debugging.
    pub transport: Transport,
    /// Kept connections, shared with sessions started through the control endpoint.
    pub clients: Arc<crate::sync::ClientCache>,
    /// False until the laptop joins a deployment: only the local CLI is served.
    pub sync_enabled: bool,
    /// Print the start as a sentence for a person ([`listening_line`]) instead of the JSON
    /// `{"event":"listening",…}` line scripts and tests read (on a terminal, or `--human`).
    pub human: bool,
    /// The HTTP API's URL when it is served (said in the start sentence).
    pub api: Option<String>,
}

/// What `run` prints once it serves, to a person: which laptop, where it syncs (`listen`;
/// `None`: sync is off until it joins) and with whom (`discovery`: the laptops it finds on the
/// network, else only those it knows or is given), where the console and HTTP API are (`api`,
/// a URL, when served), and what to do next; the JSON line says the same to scripts.
pub fn listening_line(
    name: &str,
    listen: Option<&str>,
    discovery: bool,
    api: Option<&str>,
) -> String {
    let console = match api {
        Some(url) => format!(
            " The console and the HTTP API are on {url} (`fieldsync console` opens the console)."
        ),
        None => String::new(),
    };
    match listen {
        Some(addr) => {
            let with = if discovery {
                "with the laptops it finds on this network"
            } else {
                "with the peers it knows or is given (discovery is off)"
            };
            format!(
                "{name} is running: it syncs on {addr} {with}. `fieldsync status` and \
                 `fieldsync peers` show them.{console} Ctrl-C stops it."
            )
        }
        None => format!(
            "{name} is running with sync off (see above): the commands work on this \
             laptop.{console} Ctrl-C stops it."
        ),
    }
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The sync port could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (choose another with `run --listen ADDR`, or stop the \
         program that holds it)"
    )]
    Listen {
        /// The address.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The control endpoint failed.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// The TLS configuration could not be built from the credential.
    #[error(transparent)]
    Tls(#[from] crate::mesh::MeshError),
}

/// Why a session was started (discovery sessions ignore back-off: the peer just appeared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Discovered,
    Notified,
    /// A notify that waited [`NOTIFY_RETRIES`] for sessions with other laptops to end, and
    /// runs although they have not.
    NotifiedLate,
    Periodic,
    /// A session followed by an anti-entropy round (`[sync] anti_entropy_secs`).
    AntiEntropy,
    /// The try a failure announced ("next try in N s"), at the end of its back-off.
    Retry,
}

/// `every` ± 20%, so laptops started together do not all reconcile at the same moment.
fn jittered(every: Duration) -> Duration {
    let span = every.as_millis() as u64 * 2 / 5;
    let r = (Uuid::new_v4().as_u128() as u64) % span.max(1);
    every - every / 5 + Duration::from_millis(r)
}

/// How long a notified session waits for a session with the same peer to end before trying
/// again, and how many times it tries ([`Agent::notified_while_busy`]).
const NOTIFY_RETRY: Duration = Duration::from_millis(500);
const NOTIFY_RETRIES: u32 = 120;

/// Puts `addr` first in a peer row's addresses (the last four that worked).
fn remember(row: &mut PeerRow, addr: &str) {
    row.addresses.retain(|a| a != addr);
    row.addresses.insert(0, addr.to_string());
    row.addresses.truncate(4);
}

/// What `run` says when a peer refuses this laptop's certificate as revoked.
const REVOKED_LINE: &str = "this laptop's credential was revoked by the deployment, so no \
     laptop syncs with it any more (`fieldsync doctor` says when and why; the coordinator can \
     enroll this laptop again under a new name). It is tried again only every 5 minutes.";

/// Longest back-off between attempts with a failing peer.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Local changes are announced this long after the first one, so a burst becomes one notify.
const NOTIFY_DEBOUNCE: Duration = Duration::from_millis(200);

struct Agent {
    store: Arc<Store>,
    opts: SessionOptions,
    inbound: Arc<Inbound>,
    /// Keys of sessions in flight (peer id, or address for unknown static peers).
    in_flight: Mutex<std::collections::HashSet<String>>,
    /// Key → (consecutive failures, not before).
    backoff: Mutex<HashMap<String, (u32, Instant)>>,
    /// Session keys with a [`Reason::Retry`] scheduled (one at a time per key).
    retrying: Mutex<std::collections::HashSet<String>>,
    /// Peers whose session line `run` has printed since it started (see [`worth_a_line`]).
    said: Mutex<std::collections::HashSet<Uuid>>,
    /// Session key → the failure `run` last printed for it (see [`failure_worth_a_line`]).
    failing: Mutex<HashMap<String, String>>,
    /// Session keys with a notified session waiting for the running one to end
    /// ([`Agent::notified_while_busy`]).
    notified_waiting: Mutex<std::collections::HashSet<String>>,
    /// Peers currently seen by discovery: id → addresses.
    online: Mutex<HashMap<Uuid, Vec<String>>>,
    discovery: Mutex<Option<Discovery>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// Starts a session with a peer (trying each address until one answers) unless one runs.
    fn spawn_session(self: &Arc<Self>, peer: Option<Uuid>, addrs: Vec<String>, why: Reason) {
        let Some(first) = addrs.first() else { return };
        if peer.is_some_and(|p| self.is_revoked(&p)) {
            tracing::debug!(peer = ?peer, "not syncing with a revoked laptop");
            return;
        }
        let key = peer.map_or_else(|| first.clone(), |p| p.to_string());
        if peer.is_some_and(|p| self.inbound.active(&p)) {
            if why == Reason::Notified {
                self.notified_while_busy(peer, addrs, key);
            }
            return;
        }
        // A peer that just told us it has changes is reachable: its notify is not held back by
        // failures before (nor is one that discovery just saw).
        if !matches!(
            why,
            Reason::Discovered | Reason::Notified | Reason::NotifiedLate
        ) {
            if let Some((_, until)) = lock(&self.backoff).get(&key) {
                if Instant::now() < *until {
                    return;
                }
            }
        }
        // A notify while we exchange with another laptop waits for that exchange: what the
        // notifier has new is most often what we are receiving right now (it got it from the
        // same source, or from us), and pulling it again doubled a three-laptop mesh's traffic
        // (trial 8, finding 9). Once that session ends our knowledge covers it, and the
        // notified session moves only what is really new.
        if why == Reason::Notified && self.busy_with_another(&key, peer) {
            self.notified_while_busy(peer, addrs, key);
            return;
        }
        if !lock(&self.in_flight).insert(key.clone()) {
            if why == Reason::Notified {
                self.notified_while_busy(peer, addrs, key);
            }
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut last_err = None;
            for addr in &addrs {
                match sync::sync_with(me.store.clone(), addr, &me.opts).await {
                    Ok(report) => {
                        last_err = None;
                        lock(&me.backoff).remove(&key);
                        // A laptop first tried by address (`--peer`) and now known by id: what
                        // failed under its address is over too, and said so below.
                        let by_address = addrs
                            .iter()
                            .filter(|a| **a != key)
                            .any(|a| lock(&me.failing).remove(a).is_some());
                        for a in &addrs {
                            lock(&me.backoff).remove(a);
                        }
                        // The address that worked, and when (online now: `sync_with` told
                        // `presence`), kept in the row; and the deletes the brake holds from
                        // that peer, said on the same line. Off the async threads: the write
                        // waits for the writer lock (see `sync::sync_with`).
                        let (s, pid, at) = (me.store.clone(), report.peer.instance, addr.clone());
                        let held: Vec<crate::app::held::HoldView> =
                            tokio::task::spawn_blocking(move || {
                                if let Err(e) = s.update_peer(&pid, |row| {
                                    remember(row, &at);
                                    row.last_seen = Some(Utc::now());
                                }) {
                                    warn!(error = %e, "cannot record peer state");
                                }
                                s.holds()
                                    .map(|h| {
                                        h.iter().map(crate::app::held::HoldView::from).collect()
                                    })
                                    .unwrap_or_default()
                            })
                            .await
                            .unwrap_or_default();
                        let note = crate::app::held::held_note(&held, report.peer.instance);
                        // A person reading `run`'s output wants what changed, not a line per
                        // periodic or notified session that moved nothing: those are said once
                        // per peer (so the first contact shows), then only in the debug log.
                        // After failures were said, the first session that works says so.
                        let back = lock(&me.failing).remove(&key).is_some() || by_address;
                        if worth_a_line(&me.said, &report, &note) || back {
                            let again = if back { " (reachable again)" } else { "" };
                            eprintln!("{}{again}{}", report_line(&report), note);
                        } else {
                            tracing::debug!(peer = %report.peer.instance, "session moved nothing");
                        }
                        if why == Reason::AntiEntropy {
                            me.anti_entropy(&report.peer, addr).await;
                        }
                        break;
                    }
                    Err(e @ SyncError::Transport { .. }) => last_err = Some(e),
                    Err(e) => {
                        last_err = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = last_err {
                let text = e.to_string();
                // Refused because this laptop's own credential is revoked: no retry can work,
                // so it is said as what it is and tried only at the longest back-off (a trial
                // read "cannot reach …" retried every few seconds as a network fault).
                let revoked_here = text.contains(crate::protocol::client::REVOKED_BY_PEER);
                // In a block of its own: the guard must be gone before the await below.
                let wait = {
                    let mut b = lock(&me.backoff);
                    let entry = b.entry(key.clone()).or_insert((0, Instant::now()));
                    entry.0 += 1;
                    let wait = if revoked_here {
                        MAX_BACKOFF
                    } else {
                        Duration::from_secs(1 << entry.0.min(9)).min(MAX_BACKOFF)
                    };
                    entry.1 = Instant::now() + wait;
                    wait
                };
                // The sync layer already logged the failure with the peer's id and name; this is
                // the retry schedule, and the person reads the line below.
                tracing::info!(error = %e, retry_in_s = wait.as_secs(), "sync will be retried");
                // Off the async threads, as above.
                let (s, words) = (me.store.clone(), e.to_string());
                let name = tokio::task::spawn_blocking(move || {
                    let pid = peer?;
                    let row = s.peer(&pid).ok().flatten()?;
                    // `sync_with` kept it already when it knew the peer by this address: one
                    // write then, not two.
                    if row.last_error.as_deref() != Some(words.as_str()) {
                        let _ = s.update_peer(&pid, |r| {
                            r.last_error = Some(words);
                            r.last_attempt = Some(Utc::now());
                        });
                    }
                    Some(row.name)
                })
                .await
                .ok()
                .flatten();
                let who = name
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| addrs.join(", "));
                if revoked_here {
                    if failure_worth_a_line(&me.failing, &key, REVOKED_LINE) {
                        eprintln!("{who} refused this laptop: {REVOKED_LINE}");
                    }
                } else if failure_worth_a_line(&me.failing, &key, &text) {
                    eprintln!(
                        "sync with {who} failed: {text} (next try in {} s; retries that fail \
                         the same way are not repeated here)",
                        wait.as_secs()
                    );
                }
                // A peer that cannot be reached is offline until it answers again (unless
                // discovery still sees it).
                if let (Some(p), SyncError::Transport { .. }) = (peer, &e) {
                    crate::presence::unreachable(p);
                }
                // The next try the line above announced happens then, not at the next
                // periodic round (`[sync] interval_secs`, a minute by default: a newcomer
                // waited that long for "next try in 2 s"). One scheduled per key.
                if !revoked_here && lock(&me.retrying).insert(key.clone()) {
                    let (me, key, addrs) = (me.clone(), key.clone(), addrs.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        lock(&me.retrying).remove(&key);
                        me.spawn_session(peer, addrs, Reason::Retry);
                    });
                }
                if let (Some(p), Some(d)) = (peer, lock(&me.discovery).as_ref()) {
                    d.verify(&p);
                }
            }
            lock(&me.in_flight).remove(&key);
        });
    }

    /// True while a session with a laptop other than `key`/`peer` runs, ours or its own.
    fn busy_with_another(&self, key: &str, peer: Option<Uuid>) -> bool {
        // One lock at a time (the in-flight set's guard is dropped before Inbound's is taken).
        let ours = lock(&self.in_flight).iter().any(|k| k != key);
        ours || self.inbound.any_active_but(peer)
    }

    /// True while any session runs, ours or a peer's.
    fn in_a_session(&self) -> bool {
        let ours = !lock(&self.in_flight).is_empty();
        ours || self.inbound.any_active_but(None)
    }

    /// A notify that arrived while a session ran: with that peer (ours or its own), that
    /// session may have read the peer's feed before the change the notify announces (seen in a
    /// trial: a revocation waited ~50 s for the next periodic round); with another laptop, it
    /// is likely bringing the same change (see [`Agent::spawn_session`]). So the notified
    /// session runs once that one has ended, checked every [`NOTIFY_RETRY`], at most
    /// [`NOTIFY_RETRIES`] times; then, if only other laptops' sessions still run, it runs
    /// anyway (a notify is not held back by a long exchange elsewhere), and if one with that
    /// peer still runs, the periodic round covers it. One waiting notify per peer.
    fn notified_while_busy(self: &Arc<Self>, peer: Option<Uuid>, addrs: Vec<String>, key: String) {
        if !lock(&self.notified_waiting).insert(key.clone()) {
            return; // one is waiting already
        }
        let me = self.clone();
        tokio::spawn(async move {
            let busy_with_it = |me: &Agent| {
                peer.is_some_and(|p| me.inbound.active(&p)) || lock(&me.in_flight).contains(&key)
            };
            let mut free = false;
            for _ in 0..NOTIFY_RETRIES {
                tokio::time::sleep(NOTIFY_RETRY).await;
                if !busy_with_it(&me) && !me.busy_with_another(&key, peer) {
                    free = true;
                    break;
                }
            }
            lock(&me.notified_waiting).remove(&key);
            if free {
                me.spawn_session(peer, addrs, Reason::Notified);
            } else if !busy_with_it(&me) {
                me.spawn_session(peer, addrs, Reason::NotifiedLate);
            }
        });
    }

    /// One anti-entropy round after a session with `peer` at `addr`; logs what it repaired.
    async fn anti_entropy(&self, peer: &crate::protocol::PeerInfo, addr: &str) {
        match sync::anti_entropy_with(self.store.clone(), addr, &self.opts).await {
            Ok(r) if r.differing > 0 => {
                warn!(peer = %peer.instance, name = %peer.name, differing = r.differing,
                      applied_here = r.applied, applied_there = r.applied_there,
                      "anti-entropy repaired records that sessions had not moved");
                eprintln!(
                    "anti-entropy with {}: {} records differed although sessions had finished; \
                     {} changed here, {} there",
                    peer.name, r.differing, r.applied, r.applied_there
                );
            }
            Ok(r) => info!(peer = %peer.instance, rounds = r.stats.rounds, "anti-entropy: in sync"),
            Err(e) => warn!(peer = %peer.instance, error = %e, "anti-entropy failed"),
        }
    }

    /// Addresses to reach a peer at: discovered ones, then remembered ones.
    fn addrs_of(&self, peer: &Uuid) -> Vec<String> {
        let mut out = lock(&self.online).get(peer).cloned().unwrap_or_default();
        if let Ok(Some(row)) = self.store.peer(peer) {
            out.extend(row.addresses);
            if !row.url.is_empty() {
                out.push(row.url);
            }
        }
        dedup(out)
    }

    fn on_peer_event(self: &Arc<Self>, ev: PeerEvent) {
        match ev {
            PeerEvent::Found {
                instance,
                name,
                addrs,
            } => {
                let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                info!(peer = %instance, %name, ?addrs, "peer discovered");
                lock(&self.online).insert(instance, addrs.clone());
                lock(&self.backoff).remove(&instance.to_string());
                // Only an instance a session has proved is shown online (an advert proves
                // nothing), and only such an instance has a row to update. Off the async
                // threads: the row's write waits for the writer lock (see `sync::sync_with`).
                let s = self.store.clone();
                tokio::task::spawn_blocking(move || {
                    if !matches!(s.peer(&instance), Ok(Some(_))) {
                        return;
                    }
                    crate::presence::discovered(instance, true);
                    if let Err(e) = s.update_peer(&instance, |row| {
                        row.last_seen = Some(Utc::now());
                        if row.name.is_empty() {
                            row.name = name;
                        }
                    }) {
                        warn!(error = %e, "cannot record peer state");
                    }
                });
                // Two agents that discover each other at once must not both start a session:
                // the smaller id starts at once, the other only if nothing happened meanwhile.
                if self.store.id() < instance {
                    self.spawn_session(Some(instance), addrs, Reason::Discovered);
                } else {
                    let me = self.clone();
                    let found = Utc::now();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        let synced = me
                            .store
                            .peer(&instance)
                            .ok()
                            .flatten()
                            .and_then(|r| r.last_update)
                            .is_some_and(|t| t >= found);
                        if !synced {
                            let addrs = me.addrs_of(&instance);
                            me.spawn_session(Some(instance), addrs, Reason::Discovered);
                        }
                    });
                }
            }
            PeerEvent::Lost { instance } => {
                info!(peer = %instance, "peer left");
                lock(&self.online).remove(&instance);
                // A forgotten candidate that never proved itself leaves nothing behind.
                if !matches!(self.store.peer(&instance), Ok(Some(_))) {
                    lock(&self.backoff).remove(&instance.to_string());
                }
                crate::presence::discovered(instance, false);
            }
        }
    }

    /// Whether the deployment revoked `peer`. Such a laptop is not dialled at all (sessions,
    /// notifies, rounds): the handshake would refuse it anyway, and each attempt printed a
    /// failure that read like a laptop switched off.
    fn is_revoked(&self, peer: &Uuid) -> bool {
        match &self.opts.transport {
            Transport::Tls { revoked, .. } => revoked.get(peer).is_some(),
            Transport::Plaintext => false,
        }
    }

    /// Every peer we could sync with: static addresses, discovered and remembered peers
    /// (revoked laptops left out).
    fn all_targets(&self, statics: &[String]) -> Vec<(Option<Uuid>, Vec<String>)> {
        let mut out: Vec<(Option<Uuid>, Vec<String>)> = Vec::new();
        let mut covered: Vec<String> = Vec::new();
        if let Ok(rows) = self.store.peers() {
            for row in rows {
                let addrs = self.addrs_of(&row.instance);
                if !addrs.is_empty() {
                    // A revoked laptop's addresses stay covered: a static `--peer` naming one
                    // is not dialled as an unknown address either.
                    covered.extend(addrs.iter().cloned());
                    if !self.is_revoked(&row.instance) {
                        out.push((Some(row.instance), addrs));
                    }
                }
            }
        }
        for s in statics {
            if !covered.contains(s) {
                out.push((None, vec![s.clone()]));
            }
        }
        out
    }
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.into_iter().filter(|a| seen.insert(a.clone())).collect()
}

/// Runs the agent until SIGINT/SIGTERM. Prints one JSON line with the bound address (for a
/// person, [`listening_line`]).
pub async fn run(
    store: Arc<Store>,
    options: AgentOptions,
    exec: Executor,
) -> Result<(), AgentError> {
    if !options.sync_enabled {
        return run_without_sync(store, options, exec).await;
    }
    let signals = StopSignals::register();
    let (notify_tx, mut notify_rx) = mpsc::channel::<Uuid>(64);
    let listen_err = |source| AgentError::Listen {
        addr: options.listen.clone(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .map_err(listen_err)?;
    let bound = listener.local_addr().map_err(listen_err)?;
    let listen = bound.to_string();
    let transport = options.transport.clone();
    let tls = match &transport {
        Transport::Tls { identity, revoked } => {
            revoked.set(crate::mesh::load_revocations(&store, &identity.ca_pem));
            Some(Arc::new(crate::tls::server_config(
                identity,
                revoked.clone(),
            )?))
        }
        Transport::Plaintext => None,
    };
    let responder = Responder::new(
        store.clone(),
        Some(listen.clone()),
        Some(notify_tx),
        transport.clone(),
    );
    let inbound = responder.inbound();
    let running = server::start(listener, responder, tls)
        .await
        .map_err(listen_err)?;
    let traffic = running.traffic.clone();
    let _ = options.live.traffic.set(traffic.clone());
    let _ = options.live.listen.set(listen.clone());
    let control = control::start(store.clone(), &listen, exec).await?;
    let mut session_opts = SessionOptions::from_store(&store, transport.clone());
    session_opts.clients = options.clients.clone();
    session_opts.url = Some(listen.clone());
    session_opts.caller_reports_failure = true;
    // Peers seen by an earlier run are not known to be here now.
    mark_offline(&store);
    let agent = Arc::new(Agent {
        store: store.clone(),
        opts: session_opts,
        inbound,
        in_flight: Mutex::default(),
        backoff: Mutex::default(),
        retrying: Mutex::default(),
        said: Mutex::default(),
        failing: Mutex::default(),
        notified_waiting: Mutex::default(),
        online: Mutex::default(),
        discovery: Mutex::default(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(dc) = &options.discovery {
        let (tx, mut rx) = mpsc::channel(64);
        // Within a deployment the mesh id comes from its CA, so strangers' laptops are ignored.
        let mesh = transport
            .mesh_id()
            .map_or_else(|| format!("plaintext-{}", dc.mesh), str::to_string);
        let advert = Advert {
            instance: store.id(),
            mesh,
            name: store.instance().name,
            port: bound.port(),
        };
        match Discovery::start(&advert, dc.mdns_port, tx) {
            Ok(d) => *lock(&agent.discovery) = Some(d),
            Err(e) => warn!(error = %e, "mDNS discovery unavailable; static peers only"),
        }
        let a = agent.clone();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(ev) = rx.recv() => a.on_peer_event(ev),
                    _ = stop.changed() => break,
                }
            }
        }));
    }
    info!(instance = %store.id(), %listen, discovery = options.discovery.is_some(), "agent listening");
    if options.human {
        let name = store.instance().name;
        let api = options.api.as_deref();
        let discovery = options.discovery.is_some();
        println!("{}", listening_line(&name, Some(&listen), discovery, api));
    } else {
        println!(
            "{}",
            json!({"event": "listening", "listen": listen, "instance": store.id()})
        );
    }

    // Fallback: every known peer, periodically.
    {
        let a = agent.clone();
        let statics = options.peers.clone();
        let mut stop = stop_rx.clone();
        let interval = options.interval;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        for (peer, addrs) in a.all_targets(&statics) {
                            a.spawn_session(peer, addrs, Reason::Periodic);
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        }));
    }
    // Anti-entropy: every online peer, a session and then set reconciliation, so a change that
    // knowledge wrongly says a peer has reaches it within one round.
    let anti_entropy = store.config().sync.anti_entropy_secs;
    if anti_entropy > 0 {
        let a = agent.clone();
        let statics = options.peers.clone();
        let mut stop = stop_rx.clone();
        let every = Duration::from_secs(anti_entropy);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(jittered(every)) => {
                        for (peer, addrs) in a.all_targets(&statics) {
                            // Presence lives in memory (`presence`), not in the peer row.
                            let online = peer.is_some_and(|p| crate::presence::is_online(&p));
                            if online {
                                a.spawn_session(peer, addrs, Reason::AntiEntropy);
                            }
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        }));
    }
    // A peer told us it has changes.
    {
        let a = agent.clone();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(peer) = notify_rx.recv() => {
                        let addrs = a.addrs_of(&peer);
                        if addrs.is_empty() {
                            warn!(%peer, "notify from a peer without a known address");
                        }
                        a.spawn_session(Some(peer), addrs, Reason::Notified);
                    }
                    _ = stop.changed() => break,
                }
            }
        }));
    }
    // Our changes: tell every reachable peer, so it pulls promptly (unless `[sync] notify`
    // is off).
    if store.config().sync.notify {
        let a = agent.clone();
        let statics = options.peers.clone();
        let mut stop = stop_rx.clone();
        let mut changes = store.subscribe();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break },
                    _ = stop.changed() => break,
                }
                tokio::time::sleep(NOTIFY_DEBOUNCE).await;
                // Not while this laptop exchanges with another (for at most NOTIFY_RETRIES
                // × NOTIFY_RETRY): what changed is most often what that session brings in, and
                // a peer told now pushes it back to us or pulls it from us while it still
                // arrives from elsewhere; once the session ends our hello's knowledge covers
                // it (a three-laptop mesh moved 1.5× the records it needed without this).
                let mut stopping = false;
                for _ in 0..NOTIFY_RETRIES {
                    if !a.in_a_session() {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(NOTIFY_RETRY) => {}
                        _ = stop.changed() => {
                            stopping = true;
                            break;
                        }
                    }
                }
                if stopping {
                    break;
                }
                changes.borrow_and_update();
                for (peer, addrs) in a.all_targets(&statics) {
                    let a = a.clone();
                    tokio::spawn(async move {
                        for addr in addrs {
                            let sent = tokio::time::timeout(
                                Duration::from_secs(5),
                                sync::notify(&a.store, &addr, &a.opts.transport),
                            )
                            .await;
                            if matches!(sent, Ok(Ok(()))) {
                                return;
                            }
                        }
                        // Unreachable: ask the network whether it is gone (mDNS verify drops a
                        // crashed peer in seconds instead of at its record's TTL).
                        if let (Some(p), Some(d)) = (peer, lock(&a.discovery).as_ref()) {
                            d.verify(&p);
                        }
                    });
                }
            }
        }));
    }
    // Revocations arrive by sync: keep the set the TLS verifiers consult current.
    if let Transport::Tls { identity, revoked } = &transport {
        let (store, identity, revoked) = (store.clone(), identity.clone(), revoked.clone());
        let mut stop = stop_rx.clone();
        let mut changes = store.subscribe();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break },
                    _ = stop.changed() => break,
                }
                let (s, ca) = (store.clone(), identity.ca_pem.clone());
                if let Ok(all) =
                    tokio::task::spawn_blocking(move || crate::mesh::load_revocations(&s, &ca))
                        .await
                {
                    revoked.set(all);
                }
            }
        }));
    }
    // Live status for `fieldsync status`.
    {
        let a = agent.clone();
        let live = options.live.clone();
        let mut stop = stop_rx.clone();
        let listen = listen.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => publish(&a, &live, &listen),
                    _ = stop.changed() => break,
                }
            }
        }));
    }

    // Sessions peers started with us that moved something are said too, from this laptop's
    // side: a laptop whose records a peer pulled would otherwise print nothing at all.
    {
        let mut stop = stop_rx.clone();
        let mut board = crate::progress::subscribe();
        tasks.push(tokio::spawn(async move {
            let mut said = std::collections::VecDeque::<u64>::new();
            loop {
                tokio::select! {
                    r = board.changed() => if r.is_err() { break },
                    _ = stop.changed() => break,
                }
                let (_, finished) = crate::progress::snapshot();
                for s in finished.iter().rev() {
                    if said.contains(&s.id) {
                        continue;
                    }
                    if let Some(line) = responder_line(s) {
                        eprintln!("{line}");
                    }
                    said.push_back(s.id);
                    if said.len() > 64 {
                        said.pop_front();
                    }
                }
            }
        }));
    }
    // Closing and reopening sled once a large session has ended gives back its memory.
    tasks.push(tokio::spawn(crate::reopen::run(
        store.clone(),
        stop_rx.clone(),
    )));
    // The rolling automatic snapshots (`repair` restores the newest); spawned last, so the
    // tasks `status` expects right after start come first.
    tasks.push(tokio::spawn(crate::autosnapshot::run(
        store.clone(),
        store.config().snapshots.clone(),
        stop_rx.clone(),
    )));

    signals.wait().await;
    info!("shutting down");
    // Peers online now are told this laptop leaves, so they do not show it online until their
    // next failed attempt (up to a round later); best effort, one second in all.
    let mut leaving = tokio::task::JoinSet::new();
    for (_, addrs) in agent
        .all_targets(&options.peers)
        .into_iter()
        .filter(|(p, _)| p.is_some_and(|p| crate::presence::is_online(&p)))
    {
        if let Some(addr) = addrs.into_iter().next() {
            let (store, transport) = (store.clone(), agent.opts.transport.clone());
            leaving.spawn(async move { sync::notify_leaving(&store, &addr, &transport).await });
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), leaving.join_all()).await;
    let _ = stop_tx.send(true);
    let discovery = lock(&agent.discovery).take();
    let goodbye = tokio::task::spawn_blocking(move || {
        if let Some(d) = discovery {
            d.shutdown();
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(3), running.stop()).await;
    let _ = control.stop();
    for t in tasks {
        t.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), goodbye).await;
    mark_offline(&store);
    if let Err(e) = store.flush() {
        warn!(error = %e, "flush on shutdown failed");
    }
    control::remove_agent_file(store.dir());
    info!("stopped");
    if options.human {
        println!("{}", stopped_line(&store.instance().name));
    }
    Ok(())
}

/// What `run` says last for a person, once everything is flushed: Ctrl-C otherwise ended the
/// agent without a word, and the person could not tell a clean stop from a crash.
fn stopped_line(name: &str) -> String {
    format!("{name} stopped: every change it holds is on disk.")
}

/// The agent of a laptop outside any deployment: no sync port, no discovery, only the control
/// endpoint so every CLI command keeps working while it runs.
async fn run_without_sync(
    store: Arc<Store>,
    options: AgentOptions,
    exec: Executor,
) -> Result<(), AgentError> {
    let signals = StopSignals::register();
    let control = control::start(store.clone(), "", exec).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let reopener = tokio::spawn(crate::reopen::run(store.clone(), stop_rx.clone()));
    let snapshots = tokio::spawn(crate::autosnapshot::run(
        store.clone(),
        store.config().snapshots.clone(),
        stop_rx,
    ));
    *lock(&options.live.snapshot) = json!({
        "running": true, "pid": std::process::id(), "listen": null,
        "transport": "none: sync is off until this laptop joins a deployment",
    });
    mark_offline(&store);
    info!(instance = %store.id(), "agent running with sync off (not in a deployment)");
    if options.human {
        let api = options.api.as_deref();
        println!(
            "{}",
            listening_line(&store.instance().name, None, false, api)
        );
    } else {
        println!(
            "{}",
            json!({"event": "listening", "listen": null, "sync": "off", "instance": store.id()})
        );
    }
    signals.wait().await;
    let _ = stop_tx.send(true);
    let _ = snapshots.await;
    let _ = reopener.await;
    let _ = control.stop();
    if let Err(e) = store.flush() {
        warn!(error = %e, "flush on shutdown failed");
    }
    control::remove_agent_file(store.dir());
    if options.human {
        println!("{}", stopped_line(&store.instance().name));
    }
    Ok(())
}

/// The line `run` prints when a session it started finishes (and `sync` on a terminal), e.g.
/// `synced with laptopB: received 312, sent 4, 1 conflict, 0.4 s`.
pub fn session_line(name: &str, received: u64, sent: u64, conflicts: u64, ms: u64) -> String {
    format!(
        "synced with {name}: received {received}, sent {sent}, {conflicts} conflict{}, {:.1} s",
        if conflicts == 1 { "" } else { "s" },
        ms as f64 / 1000.0
    )
}

/// The line `run` prints for a finished session a peer started with this laptop, when it moved
/// records or conflicts: `laptopB synced with this laptop: received 0, sent 20, 0 conflicts,
/// 0.1 s` (received and sent from this laptop's side, as in [`session_line`]).
pub fn responder_line(s: &crate::progress::SessionProgress) -> Option<String> {
    let moved = s.received.records + s.sent.records + s.conflicts;
    if s.role != "responder" || s.state != "finished" || moved == 0 {
        return None;
    }
    let name = if s.peer_name.is_empty() {
        s.peer.map_or_else(|| s.addr.clone(), |p| p.to_string())
    } else {
        s.peer_name.clone()
    };
    let line = session_line(
        "this laptop",
        s.received.records,
        s.sent.records,
        s.conflicts,
        (s.elapsed_secs * 1000.0) as u64,
    );
    Some(format!("{name} {line}"))
}

/// Whether `run` prints a finished session's line: it moved records or conflicts, something
/// is held from that peer (`held`, the note), or it is the first session with that peer since
/// this agent started (`said` holds those already printed).
fn worth_a_line(
    said: &Mutex<std::collections::HashSet<Uuid>>,
    r: &sync::SessionReport,
    held: &str,
) -> bool {
    let first = lock(said).insert(r.peer.instance);
    let moved = r.received.records + r.sent.records + r.received.conflicts + r.sent.conflicts;
    first || moved > 0 || !held.is_empty()
}

/// Whether `run` prints a failed session: the first failure of an outage, and again only when
/// the error changes. A laptop that left the network would otherwise add a line at every retry
/// (up to one a minute, for hours); the retries still go to the log at info level, and the
/// first session that works again is said with "(reachable again)".
fn failure_worth_a_line(failing: &Mutex<HashMap<String, String>>, key: &str, text: &str) -> bool {
    lock(failing)
        .insert(key.to_string(), text.to_string())
        .as_deref()
        != Some(text)
}

fn report_line(r: &sync::SessionReport) -> String {
    let name = if r.peer.name.is_empty() {
        r.peer.instance.to_string()
    } else {
        r.peer.name.clone()
    };
    session_line(
        &name,
        r.received.records,
        r.sent.records,
        session_conflicts(r.received.conflicts, r.sent.conflicts),
        r.received.ms + r.sent.ms,
    )
}

/// How many conflicts a session met, for a person: both laptops detect the same concurrent
/// writes (each logs the conflict once, and the entries meet as one), so the two counts are
/// two views of mostly the same conflicts, not a sum. `conflicts` on either laptop lists them.
pub fn session_conflicts(logged_here: u64, logged_there: u64) -> u64 {
    logged_here.max(logged_there)
}

/// Rows written by earlier versions kept an `online` flag on disk; it is cleared here and no
/// longer read: online state lives in memory ([`crate::presence`]).
fn mark_offline(store: &Store) {
    if let Ok(rows) = store.peers() {
        for row in rows.into_iter().filter(|r| r.online) {
            let _ = store.update_peer(&row.instance, |r| r.online = false);
        }
    }
}

// Socket counters are not copied here: `Live::to_json` reads them at query time.
fn publish(a: &Agent, live: &LiveStatus, listen: &str) {
    let health = lock(&a.discovery).as_ref().map(|d| d.health());
    *lock(&live.snapshot) = json!({
        "running": true,
        "listen": listen,
        "pid": std::process::id(),
        "discovery": health,
        "sessions_in_flight": lock(&a.in_flight).len(),
        // Closing and reopening sled to give back memory (`reopen.rs`).
        "store": {
            "reopens": a.store.reopens(),
            "reopen_due": crate::reopen::due(&a.store),
            // Closed while idle (`reopen::REST_AFTER`); the next read or write opens it.
            "resting": a.store.resting(),
            "rests": a.store.rests().0,
            "wakes": a.store.rests().1,
        },
        "transport": a.opts.transport.mesh_id().map_or("plaintext (insecure)", |_| "mutual TLS"),
    });
}

/// The signals that stop the agent: SIGINT, SIGTERM and SIGHUP (closing the terminal window is
/// how a portable-mode user stops it; not when started with SIGHUP ignored, as by `nohup`).
/// Registered before the agent announces it is listening, so a signal sent right after that
/// stops it cleanly instead of killing it.
struct StopSignals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn register() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        // Checked before registering: a handler replaces the ignored disposition.
        let hup = (!hangup_ignored())
            .then(|| signal(SignalKind::hangup()).ok())
            .flatten();
        StopSignals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            hup,
        }
    }

    async fn wait(mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.int) => {}
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.hup) => {}
        }
    }
}

/// Whether this process was started with SIGHUP ignored (the `SigIgn` mask in /proc).
fn hangup_ignored() -> bool {
    // Bit n-1 stands for signal n; SIGHUP is 1.
    const SIGHUP_BIT: u64 = 1;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|m| m & SIGHUP_BIT != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_said_once_per_outage_and_again_when_it_changes() {
        let failing = Mutex::default();
        let refused = "cannot reach 127.0.0.1:9: connection refused";
        assert!(failure_worth_a_line(&failing, "b", refused));
        assert!(!failure_worth_a_line(&failing, "b", refused));
        assert!(failure_worth_a_line(&failing, "c", refused), "per peer");
        assert!(failure_worth_a_line(
            &failing,
            "b",
            "the peer refused our certificate"
        ));
        // A session that works forgets the outage (spawn_session removes the key).
        lock(&failing).remove("b");
        assert!(failure_worth_a_line(&failing, "b", refused));
    }

    #[test]
    fn the_start_sentence_promises_discovery_only_when_it_runs() {
        let on = listening_line("A", Some("0.0.0.0:7437"), true, None);
        assert_eq!(
            on,
            "A is running: it syncs on 0.0.0.0:7437 with the laptops it finds on this network. \
             `fieldsync status` and `fieldsync peers` show them. Ctrl-C stops it."
        );
        let off = listening_line(
            "A",
            Some("0.0.0.0:7437"),
            false,
            Some("http://127.0.0.1:7438"),
        );
        assert!(
            off.contains("(discovery is off)")
                && off.contains("on http://127.0.0.1:7438 (`fieldsync console`"),
            "{off}"
        );
    }

    #[test]
    fn anti_entropy_waits_are_jittered_within_a_fifth_either_way() {
        let every = Duration::from_secs(600);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(every)).collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_secs(480) && *w < Duration::from_secs(720)));
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "spread, not one fixed wait");
        assert!(jittered(Duration::from_secs(1)) >= Duration::from_millis(800));
    }
}
