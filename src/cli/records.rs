//! Record commands: put, patch, delete, get, list, tables, history, conflicts, import, export,
//! apply, digest.

use super::{at_line, open_input, print, read_json_arg, CliError, Door, ExportFormat, Io};
use crate::app::admin::parse_keep;
use crate::app::conflicts::{ConflictView, ResolveRequest};
use crate::app::records::RecordFilter;
use crate::app::records::{history_json, TableInfo, WriteOutcome};
use crate::app::App;
use crate::control::{GetReply, Op};
use crate::formats;
use crate::model;
use crate::store::HistoryEntry;
use crate::store::{LocalOp, OpResult};
use clap::{Args, Subcommand};
use serde_json::json;
use std::io::BufReader;
use std::io::IsTerminal;
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
    /// Sides are named from this laptop's point of view. For a field conflict: --keep mine |
    /// theirs, --keep-from NAME_OR_ID (the laptop that wrote the side to keep) or --keep-value
    /// JSON. For a delete-vs-edit conflict: --keep deleted | alive. For a name clash:
    /// --keep-value JSON renames this laptop's record of the two (the one whose unique value
    /// this laptop wrote; --record ID picks the other or settles a clash between two other
    /// laptops' records); the clash then clears on every laptop as they sync. --keep local |
    /// remote still work for a conflict this laptop detected itself, and are refused (naming
    /// these flags) otherwise.
    ///
    /// Example: fieldsync conflicts resolve 3 --keep mine
    ///
    /// Example: fieldsync conflicts resolve 4 --keep-value '"K2"'
    Resolve {
        /// The conflict's number on this laptop (`fieldsync conflicts` shows "Conflict 7").
        #[arg(value_parser = conflict_number)]
        id: u64,
        /// mine, theirs, deleted, alive (or local, remote, or a JSON value).
        #[arg(long, required_unless_present_any = ["keep_from", "keep_value"],
              conflicts_with_all = ["keep_from", "keep_value"])]
        keep: Option<String>,
        /// Keep the side written by this laptop (name or instance id).
        #[arg(long, value_name = "NAME_OR_ID", conflicts_with = "keep_value")]
        keep_from: Option<String>,
        /// Write this JSON value instead (quote strings: '"text"'); for a name clash, the new
        /// unique value of the renamed record.
        #[arg(long, value_name = "JSON")]
        keep_value: Option<String>,
        /// Name clash: the record --keep-value renames (default: this laptop's).
        #[arg(long, value_name = "ID", requires = "keep_value")]
        record: Option<String>,
    },
}

/// The record of name clash `id` whose id starts with `short` (8 hex digits or more, as
/// `conflicts` shows it): `--record 5a25e4d2` was refused as "not a UUID" (trial 10).
fn clash_record(
    door: &Door<'_>,
    id: u64,
    short: &str,
    io: &Io<'_>,
) -> Result<uuid::Uuid, CliError> {
    let hex = crate::app::records::short_id(short);
    let list: Vec<ConflictView> = door.call(
        Op::Conflicts {
            table: None,
            all: true,
        },
        io,
    )?;
    let records: Vec<uuid::Uuid> = list
        .iter()
        .filter(|c| c.id() == id)
        .flat_map(|c| c.sides.iter().filter_map(|s| s.record))
        .collect();
    let matching: Vec<uuid::Uuid> = records
        .iter()
        .copied()
        .filter(|r| {
            hex.as_deref()
                .is_some_and(|h| r.simple().to_string().starts_with(h))
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        _ => {
            Err(CliError::Invalid(format!(
            "--record {short:?} is not one of the records of conflict {id}{}: give one of their \
             ids (its first 8 digits are enough)",
            if records.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    records.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
                )
            }
        )))
        }
    }
}

/// A conflict's number as typed (`7`, `#7`); anything else is told what a conflict number is,
/// since the record id shown in a conflict's title was taken for one (trial 10), and clap's own
/// words were "invalid digit found in string".
fn conflict_number(s: &str) -> Result<u64, String> {
    s.trim().trim_start_matches('#').parse().map_err(|_| {
        format!(
            "{s:?} is not a conflict number: conflicts are numbered on each laptop \
             (`fieldsync conflicts` shows \"Conflict 7\"); a record's id or key is not one"
        )
    })
}

