//! Imports: rows of one table applied through the local write path, either in one batch (a
//! small import) or staged in bounded chunks and rolled forward (a redo log), so a large
//! import needs bounded memory and a crash at any moment leaves none or all of it.
//!
//! | key                                    | value (rmp-serde)                          |
//! |----------------------------------------|--------------------------------------------|
//! | `I` import id (16) block number (u64 BE)| `StagedRow`s, each rmp-serde (named), back to back |
//! | `M` `import/` import id (text)         | `ImportMarker`: the import is committed    |
//!
//! Rows are staged in *blocks*: consecutive rows encoded back to back under one key, a block
//! closed at [`STAGE_BLOCK_BYTES`] or at the roll-forward chunk's row count, whichever comes
//! first. One key per block instead of one per row makes staging and its removal two sled
//! operations per ~12 rows instead of two per row (sled's per-operation cost dominated an
//! import); blocks stay small because sled copies a whole leaf, values inline, on every change. A block holding one row is exactly the old per-row value, so
//! a staged import left by an older version is read the same way.
//!
//! Lifecycle of a staged import: blocks are staged as rows arrive (one `sled::Batch` per
//! chunk, not fsynced); `commit` flushes them, writes the marker and flushes again — from that
//! moment the import has happened. Then it rolls forward: whole blocks, about one chunk of rows
//! at a time, are applied through the local write path and their keys removed *in the same
//! batch*, so a crash mid-way leaves exactly the rows not yet applied; finally one batch
//! brings the table's fingerprint entries up to date (the chunks commit without theirs, see
//! `Sums`) and removes the marker. Chunks are built one ahead on a second thread while the
//! previous one is applied (`staging/pipeline.rs`); they still apply in order, one batch each.
//! On open, [`recover`] discards staging without a marker (the import never
//! committed: none of it) and rolls a marked one forward to completion (all of it).
//!
//! Blocks are numbered in file order, so the roll-forward writes records (and their feed
//! entries, hence what peers receive first) in file order, as a one-batch import does.
//!
//! Readers of this process may see a roll-forward in progress (some rows applied, others not)
//! for as long as it runs; a crash never leaves it that way, because the next open finishes it.

use super::fingerprint;
#[cfg(test)]
use super::fingerprint::RangeSum;
use super::{decode, encode, keys, Store, StoreError};
use crate::model::Fields;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

mod pipeline;

/// Prefix byte of staged import rows (see the module's table).
pub(crate) const STAGED: u8 = b'I';

/// Rows applied per batch during roll-forward (unless the import sets another). sled holds
/// several times a batch's size in memory while applying it (a 5,000-row batch peaked at over
/// 100 MB), so batches stay small; they are not fsynced one by one (see `roll_forward`).
pub(crate) const APPLY_CHUNK: usize = 1_000;

/// A staged block is closed once its encoded rows reach this size (about a dozen rows). sled
/// keeps values inline in its leaves (16 entries each) and copies a leaf on every change, so
/// large blocks make large leaves: 64 KiB blocks peaked at 334 MB for a million-row import,
/// 4 KiB blocks stay near per-row staging's memory (measured at 50,000 rows: 1 row 79 MB,
/// 4 KiB 74 MB, 16 KiB 78 MB, 64 KiB 85 MB).
pub(crate) const STAGE_BLOCK_BYTES: usize = 4 << 10;

/// How an import row changes a record that already exists and is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateMode {
    /// The row's fields replace the record's (a `put`: fields not in the row are removed).
    Replace,
    /// The row's fields are set and the record's other fields kept (a `patch`; null removes).
    Merge,
}

/// One row to import into a table.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportRow {
    /// The record id (from the file, derived from a key, or new).
    pub id: Uuid,
    /// Source line (or spreadsheet row), for messages.
    pub line: u64,
    /// The row's fields.
    pub fields: Fields,
    /// What to do when the record exists.
    pub update: UpdateMode,
}

/// What an import row did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOutcome {
    /// A new record.
    Inserted,
    /// An existing record changed (an edit with history).
    Updated,
    /// The record already held these values: nothing written.
    Unchanged,
    /// The record was deleted here; an import never brings it back, so nothing was written.
    DeletedKept,
}

/// Counts of a finished import.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportCounts {
    /// New records.
    pub inserted: u64,
    /// Changed records.
    pub updated: u64,
    /// Rows whose record already held their values.
    pub unchanged: u64,
    /// Rows for records deleted here, left deleted.
    pub deleted_kept: u64,
    /// Rows refused while rolling forward (a unique value taken by a record that arrived from
    /// a peer after the rows were checked); each is logged with its line. Normally 0.
    pub skipped: u64,
}

