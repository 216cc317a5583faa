//! Record operations: put, create, patch, delete, get, list, history, batches, tables.
//!
//! Optimistic concurrency: a record's revision, as an HTTP entity tag, is the feed position of
//! its latest change on this instance ([`etag`]): it moves with every change, local or from a
//! peer, and a write returns the exact position it committed at. A [`Precondition`] is checked
//! inside the store's writer lock ([`Store::write_one_with`]), so no change can slip in between
//! the check and the write.

use super::{App, AppError};
use crate::merge::Edit;
use crate::model::{self, Fields};
use crate::store::{HistoryEntry, LocalOp, OpResult, Source, StoreError, StoredRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

/// Most records one list page returns.
pub const MAX_PAGE: usize = 1000;

/// A record as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecordView {
    /// Table.
    pub table: String,
    /// Record id.
    pub id: Uuid,
    /// The current fields (for `at`: the fields as of that revision).
    #[schema(value_type = Object)]
    pub fields: Fields,
    /// True for a deleted record (only shown when asked for).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Feed position of the record's latest change: its revision here, and its ETag.
    pub seq: u64,
    /// The stamp of the latest event on the record (`time#counter@instance`), as in `history`.
    pub rev: Option<String>,
    /// The record's name for people ([`record_name`]: its `name`, else `title`, field), as
    /// `fieldsync conflicts` and the console name it; absent when it has neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_name: Option<String>,
}

/// What a write did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WriteOutcome {
    /// Table.
    pub table: String,
    /// Record id (server-made for a create).
    pub id: Uuid,
    /// False when the write changed nothing (same values; nothing synced).
    pub written: bool,
    /// The record's revision after the write (its ETag); 0 for a record that never existed.
    pub seq: u64,
}

/// One page of a table listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListPage {
    /// Records in id order.
    pub records: Vec<RecordView>,
    /// Pass as `after` to get the next page; `null` on the last page.
    pub next: Option<Uuid>,
}

/// A table and its counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TableInfo {
    /// Table name.
    pub table: String,
    /// Live records.
    pub live: u64,
    /// Deleted records.
    pub deleted: u64,
}

/// One operation of a batch (the `apply` op format).
#[derive(Clone, Debug, PartialEq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchOp {
    /// `put`, `patch` (top-level fields, like `apply`) or `delete`.
    pub op: String,
    /// Table.
    pub table: String,
    /// Record id; a put without one creates a record with a new id.
    pub id: Option<String>,
    /// The fields (put, patch).
    #[schema(value_type = Option<Object>)]
    pub fields: Option<Value>,
}

/// What a batch did; all of it was written, or (on error) nothing.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct BatchOutcome {
    /// Operations.
    pub ops: usize,
    /// Operations that changed something.
    pub written: usize,
    /// Operations that changed nothing.
    pub unchanged: usize,
    /// Per operation, in order.
    pub results: Vec<WriteOutcome>,
}

/// A condition a write must meet, checked under the writer lock.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Precondition {
    /// Write unconditionally.
    #[default]
    None,
    /// If-Match: the record's current revision must be one of these (`*`: it must exist).
    Match(Vec<String>),
    /// If-None-Match: `*`: the record must not exist (create only).
    NoneMatch,
}

/// How a patch treats nested objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchMode {
    /// Top-level fields are replaced whole (the CLI's `patch`, `apply`).
    TopLevel,
    /// JSON merge patch (RFC 7396): nested objects merge, `null` removes at any depth.
    MergePatch,
}

/// The ETag of a revision: the quoted feed position.
pub fn etag(seq: u64) -> String {
    format!("\"{seq}\"")
}

fn alive(r: Option<&StoredRecord>) -> Option<&StoredRecord> {
    r.filter(|r| r.state.is_alive())
}

