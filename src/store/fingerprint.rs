//! Range fingerprints of each table, kept up to date at write time, for set reconciliation
//! (`verify` and anti-entropy, `sync/reconcile.rs`, docs/PROTOCOL.md `fieldsync_reconcile`).
//!
//! A record's *element* is `SHA-256(id bytes ++ content hash)` read as a 256-bit little-endian
//! integer, where the content hash is SHA-256 of the canonical JSON of
//! `{"deleted": bool, "fields": {live fields}}` (the same content hash `fieldsync_digest` has
//! always used). A range's [`RangeSum`] is its record count and the sum of its elements modulo
//! 2^256: adding and removing a record is one addition or subtraction, order does not matter
//! and a range's sum is the sum of its sub-ranges' (negentropy's fingerprint, hoytech/negentropy).
//!
//! Ranges are id prefixes, counted in hex digits (*nibbles*) of the id: ids are UUID v4 or v5,
//! uniformly spread, so each nibble splits a range in 16 about equal parts. Three levels of
//! sums are stored per table; deeper ranges are summed from the records themselves.
//!
//! | key                                         | value (raw, not rmp)                         |
//! |---------------------------------------------|----------------------------------------------|
//! | `Z` table 0x00 0x00                         | whole table: count (u64 BE) ++ sum (32 B LE) |
//! | `Z` table 0x00 0x01 id[0]                   | ids starting with that byte: same shape      |
//! | `Z` table 0x00 0x02 id[0] id[1]             | ids starting with those two bytes            |
//!
//! An entry whose count falls to zero is removed. Every table has them, local-only ones too
//! (so a change of `local_only` in the config needs no rebuild; they are never sent). Every
//! put or remove of a record key in a [`super::Txn`] adds the record's change to the sums
//! committed in the same batch, so no write path can leave them stale (one exception: an import's
//! roll-forward takes them out of its chunks and adds them all in its last batch, or recomputes
//! the table's after a crash — `staging.rs`, `Sums`); a restore rebuilds them from the restored records in its batch;
//! a store of format 1 gets them from the format-2 migration (`recovery.rs`).

use super::{keys, StoreError, StoredRecord};
use crate::model::RecordState;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Key prefix of the fingerprint entries.
pub(crate) const FINGERPRINT: u8 = b'Z';

/// Nibbles of the deepest stored level (two id bytes).
pub const STORED_NIBBLES: usize = 4;

/// Count and sum (mod 2^256) of the elements of a range. Arithmetic wraps, so a difference of
/// two sums is a sum too (the delta a batch adds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeSum {
    /// Records in the range.
    pub count: u64,
    sum: [u64; 4],
}

impl RangeSum {
    /// One record's element: `SHA-256(id ++ content)`, count 1.
    pub fn element(id: &Uuid, content: &[u8; 32]) -> RangeSum {
        let mut h = Sha256::new();
        h.update(id.as_bytes());
        h.update(content);
        let d: [u8; 32] = h.finalize().into();
        let mut sum = [0u64; 4];
        for (i, limb) in sum.iter_mut().enumerate() {
            *limb = u64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        }
        RangeSum { count: 1, sum }
    }

    /// Adds `o` (mod 2^256; counts wrap).
    pub fn add(&mut self, o: &RangeSum) {
        self.count = self.count.wrapping_add(o.count);
        let mut carry = 0u64;
        for i in 0..4 {
            let (a, c1) = self.sum[i].overflowing_add(o.sum[i]);
            let (b, c2) = a.overflowing_add(carry);
            self.sum[i] = b;
            carry = u64::from(c1) + u64::from(c2);
        }
    }

    /// Subtracts `o`.
    pub fn sub(&mut self, o: &RangeSum) {
        self.add(&o.negated());
    }

    fn negated(&self) -> RangeSum {
        // Two's complement: invert and add one.
        let mut n = RangeSum {
            count: self.count.wrapping_neg(),
            sum: [!self.sum[0], !self.sum[1], !self.sum[2], !self.sum[3]],
        };
        let one = RangeSum {
            count: 0,
            sum: [1, 0, 0, 0],
        };
        n.add(&one);
        n
    }

    /// True for the empty range (and a zero delta).
    pub fn is_zero(&self) -> bool {
        self.count == 0 && self.sum == [0; 4]
    }