impl ImportCounts {
    fn add(&mut self, o: RowOutcome) {
        match o {
            RowOutcome::Inserted => self.inserted += 1,
            RowOutcome::Updated => self.updated += 1,
            RowOutcome::Unchanged => self.unchanged += 1,
            RowOutcome::DeletedKept => self.deleted_kept += 1,
        }
    }
}

/// A staged row as stored (the table is in the marker).
#[derive(Serialize, Deserialize)]
struct StagedRow {
    id: Uuid,
    line: u64,
    fields: Fields,
    update: UpdateMode,
}

/// Written when a staged import commits.
#[derive(Serialize, Deserialize)]
struct ImportMarker {
    table: String,
    rows: u64,
}

fn staged_prefix(import: &Uuid) -> Vec<u8> {
    keys::with_prefix(STAGED, &[import.as_bytes()])
}

fn marker_key(import: &Uuid) -> Vec<u8> {
    keys::meta(&format!("import/{import}"))
}

impl Store {
    /// Applies import rows to `table` in one atomic, durable batch (for imports that fit in
    /// memory). A failing row fails the batch with [`StoreError::Op`] and writes nothing.
    pub fn import_rows(&self, table: &str, rows: &[ImportRow]) -> Result<ImportCounts, StoreError> {
        let mut counts = ImportCounts::default();
        for o in self.write_import(table, rows, true, |_| Ok(()))? {
            counts.add(o);
        }
        Ok(counts)
    }

    /// Starts a staged import into `table` (for imports too large for one batch) that rolls
    /// forward `apply_chunk` rows per batch.
    pub fn stage_import(
        &self,
        table: &str,
        apply_chunk: usize,
    ) -> Result<StagedImport<'_>, StoreError> {
        crate::model::validate_table(table)?;
        Ok(StagedImport {
            store: self,
            table: table.to_string(),
            id: Uuid::new_v4(),
            rows: 0,
            blocks: 0,
            block: Vec::new(),
            block_rows: 0,
            done: false,
            apply_chunk: apply_chunk.max(1),
        })
    }

    /// The record holding `value` in the unique field `table.field`, other than `except`.
    pub fn unique_holder(
        &self,
        table: &str,
        field: &str,
        value: &serde_json::Value,
        except: &Uuid,
    ) -> Result<Option<Uuid>, StoreError> {
        Ok(self
            .unique_holders(table, field, value)?
            .into_iter()
            .find(|id| id != except))
    }
}

/// An import being staged; dropped without [`StagedImport::commit`], its rows are discarded.
pub struct StagedImport<'a> {
    store: &'a Store,
    table: String,
    id: Uuid,
    rows: u64,
    /// Blocks written so far (the next block's number).
    blocks: u64,
    /// The open block: encoded rows not yet written.
    block: Vec<u8>,
    block_rows: usize,
    done: bool,
    apply_chunk: usize,
}

impl StagedImport<'_> {
    /// Adds rows to the staging area: every block they fill is written (one batch, not yet
    /// durable); the rest waits in memory for the next call or [`StagedImport::commit`].
    pub fn stage(&mut self, rows: Vec<ImportRow>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut closed = 0;
        for r in rows {
            let v = StagedRow {
                id: r.id,
                line: r.line,
                fields: r.fields,
                update: r.update,
            };
            rmp_serde::encode::write_named(&mut self.block, &v)
                .expect("in-memory values always encode");
            self.block_rows += 1;
            self.rows += 1;
            if self.block.len() >= STAGE_BLOCK_BYTES || self.block_rows >= self.apply_chunk {
                self.close_block(&mut batch);
                closed += 1;
            }
        }
        if closed > 0 {
            self.store.tree().apply_batch(batch)?;
        }
        Ok(())
    }

    /// Moves the open block into `batch` under the next block number.
    fn close_block(&mut self, batch: &mut sled::Batch) {
        let mut k = staged_prefix(&self.id);
        k.extend_from_slice(&self.blocks.to_be_bytes());
        batch.insert(k, std::mem::take(&mut self.block));
        self.blocks += 1;
        self.block_rows = 0;
    }

    /// Makes the import happen: staged rows durable, then the commit marker (durable), then
    /// the roll-forward. Once the marker is written, a failure or crash leaves the rest to
    /// [`recover`] at the next open.
    pub fn commit(mut self) -> Result<ImportCounts, StoreError> {
        if self.block_rows > 0 {
            let mut batch = sled::Batch::default();
            self.close_block(&mut batch);
            self.store.tree().apply_batch(batch)?;
        }
        self.store.tree().flush()?;
        let marker = ImportMarker {
            table: self.table.clone(),
            rows: self.rows,
        };
        self.store
            .tree()
            .insert(marker_key(&self.id), encode(&marker))?;
        self.store.tree().flush()?;
        self.done = true;
        tracing::debug!(import = %self.id, rows = self.rows, "import committed, rolling forward");
        roll_forward(
            self.store,
            &self.id,
            &marker,
            self.apply_chunk,
            Sums::Deferred,
        )
    }
}

