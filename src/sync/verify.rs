//! `verify`: compares every table with a peer by bisecting digest buckets, transferring no
//! records, and answers the peer's digest requests.
//!
//! A record's content hash is SHA-256 of the canonical JSON of
//! `{"deleted": bool, "fields": {live fields}}`; a bucket's hash is SHA-256 over its records'
//! `id bytes ++ content hash`, in id order (docs/PROTOCOL.md, `fieldsync_digest`).

use super::peer::{Peer, RpcPeer};
use super::{blocking, our_hello, SyncError};
use crate::canonical::canonical_json;
use crate::protocol::{Bucket, DigestReply, DigestRequest, ENC_ZSTD};
use crate::store::{Store, StoreError};
use crate::tls::Transport;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use uuid::Uuid;

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

/// Compares every table with the peer at `addr` by bisecting digest buckets; transfers no
/// records.
pub async fn verify_with(
    store: Arc<Store>,
    addr: &str,
    transport: &Transport,
) -> Result<Vec<TableCheck>, SyncError> {
    let peer = RpcPeer::connect(addr, transport)?;
    verify(&store, &peer, addr).await
}

/// [`verify_with`] over any [`Peer`] (`label` names it in errors).
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
    let mut tables: BTreeSet<String> = reply.tables.iter().cloned().collect();
    tables.extend(hello.tables.iter().cloned());
    let mut out = Vec::new();
    for table in tables {
        let mut differing = Vec::new();
        let mut stack: Vec<Vec<u8>> = vec![vec![]];
        let (mut local_count, mut remote_count) = (None, None);
        // Bounded: each level adds one id byte, and ids have 16.
        while let Some(prefix) = stack.pop() {
            let remote = peer
                .digest(&DigestRequest {
                    table: table.clone(),
                    prefix: hex::encode(&prefix),
                })
                .await
                .map_err(|e| e.into_sync(label))?;
            let force = remote.records.is_some();
            let (t, p) = (table.clone(), prefix.clone());
            let local = blocking(store, move |s| digest_buckets(s, &t, &p, force)).await?;
            remote_count.get_or_insert(remote.total.count);
            local_count.get_or_insert(local.total.count);
            if remote.total == local.total {
                continue;
            }
            match (remote.records, local.records) {
                (Some(r), Some(l)) => {
                    let r: BTreeMap<Uuid, String> = r.into_iter().collect();
                    let l: BTreeMap<Uuid, String> = l.into_iter().collect();
                    let ids: BTreeSet<&Uuid> = r.keys().chain(l.keys()).collect();
                    differing.extend(ids.into_iter().filter(|id| r.get(id) != l.get(id)));
                }
                _ => {
                    let mut sub: BTreeMap<String, (Option<Bucket>, Option<Bucket>)> =
                        Default::default();
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
