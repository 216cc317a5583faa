//! The key layout of the single sled tree. Every kind of entry has a one-byte prefix so that one
//! `apply_batch` can write a record, its feed entry, history, conflicts and counters atomically.
//!
//! | prefix | key after the prefix                          | value (rmp-serde)            |
//! |--------|-----------------------------------------------|------------------------------|
//! | `A`    | table, 0x00, dict id (u32 BE)                 | the table's zstd dictionary for record values (dict.rs, format ≥ 6) |
//! | `M`    | meta name (`instance`, `seq`, `clock`, ...)   | per name                     |
//! | `R`    | table, 0x00, id (16 bytes)                    | `StoredRecord`, zstd frame (format ≥ 4; plain before), with the table's `A` dictionary once it has one (format ≥ 6) |
//! | `F`    | seq (u64 BE)                                  | echo flag, [peer id], record key |
//! | `H`    | table, 0x00, id, stamp (24 bytes)             | `HistoryEntry` (compact), zstd frame with the table's `A` dictionary once it has one (format ≥ 6) |
//! | `C`    | conflict id (u64 BE)                          | `ConflictEntry`              |
//! | `X`    | table, 0x00, id, conflict id (u64 BE)         | empty: conflicts by record   |
//! | `D`    | table, 0x00, id, conflict fingerprint (32)    | conflict id (u64 BE): dedupe |
//! | `U`    | table, 0x00, field, 0x00, value JSON, 0x00, id| empty: unique index (a configured field: its JSON value; an import key, `unique.rs`: field or `F,G`, its text as a JSON string or an array of texts) |
//! | `T`    | table                                         | live and deleted counts      |
//! | `P`    | peer instance id (16 bytes)                   | `PeerRow` (sync_instance)    |
//! | `B`    | hold id (u64 BE)                              | `Hold`: deletes held by the brake |
//! | `I`    | import id (16), record id (16)                | staged import row (staging.rs) |
//! | `Z`    | table, 0x00, level (1), 0-2 id bytes          | range fingerprint (fingerprint.rs; raw 40 bytes) |
//! | `K`    | origin (16), hi ts (u64 BE)                   | signed commit (commits.rs)   |
//! | `S`    | origin (16), hi ts (u64 BE)                   | signature of an own `K` commit written unsigned (commits.rs) |
//! | `W`    | origin (16)                                   | member certificate, DER (commits.rs) |
//!
//! Table names never contain 0x00 and JSON text never contains a raw 0x00, so the separators
//! are unambiguous; ids are raw UUID bytes, so record keys sort like the ids' text.

use crate::clock::Hlc;
use uuid::Uuid;

pub(crate) const META: u8 = b'M';
pub(crate) const RECORD: u8 = b'R';
pub(crate) const FEED: u8 = b'F';
pub(crate) const HISTORY: u8 = b'H';
pub(crate) const CONFLICT: u8 = b'C';
pub(crate) const CONFLICT_BY_RECORD: u8 = b'X';
pub(crate) const UNIQUE: u8 = b'U';
pub(crate) const CONFLICT_DEDUPE: u8 = b'D';
pub(crate) const TABLE: u8 = b'T';
pub(crate) const PEER: u8 = b'P';
pub(crate) const HELD: u8 = b'B';

