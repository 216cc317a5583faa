//! Record dictionaries: one zstd dictionary per table, trained once from the table's first
//! records, so that each record value and history entry (compressed on its own, see
//! `write::encode_record` and `write::encode_history`)
//! shares the field names, stamps and common values with its neighbours instead of spelling
//! them out: a gen.py record takes ~340 bytes compressed alone and ~135 with its table's
//! dictionary (bench/RESULTS.md, session 5), and sled keeps ~3 bytes on disk per value byte.
//!
//! | prefix | key after the prefix            | value                                            |
//! |--------|---------------------------------|--------------------------------------------------|
//! | `A`    | table, 0x00, dict id (u32 BE)   | a zstd dictionary (zstd's own format; its header carries the same id) |
//!
//! `A` sorts before every other prefix, so a backup (the tree's pairs in key order) holds a
//! table's dictionary before any record that needs it, and a restore can decode as it reads.
//!
//! Why values stay readable without any other bookkeeping: a value compressed with a
//! dictionary is a zstd frame whose header names the dictionary's id (zstd's `Dictionary_ID`
//! field); one compressed alone names none. The id is derived from the dictionary's content
//! (SHA-256), so two dictionaries with the same id are the same dictionary, and every
//! dictionary of every open store can sit in one process-wide registry for decoding
//! ([`decoder`]). A table's dictionary never changes once written (store format 6): values
//! written before it existed stay frames without one.
//!
//! When a dictionary is trained: the first time a record of a table is written while the
//! table already holds [`DICT_MIN_RECORDS`] records (committed, counted by its `T` entry) and no
//! dictionary. It is trained from up to [`DICT_SAMPLES`] of those records (in key order, i.e.
//! random ids) and inserted into the tree before the batch that first uses it is applied: sled
//! recovers a prefix of its log, so a value that needs it is never durable without it (a
//! dictionary whose batch failed is kept, unused, and harmless).

use super::{keys, Store, StoreError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use zstd::zstd_safe::{CDict, DDict};

/// The key prefix of the dictionaries (see the table above).
pub(crate) const DICT: u8 = b'A';
/// A table gets its dictionary once it holds this many records: enough to train from, and a
/// table this small costs little disk without one.
pub const DICT_MIN_RECORDS: u64 = 1_000;
/// At most this many records are sampled to train a dictionary (~1.3 MB of gen.py records;
/// training from 1,008 of them took 118 ms on the loaded 2-core bench machine, once per table,
/// under the writer lock).
pub const DICT_SAMPLES: usize = 2_000;
/// Size of a trained dictionary, bytes. 16 KiB: measured on gen.py records, a value takes ~135
/// bytes with it (session 3's estimate: 118), and the dictionary is stored once per table.
pub const DICT_BYTES: usize = 16 << 10;
/// zstd level for records compressed with a dictionary.
const DICT_LEVEL: i32 = 3;
/// zstd's dictionary magic number (little-endian 0xEC30A437), the first 4 bytes of a trained
/// dictionary; the next 4 are its id (little-endian).
const DICT_MAGIC: [u8; 4] = [0x37, 0xa4, 0x30, 0xec];

/// The dictionaries every open store holds, by id, ready for decoding. Process-wide because
/// a value names its dictionary by id and the decode paths read raw values without a store at
/// hand; ids are content hashes, so stores never disagree about an id.
static DECODERS: LazyLock<RwLock<HashMap<u32, Arc<DDict<'static>>>>> =
    LazyLock::new(Default::default);

/// The decoding dictionary with this id, if a store opened in this process holds it.
pub(crate) fn decoder(id: u32) -> Option<Arc<DDict<'static>>> {
    DECODERS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned()
}

/// Makes a dictionary available to [`decoder`]; returns its id (from its header), or `None`
/// when the bytes are not a zstd dictionary.
fn register(dict: &[u8]) -> Option<u32> {
    let id = dict_id(dict)?;
    let mut map = DECODERS.write().unwrap_or_else(|e| e.into_inner());
    map.entry(id)
        .or_insert_with(|| Arc::new(DDict::create(dict)));
    Some(id)
}

