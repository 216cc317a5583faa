//! The mass-delete brake's store side: incoming deletes held for a person to decide.
//!
//! A page that would delete more of a table's live records than `[brake]` allows (see
//! [`crate::config::BrakeConfig`]) is split before it is merged: the changes that would turn a
//! live record into a tombstone are written as one [`Hold`] instead of being merged, and
//! everything else in the page is merged as usual, in the same batch. The hold waits for
//! `fieldsync held approve ID` (merge exactly the held changes) or `held reject ID` (merge them,
//! then restore every record they deleted with a new local revision, which syncs back).
//!
//! | key (see `keys.rs`) | value (rmp-serde) | written                                        |
//! |---------------------|-------------------|------------------------------------------------|
//! | `B` hold id (u64 BE)| [`Hold`]          | with the page that tripped the brake; removed by approve/reject |
//! | `M` `next_hold`     | u64               | with every new hold                            |
//!
//! Decided for the deployment: on a laptop holding the deployment CA, `held approve|reject`
//! also writes the coordinator's decision, CA-signed (`mesh::CaFile::sign_hold_decision`), into
//! the replicated table `fs_hold_decisions`, in the same batch: a [`HoldVerdict`] naming the table
//! and each covered delete by record id and delete stamp (at most [`VERDICT_PART`] per record;
//! a larger hold writes several). Every laptop admits such a record only with the CA's
//! signature (`sync/admit.rs`, like revocations), and a page that brings one (or touches a held
//! record) settles the pending holds it covers in the page's own batch ([`Batch::settle`]):
//! an approved delete is merged; a rejected one is merged once the coordinator's restore is
//! here (the merge then stays alive, the restore being newer), and stays held until then. A
//! hold only partly covered keeps the rest. A delete already covered by a known approval is
//! not held when it arrives.
//!
//! | `fs_hold_decisions` field | value                                                      |
//! |---------------------------|------------------------------------------------------------|
//! | `decision`                | `approve` or `reject`                                      |
//! | `table`                   | the table of the held deletes                              |
//! | `origin`, `origin_name`   | the instance the coordinator's hold came from              |
//! | `by`, `by_name`           | the coordinator's instance                                 |
//! | `decided_at`              | RFC 3339                                                   |
//! | `deletes`                 | `["<record id> <delete ts> <delete node>", ...]`           |
//! | `record`, `mesh`          | the record's own id, the deployment id (signed with it)    |
//! | `signature`               | base64 ECDSA P-256 by the CA over the canonical JSON of the rest |
//!
//! Knowledge: a held delete was not received. While a hold is pending, our knowledge of each
//! origin stays below the oldest held event of that origin (its `cap`), so no peer leaves the
//! held events out of what it sends us ([`cap_knowledge`], applied whenever knowledge is raised).
//! Positions still advance, so nothing else stalls.

use super::write::{Batch, LocalOp};
use super::{decode, encode, keys, Store, StoreError, TableCounts, Txn};
use crate::change::{ApplyStats, RemoteChange};
use crate::clock::Hlc;
use crate::config::BrakeConfig;
use crate::merge::{merge_remote, Edit};
use crate::model::VersionVector;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Deletes per `fs_hold_decisions` record: about 95 bytes each, so a part stays far below the
/// 1 MiB record limit.
pub const VERDICT_PART: usize = 5_000;

/// The coordinator's decision on held deletes, as one `fs_hold_decisions` record says (see the
/// module doc). The store trusts records of that table: admission let only CA-signed ones in.
#[derive(Clone, Debug, PartialEq)]
pub struct HoldVerdict {
    /// Approved (merge the deletes) or rejected (the records stay alive).
    pub approve: bool,
    /// The table.
    pub table: String,
    /// The instance the coordinator's hold came from, and its name.
    pub origin: Uuid,
    /// Its name.
    pub origin_name: String,
    /// The coordinator's instance.
    pub by: Uuid,
    /// Its name.
    pub by_name: String,
    /// When it decided.
    pub at: DateTime<Utc>,
    /// The covered deletes: record id and the delete's stamp.
    pub deletes: BTreeSet<(Uuid, Hlc)>,
}

