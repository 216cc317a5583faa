//! Range-based set reconciliation (protocol 3, `fieldsync_reconcile`; docs/PROTOCOL.md):
//! finds exactly the records whose content differs between two replicas, moving a few
//! fingerprints per difference instead of every record, and anti-entropy, which then moves
//! those records both ways through the normal receive path whatever knowledge says.
//!
//! The initiator drives: it asks for each table's whole range with its own 16-byte fingerprint
//! (equal: done, one small round trip for replicas in sync). For a range that differs the
//! responder answers with the 8-byte fingerprints of its 16 sub-ranges (one hex digit of the
//! id deeper) or, for a range of at most [`RECONCILE_ITEMS_MAX`] records, the records' ids and
//! content hashes; the initiator compares with its own (from the store's range sums,
//! `store/fingerprint.rs`) and asks next for the sub-ranges that differ, all tables' ranges in
//! one request per round. d differences among n records cost about log16(n) rounds and
//! d · 16 · 8 bytes per round.

use super::peer::{Peer, RpcPeer};
use super::receive::receive_page;
use super::{blocking, our_hello, SessionOptions, SyncError};
use crate::model::RecordState;
use crate::protocol::{
    self, codes, FetchRequest, Page, ProtocolError, PushRequest, RangeAnswer, RangeQuery,
    ReconcileRequest, ENC_JSON, MAX_FETCH_IDS, MAX_RECONCILE_RANGES, RECONCILE_ITEMS_MAX,
    RECONCILE_PROTOCOL_VERSION,
};
use crate::store::fingerprint::parse_nibbles;
use crate::store::{Knowledge, Store, StoreError};
use crate::tls::Transport;
use base64::Engine;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use uuid::Uuid;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What one table looks like from both sides.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableDiff {
    /// Table.
    pub table: String,
    /// Records here (deleted included).
    pub local_count: u64,
    /// Records there.
    pub remote_count: u64,
    /// Ids whose content differs or that only one side has, in order.
    pub differing: Vec<Uuid>,
}

/// How much a reconciliation exchanged (for logs and the benchmark).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileStats {
    /// `fieldsync_reconcile` requests sent.
    pub rounds: u64,
    /// Ranges asked about.
    pub ranges: u64,
}

/// The responder's answer for one range. Refuses a malformed prefix; the caller checks the
/// table (valid, not local-only).
pub fn answer(store: &Store, q: &RangeQuery) -> Result<RangeAnswer, ProtocolError> {
    let bad = |what: &str| {
        ProtocolError::new(
            codes::INVALID_PARAMS,
            format!("range {what} of table {}: resend lowercase hex", q.table),
        )
    };
    let nibbles =
        parse_nibbles(&q.prefix).ok_or_else(|| bad("prefix is not 0 to 32 hex digits"))?;
    let store_err = |e: StoreError| super::receive::store_refusal(&e);
    let sum = store.range_sum(&q.table, &nibbles).map_err(store_err)?;
    if let Some(fp) = &q.fp {
        let theirs = hex::decode(fp).map_err(|_| bad("fingerprint is not hex"))?;
        if theirs == sum.fingerprint::<16>() {
            return Ok(RangeAnswer {
                count: sum.count,
                same: true,
                ..Default::default()
            });
        }
    }
    if sum.count <= RECONCILE_ITEMS_MAX || nibbles.len() >= 32 {
        let items = store.range_items(&q.table, &nibbles).map_err(store_err)?;
        let mut raw = Vec::with_capacity(items.len() * 24);
        for (id, c) in items {
            raw.extend_from_slice(id.as_bytes());
            raw.extend_from_slice(&c[..8]);
        }
        return Ok(RangeAnswer {
            count: sum.count,
            items: Some(B64.encode(raw)),
            ..Default::default()
        });
    }
    let children = store
        .range_children(&q.table, &nibbles)
        .map_err(store_err)?;
    let mut raw = Vec::with_capacity(16 * 8);
    for c in children {
        raw.extend_from_slice(&c.fingerprint::<8>());
    }
    Ok(RangeAnswer {
        count: sum.count,
        children: Some(B64.encode(raw)),
        ..Default::default()
    })
}

