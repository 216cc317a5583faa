//! The command line: clap definitions and the body of each command.
//!
//! Commands print JSON on stdout (one object, or JSON lines for lists) and one-line errors on
//! stderr. Exit codes: 0 ok, 1 not found, 2 bad usage or invalid input, 3 anything else
//! (database in use, disk errors).

use crate::config::{Config, ConfigError};
use crate::formats::{self, FormatError};
use crate::merge::{Conflict, Edit};
use crate::model::{self, FieldState};
use crate::store::{
    side_name, ConflictDetail, ConflictEntry, HistoryEntry, Keep, LocalOp, OpResult, PeerRow,
    Source, Store, StoreError,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use uuid::Uuid;

const ABOUT: &str = "Peer-to-peer record sync for laptops in the field.";

const LONG_ABOUT: &str = "\
fieldsync keeps a local database of records (tables of JSON objects with UUIDs that are the same
on every laptop) and syncs it with other laptops on the same network.

Data directory, in order: --data-dir; $FIELDSYNC_DIR; a folder `fieldsync-data/` beside the
executable if one exists (portable mode, for a USB stick); ~/.local/share/fieldsync.

Output is JSON on stdout (one object, or one object per line for lists).
Exit codes: 0 ok, 1 not found, 2 bad usage or invalid input, 3 other failure
(for example the database is in use by another fieldsync process).";

/// The fieldsync command line.
#[derive(Debug, Parser)]
#[command(name = "fieldsync", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// Data directory (default: $FIELDSYNC_DIR, ./fieldsync-data beside the binary, or
    /// ~/.local/share/fieldsync).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format of `export`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExportFormat {
    /// One `{"table","id","fields"}` object per line (the gen.py format).
    Jsonl,
    /// A header row of field names, an `id` column first.
    Csv,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this laptop's instance (or update its details) and print its instance id.
    ///
    /// Optional: the first command that needs an instance creates one with defaults.
    /// Example: fieldsync init --name laptop7 --owner "Red Cross Team B" --contact "+1 555 0100"
    Init {
        /// Display name (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Who is responsible for this laptop.
        #[arg(long)]
        owner: Option<String>,
        /// How to reach the owner.
        #[arg(long)]
        contact: Option<String>,
    },
    /// Create or replace a record and print its id.
    ///
    /// Fields not in JSON_OBJECT are removed; a put with identical fields writes nothing.
    /// Example: fieldsync put person '{"name":"Amina Okafor","age":34}'
    /// Example: fieldsync put person --id 6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b - < big.json
    Put {
        /// Table name: a-z, 0-9, _ (starting with a letter, at most 64).
        table: String,
        /// The record id (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
        /// The fields as a JSON object, or `-` to read it from stdin.
        json: String,
    },
    /// Change only the given fields of a record; a null value removes that field.
    ///
    /// Example: fieldsync patch person 6f1c2b7e-... '{"status":"found_alive","notes":null}'
    Patch {
        /// Table name.
        table: String,
        /// Record id.
        id: String,
        /// The fields to change as a JSON object, or `-` for stdin.
        json: String,
    },
    /// Delete a record (a tombstone that syncs; history stays readable).
    ///
    /// Example: fieldsync delete person 6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b
    Delete {
        /// Table name.
        table: String,
        /// Record id.
        id: String,
    },
    /// Print one record as {"table","id","fields"}.
    ///
    /// Example: fieldsync get person 6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b --meta
    Get {
        /// Table name.
        table: String,
        /// Record id.
        id: String,
        /// Add "meta": per-field stamps (time, instance), version vector, feed position, conflicts.
        #[arg(long)]
        meta: bool,
        /// Also print a deleted record (with "deleted": true).
        #[arg(long)]
        include_deleted: bool,
    },
    /// Print a table's records as JSON lines, ordered by id.
    ///
    /// Example: fieldsync list person | head
    List {
        /// Table name.
        table: String,
        /// Include deleted records (marked "deleted": true).
        #[arg(long)]
        include_deleted: bool,
    },
    /// Print table names with live and deleted counts.
    Tables,
    /// Print every revision of a record, oldest first: when, which instance, what changed.
    ///
    /// Example: fieldsync history person 6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b
    History {
        /// Table name.
        table: String,
        /// Record id.
        id: String,
    },
    /// Print the conflict log (unresolved first), or resolve an entry.
    ///
    /// Example: fieldsync conflicts --table person
    /// Example: fieldsync conflicts resolve 3 --keep remote
    Conflicts(ConflictsArgs),
    /// Import records from .jsonl or .csv (`-` for stdin as JSONL), all or nothing.
    ///
    /// JSONL lines are {"table","id","fields"} (the gen.py format) or plain field objects.
    /// CSV has a header row of field names; an `id` column keeps ids. Cells that are JSON
    /// numbers, booleans, arrays or objects keep their type; the rest are strings.
    /// Example: fieldsync import person people.csv
    Import {
        /// Table name.
        table: String,
        /// The file (.csv is read as CSV, anything else as JSONL).
        file: PathBuf,
    },
    /// Write a table to stdout as JSONL (default) or CSV, ordered by id.
    ///
    /// Example: fieldsync export person --format csv > people.csv
    Export {
        /// Table name.
        table: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Include deleted records.
        #[arg(long)]
        include_deleted: bool,
    },
    /// Apply a file of JSON-line operations, all or nothing.
    ///
    /// Lines: {"op":"put"|"patch"|"delete","table":..,"id":..,"fields":{..}}.
    /// Example: fieldsync apply ops.jsonl
    Apply {
        /// The op file (`-` for stdin).
        file: PathBuf,
    },
    /// Print the count and SHA-256 of the live records (same canonical form as gen.py --digest).
    ///
    /// Example: fieldsync digest person
    Digest {
        /// Tables to include (default: all).
        tables: Vec<String>,
    },
    /// Print this instance's id, name, record counts and a peers summary.
    Status,
    /// Print the sync_instance table: one row per peer instance.
    Peers,
    /// Write deterministic test or benchmark data as JSON lines to stdout (no database needed).
    ///
    /// Example: fieldsync generate records --count 100000 --seed 42 > p100k.jsonl
    ///
    /// Example: fieldsync generate ops --from p100k.jsonl --count 1000 --seed 7 > ops.jsonl
    #[command(subcommand)]
    Generate(GenerateCommand),
}

