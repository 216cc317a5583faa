//! `fieldsync import`: bringing existing lists in without duplicating, garbling or running out
//! of memory.
//!
//! Reading: [`csv`] (streamed, delimiter detected), [`jsonl`] (streamed), [`sheet`] (xlsx, ods
//! through calamine); the type rules are in [`cells`]. Every reader yields [`Row`]s with their
//! source line; this module turns each row into a record id and hands bounded chunks to the
//! store ([`crate::store::StagedImport`]), which makes the whole import atomic.
//!
//! Record ids, in order of precedence:
//! - an `id` column (or JSONL `"id"`): the file's ids (a record exported from fieldsync);
//! - `--key F1,F2`: UUID v5 of `table 0x00 canonical JSON array of the key values as text`,
//!   in a namespace derived from the deployment id (see [`namespace`]), so the same row
//!   imported on two laptops of one deployment is one record once they sync;
//! - `--new-ids`: a new random id for every row (importing twice makes every record twice).
//!
//! With `--key`, a record this laptop already holds under another id whose key fields have the
//! row's values (written by `put`, the API, the console or an import without `--key`) is the
//! row's record: the row updates it (or leaves it deleted) rather than adding a second record
//! with that key ([`keyed_elsewhere`]; two such records for one key refuse the import, and so
//! does another live record with the key beside the one with the derived id, e.g. a record put
//! on another laptop before the registry reached it, met by sync).
//!
//! A successful `--key` import records the key in the replicated table `fs_import_keys`
//! (`store/unique.rs`): every laptop then keeps the key unique like a configured unique field,
//! so two records with one key, made on two laptops apart, become a name clash everywhere.
//!
//! Without any of them the import is refused. A row for an existing record: with `--key`, its
//! non-empty cells are set and the record's other fields kept (a patch, so fields added in the
//! field survive a re-import of the registry; a JSONL `null` removes a field); with ids from
//! the file, the row replaces the record's fields (a put, as an export → import round trip
//! expects). Rows that change nothing write nothing; a deleted record stays deleted.

mod cells;
// The exact-number rule is the same for put, patch and the HTTP API.
pub(crate) use cells::{first_inexact_number, Inexact};
mod csv;
mod jsonl;
mod sheet;

use crate::model::{self, Fields};
use crate::store::staging::APPLY_CHUNK;
use crate::store::unique::UniqueKey;
use crate::store::{ImportCounts, ImportRow, StagedImport, Store, StoreError, UpdateMode};
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Rows held in memory before they are staged, and the size up to which an import is written
/// as one batch without staging. Small, because sled needs many times a batch's size in memory
/// while applying it; larger chunks were not faster (measured with 1,000 to 10,000 rows).
pub const CHUNK_ROWS: usize = 1_000;

/// Root of the id namespaces: `namespace = UUID v5(ROOT, "deployment:" + deployment id)`.
pub const NAMESPACE_ROOT: Uuid = Uuid::from_u128(0x6d2f_41c4_9a3e_4f0b_8c55_1e7a_b3d9_0f21);

/// Namespace of derived ids on a laptop that has not joined a deployment. Rows imported before
/// joining get other ids than the same rows imported after: join first, then import.
pub const STANDALONE_NAMESPACE: Uuid = Uuid::from_u128(0x0b7e_93a1_5c2d_4e86_a4f0_7d19_c2e5_8a36);

/// What an import reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON lines.
    Jsonl,
    /// Comma-, semicolon- or tab-separated values.
    Csv,
    /// A spreadsheet (xlsx, xlsm, xls, ods).
    Sheet,
}

impl Format {
    /// The format of a file by its extension, in any case: `.csv`/`.tsv` CSV; `.xlsx`, `.xlsm`,
    /// `.xls`, `.ods` spreadsheets; anything else JSONL.
    pub fn of(path: &Path) -> Format {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "csv" | "tsv" => Format::Csv,
            "xlsx" | "xlsm" | "xls" | "ods" => Format::Sheet,
            _ => Format::Jsonl,
        }
    }
}

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Natural key fields: rows are matched to records by these (`--key`).
    pub key: Vec<String>,
    /// Every row is a new record (`--new-ids`).
    pub new_ids: bool,
    /// CSV delimiter; `None` detects it from the header.
    pub delimiter: Option<u8>,
    /// Spreadsheet sheet; `None` is the first.
    pub sheet: Option<String>,
    /// Fields always kept as text (`--text`).
    pub text: Vec<String>,
    /// Rows per chunk (staging and roll-forward); `None`: [`CHUNK_ROWS`]. Smaller chunks let
    /// tests exercise a staged import with a small file.
    pub chunk_rows: Option<usize>,
    /// Check the file and count what it would do, writing nothing (`--dry-run`).
    pub dry_run: bool,
    /// Write the file's value even where it is one the record held before an edit changed
    /// it (`--overwrite`); by default such a field keeps the edit ([`ImportSummary::kept`]).
    pub overwrite: bool,
}

/// Field changes listed in a summary, at most (the counts cover every row).
pub const CHANGES_SHOWN: usize = 20;

/// One field an import changes (or, with `--dry-run`, would change) in a record that exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// The record's id.
    pub record: Uuid,
    /// The row's key values (`--key`, joined with `,`), or `null` for rows identified by id.
    pub key: Option<String>,
    /// The field.
    pub field: String,
    /// Its value before (`null`: not set).
    pub old: Value,
    /// Its value after (`null`: removed).
    pub new: Value,
}

/// A column whose cells the type rules read as numbers in some rows and as text in others
/// (see [`ImportSummary::mixed_types`]): postcodes `75001` and `01000`, decimals `80` and
/// `70,5` from a spreadsheet that writes decimal commas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MixedColumn {
    /// The column's field.
    pub field: String,
    /// Cells read as numbers.
    pub numbers: u64,
    /// Cells read as text.
    pub texts: u64,
    /// Of those, cells that are a number written with a decimal comma (`70,5`): the type
    /// rules read a decimal point only.
    pub decimal_commas: u64,
}

/// Whether `s` is a number written with a decimal comma, `70,5` or `-0,25` (not `1,000,000`,
/// which is a thousands separator or a list).
fn decimal_comma(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    match digits.split_once(',') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// A field an import left as edited (see [`ImportSummary::kept_edited`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeptEdit {
    /// The record.
    pub record: Uuid,
    /// Its key values as `--key` reads them (comma-separated), when imported by key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The field.
    pub field: String,
    /// The file's value, an earlier one of the field (`null`: not set).
    pub file: Value,
    /// The value kept, as edited since (`null`: not set).
    pub kept: Value,
}

