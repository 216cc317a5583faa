//! The command line: clap definitions and the body of each command.
//!
//! Commands print JSON on stdout (one object, or JSON lines for lists) and one-line errors on
//! stderr. Exit codes: 0 ok, 1 not found, 2 bad usage or invalid input, 3 anything else
//! (database in use, disk errors).

use crate::config::{Config, ConfigError};
use crate::formats::{self, FormatError};
use crate::merge::{Conflict, Edit};
use crate::mesh;
use crate::model::{self, FieldState};
use crate::store::{
    side_name, ConflictDetail, ConflictEntry, HistoryEntry, Keep, LocalOp, OpResult, PeerRow,
    Source, Store, StoreError,
};
use crate::tls::{Identity, Revoked, Transport};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    /// Create or replace a record and print its id.
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
    ///
    /// Example: fieldsync conflicts resolve 3 --keep remote
    Conflicts(ConflictsArgs),
    /// Import records from .jsonl or .csv (`-` for stdin as JSONL), all or nothing.
    ///
    /// JSONL lines are {"table","id","fields"} (the gen.py format) or plain field objects.
    /// CSV has a header row of field names; an `id` column keeps ids. Cells that are JSON
    /// numbers, booleans, arrays or objects keep their type; the rest are strings.
    ///
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
    ///
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
    },
    /// Run one sync session with a peer, both directions, and print a summary line per direction.
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
    /// Write a consistent snapshot of the whole database to FILE; works while the agent runs.
    ///
    /// Records, history, conflicts, peers and this laptop's identity, as of one moment (writes
    /// wait while it is read). Prints the count and digest of the records it holds: `restore`
    /// checks them, and `fieldsync digest` on the restored laptop prints the same.
    ///
    /// Example: fieldsync backup /media/usb/laptop7-2026-05-01.fsbackup
    Backup {
        /// The backup file to write (replaced atomically if it exists).
        file: PathBuf,
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
    },
    /// Check that this laptop can sync: data directory, database, credential, network, port,
    /// clock.
    ///
    /// Prints one JSON line per check: {"check","ok","detail","fix"}. Exit code 0 when every
    /// check passes, 1 otherwise.
    Doctor,
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

