//! Serves the sync methods: an accept loop with separate limits for unauthenticated and
//! authenticated connections, byte counters at the
//! socket, and jsonrpsee's HTTP service per connection.
//!
//! The protocol declares what it needs from the application as [`SyncService`] (like
//! Syncthing's `lib/protocol` `Model` interface); the sync layer implements it, so this module
//! never imports the sync layer or the store. Each method parses its params, runs the service
//! on a blocking thread (sled and fsync block), and maps errors to JSON-RPC errors in one place,
//! logging every refusal.

use super::{
    DigestReply, DigestRequest, FetchRequest, Hello, HelloReply, Notify, Page, ProtocolError,
    PullRequest, PushReply, PushRequest, ReconcileReply, ReconcileRequest, DIGEST, FETCH, HELLO,
    MAX_BODY_BYTES, NOTIFY, PULL, PUSH, RECONCILE,
};
use jsonrpsee::server::middleware::rpc::{
    Batch, MethodResponse, Notification, Request, RpcServiceBuilder, RpcServiceT,
};
use jsonrpsee::server::{
    serve_with_graceful_shutdown, stop_channel, RpcModule, Server, ServerConfig, ServerHandle,
    StopHandle,
};
use jsonrpsee::types::{ErrorCode, ErrorObject, ErrorObjectOwned, Id, Params};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};
use uuid::Uuid;

/// Most simultaneous authenticated peer connections (past their TLS handshake; every
/// connection in plaintext mode); a further one waits up to [`HANDSHAKE_TIMEOUT`] for a slot.
pub const MAX_CONNECTIONS: usize = 64;
/// Most simultaneous connections still in their TLS handshake (not yet authenticated), from
/// all addresses together; more are closed at once. Separate from [`MAX_CONNECTIONS`], so
/// silent sockets can never take the slots of members, and a member's new connection only
/// competes with other strangers for one of these until its handshake is done (milliseconds).
pub const MAX_UNAUTHENTICATED: usize = 128;

/// Bytes read and written on all sync connections (at the socket, HTTP framing included), and
/// connections refused.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes received.
    pub read: AtomicU64,
    /// Bytes sent.
    pub written: AtomicU64,
    /// Connections refused at the TLS handshake (no/bad/foreign/revoked certificate, plaintext).
    pub refused: AtomicU64,
    /// TLS connections that resumed an earlier session (no certificates exchanged).
    pub resumed: AtomicU64,
    /// TLS connections that completed a full handshake (both certificates exchanged).
    pub full_handshakes: AtomicU64,
    /// Connections dropped while their address was backing off after failed handshakes.
    pub throttled: AtomicU64,
}

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may sit with no bytes moving before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Failed handshakes from one address before it has to wait.
const FAILURES_BEFORE_BACKOFF: u32 = 3;
/// Connections from one address still in their TLS handshake (not yet authenticated); more are
/// closed at once, so silent sockets from one host cannot fill the connection slots.
pub const MAX_HANDSHAKES_PER_ADDR: usize = 16;
/// Most simultaneous connections of one certified instance; more are closed after the
/// handshake, so one member (even a hostile one) cannot hold the slots other members need.
pub const MAX_CONNECTIONS_PER_PEER: usize = 8;
/// How long one request may take from its first byte to its answer, body included: a body
/// trickled one byte at a time is cut off here even though bytes keep moving.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(120);

/// A running sync server.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// Byte counters.
    pub traffic: Arc<Traffic>,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits for the accept loop.
    pub async fn stop(self) {
        let _ = self.handle.stop();
        let _ = self.task.await;
        self.handle.stopped().await;
    }
}

/// The TCP peer of a request, put into the request's extensions by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

/// The instance named by the peer's verified TLS certificate (absent in plaintext mode).
#[derive(Clone, Copy, Debug)]
pub struct PeerInstance(pub Uuid);

/// Set by a method refused with [`super::codes::REVOKED`]: the connection's answer then carries
/// `Connection: close`, so hyper closes the connection once it is sent and a revoked laptop
/// cannot keep using a keep-alive connection opened before its revocation arrived.
#[derive(Clone, Debug, Default)]
struct CloseAfter(Arc<std::sync::atomic::AtomicBool>);

