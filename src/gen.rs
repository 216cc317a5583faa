//! Deterministic test and benchmark data: person records and op files in the format of
//! `shared/gen.py`, so a fresh clone can make its own data.
//!
//! Same format and vocabularies as gen.py, not the same bytes: gen.py uses Python's Mersenne
//! Twister, this uses splitmix64. Everything derives from the seed (no clock, no OS randomness),
//! so the same arguments always give byte-identical output.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, Write};
use uuid::Uuid;

/// 2024-01-01T00:00:00Z: `last_seen` dates fall in the 300 days after it.
const BASE_EPOCH: i64 = 1_704_067_200;

const FIRST: &[&str] = &[
    "Amina", "James", "Maria", "Wei", "Olena", "Mohammed", "Sofia", "Kwame", "Priya", "Lucas",
    "Fatima", "Daniel", "Ana", "Hiroshi", "Chloe", "Ivan", "Grace", "Omar", "Elena", "Samuel",
    "Aisha", "Mateo", "Nadia", "Thomas", "Leila", "Pedro", "Yuki", "Hannah", "Tariq", "Zoe",
    "José", "Björn", "Chidi", "Mei", "Rafael", "Ingrid", "Kofi", "Lina", "Andrés", "Sara",
];
const LAST: &[&str] = &[
    "Okafor",
    "Smith",
    "Garcia",
    "Zhang",
    "Kovalenko",
    "Haddad",
    "Rossi",
    "Mensah",
    "Sharma",
    "Silva",
    "Rahman",
    "Müller",
    "Nguyen",
    "Tanaka",
    "Dubois",
    "Petrov",
    "Johnson",
    "Hussein",
    "Popescu",
    "Mwangi",
    "Kim",
    "López",
    "Novak",
    "Ali",
    "Andersen",
    "Costa",
    "Ibrahim",
    "Sato",
    "Fischer",
    "Moreau",
    "Yilmaz",
    "Kowalski",
    "Osei",
    "Santos",
    "Berg",
    "Pham",
];
/// (label, lat, lon): all far from 0, so coordinates never print as exponents.
const CITIES: &[(&str, f64, f64)] = &[
    ("Kharkiv, UA", 49.9935, 36.2304),
    ("Lviv, UA", 49.8397, 24.0297),
    ("Aleppo, SY", 36.2021, 37.1343),
    ("Gaziantep, TR", 37.0662, 37.3833),
    ("Tripoli, LY", 32.8872, 13.1913),
    ("Khartoum, SD", 15.5007, 32.5599),
    ("Port-au-Prince, HT", 18.5944, -72.3074),
    ("Tegucigalpa, HN", 14.0723, -87.1921),
    ("Mosul, IQ", 36.3450, 43.1450),
    ("Kabul, AF", 34.5553, 69.2075),
    ("Cox's Bazar, BD", 21.4272, 92.0058),
    ("Goma, CD", -1.6792, 29.2228),
    ("Maiduguri, NG", 11.8311, 13.1510),
    ("Lampedusa, IT", 35.5078, 12.6055),
    ("Calais, FR", 50.9513, 1.8587),
    ("Ciudad Juárez, MX", 31.6904, -106.4245),
    ("Tapachula, MX", 14.9031, -92.2575),
    ("Darien, PA", 8.4000, -77.9000),
    ("Lesbos, GR", 39.2645, 26.2777),
    ("Melilla, ES", 35.2923, -2.9381),
    ("Antakya, TR", 36.2025, 36.1600),
    ("Derna, LY", 32.7570, 22.6367),
    ("Manila, PH", 14.5995, 120.9842),
    ("Sendai, JP", 38.2682, 140.8694),
    ("Kathmandu, NP", 27.7172, 85.3240),
    ("Hilo, US", 19.7074, -155.0885),
    ("Paradise, US", 39.7596, -121.6219),
    ("Valencia, ES", 39.4699, -0.3763),
];
/// Weighted: "missing" is three times as likely as each other status.
const STATUS: &[&str] = &[
    "missing",
    "missing",
    "missing",
    "sighted",
    "found_alive",
    "found_deceased",
    "under_review",
    "closed_duplicate",
];
const GENDER: &[&str] = &["female", "male", "male", "female", "unknown", "other"];
const CLOTHING: &[&str] = &[
    "red jacket",
    "blue jeans",
    "grey hoodie",
    "green headscarf",
    "school uniform",
    "black coat",
    "white sneakers",
    "orange vest",
    "brown sandals",
    "yellow raincoat",
];
const PLACES: &[&str] = &[
    "bus station",
    "border crossing",
    "shelter",
    "market",
    "hospital",
    "reception centre",
    "beach",
    "checkpoint",
    "train station",
    "school",
];
/// Note templates: `{p}` is a place, `{c}` a piece of clothing.
const NOTE_TPL: &[&str] = &[
    "Last seen at the {p} in a {c}.",
    "Lost family at the {p}.",
    "May be heading to the {p}.",
    "Scar on left hand; {c}.",
    "Needs medication. Near the {p}.",
    "With a sibling; {c}.",
];
const UPDATE_TPL: &[&str] = &[
    "Update: sighting at the {p}.",
    "Update: {p} checked, no match.",
    "Update: photo match at the {p}?",
    "Update: reviewed, still open.",
];

