//! THE one path for an incoming page, and THE one hello bookkeeping, used by both sides of a
//! session: the initiator's pull and the responder's push receive pages through
//! [`receive_page`], and both sides record the other's hello through [`note_hello`].
//!
//! An incoming page is decoded and bounds-checked (`protocol::decode_changes`), admitted
//! (invalid revocations quarantined, revoked writers dropped: [`super::admit`]), then committed with the
//! position it advances to in one store batch ([`Store::commit_page`]). Anything refused is
//! refused before a byte is written.

use super::admit::admit;
use crate::clock::wall_millis;
use crate::model::Incarnation;
use crate::protocol::{self, codes, Page, PeerInfo, ProtocolError};
use crate::store::{
    judge, CommitError, Committed, DuplicateIdentity, Knowledge, PageCommit, PeerRow, Store,
    StoreError, Verdict,
};
use crate::tls::Transport;
use chrono::Utc;
use tracing::{info, warn};
use uuid::Uuid;

/// Why an incoming page was not taken (nothing of it was written).
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The page itself is refused: undecodable, too large, or not admitted.
    #[error("{0}")]
    Refused(ProtocolError),
    /// The store would not commit it: a position gap, an unknown sender, bad content, a failure.
    #[error(transparent)]
    Commit(#[from] CommitError),
}

impl ReceiveError {
    /// The error as a JSON-RPC error for the sender (the responder's answer to a push).
    pub fn to_protocol(&self) -> ProtocolError {
        match self {
            ReceiveError::Refused(e) => e.clone(),
            ReceiveError::Commit(CommitError::Gap { since, had }) => ProtocolError::new(
                codes::POSITION_GAP,
                format!(
                    "page starts after position {since} but only {had} was received: \
                     resend from {had}"
                ),
            ),
            ReceiveError::Commit(CommitError::UnknownPeer(id)) => ProtocolError::new(
                codes::UNKNOWN_PEER,
                format!("instance {id} must say hello before pushing"),
            ),
            ReceiveError::Commit(CommitError::Duplicate { peer, reason }) => {
                duplicate_refusal(peer, reason)
            }
            ReceiveError::Commit(CommitError::Store(e)) => store_refusal(e),
        }
    }
}

/// A store error as the JSON-RPC error a peer sees: bad content is the page's fault, anything
/// else is ours (and nothing was written).
pub(crate) fn store_refusal(e: &StoreError) -> ProtocolError {
    match e {
        StoreError::Invalid(_) | StoreError::LocalOnly(_) | StoreError::BadHistory(_) => {
            ProtocolError::new(codes::INVALID_PAGE, format!("page refused: {e}"))
        }
        other => ProtocolError::new(
            codes::STORE_FAILED,
            format!("store failed, nothing written: {other}"),
        ),
    }
}

/// A page taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// What the store did.
    pub committed: Committed,
    /// Records in the page after admission.
    pub records: u64,
    /// Records dropped from the page because they failed validation (see [`super::admit`]).
    pub quarantined: u64,
}

/// Decodes, admits and commits one page from `from` with the position it advances to.
/// `knowledge` (what the sender knew when the session began) is added to ours with the last
/// page; `ends_session` also stamps the sender's `last_update`/`sync_count` in that batch.
pub fn receive_page(
    store: &Store,
    transport: &Transport,
    from: Uuid,
    page: &Page,
    knowledge: Option<&Knowledge>,
    ends_session: bool,
) -> Result<Received, ReceiveError> {
    let checked = check_page(transport, page)?;
    commit_checked(
        store,
        transport,
        from,
        page,
        checked,
        knowledge,
        ends_session,
    )
}

/// A page decoded, its stamps bounded and its signatures checked: the part of receiving that
/// reads nothing from the store, so it may run before the page's turn (while the page before
/// it is still being committed, see `responder`).
pub struct CheckedPage {
    changes: Vec<crate::change::RemoteChange>,
    /// Records dropped for a missing or bad signature.
    forged: usize,
    /// Signed commits (and certificates) the page proved, learned before its records.
    learned: super::signed::Learned,
}