/// Who is calling: the TCP address and, with TLS, the certified instance.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller {
    /// TCP peer address.
    pub addr: Option<SocketAddr>,
    /// Instance from the certificate.
    pub instance: Option<Uuid>,
}

/// The answering side of the sync protocol, implemented by the application (the sync layer).
///
/// Every method is called on a blocking thread (implementations may do disk I/O and fsync) with
/// the parsed params and who is calling; an `Err` becomes the JSON-RPC error sent back.
pub trait SyncService: Send + Sync + 'static {
    /// `fieldsync_hello`: identities, versions, positions and knowledge.
    fn hello(&self, h: Hello, caller: Caller) -> Result<HelloReply, ProtocolError>;
    /// `fieldsync_pull`: one page of changes after a position.
    fn pull(&self, r: PullRequest, caller: Caller) -> Result<Page, ProtocolError>;
    /// `fieldsync_push`: apply one page, and the position it advances to, atomically.
    fn push(&self, r: PushRequest, caller: Caller) -> Result<PushReply, ProtocolError>;
    /// `fieldsync_notify`: the caller has new changes.
    fn notify(&self, n: Notify, caller: Caller) -> Result<(), ProtocolError>;
    /// `fieldsync_digest`: digest buckets of one table for `verify`.
    fn digest(&self, r: DigestRequest, caller: Caller) -> Result<DigestReply, ProtocolError>;
    /// `fieldsync_reconcile`: range fingerprints for set reconciliation.
    fn reconcile(
        &self,
        r: ReconcileRequest,
        caller: Caller,
    ) -> Result<ReconcileReply, ProtocolError>;
    /// `fieldsync_fetch`: whole records by id, as a page.
    fn fetch(&self, r: FetchRequest, caller: Caller) -> Result<Page, ProtocolError>;
}

