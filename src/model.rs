//! Plain data: tables, record ids, fields, the replicated record state, and input validation.
//!
//! Nothing here does I/O. [`RecordState`] is what replicates: a map of fields, each stamped with
//! the HLC of the write that set it, plus the causal metadata the merge rules need
//! (see ARCHITECTURE.md, "Merge rules").

use crate::clock::Hlc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The fields of a record: a JSON object whose top-level keys are tracked separately.
pub type Fields = serde_json::Map<String, Value>;

/// Per-instance latest event `ts` seen for one record (a version vector keyed by instance).
pub type VersionVector = BTreeMap<Uuid, u64>;

/// Largest accepted record, measured as the compact JSON of its fields.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Longest accepted table name.
pub const MAX_TABLE_LEN: usize = 64;

/// Input that cannot become a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidationError {
    /// Table name outside `[a-z][a-z0-9_]{0,63}`.
    #[error("table name {0:?} is invalid: use 1-64 characters a-z, 0-9, _ starting with a letter")]
    Table(String),
    /// Record id that is not a UUID.
    #[error(
        "record id {0:?} is not a UUID: give a UUID, or no id for a new record; to change a \
         record by its import key use `fieldsync patch TABLE KEY`"
    )]
    Id(String),
    /// Fields that are not a JSON object.
    #[error("fields must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// Fields over [`MAX_RECORD_BYTES`].
    #[error("record is {0} bytes, over the 1 MiB limit")]
    TooLarge(usize),
    /// Field name that cannot be stored.
    #[error("field name {0:?} is invalid: it must be non-empty")]
    FieldName(String),
    /// A system table users cannot write.
    #[error("table {0:?} is reserved for fieldsync itself (tables starting with fs_)")]
    Reserved(String),
}

/// Prefix of system tables (written only by fieldsync itself, e.g. `fs_revocations`).
pub const SYSTEM_PREFIX: &str = "fs_";

/// The replicated table of CA-signed revocations (see `mesh.rs`). Its records are signed and
/// travel whole (never as a field delta), so the store needs its name too.
pub const REVOCATIONS_TABLE: &str = "fs_revocations";

/// The replicated table of the coordinator's CA-signed decisions on held mass deletes (see
/// `store/held.rs` and `mesh.rs`). Signed like revocations, so its records travel whole too.
pub const HOLD_DECISIONS_TABLE: &str = "fs_hold_decisions";

/// Whether `table` holds CA-signed records, which travel whole (a signature covers every
/// field, so a receiver that checks it needs them all, whatever it already knows).
pub fn is_signed_table(table: &str) -> bool {
    table == REVOCATIONS_TABLE || table == HOLD_DECISIONS_TABLE
}

/// The replicated table of import keys: one record per table and `import --key` field list
/// (`store/unique.rs`), so every laptop treats those fields as the table's unique key once any
/// laptop imported with it.
pub const IMPORT_KEYS_TABLE: &str = "fs_import_keys";

/// Checks a table name against `[a-z][a-z0-9_]{0,63}`.
pub fn validate_table(name: &str) -> Result<(), ValidationError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z'))
        && name.len() <= MAX_TABLE_LEN
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::Table(name.to_string()))
    }
}

/// Parses a record id (any UUID form `uuid` accepts; stored and printed hyphenated lowercase).
pub fn parse_id(s: &str) -> Result<Uuid, ValidationError> {
    Uuid::parse_str(s.trim()).map_err(|_| ValidationError::Id(s.to_string()))
}

/// The JSON type name of a value, for error messages.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Turns a JSON value into record fields, enforcing object shape and the size limit.
pub fn validate_fields(v: Value) -> Result<Fields, ValidationError> {
    match v {
        Value::Object(map) => {
            check_fields(&map)?;
            Ok(map)
        }
        other => Err(ValidationError::NotAnObject(json_type(&other))),
    }
}

/// Checks field names and the encoded size of an already-built field map.
pub fn check_fields(map: &Fields) -> Result<(), ValidationError> {
    if let Some(k) = map.keys().find(|k| k.is_empty()) {
        return Err(ValidationError::FieldName(k.clone()));
    }
    // Counted as written, not collected: this runs for every record written.
    let mut counter = ByteCount(0);
    let size = serde_json::to_writer(&mut counter, map)
        .map(|()| counter.0)
        .unwrap_or(usize::MAX);
    if size > MAX_RECORD_BYTES {
        return Err(ValidationError::TooLarge(size));
    }
    Ok(())
}