impl CheckedPage {
    /// The records of the page, as (table, id).
    pub fn records(&self) -> impl Iterator<Item = (&str, &Uuid)> {
        self.changes.iter().map(|c| (c.table.as_str(), &c.id))
    }
}

/// The store-free first half of [`receive_page`]: decode, future stamps, signatures.
pub fn check_page(transport: &Transport, page: &Page) -> Result<CheckedPage, ReceiveError> {
    let mut changes = protocol::decode_changes(page).map_err(ReceiveError::Refused)?;
    check_future_stamps(&changes, wall_millis()).map_err(ReceiveError::Refused)?;
    // Signatures first, on the page as it was sent (its proofs cover exactly those records).
    let (forged, learned) = super::signed::check(transport, page.proofs.as_deref(), &mut changes)
        .map_err(ReceiveError::Refused)?;
    Ok(CheckedPage {
        changes,
        forged,
        learned,
    })
}

/// The second half of [`receive_page`], in the page's turn: admission (which reads the
/// revocations held now, so it waits for the pages before), the commits learned, then the
/// records and the position in one batch.
pub fn commit_checked(
    store: &Store,
    transport: &Transport,
    from: Uuid,
    page: &Page,
    checked: CheckedPage,
    knowledge: Option<&Knowledge>,
    ends_session: bool,
) -> Result<Received, ReceiveError> {
    let CheckedPage {
        mut changes,
        forged,
        learned,
    } = checked;
    let admitted = admit(store, transport, &mut changes);
    let quarantined = admitted.quarantined + forged;
    if !learned.0.is_empty() || !learned.1.is_empty() {
        // Before the records: a laptop never holds a write it could not prove onwards.
        store
            .learn_commits(&learned.0, &learned.1)
            .map_err(CommitError::Store)?;
    }
    let bounded = match knowledge {
        Some(k) if !page.more => Some(bound_knowledge(store, from, k, &changes)?),
        _ => None,
    };
    let committed = store.commit_page(PageCommit {
        peer: from,
        changes: &changes,
        since: page.since,
        next: page.next,
        more: page.more,
        knowledge: bounded.as_ref(),
        ends_session,
    })?;
    if quarantined > 0 {
        // Bookkeeping after the page: losing it in a crash loses a count, not data.
        store
            .update_peer(&from, |row| {
                row.quarantined += quarantined as u64;
            })
            .map_err(CommitError::Store)?;
    }
    Ok(Received {
        committed,
        records: changes.len() as u64,
        quarantined: quarantined as u64,
    })
}

/// How far a peer's clock may run ahead of ours (and a knowledge claim ahead of either), in
/// milliseconds. Knowledge above it is lowered to it: lower knowledge only means more is sent.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// Most entries our knowledge vector holds (one per origin instance). A peer's claims about
/// further instances are dropped: they would only make every hello reply larger.
pub const MAX_KNOWLEDGE_ENTRIES: usize = 1024;

/// Longest peer-supplied string kept in a peer row (name, owner, contact, url), in bytes.
pub const MAX_PEER_STRING: usize = 256;

