//! Spreadsheet input (`.xlsx`, `.xlsm`, `.xls`, `.ods`) through calamine: the first sheet, or
//! the one named with `--sheet`. Its first non-empty row is the header of field names.
//!
//! Cells keep the spreadsheet's type: text cells are text (as written), number cells numbers
//! (whole numbers as integers), TRUE/FALSE booleans, dates as ISO 8601 text (`2026-03-01`, or
//! `2026-03-01T14:30:00` with a time of day; ODS dates exactly as stored). A cell holding a
//! spreadsheet error (`#DIV/0!`) is refused naming its row and column. `--text` columns turn
//! numbers into their text (`1234`).
//!
//! Unlike CSV and JSONL this reads the whole sheet into memory (calamine has no streaming
//! reader for all formats); a sheet is at most about a million rows.

use super::cells::as_text;
use super::{Header, ImportError, Opened, Row};
use crate::model::{self, Fields};
use calamine::{Data, Reader};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

/// Spreadsheet column letters: 0 → A, 25 → Z, 26 → AA.
pub(crate) fn column_letters(mut n: u32) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'A' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// Opens a spreadsheet and reads one sheet.
pub(crate) fn open(
    path: &Path,
    sheet: Option<&str>,
    text: &HashSet<String>,
) -> Result<Opened, ImportError> {
    let bad = |message: String| ImportError::Sheet {
        path: path.to_path_buf(),
        message,
    };
    let mut wb = calamine::open_workbook_auto(path)
        .map_err(|e| bad(format!("cannot read the spreadsheet: {e}")))?;
    let names = wb.sheet_names();
    let name = match sheet {
        Some(s) if names.iter().any(|n| n == s) => s.to_string(),
        Some(s) => {
            return Err(bad(format!(
                "has no sheet {s:?}; its sheets are {}",
                names
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        None => names
            .first()
            .cloned()
            .ok_or_else(|| bad("has no sheets".into()))?,
    };
    let range = wb
        .worksheet_range(&name)
        .map_err(|e| bad(format!("cannot read sheet {name:?}: {e}")))?;
    let (row0, col0) = range.start().unwrap_or((0, 0));
    let (height, width) = range.get_size();
    let mut names: Vec<String> = Vec::new();
    let mut labels = Vec::new();
    for j in 0..if height > 0 { width } else { 0 } {
        let letters = column_letters(col0 + j as u32);
        let n = match range.get((0, j)) {
            None | Some(Data::Empty) => String::new(),
            Some(Data::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        if !n.is_empty() {
            if let Some(k) = names.iter().position(|x| *x == n) {
                return Err(ImportError::Line {
                    unit: "row",
                    line: u64::from(row0) + 1,
                    message: format!(
                        "columns {} and {letters} are both named {n:?}: rename one",
                        column_letters(col0 + k as u32)
                    ),
                });
            }
        }
        labels.push(format!("column {letters} ({n})"));
        names.push(n);
    }
    let header = Header { names, labels };
    let rows = SheetRows {
        text: header.names.iter().map(|n| text.contains(n)).collect(),
        header: header.clone(),
        range,
        next: 1,
        height,
        row0: u64::from(row0),
    };
    Ok(Opened {
        unit: "row",
        header: Some(header),
        rows: Box::new(rows),
    })
}

/// The data rows of a sheet, converted one at a time (the sheet itself is already in memory).
struct SheetRows {
    range: calamine::Range<Data>,
    header: Header,
    text: Vec<bool>,
    /// Next row, relative to the range's first (the header).
    next: usize,
    height: usize,
    /// The sheet row (0-based) of the range's first row.
    row0: u64,
}

impl Iterator for SheetRows {
    type Item = Result<Row, ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.height {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let cells: Vec<Data> = (0..self.header.names.len())
            .map(|j| self.range.get((i, j)).cloned().unwrap_or(Data::Empty))
            .collect();
        Some(row(
            &self.header,
            &self.text,
            self.row0 + i as u64 + 1,
            &cells,
        ))
    }
}

fn row(header: &Header, text: &[bool], line: u64, cells: &[Data]) -> Result<Row, ImportError> {
    let mut fields = Fields::new();
    let mut id = None;
    for (j, cell) in cells.iter().enumerate() {
        let err = |message: String| ImportError::Cell {
            unit: "row",
            line,
            column: header.labels[j].clone(),
            message,
        };
        let v = match cell {
            Data::Empty => continue,
            Data::String(s) if s.is_empty() => continue,
            Data::String(s) => Value::String(s.clone()),
            Data::Int(i) => Value::from(*i),
            Data::Float(f) => float(*f),
            Data::Bool(b) => Value::Bool(*b),
            Data::DateTime(d) => Value::String(excel_date(d.as_f64(), d.is_duration())),
            Data::DateTimeIso(s) | Data::DurationIso(s) => Value::String(s.clone()),
            Data::Error(e) => {
                return Err(err(format!(
                    "the cell holds the spreadsheet error {e}: fix or clear it"
                )))
            }
        };
        let name = &header.names[j];
        if name.is_empty() {
            return Err(err(
                "a value under an empty header cell: name the column or clear the value".into(),
            ));
        }
        if name == "id" {
            let s = match &v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            id = Some(model::parse_id(&s).map_err(|e| err(e.to_string()))?);
            continue;
        }
        let v = if text[j] { as_text(&v) } else { v };
        fields.insert(name.clone(), v);
    }
    model::check_fields(&fields).map_err(|e| ImportError::Line {
        unit: "row",
        line,
        message: e.to_string(),
    })?;
    Ok(Row {
        line,
        empty: fields.is_empty() && id.is_none(),
        id,
        fields,
    })
}

/// A spreadsheet number: whole numbers that an f64 holds exactly become integers.
fn float(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

/// An Excel date serial (days since 1899-12-30, fraction = time of day) as ISO 8601 text.
fn excel_date(serial: f64, duration: bool) -> String {
    if duration {
        let secs = (serial * 86_400.0).round() as i64;
        return format!("PT{}H{}M{}S", secs / 3600, secs / 60 % 60, secs % 60);
    }
    let base = chrono::NaiveDate::from_ymd_opt(1899, 12, 30)
        .unwrap_or_default()
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default();
    let ms = (serial * 86_400_000.0).round() as i64;
    let t = base + chrono::Duration::milliseconds(ms);
    if ms % 86_400_000 == 0 {
        t.format("%Y-%m-%d").to_string()
    } else if ms % 1000 == 0 {
        t.format("%Y-%m-%dT%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_and_dates() {
        assert_eq!(column_letters(0), "A");
        assert_eq!(column_letters(25), "Z");
        assert_eq!(column_letters(26), "AA");
        assert_eq!(column_letters(27), "AB");
        assert_eq!(excel_date(46082.0, false), "2026-03-01");
        assert_eq!(excel_date(46082.5, false), "2026-03-01T12:00:00");
        assert_eq!(float(34.0), serde_json::json!(34));
        assert_eq!(float(2.5), serde_json::json!(2.5));
    }
}