/// A small, fast, seedable PRNG (splitmix64); plenty for test data, not for secrets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`); the multiply-shift bias is below 2^-32 for our sizes.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A random version-4 UUID.
    pub fn uuid4(&mut self) -> Uuid {
        let bits = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid()
    }
}

/// The fields of one generated person, in gen.py's order.
#[derive(Clone, Debug, Serialize)]
pub struct Person {
    /// Full name.
    pub name: String,
    /// Age in years, 1 to 89.
    pub age: u32,
    /// female, male, unknown or other.
    pub gender: &'static str,
    /// A city label.
    pub last_seen_location: &'static str,
    /// `YYYY-MM-DD`.
    pub last_seen: String,
    /// Latitude near the city, 5 decimals, never integral.
    pub lat: f64,
    /// Longitude near the city, 5 decimals, never integral.
    pub lon: f64,
    /// missing, sighted, found_alive, ... (gen.py's list).
    pub status: &'static str,
    /// A short note.
    pub notes: String,
    /// Who reported the person missing.
    pub reporter: String,
    /// `vol-NNN`.
    pub updated_by: String,
}

/// One line of a records file: `{"table","id","fields"}`.
#[derive(Clone, Debug, Serialize)]
pub struct RecordLine<F> {
    /// Always `person` for generated records.
    pub table: String,
    /// The record id.
    pub id: Uuid,
    /// The fields.
    pub fields: F,
}

fn fill(template: &str, rng: &mut Rng) -> String {
    // gen.py draws the place before the clothing whether or not the template uses them; so do we.
    let p = rng.pick(PLACES);
    let c = rng.pick(CLOTHING);
    template.replace("{p}", p).replace("{c}", c)
}

/// gen.py's `round(base + (r - 0.5) * 0.3, 5)`, nudged off integers so it stays a float.
fn coord(rng: &mut Rng, base: f64) -> f64 {
    let v = ((base + (rng.unit() - 0.5) * 0.3) * 1e5).round() / 1e5;
    if v.fract() == 0.0 {
        v + 0.00001
    } else {
        v
    }
}

fn full_name(rng: &mut Rng) -> String {
    let first = rng.pick(FIRST);
    format!("{first} {}", rng.pick(LAST))
}

fn volunteer(rng: &mut Rng) -> String {
    format!("vol-{:03}", 1 + rng.below(499))
}

