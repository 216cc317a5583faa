//! The binary page layout inside `msgpack+zstd` pages: columnar, so that zstd sees similar
//! values next to each other (every `status`, then every `notes`, ...), with instance ids
//! replaced by indexes into a per-page table and field stamps given by reference to the
//! record's version vector. A 100,000-record initial sync is a few MB this way instead of the
//! tens of MB a row-wise JSON encoding needs.

use crate::change::{RemoteChange, ReportedConflict};
use crate::clock::Hlc;
use crate::merge::Revision;
use crate::model::{FieldState, RecordState, VersionVector};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// A field's stamp: the writer's index, and its ts only when it is not the writer's latest
/// event on the record (the common case costs two bytes).
type PackedStamp = (u16, Option<u64>);

/// One field name's column: which records have it, their values and stamps.
#[derive(Serialize, Deserialize)]
struct Column {
    name: String,
    rows: Vec<u32>,
    values: Vec<Option<Value>>,
    stamps: Vec<PackedStamp>,
}

#[derive(Serialize, Deserialize)]
struct Packed {
    nodes: Vec<Uuid>,
    tables: Vec<String>,
    table: Vec<u16>,
    #[serde(with = "crate::signed::serde_bytes")]
    ids: Vec<u8>,
    /// Version vectors, with each ts as a delta from the previous record's first entry.
    vv: Vec<Vec<(u16, i64)>>,
    del_seen: Vec<Vec<(u16, u64)>>,
    deleted: Vec<Option<(u64, u16)>>,
    conflicts: Vec<Vec<ReportedConflict>>,
    columns: Vec<Column>,
    /// Sparse: (row, revisions) for the records that carry history (most carry none).
    history: Vec<(u32, Vec<Revision>)>,
}

struct Interner<T: std::hash::Hash + Eq + Clone> {
    items: Vec<T>,
    index: HashMap<T, u16>,
}

impl<T: std::hash::Hash + Eq + Clone> Interner<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn get(&mut self, v: &T) -> Result<u16, String> {
        if let Some(i) = self.index.get(v) {
            return Ok(*i);
        }
        let i =
            u16::try_from(self.items.len()).map_err(|_| "too many distinct values in a page")?;
        self.items.push(v.clone());
        self.index.insert(v.clone(), i);
        Ok(i)
    }
}

/// Packs changes into the columnar layout (MessagePack, not yet compressed).
pub fn pack(changes: &[RemoteChange]) -> Result<Vec<u8>, String> {
    let mut nodes = Interner::new();
    let mut tables = Interner::new();
    let mut p = Packed {
        nodes: vec![],
        tables: vec![],
        table: Vec::with_capacity(changes.len()),
        ids: Vec::with_capacity(changes.len() * 16),
        vv: Vec::with_capacity(changes.len()),
        del_seen: Vec::with_capacity(changes.len()),
        deleted: Vec::with_capacity(changes.len()),
        conflicts: Vec::with_capacity(changes.len()),
        columns: vec![],
        history: vec![],
    };
    let mut columns: BTreeMap<&str, Column> = BTreeMap::new();
    let mut prev_ts: u64 = 0;
    for (row, ch) in changes.iter().enumerate() {
        let s = &ch.state;
        p.table.push(tables.get(&ch.table)?);
        p.ids.extend_from_slice(ch.id.as_bytes());
        let mut vv = Vec::with_capacity(s.vv.len());
        for (n, ts) in &s.vv {
            vv.push((nodes.get(n)?, *ts as i64 - prev_ts as i64));
        }
        if let Some((_, ts)) = s.vv.iter().next() {
            prev_ts = *ts;
        }
        p.vv.push(vv);
        let mut ds = Vec::with_capacity(s.del_seen.len());
        for (n, ts) in &s.del_seen {
            ds.push((nodes.get(n)?, *ts));
        }
        p.del_seen.push(ds);
        p.deleted.push(match s.deleted {
            Some(h) => Some((h.ts, nodes.get(&h.node)?)),
            None => None,
        });
        p.conflicts.push(ch.conflicts.clone());
        if !ch.history.is_empty() {
            p.history.push((row as u32, ch.history.clone()));
        }
        for (name, f) in &s.fields {
            let node = nodes.get(&f.stamp.node)?;
            let ts = (s.vv.get(&f.stamp.node) != Some(&f.stamp.ts)).then_some(f.stamp.ts);
            let col = columns.entry(name).or_insert_with(|| Column {
                name: name.clone(),
                rows: vec![],
                values: vec![],
                stamps: vec![],
            });
            col.rows.push(row as u32);
            col.values.push(f.value.clone());
            col.stamps.push((node, ts));
        }
    }
    p.nodes = nodes.items;
    p.tables = tables.items;
    p.columns = columns.into_values().collect();
    rmp_serde::to_vec(&p).map_err(|e| e.to_string())
}

/// Deepest nesting accepted in a packed page, as serde_json allows in a JSON one: decoding
/// recurses per level, and MessagePack's own limit (1024) overflows a 2 MiB thread stack.
const MAX_DEPTH: usize = 128;