fn register<S, P, R, F>(module: &mut RpcModule<S>, name: &'static str, f: F)
where
    S: SyncService,
    P: DeserializeOwned + Send + 'static,
    R: Serialize + Clone + Send + 'static,
    F: Fn(&S, P, Caller) -> Result<R, ProtocolError> + Clone + Send + Sync + 'static,
{
    module
        .register_blocking_method(name, move |params: Params, ctx, ext| {
            let remote = Caller {
                addr: ext.get::<RemoteAddr>().map(|r| r.0),
                instance: ext.get::<PeerInstance>().map(|p| p.0),
            };
            // In words only when a line is logged: this runs for every request.
            let addr = remote.addr;
            let p: P = params.one().inspect_err(|e| {
                warn!(
                    method = name,
                    "refused a request from {}: its parameters do not read ({})",
                    from_words(addr),
                    e.message()
                );
            })?;
            f(&ctx, p, remote).map_err(|e| {
                if e.code == super::codes::KNOWLEDGE_NEEDED {
                    // A normal round trip: the caller named its knowledge by a hash we do not
                    // hold for it (what it remembers telling us is only a guess, `sync::told`)
                    // and says hello again in full at once. Nothing for a person to do.
                    debug!(
                        method = name,
                        code = e.code,
                        "asked {} to say hello again with its knowledge: {}",
                        from_words(addr),
                        e.message
                    );
                } else if e.code == super::codes::REVOKED {
                    // The message is written for the revoked laptop ("ask the coordinator for
                    // a new credential"); logged here as it is, it read as if this laptop were
                    // the revoked one (trial 9b, finding 4).
                    warn!(
                        method = name,
                        "refused a request from {}: that laptop (instance {}) was revoked by \
                         the deployment after its connection opened; its connection is closed",
                        from_words(addr),
                        remote
                            .instance
                            .map_or_else(|| "unknown".to_string(), |i| i.to_string())
                    );
                } else {
                    warn!(
                        method = name,
                        code = e.code,
                        "refused a request from {}: {}",
                        from_words(addr),
                        e.message
                    );
                }
                if e.code == super::codes::REVOKED {
                    if let Some(c) = ext.get::<CloseAfter>() {
                        c.0.store(true, Ordering::Relaxed);
                    }
                }
                ErrorObjectOwned::from(e)
            })
        })
        .expect("method names are unique");
}

/// Who sent a request, in words for a log line: "the peer at ADDR" (never Rust's `Some(..)`).
fn from_words(addr: Option<SocketAddr>) -> String {
    match addr {
        Some(a) => format!("the peer at {a}"),
        None => "a peer at an unknown address".to_string(),
    }
}

/// The JSON-RPC methods over a service.
pub fn methods<S: SyncService>(service: S) -> RpcModule<S> {
    let mut m = RpcModule::new(service);
    register(&mut m, HELLO, |r, p, caller| r.hello(p, caller));
    register(&mut m, PULL, |r, p, caller| r.pull(p, caller));
    register(&mut m, PUSH, |r, p, caller| r.push(p, caller));
    register(&mut m, NOTIFY, |r, p, caller| {
        r.notify(p, caller).map(|()| true)
    });
    register(&mut m, DIGEST, |r, p, caller| r.digest(p, caller));
    register(&mut m, RECONCILE, |r, p, caller| r.reconcile(p, caller));
    register(&mut m, FETCH, |r, p, caller| r.fetch(p, caller));
    m
}

/// Serves `service` on a bound listener until stopped; with `tls`, only mutual-TLS peers.
pub async fn start<S: SyncService>(
    listener: TcpListener,
    service: S,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let traffic = Arc::new(Traffic::default());
    let (stop, handle) = stop_channel();
    let methods = methods(service);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(accept_loop(
        listener,
        methods,
        stop,
        traffic.clone(),
        acceptor,
    ));
    Ok(Running {
        addr,
        traffic,
        handle,
        task,
    })
}

async fn accept_loop<S: SyncService>(
    listener: TcpListener,
    methods: RpcModule<S>,
    stop: StopHandle,
    traffic: Arc<Traffic>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    let failures: Arc<Mutex<HashMap<IpAddr, (u32, Instant)>>> = Arc::default();
    let handshaking: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let per_peer: Arc<Mutex<HashMap<Uuid, usize>>> = Arc::default();
    let cfg = ServerConfig::builder()
        .max_request_body_size(MAX_BODY_BYTES)
        .max_response_body_size(MAX_BODY_BYTES)
        .max_connections(MAX_CONNECTIONS as u32)
        .http_only()
        .build();
    let builder = Server::builder()
        .set_config(cfg)
        .set_rpc_middleware(RpcServiceBuilder::new().layer_fn(CallsOnly))
        .to_service_builder();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let strangers = Arc::new(Semaphore::new(MAX_UNAUTHENTICATED));
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => { warn!(error = %e, "accept failed"); continue; }
            },
            _ = stop.clone().shutdown() => break,
        };
        debug!(%peer, "connection");
        if backing_off(&failures, peer.ip()) {
            traffic.throttled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Some(shaking) = Slot::take(&handshaking, peer.ip(), MAX_HANDSHAKES_PER_ADDR) else {
            traffic.throttled.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "too many unauthenticated connections from this address: closed");
            continue;
        };
        let Ok(stranger) = strangers.clone().try_acquire_owned() else {
            traffic.throttled.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "too many unauthenticated connections: closed");
            continue;
        };
        let _ = sock.set_nodelay(true);
        let stream = Counted::new(sock, traffic.clone());
        // Filled in once the handshake names the caller, so its bytes count for it too.
        let caller_bytes = stream.caller.clone();
        let (builder, methods, stop) = (builder.clone(), methods.clone(), stop.clone());
        let (acceptor, failures, traffic) = (acceptor.clone(), failures.clone(), traffic.clone());
        let (per_peer, slots) = (per_peer.clone(), slots.clone());
        tokio::spawn(async move {
            let stopped = stop.clone().shutdown();
            let inner = builder.build(methods, stop);
            let result = match acceptor {
                None => {
                    drop((shaking, stranger));
                    let Some(_permit) = member_slot(&slots, &traffic, peer).await else {
                        return;
                    };
                    let svc = WithRemote {
                        inner,
                        remote: peer,
                        instance: None,
                        close: CloseAfter::default(),
                    };
                    serve_with_graceful_shutdown(stream, svc, stopped).await
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        // Only a certificate the deployment does not accept is a refusal
                        // (counted, backed off); a connection that drops or stalls mid-handshake
                        // (flaky Wi-Fi, a closed lid) is a network event.
                        Ok(Err(e)) => {
                            match handshake_refusal(&e) {
                                Some(reason) => refused(&traffic, &failures, peer, &reason),
                                None => info!(%peer, error = %e,
                                    "network: connection dropped during the TLS handshake"),
                            }
                            return;
                        }
                        Err(_) => {
                            info!(%peer, "network: TLS handshake timed out");
                            return;
                        }
                    };
                    drop((shaking, stranger));
                    lock(&failures).remove(&peer.ip());
                    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        traffic.resumed.fetch_add(1, Ordering::Relaxed);
                        debug!(%peer, "TLS session resumed");
                    } else {
                        traffic.full_handshakes.fetch_add(1, Ordering::Relaxed);
                    }
                    let instance = crate::tls::peer_instance(tls.get_ref().1.peer_certificates());
                    if let Some(i) = instance {
                        let _ = caller_bytes.set(super::counters::peer(i));
                    }
                    let _mine = match instance {
                        Some(i) => match Slot::take(&per_peer, i, MAX_CONNECTIONS_PER_PEER) {
                            Some(slot) => Some(slot),
                            None => {
                                traffic.throttled.fetch_add(1, Ordering::Relaxed);
                                warn!(%peer, instance = %i,
                                      "too many connections from one member: closed");
                                return;
                            }
                        },
                        None => None,
                    };
                    let Some(_permit) = member_slot(&slots, &traffic, peer).await else {
                        return;
                    };
                    let svc = WithRemote {
                        inner,
                        remote: peer,
                        instance,
                        close: CloseAfter::default(),
                    };
                    serve_with_graceful_shutdown(tls, svc, stopped).await
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// One of the [`MAX_CONNECTIONS`] slots of authenticated connections, waiting for one at most
/// [`HANDSHAKE_TIMEOUT`]; `None` (counted, logged) if none came free.
async fn member_slot(
    slots: &Arc<Semaphore>,
    traffic: &Traffic,
    peer: SocketAddr,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, slots.clone().acquire_owned()).await {
        Ok(Ok(p)) => Some(p),
        _ => {
            traffic.throttled.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, "all {MAX_CONNECTIONS} connection slots busy: closed");
            None
        }
    }
}

