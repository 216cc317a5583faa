//! Spreadsheet input (`.xlsx`, `.xlsm`, `.xls`, `.ods`) through calamine: the first sheet, or
//! the one named with `--sheet`. Its first non-empty row is the header of field names.
//!
//! Cells keep the spreadsheet's type: text cells are text (as written), number cells numbers
//! (whole numbers as integers), TRUE/FALSE booleans, dates as ISO 8601 text (`2026-03-01`, or
//! `2026-03-01T14:30:00` with a time of day; ODS dates exactly as stored). A cell holding a
//! spreadsheet error (`#DIV/0!`) is refused naming its row and column. `--text` columns turn
//! numbers into their text (`1234`).
//!
//! `.xlsx`/`.xlsm` sheets are streamed: a reader thread walks the sheet's cells with calamine's
//! cell reader and hands rows over a bounded channel, so memory holds the workbook's shared
//! strings and a few hundred rows, not the sheet. calamine has no such reader for `.ods`,
//! `.xls` and `.xlsb`: those are read whole into memory, and a file larger than
//! [`WHOLE_SHEET_MAX_BYTES`] is refused (save it as `.xlsx` or `.csv`) rather than running the
//! laptop out of memory.

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

/// Largest `.ods`, `.xls` or `.xlsb` file imported: these are read whole, and their cells take
/// many times the (compressed) file's size in memory. `.xlsx` is streamed and has no limit.
pub(crate) const WHOLE_SHEET_MAX_BYTES: u64 = 16 << 20;

/// Rows read ahead of the import by the `.xlsx` reader thread.
const READ_AHEAD_ROWS: usize = 256;

