//! CSV input, streamed: a header row of field names, then one record per row.
//!
//! The delimiter is the one of comma, semicolon and tab that occurs most often (outside
//! quotes) in the header line, unless given. UTF-8 with or without a byte order mark; LF or
//! CRLF line ends; quoted cells may hold delimiters, quotes (`""`) and newlines. An `id`
//! column holds record ids. Empty cells are absent fields. Cell types: see [`super::cells`].

use super::cells::text_cell;
use super::{Header, ImportError, Opened, Row};
use crate::model::{self, Fields};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};

/// The delimiter of a header line: the most frequent of `,` `;` tab outside quotes (comma on
/// a tie or when there is none: a one-column file).
pub(crate) fn detect_delimiter(header: &[u8]) -> u8 {
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for &c in header {
        match c {
            b'"' => quoted = !quoted,
            b',' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b'\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let candidates = [b',', b';', b'\t'];
    let mut best = 0;
    for i in 1..3 {
        if counts[i] > counts[best] {
            best = i;
        }
    }
    candidates[best]
}

/// How a delimiter is named in messages.
fn delimiter_name(d: u8) -> String {
    match d {
        b',' => "comma".into(),
        b';' => "semicolon".into(),
        b'\t' => "tab".into(),
        other => format!("{:?}", other as char),
    }
}

/// Opens CSV input: reads and checks the header, returns the rows as a stream.
pub(crate) fn open(
    input: Box<dyn Read + Send>,
    delimiter: Option<u8>,
    text: &HashSet<String>,
) -> Result<Opened, ImportError> {
    let mut input = BufReader::with_capacity(1 << 16, input);
    let mut first = Vec::new();
    input
        .read_until(b'\n', &mut first)
        .map_err(ImportError::Io)?;
    if first.starts_with(b"\xEF\xBB\xBF") {
        first.drain(..3);
    }
    let delim = delimiter.unwrap_or_else(|| detect_delimiter(&first));
    let source: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(first).chain(input));
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .flexible(false)
        .has_headers(true)
        .from_reader(source);
    let raw = rdr.byte_headers().map_err(|e| csv_error(e, delim))?.clone();
    let mut names = Vec::with_capacity(raw.len());
    for (i, cell) in raw.iter().enumerate() {
        let column = format!("column {}", i + 1);
        let name = std::str::from_utf8(cell).map_err(|_| ImportError::Cell {
            unit: "line",
            line: 1,
            column: column.clone(),
            message: "the header is not UTF-8 text: save the file as UTF-8".into(),
        })?;
        if name.is_empty() {
            return Err(ImportError::Cell {
                unit: "line",
                line: 1,
                column,
                message: "the header cell is empty: every column needs a field name".into(),
            });
        }
        if let Some(j) = names.iter().position(|n| n == name) {
            return Err(ImportError::Line {
                unit: "line",
                line: 1,
                message: format!(
                    "columns {} and {} are both named {name:?}: rename one",
                    j + 1,
                    i + 1
                ),
            });
        }
        names.push(name.to_string());
    }
    let labels = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("column {} ({n})", i + 1))
        .collect();
    let header = Header { names, labels };
    let rows = CsvRows {
        text: header.names.iter().map(|n| text.contains(n)).collect(),
        id_col: header.names.iter().position(|n| n == "id"),
        header: header.clone(),
        rdr,
        rec: csv::ByteRecord::new(),
        delim,
    };
    Ok(Opened {
        unit: "line",
        header: Some(header),
        rows: Box::new(rows),
    })
}

fn csv_error(e: csv::Error, delim: u8) -> ImportError {
    let line = e.position().map_or(0, |p| p.line());
    let text = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(e) => ImportError::Io(e),
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => ImportError::Line {
            unit: "line",
            line: pos.map_or(line, |p| p.line()),
            message: format!(
                "the CSV row has {len} cells but the header has {expected_len}: check the \
                 delimiter (read as \
                 {}; --delimiter sets it) and that quotes are closed",
                delimiter_name(delim)
            ),
        },
        _ => ImportError::Line {
            unit: "line",
            line,
            message: format!("malformed CSV: {text}"),
        },
    }
}

struct CsvRows {
    rdr: csv::Reader<Box<dyn Read + Send>>,
    rec: csv::ByteRecord,
    header: Header,
    text: Vec<bool>,
    id_col: Option<usize>,
    delim: u8,
}

impl CsvRows {
    fn row(&self) -> Result<Row, ImportError> {
        let line = self.rec.position().map_or(0, |p| p.line());
        let mut fields = Fields::new();
        let mut id = None;
        let mut any = false;
        for (j, cell) in self.rec.iter().enumerate() {
            let cell_err = |message: String| ImportError::Cell {
                unit: "line",
                line,
                column: self.header.labels[j].clone(),
                message,
            };
            let s = std::str::from_utf8(cell)
                .map_err(|_| cell_err("not UTF-8 text: save the file as UTF-8".into()))?;
            if s.is_empty() {
                continue;
            }
            any = true;
            if Some(j) == self.id_col {
                id = Some(model::parse_id(s).map_err(|e| cell_err(e.to_string()))?);
                continue;
            }
            fields.insert(self.header.names[j].clone(), text_cell(s, self.text[j]));
        }
        model::check_fields(&fields).map_err(|e| ImportError::Line {
            unit: "line",
            line,
            message: e.to_string(),
        })?;
        Ok(Row {
            line,
            id,
            fields,
            empty: !any,
        })
    }
}

impl Iterator for CsvRows {
    type Item = Result<Row, ImportError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rdr.read_byte_record(&mut self.rec) {
            Ok(false) => None,
            Ok(true) => Some(self.row()),
            Err(e) => Some(Err(csv_error(e, self.delim))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiter_is_detected_from_the_header() {
        assert_eq!(detect_delimiter(b"name;age;status\r\n"), b';');
        assert_eq!(detect_delimiter(b"name,age,status\n"), b',');
        assert_eq!(detect_delimiter(b"name\tage\n"), b'\t');
        assert_eq!(detect_delimiter(b"\"a;b\",c\n"), b',');
        assert_eq!(detect_delimiter(b"name\n"), b',');
    }
}