/// One of at most `max` connections counted under a key (an address, an instance), given back
/// when dropped.
struct Slot<K: std::hash::Hash + Eq + Copy> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Copy> Slot<K> {
    fn take(counts: &Arc<Mutex<HashMap<K, usize>>>, key: K, max: usize) -> Option<Self> {
        let mut c = lock(counts);
        let n = c.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: counts.clone(),
            key,
        })
    }
}

impl<K: std::hash::Hash + Eq + Copy> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        if let Some(n) = c.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a failed handshake is a refusal of the peer (a TLS error: its certificate, or a
/// protocol violation), or `None` when the connection merely ended (EOF, reset): a network
/// event, not counted toward the per-address back-off.
fn handshake_refusal(e: &std::io::Error) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked) => {
            // Named by the verifier on this thread, in this same poll (see `tls.rs`).
            match crate::tls::take_refused_revoked() {
                Some(id) => format!("instance {id} has been revoked by the deployment"),
                None => "its certificate was revoked by the deployment".to_string(),
            }
        }
        other => other.to_string(),
    })
}

/// Logs and counts a refused handshake, and makes a repeatedly failing address wait.
/// A connection refused at the TLS handshake, as `peers` and `status` show it.
#[derive(Clone, Debug, Serialize)]
pub struct Refusal {
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The caller's address (`IP:PORT`).
    pub addr: String,
    /// Why, in words (a revoked laptop, another deployment's, no certificate, not TLS).
    pub reason: String,
}