/// What an import did: `records` rows read (empty rows skipped), and what became of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// The table.
    pub table: String,
    /// Rows imported.
    pub records: u64,
    /// New records.
    pub inserted: u64,
    /// Records changed (an edit with history).
    pub updated: u64,
    /// Rows whose record already held these values (nothing written).
    pub unchanged: u64,
    /// Rows for records deleted (here or on another laptop): left deleted (an import never
    /// resurrects).
    pub deleted_kept: u64,
    /// The first [`CHANGES_SHOWN`] field changes to records that existed, in file order, so a
    /// person sees what a re-import overwrote (empty when none; every change is also in the
    /// record's history). Every count and list is always present, so a script can rely on it.
    pub changes: Vec<FieldChange>,
    /// Fields of existing records left as they are because the file's value is one the field
    /// held before an edit changed it, here or on another laptop (a re-import of a list does
    /// not undo what was corrected in the field since; `--overwrite` writes the file's value).
    pub kept_edited: u64,
    /// The first [`CHANGES_SHOWN`] of those fields (empty when none).
    pub kept: Vec<KeptEdit>,
    /// Rows whose record differs from the file only in such fields: nothing written. Not
    /// counted in `unchanged` (the record is not as in the file), so `records` is the sum of
    /// `inserted`, `updated`, `unchanged`, `deleted_kept` and this.
    pub kept_rows: u64,
    /// The `--key` fields, when this import made them an import key of the table (or a dry
    /// run would): from then on every laptop of the deployment keeps them unique in it
    /// (`store/unique.rs`). `null` when the key was one already, or there is none. A newcomer
    /// made person names a deployment-wide key with one `--key name` and was not told.
    pub new_key: Option<Vec<String>>,
    /// With `new_key`: how many values of the key live records of the table already shared
    /// (records the file did not name), each logged as a name clash on every laptop as the key
    /// is made; for a field that may repeat (names) a sign the key is wrong
    /// (`fieldsync import-keys drop` undoes it). 0 otherwise.
    pub key_clashes: u64,
    /// CSV and spreadsheet columns (not `--text` ones) read as numbers in some rows and as
    /// text in others, in the file's column order: said, because a postcode or phone column
    /// whose leading-zero values stay text while the others become numbers, or a decimal
    /// column half read as text, is rarely what was meant (`--text FIELD` reads a column
    /// whole as text). Empty for JSONL, whose values carry their own types.
    pub mixed_types: Vec<MixedColumn>,
    /// `true` for `--dry-run`: nothing was written, the counts say what importing would do.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// Why an import was refused or failed. Nothing of the import is written in any case.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The command cannot work as given (options, missing id or key).
    #[error("{0}")]
    Usage(String),
    /// A line or row cannot be used.
    #[error("{unit} {line}: {message}")]
    Line {
        /// "line" (CSV, JSONL) or "row" (spreadsheet).
        unit: &'static str,
        /// 1-based line or row.
        line: u64,
        /// What is wrong and what to do.
        message: String,
    },
    /// A cell cannot be used.
    #[error("{unit} {line}, {column}: {message}")]
    Cell {
        /// "line" or "row".
        unit: &'static str,
        /// 1-based line or row.
        line: u64,
        /// The column, with its field name.
        column: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Two rows for one record.
    #[error(
        "{unit} {second} repeats {unit} {first} ({what}): a file may hold each record once; \
         remove or merge one of the two"
    )]
    Duplicate {
        /// "line" or "row".
        unit: &'static str,
        /// The earlier row.
        first: u64,
        /// The later row.
        second: u64,
        /// The shared key or id.
        what: String,
    },
    /// The file cannot be opened.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The spreadsheet cannot be read.
    #[error("{}: {message}", path.display())]
    Sheet {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Reading the input failed midway.
    #[error("reading the input: {0}")]
    Io(std::io::Error),
    /// The store refused a row.
    #[error("{unit} {line}: {source}")]
    Row {
        /// "line" or "row".
        unit: &'static str,
        /// 1-based line or row.
        line: u64,
        /// The store's reason.
        source: StoreError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ImportError {
    /// True for input the user got wrong (CLI exit code 2); false for I/O and database failures.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ImportError::Io(_) => false,
            ImportError::Row { source, .. } | ImportError::Store(source) => {
                source.is_invalid_input()
            }
            _ => true,
        }
    }
}

/// The header of a CSV file or sheet: field names and their labels for messages.
#[derive(Clone, Debug)]
pub(crate) struct Header {
    names: Vec<String>,
    /// "column 3 (case_number)" or "column C (case_number)".
    labels: Vec<String>,
}

/// One row read from the input.
pub(crate) struct Row {
    line: u64,
    /// From an `id` column or key.
    id: Option<Uuid>,
    fields: Fields,
    /// Every cell empty: skipped (spreadsheets often end in formatted empty rows).
    empty: bool,
}

/// An opened input: its header (if it has one) and its rows.
pub(crate) struct Opened {
    unit: &'static str,
    header: Option<Header>,
    rows: Box<dyn Iterator<Item = Result<Row, ImportError>> + Send>,
}

/// Rows handed over from the reading thread at a time.
const READ_AHEAD_ROWS: usize = 256;

/// Batches of [`READ_AHEAD_ROWS`] the reading thread may be ahead (bounded memory: ~1 MB of
/// gen.py rows).
const READ_AHEAD_BATCHES: usize = 4;

