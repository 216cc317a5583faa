//! Typed JSON-RPC client for the sync methods (jsonrpsee over HTTP).

use super::counters::{ByteCounters, Count, CountLayer};
use super::{
    DigestReply, DigestRequest, FetchRequest, Hello, HelloReply, Notify, Page, ProtocolError,
    PullRequest, PushReply, PushRequest, ReconcileReply, ReconcileRequest, DIGEST, FETCH, HELLO,
    MAX_BODY_BYTES, NOTIFY, PULL, PUSH, RECONCILE,
};
use jsonrpsee::core::client::ClientT;
use jsonrpsee::http_client::{HttpBackend, HttpClient, HttpClientBuilder, RpcLogger, RpcService};
use jsonrpsee::rpc_params;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How long one request may take before the session gives up on the peer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a session's first request, the hello, may take, connecting and the TLS handshake
/// included: it carries no pages, so a peer that has not answered it by then is stuck or
/// overwhelmed, and the person (or the agent's next round) learns so in 30 s instead of the
/// 120 s a page may take. The server's own handshake limit is 10 s
/// (`server::HANDSHAKE_TIMEOUT`).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer answered with a JSON-RPC error.
    #[error(transparent)]
    Protocol(ProtocolError),
    /// No usable answer: connection refused, timeout, malformed response.
    #[error("{0}")]
    Transport(String),
    /// The connection ended before an answer without saying why (see [`ended_unexplained`]):
    /// a TLS alert may hide behind it ([`tls_refusal`] asks).
    #[error("{0}")]
    Ended(String),
}

/// jsonrpsee's HTTP client with our byte counting under it.
type Inner = HttpClient<RpcLogger<RpcService<Count<HttpBackend>>>>;
/// What [`describe`] says when a peer refused this laptop's certificate as revoked (the TLS
/// `certificate_revoked` alert); the sync layer turns it into the revoked laptop's message.
pub const REVOKED_BY_PEER: &str = "the peer refused this laptop's certificate as revoked";

/// The cause of a failed call in words: the innermost error of the chain that a person can act
/// on (connection refused, a TLS alert), instead of the HTTP client's "client error (Connect)".
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = e.to_string();
    // hyper's own words for a connection that went away ("connection was not ready") reached
    // people as they are; said plainly unless a cause below it says more.
    let mut went_away = false;
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return tls_words(t);
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            went_away |= h.is_canceled() || h.is_closed() || h.is_incomplete_message();
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>().map(innermost) {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return tls_words(t);
            }
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => {
                    return "connection refused (is fieldsync running there?)".into()
                }
                TimedOut => return "the connection timed out".into(),
                ConnectionReset | ConnectionAborted | UnexpectedEof => {
                    return "the connection was closed by the peer".into()
                }
                _ => {}
            }
        }
        last = err.to_string();
        cur = err.source();
    }
    if went_away {
        return "the connection was closed by the peer before it answered".into();
    }
    last
}

/// The innermost of I/O errors wrapped in one another. The TLS connector wraps the socket's
/// error in one of kind `Other` ("tls handshake eof", a reset), and `io::Error::source` skips
/// the wrapped error itself, so walking sources never reaches the kind that says what happened.
fn innermost(mut io: &std::io::Error) -> &std::io::Error {
    // Bounded: each step goes one wrapper deeper, and wrappers are finite.
    while let Some(inner) = io
        .get_ref()
        .and_then(|i| i.downcast_ref::<std::io::Error>())
    {
        io = inner;
    }
    io
}

/// True when a failed exchange ended with the connection going away before an answer and no
/// reason given: hyper gave up on the request (canceled, e.g. "connection was not ready"; its
/// channel closed; the message was cut off) or the socket was reset, aborted or hit end of
/// file. Decided by the error types in the chain (`hyper::Error`'s kinds, `io::ErrorKind`),
/// never by their words, so a dependency rewording its messages cannot change it. False when
/// the chain holds the reason (a TLS error or alert), or the peer was never reached (refused,
/// timed out).
pub fn ended_unexplained(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let mut ended = false;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return false;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            ended |= h.is_canceled() || h.is_closed() || h.is_incomplete_message();
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>().map(innermost) {
            if io
                .get_ref()
                .is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some())
            {
                return false;
            }
            match io.kind() {
                ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe => ended = true,
                ConnectionRefused | TimedOut => return false,
                _ => {}
            }
        }
        cur = err.source();
    }
    ended
}