impl Drop for StagedImport<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Refused or failed before commit: nothing of it may apply. If this cleanup fails
            // too, the next open discards the unmarked rows.
            if let Err(e) = discard(self.store, &self.id) {
                tracing::warn!(import = %self.id, "could not discard staged import rows: {e}");
            }
        }
    }
}

fn discard(store: &Store, import: &Uuid) -> Result<(), StoreError> {
    let prefix = staged_prefix(import);
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in store.tree().scan_prefix(&prefix).take(APPLY_CHUNK) {
            batch.remove(kv?.0);
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        store.tree().apply_batch(batch)?;
    }
}

/// Applies the staged rows of a committed import, chunk by chunk, then removes its marker.
///
/// The chunks are not fsynced one by one: the staged rows and the marker are durable, and sled
/// recovers a prefix of its log, so a crash can only lose the latest chunks *together with the
/// removal of their staged rows*, which the next open applies again. One flush at the end
/// makes the whole import durable before it is reported.
fn roll_forward(
    store: &Store,
    import: &Uuid,
    marker: &ImportMarker,
    chunk: usize,
    sums: Sums,
) -> Result<ImportCounts, StoreError> {
    let mut counts = ImportCounts::default();
    let mut deltas = BTreeMap::new();
    pipeline::run(
        store,
        import,
        &marker.table,
        chunk,
        &mut counts,
        &mut deltas,
    )?;
    // The fingerprint entries catch up with every chunk, in batches of bounded size (sled
    // needs many times a batch's size while applying it: the 65,793 entries of a large table
    // in one batch took 1.7 s and 230 MB), then the marker goes. A crash before the marker's
    // removal finishes with `Sums::Rebuild`, which replaces whatever of this was applied.
    let table = marker.table.as_str();
    if let Sums::Deferred = sums {
        while !deltas.is_empty() {
            let rest = match deltas.keys().nth(2 * APPLY_CHUNK).cloned() {
                Some(k) => deltas.split_off(&k),
                None => BTreeMap::new(),
            };
            let part = std::mem::replace(&mut deltas, rest);
            store.write_import(table, &[], false, |txn| {
                txn.add_fingerprints(part);
                Ok(())
            })?;
        }
    }
    store.write_import(table, &[], false, |txn| {
        if let Sums::Rebuild = sums {
            rebuild_fingerprints(store, table, txn)?;
        }
        txn.remove(marker_key(import));
        Ok(())
    })?;
    store.tree().flush()?;
    // Give the allocator's freed chunks back, so an agent does not sit at the import's peak.
    super::write::trim_heap();
    Ok(counts)
}

/// How a roll-forward brings the table's fingerprint entries (`fingerprint.rs`) up to date.
///
/// Its chunks commit without their fingerprint changes: a chunk of 1,000 new records touches
/// about 1,250 entries (the table's, 256 first-byte and ~1,000 of the 65,536 two-byte ones),
/// each a read and a write, which made them more than a third of an import's sled operations.
/// Until the last batch, readers in this process see sums without the rows applied so far
/// (as they see a roll-forward in progress, see the module's doc); a crash never leaves it so.
enum Sums {
    /// The import committed in this process: its chunks' changes are summed in memory
    /// (at most one entry per stored range of the table, ~7 MB) and added in the last batch.
    Deferred,
    /// Finishing after a crash: the changes of the chunks applied before it are lost, so the
    /// last batch recomputes the table's entries from its records (one read of the table).
    Rebuild,
}