/// What of a peer's knowledge claim we adopt. A member can claim anything, and knowledge
/// decides what is *not* sent to us later, so a claim is only taken for an instance we already
/// know of (our knowledge, a peer we met over mutual TLS, the sender, a writer in this page, or
/// an instance whose events we hold), never beyond the sender's clock or ours (plus [`MAX_CLOCK_SKEW_MS`] for the sender's
/// own entry), and never past
/// [`MAX_KNOWLEDGE_ENTRIES`] instances. Dropping or lowering an entry is always safe: it costs
/// re-sent fields, never a lost change.
pub fn bound_knowledge(
    store: &Store,
    from: Uuid,
    claim: &Knowledge,
    changes: &[crate::change::RemoteChange],
) -> Result<Knowledge, ReceiveError> {
    let store_err = |e| ReceiveError::Commit(CommitError::Store(e));
    let ours = store.position().map_err(store_err)?.knowledge;
    let peers = store.peers().map_err(store_err)?;
    let now = wall_millis();
    let sender_now = peers.iter().find(|p| p.instance == from).map_or(now, |p| {
        (now as i64).saturating_add(p.clock_offset_ms).max(0) as u64
    });
    // The sender may be ahead of our clock by the allowed skew about its own events; about
    // anyone else's it cannot know anything stamped after now (ours or its own, the lower):
    // a claim a little in the future would hide the next writes of that instance from us.
    let base = now.min(sender_now);
    let own_limit = crate::clock::ts_from_millis(base + MAX_CLOCK_SKEW_MS);
    let other_limit = crate::clock::ts_from_millis(base);
    // Sets built once: a claim may list hundreds of thousands of instances. Instances whose
    // events we already hold count as met too: a session (or a bundle) of many pages brings
    // them in earlier pages, and the last page alone need not mention them.
    let held = store.head();
    let met: std::collections::HashSet<Uuid> = peers
        .iter()
        .map(|p| p.instance)
        .chain(changes.iter().flat_map(|c| c.state.vv.keys().copied()))
        .chain(held.holdings.keys().copied())
        .collect();
    let known = |id: &Uuid| *id == from || ours.contains_key(id) || met.contains(id);
    let mut room = MAX_KNOWLEDGE_ENTRIES.saturating_sub(ours.len());
    let mut out = Knowledge::new();
    let (mut dropped, mut lowered) = (0usize, 0usize);
    for (id, ts) in claim {
        if !known(id) {
            dropped += 1;
            continue;
        }
        if !ours.contains_key(id) {
            if room == 0 {
                dropped += 1;
                continue;
            }
            room -= 1;
        }
        let limit = if *id == from { own_limit } else { other_limit };
        if *ts > limit {
            lowered += 1;
        }
        out.insert(*id, (*ts).min(limit));
    }
    // Instances a claim names that this laptop never heard of are common and harmless (a
    // laptop that never wrote anything, a bundle from a coordinator that enrolled more): not a
    // warning on a person's terminal (trial 10). Stamps ahead of the clocks are worth one.
    if lowered > 0 {
        warn!(peer = %from, dropped, lowered,
              "a peer's knowledge claimed events later than the clocks allow (its clock may be \
               ahead): bounded to now");
    } else if dropped > 0 {
        tracing::debug!(peer = %from, dropped, "knowledge claim: instances never heard of left out");
    }
    Ok(out)
}

/// How far ahead of our clock any stamp of an incoming record may be (field stamps, `vv`,
/// `del_seen`, the delete), in milliseconds. A stamp further ahead is a wrong clock or a forgery
/// (a delete whose `del_seen` claims the far future would delete every later edit): the page is
/// refused, nothing is written, and the sender resends it once the clocks agree.
pub const MAX_FUTURE_STAMP_MS: u64 = 24 * 60 * 60 * 1000;

/// Refuses a page holding a stamp more than [`MAX_FUTURE_STAMP_MS`] ahead of `now_ms`.
pub fn check_future_stamps(
    changes: &[crate::change::RemoteChange],
    now_ms: u64,
) -> Result<(), ProtocolError> {
    let limit = crate::clock::ts_from_millis(now_ms.saturating_add(MAX_FUTURE_STAMP_MS));
    for ch in changes {
        let s = &ch.state;
        let latest = s
            .max_ts()
            .max(s.del_seen.values().copied().max().unwrap_or(0))
            .max(s.deleted.map_or(0, |d| d.ts));
        if latest > limit {
            let at = crate::clock::millis_to_time(latest >> 16);
            return Err(ProtocolError::new(
                codes::INVALID_PAGE,
                format!(
                    "record {}/{} carries a stamp dated {}, more than a day ahead of this \
                     laptop's clock: set the clock right on the laptop that wrote it, then sync \
                     again",
                    ch.table,
                    ch.id,
                    at.format("%Y-%m-%d %H:%M UTC")
                ),
            ));
        }
    }
    Ok(())
}

