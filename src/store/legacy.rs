//! Store format 1 → 2: marks the history entries that a fieldsync older than protocol 2 rebuilt
//! from merged states, so `history` never presents them as exact.
//!
//! Before protocol 2 only a record's current state travelled; the receiving laptop wrote
//! history entries of its own for what a merge changed, one per stamp, with the old values it
//! happened to hold (so a field written twice on the maker arrived as one change from whatever
//! the receiver had, and values in between were lost). Those entries are the received ones
//! (`source` = peer or merge) whose revision has no `cause`: protocol 2 added `cause` to every
//! revision, and the compact (array) encoding of a [`Revision`] written before it has three
//! elements (`at`, `kind`, `changes`) instead of four or five, so the old entries are told
//! exactly, also in a format-1 database that a protocol-2 build has written to since (the
//! format key came before protocol 2). Revisions this laptop made itself (`source` = local) were
//! recorded by their maker with exact values and stay as they are.
//!
//! | key (see `keys.rs`)            | before (format 1)                          | after (format 2)                  |
//! |--------------------------------|--------------------------------------------|-----------------------------------|
//! | `H` table 0x00 id stamp        | `HistoryEntry` [[at, kind, changes], source, applied_at] | received, no `cause`: [[at, kind, changes, "edit", true], …]; others untouched |
//!
//! A creation kept only as a marker (`StoredRecord::created`) is rebuilt on reading by undoing
//! the later revisions, so it is shown as reconstructed whenever one of those is
//! (`creation_entry`).

use super::{decode_compact, encode_compact, keys, HistoryEntry, Source, StoreError};
use serde::de::IgnoredAny;
use serde::Deserialize;

/// Only what tells an old entry: the revision's optional `cause` and the entry's `source`
/// (rmp-serde wants every element of an array accounted for, hence the ignored ones).
#[derive(Deserialize)]
#[allow(dead_code)] // `applied_at` is read only to consume it
struct Probe {
    revision: ProbeRevision,
    source: Source,
    applied_at: IgnoredAny,
}

#[derive(Deserialize)]
#[allow(dead_code)] // read only to reach `cause`
struct ProbeRevision {
    at: IgnoredAny,
    kind: IgnoredAny,
    changes: IgnoredAny,
    #[serde(default)]
    cause: Option<IgnoredAny>,
    #[serde(default)]
    reconstructed: Option<IgnoredAny>,
}

/// True for an entry an older fieldsync rebuilt from a merge (received, without `cause`).
pub(crate) fn rebuilt_by_an_older_version(bytes: &[u8]) -> Result<bool, StoreError> {
    // Entries written since store format 6 may be compressed (`write::encode_history`).
    let p: Probe = decode_compact(&super::write::record_plain_bytes(bytes)?)?;
    Ok(p.revision.cause.is_none() && p.source != Source::Local)
}

/// The migration step 1 → 2 (see the module header): adds the marked copies of the old
/// received entries to `batch`. Returns how many it marked.
pub(crate) fn mark_reconstructed(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
) -> Result<u64, StoreError> {
    let mut marked = 0;
    for kv in tree.scan_prefix([keys::HISTORY]) {
        let (k, v) = kv?;
        if !rebuilt_by_an_older_version(&v)? {
            continue;
        }
        let mut e: HistoryEntry = decode_compact(&v)?;
        e.revision.reconstructed = true;
        batch.insert(k, encode_compact(&e));
        marked += 1;
    }
    if marked > 0 {
        tracing::warn!(
            "{marked} history entries were rebuilt by a fieldsync older than protocol 2 and may \
             be incomplete: `history` marks them as reconstructed"
        );
    }
    Ok(marked)
}

