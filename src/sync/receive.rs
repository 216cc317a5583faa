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
use crate::protocol::{self, codes, Page, PeerInfo, ProtocolError};
use crate::store::{CommitError, Committed, Knowledge, PageCommit, PeerRow, Store, StoreError};
use crate::tls::Transport;
use chrono::Utc;
use tracing::warn;
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
            ReceiveError::Commit(CommitError::Store(e)) => store_refusal(e),
        }
    }
}

/// A store error as the JSON-RPC error a peer sees: bad content is the page's fault, anything
/// else is ours (and nothing was written).
pub(crate) fn store_refusal(e: &StoreError) -> ProtocolError {
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
    let mut changes = protocol::decode_changes(page).map_err(ReceiveError::Refused)?;
    let admitted = admit(store, transport, &mut changes);
    let committed = store.commit_page(PageCommit {
        peer: from,
        changes: &changes,
        since: page.since,
        next: page.next,
        more: page.more,
        knowledge,
        ends_session,
    })?;
    if admitted.quarantined > 0 {
        // Bookkeeping after the page: losing it in a crash loses a count, not data.
        store
            .update_peer(&from, |row| {
                row.quarantined += admitted.quarantined as u64;
            })
            .map_err(CommitError::Store)?;
    }
    Ok(Received {
        committed,
        records: changes.len() as u64,
        quarantined: admitted.quarantined as u64,
    })
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

/// Records a peer's hello in its row (identity, contact, url, clock offset, times) and returns
/// the position we have received up to from it. A peer whose feed head is behind that position
/// was restored from an older backup: we resync it from 0 rather than skip what it now holds.
pub fn note_hello(
    store: &Store,
    peer: &PeerInfo,
    clock_ms: u64,
    head: u64,
    seen: HelloSeen<'_>,
) -> Result<u64, StoreError> {
    store.update_peer(&peer.instance, |row| {
        note_peer(row, peer, clock_ms);
        match seen {
            HelloSeen::Inbound => row.last_seen = Some(Utc::now()),
            HelloSeen::Outbound { addr } => row.url = addr.to_string(),
        }
        if head < row.received_upto {
            warn!(peer = %peer.instance, head, had = row.received_upto,
                  "peer's feed is behind what we received from it (restored?): resyncing from 0");
            row.received_upto = 0;
        }
        row.received_upto
    })
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
