//! JSONL input, streamed one line at a time: gen.py's `{"table","id","fields"}` lines or plain
//! field objects (an `"id"` key holds the record id). Blank lines are skipped; a byte order
//! mark and CRLF line ends are accepted. A number that would not keep its value (a 30-digit
//! integer) is refused naming its field: quote it to keep it as text.

use super::cells::{as_text, first_inexact_number};
use super::{ImportError, Opened, Row};
use crate::model::{self, validate_fields, Fields};
use serde_json::Value;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};

/// Opens JSONL input for `table`.
pub(crate) fn open(input: Box<dyn Read + Send>, table: &str, text: &HashSet<String>) -> Opened {
    Opened {
        unit: "line",
        header: None,
        rows: Box::new(JsonlRows {
            input: BufReader::with_capacity(1 << 16, input),
            buf: Vec::new(),
            line: 0,
            table: table.to_string(),
            text: text.clone(),
            unseen: text.clone(),
            names: std::collections::BTreeSet::new(),
        }),
    }
}

struct JsonlRows {
    input: BufReader<Box<dyn Read + Send>>,
    buf: Vec<u8>,
    line: u64,
    table: String,
    text: HashSet<String>,
    /// `--text` fields no row has had yet: any left at the end is refused (a misspelt name
    /// would leave its field to the type rules without a word).
    unseen: HashSet<String>,
    /// Field names met, for that message (the first [`NAMES_SHOWN`]).
    names: std::collections::BTreeSet<String>,
}

/// Field names a message about an unknown `--text` field lists at most.
const NAMES_SHOWN: usize = 40;

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

impl JsonlRows {
    fn err(&self, message: impl ToString) -> ImportError {
        ImportError::Line {
            unit: "line",
            line: self.line,
            message: message.to_string(),
        }
    }

    fn take_id(&self, obj: &mut Fields) -> Result<Option<uuid::Uuid>, ImportError> {
        match obj.remove("id") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => super::file_id(&s).map(Some).map_err(|e| self.err(e)),
            Some(other) => Err(self.err(format!(
                "\"id\" is {}, not a fieldsync record id (a UUID string, as an export \
                 writes): if it is the list's own number, rename the field (e.g. to \
                 registry_id) and import with --key registry_id",
                model::json_type(&other)
            ))),
        }
    }

    fn parse(&self, text: &str) -> Result<Row, ImportError> {
        let v: Value = serde_json::from_str(text).map_err(|e| {
            self.err(format!(
                "malformed JSON: {}; each line must be one JSON object",
                model::json_problem(&e)
            ))
        })?;
        if has_float(&v) {
            if let Some(bad) = first_inexact_number(text) {
                let field = bad
                    .key
                    .map(|k| format!("field {k:?}: "))
                    .unwrap_or_default();
                return Err(self.err(format!(
                    "{field}the number {} cannot be stored exactly; write it in quotes to keep \
                     it as text",
                    bad.number
                )));
            }
        }
        let Value::Object(mut obj) = v else {
            return Err(self.err("expected a JSON object"));
        };
        let (id, mut fields) = if obj.contains_key("fields") {
            if let Some(t) = obj.get("table") {
                if t.as_str() != Some(self.table.as_str()) {
                    return Err(self.err(format!(
                        "record is for table {t}, importing into {:?}",
                        self.table
                    )));
                }
            }
            let fields = validate_fields(obj.remove("fields").unwrap_or_default())
                .map_err(|e| self.err(e))?;
            (self.take_id(&mut obj)?, fields)
        } else {
            let id = self.take_id(&mut obj)?;
            model::check_fields(&obj).map_err(|e| self.err(e))?;
            (id, obj)
        };
        for (k, v) in fields.iter_mut() {
            if self.text.contains(k) {
                *v = as_text(v);
            }
        }
        Ok(Row {
            line: self.line,
            id,
            empty: fields.is_empty() && id.is_none(),
            fields,
        })
    }
}

impl Iterator for JsonlRows {
    type Item = Result<Row, ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.input.read_until(b'\n', &mut self.buf) {
                Ok(0) => return self.unseen_text().map(Err),
                Ok(_) => {}
                Err(e) => return Some(Err(ImportError::Io(e))),
            }
            self.line += 1;
            let mut bytes = &self.buf[..];
            if self.line == 1 {
                if let Some(e) = super::utf16_refusal(bytes) {
                    return Some(Err(e));
                }
                bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            }
            let Ok(text) = std::str::from_utf8(bytes) else {
                return Some(Err(
                    self.err(format!("not UTF-8 text: {}", super::SAVE_AS_UTF8))
                ));
            };
            if text.trim().is_empty() {
                continue;
            }
            let row = self.parse(text);
            if let Ok(r) = &row {
                if !self.unseen.is_empty() {
                    self.unseen.retain(|t| !r.fields.contains_key(t));
                    for k in r.fields.keys() {
                        if self.names.len() >= NAMES_SHOWN {
                            break;
                        }
                        self.names.insert(k.clone());
                    }
                }
            }
            return Some(row);
        }
    }
}

impl JsonlRows {
    /// At the end of the input: a `--text` field no row had, refused once.
    fn unseen_text(&mut self) -> Option<ImportError> {
        let mut unseen: Vec<String> = std::mem::take(&mut self.unseen).into_iter().collect();
        unseen.sort();
        let first = unseen.first()?;
        let names: Vec<String> = self.names.iter().map(|n| format!("{n:?}")).collect();
        Some(ImportError::Usage(format!(
            "the --text field {first:?} is in no line of the file; its fields are {}{}",
            names.join(", "),
            if self.names.len() >= NAMES_SHOWN {
                ", …"
            } else {
                ""
            }
        )))
    }
}
