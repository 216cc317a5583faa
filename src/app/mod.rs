//! The application layer: one typed function per operation, called by every door — the CLI
//! (`crate::cli`), the control endpoint (`crate::control`) and the HTTP API (`crate::http`).
//!
//! Inputs are plain strings and JSON values as a caller received them; this layer validates
//! them, runs the operation on the store (or a peer), and returns typed, `Serialize` outputs or
//! one [`AppError`] that carries a stable code, an HTTP status and a one-line message. Doors only
//! decode, call and encode. Blocking: every function except [`App::sync`] and [`App::verify`]
//! touches sled synchronously (writes fsync), so async callers run them on a blocking thread.
//!
//! - [`records`]: put, create, patch (top level or RFC 7396), delete, get (also "as of" a
//!   revision), list with paging and filters, history, batches, tables.
//! - [`admin`]: status, peers, the conflict log and resolving it.
//! - [`conflicts`]: conflicts told from the reader's side (sides by laptop, which is in the
//!   record and why) and [`conflicts::ResolveRequest`], how every door says what to keep.
//! - [`peers`]: sync and verify with a peer named by id, name or address.
//! - [`changes`]: the changes feed (every change after a feed position).
//! - [`console`]: the console's overview (peers in words, what each has not received yet),
//!   live sessions and warnings.
//! - [`held`]: deletes held by the mass-delete brake: list, approve, reject.
//! - [`identity`]: a shared (copied) identity told in one line, with the exact fix.

pub mod admin;
pub mod changes;
pub mod conflicts;
pub mod console;
mod error;
pub mod held;
pub mod identity;
pub mod peers;
pub mod records;

pub use error::AppError;

use crate::agent::LiveStatus;
use crate::store::Store;
use crate::sync::ClientCache;
use crate::tls::Transport;
use std::sync::Arc;

/// What the running agent lends to operations started inside it.
#[derive(Clone)]
pub struct AgentCtx {
    /// Its live status (`status` shows it).
    pub live: LiveStatus,
    /// Its sync transport (mutual TLS, or plaintext for debugging).
    pub transport: Transport,
    /// Its kept peer connections.
    pub clients: Arc<ClientCache>,
    /// False when the laptop has not joined a deployment: `sync`/`verify` are refused.
    pub sync_enabled: bool,
    /// The HTTP API's base URL once it is served (set by [`crate::http::start`], shared with
    /// every copy of this context).
    pub api_url: Arc<std::sync::OnceLock<String>>,
}

/// The application: a store, plus the agent's context when running inside `fieldsync run`.
#[derive(Clone)]
pub struct App {
    store: Arc<Store>,
    agent: Option<AgentCtx>,
}

impl App {
    /// An application over an open store; `agent` is `Some` inside a running agent.
    pub fn new(store: Arc<Store>, agent: Option<AgentCtx>) -> Self {
        App { store, agent }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The agent context, when running inside the agent.
    pub fn agent(&self) -> Option<&AgentCtx> {
        self.agent.as_ref()
    }

    /// Sets the HTTP API's URL once it is listening (shown by `status`).
    pub fn set_api_url(&self, url: String) {
        if let Some(a) = &self.agent {
            let _ = a.api_url.set(url);
        }
    }
}