/// One range still to ask about.
#[derive(Clone, Debug)]
struct Pending {
    table: usize,
    nibbles: Vec<u8>,
    /// The whole table: sent with our fingerprint, answers the remote count.
    root: Option<[u8; 16]>,
}

fn prefix_hex(nibbles: &[u8]) -> String {
    nibbles
        .iter()
        .map(|n| char::from_digit(u32::from(*n), 16).expect("nibble"))
        .collect()
}

fn bad_answer(label: &str, what: &str) -> SyncError {
    SyncError::Peer(ProtocolError::new(
        codes::INVALID_PARAMS,
        format!("peer at {label} sent a malformed reconcile answer ({what}): is it a fieldsync 3?"),
    ))
}

/// Compares `tables` with the peer: every record whose content differs, exactly (up to a
/// 2^-64 chance per compared range that a 64-bit fingerprint collides).
pub async fn differences<P: Peer>(
    store: &Arc<Store>,
    peer: &P,
    tables: &[String],
    label: &str,
) -> Result<(Vec<TableDiff>, ReconcileStats), SyncError> {
    let me = store.id();
    let mut out: Vec<TableDiff> = tables
        .iter()
        .map(|t| TableDiff {
            table: t.clone(),
            ..Default::default()
        })
        .collect();
    let mut differing: Vec<BTreeSet<Uuid>> = vec![BTreeSet::new(); tables.len()];
    let roots = {
        let tables = tables.to_vec();
        blocking(store, move |s| {
            tables
                .iter()
                .map(|t| s.range_sum(t, &[]))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?
    };
    let mut queue: VecDeque<Pending> = VecDeque::new();
    for (i, sum) in roots.iter().enumerate() {
        out[i].local_count = sum.count;
        queue.push_back(Pending {
            table: i,
            nibbles: vec![],
            root: Some(sum.fingerprint::<16>()),
        });
    }
    let mut stats = ReconcileStats::default();
    // Bounded: a range is asked about only when the peer's fingerprint of it is not empty, so
    // an honest peer holds a record in each, and ids have 32 digits: at most 32 ranges per
    // record it holds. A peer whose answers go beyond that is refused.
    let mut budget: u64 = 64 * tables.len() as u64;
    let mut counted = false;
    while !queue.is_empty() {
        let n = queue.len().min(MAX_RECONCILE_RANGES);
        let batch: Vec<Pending> = queue.drain(..n).collect();
        let req = ReconcileRequest {
            from: me,
            ranges: batch
                .iter()
                .map(|p| RangeQuery {
                    table: tables[p.table].clone(),
                    prefix: prefix_hex(&p.nibbles),
                    fp: p.root.map(hex::encode),
                })
                .collect(),
        };
        stats.rounds += 1;
        stats.ranges += n as u64;
        let reply = peer.reconcile(&req).await.map_err(|e| e.into_sync(label))?;
        if reply.ranges.len() != batch.len() {
            return Err(bad_answer(label, "wrong number of ranges"));
        }
        let tables_owned = tables.to_vec();
        let label_owned = label.to_string();
        let (next, found, remote_counts) = blocking(store, move |s| {
            Ok(compare_round(
                s,
                &tables_owned,
                batch,
                reply.ranges,
                &label_owned,
            ))
        })
        .await??;
        queue.extend(next);
        for (i, id) in found {
            differing[i].insert(id);
        }
        for (i, c) in remote_counts {
            out[i].remote_count = c;
        }
        if !counted {
            counted = true;
            for d in &out {
                budget += 32 * d.remote_count.max(d.local_count).min(1 << 32);
            }
        }
        if stats.ranges > budget {
            return Err(bad_answer(
                label,
                "its fingerprints keep differing beyond what its record counts allow",
            ));
        }
    }
    for (d, ids) in out.iter_mut().zip(differing) {
        d.differing = ids.into_iter().collect();
    }
    Ok((out, stats))
}

type RoundResult = (Vec<Pending>, Vec<(usize, Uuid)>, Vec<(usize, u64)>);

/// Compares one round's answers with our own ranges: the sub-ranges to ask about next, the
/// differing ids found, and the remote counts of whole tables.
fn compare_round(
    s: &Store,
    tables: &[String],
    batch: Vec<Pending>,
    answers: Vec<RangeAnswer>,
    label: &str,
) -> Result<RoundResult, SyncError> {
    let mut next = Vec::new();
    let mut found = Vec::new();
    let mut counts = Vec::new();
    for (p, a) in batch.into_iter().zip(answers) {
        let table = &tables[p.table];
        if p.root.is_some() {
            counts.push((p.table, a.count));
        }
        if a.same {
            continue;
        }
        if let Some(items) = a.items {
            let raw = B64
                .decode(items)
                .map_err(|_| bad_answer(label, "items are not base64"))?;
            if raw.len() % 24 != 0 {
                return Err(bad_answer(label, "items are not 24-byte entries"));
            }
            let theirs: BTreeMap<Uuid, [u8; 8]> = raw
                .chunks(24)
                .map(|c| {
                    let id = Uuid::from_slice(&c[..16]).expect("16 bytes");
                    (id, c[16..24].try_into().expect("8 bytes"))
                })
                .collect();
            let ours: BTreeMap<Uuid, [u8; 8]> = s
                .range_items(table, &p.nibbles)?
                .into_iter()
                .map(|(id, c)| (id, c[..8].try_into().expect("8 bytes")))
                .collect();
            let ids: BTreeSet<&Uuid> = theirs.keys().chain(ours.keys()).collect();
            for id in ids {
                if theirs.get(id) != ours.get(id) {
                    found.push((p.table, *id));
                }
            }
        } else if let Some(children) = a.children {
            let raw = B64
                .decode(children)
                .map_err(|_| bad_answer(label, "children are not base64"))?;
            if raw.len() != 16 * 8 || p.nibbles.len() >= 32 {
                return Err(bad_answer(label, "children are not 16 fingerprints"));
            }
            let ours = s.range_children(table, &p.nibbles)?;
            for (i, (theirs, mine)) in raw.chunks(8).zip(ours.iter()).enumerate() {
                if theirs == mine.fingerprint::<8>() {
                    continue;
                }
                let mut child = p.nibbles.clone();
                child.push(i as u8);
                if theirs == [0u8; 8] {
                    // Empty there: everything we have in it differs, no need to ask.
                    for (id, _) in s.range_items(table, &child)? {
                        found.push((p.table, id));
                    }
                } else {
                    next.push(Pending {
                        table: p.table,
                        nibbles: child,
                        root: None,
                    });
                }
            }
        } else {
            return Err(bad_answer(label, "neither same, children nor items"));
        }
    }
    Ok((next, found, counts))
}

/// Refuses a peer whose protocol predates `fieldsync_reconcile`, naming both versions.
pub fn require_reconcile(protocol: u32, label: &str) -> Result<(), SyncError> {
    if protocol < RECONCILE_PROTOCOL_VERSION {
        return Err(SyncError::Peer(ProtocolError::new(
            codes::INCOMPATIBLE_VERSION,
            format!(
                "peer at {label} speaks sync protocol {protocol}, but verify and anti-entropy \
                 need {RECONCILE_PROTOCOL_VERSION}: upgrade fieldsync on that laptop"
            ),
        )));
    }
    Ok(())
}

/// What one anti-entropy round did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AntiEntropyReport {
    /// The peer.
    pub peer: Uuid,
    /// Records found differing, all tables.
    pub differing: u64,
    /// Records fetched from the peer and received (through the normal receive path).
    pub fetched: u64,
    /// Of those, records that changed here.
    pub applied: u64,
    /// Records of ours pushed to the peer.
    pub pushed: u64,
    /// Of those, records that changed there.
    pub applied_there: u64,
    /// Of the differing records, those the sessions before should have moved: one side
    /// lacked an event that its own or the other side's knowledge at the hello covered, or a
    /// record of ours the peer's position for us says it received ([`Window::missed`]). The
    /// others changed on one side while the exchange ran (a third laptop's page, a local
    /// write): no fault. `None` when no [`Window`] was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
    /// The reconciliation's cost.
    pub stats: ReconcileStats,
}

/// What both sides had settled when an exchange began, to tell a record that a session
/// should have moved (a fault: a wrong knowledge claim, a rollback, a bug) from one that
/// changed on either side while the exchange ran. Agents sync with several peers at once, so
/// after a session with one peer a record often differs only because another peer's page
/// reached one side meanwhile (trial 8, finding 10).
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Our knowledge as told in the hello.
    pub ours: Knowledge,
    /// The peer's knowledge as told in its hello reply.
    pub theirs: Knowledge,
    /// The position of our feed the peer holds: after a session, where its push ended.
    pub pushed_to: u64,
}