impl HoldVerdict {
    /// The verdicts deciding `hold` (one per [`VERDICT_PART`] deletes).
    pub fn for_hold(hold: &Hold, approve: bool, by: Uuid, by_name: &str) -> Vec<HoldVerdict> {
        let all: Vec<(Uuid, Hlc)> = hold
            .changes
            .iter()
            .filter_map(|c| c.state.deleted.map(|d| (c.id, d)))
            .collect();
        all.chunks(VERDICT_PART)
            .map(|part| HoldVerdict {
                approve,
                table: hold.table.clone(),
                origin: hold.peer,
                origin_name: hold.peer_name.clone(),
                by,
                by_name: by_name.to_string(),
                at: Utc::now(),
                deletes: part.iter().copied().collect(),
            })
            .collect()
    }

    /// The record's fields before it is signed (`mesh::CaFile::sign_hold_decision` adds
    /// `record`, `mesh` and `signature`).
    pub fn to_fields(&self) -> serde_json::Map<String, Value> {
        let deletes: Vec<Value> = self
            .deletes
            .iter()
            .map(|(id, d)| Value::String(format!("{id} {} {}", d.ts, d.node)))
            .collect();
        let v = serde_json::json!({
            "decision": if self.approve { "approve" } else { "reject" },
            "table": self.table,
            "origin": self.origin.to_string(),
            "origin_name": self.origin_name,
            "by": self.by.to_string(),
            "by_name": self.by_name,
            "decided_at": self.at.to_rfc3339(),
            "deletes": deletes,
        });
        v.as_object().cloned().unwrap_or_default()
    }

    /// Reads a record's fields back; `None` if they are not a decision.
    pub fn from_fields(f: &serde_json::Map<String, Value>) -> Option<HoldVerdict> {
        let s = |k: &str| f.get(k).and_then(Value::as_str);
        let approve = match s("decision")? {
            "approve" => true,
            "reject" => false,
            _ => return None,
        };
        let mut deletes = BTreeSet::new();
        for d in f.get("deletes")?.as_array()? {
            let mut parts = d.as_str()?.split(' ');
            let id = parts.next()?.parse().ok()?;
            let ts = parts.next()?.parse().ok()?;
            let node = parts.next()?.parse().ok()?;
            deletes.insert((id, Hlc { ts, node }));
        }
        Some(HoldVerdict {
            approve,
            table: s("table")?.to_string(),
            origin: s("origin")?.parse().ok()?,
            origin_name: s("origin_name").unwrap_or_default().to_string(),
            by: s("by")?.parse().ok()?,
            by_name: s("by_name").unwrap_or_default().to_string(),
            at: DateTime::parse_from_rfc3339(s("decided_at")?)
                .ok()?
                .with_timezone(&Utc),
            deletes,
        })
    }

    /// Whether this verdict covers `ch`: the same table, record and delete stamp.
    fn covers(&self, ch: &RemoteChange) -> bool {
        ch.table == self.table
            && ch
                .state
                .deleted
                .is_some_and(|d| self.deletes.contains(&(ch.id, d)))
    }
}

/// Signs the verdicts of a decision made on the coordinator's laptop: one record (id, fields)
/// per verdict, or why it cannot.
pub type HoldVerdictSigner<'a> =
    &'a dyn Fn(&[HoldVerdict]) -> Result<Vec<(Uuid, serde_json::Map<String, Value>)>, String>;

/// Deletes from one peer for one table, held by the brake until a person decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// The hold's id (`fieldsync held approve ID`).
    #[serde(rename = "id")]
    pub id: u64,
    /// The instance the deletes came from.
    #[serde(rename = "peer")]
    pub peer: Uuid,
    /// Its display name when the hold was made.
    #[serde(rename = "peer_name")]
    pub peer_name: String,
    /// The table.
    #[serde(rename = "table")]
    pub table: String,
    /// Live records of the table here when the hold was made.
    #[serde(rename = "live")]
    pub live: u64,
    /// When the hold was made.
    #[serde(rename = "at")]
    pub at: DateTime<Utc>,
    /// The held record states, exactly as received (merged by approve or reject).
    #[serde(rename = "changes")]
    pub changes: Vec<RemoteChange>,
    /// Per origin, the highest stamp our knowledge may claim while this hold is pending (one
    /// below its oldest held event that we do not have).
    #[serde(rename = "cap")]
    pub cap: VersionVector,
    /// Held because the peer's knowledge of its own events was behind what we hold of them
    /// (it looks reset or restored), whatever the count.
    #[serde(rename = "reset", default)]
    pub reset: bool,
}