fn check(
    pre: &Precondition,
    table: &str,
    id: &Uuid,
    cur: Option<&StoredRecord>,
) -> Result<(), AppError> {
    let cur = alive(cur);
    match pre {
        Precondition::None => Ok(()),
        Precondition::NoneMatch => match cur {
            None => Ok(()),
            Some(r) => Err(AppError::Precondition(format!(
                "record {table}/{id} already exists (revision {}): read it and write with \
                 If-Match, or drop If-None-Match",
                etag(r.seq)
            ))),
        },
        Precondition::Match(tags) => {
            // The ETag is the quoted feed position ("5"); the bare form (5) is what people
            // type and is taken as the same revision.
            let ok = cur.is_some_and(|r| {
                let mine = r.seq.to_string();
                tags.iter().any(|t| {
                    let bare = t.trim_start_matches("W/");
                    t == "*" || bare == etag(r.seq) || bare == mine
                })
            });
            if ok {
                return Ok(());
            }
            Err(AppError::Precondition(match cur {
                Some(r) => format!(
                    "record {table}/{id} changed since revision {}: it is now at revision {}; \
                     read it again and reapply your change",
                    tags.join(", "),
                    etag(r.seq)
                ),
                None => format!(
                    "record {table}/{id} does not exist (or was deleted) and If-Match was given: \
                     read it again"
                ),
            }))
        }
    }
}

/// The latest event on a record (max over its version vector) as `time#counter@instance`.
pub fn revision_stamp(r: &StoredRecord) -> Option<crate::clock::Hlc> {
    r.state
        .vv
        .iter()
        .map(|(node, ts)| crate::clock::Hlc {
            ts: *ts,
            node: *node,
        })
        .max()
}

fn view(table: &str, id: Uuid, r: &StoredRecord) -> RecordView {
    let fields = r.state.live_fields();
    RecordView {
        table: table.to_string(),
        id,
        record_name: record_name(&fields),
        fields,
        deleted: !r.state.is_alive(),
        seq: r.seq,
        rev: revision_stamp(r).map(|h| h.to_string()),
    }
}

/// What people call a record: its `name` field, else its `title`, when that is non-empty text
/// (the one rule for `fieldsync conflicts`, the conflict and record JSON, and the console).
pub fn record_name(fields: &Fields) -> Option<String> {
    ["name", "title"].iter().find_map(|k| {
        fields
            .get(*k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    })
}

/// RFC 7396 merge of `patch` into `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn parse_table(table: &str) -> Result<(), AppError> {
    model::validate_table(table).map_err(AppError::from)
}

/// What a listing keeps: records whose fields equal every `(field, value)` ([`same_value`])
/// and contain every `(field, text)` in any letter case ([`contains_text`]). The API's
/// `field.NAME=` and `contains.NAME=` filters and `fieldsync list --where/--contains`.
#[derive(Clone, Debug, Default)]
pub struct RecordFilter {
    equal: Vec<(String, Value)>,
    /// Field and text, lowered.
    contains: Vec<(String, String)>,
}

impl RecordFilter {
    /// A filter of these equalities and texts (the texts are compared in any letter case).
    pub fn new(equal: Vec<(String, Value)>, contains: &[(String, String)]) -> Self {
        let contains = contains
            .iter()
            .map(|(f, t)| (f.clone(), t.to_lowercase()))
            .collect();
        Self { equal, contains }
    }

    /// Whether a record with this state is kept.
    pub fn keeps(&self, state: &crate::model::RecordState) -> bool {
        self.equal
            .iter()
            .all(|(f, v)| state.value(f).is_some_and(|have| same_value(have, v)))
            && self
                .contains
                .iter()
                .all(|(f, t)| state.value(f).is_some_and(|v| contains_text(v, t)))
    }

    /// True when it keeps every record.
    pub fn is_empty(&self) -> bool {
        self.equal.is_empty() && self.contains.is_empty()
    }

    /// The fields it looks at.
    pub fn fields(&self) -> impl Iterator<Item = &String> {
        self.equal
            .iter()
            .map(|(f, _)| f)
            .chain(self.contains.iter().map(|(f, _)| f))
    }
}