/// Replaces `table`'s fingerprint entries in `txn` by ones computed from its records.
fn rebuild_fingerprints(
    store: &Store,
    table: &str,
    txn: &mut super::Txn<'_>,
) -> Result<(), StoreError> {
    let records = store
        .tree()
        .scan_prefix(keys::table_records(table))
        .map(|kv| {
            let (k, v) = kv?;
            Ok((k.to_vec(), v.to_vec()))
        });
    let fresh = fingerprint::build_from_records(records)?;
    let mut prefix = fingerprint::level_key(table, &[]);
    prefix.pop(); // the level byte: every level of this table
    for kv in store.tree().scan_prefix(&prefix) {
        let k = kv?.0;
        if !fresh.contains_key(k.as_ref()) {
            txn.remove(k.to_vec());
        }
    }
    for (k, v) in fresh {
        txn.put(k, v);
    }
    Ok(())
}

/// Appends the rows of one staged block (see the module's table) to `rows`.
fn decode_block(block: &[u8], rows: &mut Vec<ImportRow>) -> Result<(), StoreError> {
    let mut rest = block;
    while !rest.is_empty() {
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        let s: StagedRow = serde::Deserialize::deserialize(&mut de)
            .map_err(|e| StoreError::Decode(format!("staged import block: {e}")))?;
        rows.push(ImportRow {
            id: s.id,
            line: s.line,
            fields: s.fields,
            update: s.update,
        });
    }
    Ok(())
}

/// Applies one chunk and removes its staged keys in the same batch, built under the writer
/// lock (the roll-forward before its pipeline; tests use it to stop after a chunk). A row the
/// write path refuses as invalid is logged and skipped.
#[cfg(test)]
fn apply_chunk(
    store: &Store,
    table: &str,
    mut rows: Vec<ImportRow>,
    staged_keys: Vec<Vec<u8>>,
    counts: &mut ImportCounts,
    deltas: &mut BTreeMap<Vec<u8>, RangeSum>,
) -> Result<(), StoreError> {
    loop {
        let remove = |txn: &mut super::Txn<'_>| {
            for k in &staged_keys {
                txn.remove(k.clone());
            }
            // Committed without its fingerprint changes; they are added at the end (`Sums`).
            super::txn::add_deltas(deltas, txn.take_fingerprints());
            Ok(())
        };
        match store.write_import(table, &rows, false, remove) {
            Ok(outcomes) => {
                for o in outcomes {
                    counts.add(o);
                }
                return Ok(());
            }
            Err(StoreError::Op { index, source }) if source.is_invalid_input() => {
                let row = rows.remove(index);
                skipped(counts, table, &row, &source);
            }
            Err(e) => return Err(e),
        }
    }
}

/// A row the write path refused while rolling forward (only a race with a peer's data can
/// cause it, the rows were checked before the commit): logged and counted, so it never blocks
/// the import.
fn skipped(counts: &mut ImportCounts, table: &str, row: &ImportRow, why: &dyn std::fmt::Display) {
    tracing::warn!(
        table,
        id = %row.id,
        line = row.line,
        "import row skipped while rolling forward: {why}"
    );
    counts.skipped += 1;
}