/// Subcommands of `generate` (the formats of shared/gen.py).
#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Person records, one {"table","id","fields"} object a line, about 330 bytes each.
    ///
    /// The same count and seed always give the same bytes.
    ///
    /// Example: fieldsync generate records --count 100000 --seed 42 > p100k.jsonl
    Records {
        /// How many records.
        #[arg(long)]
        count: u64,
        /// Seed of everything generated.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Edits of a records file for `fieldsync apply`: COUNT puts, then deletes of other ids.
    ///
    /// Each put is the whole record with status, notes and updated_by changed. Ids are chosen
    /// with --ids-seed, so two op files with the same --ids-seed and different --seed edit the
    /// same records differently (for concurrent-edit and conflict tests).
    ///
    /// Example: fieldsync generate ops --from p100k.jsonl --count 1000 --seed 7 > ops.jsonl
    Ops {
        /// The records file to edit (`-` for stdin).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// How many puts.
        #[arg(long)]
        count: usize,
        /// Seed of the new values.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seed that picks the ids (default: --seed).
        #[arg(long)]
        ids_seed: Option<u64>,
        /// How many deletes (default: max(1, COUNT/50)).
        #[arg(long)]
        deletes: Option<usize>,
    },
}

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
    /// Example: fieldsync conflicts resolve 3 --keep '"found_alive"'
    Resolve {
        /// The conflict id (from `fieldsync conflicts`).
        id: u64,
        /// local, remote, or a JSON value.
        #[arg(long)]
        keep: String,
    },
}

/// A failed command, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or invalid input (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// Something asked for does not exist (exit 1).
    #[error("{0}")]
    NotFound(String),
    /// A store failure (exit code by kind).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Bad input file.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Bad config file (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Other I/O trouble (exit 3).
    #[error("{0}")]
    Io(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Invalid(_) | CliError::Config(_) => 2,
            CliError::NotFound(_) => 1,
            CliError::Store(e) | CliError::Format(FormatError::Store(e)) => {
                if e.is_not_found() {
                    1
                } else if e.is_invalid_input() {
                    2
                } else {
                    3
                }
            }
            CliError::Format(FormatError::Line { .. }) => 2,
            CliError::Format(_) | CliError::Io(_) => 3,
        }
    }
}

impl From<model::ValidationError> for CliError {
    fn from(e: model::ValidationError) -> Self {
        CliError::Invalid(e.to_string())
    }
}

/// Picks the data directory: flag, $FIELDSYNC_DIR, portable folder, platform default.
pub fn resolve_data_dir(flag: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(d) = flag {
        return Ok(d);
    }
    if let Some(d) = std::env::var_os("FIELDSYNC_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let portable = dir.join("fieldsync-data");
        if portable.is_dir() {
            return Ok(portable);
        }
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })
        .ok_or_else(|| {
            CliError::Invalid(
                "no data directory: pass --data-dir, set FIELDSYNC_DIR, or set HOME".into(),
            )
        })?;
    Ok(base.join("fieldsync"))
}

