//! The write path: local edits, batches of remote changes, conflict resolution.
//!
//! Every public function here takes the writer lock, builds one [`Txn`], and commits and fsyncs
//! it before returning, so a write is durable when acknowledged and a failed batch writes nothing.

use super::keys;
use super::staging::{ImportRow, RowOutcome, UpdateMode};
use super::{
    decode, encode, ConflictDetail, ConflictEntry, Created, HistoryEntry, Resolution, Source,
    Store, StoreError, StoredRecord, TableCounts, Txn, WriterState,
};
use crate::clock::{wall_millis, Clock};
use crate::merge::{self, Conflict, Edit, EditError, MergeKind, Revision, RevisionKind};
use crate::model::{check_fields, covers, validate_table, RecordState, ValidationError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// One local operation of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalOp {
    /// Table.
    pub table: String,
    /// Record id.
    pub id: Uuid,
    /// What to do.
    pub edit: Edit,
}

/// What a local operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// Written at this feed position.
    Written(u64),
    /// Nothing changed, nothing written.
    Unchanged,
}

/// One record state received from a peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteChange {
    /// Table.
    pub table: String,
    /// Record id.
    pub id: Uuid,
    /// The peer's state of the record (possibly only the fields that changed).
    pub state: RecordState,
    /// Conflicts the sender logged for this record since the receiver's position, so every
    /// instance's log shows them (deduplicated by the writes involved).
    #[serde(default)]
    pub conflicts: Vec<ReportedConflict>,
}

/// A conflict as reported by the instance that detected it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportedConflict {
    /// The instance that detected it.
    pub detected_by: Uuid,
    /// What it is.
    pub conflict: Conflict,
}

/// Identifies a conflict by the writes involved, whichever side detected it.
pub(crate) fn fingerprint(c: &Conflict) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    match c {
        Conflict::Field {
            field,
            local,
            remote,
            ..
        } => {
            let (a, b) = if local.stamp <= remote.stamp {
                (local.stamp, remote.stamp)
            } else {
                (remote.stamp, local.stamp)
            };
            h.update(b"field\0");
            h.update(field.as_bytes());
            h.update(a.to_key_bytes());
            h.update(b.to_key_bytes());
        }
        Conflict::DeleteEdit { deleted, .. } => {
            h.update(b"delete_edit\0");
            h.update(deleted.to_key_bytes());
        }
    }
    h.finalize().into()
}

/// Counts from applying a batch of remote changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyStats {
    /// Changes received.
    pub received: u64,
    /// Records that changed here.
    pub applied: u64,
    /// Of those, records new here.
    pub inserted: u64,
    /// Conflicts logged (including name clashes).
    pub conflicts: u64,
}

/// Which value a conflict resolution keeps.
#[derive(Clone, Debug, PartialEq)]
pub enum Keep {
    /// The local side's value.
    Local,
    /// The remote side's value.
    Remote,
    /// This value instead.
    Value(Value),
}

/// The writer's view during one batch.
struct Batch<'a> {
    store: &'a Store,
    txn: Txn<'a>,
    w: WriterState,
    now: DateTime<Utc>,
    wall: u64,
    started: std::time::Instant,
}

/// What to persist for one record.
struct Persist<'a> {
    table: &'a str,
    id: Uuid,
    prev: Option<StoredRecord>,
    state: RecordState,
    touched: Vec<String>,
    revisions: Vec<Revision>,
    source: Source,
    conflicts: Vec<Conflict>,
    /// Conflicts other instances detected, received with the record.
    reported: Vec<ReportedConflict>,
    peer: Option<Uuid>,
    /// Set when the new state is exactly what this peer sent (insert or fast-forward).
    echo_of: Option<Uuid>,
    /// For remote changes, what the sender's state had seen (None: a local write).
    writer_vv: Option<crate::model::VersionVector>,
}