/// `rows`, parsed on a thread of their own while the caller checks and stages the rows before
/// them: reading a file (JSON or CSV parsing, the type rules, validation) was 0.4 s of the
/// 0.7 s in which a 100,000-row JSONL import read its file on one core while the other waited
/// (profile, session 12). Rows and the first error come in file order, as from `rows`; the
/// thread stops after an error, at the end of the input, or when the caller drops the
/// iterator (an import refused by a later check).
fn read_ahead(
    rows: Box<dyn Iterator<Item = Result<Row, ImportError>> + Send>,
) -> impl Iterator<Item = Result<Row, ImportError>> {
    let (tx, rx) =
        std::sync::mpsc::sync_channel::<Vec<Result<Row, ImportError>>>(READ_AHEAD_BATCHES);
    let reader = move || {
        let mut batch = Vec::with_capacity(READ_AHEAD_ROWS);
        for r in rows {
            let failed = r.is_err();
            batch.push(r);
            if batch.len() >= READ_AHEAD_ROWS || failed {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(READ_AHEAD_ROWS));
                // The caller stopped reading (it refused the import): nothing more to do.
                if tx.send(full).is_err() || failed {
                    return;
                }
            }
        }
        let _ = tx.send(batch);
    };
    let spawned = std::thread::Builder::new()
        .name("import-read".into())
        .spawn(reader);
    // A thread that cannot start is said as the first (and last) row.
    let refused = spawned.err().map(|e| {
        Err(ImportError::Usage(format!(
            "could not start the thread that reads the file ({e}): free some memory or close \
             other programs, then import again"
        )))
    });
    refused.into_iter().chain(rx.into_iter().flatten())
}

/// The id namespace of this laptop: from its deployment, or [`STANDALONE_NAMESPACE`].
pub fn namespace(store: &Store) -> Result<Uuid, ImportError> {
    namespace_in(store.dir())
}

/// [`namespace`] of the laptop whose data directory is `dir` (read from its credential).
pub fn namespace_in(dir: &Path) -> Result<Uuid, ImportError> {
    let cred = crate::mesh::load_credential(dir)
        .map_err(|e| ImportError::Usage(format!("reading this laptop's credential: {e}")))?;
    Ok(match cred {
        Some(c) => {
            let mesh = crate::mesh::mesh_id(&c.ca_cert).map_err(|e| {
                ImportError::Usage(format!("reading this laptop's credential: {e}"))
            })?;
            Uuid::new_v5(&NAMESPACE_ROOT, format!("deployment:{mesh}").as_bytes())
        }
        None => STANDALONE_NAMESPACE,
    })
}

/// The record id of a row by its key values (each as text: strings as they are, numbers and
/// booleans as JSON), so `34` in a CSV and `"34"` in JSONL name the same record.
pub fn key_id(namespace: &Uuid, table: &str, values: &[String]) -> Uuid {
    let mut name = table.as_bytes().to_vec();
    name.push(0);
    name.extend(serde_json::to_vec(values).unwrap_or_default());
    Uuid::new_v5(namespace, &name)
}

/// Most fields [`key_behind`] tries as a key of three (a record with more is tried with keys
/// of one and two fields only: 24 × 23 × 22 ids at most).
const KEY_SEARCH_FIELDS: usize = 24;

/// The `--key` fields and their values (as text) that `id` was derived from ([`key_id`] in
/// `namespace`), found among `fields` (a record's values when it was created) as keys of up
/// to three fields in any order; `None` when no such key gives `id`: then the id was not made
/// by `import --key` here (it came from `put`, an `id` column, `--new-ids`, a longer key, or
/// another namespace). Derived ids are UUID v5, so any other id is answered at once.
pub fn key_behind(
    namespace: &Uuid,
    table: &str,
    id: Uuid,
    fields: &[(&str, &Value)],
) -> Option<Vec<(String, String)>> {
    if id.get_version_num() != 5 {
        return None;
    }
    // As `key_values` reads a key cell: text as it is, numbers and booleans as JSON.
    let texts: Vec<(&str, String)> = fields
        .iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) if !s.is_empty() => Some((*k, s.clone())),
            Value::Number(_) | Value::Bool(_) => Some((*k, v.to_string())),
            _ => None,
        })
        .collect();
    let n = texts.len();
    let found = |idx: &[usize]| {
        let values: Vec<String> = idx.iter().map(|&i| texts[i].1.clone()).collect();
        (key_id(namespace, table, &values) == id).then(|| {
            idx.iter()
                .map(|&i| (texts[i].0.to_string(), texts[i].1.clone()))
                .collect()
        })
    };
    for a in 0..n {
        if let Some(k) = found(&[a]) {
            return Some(k);
        }
    }
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            if let Some(k) = found(&[a, b]) {
                return Some(k);
            }
        }
    }
    if n <= KEY_SEARCH_FIELDS {
        for a in 0..n {
            for b in (0..n).filter(|&b| b != a) {
                for c in (0..n).filter(|&c| c != a && c != b) {
                    if let Some(k) = found(&[a, b, c]) {
                        return Some(k);
                    }
                }
            }
        }
    }
    None
}

/// Imports `path` (format by extension, see [`Format::of`]) into `table`, all or nothing.
pub fn import_file(
    store: &Store,
    table: &str,
    path: &Path,
    opts: &ImportOptions,
) -> Result<ImportSummary, ImportError> {
    let text: HashSet<String> = opts.text.iter().cloned().collect();
    check_options(store, table, opts)?;
    // Opening a folder works; reading it fails later as "it is a folder", without its name.
    if path.is_dir() {
        return Err(ImportError::Usage(format!(
            "{} is a folder, not a file: name the file to import in it, e.g. {}",
            path.display(),
            path.join("people.csv").display()
        )));
    }
    let format = Format::of(path);
    if format != Format::Csv && opts.delimiter.is_some() {
        return Err(ImportError::Usage(
            "--delimiter is for CSV files (.csv, .tsv)".into(),
        ));
    }
    if format != Format::Sheet && opts.sheet.is_some() {
        return Err(ImportError::Usage(
            "--sheet is for spreadsheets (.xlsx, .ods)".into(),
        ));
    }
    let opened = match format {
        Format::Sheet => sheet::open(path, opts.sheet.as_deref(), &text)?,
        other => {
            let f = std::fs::File::open(path).map_err(|source| ImportError::Open {
                path: path.to_path_buf(),
                source,
            })?;
            open_stream(Box::new(f), other, table, opts, &text)?
        }
    };
    run(store, table, opened, opts)
}

/// Imports a stream (standard input) of the given format (not a spreadsheet) into `table`.
pub fn import_reader(
    store: &Store,
    table: &str,
    input: Box<dyn Read + Send>,
    format: Format,
    opts: &ImportOptions,
) -> Result<ImportSummary, ImportError> {
    let text: HashSet<String> = opts.text.iter().cloned().collect();
    check_options(store, table, opts)?;
    if format == Format::Sheet {
        return Err(ImportError::Usage(
            "a spreadsheet cannot be read from standard input: give its file name".into(),
        ));
    }
    let opened = open_stream(input, format, table, opts, &text)?;
    run(store, table, opened, opts)
}

