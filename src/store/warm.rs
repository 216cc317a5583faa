//! Work on an incoming page done before its turn to merge (see `sync::responder`), so that the
//! merge under the writer lock does less:
//! - [`Store::warm_records`] reads the stored versions of its records once, in key order, so
//!   that the merge finds their sled leaves in the cache instead of reading each from disk in
//!   the page's (random) order. Reads only; the merge reads every record again from its batch.
//! - [`prepare_page`] computes, for each record, what the merge needs of the incoming state
//!   if it stores that state as it is (a record new here: the bulk of an initial sync): its
//!   fingerprint element (`fingerprint.rs`, a SHA-256 of its canonical JSON) and its
//!   MessagePack (the bulk of the stored record's encoding). The merge uses them only for such
//!   a record, after checking it is the same record with the same version vector; for any
//!   other it computes both from the merged state as before.

use super::fingerprint::{self, RangeSum};
use super::write::encode_state_plain;
use super::{keys, Store};
use crate::change::RemoteChange;
use crate::model::VersionVector;
use uuid::Uuid;

impl Store {
    /// Reads the stored version of each record once, in key order, and drops it: sled keeps
    /// the leaves it read (present or not: an absent key's leaf is where the merge will write
    /// it) in its cache. Errors are ignored: the merge reads again and reports them.
    pub fn warm_records<'a>(&self, records: impl Iterator<Item = (&'a str, &'a Uuid)>) {
        let mut wanted: Vec<Vec<u8>> = records
            .map(|(table, id)| keys::record(&keys::record_suffix(table, id)))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let tree = self.tree();
        for k in wanted {
            let _ = tree.get(k);
        }
    }
}

/// What [`prepare_page`] computed for the records of one page, in page order.
#[derive(Debug, Default)]
pub struct PreparedPage {
    records: Vec<PreparedRecord>,
}

#[derive(Debug)]
pub(super) struct PreparedRecord {
    table: String,
    id: Uuid,
    /// The version vector of the state the element was computed from: the check that the
    /// change met at merge time is that state.
    vv: VersionVector,
    /// The fingerprint element of the incoming state as the merge stores it.
    element: RangeSum,
    /// The MessagePack of the incoming state as the merge stores it (`write::encode_state_plain`).
    state_plain: Vec<u8>,
}

impl PreparedRecord {
    /// The fingerprint element of the state.
    pub(super) fn element(&self) -> RangeSum {
        self.element
    }

    /// The MessagePack of the state, as a stored record holds it.
    pub(super) fn state_plain(&self) -> &[u8] {
        &self.state_plain
    }
}

/// Computes the fingerprint element of each incoming state as the merge would store it (explicit
/// `null` values dropped). Pure: needs no store, so it runs before the page's turn.
pub fn prepare_page(changes: &[RemoteChange]) -> PreparedPage {
    let records = changes
        .iter()
        .map(|ch| {
            let nulls = ch
                .state
                .fields
                .values()
                .any(|f| f.value == Some(serde_json::Value::Null));
            let (content, state_plain) = if nulls {
                // Rare: the state as the merge normalizes it.
                let mut s = ch.state.clone();
                for f in s.fields.values_mut() {
                    if f.value == Some(serde_json::Value::Null) {
                        f.value = None;
                    }
                }
                (fingerprint::content_hash(&s), encode_state_plain(&s))
            } else {
                (
                    fingerprint::content_hash(&ch.state),
                    encode_state_plain(&ch.state),
                )
            };
            PreparedRecord {
                table: ch.table.clone(),
                id: ch.id,
                vv: ch.state.vv.clone(),
                element: RangeSum::element(&ch.id, &content),
                state_plain,
            }
        })
        .collect();
    PreparedPage { records }
}

/// Walks a [`PreparedPage`] alongside the changes actually merged, which are the page's changes
/// or a subsequence of them (admission and the delete brake only leave changes out, in order).
pub(super) struct PreparedCursor<'p> {
    records: &'p [PreparedRecord],
    next: usize,
}

impl<'p> PreparedCursor<'p> {
    pub(super) fn new(page: Option<&'p PreparedPage>) -> Self {
        Self {
            records: page.map_or(&[], |p| p.records.as_slice()),
            next: 0,
        }
    }

    /// What was prepared for `ch`, if it was prepared for this very change (same table, id
    /// and version vector), skipping the prepared records of changes left out before it.
    pub(super) fn prepared_for(&mut self, ch: &RemoteChange) -> Option<&'p PreparedRecord> {
        let found = self.records[self.next..]
            .iter()
            .position(|r| r.id == ch.id && r.table == ch.table)?;
        let r = &self.records[self.next + found];
        self.next += found + 1;
        (r.vv == ch.state.vv).then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::super::write::{encode_record_plain, encode_state_plain, record_plain_from_parts};
    use super::super::{Created, Source, StoredRecord};
    use crate::clock::Hlc;
    use crate::model::{FieldState, RecordState};
    use serde_json::json;
    use uuid::Uuid;

    /// The record encoded from its prepared state is byte for byte the record encoded whole,
    /// for small and large positions, with and without a creation marker.
    #[test]
    fn a_record_encoded_in_parts_is_the_record_encoded_whole() {
        let node = Uuid::from_u128(7);
        let at = Hlc {
            ts: 0x1234_5678_9abc,
            node,
        };
        let mut state = RecordState::default();
        for (k, v) in [
            ("name", json!("Ana")),
            ("age", json!(41)),
            ("tags", json!(["a", "b"])),
        ] {
            state.fields.insert(
                k.to_string(),
                FieldState {
                    value: Some(v),
                    stamp: at,
                },
            );
        }
        state.fields.insert(
            "gone".into(),
            FieldState {
                value: None,
                stamp: at,
            },
        );
        state.vv.insert(node, at.ts);
        let mut deleted = state.clone();
        deleted.del_seen.insert(node, at.ts + 1);
        deleted.deleted = Some(Hlc {
            ts: at.ts + 1,
            node,
        });
        deleted.vv.insert(node, at.ts + 1);
        for st in [state, deleted] {
            for (seq, conflict_seq) in [(1u64, 0u64), (300, 127), (u64::MAX, 1 << 40)] {
                for created in [
                    None,
                    Some(Created {
                        at,
                        source: Source::Peer(node),
                        applied_at: chrono::Utc::now(),
                    }),
                ] {
                    let rec = StoredRecord {
                        state: st.clone(),
                        seq,
                        conflict_seq,
                        created,
                    };
                    assert_eq!(
                        record_plain_from_parts(&rec, &encode_state_plain(&rec.state)),
                        encode_record_plain(&rec)
                    );
                }
            }
        }
    }
}
