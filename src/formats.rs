//! Export formats (JSONL, CSV), op files and the canonical content digest. Import lives in
//! [`crate::import`]; `csv_cell` here is the export side's view of its type rules, so an
//! exported CSV imports back to the same values.
//!
//! The JSONL record format is the one of `shared/gen.py`:
//! `{"table":"person","id":"<uuid>","fields":{...}}`, and the digest is computed exactly as
//! `gen.py --digest` computes it, so an export can be checked against generated data.

use crate::merge::Edit;
use crate::model::{self, validate_fields, Fields, ValidationError};
use crate::store::{LocalOp, Store, StoreError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
use uuid::Uuid;

/// A line of input that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// What is wrong, and where.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number (for CSV: the file line, header = 1).
        line: usize,
        /// The problem.
        message: String,
    },
    /// Reading the input failed.
    #[error("reading input: {0}")]
    Io(#[from] std::io::Error),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Write(std::io::Error),
    /// The store failed while exporting.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn line_err(line: usize, message: impl ToString) -> FormatError {
    FormatError::Line {
        line,
        message: message.to_string(),
    }
}

/// Canonical JSON moved to [`crate::canonical`]; kept here so existing callers compile.
pub use crate::canonical::canonical_json;

/// How an import reads a CSV cell, as far as an export needs to know to quote strings that
/// would otherwise read back as another type.
fn csv_cell(cell: &str) -> Value {
    match serde_json::from_str::<Value>(cell) {
        // A JSON-quoted cell is a string that would otherwise read as another type (or is empty).
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_)))
        | Ok(v @ Value::String(_)) => v,
        _ => Value::String(cell.to_string()),
    }
}

fn csv_text(v: &Value) -> String {
    match v {
        // Quote strings that would come back as another type, so export → import round-trips.
        Value::String(s) if s.is_empty() || csv_cell(s) != *v => canonical_json(v),
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => canonical_json(other),
    }
}

/// Reads an op file: JSON lines `{"op":"put"|"patch"|"delete","table","id","fields"}`.
/// Returns the ops with their line numbers.
pub fn read_ops(input: impl BufRead) -> Result<Vec<(usize, LocalOp)>, FormatError> {
    read_ops_naming(input, &|_, _| None)
}

/// What names an existing record in an op file (see [`read_ops_naming`]).
pub type NameRecord<'a> = &'a dyn Fn(&str, &str) -> Option<Result<Uuid, String>>;

/// [`read_ops`], where a patch's or a delete's `id` that is not a UUID is given to `existing`
/// (table, text): `Some(Ok(id))` for the record it names (the start of an id, an import key),
/// `Some(Err(why))` to refuse the line with that reason, `None` to refuse it as not a UUID.
pub fn read_ops_naming(
    input: impl BufRead,
    existing: NameRecord<'_>,
) -> Result<Vec<(usize, LocalOp)>, FormatError> {
    let mut out = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line_no = n + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| {
            line_err(
                line_no,
                format!(
                    "malformed JSON: {}; each line must be one JSON object",
                    model::json_problem(&e)
                ),
            )
        })?;
        let err = |m: String| line_err(line_no, m);
        let get_str = |k: &str| -> Result<String, FormatError> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    err(format!(
                        "missing or non-string \"{k}\": each line is one op, \
                         {{\"op\": \"put\" | \"patch\" | \"delete\", \"table\": NAME, \"id\": UUID, \
                         \"fields\": {{...}}}}"
                    ))
                })
        };
        let op = get_str("op")?;
        let table = get_str("table")?;
        model::validate_table(&table).map_err(|e| err(e.to_string()))?;
        // An ops file names every record, so that applying it twice changes nothing (a put
        // without an id would add a new record each time).
        let id_text = match v.get("id") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err(err("\"id\" must be a string: the record's UUID".into())),
            None if op == "put" => {
                return Err(err(format!(
                    "missing \"id\": every op names its record by UUID, so that applying the \
                     file twice changes nothing; add one (for a new record, a fresh UUID, e.g. \
                     from `uuidgen`), or load rows without ids with `fieldsync import {table} \
                     FILE --new-ids`"
                )))
            }
            None => {
                return Err(err(format!(
                    "missing \"id\": a {op} names the record it changes: give its UUID, the \
                     start of one or its import key (`fieldsync list {table}` shows them)"
                )))
            }
        };
        let id = match model::parse_id(&id_text) {
            Ok(id) => id,
            Err(_) => match (op.as_str(), existing(&table, &id_text)) {
                ("patch" | "delete", Some(found)) => found.map_err(err)?,
                ("patch" | "delete", None) => {
                    return Err(err(format!(
                        "record id {id_text:?} is not a UUID, the start of one or an import \
                         key of {table}: give the record's UUID (`fieldsync list {table}` shows \
                         them)"
                    )))
                }
                _ => {
                    return Err(err(format!(
                        "record id {id_text:?} is not a UUID: a put names its record by UUID \
                         (for a new record, a fresh one, e.g. from `uuidgen`)"
                    )))
                }
            },
        };
        let fields = || -> Result<Fields, FormatError> {
            let f = v.get("fields").cloned().unwrap_or(Value::Null);
            validate_fields(f).map_err(|e| err(format!("\"fields\": {e}")))
        };
        let edit = match op.as_str() {
            "put" => Edit::Put(fields()?),
            "patch" => Edit::Patch(fields()?),
            "delete" => Edit::Delete,
            other => {
                return Err(err(format!(
                    "unknown op {other:?}: use put, patch or delete"
                )))
            }
        };
        out.push((line_no, LocalOp { table, id, edit }));
    }
    Ok(out)
}