/// Whether a field's value `have` meets an equality filter's value `want`: equal, the same
/// number however written (12, 12.0, "12"), or both scalars written the same way as text, as
/// import keys compare ("5551234" and 5551234, "true" and true). A list imported from a spreadsheet holds numbers in some rows and text in others
/// (`--text`), and a filter that missed half of them looked like missing records (trial 10).
pub fn same_value(have: &Value, want: &Value) -> bool {
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
            _ => None,
        }
    }
    // A number, or text that is one as JSON writes numbers ("12", "12.0"; not "0809", a phone
    // number's leading zero is not JSON): 12, 12.0 and "12" are one number to a person.
    fn number(v: &Value) -> Option<serde_json::Number> {
        match v {
            Value::Number(n) => Some(n.clone()),
            Value::String(s) => serde_json::from_str::<serde_json::Number>(s).ok(),
            _ => None,
        }
    }
    if have == want {
        return true;
    }
    if let (Some(a), Some(b)) = (number(have), number(want)) {
        // Integers exactly (a 64-bit id is not its neighbour as a double); else as doubles.
        return match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => a.as_f64().is_some_and(|x| b.as_f64() == Some(x)),
        };
    }
    matches!((text(have), text(want)), (Some(a), Some(b)) if a == b)
}

/// `text` as the start of an id, lower-case hex without dashes, when it is one: at least
/// [`MIN_ID_PREFIX`] hex digits and fewer than a whole id ("5A25E4D2-1c" → "5a25e4d21c").
pub fn short_id(text: &str) -> Option<String> {
    let hex: String = text
        .trim()
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_lowercase();
    (hex.len() >= MIN_ID_PREFIX && hex.len() < 32 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then_some(hex)
}

/// Fewest hex digits of an id accepted as its short form ([`App::record_id`]): the 8 that
/// `conflicts` and the console show.
pub const MIN_ID_PREFIX: usize = 8;

fn parse_id(id: &str) -> Result<Uuid, AppError> {
    model::parse_id(id).map_err(AppError::from)
}

/// The next step after a malformed record body or argument.
const FIELDS_HINT: &str = "give the fields as one JSON object, e.g. '{\"name\": \"Amina\"}'";

fn malformed(e: serde_json::Error, hint: &str) -> AppError {
    AppError::invalid(
        "MALFORMED_JSON",
        "fields",
        format!("malformed JSON: {}; {hint}", model::json_problem(&e)),
    )
}

/// A JSON parse error in a person's words ([`model::json_problem`]) and the next step.
/// Starts with "malformed JSON", which scripts match.
pub fn malformed_words(e: &serde_json::Error) -> String {
    format!("malformed JSON: {}; {FIELDS_HINT}", model::json_problem(e))
}

/// Parses JSON text given by a caller (a CLI argument, a request body). A number that would
/// not be stored exactly (a 30-digit integer, 20 significant digits: anything an `i64`, `u64`
/// or `f64` does not hold as written) is refused with `INEXACT_NUMBER`, naming its field, as
/// `import` does: a value is stored exactly or not at all.
pub fn parse_json(text: &[u8]) -> Result<Value, AppError> {
    parse_json_with(text, FIELDS_HINT)
}

/// [`parse_json`] for a text whose next step on a syntax error is `hint` (a request body
/// that is not a record's fields says its own form). Text that is not UTF-8 is said to be so
/// (serde_json would name the first bad byte inside quotes "an invalid \u escape").
pub fn parse_json_with(text: &[u8], hint: &str) -> Result<Value, AppError> {
    let text = std::str::from_utf8(text).map_err(|e| {
        AppError::invalid(
            "MALFORMED_JSON",
            "fields",
            format!(
                "malformed JSON: the text is not UTF-8 (byte {} is not valid UTF-8): send it \
                 encoded as UTF-8",
                e.valid_up_to() + 1
            ),
        )
    })?;
    // A number past f64's range (`1e400`) fails serde_json's parse as "number out of range":
    // it is an inexact number, said naming its field as the README promises, not malformed
    // JSON (a newcomer's).
    let v: Value = serde_json::from_str(text).map_err(|e| {
        crate::import::first_inexact_number(text).map_or_else(|| malformed(e, hint), inexact)
    })?;
    if let Some(bad) = crate::import::first_inexact_number(text) {
        return Err(inexact(bad));
    }
    Ok(v)
}

fn inexact(bad: crate::import::Inexact) -> AppError {
    let (field, named) = match &bad.key {
        Some(k) => (format!("fields.{k}"), format!("field {k:?}: ")),
        None => ("fields".to_string(), String::new()),
    };
    AppError::invalid(
        "INEXACT_NUMBER",
        field,
        format!(
            "{named}the number {} cannot be stored exactly; write it as a string (in quotes) \
             to keep every digit",
            bad.number
        ),
    )
}

impl App {
    fn outcome(&self, table: &str, id: Uuid, r: OpResult) -> Result<WriteOutcome, AppError> {
        let seq = match r {
            OpResult::Written(seq) => seq,
            OpResult::Unchanged => self.store.get(table, &id)?.map_or(0, |r| r.seq),
        };
        Ok(WriteOutcome {
            table: table.to_string(),
            id,
            written: matches!(r, OpResult::Written(_)),
            seq,
        })
    }

    fn write(
        &self,
        table: &str,
        id: Uuid,
        pre: &Precondition,
        edit: impl FnOnce(Option<&StoredRecord>) -> Result<Edit, AppError>,
    ) -> Result<WriteOutcome, AppError> {
        parse_table(table)?;
        let r = self.store.write_one_with(table, id, |cur| {
            check(pre, table, &id, cur)?;
            edit(cur)
        })?;
        self.outcome(table, id, r)
    }

    /// Creates or replaces a record (`id` None: a new UUID). Fields not given are removed.
    pub fn put(
        &self,
        table: &str,
        id: Option<&str>,
        fields: Value,
        pre: &Precondition,
    ) -> Result<WriteOutcome, AppError> {
        parse_table(table)?;
        let id = match id {
            Some(s) => parse_id(s)?,
            None => Uuid::new_v4(),
        };
        let fields = model::validate_fields(fields)?;
        self.write(table, id, pre, |_| Ok(Edit::Put(fields)))
    }

    /// Changes the given fields of an existing record; `null` removes a field.
    pub fn patch(
        &self,
        table: &str,
        id: &str,
        patch: Value,
        mode: PatchMode,
        pre: &Precondition,
    ) -> Result<WriteOutcome, AppError> {
        parse_table(table)?;
        let id = self.record_id(table, id)?;
        let patch = model::validate_fields(patch)?;
        self.write(table, id, pre, |cur| {
            if mode == PatchMode::TopLevel {
                return Ok(Edit::Patch(patch));
            }
            // Nested objects merge with the current value, read under the writer lock.
            let mut top = Fields::new();
            for (k, v) in patch {
                let now = alive(cur).and_then(|r| r.state.value(&k));
                let merged = match (now, &v) {
                    (Some(n @ Value::Object(_)), Value::Object(_)) => {
                        let mut n = n.clone();
                        merge_patch(&mut n, &v);
                        n
                    }
                    (_, Value::Object(_)) => {
                        // RFC 7396: a patch object applied to a non-object drops its nulls.
                        let mut n = Value::Object(Default::default());
                        merge_patch(&mut n, &v);
                        n
                    }
                    _ => v,
                };
                top.insert(k, merged);
            }
            Ok(Edit::Patch(top))
        })
    }

    /// Deletes a record (a tombstone that syncs).
    pub fn delete(
        &self,
        table: &str,
        id: &str,
        pre: &Precondition,
    ) -> Result<WriteOutcome, AppError> {
        parse_table(table)?;
        let id = self.record_id(table, id)?;
        self.write(table, id, pre, |_| Ok(Edit::Delete))
    }

    /// The record an existing-record command names: its id (a UUID), or the value of the
    /// `import --key` field(s) it was imported under — `A-1`, or `A-1,2024` for a key of two
    /// fields, in the key's order — from which the id is derived as `import` derives it
    /// ([`crate::import::key_id`] in this laptop's deployment namespace), or the start of its
    /// id, 8 hex digits or more (the short form `conflicts` shows). A key names the record an
    /// import made and any other holding that key value (written with `put`, found through
    /// the key's unique index). A key or a short id names only a record that exists here
    /// (deleted ones included for a key's import id); a key wins over a short id.
    ///
    /// Errors: `NOT_FOUND` naming the readings and the next step; `AMBIGUOUS_ID` for a short
    /// id several records start with, or a key two records hold (an open name clash);
    /// `INVALID_ID` for an empty id.
    pub fn record_id(&self, table: &str, text: &str) -> Result<Uuid, AppError> {
        let text = text.trim();
        if text.is_empty() || Uuid::parse_str(text).is_ok() {
            return parse_id(text);
        }
        let ns = crate::import::namespace(&self.store).map_err(|e| AppError::NotFound {
            code: "NOT_FOUND",
            field: Some("id".into()),
            message: format!(
                "record id {text:?} is not a UUID, and import keys cannot be read: {e}"
            ),
        })?;
        let mut readings = vec![vec![text.to_string()]];
        if text.contains(',') {
            readings.push(text.split(',').map(|v| v.trim().to_string()).collect());
        }
        // The record an import made (its id derives from the key), and any other with that key
        // value, written otherwise (a `put` at the gate), found through the key's unique
        // index: two while a name clash is open, which must not be hidden (trial 10).
        let mut found = self.store.ids_by_import_key(table, text)?;
        for values in readings {
            let id = crate::import::key_id(&ns, table, &values);
            if !found.contains(&id) && self.store.get(table, &id)?.is_some() {
                found.push(id);
            }
        }
        match found.as_slice() {
            [] => {}
            [one] => return Ok(*one),
            two => {
                // Each with its name, so a person tells the gate's record from the registry's.
                let named: Vec<String> = two
                    .iter()
                    .map(|i| {
                        let name = self
                            .store
                            .get(table, i)
                            .ok()
                            .flatten()
                            .and_then(|r| record_name(&r.state.live_fields()));
                        match name {
                            Some(n) => format!("{i} \"{n}\""),
                            None => i.to_string(),
                        }
                    })
                    .collect();
                return Err(AppError::invalid(
                    "AMBIGUOUS_ID",
                    "id",
                    format!(
                        "{} records of {table} have the key {text:?} (an open name clash: \
                         `fieldsync conflicts` shows it): give the id of the one you mean ({})",
                        two.len(),
                        named.join(", ")
                    ),
                ));
            }
        }
        if let Some(id) = self.id_by_prefix(table, text)? {
            return Ok(id);
        }
        Err(AppError::NotFound {
            code: "NOT_FOUND",
            field: Some("id".into()),
            message: format!(
                "{table} has no record with the id or import key {text:?}: an id is a UUID \
                 (`fieldsync list {table}` shows them) or its first 8 digits or more; an \
                 import key is the value of the `import --key` field, e.g. A-1, or A-1,2024 \
                 for a key of two fields"
            ),
        })
    }

    /// The record whose id starts with `text`, at least [`MIN_ID_PREFIX`] hex digits (dashes
    /// as in the id allowed): the short form `conflicts` and the console show, "fa223269".
    /// `None` when `text` is not such a prefix or no record has it; `AMBIGUOUS_ID` when several
    /// do (the error lists a few, to give more of the id).
    fn id_by_prefix(&self, table: &str, text: &str) -> Result<Option<Uuid>, AppError> {
        let Some(hex) = short_id(text) else {
            return Ok(None);
        };
        // Whole bytes narrow the scan in sled; an odd last digit is compared as text.
        let bytes = hex::decode(&hex[..hex.len() / 2 * 2]).unwrap_or_default();
        let mut found = Vec::new();
        for r in self.store.scan_ids(table, &bytes) {
            let (id, _) = r?;
            if id.simple().to_string().starts_with(&hex) {
                found.push(id);
                if found.len() > 3 {
                    break;
                }
            }
        }
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            many => Err(AppError::invalid(
                "AMBIGUOUS_ID",
                "id",
                format!(
                    "{text:?} is the start of {} ids in {table} ({}{}): give more of the id",
                    if many.len() > 3 {
                        "several".to_string()
                    } else {
                        many.len().to_string()
                    },
                    many.iter()
                        .take(3)
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if many.len() > 3 { ", …" } else { "" }
                ),
            )),
        }
    }

    /// Reads one record. A deleted one is `RECORD_DELETED` unless `include_deleted`.
    pub fn get(
        &self,
        table: &str,
        id: &str,
        include_deleted: bool,
    ) -> Result<(RecordView, StoredRecord), AppError> {
        parse_table(table)?;
        let id = self.record_id(table, id)?;
        let rec = self
            .store
            .get(table, &id)?
            .ok_or_else(|| StoreError::NotFound {
                table: table.to_string(),
                id,
            })?;
        if !rec.state.is_alive() && !include_deleted {
            return Err(StoreError::Deleted {
                table: table.to_string(),
                id,
                edit: None,
            }
            .into());
        }
        Ok((view(table, id, &rec), rec))
    }

    /// The record as it was right after revision `at`: a stamp as printed by `history`, or an
    /// RFC 3339 time (then the latest revision made at or before it). Every laptop that has the
    /// record answers alike, since histories replicate whole.
    pub fn get_at(&self, table: &str, id: &str, at: &str) -> Result<RecordView, AppError> {
        let (mut v, _) = self.get(table, id, true)?;
        let history = self.store.history(table, &v.id)?;
        let by_time = chrono::DateTime::parse_from_rfc3339(at.trim())
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc));
        let found = match by_time {
            Some(t) => history.iter().rposition(|e| e.revision.at.time() <= t),
            None => history.iter().position(|e| e.revision.at.to_string() == at),
        };
        if let (Some(t), None) = (by_time, found) {
            return Err(AppError::invalid(
                "UNKNOWN_REVISION",
                "at",
                format!(
                    "record {table}/{} did not exist yet at {}: its history starts at {}",
                    v.id,
                    t.to_rfc3339(),
                    history
                        .first()
                        .map_or_else(String::new, |e| e.revision.at.time().to_rfc3339())
                ),
            ));
        }
        let upto = found.ok_or_else(|| {
            // A time whose `+` a URL turned into a space reads as neither: said as such, not
            // as a revision the record lacks.
            let message = if !at.contains('@') && at.contains('T') {
                format!(
                    "at={at:?} is not an RFC 3339 time (e.g. 2026-11-24T14:00:00Z; in a URL \
                     write + as %2B) nor a revision stamp (an \"at\" value of the record's \
                     history)"
                )
            } else {
                format!(
                    "record {table}/{} has no revision {at:?}: use an \"at\" value from its \
                     history (a stamp, not the ETag's number) or an RFC 3339 time",
                    v.id
                )
            };
            AppError::invalid("UNKNOWN_REVISION", "at", message)
        })?;
        let mut fields = Fields::new();
        let mut deleted = false;
        for e in &history[..=upto] {
            deleted = e.revision.kind == crate::merge::RevisionKind::Delete;
            for ch in &e.revision.changes {
                match &ch.new {
                    Some(n) => fields.insert(ch.field.clone(), n.clone()),
                    None => fields.remove(&ch.field),
                };
            }
        }
        v.record_name = record_name(&fields);
        v.fields = fields;
        v.deleted = deleted;
        // The revision shown, not the time asked for (a newcomer's `--at 14:18:10` was said
        // to be "the revision of 14:18", made at 14:17).
        v.rev = Some(history[upto].revision.at.to_string());
        Ok(v)
    }

    /// A page of a table in id order: records after `after`, at most `limit` (≤ [`MAX_PAGE`]),
    /// keeping only those whose fields equal every `(field, value)` filter and contain the text
    /// of every `(field, text)` in `contains` (see [`contains_text`]).
    pub fn list(
        &self,
        table: &str,
        after: Option<&str>,
        limit: usize,
        include_deleted: bool,
        filters: &[(String, Value)],
        contains: &[(String, String)],
    ) -> Result<ListPage, AppError> {
        parse_table(table)?;
        let after = after
            .map(|a| model::parse_id(a).map_err(|_| {
                AppError::invalid("INVALID_ID", "after", format!("after={a:?} is not a record id: pass the \"next\" value of the previous page"))
            }))
            .transpose()?;
        let limit = limit.clamp(1, MAX_PAGE);
        let find = RecordFilter::new(filters.to_vec(), contains);
        let mut records = Vec::new();
        let mut next = None;
        for r in self.store.scan_table_after(table, after) {
            let (id, rec) = r?;
            if !rec.state.is_alive() && !include_deleted {
                continue;
            }
            if !find.keeps(&rec.state) {
                continue;
            }
            if records.len() == limit {
                next = records.last().map(|r: &RecordView| r.id);
                break;
            }
            records.push(view(table, id, &rec));
        }
        Ok(ListPage { records, next })
    }

    /// Every revision of a record, oldest first.
    pub fn history(&self, table: &str, id: &str) -> Result<Vec<HistoryEntry>, AppError> {
        parse_table(table)?;
        let id = self.record_id(table, id)?;
        let h = self.store.history(table, &id)?;
        if h.is_empty() {
            return Err(StoreError::NotFound {
                table: table.to_string(),
                id,
            }
            .into());
        }
        Ok(h)
    }

    /// Applies operations all or nothing (one atomic, durable batch).
    pub fn batch(
        &self,
        ops: Vec<BatchOp>,
        confirm_mass_delete: bool,
    ) -> Result<BatchOutcome, AppError> {
        let mut local = Vec::with_capacity(ops.len());
        for (i, o) in ops.into_iter().enumerate() {
            let at = |e: AppError| {
                let field = e
                    .field()
                    .map(|f| format!("ops[{i}].{f}"))
                    .unwrap_or(format!("ops[{i}]"));
                AppError::Invalid {
                    code: e.code(),
                    message: format!("operation {} (ops[{i}]): {e}", i + 1),
                    field: Some(field),
                }
            };
            if !matches!(o.op.as_str(), "put" | "patch" | "delete") {
                return Err(at(AppError::invalid(
                    "INVALID_OP",
                    "op",
                    format!("op {:?} is unknown: use put, patch or delete", o.op),
                )));
            }
            parse_table(&o.table).map_err(at)?;
            let id = match (&o.id, o.op.as_str()) {
                // A record that exists is named as everywhere else: its id, the start of it,
                // or its import key (trial 10: a batch took only full UUIDs). Not found keeps
                // its 404.
                (Some(s), "patch" | "delete") => {
                    self.record_id(&o.table, s).map_err(|e| match e {
                        AppError::NotFound {
                            code,
                            field,
                            message,
                        } => AppError::NotFound {
                            code,
                            field: Some(format!("ops[{i}].{}", field.as_deref().unwrap_or("id"))),
                            message: format!("operation {} (ops[{i}]): {message}", i + 1),
                        },
                        other => at(other),
                    })?
                }
                (Some(s), _) => parse_id(s).map_err(at)?,
                (None, "put") => Uuid::new_v4(),
                (None, _) => {
                    return Err(at(AppError::invalid(
                        "MISSING_ID",
                        "id",
                        format!("{} needs an id", o.op),
                    )))
                }
            };
            let fields = |f: Option<Value>| -> Result<Fields, AppError> {
                let f = f.ok_or_else(|| {
                    AppError::invalid("MISSING_FIELDS", "fields", format!("{} needs fields", o.op))
                })?;
                Ok(model::validate_fields(f)?)
            };
            let edit = match o.op.as_str() {
                "put" => Edit::Put(fields(o.fields).map_err(at)?),
                "patch" => Edit::Patch(fields(o.fields).map_err(at)?),
                _ => Edit::Delete,
            };
            local.push(LocalOp {
                table: o.table,
                id,
                edit,
            });
        }
        self.check_mass_delete(&local, confirm_mass_delete)?;
        let results = self.store.write_local(&local)?;
        let mut out = Vec::with_capacity(results.len());
        for (op, r) in local.iter().zip(&results) {
            out.push(self.outcome(&op.table, op.id, *r)?);
        }
        let written = out.iter().filter(|o| o.written).count();
        Ok(BatchOutcome {
            ops: out.len(),
            written,
            unchanged: out.len() - written,
            results: out,
        })
    }

    /// True when a record of `table` was ever stored here (live or deleted).
    pub fn table_known(&self, table: &str) -> Result<bool, AppError> {
        Ok(self.store.tables()?.iter().any(|(t, _)| t == table))
    }

    /// Table names with live and deleted counts.
    pub fn tables(&self) -> Result<Vec<TableInfo>, AppError> {
        self.tables_with(false)
    }

    /// [`App::tables`], with fieldsync's own tables (`fs_revocations`) too when `system`.
    pub fn tables_with(&self, system: bool) -> Result<Vec<TableInfo>, AppError> {
        Ok(self
            .store
            .tables()?
            .into_iter()
            // fieldsync's own tables (`fs_revocations`) are not data people or applications
            // wrote: left out unless asked (and readable by name with `list`/`get`).
            .filter(|(table, _)| system || !table.starts_with(crate::model::SYSTEM_PREFIX))
            .map(|(table, c)| TableInfo {
                table,
                live: c.live,
                deleted: c.deleted,
            })
            .collect())
    }
}