/// Opens the store in the resolved data directory with its config.
pub fn open_store(data_dir: Option<PathBuf>) -> Result<Store, CliError> {
    let dir = resolve_data_dir(data_dir)?;
    let config = Config::load(&dir)?;
    Ok(Store::open(&dir, config)?)
}

/// Runs one command, writing its output to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    // Generating data must not need (or lock) a database: it runs beside a live agent.
    if let Command::Generate(what) = cli.command {
        return generate(what, out);
    }
    let mut store = open_store(cli.data_dir)?;
    let p = |out: &mut dyn Write, v: &Value| -> Result<(), CliError> {
        writeln!(out, "{v}").map_err(|e| CliError::Io(format!("writing output: {e}")))
    };
    match cli.command {
        Command::Init {
            name,
            owner,
            contact,
        } => {
            let info = store.set_instance_info(name, owner, contact)?;
            writeln!(out, "{}", info.id).map_err(|e| CliError::Io(e.to_string()))?;
        }
        Command::Put { table, id, json } => {
            model::validate_table(&table)?;
            let id = match id {
                Some(s) => model::parse_id(&s)?,
                None => Uuid::new_v4(),
            };
            let fields = model::validate_fields(read_json_arg(&json)?)?;
            store.write_one(LocalOp {
                table,
                id,
                edit: Edit::Put(fields),
            })?;
            writeln!(out, "{id}").map_err(|e| CliError::Io(e.to_string()))?;
        }
        Command::Patch { table, id, json } => {
            model::validate_table(&table)?;
            let id = model::parse_id(&id)?;
            let fields = model::validate_fields(read_json_arg(&json)?)?;
            store.write_one(LocalOp {
                table,
                id,
                edit: Edit::Patch(fields),
            })?;
            writeln!(out, "{id}").map_err(|e| CliError::Io(e.to_string()))?;
        }
        Command::Delete { table, id } => {
            model::validate_table(&table)?;
            let id = model::parse_id(&id)?;
            store.write_one(LocalOp {
                table,
                id,
                edit: Edit::Delete,
            })?;
            writeln!(out, "{id}").map_err(|e| CliError::Io(e.to_string()))?;
        }
        Command::Get {
            table,
            id,
            meta,
            include_deleted,
        } => {
            model::validate_table(&table)?;
            let id = model::parse_id(&id)?;
            let rec = store
                .get(&table, &id)?
                .ok_or_else(|| StoreError::NotFound {
                    table: table.clone(),
                    id,
                })?;
            let alive = rec.state.is_alive();
            if !alive && !include_deleted {
                return Err(StoreError::Deleted { table, id }.into());
            }
            let mut v = formats::record_json(&table, &id, rec.state.live_fields(), !alive);
            if meta {
                let conflicts = store.conflicts_of(&table, &id)?;
                v["meta"] = record_meta(&rec, &conflicts);
            }
            p(out, &v)?;
        }
        Command::List {
            table,
            include_deleted,
        } => {
            model::validate_table(&table)?;
            for r in store.scan_table(&table) {
                let (id, rec) = r?;
                let alive = rec.state.is_alive();
                if alive || include_deleted {
                    p(
                        out,
                        &formats::record_json(&table, &id, rec.state.live_fields(), !alive),
                    )?;
                }
            }
        }
        Command::Tables => {
            for (name, c) in store.tables()? {
                p(
                    out,
                    &json!({"table": name, "live": c.live, "deleted": c.deleted}),
                )?;
            }
        }
        Command::History { table, id } => {
            model::validate_table(&table)?;
            let id = model::parse_id(&id)?;
            let h = store.history(&table, &id)?;
            if h.is_empty() {
                return Err(StoreError::NotFound { table, id }.into());
            }
            for e in &h {
                p(out, &history_json(e))?;
            }
        }
        Command::Conflicts(args) => match args.action {
            Some(ConflictAction::Resolve { id, keep }) => {
                let keep = match keep.as_str() {
                    "local" => Keep::Local,
                    "remote" => Keep::Remote,
                    other => Keep::Value(serde_json::from_str(other).map_err(|e| {
                        CliError::Invalid(format!(
                            "--keep must be local, remote or a JSON value ({e}); \
                             quote strings: '\"text\"'"
                        ))
                    })?),
                };
                let entry = store.resolve_conflict(id, keep)?;
                p(out, &conflict_json(&entry))?;
            }
            None => {
                if let Some(t) = &args.table {
                    model::validate_table(t)?;
                }
                for c in store.conflicts()? {
                    let table_ok = args.table.as_ref().is_none_or(|t| *t == c.table);
                    if table_ok && (args.all || c.resolved.is_none()) {
                        p(out, &conflict_json(&c))?;
                    }
                }
            }
        },
        Command::Import { table, file } => {
            model::validate_table(&table)?;
            let records = if file.extension().is_some_and(|e| e == "csv") {
                formats::read_csv(open_input(&file)?)?
            } else {
                formats::read_jsonl(&table, BufReader::new(open_input(&file)?))?
            };
            let lines: Vec<usize> = records.iter().map(|r| r.line).collect();
            let ops: Vec<LocalOp> = records
                .into_iter()
                .map(|r| LocalOp {
                    table: table.clone(),
                    id: r.id,
                    edit: Edit::Put(r.fields),
                })
                .collect();
            let results = store.write_local(&ops).map_err(|e| at_line(e, &lines))?;
            let written = results
                .iter()
                .filter(|r| matches!(r, OpResult::Written(_)))
                .count();
            p(
                out,
                &json!({"table": table, "records": results.len(), "written": written,
                        "unchanged": results.len() - written}),
            )?;
        }
        Command::Export {
            table,
            format,
            include_deleted,
        } => {
            model::validate_table(&table)?;
            match format {
                ExportFormat::Jsonl => formats::export_jsonl(&store, &table, include_deleted, out)?,
                ExportFormat::Csv => formats::export_csv(&store, &table, include_deleted, out)?,
            };
        }
        Command::Apply { file } => {
            let ops = formats::read_ops(BufReader::new(open_input(&file)?))?;
            let lines: Vec<usize> = ops.iter().map(|(l, _)| *l).collect();
            let ops: Vec<LocalOp> = ops.into_iter().map(|(_, o)| o).collect();
            let results = store.write_local(&ops).map_err(|e| at_line(e, &lines))?;
            let written = results
                .iter()
                .filter(|r| matches!(r, OpResult::Written(_)))
                .count();
            p(
                out,
                &json!({"ops": results.len(), "written": written,
                        "unchanged": results.len() - written}),
            )?;
        }
        Command::Digest { tables } => {
            let tables = if tables.is_empty() {
                store.tables()?.into_iter().map(|(t, _)| t).collect()
            } else {
                for t in &tables {
                    model::validate_table(t)?;
                }
                tables
            };
            let (count, sha) = formats::digest(&store, &tables)?;
            p(
                out,
                &json!({"count": count, "sha256": sha, "tables": tables}),
            )?;
        }
        Command::Status => {
            let tables: serde_json::Map<String, Value> = store
                .tables()?
                .into_iter()
                .map(|(t, c)| (t, json!({"live": c.live, "deleted": c.deleted})))
                .collect();
            let unresolved = store
                .conflicts()?
                .iter()
                .filter(|c| c.resolved.is_none())
                .count();
            let peers = store.peers()?;
            let last_sync = peers.iter().filter_map(|p| p.last_update).max();
            let info = store.instance();
            p(
                out,
                &json!({
                    "instance": info.id, "name": info.name, "owner": info.owner,
                    "contact": info.contact, "data_dir": store.dir(), "feed_seq": store.seq(),
                    "tables": tables, "unresolved_conflicts": unresolved,
                    "peers": {"known": peers.len(), "last_sync": last_sync},
                }),
            )?;
        }
        Command::Peers => {
            for row in store.peers()? {
                p(out, &peer_json(&row))?;
            }
        }
        Command::Generate(_) => {} // handled before the store is opened
    }
    Ok(())
}