/// `table 0x00 id`: the identity of a record inside every record-scoped key.
pub(crate) fn record_suffix(table: &str, id: &Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(table.len() + 17);
    k.extend_from_slice(table.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Splits a record suffix back into table and id.
pub(crate) fn parse_record_suffix(k: &[u8]) -> Option<(String, Uuid)> {
    if k.len() < 17 || k[k.len() - 17] != 0 {
        return None;
    }
    let (t, rest) = k.split_at(k.len() - 17);
    let table = String::from_utf8(t.to_vec()).ok()?;
    Some((table, Uuid::from_slice(&rest[1..]).ok()?))
}

pub(crate) fn with_prefix(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![prefix];
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub(crate) fn meta(name: &str) -> Vec<u8> {
    with_prefix(META, &[name.as_bytes()])
}

pub(crate) fn record(suffix: &[u8]) -> Vec<u8> {
    with_prefix(RECORD, &[suffix])
}

/// Prefix of every record of one table.
pub(crate) fn table_records(table: &str) -> Vec<u8> {
    with_prefix(RECORD, &[table.as_bytes(), &[0]])
}

pub(crate) fn feed(seq: u64) -> Vec<u8> {
    with_prefix(FEED, &[&seq.to_be_bytes()])
}

/// A feed value: the record key, and the peer this state came from unchanged, if it did (so it
/// is never sent back to that peer): `0x00 suffix` or `0x01 peer(16) suffix`.
pub(crate) fn feed_value(suffix: &[u8], echo_of: Option<Uuid>) -> Vec<u8> {
    let mut v = Vec::with_capacity(suffix.len() + 17);
    match echo_of {
        Some(p) => {
            v.push(1);
            v.extend_from_slice(p.as_bytes());
        }
        None => v.push(0),
    }
    v.extend_from_slice(suffix);
    v
}

/// Splits a feed value into (echo peer, record key).
pub(crate) fn parse_feed_value(v: &[u8]) -> Option<(Option<Uuid>, &[u8])> {
    match v.first()? {
        0 => Some((None, &v[1..])),
        1 if v.len() > 17 => Some((Some(Uuid::from_slice(&v[1..17]).ok()?), &v[17..])),
        _ => None,
    }
}

pub(crate) fn history(suffix: &[u8], at: &Hlc) -> Vec<u8> {
    with_prefix(HISTORY, &[suffix, &at.to_key_bytes()])
}

pub(crate) fn history_of(suffix: &[u8]) -> Vec<u8> {
    with_prefix(HISTORY, &[suffix])
}

pub(crate) fn conflict(id: u64) -> Vec<u8> {
    with_prefix(CONFLICT, &[&id.to_be_bytes()])
}

pub(crate) fn conflict_by_record(suffix: &[u8], id: u64) -> Vec<u8> {
    with_prefix(CONFLICT_BY_RECORD, &[suffix, &id.to_be_bytes()])
}

pub(crate) fn conflicts_of(suffix: &[u8]) -> Vec<u8> {
    with_prefix(CONFLICT_BY_RECORD, &[suffix])
}

pub(crate) fn conflict_dedupe(suffix: &[u8], fingerprint: &[u8; 32]) -> Vec<u8> {
    with_prefix(CONFLICT_DEDUPE, &[suffix, fingerprint])
}

/// Prefix of every unique index entry of one field (or import key `F,G`) of a table.
pub(crate) fn unique_rule(table: &str, field: &str) -> Vec<u8> {
    with_prefix(UNIQUE, &[table.as_bytes(), &[0], field.as_bytes(), &[0]])
}

/// Prefix of the unique index entries for one value of one field.
pub(crate) fn unique_value(table: &str, field: &str, value_json: &str) -> Vec<u8> {
    with_prefix(
        UNIQUE,
        &[
            table.as_bytes(),
            &[0],
            field.as_bytes(),
            &[0],
            value_json.as_bytes(),
            &[0],
        ],
    )
}

pub(crate) fn table_counts(table: &str) -> Vec<u8> {
    with_prefix(TABLE, &[table.as_bytes()])
}

pub(crate) fn held(id: u64) -> Vec<u8> {
    with_prefix(HELD, &[&id.to_be_bytes()])
}

pub(crate) fn peer(id: &Uuid) -> Vec<u8> {
    with_prefix(PEER, &[id.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_values_round_trip() {
        let s = record_suffix("t", &Uuid::new_v4());
        let p = Uuid::new_v4();
        assert_eq!(
            parse_feed_value(&feed_value(&s, None)),
            Some((None, &s[..]))
        );
        assert_eq!(
            parse_feed_value(&feed_value(&s, Some(p))),
            Some((Some(p), &s[..]))
        );
    }

    #[test]
    fn record_suffix_round_trips() {
        let id = Uuid::new_v4();
        let s = record_suffix("person", &id);
        assert_eq!(parse_record_suffix(&s), Some(("person".to_string(), id)));
    }

    #[test]
    fn record_keys_sort_like_id_text() {
        let mut ids: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
        let mut keys: Vec<Vec<u8>> = ids.iter().map(|i| record(&record_suffix("t", i))).collect();
        ids.sort_by_key(|i| i.to_string());
        keys.sort();
        let back: Vec<Uuid> = keys
            .iter()
            .map(|k| parse_record_suffix(&k[1..]).unwrap().1)
            .collect();
        assert_eq!(back, ids);
    }
}