/// Whether a field's value contains `lowered` (already lower-cased), ignoring letter case: a
/// string by its text, a number or boolean by how JSON writes it, never an object, array or
/// null. A person looks "Amina Okafor" up as `amina`, not by the exact stored value.
pub fn contains_text(v: &Value, lowered: &str) -> bool {
    match v {
        Value::String(s) => s.to_lowercase().contains(lowered),
        Value::Number(_) | Value::Bool(_) => v.to_string().to_lowercase().contains(lowered),
        _ => false,
    }
}

/// A history entry as printed by `fieldsync history` and served by the API.
pub fn history_json(e: &HistoryEntry) -> Value {
    let r = &e.revision;
    let source = match e.source {
        Source::Local => "local".to_string(),
        Source::Peer(p) => format!("peer {p}"),
        Source::Merge(p) => format!("merge with peer {p}"),
    };
    let mut v = json!({
        "at": r.at.to_string(), "time": r.at.time().to_rfc3339(), "instance": r.at.node,
        "kind": r.kind, "cause": r.cause, "source": source, "applied_at": e.applied_at.to_rfc3339(),
        "changes": r.changes,
    });
    if r.reconstructed {
        v["reconstructed"] = json!(true);
        v["note"] = json!(RECONSTRUCTED_NOTE);
    }
    v
}