impl Window {
    /// True if the difference between our copy of a record (`ours`, with its feed position,
    /// as it was before the peer's copy was merged) and the peer's (`theirs`) is one the
    /// exchange should not have found. Judged by each instance's latest event on the record:
    /// one side lacks it although that side's or the other's knowledge at the hello covered
    /// it (so it was held there then, and the pages should have carried it, or a claim was
    /// wrong), or the peer lacks an event of a record whose feed position it had received.
    pub fn missed(&self, ours: Option<(&RecordState, u64)>, theirs: Option<&RecordState>) -> bool {
        let none = crate::model::VersionVector::default();
        let our_vv = ours.map_or(&none, |(s, _)| &s.vv);
        let their_vv = theirs.map_or(&none, |s| &s.vv);
        let held_at_hello = |n: &Uuid, ts: u64| {
            self.ours.get(n).is_some_and(|k| *k >= ts)
                || self.theirs.get(n).is_some_and(|k| *k >= ts)
        };
        let lacks = |a: &crate::model::VersionVector, n: &Uuid, ts: u64| {
            a.get(n).copied().unwrap_or(0) < ts
        };
        let peer_missed = our_vv.iter().any(|(n, ts)| {
            lacks(their_vv, n, *ts)
                && (held_at_hello(n, *ts) || ours.is_some_and(|(_, seq)| seq <= self.pushed_to))
        });
        peer_missed
            || their_vv
                .iter()
                .any(|(n, ts)| lacks(our_vv, n, *ts) && held_at_hello(n, *ts))
    }
}