    /// The fingerprint sent on the wire: the first `N` bytes of `SHA-256(sum ++ count)` (sum 32
    /// bytes little-endian, count u64 little-endian); all zeros for an empty range.
    pub fn fingerprint<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        if self.count == 0 {
            return out;
        }
        let mut h = Sha256::new();
        for limb in self.sum {
            h.update(limb.to_le_bytes());
        }
        h.update(self.count.to_le_bytes());
        out.copy_from_slice(&h.finalize()[..N]);
        out
    }

    fn to_bytes(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&self.count.to_be_bytes());
        for limb in self.sum {
            v.extend_from_slice(&limb.to_le_bytes());
        }
        v
    }

    fn from_bytes(b: &[u8]) -> Result<RangeSum, StoreError> {
        if b.len() != 40 {
            return Err(StoreError::Decode(format!(
                "fingerprint entry of {} bytes, expected 40",
                b.len()
            )));
        }
        let mut sum = [0u64; 4];
        for (i, limb) in sum.iter_mut().enumerate() {
            *limb = u64::from_le_bytes(b[8 + i * 8..16 + i * 8].try_into().expect("8 bytes"));
        }
        Ok(RangeSum {
            count: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            sum,
        })
    }
}

/// SHA-256 of the canonical JSON of `{"deleted": bool, "fields": {live fields}}`: what two
/// replicas must agree on for a record to count as the same.
///
/// Written straight from the state (the keys of both objects are already in byte order: the
/// literal ones, and `fields`, a `BTreeMap`), not through a copy of its live fields as a JSON
/// value: this runs for every record written.
pub fn content_hash(state: &RecordState) -> [u8; 32] {
    let mut text = Vec::with_capacity(256);
    text.extend_from_slice(if state.is_alive() {
        br#"{"deleted":false,"fields":{"#
    } else {
        br#"{"deleted":true,"fields":{"#
    });
    let mut first = true;
    for (name, f) in &state.fields {
        let Some(v) = &f.value else { continue };
        if !first {
            text.push(b',');
        }
        first = false;
        crate::canonical::write_key(name, &mut text);
        crate::canonical::write_canonical(v, &mut text);
    }
    text.extend_from_slice(b"}}");
    Sha256::digest(&text).into()
}

/// The key of a stored level: `level` 0, 1 or 2 with that many leading id bytes.
pub(crate) fn level_key(table: &str, id_bytes: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(table.len() + 5);
    k.push(FINGERPRINT);
    k.extend_from_slice(table.as_bytes());
    k.push(0);
    k.push(id_bytes.len() as u8);
    k.extend_from_slice(id_bytes);
    k
}

/// The three keys a record of `id` counts in.
pub(crate) fn keys_of(table: &str, id: &Uuid) -> [Vec<u8>; 3] {
    let b = id.as_bytes();
    [
        level_key(table, &[]),
        level_key(table, &b[..1]),
        level_key(table, &b[..2]),
    ]
}

/// Adds `delta` to the entry under `key` as `tree` has it; `None` = remove the entry.
pub(crate) fn apply_delta(
    tree: &sled::Tree,
    key: &[u8],
    delta: &RangeSum,
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut cur = match tree.get(key)? {
        Some(v) => RangeSum::from_bytes(&v)?,
        None => RangeSum::default(),
    };
    cur.add(delta);
    Ok((!cur.is_zero()).then(|| cur.to_bytes()))
}

/// Every fingerprint entry, computed from the records in `tree` (for the migration, a restore
/// and the consistency check). Reads every record once.
pub(crate) fn build_from_records(
    records: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>>,
) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
    let mut sums: BTreeMap<Vec<u8>, RangeSum> = BTreeMap::new();
    for kv in records {
        let (k, v) = kv?;
        let (table, id) = keys::parse_record_suffix(&k[1..])
            .ok_or_else(|| StoreError::Decode("bad record key".into()))?;
        let rec = super::write::decode_record(&v)?;
        let e = RangeSum::element(&id, &content_hash(&rec.state));
        for key in keys_of(&table, &id) {
            sums.entry(key).or_default().add(&e);
        }
    }
    Ok(sums
        .into_iter()
        .filter(|(_, s)| !s.is_zero())
        .map(|(k, s)| (k, s.to_bytes()))
        .collect())
}

/// The records of `tree` as raw key/value pairs (input of [`build_from_records`]).
pub(crate) fn raw_records(
    tree: &sled::Tree,
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
    tree.scan_prefix([keys::RECORD]).map(|kv| {
        let (k, v) = kv?;
        Ok((k.to_vec(), v.to_vec()))
    })
}

/// The format-1 → 2 migration: adds the fingerprint entries of every record.
pub(crate) fn migrate_add_fingerprints(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
) -> Result<(), StoreError> {
    for (k, v) in build_from_records(raw_records(tree))? {
        batch.insert(k, v);
    }
    Ok(())
}

