//! A write set over the tree: reads see earlier writes of the same batch, and `commit` applies
//! everything as one atomic `sled::Batch`.
//!
//! Only one `Txn` is open at a time (the store's writer lock), so there is no write-write race
//! to detect; readers outside see either the state before or after the whole batch.
//!
//! Record writes also report their fingerprint change ([`Txn::record_changed`]); the deltas are
//! summed per fingerprint entry and added to the stored entries in the same batch at commit
//! (`fingerprint.rs`).

use super::fingerprint::{self, RangeSum};
use super::StoreError;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Pending writes on top of the committed tree.
pub struct Txn<'a> {
    tree: &'a sled::Tree,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Fingerprint entry key → what this batch adds to it.
    fingerprints: BTreeMap<Vec<u8>, RangeSum>,
}

impl<'a> Txn<'a> {
    pub(crate) fn new(tree: &'a sled::Tree) -> Self {
        Self {
            tree,
            writes: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
        }
    }

    /// Records that the record `table`/`id` goes from element `old` to `new` (`None`: absent)
    /// in this batch; the caller writes the record itself.
    pub(crate) fn record_changed(
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
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }

    /// Sets a key.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    /// Removes a key.
    pub fn remove(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Keys under `prefix` as this batch would leave them, in order.
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
        for kv in self.tree.scan_prefix(prefix) {
            keys.insert(kv?.0.to_vec());
        }
        for (k, v) in self.writes.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            match v {
                Some(_) => keys.insert(k.clone()),
                None => keys.remove(k),
            };
        }
        Ok(keys.into_iter().collect())
    }

    /// Number of pending writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Applies every write atomically.
    pub(crate) fn commit(self) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        // Only the writer changes fingerprint entries, so the committed value is current.
        for (k, delta) in &self.fingerprints {
            if delta.is_zero() {
                continue;
            }
            match fingerprint::apply_delta(self.tree, k, delta)? {
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