/// Finishes or discards imports a crash interrupted: called when the store opens.
pub(crate) fn recover(store: &Store) -> Result<(), StoreError> {
    let marker_prefix = keys::meta("import/");
    let mut committed = Vec::new();
    for kv in store.tree().scan_prefix(&marker_prefix) {
        let (k, v) = kv?;
        let id = std::str::from_utf8(&k[marker_prefix.len()..])
            .ok()
            .and_then(|s| s.parse::<Uuid>().ok())
            .ok_or_else(|| StoreError::Decode("bad import marker key".into()))?;
        committed.push((id, decode::<ImportMarker>(&v)?));
    }
    // Said at warn, in sentences: the person whose import was cut off (a power cut, a killed
    // agent) was told it failed, and this is where it is settled (trial 9, finding 3).
    for (id, marker) in &committed {
        tracing::warn!(
            "an import of {} rows into {} was cut off after it committed: finishing it now, \
             so all its rows will be in (import {id})",
            marker.rows,
            marker.table
        );
        roll_forward(store, id, marker, APPLY_CHUNK, Sums::Rebuild)?;
        tracing::warn!(
            "the import of {} rows into {} is finished: all its rows are in",
            marker.rows,
            marker.table
        );
    }
    // Whatever is still staged never committed.
    while let Some(kv) = store.tree().scan_prefix([STAGED]).next() {
        let k = kv?.0;
        let id = Uuid::from_slice(k.get(1..17).unwrap_or_default())
            .map_err(|e| StoreError::Decode(format!("staged import key: {e}")))?;
        tracing::warn!(
            "an import was cut off before it had read its whole file: discarded, none of its \
             rows are in (import the file again; with ids or --key that never doubles a row) \
             (import {id})"
        );
        discard(store, &id)?;
        store.tree().flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Config;

    fn rows(n: u64) -> Vec<ImportRow> {
        (0..n)
            .map(|i| ImportRow {
                id: Uuid::new_v4(),
                line: i + 1,
                fields: serde_json::json!({"n": i}).as_object().unwrap().clone(),
                update: UpdateMode::Replace,
            })
            .collect()
    }

    #[test]
    fn an_import_cut_off_mid_roll_forward_is_finished_on_open_with_exact_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let rows = rows(30);
        {
            let s = Store::open(dir.path(), Config::default()).unwrap();
            s.import_rows("person", &rows[..5]).unwrap();
            let mut imp = s.stage_import("person", 10).unwrap();
            imp.stage(rows[5..].to_vec()).unwrap();
            // What `commit` does, up to a crash after the first roll-forward chunk: that chunk
            // is applied without its fingerprint changes (they lived in the lost process).
            let mut batch = sled::Batch::default();
            imp.close_block(&mut batch);
            s.tree().apply_batch(batch).unwrap();
            let marker = ImportMarker {
                table: "person".into(),
                rows: imp.rows,
            };
            s.tree()
                .insert(marker_key(&imp.id), encode(&marker))
                .unwrap();
            imp.done = true;
            let (k, v) = s
                .tree()
                .scan_prefix(staged_prefix(&imp.id))
                .next()
                .unwrap()
                .unwrap();
            let mut lost = BTreeMap::new();
            let mut counts = ImportCounts::default();
            apply_staged_block(&s, &k, &v, &mut counts, &mut lost);
            assert!(
                counts.inserted > 0 && counts.inserted < 25,
                "a part is applied"
            );
            assert!(!s.check_fingerprints().unwrap().is_empty(), "sums behind");
            s.tree().flush().unwrap();
        }
        let s = Store::open(dir.path(), Config::default()).unwrap();
        assert_eq!(s.scan_ids("person", &[]).count(), 30, "all of the import");
        assert_eq!(s.range_sum("person", &[]).unwrap().count, 30);
        assert_eq!(s.check_fingerprints().unwrap(), Vec::<String>::new());
        assert!(s.tree().scan_prefix(keys::meta("import/")).next().is_none());
    }

    /// What the roll-forward does with one staged block `(k, v)` of the person table.
    fn apply_staged_block(
        s: &Store,
        k: &[u8],
        v: &[u8],
        counts: &mut ImportCounts,
        deltas: &mut BTreeMap<Vec<u8>, RangeSum>,
    ) {
        let mut chunk = Vec::new();
        decode_block(v, &mut chunk).unwrap();
        apply_chunk(s, "person", chunk, vec![k.to_vec()], counts, deltas).unwrap();
    }

    #[test]
    fn a_record_written_during_the_roll_forward_is_updated_by_its_row_not_inserted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Config::default()).unwrap();
        let rows = rows(20);
        let mut imp = s.stage_import("person", 10).unwrap();
        imp.stage(rows.clone()).unwrap();
        imp.done = true;
        let blocks: Vec<_> = s
            .tree()
            .scan_prefix(staged_prefix(&imp.id))
            .map(|kv| kv.unwrap())
            .collect();
        assert_eq!(blocks.len(), 2, "two chunks of 10 rows");
        let (mut counts, mut deltas) = (ImportCounts::default(), BTreeMap::new());
        for (i, (k, v)) in blocks.iter().enumerate() {
            if i == 1 {
                // Between two chunks, someone saves the record of a row not yet applied (the
                // API, or a peer): the row must update it, not insert it a second time.
                s.write_one(crate::store::LocalOp {
                    table: "person".into(),
                    id: rows[15].id,
                    edit: crate::merge::Edit::Put(
                        serde_json::json!({"note": "typed in"})
                            .as_object()
                            .unwrap()
                            .clone(),
                    ),
                })
                .unwrap();
            }
            apply_staged_block(&s, k, v, &mut counts, &mut deltas);
        }
        assert_eq!((counts.inserted, counts.updated), (19, 1));
        let rec = s.get("person", &rows[15].id).unwrap().unwrap();
        assert_eq!(rec.state.value("n"), Some(&serde_json::json!(15)));
        assert_eq!(rec.state.value("note"), None, "the row replaced the fields");
        assert_eq!(s.tables().unwrap()[0].1.live, 20);
        assert_eq!(
            s.tree().scan_prefix([keys::FEED]).count(),
            20,
            "one feed entry each"
        );
    }

    #[test]
    fn a_staged_import_leaves_fingerprints_equal_to_a_recomputation() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Config::default()).unwrap();
        let rows = rows(45);
        s.import_rows("person", &rows[..5]).unwrap();
        let mut imp = s.stage_import("person", 7).unwrap();
        // Rows already there (unchanged and changed) and new ones, in chunks of 7.
        let mut again = rows.clone();
        again[1]
            .fields
            .insert("n".into(), serde_json::json!("changed"));
        imp.stage(again).unwrap();
        let counts = imp.commit().unwrap();
        assert_eq!(
            (counts.inserted, counts.updated, counts.unchanged),
            (40, 1, 4)
        );
        assert_eq!(s.range_sum("person", &[]).unwrap().count, 45);
        assert_eq!(s.check_fingerprints().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn writes_committed_between_pipelined_chunks_are_neither_lost_nor_duplicated() {
        // The roll-forward builds chunk k+1 while chunk k is applied; another thread writes the
        // same table throughout (new records, and edits of records the import also writes), so
        // chunks built ahead are found stale and built again under the lock.
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Config::default()).unwrap();
        let rows = rows(2_000);
        let mut imp = s.stage_import("person", 40).unwrap();
        imp.stage(rows.clone()).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (counts, theirs) = std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                let mut theirs = Vec::new();
                // Bounded: at most 400 writes, and none once the import returned.
                for i in 0..400u64 {
                    if done.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    // Every third write edits a record of the import; the others are new.
                    let id = if i % 3 == 0 {
                        rows[(i as usize * 7) % rows.len()].id
                    } else {
                        Uuid::new_v4()
                    };
                    let fields = serde_json::json!({"typed": i});
                    let r = s
                        .write_one(crate::store::LocalOp {
                            table: "person".into(),
                            id,
                            edit: crate::merge::Edit::Put(fields.as_object().unwrap().clone()),
                        })
                        .unwrap();
                    let crate::store::OpResult::Written(seq) = r else {
                        panic!("a put of new values writes");
                    };
                    theirs.push((id, i, seq));
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                theirs
            });
            let counts = imp.commit().unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (counts, writer.join().unwrap())
        });
        assert_eq!(counts.inserted + counts.updated + counts.unchanged, 2_000);
        assert_eq!(counts.skipped, 0);
        let imported: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.id).collect();
        let new_theirs: std::collections::HashSet<Uuid> = theirs
            .iter()
            .map(|t| t.0)
            .filter(|id| !imported.contains(id))
            .collect();
        // Some of their writes landed among the import's chunks (else this shows nothing).
        let import_seqs: Vec<u64> = rows
            .iter()
            .map(|r| s.get("person", &r.id).unwrap().unwrap().seq)
            .collect();
        let (lo, hi) = (
            *import_seqs.iter().min().unwrap(),
            *import_seqs.iter().max().unwrap(),
        );
        assert!(
            theirs.iter().any(|t| t.2 > lo && t.2 < hi),
            "no write landed between two chunks: {lo}..{hi}, {theirs:?}"
        );
        // Nothing lost, nothing twice: every record once, one feed entry each, exact sums.
        let live = 2_000 + new_theirs.len() as u64;
        assert_eq!(s.tables().unwrap()[0].1.live, live);
        assert_eq!(s.scan_ids("person", &[]).count() as u64, live);
        assert_eq!(s.changes_since(0, usize::MAX).unwrap().len() as u64, live);
        assert_eq!(s.tree().scan_prefix([keys::FEED]).count() as u64, live);
        assert_eq!(s.range_sum("person", &[]).unwrap().count, live);
        assert_eq!(s.check_fingerprints().unwrap(), Vec::<String>::new());
        // Each record holds the last write it received: theirs if it came after the row's.
        for (id, i, seq) in &theirs {
            let rec = s.get("person", id).unwrap().unwrap();
            let last_theirs = theirs.iter().filter(|t| t.0 == *id).map(|t| t.2).max();
            if Some(*seq) != last_theirs {
                continue;
            }
            if rec.seq == *seq {
                assert_eq!(rec.state.value("typed"), Some(&serde_json::json!(i)));
            } else {
                // Written again later: only by its import row, which replaced the fields.
                assert!(imported.contains(id) && rec.seq > *seq);
                assert_eq!(rec.state.value("typed"), None);
            }
        }
        assert!(s.tree().scan_prefix([STAGED]).next().is_none());
    }
}
