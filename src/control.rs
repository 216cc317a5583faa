//! The local control endpoint: lets the CLI run commands inside a running agent, because sled
//! allows one process per database.
//!
//! The agent listens on 127.0.0.1 (never another interface) on a random port and writes
//! `agent.json` (port, token, pid) into the data directory with mode 0600, so only the local
//! user who owns the data can read the token. Every request must carry that token in its
//! header (`Authorization: Bearer TOKEN`), checked before the body is read, and stay within a
//! body limit per method ([`crate::control_gate`]: `control_op` on `/op`, `control_run` on
//! `/run`).
//!
//! Methods (JSON-RPC over HTTP, one positional parameter):
//!
//! | method        | params                         | result                                |
//! |---------------|--------------------------------|---------------------------------------|
//! | `control_op`  | `{"token", "op": {"op": NAME, ...}}` ([`Op`]) | the operation's typed output (see [`dispatch`]) |
//! | `control_run` | [`RunRequest`] (argv, stdin, cwd) | [`RunReply`] (exit code, stdout, stderr) |
//!
//! `control_op` carries the application-layer operations as typed values; a failure is error
//! `1100` with `data` = `{"code", "field", "status", "exit"}` ([`crate::app::AppError`]).
//! `control_run` remains for the commands that stream files or output (import, export, apply,
//! list, backup, mesh, ...), which run inside the agent as a command line.

use crate::app::records::{PatchMode, Precondition, RecordView};
use crate::app::{App, AppError};
use crate::control_gate::{self, MAX_RESPONSE_BODY, MAX_RUN_BODY, OP_PATH, RUN_PATH};
use crate::store::Store;
use crate::tls::Transport;
use jsonrpsee::server::{stop_channel, RpcModule, ServerHandle};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// File in the data directory that tells the CLI how to reach the agent.
pub const AGENT_FILE: &str = "agent.json";
/// Method: run one CLI command inside the agent.
pub const RUN: &str = "control_run";
/// Method: one typed application-layer operation ([`Op`]).
pub const OP: &str = "control_op";
/// JSON-RPC error code of a failed operation (details in `data`).
pub const OP_FAILED: i32 = 1100;

/// Contents of `agent.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentFile {
    /// The agent's process id.
    pub pid: u32,
    /// Control port on 127.0.0.1.
    pub port: u16,
    /// Secret that authorises control requests.
    pub token: String,
    /// The sync listen address.
    pub listen: String,
    /// The instance id.
    pub instance: Uuid,
}

/// `control_run` params.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRequest {
    /// The token from `agent.json`.
    pub token: String,
    /// The command line, without the program name.
    pub args: Vec<String>,
    /// Standard input, for commands that read it (`-`).
    pub stdin: Option<String>,
    /// The caller's working directory, for relative file paths.
    pub cwd: PathBuf,
}

/// `control_run` result.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunReply {
    /// Exit code.
    pub code: i32,
    /// What the command printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// Failures of the control endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Filesystem trouble with `agent.json`.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The agent could not be reached or refused.
    #[error("the running agent did not answer: {0}")]
    Agent(String),
    /// The agent was reached but stopped (or was killed) before it answered: whether the
    /// command took effect is known only once the database is opened again.
    #[error(
        "the agent stopped before it answered (stopped, killed or a power cut): every write is \
         all or nothing, so start it again (`fieldsync run`) and check whether the command took \
         effect (`fieldsync tables`, `fieldsync status`; an interrupted import is finished or \
         discarded when the database opens, and the agent says which)"
    )]
    Stopped,
    /// The operation failed inside the agent.
    #[error("{message}")]
    Failed {
        /// The CLI exit code for it.
        exit: i32,
        /// The error's one-line message.
        message: String,
    },
}

/// Runs a command line against the agent's store; provided by the CLI layer.
pub type RunCommand = Arc<dyn Fn(&Arc<Store>, RunRequest) -> RunReply + Send + Sync>;