/// [`check_fields`] on the live fields of `state` (as [`RecordState::live_fields`] has them),
/// without copying them: this runs for every record of every incoming page.
pub fn check_live_fields(state: &RecordState) -> Result<(), ValidationError> {
    /// The live fields of a state, serialized as the map `live_fields` would make.
    struct Live<'a>(&'a RecordState);
    impl Serialize for Live<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.live())
        }
    }
    if let Some((k, _)) = state.live().find(|(k, _)| k.is_empty()) {
        return Err(ValidationError::FieldName(k.clone()));
    }
    let mut counter = ByteCount(0);
    let size = serde_json::to_writer(&mut counter, &Live(state))
        .map(|()| counter.0)
        .unwrap_or(usize::MAX);
    if size > MAX_RECORD_BYTES {
        return Err(ValidationError::TooLarge(size));
    }
    Ok(())
}

/// A writer that only counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One field's replicated state: its value (`None` once removed) and the stamp of that write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldState {
    /// The value; `None` records that the field was removed (so removal replicates too).
    #[serde(rename = "value")]
    pub value: Option<Value>,
    /// The write that set it.
    #[serde(rename = "stamp")]
    pub stamp: Hlc,
}

/// The replicated state of one record: a last-writer-wins map per field plus causal metadata.
///
/// `vv[i]` is the `ts` of instance i's latest event on this record reflected here.
/// `del_seen` is the union of what every deleter had seen when it deleted; the record is alive
/// iff some event is not covered by it (an edit no deleter saw wins over the delete).
///
/// Part of the wire (pages) and disk (records) formats: every serde name is spelled out so a
/// Rust rename cannot change them; on disk the field order matters too (compact encoding).
/// Both are pinned by golden-bytes tests (tests/session.rs, store tests).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordState {
    /// Field name → state; removed fields stay as `None` values.
    #[serde(rename = "fields")]
    pub fields: BTreeMap<String, FieldState>,
    /// Latest event per instance (edits and deletes).
    #[serde(rename = "vv")]
    pub vv: VersionVector,
    /// Pointwise maximum of the deleters' version vectors.
    #[serde(rename = "del_seen")]
    pub del_seen: VersionVector,
    /// The latest delete event, if the record was ever deleted.
    #[serde(rename = "deleted")]
    pub deleted: Option<Hlc>,
}

impl RecordState {
    /// True unless every event on the record was seen by some delete.
    pub fn is_alive(&self) -> bool {
        self.vv
            .iter()
            .any(|(node, ts)| *ts > self.del_seen.get(node).copied().unwrap_or(0))
    }

    /// The fields that are set, borrowed, in name order (what [`Self::live_fields`] copies).
    pub fn live(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.fields
            .iter()
            .filter_map(|(k, f)| f.value.as_ref().map(|v| (k, v)))
    }

    /// The current values of the fields that are set.
    pub fn live_fields(&self) -> Fields {
        self.fields
            .iter()
            .filter_map(|(k, f)| f.value.clone().map(|v| (k.clone(), v)))
            .collect()
    }

    /// The value of one field, if set.
    pub fn value(&self, field: &str) -> Option<&Value> {
        self.fields.get(field).and_then(|f| f.value.as_ref())
    }

    /// The largest `ts` anywhere in the state (the receiver's clock must move past it).
    pub fn max_ts(&self) -> u64 {
        let f = self.fields.values().map(|f| f.stamp.ts);
        let v = self.vv.values().copied();
        f.chain(v).max().unwrap_or(0)
    }
}

/// True if version vector `vv` has seen the event stamped `stamp`.
pub fn covers(vv: &VersionVector, stamp: &Hlc) -> bool {
    vv.get(&stamp.node).is_some_and(|ts| *ts >= stamp.ts)
}

/// Pointwise maximum of two version vectors, in place.
pub fn vv_join(into: &mut VersionVector, other: &VersionVector) {
    for (node, ts) in other {
        let e = into.entry(*node).or_insert(0);
        *e = (*e).max(*ts);
    }
}

/// One life of an instance, as peers see it in `hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incarnation {
    /// Random id of this incarnation.
    pub id: Uuid,
    /// When it began, epoch milliseconds; a successor always has a larger value.
    pub since: u64,
    /// The incarnation it continues (restored, rolled back or copied from); `None` for a data
    /// directory created by `init`.
    pub parent: Option<Uuid>,
}

