//! Serves the sync methods: an accept loop with a connection limit, byte counters at the
//! socket, and jsonrpsee's HTTP service per connection.
//!
//! Each method parses its params, runs the [`Responder`] on a blocking thread (sled and fsync
//! block), and maps errors to JSON-RPC errors in one place, logging every refusal.

use super::{ProtocolError, DIGEST, HELLO, MAX_BODY_BYTES, NOTIFY, PULL, PUSH};
use crate::sync::Responder;
use jsonrpsee::server::{
    serve_with_graceful_shutdown, stop_channel, RpcModule, Server, ServerConfig, ServerHandle,
    StopHandle,
};
use jsonrpsee::types::{ErrorObjectOwned, Params};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// Most simultaneous peer connections; further ones wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 64;

/// Bytes read and written on all sync connections (at the socket, HTTP framing included).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes received.
    pub read: AtomicU64,
    /// Bytes sent.
    pub written: AtomicU64,
}

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

fn register<P, R, F>(module: &mut RpcModule<Responder>, name: &'static str, f: F)
where
    P: DeserializeOwned + Send + 'static,
    R: Serialize + Clone + Send + 'static,
    F: Fn(&Responder, P, Option<SocketAddr>) -> Result<R, ProtocolError>
        + Clone
        + Send
        + Sync
        + 'static,
{
    module
        .register_blocking_method(name, move |params: Params, ctx, ext| {
            let remote = ext.get::<RemoteAddr>().map(|r| r.0);
            let p: P = params.one().inspect_err(|e| {
                warn!(method = name, error = %e.message(), "invalid params");
            })?;
            f(&ctx, p, remote).map_err(|e| {
                warn!(method = name, code = e.code, error = %e.message, ?remote, "request refused");
                ErrorObjectOwned::from(e)
            })
        })
        .expect("method names are unique");
}

/// The JSON-RPC methods over a responder.
pub fn methods(responder: Responder) -> RpcModule<Responder> {
    let mut m = RpcModule::new(responder);
    register(&mut m, HELLO, |r, p, remote| r.hello(p, remote));
    register(&mut m, PULL, |r, p, _| r.pull(p));
    register(&mut m, PUSH, |r, p, _| r.push(p));
    register(&mut m, NOTIFY, |r, p, _| r.notify(p).map(|()| true));
    register(&mut m, DIGEST, |r, p, _| r.digest(p));
    m
}

/// Serves `responder` on a bound listener until stopped.
pub async fn start(listener: TcpListener, responder: Responder) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let traffic = Arc::new(Traffic::default());
    let (stop, handle) = stop_channel();
    let methods = methods(responder);
    let task = tokio::spawn(accept_loop(listener, methods, stop, traffic.clone()));
    Ok(Running {
        addr,
        traffic,
        handle,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    methods: RpcModule<Responder>,
    stop: StopHandle,
    traffic: Arc<Traffic>,
) {
    let cfg = ServerConfig::builder()
        .max_request_body_size(MAX_BODY_BYTES)
        .max_response_body_size(MAX_BODY_BYTES)
        .max_connections(MAX_CONNECTIONS as u32)
        .http_only()
        .build();
    let builder = Server::builder().set_config(cfg).to_service_builder();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // The permit is taken before accept, so a flood of connections waits in the backlog
        // instead of consuming memory here.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.clone().shutdown() => break,
        };
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => { warn!(error = %e, "accept failed"); continue; }
            },
            _ = stop.clone().shutdown() => break,
        };
        debug!(%peer, "connection");
        let _ = sock.set_nodelay(true);
        let inner = builder.clone().build(methods.clone(), stop.clone());
        let svc = WithRemote {
            inner,
            remote: peer,
        };
        let stream = Counted {
            inner: sock,
            traffic: traffic.clone(),
        };
        let stopped = stop.clone().shutdown();
        tokio::spawn(async move {
            if let Err(e) = serve_with_graceful_shutdown(stream, svc, stopped).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Puts the connection's peer address into every request's extensions.
#[derive(Clone)]
struct WithRemote<S> {
    inner: S,
    remote: SocketAddr,
}

impl<S, B> tower::Service<jsonrpsee::server::HttpRequest<B>> for WithRemote<S>
where
    S: tower::Service<jsonrpsee::server::HttpRequest<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: jsonrpsee::server::HttpRequest<B>) -> Self::Future {
        req.extensions_mut().insert(RemoteAddr(self.remote));
        self.inner.call(req)
    }
}

/// A TCP stream that counts bytes both ways.
struct Counted {
    inner: TcpStream,
    traffic: Arc<Traffic>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.traffic.read.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.traffic.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