/// What the control endpoint runs: typed operations on the agent's application, and command
/// lines (provided by the CLI layer).
#[derive(Clone)]
pub struct Executor {
    /// The agent's application (with its agent context).
    pub app: App,
    /// Runs a command line against the agent's store.
    pub run: RunCommand,
}

struct Ctx {
    store: Arc<Store>,
    token: String,
    exec: Executor,
}

/// One application-layer operation, as the CLI sends it to a running agent (and runs it
/// locally when no agent holds the database).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Create or replace a record → `WriteOutcome`.
    Put {
        /// Table.
        table: String,
        /// Record id (None: a new one).
        id: Option<String>,
        /// Fields (a JSON object).
        fields: serde_json::Value,
    },
    /// Change top-level fields → `WriteOutcome`.
    Patch {
        /// Table.
        table: String,
        /// Record id.
        id: String,
        /// Fields to change (null removes).
        fields: serde_json::Value,
    },
    /// Delete → `WriteOutcome`.
    Delete {
        /// Table.
        table: String,
        /// Record id.
        id: String,
    },
    /// Read one record → [`GetReply`].
    Get {
        /// Table.
        table: String,
        /// Record id.
        id: String,
        /// Also a deleted record.
        include_deleted: bool,
        /// Add replication metadata.
        meta: bool,
        /// As it was after this revision (stamp or RFC 3339 time).
        #[serde(default)]
        at: Option<String>,
    },
    /// A record's revisions → `Vec<HistoryEntry>`.
    History {
        /// Table.
        table: String,
        /// Record id.
        id: String,
    },
    /// The conflict log, told from this laptop → `Vec<ConflictView>`.
    Conflicts {
        /// Only this table.
        table: Option<String>,
        /// Resolved ones too.
        all: bool,
    },
    /// Resolve a conflict → `ConflictView`.
    Resolve {
        /// Conflict id.
        id: u64,
        /// What to keep, relative to this laptop.
        how: crate::app::conflicts::ResolveRequest,
    },
    /// Tables with counts → `Vec<TableInfo>`.
    Tables,
    /// Status → JSON object.
    Status,
    /// Peer rows → `Vec<PeerRow>`.
    Peers,
    /// Sync now → `{"peer","peer_name","received","sent"}`.
    Sync {
        /// Instance id, name or `HOST:PORT`.
        peer: String,
    },
    /// Verify → `Vec<TableCheck>`.
    Verify {
        /// Instance id, name or `HOST:PORT`.
        peer: String,
    },
}

/// `get`'s result: the record and, when asked for, its replication metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetReply {
    /// The record.
    pub record: RecordView,
    /// `get --meta`: per-field stamps, version vector, feed position, conflicts.
    pub meta: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OpRequest {
    token: String,
    op: Op,
}

/// Runs one operation on `app` and returns its output as JSON. `transport` is for `sync` and
/// `verify` outside an agent (inside one, the agent's own is used).
pub async fn dispatch(
    app: &App,
    op: Op,
    transport: Option<Transport>,
) -> Result<serde_json::Value, AppError> {
    fn json<T: Serialize>(v: T) -> Result<serde_json::Value, AppError> {
        serde_json::to_value(v).map_err(|e| AppError::Peer(format!("cannot encode a reply: {e}")))
    }
    match op {
        Op::Sync { peer } => {
            let r = app.sync(&peer, transport).await?;
            // Deletes from that peer the mass-delete brake holds (pending now).
            let held: Vec<_> = app
                .holds()?
                .into_iter()
                .filter(|h| h.peer == r.peer.instance)
                .collect();
            Ok(serde_json::json!({
                "peer": r.peer.instance, "peer_name": r.peer.name,
                "received": r.received, "sent": r.sent, "held": held,
            }))
        }
        Op::Verify { peer } => json(app.verify(&peer, transport).await?),
        op => {
            // Everything else reads or writes sled (writes fsync): off the async threads.
            let app = app.clone();
            tokio::task::spawn_blocking(move || blocking(&app, op))
                .await
                .map_err(|e| AppError::Peer(format!("the operation's task failed: {e}")))?
        }
    }
}

