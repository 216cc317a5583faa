//! The write path: local edits, batches of remote changes, conflict resolution.
//!
//! Every public function here takes the writer lock, builds one [`Txn`], and commits and fsyncs
//! it before returning, so a write is durable when acknowledged and a failed batch writes nothing.
//! The fsync happens after the lock is released and is shared by concurrent writers (group
//! commit, `group.rs`).

use super::keys;
use super::staging::{ImportRow, RowOutcome, UpdateMode};
use super::unique::{self, ImportKeys, UniqueKey};
use super::{
    decode, encode, ConflictDetail, ConflictEntry, Created, HistoryEntry, Resolution, Source,
    Store, StoreError, StoredRecord, TableCounts, Txn, WriterState,
};
use crate::change::{ApplyStats, RemoteChange, ReportedConflict};
use crate::clock::{wall_millis, Clock};
use crate::merge::conflicts::{self, fingerprint, ClashOutcome, Keep};
use crate::merge::{self, Cause, Conflict, Edit, EditError, MergeKind, Revision, RevisionKind};
use crate::model::{
    check_fields, check_live_fields, covers, validate_table, RecordState, ValidationError,
};
use chrono::{DateTime, Utc};
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

/// The writer's view during one batch.
pub(super) struct Batch<'a> {
    pub(super) store: &'a Store,
    pub(super) txn: Txn<'a>,
    pub(super) w: WriterState,
    pub(super) now: DateTime<Utc>,
    wall: u64,
    started: std::time::Instant,
    /// The leaves of this batch's local edits: written as one commit of this instance with
    /// the batch (`commits.rs`).
    leaves: Vec<(crate::signed::LeafKey, crate::signed::Hash)>,
    /// Own events merged pages carried that this directory did not hold (`rollback.rs`).
    pub(super) lost_own: Option<super::rollback::LostOwn>,
    /// The replicated import keys (`unique.rs`), read at the first write that needs them and
    /// kept up to date with the key records this batch writes.
    import_keys: Option<ImportKeys>,
}

/// What to persist for one record.
struct Persist<'a> {
    table: &'a str,
    id: Uuid,
    prev: Option<StoredRecord>,
    state: RecordState,
    revisions: Vec<Revision>,
    source: Source,
    conflicts: Vec<Conflict>,
    /// Conflicts other instances detected, received with the record.
    reported: Vec<ReportedConflict>,
    peer: Option<Uuid>,
    /// Set when the new state is exactly what this peer sent (insert or fast-forward).
    echo_of: Option<Uuid>,
}

impl Store {
    pub(super) fn begin(&self) -> (std::sync::MutexGuard<'_, WriterState>, Batch<'_>) {
        let guard = self.lock();
        let batch = self.batch_on(&guard, Txn::new(self.tree()));
        (guard, batch)
    }

    /// A batch starting from the writer state `from` (the lock's, or one an import's
    /// roll-forward builds ahead on, see `staging.rs`), writing into `txn`.
    pub(super) fn batch_on<'a>(&'a self, from: &WriterState, txn: Txn<'a>) -> Batch<'a> {
        let w = WriterState {
            seq: from.seq,
            clock: Clock::new(self.id(), from.clock.last()),
            next_conflict: from.next_conflict,
            own_last: from.own_last,
            holdings: from.holdings.clone(),
            conflict_head: from.conflict_head,
            lineage: from.lineage.clone(),
            opened: from.opened,
        };
        Batch {
            store: self,
            txn,
            w,
            now: Utc::now(),
            wall: wall_millis(),
            started: std::time::Instant::now(),
            leaves: Vec::new(),
            lost_own: None,
            import_keys: None,
        }
    }

    fn finish(
        &self,
        guard: std::sync::MutexGuard<'_, WriterState>,
        b: Batch<'_>,
    ) -> Result<(), StoreError> {
        self.finish_with(guard, b, true)
    }

    /// Commits a batch; `durable` = fsync before returning (every batch that changes data).
    pub(super) fn finish_with(
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
        b.txn.put(keys::meta("lineage"), encode(&b.w.lineage));
        if let Some(c) =
            super::commits::StoredCommit::build(self.id(), u64::MAX, std::mem::take(&mut b.leaves))
        {
            b.txn
                .put(super::commits::commit_key(&c.origin, c.hi), c.encoded());
        }
        let t = std::time::Instant::now();
        let writes = b.txn.len();
        b.txn.commit()?;
        let ticket = self.group.applied_one();
        let committed = t.elapsed();
        if writes > 10_000 {
            // A big import or page leaves glibc's malloc (where it is the allocator) holding
            // freed memory; give it back so a long-running agent does not sit at its peak.
            trim_heap();
        }
        *guard = b.w;
        if durable {
            // Group commit (`group.rs`): the lock is free for the next writer while this one
            // waits for a flush that covers its batch; it returns only once that is durable.
            drop(guard);
            self.wait_durable(ticket)?;
        } else {
            let head = self.head_of(&guard)?;
            self.install_head(head);
        }
        tracing::debug!(
            writes,
            built_ms = (t - b.started).as_millis() as u64,
            commit_ms = committed.as_millis() as u64,
            flush_ms = (t.elapsed() - committed).as_millis() as u64,
            "batch written"
        );
        Ok(())
    }