/// `put`: prints what it did (`{"table","id","written","seq"}`).
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
    written(io, "Saved", &o)
}

/// `patch`: top-level fields (a nested object is replaced whole); prints what it did.
pub fn patch(
    door: &Door<'_>,
    table: &str,
    id: &str,
    json: &str,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    model::validate_table(table)?;
    // An id or an import key: the application layer resolves it (`App::record_id`).
    let id = id.trim().to_string();
    let fields = read_json_arg(json, &mut io.stdin)?;
    let table = table.to_string();
    let named = id.clone();
    let o: WriteOutcome = door.call(Op::Patch { table, id, fields }, io)?;
    written_as(io, "Changed", &o, &named)
}

/// `delete`: prints what it did.
pub fn delete(door: &Door<'_>, table: &str, id: &str, io: &mut Io<'_>) -> Result<(), CliError> {
    let (table, id) = (table.to_string(), id.to_string());
    let named = id.clone();
    let o: WriteOutcome = door.call(Op::Delete { table, id }, io)?;
    written_as(io, "Deleted", &o, &named)
}

/// [`written`] for a record the person named by its import key: said by that key too.
fn written_as(io: &mut Io<'_>, verb: &str, o: &WriteOutcome, named: &str) -> Result<(), CliError> {
    let named = named.trim();
    if io.human && uuid::Uuid::parse_str(named).is_err() {
        let text = super::human::write(verb, o).replacen(
            &format!(" {} {}", o.table, o.id),
            &format!(" {} {named} (id {})", o.table, o.id),
            1,
        );
        return write!(io.out, "{text}").map_err(CliError::Output);
    }
    written(io, verb, o)
}

/// What a write did: `{"table","id","written","seq"}`, or a sentence for people.
fn written(io: &mut Io<'_>, verb: &str, o: &WriteOutcome) -> Result<(), CliError> {
    if io.human {
        return write!(io.out, "{}", super::human::write(verb, o)).map_err(CliError::Output);
    }
    writeln!(io.out, "{}", serde_json::to_value(o).unwrap_or_default()).map_err(CliError::Output)
}

/// `get`: `{"table","id","fields"}`, with `meta` on request.
pub fn get(
    door: &Door<'_>,
    table: &str,
    id: &str,
    meta: bool,
    include_deleted: bool,
    at: Option<String>,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let asked_at = at.is_some();
    let op = Op::Get {
        table: table.to_string(),
        id: id.to_string(),
        include_deleted,
        meta,
        at,
    };
    let r: GetReply = door.call(op, io)?;
    let rec = r.record;
    // An earlier state is said to be one (it printed like the record as it is, trial 10).
    let as_of = rec.rev.clone().filter(|_| asked_at);
    let mut v = formats::record_json(&rec.table, &rec.id, rec.fields, rec.deleted);
    if let Some(m) = r.meta {
        v["meta"] = m;
    }
    if io.human {
        let names = if meta {
            laptop_names(door, io)?
        } else {
            Default::default()
        };
        let now = chrono::Utc::now();
        let mut text = as_of.map_or_else(String::new, |rev| super::human::as_of(&rev, now));
        text += &super::human::record(&v, &names, now);
        return write!(io.out, "{text}").map_err(CliError::Output);
    }
    print(io.out, &v)
}

/// Most records `list` prints for people (the rest are counted: `--json` or `export` for all).
const HUMAN_LIST_MAX: usize = 1_000;

