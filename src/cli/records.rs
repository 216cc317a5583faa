//! Record commands: put, patch, delete, get, list, tables, history, conflicts, import, export,
//! apply, digest.

use super::{at_line, open_input, print, read_json_arg, CliError, Door, ExportFormat, Io};
use crate::app::admin::{conflict_json, parse_keep};
use crate::app::records::{history_json, TableInfo, WriteOutcome};
use crate::app::App;
use crate::control::{GetReply, Op};
use crate::formats;
use crate::model;
use crate::store::{ConflictEntry, HistoryEntry};
use crate::store::{LocalOp, OpResult};
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::BufReader;
use std::path::Path;

/// Arguments of `conflicts`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ConflictsArgs {
    /// Only this table.
    #[arg(long)]
    pub table: Option<String>,
    /// Include resolved conflicts.
    #[arg(long)]
    pub all: bool,
    /// Resolve instead of listing.
    #[command(subcommand)]
    pub action: Option<ConflictAction>,
}

/// Subcommands of `conflicts`.
#[derive(Debug, Subcommand)]
pub enum ConflictAction {
    /// Settle a conflict by writing the kept value as a new revision (which syncs like any edit).
    ///
    /// For a field conflict: --keep local | remote | a JSON value. For a delete-vs-edit
    /// conflict: the side to keep (keeping the deleting side deletes the record). For a name
    /// clash: local/remote keeps both records, a JSON value renames this record's field.
    ///
    /// Example: fieldsync conflicts resolve 3 --keep '"found_alive"'
    Resolve {
        /// The conflict id (from `fieldsync conflicts`).
        id: u64,
        /// local, remote, or a JSON value.
        #[arg(long)]
        keep: String,
    },
}

/// `put`: prints the id.
pub fn put(
    door: &Door<'_>,
    table: &str,
    id: Option<String>,
    json: &str,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    model::validate_table(table)?;
    if let Some(s) = &id {
        model::parse_id(s)?;
    }
    let fields = read_json_arg(json, &mut io.stdin)?;
    let table = table.to_string();
    let o: WriteOutcome = door.call(Op::Put { table, id, fields }, io)?;
    writeln!(io.out, "{}", o.id).map_err(CliError::Output)
}

/// `patch`: top-level fields (a nested object is replaced whole); prints the id.
pub fn patch(
    door: &Door<'_>,
    table: &str,
    id: &str,
    json: &str,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    model::validate_table(table)?;
    let id = model::parse_id(id)?.to_string();
    let fields = read_json_arg(json, &mut io.stdin)?;
    let table = table.to_string();
    let o: WriteOutcome = door.call(Op::Patch { table, id, fields }, io)?;
    writeln!(io.out, "{}", o.id).map_err(CliError::Output)
}

/// `delete`: prints the id.
pub fn delete(door: &Door<'_>, table: &str, id: &str, io: &mut Io<'_>) -> Result<(), CliError> {
    let (table, id) = (table.to_string(), id.to_string());
    let o: WriteOutcome = door.call(Op::Delete { table, id }, io)?;
    writeln!(io.out, "{}", o.id).map_err(CliError::Output)
}

/// `get`: `{"table","id","fields"}`, with `meta` on request.
pub fn get(
    door: &Door<'_>,
    table: &str,
    id: &str,
    meta: bool,
    include_deleted: bool,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let op = Op::Get {
        table: table.to_string(),
        id: id.to_string(),
        include_deleted,
        meta,
    };
    let r: GetReply = door.call(op, io)?;
    let rec = r.record;
    let mut v = formats::record_json(&rec.table, &rec.id, rec.fields, rec.deleted);
    if let Some(m) = r.meta {
        v["meta"] = m;
    }
    print(io.out, &v)
}

/// `list`: JSON lines in id order (streamed: a table may not fit in memory as one page).
pub fn list(
    app: &App,
    table: &str,
    include_deleted: bool,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    model::validate_table(table)?;
    for r in app.store().scan_table(table) {
        let (id, rec) = r?;
        let alive = rec.state.is_alive();
        if alive || include_deleted {
            print(
                io.out,
                &formats::record_json(table, &id, rec.state.live_fields(), !alive),
            )?;
        }
    }
    Ok(())
}

/// `tables`: one line per table with counts.
pub fn tables(door: &Door<'_>, io: &mut Io<'_>) -> Result<(), CliError> {
    let tables: Vec<TableInfo> = door.call(Op::Tables, io)?;
    for t in tables {
        print(
            io.out,
            &json!({"table": t.table, "live": t.live, "deleted": t.deleted}),
        )?;
    }
    Ok(())
}