fn open_stream(
    input: Box<dyn Read + Send>,
    format: Format,
    table: &str,
    opts: &ImportOptions,
    text: &HashSet<String>,
) -> Result<Opened, ImportError> {
    Ok(match format {
        Format::Csv => csv::open(input, opts.delimiter, text)?,
        _ => jsonl::open(input, table, text),
    })
}

fn check_options(store: &Store, table: &str, opts: &ImportOptions) -> Result<(), ImportError> {
    model::validate_table(table).map_err(|e| ImportError::Usage(e.to_string()))?;
    if table.starts_with(crate::mesh::SYSTEM_PREFIX) {
        return Err(ImportError::Usage(
            model::ValidationError::Reserved(table.to_string()).to_string(),
        ));
    }
    if !opts.key.is_empty() && opts.new_ids {
        return Err(ImportError::Usage(
            "--key and --new-ids exclude each other: --key matches rows to records, \
             --new-ids makes every row a new record"
                .into(),
        ));
    }
    if let Some((_, k)) = opts
        .key
        .iter()
        .enumerate()
        .find(|(i, k)| opts.key[..*i].contains(k))
    {
        return Err(ImportError::Usage(format!(
            "--key names {k:?} twice: name each field of the key once, e.g. --key {k}"
        )));
    }
    if opts.key.iter().any(|k| k.is_empty()) {
        return Err(ImportError::Usage(format!(
            "--key {:?} has an empty field name (a comma too many?): name the columns that \
             identify a row, e.g. --key case_number or --key name,district",
            opts.key.join(",")
        )));
    }
    if opts.key.iter().any(|k| k == "id") {
        return Err(ImportError::Usage(
            "--key id: a column named id holds fieldsync's record ids, so it cannot be a key; \
             if it is the list's own number, rename the column (e.g. to registry_id) and import \
             with --key registry_id"
                .into(),
        ));
    }
    let _ = store;
    Ok(())
}

/// `what` names no column of the file: its columns, and the one meant if the name only
/// differs by spaces around it (`--key "case_number, name"` splits at the comma and keeps
/// the space) or by letter case.
fn not_a_column(what: &str, name: &str, h: &Header) -> ImportError {
    let columns = h
        .names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let hint = match h
        .names
        .iter()
        .find(|n| n.trim().eq_ignore_ascii_case(name.trim()))
    {
        Some(n) if name.trim() != name => {
            format!(" (did you mean {n:?}? leave no space after the commas between names)")
        }
        Some(n) => format!(" (did you mean {n:?}?)"),
        None => {
            let names: Vec<&str> = h.names.iter().map(String::as_str).collect();
            crate::app::peers::closest_name(&names, name)
                .map(|n| format!(" (did you mean {n:?}?)"))
                .unwrap_or_default()
        }
    };
    let delimiter =
        if h.names.len() == 1 && [',', ';', '\t'].iter().any(|d| h.names[0].contains(*d)) {
            "; the whole header was read as one column, so the file's delimiter is another one: \
         --delimiter sets it"
        } else {
            ""
        };
    ImportError::Usage(format!(
        "{what} {name:?} is not a column of the file{hint}; its columns are {columns}{delimiter}"
    ))
}

/// The record id of an `id` cell (`raw`, as written), or why a list's own numbering cannot be
/// one: a column named `id` holds the ids fieldsync gave its records (an export's), and a
/// registry's `1, 2, 3` in it was refused with `parse_id`'s hint about `fieldsync patch`, and
/// `--key id` refused too, leaving no way in (a newcomer's).
pub(crate) fn file_id(raw: &str) -> Result<Uuid, String> {
    model::parse_id(raw).map_err(|_| {
        format!(
            "id {raw:?} is not a fieldsync record id (a UUID, as an export writes): a column \
             named id must hold those; if it is the list's own number, rename the column (e.g. \
             to registry_id) and import with --key registry_id"
        )
    })
}

/// What to do with text that is not UTF-8, as spreadsheet programs name the choice.
pub(crate) const SAVE_AS_UTF8: &str =
    "save the file as UTF-8 (in Excel: Save As, \"CSV UTF-8\"; in LibreOffice: Character set \
     \"Unicode (UTF-8)\")";

/// The refusal of UTF-16 input (a byte order mark `FF FE` or `FE FF` first), which Excel saves
/// as "Unicode Text": read as UTF-8 it fails on its first line with no hint of why.
pub(crate) fn utf16_refusal(first: &[u8]) -> Option<ImportError> {
    (first.starts_with(b"\xFF\xFE") || first.starts_with(b"\xFE\xFF")).then(|| {
        ImportError::Usage(format!(
            "the file is UTF-16 text (what Excel saves as \"Unicode Text\"), which fieldsync \
             does not read: {SAVE_AS_UTF8}, then import that"
        ))
    })
}

/// How rows get their ids.
enum Ids {
    /// From the file (`id` column or key).
    File,
    /// Derived from key fields.
    Key(Uuid),
    /// New for every row.
    New,
}

const NO_ID_HELP: &str = "pass --key FIELD[,FIELD...] to match rows to records by those fields \
    (importing again updates them instead of adding copies), or --new-ids to make every row a \
    new record (importing twice adds everything twice)";