/// The id in a dictionary's header.
fn dict_id(dict: &[u8]) -> Option<u32> {
    if dict.len() < 8 || dict[..4] != DICT_MAGIC {
        return None;
    }
    Some(u32::from_le_bytes(dict[4..8].try_into().ok()?))
}

/// The key of a table's dictionary.
fn dict_key(table: &str, id: u32) -> Vec<u8> {
    keys::with_prefix(DICT, &[table.as_bytes(), &[0], &id.to_be_bytes()])
}

/// A table's dictionary, as [`Dicts`] holds it.
enum TableDict {
    /// Ready for compressing.
    Ready(Arc<CDict<'static>>),
    /// Training failed (too little to learn from); not retried until the store is reopened.
    Failed,
}

/// The compression dictionaries of one store, by table (decoding ones are process-wide).
#[derive(Default)]
pub(crate) struct Dicts {
    tables: RwLock<HashMap<String, TableDict>>,
}

impl Dicts {
    /// Loads every dictionary the tree holds (and registers it for decoding).
    pub(crate) fn load(tree: &sled::Tree) -> Result<Dicts, StoreError> {
        let d = Dicts::default();
        d.reload(tree)?;
        Ok(d)
    }

    /// Replaces what is held by what the tree holds now (after a restore).
    pub(crate) fn reload(&self, tree: &sled::Tree) -> Result<(), StoreError> {
        let mut tables = HashMap::new();
        for kv in tree.scan_prefix([DICT]) {
            let (k, v) = kv?;
            let table = parse_key(&k).ok_or_else(|| {
                StoreError::Decode("a record dictionary's key is malformed".into())
            })?;
            if register(&v).is_none() {
                return Err(StoreError::Decode(format!(
                    "the record dictionary of table {table} is not a zstd dictionary"
                )));
            }
            tables.insert(
                table,
                TableDict::Ready(Arc::new(CDict::create(&v, DICT_LEVEL))),
            );
        }
        *self.tables.write().unwrap_or_else(|e| e.into_inner()) = tables;
        Ok(())
    }

    fn get(&self, table: &str) -> Option<Option<Arc<CDict<'static>>>> {
        let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
        match tables.get(table)? {
            TableDict::Ready(c) => Some(Some(c.clone())),
            TableDict::Failed => Some(None),
        }
    }
}

/// The table of a dictionary key.
fn parse_key(k: &[u8]) -> Option<String> {
    let body = k.strip_prefix(&[DICT])?;
    if body.len() < 5 || body[body.len() - 5] != 0 {
        return None;
    }
    String::from_utf8(body[..body.len() - 5].to_vec()).ok()
}

/// Registers a dictionary met while restoring a backup (its pairs come in key order, so before
/// the records that need it), so that those records decode; returns its table and the
/// dictionary ready for compressing, for records the restore writes anew.
pub(crate) fn register_restored(
    k: &[u8],
    v: &[u8],
) -> Result<(String, Arc<CDict<'static>>), StoreError> {
    match (parse_key(k), register(v)) {
        (Some(table), Some(_)) => Ok((table, Arc::new(CDict::create(v, DICT_LEVEL)))),
        _ => Err(StoreError::Decode(
            "a record dictionary in the backup is malformed".into(),
        )),
    }
}