/// Refused connections kept for display.
const KEEP_REFUSALS: usize = 20;

fn refusal_log() -> std::sync::MutexGuard<'static, std::collections::VecDeque<Refusal>> {
    static LOG: std::sync::OnceLock<Mutex<std::collections::VecDeque<Refusal>>> =
        std::sync::OnceLock::new();
    lock(LOG.get_or_init(Mutex::default))
}

/// The last 20 connections this process refused at the TLS handshake, newest first (in
/// memory: an agent restart empties it).
pub fn recent_refusals() -> Vec<Refusal> {
    refusal_log().iter().cloned().collect()
}

/// A handshake error in words a coordinator understands.
fn refusal_words(error: &str) -> String {
    let said = |s: &str| error.contains(s);
    // An alert *received* is the other side refusing *our* certificate, not a stranger refused.
    if said("received fatal alert: CertificateRevoked") {
        "it refused this laptop's certificate as revoked: this laptop was revoked by the \
         deployment; ask the coordinator for a new credential"
            .into()
    } else if said("received fatal alert") {
        let alert = error.rsplit(": ").next().unwrap_or(error);
        format!("it refused this laptop's certificate ({alert})")
    } else if said("revoked") {
        // The verifier's own words name the instance: "instance … has been revoked …".
        let own = error.rsplit(": ").next().unwrap_or(error);
        format!("a revoked laptop ({own})")
    } else if said("UnknownIssuer") || said("BadSignature") || said("unknown issuer") {
        "a laptop of another deployment (its certificate is not from this deployment)".into()
    } else if said("no certificate") || said("NoCertificates") {
        "no certificate (not a member of any deployment)".into()
    } else if said("InvalidContentType") || said("corrupt message") {
        "not TLS (a plaintext client or another program)".into()
    } else {
        error.to_string()
    }
}

fn refused(
    traffic: &Traffic,
    failures: &Mutex<HashMap<IpAddr, (u32, Instant)>>,
    peer: SocketAddr,
    reason: &str,
) {
    traffic.refused.fetch_add(1, Ordering::Relaxed);
    {
        let mut log = refusal_log();
        log.push_front(Refusal {
            at: chrono::Utc::now(),
            addr: peer.to_string(),
            reason: refusal_words(reason),
        });
        log.truncate(KEEP_REFUSALS);
    }
    let mut f = lock(failures);
    let e = f.entry(peer.ip()).or_insert((0, Instant::now()));
    e.0 += 1;
    if e.0 >= FAILURES_BEFORE_BACKOFF {
        let secs = 1u64 << (e.0 - FAILURES_BEFORE_BACKOFF).min(5);
        e.1 = Instant::now() + Duration::from_secs(secs);
    }
    if reason.contains("received fatal alert") {
        // The other side refused *our* certificate (a laptop of another deployment, or one
        // that holds this laptop's revocation): not a stranger turned away here.
        warn!(%peer, %reason, meaning = %refusal_words(reason), failures = e.0,
              "connection refused: the connecting laptop refused this laptop's certificate");
    } else {
        warn!(%peer, %reason, failures = e.0, "connection refused: not a member of this deployment");
    }
}

fn backing_off(failures: &Mutex<HashMap<IpAddr, (u32, Instant)>>, ip: IpAddr) -> bool {
    lock(failures)
        .get(&ip)
        .is_some_and(|(n, until)| *n >= FAILURES_BEFORE_BACKOFF && Instant::now() < *until)
}

/// Every sync method is a call: a request without a usable id is refused with JSON-RPC's
/// Invalid Request (-32600, id null). jsonrpsee reads a request whose id is not a string, number
/// or null (an object, say) as a notification and would answer `null`, which tells the sender
/// nothing.
#[derive(Clone)]
struct CallsOnly<S>(S);

