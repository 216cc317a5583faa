//! `verify`: compares every table with a peer by range-based set reconciliation
//! ([`super::reconcile`]), transferring no records; and the digest buckets that answer
//! `fieldsync_digest` for peers of protocol 2 (whose `verify` bisects them).
//!
//! A record's content hash is SHA-256 of the canonical JSON of
//! `{"deleted": bool, "fields": {live fields}}`; a bucket's hash is SHA-256 over its records'
//! `id bytes ++ content hash`, in id order (docs/PROTOCOL.md, `fieldsync_digest`).

use super::peer::{Peer, RpcPeer};
use super::reconcile::{differences, require_reconcile, shared_tables};
use super::{blocking, our_hello, SyncError};
use crate::canonical::canonical_json;
use crate::protocol::{Bucket, DigestReply, ENC_ZSTD};
use crate::store::{Store, StoreError};
use crate::tls::Transport;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use uuid::Uuid;

/// One table's verify result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TableCheck {
    /// Table.
    pub table: String,
    /// True for fieldsync's own replicated tables (`fs_` names: laptop revocations, import
    /// keys), which every laptop of a deployment holds too but nobody writes as records; the
    /// API lists them so an application can tell them apart (`/v1/tables` leaves them out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system: bool,
    /// Same content on both sides.
    pub in_sync: bool,
    /// Records here (deleted included).
    pub local_count: u64,
    /// Records there.
    pub remote_count: u64,
    /// Ids whose content differs or that only one side has.
    pub differing: Vec<Uuid>,
    /// Differing records that deletes held here by the mass-delete brake explain: a sync does
    /// not move them, a decision does (`fieldsync held approve|reject`). One entry per hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_here: Vec<HeldDiff>,
    /// Deletes of this table the peer's brake holds, as its hello reply names them (only when
    /// the table differs): a sync does not move them either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_there: Vec<crate::protocol::HeldSummary>,
}

/// Differing records of a table explained by one pending hold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeldDiff {
    /// The hold's id (`fieldsync held approve ID`).
    pub hold: u64,
    /// The laptop the held deletes came from (its name, else its instance id).
    pub from: String,
    /// Differing records among the held deletes.
    pub records: u64,
}

/// Per hold of `table`, how many of `differing` its held deletes explain.
fn held_diffs(store: &Store, table: &str, differing: &[Uuid]) -> Vec<HeldDiff> {
    if differing.is_empty() {
        return Vec::new();
    }
    let Ok(holds) = store.holds() else {
        return Vec::new();
    };
    let diff: std::collections::HashSet<&Uuid> = differing.iter().collect();
    holds
        .iter()
        .filter(|h| h.table == table)
        .filter_map(|h| {
            let n = h.changes.iter().filter(|c| diff.contains(&c.id)).count() as u64;
            (n > 0).then(|| HeldDiff {
                hold: h.id,
                from: if h.peer_name.is_empty() {
                    h.peer.to_string()
                } else {
                    h.peer_name.clone()
                },
                records: n,
            })
        })
        .collect()
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

/// Compares every table with the peer at `addr` by set reconciliation; transfers no records.
pub async fn verify_with(
    store: Arc<Store>,
    addr: &str,
    transport: &Transport,
) -> Result<Vec<TableCheck>, SyncError> {
    let peer = RpcPeer::connect(addr, transport)?;
    verify(&store, &peer, addr).await
}

/// [`verify_with`] over any [`Peer`] (`label` names it in errors): range-based set
/// reconciliation (`fieldsync_reconcile`, protocol 3); a peer of protocol 2 is refused with
/// both versions named.
pub async fn verify<P: Peer>(
    store: &Arc<Store>,
    peer: &P,
    label: &str,
) -> Result<Vec<TableCheck>, SyncError> {
    let pos = blocking(store, |s| s.position()).await?;
    let hello = our_hello(store, &pos, None, vec![ENC_ZSTD.into()])?;
    let reply = peer.hello(&hello).await.map_err(|e| e.into_sync(label))?;
    peer.check_identity(&reply.peer.instance)
        .map_err(SyncError::Peer)?;
    require_reconcile(reply.protocol, label)?;
    // The peer's hello reply is kept as a session's is (`note_hello`: its knowledge, its
    // incarnation judged). The responder notes that we now hold its knowledge (`told`) and
    // names it by hash in its next hello to us; a verify that dropped it made the first sync
    // back after a verify cost a refused hello and a full one (bench: 5.3 KB instead of 3.7).
    {
        let (info, addr) = (reply.peer.clone(), label.to_string());
        let (clock_ms, head, inc) = (reply.clock_ms, reply.head, reply.incarnation);
        let k = reply.knowledge.clone();
        blocking(store, move |s| {
            Ok(super::receive::note_hello(
                s,
                &info,
                clock_ms,
                head,
                &k,
                inc.as_ref(),
                super::receive::HelloSeen::Outbound { addr: &addr },
            ))
        })
        .await?
        .map_err(|e| match e {
            super::receive::ReceiveError::Commit(crate::store::CommitError::Store(e)) => {
                SyncError::Store(e)
            }
            other => SyncError::Peer(other.to_protocol()),
        })?;
    }
    let tables = shared_tables(&hello.tables, &reply.tables, &reply.local_only, store);
    let (diffs, stats) = differences(store, peer, &tables, label).await?;
    tracing::debug!(peer = %reply.peer.instance, rounds = stats.rounds, ranges = stats.ranges,
                    "verify reconciled");
    Ok(diffs
        .into_iter()
        .map(|d| TableCheck {
            in_sync: d.differing.is_empty(),
            held_here: held_diffs(store, &d.table, &d.differing),
            held_there: if d.differing.is_empty() {
                Vec::new()
            } else {
                reply
                    .held
                    .iter()
                    .filter(|h| h.table == d.table)
                    .take(crate::protocol::MAX_HELD_SUMMARIES)
                    .map(|h| crate::protocol::HeldSummary {
                        // A peer-supplied name: bounded like `PeerInfo`'s strings.
                        from: h.from.chars().take(256).collect(),
                        ..h.clone()
                    })
                    .collect()
            },
            system: d.table.starts_with(crate::model::SYSTEM_PREFIX),
            table: d.table,
            local_count: d.local_count,
            remote_count: d.remote_count,
            differing: d.differing,
        })
        .collect())
}