/// What is wrong with JSON text, in a person's words rather than the parser's ("EOF while
/// parsing a value"): too short, or an unexpected character, and where (`column C` on a
/// one-line text, else `line L, column C`).
pub fn json_problem(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    // serde_json reports a mistake found at a line break as column 0 of the next line: it is
    // the end of the line before, which is where a person looks.
    let at = match (e.line(), e.column()) {
        (l, 0) if l > 1 => format!("the end of line {}", l - 1),
        (l, c) if l <= 1 => format!("column {c}"),
        (l, c) => format!("line {l}, column {c}"),
    };
    match e.classify() {
        Category::Eof => format!("it ends too early (at {at}): a closing }}, ] or \" is missing"),
        Category::Syntax => {
            // The parser's own words ("expected `:`") name what it expected: said plainly.
            let parser = e.to_string();
            let expected = EXPECTED
                .iter()
                .find(|(head, _)| parser.starts_with(head))
                .map_or(
                    "unexpected text (names and text values need double quotes)",
                    |(_, w)| w,
                );
            format!("at {at}: {expected}")
        }
        Category::Data | Category::Io => format!("not a JSON value (at {at})"),
    }
}

/// The start of serde_json's syntax messages, and what they mean for a person writing JSON.
const EXPECTED: &[(&str, &str)] = &[
    ("expected `:`", "a ':' is missing after a field name"),
    (
        "expected `,` or `}`",
        "a ',' between fields or the closing '}' is missing",
    ),
    (
        "expected `,` or `]`",
        "a ',' between values or the closing ']' is missing",
    ),
    (
        "key must be a string",
        "field names need double quotes (\"name\": ...)",
    ),
    (
        "expected value",
        "a value is missing or is not JSON (text needs double quotes; true, false and null \
         are lowercase)",
    ),
    (
        "expected ident",
        "only true, false and null go without quotes (text needs double quotes)",
    ),
    (
        "trailing comma",
        "remove the comma before the closing } or ]",
    ),
    ("trailing characters", "there is more after the JSON object"),
    // serde_json's limit: 128 levels of objects and lists refused, 127 read.
    (
        "recursion limit exceeded",
        "objects and lists are nested too deeply (at most 127 levels inside each other)",
    ),
    (
        "invalid number",
        "a number is not written as JSON writes numbers",
    ),
    ("number out of range", "a number is too large"),
    (
        "control character",
        "a line break or tab inside quotes (write it as \\n or \\t)",
    ),
    (
        "invalid escape",
        "a \\ inside quotes that JSON does not know (write \\\\ for one)",
    ),
    ("invalid unicode", "an invalid \\u escape inside quotes"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_names() {
        for ok in ["person", "a", "shelter_2", &"x".repeat(64)] {
            assert!(validate_table(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Person",
            "2x",
            "_x",
            "per-son",
            "Person!",
            &"x".repeat(65),
        ] {
            assert!(validate_table(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_mistakes_say_where_and_what_was_expected() {
        let p = |t: &str| json_problem(&serde_json::from_str::<Value>(t).unwrap_err());
        assert_eq!(
            p(r#"{"a" 1}"#),
            "at column 6: a ':' is missing after a field name"
        );
        assert_eq!(
            p("{\n \"a\": 1,\n \"b\": tru\n}"),
            "at the end of line 3: only true, false and null go without quotes (text needs \
             double quotes)"
        );
        assert_eq!(
            p(r#"{"a": 1,}"#),
            "at column 9: remove the comma before the closing } or ]"
        );
        assert_eq!(
            p(r#"{bad}"#),
            "at column 2: field names need double quotes (\"name\": ...)"
        );
        assert!(p(r#"{"a":"#).starts_with("it ends too early (at column 5)"));
    }

    #[test]
    fn fields_must_be_an_object_under_the_limit() {
        assert!(validate_fields(json!({"a": 1})).is_ok());
        assert_eq!(
            validate_fields(json!([1])),
            Err(ValidationError::NotAnObject("an array"))
        );
        let big = "x".repeat(MAX_RECORD_BYTES);
        assert!(matches!(
            validate_fields(json!({ "a": big })),
            Err(ValidationError::TooLarge(_))
        ));
    }
}