fn run(
    store: &Store,
    table: &str,
    opened: Opened,
    opts: &ImportOptions,
) -> Result<ImportSummary, ImportError> {
    let unit = opened.unit;
    let ids = if !opts.key.is_empty() {
        Ids::Key(namespace(store)?)
    } else if opts.new_ids {
        Ids::New
    } else {
        Ids::File
    };
    if let Some(h) = &opened.header {
        let has_id = h.names.iter().any(|n| n == "id");
        match &ids {
            Ids::File if !has_id => {
                // A table imported by a key before: that key, which this file most likely has.
                let known = store
                    .unique_rules(table)?
                    .into_iter()
                    .filter(|r| r.text && r.fields.iter().all(|f| h.names.contains(f)))
                    .map(|r| r.fields.join(","))
                    .next();
                let hint = match known {
                    Some(k) => format!(
                        "{table} is imported by the key {k}, a column of this file too: add \
                         --key {k}. Otherwise "
                    ),
                    None => String::new(),
                };
                return Err(ImportError::Usage(format!(
                    "the file has no id column, so importing it twice would add every record \
                     twice: {hint}{NO_ID_HELP}"
                )));
            }
            Ids::Key(_) | Ids::New if has_id => {
                return Err(ImportError::Usage(format!(
                    "the file has an id column, which already identifies its records: \
                     import it without {} (if that column is the list's own number, not \
                     fieldsync's record ids, rename it, e.g. to registry_id, first)",
                    if opts.new_ids { "--new-ids" } else { "--key" }
                )))
            }
            Ids::Key(_) => {
                if let Some(k) = opts.key.iter().find(|k| !h.names.contains(k)) {
                    return Err(not_a_column("the key field", k, h));
                }
            }
            _ => {}
        }
        // A misspelt --text would leave its column to the type rules without a word (a
        // newcomer's `--text phnoe`): every name must be a column.
        if let Some(t) = opts.text.iter().find(|t| !h.names.contains(t)) {
            return Err(not_a_column("the --text field", t, h));
        }
    }
    let update = match ids {
        Ids::File => UpdateMode::Replace,
        _ => UpdateMode::Merge,
    };
    // Configured unique fields and import keys known here (any laptop's `--key` imports):
    // a row that would give one of them a value another record holds is refused before
    // anything is written.
    // The import's own key is left out: rows find their records by it (`keyed_elsewhere`),
    // which refuses what the rule would, without a read per row.
    let unique: Vec<UniqueKey> = store
        .unique_rules(table)?
        .into_iter()
        .filter(|r| !(r.text && r.fields == opts.key))
        .collect();
    let mut unique_seen: HashMap<(String, String), (Uuid, u64)> = HashMap::new();
    let mut chunk: Vec<ImportRow> = Vec::new();
    let mut in_chunk: HashMap<Uuid, u64> = HashMap::new();
    // Every row's id and line, checked for duplicates across chunks before the import commits
    // (24 bytes a row: 24 MB for a million rows).
    let mut all_ids: Vec<([u8; 16], u64)> = Vec::new();
    let mut staged: Option<StagedImport<'_>> = None;
    // Built at the first keyed row (a table scan, only when the table holds records).
    let mut elsewhere: Option<KeyedElsewhere> = None;
    // Rows are compared with the records they update only when there can be any (or for a dry
    // run, which counts by this comparison instead of writing).
    let table_has_records = store.tables()?.iter().any(|(t, _)| t == table);
    let mut preview = Preview::default();
    // Per column of a typed format (CSV, sheets): cells read as numbers and as text.
    let mut types: HashMap<String, (u64, u64, u64)> = HashMap::new();
    let typed = opened.header.is_some();
    let opened_columns: Option<Vec<String>> = opened.header.as_ref().map(|h| h.names.clone());
    let mut records = 0u64;
    let chunk_rows = opts.chunk_rows.unwrap_or(CHUNK_ROWS).max(1);
    for row in read_ahead(opened.rows) {
        let row = row?;
        if row.empty {
            continue;
        }
        let line = row.line;
        // `key`: the row's key values as `import` shows them (`--key` only).
        let (id, what, key) = match &ids {
            Ids::File => {
                let id = row.id.ok_or_else(|| {
                    let why = if opened.header.is_some() {
                        "the id cell is empty, and every row needs an id when the file has an id \
                         column"
                            .to_string()
                    } else {
                        format!("no \"id\": {NO_ID_HELP}")
                    };
                    ImportError::Line {
                        unit,
                        line,
                        message: why,
                    }
                })?;
                (id, format!("record {id}"), None)
            }
            Ids::Key(ns) => {
                if row.id.is_some() {
                    return Err(ImportError::Line {
                        unit,
                        line,
                        message: "the row has an \"id\" and --key was given: use one of them"
                            .into(),
                    });
                }
                let values = key_values(&row, &opts.key, opened.header.as_ref(), unit)?;
                let what = opts
                    .key
                    .iter()
                    .zip(&values)
                    .map(|(k, v)| format!("{k} = {v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let derived = key_id(ns, table, &values);
                let index = match &mut elsewhere {
                    Some(m) => m,
                    None if !table_has_records => elsewhere.insert(HashMap::new()),
                    None => elsewhere.insert(keyed_elsewhere(store, table, ns, &opts.key)?),
                };
                let others = index.get(&values).map_or(&[][..], Vec::as_slice);
                let derived_alive = match others {
                    [] => None,
                    _ => store.get(table, &derived)?.map(|r| r.state.is_alive()),
                };
                let id = match others {
                    [] => derived,
                    // A record with the derived id is the row's record already, unless another
                    // live record has the key too (one put on a laptop before the registry
                    // reached it, met by sync): updating one of the two would hide the other.
                    _ if derived_alive == Some(true) && others.iter().any(|o| o.1) => {
                        let live: Vec<String> = others
                            .iter()
                            .filter(|o| o.1)
                            .map(|o| o.0.to_string())
                            .collect();
                        return Err(ImportError::Line {
                            unit,
                            line,
                            message: format!(
                                "{what}: records {derived} (imported) and {} of {table} both \
                                 have this key, so the row cannot tell which to update: keep \
                                 one (`fieldsync delete {table} ID` the other, or settle their \
                                 name clash in `fieldsync conflicts`), then import again",
                                live.join(" and ")
                            ),
                        });
                    }
                    _ if derived_alive.is_some() => derived,
                    [one] => one.0,
                    many => {
                        return Err(ImportError::Line {
                            unit,
                            line,
                            message: format!(
                                "{what}: {} records of {table} already have this key ({}), so \
                                 the row cannot tell which to update: if they are different \
                                 people (names repeat), the key is wrong: import by another \
                                 --key, or with --new-ids; if they are duplicates, delete all \
                                 but one (`fieldsync delete {table} ID`), then import again",
                                many.len(),
                                many.iter()
                                    .map(|o| o.0.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        })
                    }
                };
                (id, what, Some(values.join(",")))
            }
            Ids::New => {
                if row.id.is_some() {
                    return Err(ImportError::Line {
                        unit,
                        line,
                        message: "the row has an \"id\" and --new-ids was given: use one of them"
                            .into(),
                    });
                }
                (Uuid::new_v4(), String::new(), None)
            }
        };
        if let Some(&first) = in_chunk.get(&id) {
            return Err(ImportError::Duplicate {
                unit,
                first,
                second: line,
                what,
            });
        }
        for rule in &unique {
            check_unique(store, table, rule, &row, id, &mut unique_seen, unit)?;
        }
        if typed {
            for (name, v) in &row.fields {
                let (n, t, d) = match v {
                    Value::Number(_) => (1, 0, 0),
                    Value::String(s) => (0, 1, u64::from(decimal_comma(s))),
                    _ => continue,
                };
                match types.get_mut(name) {
                    Some(c) => *c = (c.0 + n, c.1 + t, c.2 + d),
                    None => {
                        types.insert(name.clone(), (n, t, d));
                    }
                }
            }
        }
        let (mut fields, mut update) = (row.fields, update);
        if table_has_records || opts.dry_run {
            if let Some(adjusted) =
                preview.row(store, table, id, key, &fields, update, opts.overwrite)?
            {
                (fields, update) = adjusted;
            }
        }
        in_chunk.insert(id, line);
        all_ids.push((id.into_bytes(), line));
        chunk.push(ImportRow {
            id,
            line,
            fields,
            update,
        });
        records += 1;
        if opts.dry_run {
            chunk.clear();
            continue;
        }
        if chunk.len() >= chunk_rows {
            let s = match &mut staged {
                Some(s) => s,
                None => staged.insert(store.stage_import(table, chunk_rows.min(APPLY_CHUNK))?),
            };
            s.stage(std::mem::take(&mut chunk))?;
            in_chunk.clear();
        }
    }
    let mixed_types = mixed_columns(types, opened_columns.as_deref(), &opts.text);
    // A key new to the table whose values live records already share: each becomes a name
    // clash on every laptop when the key is made (trial 8's design: two records of one person
    // are settled by a person), which the summary counts, since for a field that may repeat
    // (`--key name`) it means the key is wrong (a newcomer's import logged five, unannounced).
    // The key this import would make (a `--key` not yet one of the table's, and rows to
    // import), read once here; the store's `record_import_key` says whether it made it.
    let key_of_import = match ids {
        Ids::Key(_) if records > 0 && !store.import_key_recorded(table, &opts.key)? => {
            Some(opts.key.clone())
        }
        _ => None,
    };
    let key_clashes = match (&key_of_import, &elsewhere) {
        (Some(_), Some(index)) => index
            .values()
            .filter(|recs| recs.iter().filter(|r| r.1).count() > 1)
            .count() as u64,
        _ => 0,
    };
    if opts.dry_run {
        drop(in_chunk);
        check_duplicates(all_ids, &ids, opts, unit)?;
        return Ok(ImportSummary {
            table: table.to_string(),
            records,
            inserted: preview.inserted,
            updated: preview.updated,
            unchanged: preview.unchanged,
            deleted_kept: preview.deleted_kept,
            changes: preview.changes,
            kept_edited: preview.kept_edited,
            kept: preview.kept,
            kept_rows: preview.kept_rows,
            key_clashes,
            new_key: key_of_import,
            mixed_types,
            dry_run: true,
        });
    }
    // The key becomes the table's key on every laptop (`store/unique.rs`): a record with the
    // same key values written elsewhere, before or after, is then a name clash everywhere
    // instead of a silent second record. Recorded once every row is read and checked (bad
    // input leaves no rule behind) but before the rows are written: the rows are then indexed
    // as they are written, chunk by chunk, instead of the whole table in the key record's one
    // batch (measured: 520 MB peak for 100,000 rows that way), and the key record precedes
    // the rows in this laptop's feed, so peers too learn the key before the rows and index
    // them page by page.
    // A file with a header and no rows makes no key: it names no record (a newcomer's empty
    // list left a deployment-wide key behind).
    let record_key = || -> Result<bool, ImportError> {
        Ok(match ids {
            Ids::Key(_) if records > 0 => store.record_import_key(table, &opts.key)?,
            _ => false,
        })
    };
    let new_key;
    let counts: ImportCounts = match staged {
        None => {
            new_key = record_key()?;
            store.import_rows(table, &chunk).map_err(|e| match e {
                StoreError::Op { index, source } => ImportError::Row {
                    unit,
                    line: chunk.get(index).map_or(0, |r| r.line),
                    source: *source,
                },
                other => other.into(),
            })?
        }
        Some(mut s) => {
            s.stage(chunk)?;
            drop(in_chunk);
            check_duplicates(all_ids, &ids, opts, unit)?;
            new_key = record_key()?;
            s.commit()?
        }
    };
    if counts.skipped > 0 {
        tracing::warn!(
            skipped = counts.skipped,
            "import rows skipped while rolling forward (see the log lines above)"
        );
    }
    Ok(ImportSummary {
        table: table.to_string(),
        records,
        inserted: counts.inserted,
        updated: counts.updated,
        // The store counts a row it had nothing to write for as unchanged; the preview knows
        // which of those kept an edit instead.
        unchanged: counts.unchanged.saturating_sub(preview.kept_rows),
        deleted_kept: counts.deleted_kept,
        changes: preview.changes,
        kept_edited: preview.kept_edited,
        kept: preview.kept,
        kept_rows: preview.kept_rows,
        key_clashes: if new_key { key_clashes } else { 0 },
        new_key: key_of_import.filter(|_| new_key),
        mixed_types,
        dry_run: false,
    })
}

/// The columns of `types` (cells read as numbers, as text) that hold both, in the file's
/// column order (`columns`, else by name), leaving out `--text` ones (all text by request).
fn mixed_columns(
    types: HashMap<String, (u64, u64, u64)>,
    columns: Option<&[String]>,
    text: &[String],
) -> Vec<MixedColumn> {
    let mut mixed: Vec<MixedColumn> = types
        .into_iter()
        .filter(|(f, (n, t, _))| *n > 0 && *t > 0 && !text.contains(f))
        .map(|(field, (numbers, texts, decimal_commas))| MixedColumn {
            field,
            numbers,
            texts,
            decimal_commas,
        })
        .collect();
    let at = |f: &str| columns.and_then(|c| c.iter().position(|n| n == f));
    mixed.sort_by(|a, b| (at(&a.field), &a.field).cmp(&(at(&b.field), &b.field)));
    mixed
}

/// What rows do to the records they name, as the store will apply them
/// ([`UpdateMode::Merge`]: the row's fields are set, a `null` removes one; `Replace`: the row
/// becomes the record's fields): the counts of a dry run, and the first field changes.
#[derive(Default)]
struct Preview {
    inserted: u64,
    updated: u64,
    unchanged: u64,
    deleted_kept: u64,
    changes: Vec<FieldChange>,
    kept_edited: u64,
    kept_rows: u64,
    kept: Vec<KeptEdit>,
}

/// True when the record's `field` once held `value` (`None`: not set) and a later revision
/// changed it, here or on another laptop: the value is an earlier one, and writing it would
/// undo that edit. A creation is not a change away from "not set" (nothing was there before).
fn earlier_value(
    history: &[crate::store::HistoryEntry],
    field: &str,
    value: Option<&Value>,
) -> bool {
    history.iter().any(|e| {
        e.revision.kind != crate::merge::RevisionKind::Create
            && e.revision
                .changes
                .iter()
                .any(|c| c.field == field && c.old.as_ref() == value && c.new.as_ref() != value)
    })
}

impl Preview {
    /// Counts the row and lists its changes; returns the row to write instead when fields of
    /// it hold earlier values of fields edited since ([`earlier_value`], unless `overwrite`):
    /// those fields are left out, as a patch (a `Replace` row becomes the patch that sets its
    /// other fields and removes the record's fields it lacks).
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        store: &Store,
        table: &str,
        id: Uuid,
        key: Option<String>,
        fields: &Fields,
        update: UpdateMode,
        overwrite: bool,
    ) -> Result<Option<(Fields, UpdateMode)>, ImportError> {
        let Some(rec) = store.get(table, &id)? else {
            self.inserted += 1;
            return Ok(None);
        };
        if !rec.state.is_alive() {
            self.deleted_kept += 1;
            return Ok(None);
        }
        let mut changed = Vec::new();
        for (field, new) in fields {
            let old = rec.state.value(field);
            let differs = match new {
                Value::Null => old.is_some(),
                v => old != Some(v),
            };
            if differs {
                changed.push((
                    field.clone(),
                    old.cloned().unwrap_or(Value::Null),
                    new.clone(),
                ));
            }
        }
        if update == UpdateMode::Replace {
            for (field, old) in rec.state.live_fields() {
                if !fields.contains_key(&field) {
                    changed.push((field, old, Value::Null));
                }
            }
        }
        // Only rows that would change a field read the record's history.
        let mut adjusted = None;
        if !overwrite && !changed.is_empty() {
            let history = store.history(table, &id)?;
            let (kept, written): (Vec<_>, Vec<_>) = changed.into_iter().partition(|(f, _, new)| {
                earlier_value(&history, f, Some(new).filter(|v| !v.is_null()))
            });
            changed = written;
            if !kept.is_empty() {
                // The changes still to write, as a patch: unchanged fields need not be written
                // again, and a replace row's removals are among the changes (as nulls).
                let patch: Fields = changed
                    .iter()
                    .map(|(f, _, new)| (f.clone(), new.clone()))
                    .collect();
                adjusted = Some((patch, UpdateMode::Merge));
                for (field, current, file) in kept {
                    self.kept_edited += 1;
                    if self.kept.len() < CHANGES_SHOWN {
                        self.kept.push(KeptEdit {
                            record: id,
                            key: key.clone(),
                            field,
                            file,
                            kept: current,
                        });
                    }
                }
            }
        }
        if changed.is_empty() {
            if adjusted.is_some() {
                self.kept_rows += 1;
            } else {
                self.unchanged += 1;
            }
            return Ok(adjusted);
        }
        self.updated += 1;
        for (field, old, new) in changed {
            if self.changes.len() < CHANGES_SHOWN {
                self.changes.push(FieldChange {
                    record: id,
                    key: key.clone(),
                    field,
                    old,
                    new,
                });
            }
        }
        Ok(adjusted)
    }
}

/// Refuses two rows for one record anywhere in a staged import (rows within one chunk are
/// refused as they are read, naming the key values).
fn check_duplicates(
    mut all: Vec<([u8; 16], u64)>,
    ids: &Ids,
    opts: &ImportOptions,
    unit: &'static str,
) -> Result<(), ImportError> {
    all.sort_unstable();
    match all.windows(2).find(|w| w[0].0 == w[1].0) {
        None => Ok(()),
        Some(w) => Err(ImportError::Duplicate {
            unit,
            first: w[0].1,
            second: w[1].1,
            what: match ids {
                Ids::Key(_) => format!("the same {}", opts.key.join(", ")),
                _ => format!("record {}", Uuid::from_bytes(w[0].0)),
            },
        }),
    }
}

/// Key values → the records holding them under another id than the derived one, each with
/// whether it is alive ([`keyed_elsewhere`]).
type KeyedElsewhere = HashMap<Vec<String>, Vec<(Uuid, bool)>>;

/// Records of `table` (deleted ones included: a row for a deleted record leaves it deleted)
/// whose `key` fields all hold text or numbers but whose id is not the one derived from them:
/// key values → ids, each with whether it is alive (a scan of the table; the caller skips it
/// for an empty table).
fn keyed_elsewhere(
    store: &Store,
    table: &str,
    ns: &Uuid,
    key: &[String],
) -> Result<KeyedElsewhere, ImportError> {
    let mut found = KeyedElsewhere::new();
    for r in store.scan_table(table) {
        let (id, rec) = r?;
        let values: Option<Vec<String>> = key
            .iter()
            .map(|k| rec.state.value(k).and_then(key_text))
            .collect();
        if let Some(values) = values {
            if key_id(ns, table, &values) != id {
                found
                    .entry(values)
                    .or_default()
                    .push((id, rec.state.is_alive()));
            }
        }
    }
    Ok(found)
}

/// A key value as text, as [`key_values`] reads it from a row (text as is, numbers and booleans
/// as JSON); `None` for what cannot be a key.
fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

/// The row's key values as text, refusing empty or structured ones.
fn key_values(
    row: &Row,
    key: &[String],
    header: Option<&Header>,
    unit: &'static str,
) -> Result<Vec<String>, ImportError> {
    key.iter()
        .map(|k| {
            let err = |message: String| match header.and_then(|h| {
                h.names
                    .iter()
                    .position(|n| n == k)
                    .map(|i| h.labels[i].clone())
            }) {
                Some(column) => ImportError::Cell {
                    unit,
                    line: row.line,
                    column,
                    message,
                },
                None => ImportError::Line {
                    unit,
                    line: row.line,
                    message: format!("key field {k:?}: {message}"),
                },
            };
            match row.fields.get(k) {
                // JSONL names its fields per line: a line without the field at all is more
                // likely a misspelt --key than an empty key (a newcomer's `case_numbr`).
                None if header.is_none() => {
                    let mut names: Vec<String> =
                        row.fields.keys().map(|n| format!("{n:?}")).collect();
                    names.truncate(20);
                    Err(err(format!(
                        "this line has no such field (its fields are {}): check the spelling \
                         of --key; every line needs a value in each --key field",
                        names.join(", ")
                    )))
                }
                None | Some(Value::Null) => Err(err(
                    "the key is empty: every row needs a value in each --key field".into(),
                )),
                Some(Value::String(s)) if s.is_empty() => Err(err(
                    "the key is empty: every row needs a value in each --key field".into(),
                )),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
                Some(v) => Err(err(format!(
                    "a key must be text or a number, not {}",
                    model::json_type(v)
                ))),
            }
        })
        .collect()
}

/// Refuses a row whose value of a unique field or import key another record (in the database
/// or earlier in the file) already has, before anything is written.
fn check_unique(
    store: &Store,
    table: &str,
    rule: &UniqueKey,
    row: &Row,
    id: Uuid,
    seen: &mut HashMap<(String, String), (Uuid, u64)>,
    unit: &'static str,
) -> Result<(), ImportError> {
    let Some(v) = rule.value_in(|f| row.fields.get(f)) else {
        return Ok(());
    };
    let v = &v;
    let field = rule.name.as_str();
    let k = (field.to_string(), v.to_string());
    if let Some((other, first)) = seen.get(&k) {
        if *other != id {
            return Err(ImportError::Duplicate {
                unit,
                first: *first,
                second: row.line,
                what: format!(
                    "{table}.{field} = {v} ({})",
                    if rule.text {
                        "the table's import key"
                    } else {
                        "a unique field"
                    }
                ),
            });
        }
    }
    if let Some(other) = store.unique_holder(table, field, v, &id)? {
        return Err(ImportError::Row {
            unit,
            line: row.line,
            source: StoreError::UniqueClash {
                table: table.to_string(),
                field: field.to_string(),
                value: v.to_string(),
                other,
            },
        });
    }
    seen.insert(k, (id, row.line));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_ahead_come_in_file_order_and_stop_at_the_first_error() {
        // 1,000 rows with bad lines at 600 and 700: rows 1..=599, then line 600's error, then
        // nothing (the reader stops there, as reading in place stops the import).
        let rows = (1..=1_000u64).map(|line| match line {
            600 | 700 => Err(ImportError::Line {
                unit: "line",
                line,
                message: "malformed".into(),
            }),
            _ => Ok(Row {
                line,
                id: Some(Uuid::new_v4()),
                fields: Fields::new(),
                empty: false,
            }),
        });
        let got: Vec<Result<u64, String>> = read_ahead(Box::new(rows))
            .map(|r| r.map(|row| row.line).map_err(|e| e.to_string()))
            .collect();
        assert_eq!(got.len(), 600);
        assert!(got[..599]
            .iter()
            .enumerate()
            .all(|(i, r)| r == &Ok(i as u64 + 1)));
        assert_eq!(got[599], Err("line 600: malformed".to_string()));
        // A caller that stops early (a later check refused the import) just drops it.
        let endless = (1u64..).map(|line| {
            Ok(Row {
                line,
                id: None,
                fields: Fields::new(),
                empty: true,
            })
        });
        let first: Vec<u64> = read_ahead(Box::new(endless))
            .take(3)
            .map(|r| r.unwrap().line)
            .collect();
        assert_eq!(first, vec![1, 2, 3]);
    }

    #[test]
    fn format_by_extension_in_any_case() {
        assert_eq!(Format::of(Path::new("people.CSV")), Format::Csv);
        assert_eq!(Format::of(Path::new("a.tsv")), Format::Csv);
        assert_eq!(Format::of(Path::new("a.XLSX")), Format::Sheet);
        assert_eq!(Format::of(Path::new("a.ods")), Format::Sheet);
        assert_eq!(Format::of(Path::new("a.jsonl")), Format::Jsonl);
        assert_eq!(Format::of(Path::new("-")), Format::Jsonl);
    }

    #[test]
    fn the_key_behind_a_derived_id_is_found_and_no_other() {
        let ns = STANDALONE_NAMESPACE;
        let (case, name, district, age) = (
            Value::from("A-1"),
            Value::from("Amina"),
            Value::from("North"),
            Value::from(34),
        );
        let fields = [
            ("age", &age),
            ("case", &case),
            ("district", &district),
            ("name", &name),
        ];
        let one = key_id(&ns, "person", &["A-1".into()]);
        assert_eq!(
            key_behind(&ns, "person", one, &fields),
            Some(vec![("case".into(), "A-1".into())])
        );
        // Order matters as given to --key; a number is its JSON text.
        let three = key_id(
            &ns,
            "person",
            &["North".into(), "Amina".into(), "34".into()],
        );
        assert_eq!(
            key_behind(&ns, "person", three, &fields),
            Some(vec![
                ("district".into(), "North".into()),
                ("name".into(), "Amina".into()),
                ("age".into(), "34".into())
            ])
        );
        // Another table, another namespace, a random id: no key.
        assert_eq!(key_behind(&ns, "shelter", one, &fields), None);
        assert_eq!(key_behind(&NAMESPACE_ROOT, "person", one, &fields), None);
        assert_eq!(key_behind(&ns, "person", Uuid::new_v4(), &fields), None);
    }

    #[test]
    fn key_ids_are_deterministic_per_namespace_table_and_values() {
        let a = key_id(&STANDALONE_NAMESPACE, "person", &["A-1".into()]);
        assert_eq!(a, key_id(&STANDALONE_NAMESPACE, "person", &["A-1".into()]));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, key_id(&STANDALONE_NAMESPACE, "shelter", &["A-1".into()]));
        assert_ne!(a, key_id(&NAMESPACE_ROOT, "person", &["A-1".into()]));
        // The separator keeps ("a,b") and ("a","b") apart.
        assert_ne!(
            key_id(&STANDALONE_NAMESPACE, "t", &["a,b".into()]),
            key_id(&STANDALONE_NAMESPACE, "t", &["a".into(), "b".into()])
        );
    }
}