/// Which side of a session saw the hello.
#[derive(Clone, Copy, Debug)]
pub enum HelloSeen<'a> {
    /// We answer: the peer called us (stamps `last_seen`).
    Inbound,
    /// We called the peer at `addr`, which beats whatever url it tells about itself.
    Outbound {
        /// The address we reached it at.
        addr: &'a str,
    },
}

/// What to do when two data directories share one instance id.
pub const DUPLICATE_FIX: &str = "give one of the two laptops a new identity: on the \
     coordinator `fieldsync mesh enroll --name NAME --out new.fsmesh`; on that laptop \
     `fieldsync backup old.fsbackup --no-keys`, \
     `fieldsync --data-dir NEWDIR init --mesh new.fsmesh`, \
     `fieldsync --data-dir NEWDIR restore old.fsbackup`, then run from NEWDIR";

/// The refusal of an instance whose id two data directories use, with the fix.
pub fn duplicate_refusal(peer: &Uuid, reason: &str) -> ProtocolError {
    ProtocolError::new(
        codes::DUPLICATE_INSTANCE,
        format!(
            "instance {peer} is used by two data directories at once ({reason}); it is refused \
             from now on. Fix: {DUPLICATE_FIX}"
        ),
    )
}

/// One identity problem for `status`, `peers` and `doctor`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IdentityProblem {
    /// The instance whose id is shared.
    pub instance: Uuid,
    /// Its name as last seen.
    pub name: String,
    /// What was seen.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

/// Instance ids seen used by two data directories: peers we refuse, and this laptop itself
/// when a peer refused it for that reason.
pub fn identity_problems(store: &Store) -> Result<Vec<IdentityProblem>, StoreError> {
    let me = store.instance();
    let mut out = Vec::new();
    for row in store.peers()? {
        if let Some(d) = &row.duplicate {
            out.push(IdentityProblem {
                instance: row.instance,
                name: row.name.clone(),
                problem: format!(
                    "peer {} ({}) is used by two data directories at once ({}); refused since {}",
                    row.name,
                    row.instance,
                    d.reason,
                    d.detected_at.to_rfc3339()
                ),
                fix: DUPLICATE_FIX.to_string(),
            });
        }
        let refused_me = row
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("(code {})", codes::DUPLICATE_INSTANCE)));
        if refused_me {
            out.push(IdentityProblem {
                instance: me.id,
                name: me.name.clone(),
                problem: format!(
                    "peer {} refuses this laptop: its instance id {} is used by another data \
                     directory too",
                    row.name, me.id
                ),
                fix: DUPLICATE_FIX.to_string(),
            });
        }
    }
    Ok(out)
}

