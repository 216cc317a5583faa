//! The control endpoint's front door: its own accept loop and an HTTP layer in front of
//! jsonrpsee that refuses a request before its body is read.
//!
//! Any local process can connect to 127.0.0.1; only the owner of the data directory can read
//! the token in `agent.json`. So the token travels in the request's header
//! (`Authorization: Bearer TOKEN`) and is checked as soon as the header has arrived: a request
//! without it is answered 401 without reading one byte of its body, and the connection is
//! closed. Only then is the body read, up to a limit that depends on the path:
//!
//! | path   | method        | body limit                   | why                                          |
//! |--------|---------------|------------------------------|----------------------------------------------|
//! | `/op`  | `control_op`  | [`MAX_OP_BODY`] (8 MiB)      | the largest typed op is a `put` of one record of at most `MAX_RECORD_BYTES` (1 MiB), which JSON escaping can grow up to 6× |
//! | `/run` | `control_run` | [`MAX_RUN_BODY`] (1 GiB)     | a command's stdin travels whole (`import -`), so only the token's owner can send this much |
//!
//! A connection has [`HEADER_WINDOW`] from its accept to show the token (a silent or slow local
//! client holds a slot that briefly) and [`CONNECTION_WINDOW`] from its accept (or from its
//! last answer) to deliver a complete request (header and body); a request whose body is
//! complete may run as long as it needs (an import). At most [`MAX_CONNECTIONS`] connections
//! are served at once; more wait in the kernel's accept queue, so a flood of connections
//! without the token delays the CLI by at most [`HEADER_WINDOW`].

use bytes::Bytes;
use http_body_util::BodyExt;
use jsonrpsee::server::{
    serve_with_graceful_shutdown, HttpBody, HttpRequest, HttpResponse, RpcModule, Server,
    ServerConfig, StopHandle,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::warn;

/// Path of `control_op` requests.
pub const OP_PATH: &str = "/op";
/// Path of `control_run` requests.
pub const RUN_PATH: &str = "/run";
/// Largest `control_op` request body, in bytes (a `put` of the largest record, escaped).
pub const MAX_OP_BODY: usize = 8 << 20;
/// Largest `control_run` request body, in bytes (a command's stdin travels whole).
pub const MAX_RUN_BODY: usize = 1 << 30;
/// Largest control response, in bytes (an export of a big table comes back through here).
pub const MAX_RESPONSE_BODY: u32 = 1 << 30;
/// Most control connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time a connection has to show the token in a request header, from its accept.
pub const HEADER_WINDOW: Duration = Duration::from_secs(5);
/// Time a connection has to deliver a complete request, from its accept or its last answer.
pub const CONNECTION_WINDOW: Duration = Duration::from_secs(30);
/// JSON-RPC error code of a request without the right token in its header.
pub const WRONG_TOKEN: i32 = 1009;
/// JSON-RPC error code of a request body over its path's limit (jsonrpsee's "oversized").
pub const TOO_LARGE: i32 = -32007;

/// What a connection is doing, for its watchdog.
struct Activity {
    /// Requests whose body is complete and whose answer is not yet sent.
    busy: AtomicUsize,
    /// Whether a request on this connection showed the token.
    authorized: AtomicBool,
    /// When the connection was accepted or last answered.
    since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            busy: AtomicUsize::new(0),
            authorized: AtomicBool::new(false),
            since: Mutex::new(Instant::now()),
        }
    }

    /// True if nothing runs and no complete request came within the window (or no token
    /// within the header window).
    fn expired(&self, now: Instant) -> bool {
        let idle = now.duration_since(*lock(&self.since));
        let window = if self.authorized.load(Ordering::SeqCst) {
            CONNECTION_WINDOW
        } else {
            HEADER_WINDOW
        };
        self.busy.load(Ordering::SeqCst) == 0 && idle > window
    }
}

/// Marks a request as running from body-complete to answer.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(a: &Arc<Activity>) -> Self {
        a.busy.fetch_add(1, Ordering::SeqCst);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *lock(&self.0.since) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves `methods` on `listener` behind the gate until `stop` fires.