impl Store {
    /// The dictionary to compress a record of `table` with, training it first when the table
    /// has grown to [`DICT_MIN_RECORDS`] without one (called from the write path: under the
    /// writer lock, or by an import's roll-forward building its next chunk). `None`: compress
    /// the record alone.
    pub(super) fn record_dict(
        &self,
        table: &str,
    ) -> Result<Option<Arc<CDict<'static>>>, StoreError> {
        if let Some(d) = self.dicts.get(table) {
            return Ok(d);
        }
        let count = match self.tree().get(keys::table_counts(table))? {
            Some(v) => {
                let c: super::TableCounts = super::decode(&v)?;
                c.live + c.deleted
            }
            None => 0,
        };
        if count < DICT_MIN_RECORDS {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let mut samples = Vec::with_capacity(DICT_SAMPLES);
        for kv in self
            .tree()
            .scan_prefix(keys::table_records(table))
            .take(DICT_SAMPLES)
        {
            let (_, v) = kv?;
            samples.push(super::write::record_plain_bytes(&v)?);
        }
        let mut tables = self.dicts.tables.write().unwrap_or_else(|e| e.into_inner());
        // An import's roll-forward builds chunks outside the writer lock (`staging.rs`), so
        // another writer may have trained one meanwhile: keep the first, one dictionary a table.
        match tables.get(table) {
            Some(TableDict::Ready(c)) => return Ok(Some(c.clone())),
            Some(TableDict::Failed) => return Ok(None),
            None => {}
        }
        let Some(dict) = train(&samples) else {
            tracing::info!(
                table,
                "no record dictionary could be trained; records are compressed one by one"
            );
            tables.insert(table.to_string(), TableDict::Failed);
            return Ok(None);
        };
        let id = register(&dict).expect("a trained dictionary has a header");
        self.tree().insert(dict_key(table, id), dict.as_slice())?;
        let c = Arc::new(CDict::create(&dict, DICT_LEVEL));
        tables.insert(table.to_string(), TableDict::Ready(c.clone()));
        tracing::debug!(
            table,
            id,
            bytes = dict.len(),
            samples = samples.len(),
            ms = started.elapsed().as_millis() as u64,
            "trained a record dictionary"
        );
        Ok(Some(c))
    }

    /// Reloads the dictionaries after the tree was replaced (restore).
    pub(super) fn reload_dicts(&self) -> Result<(), StoreError> {
        self.dicts.reload(&self.tree())
    }
}