fn blocking(app: &App, op: Op) -> Result<serde_json::Value, AppError> {
    fn json<T: Serialize>(v: T) -> Result<serde_json::Value, AppError> {
        serde_json::to_value(v).map_err(|e| AppError::Peer(format!("cannot encode a reply: {e}")))
    }
    let none = &Precondition::None;
    match op {
        Op::Put { table, id, fields } => json(app.put(&table, id.as_deref(), fields, none)?),
        Op::Patch { table, id, fields } => {
            json(app.patch(&table, &id, fields, PatchMode::TopLevel, none)?)
        }
        Op::Delete { table, id } => json(app.delete(&table, &id, none)?),
        Op::Get {
            table,
            id,
            include_deleted,
            meta,
            at,
        } => {
            if let Some(at) = at {
                let record = app.get_at(&table, &id, &at)?;
                return json(GetReply { record, meta: None });
            }
            let (record, rec) = app.get(&table, &id, include_deleted)?;
            let meta = if meta {
                let conflicts = app.store().conflicts_of(&table, &record.id)?;
                Some(crate::app::admin::record_meta(&rec, &conflicts))
            } else {
                None
            };
            json(GetReply { record, meta })
        }
        Op::History { table, id } => json(app.history(&table, &id)?),
        Op::Conflicts { table, all } => json(app.conflict_views(table.as_deref(), all)?),
        Op::Resolve { id, how } => json(app.resolve_with(id, &how)?),
        Op::Tables => json(app.tables()?),
        Op::Status => app.status(),
        Op::Peers => json(app.peer_list()?),
        Op::Sync { .. } | Op::Verify { .. } => Err(AppError::Peer(
            "sync and verify are not blocking operations".into(),
        )),
    }
}

fn op_error(e: AppError) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        OP_FAILED,
        e.to_string(),
        Some(serde_json::json!({
            "code": e.code(), "field": e.field(), "status": e.status(), "exit": e.exit_code(),
        })),
    )
}

/// Starts the control endpoint and writes `agent.json`; returns the server handle.
pub async fn start(
    store: Arc<Store>,
    listen: &str,
    exec: Executor,
) -> Result<ServerHandle, ControlError> {
    let token = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| ControlError::Io {
            path: "127.0.0.1:0".into(),
            source,
        })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let dir = store.dir().to_path_buf();
    let info = AgentFile {
        pid: std::process::id(),
        port,
        token: token.clone(),
        listen: listen.to_string(),
        instance: store.id(),
    };
    let mut module = RpcModule::new(Ctx {
        store,
        token: token.clone(),
        exec,
    });
    module
        .register_blocking_method(RUN, |params: Params, ctx, _| {
            let req: RunRequest = params.one()?;
            check_token(&req.token, &ctx.token)?;
            Ok::<_, ErrorObjectOwned>((ctx.exec.run)(&ctx.store, req))
        })
        .expect("a new method name");
    module
        .register_async_method(OP, |params, ctx, _| async move {
            let req: OpRequest = params.one()?;
            check_token(&req.token, &ctx.token)?;
            dispatch(&ctx.exec.app, req.op, None)
                .await
                .map_err(op_error)
        })
        .expect("a new method name");
    let (stop, handle) = stop_channel();
    tokio::spawn(control_gate::serve(listener, module, token, stop));
    write_agent_file(&dir, &info)?;
    Ok(handle)
}

/// Refuses a control request whose token is not this agent's (logged; error 1009). The gate
/// has checked the header already; the token in the params is checked again so that a request
/// is only ever run with the token it names.
fn check_token(given: &str, ours: &str) -> Result<(), ErrorObjectOwned> {
    if given == ours {
        return Ok(());
    }
    tracing::warn!("control request with a wrong token refused");
    Err(ErrorObjectOwned::owned(
        1009,
        "wrong control token",
        None::<()>,
    ))
}