    /// Applies local operations all-or-nothing; fails with [`StoreError::Op`] naming the first bad one.
    pub fn write_local(&self, ops: &[LocalOp]) -> Result<Vec<OpResult>, StoreError> {
        if let Some((index, op)) = ops
            .iter()
            .enumerate()
            .find(|(_, o)| o.table.starts_with(crate::model::SYSTEM_PREFIX))
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

    /// Applies one local edit decided under the writer lock: `decide` sees the record as it is
    /// at that moment (for an If-Match check or a JSON merge patch) and returns the edit, or an
    /// error that writes nothing. Used by the application layer (`crate::app`).
    pub fn write_one_with<E: From<StoreError>>(
        &self,
        table: &str,
        id: Uuid,
        decide: impl FnOnce(Option<&StoredRecord>) -> Result<Edit, E>,
    ) -> Result<OpResult, E> {
        if table.starts_with(crate::model::SYSTEM_PREFIX) {
            return Err(StoreError::from(ValidationError::Reserved(table.to_string())).into());
        }
        validate_table(table).map_err(StoreError::from)?;
        let (guard, mut b) = self.begin();
        let prev = b.load(&keys::record_suffix(table, &id))?;
        let edit = decide(prev.as_ref())?;
        let op = LocalOp {
            table: table.to_string(),
            id,
            edit,
        };
        let r = b.local_loaded(&op, prev, Cause::Edit)?;
        if matches!(r, OpResult::Written(_)) {
            self.finish(guard, b)?;
        }
        Ok(r)
    }

    /// Merges remote changes that come with no position (tests, tools) in one atomic batch,
    /// fsynced if any record changed. Sync sessions use [`Store::commit_page`].
    pub fn apply_remote(
        &self,
        peer: Option<Uuid>,
        changes: &[RemoteChange],
    ) -> Result<ApplyStats, StoreError> {
        self.check_remote(changes)?;
        let (guard, mut b) = self.begin();
        let stats = b.merge_changes(peer, changes)?;
        self.finish_with(guard, b, stats.applied > 0)?;
        Ok(stats)
    }

    /// Refuses a page with a bad table, a local-only table or invalid fields, before anything
    /// is written.
    pub(super) fn check_remote(&self, changes: &[RemoteChange]) -> Result<(), StoreError> {
        for ch in changes {
            validate_table(&ch.table)?;
            if self.config.local_only.contains(&ch.table) {
                return Err(StoreError::LocalOnly(ch.table.clone()));
            }
            check_live_fields(&ch.state)?;
            // A revision must be one of the events the state reflects: anything else would
            // put a revision in the history that never happened to this record.
            if let Some(r) = ch.history.iter().find(|r| !covers(&ch.state.vv, &r.at)) {
                return Err(StoreError::BadHistory(format!(
                    "{}/{}: revision {} is not an event of the record's state; the sender \
                     must be fixed or upgraded",
                    ch.table, ch.id, r.at
                )));
            }
        }
        Ok(())
    }

    /// Settles a conflict: writes the kept value as a normal new revision (which syncs like any
    /// edit and supersedes the conflict on other instances) and marks the entry resolved.
    pub fn resolve_conflict(&self, id: u64, keep: Keep) -> Result<ConflictEntry, StoreError> {
        let mut entry = self.conflict(id)?;
        if entry.resolved.is_some() {
            return Err(StoreError::BadResolution(format!(
                "conflict {id} is already resolved: nothing to do (`fieldsync conflicts --all` \
                 shows how it was resolved; to change a value now, put or patch the record)"
            )));
        }
        // "local"/"remote" name the sides as the detecting instance saw them: on any other
        // instance they would keep the wrong one.
        if let (Keep::Local | Keep::Remote, Some(by)) = (&keep, entry.reported_by) {
            return Err(StoreError::BadResolution(format!(
                "conflict {id} was detected on instance {by}, so local/remote are that \
                 laptop's sides, not this one's: use --keep mine | theirs, --keep-from \
                 NAME_OR_ID, --keep-value JSON, or --keep deleted | alive"
            )));
        }
        let (guard, mut b) = self.begin();
        // A name clash is about two records: a rename names the one it patches.
        let target = match (&entry.detail, &keep) {
            (ConflictDetail::NameClash { other, .. }, Keep::Rename(r, _)) => {
                if *r != entry.record && r != other {
                    return Err(StoreError::BadResolution(format!(
                        "record {r} is not one of the two records of name clash {id}"
                    )));
                }
                *r
            }
            _ => entry.record,
        };
        let op = |edit| LocalOp {
            table: entry.table.clone(),
            id: target,
            edit,
        };
        // An import key of several fields is renamed with one value per field.
        if let (ConflictDetail::NameClash { field, .. }, Keep::Value(v) | Keep::Rename(_, v)) =
            (&entry.detail, &keep)
        {
            let n = field.split(',').count();
            if n > 1 && v.as_array().map(Vec::len) != Some(n) {
                return Err(StoreError::BadResolution(format!(
                    "name clash {id} is on the import key {field}: give one value per field, \
                     in that order, as a JSON array (e.g. --keep-value '{}')",
                    serde_json::to_string(&vec!["..."; n]).unwrap_or_default()
                )));
            }
        }
        // Keeping both records of a name clash changes no record, so nothing would carry the
        // decision to the other laptops, which keep logging the clash while the rule holds (a
        // newcomer's "kept both records. The change syncs" did not): refused while the table
        // still has the rule; once it is gone (a dropped key), settling it is this laptop's.
        if let ConflictDetail::NameClash { field, .. } = &entry.detail {
            let holds = b
                .unique_rules(&entry.table)?
                .iter()
                .any(|r| r.name == *field);
            if holds && !matches!(keep, Keep::Value(_) | Keep::Rename(..)) {
                let key = field.split(',').count() > 1 || {
                    !self.config.unique_fields(&entry.table).any(|f| f == field)
                };
                return Err(StoreError::BadResolution(format!(
                    "conflict {id} is a name clash: both records keep {field} until one is \
                     renamed (--keep-value JSON) or deleted, on every laptop; {}",
                    if key {
                        format!(
                            "if {field} may repeat (two people can share a name), drop it as a \
                             key: `fieldsync import-keys drop {} {field}` settles its clashes on \
                             every laptop",
                            entry.table
                        )
                    } else {
                        format!(
                            "if {field} may repeat, take it out of `unique` in fieldsync.toml \
                             on every laptop"
                        )
                    }
                )));
            }
        }
        let resolution = match &entry.detail {
            ConflictDetail::Merge { conflict } => conflicts::resolve(conflict, &keep)
                .map_err(|e| StoreError::BadResolution(e.to_string()))?,
            ConflictDetail::NameClash { field, .. } => conflicts::resolve_name_clash(field, &keep),
        };
        // Keeping a delete-vs-edit record alive changes no value, but the decision must travel
        // (peers settle their copy of the entry on a resolution revision): re-assert one live
        // field with a fresh stamp.
        let edit = match (resolution.edit, &entry.detail) {
            (
                None,
                ConflictDetail::Merge {
                    conflict: Conflict::DeleteEdit { .. },
                },
            ) => b
                .load(&keys::record_suffix(&entry.table, &target))?
                .filter(|r| r.state.is_alive())
                .and_then(|r| {
                    r.state
                        .fields
                        .iter()
                        .find(|(_, f)| f.value.is_some())
                        .map(|(k, f)| Edit::Reassert(k.clone(), f.value.clone()))
                }),
            (edit, _) => edit,
        };
        if let Some(edit) = edit {
            // The revision says it settled a conflict (`history` shows the cause everywhere).
            b.local_with_cause(&op(edit), Cause::Resolution)?;
        }
        let how = resolution.how;
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
        let out = b.import_rows(table, rows)?;
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
    /// Applies import rows to this batch (see [`Store::write_import`]); fails with
    /// [`StoreError::Op`] naming the first bad row.
    pub(super) fn import_rows(
        &mut self,
        table: &str,
        rows: &[ImportRow],
    ) -> Result<Vec<RowOutcome>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            let r = self.import_row(table, row).map_err(|e| StoreError::Op {
                index,
                source: Box::new(e),
            })?;
            out.push(r);
        }
        Ok(out)
    }

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
        let existed = prev.is_some();
        Ok(match self.local_loaded(&op, prev, Cause::Edit)? {
            OpResult::Written(_) if !existed => RowOutcome::Inserted,
            OpResult::Written(_) => RowOutcome::Updated,
            OpResult::Unchanged => RowOutcome::Unchanged,
        })
    }

    /// Merges remote changes into this batch (records, feed, history, conflicts, clock).
    pub(super) fn merge_changes(
        &mut self,
        peer: Option<Uuid>,
        changes: &[RemoteChange],
    ) -> Result<ApplyStats, StoreError> {
        let mut stats = ApplyStats::default();
        let me = self.store.id();
        for ch in changes {
            stats.received += 1;
            let mut state = ch.state.clone();
            // A JSON null and an absent field are the same thing; keep one representation.
            for f in state.fields.values_mut() {
                if f.value == Some(Value::Null) {
                    f.value = None;
                }
            }
            self.w.clock.observe(state.max_ts());
            let suffix = keys::record_suffix(&ch.table, &ch.id);
            let prev = self.load(&suffix)?;
            if peer.is_some() {
                // A peer holding an own event we lack: this directory lost it (`rollback.rs`).
                let held = prev.as_ref().map(|p| &p.state);
                if let Some(l) = super::rollback::LostOwn::of(&me, held, &state, &ch.table, ch.id) {
                    super::rollback::LostOwn::join(&mut self.lost_own, l);
                }
            }
            // A record new here is taken as it came: what `merge_remote` makes of it against
            // nothing (the same state, no conflict), without copying every field once more.
            // `incoming` keeps the state as it came where the merge changed it.
            let (mut out, incoming) = match &prev {
                None => (
                    merge::MergeOutcome {
                        state,
                        kind: MergeKind::Insert,
                        touched: Vec::new(),
                        conflicts: Vec::new(),
                    },
                    None,
                ),
                Some(p) => (merge::merge_remote(Some(&p.state), &state), Some(state)),
            };
            // Only a state that brings something new is evidence: an old copy changes nothing,
            // not even the conflict log (rule 6).
            let news = out.kind != MergeKind::NoOp;
            if news && prev.as_ref().is_some_and(|p| p.conflict_seq > 0) {
                let log: Vec<Conflict> = self
                    .record_conflicts(&suffix)?
                    .into_iter()
                    .filter_map(|(_, e)| match e.detail {
                        ConflictDetail::Merge { conflict } => Some(conflict),
                        ConflictDetail::NameClash { .. } => None,
                    })
                    .collect();
                let came = incoming.as_ref().unwrap_or(&out.state);
                for c in conflicts::unseen_sides(&log, came, &out.state) {
                    let dk = keys::conflict_dedupe(&suffix, &fingerprint(&c));
                    if self.txn.get(&dk)?.is_none() {
                        out.conflicts.push(c);
                    }
                }
            }
            let mut reported = Vec::new();
            for r in &ch.conflicts {
                let dk = keys::conflict_dedupe(&suffix, &fingerprint(&r.conflict));
                if self.txn.get(&dk)?.is_none() {
                    reported.push(r.clone());
                }
            }
            // The revisions come as their makers recorded them; the merge invents none. A
            // record whose one event is its creation comes without history: date the creation
            // by that event.
            let mut revisions = ch.history.clone();
            let came = incoming.as_ref().unwrap_or(&out.state);
            if revisions.is_empty() && came.vv.len() == 1 {
                let at = merge::latest_event(came);
                if prev.is_none() {
                    // `persist` keeps the one creation of a record new here as a marker (its
                    // values are rebuilt from the state on reading) and drops the revision:
                    // only its stamp and kind count, so its values are not copied.
                    revisions.push(Revision {
                        at,
                        kind: RevisionKind::Create,
                        changes: Vec::new(),
                        cause: Cause::Edit,
                        reconstructed: false,
                    });
                } else if !prev.as_ref().is_some_and(|p| covers(&p.state.vv, &at)) {
                    revisions.push(only_revision(came, at));
                }
            }
            // An unchanged record is still written when it brings news of a conflict, so that
            // the report reaches this instance's other peers too.
            if out.kind == MergeKind::NoOp && reported.is_empty() && out.conflicts.is_empty() {
                // Nothing new in the state, but a revision this instance lacks is still kept.
                let created = prev.as_ref().and_then(|p| p.created.as_ref()).map(|c| c.at);
                revisions.retain(|r| Some(r.at) != created);
                self.stage_history(&suffix, revisions, Source::Peer(peer.unwrap_or_default()))?;
                continue;
            }
            stats.applied += 1;
            stats.inserted += u64::from(out.kind == MergeKind::Insert);
            let from = peer.unwrap_or_default();
            let plain = matches!(out.kind, MergeKind::Insert | MergeKind::FastForward);
            let echo_of = peer.filter(|_| plain && out.conflicts.is_empty());
            let logged = self.persist(Persist {
                table: &ch.table,
                id: ch.id,
                prev,
                state: out.state,
                revisions,
                source: if out.kind == MergeKind::Merge {
                    Source::Merge(from)
                } else {
                    Source::Peer(from)
                },
                conflicts: out.conflicts,
                reported,
                peer,
                echo_of,
            })?;
            stats.conflicts += logged;
        }
        Ok(stats)
    }

    pub(super) fn load(&self, suffix: &[u8]) -> Result<Option<StoredRecord>, StoreError> {
        self.txn
            .get(&keys::record(suffix))?
            .map(|v| decode_record(&v))
            .transpose()
    }

    pub(super) fn local(&mut self, op: &LocalOp) -> Result<OpResult, StoreError> {
        self.local_with_cause(op, Cause::Edit)
    }

    /// A local edit whose revision records `cause` (an edit, or a conflict resolution).
    pub(super) fn local_with_cause(
        &mut self,
        op: &LocalOp,
        cause: Cause,
    ) -> Result<OpResult, StoreError> {
        validate_table(&op.table)?;
        let prev = self.load(&keys::record_suffix(&op.table, &op.id))?;
        self.local_loaded(op, prev, cause)
    }

    /// [`Batch::local`] with the record already loaded in this batch (`prev`), so an import
    /// row reads it once.
    fn local_loaded(
        &mut self,
        op: &LocalOp,
        prev: Option<StoredRecord>,
        cause: Cause,
    ) -> Result<OpResult, StoreError> {
        validate_table(&op.table)?;
        if let Edit::Put(f) | Edit::Patch(f) = &op.edit {
            check_fields(f)?;
        }
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
                    edit: Some(match op.edit {
                        Edit::Delete => "delete",
                        _ => "patch",
                    }),
                })
            }
        };
        // After a put the live fields are exactly the put's non-null fields, checked above
        // (dropping nulls only shortens the JSON); a patch or restore combines them with the
        // record's, which needs its own check. Skipping it saves a copy and a serialisation of
        // every imported row.
        if !matches!(op.edit, Edit::Put(_)) {
            check_fields(&out.state.live_fields())?;
        }
        self.w.own_last = self.w.own_last.max(at.ts);
        self.leaves.extend(crate::signed::leaves_of_edit(
            &op.table, &op.id, &out.state, &at,
        ));
        self.persist(Persist {
            table: &op.table,
            id: op.id,
            prev,
            state: out.state,
            revisions: vec![crate::merge::Revision {
                cause,
                ..out.revision
            }],
            source: Source::Local,
            conflicts: vec![],
            reported: vec![],
            peer: None,
            echo_of: None,
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
        let rules = self.unique_rules(p.table)?;
        for rule in &rules {
            let field = &rule.name;
            let old = old_state.and_then(|s| rule.value_of(s));
            let new = Some(&p.state)
                .filter(|_| is_alive)
                .and_then(|s| rule.value_of(s));
            if old == new {
                continue;
            }
            if let Some(v) = &old {
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
                    if conflicts::on_unique_clash(p.source == Source::Local) == ClashOutcome::Refuse
                    {
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
        let creates = p
            .revisions
            .iter()
            .filter(|r| r.kind == RevisionKind::Create)
            .count();
        // The newest conflict resolution among the revisions stored now (local or received):
        // a person who saw this record's conflicts decided, which settles delete-vs-edit
        // entries older than it (`supersede`).
        let resolution_at = p
            .revisions
            .iter()
            .filter(|r| r.cause == Cause::Resolution)
            .map(|r| r.at)
            .max();
        let mut later = Vec::with_capacity(p.revisions.len());
        for revision in p.revisions {
            if revision.kind == RevisionKind::Create {
                match (&p.prev, &created) {
                    // The common case: one creation, kept as a marker (values rebuilt on
                    // reading), one write less per new record.
                    (None, None) => {
                        created = Some(Created {
                            at: revision.at,
                            source: p.source,
                            applied_at: self.now,
                        });
                        // A creation marked not exact is stored whole: the marker would lose
                        // the mark.
                        if creates == 1 && !revision.reconstructed {
                            continue;
                        }
                    }
                    // Another instance created the same id concurrently: the history is no
                    // longer a line, so this record's own creation is stored whole first.
                    (Some(prev), Some(c)) if c.at != revision.at => {
                        self.materialize_creation(&suffix, prev, c)?;
                    }
                    // Our own creation again: the marker has it.
                    (Some(_), Some(c)) if c.at == revision.at => continue,
                    _ => {}
                }
            }
            later.push(revision);
        }
        self.stage_history(&suffix, later, p.source)?;

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
            // A name clash is about two records: index it under both, so a change of either
            // re-checks it.
            if let ConflictDetail::NameClash { other, .. } = &entry.detail {
                let other_suffix = keys::record_suffix(p.table, other);
                self.txn
                    .put(keys::conflict_by_record(&other_suffix, id), Vec::new());
            }
            self.txn.put(keys::conflict(id), encode(&entry));
            self.txn
                .put(keys::conflict_by_record(&suffix, id), Vec::new());
        }
        // After logging, so that conflicts just received are judged by the same rule. A record
        // with nothing logged now and no merge conflict ever logged (`conflict_seq` 0, as for a
        // record new here) has no entries to judge: merge conflicts are indexed only under
        // their own record, which their logging stamps (below; `outgoing` relies on the same),
        // and name clashes, which may be indexed under a record without stamping it, are not
        // judged here. Skipping the scan saves a sled range read per record of an import, an
        // initial sync and an incremental one.
        if logged > 0 || p.prev.as_ref().is_some_and(|r| r.conflict_seq > 0) {
            self.supersede(&suffix, &p.state, resolution_at)?;
        }

        let conflict_seq = if logged > 0 {
            self.w.conflict_head = seq;
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
        // `p.prev` was loaded from this batch by every caller, just before.
        let dict = self.store.record_dict(p.table)?;
        self.txn.put_record(
            keys::record(&suffix),
            encode_record(&rec, dict.as_deref()),
            &rec,
            p.prev.as_ref(),
        );
        if !rules.is_empty() {
            self.recheck_clashes(&suffix)?;
        }
        if p.table == crate::model::IMPORT_KEYS_TABLE {
            let was = p
                .prev
                .as_ref()
                .and_then(|r| unique::parse_import_key(&r.state));
            match (was, unique::parse_import_key(&rec.state)) {
                (was, Some(now)) if was.as_ref() != Some(&now) => {
                    self.learn_import_key(&now.0, now.1)?
                }
                // Dropped (`import-keys drop`, here or on another laptop): its index goes, so
                // a later import by the same key indexes the table afresh.
                (Some(was), None) => self.forget_import_key(&was.0, &was.1)?,
                _ => {}
            }
        }
        Ok(logged)
    }

    /// The unique rules of `table`: configured fields and import keys (none for fieldsync's
    /// own tables).
    fn unique_rules(&mut self, table: &str) -> Result<Vec<UniqueKey>, StoreError> {
        let configured = self.store.config.unique_fields(table);
        if table.starts_with(crate::model::SYSTEM_PREFIX) {
            return Ok(unique::rules(configured, None));
        }
        let keys = match &self.import_keys {
            Some(k) => k,
            None => {
                let mut k = ImportKeys::new();
                let prefix = keys::table_records(crate::model::IMPORT_KEYS_TABLE);
                for rk in self.txn.keys_with_prefix(&prefix)? {
                    let Some(v) = self.txn.get(&rk)? else {
                        continue;
                    };
                    if let Some((t, key)) = unique::parse_import_key(&decode_record(&v)?.state) {
                        let list: &mut Vec<Vec<String>> = k.entry(t).or_default();
                        if !list.contains(&key) {
                            list.push(key);
                        }
                    }
                }
                self.import_keys.insert(k)
            }
        };
        Ok(unique::rules(configured, keys.get(table)))
    }

    /// A key record just written: if the key is new here, every live record of its table is
    /// indexed under it now, and two records already sharing a key value get a name clash
    /// (logged whatever wrote the key record: both records exist already, so refusing one
    /// would help nobody; the clash tells a person to settle it). From then on every write of
    /// the table keeps the index, like a configured unique field's.
    /// A key record just deleted: the table's writes stop keeping the key unique, and its
    /// index entries are removed in this batch (left, they would be stale the day the same key
    /// is imported again). A single-field key that is also a configured unique field keeps
    /// its index, which the configured rule uses. Name clashes logged for the key stay in the
    /// log until a person settles them.
    fn forget_import_key(&mut self, table: &str, key: &[String]) -> Result<(), StoreError> {
        if let Some(list) = self.import_keys.as_mut().and_then(|k| k.get_mut(table)) {
            list.retain(|k| k != key);
        }
        if key.len() == 1 && self.store.config.unique_fields(table).any(|f| *f == key[0]) {
            return Ok(());
        }
        let rule = UniqueKey::import(key);
        for k in self
            .txn
            .keys_with_prefix(&keys::unique_rule(table, &rule.name))?
        {
            self.txn.remove(k);
        }
        // Its open name clashes are settled here too, on every laptop as the drop arrives: the
        // records no longer break a rule (a newcomer's "kept both" resolved one laptop only).
        for ck in self.txn.keys_with_prefix(&[keys::CONFLICT])? {
            let Some(v) = self.txn.get(&ck)? else {
                continue;
            };
            let mut entry: ConflictEntry = decode(&v)?;
            let settled = matches!(&entry.detail, ConflictDetail::NameClash { field, .. }
                if *field == rule.name)
                && entry.table == table
                && entry.resolved.is_none();
            if settled {
                entry.resolved = Some(Resolution {
                    at: self.now,
                    how: format!(
                        "settled: {} is no longer an import key of {table} (dropped)",
                        rule.name
                    ),
                });
                self.txn.put(ck, encode(&entry));
            }
        }
        Ok(())
    }

    fn learn_import_key(&mut self, table: &str, key: Vec<String>) -> Result<(), StoreError> {
        // A key record's id is derived from its table and key, so a key is new here exactly
        // when its record was not alive with it before this write (the caller's test). Loaded
        // now, the keys include it (this batch's writes are read); loaded earlier, add it.
        match self.import_keys.as_mut() {
            None => {
                self.unique_rules(table)?;
            }
            Some(k) => {
                let list = k.entry(table.to_string()).or_default();
                if !list.contains(&key) {
                    list.push(key.clone());
                }
            }
        }
        let rule = UniqueKey::import(&key);
        if key.len() == 1 && self.store.config.unique_fields(table).any(|f| *f == key[0]) {
            return Ok(());
        }
        let prefix = keys::table_records(table);
        for rk in self.txn.keys_with_prefix(&prefix)? {
            let Some(v) = self.txn.get(&rk)? else {
                continue;
            };
            let rec = decode_record(&v)?;
            if !rec.state.is_alive() {
                continue;
            }
            let Some(value) = rule.value_of(&rec.state) else {
                continue;
            };
            let id = Uuid::from_slice(&rk[prefix.len()..])
                .map_err(|e| StoreError::Decode(e.to_string()))?;
            let vprefix = keys::unique_value(table, &rule.name, &value.to_string());
            if let Some(k) = self.txn.keys_with_prefix(&vprefix)?.first() {
                let other = Uuid::from_slice(&k[vprefix.len()..])
                    .map_err(|e| StoreError::Decode(e.to_string()))?;
                self.log_name_clash(table, id, rec.seq, rule.name.clone(), value, other);
            }
            let mut k = vprefix;
            k.extend_from_slice(id.as_bytes());
            self.txn.put(k, Vec::new());
        }
        Ok(())
    }

    /// Logs a name clash between two stored records (`record` at feed position `seq`), indexed
    /// under both.
    fn log_name_clash(
        &mut self,
        table: &str,
        record: Uuid,
        seq: u64,
        field: String,
        value: Value,
        other: Uuid,
    ) {
        let id = self.w.next_conflict;
        self.w.next_conflict += 1;
        let entry = ConflictEntry {
            id,
            table: table.to_string(),
            record,
            detected_at: self.now,
            peer: None,
            detail: ConflictDetail::NameClash {
                field,
                value,
                other,
            },
            resolved: None,
            seq,
            reported_by: None,
        };
        for r in [record, other] {
            self.txn.put(
                keys::conflict_by_record(&keys::record_suffix(table, &r), id),
                Vec::new(),
            );
        }
        self.txn.put(keys::conflict(id), encode(&entry));
    }

    /// Clears the open name clashes of a record whose two records no longer share the value
    /// (either changed it, locally or by sync, or was deleted). Run after every write of the
    /// record, so every instance clears a clash once the values differ there.
    fn recheck_clashes(&mut self, suffix: &[u8]) -> Result<(), StoreError> {
        for (cid, mut entry) in self.record_conflicts(suffix)? {
            let ConflictDetail::NameClash {
                field,
                value,
                other,
            } = &entry.detail
            else {
                continue;
            };
            if entry.resolved.is_some() {
                continue;
            }
            let mut shared = true;
            for rid in [entry.record, *other] {
                let rec = self.load(&keys::record_suffix(&entry.table, &rid))?;
                shared &= rec
                    .as_ref()
                    .is_some_and(|r| unique::still_holds(&r.state, field, value));
            }
            if !shared {
                entry.resolved = Some(Resolution {
                    at: self.now,
                    how: format!("cleared: the two records no longer share {field} = {value}"),
                });
                self.txn.put(keys::conflict(cid), encode(&entry));
            }
        }
        Ok(())
    }

    /// Writes the record's creation (so far a marker, rebuilt on reading) whole into the history,
    /// rebuilt from the record as it was before this change.
    fn materialize_creation(
        &mut self,
        suffix: &[u8],
        prev: &StoredRecord,
        c: &Created,
    ) -> Result<(), StoreError> {
        let hk = keys::history(suffix, &c.at);
        if self.txn.get(&hk)?.is_some() {
            return Ok(());
        }
        let mut stored = Vec::new();
        for k in self.txn.keys_with_prefix(&keys::history_of(suffix))? {
            if let Some(v) = self.txn.get(&k)? {
                stored.push(decode_history(&v)?);
            }
        }
        let e = super::creation_entry(prev, c, &stored);
        let v = self.history_value(suffix, &e)?;
        self.txn.put(hk, v);
        Ok(())
    }

    /// A history entry of the record `suffix` as stored (with its table's dictionary).
    fn history_value(&self, suffix: &[u8], e: &HistoryEntry) -> Result<Vec<u8>, StoreError> {
        let dict = match keys::parse_record_suffix(suffix) {
            Some((table, _)) => self.store.record_dict(&table)?,
            None => None,
        };
        Ok(encode_history(e, dict.as_deref()))
    }

    /// Stores revisions under their stamps, skipping any already stored (the same revision
    /// arriving by two paths is kept once).
    fn stage_history(
        &mut self,
        suffix: &[u8],
        revisions: Vec<Revision>,
        source: Source,
    ) -> Result<(), StoreError> {
        for revision in revisions {
            let hk = keys::history(suffix, &revision.at);
            let fresh = match self.txn.get(&hk)? {
                None => true,
                // The same revision by two paths is stored once, but an exact copy (from a
                // laptop that had it from its maker) replaces one an older version rebuilt.
                Some(v) => !revision.reconstructed && decode_history(&v)?.revision.reconstructed,
            };
            if fresh {
                let e = HistoryEntry {
                    revision,
                    source,
                    applied_at: self.now,
                };
                let v = self.history_value(suffix, &e)?;
                self.txn.put(hk, v);
            }
        }
        Ok(())
    }

    /// The record's conflict log as this batch would leave it: (conflict id, entry).
    fn record_conflicts(&self, suffix: &[u8]) -> Result<Vec<(u64, ConflictEntry)>, StoreError> {
        let prefix = keys::conflicts_of(suffix);
        let mut entries = Vec::new();
        for k in self.txn.keys_with_prefix(&prefix)? {
            let id = u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or_default());
            if let Some(v) = self.txn.get(&keys::conflict(id))? {
                entries.push((id, decode::<ConflictEntry>(&v)?));
            }
        }
        Ok(entries)
    }

    /// Re-judges every field conflict of this record that is open or was settled by a later
    /// write ([`conflicts::superseded_by`]) against the record's new state and log. Conflicts a
    /// person resolved stay resolved.
    fn supersede(
        &mut self,
        suffix: &[u8],
        state: &RecordState,
        resolution_at: Option<crate::clock::Hlc>,
    ) -> Result<(), StoreError> {
        let entries = self.record_conflicts(suffix)?;
        let known: Vec<Conflict> = entries
            .iter()
            .filter_map(|(_, e)| match &e.detail {
                ConflictDetail::Merge { conflict } => Some(conflict.clone()),
                ConflictDetail::NameClash { .. } => None,
            })
            .collect();
        for (id, mut entry) in entries {
            // A delete-vs-edit entry is settled by a resolution revision made after its delete
            // (wherever it was made: it travels with the record's history), so `--keep
            // deleted | alive` on one laptop settles the entry on every laptop.
            if let ConflictDetail::Merge {
                conflict: Conflict::DeleteEdit { deleted, .. },
            } = &entry.detail
            {
                if let Some(at) = resolution_at.filter(|at| at > deleted) {
                    if entry.resolved.is_none() {
                        entry.resolved = Some(Resolution {
                            at: self.now,
                            how: format!("{SETTLED_BY_RESOLUTION} ({at})"),
                        });
                        self.txn.put(keys::conflict(id), encode(&entry));
                    }
                }
                continue;
            }
            let ConflictDetail::Merge {
                conflict: conflict @ Conflict::Field { .. },
            } = &entry.detail
            else {
                continue;
            };
            let by_write = entry
                .resolved
                .as_ref()
                .is_some_and(|r| r.how.starts_with(SUPERSEDED));
            if entry.resolved.is_some() && !by_write {
                continue;
            }
            let judged = conflicts::superseded_by(conflict, state, &known);
            let resolved = match (judged, by_write) {
                (Some(by), false) => Some(Resolution {
                    at: self.now,
                    how: format!("{SUPERSEDED} ({by})"),
                }),
                // Evidence arrived that the write was made without seeing a side: open again.
                (None, true) => None,
                _ => continue,
            };
            entry.resolved = resolved;
            self.txn.put(keys::conflict(id), encode(&entry));
        }
        Ok(())
    }
}

/// The one revision of a record whose only event is `at`, its creation: every field the state
/// has was written by it (what [`merge::local_edit`] recorded for a create).
fn only_revision(state: &RecordState, at: crate::clock::Hlc) -> Revision {
    let changes = state
        .fields
        .iter()
        .filter(|(_, f)| f.stamp == at)
        .filter_map(|(k, f)| {
            f.value.clone().map(|v| merge::FieldChange {
                field: k.clone(),
                old: None,
                new: Some(v),
            })
        })
        .collect();
    Revision {
        at,
        kind: RevisionKind::Create,
        changes,
        cause: Cause::Edit,
        reconstructed: false,
    }
}

/// How a conflict settled by a later write is marked (the prefix of its `how`).
pub(crate) const SUPERSEDED: &str = "superseded by a later write";
/// How a delete-vs-edit entry settled by a resolution revision (made here or received) reads.
pub(crate) const SETTLED_BY_RESOLUTION: &str = "settled by a later conflict resolution";

/// Gives glibc's free heap pages back to the system (`malloc_trim`). In the `fieldsync` binary
/// glibc's heap holds only the C libraries' allocations (zstd's contexts): Rust's go to jemalloc,
/// whose own background thread returns freed pages within ~0.1 s (`crate::allocator`). Where
/// glibc's malloc is the global allocator (the library's tests, other programs using the
/// library) it holds everything, and this is what shrinks an agent after a large batch.
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`trim_heap`] on a thread of its own, for the end of a sync session: trimming walks the
/// whole glibc heap (~20 ms after a session on a 100,000-record store when glibc's malloc held
/// everything, measured with perf), which the peer waiting for our last reply should not wait
/// for.
pub(crate) fn trim_heap_soon() {
    let spawned = std::thread::Builder::new()
        .name("trim-heap".into())
        .spawn(trim_heap);
    if spawned.is_err() {
        // No thread to spare: trim here rather than not at all.
        trim_heap();
    }
}

/// Records use the compact (array) encoding, compressed on its own by zstd: they are the bulk
/// of the database (and of the disk: sled keeps ~3 bytes on disk per value byte, see
/// bench/RESULTS.md). A gen.py record takes 640 bytes of MessagePack (its field names and the
/// same 26-byte stamp once per field), ~345 compressed alone and ~135 with its table's
/// dictionary (`dict.rs`, store format 6). Store format 4 and later write frames;
/// [`decode_record`] still reads the plain MessagePack of older formats (no rewrite needed).
pub(crate) fn encode_record(
    r: &StoredRecord,
    dict: Option<&zstd::zstd_safe::CDict<'_>>,
) -> Vec<u8> {
    let plain = encode_record_plain(r);
    let packed = match dict {
        Some(d) => RECORD_CCTX.with(|c| {
            let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(plain.len()));
            c.borrow_mut()
                .compress_using_cdict(&mut out, &plain, d)
                .map(|_| out)
                .map_err(|_| ())
        }),
        None => RECORD_ZSTD
            .with(|c| c.borrow_mut().compress(&plain))
            .map_err(|_| ()),
    };
    // Compressing a buffer in memory fails only on allocation failure; keep the plain form.
    packed.unwrap_or(plain)
}

