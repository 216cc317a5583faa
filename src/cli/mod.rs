//! The command line: clap definitions, and the dispatch of each command to its group's module.
//!
//! Commands print JSON on stdout (one object; one array for the lists `conflicts`, `peers`,
//! `tables`, `history`, `held list`, as the HTTP API answers them; JSON lines for the streams
//! `list`, `export`, `sync`, `verify`, `doctor`) and one-line errors on
//! stderr; on a terminal (or with `--human`) some print for people instead
//! ([`human`]), and `--json` forces JSON. Exit codes: 0 ok, 1 not found, 2 bad usage or
//! invalid input, 3 anything else (database in use, disk errors). Command bodies parse arguments, call the application layer
//! ([`crate::app`]) and print; they live by group:
//! - [`records`]: put, patch, delete, get, list, tables, history, conflicts, import, export,
//!   apply, digest.
//! - [`sync`]: run (the agent), sync, verify.
//! - [`mesh`]: init, mesh create/enroll/revoke/show.
//! - [`admin`]: status, peers, generate, backup, restore.
//! - [`bundle`]: bundle write/read/show (sync by USB stick).

pub mod admin;
pub mod bar;
pub mod bundle;
pub mod conflicts_human;
pub mod console;
pub mod human;
pub mod human_admin;
pub mod mesh;
pub mod problems;
pub mod records;
pub mod sync;
pub mod words;

pub use crate::app::admin::{conflict_json, peer_json};
pub use admin::GenerateCommand;
pub use bundle::BundleCommand;
pub use mesh::MeshCommand;
pub use records::{ConflictAction, ConflictsArgs};

use crate::app::{AgentCtx, App, AppError};
use crate::config::{Config, ConfigError};
use crate::formats::FormatError;
use crate::model;
use crate::store::{Store, StoreError};
use crate::tls::{Identity, Revoked, Transport};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ABOUT: &str = "Peer-to-peer record sync for laptops in the field.";

const LONG_ABOUT: &str = "\
fieldsync keeps a local database of records (tables of JSON objects with UUIDs that are the same \
on every laptop) and syncs it with other laptops on the same network.

Data directory, in order: --data-dir; $FIELDSYNC_DIR; a folder `fieldsync-data/` beside the \
executable if one exists (portable mode, for a USB stick); ~/.local/share/fieldsync.

On a terminal, status, peers, list, get, history, conflicts, tables, sync, verify, init, put, \
patch, delete, apply, bundle, held list, restore, import, backup, digest, doctor, mesh create, \
mesh show and mesh enroll print for people (tables and sentences, names, local times); --human \
does the same into a pipe or file.

With --json, or when stdout is not a terminal (a pipe, a script), output is JSON on stdout: one \
object; one array for the lists conflicts, peers, tables, history and held list (as the HTTP \
API answers them); one object per line for the streams list, export, sync, verify and doctor.

Exit codes: 0 ok, 1 not found, 2 bad usage or invalid input, 3 other failure (for example the \
database is in use by another fieldsync process).";