/// `list`: JSON lines in id order (streamed: a table may not fit in memory as one page).
/// Reads `list --where FIELD=VALUE` and `--contains FIELD=TEXT` arguments into the filter the
/// HTTP API's list uses (VALUE as JSON if it parses, else as text).
pub fn find_args(equal: &[String], contains: &[String]) -> Result<RecordFilter, CliError> {
    let split = |flag: &str, a: &str| -> Result<(String, String), CliError> {
        match a.split_once('=') {
            Some((f, v)) if !f.trim().is_empty() => Ok((f.trim().to_string(), v.to_string())),
            _ if flag == "contains" => Err(CliError::Invalid(format!(
                "--contains {a:?} is not FIELD=TEXT: say the field to look in, e.g. \
                 --contains name={}",
                if a.contains('=') { "amina" } else { a }
            ))),
            _ => Err(CliError::Invalid(format!(
                "--where {a:?} is not FIELD=VALUE: e.g. --where status=missing"
            ))),
        }
    };
    let equal = equal
        .iter()
        .map(|a| {
            let (f, v) = split("where", a)?;
            let v = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
            Ok((f, v))
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let contains = contains
        .iter()
        .map(|a| split("contains", a))
        .collect::<Result<Vec<_>, CliError>>()?;
    Ok(RecordFilter::new(equal, &contains))
}

pub fn list(
    app: &App,
    table: &str,
    include_deleted: bool,
    find: &RecordFilter,
    only: &[String],
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    model::validate_table(table)?;
    if let Some(bad) = only.iter().find(|f| f.trim().is_empty()) {
        return Err(CliError::Invalid(format!(
            "--fields {:?} has an empty field name: list names separated by commas, e.g. \
             --fields name,age{bad}",
            only.join(",")
        )));
    }
    // People get one aligned table, so rows are kept (up to a screenful or so); scripts get a
    // stream.
    let mut shown = Vec::new();
    let mut more = 0u64;
    // Fields a filter names that no record has: a typo (`stat` for `status`) is said as one.
    let mut unseen: Vec<&String> = find.fields().collect();
    for r in app.store().scan_table(table) {
        let (id, rec) = r?;
        let alive = rec.state.is_alive();
        if !unseen.is_empty() && (alive || include_deleted) {
            unseen.retain(|f| rec.state.value(f).is_none());
        }
        if (alive || include_deleted) && find.keeps(&rec.state) {
            let mut fields = rec.state.live_fields();
            if !only.is_empty() {
                fields.retain(|k, _| only.contains(k));
            }
            let v = formats::record_json(table, &id, fields, !alive);
            if !io.human {
                print(io.out, &v)?;
            } else if shown.len() < HUMAN_LIST_MAX {
                shown.push(v);
            } else {
                more += 1;
            }
        }
    }
    if io.human {
        let mut text = super::human::list(table, &shown, more, only);
        if shown.is_empty() && more == 0 {
            // A mistyped table reads like an empty one: say which tables there are.
            let names: Vec<String> = app.store().tables()?.into_iter().map(|(t, _)| t).collect();
            if !names.iter().any(|n| n == table) {
                text = no_such_table(table, &names);
            } else if let Some(f) = unseen.first() {
                text = format!(
                    "No record of {table} has a field named {f:?}: `fieldsync list {table}` \
                     shows its fields.\n"
                );
            } else if !find.is_empty() {
                text = format!(
                    "No record of {table} matches (--where compares whole values, --contains \
                     any part of a field).\n"
                );
            }
        }
        return write!(io.out, "{text}").map_err(CliError::Output);
    }
    Ok(())
}

/// `list` of a table this laptop has never held a record of: the closest table name (a
/// typo, as for laptop names: `app::peers::closest_name`) or the tables there are. Not an error: a
/// table exists from its first record, and one may simply not have arrived yet.
fn no_such_table(table: &str, names: &[String]) -> String {
    let user: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.starts_with(crate::model::SYSTEM_PREFIX))
        .collect();
    let hint = match crate::app::peers::closest_name(&user, table) {
        Some(n) => format!("did you mean {n}?"),
        None if user.is_empty() => "it holds no records yet".to_string(),
        None => format!("its tables are {}", user.join(", ")),
    };
    format!(
        "No table {table} on this laptop: {hint} (`fieldsync tables` lists them; a table \
         appears with its first record, here or from a sync)\n"
    )
}

/// `tables`: every table with its counts (a JSON array of `{"table","live","deleted"}`).
pub fn tables(door: &Door<'_>, io: &mut Io<'_>) -> Result<(), CliError> {
    let tables: Vec<TableInfo> = door.call(Op::Tables, io)?;
    if io.human {
        let rows: Vec<(String, u64, u64)> = tables
            .iter()
            .map(|t| (t.table.clone(), t.live, t.deleted))
            .collect();
        return write!(io.out, "{}", super::human::tables(&rows)).map_err(CliError::Output);
    }
    // One JSON array, as `GET /v1/tables` answers.
    print(io.out, &json!(tables))
}

/// `history`: every revision, oldest first: a JSON array, `--diff` text, or for people.
pub fn history(
    door: &Door<'_>,
    table: &str,
    id: &str,
    diff: bool,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let (table, id) = (table.to_string(), id.to_string());
    let h: Vec<HistoryEntry> = door.call(
        Op::History {
            table: table.clone(),
            id: id.clone(),
        },
        io,
    )?;
    let names = if io.human || diff {
        laptop_names(door, io)?
    } else {
        Default::default()
    };
    if io.human && !diff {
        let key = import_key(door, &table, &id, &h);
        let text =
            super::human::history(&table, &id, &h, &names, key.as_deref(), chrono::Utc::now());
        return write!(io.out, "{text}").map_err(CliError::Output);
    }
    if !diff {
        // One JSON array, as `GET /v1/tables/T/records/ID/history` answers.
        let all: Vec<serde_json::Value> = h.iter().map(history_json).collect();
        return print(io.out, &serde_json::Value::Array(all));
    }
    for e in &h {
        write!(io.out, "{}", history_diff_named(e, &names)).map_err(CliError::Output)?;
    }
    Ok(())
}

/// The import key (`--key` fields and values) a record's id was derived from, when it was
/// created on more than one laptop and its id provably is that key's (in this laptop's
/// deployment namespace, or the stand-alone one); `None` otherwise.
fn import_key(
    door: &Door<'_>,
    table: &str,
    id: &str,
    h: &[HistoryEntry],
) -> Option<Vec<(String, String)>> {
    use crate::merge::RevisionKind;
    let creates: Vec<_> = h
        .iter()
        .filter(|e| e.revision.kind == RevisionKind::Create)
        .collect();
    if creates.len() < 2 {
        return None;
    }
    let fields: Vec<(&str, &serde_json::Value)> = creates[0]
        .revision
        .changes
        .iter()
        .filter_map(|c| Some((c.field.as_str(), c.new.as_ref()?)))
        .collect();
    let mut spaces = vec![crate::import::STANDALONE_NAMESPACE];
    if let Ok(ns) = crate::import::namespace_in(door.dir()) {
        spaces.insert(0, ns);
    }
    spaces.iter().find_map(|ns| {
        // The record may have been named by its key (`history person A-1`): its id is then
        // the one that key gives, as `App::record_id` found it.
        let id = uuid::Uuid::parse_str(id.trim())
            .unwrap_or_else(|_| crate::import::key_id(ns, table, &[id.trim().to_string()]));
        crate::import::key_behind(ns, table, id, &fields)
    })
}

/// Names of this laptop ("laptopA (this laptop)") and of every known peer, by instance.
fn laptop_names(
    door: &Door<'_>,
    io: &mut Io<'_>,
) -> Result<std::collections::HashMap<uuid::Uuid, String>, CliError> {
    let mut names = std::collections::HashMap::new();
    let peers: Vec<serde_json::Value> = door.call(Op::Peers, io)?;
    for p in &peers {
        if let (Some(id), Some(n)) = (
            p["instance"].as_str().and_then(|i| i.parse().ok()),
            p["name"].as_str().filter(|n| !n.is_empty()),
        ) {
            names.insert(id, n.to_string());
        }
    }
    let me: serde_json::Value = door.call(Op::Status, io)?;
    if let Some(id) = me["instance"].as_str().and_then(|i| i.parse().ok()) {
        let n = me["name"].as_str().filter(|n| !n.is_empty());
        names.insert(
            id,
            n.map_or("this laptop".into(), |n| format!("{n} (this laptop)")),
        );
    }
    Ok(names)
}

/// One revision as a readable diff: `@ LOCAL-TIME created|changed|deleted|restored by MAKER`
/// (`, resolving a conflict` for a resolution), `  revision STAMP`, then per changed field `- field: old` and `+ field: new`
/// (JSON values; an absent side is left out), then a blank line.
pub fn history_diff(e: &HistoryEntry) -> String {
    history_diff_named(e, &Default::default())
}

/// [`history_diff`] with the maker told by name (`names` maps instance ids to laptop names, as
/// [`laptop_names`] makes them; an unknown maker stays its instance id).
pub fn history_diff_named(
    e: &HistoryEntry,
    names: &std::collections::HashMap<uuid::Uuid, String>,
) -> String {
    let r = &e.revision;
    let by = names
        .get(&r.at.node)
        .cloned()
        .unwrap_or_else(|| r.at.node.to_string());
    // An edit is what a revision usually is: only a resolution is said.
    let cause = match r.cause {
        crate::merge::Cause::Edit => "",
        crate::merge::Cause::Resolution => ", resolving a conflict",
    };
    // The words and the local time `history` uses; the stamp stays exact on its own line.
    let kind = match r.kind {
        crate::merge::RevisionKind::Create => "created",
        crate::merge::RevisionKind::Update => "changed",
        crate::merge::RevisionKind::Delete => "deleted",
        crate::merge::RevisionKind::Restore => "restored",
    };
    let mut out = format!(
        "@ {} {kind} by {by}{cause}\n  revision {}\n",
        r.at.time()
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S %:z"),
        r.at
    );
    if r.reconstructed {
        out.push_str(&format!(
            "  (approximate: {})\n",
            crate::app::records::RECONSTRUCTED_NOTE
        ));
    }
    // A resolution that kept a record alive re-asserts a field with its own value (so the
    // decision travels): no "- age: 40 / + age: 40" pair, as `history` says it.
    let kept = |c: &crate::merge::FieldChange| {
        r.cause == crate::merge::Cause::Resolution && c.old.is_some() && c.old == c.new
    };
    if !r.changes.is_empty() && r.changes.iter().all(kept) {
        out.push_str("  kept the record as it was (no value changed)\n");
    }
    for c in r.changes.iter().filter(|c| !kept(c)) {
        if let Some(old) = &c.old {
            out.push_str(&format!("- {}: {old}\n", c.field));
        }
        if let Some(new) = &c.new {
            out.push_str(&format!("+ {}: {new}\n", c.field));
        }
    }
    // A blank line between revisions, as between commits in `git log -p`.
    out.push('\n');
    out
}

/// `conflicts` (list) and `conflicts resolve`: a JSON array of [`ConflictView`], or for people
/// one block per conflict ([`super::conflicts_human`]).
pub fn conflicts(door: &Door<'_>, args: ConflictsArgs, io: &mut Io<'_>) -> Result<(), CliError> {
    match args.action {
        Some(ConflictAction::Resolve {
            id,
            keep,
            keep_from,
            keep_value,
            record,
        }) => {
            let mut how = ResolveRequest::default();
            match (keep, keep_from, keep_value) {
                (Some(k), _, _) if WORDS.contains(&k.as_str()) => how.keep = Some(k),
                // Earlier versions took a JSON value in --keep.
                (Some(k), _, _) => how.keep_value = Some(json_keep(&k)?),
                (None, Some(from), _) => how.keep_from = Some(from),
                // Said in --keep-value's own words: the value is not JSON (it said "not a side:
                // --keep takes …", a flag the person had not used).
                (None, None, Some(v)) => {
                    how.keep_value = Some(serde_json::from_str(&v).map_err(|_| {
                        CliError::Invalid(format!(
                            "--keep-value takes a JSON value, and `{v}` is not one: quote a \
                             string ('\"{v}\"'), or give a number, true, false or null"
                        ))
                    })?)
                }
                (None, None, None) => {
                    return Err(CliError::Invalid(
                        "say what to keep: --keep, --keep-from or --keep-value".into(),
                    ))
                }
            }
            if let Some(r) = record {
                how.record = Some(match model::parse_id(&r) {
                    Ok(full) => full,
                    Err(_) => clash_record(door, id, &r, io)?,
                });
            }
            let view: ConflictView = door.call(Op::Resolve { id, how }, io)?;
            if io.human {
                let text = super::conflicts_human::resolved(&view, chrono::Utc::now());
                return write!(io.out, "{text}").map_err(CliError::Output);
            }
            print(io.out, &json!(view))
        }
        None => {
            let op = Op::Conflicts {
                table: args.table,
                all: args.all,
            };
            let list: Vec<ConflictView> = door.call(op, io)?;
            if io.human {
                let text = super::conflicts_human::list(&list, args.all, chrono::Utc::now());
                return write!(io.out, "{text}").map_err(CliError::Output);
            }
            // One JSON array, as `GET /v1/conflicts` answers.
            print(io.out, &json!(list))
        }
    }
}

/// The words `--keep` takes; anything else is read as a JSON value.
const WORDS: &[&str] = &["mine", "theirs", "deleted", "alive", "local", "remote"];

/// A JSON value given to `--keep-value` (or, as before, `--keep`).
fn json_keep(v: &str) -> Result<serde_json::Value, CliError> {
    match parse_keep(v)? {
        crate::store::Keep::Value(v) => Ok(v),
        _ => Ok(serde_json::Value::String(v.to_string())),
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
    // A table this laptop has no record of yet, named like one it has: most likely a typo
    // (`peson`, a newcomer's), said after the summary.
    let typo = if io.human {
        let tables: Vec<String> = app
            .store()
            .tables()?
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| !t.starts_with(crate::model::SYSTEM_PREFIX))
            .collect();
        let names: Vec<&str> = tables.iter().map(String::as_str).collect();
        if names.contains(&table) {
            None
        } else {
            crate::app::peers::closest_name(&names, table).map(str::to_string)
        }
    } else {
        None
    };
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
    let v = json!(summary);
    if io.human {
        let mut text = super::human_admin::imported(&v);
        if let Some(near) = typo {
            text += &format!(
                "{table} is a new table on this laptop: did you mean {near}? (`fieldsync tables` \
                 lists them)\n"
            );
        }
        return write!(io.out, "{text}").map_err(CliError::Output);
    }
    print(io.out, &v)
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
    csv: formats::CsvOut,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    model::validate_table(table)?;
    if matches!(format, ExportFormat::Jsonl) && (csv.delimiter != b',' || csv.bom) {
        return Err(CliError::Invalid(
            "--delimiter and --bom are for CSV: add --format csv".into(),
        ));
    }
    match format {
        ExportFormat::Jsonl => {
            formats::export_jsonl(app.store(), table, include_deleted, &mut *io.out)?
        }
        ExportFormat::Csv => {
            formats::export_csv(app.store(), table, include_deleted, csv, &mut *io.out)?
        }
    };
    Ok(())
}

/// `apply`: an op file, all or nothing; errors name the file's line.
pub fn apply(app: &App, file: &Path, yes: bool, io: &mut Io<'_>) -> Result<(), CliError> {
    let reads_stdin = file == Path::new("-");
    // A patch or delete names its record as every command does: its id, the start of it, or
    // its import key (trial 10: `apply` took only full UUIDs).
    let existing =
        |table: &str, text: &str| Some(app.record_id(table, text).map_err(|e| e.to_string()));
    let ops = formats::read_ops_naming(
        BufReader::new(open_input(file, &mut io.stdin, &io.cwd)?),
        &existing,
    )?;
    // Applying a file again changes nothing: a delete of a record already deleted here, and
    // not touched by an earlier line of the file, is counted unchanged instead of failing the
    // whole file (a newcomer's second `apply` of the same ops failed on such a line).
    let mut touched = std::collections::HashSet::new();
    let mut already_deleted = 0usize;
    let mut kept = Vec::with_capacity(ops.len());
    for (line, op) in ops {
        let first_touch = touched.insert((op.table.clone(), op.id));
        if matches!(op.edit, crate::merge::Edit::Delete)
            && first_touch
            && app
                .store()
                .get(&op.table, &op.id)?
                .is_some_and(|r| !r.state.is_alive())
        {
            already_deleted += 1;
            continue;
        }
        kept.push((line, op));
    }
    let lines: Vec<usize> = kept.iter().map(|(l, _)| *l).collect();
    let ops: Vec<LocalOp> = kept.into_iter().map(|(_, o)| o).collect();
    if let Err(e) = app.check_mass_delete(&ops, yes) {
        // A person at a terminal may confirm; scripts, pipes and the agent need --yes.
        let terminal = io.agent.is_none() && !reads_stdin && std::io::stdin().is_terminal();
        if !terminal || !confirmed_on_terminal(&e.to_string()) {
            return Err(e.into());
        }
    }
    let results = if ops.is_empty() {
        Vec::new()
    } else {
        app.store()
            .write_local(&ops)
            .map_err(|e| at_line(e, &lines))?
    };
    let written = results
        .iter()
        .filter(|r| matches!(r, OpResult::Written(_)))
        .count();
    let all = results.len() + already_deleted;
    let v = json!({"ops": all, "written": written, "unchanged": all - written});
    if io.human {
        let text = super::human_admin::applied(&v);
        return write!(io.out, "{text}").map_err(CliError::Output);
    }
    print(io.out, &v)
}

/// Asks on the terminal; true only for an explicit "yes".
pub(super) fn confirmed_on_terminal(what: &str) -> bool {
    let what = what.split(": nothing was written").next().unwrap_or(what);
    eprint!("fieldsync: {what}. Type yes to go on: ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && answer.trim() == "yes"
}

/// The live records of fieldsync's own tables (those `include` names) as a person reads them
/// beside the records people wrote: their number, and ` (and 1 laptop revocation and 2 import
/// keys, fieldsync's own)` (empty when there are none). `digest`, `backup` and `restore` count
/// them in their totals (every laptop holds them too) but say them apart.
pub(super) fn own_records(
    store: &crate::store::Store,
    include: impl Fn(&str) -> bool,
) -> Result<(u64, String), CliError> {
    let own: Vec<(String, u64)> = store
        .tables()?
        .into_iter()
        .filter(|(t, _)| t.starts_with(model::SYSTEM_PREFIX) && include(t))
        .map(|(t, c)| (t, c.live))
        .collect();
    let live_of = |table: &str| -> u64 {
        own.iter()
            .filter(|(t, _)| t == table)
            .map(|(_, n)| *n)
            .sum()
    };
    let (revocations, import_keys) = (
        live_of(model::REVOCATIONS_TABLE),
        live_of(model::IMPORT_KEYS_TABLE),
    );
    let mut words = Vec::new();
    if revocations > 0 {
        words.push(super::human::count(
            revocations,
            "laptop revocation",
            "laptop revocations",
        ));
    }
    if import_keys > 0 {
        words.push(super::human::count(
            import_keys,
            "import key",
            "import keys",
        ));
    }
    let plus = if words.is_empty() {
        String::new()
    } else {
        format!(" (and {}, fieldsync's own)", words.join(" and "))
    };
    Ok((own.iter().map(|(_, n)| n).sum(), plus))
}

/// `digest`: count and SHA-256 of the live records.
pub fn digest(app: &App, tables: Vec<String>, io: &mut Io<'_>) -> Result<(), CliError> {
    let tables = if tables.is_empty() {
        // Every table, fieldsync's own included (`App::tables` leaves those out).
        app.store().tables()?.into_iter().map(|(t, _)| t).collect()
    } else {
        for t in &tables {
            model::validate_table(t)?;
        }
        tables
    };
    let (count, sha) = formats::digest(app.store(), &tables)?;
    if io.human {
        // For comparing two laptops by eye: the same count and fingerprint on both means the
        // same live records, field for field.
        // fieldsync's own tables (revocations) are in the fingerprint, since every laptop
        // holds them too, but said apart: a revocation is not a record a person wrote.
        let (own, data): (Vec<&String>, Vec<&String>) = tables
            .iter()
            .partition(|t| t.starts_with(model::SYSTEM_PREFIX));
        let (own_live, plus) = own_records(app.store(), |t| own.iter().any(|o| *o == t))?;
        let what = if data.is_empty() {
            "no tables".to_string()
        } else {
            data.iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        // fieldsync's own records are in the fingerprint: said, with how to compare records
        // alone (a newcomer's export imported elsewhere matched `digest person`, not `digest`).
        let own_note = if own_live > 0 {
            format!(
                "\nfieldsync's own records are in it too; `fieldsync digest {}` compares the \
                 records of those tables alone.",
                data.iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        } else {
            String::new()
        };
        writeln!(
            io.out,
            "{} live records in {what}{plus}; content fingerprint (SHA-256):\n{sha}\n\
             Another laptop showing the same fingerprint holds exactly the same live records.\
             {own_note}",
            count.saturating_sub(own_live)
        )
        .map_err(CliError::Output)?;
        return Ok(());
    }
    print(
        io.out,
        &json!({"count": count, "sha256": sha, "tables": tables}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistyped_table_is_named_not_listed_as_empty() {
        let names = [
            "fs_revocations".to_string(),
            "person".into(),
            "shelter".into(),
        ];
        let t = no_such_table("persons", &names);
        assert!(
            t.starts_with("No table persons on this laptop: did you mean person? "),
            "{t}"
        );
        let t = no_such_table("cases", &names);
        assert!(t.contains(": its tables are person, shelter ("), "{t}");
        assert!(no_such_table("x", &[]).contains(": it holds no records yet ("));
    }
}