/// A history entry as stored: compact MessagePack, compressed with its table's dictionary once
/// the table has one (store format 6; plain before, and while it has none). [`decode_history`]
/// reads both.
pub(crate) fn encode_history(
    e: &HistoryEntry,
    dict: Option<&zstd::zstd_safe::CDict<'_>>,
) -> Vec<u8> {
    let plain = super::encode_compact(e);
    let Some(d) = dict else {
        return plain;
    };
    RECORD_CCTX
        .with(|c| {
            let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(plain.len()));
            c.borrow_mut()
                .compress_using_cdict(&mut out, &plain, d)
                .map(|_| out)
        })
        // Compressing in memory fails only on allocation failure; keep the plain form.
        .unwrap_or(plain)
}

/// Decodes a history entry stored by [`encode_history`] (plain MessagePack, which never starts
/// with the zstd magic number, or a frame).
pub(crate) fn decode_history(b: &[u8]) -> Result<HistoryEntry, StoreError> {
    super::decode_compact(&record_plain_bytes(b)?)
}

/// The MessagePack (compact) form of a record, before compression: what store formats up to 3
/// stored, and what the golden-bytes test pins.
pub(crate) fn encode_record_plain(r: &StoredRecord) -> Vec<u8> {
    super::encode_compact(r)
}