/// The fieldsync command line.
#[derive(Debug, Parser)]
#[command(
    name = "fieldsync",
    version = crate::build_info::version_text(),
    about = ABOUT,
    long_about = LONG_ABOUT
)]
pub struct Cli {
    /// Data directory (default: $FIELDSYNC_DIR, ./fieldsync-data beside the binary, or
    /// ~/.local/share/fieldsync).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON (as scripts expect) even on a terminal; any stdout that is not a terminal
    /// gets JSON anyway.
    #[arg(long = "json", id = "json_output", global = true)]
    pub json_output: bool,
    /// Print for people (tables, sentences, names, local times) even when stdout is not a
    /// terminal, e.g. into `less` or a file; `--json` wins.
    #[arg(long, global = true)]
    pub human: bool,
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

/// `fieldsync held ...`.
#[derive(Debug, Subcommand)]
pub enum HeldCommand {
    /// Every pending hold: id, peer, table, how many deletes of how many live records (a JSON
    /// array; a table on a terminal).
    List,
    /// Apply exactly the held deletes. On the coordinator's laptop (it holds the deployment
    /// CA) the approval is signed and travels: every laptop holding these deletes applies them
    /// when it syncs. Elsewhere it applies on this laptop only.
    Approve {
        /// The hold's id (from `held list`).
        id: u64,
    },
    /// Keep the records alive everywhere: apply the held deletes, then restore each record
    /// with a new revision after them (it syncs back to the laptop that deleted them). On the
    /// coordinator's laptop the rejection travels too and settles the same hold elsewhere.
    Reject {
        /// The hold's id (from `held list`).
        id: u64,
    },
}

/// `import-keys` subcommands.
#[derive(Subcommand, Debug)]
pub enum ImportKeysCommand {
    /// Every table's import keys (a JSON array of {"table","key"}; a list on a terminal).
    List,
    /// Stop keeping FIELD[,FIELD] unique in TABLE on every laptop: the drop travels by sync.
    /// Records may then share those values; name clashes already logged stay until settled.
    Drop {
        /// The table.
        table: String,
        /// The key's fields, comma-separated, in the key's order (as given to import --key).
        #[arg(value_delimiter = ',')]
        key: Vec<String>,
    },
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this laptop's instance, or update its name, owner and contact.
    ///
    /// In a pipe or with --json it prints {"instance","name","owner","contact"}.
    ///
    /// Every other command except `run` and `restore` refuses a data directory with no
    /// database (so a mistyped --data-dir never creates a new laptop).
    ///
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
        /// Join a deployment: a credential from `mesh enroll` (.fsmesh) or a join file.
        #[arg(long, value_name = "FILE")]
        mesh: Option<PathBuf>,
    },
    /// Create or replace a record.
    ///
    /// In a pipe or with --json it prints {"table","id","written","seq"}.
    ///
    /// Fields not in JSON_OBJECT are removed; a put with identical fields writes nothing.
    ///
    /// Example: fieldsync put person '{"name":"Amina Okafor","age":34}'
    ///
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
        /// Record id, or the value of the `import --key` field(s).
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
        /// Record id, or the value of the `import --key` field(s).
        id: String,
    },
    /// Show one record, by its id or its import key.
    ///
    /// In a pipe or with --json it prints {"table","id","fields"}.
    ///
    /// Example: fieldsync get person 6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b --meta
    ///
    /// Example: fieldsync get person A-1   (a record imported with --key case_number)
    Get {
        /// Table name.
        table: String,
        /// Record id, or the value of the `import --key` field(s) (A-1; A-1,2024 for two).
        id: String,
        /// Add "meta": per-field stamps (time, instance), version vector, feed position, conflicts.
        #[arg(long)]
        meta: bool,
        /// Also print a deleted record (with "deleted": true).
        #[arg(long)]
        include_deleted: bool,
        /// Print the record as it was right after a revision: an "at" stamp from `history`,
        /// or an RFC 3339 time (the latest revision at or before it).
        #[arg(long, value_name = "STAMP_OR_TIME")]
        at: Option<String>,
    },
    /// Show a table's records: on a terminal the first 1,000 in name order; in a pipe or with
    /// --json every one as JSON lines, in id order (a stream: one record a line).
    ///
    /// Find records with --where FIELD=VALUE (equal; VALUE read as JSON if it parses, else as
    /// text; a number also matches the same text) and --contains FIELD=TEXT (any part, any
    /// letter case); several must all hold.
    ///
    /// Example: fieldsync list person | head
    ///
    /// Example: fieldsync list person --contains name=amina --where status=missing
    List {
        /// Table name.
        table: String,
        /// Include deleted records (marked "deleted": true).
        #[arg(long)]
        include_deleted: bool,
        /// Only records whose FIELD equals VALUE (repeat for several).
        #[arg(long = "where", value_name = "FIELD=VALUE")]
        where_: Vec<String>,
        /// Only records whose FIELD contains TEXT, in any letter case (repeat for several).
        #[arg(long, value_name = "FIELD=TEXT")]
        contains: Vec<String>,
        /// Only these fields (comma-separated), in this order: the columns a terminal shows
        /// (it shows at most six otherwise), and the fields of each JSON line.
        #[arg(long, value_delimiter = ',', value_name = "FIELD")]
        fields: Vec<String>,
    },
    /// Show the tables with their live and deleted record counts.
    Tables,
    /// Show every revision of a record, oldest first: when, by which laptop, what changed.
    ///
    /// Example: fieldsync history person 6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b
    History {
        /// Table name.
        table: String,
        /// Record id, or the value of the `import --key` field(s).
        id: String,
        /// Print each revision as a readable diff (`-` old, `+` new value per field) instead
        /// of JSON.
        #[arg(long)]
        diff: bool,
    },
    /// Show the conflict log (unresolved first), or resolve an entry.
    ///
    /// Example: fieldsync conflicts --table person
    ///
    /// Example: fieldsync conflicts resolve 3 --keep remote
    Conflicts(ConflictsArgs),
    /// Import records from CSV, JSONL or a spreadsheet, all or nothing.
    ///
    /// Which record a row is: an `id` column (or JSONL "id") gives it; otherwise --key FIELD
    /// derives it from the key fields (the same row gives the same id on every laptop of the
    /// deployment, so importing again, or on two laptops, never makes copies); --new-ids makes
    /// every row a new record. With none of them the import is refused.
    ///
    /// An existing record: with --key the row's non-empty cells are set and its other fields
    /// kept (JSONL null removes a field); with file ids the row replaces the fields. Unchanged
    /// rows write nothing; deleted records stay deleted. A field whose value in the file is one
    /// it held before an edit changed it (here or on another laptop) keeps the edit, listed as
    /// "kept" ({"record","key","field","file","kept"}, the first 20; "kept_edited" counts them,
    /// "kept_rows" the rows that wrote nothing for it, not counted as "unchanged"):
    /// re-importing a list does not undo corrections made since; --overwrite writes the file's
    /// values anyway. A record already here with the row's
    /// key values under another id (written with put) is updated, not doubled. Prints
    /// {"table","records","inserted","updated","unchanged","deleted_kept","changes",
    /// "kept_edited","kept","kept_rows","new_key","key_clashes","mixed_types"}, every one
    /// always present ("key_clashes": values of a new key records already shared, each a name
    /// clash on every laptop):
    /// "changes" lists the first 20 changed fields of existing records as
    /// {"record","key","field","old","new"}; "new_key" names the --key fields when this import
    /// made them the table's import key on every laptop (else null); "mixed_types" the CSV or
    /// sheet columns read as numbers in some rows and text in others, as
    /// {"field","numbers","texts","decimal_commas"}.
    /// --dry-run checks the file and prints the same, with "dry_run": true, writing nothing.
    ///
    /// Formats by extension, in any case: .csv/.tsv (delimiter , ; or tab detected from the
    /// header; UTF-8 with or without BOM; CRLF; quoted newlines), .xlsx/.xlsm/.xls/.ods (first
    /// sheet or --sheet; .xlsx/.xlsm are read row by row, .ods/.xls are read whole and
    /// refused above 16 MB: save those as .xlsx or .csv), anything else (and `-`, stdin)
    /// JSONL: {"table","id","fields"} lines or plain field objects.
    ///
    /// Types: a CSV cell that is a JSON number (whose value survives exactly), true/false, or a
    /// JSON array/object keeps that type; a JSON-quoted cell ("34") is that text; everything
    /// else, dates included, is text as written; empty cells are no value. Numbers that would
    /// change (a 30-digit integer) stay text in CSV and are refused in JSONL. Spreadsheet cells
    /// keep the sheet's types (dates as ISO 8601 text). --text FIELD,... keeps fields as text
    /// (phone numbers, postcodes; a JSON-quoted cell is still the text inside the quotes); each
    /// must be a column of the file.
    ///
    /// Example: fieldsync import person people.csv --key case_number
    ///
    /// Example: fieldsync import shelter shelters.xlsx --sheet Open --key name,district
    Import {
        /// Table name.
        table: String,
        /// The file (`-` reads JSONL from standard input).
        file: PathBuf,
        /// Fields that identify a row (comma-separated): rows update the record with that key.
        /// The first import by a key makes it the table's key on every laptop, kept unique
        /// there (`fieldsync import-keys` lists and drops keys).
        #[arg(
            long,
            value_delimiter = ',',
            value_name = "FIELD",
            conflicts_with = "new_ids"
        )]
        key: Vec<String>,
        /// Every row is a new record with a new id (importing twice adds everything twice).
        #[arg(long)]
        new_ids: bool,
        /// CSV delimiter: a single character, or `tab` (default: detected from the header).
        #[arg(long, value_name = "CHAR")]
        delimiter: Option<String>,
        /// Spreadsheet sheet to read (default: the first).
        #[arg(long, value_name = "NAME")]
        sheet: Option<String>,
        /// Fields always imported as text (comma-separated), e.g. --text phone,postcode.
        #[arg(long, value_delimiter = ',', value_name = "FIELD")]
        text: Vec<String>,
        /// Read and check the file and say what importing it would add and change (the
        /// first changed fields with their old and new values), writing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write the file's values even where a field was edited since it held that value
        /// (by default such fields keep the edit: re-importing an older list does not undo
        /// corrections made in the field).
        #[arg(long)]
        overwrite: bool,
    },
    /// Write a table to stdout as JSONL (default) or CSV, ordered by id.
    ///
    /// Example: fieldsync export person --format csv > people.csv
    /// For Excel in a locale with decimal commas: --format csv --delimiter ';' --bom
    Export {
        /// Table name.
        table: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Include deleted records.
        #[arg(long)]
        include_deleted: bool,
        /// CSV delimiter: a single character, or `tab` (default: comma). Spreadsheet programs
        /// in many European locales open `;`-separated files in columns.
        #[arg(long, value_name = "CHAR")]
        delimiter: Option<String>,
        /// Start the CSV with a UTF-8 byte order mark, so that Excel reads accents right
        /// (`import` accepts files with or without one).
        #[arg(long)]
        bom: bool,
    },
    /// Apply a file of JSON-line operations, all or nothing.
    ///
    /// Lines: {"op":"put"|"patch"|"delete","table":..,"id":..,"fields":{..}}.
    ///
    /// A file deleting more of a table's live records than `[brake]` in fieldsync.toml allows
    /// (default: more than 20% and at least 50) asks for confirmation on a terminal and
    /// otherwise needs --yes.
    ///
    /// Example: fieldsync apply ops.jsonl
    Apply {
        /// The op file (`-` for stdin).
        file: PathBuf,
        /// Confirm a mass delete without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Count and fingerprint the live records, to compare two laptops.
    ///
    /// The figure is the one the benchmark data generator (`gen.py --digest`, kept outside this
    /// repository) prints for the same records.
    ///
    /// Example: fieldsync digest person
    Digest {
        /// Tables to include (default: all).
        tables: Vec<String>,
    },
    /// Run the agent: serve the sync protocol and sync with peers until SIGINT/SIGTERM.
    ///
    /// While it runs, every other command works too: the CLI talks to the agent through a
    /// control endpoint on 127.0.0.1 that only the owner of the data directory can use.
    ///
    /// Example: fieldsync run --listen 0.0.0.0:7437 --peer 192.0.2.7:7437
    Run {
        /// Address to serve the sync protocol on (default from fieldsync.toml, else 0.0.0.0:7437).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// A peer to sync with (repeatable), in addition to `peers` in fieldsync.toml.
        #[arg(long = "peer", value_name = "HOST:PORT")]
        peers: Vec<String>,
        /// Do not advertise or browse with mDNS (static peers only).
        #[arg(long)]
        no_discovery: bool,
        /// Sync without TLS (debugging only; both sides must set it). Prints a warning.
        #[arg(long, env = "FIELDSYNC_INSECURE_PLAINTEXT", value_parser = clap::builder::BoolishValueParser::new())]
        insecure_plaintext: bool,
        /// Address of the HTTP API for local applications (default from fieldsync.toml, else
        /// 127.0.0.1:7438; port 0 picks a free one). URL and token are written to api.json.
        #[arg(long, value_name = "ADDR")]
        api_listen: Option<String>,
        /// Do not serve the HTTP API.
        #[arg(long)]
        no_api: bool,
    },
    /// Run one sync session with a peer, both directions, and say what moved.
    ///
    /// Works whether or not the local agent is running.
    ///
    /// Example: fieldsync sync 192.0.2.7:7437
    Sync {
        /// The peer's agent address.
        addr: String,
        /// Sync without TLS (debugging only; both sides must set it).
        #[arg(long, env = "FIELDSYNC_INSECURE_PLAINTEXT", value_parser = clap::builder::BoolishValueParser::new())]
        insecure_plaintext: bool,
    },
    /// Check whether we are in sync with a peer: per table, in sync or the differing record ids.
    ///
    /// Compares digests of id ranges, bisecting only where they differ; no records are copied.
    /// Exit code 0 when every table is in sync, 1 when something differs.
    ///
    /// Example: fieldsync verify 192.0.2.7:7437
    Verify {
        /// The peer's agent address.
        addr: String,
        /// Talk without TLS (debugging only; both sides must set it).
        #[arg(long, env = "FIELDSYNC_INSECURE_PLAINTEXT", value_parser = clap::builder::BoolishValueParser::new())]
        insecure_plaintext: bool,
    },
    /// Deployment membership: who may sync with whom (mutual TLS with a deployment CA).
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Show this laptop: its name, records, conflicts, held deletes, peers and agent.
    Status,
    /// Deletes held by the mass-delete brake: list them, approve or reject one.
    ///
    /// A sync that would delete more than `[brake]` allows of a table's live records (default:
    /// more than 20% and at least 50) applies everything else and holds those deletes here.
    ///
    /// Example: fieldsync held list
    ///
    /// Example: fieldsync held approve 3
    ///
    /// Example: fieldsync held reject 3
    #[command(subcommand)]
    Held(HeldCommand),
    /// The import keys of the deployment's tables (`import --key` makes one: every laptop then
    /// keeps it unique), and dropping one made by mistake (a key of names, say).
    ///
    /// Example: fieldsync import-keys list
    ///
    /// Example: fieldsync import-keys drop person name
    #[command(subcommand, name = "import-keys")]
    ImportKeys(ImportKeysCommand),
    /// Sync by USB stick: write a bundle of changes for a laptop out of reach, read one, or
    /// show what one holds. Bundles are encrypted to the deployment and signed by the writer.
    ///
    /// Example: fieldsync bundle write /media/usb/for-camp-b.fsbundle --for camp-b
    ///
    /// Example: fieldsync bundle read /media/usb/for-camp-b.fsbundle
    ///
    /// Example: fieldsync bundle show /media/usb/for-camp-b.fsbundle
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Show the laptops this one has synced with or knows of: online, last sync, trouble.
    Peers,
    /// Write deterministic test or benchmark data as JSON lines to stdout (no database needed).
    ///
    /// Example: fieldsync generate records --count 100000 --seed 42 > p100k.jsonl
    ///
    /// Example: fieldsync generate ops --from p100k.jsonl --count 1000 --seed 7 > ops.jsonl
    #[command(subcommand)]
    Generate(GenerateCommand),
    /// Write a consistent snapshot of the whole database to FILE; works while the agent runs.
    ///
    /// Records, history, conflicts, peers and this laptop's identity, as of one moment (writes
    /// wait while it is read). Prints the count and digest of the records it holds: `restore`
    /// checks them, and `fieldsync digest` on the restored laptop prints the same.
    ///
    /// Example: fieldsync backup /media/usb/laptop7-2026-05-01.fsbackup
    ///
    /// A laptop holding private keys (its credential; on the coordinator, the deployment CA)
    /// needs --passphrase-file: the backup then also holds those keys and fieldsync.toml,
    /// encrypted (age format), so `restore` can rebuild the laptop, enrollments and
    /// revocations included. --no-keys writes it without them, unencrypted.
    Backup {
        /// The backup file to write (replaced atomically if it exists).
        file: PathBuf,
        /// Encrypt the backup with the passphrase on this file's first line, and include the
        /// credential, the deployment CA and fieldsync.toml.
        #[arg(long, value_name = "FILE", conflicts_with = "no_keys")]
        passphrase_file: Option<PathBuf>,
        /// Leave the private keys out (the backup is not encrypted).
        #[arg(long)]
        no_keys: bool,
    },
    /// Replace this laptop's database with a backup (stop the agent first).
    ///
    /// This laptop keeps its own instance id and its credential; the next sync with each peer
    /// is a full one. With --take-over-identity it becomes the laptop the backup came from
    /// (for replacing a lost or broken laptop: never run both at once).
    ///
    /// Example: fieldsync restore /media/usb/laptop7-2026-05-01.fsbackup
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Replace the data even if this data directory already holds some.
        #[arg(long)]
        force: bool,
        /// Become the instance the backup was taken from (its id, name, clock).
        #[arg(long)]
        take_over_identity: bool,
        /// The passphrase of an encrypted backup (first line of this file). Its keys are
        /// restored where this directory has none: the deployment CA and fieldsync.toml, and
        /// the credential when this laptop is (or takes over) the instance it belongs to.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Print (and on a desktop, open) a one-time login link to the console: the web page the
    /// running agent serves on its HTTP API port (peers, live syncs, conflicts, records).
    ///
    /// The link works once, within 10 minutes. Needs `fieldsync run` with the HTTP API on.
    Console,
    /// Check that this laptop can sync: data directory, database, credential, network, port,
    /// clock.
    ///
    /// On a terminal, one line per check (ok or FAILED) with the fix under a failed one; with
    /// --json or into a pipe, one JSON line per check: {"check","ok","detail","fix"}. Exit
    /// code 0 when every check passes, 1 otherwise.
    Doctor,
    /// Replace a damaged database (one that says "run `fieldsync repair`") with the newest
    /// automatic snapshot; stop the agent first.
    ///
    /// The damaged database is moved to damaged/ in the data directory, never deleted. The
    /// laptop keeps its identity; its next syncs bring back everything its peers hold.
    ///
    /// Example: fieldsync repair
    Repair,
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
    /// Writing the output failed (a closed pipe is not reported: `list | head` is normal).
    #[error("writing output: {0}")]
    Output(std::io::Error),
    /// A sync session failed (exit 3).
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    /// `verify` found differences (exit 1); the details are on stdout.
    #[error("not in sync with {0}")]
    Differs(String),
    /// `doctor` found problems (exit 1); the checks are on stdout.
    #[error("doctor: failed checks: {0}")]
    Unhealthy(String),
    /// An application-layer operation failed (exit code by kind).
    #[error(transparent)]
    App(#[from] AppError),
    /// A failure the command already told a person on stdout (`doctor`'s and `verify`'s
    /// summary on a terminal): only its exit code remains, nothing is printed on stderr.
    #[error(transparent)]
    Said(Box<CliError>),
    /// A command run by the agent failed; its message and exit code.
    #[error("{message}")]
    Forwarded {
        /// Exit code.
        code: i32,
        /// The error message.
        message: String,
    },
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Invalid(_) | CliError::Config(_) => 2,
            CliError::NotFound(_) | CliError::Differs(_) | CliError::Unhealthy(_) => 1,
            CliError::Forwarded { code, .. } => *code,
            CliError::Said(e) => e.exit_code(),
            CliError::App(e) => e.exit_code(),
            CliError::Sync(_) => 3,
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
            CliError::Format(_) | CliError::Io(_) | CliError::Output(_) => 3,
        }
    }
}