/// Parses a hex digit string (a range prefix) into nibbles.
pub fn parse_nibbles(hex: &str) -> Option<Vec<u8>> {
    if hex.len() > 32 {
        return None;
    }
    hex.chars()
        .map(|c| c.to_digit(16).map(|d| d as u8))
        .collect()
}

/// Whether `id` starts with `nibbles`.
pub fn id_has_prefix(id: &Uuid, nibbles: &[u8]) -> bool {
    let b = id.as_bytes();
    nibbles.iter().enumerate().all(|(i, n)| nibble(b, i) == *n)
}

fn nibble(bytes: &[u8], i: usize) -> u8 {
    let b = bytes[i / 2];
    if i % 2 == 0 {
        b >> 4
    } else {
        b & 0x0f
    }
}

/// The whole id bytes a nibble prefix fixes.
fn byte_prefix(nibbles: &[u8]) -> Vec<u8> {
    nibbles
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0] << 4) | c[1])
        .collect()
}

impl super::Store {
    /// Count and sum of the records of `table` whose id starts with `nibbles` (hex digits as
    /// values 0..=15). Up to [`STORED_NIBBLES`] read from at most 16 stored entries (one for
    /// 0, 2 and 4 nibbles); deeper, from the records.
    pub fn range_sum(&self, table: &str, nibbles: &[u8]) -> Result<RangeSum, StoreError> {
        if nibbles.is_empty() {
            return self.stored_sum(&level_key(table, &[]));
        }
        if nibbles.len() > STORED_NIBBLES {
            let mut s = RangeSum::default();
            for (id, c) in self.range_items(table, nibbles)? {
                s.add(&RangeSum::element(&id, &c));
            }
            return Ok(s);
        }
        let mut s = RangeSum::default();
        for (child, sum) in self.stored_under(table, &nibbles[..nibbles.len() - 1])? {
            if child == nibbles[nibbles.len() - 1] {
                s.add(&sum);
            }
        }
        Ok(s)
    }

    /// The sums of the 16 ranges one nibble below `nibbles`.
    pub fn range_children(
        &self,
        table: &str,
        nibbles: &[u8],
    ) -> Result<[RangeSum; 16], StoreError> {
        let mut out = [RangeSum::default(); 16];
        if nibbles.len() < STORED_NIBBLES {
            for (child, sum) in self.stored_under(table, nibbles)? {
                out[child as usize].add(&sum);
            }
        } else {
            let depth = nibbles.len();
            for (id, c) in self.range_items(table, nibbles)? {
                if depth < 32 {
                    out[nibble(id.as_bytes(), depth) as usize].add(&RangeSum::element(&id, &c));
                }
            }
        }
        Ok(out)
    }

    /// Every record of `table` whose id starts with `nibbles`, with its content hash, in id
    /// order. Reads the records.
    pub fn range_items(
        &self,
        table: &str,
        nibbles: &[u8],
    ) -> Result<Vec<(Uuid, [u8; 32])>, StoreError> {
        let mut out = Vec::new();
        let whole = byte_prefix(nibbles);
        // An odd digit count fixes half of the next byte: scan the 16 byte values it allows,
        // never the whole of the shorter prefix (ids need not be spread evenly).
        let prefixes: Vec<Vec<u8>> = if nibbles.len() % 2 == 1 {
            let high = nibbles[nibbles.len() - 1] << 4;
            (0..16u8)
                .map(|low| {
                    let mut p = whole.clone();
                    p.push(high | low);
                    p
                })
                .collect()
        } else {
            vec![whole]
        };
        for p in prefixes {
            for r in self.scan_ids(table, &p) {
                let (id, rec) = r?;
                out.push((id, content_hash(&rec.state)));
            }
        }
        Ok(out)
    }

    fn stored_sum(&self, key: &[u8]) -> Result<RangeSum, StoreError> {
        match self.tree().get(key)? {
            Some(v) => RangeSum::from_bytes(&v),
            None => Ok(RangeSum::default()),
        }
    }

