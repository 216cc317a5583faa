//! What the sync layer needs from the store: this instance's knowledge vector, per-peer
//! bookkeeping written in the same batch as a page, and outgoing pages read from the feed.

use super::{
    decode, decode_record, encode, keys, ConflictDetail, PeerRow, ReportedConflict, Store,
    StoreError, Txn,
};
use crate::merge::outgoing_delta;
use crate::model::VersionVector;
use crate::store::RemoteChange;
use std::collections::BTreeSet;

/// Per origin instance, the `ts` up to which this instance has every event of that origin.
///
/// The own entry is the clock as of the last committed write; other entries come from completed
/// sync sessions (after pulling everything a peer had, we know everything the peer knew).
pub type Knowledge = VersionVector;

/// A consistent view of this instance for a session's hello.
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    /// Feed head: every change committed so far has a feed position <= head.
    pub head: u64,
    /// Knowledge as of that head.
    pub knowledge: Knowledge,
}

/// A page of outgoing changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutgoingPage {
    /// Record deltas to send.
    pub changes: Vec<RemoteChange>,
    /// Feed position to resume from (the last position examined, sent or skipped).
    pub next: u64,
    /// True if the feed has entries after `next`.
    pub more: bool,
    /// Feed entries examined (sent or skipped as already known to the receiver).
    pub examined: u64,
}

impl Store {
    /// Unresolved merge conflicts of one record, as peers receive them.
    fn conflicts_to_report(&self, suffix: &[u8]) -> Result<Vec<ReportedConflict>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(keys::conflicts_of(suffix)) {
            let k = kv?.0;
            let id = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8-byte id"));
            let e = self.conflict(id)?;
            if let (ConflictDetail::Merge { conflict }, None) = (e.detail, &e.resolved) {
                out.push(ReportedConflict {
                    detected_by: e.reported_by.unwrap_or(self.id()),
                    conflict,
                });
            }
        }
        Ok(out)
    }

    /// Head and knowledge, read under the writer lock so that every own event with a stamp up to
    /// the reported clock is already committed and in the feed.
    pub fn position(&self) -> Result<Position, StoreError> {
        let w = self.lock();
        let mut knowledge: Knowledge = match self.tree.get(keys::meta("knowledge"))? {
            Some(v) => decode(&v)?,
            None => Knowledge::new(),
        };
        // Our own entry is our newest own event, not the clock: the clock also moves when we
        // merely observe a peer's stamps, and a claim about events we never made helps no one.
        knowledge.insert(self.id(), w.own_last);
        Ok(Position {
            head: w.seq,
            knowledge,
        })
    }

    /// Adds what a peer knew to our knowledge, inside a page's batch (call only after receiving
    /// every change the peer had when it reported that knowledge).
    pub fn stage_knowledge(&self, txn: &mut Txn<'_>, peer: &Knowledge) -> Result<(), StoreError> {
        let mut k: Knowledge = match txn.get(&keys::meta("knowledge"))? {
            Some(v) => decode(&v)?,
            None => Knowledge::new(),
        };
        crate::model::vv_join(&mut k, peer);
        // Our own entry is the clock; never store a claim about ourselves from a peer.
        k.remove(&self.id());
        txn.put(keys::meta("knowledge"), encode(&k));
        Ok(())
    }

    /// Writes a peer row inside a page's batch.
    pub fn stage_peer(&self, txn: &mut Txn<'_>, row: &PeerRow) {
        txn.put(keys::peer(&row.instance), encode(row));
    }

    /// Reads the next page of changes after `since` for a receiver that knows `known` and does
    /// not accept `skip_tables`. Stops at `limit` records or about `max_bytes` of stored data.
    /// States that came unchanged from `receiver` are skipped without being read, unless the
    /// receiver's knowledge of its own events is behind ours (it was restored).
    pub fn outgoing(
        &self,
        since: u64,
        limit: usize,
        max_bytes: usize,
        known: &Knowledge,
        skip_tables: &BTreeSet<String>,
        receiver: Option<uuid::Uuid>,
    ) -> Result<OutgoingPage, StoreError> {
        let skip_echoes = {
            // Nothing to send if the receiver already has every event we hold: answer at once
            // instead of walking the feed (after A sends B 100,000 records, B → A is this).
            let w = self.lock();
            let covered = w
                .holdings
                .iter()
                .all(|(n, ts)| known.get(n).is_some_and(|k| k >= ts));
            if covered && since <= w.seq {
                return Ok(OutgoingPage {
                    next: w.seq,
                    ..Default::default()
                });
            }
            // States that came from the receiver are skipped only while it vouches for every
            // event of its own that we hold. A receiver restored from a snapshot (`repair`,
            // `restore`) reports less, and then gets back what it sent us and lost.
            receiver.is_some_and(|r| {
                w.holdings
                    .get(&r)
                    .is_none_or(|h| known.get(&r).is_some_and(|k| k >= h))
            })
        };
        let mut page = OutgoingPage {
            next: since,
            ..Default::default()
        };
        let mut bytes = 0usize;
        let mut feed = self
            .tree
            .range(keys::feed(since.saturating_add(1))..keys::feed(u64::MAX));
        for kv in feed.by_ref() {
            let (k, v) = kv?;
            let seq = u64::from_be_bytes(k[1..9].try_into().expect("feed keys are 9 bytes"));
            let (echo_of, suffix) = keys::parse_feed_value(&v)
                .ok_or_else(|| StoreError::Decode("bad feed entry".into()))?;
            page.next = seq;
            page.examined += 1;
            if skip_echoes && echo_of.is_some() && echo_of == receiver {
                continue;
            }
            let (table, id) = keys::parse_record_suffix(suffix)
                .ok_or_else(|| StoreError::Decode("bad feed entry".into()))?;
            if self.config.local_only.contains(&table) || skip_tables.contains(&table) {
                continue;
            }
            let raw = self.tree.get(keys::record(suffix))?.ok_or_else(|| {
                StoreError::Decode(format!("feed points at missing {table}/{id}"))
            })?;
            let rec = decode_record(&raw)?;
            // No field is left out for its feed position being <= `since`: a record's feed entry
            // moves on every change, so a record edited before the receiver read its old
            // position was never sent, yet its untouched fields still carry that old position.
            // Only the receiver's knowledge can tell which writes it already has.
            if let Some(state) = outgoing_delta(&rec.state, known) {
                bytes += raw.len();
                // Like fields, conflicts are not filtered by position (the record may never have
                // reached this peer); receivers log each one once.
                let conflicts = if rec.conflict_seq > 0 {
                    self.conflicts_to_report(suffix)?
                } else {
                    Vec::new()
                };
                page.changes.push(RemoteChange {
                    table,
                    id,
                    state,
                    conflicts,
                });
            }
            if page.changes.len() >= limit || bytes >= max_bytes {
                break;
            }
        }
        page.more = feed.next().is_some();
        Ok(page)
    }
}