fn write_agent_file(dir: &Path, info: &AgentFile) -> Result<(), ControlError> {
    let path = dir.join(AGENT_FILE);
    let bytes = serde_json::to_vec(info).expect("plain struct");
    crate::fsutil::write_private_atomic(&path, &bytes)
        .map_err(|source| ControlError::Io { path, source })
}

/// Removes `agent.json` (on shutdown).
pub fn remove_agent_file(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(AGENT_FILE));
}

/// Reads `agent.json` from a data directory.
pub fn read_agent_file(dir: &Path) -> Result<AgentFile, ControlError> {
    let path = dir.join(AGENT_FILE);
    let text = std::fs::read(&path).map_err(|source| ControlError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| ControlError::Io {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// An HTTP client for the agent's control endpoint at `path`, carrying the token header.
fn client(
    info: &AgentFile,
    path: &str,
) -> Result<jsonrpsee::http_client::HttpClient, ControlError> {
    use jsonrpsee::http_client::{HeaderMap, HeaderValue};
    let mut headers = HeaderMap::new();
    let auth = HeaderValue::from_str(&format!("Bearer {}", info.token))
        .map_err(|e| ControlError::Agent(format!("agent.json holds an unusable token: {e}")))?;
    headers.insert("authorization", auth);
    jsonrpsee::http_client::HttpClientBuilder::default()
        .set_headers(headers)
        .max_request_size(MAX_RUN_BODY as u32)
        .max_response_size(MAX_RESPONSE_BODY)
        .request_timeout(std::time::Duration::from_secs(3600))
        .build(format!("http://127.0.0.1:{}{path}", info.port))
        .map_err(|e| ControlError::Agent(e.to_string()))
}

/// Sends a command line to the agent that owns `dir`.
pub async fn forward(dir: &Path, req: RunRequest) -> Result<RunReply, ControlError> {
    use jsonrpsee::core::client::ClientT;
    let info = read_agent_file(dir)?;
    let client = client(&info, RUN_PATH)?;
    let req = RunRequest {
        token: info.token.clone(),
        ..req
    };
    client
        .request(RUN, jsonrpsee::rpc_params![req])
        .await
        .map_err(|e| lost(&info, e))
}

/// A failed request to the agent: [`ControlError::Stopped`] when the agent is gone now (its
/// port refuses), else the client's error (jsonrpsee's text, e.g. "client error
/// (SendRequest)", said only when nothing better is known).
fn lost(info: &AgentFile, e: jsonrpsee::core::client::Error) -> ControlError {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], info.port));
    // A killed agent's connections close before its listening socket does: a connect right
    // after the reset may still be taken by the dying socket's backlog, so look a few times.
    for wait_ms in [0u64, 100, 200, 300, 400] {
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        let t = std::time::Duration::from_millis(500);
        if std::net::TcpStream::connect_timeout(&addr, t).is_err() {
            return ControlError::Stopped;
        }
    }
    ControlError::Agent(e.to_string())
}

/// Runs one typed operation in the agent that owns `dir`.
pub async fn call(dir: &Path, op: Op) -> Result<serde_json::Value, ControlError> {
    use jsonrpsee::core::client::{ClientT, Error};
    let info = read_agent_file(dir)?;
    let client = client(&info, OP_PATH)?;
    let req = serde_json::json!({"token": info.token, "op": op});
    match client.request(OP, jsonrpsee::rpc_params![req]).await {
        Ok(v) => Ok(v),
        Err(Error::Call(e)) if e.code() == OP_FAILED => {
            let exit = e
                .data()
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d.get()).ok())
                .and_then(|d| d["exit"].as_i64())
                .unwrap_or(3) as i32;
            Err(ControlError::Failed {
                exit,
                message: e.message().to_string(),
            })
        }
        Err(e) => Err(lost(&info, e)),
    }
}