impl Hold {
    /// One line for a person: "laptopB wants to delete 80 of 100 person records".
    pub fn describe(&self) -> String {
        let who = if self.peer_name.is_empty() {
            self.peer.to_string()
        } else {
            self.peer_name.clone()
        };
        let reset = if self.reset {
            " (which looks reset or restored)"
        } else {
            ""
        };
        format!(
            "{who}{reset} wants to delete {} of {} {} records",
            self.changes.len(),
            self.live,
            self.table
        )
    }
}

/// What deciding a hold did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decided {
    /// Merging the held changes.
    pub merged: ApplyStats,
    /// Records restored with a new revision after the deletes (reject only).
    pub restored: u64,
    /// The decision was signed with the deployment CA and travels to every laptop.
    #[serde(default)]
    pub everywhere: bool,
}

fn decode_holds(txn: &Txn<'_>) -> Result<Vec<Hold>, StoreError> {
    let mut out = Vec::new();
    for k in txn.keys_with_prefix(&[keys::HELD])? {
        if let Some(v) = txn.get(&k)? {
            out.push(decode(&v)?);
        }
    }
    Ok(out)
}

/// Lowers `k` to every pending hold's cap, so held events are never counted as received.
pub(super) fn cap_knowledge(txn: &Txn<'_>, k: &mut VersionVector) -> Result<(), StoreError> {
    for h in decode_holds(txn)? {
        for (node, cap) in &h.cap {
            if let Some(e) = k.get_mut(node) {
                *e = (*e).min(*cap);
            }
        }
    }
    Ok(())
}

/// Whether a change from a sender that looks reset (its knowledge of its own events behind
/// what we hold of them, with no restore announced) is held whatever the count: only the
/// sender's *own* deletes can come from its state that went backwards. A delete made by
/// another laptop and relayed through it is that laptop's decision, judged by the count alone.
fn reset_suspect(reset: bool, peer: Uuid, state: &crate::model::RecordState) -> bool {
    reset && state.deleted.is_some_and(|d| d.node == peer)
}