/// [`mark_reconstructed`] as a [`super::recovery::Migration`].
pub(crate) fn migrate_1_to_2(tree: &sled::Tree, batch: &mut sled::Batch) -> Result<(), StoreError> {
    mark_reconstructed(tree, batch).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Hlc;
    use crate::config::Config;
    use crate::merge::{Cause, FieldChange, Revision, RevisionKind};
    use crate::store::{recovery, LocalOp, Store};
    use serde::Serialize;
    use serde_json::json;
    use uuid::Uuid;

    /// A history entry exactly as format 1 before protocol 2 encoded it: no `cause`.
    #[derive(Serialize)]
    struct OldRevision {
        at: Hlc,
        kind: RevisionKind,
        changes: Vec<FieldChange>,
    }
    #[derive(Serialize)]
    struct OldEntry {
        revision: OldRevision,
        source: Source,
        applied_at: chrono::DateTime<chrono::Utc>,
    }

    fn put(s: &Store, id: Uuid, fields: serde_json::Value) {
        s.write_local(&[LocalOp {
            table: "person".into(),
            id,
            edit: crate::merge::Edit::Put(fields.as_object().unwrap().clone()),
        }])
        .unwrap();
    }

    /// Opens again once sled's flusher has let go of the dropped store's lock (bounded).
    fn reopen(dir: &std::path::Path) -> Store {
        (0..100)
            .find_map(|_| match Store::open(dir, Config::default()) {
                Err(crate::store::StoreError::Locked(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    None
                }
                other => Some(other.unwrap()),
            })
            .expect("the dropped store released its lock within 2 s")
    }

    #[test]
    fn an_old_history_is_marked_reconstructed_on_open_and_exact_entries_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let peer = Uuid::new_v4();
        let (rec, own) = (Uuid::new_v4(), Uuid::new_v4());
        let (me, merged_at) = {
            let s = Store::open(dir.path(), Config::default()).unwrap();
            // A record received from a peer before protocol 2: created there (a marker here),
            // then a merge wrote an invented "null → y" for a field the peer had set to "x"
            // and then "y".
            put(&s, rec, json!({"b": 1, "c": "y"}));
            put(&s, own, json!({"mine": true}));
            let me = s.id();
            let h = s.history("person", &rec).unwrap();
            let created = h[0].revision.at;
            let merged_at = Hlc {
                ts: created.ts + 1,
                node: peer,
            };
            let suffix = keys::record_suffix("person", &rec);
            let old = OldEntry {
                revision: OldRevision {
                    at: merged_at,
                    kind: RevisionKind::Update,
                    changes: vec![FieldChange {
                        field: "c".into(),
                        old: None,
                        new: Some(json!("y")),
                    }],
                },
                source: Source::Merge(peer),
                applied_at: chrono::Utc::now(),
            };
            s.tree()
                .insert(keys::history(&suffix, &merged_at), encode_compact(&old))
                .unwrap();
            // An own edit written before protocol 2: exact, and must stay so.
            let own_at = Hlc {
                ts: created.ts + 2,
                node: me,
            };
            let own_old = OldEntry {
                revision: OldRevision {
                    at: own_at,
                    kind: RevisionKind::Update,
                    changes: vec![FieldChange {
                        field: "mine".into(),
                        old: Some(json!(false)),
                        new: Some(json!(true)),
                    }],
                },
                source: Source::Local,
                applied_at: chrono::Utc::now(),
            };
            let own_suffix = keys::record_suffix("person", &own);
            s.tree()
                .insert(
                    keys::history(&own_suffix, &own_at),
                    encode_compact(&own_old),
                )
                .unwrap();
            // The database as an older version left it: format 1.
            s.tree()
                .insert(keys::meta("format"), crate::store::encode(&1u32))
                .unwrap();
            s.tree().flush().unwrap();
            (me, merged_at)
        };
        let s = reopen(dir.path());
        assert_eq!(
            recovery::stored_format(&s.tree()).unwrap(),
            recovery::FORMAT_VERSION
        );
        let h = s.history("person", &rec).unwrap();
        assert_eq!(h.len(), 2, "{h:?}");
        let merged = h.iter().find(|e| e.revision.at == merged_at).unwrap();
        assert!(merged.revision.reconstructed, "{merged:?}");
        assert_eq!(merged.revision.cause, Cause::Edit);
        assert_eq!(merged.revision.changes[0].new, Some(json!("y")));
        // `history` says so plainly (JSON and --diff).
        let j = crate::app::records::history_json(merged);
        assert_eq!(j["reconstructed"], true, "{j}");
        assert!(
            j["note"]
                .as_str()
                .unwrap()
                .contains("older than protocol 2"),
            "{j}"
        );
        let d = crate::cli::records::history_diff(merged);
        assert!(
            d.contains("approximate: not verified: reconstructed"),
            "{d}"
        );

        // The creation is rebuilt from that entry, so it is marked too.
        assert_eq!(h[0].revision.kind, RevisionKind::Create);
        assert!(h[0].revision.reconstructed, "{:?}", h[0]);
        // This laptop's own revisions are exact.
        let mine = s.history("person", &own).unwrap();
        assert!(mine.iter().all(|e| !e.revision.reconstructed), "{mine:?}");
        let exact = crate::app::records::history_json(&mine[0]);
        assert!(exact.get("reconstructed").is_none(), "{exact}");
        assert!(mine
            .iter()
            .any(|e| e.revision.at.node == me && e.revision.changes[0].field == "mine"));
        // A store migrated once is not migrated again, and new revisions are exact.
        drop(s);
        let s = reopen(dir.path());
        put(&s, rec, json!({"b": 2, "c": "y"}));
        let h = s.history("person", &rec).unwrap();
        assert_eq!(h.len(), 3);
        assert!(!h[2].revision.reconstructed);
        assert!(h[1].revision.reconstructed);
    }

    #[test]
    fn entries_written_by_protocol_2_in_a_format_1_store_are_not_marked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Config::default()).unwrap();
        let id = Uuid::new_v4();
        put(&s, id, json!({"a": 1}));
        put(&s, id, json!({"a": 2}));
        let mut batch = sled::Batch::default();
        assert_eq!(mark_reconstructed(&s.tree(), &mut batch).unwrap(), 0);
        // A received entry with a cause (protocol 2) is exact too.
        let e = HistoryEntry {
            revision: Revision {
                at: Hlc {
                    ts: 5,
                    node: Uuid::new_v4(),
                },
                kind: RevisionKind::Update,
                changes: vec![],
                cause: Cause::Edit,
                reconstructed: false,
            },
            source: Source::Peer(Uuid::new_v4()),
            applied_at: chrono::Utc::now(),
        };
        assert!(!rebuilt_by_an_older_version(&encode_compact(&e)).unwrap());
    }
}