pub(crate) async fn serve<C: Send + Sync + 'static>(
    listener: TcpListener,
    methods: RpcModule<C>,
    token: String,
    stop: StopHandle,
) {
    // jsonrpsee's own limit is the larger one; the gate enforces the per-path limits first.
    let cfg = ServerConfig::builder()
        .max_request_body_size(MAX_RUN_BODY as u32)
        .max_response_body_size(MAX_RESPONSE_BODY)
        .http_only()
        .build();
    let builder = Server::builder().set_config(cfg).to_service_builder();
    let token: Arc<str> = Arc::from(format!("Bearer {token}"));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Taken before accept: a flood waits in the kernel's queue, not in our memory.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.clone().shutdown() => break,
        };
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => { warn!(error = %e, "control accept failed"); continue; }
            },
            _ = stop.clone().shutdown() => break,
        };
        let activity = Arc::new(Activity::new());
        let gate = Gate {
            inner: builder.clone().build(methods.clone(), stop.clone()),
            token: token.clone(),
            activity: activity.clone(),
        };
        let stopped = stop.clone().shutdown();
        tokio::spawn(async move {
            let conn = serve_with_graceful_shutdown(sock, gate, stopped);
            tokio::pin!(conn);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = &mut conn => break,
                    _ = tick.tick() => if activity.expired(Instant::now()) {
                        warn!("control connection sent no complete request in time: closed");
                        break;
                    },
                }
            }
            drop(permit);
        });
    }
}

/// The HTTP layer: token from the header, then the body within its path's limit.
#[derive(Clone)]
struct Gate<S> {
    inner: S,
    /// `Bearer TOKEN`, as the header must carry it.
    token: Arc<str>,
    activity: Arc<Activity>,
}

/// A JSON-RPC error answer with an HTTP status, sent without reading the request's body.
fn refusal(status: http::StatusCode, code: i32, message: &str) -> HttpResponse {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message},
    })
    .to_string();
    let mut r = HttpResponse::new(HttpBody::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The refusal of a body over `limit` bytes for `path` (logged).
fn too_large(limit: usize, path: &str) -> HttpResponse {
    warn!(limit, path, "control request body over its limit refused");
    refusal(
        http::StatusCode::PAYLOAD_TOO_LARGE,
        TOO_LARGE,
        &format!("control request body is over the limit of {limit} bytes for {path}"),
    )
}

/// Compares in time independent of where the first difference is, so the token cannot be
/// guessed byte by byte from answer times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl<S, B> tower::Service<HttpRequest<B>> for Gate<S>
where
    S: tower::Service<
            HttpRequest<HttpBody>,
            Response = HttpResponse,
            Error = Box<dyn std::error::Error + Send + Sync>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = HttpResponse;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest<B>) -> Self::Future {
        let authorized = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| same(v.as_bytes(), self.token.as_bytes()));
        if authorized {
            self.activity.authorized.store(true, Ordering::SeqCst);
        } else {
            warn!("control request with a missing or wrong token refused (body not read)");
            return Box::pin(std::future::ready(Ok(refusal(
                http::StatusCode::UNAUTHORIZED,
                WRONG_TOKEN,
                "wrong control token: send the token from agent.json in the header \
                 `Authorization: Bearer TOKEN`",
            ))));
        }
        let limit = if req.uri().path() == RUN_PATH {
            MAX_RUN_BODY
        } else {
            MAX_OP_BODY
        };
        let path = req.uri().path().to_string();
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Box::pin(std::future::ready(Ok(too_large(limit, &path))));
        }
        let mut inner = self.inner.clone();
        let activity = self.activity.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match http_body_util::Limited::new(body, limit).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Ok(too_large(limit, &path))
                }
                Err(e) => return Err(format!("reading a control request: {e}").into()),
            };
            let _busy = Busy::start(&activity);
            let req = HttpRequest::from_parts(parts, HttpBody::from(bytes.to_vec()));
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same(b"Bearer abc", b"Bearer abc"));
        assert!(!same(b"Bearer abc", b"Bearer abd"));
        assert!(!same(b"Bearer ab", b"Bearer abc"));
        assert!(!same(b"", b"Bearer abc"));
    }

    #[test]
    fn a_connection_expires_only_when_idle_past_the_window() {
        let a = Arc::new(Activity::new());
        let start = *lock(&a.since);
        assert!(!a.expired(start + HEADER_WINDOW / 2));
        assert!(a.expired(start + HEADER_WINDOW * 2), "no token shown");
        a.authorized.store(true, Ordering::SeqCst);
        assert!(!a.expired(start + HEADER_WINDOW * 2));
        assert!(a.expired(start + CONNECTION_WINDOW * 2));
        let busy = Busy::start(&a);
        assert!(
            !a.expired(start + CONNECTION_WINDOW * 2),
            "a running import"
        );
        drop(busy);
        let answered = *lock(&a.since);
        assert!(!a.expired(answered + CONNECTION_WINDOW / 2));
    }
}