impl Batch<'_> {
    /// Runs the brake over a page from `peer`: returns the changes to merge now and writes the
    /// ones it holds into this batch (a new hold per tripped table, or added to a pending hold
    /// of the same record, or of the same peer and table). `reset`: the peer looks reset or
    /// restored without saying so (see `reset_suspect`), so its own deletes of live records are
    /// held whatever their count. Returns the page
    /// itself, unsplit and uncopied, when it deletes nothing live.
    pub(super) fn brake<'c>(
        &mut self,
        cfg: &BrakeConfig,
        peer: Uuid,
        peer_name: &str,
        reset: bool,
        changes: &'c [RemoteChange],
    ) -> Result<(Cow<'c, [RemoteChange]>, u64), StoreError> {
        // Which changes would turn a live record into a tombstone, per table.
        // (index, cap, held because the peer looks reset)
        let mut kills: BTreeMap<&str, Vec<(usize, VersionVector, bool)>> = BTreeMap::new();
        let mut approved: Option<Vec<HoldVerdict>> = None;
        let mut pre_approved: Vec<(String, String)> = Vec::new();
        for (i, ch) in changes.iter().enumerate() {
            if ch.state.deleted.is_none() {
                continue;
            }
            let Some(prev) = self.load(&keys::record_suffix(&ch.table, &ch.id))? else {
                continue;
            };
            if !prev.state.is_alive() || merge_remote(Some(&prev.state), &ch.state).state.is_alive()
            {
                continue;
            }
            // The coordinator already approved this delete for the deployment: not held.
            if approved.is_none() {
                let all = self.store.verdicts(changes)?;
                approved = Some(all.into_iter().filter(|v| v.approve).collect());
            }
            if let Some(v) = approved.iter().flatten().find(|v| v.covers(ch)) {
                pre_approved.push((ch.table.clone(), v.by_name.clone()));
                continue;
            }
            // The held events we do not have: knowledge must stay below each of them.
            let mut cap = VersionVector::new();
            let stamps = ch
                .state
                .fields
                .values()
                .map(|f| f.stamp)
                .chain(ch.state.deleted);
            for s in stamps.filter(|s| !crate::model::covers(&prev.state.vv, s)) {
                let e = cap.entry(s.node).or_insert(u64::MAX);
                *e = (*e).min(s.ts.saturating_sub(1));
            }
            let suspect = cfg.enabled && reset_suspect(reset, peer, &ch.state);
            kills
                .entry(ch.table.as_str())
                .or_default()
                .push((i, cap, suspect));
        }
        if let Some((table, by)) = pre_approved.first() {
            tracing::info!(%table, count = pre_approved.len(),
                "{} deletes of {table} from {peer_name} applied without holding: the coordinator \
                 ({by}) approved them for every laptop", pre_approved.len());
        }
        if kills.is_empty() {
            return Ok((Cow::Borrowed(changes), 0));
        }
        let mut holds = decode_holds(&self.txn)?;
        let mut touched: Vec<usize> = Vec::new();
        let mut held_idx = vec![false; changes.len()];
        for (table, ks) in kills {
            let live = match self.txn.get(&keys::table_counts(table))? {
                Some(v) => decode::<TableCounts>(&v)?.live,
                None => 0,
            };
            let pending = holds
                .iter()
                .position(|h| h.peer == peer && h.table == table);
            let trips = pending.is_some() || cfg.trips(table, ks.len() as u64, live);
            let any_suspect = ks.iter().any(|k| k.2);
            let mut fresh: Option<usize> = None;
            for (i, cap, suspect) in ks {
                let ch = &changes[i];
                // A record already held (from any peer) stays held: its states join there.
                let same = holds
                    .iter()
                    .position(|h| h.table == ch.table && h.changes.iter().any(|c| c.id == ch.id));
                let target = match (same, trips || suspect) {
                    (Some(h), _) => h,
                    (None, false) => continue,
                    (None, true) => match pending.or(fresh) {
                        Some(h) => h,
                        None => {
                            let id = self.next_hold()?;
                            holds.push(Hold {
                                id,
                                peer,
                                peer_name: peer_name.to_string(),
                                table: table.to_string(),
                                live,
                                at: self.now,
                                changes: Vec::new(),
                                cap: VersionVector::new(),
                                reset: any_suspect,
                            });
                            fresh = Some(holds.len() - 1);
                            holds.len() - 1
                        }
                    },
                };
                let h = &mut holds[target];
                match h.changes.iter_mut().find(|c| c.id == ch.id) {
                    Some(c) => {
                        c.state = merge_remote(Some(&c.state), &ch.state).state;
                        c.conflicts.extend(ch.conflicts.iter().cloned());
                    }
                    None => h.changes.push(ch.clone()),
                }
                for (node, ts) in cap {
                    let e = h.cap.entry(node).or_insert(ts);
                    *e = (*e).min(ts);
                }
                held_idx[i] = true;
                if !touched.contains(&target) {
                    touched.push(target);
                }
            }
        }
        let held = held_idx.iter().filter(|h| **h).count() as u64;
        if held == 0 {
            return Ok((Cow::Borrowed(changes), 0));
        }
        for t in touched {
            let h = &holds[t];
            // Read by a person in `run`'s output: the sentence only (trial 10 read the fields
            // as developer text); they are in the debug line.
            tracing::warn!(
                "{}: held (run `fieldsync held approve {}` or `fieldsync held reject {}`)",
                h.describe(),
                h.id,
                h.id
            );
            tracing::debug!(hold = h.id, peer = %h.peer, table = %h.table, "deletes held");
            self.txn.put(keys::held(h.id), encode(h));
        }
        let rest = changes
            .iter()
            .zip(held_idx)
            .filter(|(_, h)| !h)
            .map(|(c, _)| c.clone())
            .collect();
        Ok((Cow::Owned(rest), held))
    }

    fn next_hold(&mut self) -> Result<u64, StoreError> {
        let id = match self.txn.get(&keys::meta("next_hold"))? {
            Some(v) => decode::<u64>(&v)?,
            None => 1,
        };
        self.txn.put(keys::meta("next_hold"), encode(&(id + 1)));
        Ok(id)
    }
}