    /// Stored entries one nibble below `nibbles` (fewer than [`STORED_NIBBLES`]), as (that
    /// nibble, sum); with an even prefix the next level's entries are grouped by their high
    /// nibble, with an odd one they are the children themselves.
    fn stored_under(&self, table: &str, nibbles: &[u8]) -> Result<Vec<(u8, RangeSum)>, StoreError> {
        let depth = nibbles.len();
        let level = depth / 2 + 1;
        let mut prefix = level_key(table, &byte_prefix(nibbles));
        // level_key wrote the prefix's byte count as the level: put the level we scan instead.
        let at = table.len() + 2;
        prefix[at] = level as u8;
        let mut out = Vec::new();
        for kv in self.tree().scan_prefix(&prefix) {
            let (k, v) = kv?;
            let id_bytes = &k[at + 1..];
            if id_bytes.len() != level {
                continue;
            }
            if depth % 2 == 1 && id_bytes[level - 1] >> 4 != nibbles[depth - 1] {
                continue;
            }
            out.push((nibble(id_bytes, depth), RangeSum::from_bytes(&v)?));
        }
        Ok(out)
    }

    /// Recomputes every fingerprint entry from the records and compares with the stored ones;
    /// returns the keys that differ (hex), empty when consistent. Reads the whole store.
    pub fn check_fingerprints(&self) -> Result<Vec<String>, StoreError> {
        let want = build_from_records(raw_records(&self.tree()))?;
        let mut have = BTreeMap::new();
        for kv in self.tree().scan_prefix([FINGERPRINT]) {
            let (k, v) = kv?;
            have.insert(k.to_vec(), v.to_vec());
        }
        let mut bad: Vec<String> = Vec::new();
        for (k, v) in &want {
            if have.get(k) != Some(v) {
                bad.push(hex::encode(k));
            }
        }
        for k in have.keys() {
            if !want.contains_key(k) {
                bad.push(hex::encode(k));
            }
        }
        Ok(bad)
    }
}

/// The element of a stored record (for write paths that hold the record).
pub(crate) fn element_of(id: &Uuid, rec: &StoredRecord) -> RangeSum {
    RangeSum::element(id, &content_hash(&rec.state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_and_subtract_in_any_order() {
        let a = RangeSum::element(&Uuid::new_v4(), &[1; 32]);
        let b = RangeSum::element(&Uuid::new_v4(), &[2; 32]);
        let mut x = RangeSum::default();
        x.add(&a);
        x.add(&b);
        let mut y = RangeSum::default();
        y.add(&b);
        y.add(&a);
        assert_eq!(x, y);
        x.sub(&a);
        assert_eq!(x, b);
        x.sub(&b);
        assert!(x.is_zero());
        assert_eq!(x.fingerprint::<8>(), [0; 8]);
        assert_ne!(b.fingerprint::<8>(), [0; 8]);
        assert_eq!(RangeSum::from_bytes(&b.to_bytes()).unwrap(), b);
    }

    #[test]
    fn content_hash_is_the_hash_of_the_canonical_json_of_deleted_and_live_fields() {
        use crate::model::FieldState;
        let at = crate::clock::Hlc {
            ts: 7,
            node: Uuid::new_v4(),
        };
        let mut state = RecordState::default();
        for (k, v) in [
            ("b\"é", Some(serde_json::json!({"z": 1, "a": [true, null]}))),
            ("a", Some(serde_json::json!("x\n"))),
            ("gone", None),
            ("n", Some(serde_json::json!(1.25))),
        ] {
            state.fields.insert(
                k.into(),
                FieldState {
                    value: v,
                    stamp: at,
                },
            );
        }
        state.vv.insert(at.node, at.ts);
        let want = |s: &RecordState| -> [u8; 32] {
            let content = serde_json::json!({
                "deleted": !s.is_alive(),
                "fields": serde_json::Value::Object(s.live_fields()),
            });
            Sha256::digest(crate::canonical::canonical_json(&content).as_bytes()).into()
        };
        assert_eq!(content_hash(&state), want(&state));
        state.deleted = Some(at);
        state.del_seen = state.vv.clone();
        assert!(!state.is_alive());
        assert_eq!(content_hash(&state), want(&state));
        assert_eq!(
            content_hash(&RecordState::default()),
            want(&RecordState::default())
        );
    }

    #[test]
    fn nibble_prefixes() {
        let id = Uuid::parse_str("3f0a0000-0000-4000-8000-000000000000").unwrap();
        assert!(id_has_prefix(&id, &parse_nibbles("3f0").unwrap()));
        assert!(!id_has_prefix(&id, &parse_nibbles("3f1").unwrap()));
        assert_eq!(byte_prefix(&parse_nibbles("3f0").unwrap()), vec![0x3f]);
        assert!(parse_nibbles("xyz").is_none());
    }
}

#[cfg(test)]
#[path = "fingerprint_tests.rs"]
mod randomized;