/// The next generated record.
pub fn record(rng: &mut Rng) -> RecordLine<Person> {
    let id = rng.uuid4();
    let (city, lat, lon) = rng.pick(CITIES);
    let seen = BASE_EPOCH + rng.below(300 * 86_400) as i64;
    let last_seen = chrono::DateTime::from_timestamp(seen, 0)
        .expect("dates in 2024 are representable")
        .format("%Y-%m-%d")
        .to_string();
    let fields = Person {
        name: full_name(rng),
        age: 1 + rng.below(89) as u32,
        gender: rng.pick(GENDER),
        last_seen_location: city,
        last_seen,
        lat: coord(rng, lat),
        lon: coord(rng, lon),
        status: rng.pick(STATUS),
        notes: {
            let t = rng.pick(NOTE_TPL);
            fill(t, rng)
        },
        reporter: full_name(rng),
        updated_by: volunteer(rng),
    };
    RecordLine {
        table: "person".into(),
        id,
        fields,
    }
}

/// The records for `(count, seed)` as JSON lines (without the newline).
pub fn record_lines(count: u64, seed: u64) -> impl Iterator<Item = String> {
    let mut rng = Rng::new(seed);
    (0..count).map(move |_| {
        serde_json::to_string(&record(&mut rng)).expect("generated records always serialize")
    })
}

/// Writes `count` records for `seed` as JSON lines.
pub fn write_records(count: u64, seed: u64, out: &mut dyn Write) -> std::io::Result<()> {
    for line in record_lines(count, seed) {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// What to generate in an op file.
#[derive(Clone, Debug)]
pub struct OpsSpec {
    /// Number of puts (edits of existing records).
    pub count: usize,
    /// Seed of the edited values.
    pub seed: u64,
    /// Seed that picks the ids (default: `seed`); equal ids-seeds edit the same records.
    pub ids_seed: Option<u64>,
    /// Number of deletes (default: max(1, count / 50)).
    pub deletes: Option<usize>,
}

/// Why an op file could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The records file has too few records.
    #[error("not enough records: {have} in the file for {edits} edits + {deletes} deletes")]
    NotEnough {
        /// Records in the file.
        have: usize,
        /// Edits asked for.
        edits: usize,
        /// Deletes asked for.
        deletes: usize,
    },
    /// A records line that is not `{"table","id","fields"}`.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number in the records file.
        line: usize,
        /// The problem.
        message: String,
    },
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Record fields in file order (serde_json's own map sorts keys; gen.py keeps the file's order).
#[derive(Clone, Debug, Default, PartialEq)]
struct OrderedFields(Vec<(String, Value)>);

impl OrderedFields {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v)
    }

    fn set(&mut self, k: &str, v: Value) {
        match self.0.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k.to_string(), v)),
        }
    }
}