/// The JSON object of a record as printed and exported: `{"table","id","fields"}`
/// plus `"deleted": true` for tombstones.
pub fn record_json(table: &str, id: &Uuid, fields: Fields, deleted: bool) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("table".into(), Value::String(table.to_string()));
    m.insert("id".into(), Value::String(id.to_string()));
    m.insert("fields".into(), Value::Object(fields));
    if deleted {
        m.insert("deleted".into(), Value::Bool(true));
    }
    Value::Object(m)
}

/// Writes a table as JSON lines in id order (gen.py's format).
pub fn export_jsonl(
    store: &Store,
    table: &str,
    include_deleted: bool,
    mut out: impl Write,
) -> Result<u64, FormatError> {
    let mut n = 0;
    for r in store.scan_table(table) {
        let (id, rec) = r?;
        let alive = rec.state.is_alive();
        if !alive && !include_deleted {
            continue;
        }
        let v = record_json(table, &id, rec.state.live_fields(), !alive);
        writeln!(out, "{}", canonical_json(&v)).map_err(FormatError::Write)?;
        n += 1;
    }
    out.flush().map_err(FormatError::Write)?;
    Ok(n)
}

/// How [`export_csv`] writes: the delimiter (`,` unless asked) and whether a UTF-8 byte order
/// mark starts the file (Excel reads a CSV without one in the computer's legacy code page,
/// garbling accents: `Chloé` as `ChloÃ©`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsvOut {
    /// The cell delimiter byte.
    pub delimiter: u8,
    /// Write `EF BB BF` first.
    pub bom: bool,
}

impl Default for CsvOut {
    fn default() -> Self {
        CsvOut {
            delimiter: b',',
            bom: false,
        }
    }
}

/// Writes a table as CSV: `id`, then every field name in sorted order (plus `deleted` with
/// `--include-deleted`). Strings are written as is, other values as JSON; `how` sets the
/// delimiter and the byte order mark.
pub fn export_csv(
    store: &Store,
    table: &str,
    include_deleted: bool,
    how: CsvOut,
    mut out: impl Write,
) -> Result<u64, FormatError> {
    let mut names = std::collections::BTreeSet::new();
    for r in store.scan_table(table) {
        let (_, rec) = r?;
        if rec.state.is_alive() || include_deleted {
            names.extend(rec.state.live_fields().keys().cloned());
        }
    }
    if how.bom {
        out.write_all(b"\xEF\xBB\xBF").map_err(FormatError::Write)?;
    }
    let mut w = csv::WriterBuilder::new()
        .delimiter(how.delimiter)
        .from_writer(out);
    let werr = |e: csv::Error| FormatError::Write(std::io::Error::other(e));
    let mut header = vec!["id".to_string()];
    header.extend(names.iter().cloned());
    if include_deleted {
        header.push("deleted".into());
    }
    w.write_record(&header).map_err(werr)?;
    let mut n = 0;
    for r in store.scan_table(table) {
        let (id, rec) = r?;
        let alive = rec.state.is_alive();
        if !alive && !include_deleted {
            continue;
        }
        let fields = rec.state.live_fields();
        let mut row = vec![id.to_string()];
        row.extend(
            names
                .iter()
                .map(|k| fields.get(k).map(csv_text).unwrap_or_default()),
        );
        if include_deleted {
            row.push(if alive { "" } else { "true" }.into());
        }
        w.write_record(&row).map_err(werr)?;
        n += 1;
    }
    w.flush().map_err(FormatError::Write)?;
    Ok(n)
}

/// Count and SHA-256 of the live records of the given tables, computed as `gen.py --digest`:
/// lines `id:canonical({"table","fields"})\n` sorted by id.
pub fn digest(store: &Store, tables: &[String]) -> Result<(u64, String), StoreError> {
    let done = digest_until(store, tables, &|| false, &|| Ok(()))?;
    Ok(done.unwrap_or_default())
}

