//! CSV input, streamed: a header row of field names, then one record per row.
//!
//! The delimiter is the one of comma, semicolon and tab that occurs most often (outside
//! quotes) in the header line, unless given. UTF-8 with or without a byte order mark; LF or
//! CRLF line ends; quoted cells may hold delimiters, quotes (`""`) and newlines. An `id`
//! column holds record ids. Empty cells are absent fields. Cell types: see [`super::cells`].
//!
//! Line numbers in messages are the lines an editor shows, counted here ([`Watch`]) rather
//! than taken from the `csv` crate, whose count runs one short after CRLF line ends (what
//! spreadsheet programs on Windows save). A quote still open at the end of the file is
//! refused: the `csv` crate would read everything after it as one cell, silently swallowing
//! the rows that follow (a newcomer's file lost a row that way).

use super::cells::text_cell;
use super::{Header, ImportError, Opened, Row};
use crate::model::{self, Fields};
use std::collections::{HashSet, VecDeque};
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

/// Where a byte of CSV input stands, by the quoting rules the `csv` crate reads with (RFC 4180:
/// a cell that starts with `"` runs to the next lone `"`, `""` inside it is a quote; a `"`
/// elsewhere is an ordinary character; `\r`, `\n` and `\r\n` end a record outside quotes; empty
/// lines are no records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Quoting {
    /// Before a record (also on empty lines).
    RecordStart,
    /// At the start of a cell.
    CellStart,
    /// Inside a cell that did not start with a quote.
    Plain,
    /// Inside a quoted cell.
    Quoted,
    /// Right after a quote inside a quoted cell: it closed the cell, or starts `""`.
    QuoteInQuoted,
}

/// A quote opened in a cell and never closed before the end of the input.
#[derive(Debug)]
struct UnclosedQuote {
    /// The line where the quote opened (1-based).
    line: u64,
    /// The cell's column (0-based).
    column: usize,
}

impl std::fmt::Display for UnclosedQuote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a quote opened on line {} is never closed", self.line)
    }
}

impl std::error::Error for UnclosedQuote {}

/// The CSV input as the `csv` reader pulls it, watched byte by byte: the line each record
/// starts on (`starts`, taken by the rows in order; the reader is at most a buffer ahead), and
/// a quote open at the end (then the read that reaches the end fails with [`UnclosedQuote`]).
struct Watch {
    inner: Box<dyn Read + Send>,
    delim: u8,
    state: Quoting,
    /// The line of the next byte (1-based).
    line: u64,
    /// The cell being read (0-based) in the current record.
    column: usize,
    /// Where the quote that opened the current quoted cell is.
    opened: (u64, usize),
    /// The lines of the records read ahead, oldest first.
    starts: VecDeque<u64>,
}

impl Watch {
    fn new(inner: Box<dyn Read + Send>, delim: u8) -> Watch {
        Watch {
            inner,
            delim,
            state: Quoting::RecordStart,
            line: 1,
            column: 0,
            opened: (1, 0),
            starts: VecDeque::new(),
        }
    }

    fn step(&mut self, b: u8) {
        let ends_line = b == b'\r' || b == b'\n';
        if self.state == Quoting::RecordStart && !ends_line {
            self.starts.push_back(self.line);
            self.column = 0;
            self.state = Quoting::CellStart;
        }
        self.state = match self.state {
            Quoting::RecordStart => Quoting::RecordStart,
            Quoting::CellStart | Quoting::Plain | Quoting::QuoteInQuoted if b == self.delim => {
                self.column += 1;
                Quoting::CellStart
            }
            Quoting::CellStart | Quoting::Plain | Quoting::QuoteInQuoted if ends_line => {
                Quoting::RecordStart
            }
            Quoting::CellStart if b == b'"' => {
                self.opened = (self.line, self.column);
                Quoting::Quoted
            }
            Quoting::CellStart | Quoting::Plain => Quoting::Plain,
            Quoting::Quoted if b == b'"' => Quoting::QuoteInQuoted,
            Quoting::Quoted => Quoting::Quoted,
            Quoting::QuoteInQuoted if b == b'"' => Quoting::Quoted,
            // `"ab"c`: the csv crate keeps the `c`, as the rest of an ordinary cell.
            Quoting::QuoteInQuoted => Quoting::Plain,
        };
        if b == b'\n' {
            self.line += 1;
        }
    }