impl<'de> Deserialize<'de> for OrderedFields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedFields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedFields, A::Error> {
                let mut out = OrderedFields::default();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.set(&k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for OrderedFields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[derive(Deserialize)]
struct InputRecord {
    table: String,
    id: String,
    fields: OrderedFields,
}

#[derive(Serialize)]
struct OpLine<'a> {
    op: &'static str,
    table: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<&'a OrderedFields>,
}

/// `k` distinct indices of `0..n` in random order (Python's `random.sample(range(n), k)`).
fn sample(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + rng.below((n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx
}

/// Writes an op file for the records in `records` (a records file): `spec.count` puts of whole
/// records with status, notes and updated_by changed, then the deletes, on distinct ids.
/// Returns (puts, deletes) written.
pub fn write_ops(
    records: impl BufRead,
    spec: &OpsSpec,
    out: &mut dyn Write,
) -> Result<(usize, usize), GenError> {
    // Only the chosen lines are parsed: an op file of 1,000 edits from 100,000 records should not
    // build 100,000 JSON trees.
    let lines: Vec<(usize, String)> = records
        .lines()
        .enumerate()
        .map(|(n, l)| l.map(|l| (n + 1, l)))
        .filter(|r| r.as_ref().map_or(true, |(_, l)| !l.trim().is_empty()))
        .collect::<Result<_, _>>()?;
    let deletes = spec.deletes.unwrap_or((spec.count / 50).max(1));
    if spec.count + deletes > lines.len() {
        return Err(GenError::NotEnough {
            have: lines.len(),
            edits: spec.count,
            deletes,
        });
    }
    let mut id_rng = Rng::new(spec.ids_seed.unwrap_or(spec.seed));
    let chosen = sample(&mut id_rng, lines.len(), spec.count + deletes);
    let mut rng = Rng::new(spec.seed);
    let statuses: Vec<&str> = STATUS
        .iter()
        .enumerate()
        .filter(|(i, s)| !STATUS[..*i].contains(s))
        .map(|(_, s)| *s)
        .collect();
    for (n, i) in chosen.into_iter().enumerate() {
        let (line_no, text) = &lines[i];
        let mut r: InputRecord = serde_json::from_str(text).map_err(|e| GenError::Line {
            line: *line_no,
            message: format!("expected {{\"table\",\"id\",\"fields\"}}: {e}"),
        })?;
        let op = if n < spec.count {
            let old = r.fields.get("status").cloned();
            let choices: Vec<&str> = statuses
                .iter()
                .copied()
                .filter(|s| old.as_ref().and_then(Value::as_str) != Some(s))
                .collect();
            r.fields.set("status", Value::from(rng.pick(&choices)));
            let t = rng.pick(UPDATE_TPL);
            let note = t.replace("{p}", rng.pick(PLACES));
            r.fields.set("notes", Value::from(note));
            r.fields.set("updated_by", Value::from(volunteer(&mut rng)));
            OpLine {
                op: "put",
                table: &r.table,
                id: &r.id,
                fields: Some(&r.fields),
            }
        } else {
            OpLine {
                op: "delete",
                table: &r.table,
                id: &r.id,
                fields: None,
            }
        };
        serde_json::to_writer(&mut *out, &op).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    Ok((spec.count, deletes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn records(count: u64, seed: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_records(count, seed, &mut out).unwrap();
        out
    }

    fn ops(recs: &[u8], count: usize, seed: u64, ids_seed: Option<u64>) -> Vec<Value> {
        let spec = OpsSpec {
            count,
            seed,
            ids_seed,
            deletes: None,
        };
        let mut out = Vec::new();
        write_ops(recs, &spec, &mut out).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn parse(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn same_arguments_same_bytes_other_seed_other_data() {
        assert_eq!(records(200, 42), records(200, 42));
        assert_ne!(records(200, 42), records(200, 43));
        // A prefix of a longer run is the shorter run: the count does not perturb the stream.
        assert!(records(300, 42).starts_with(&records(200, 42)));
        let r = records(500, 1);
        assert_eq!(ops(&r, 40, 7, None), ops(&r, 40, 7, None));
    }

    #[test]
    fn records_have_gen_py_shape_and_vocabulary() {
        let text = String::from_utf8(records(2_000, 5)).unwrap();
        let mut ids = BTreeSet::new();
        let mut names = BTreeSet::new();
        for line in text.lines() {
            // Field order as gen.py writes it, so the files look alike.
            assert!(
                line.starts_with("{\"table\":\"person\",\"id\":\""),
                "{line}"
            );
            assert!(line.contains("\"fields\":{\"name\":"), "{line}");
            let v: Value = serde_json::from_str(line).unwrap();
            let id = Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
            assert_eq!(id.get_version_num(), 4);
            assert!(ids.insert(id), "duplicate id {id}");
            let f = v["fields"].as_object().unwrap();
            let keys: Vec<&str> = f.keys().map(String::as_str).collect();
            let mut expected = vec![
                "age",
                "gender",
                "last_seen",
                "last_seen_location",
                "lat",
                "lon",
                "name",
                "notes",
                "reporter",
                "status",
                "updated_by",
            ];
            expected.sort();
            assert_eq!(keys, expected);
            let age = f["age"].as_u64().unwrap();
            assert!((1..90).contains(&age));
            assert!(GENDER.contains(&f["gender"].as_str().unwrap()));
            assert!(STATUS.contains(&f["status"].as_str().unwrap()));
            let city = f["last_seen_location"].as_str().unwrap();
            let &(_, lat0, lon0) = CITIES.iter().find(|c| c.0 == city).unwrap();
            let date = f["last_seen"].as_str().unwrap();
            assert!(("2024-01-01".."2024-10-27").contains(&date), "{date}");
            for (k, base) in [("lat", lat0), ("lon", lon0)] {
                let v = f[k].as_f64().unwrap();
                assert!((v - base).abs() <= 0.15 + 1e-9, "{k} {v} far from {base}");
                assert!(v.fract() != 0.0);
                // The JSON text is a float with at most 5 decimals.
                let text = f[k].to_string();
                let decimals = text.split_once('.').map(|(_, d)| d.len());
                assert!(matches!(decimals, Some(1..=5)), "{k} = {text}");
            }
            let vol = f["updated_by"].as_str().unwrap();
            assert!(vol.len() == 7 && vol.starts_with("vol-"), "{vol}");
            assert!(!f["notes"].as_str().unwrap().contains('{'));
            names.insert(f["name"].as_str().unwrap().to_string());
        }
        assert_eq!(ids.len(), 2_000);
        assert!(
            names.iter().any(|n| !n.is_ascii()),
            "some names are non-ASCII"
        );
    }

    #[test]
    fn records_average_about_330_bytes() {
        let n = 5_000;
        let avg = records(n, 9).len() as f64 / n as f64;
        assert!((310.0..350.0).contains(&avg), "average {avg} bytes/record");
    }

    #[test]
    fn ops_edit_then_delete_distinct_existing_ids() {
        let r = records(1_000, 3);
        let by_id: BTreeMap<String, Value> = parse(&r)
            .into_iter()
            .map(|v| (v["id"].as_str().unwrap().to_string(), v))
            .collect();
        let o = ops(&r, 100, 11, None);
        assert_eq!(o.len(), 102, "100 puts + max(1, 100/50) deletes");
        let mut seen = BTreeSet::new();
        for (n, op) in o.iter().enumerate() {
            let id = op["id"].as_str().unwrap();
            assert!(seen.insert(id.to_string()), "id {id} used twice");
            let orig = &by_id[id];
            assert_eq!(op["table"], "person");
            if n < 100 {
                assert_eq!(op["op"], "put");
                let (old, new) = (&orig["fields"], &op["fields"]);
                assert_ne!(old["status"], new["status"], "status always changes");
                assert!(new["notes"].as_str().unwrap().starts_with("Update: "));
                for k in ["name", "age", "lat", "lon", "reporter", "last_seen"] {
                    assert_eq!(old[k], new[k], "{k} is kept");
                }
            } else {
                assert_eq!(op["op"], "delete");
                assert!(op.get("fields").is_none());
            }
        }
        assert_eq!(ops(&r, 10, 1, None).len(), 11, "at least one delete");
    }

    #[test]
    fn same_ids_seed_edits_the_same_ids_differently() {
        let r = records(1_000, 3);
        let ids = |o: &[Value]| -> Vec<Value> { o.iter().map(|v| v["id"].clone()).collect() };
        let a = ops(&r, 50, 1, Some(99));
        let b = ops(&r, 50, 2, Some(99));
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(a, b, "different seeds give different edits");
        let c = ops(&r, 50, 2, None);
        assert_ne!(ids(&b), ids(&c), "the ids come from the ids seed");
    }

    #[test]
    fn ops_need_enough_records_and_name_bad_lines() {
        let r = records(10, 3);
        let spec = OpsSpec {
            count: 10,
            seed: 1,
            ids_seed: None,
            deletes: None,
        };
        let e = write_ops(&r[..], &spec, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, GenError::NotEnough { have: 10, .. }), "{e}");
        let bad = b"{\"table\":\"person\",\"id\":\"x\",\"fields\":{}}\n[1]\n";
        let spec = OpsSpec { count: 1, ..spec };
        let e = write_ops(&bad[..], &spec, &mut Vec::new()).unwrap_err();
        assert!(e.to_string().starts_with("line 2:"), "{e}");
    }
}
