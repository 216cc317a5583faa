//! The HTTP API for local applications: REST over HTTP/1.1 on 127.0.0.1, served by the agent.
//!
//! Handlers only decode a request, call the application layer ([`crate::app`]) and encode the
//! result; every error becomes one JSON body `{"code","message","field"}` with the status of
//! [`AppError::status`]. Every request needs `Authorization: Bearer TOKEN`, the token from
//! [`API_FILE`] in the data directory (mode 0600, so only the data's owner can read it). The
//! OpenAPI 3 document is generated from the handlers and types ([`ApiDoc`]) and served at
//! `/v1/openapi.json`; docs/API.md describes the endpoints with examples.
//!
//! Layout of [`API_FILE`] (`api.json`, JSON, written atomically when the API listens, removed
//! on a clean stop; the token is kept across restarts — also in [`TOKEN_FILE`], which a clean
//! stop leaves in place — so applications need not re-read it):
//!
//! | key     | value                                   |
//! |---------|-----------------------------------------|
//! | `url`   | base URL, `http://127.0.0.1:PORT`       |
//! | `token` | the bearer token (64 hex characters)    |
//! | `pid`   | the agent's process id                  |

mod console;
mod handlers;

use crate::app::{App, AppError};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

pub use handlers::ApiDoc;

/// File in the data directory with the API's URL and bearer token.
pub const API_FILE: &str = "api.json";

/// The bearer token alone (64 hex characters, mode 0600), kept across clean stops and restarts
/// so an application's token stays valid (`api.json` goes away while the agent is stopped).
pub const TOKEN_FILE: &str = "api.token";
/// Default address of the API (loopback only; another interface only when configured).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7438";
/// Largest request body, in bytes (a batch of many records); larger ones get 413.
pub const BODY_LIMIT: usize = 16 << 20;

/// Failures starting the API.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address cannot be bound.
    #[error("cannot serve the HTTP API on {addr}: {source} (choose another with `run --api-listen ADDR` or [api] listen in fieldsync.toml)")]
    Bind {
        /// The address.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The address is not `IP:PORT`.
    #[error("API address {0:?} is invalid: use IP:PORT, e.g. 127.0.0.1:7438")]
    Address(String),
    /// `api.json` could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Contents of [`API_FILE`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiFile {
    /// Base URL.
    pub url: String,
    /// Bearer token.
    pub token: String,
    /// Agent process id.
    pub pid: u32,
}

/// What handlers share.
pub(crate) struct ApiState {
    pub(crate) app: App,
    token: String,
    /// Turns true when the agent stops, ending long polls and event streams.
    pub(crate) stopping: watch::Receiver<bool>,
    /// The console's one-time login links and sessions.
    pub(crate) logins: console::Logins,
}

/// A running API server.
pub struct ApiHandle {
    /// Base URL, `http://IP:PORT`.
    pub url: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

impl ApiHandle {
    /// Stops serving (open streams end at once; requests get up to 2 s) and removes `api.json`.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        let _ = std::fs::remove_file(self.dir.join(API_FILE));
    }
}

/// Binds `listen` (`IP:PORT`; port 0 picks one), writes `api.json` and serves until stopped.
/// `app` gets the URL for `status`.
pub async fn start(app: App, listen: &str) -> Result<ApiHandle, HttpError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| HttpError::Address(listen.to_string()))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the HTTP API listens on a non-loopback address, as configured");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| HttpError::Bind {
        addr: listen.to_string(),
        source,
    })?;
    let url = format!("http://{local}");
    app.set_api_url(url.clone());
    let dir = app.store().dir().to_path_buf();
    let valid = |t: &String| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit());
    let token = std::fs::read_to_string(dir.join(TOKEN_FILE))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(valid)
        .or_else(|| read_api_file(&dir).ok().map(|f| f.token).filter(valid))
        .unwrap_or_else(new_token);
    let token_path = dir.join(TOKEN_FILE);
    crate::fsutil::write_private_atomic(&token_path, token.as_bytes()).map_err(|source| {
        HttpError::Io {
            path: token_path,
            source,
        }
    })?;
    write_api_file(
        &dir,
        &ApiFile {
            url: url.clone(),
            token: token.clone(),
            pid: std::process::id(),
        },
    )?;
    let (stop, stopping) = watch::channel(false);
    let state = Arc::new(ApiState {
        app,
        token,
        stopping: stopping.clone(),
        logins: Default::default(),
    });
    let router = handlers::router(state);
    let mut wait = stopping;
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = wait.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the HTTP API stopped");
        }
    });
    tracing::info!(%url, "HTTP API listening");
    Ok(ApiHandle {
        url,
        stop,
        task,
        dir,
    })
}

fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Reads `api.json` from a data directory.
pub fn read_api_file(dir: &Path) -> Result<ApiFile, HttpError> {
    let path = dir.join(API_FILE);
    let text = std::fs::read(&path).map_err(|source| HttpError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| HttpError::Io {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

fn write_api_file(dir: &Path, info: &ApiFile) -> Result<(), HttpError> {
    let path = dir.join(API_FILE);
    let bytes = serde_json::to_vec(info).expect("plain struct");
    crate::fsutil::write_private_atomic(&path, &bytes)
        .map_err(|source| HttpError::Io { path, source })
}

/// An error response: `{"code","message","field"}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine code, e.g. `INVALID_TABLE`, `REVISION_MISMATCH`.
    pub code: String,
    /// One line: the problem and the next step.
    pub message: String,
    /// The request field at fault (`table`, `id`, `fields.age`, `ops[2].id`, a query
    /// parameter), or null.
    pub field: Option<String>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        field: Option<&str>,
        message: impl ToString,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.to_string(),
            field: field.map(str::to_string),
        }
    }

    pub(crate) fn bad(code: &'static str, field: &str, message: impl ToString) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, Some(field), message)
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        ApiError {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: e.code(),
            field: e.field().map(str::to_string),
            message: e.api_message(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A lookup of something absent, and a write that lost an If-Match race (the
        // application re-reads and retries: optimistic concurrency working as designed), are
        // routine for an application; everything else is logged where the agent's operator
        // sees it.
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "API request failed");
        } else if matches!(
            self.status,
            StatusCode::NOT_FOUND | StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT
        ) {
            tracing::info!(code = self.code, message = %self.message, "API request refused");
        } else {
            tracing::warn!(code = self.code, message = %self.message, "API request refused");
        }
        let body = ErrorBody {
            code: self.code.to_string(),
            message: self.message,
            field: self.field,
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// Compares tokens in time independent of where they differ.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
