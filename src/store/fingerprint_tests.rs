//! The debug check for the fingerprints: after random local writes, pages (brake holds
//! included, approved or rejected), imports (one batch and staged) and restores on real
//! on-disk stores, the stored entries equal a recomputation from the records.

use crate::config::Config;
use crate::merge::Edit;
use crate::store::{ImportRow, LocalOp, PageCommit, RemoteChange, Store, UpdateMode};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

const TABLES: [&str; 2] = ["person", "site"];

/// A store's key/value pairs, as a backup holds them.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Clone, Debug)]
enum Op {
    Put(usize, usize, usize, u8),
    Patch(usize, usize, usize, u8),
    Delete(usize, usize, usize),
    /// Every record of one store to the other as one page (the brake may hold deletes).
    Page(usize),
    Import(usize, usize, Vec<(usize, u8)>),
    StagedImport(usize, usize, Vec<(usize, u8)>),
    Decide(usize, bool),
    Snapshot(usize),
    Restore(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..2usize;
    let t = 0..2usize;
    let id = 0..12usize;
    let rows = proptest::collection::vec((0..12usize, any::<u8>()), 0..6);
    prop_oneof![
        4 => (s.clone(), t.clone(), id.clone(), any::<u8>()).prop_map(|(s, t, i, v)| Op::Put(s, t, i, v)),
        2 => (s.clone(), t.clone(), id.clone(), any::<u8>()).prop_map(|(s, t, i, v)| Op::Patch(s, t, i, v)),
        2 => (s.clone(), t.clone(), id).prop_map(|(s, t, i)| Op::Delete(s, t, i)),
        3 => s.clone().prop_map(Op::Page),
        1 => (s.clone(), t.clone(), rows.clone()).prop_map(|(s, t, r)| Op::Import(s, t, r)),
        1 => (s.clone(), t, rows).prop_map(|(s, t, r)| Op::StagedImport(s, t, r)),
        1 => (s.clone(), any::<bool>()).prop_map(|(s, a)| Op::Decide(s, a)),
        1 => s.clone().prop_map(Op::Snapshot),
        1 => s.prop_map(Op::Restore),
    ]
}

fn ids() -> Vec<Uuid> {
    // Fixed ids sharing leading nibbles, so entries of every level are shared and emptied.
    (0..12u128)
        .map(|i| Uuid::from_u128((i % 3) << 124 | (i % 5) << 116 | i << 64 | 0x4000_8000_0000))
        .collect()
}

fn fields(v: u8) -> crate::model::Fields {
    json!({"n": v, "even": v % 2 == 0})
        .as_object()
        .unwrap()
        .clone()
}

fn all_changes(s: &Store) -> Vec<RemoteChange> {
    let mut out = Vec::new();
    for t in TABLES {
        for r in s.scan_ids(t, &[]) {
            let (id, _) = r.unwrap();
            if let Some(c) = s.outgoing_change(t, &id, &Default::default()).unwrap() {
                out.push(c);
            }
        }
    }
    out
}

fn run(ops: Vec<Op>) {
    let cfg = "[brake.tables.person]\npercent = 20\nmin_records = 2\n";
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let stores: Vec<Store> = dirs
        .iter()
        .map(|d| Store::open(d.path(), Config::parse(cfg, "test").unwrap()).unwrap())
        .collect();
    let ids = ids();
    let mut saved: [Option<Entries>; 2] = [None, None];
    for op in ops {
        let write = |s: usize, t: usize, i: usize, edit: Edit| {
            // Refusals (e.g. a patch of a missing record) write nothing; the check still holds.
            let _ = stores[s].write_one(LocalOp {
                table: TABLES[t].into(),
                id: ids[i],
                edit,
            });
        };
        match op {
            Op::Put(s, t, i, v) => write(s, t, i, Edit::Put(fields(v))),
            Op::Patch(s, t, i, v) => write(s, t, i, Edit::Patch(fields(v))),
            Op::Delete(s, t, i) => write(s, t, i, Edit::Delete),
            Op::Page(from) => {
                let (a, b) = (&stores[from], &stores[1 - from]);
                b.update_peer(&a.id(), |_| ()).unwrap();
                let changes = all_changes(a);
                let _ = b.commit_page(PageCommit {
                    peer: a.id(),
                    changes: &changes,
                    since: 0,
                    next: 0,
                    more: true,
                    knowledge: None,
                    ends_session: false,
                });
            }
            Op::Import(s, t, rows) | Op::StagedImport(s, t, rows) if rows.is_empty() => {
                let _ = (s, t);
            }
            Op::Import(s, t, rows) => {
                let rows = import_rows(&ids, &rows);
                let _ = stores[s].import_rows(TABLES[t], &rows);
            }
            Op::StagedImport(s, t, rows) => {
                let rows = import_rows(&ids, &rows);
                if let Ok(mut imp) = stores[s].stage_import(TABLES[t], 2) {
                    if imp.stage(rows).is_ok() {
                        let _ = imp.commit();
                    }
                }
            }
            Op::Decide(s, approve) => {
                if let Some(h) = stores[s].holds().unwrap().first() {
                    if approve {
                        stores[s].approve_hold(h.id).unwrap();
                    } else {
                        stores[s].reject_hold(h.id).unwrap();
                    }
                }
            }
            Op::Snapshot(s) => {
                saved[s] = Some(
                    stores[s].read_consistent(|v| v.entries().collect::<Result<_, _>>().unwrap()),
                );
            }
            Op::Restore(s) => {
                if let Some(entries) = saved[s].clone() {
                    stores[s].restore(entries, false).unwrap();
                }
            }
        }
        for s in &stores {
            let bad = s.check_fingerprints().unwrap();
            assert!(
                bad.is_empty(),
                "stale fingerprint entries after {op_name}: {bad:?}",
                op_name = "an op"
            );
        }
    }
    // And the sums answer like the records: counts per table.
    for s in &stores {
        for t in TABLES {
            let n = s.scan_ids(t, &[]).count() as u64;
            assert_eq!(s.range_sum(t, &[]).unwrap().count, n);
            let children: u64 = s
                .range_children(t, &[])
                .unwrap()
                .iter()
                .map(|c| c.count)
                .sum();
            assert_eq!(children, n);
        }
    }
}

fn import_rows(ids: &[Uuid], rows: &[(usize, u8)]) -> Vec<ImportRow> {
    let mut seen = std::collections::BTreeSet::new();
    rows.iter()
        .filter(|(i, _)| seen.insert(*i))
        .enumerate()
        .map(|(line, (i, v))| ImportRow {
            id: ids[*i],
            line: line as u64 + 1,
            fields: fields(*v),
            update: if v % 2 == 0 {
                UpdateMode::Replace
            } else {
                UpdateMode::Merge
            },
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn stored_fingerprints_always_equal_a_recomputation(ops in proptest::collection::vec(op(), 1..30)) {
        run(ops);
    }
}

#[test]
fn range_sums_at_every_depth_match_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Config::default()).unwrap();
    let ids: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
    for (n, id) in ids.iter().enumerate() {
        s.write_one(LocalOp {
            table: "person".into(),
            id: *id,
            edit: Edit::Put(fields(n as u8)),
        })
        .unwrap();
    }
    let probe = ids[7].simple().to_string();
    for depth in 0..=8 {
        let nibbles = super::parse_nibbles(&probe[..depth]).unwrap();
        let mut want = super::RangeSum::default();
        for (id, c) in s.range_items("person", &nibbles).unwrap() {
            want.add(&super::RangeSum::element(&id, &c));
        }
        assert_eq!(
            s.range_sum("person", &nibbles).unwrap(),
            want,
            "depth {depth}"
        );
        let mut from_children = super::RangeSum::default();
        for c in s.range_children("person", &nibbles).unwrap() {
            from_children.add(&c);
        }
        assert_eq!(from_children, want, "children at depth {depth}");
    }
}