/// What `history` says of a revision an older version rebuilt (see `Revision::reconstructed`).
pub const RECONSTRUCTED_NOTE: &str = "not verified: reconstructed by a fieldsync older than \
     protocol 2 from a merged state, or received without a commit signed by the laptop it names \
     (made before that laptop signed its writes, or made up by the sender): its values may be \
     wrong and edits in between may be missing";

#[cfg(test)]
mod tests {
    use super::{contains_text, record_name, same_value};
    use serde_json::json;

    /// An equality filter meets the value however it was written, and never a different one.
    #[test]
    fn a_filter_value_meets_the_same_value_written_another_way() {
        for (have, want) in [
            (json!(12), json!(12.0)),
            (json!("12"), json!(12)),
            (json!(5551234), json!("5551234")),
            (json!("true"), json!(true)),
            (json!("found"), json!("found")),
        ] {
            assert!(same_value(&have, &want), "{have} ~ {want}");
        }
        for (have, want) in [
            (
                json!(9_007_199_254_740_993u64),
                json!(9_007_199_254_740_992u64),
            ),
            (json!("0809"), json!(809)),
            (json!("12"), json!(13)),
            (json!(["a"]), json!("a")),
            (json!(null), json!("null")),
        ] {
            assert!(!same_value(&have, &want), "{have} !~ {want}");
        }
    }

    #[test]
    fn a_record_is_named_by_its_name_else_its_title_when_that_is_text() {
        let name = |v: serde_json::Value| record_name(v.as_object().unwrap());
        assert_eq!(
            name(json!({"name": "Amina Okafor", "title": "Dr"})).as_deref(),
            Some("Amina Okafor")
        );
        assert_eq!(
            name(json!({"name": "", "title": "Clinic report"})).as_deref(),
            Some("Clinic report")
        );
        assert_eq!(name(json!({"name": 12})), None);
        assert_eq!(name(json!({"status": "missing"})), None);
    }

    #[test]
    fn contains_ignores_letter_case_and_reads_numbers_as_written() {
        assert!(contains_text(&json!("Amina Okafor"), "amina"));
        assert!(contains_text(&json!("Amina Okafor"), "a oka"));
        assert!(!contains_text(&json!("Amina Okafor"), "bello"));
        assert!(contains_text(&json!(1234), "23"));
        assert!(contains_text(&json!(true), "tru"));
        assert!(!contains_text(&json!({"name": "amina"}), "amina"));
        assert!(!contains_text(&json!(null), "null"));
    }
}