/// One anti-entropy round with `peer`: reconciles every synced table and moves each differing
/// record both ways, whole (its full state and history, whatever either side's knowledge
/// claims), through the normal receive path on both sides (admission, the brake, merge rules).
/// Merging is a join, so sending a record the other side already has changes nothing. Needs a
/// completed session with the peer before (its peer row). Ends by telling the peer the
/// exchange is over (an empty last push).
pub async fn anti_entropy<P: Peer>(
    store: &Arc<Store>,
    peer: &P,
    label: &str,
    transport: &Transport,
) -> Result<AntiEntropyReport, SyncError> {
    let pos = blocking(store, |s| s.position()).await?;
    let hello = our_hello(
        store,
        &pos,
        None,
        vec![protocol::ENC_ZSTD.into(), ENC_JSON.into()],
    )?;
    let reply = peer.hello(&hello).await.map_err(|e| e.into_sync(label))?;
    peer.check_identity(&reply.peer.instance)
        .map_err(SyncError::Peer)?;
    require_reconcile(reply.protocol, label)?;
    let tables = shared_tables(&hello.tables, &reply.tables, &reply.local_only, store);
    // No window: no pages ran after this hello, so what either side held at it may simply not
    // have travelled yet (a write since the last session).
    let report = exchange(
        store,
        peer,
        label,
        transport,
        reply.peer.instance,
        &tables,
        &reply.encoding,
        None,
    )
    .await?;
    // The hello began an inbound exchange on the peer; an empty last push ends it.
    push(peer, store.id(), &[], None, &reply.encoding, false, label).await?;
    Ok(report)
}