/// Why a TLS peer closed a connection before answering, when it told us in an alert.
///
/// hyper drops the error that ended a connection before its first request was sent ("connection
/// was not ready"), and in TLS 1.3 a server that refuses the client's certificate (revoked,
/// another deployment) says so in an alert after the client has already finished its side of
/// the handshake, so that race hides the reason. This opens one fresh connection with `cfg`,
/// completes the handshake and waits up to 3 s for the server's first bytes: an alert comes back
/// in words ([`REVOKED_BY_PEER`] for `certificate_revoked`); `None` when the peer cannot be
/// reached, keeps the connection open quietly (it accepts us) or closes it without an alert.
pub async fn tls_refusal(addr: &str, cfg: rustls::ClientConfig) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let host = addr
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let name_part = host
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(name_part.to_string()).ok()?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await
        .ok()?
        .ok()?;
    let words = |e: &std::io::Error| {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .map(tls_words)
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    // Bounded like the connect and the read below: a peer that accepts the connection but
    // never finishes the handshake made `sync` hang here (seen once in the test suite, 60 s).
    let mut tls = match tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .ok()?
    {
        Ok(t) => t,
        Err(e) => return words(&e),
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(3), tls.read(&mut byte)).await {
        Ok(Err(e)) => words(&e),
        _ => None,
    }
}

fn tls_words(t: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match t {
        rustls::Error::AlertReceived(A::CertificateRevoked) => REVOKED_BY_PEER.into(),
        rustls::Error::AlertReceived(A::UnknownCA | A::BadCertificate) => {
            "the peer does not accept this laptop's certificate (another deployment?)".into()
        }
        // Not TLS back: that port speaks something else, most often the HTTP API's plain HTTP
        // (a newcomer gave the API port and read rustls' "InvalidContentType").
        rustls::Error::InvalidMessage(_) => "it did not answer as a fieldsync sync port (no TLS \
             back): is it another program's port, or this agent's HTTP API port (the sync port \
             is the one `fieldsync status` shows as listening)?"
            .into(),
        other => format!("TLS: {other}"),
    }
}

/// A connection to one peer's sync endpoint.
pub struct Client {
    inner: Inner,
    bytes: Arc<ByteCounters>,
}

impl Client {
    /// A client for `addr` (`host:port`); over mutual TLS when `tls` is given.
    pub fn connect(addr: &str, tls: Option<rustls::ClientConfig>) -> Result<Self, String> {
        let host = addr
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        let bytes = Arc::new(ByteCounters::default());
        let mut b = HttpClientBuilder::default()
            .set_http_middleware(tower::ServiceBuilder::new().layer(CountLayer(bytes.clone())))
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
        Ok(Self { inner, bytes })
    }

    /// Bytes this client has moved so far (request and response bodies, counted as they
    /// cross the connection), so a session can show its progress in bytes while a page is
    /// still arriving.
    pub fn bytes(&self) -> &Arc<ByteCounters> {
        &self.bytes
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
                other if ended_unexplained(&other) => CallError::Ended(describe(&other)),
                other => CallError::Transport(describe(&other)),
            })
    }

    /// `fieldsync_hello`, answered within [`HELLO_TIMEOUT`] (connection and TLS handshake
    /// included) or failed as [`CallError::Transport`] saying so.
    pub async fn hello(&self, h: &Hello) -> Result<HelloReply, CallError> {
        match tokio::time::timeout(HELLO_TIMEOUT, self.call(HELLO, h)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Transport(format!(
                "the peer took the connection but did not answer within {} s (its agent may be \
                 busy or stuck): try again, or restart fieldsync there",
                HELLO_TIMEOUT.as_secs()
            ))),
        }
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

