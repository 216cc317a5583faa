//! Typed JSON-RPC client for the sync methods (jsonrpsee over HTTP).

use super::{
    DigestReply, DigestRequest, FetchRequest, Hello, HelloReply, Notify, Page, ProtocolError,
    PullRequest, PushReply, PushRequest, ReconcileReply, ReconcileRequest, DIGEST, FETCH, HELLO,
    MAX_BODY_BYTES, NOTIFY, PULL, PUSH, RECONCILE,
};
use jsonrpsee::core::client::ClientT;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use jsonrpsee::rpc_params;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// How long one request may take before the session gives up on the peer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer answered with a JSON-RPC error.
    #[error(transparent)]
    Protocol(ProtocolError),
    /// No usable answer: connection refused, timeout, malformed response.
    #[error("{0}")]
    Transport(String),
}

/// A connection to one peer's sync endpoint.
pub struct Client {
    inner: HttpClient,
}

impl Client {
    /// A client for `addr` (`host:port`); over mutual TLS when `tls` is given.
    pub fn connect(addr: &str, tls: Option<rustls::ClientConfig>) -> Result<Self, String> {
        let host = addr
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        let mut b = HttpClientBuilder::default()
            .max_request_size(MAX_BODY_BYTES)
            .max_response_size(MAX_BODY_BYTES)
            .request_timeout(REQUEST_TIMEOUT);
        let url = match tls {
            Some(cfg) => {
                b = b.with_custom_cert_store(cfg);
                format!("https://{host}")
            }
            None => format!("http://{host}"),
        };
        let inner = b
            .build(&url)
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
        Ok(Self { inner })
    }

    async fn call<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, CallError> {
        use jsonrpsee::core::client::Error;
        self.inner
            .request(method, rpc_params![params])
            .await
            .map_err(|e| match e {
                Error::Call(obj) => {
                    CallError::Protocol(ProtocolError::new(obj.code(), obj.message().to_string()))
                }
                other => CallError::Transport(other.to_string()),
            })
    }

    /// `fieldsync_hello`.
    pub async fn hello(&self, h: &Hello) -> Result<HelloReply, CallError> {
        self.call(HELLO, h).await
    }

    /// `fieldsync_pull`.
    pub async fn pull(&self, r: &PullRequest) -> Result<Page, CallError> {
        self.call(PULL, r).await
    }

    /// `fieldsync_push`.
    pub async fn push(&self, r: &PushRequest) -> Result<PushReply, CallError> {
        self.call(PUSH, r).await
    }

    /// `fieldsync_notify`.
    pub async fn notify(&self, n: &Notify) -> Result<(), CallError> {
        let _: serde_json::Value = self.call(NOTIFY, n).await?;
        Ok(())
    }

    /// `fieldsync_digest`.
    pub async fn digest(&self, r: &DigestRequest) -> Result<DigestReply, CallError> {
        self.call(DIGEST, r).await
    }

    /// `fieldsync_reconcile`.
    pub async fn reconcile(&self, r: &ReconcileRequest) -> Result<ReconcileReply, CallError> {
        self.call(RECONCILE, r).await
    }

    /// `fieldsync_fetch`.
    pub async fn fetch(&self, r: &FetchRequest) -> Result<Page, CallError> {
        self.call(FETCH, r).await
    }
}