impl<S> RpcServiceT for CallsOnly<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Send
        + Sync,
{
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(&self, request: Request<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        // Bytes per method (`counters::by_method`): where a session's traffic goes.
        let method = request.method_name().to_string();
        let params = request.params.as_ref().map_or(0, |p| p.get().len()) as u64;
        let fut = self.0.call(request);
        async move {
            let r = fut.await;
            super::counters::count_method(&method, params, r.as_json().get().len() as u64);
            r
        }
    }

    fn batch<'a>(&self, requests: Batch<'a>) -> impl Future<Output = MethodResponse> + Send + 'a {
        self.0.batch(requests)
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = MethodResponse> + Send + 'a {
        warn!(method = %n.method_name(), "invalid request: no usable id (sync methods are calls)");
        std::future::ready(MethodResponse::error(
            Id::Null,
            ErrorObject::from(ErrorCode::InvalidRequest),
        ))
    }
}

/// Puts the connection's peer address and certified instance into every request's extensions,
/// and closes the connection after an answer that asked for it ([`CloseAfter`]).
#[derive(Clone)]
struct WithRemote<S> {
    inner: S,
    remote: SocketAddr,
    instance: Option<Uuid>,
    /// Shared by every request of this connection.
    close: CloseAfter,
}

impl<S, B, R> tower::Service<jsonrpsee::server::HttpRequest<B>> for WithRemote<S>
where
    S: tower::Service<jsonrpsee::server::HttpRequest<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: From<&'static str>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: jsonrpsee::server::HttpRequest<B>) -> Self::Future {
        req.extensions_mut().insert(RemoteAddr(self.remote));
        if let Some(i) = self.instance {
            req.extensions_mut().insert(PeerInstance(i));
        }
        req.extensions_mut().insert(self.close.clone());
        // The body is read inside the inner future, so this deadline covers it too.
        let fut = self.inner.call(req);
        let (remote, close) = (self.remote, self.close.clone());
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_DEADLINE, fut).await {
                Ok(Ok(mut r)) => {
                    if close.0.load(Ordering::Relaxed) {
                        info!(peer = %remote, "connection of a revoked laptop closed");
                        r.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    Ok(r)
                }
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    warn!(peer = %remote, "request not complete within its deadline: closed");
                    Err(S::Error::from("request deadline exceeded"))
                }
            }
        })
    }
}

/// A TCP stream that counts bytes both ways and fails once nothing has moved for
/// [`IDLE_TIMEOUT`], so a slow or stuck client cannot hold a connection slot forever.
struct Counted {
    inner: TcpStream,
    traffic: Arc<Traffic>,
    /// The certified caller's counters ([`super::counters::peer`]), once known.
    caller: Arc<std::sync::OnceLock<Arc<super::counters::ByteCounters>>>,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl Counted {
    fn new(inner: TcpStream, traffic: Arc<Traffic>) -> Self {
        Self {
            inner,
            traffic,
            caller: Arc::default(),
            idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
        }
    }

    fn touch(&mut self) {
        self.idle
            .as_mut()
            .reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
    }

    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection idle for too long",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let n = (buf.filled().len() - before) as u64;
                self.traffic.read.fetch_add(n, Ordering::Relaxed);
                if let Some(c) = self.caller.get() {
                    c.add_read(n);
                }
                self.touch();
                Poll::Ready(r)
            }
            Poll::Pending => match self.check_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.traffic.written.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(c) = self.caller.get() {
                    c.add_written(n as u64);
                }
                self.touch();
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An alert received during the handshake is the connecting laptop refusing ours (seen on
    /// a revoked laptop, whose log said a stranger was refused).
    #[test]
    fn a_received_alert_says_our_certificate_was_refused() {
        let ours = refusal_words("received fatal alert: CertificateRevoked");
        assert!(
            ours.starts_with("it refused this laptop's certificate as revoked")
                && ours.contains("ask the coordinator for a new credential"),
            "{ours}"
        );
        assert_eq!(
            refusal_words("received fatal alert: UnknownCA"),
            "it refused this laptop's certificate (UnknownCA)"
        );
        let theirs = refusal_words(
            "invalid peer certificate: instance 35a2 has been revoked by the deployment",
        );
        assert!(
            theirs.starts_with("a revoked laptop (instance 35a2"),
            "{theirs}"
        );
    }
}
