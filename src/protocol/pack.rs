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
    #[serde(with = "serde_bytes_vec")]
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

/// Serializes `Vec<u8>` as one msgpack binary, not an array of integers.
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
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