impl Store {
    /// Every pending hold, oldest first.
    pub fn holds(&self) -> Result<Vec<Hold>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree().scan_prefix([keys::HELD]) {
            out.push(decode(&kv?.1)?);
        }
        Ok(out)
    }

    /// Approves hold `id`: merges exactly its held changes (as from the peer they came from)
    /// and removes it, in one durable batch.
    pub fn approve_hold(&self, id: u64) -> Result<Decided, StoreError> {
        self.decide(id, false, None)
    }

    /// Rejects hold `id`: merges its held changes, then restores every record they deleted with
    /// a new local revision (a put of its last fields, as on any deleted record), so the restore
    /// syncs back and every instance converges on the records being alive, history showing the
    /// delete and the restore. One durable batch.
    pub fn reject_hold(&self, id: u64) -> Result<Decided, StoreError> {
        self.decide(id, true, None)
    }

    /// Decides hold `id` for the whole deployment (approve, or reject if `restore`): as
    /// [`Store::approve_hold`] / [`Store::reject_hold`], and in the same batch, after the
    /// restores, the coordinator's verdicts over exactly the held deletes, signed by `sign`
    /// under the writer lock (so they cover what is merged, even if a page joined the hold
    /// meanwhile), written to `fs_hold_decisions`. Errors: `HoldNotFound`; `BadResolution`
    /// when signing fails (nothing written).
    pub fn decide_for_all(
        &self,
        id: u64,
        restore: bool,
        sign: HoldVerdictSigner<'_>,
    ) -> Result<Decided, StoreError> {
        self.decide(id, restore, Some(sign))
    }

    fn decide(
        &self,
        id: u64,
        restore: bool,
        sign: Option<HoldVerdictSigner<'_>>,
    ) -> Result<Decided, StoreError> {
        let (guard, mut b) = self.begin();
        let hold: Hold = match b.txn.get(&keys::held(id))? {
            Some(v) => decode(&v)?,
            None => return Err(StoreError::HoldNotFound(id)),
        };
        let mut out = Decided {
            merged: b.merge_changes(Some(hold.peer), &hold.changes)?,
            restored: 0,
            everywhere: false,
        };
        if restore {
            for ch in &hold.changes {
                let Some(rec) = b.load(&keys::record_suffix(&ch.table, &ch.id))? else {
                    continue;
                };
                if rec.state.is_alive() {
                    continue;
                }
                b.local(&LocalOp {
                    table: ch.table.clone(),
                    id: ch.id,
                    edit: Edit::Put(rec.state.live_fields()),
                })?;
                out.restored += 1;
            }
        }
        if let Some(sign) = sign {
            let name = self.instance().name;
            let verdicts = HoldVerdict::for_hold(&hold, !restore, self.id(), &name);
            // Written after the restores, so a peer pulling from us gets the restores no later
            // than the decision.
            for (record, fields) in sign(&verdicts).map_err(StoreError::BadResolution)? {
                b.local(&LocalOp {
                    table: crate::model::HOLD_DECISIONS_TABLE.into(),
                    id: record,
                    edit: Edit::Put(fields),
                })?;
            }
            out.everywhere = true;
        }
        b.txn.remove(keys::held(id));
        self.finish_with(guard, b, true)?;
        tracing::info!(
            hold = id,
            table = %hold.table,
            merged = out.merged.applied,
            restored = out.restored,
            everywhere = out.everywhere,
            "hold {}",
            if restore { "rejected" } else { "approved" }
        );
        Ok(out)
    }

    /// The coordinator's verdicts held here (see the module doc), plus those in `page`.
    fn verdicts(&self, page: &[RemoteChange]) -> Result<Vec<HoldVerdict>, StoreError> {
        let table = crate::model::HOLD_DECISIONS_TABLE;
        let mut out = Vec::new();
        for r in self.scan_table(table) {
            let (_, rec) = r?;
            if rec.state.is_alive() {
                out.extend(HoldVerdict::from_fields(&rec.state.live_fields()));
            }
        }
        for ch in page.iter().filter(|c| c.table == table) {
            if ch.state.is_alive() {
                out.extend(HoldVerdict::from_fields(&ch.state.live_fields()));
            }
        }
        Ok(out)
    }
}