impl Store {
    fn begin(&self) -> (std::sync::MutexGuard<'_, WriterState>, Batch<'_>) {
        let guard = self.lock();
        let w = WriterState {
            seq: guard.seq,
            clock: Clock::new(self.id(), guard.clock.last()),
            next_conflict: guard.next_conflict,
            own_last: guard.own_last,
            holdings: guard.holdings.clone(),
        };
        let batch = Batch {
            store: self,
            txn: Txn::new(&self.tree),
            w,
            now: Utc::now(),
            wall: wall_millis(),
            started: std::time::Instant::now(),
        };
        (guard, batch)
    }

    fn finish(
        &self,
        guard: std::sync::MutexGuard<'_, WriterState>,
        b: Batch<'_>,
    ) -> Result<(), StoreError> {
        self.finish_with(guard, b, true)
    }

    /// Commits a batch; `durable` = fsync before returning (every batch that changes data).
    fn finish_with(
        &self,
        mut guard: std::sync::MutexGuard<'_, WriterState>,
        mut b: Batch<'_>,
        durable: bool,
    ) -> Result<(), StoreError> {
        b.txn.put(keys::meta("seq"), encode(&b.w.seq));
        b.txn.put(keys::meta("clock"), encode(&b.w.clock.last()));
        b.txn
            .put(keys::meta("next_conflict"), encode(&b.w.next_conflict));
        b.txn.put(keys::meta("own_last"), encode(&b.w.own_last));
        b.txn.put(keys::meta("holdings"), encode(&b.w.holdings));
        let t = std::time::Instant::now();
        let writes = b.txn.len();
        b.txn.commit()?;
        let committed = t.elapsed();
        if durable {
            self.db.flush()?;
        }
        if writes > 10_000 {
            // A big import or page leaves the allocator holding freed memory; give it back so
            // a long-running agent on an old laptop does not sit at its peak.
            trim_heap();
        }
        tracing::debug!(
            writes,
            built_ms = (t - b.started).as_millis() as u64,
            commit_ms = committed.as_millis() as u64,
            flush_ms = (t.elapsed() - committed).as_millis() as u64,
            "batch written"
        );
        let seq = b.w.seq;
        *guard = b.w;
        self.changed
            .send_if_modified(|s| std::mem::replace(s, seq) != seq);
        Ok(())
    }

    /// Applies local operations all-or-nothing; fails with [`StoreError::Op`] naming the first bad one.
    pub fn write_local(&self, ops: &[LocalOp]) -> Result<Vec<OpResult>, StoreError> {
        if let Some((index, op)) = ops
            .iter()
            .enumerate()
            .find(|(_, o)| o.table.starts_with(crate::mesh::SYSTEM_PREFIX))
        {
            return Err(StoreError::Op {
                index,
                source: Box::new(ValidationError::Reserved(op.table.clone()).into()),
            });
        }
        self.write_local_unchecked(ops)
    }

    /// Writes to system tables too (revocations made by the coordinator).
    pub fn write_system(&self, ops: &[LocalOp]) -> Result<Vec<OpResult>, StoreError> {
        self.write_local_unchecked(ops)
    }