/// Subcommands of `mesh`.
#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Create a deployment CA on the coordinator's laptop (which joins it too).
    ///
    /// Writes the CA (certificate and private key) to --out, default mesh-ca.fsca in the data
    /// directory. Keep it safe: whoever holds it can enroll and revoke laptops.
    /// With --join-file, also writes a file that lets any laptop enroll itself (see README).
    ///
    /// Example: fieldsync mesh create --name "Flood response 2026"
    Create {
        /// Deployment name.
        #[arg(long)]
        name: String,
        /// Where to write the CA file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write a self-enrolment join file here (it carries the CA key).
        #[arg(long, value_name = "FILE")]
        join_file: Option<PathBuf>,
    },
    /// Issue a credential file for one laptop, to carry over on a USB stick.
    ///
    /// Example: fieldsync mesh enroll --out laptop7.fsmesh --name laptop7
    Enroll {
        /// Credential file to write.
        #[arg(long)]
        out: PathBuf,
        /// Display name of the laptop.
        #[arg(long, default_value = "")]
        name: String,
        /// Enroll an existing instance id (a laptop that already has data); default: a new one.
        #[arg(long)]
        instance: Option<String>,
        /// The CA file (default: mesh-ca.fsca in the data directory).
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Revoke a lost or stolen laptop: every node that syncs afterwards refuses it.
    ///
    /// Example: fieldsync mesh revoke 6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b --reason stolen
    Revoke {
        /// The instance id to shut out.
        instance: String,
        /// Why (kept in the signed revocation).
        #[arg(long, default_value = "")]
        reason: String,
        /// The CA file (default: mesh-ca.fsca in the data directory).
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Show the deployment, this node's certificate and the revoked nodes.
    Show,
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
    /// The running agent's live status, when the command runs inside the agent.
    pub live: Option<crate::agent::LiveStatus>,
    /// The running agent's transport, when the command runs inside the agent.
    pub transport: Option<Transport>,
    /// The running agent's kept connections, when the command runs inside the agent.
    pub clients: Option<Arc<crate::sync::ClientCache>>,
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
        Command::Generate(what) => return generate(what, out, &mut None, &cwd),
        command => Cli { command, ..cli },
    };
    // Doctor must report on a data directory that is missing, broken or held by an agent.
    if matches!(cli.command, Command::Doctor) {
        return crate::doctor::run(cli.data_dir, out, rt);
    }
    let dir = resolve_data_dir(cli.data_dir.clone())?;
    let config = Config::load(&dir)?;
    let store = match Store::open(&dir, config) {
        Ok(s) => Arc::new(s),
        Err(StoreError::Locked(_)) => return forward(&dir, &cli.command, args, out, cwd, rt),
        Err(e) => return Err(e.into()),
    };
    if let Command::Run {
        listen,
        peers,
        no_discovery,
        insecure_plaintext,
    } = cli.command
    {
        // A laptop that has not joined a deployment still runs (the CLI works through the
        // agent), with sync off: plaintext is never the fallback.
        let not_joined =
            !insecure_plaintext && matches!(mesh::load_credential(store.dir()), Ok(None));
        let transport = if not_joined {
            eprintln!(
                "fieldsync: sync is off: this laptop has not joined a deployment, and plaintext \
                 sync is refused. Join with `fieldsync init --mesh FILE` (a credential from \
                 `fieldsync mesh enroll`, or a join file) and restart, or pass \
                 --insecure-plaintext for debugging"
            );
            Transport::Plaintext
        } else {
            resolve_transport(&store, insecure_plaintext)?
        };
        let sync = &store.config().sync;
        let mut all = sync.peers.clone();
        all.extend(peers);
        let dc = &store.config().discovery;
        let live = crate::agent::LiveStatus::default();
        let clients = Arc::<crate::sync::ClientCache>::default();
        let opts = crate::agent::AgentOptions {
            listen: listen.unwrap_or_else(|| sync.listen.clone()),
            peers: all,
            interval: std::time::Duration::from_secs(sync.interval_secs.max(1)),
            discovery: (dc.enabled && !no_discovery).then(|| dc.clone()),
            live: live.clone(),
            transport: transport.clone(),
            clients: clients.clone(),
            sync_enabled: !not_joined,
        };
        let exec = executor(rt.clone(), live, transport, clients);
        return rt
            .block_on(crate::agent::run(store, opts, exec))
            .map_err(|e| CliError::Io(e.to_string()));
    }
    let mut io = Io {
        out,
        stdin: None,
        cwd,
        rt: rt.clone(),
        live: None,
        transport: None,
        clients: None,
    };
    execute(&store, cli.command, &mut io)
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
    let cred = mesh::load_credential(store.dir())
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
    revoked.set(mesh::load_revocations(store, &identity.ca_pem));
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
        return Err(CliError::Io(format!(
            "an agent is already running on {}",
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
    let reply = rt
        .block_on(crate::control::forward(dir, req))
        .map_err(|e| {
            CliError::Io(format!(
                "the database in {} is in use by another process, and {e}",
                dir.display()
            ))
        })?;
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
pub fn executor(
    rt: tokio::runtime::Handle,
    live: crate::agent::LiveStatus,
    transport: Transport,
    clients: Arc<crate::sync::ClientCache>,
) -> crate::control::Executor {
    Arc::new(move |store, req| {
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
            live: Some(live.clone()),
            transport: Some(transport.clone()),
            clients: Some(clients.clone()),
        };
        let result = execute(store, cli.command, &mut io);
        let (code, stderr) = match result {
            Ok(()) => (0, String::new()),
            Err(e) => (e.exit_code(), e.to_string()),
        };
        crate::control::RunReply {
            code,
            stdout: String::from_utf8_lossy(&buf).into_owned(),
            stderr,
        }
    })
}

/// Runs one command against an open store.
pub fn execute(store: &Arc<Store>, command: Command, io: &mut Io<'_>) -> Result<(), CliError> {
    let Io {
        out,
        stdin,
        cwd,
        rt,
        live,
        transport,
        clients,
    } = io;
    let agent_transport = transport.clone();
    let transport_for = |insecure: bool| -> Result<Transport, CliError> {
        match &agent_transport {
            Some(t) => Ok(t.clone()),
            None => resolve_transport(store, insecure),
        }
    };
    let out = &mut **out;
    let p = |out: &mut dyn Write, v: &Value| -> Result<(), CliError> {
        writeln!(out, "{v}").map_err(CliError::Output)
    };
    match command {
        Command::Init {
            name,
            owner,
            contact,
            mesh: file,
        } => {
            if let Some(file) = file {
                let path = cwd.join(file);
                let cred = match mesh::load_mesh_file(&path).map_err(invalid)? {
                    mesh::MeshFile::Credential(c) => c,
                    mesh::MeshFile::Join(ca) => {
                        let n = name.clone().unwrap_or_else(|| store.instance().name);
                        ca.enroll(store.id(), &n).map_err(invalid)?
                    }
                };
                // One credential on two laptops makes two data directories share an instance
                // id: refuse one that a peer of this laptop already uses.
                if let Some(peer) = store.peer(&cred.instance)? {
                    return Err(CliError::Invalid(format!(
                        "{} is the credential of instance {}, which peer \"{}\" already uses: \
                         each laptop needs its own; on the coordinator run `fieldsync mesh \
                         enroll --name NAME --out NEW.fsmesh` and use NEW.fsmesh here",
                        path.display(),
                        cred.instance,
                        peer.name
                    )));
                }
                store.adopt_instance(cred.instance)?;
                mesh::save(&store.dir().join(mesh::CREDENTIAL_FILE), &cred).map_err(invalid)?;
                let name = name.or_else(|| (!cred.name.is_empty()).then(|| cred.name.clone()));
                store.set_instance_info(name, owner, contact)?;
                if live.is_some() {
                    eprintln!("fieldsync: joined; restart the agent to sync with TLS");
                }
            } else {
                store.set_instance_info(name, owner, contact)?;
            }
            writeln!(out, "{}", store.id()).map_err(CliError::Output)?;
        }
        Command::Mesh(m) => mesh_command(store, m, cwd, out)?,
        Command::Put { table, id, json } => {
            model::validate_table(&table)?;
            let id = match id {
                Some(s) => model::parse_id(&s)?,
                None => Uuid::new_v4(),
            };
            let fields = model::validate_fields(read_json_arg(&json, stdin)?)?;
            store.write_one(LocalOp {
                table,
                id,
                edit: Edit::Put(fields),
            })?;
            writeln!(out, "{id}").map_err(CliError::Output)?;
        }
        Command::Patch { table, id, json } => {
            model::validate_table(&table)?;
            let id = model::parse_id(&id)?;
            let fields = model::validate_fields(read_json_arg(&json, stdin)?)?;
            store.write_one(LocalOp {
                table,
                id,
                edit: Edit::Patch(fields),
            })?;
            writeln!(out, "{id}").map_err(CliError::Output)?;
        }
        Command::Delete { table, id } => {
            model::validate_table(&table)?;
            let id = model::parse_id(&id)?;
            store.write_one(LocalOp {
                table,
                id,
                edit: Edit::Delete,
            })?;
            writeln!(out, "{id}").map_err(CliError::Output)?;
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
                formats::read_csv(open_input(&file, stdin, cwd)?)?
            } else {
                formats::read_jsonl(&table, BufReader::new(open_input(&file, stdin, cwd)?))?
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
                ExportFormat::Jsonl => formats::export_jsonl(store, &table, include_deleted, out)?,
                ExportFormat::Csv => formats::export_csv(store, &table, include_deleted, out)?,
            };
        }
        Command::Apply { file } => {
            let ops = formats::read_ops(BufReader::new(open_input(&file, stdin, cwd)?))?;
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
            let (count, sha) = formats::digest(store, &tables)?;
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
            let online = peers.iter().filter(|p| p.online).count();
            let failing: Vec<Value> = peers
                .iter()
                .filter(|p| p.last_error.is_some())
                .map(|p| json!({"instance": p.instance, "name": p.name, "error": p.last_error}))
                .collect();
            let agent = match live {
                Some(l) => l.to_json(),
                None => json!({"running": false}),
            };
            let info = store.instance();
            p(
                out,
                &json!({
                    "instance": info.id, "name": info.name, "owner": info.owner,
                    "contact": info.contact, "data_dir": store.dir(), "feed_seq": store.seq(),
                    "tables": tables, "unresolved_conflicts": unresolved,
                    "peers": {"known": peers.len(), "online": online, "last_sync": last_sync,
                              "failing": failing},
                    "incarnation": store.incarnation(),
                    "identity_problems": crate::sync::identity_problems(store)?,
                    "agent": agent,
                }),
            )?;
        }
        Command::Peers => {
            for row in store.peers()? {
                p(out, &peer_json(&row))?;
            }
        }
        Command::Sync {
            addr,
            insecure_plaintext,
        } => {
            let mut opts =
                crate::sync::SessionOptions::from_store(store, transport_for(insecure_plaintext)?);
            if let Some(c) = clients {
                opts.clients = c.clone();
            }
            let r = rt
                .block_on(crate::sync::sync_with(store.clone(), &addr, &opts))
                .inspect_err(|e| crate::sync::note_failure(store, None, e))?;
            for (direction, d) in [("received", r.received), ("sent", r.sent)] {
                let mut v = serde_json::to_value(d).unwrap_or_default();
                v["direction"] = json!(direction);
                v["peer"] = json!(r.peer.instance);
                v["peer_name"] = json!(r.peer.name);
                p(out, &v)?;
            }
        }
        Command::Verify {
            addr,
            insecure_plaintext,
        } => {
            let t = transport_for(insecure_plaintext)?;
            let checks = rt.block_on(crate::sync::verify_with(store.clone(), &addr, &t))?;
            let all = checks.iter().all(|c| c.in_sync);
            for c in &checks {
                p(out, &serde_json::to_value(c).unwrap_or_default())?;
            }
            if !all {
                return Err(CliError::Differs(addr));
            }
        }
        Command::Run { .. } => {
            return Err(CliError::Invalid(
                "`run` cannot be started from inside a running agent".into(),
            ))
        }
        Command::Generate(what) => generate(what, out, stdin, cwd)?,
        Command::Backup { file } => backup(store, &cwd.join(file), out)?,
        Command::Restore {
            file,
            force,
            take_over_identity,
        } => {
            if live.is_some() {
                return Err(CliError::Io(
                    "restore replaces the database under the running agent: stop it \
                     (`fieldsync run`) first"
                        .into(),
                ));
            }
            restore(store, &cwd.join(file), force, take_over_identity, out)?;
        }
        Command::Doctor => crate::doctor::run_with_store(store, live.as_ref(), out)?,
    }
    Ok(())
}

fn backup_error(e: crate::backup::BackupError) -> CliError {
    use crate::backup::BackupError;
    match e {
        BackupError::Io { .. } => CliError::Io(e.to_string()),
        BackupError::Invalid { .. } => CliError::Invalid(e.to_string()),
        BackupError::Store(e) => CliError::Store(e),
    }
}

fn backup(store: &Store, file: &Path, out: &mut dyn Write) -> Result<(), CliError> {
    let h = crate::backup::write_backup(store, file).map_err(backup_error)?;
    let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let v = json!({
        "backup": file, "bytes": bytes, "instance": h.instance, "name": h.instance_name,
        "created_at": h.created_at.to_rfc3339(), "feed_seq": h.feed_seq,
        "count": h.live_records, "sha256": h.sha256, "entries": h.counts,
    });
    writeln!(out, "{v}").map_err(CliError::Output)
}

fn restore(
    store: &Store,
    file: &Path,
    force: bool,
    take_over: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let r = crate::backup::restore(store, file, take_over, force).map_err(backup_error)?;
    let mut warnings = Vec::new();
    if r.report.discarded_own_changes {
        warnings.push(
            "this laptop's own changes that were not in the backup are gone here; peers that \
             received them send them back on the next sync"
                .to_string(),
        );
    }
    match mesh::load_credential(store.dir()) {
        Ok(Some(c)) if c.instance != r.report.instance => warnings.push(format!(
            "the credential here is for instance {}, not {}: on the coordinator's laptop run \
             `fieldsync mesh enroll --instance {} --out FILE`, then `fieldsync init --mesh FILE` \
             here",
            c.instance, r.report.instance, r.report.instance
        )),
        _ => {}
    }
    let v = json!({
        "restored": file, "instance": r.report.instance,
        "backup_instance": r.report.backup_instance,
        "took_over_identity": r.report.took_over_identity,
        "incarnation": r.report.incarnation,
        "backup_created_at": r.header.created_at.to_rfc3339(),
        "count": r.live_records, "sha256": r.sha256, "entries": r.report.counts,
        "peers_reset": r.report.peers_reset, "warnings": warnings,
    });
    writeln!(out, "{v}").map_err(CliError::Output)
}

fn invalid(e: impl std::fmt::Display) -> CliError {
    CliError::Invalid(e.to_string())
}

fn mesh_command(
    store: &Arc<Store>,
    m: MeshCommand,
    cwd: &Path,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let default_ca = store.dir().join(mesh::CA_FILE);
    let ca_path = |p: Option<PathBuf>| p.map_or_else(|| default_ca.clone(), |p| cwd.join(p));
    let v = match m {
        MeshCommand::Create {
            name,
            out: file,
            join_file,
        } => {
            let path = ca_path(file);
            if path.exists() {
                return Err(invalid(format!(
                    "{} already exists: a deployment CA is made once",
                    path.display()
                )));
            }
            let ca = mesh::CaFile::create(&name).map_err(invalid)?;
            mesh::save(&path, &ca).map_err(invalid)?;
            if let Some(j) = &join_file {
                mesh::save(&cwd.join(j), &ca.as_join_file()).map_err(invalid)?;
            }
            // The coordinator's laptop is the first member.
            let cred = ca
                .enroll(store.id(), &store.instance().name)
                .map_err(invalid)?;
            mesh::save(&store.dir().join(mesh::CREDENTIAL_FILE), &cred).map_err(invalid)?;
            json!({"deployment": name, "mesh_id": ca.mesh_id().map_err(invalid)?,
                   "ca_file": path, "join_file": join_file.map(|j| cwd.join(j)),
                   "instance": store.id()})
        }
        MeshCommand::Enroll {
            out: file,
            name,
            instance,
            ca,
        } => {
            let ca = mesh::load_ca(&ca_path(ca)).map_err(invalid)?;
            let id = match instance {
                Some(s) => model::parse_id(&s)?,
                None => Uuid::new_v4(),
            };
            let cred = ca.enroll(id, &name).map_err(invalid)?;
            let path = cwd.join(file);
            mesh::save(&path, &cred).map_err(invalid)?;
            json!({"instance": id, "name": name, "credential": path, "deployment": ca.deployment})
        }
        MeshCommand::Revoke {
            instance,
            reason,
            ca,
        } => {
            let ca = mesh::load_ca(&ca_path(ca)).map_err(invalid)?;
            let id = model::parse_id(&instance)?;
            let fields = ca.revoke(id, &reason).map_err(invalid)?;
            store.write_system(&[LocalOp {
                table: mesh::REVOCATIONS.into(),
                id,
                edit: Edit::Put(fields.clone()),
            }])?;
            json!({"revoked": id, "at": fields.get("revoked_at"), "reason": reason})
        }
        MeshCommand::Show => {
            let cred = mesh::load_credential(store.dir()).map_err(invalid)?;
            let revoked: Vec<Value> = match &cred {
                Some(c) => mesh::load_revocations(store, &c.ca_cert)
                    .into_iter()
                    .map(|(id, at)| json!({"instance": id, "revoked_at": at}))
                    .collect(),
                None => vec![],
            };
            match cred {
                None => json!({"joined": false, "instance": store.id(),
                               "hint": "join with `fieldsync init --mesh FILE`"}),
                Some(c) => json!({
                    "joined": true, "deployment": c.deployment,
                    "mesh_id": mesh::mesh_id(&c.ca_cert).map_err(invalid)?,
                    "instance": c.instance, "certificate": mesh::describe_cert(&c.cert),
                    "holds_ca": default_ca.exists(), "revoked": revoked,
                }),
            }
        }
    };
    writeln!(out, "{v}").map_err(CliError::Output)
}

fn generate(
    what: GenerateCommand,
    out: &mut dyn Write,
    stdin: &mut Option<String>,
    cwd: &Path,
) -> Result<(), CliError> {
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
            gen::write_ops(BufReader::new(open_input(&from, stdin, cwd)?), &spec, out).map(|_| ())
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
    serde_json::from_str(&text).map_err(|e| CliError::Invalid(format!("malformed JSON: {e}")))
}

fn open_input(
    path: &Path,
    stdin: &mut Option<String>,
    cwd: &Path,
) -> Result<Box<dyn Read>, CliError> {
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
        // "local"/"remote" below are as seen by the detecting instance (null: this one).
        "detected_by": c.reported_by,
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
        "last_attempt": r.last_attempt, "online": r.online, "last_seen": r.last_seen,
        "addresses": r.addresses, "incarnation": r.incarnation,
        "duplicate_identity": r.duplicate.as_ref().map(|d| json!({
            "detected_at": d.detected_at, "incarnations": d.incarnations, "reason": d.reason,
            "fix": crate::sync::DUPLICATE_FIX,
        })),
    })
}