/// Trains a dictionary from `samples` and gives it an id derived from its content (zstd
/// reserves ids below 32,768; the id stays below 2³¹ as zstd recommends). `None` when zstd
/// cannot train one (too few or too uniform samples).
fn train(samples: &[Vec<u8>]) -> Option<Vec<u8>> {
    if samples.len() < 8 {
        return None;
    }
    let mut dict = zstd::dict::from_samples(samples, DICT_BYTES).ok()?;
    dict_id(&dict)?;
    let h = Sha256::digest(&dict[8..]);
    let id = 32_768 + u32::from_le_bytes(h[..4].try_into().ok()?) % ((1u32 << 31) - 32_768);
    dict[4..8].copy_from_slice(&id.to_le_bytes());
    Some(dict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::merge::Edit;
    use crate::store::LocalOp;
    use std::path::Path;
    use uuid::Uuid;

    /// Writes `n` person records shaped like gen.py's (same field names, varied values), in
    /// batches of `batch`; returns their ids in order.
    fn put(s: &Store, n: usize, batch: usize) -> Vec<Uuid> {
        let cities = ["Hilo", "Lima", "Pune", "Oslo", "Kumasi", "Quito", "Davao"];
        let mut ids = Vec::new();
        for start in (0..n).step_by(batch) {
            let ops: Vec<LocalOp> = (start..(start + batch).min(n))
                .map(|i| {
                    let id = Uuid::new_v4();
                    ids.push(id);
                    let f = serde_json::json!({
                        "name": format!("Person {i}"), "age": 18 + i % 70,
                        "city": cities[i % cities.len()], "status": if i % 2 == 0 { "missing" } else { "found" },
                        "phone": format!("+1-555-{:04}", i * 7 % 10_000),
                        "notes": format!("seen near the {} shelter on day {}", cities[i % 5], i % 30),
                    });
                    LocalOp {
                        table: "person".into(),
                        id,
                        edit: Edit::Put(serde_json::from_value(f).unwrap()),
                    }
                })
                .collect();
            s.write_local(&ops).unwrap();
        }
        ids
    }

    /// The raw stored value of a person record.
    fn raw(s: &Store, id: &Uuid) -> Vec<u8> {
        let k = keys::record(&keys::record_suffix("person", id));
        s.tree().get(k).unwrap().unwrap().to_vec()
    }

    fn frame_dict(v: &[u8]) -> Option<u32> {
        zstd::zstd_safe::get_dict_id_from_frame(v).map(|i| i.get())
    }

    fn dict_keys(s: &Store) -> Vec<Vec<u8>> {
        s.tree()
            .scan_prefix([DICT])
            .keys()
            .map(|k| k.unwrap().to_vec())
            .collect()
    }

    fn all_tables(s: &Store) -> Vec<String> {
        s.tables().unwrap().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn a_table_gets_its_dictionary_at_1000_records_and_every_record_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Config::default()).unwrap();
        // 600 + 600 records: the third batch finds 1,200 committed and trains.
        let ids = put(&s, 1_200, 600);
        assert!(
            dict_keys(&s).is_empty(),
            "no dictionary below 1,000 records"
        );
        let later = put(&s, 600, 600);
        let dk = dict_keys(&s);
        assert_eq!(dk.len(), 1, "one dictionary for the table");
        let id = u32::from_be_bytes(dk[0][dk[0].len() - 4..].try_into().unwrap());
        let early: Vec<Vec<u8>> = ids.iter().map(|i| raw(&s, i)).collect();
        let late: Vec<Vec<u8>> = later.iter().map(|i| raw(&s, i)).collect();
        assert!(early.iter().all(|v| frame_dict(v).is_none()));
        assert!(late.iter().all(|v| frame_dict(v) == Some(id)));
        let mean = |vs: &[Vec<u8>]| vs.iter().map(Vec::len).sum::<usize>() / vs.len();
        assert!(
            mean(&late) * 2 < mean(&early),
            "with the dictionary {} B a record, alone {} B",
            mean(&late),
            mean(&early)
        );
        // Rewriting an old record compresses it with the dictionary too.
        let digest = crate::formats::digest(&s, &all_tables(&s)).unwrap();
        assert_eq!(digest.0, 1_800);
        for i in ids.iter().chain(&later) {
            assert!(s.get("person", i).unwrap().unwrap().state.is_alive());
        }
        // An edit writes history (the creation and the edit), compressed with the dictionary.
        let f = serde_json::json!({"name": "Ana Lopez", "status": "found", "age": 31});
        s.write_one(LocalOp {
            table: "person".into(),
            id: ids[0],
            edit: Edit::Put(serde_json::from_value(f).unwrap()),
        })
        .unwrap();
        let hk = keys::history_of(&keys::record_suffix("person", &ids[0]));
        let raw_history: Vec<Vec<u8>> = s
            .tree()
            .scan_prefix(hk)
            .values()
            .map(|v| v.unwrap().to_vec())
            .collect();
        assert!(!raw_history.is_empty());
        assert!(raw_history.iter().all(|v| frame_dict(v) == Some(id)));
        let h = s.history("person", &ids[0]).unwrap();
        assert!(h.len() >= 2, "{} entries", h.len());
        assert_eq!(frame_dict(&raw(&s, &ids[0])), Some(id));
        drop(s);
        // Reopened, the dictionary is loaded and used, nothing is trained again.
        let s = Store::open(dir.path(), Config::default()).unwrap();
        let more = put(&s, 10, 10);
        assert_eq!(dict_keys(&s), dk);
        assert_eq!(frame_dict(&raw(&s, &more[0])), Some(id));
        assert_eq!(
            crate::formats::digest(&s, &all_tables(&s)).unwrap().0,
            1_810
        );
    }

    #[test]
    fn a_backup_carries_the_dictionary_and_restores_into_a_fresh_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a"), Config::default()).unwrap();
        put(&s, 1_000, 1_000);
        let late = put(&s, 300, 300);
        assert_eq!(dict_keys(&s).len(), 1);
        let file = dir.path().join("a.fsbackup");
        let header = crate::backup::write_backup(&s, &file).unwrap();
        // Dictionaries sort first in the tree, so first in the file.
        let (_, entries) = crate::backup::read_backup(&file).unwrap();
        assert_eq!(entries.first().map(|e| e.0[0]), Some(DICT));
        let b = Store::open(&dir.path().join("b"), Config::default()).unwrap();
        let r = crate::backup::restore(&b, &file, false, false).unwrap();
        assert_eq!((r.live_records, &r.sha256), (1_300, &header.sha256));
        assert_eq!(dict_keys(&b), dict_keys(&s));
        // The restored store compresses with the restored dictionary.
        let next = put(&b, 5, 5);
        assert_eq!(
            frame_dict(&raw(&b, &next[0])),
            frame_dict(&raw(&s, &late[0]))
        );
    }

    /// The data directory of tests/fixtures/store-format-5 (written by fieldsync 960be4c,
    /// store format 5; see the NOTE.md there) unpacked into `to`.
    fn unpack_format_5(to: &Path) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-format-5");
        let db = to.join("db");
        std::fs::create_dir_all(db.join("blobs")).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap();
            let Some(name) = name.strip_suffix(".zst") else {
                continue;
            };
            let bytes = zstd::decode_all(std::fs::File::open(&p).unwrap()).unwrap();
            std::fs::write(db.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn a_format_5_store_from_the_previous_fieldsync_opens_and_gets_a_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        unpack_format_5(dir.path());
        let fixture_digest = (
            40,
            "236c094815ba22bf804691561ce765ea40df2fbb62c89a1d62ee394b97b56f7b".to_string(),
        );
        let two = ["person".to_string(), "place".to_string()];
        let ids = {
            let s = Store::open(dir.path(), Config::default()).unwrap();
            assert_eq!(super::super::recovery::stored_format(&s.tree()).unwrap(), 6);
            // What the fixture's NOTE.md says fieldsync 960be4c printed for it.
            assert_eq!(s.id().to_string(), "730dc2b3-c544-4216-9c31-5ebcfbb4c035");
            assert_eq!(s.seq(), 43);
            assert_eq!(crate::formats::digest(&s, &two).unwrap(), fixture_digest);
            put(&s, 1_500, 500)
        };
        assert!(!dir.path().join("db.format-5.old").exists());
        let s = Store::open(dir.path(), Config::default()).unwrap();
        assert_eq!(dict_keys(&s).len(), 1, "person got its dictionary");
        assert!(frame_dict(&raw(&s, &ids[1_499])).is_some());
        let person = "bb2edb20-035b-4399-bfd4-235992edcf45".parse().unwrap();
        assert_eq!(s.history("person", &person).unwrap().len(), 2);
        assert_eq!(crate::formats::digest(&s, &two).unwrap().0, 1_540);
        let place = "00000000-0000-4000-8000-000000000001".parse().unwrap();
        assert!(s.get("place", &place).unwrap().is_some());
    }

    #[test]
    fn keys_round_trip_and_sort_before_everything() {
        let k = dict_key("person", 123_456);
        assert_eq!(parse_key(&k).as_deref(), Some("person"));
        assert!(k < keys::meta("instance") && k < keys::record(b"person"));
    }

    #[test]
    fn trained_ids_follow_the_content() {
        let samples: Vec<Vec<u8>> = (0..500)
            .map(|i| {
                format!(
                    "{{\"name\":\"n{i}\",\"city\":\"c{}\",\"age\":{}}}",
                    i % 7,
                    i % 90
                )
                .into_bytes()
            })
            .collect();
        let d = train(&samples).expect("a dictionary");
        let id = dict_id(&d).unwrap();
        assert!((32_768..1 << 31).contains(&id));
        assert_eq!(train(&samples).and_then(|d| dict_id(&d)), Some(id));
        assert_eq!(register(&d), Some(id));
        assert!(decoder(id).is_some());
        assert_eq!(train(&samples[..3]), None);
    }
}
