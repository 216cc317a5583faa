//! Byte counters for sync traffic, live while a transfer runs, for people watching a sync
//! (`status`, the console's Live sessions, `sync`'s bar).
//!
//! Two places count:
//! - the server ([`super::server`]) counts at the socket of every accepted connection: into the
//!   server's total and, once the TLS handshake named the caller, into that instance's
//!   counters here ([`peer`]), so the responder side of a session can show its own bytes;
//! - the client ([`super::client`]) counts HTTP bodies as their frames cross the connection
//!   (the request when it is handed to the connection, the response frame by frame as it
//!   arrives), into the client's counters and the process total ([`client_total`]). jsonrpsee
//!   owns the client's socket, so HTTP headers and TLS records are not counted on this side.
//!
//! Everything is in memory and per process; a restarted agent starts from zero.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use jsonrpsee::http_client::transport::Error as TransportError;
use jsonrpsee::http_client::{HttpRequest, HttpResponse};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use uuid::Uuid;

/// Bytes read and written, counted as they move.
#[derive(Debug, Default)]
pub struct ByteCounters {
    read: AtomicU64,
    written: AtomicU64,
}

impl ByteCounters {
    /// Adds `n` bytes read.
    pub fn add_read(&self, n: u64) {
        self.read.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` bytes written.
    pub fn add_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }

    /// `(read, written)` so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }
}

/// Bytes moved on server connections certified as `instance` (TLS), created on first use. The
/// map holds one entry per member that ever connected, which the deployment bounds.
pub fn peer(instance: Uuid) -> Arc<ByteCounters> {
    static PEERS: OnceLock<Mutex<HashMap<Uuid, Arc<ByteCounters>>>> = OnceLock::new();
    PEERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(instance)
        .or_default()
        .clone()
}

/// Bytes moved by every sync client of this process (sessions it started).
pub fn client_total() -> &'static ByteCounters {
    static TOTAL: OnceLock<ByteCounters> = OnceLock::new();
    TOTAL.get_or_init(ByteCounters::default)
}

/// The client's HTTP middleware: counts request and response bodies into `counters` and the
/// process total.
#[derive(Clone, Debug)]
pub struct CountLayer(pub Arc<ByteCounters>);

impl<S> tower::Layer<S> for CountLayer {
    type Service = Count<S>;

    fn layer(&self, inner: S) -> Count<S> {
        Count {
            inner,
            counters: self.0.clone(),
        }
    }
}

/// The service [`CountLayer`] wraps around jsonrpsee's HTTP backend.
#[derive(Clone, Debug)]
pub struct Count<S> {
    inner: S,
    counters: Arc<ByteCounters>,
}

impl<S, B> tower::Service<HttpRequest> for Count<S>
where
    S: tower::Service<HttpRequest, Response = HttpResponse<B>, Error = TransportError>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin,
{
    type Response = HttpResponse<Counted<B>>;
    type Error = TransportError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        // jsonrpsee's request bodies are whole strings: their size is exact before sending.
        let sent = req.body().size_hint().exact().unwrap_or(0);
        self.counters.add_written(sent);
        client_total().add_written(sent);
        let counters = self.counters.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| Counted { inner, counters }))
        })
    }
}

/// A response body that counts its data frames as they arrive.
#[derive(Debug)]
pub struct Counted<B> {
    inner: B,
    counters: Arc<ByteCounters>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                self.counters.add_read(n);
                client_total().add_read(n);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Calls and JSON-RPC bytes of one method served by this process (see [`by_method`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MethodBytes {
    /// Calls answered.
    pub calls: u64,
    /// Bytes of the calls' params (the JSON text; HTTP, JSON-RPC envelope and TLS not included).
    pub request: u64,
    /// Bytes of the answers (the whole JSON-RPC response object).
    pub response: u64,
}

fn methods() -> std::sync::MutexGuard<'static, std::collections::BTreeMap<String, MethodBytes>> {
    static METHODS: OnceLock<Mutex<std::collections::BTreeMap<String, MethodBytes>>> =
        OnceLock::new();
    METHODS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Counts one answered call of `method` (the server's RPC middleware calls this). Names other
/// than the protocol's methods are counted together as `other`, so a caller cannot grow the map.
pub fn count_method(method: &str, request: u64, response: u64) {
    let known = [
        super::HELLO,
        super::PULL,
        super::PUSH,
        super::NOTIFY,
        super::DIGEST,
        super::RECONCILE,
        super::FETCH,
    ];
    let key = if known.contains(&method) {
        method
    } else {
        "other"
    };
    let mut m = methods();
    let e = m.entry(key.to_string()).or_default();
    e.calls += 1;
    e.request += request;
    e.response += response;
}

/// Per sync method served by this process since it started: calls and JSON bytes both ways.
/// Where a session's bytes go (`status` shows it as `agent.bytes_by_method`; the benchmarks
/// print it beside their byte rows).
pub fn by_method() -> std::collections::BTreeMap<String, MethodBytes> {
    methods().clone()
}