fn generate(what: GenerateCommand, out: &mut dyn Write) -> Result<(), CliError> {
    use crate::gen::{self, GenError, OpsSpec};
    let result = match what {
        GenerateCommand::Records { count, seed } => {
            gen::write_records(count, seed, out).map_err(GenError::Io)
        }
        GenerateCommand::Ops {
            from,
            count,
            seed,
            ids_seed,
            deletes,
        } => {
            let spec = OpsSpec {
                count,
                seed,
                ids_seed,
                deletes,
            };
            gen::write_ops(BufReader::new(open_input(&from)?), &spec, out).map(|_| ())
        }
    };
    match result {
        Ok(()) => Ok(()),
        // `generate records --count 1000000 | head` is a normal way to stop it.
        Err(GenError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(GenError::Io(e)) => Err(CliError::Io(format!("generate: {e}"))),
        Err(e) => Err(CliError::Invalid(e.to_string())),
    }
}

/// Reads a JSON argument, or stdin for `-`.
fn read_json_arg(arg: &str) -> Result<Value, CliError> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Io(format!("reading stdin: {e}")))?;
        s
    } else {
        arg.to_string()
    };
    serde_json::from_str(&text).map_err(|e| CliError::Invalid(format!("malformed JSON: {e}")))
}

fn open_input(path: &Path) -> Result<Box<dyn Read>, CliError> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdin()));
    }
    let f = std::fs::File::open(path)
        .map_err(|e| CliError::Invalid(format!("cannot open {}: {e}", path.display())))?;
    Ok(Box::new(f))
}