/// Decodes a record stored by [`encode_record`] (a zstd frame, with or without its table's
/// dictionary) or by a store format before 4 (plain MessagePack, which starts with an array
/// marker, never with the zstd magic number).
pub(crate) fn decode_record(b: &[u8]) -> Result<StoredRecord, StoreError> {
    if !b.starts_with(&ZSTD_MAGIC) {
        return super::decode_compact(b);
    }
    super::decode_compact(&record_plain_bytes(b)?)
}

/// The MessagePack of a stored record value (decompressed if it is a frame).
pub(crate) fn record_plain_bytes(b: &[u8]) -> Result<Vec<u8>, StoreError> {
    if !b.starts_with(&ZSTD_MAGIC) {
        return Ok(b.to_vec());
    }
    let len = zstd::zstd_safe::get_frame_content_size(b)
        .ok()
        .flatten()
        .filter(|&n| n <= MAX_RECORD_BYTES)
        .ok_or_else(|| StoreError::Decode("a stored record's size is unreadable".into()))?;
    let undecodable = |e: &dyn std::fmt::Display| {
        StoreError::Decode(format!("a stored record does not decompress: {e}"))
    };
    match zstd::zstd_safe::get_dict_id_from_frame(b) {
        None => RECORD_UNZSTD
            .with(|d| d.borrow_mut().decompress(b, len as usize))
            .map_err(|e| undecodable(&e)),
        Some(id) => {
            let dict = super::dict::decoder(id.get()).ok_or_else(|| {
                StoreError::Decode(format!(
                    "a stored record needs compression dictionary {id}, which this database does \
                     not hold"
                ))
            })?;
            RECORD_DCTX.with(|d| {
                let mut out = Vec::with_capacity(len as usize);
                d.borrow_mut()
                    .decompress_using_ddict(&mut out, b, &dict)
                    .map(|_| out)
                    .map_err(|code| undecodable(&zstd::zstd_safe::get_error_name(code)))
            })
        }
    }
}

/// The zstd frame magic number (little-endian 0xFD2FB528), the first bytes of a compressed record.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// zstd level for records: on values this small levels 1 to 6 differ by 1 %; 1 is the fastest.
const RECORD_ZSTD_LEVEL: i32 = 1;
/// Refuse to inflate a stored record beyond this (a damaged size field).
const MAX_RECORD_BYTES: u64 = 256 << 20;

thread_local! {
    // One context per thread, reused: creating a zstd context per record would cost more than
    // compressing it.
    static RECORD_ZSTD: std::cell::RefCell<zstd::bulk::Compressor<'static>> =
        std::cell::RefCell::new(
            zstd::bulk::Compressor::new(RECORD_ZSTD_LEVEL).expect("a zstd context"),
        );
    static RECORD_UNZSTD: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("a zstd context"));
    // The same for records compressed with their table's dictionary (`dict.rs`).
    static RECORD_CCTX: std::cell::RefCell<zstd::zstd_safe::CCtx<'static>> =
        std::cell::RefCell::new(zstd::zstd_safe::CCtx::create());
    static RECORD_DCTX: std::cell::RefCell<zstd::zstd_safe::DCtx<'static>> =
        std::cell::RefCell::new(zstd::zstd_safe::DCtx::create());
}