    fn write_local_unchecked(&self, ops: &[LocalOp]) -> Result<Vec<OpResult>, StoreError> {
        let (guard, mut b) = self.begin();
        let mut results = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            let r = b.local(op).map_err(|e| StoreError::Op {
                index,
                source: Box::new(e),
            })?;
            results.push(r);
        }
        if results.iter().any(|r| matches!(r, OpResult::Written(_))) {
            self.finish(guard, b)?;
        }
        Ok(results)
    }

    /// Applies one local operation.
    pub fn write_one(&self, op: LocalOp) -> Result<OpResult, StoreError> {
        match self.write_local(std::slice::from_ref(&op)) {
            Ok(mut r) => Ok(r.remove(0)),
            Err(StoreError::Op { source, .. }) => Err(*source),
            Err(e) => Err(e),
        }
    }

    /// Merges a page of remote changes in one atomic batch; `extra` adds more writes to the same
    /// batch (the sync layer's per-peer position), so a page and its bookkeeping commit together.
    pub fn apply_remote<F>(
        &self,
        peer: Option<Uuid>,
        changes: &[RemoteChange],
        extra: F,
    ) -> Result<ApplyStats, StoreError>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<(), StoreError>,
    {
        for ch in changes {
            validate_table(&ch.table)?;
            if self.config.local_only.contains(&ch.table) {
                return Err(StoreError::LocalOnly(ch.table.clone()));
            }
            check_fields(&ch.state.live_fields())?;
        }
        let (guard, mut b) = self.begin();
        let mut stats = ApplyStats::default();
        for ch in changes {
            stats.received += 1;
            let mut state = ch.state.clone();
            // A JSON null and an absent field are the same thing; keep one representation.
            for f in state.fields.values_mut() {
                if f.value == Some(Value::Null) {
                    f.value = None;
                }
            }
            b.w.clock.observe(state.max_ts());
            let suffix = keys::record_suffix(&ch.table, &ch.id);
            let prev = b.load(&suffix)?;
            let out = merge::merge_remote(prev.as_ref().map(|p| &p.state), &state);
            let mut reported = Vec::new();
            for r in &ch.conflicts {
                let dk = keys::conflict_dedupe(&suffix, &fingerprint(&r.conflict));
                if b.txn.get(&dk)?.is_none() {
                    reported.push(r.clone());
                }
            }
            // An unchanged record is still written when it brings news of a conflict, so that
            // the report reaches this instance's other peers too.
            if out.kind == MergeKind::NoOp && reported.is_empty() {
                continue;
            }
            stats.applied += 1;
            stats.inserted += u64::from(out.kind == MergeKind::Insert);
            let from = peer.unwrap_or_default();
            let plain = matches!(out.kind, MergeKind::Insert | MergeKind::FastForward);
            let echo_of = peer.filter(|_| plain && out.conflicts.is_empty());
            let logged = b.persist(Persist {
                table: &ch.table,
                id: ch.id,
                prev,
                state: out.state,
                touched: out.touched,
                revisions: out.revisions,
                source: if out.kind == MergeKind::Merge {
                    Source::Merge(from)
                } else {
                    Source::Peer(from)
                },
                conflicts: out.conflicts,
                reported,
                peer,
                echo_of,
                writer_vv: Some(state.vv.clone()),
            })?;
            stats.conflicts += logged;
        }
        extra(&mut b.txn)?;
        // A page that changed no record only moved a position: losing that in a crash costs a
        // re-send, never data, so it skips the fsync (a no-op sync stays a few milliseconds).
        self.finish_with(guard, b, stats.applied > 0)?;
        Ok(stats)
    }

    /// Settles a conflict: writes the kept value as a normal new revision (which syncs like any
    /// edit and supersedes the conflict on other instances) and marks the entry resolved.
    pub fn resolve_conflict(&self, id: u64, keep: Keep) -> Result<ConflictEntry, StoreError> {
        let mut entry = self.conflict(id)?;
        if entry.resolved.is_some() {
            return Err(StoreError::BadResolution(format!(
                "conflict {id} is already resolved"
            )));
        }
        let (guard, mut b) = self.begin();
        let op = |edit| LocalOp {
            table: entry.table.clone(),
            id: entry.record,
            edit,
        };
        let how = match (&entry.detail, &keep) {
            (ConflictDetail::Merge { conflict }, _) => match (conflict, keep.clone()) {
                (Conflict::Field { field, local, .. }, Keep::Local) => {
                    b.local(&op(Edit::Reassert(field.clone(), local.value.clone())))?;
                    "kept the local value".to_string()
                }
                (Conflict::Field { field, remote, .. }, Keep::Remote) => {
                    b.local(&op(Edit::Reassert(field.clone(), remote.value.clone())))?;
                    "kept the remote value".to_string()
                }
                (Conflict::Field { field, .. }, Keep::Value(v)) => {
                    let v = (!v.is_null()).then_some(v);
                    b.local(&op(Edit::Reassert(field.clone(), v)))?;
                    "set a new value".to_string()
                }
                (Conflict::DeleteEdit { deleted_on, .. }, k @ (Keep::Local | Keep::Remote)) => {
                    let keep_side = if k == Keep::Local {
                        merge::Side::Local
                    } else {
                        merge::Side::Remote
                    };
                    if keep_side == *deleted_on {
                        b.local(&op(Edit::Delete))?;
                        "kept the delete: record deleted".to_string()
                    } else {
                        "kept the edit: record stays".to_string()
                    }
                }
                (Conflict::DeleteEdit { .. }, Keep::Value(_)) => {
                    return Err(StoreError::BadResolution(
                        "a delete-vs-edit conflict takes --keep local or --keep remote".into(),
                    ))
                }
            },
            (ConflictDetail::NameClash { field, .. }, Keep::Value(v)) => {
                let mut patch = serde_json::Map::new();
                patch.insert(field.clone(), v.clone());
                b.local(&op(Edit::Patch(patch)))?;
                format!("renamed: {field} set to {v}")
            }
            (ConflictDetail::NameClash { .. }, _) => "kept both records".to_string(),
        };
        entry.resolved = Some(Resolution { at: b.now, how });
        b.txn.put(keys::conflict(id), encode(&entry));
        self.finish(guard, b)?;
        Ok(entry)
    }

    /// Applies import rows to one table in one batch (see [`super::staging`]): a new id is a
    /// put; a live record takes a put ([`UpdateMode::Replace`]) or a patch
    /// ([`UpdateMode::Merge`]); a deleted record is left deleted (an import never resurrects).
    /// `extra` adds writes to the same batch (removing staged rows), which commits even when no
    /// record changed; with `durable` it is fsynced when a record changed (a staged import's
    /// roll-forward flushes once at the end instead). Fails with [`StoreError::Op`] naming the
    /// first bad row, writing nothing.
    pub(crate) fn write_import<F>(
        &self,
        table: &str,
        rows: &[ImportRow],
        durable: bool,
        extra: F,
    ) -> Result<Vec<RowOutcome>, StoreError>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<(), StoreError>,
    {
        let (guard, mut b) = self.begin();
        let mut out = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            let r = b.import_row(table, row).map_err(|e| StoreError::Op {
                index,
                source: Box::new(e),
            })?;
            out.push(r);
        }
        extra(&mut b.txn)?;
        let changed = out
            .iter()
            .any(|r| matches!(r, RowOutcome::Inserted | RowOutcome::Updated));
        if changed || !b.txn.is_empty() {
            self.finish_with(guard, b, durable && changed)?;
        }
        Ok(out)
    }
}