impl CliError {
    /// True when stderr gets no line for this error: it was told on stdout already
    /// ([`CliError::Said`], also when the agent ran the command), or the reader of the output
    /// went away ([`CliError::is_closed_output`]).
    pub fn is_said(&self) -> bool {
        match self {
            CliError::Said(_) => true,
            CliError::Forwarded { message, .. } => message.trim().is_empty(),
            e => e.is_closed_output(),
        }
    }

    /// True when the reader of our output went away (`fieldsync list | head`): not an error.
    pub fn is_closed_output(&self) -> bool {
        match self {
            CliError::Output(e) | CliError::Format(FormatError::Write(e)) => {
                e.kind() == std::io::ErrorKind::BrokenPipe
            }
            _ => false,
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
            private_portable_dir(&portable);
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

/// Makes the portable data folder private (0700) when it belongs to us and others may read
/// it: the stick's layout is copied with `cp -r` from git, which leaves it 0755, and the records
/// are personal data. Best effort: on FAT/exFAT the mount decides, and `doctor` says so.
fn private_portable_dir(dir: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let mine = std::fs::metadata("/proc/self").is_ok_and(|me| me.uid() == meta.uid());
    if mine && meta.mode() & 0o077 != 0 {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
}

/// What a command reads and writes besides the store.
pub struct Io<'a> {
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard input already read (commands forwarded to the agent), or `None` for the real one.
    pub stdin: Option<String>,
    /// Directory that relative file paths are relative to.
    pub cwd: PathBuf,
    /// Runtime for the commands that talk to peers.
    pub rt: tokio::runtime::Handle,
    /// The running agent's context (live status, transport, connections, API URL), when the
    /// command runs inside the agent.
    pub agent: Option<AgentCtx>,
    /// Print for people ([`human`]) rather than JSON.
    pub human: bool,
}

/// Runs one command line. `args` is the full argv (forwarded as is when an agent holds the
/// database).
pub fn run(
    cli: Cli,
    args: Vec<String>,
    out: &mut dyn Write,
    rt: &tokio::runtime::Handle,
) -> Result<(), CliError> {
    let cwd = std::env::current_dir().unwrap_or_default();
    // Generating data must not need (or lock) a database: it runs beside a live agent.
    let cli = match cli.command {
        Command::Generate(what) => return admin::generate(what, out, &mut None, &cwd),
        command => Cli { command, ..cli },
    };
    // Doctor must report on a data directory that is missing, broken or held by an agent.
    if matches!(cli.command, Command::Doctor) {
        let human = !cli.json_output && (cli.human || std::io::stdout().is_terminal());
        return crate::doctor::run(cli.data_dir, out, rt, human);
    }
    // Repair works on a database that does not open.
    if matches!(cli.command, Command::Repair) {
        let dir = resolve_data_dir(cli.data_dir.clone())?;
        return admin::repair(&dir, Config::load(&dir)?, out);
    }
    let dir = resolve_data_dir(cli.data_dir.clone())?;
    // The console link comes from the agent's HTTP API, never from the database.
    let human = !cli.json_output && (cli.human || std::io::stdout().is_terminal());
    if let Command::Console = cli.command {
        return console::console(&dir, !human, out);
    }
    // A typo in --data-dir must not create a new, empty laptop: only `init` and `run` create
    // a database, and `restore` fills an empty directory.
    if !matches!(
        cli.command,
        Command::Init { .. } | Command::Run { .. } | Command::Restore { .. }
    ) && !has_database(&dir)
    {
        return Err(no_database(&dir));
    }
    // A restore into a directory with no database would make a laptop with neither a name
    // nor a credential of its own: it either becomes the backup's laptop or is made first.
    if let Command::Restore {
        take_over_identity: false,
        file,
        passphrase_file,
        ..
    } = &cli.command
    {
        if !has_database(&dir) {
            let sealed = crate::backup_keys::is_sealed(&cwd.join(file)).unwrap_or(false);
            return Err(restore_without_identity(
                &dir,
                file,
                sealed,
                passphrase_file.as_deref(),
            ));
        }
    }
    let config = Config::load(&dir)?;
    // A restore into a directory with no database creates one to restore into; when the
    // restore fails (a wrong passphrase, a damaged backup) what the open created is removed
    // again, so a failed restore leaves the directory as it found it.
    let fresh_restore = (matches!(cli.command, Command::Restore { .. }) && !has_database(&dir))
        .then(|| admin::DirBefore::note(&dir));
    let store = match Store::open(&dir, config) {
        Ok(s) => Arc::new(s),
        Err(StoreError::Locked(_)) if is_typed(&cli.command) => {
            // Typed operations run in the agent but print here, so `human` applies as is.
            let mut io = Io {
                out,
                stdin: None,
                cwd,
                rt: rt.clone(),
                agent: None,
                human,
            };
            return typed(&Door::Agent(&dir), cli.command, &mut io);
        }
        Err(StoreError::Locked(_)) => {
            let mut args = args;
            // The agent's stdout is not the terminal: it is told how to print.
            if human && !args.iter().any(|a| a == "--human") {
                args.push("--human".into());
            }
            return forward(&dir, &cli.command, args, out, cwd, rt);
        }
        Err(e) => return Err(problems::for_person(e.into(), &dir)),
    };
    if let Command::Run {
        listen,
        peers,
        no_discovery,
        insecure_plaintext,
        api_listen,
        no_api,
    } = cli.command
    {
        let args = sync::RunArgs {
            listen,
            peers,
            no_discovery,
            insecure_plaintext,
            api_listen,
            no_api,
            human,
        };
        return sync::run_agent(store, args, rt);
    }
    let mut io = Io {
        out,
        stdin: None,
        cwd,
        rt: rt.clone(),
        agent: None,
        human,
    };
    // sled reads pages lazily, so damage can also surface after the open: same one line.
    let result = execute(&store, cli.command, &mut io).map_err(|e| match e {
        CliError::Store(StoreError::Sled(sled::Error::Corruption { .. })) => {
            CliError::Store(StoreError::Damaged(dir.clone()))
        }
        other => problems::for_person(other, &dir),
    });
    if let (Err(_), Some(before)) = (&result, fresh_restore) {
        drop(store);
        before.restore(&dir);
    }
    result
}

/// True when `dir` holds a fieldsync database (its `db/` directory), whether or not it opens.
pub fn has_database(dir: &Path) -> bool {
    dir.join("db").is_dir()
}

/// The refusal of a command on a directory with no database (exit 1).
pub fn no_database(dir: &Path) -> CliError {
    CliError::NotFound(format!(
        "no fieldsync database at {} (run `fieldsync init` to create one)",
        dir.display()
    ))
}

/// The refusal of `restore` (without --take-over-identity) into a directory with no database
/// (exit 1): the two ways on, with the commands.
fn restore_without_identity(
    dir: &Path,
    file: &Path,
    sealed: bool,
    passphrase_file: Option<&Path>,
) -> CliError {
    let d = dir.display();
    // The command offered must work as given: an encrypted backup needs its passphrase.
    let pass = match passphrase_file {
        Some(p) => format!(" --passphrase-file {}", p.display()),
        None if sealed => " --passphrase-file FILE".to_string(),
        None => String::new(),
    };
    CliError::NotFound(format!(
        "no fieldsync database at {d}, so this laptop has no identity to keep: to make it a \
         laptop of its own holding the backup's data, run `fieldsync --data-dir {d} init --mesh \
         FILE` (or `init --name NAME`) first and restore again; to become the backup's laptop \
         (it is lost or broken and will never run again), run `fieldsync --data-dir {d} restore \
         {} --take-over-identity{pass}`",
        file.display()
    ))
}

/// Mutual TLS from this laptop's credential; plaintext only when asked for explicitly.
pub fn resolve_transport(store: &Store, insecure: bool) -> Result<Transport, CliError> {
    if insecure {
        eprintln!(
            "fieldsync: WARNING: --insecure-plaintext: sync traffic is neither encrypted nor \
             authenticated; anyone on this network can read and change the records"
        );
        return Ok(Transport::Plaintext);
    }
    let cred = crate::mesh::load_credential(store.dir())
        .map_err(|e| CliError::Invalid(e.to_string()))?
        .ok_or_else(|| {
            CliError::Invalid(
                "this laptop has not joined a deployment, and plaintext sync is refused: \
                 run `fieldsync init --mesh FILE` with a credential from the coordinator \
                 (`fieldsync mesh enroll`), or pass --insecure-plaintext for debugging"
                    .into(),
            )
        })?;
    if cred.instance != store.id() {
        return Err(CliError::Invalid(format!(
            "the credential is for instance {} but this data directory is instance {}",
            cred.instance,
            store.id()
        )));
    }
    let identity =
        Identity::from_credential(&cred).map_err(|e| CliError::Invalid(e.to_string()))?;
    let revoked = Arc::new(Revoked::default());
    revoked.set(crate::mesh::load_revocations(store, &identity.ca_pem));
    Ok(Transport::Tls {
        identity: Arc::new(identity),
        revoked,
    })
}

/// Sends the command line to the agent that holds the database and relays its output.
fn forward(
    dir: &Path,
    command: &Command,
    args: Vec<String>,
    out: &mut dyn Write,
    cwd: PathBuf,
    rt: &tokio::runtime::Handle,
) -> Result<(), CliError> {
    if matches!(command, Command::Run { .. }) {
        // Which process it is, so that it can be found and stopped (`agent.json` names it).
        let pid = crate::control::read_agent_file(dir).ok().map(|a| a.pid);
        let (which, stop) = match pid {
            Some(pid) => (format!(" (pid {pid})"), format!(", or `kill {pid}`")),
            None => (String::new(), String::new()),
        };
        return Err(CliError::Io(format!(
            "an agent{which} is already running on {}: use it as it is (every command talks \
             to it), or stop it first (Ctrl-C where it runs{stop}) to start it again",
            dir.display()
        )));
    }
    let reads_stdin = args.iter().skip(1).any(|a| a == "-");
    let stdin = if reads_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Io(format!("reading stdin: {e}")))?;
        Some(s)
    } else {
        None
    };
    let req = crate::control::RunRequest {
        token: String::new(),
        args: args.into_iter().skip(1).collect(),
        stdin,
        cwd,
    };
    let mut reply = rt
        .block_on(crate::control::forward(dir, req.clone()))
        .map_err(|e| match e {
            crate::control::ControlError::Stopped => CliError::Io(e.to_string()),
            e => CliError::Io(format!(
                "the database in {} is in use by another process, and {e}",
                dir.display()
            )),
        })?;
    // The agent cannot ask on this terminal: a mass delete it held back is confirmed here, as
    // `apply` without an agent does, and sent again with --yes.
    if reply.code != 0
        && reply
            .stderr
            .contains("nothing was written; run it again with --yes")
        && !reads_stdin
        && std::io::stdin().is_terminal()
        && records::confirmed_on_terminal(reply.stderr.trim().trim_start_matches("fieldsync: "))
    {
        let mut again = req;
        again.args.push("--yes".into());
        reply = rt
            .block_on(crate::control::forward(dir, again))
            .map_err(|e| CliError::Io(e.to_string()))?;
    }
    out.write_all(reply.stdout.as_bytes())
        .map_err(CliError::Output)?;
    if reply.code == 0 {
        Ok(())
    } else {
        Err(CliError::Forwarded {
            code: reply.code,
            message: reply.stderr,
        })
    }
}

/// The control endpoint's way of running a command line inside the agent.
pub fn executor(rt: tokio::runtime::Handle, app: App) -> crate::control::Executor {
    let agent = app.agent().cloned();
    let run = Arc::new(move |store: &Arc<Store>, req: crate::control::RunRequest| {
        let mut argv = vec!["fieldsync".to_string()];
        argv.extend(req.args);
        let cli = match Cli::try_parse_from(argv) {
            Ok(c) => c,
            Err(e) => {
                // --help and --version are "errors" that print to stdout with exit code 0.
                let code = e.exit_code();
                let text = e.to_string();
                return if code == 0 {
                    crate::control::RunReply {
                        code,
                        stdout: text,
                        stderr: String::new(),
                    }
                } else {
                    crate::control::RunReply {
                        code,
                        stdout: String::new(),
                        stderr: text.trim_end().trim_start_matches("error: ").to_string(),
                    }
                };
            }
        };
        if matches!(cli.command, Command::Run { .. }) {
            return crate::control::RunReply {
                code: 3,
                stdout: String::new(),
                stderr: "an agent is already running on this data directory".into(),
            };
        }
        let mut buf = Vec::new();
        let mut io = Io {
            out: &mut buf,
            stdin: req.stdin,
            cwd: req.cwd,
            rt: rt.clone(),
            agent: agent.clone(),
            human: cli.human && !cli.json_output,
        };
        let result =
            execute(store, cli.command, &mut io).map_err(|e| problems::for_person(e, store.dir()));
        let (code, stderr) = match result {
            Ok(()) => (0, String::new()),
            // Told on stdout already: the caller prints nothing more.
            Err(e) if e.is_said() => (e.exit_code(), String::new()),
            Err(e) => (e.exit_code(), e.to_string()),
        };
        crate::control::RunReply {
            code,
            stdout: String::from_utf8_lossy(&buf).into_owned(),
            stderr,
        }
    });
    crate::control::Executor { app, run }
}

/// Runs one command against an open store.
pub fn execute(store: &Arc<Store>, command: Command, io: &mut Io<'_>) -> Result<(), CliError> {
    let app = App::new(store.clone(), io.agent.clone());
    let insecure = matches!(
        command,
        Command::Sync {
            insecure_plaintext: true,
            ..
        } | Command::Verify {
            insecure_plaintext: true,
            ..
        }
    );
    let door = Door::Local {
        app: &app,
        insecure,
    };
    if is_typed(&command) {
        return typed(&door, command, io);
    }
    match command {
        Command::Init {
            name,
            owner,
            contact,
            mesh,
        } => mesh::init(&app, name, owner, contact, mesh, io),
        Command::Mesh(m) => mesh::mesh_command(&app, m, io),
        Command::List {
            table,
            include_deleted,
            where_,
            contains,
            fields,
        } => {
            let find = records::find_args(&where_, &contains)?;
            records::list(&app, &table, include_deleted, &find, &fields, io)
        }
        Command::Import {
            table,
            file,
            key,
            new_ids,
            delimiter,
            sheet,
            text,
            dry_run,
            overwrite,
        } => {
            let delimiter = delimiter
                .as_deref()
                .map(records::parse_delimiter)
                .transpose()?;
            let opts = crate::import::ImportOptions {
                key,
                new_ids,
                delimiter,
                sheet,
                text,
                dry_run,
                overwrite,
                // Undocumented in --help: lets tests stage an import with a small file.
                chunk_rows: std::env::var("FIELDSYNC_IMPORT_CHUNK_ROWS")
                    .ok()
                    .and_then(|v| v.parse().ok()),
            };
            records::import(&app, &table, &file, &opts, io)
        }
        Command::Export {
            table,
            format,
            include_deleted,
            delimiter,
            bom,
        } => {
            let csv = crate::formats::CsvOut {
                delimiter: delimiter
                    .as_deref()
                    .map(records::parse_delimiter)
                    .transpose()?
                    .unwrap_or(b','),
                bom,
            };
            records::export(&app, &table, format, include_deleted, csv, io)
        }
        Command::Apply { file, yes } => records::apply(&app, &file, yes, io),
        Command::Held(h) => admin::held(&app, h, io),
        Command::ImportKeys(k) => admin::import_keys(&app, k, io),
        Command::Bundle(b) => bundle::bundle(&app, b, io),
        Command::Digest { tables } => records::digest(&app, tables, io),
        Command::Put { .. }
        | Command::Patch { .. }
        | Command::Delete { .. }
        | Command::Get { .. }
        | Command::Tables
        | Command::History { .. }
        | Command::Conflicts(_)
        | Command::Status
        | Command::Peers
        | Command::Sync { .. }
        | Command::Verify { .. } => typed(&door, command, io),
        Command::Run { .. } => Err(CliError::Invalid(
            "`run` cannot be started from inside a running agent".into(),
        )),
        Command::Console => console::console(store.dir(), !io.human, io.out),
        Command::Generate(what) => admin::generate(what, io.out, &mut io.stdin, &io.cwd),
        Command::Backup {
            file,
            passphrase_file,
            no_keys,
        } => admin::backup(&app, &file, passphrase_file.as_deref(), no_keys, io),
        Command::Restore {
            file,
            force,
            take_over_identity,
            passphrase_file,
        } => admin::restore(
            &app,
            &file,
            force,
            take_over_identity,
            passphrase_file.as_deref(),
            io,
        ),
        Command::Doctor => crate::doctor::run_with_store(
            store,
            io.agent.as_ref().map(|a| &a.live),
            io.out,
            io.human,
        ),
        Command::Repair => Err(CliError::Invalid(format!(
            "the database in {} opens (the agent is running on it): nothing to repair",
            store.dir().display()
        ))),
    }
}

/// True for the commands that are typed application-layer operations ([`crate::control::Op`]):
/// run in this process, or sent to the agent that holds the database as typed values.
fn is_typed(c: &Command) -> bool {
    matches!(
        c,
        Command::Put { .. }
            | Command::Patch { .. }
            | Command::Delete { .. }
            | Command::Get { .. }
            | Command::Tables
            | Command::History { .. }
            | Command::Conflicts(_)
            | Command::Status
            | Command::Peers
            | Command::Sync { .. }
            | Command::Verify { .. }
    )
}

/// Runs a typed command through `door` and prints its output.
fn typed(door: &Door<'_>, command: Command, io: &mut Io<'_>) -> Result<(), CliError> {
    match command {
        Command::Put { table, id, json } => records::put(door, &table, id, &json, io),
        Command::Patch { table, id, json } => records::patch(door, &table, &id, &json, io),
        Command::Delete { table, id } => records::delete(door, &table, &id, io),
        Command::Get {
            table,
            id,
            meta,
            include_deleted,
            at,
        } => records::get(door, &table, &id, meta, include_deleted, at, io),
        Command::Tables => records::tables(door, io),
        Command::History { table, id, diff } => records::history(door, &table, &id, diff, io),
        Command::Conflicts(args) => records::conflicts(door, args, io),
        Command::Status => admin::status(door, io),
        Command::Peers => admin::peers(door, io),
        Command::Sync { addr, .. } => sync::sync(door, &addr, io),
        Command::Verify { addr, .. } => sync::verify(door, &addr, io),
        _ => Err(CliError::Invalid(
            "this command is not a typed operation".into(),
        )),
    }
}

/// Where typed operations run: in this process, or in the agent that holds the database
/// (through the control endpoint's `control_op`).
pub enum Door<'a> {
    /// This process has the database open.
    Local {
        /// The application.
        app: &'a App,
        /// `--insecure-plaintext` for a one-shot sync or verify.
        insecure: bool,
    },
    /// A running agent holds the database in this data directory.
    Agent(&'a Path),
}

impl Door<'_> {
    /// The data directory the operations work on.
    pub fn dir(&self) -> &Path {
        match self {
            Door::Local { app, .. } => app.store().dir(),
            Door::Agent(dir) => dir,
        }
    }