#[cfg(test)]
mod tests {
    /// A port that answers without TLS (the HTTP API's, given by mistake) is said so, not as
    /// rustls' "received corrupt message of type InvalidContentType".
    #[test]
    fn a_port_without_tls_is_named_as_such() {
        let said = tls_words(&rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert!(
            said.starts_with("it did not answer as a fieldsync sync port")
                && said.contains("HTTP API port")
                && !said.contains("InvalidContentType"),
            "{said}"
        );
    }

    use super::*;

    /// One notify call to `addr`, which must fail: in plaintext, or over TLS with `tls`.
    async fn notify_fails_with(addr: &str, tls: Option<rustls::ClientConfig>) -> CallError {
        let client = Client::connect(addr, tls).unwrap();
        client
            .notify(&Notify {
                from: uuid::Uuid::nil(),
                head: 0,
                leaving: false,
            })
            .await
            .unwrap_err()
    }

    async fn notify_fails(addr: &str) -> CallError {
        notify_fails_with(addr, None).await
    }

    /// [`notify_fails`] over TLS (a client that trusts no server: the handshake never gets
    /// that far here).
    async fn notify_fails_tls(addr: &str) -> CallError {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        notify_fails_with(addr, Some(cfg)).await
    }

    /// A peer that takes the connection and never answers (a stuck agent: its kernel still
    /// accepts) fails the hello after [`HELLO_TIMEOUT`], saying so, not after the 120 s a page
    /// may take. Time is paused: tokio moves it on while the client waits.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_answers_fails_the_hello_in_bounded_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Taken and held open, never read: what a stalled agent's backlog does.
        let held = tokio::spawn(async move {
            let kept = listener.accept().await;
            std::future::pending::<()>().await;
            drop(kept);
        });
        let client = Client::connect(&addr, None).unwrap();
        let hello: Hello = serde_json::from_value(serde_json::json!({
            "protocol_min": 4, "protocol_max": 4, "peer": {"instance": uuid::Uuid::nil()},
            "clock_ms": 0, "head": 0, "knowledge": {}
        }))
        .unwrap_or_else(|e| panic!("a hello: {e}"));
        let started = tokio::time::Instant::now();
        let e = client.hello(&hello).await.unwrap_err();
        assert!(matches!(e, CallError::Transport(_)), "{e:?}");
        assert!(e.to_string().contains("did not answer within 30 s"), "{e}");
        assert!(
            started.elapsed() < REQUEST_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        held.abort();
    }

    /// A peer that accepts the connection and closes it without answering ends the call with
    /// [`CallError::Ended`] (decided by the error's type); a port nobody listens on is a plain
    /// transport error (no TLS refusal can hide behind it).
    #[tokio::test]
    async fn a_connection_closed_without_an_answer_is_told_by_its_type() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let closer = tokio::spawn(async move {
            // Bounded: the test makes at most three connections.
            for _ in 0..3 {
                match listener.accept().await {
                    Ok((s, _)) => drop(s),
                    Err(_) => return,
                }
            }
        });
        let e = notify_fails(&addr).await;
        assert!(matches!(e, CallError::Ended(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("the connection was closed by the peer"),
            "{e}"
        );
        // The same over TLS: the connector wraps the reset in an error of its own, which once
        // hid it ("tls handshake eof" said as is, and no second look for a TLS alert).
        let e = notify_fails_tls(&addr).await;
        assert!(matches!(e, CallError::Ended(_)), "{e:?}");
        assert_eq!(e.to_string(), "the connection was closed by the peer");
        closer.abort();

        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = free.local_addr().unwrap().to_string();
        drop(free);
        let e = notify_fails(&gone).await;
        assert!(matches!(e, CallError::Transport(_)), "{e:?}");
        assert!(e.to_string().contains("connection refused"), "{e}");
    }
}