/// Unpacks [`pack`]'s layout, checking every index.
pub fn unpack(bytes: &[u8]) -> Result<Vec<RemoteChange>, String> {
    unpack_declared(bytes, usize::MAX)
}

/// Most field values a packed page may carry per declared record (summed over all columns).
pub const MAX_FIELDS_PER_RECORD: usize = 256;

/// Most version-vector (and `del_seen`) entries one record may carry.
pub const MAX_VV_ENTRIES: usize = 1024;

/// Like [`unpack`], for a page that declares `declared` records: before anything is allocated,
/// one pass over the bytes that builds nothing checks that every per-record column holds
/// exactly `declared` rows, that the field columns hold at most [`MAX_FIELDS_PER_RECORD`]
/// values per record and no record more than [`MAX_VV_ENTRIES`] version-vector entries. A
/// small compressed page that unpacks into millions of rows is refused at the cost of reading
/// it, not of building it.
pub fn unpack_declared(bytes: &[u8], declared: usize) -> Result<Vec<RemoteChange>, String> {
    if declared != usize::MAX {
        prescan(bytes, declared)?;
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    let p = Packed::deserialize(&mut de).map_err(|e| e.to_string())?;
    let n = p.table.len();
    if p.ids.len() != n * 16
        || p.vv.len() != n
        || p.del_seen.len() != n
        || p.deleted.len() != n
        || p.conflicts.len() != n
    {
        return Err("columns of different lengths".into());
    }
    let node = |i: u16| -> Result<Uuid, String> {
        p.nodes
            .get(i as usize)
            .copied()
            .ok_or_else(|| format!("instance index {i} out of range"))
    };
    let mut out = Vec::with_capacity(n);
    let mut prev_ts: u64 = 0;
    for row in 0..n {
        let table = p
            .tables
            .get(p.table[row] as usize)
            .cloned()
            .ok_or("table index out of range")?;
        let id = Uuid::from_slice(&p.ids[row * 16..row * 16 + 16]).map_err(|e| e.to_string())?;
        let mut vv = VersionVector::new();
        let mut first = None;
        for (i, d) in &p.vv[row] {
            let ts = (prev_ts as i64).checked_add(*d).ok_or("ts overflow")?;
            let ts = u64::try_from(ts).map_err(|_| "negative ts")?;
            first.get_or_insert(ts);
            vv.insert(node(*i)?, ts);
        }
        if let Some(f) = first {
            prev_ts = f;
        }
        let mut del_seen = VersionVector::new();
        for (i, ts) in &p.del_seen[row] {
            del_seen.insert(node(*i)?, *ts);
        }
        let deleted = match p.deleted[row] {
            Some((ts, i)) => Some(Hlc { ts, node: node(i)? }),
            None => None,
        };
        out.push(RemoteChange {
            table,
            id,
            state: RecordState {
                fields: BTreeMap::new(),
                vv,
                del_seen,
                deleted,
            },
            conflicts: p.conflicts[row].clone(),
            history: vec![],
        });
    }
    for (row, revisions) in p.history {
        let ch = out
            .get_mut(row as usize)
            .ok_or_else(|| format!("history row {row} out of range"))?;
        if !ch.history.is_empty() {
            return Err(format!("history row {row} given twice"));
        }
        ch.history = revisions;
    }
    for col in p.columns {
        if col.rows.len() != col.values.len() || col.rows.len() != col.stamps.len() {
            return Err(format!("column {:?} has ragged lengths", col.name));
        }
        for ((row, value), (ni, ts)) in col.rows.into_iter().zip(col.values).zip(col.stamps) {
            let ch = out
                .get_mut(row as usize)
                .ok_or_else(|| format!("row {row} out of range"))?;
            let writer = node(ni)?;
            let ts = match ts {
                Some(ts) => ts,
                None => *ch
                    .state
                    .vv
                    .get(&writer)
                    .ok_or("field stamp refers to a missing version vector entry")?,
            };
            ch.state.fields.insert(
                col.name.clone(),
                FieldState {
                    value,
                    stamp: Hlc { ts, node: writer },
                },
            );
        }
    }
    Ok(out)
}

/// The allocation-free pass of [`unpack_declared`]: walks the packed layout with
/// `IgnoredAny`, counting elements and stopping at the first count over its bound.
fn prescan(bytes: &[u8], declared: usize) -> Result<(), String> {
    use serde::de::{DeserializeSeed, Error, IgnoredAny, SeqAccess, Visitor};
    use std::fmt;

    /// How a sequence's elements are bounded and what each element is.
    #[derive(Clone, Copy)]
    enum Walk {
        /// Skip the whole value.
        Skip,
        /// A per-record column: exactly `declared` elements, each walked as `inner`.
        Rows(&'static Walk),
        /// A record's version vector: at most `MAX_VV_ENTRIES` entries.
        Entries,
        /// The field columns: count the values of every column against `budget`.
        Columns,
        /// One field column (name, rows, values, stamps): rows counted against the budget.
        Column,
        /// A column's row list.
        ColumnRows,
    }
    struct Seed<'a> {
        walk: Walk,
        declared: usize,
        budget: &'a std::cell::Cell<usize>,
    }
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            match self.walk {
                Walk::Skip => IgnoredAny::deserialize(d).map(|_| ()),
                _ => d.deserialize_seq(self),
            }
        }
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a packed page")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            let child = |walk: Walk| Seed {
                walk,
                declared: self.declared,
                budget: self.budget,
            };
            let mut n = 0usize;
            loop {
                let walk = match self.walk {
                    Walk::Rows(inner) => *inner,
                    Walk::Columns => Walk::Column,
                    // name, rows, values, stamps
                    Walk::Column if n == 1 => Walk::ColumnRows,
                    _ => Walk::Skip,
                };
                if a.next_element_seed(child(walk))?.is_none() {
                    break;
                }
                n += 1;
                match self.walk {
                    Walk::Rows(_) if n > self.declared => {
                        return Err(A::Error::custom(format!(
                            "page declares {} records but holds more",
                            self.declared
                        )))
                    }
                    Walk::Entries if n > MAX_VV_ENTRIES => {
                        return Err(A::Error::custom(format!(
                            "a record carries more than {MAX_VV_ENTRIES} version-vector entries"
                        )))
                    }
                    Walk::ColumnRows => {
                        let left = self.budget.get().checked_sub(1).ok_or_else(|| {
                            A::Error::custom(format!(
                                "page carries more than {MAX_FIELDS_PER_RECORD} field values \
                                 per declared record"
                            ))
                        })?;
                        self.budget.set(left);
                    }
                    _ => {}
                }
            }
            if matches!(self.walk, Walk::Rows(_)) && n != self.declared {
                return Err(A::Error::custom(format!(
                    "page declares {} records but holds {n}",
                    self.declared
                )));
            }
            Ok(())
        }
    }
    /// The top level: nodes, tables, table, ids, vv, del_seen, deleted, conflicts, columns.
    struct Top<'a> {
        declared: usize,
        budget: &'a std::cell::Cell<usize>,
    }
    impl<'de> Visitor<'de> for Top<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a packed page")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            const SKIP: Walk = Walk::Skip;
            const ENTRIES: Walk = Walk::Entries;
            let walks = [
                Walk::Skip,
                Walk::Skip,
                Walk::Rows(&SKIP),
                Walk::Skip,
                Walk::Rows(&ENTRIES),
                Walk::Rows(&ENTRIES),
                Walk::Rows(&SKIP),
                Walk::Rows(&SKIP),
                Walk::Columns,
            ];
            for walk in walks {
                let seed = Seed {
                    walk,
                    declared: self.declared,
                    budget: self.budget,
                };
                if a.next_element_seed(seed)?.is_none() {
                    break;
                }
            }
            while a.next_element::<IgnoredAny>()?.is_some() {}
            Ok(())
        }
    }
    let budget = std::cell::Cell::new(declared.max(1).saturating_mul(MAX_FIELDS_PER_RECORD));
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    serde::Deserializer::deserialize_seq(
        &mut de,
        Top {
            declared,
            budget: &budget,
        },
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u64, node: Uuid, other: Uuid) -> RemoteChange {
        let mut s = RecordState::default();
        s.vv.insert(node, 1000 + n);
        s.vv.insert(other, 7);
        s.fields.insert(
            "name".into(),
            FieldState {
                value: Some(Value::String(format!("n{n}"))),
                stamp: Hlc { ts: 1000 + n, node },
            },
        );
        s.fields.insert(
            "gone".into(),
            FieldState {
                value: None,
                stamp: Hlc { ts: 5, node: other },
            },
        );
        if n % 2 == 0 {
            s.del_seen.insert(other, 7);
            s.deleted = Some(Hlc { ts: 7, node: other });
        }
        RemoteChange {
            table: if n % 3 == 0 { "a" } else { "b" }.into(),
            id: Uuid::new_v4(),
            state: s,
            conflicts: vec![],
            // Every third record carries history, as records edited since creation do.
            history: if n % 3 == 1 {
                vec![crate::merge::Revision {
                    at: Hlc { ts: 1000 + n, node },
                    kind: crate::merge::RevisionKind::Update,
                    changes: vec![crate::merge::FieldChange {
                        field: "name".into(),
                        old: Some(Value::String("x".into())),
                        new: Some(Value::String(format!("n{n}"))),
                    }],
                    cause: crate::merge::Cause::Edit,
                    reconstructed: false,
                }]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn round_trips_exactly() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let changes: Vec<RemoteChange> = (0..50).map(|n| change(n, a, b)).collect();
        assert_eq!(unpack(&pack(&changes).unwrap()).unwrap(), changes);
        assert_eq!(unpack(&pack(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn bad_indexes_are_errors_not_panics() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut bytes = pack(&[change(1, a, b)]).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 0x5a;
            let _ = unpack(&bytes);
            bytes[i] ^= 0x5a;
        }
    }
}