    /// Runs one operation and decodes its typed output.
    pub fn call<T: serde::de::DeserializeOwned>(
        &self,
        op: crate::control::Op,
        io: &Io<'_>,
    ) -> Result<T, CliError> {
        use crate::control::{ControlError, Op};
        let v = match self {
            Door::Local { app, insecure } => {
                let transport = match (&op, app.agent()) {
                    (Op::Sync { .. } | Op::Verify { .. }, None) => {
                        Some(resolve_transport(app.store(), *insecure)?)
                    }
                    _ => None,
                };
                io.rt
                    .block_on(crate::control::dispatch(app, op, transport))?
            }
            Door::Agent(dir) => {
                io.rt
                    .block_on(crate::control::call(dir, op))
                    .map_err(|e| match e {
                        ControlError::Failed { exit, message } => CliError::Forwarded {
                            code: exit,
                            message,
                        },
                        ControlError::Stopped => CliError::Io(ControlError::Stopped.to_string()),
                        other => CliError::Io(format!(
                            "the database in {} is in use by another process, and {other}",
                            dir.display()
                        )),
                    })?
            }
        };
        serde_json::from_value(v)
            .map_err(|e| CliError::Io(format!("unexpected reply from the application layer: {e}")))
    }
}

/// Prints one JSON value as a line.
fn print(out: &mut dyn Write, v: &Value) -> Result<(), CliError> {
    writeln!(out, "{v}").map_err(CliError::Output)
}

fn invalid(e: impl std::fmt::Display) -> CliError {
    CliError::Invalid(e.to_string())
}

/// Reads a JSON argument, or stdin for `-`.
fn read_json_arg(arg: &str, stdin: &mut Option<String>) -> Result<Value, CliError> {
    let text = if arg == "-" {
        match stdin.take() {
            Some(s) => s,
            None => {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| CliError::Io(format!("reading stdin: {e}")))?;
                s
            }
        }
    } else {
        arg.to_string()
    };
    // The same rule as the HTTP API: a number is stored exactly or refused.
    crate::app::records::parse_json(text.as_bytes()).map_err(CliError::App)
}

fn open_input(
    path: &Path,
    stdin: &mut Option<String>,
    cwd: &Path,
) -> Result<Box<dyn Read + Send>, CliError> {
    if path == Path::new("-") {
        return Ok(match stdin.take() {
            Some(s) => Box::new(std::io::Cursor::new(s.into_bytes())),
            None => Box::new(std::io::stdin()),
        });
    }
    let path = &cwd.join(path);
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