/// `history`: one line per revision, oldest first.
pub fn history(door: &Door<'_>, table: &str, id: &str, io: &mut Io<'_>) -> Result<(), CliError> {
    let (table, id) = (table.to_string(), id.to_string());
    let h: Vec<HistoryEntry> = door.call(Op::History { table, id }, io)?;
    for e in &h {
        print(io.out, &history_json(e))?;
    }
    Ok(())
}

/// `conflicts` (list) and `conflicts resolve`.
pub fn conflicts(door: &Door<'_>, args: ConflictsArgs, io: &mut Io<'_>) -> Result<(), CliError> {
    match args.action {
        Some(ConflictAction::Resolve { id, keep }) => {
            parse_keep(&keep)?;
            let entry: ConflictEntry = door.call(Op::Resolve { id, keep }, io)?;
            print(io.out, &conflict_json(&entry))
        }
        None => {
            let op = Op::Conflicts {
                table: args.table,
                all: args.all,
            };
            let list: Vec<ConflictEntry> = door.call(op, io)?;
            for c in &list {
                print(io.out, &conflict_json(c))?;
            }
            Ok(())
        }
    }
}

/// `import`: a JSONL or CSV file into one table, all or nothing.
pub fn import(
    app: &App,
    table: &str,
    file: &Path,
    opts: &crate::import::ImportOptions,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let summary = if file == Path::new("-") {
        let input = open_input(file, &mut io.stdin, &io.cwd)?;
        crate::import::import_reader(
            app.store(),
            table,
            input,
            crate::import::Format::Jsonl,
            opts,
        )
    } else {
        crate::import::import_file(app.store(), table, &io.cwd.join(file), opts)
    }
    .map_err(import_error)?;
    print(io.out, &json!(summary))
}

/// `--delimiter`: one character, or `tab`.
pub(super) fn parse_delimiter(s: &str) -> Result<u8, CliError> {
    match s {
        "tab" | "\\t" => Ok(b'\t'),
        s if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes()[0]),
        other => Err(CliError::Invalid(format!(
            "--delimiter {other:?} is not one character: use e.g. --delimiter ';' or --delimiter tab"
        ))),
    }
}

fn import_error(e: crate::import::ImportError) -> CliError {
    match e {
        crate::import::ImportError::Store(s) => s.into(),
        e if e.is_invalid_input() => CliError::Invalid(e.to_string()),
        e => CliError::Io(e.to_string()),
    }
}

/// `export`: JSONL or CSV to stdout, streamed.
pub fn export(
    app: &App,
    table: &str,
    format: ExportFormat,
    include_deleted: bool,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    model::validate_table(table)?;
    match format {
        ExportFormat::Jsonl => {
            formats::export_jsonl(app.store(), table, include_deleted, &mut *io.out)?
        }
        ExportFormat::Csv => {
            formats::export_csv(app.store(), table, include_deleted, &mut *io.out)?
        }
    };
    Ok(())
}

/// `apply`: an op file, all or nothing; errors name the file's line.
pub fn apply(app: &App, file: &Path, io: &mut Io<'_>) -> Result<(), CliError> {
    let ops = formats::read_ops(BufReader::new(open_input(file, &mut io.stdin, &io.cwd)?))?;
    let lines: Vec<usize> = ops.iter().map(|(l, _)| *l).collect();
    let ops: Vec<LocalOp> = ops.into_iter().map(|(_, o)| o).collect();
    let results = app
        .store()
        .write_local(&ops)
        .map_err(|e| at_line(e, &lines))?;
    let written = results
        .iter()
        .filter(|r| matches!(r, OpResult::Written(_)))
        .count();
    print(
        io.out,
        &json!({"ops": results.len(), "written": written, "unchanged": results.len() - written}),
    )
}

/// `digest`: count and SHA-256 of the live records.
pub fn digest(app: &App, tables: Vec<String>, io: &mut Io<'_>) -> Result<(), CliError> {
    let tables = if tables.is_empty() {
        app.tables()?.into_iter().map(|t| t.table).collect()
    } else {
        for t in &tables {
            model::validate_table(t)?;
        }
        tables
    };
    let (count, sha) = formats::digest(app.store(), &tables)?;
    print(
        io.out,
        &json!({"count": count, "sha256": sha, "tables": tables}),
    )
}