/// Reconciles `tables` with the peer `pid` and moves each differing record both ways, whole,
/// through the normal receive path on both sides (the body of [`anti_entropy`]; also run by
/// the first session with each peer after an open or an incarnation change, see
/// `store/rollback.rs`). Every push is marked `more`, so it ends no session on the peer.
/// With a `window`, the report also counts the differing records a session should have moved
/// ([`AntiEntropyReport::missed`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange<P: Peer>(
    store: &Arc<Store>,
    peer: &P,
    label: &str,
    transport: &Transport,
    pid: Uuid,
    tables: &[String],
    encoding: &str,
    window: Option<&Window>,
) -> Result<AntiEntropyReport, SyncError> {
    let (diffs, stats) = differences(store, peer, tables, label).await?;
    let me = store.id();
    let mut report = AntiEntropyReport {
        peer: pid,
        stats,
        missed: window.map(|_| 0),
        ..Default::default()
    };
    for d in &diffs {
        report.differing += d.differing.len() as u64;
        for chunk in d.differing.chunks(MAX_FETCH_IDS) {
            let page = peer
                .fetch(&FetchRequest {
                    from: me,
                    table: d.table.clone(),
                    ids: chunk.to_vec(),
                    encoding: encoding.to_string(),
                })
                .await
                .map_err(|e| e.into_sync(label))?;
            if let (Some(w), Some(missed)) = (window, report.missed.as_mut()) {
                // Both copies as they are before the peer's is merged here.
                let theirs = protocol::decode_changes(&page)?;
                let (table, ids) = (d.table.clone(), chunk.to_vec());
                let ours = blocking(store, move |s| {
                    ids.iter()
                        .map(|id| Ok((*id, s.get(&table, id)?)))
                        .collect::<Result<Vec<_>, StoreError>>()
                })
                .await?;
                for (id, here) in &ours {
                    let there = theirs.iter().find(|c| c.id == *id).map(|c| &c.state);
                    let here = here.as_ref().map(|r| (&r.state, r.seq));
                    *missed += u64::from(w.missed(here, there));
                }
            }
            let t = transport.clone();
            let got = blocking(store, move |s| {
                Ok(receive_page(s, &t, pid, &page, None, false))
            })
            .await?
            .map_err(|e| SyncError::Peer(e.to_protocol()))?;
            report.fetched += got.records;
            report.applied += got.committed.stats.applied;

            let (table, ids) = (d.table.clone(), chunk.to_vec());
            let t = transport.clone();
            let (ours, proofs) = blocking(store, move |s| {
                let mut out = Vec::new();
                for id in &ids {
                    if let Some(c) = s.outgoing_change(&table, id, &Default::default())? {
                        out.push(c);
                    }
                }
                let proofs = super::signed::proofs_for(s, &t, &out)?;
                Ok((out, proofs))
            })
            .await?;
            if ours.is_empty() {
                continue;
            }
            let sent = push(peer, me, &ours, proofs, encoding, true, label).await?;
            report.pushed += ours.len() as u64;
            report.applied_there += sent;
        }
    }
    Ok(report)
}

/// Pushes whole records outside the feed: positions 0 → 0, so the receiver's position for us
/// does not move, and no knowledge, so it learns nothing it did not receive.
async fn push<P: Peer>(
    peer: &P,
    me: Uuid,
    changes: &[crate::change::RemoteChange],
    proofs: Option<String>,
    encoding: &str,
    more: bool,
    label: &str,
) -> Result<u64, SyncError> {
    let page = Page {
        proofs,
        since: 0,
        next: 0,
        more,
        count: changes.len() as u32,
        encoding: encoding.to_string(),
        data: protocol::encode_changes(changes, encoding)?,
        knowledge: None,
    };
    let r = peer
        .push(&PushRequest {
            from: me,
            page,
            knowledge: None,
        })
        .await
        .map_err(|e| e.into_sync(label))?;
    Ok(r.stats.applied)
}

/// The tables both sides sync: either side's, minus local-only ones of either.
pub(crate) fn shared_tables(
    ours: &[String],
    theirs: &[String],
    their_local_only: &[String],
    store: &Store,
) -> Vec<String> {
    let mut t: BTreeSet<String> = ours.iter().chain(theirs).cloned().collect();
    t.retain(|x| !their_local_only.contains(x) && !store.config().local_only.contains(x));
    t.into_iter().collect()
}

/// [`anti_entropy`] with the peer at `addr`, over the kept connection in `opts.clients`.
pub async fn anti_entropy_with(
    store: Arc<Store>,
    addr: &str,
    opts: &SessionOptions,
) -> Result<AntiEntropyReport, SyncError> {
    let peer = match opts.clients.get(addr) {
        Some(p) => p,
        None => {
            let p = RpcPeer::connect(addr, &opts.transport)?;
            opts.clients.put(addr, p.clone());
            p
        }
    };
    let r = anti_entropy(&store, &peer, addr, &opts.transport).await;
    if r.is_err() {
        opts.clients.forget(addr);
    }
    r
}