/// The sheet to read: `--sheet`, or the first.
fn pick_sheet(
    names: &[String],
    sheet: Option<&str>,
    bad: impl Fn(String) -> ImportError,
) -> Result<String, ImportError> {
    match sheet {
        Some(s) if names.iter().any(|n| n == s) => Ok(s.to_string()),
        Some(s) => Err(bad(format!(
            "has no sheet {s:?}; its sheets are {}",
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        None => names
            .first()
            .cloned()
            .ok_or_else(|| bad("has no sheets".into())),
    }
}

/// Why the file at `path`, named `.ext`, cannot be a spreadsheet of that kind, judged by its
/// first bytes: `.xlsx`, `.xlsm` and `.ods` files are zip archives (`PK\x03\x04`), `.xls` an
/// OLE2 compound file (`D0 CF 11 E0`). A CSV renamed `.ods` got calamine's
/// `Ods error: Zip error: InvalidArchive("Could not find EOCD")`, which says nothing a person
/// can act on. `None` when the bytes fit (or the file cannot be read: opening it says why).
fn not_a_spreadsheet(path: &Path, ext: &str) -> Option<String> {
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(path).ok()?;
    let n = std::io::Read::read(&mut f, &mut head).ok()?;
    let fits = match ext {
        "xls" => head[..n] == [0xD0, 0xCF, 0x11, 0xE0],
        _ => head[..n] == *b"PK\x03\x04",
    };
    if fits {
        return None;
    }
    // Printable text (UTF-8 bytes included), as a CSV or JSONL file starts.
    let text = n > 0
        && head[..n]
            .iter()
            .all(|b| !b.is_ascii_control() || b.is_ascii_whitespace());
    Some(format!(
        "not a .{ext} spreadsheet (its content is not one{}): if it is a CSV or text \
         file, rename it to .csv (or .jsonl) and import that; otherwise save it again from the \
         spreadsheet program as .xlsx or .ods",
        if n == 0 {
            ", the file is empty".to_string()
        } else if text {
            ", it looks like text".to_string()
        } else {
            String::new()
        }
    ))
}

/// A spreadsheet calamine cannot read, in words: damaged (its zip archive or XML does not
/// read), protected, or what calamine says.
fn unreadable(e: &dyn std::fmt::Display, ext: &str) -> String {
    let said = e.to_string();
    if said.contains("Zip") || said.contains("zip") || said.contains("Xml") {
        format!(
            "cannot read this .{ext} spreadsheet: the file is damaged or incomplete (copy it \
             again, or open it in the spreadsheet program and save it again)"
        )
    } else if said.to_lowercase().contains("password") || said.contains("Encrypted") {
        format!(
            "cannot read this .{ext} spreadsheet: it is protected with a password (save a copy \
             without the password and import that)"
        )
    } else {
        format!("cannot read this .{ext} spreadsheet: {said}")
    }
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
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    // A missing file is "cannot open FILE: no such file", as for CSV, not calamine's words.
    let size = std::fs::metadata(path)
        .map_err(|source| ImportError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if ext == "xlsx" || ext == "xlsm" {
        if let Some(why) = not_a_spreadsheet(path, &ext) {
            return Err(bad(why));
        }
        return open_streamed(path, sheet, text);
    }
    if size > WHOLE_SHEET_MAX_BYTES {
        return Err(bad(format!(
            "is {} MB; .{ext} spreadsheets are read whole into memory, so fieldsync imports \
             them up to {} MB: save the sheet as .xlsx (read row by row, any size) or .csv \
             and import that",
            size.div_ceil(1 << 20),
            WHOLE_SHEET_MAX_BYTES >> 20
        )));
    }
    if let Some(why) = not_a_spreadsheet(path, &ext) {
        return Err(bad(why));
    }
    let mut wb = calamine::open_workbook_auto(path).map_err(|e| bad(unreadable(&e, &ext)))?;
    let name = pick_sheet(&wb.sheet_names(), sheet, bad)?;
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

/// One sheet row as read: its 0-based sheet row and its non-empty cells by 0-based column.
type CellRow = (u32, Vec<(u32, Data)>);

/// Opens an `.xlsx`/`.xlsm` sheet read row by row on a thread (see the module doc). The header
/// is the first row holding a cell; its columns are the fields.
fn open_streamed(
    path: &Path,
    sheet: Option<&str>,
    text: &HashSet<String>,
) -> Result<Opened, ImportError> {
    let p = path.to_path_buf();
    let bad = move |message: String| ImportError::Sheet {
        path: p.clone(),
        message,
    };
    let mut wb: calamine::Xlsx<_> =
        calamine::open_workbook(path).map_err(|e| bad(unreadable(&e, "xlsx")))?;
    let name = pick_sheet(&wb.sheet_names(), sheet, &bad)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<CellRow, String>>(READ_AHEAD_ROWS);
    std::thread::spawn(move || {
        let mut cells = match wb.worksheet_cells_reader(&name) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(format!("cannot read sheet {name:?}: {e}")));
                return;
            }
        };
        let mut cur: Option<CellRow> = None;
        loop {
            match cells.next_cell() {
                Ok(Some(cell)) => {
                    let (r, c) = cell.get_position();
                    let v = Data::from(cell.get_value().clone());
                    if matches!(v, Data::Empty) {
                        continue;
                    }
                    match &mut cur {
                        Some((row, cs)) if *row == r => cs.push((c, v)),
                        _ => {
                            // The receiver is gone when the import stopped early: stop too.
                            if let Some(done) = cur.take() {
                                if tx.send(Ok(done)).is_err() {
                                    return;
                                }
                            }
                            cur = Some((r, vec![(c, v)]));
                        }
                    }
                }
                Ok(None) => {
                    if let Some(done) = cur.take() {
                        let _ = tx.send(Ok(done));
                    }
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot read sheet {name:?}: {e}")));
                    return;
                }
            }
        }
    });
    let first = match rx.recv() {
        Err(_) => None,
        Ok(Ok(r)) => Some(r),
        Ok(Err(m)) => return Err(bad(m)),
    };
    let (mut names, mut labels) = (Vec::new(), Vec::new());
    let mut col0 = 0;
    if let Some((r, cells)) = &first {
        let lo = cells.iter().map(|c| c.0).min().unwrap_or(0);
        let hi = cells.iter().map(|c| c.0).max().unwrap_or(0);
        for col in lo..=hi {
            let letters = column_letters(col);
            let n = match cells.iter().find(|c| c.0 == col).map(|c| &c.1) {
                None | Some(Data::Empty) => String::new(),
                Some(Data::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            if !n.is_empty() {
                if let Some(k) = names.iter().position(|x| *x == n) {
                    return Err(ImportError::Line {
                        unit: "row",
                        line: u64::from(*r) + 1,
                        message: format!(
                            "columns {} and {letters} are both named {n:?}: rename one",
                            column_letters(lo + k as u32)
                        ),
                    });
                }
            }
            labels.push(format!("column {letters} ({n})"));
            names.push(n);
        }
        col0 = lo;
    }
    let header = Header { names, labels };
    let rows = StreamedRows {
        text: header.names.iter().map(|n| text.contains(n)).collect(),
        header: header.clone(),
        rx: first.is_some().then_some(rx),
        col0,
        path: path.to_path_buf(),
    };
    Ok(Opened {
        unit: "row",
        header: Some(header),
        rows: Box::new(rows),
    })
}

/// The data rows of a streamed sheet, as the reader thread sends them.
struct StreamedRows {
    rx: Option<std::sync::mpsc::Receiver<Result<CellRow, String>>>,
    header: Header,
    text: Vec<bool>,
    /// The header's first column: field `j` is sheet column `col0 + j`.
    col0: u32,
    path: std::path::PathBuf,
}

impl Iterator for StreamedRows {
    type Item = Result<Row, ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (r, cells) = match self.rx.as_ref()?.recv() {
            Err(_) => return None,
            Ok(Err(message)) => {
                self.rx = None;
                return Some(Err(ImportError::Sheet {
                    path: self.path.clone(),
                    message,
                }));
            }
            Ok(Ok(row)) => row,
        };
        let line = u64::from(r) + 1;
        let mut row_cells = vec![Data::Empty; self.header.names.len()];
        for (c, v) in cells {
            match c
                .checked_sub(self.col0)
                .map(|j| j as usize)
                .filter(|j| *j < row_cells.len())
            {
                Some(j) => row_cells[j] = v,
                None => {
                    return Some(Err(ImportError::Cell {
                        unit: "row",
                        line,
                        column: format!("column {} ()", column_letters(c)),
                        message: "a value under an empty header cell: name the column or \
                                  clear the value"
                            .into(),
                    }))
                }
            }
        }
        Some(row(&self.header, &self.text, line, &row_cells))
    }
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
            id = Some(super::file_id(&s).map_err(err)?);
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

    /// A file that is not the spreadsheet its name says is refused in words a person can act
    /// on (a CSV renamed `.ods` got calamine's `InvalidArchive("Could not find EOCD")`), and
    /// so is a damaged one.
    #[test]
    fn a_file_that_is_not_a_spreadsheet_is_called_so() {
        let dir = tempfile::tempdir().unwrap();
        let said = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            match open(&p, None, &HashSet::new()) {
                Ok(_) => panic!("{name} opened"),
                Err(e) => e.to_string(),
            }
        };
        for name in ["people.ods", "people.xlsx", "people.XLS"] {
            let e = said(name, b"case_number;name\r\nC-1;Ann\r\n");
            assert!(
                e.contains(
                    "spreadsheet (its content is not one, it looks like text): if it is a \
                            CSV or text file, rename it to .csv"
                ),
                "{e}"
            );
            assert!(!e.contains("EOCD") && !e.contains("(\""), "{e}");
        }
        let e = said("empty.xlsx", b"");
        assert!(e.contains("not one, the file is empty"), "{e}");
        // A zip archive cut short: damaged, not "Zip error: ...".
        let e = said("cut.ods", b"PK\x03\x04\x14\x00\x00\x00\x08\x00");
        assert!(
            e.contains("cannot read this .ods spreadsheet: the file is damaged or incomplete"),
            "{e}"
        );
        let e = said("cut.xlsx", b"PK\x03\x04\x14\x00\x00\x00\x08\x00");
        assert!(
            e.contains("cannot read this .xlsx spreadsheet: the file is damaged or incomplete"),
            "{e}"
        );
    }

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