/// [`digest`], stopping early with `None` once `stop` answers true (asked every
/// [`STOP_EVERY`] records): for readers that give way to writers (an automatic snapshot).
/// Every [`crate::store::SHED_EVERY`] records it lets go of its iterators and calls `shed`
/// (a snapshot reopens sled there, `ConsistentView::shed`), then reads on after the last
/// record of each table it took.
pub fn digest_until(
    store: &Store,
    tables: &[String],
    stop: &dyn Fn() -> bool,
    shed: &dyn Fn() -> Result<(), StoreError>,
) -> Result<Option<(u64, String)>, StoreError> {
    // Streamed: each table is read in id order (record keys sort like the ids' text) and the
    // tables are merged by id, so memory stays flat however many records there are (collecting
    // the lines first held ~0.5 KB per record: ~50 MB at 100,000 records, in every automatic
    // snapshot). Equal ids keep the order of `tables`, as the stable sort this replaces did.
    let alive_after = |t: &str, after: Option<Uuid>| {
        store
            .scan_table_after(t, after)
            .filter(|r| r.as_ref().map_or(true, |(_, rec)| rec.state.is_alive()))
            .peekable()
    };
    // The last record taken from each table: where its scan goes on after a shed.
    let mut last: Vec<Option<Uuid>> = vec![None; tables.len()];
    let mut scans: Vec<_> = tables.iter().map(|t| alive_after(t, None)).collect();
    let mut h = Sha256::new();
    let mut n = 0u64;
    loop {
        let mut next: Option<(usize, Uuid)> = None;
        for (i, scan) in scans.iter_mut().enumerate() {
            match scan.peek() {
                None => {}
                // An error is taken (and returned) at once.
                Some(Err(_)) => {
                    next = Some((i, Uuid::nil()));
                    break;
                }
                Some(Ok((id, _))) if next.is_none_or(|(_, best)| *id < best) => {
                    next = Some((i, *id));
                }
                Some(Ok(_)) => {}
            }
        }
        let Some((i, _)) = next else { break };
        let (id, rec) = scans[i].next().expect("peeked")?;
        last[i] = Some(id);
        let mut m = serde_json::Map::new();
        m.insert("table".into(), Value::String(tables[i].clone()));
        m.insert("fields".into(), Value::Object(rec.state.live_fields()));
        h.update(id.to_string().as_bytes());
        h.update(b":");
        h.update(canonical_json(&Value::Object(m)).as_bytes());
        h.update(b"\n");
        n += 1;
        if n % STOP_EVERY == 0 && stop() {
            return Ok(None);
        }
        if n % crate::store::shed_every() == 0 {
            scans.clear();
            shed()?;
            scans = tables
                .iter()
                .zip(&last)
                .map(|(t, after)| alive_after(t, *after))
                .collect();
        }
    }
    Ok(Some((n, hex::encode(h.finalize()))))
}

/// How many records [`digest_until`] reads between two questions to its `stop`.
pub const STOP_EVERY: u64 = 1024;

/// Converts a validation error on a given line into a [`FormatError`].
pub fn at_line(line: usize, e: ValidationError) -> FormatError {
    line_err(line, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_strings_that_look_like_other_types_round_trip() {
        for v in [
            json!("34"),
            json!("true"),
            json!("[1]"),
            json!(""),
            json!("\"q\""),
            json!("Ana"),
        ] {
            assert_eq!(csv_cell(&csv_text(&v)), v, "{v}");
        }
        assert_eq!(csv_cell("34"), json!(34));
    }

    #[test]
    fn ops_parse_and_reject_unknown_ops() {
        let id = Uuid::new_v4();
        let ok = format!("{{\"op\":\"delete\",\"table\":\"t\",\"id\":\"{id}\"}}\n");
        assert_eq!(read_ops(ok.as_bytes()).unwrap()[0].1.edit, Edit::Delete);
        let bad = format!("{{\"op\":\"drop\",\"table\":\"t\",\"id\":\"{id}\"}}\n");
        assert!(read_ops(bad.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("unknown op"));
    }

    /// A put without an id, or with one that is not a UUID, is refused with the next step,
    /// never with "no id for a new record", which `apply` does not take (a newcomer was told
    /// both); a patch or delete naming no record says how to find its UUID.
    #[test]
    fn ops_without_a_usable_id_say_what_to_give() {
        let refused = |line: &str| read_ops(line.as_bytes()).unwrap_err().to_string();
        let e = refused(r#"{"op":"put","table":"shelter","fields":{"name":"School"}}"#);
        assert!(e.starts_with("line 1: missing \"id\""), "{e}");
        assert!(e.contains("uuidgen") && e.contains("--new-ids"), "{e}");
        let e = refused(r#"{"op":"put","table":"shelter","id":"not-a-uuid","fields":{}}"#);
        assert!(e.contains("a put names its record by UUID"), "{e}");
        assert!(!e.contains("no id for a new record"), "{e}");
        let e = refused(r#"{"op":"delete","table":"shelter","id":"nope"}"#);
        assert!(e.contains("fieldsync list shelter"), "{e}");
        let e = refused(r#"{"op":"patch","table":"shelter","fields":{"beds":11}}"#);
        assert!(e.contains("a patch names the record it changes"), "{e}");
        assert!(!e.contains("uuidgen") && !e.contains("--new-ids"), "{e}");
        let e = refused(r#"{"op":"put","id":"x"}"#);
        assert!(e.contains("\"table\": NAME"), "{e}");
    }
}
