//! The local control endpoint: lets the CLI run commands inside a running agent, because sled
//! allows one process per database.
//!
//! The agent listens on 127.0.0.1 (never another interface) on a random port and writes
//! `agent.json` (port, token, pid) into the data directory with mode 0600, so only the local
//! user who owns the data can read the token. Every request must carry that token.

use crate::store::Store;
use jsonrpsee::server::{RpcModule, Server, ServerConfig, ServerHandle};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// File in the data directory that tells the CLI how to reach the agent.
pub const AGENT_FILE: &str = "agent.json";
/// Method: run one CLI command inside the agent.
pub const RUN: &str = "control_run";
/// Largest control request/response (an export of a big table goes through here).
const MAX_CONTROL_BYTES: u32 = 1 << 30;

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
}

/// Runs a command line against the agent's store; provided by the CLI layer.
pub type Executor = Arc<dyn Fn(&Arc<Store>, RunRequest) -> RunReply + Send + Sync>;

struct Ctx {
    store: Arc<Store>,
    token: String,
    exec: Executor,
}

/// Starts the control endpoint and writes `agent.json`; returns the server handle.
pub async fn start(
    store: Arc<Store>,
    listen: &str,
    exec: Executor,
) -> Result<ServerHandle, ControlError> {
    let token = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let cfg = ServerConfig::builder()
        .max_request_body_size(MAX_CONTROL_BYTES)
        .max_response_body_size(MAX_CONTROL_BYTES)
        .max_connections(16)
        .http_only()
        .build();
    let server = Server::builder()
        .set_config(cfg)
        .build("127.0.0.1:0")
        .await
        .map_err(|source| ControlError::Io {
            path: "127.0.0.1:0".into(),
            source,
        })?;
    let port = server.local_addr().map(|a| a.port()).unwrap_or(0);
    let dir = store.dir().to_path_buf();
    let info = AgentFile {
        pid: std::process::id(),
        port,
        token: token.clone(),
        listen: listen.to_string(),
        instance: store.id(),
    };
    let mut module = RpcModule::new(Ctx { store, token, exec });
    module
        .register_blocking_method(RUN, |params: Params, ctx, _| {
            let req: RunRequest = params.one()?;
            if req.token != ctx.token {
                tracing::warn!("control request with a wrong token refused");
                return Err(ErrorObjectOwned::owned(
                    1009,
                    "wrong control token",
                    None::<()>,
                ));
            }
            Ok::<_, ErrorObjectOwned>((ctx.exec)(&ctx.store, req))
        })
        .expect("one method");
    let handle = server.start(module);
    write_agent_file(&dir, &info)?;
    Ok(handle)
}

fn write_agent_file(dir: &Path, info: &AgentFile) -> Result<(), ControlError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(AGENT_FILE);
    let tmp = dir.join(format!("{AGENT_FILE}.tmp"));
    let io = |source| ControlError::Io {
        path: path.clone(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(&serde_json::to_vec(info).expect("plain struct"))
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(())
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

/// Sends a command line to the agent that owns `dir`.
pub async fn forward(dir: &Path, req: RunRequest) -> Result<RunReply, ControlError> {
    use jsonrpsee::core::client::ClientT;
    let info = read_agent_file(dir)?;
    let client = jsonrpsee::http_client::HttpClientBuilder::default()
        .max_request_size(MAX_CONTROL_BYTES)
        .max_response_size(MAX_CONTROL_BYTES)
        .request_timeout(std::time::Duration::from_secs(3600))
        .build(format!("http://127.0.0.1:{}", info.port))
        .map_err(|e| ControlError::Agent(e.to_string()))?;
    let req = RunRequest {
        token: info.token,
        ..req
    };
    client
        .request(RUN, jsonrpsee::rpc_params![req])
        .await
        .map_err(|e| ControlError::Agent(e.to_string()))
}
