//! Reading ahead for an incoming page: what its merge and commit will read from sled, read once
//! before the page's turn, on a thread of its own (see `sync::responder`), so that the merge and
//! the commit under the writer lock find sled's leaves in its cache instead of reading each from
//! disk in the page's (random) order while the writer lock is held. Reads only; the merge reads
//! every record again from its batch, so nothing read here is trusted.
//!
//! Why all of it and on another thread: after the database was reopened (`reopen.rs`, which
//! runs after every large session) sled's cache is cold, and an incremental sync of 1,000
//! records touches about four thousand leaves (each record's, the feed entry its new version
//! replaces, its history's, and three fingerprint entries); reading them one by one inside
//! `Tree::apply_batch` and the merge was the largest part of the receiver's time (perf,
//! bench/RESULTS.md, session 8). On a second core they are read while this one decodes the
//! page, checks its signatures and merges.

use super::{keys, Store, StoredRecord};
use crate::change::RemoteChange;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The records a read-ahead decoded, by record key suffix, with the stored bytes each was
/// decoded from: the merge takes one instead of decoding the record again when it reads the
/// same bytes (`Batch::load`). Whatever the merge does not take is dropped with the page.
#[derive(Debug, Default)]
pub struct Prepared(Mutex<HashMap<Vec<u8>, (sled::IVec, StoredRecord)>>);

impl Prepared {
    /// The record decoded from `raw` under `suffix`, if the read-ahead decoded exactly these
    /// bytes (taken out: each is used once).
    pub(crate) fn take(&self, suffix: &[u8], raw: &[u8]) -> Option<StoredRecord> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match m.remove(suffix) {
            Some((v, rec)) if v == raw => Some(rec),
            _ => None,
        }
    }

    fn put(&self, suffix: Vec<u8>, raw: sled::IVec, rec: StoredRecord) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(suffix, (raw, rec));
    }
}

/// The keys a page's merge and commit will read, owned, so that another thread can read them.
#[derive(Debug, Default)]
struct ReadAhead {
    /// Record key suffixes, in the page's order (the order the merge reads them).
    records: Vec<Vec<u8>>,
    /// History keys the page's revisions will be stored under.
    history: Vec<Vec<u8>>,
    /// Fingerprint entries the commit adds the records' changes to, in key order.
    fingerprints: Vec<Vec<u8>>,
}

impl ReadAhead {
    /// The keys of the records of `changes`.
    fn of(changes: &[RemoteChange]) -> ReadAhead {
        let mut ahead = ReadAhead::default();
        for ch in changes {
            let suffix = keys::record_suffix(&ch.table, &ch.id);
            for r in &ch.history {
                ahead.history.push(keys::history(&suffix, &r.at));
            }
            ahead.records.push(suffix);
            ahead
                .fingerprints
                .extend(super::fingerprint::keys_of(&ch.table, &ch.id));
        }
        ahead.fingerprints.sort_unstable();
        ahead.fingerprints.dedup();
        ahead
    }
}