    /// The line of the next record the reader returns (or fails on).
    fn next_start(&mut self) -> u64 {
        self.starts.pop_front().unwrap_or(self.line)
    }
}

impl Read for Watch {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && self.state == Quoting::Quoted {
            let (line, column) = self.opened;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                UnclosedQuote { line, column },
            ));
        }
        for &b in &buf[..n] {
            self.step(b);
        }
        Ok(n)
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
    if let Some(e) = super::utf16_refusal(&first) {
        return Err(e);
    }
    if first.starts_with(b"\xEF\xBB\xBF") {
        first.drain(..3);
    }
    let delim = delimiter.unwrap_or_else(|| detect_delimiter(&first));
    let source: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(first).chain(input));
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .flexible(false)
        .has_headers(true)
        .from_reader(Watch::new(source, delim));
    let raw = match rdr.byte_headers() {
        Ok(raw) => raw.clone(),
        Err(e) => {
            let line = rdr.get_mut().next_start();
            return Err(csv_error(e, delim, line, None));
        }
    };
    let line = rdr.get_mut().next_start();
    if raw.is_empty() || (raw.len() == 1 && raw[0].is_empty()) {
        return Err(ImportError::Usage(
            "the file is empty: a CSV file needs a header line of field names, then a line \
             per record"
                .into(),
        ));
    }
    let mut names = Vec::with_capacity(raw.len());
    for (i, cell) in raw.iter().enumerate() {
        let column = format!("column {}", i + 1);
        let name = std::str::from_utf8(cell).map_err(|_| ImportError::Cell {
            unit: "line",
            line,
            column: column.clone(),
            message: format!("the header is not UTF-8 text: {}", super::SAVE_AS_UTF8),
        })?;
        if name.is_empty() {
            return Err(ImportError::Cell {
                unit: "line",
                line,
                column,
                message: "the header cell is empty: every column needs a field name".into(),
            });
        }
        if let Some(j) = names.iter().position(|n| n == name) {
            return Err(ImportError::Line {
                unit: "line",
                line,
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

/// A `csv` error of the record on `line` (counted by [`Watch`]) as a person reads it; `header`
/// names the columns once it is read.
fn csv_error(e: csv::Error, delim: u8, line: u64, header: Option<&Header>) -> ImportError {
    let text = e.to_string();
    match e.into_kind() {
        csv::ErrorKind::Io(e) => {
            match e.get_ref().and_then(|r| r.downcast_ref::<UnclosedQuote>()) {
                Some(q) => ImportError::Cell {
                    unit: "line",
                    line: q.line,
                    column: header
                        .and_then(|h| h.labels.get(q.column).cloned())
                        .unwrap_or_else(|| format!("column {}", q.column + 1)),
                    message: "this cell opens a quote that is never closed, so everything after \
                          it would be read as one cell: close the quote, or write a quote \
                          inside a quoted cell as \"\"; nothing was imported"
                        .into(),
                },
                None => ImportError::Io(e),
            }
        }
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => ImportError::Line {
            unit: "line",
            line,
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
    rdr: csv::Reader<Watch>,
    rec: csv::ByteRecord,
    header: Header,
    text: Vec<bool>,
    id_col: Option<usize>,
    delim: u8,
}

impl CsvRows {
    fn row(&self, line: u64) -> Result<Row, ImportError> {
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
                .map_err(|_| cell_err(format!("not UTF-8 text: {}", super::SAVE_AS_UTF8)))?;
            if s.is_empty() {
                continue;
            }
            any = true;
            if Some(j) == self.id_col {
                id = Some(super::file_id(s).map_err(cell_err)?);
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
            Ok(true) => {
                let line = self.rdr.get_mut().next_start();
                Some(self.row(line))
            }
            Err(e) => {
                let line = self.rdr.get_mut().next_start();
                Some(Err(csv_error(e, self.delim, line, Some(&self.header))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_bytes(bytes: &'static [u8]) -> Result<Opened, ImportError> {
        open(Box::new(bytes), None, &HashSet::new())
    }

    /// The lines of the rows of `bytes`, or the first error as a person reads it.
    fn lines(bytes: &'static [u8]) -> Result<Vec<u64>, String> {
        let opened = open_bytes(bytes).map_err(|e| e.to_string())?;
        opened
            .rows
            .map(|r| r.map(|r| r.line).map_err(|e| e.to_string()))
            .collect()
    }

    /// Lines are the ones an editor shows, with LF or CRLF line ends, blank lines and cells
    /// holding line breaks (the `csv` crate's own count ran one short after CRLF: a newcomer's
    /// "line 3 repeats line 1" was lines 4 and 2).
    #[test]
    fn rows_are_numbered_by_the_lines_an_editor_shows() {
        assert_eq!(lines(b"k;name\nA-1;x\nA-2;y\n"), Ok(vec![2, 3]));
        assert_eq!(
            lines(b"k;name\r\nA-1;x\r\nA-2;y\r\nA-1;z\r\n"),
            Ok(vec![2, 3, 4])
        );
        assert_eq!(
            lines(b"\xEF\xBB\xBFk;note\r\n\r\nA-1;\"two\r\nlines; \"\"quoted\"\"\"\r\nA-2;y\r\n"),
            Ok(vec![3, 5])
        );
        assert_eq!(lines(b"a,b\n1,2"), Ok(vec![2]));
        // A row with a cell too many is named by its own line, not the header's.
        let e = lines(b"a,b\r\n1,2\r\n1,2,3\r\n").unwrap_err();
        assert!(e.starts_with("line 3: the CSV row has 3 cells"), "{e}");
        // A cell that is not UTF-8 (a file saved as Windows-1252) on line 3.
        let e = lines(b"k;name\r\nA-1;Ann\r\nA-2;M\xFCller\r\n").unwrap_err();
        assert!(e.starts_with("line 3, column 2 (name): not UTF-8"), "{e}");
    }

    /// A quote never closed is refused naming where it opened; the `csv` crate alone read the
    /// rest of the file into that cell and the rows after it were silently lost.
    #[test]
    fn a_quote_never_closed_is_refused_naming_its_cell() {
        let e = lines(b"k;name\r\nA-1;\"unclosed\r\nA-2;y\r\n").unwrap_err();
        assert!(
            e.starts_with("line 2, column 2 (name): this cell opens a quote that is never closed"),
            "{e}"
        );
        // In the header, before its names are known.
        let e = open_bytes(b"k;\"name\nA-1;x\n").err().unwrap().to_string();
        assert!(
            e.starts_with("line 1, column 2: this cell opens a quote"),
            "{e}"
        );
        // Quotes inside a plain cell, a closed quoted cell and "" stay as they were.
        assert_eq!(lines(b"a,b\n5'11\",\"x\"\"y\"\n"), Ok(vec![2]));
    }

    /// UTF-16 (Excel's "Unicode Text") is named as such, with what to save instead.
    #[test]
    fn utf16_is_named_with_what_to_save_instead() {
        let e = open_bytes(b"\xFF\xFEk\x00;\x00").err().unwrap().to_string();
        assert!(
            e.starts_with("the file is UTF-16 text") && e.contains("\"CSV UTF-8\""),
            "{e}"
        );
    }

    /// An empty file says so, rather than "the key field is not a column; its columns are ".
    #[test]
    fn an_empty_file_is_refused_as_empty() {
        for empty in [&b""[..], b"\r\n", b"\xEF\xBB\xBF"] {
            let e = open(Box::new(empty), None, &HashSet::new())
                .err()
                .map(|e| e.to_string());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.starts_with("the file is empty")),
                "{e:?}"
            );
        }
    }

    #[test]
    fn delimiter_is_detected_from_the_header() {
        assert_eq!(detect_delimiter(b"name;age;status\r\n"), b';');
        assert_eq!(detect_delimiter(b"name,age,status\n"), b',');
        assert_eq!(detect_delimiter(b"name\tage\n"), b'\t');
        assert_eq!(detect_delimiter(b"\"a;b\",c\n"), b',');
        assert_eq!(detect_delimiter(b"name\n"), b',');
    }
}