impl Batch<'_> {
    /// Settles the pending holds that the coordinator's verdicts cover, in this batch, when
    /// `page` (just merged) brings a verdict or touches a held record (a rejected delete waits
    /// for the coordinator's restore): approved deletes are merged; rejected ones are merged
    /// once the merge leaves the record alive (the restore is here). What no verdict covers
    /// stays held. Logs one sentence per hold and verdict. Returns the changes settled.
    pub(super) fn settle(&mut self, page: &[RemoteChange]) -> Result<u64, StoreError> {
        let brings = page
            .iter()
            .any(|c| c.table == crate::model::HOLD_DECISIONS_TABLE);
        let mut holds = decode_holds(&self.txn)?;
        if holds.is_empty() {
            return Ok(0);
        }
        let touches = || {
            let ids: std::collections::HashSet<(&str, Uuid)> =
                page.iter().map(|p| (p.table.as_str(), p.id)).collect();
            holds.iter().any(|h| {
                h.changes
                    .iter()
                    .any(|c| ids.contains(&(h.table.as_str(), c.id)))
            })
        };
        if !brings && !touches() {
            return Ok(0);
        }
        let verdicts = self.store.verdicts(page)?;
        if verdicts.is_empty() {
            return Ok(0);
        }
        let mut settled = 0;
        for h in &mut holds {
            let before = h.changes.len();
            // Per verdict, the held changes it settles now.
            let mut by: Vec<(usize, Vec<RemoteChange>)> = Vec::new();
            let mut keep = Vec::new();
            for ch in std::mem::take(&mut h.changes) {
                let Some(v) = verdicts.iter().position(|v| v.covers(&ch)) else {
                    keep.push(ch);
                    continue;
                };
                if !verdicts[v].approve {
                    let now = self.load(&keys::record_suffix(&ch.table, &ch.id))?;
                    let alive = now
                        .is_some_and(|r| merge_remote(Some(&r.state), &ch.state).state.is_alive());
                    if !alive {
                        // The coordinator's restore is not here yet: merging would delete.
                        keep.push(ch);
                        continue;
                    }
                }
                match by.iter_mut().find(|(i, _)| *i == v) {
                    Some((_, list)) => list.push(ch),
                    None => by.push((v, vec![ch])),
                }
            }
            h.changes = keep;
            for (v, list) in by {
                self.merge_changes(Some(h.peer), &list)?;
                settled += list.len() as u64;
                let v = &verdicts[v];
                let who = if h.peer_name.is_empty() {
                    h.peer.to_string()
                } else {
                    h.peer_name.clone()
                };
                let (n, were) = match list.len() {
                    1 => ("1 delete".to_string(), "was"),
                    n => (format!("{n} deletes"), "were"),
                };
                let what = if v.approve {
                    format!(
                        "{were} applied: approved by the coordinator ({}) on {}",
                        v.by_name,
                        v.at.format("%Y-%m-%d %H:%M UTC")
                    )
                } else {
                    format!(
                        "{were} settled: rejected by the coordinator ({}) on {}, whose restore \
                         keeps the records alive",
                        v.by_name,
                        v.at.format("%Y-%m-%d %H:%M UTC")
                    )
                };

                tracing::debug!(hold = h.id, table = %h.table, settled = list.len(), "hold settled");
                tracing::warn!(
                    "{n} of {} from {who} held here {what}{}",
                    h.table,
                    if h.changes.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " ({} more stay held: `fieldsync held list`)",
                            h.changes.len()
                        )
                    }
                );
            }
            if h.changes.is_empty() {
                self.txn.remove(keys::held(h.id));
            } else if h.changes.len() < before {
                // The cap stays as it was: lower than the rest needs, which only costs a
                // re-send of what we have.
                self.txn.put(keys::held(h.id), encode(&*h));
            }
        }
        Ok(settled)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::merge::Edit;
    use crate::store::{LocalOp, PageCommit, RemoteChange, Store};
    use serde_json::json;
    use uuid::Uuid;

    fn open(cfg: &str) -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Config::parse(cfg, "test").unwrap()).unwrap();
        (s, dir)
    }

    fn live(s: &Store) -> u64 {
        let tables = s.tables().unwrap();
        tables
            .iter()
            .find(|t| t.0 == "person")
            .map_or(0, |t| t.1.live)
    }

    fn states(s: &Store, ids: &[Uuid]) -> Vec<RemoteChange> {
        ids.iter()
            .map(|id| RemoteChange {
                table: "person".into(),
                id: *id,
                state: s.get("person", id).unwrap().unwrap().state,
                conflicts: vec![],
                history: vec![],
            })
            .collect()
    }

    /// A local write of `edit` to the person record `id`.
    fn op(id: Uuid, edit: Edit) -> LocalOp {
        LocalOp {
            table: "person".into(),
            id,
            edit,
        }
    }

    /// Five person records (`{"n": i}`) written on `a`; their ids.
    fn five_records(a: &Store) -> Vec<Uuid> {
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().enumerate() {
            let f = json!({"n": i}).as_object().unwrap().clone();
            a.write_one(op(*id, Edit::Put(f))).unwrap();
        }
        ids
    }

    #[test]
    fn a_peer_that_looks_reset_has_its_own_deletes_held_not_those_it_relays() {
        let ((a, _da), (b, _db), (c, _dc)) = (open(""), open(""), open(""));
        let f = || json!({"n": 1}).as_object().unwrap().clone();
        let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
        a.write_one(op(x, Edit::Put(f()))).unwrap();
        c.write_one(op(y, Edit::Put(f()))).unwrap();
        for s in [&b, &c] {
            s.apply_remote(Some(a.id()), &states(&a, &[x])).unwrap();
        }
        b.apply_remote(Some(c.id()), &states(&c, &[y])).unwrap();
        a.write_one(op(x, Edit::Delete)).unwrap();
        c.apply_remote(Some(a.id()), &states(&a, &[x])).unwrap();
        c.write_one(op(y, Edit::Delete)).unwrap();
        b.update_peer(&c.id(), |_| ()).unwrap();
        // C vouches for none of its own events although B holds some: it looks reset. A's
        // delete it passes on is A's decision; its own delete waits for a person.
        let mut behind = c.position().unwrap().knowledge;
        behind.insert(c.id(), 1);
        let changes = states(&c, &[x, y]);
        let got = b
            .commit_page(PageCommit {
                peer: c.id(),
                changes: &changes,
                since: 0,
                next: 2,
                more: false,
                knowledge: Some(&behind),
                ends_session: true,
            })
            .unwrap();
        assert_eq!(got.held, 1);
        assert!(!b.get("person", &x).unwrap().unwrap().state.is_alive());
        assert!(b.get("person", &y).unwrap().unwrap().state.is_alive());
        let holds = b.holds().unwrap();
        assert!(holds[0].reset && holds[0].changes[0].id == y);
    }

    /// A coordinator's approval covering part of a hold settles that part in the page that
    /// brings it and keeps the rest held; a laptop meeting covered deletes after the approval
    /// does not hold them.
    #[test]
    fn an_approval_settles_what_it_covers_and_later_covered_deletes_are_not_held() {
        let cfg = "[brake.tables.person]\npercent = 20\nmin_records = 2\n";
        let ((a, _da), (b, _db), (c, _dc)) = (open(cfg), open(cfg), open(cfg));
        let ids = five_records(&a);
        for s in [&b, &c] {
            s.apply_remote(Some(a.id()), &states(&a, &ids)).unwrap();
            s.update_peer(&a.id(), |_| ()).unwrap();
        }
        for id in &ids[..4] {
            a.write_one(op(*id, Edit::Delete)).unwrap();
        }
        let deletes = states(&a, &ids[..4]);
        fn page(peer: Uuid, changes: &[RemoteChange], since: u64) -> PageCommit<'_> {
            PageCommit {
                peer,
                changes,
                since,
                next: since + 1,
                more: true,
                knowledge: None,
                ends_session: false,
            }
        }
        assert_eq!(b.commit_page(page(a.id(), &deletes, 0)).unwrap().held, 4);

        // The coordinator (here A, writing the system record itself) approved two of them.
        let hold = b.holds().unwrap().remove(0);
        let mut part = hold.clone();
        part.changes.truncate(2);
        let v = &super::HoldVerdict::for_hold(&part, true, a.id(), "hq")[0];
        let record = Uuid::new_v4();
        a.write_system(&[LocalOp {
            table: crate::model::HOLD_DECISIONS_TABLE.into(),
            id: record,
            edit: Edit::Put(v.to_fields()),
        }])
        .unwrap();
        let decision = vec![RemoteChange {
            table: crate::model::HOLD_DECISIONS_TABLE.into(),
            id: record,
            state: a
                .get(crate::model::HOLD_DECISIONS_TABLE, &record)
                .unwrap()
                .unwrap()
                .state,
            conflicts: vec![],
            history: vec![],
        }];
        b.commit_page(page(a.id(), &decision, 1)).unwrap();
        assert_eq!(live(&b), 3, "the two approved deletes were applied");
        let left = b.holds().unwrap();
        assert_eq!(left.len(), 1);
        let kept: Vec<Uuid> = left[0].changes.iter().map(|c| c.id).collect();
        assert_eq!(kept, vec![hold.changes[2].id, hold.changes[3].id]);

        // C learns of the approval first; then the deletes arrive: the covered two are
        // applied, the other two held.
        c.commit_page(page(a.id(), &decision, 0)).unwrap();
        let got = c.commit_page(page(a.id(), &deletes, 1)).unwrap();
        assert_eq!(got.held, 2);
        assert_eq!(live(&c), 3);
    }

    #[test]
    fn held_deletes_stay_out_of_knowledge_are_not_held_twice_and_approve_applies_them() {
        let cfg = "[brake.tables.person]\npercent = 20\nmin_records = 2\n";
        let ((a, _da), (b, _db)) = (open(cfg), open(cfg));
        let ids = five_records(&a);
        b.apply_remote(Some(a.id()), &states(&a, &ids)).unwrap();
        b.update_peer(&a.id(), |_| ()).unwrap();
        for id in &ids[..4] {
            a.write_one(op(*id, Edit::Delete)).unwrap();
        }
        let f = json!({"n": 40}).as_object().unwrap().clone();
        a.write_one(op(ids[4], Edit::Put(f))).unwrap();
        let first_delete = a
            .get("person", &ids[0])
            .unwrap()
            .unwrap()
            .state
            .deleted
            .unwrap();
        let k = a.position().unwrap().knowledge;
        let changes = states(&a, &ids);
        let page = |since| PageCommit {
            peer: a.id(),
            changes: &changes,
            since,
            next: 9,
            more: false,
            knowledge: Some(&k),
            ends_session: true,
        };

        let c = b.commit_page(page(0)).unwrap();
        assert_eq!((c.held, c.stats.applied, c.received_upto), (4, 1, 9));
        assert_eq!(live(&b), 5, "4 of 5 deletes held, the edit applied");
        let known = b.position().unwrap().knowledge[&a.id()];
        assert!(
            known < first_delete.ts,
            "a held delete is not counted as received"
        );
        let holds = b.holds().unwrap();
        assert_eq!(holds.len(), 1);
        assert_eq!(
            holds[0].describe(),
            format!("{} wants to delete 4 of 5 person records", a.id())
        );

        // The same page again (a resend) joins the pending hold instead of adding one.
        let c = b.commit_page(page(9)).unwrap();
        assert_eq!(c.held, 4);
        let holds = b.holds().unwrap();
        assert_eq!((holds.len(), holds[0].changes.len()), (1, 4));
        assert_eq!(live(&b), 5);

        let d = b.approve_hold(holds[0].id).unwrap();
        assert_eq!((d.merged.applied, d.restored), (4, 0));
        assert_eq!(live(&b), 1);
        assert!(b.holds().unwrap().is_empty());
        assert!(matches!(
            b.approve_hold(holds[0].id),
            Err(crate::store::StoreError::HoldNotFound(_))
        ));
        // With no hold pending, the next session's knowledge is taken whole.
        let none: Vec<RemoteChange> = vec![];
        b.commit_page(PageCommit {
            changes: &none,
            ..page(9)
        })
        .unwrap();
        assert_eq!(b.position().unwrap().knowledge[&a.id()], k[&a.id()]);

        // A peer whose knowledge of its own events went backwards (reset or restored): even
        // one delete from it is held.
        let f = json!({"n": 41}).as_object().unwrap().clone();
        a.write_one(op(ids[4], Edit::Put(f))).unwrap();
        b.commit_page(PageCommit {
            changes: &states(&a, &ids[4..]),
            ..page(9)
        })
        .unwrap();
        a.write_one(op(ids[4], Edit::Delete)).unwrap();
        let mut behind = a.position().unwrap().knowledge;
        behind.insert(a.id(), 1);
        let last = states(&a, &ids[4..]);
        let c = b
            .commit_page(PageCommit {
                changes: &last,
                knowledge: Some(&behind),
                ..page(0)
            })
            .unwrap();
        assert_eq!(c.held, 1);
        let holds = b.holds().unwrap();
        assert!(holds[0].reset);
        assert!(
            holds[0].describe().contains("looks reset or restored"),
            "{}",
            holds[0].describe()
        );
        assert_eq!(live(&b), 1);
    }
}