/// Records a peer's hello in its row (identity, contact, url, clock offset, times) and returns
/// the position we have received up to from it.
///
/// Its incarnation is judged against the ones seen before (`store::judge`): a newer one (the
/// peer was restored or rolled back) resets its position and makes every feed entry so far
/// eligible to be sent to it again, echo marks notwithstanding (`PeerRow::echo_from`); two
/// active incarnations of one instance mark it duplicate and refuse it from then on. A peer
/// whose feed head is behind our position is resynced from 0 rather than skipping what it now
/// holds.
pub fn note_hello(
    store: &Store,
    peer: &PeerInfo,
    clock_ms: u64,
    head: u64,
    knowledge: &Knowledge,
    incarnation: Option<&Incarnation>,
    seen: HelloSeen<'_>,
) -> Result<u64, ReceiveError> {
    let Some(inc) = incarnation else {
        return Err(ReceiveError::Refused(ProtocolError::new(
            codes::INVALID_PARAMS,
            "hello has no `incarnation` (required from protocol version 2)",
        )));
    };
    // Set when the peer was restored or rolled back: peers may now hold what others lack.
    let mut moved = false;
    let out = store
        .update_peer_with(&peer.instance, |row, seq| {
            if let Some(d) = &row.duplicate {
                return (Err(d.reason.clone()), false);
            }
            note_peer(row, peer, clock_ms);
            match seen {
                HelloSeen::Inbound => row.last_seen = Some(Utc::now()),
                HelloSeen::Outbound { addr } => row.url = addr.to_string(),
            }
            let mut durable;
            match judge(row.incarnation.as_ref(), &row.retired, inc) {
                Verdict::Known => {
                    durable = row.incarnation.is_none();
                    row.incarnation = Some(*inc);
                    // Less knowledge than it reported before: its database was rolled back
                    // without a new incarnation (it lost no own write, or has not noticed yet).
                    // What we marked as received from it may be gone there: send it again.
                    let regressed = row
                        .knowledge
                        .iter()
                        .any(|(n, t)| knowledge.get(n).copied().unwrap_or(0) < *t);
                    if regressed {
                        moved = true;
                        row.echo_from = seq;
                        row.received_upto = 0;
                        durable = true;
                        warn!(peer = %peer.instance, name = %peer.name,
                              "peer knows less than it did (rolled back?): sending it everything \
                               it lacks");
                    }
                }
                Verdict::Newer => {
                    let old = row.incarnation.replace(*inc).map(|o| o.id);
                    row.retired.extend(old);
                    moved = true;
                    row.echo_from = seq;
                    row.received_upto = 0;
                    durable = true;
                    info!(peer = %peer.instance, name = %peer.name, incarnation = %inc.id,
                          "peer was restored or rolled back (new incarnation): sending it \
                           everything it lacks");
                }
                Verdict::Duplicate(reason) => {
                    let mut seen_ids: Vec<Uuid> = row.incarnation.iter().map(|i| i.id).collect();
                    seen_ids.push(inc.id);
                    row.duplicate = Some(DuplicateIdentity {
                        detected_at: Utc::now(),
                        incarnations: seen_ids,
                        reason: reason.clone(),
                    });
                    warn!(peer = %peer.instance, name = %peer.name, %reason,
                          "two data directories use one instance id: refusing it from now on");
                    return (Err(reason), true);
                }
            }
            row.knowledge = knowledge.clone();
            if head < row.received_upto {
                // Its feed went back: rolled back (a restore would have a new incarnation), so
                // what we marked as received from it may be gone there too.
                warn!(peer = %peer.instance, head, had = row.received_upto,
                      "peer's feed is behind what we received from it (rolled back?): resyncing \
                       from 0 and sending it everything it lacks");
                row.received_upto = 0;
                row.echo_from = seq;
                moved = true;
            }
            (Ok(row.received_upto), durable)
        })
        .map_err(|e| ReceiveError::Commit(CommitError::Store(e)))?;
    if moved {
        // Its rollback may have lost own events that some peers hold and others, trusting
        // its earlier knowledge claims, lack: compare records with every peer once more
        // (`store/rollback.rs`).
        store.forget_rollback_checks();
    }
    out.map_err(|reason| ReceiveError::Refused(duplicate_refusal(&peer.instance, &reason)))
}

fn note_peer(row: &mut PeerRow, p: &PeerInfo, clock_ms: u64) {
    let now = Utc::now();
    row.instance = p.instance;
    // Whatever a peer says about itself is kept only up to a bounded length.
    row.name = bounded(&p.name);
    row.owner = bounded(&p.owner);
    row.contact = bounded(&p.contact);
    if let Some(u) = &p.url {
        row.url = bounded(u);
    }
    row.first_seen.get_or_insert(now);
    row.last_attempt = Some(now);
    // A peer's clock is whatever it says: clamp so an absurd one cannot overflow the offset.
    row.clock_offset_ms = clock_ms.min(i64::MAX as u64) as i64 - wall_millis() as i64;
}

/// `s` cut to at most [`MAX_PEER_STRING`] bytes, at a character boundary.
pub(crate) fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_PEER_STRING);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
