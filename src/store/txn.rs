//! A write set over the tree: reads see earlier writes of the same batch, and `commit` applies
//! everything as one atomic `sled::Batch`.
//!
//! Only one `Txn` is open at a time (the store's writer lock), so there is no write-write race
//! to detect; readers outside see either the state before or after the whole batch.
//!
//! Every put or remove of a record key also moves the record's element in the fingerprints
//! (`fingerprint.rs`): the deltas are summed per fingerprint entry and added to the stored
//! entries in the same batch at commit.

use super::fingerprint::{self, RangeSum};
use super::StoreError;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Pending writes by key (`None`: removed).
pub(crate) type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Pending writes on top of the committed tree.
pub struct Txn<'a> {
    /// Held for the batch's life (a reopen waits for it; see `handles.rs`).
    tree: super::handles::TreeRef,
    _store: std::marker::PhantomData<&'a ()>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Values read before this batch was built, between its writes and the tree (an import's
    /// roll-forward chunk built ahead, outside the writer lock: the previous chunk's writes,
    /// not yet applied, and the chunk's records read in advance; see `staging.rs`).
    below: Option<std::sync::Arc<Writes>>,
    /// Fingerprint entry key → what this batch adds to it.
    fingerprints: BTreeMap<Vec<u8>, RangeSum>,
    /// Why the fingerprints could not be tracked; the commit fails with it.
    failed: Option<StoreError>,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(tree: super::handles::TreeRef) -> Self {
        Self {
            tree,
            _store: std::marker::PhantomData,
            writes: BTreeMap::new(),
            below: None,
            fingerprints: BTreeMap::new(),
            failed: None,
        }
    }

    /// A batch that reads `below` before the tree (see the field's doc).
    pub(crate) fn over(tree: super::handles::TreeRef, below: std::sync::Arc<Writes>) -> Self {
        Self {
            below: Some(below),
            ..Self::new(tree)
        }
    }

    /// A copy of the pending writes (what the next chunk of an import reads below its own).
    pub(crate) fn writes(&self) -> Writes {
        self.writes.clone()
    }

    /// Records that the record `table`/`id` goes from element `old` to `new` (`None`: absent)
    /// in this batch.
    fn record_changed(
        &mut self,
        table: &str,
        id: &Uuid,
        old: Option<RangeSum>,
        new: Option<RangeSum>,
    ) {
        if old == new {
            return;
        }
        let mut delta = new.unwrap_or_default();
        if let Some(o) = old {
            delta.sub(&o);
        }
        for key in fingerprint::keys_of(table, id) {
            self.fingerprints.entry(key).or_default().add(&delta);
        }
    }

    /// The value as this batch would leave it.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.below.as_ref().and_then(|b| b.get(key)) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    /// Sets a key. A record's fingerprint change is recorded with it (see [`Self::track`]).
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.track(&key, Some(&value));
        self.writes.insert(key, Some(value));
    }

    /// Sets a record key to `value`, which is `rec` encoded: its fingerprint element is
    /// computed from `rec` instead of decoding `value` again (a decode per written record,
    /// mostly allocation, was a measurable part of an import). A state holding an explicit
    /// `null` field value would not survive the encoding as such, so it takes the decoding path.
    /// `prev` is what this batch holds for the key now, as the caller loaded it from this
    /// batch (so it is not looked up and decoded a second time).
    pub(crate) fn put_record(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        rec: &super::StoredRecord,
        prev: Option<&super::StoredRecord>,
    ) {
        let exact = rec
            .state
            .fields
            .values()
            .all(|f| f.value != Some(serde_json::Value::Null));
        if !exact || key.first() != Some(&super::keys::RECORD) {
            return self.put(key, value);
        }
        if self.failed.is_none() {
            if let Err(e) = self.track_known(&key, rec, prev) {
                self.failed = Some(e);
            }
        }
        self.writes.insert(key, Some(value));
    }

    fn track_known(
        &mut self,
        key: &[u8],
        rec: &super::StoredRecord,
        prev: Option<&super::StoredRecord>,
    ) -> Result<(), StoreError> {
        let (table, id) = super::keys::parse_record_suffix(&key[1..])
            .ok_or_else(|| StoreError::Decode("bad record key".into()))?;
        let old = prev.map(|p| fingerprint::element_of(&id, p));
        let new = fingerprint::element_of(&id, rec);
        self.record_changed(&table, &id, old, Some(new));
        Ok(())
    }

    /// Removes a key (and a record's element from the fingerprints).
    pub fn remove(&mut self, key: Vec<u8>) {
        self.track(&key, None);
        self.writes.insert(key, None);
    }

    /// For a record key: the record's element moves from what this batch holds now to `new`,
    /// in the fingerprint entries committed with the batch. Done here, where every write of a
    /// record passes, so no write path can forget it.
    /// A failure (an undecodable record) is kept and fails the commit: nothing is written.
    fn track(&mut self, key: &[u8], new: Option<&[u8]>) {
        if key.first() != Some(&super::keys::RECORD) || self.failed.is_some() {
            return;
        }
        if let Err(e) = self.track_record(key, new) {
            self.failed = Some(e);
        }
    }

    fn track_record(&mut self, key: &[u8], new: Option<&[u8]>) -> Result<(), StoreError> {
        let (table, id) = super::keys::parse_record_suffix(&key[1..])
            .ok_or_else(|| StoreError::Decode("bad record key".into()))?;
        let element = |v: &[u8]| -> Result<RangeSum, StoreError> {
            Ok(fingerprint::element_of(
                &id,
                &super::write::decode_record(v)?,
            ))
        };
        let old = self.get(key)?.map(|v| element(&v)).transpose()?;
        let new = new.map(element).transpose()?;
        self.record_changed(&table, &id, old, new);
        Ok(())
    }

    /// Keys under `prefix` as this batch would leave them, in order.
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
        for kv in self.tree.scan_prefix(prefix) {
            keys.insert(kv?.0.to_vec());
        }
        for layer in self.below.as_deref().into_iter().chain([&self.writes]) {
            for (k, v) in layer.range(prefix.to_vec()..) {
                if !k.starts_with(prefix) {
                    break;
                }
                match v {
                    Some(_) => keys.insert(k.clone()),
                    None => keys.remove(k),
                };
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Takes the fingerprint changes recorded so far out of the batch: it commits without
    /// them, and the caller owes them to the stored entries (an import's roll-forward adds
    /// them all in its last batch, see `staging.rs`).
    pub(crate) fn take_fingerprints(&mut self) -> BTreeMap<Vec<u8>, RangeSum> {
        std::mem::take(&mut self.fingerprints)
    }

    /// Adds fingerprint changes (from [`Self::take_fingerprints`]) to this batch's.
    pub(crate) fn add_fingerprints(&mut self, deltas: BTreeMap<Vec<u8>, RangeSum>) {
        add_deltas(&mut self.fingerprints, deltas);
    }

    /// Number of pending writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// True when nothing is pending (no write and no fingerprint change).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.fingerprints.is_empty()
    }

    /// Applies every write atomically.
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut batch = sled::Batch::default();
        // Only the writer changes fingerprint entries, so the committed value is current.
        for (k, delta) in &self.fingerprints {
            if delta.is_zero() {
                continue;
            }
            match fingerprint::apply_delta(&self.tree, k, delta)? {
                Some(v) => batch.insert(k.as_slice(), v),
                None => batch.remove(k.as_slice()),
            }
        }
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

/// Adds `deltas` into `into`, entry by entry.
pub(crate) fn add_deltas(
    into: &mut BTreeMap<Vec<u8>, RangeSum>,
    deltas: BTreeMap<Vec<u8>, RangeSum>,
) {
    for (k, d) in deltas {
        into.entry(k).or_default().add(&d);
    }
}