impl Store {
    /// Starts reading ahead for a page of `changes` on a thread of its own and returns at once
    /// (reads it here when no thread can be started). Nothing waits for it: whatever it has
    /// read when the merge gets there is found in the cache, the rest is read by the merge.
    /// The records it decodes are handed to the merge through the returned [`Prepared`]
    /// (`Store::commit_page_prepared`).
    pub fn read_ahead_page(self: &Arc<Self>, changes: &[RemoteChange]) -> Arc<Prepared> {
        let prepared = Arc::new(Prepared::default());
        if changes.is_empty() {
            return prepared;
        }
        let ahead = ReadAhead::of(changes);
        let (store, into) = (self.clone(), prepared.clone());
        let spawned = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || store.read_ahead(&ahead, &into));
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no thread to read a page ahead; reading it here");
            self.read_ahead(&ReadAhead::of(changes), &prepared);
        }
        prepared
    }

    /// Reads every key of `ahead` once and drops what it read: sled keeps the leaves it read
    /// (present or not: an absent key's leaf is where the commit will write it) in its cache.
    /// For a record held here it also reads the feed entry of its stored version, which the
    /// commit removes, and keeps the record decoded in `into`. Errors are ignored: the merge
    /// reads again and reports them.
    fn read_ahead(&self, ahead: &ReadAhead, into: &Prepared) {
        let tree = self.tree();
        for suffix in &ahead.records {
            let Ok(Some(v)) = tree.get(keys::record(suffix)) else {
                continue;
            };
            if let Ok(rec) = super::write::decode_record(&v) {
                let _ = tree.get(keys::feed(rec.seq));
                into.put(suffix.clone(), v, rec);
            }
        }
        for k in ahead.history.iter().chain(&ahead.fingerprints) {
            let _ = tree.get(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::merge::Edit;
    use crate::store::{Knowledge, LocalOp, PageCommit};
    use serde_json::{json, Value};
    use uuid::Uuid;

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(dir.path(), Config::parse("", "test").unwrap()).unwrap()
    }

    fn edit(s: &Store, id: Uuid, edit: Edit) {
        s.write_one(LocalOp {
            table: "person".into(),
            id,
            edit,
        })
        .unwrap();
    }

    fn fields(v: Value) -> crate::model::Fields {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn page(from: &Store, id: Uuid) -> Vec<RemoteChange> {
        vec![from
            .outgoing_change("person", &id, &Knowledge::new())
            .unwrap()
            .unwrap()]
    }

    fn commit(s: &Store, from: &Store, changes: &[RemoteChange], prepared: Option<Arc<Prepared>>) {
        s.commit_page_prepared(
            PageCommit {
                peer: from.id(),
                changes,
                since: 0,
                next: 0,
                more: true,
                knowledge: None,
                ends_session: false,
            },
            prepared,
        )
        .unwrap();
    }

    /// A record written here between the read-ahead of a page and the page's merge is merged
    /// from what is stored then: the read-ahead's decoded copy of the version before is not
    /// used, so the local write is not lost.
    #[test]
    fn a_record_written_after_the_read_ahead_is_merged_as_stored() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(&da), open(&db));
        b.update_peer(&a.id(), |_| ()).unwrap();
        let id = Uuid::new_v4();
        edit(&a, id, Edit::Put(fields(json!({"n": "a"}))));
        commit(&b, &a, &page(&a, id), None);
        edit(&a, id, Edit::Patch(fields(json!({"n": "a2"}))));
        let changes = page(&a, id);

        let prepared = Prepared::default();
        b.read_ahead(&ReadAhead::of(&changes), &prepared);
        assert_eq!(
            prepared.0.lock().unwrap().len(),
            1,
            "the read-ahead decoded the record"
        );
        edit(&b, id, Edit::Patch(fields(json!({"late": "b"}))));
        commit(&b, &a, &changes, Some(Arc::new(prepared)));

        let state = b.get("person", &id).unwrap().unwrap().state;
        assert_eq!(state.value("n"), Some(&json!("a2")));
        assert_eq!(
            state.value("late"),
            Some(&json!("b")),
            "the local write survives"
        );
    }

    /// A page read ahead merges exactly as one that was not.
    #[test]
    fn a_page_read_ahead_merges_as_one_that_was_not() {
        let (da, db, dc) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let (a, b, c) = (open(&da), Arc::new(open(&db)), open(&dc));
        b.update_peer(&a.id(), |_| ()).unwrap();
        c.update_peer(&a.id(), |_| ()).unwrap();
        let id = Uuid::new_v4();
        edit(&a, id, Edit::Put(fields(json!({"n": "a", "m": 1}))));
        for s in [&*b, &c] {
            commit(s, &a, &page(&a, id), None);
        }
        edit(&a, id, Edit::Patch(fields(json!({"n": "a2"}))));
        let changes = page(&a, id);
        let prepared = Prepared::default();
        b.read_ahead(&ReadAhead::of(&changes), &prepared);
        commit(&b, &a, &changes, Some(Arc::new(prepared)));
        commit(&c, &a, &changes, None);
        let (rb, rc) = (
            b.get("person", &id).unwrap().unwrap(),
            c.get("person", &id).unwrap().unwrap(),
        );
        assert_eq!(rb.state, rc.state);
        assert_eq!(rb.state.value("n"), Some(&json!("a2")));
        assert_eq!(
            b.history("person", &id).unwrap().len(),
            c.history("person", &id).unwrap().len()
        );
    }
}