/// Rewrites "operation N" of a batch error into the input file's line number.
fn at_line(e: StoreError, lines: &[usize]) -> CliError {
    match e {
        StoreError::Op { index, source } => {
            let line = lines.get(index).copied().unwrap_or(index + 1);
            let msg = format!("line {line}: {source}");
            if source.is_not_found() {
                CliError::NotFound(msg)
            } else if source.is_invalid_input() {
                CliError::Invalid(msg)
            } else {
                CliError::Store(*source)
            }
        }
        other => other.into(),
    }
}

fn stamp_json(f: &FieldState) -> Value {
    json!({"value": f.value, "at": f.stamp.to_string(), "instance": f.stamp.node})
}

fn record_meta(rec: &crate::store::StoredRecord, conflicts: &[u64]) -> Value {
    let s = &rec.state;
    let fields: serde_json::Map<String, Value> = s
        .fields
        .iter()
        .map(|(k, f)| {
            let mut v = stamp_json(f);
            v["removed"] = Value::Bool(f.value.is_none());
            v.as_object_mut().map(|m| m.remove("value"));
            (k.clone(), v)
        })
        .collect();
    let vv: serde_json::Map<String, Value> =
        s.vv.iter()
            .map(|(n, ts)| (n.to_string(), json!(ts)))
            .collect();
    json!({
        "alive": s.is_alive(), "seq": rec.seq, "fields": fields, "vv": vv,
        "deleted": s.deleted.map(|d| d.to_string()), "conflicts": conflicts,
    })
}

fn history_json(e: &HistoryEntry) -> Value {
    let r = &e.revision;
    let source = match e.source {
        Source::Local => "local".to_string(),
        Source::Peer(p) => format!("peer {p}"),
        Source::Merge(p) => format!("merge with peer {p}"),
    };
    json!({
        "at": r.at.to_string(), "time": r.at.time().to_rfc3339(), "instance": r.at.node,
        "kind": r.kind, "source": source, "applied_at": e.applied_at.to_rfc3339(),
        "changes": r.changes,
    })
}

/// A conflict log entry as printed.
pub fn conflict_json(c: &ConflictEntry) -> Value {
    let mut v = json!({
        "id": c.id, "table": c.table, "record": c.record,
        "detected_at": c.detected_at.to_rfc3339(), "peer": c.peer,
        "resolved": c.resolved.as_ref().map(|r| json!({"at": r.at.to_rfc3339(), "how": r.how})),
    });
    let extra = match &c.detail {
        ConflictDetail::Merge {
            conflict:
                Conflict::Field {
                    field,
                    local,
                    remote,
                    chosen,
                    reason,
                },
        } => json!({
            "type": "field", "field": field, "local": stamp_json(local),
            "remote": stamp_json(remote), "chosen": side_name(*chosen), "reason": reason,
        }),
        ConflictDetail::Merge {
            conflict:
                Conflict::DeleteEdit {
                    deleted,
                    deleted_on,
                    reason,
                },
        } => json!({
            "type": "delete_edit", "deleted_at": deleted.to_string(),
            "deleted_by": deleted.node, "deleted_on": side_name(*deleted_on),
            "chosen": "edit", "reason": reason,
        }),
        ConflictDetail::NameClash {
            field,
            value,
            other,
        } => json!({
            "type": "name_clash", "field": field, "value": value, "other_record": other,
            "reason": "two different records share a unique value; both are kept",
        }),
    };
    if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
        m.extend(e);
    }
    v
}

/// A sync_instance row as printed.
pub fn peer_json(r: &PeerRow) -> Value {
    json!({
        "instance": r.instance, "name": r.name, "owner": r.owner, "contact": r.contact,
        "url": r.url, "first_seen": r.first_seen, "last_update": r.last_update,
        "sync_count": r.sync_count, "received_upto": r.received_upto,
        "clock_offset_ms": r.clock_offset_ms, "last_error": r.last_error,
        "last_attempt": r.last_attempt,
    })
}