impl Batch<'_> {
    fn import_row(&mut self, table: &str, row: &ImportRow) -> Result<RowOutcome, StoreError> {
        let prev = self.load(&keys::record_suffix(table, &row.id))?;
        let edit = match prev.as_ref().map(|p| p.state.is_alive()) {
            None => Edit::Put(row.fields.clone()),
            Some(false) => return Ok(RowOutcome::DeletedKept),
            Some(true) => match row.update {
                UpdateMode::Replace => Edit::Put(row.fields.clone()),
                UpdateMode::Merge => Edit::Patch(row.fields.clone()),
            },
        };
        let op = LocalOp {
            table: table.to_string(),
            id: row.id,
            edit,
        };
        Ok(match self.local(&op)? {
            OpResult::Written(_) if prev.is_none() => RowOutcome::Inserted,
            OpResult::Written(_) => RowOutcome::Updated,
            OpResult::Unchanged => RowOutcome::Unchanged,
        })
    }

    fn load(&self, suffix: &[u8]) -> Result<Option<StoredRecord>, StoreError> {
        self.txn
            .get(&keys::record(suffix))?
            .map(|v| decode_record(&v))
            .transpose()
    }

    fn local(&mut self, op: &LocalOp) -> Result<OpResult, StoreError> {
        validate_table(&op.table)?;
        if let Edit::Put(f) | Edit::Patch(f) = &op.edit {
            check_fields(f)?;
        }
        let suffix = keys::record_suffix(&op.table, &op.id);
        let prev = self.load(&suffix)?;
        let at = self.w.clock.tick(self.wall);
        let out = match merge::local_edit(prev.as_ref().map(|p| &p.state), &op.edit, at) {
            Ok(Some(out)) => out,
            Ok(None) => return Ok(OpResult::Unchanged),
            Err(EditError::NotFound) => {
                return Err(StoreError::NotFound {
                    table: op.table.clone(),
                    id: op.id,
                })
            }
            Err(EditError::Deleted) => {
                return Err(StoreError::Deleted {
                    table: op.table.clone(),
                    id: op.id,
                })
            }
        };
        check_fields(&out.state.live_fields())?;
        self.w.own_last = self.w.own_last.max(at.ts);
        self.persist(Persist {
            table: &op.table,
            id: op.id,
            prev,
            state: out.state,
            touched: out.touched,
            revisions: vec![out.revision],
            source: Source::Local,
            conflicts: vec![],
            reported: vec![],
            peer: None,
            echo_of: None,
            writer_vv: None,
        })?;
        Ok(OpResult::Written(self.w.seq))
    }

    /// Writes one record with its feed entry, counts, unique index, history and conflicts.
    /// Returns how many conflicts were logged.
    fn persist(&mut self, p: Persist<'_>) -> Result<u64, StoreError> {
        let suffix = keys::record_suffix(p.table, &p.id);
        self.w.seq += 1;
        let seq = self.w.seq;
        let was_alive = p.prev.as_ref().map(|r| r.state.is_alive());
        let is_alive = p.state.is_alive();
        if let Some(prev) = &p.prev {
            self.txn.remove(keys::feed(prev.seq));
        }
        self.txn
            .put(keys::feed(seq), keys::feed_value(&suffix, p.echo_of));

        if was_alive != Some(is_alive) {
            let ck = keys::table_counts(p.table);
            let mut c: TableCounts = match self.txn.get(&ck)? {
                Some(v) => decode(&v)?,
                None => TableCounts::default(),
            };
            match was_alive {
                Some(true) => c.live -= 1,
                Some(false) => c.deleted -= 1,
                None => {}
            }
            if is_alive {
                c.live += 1
            } else {
                c.deleted += 1
            }
            self.txn.put(ck, encode(&c));
        }

        let mut conflicts: Vec<(ConflictDetail, Option<Uuid>)> = Vec::new();
        let reported = p
            .reported
            .into_iter()
            .map(|r| (r.conflict, Some(r.detected_by)));
        for (conflict, reporter) in p.conflicts.into_iter().map(|c| (c, None)).chain(reported) {
            let dk = keys::conflict_dedupe(&suffix, &fingerprint(&conflict));
            if self.txn.get(&dk)?.is_none() {
                self.txn
                    .put(dk, self.w.next_conflict.to_be_bytes().to_vec());
                conflicts.push((ConflictDetail::Merge { conflict }, reporter));
                // Reserve the id now so the dedupe entry points at the right conflict.
                self.w.next_conflict += 1;
            }
        }
        let old_state = p.prev.as_ref().map(|r| &r.state).filter(|s| s.is_alive());
        for field in self.store.config.unique_fields(p.table) {
            let old = old_state.and_then(|s| s.value(field));
            let new = p.state.value(field).filter(|_| is_alive);
            if old == new {
                continue;
            }
            if let Some(v) = old {
                let mut k = keys::unique_value(p.table, field, &v.to_string());
                k.extend_from_slice(p.id.as_bytes());
                self.txn.remove(k);
            }
            if let Some(v) = new {
                let prefix = keys::unique_value(p.table, field, &v.to_string());
                let others = self.txn.keys_with_prefix(&prefix)?;
                if let Some(k) = others.first() {
                    let other = Uuid::from_slice(&k[prefix.len()..])
                        .map_err(|e| StoreError::Decode(e.to_string()))?;
                    if p.source == Source::Local {
                        return Err(StoreError::UniqueClash {
                            table: p.table.to_string(),
                            field: field.clone(),
                            value: v.to_string(),
                            other,
                        });
                    }
                    conflicts.push((
                        ConflictDetail::NameClash {
                            field: field.clone(),
                            value: v.clone(),
                            other,
                        },
                        None,
                    ));
                    self.w.next_conflict += 1;
                }
                let mut k = prefix;
                k.extend_from_slice(p.id.as_bytes());
                self.txn.put(k, Vec::new());
            }
        }

        let mut created = p.prev.as_ref().and_then(|r| r.created.clone());
        for revision in p.revisions {
            if p.prev.is_none() && created.is_none() && revision.kind == RevisionKind::Create {
                created = Some(Created {
                    at: revision.at,
                    source: p.source,
                    applied_at: self.now,
                });
                continue;
            }
            let hk = keys::history(&suffix, &revision.at);
            if self.txn.get(&hk)?.is_none() {
                let e = HistoryEntry {
                    revision,
                    source: p.source,
                    applied_at: self.now,
                };
                self.txn.put(hk, super::encode_compact(&e));
            }
        }

        if p.prev.is_some() {
            // A later write settles a conflict only if its writer had seen both sides: judge by
            // the writer's own knowledge (the incoming state), not our merged one.
            let writer_vv = p.writer_vv.as_ref().unwrap_or(&p.state.vv);
            self.supersede(&suffix, &p.state, writer_vv, &p.touched)?;
        }
        let logged = conflicts.len() as u64;
        let first_id = self.w.next_conflict - logged;
        for (n, (detail, reported_by)) in conflicts.into_iter().enumerate() {
            let id = first_id + n as u64;
            let entry = ConflictEntry {
                id,
                table: p.table.to_string(),
                record: p.id,
                detected_at: self.now,
                peer: p.peer,
                detail,
                resolved: None,
                seq,
                reported_by,
            };
            self.txn.put(keys::conflict(id), encode(&entry));
            self.txn
                .put(keys::conflict_by_record(&suffix, id), Vec::new());
        }

        let conflict_seq = if logged > 0 {
            seq
        } else {
            p.prev.as_ref().map_or(0, |r| r.conflict_seq)
        };
        if !self.store.config.local_only.contains(p.table) {
            crate::model::vv_join(&mut self.w.holdings, &p.state.vv);
        }
        let rec = StoredRecord {
            state: p.state,
            seq,
            conflict_seq,
            created,
        };
        self.txn.put(keys::record(&suffix), encode_record(&rec));
        Ok(logged)
    }

    /// Marks field conflicts of this record resolved once a later write has seen both sides.
    fn supersede(
        &mut self,
        suffix: &[u8],
        state: &RecordState,
        writer_vv: &crate::model::VersionVector,
        touched: &[String],
    ) -> Result<(), StoreError> {
        let prefix = keys::conflicts_of(suffix);
        for k in self.txn.keys_with_prefix(&prefix)? {
            let id = u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or_default());
            let Some(v) = self.txn.get(&keys::conflict(id))? else {
                continue;
            };
            let mut entry: ConflictEntry = decode(&v)?;
            if entry.resolved.is_some() {
                continue;
            }
            let ConflictDetail::Merge {
                conflict:
                    Conflict::Field {
                        field,
                        local,
                        remote,
                        ..
                    },
            } = &entry.detail
            else {
                continue;
            };
            let Some(now) = state.fields.get(field) else {
                continue;
            };
            let later = now.stamp != local.stamp && now.stamp != remote.stamp;
            if touched.contains(field)
                && later
                && covers(writer_vv, &local.stamp)
                && covers(writer_vv, &remote.stamp)
            {
                entry.resolved = Some(Resolution {
                    at: self.now,
                    how: format!("superseded by a later write ({})", now.stamp),
                });
                self.txn.put(keys::conflict(id), encode(&entry));
            }
        }
        Ok(())
    }
}

pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Records use the compact (array) encoding: they are the bulk of the database.
pub(crate) fn encode_record(r: &StoredRecord) -> Vec<u8> {
    super::encode_compact(r)
}

/// Decodes a record stored by [`encode_record`].
pub(crate) fn decode_record(b: &[u8]) -> Result<StoredRecord, StoreError> {
    super::decode_compact(b)
}
