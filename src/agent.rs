//! The daemon behind `fieldsync run`: serves the sync protocol, runs the control endpoint for
//! the CLI, starts sessions (on a peer's notify, periodically with known and static peers),
//! and shuts down cleanly on SIGINT/SIGTERM.
//!
//! Every task watches one shutdown signal; store work runs on blocking threads.

use crate::control::{self, Executor};
use crate::protocol::server;
use crate::store::Store;
use crate::sync::{self, Responder, SessionOptions};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use uuid::Uuid;

/// How the agent was started.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Sync listen address.
    pub listen: String,
    /// Static peers (`host:port`) to sync with, besides the ones that contact us.
    pub peers: Vec<String>,
    /// Seconds between fallback syncs.
    pub interval: Duration,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The sync port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The control endpoint failed.
    #[error(transparent)]
    Control(#[from] control::ControlError),
}

/// Sessions in flight, keyed by peer address: at most one per peer at a time.
#[derive(Default)]
struct InFlight(Mutex<HashSet<String>>);

impl InFlight {
    fn try_start(&self, addr: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr.to_string())
    }

    fn finish(&self, addr: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(addr);
    }
}

/// Shared state of the running agent's tasks.
struct Agent {
    store: Arc<Store>,
    opts: SessionOptions,
    in_flight: InFlight,
}

impl Agent {
    /// Runs a session with `addr` unless one is already running.
    fn spawn_session(self: &Arc<Self>, addr: String) {
        if !self.in_flight.try_start(&addr) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            match sync::sync_with(me.store.clone(), &addr, &me.opts).await {
                Ok(_) => {}
                Err(e) => {
                    let peer = me
                        .store
                        .peers()
                        .ok()
                        .and_then(|ps| ps.into_iter().find(|p| p.url == addr))
                        .map(|p| p.instance);
                    sync::note_failure(&me.store, peer, &e);
                }
            }
            me.in_flight.finish(&addr);
        });
    }

    /// Known peer addresses: static ones and every peer row with an address.
    fn known_addrs(&self, statics: &[String]) -> Vec<String> {
        let mut addrs: Vec<String> = statics.to_vec();
        if let Ok(rows) = self.store.peers() {
            addrs.extend(rows.into_iter().map(|r| r.url).filter(|u| !u.is_empty()));
        }
        addrs.sort();
        addrs.dedup();
        addrs
    }
}

/// Runs the agent until SIGINT/SIGTERM. Prints one JSON line with the bound addresses.
pub async fn run(
    store: Arc<Store>,
    options: AgentOptions,
    exec: Executor,
) -> Result<(), AgentError> {
    let (notify_tx, mut notify_rx) = mpsc::channel::<Uuid>(64);
    let listen_err = |source| AgentError::Listen {
        addr: options.listen.clone(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .map_err(listen_err)?;
    let listen = listener.local_addr().map_err(listen_err)?.to_string();
    let responder = Responder::new(store.clone(), Some(listen.clone()), Some(notify_tx));
    let running = server::start(listener, responder)
        .await
        .map_err(listen_err)?;
    let control = control::start(store.clone(), &listen, exec).await?;
    let mut session_opts = SessionOptions::from_store(&store);
    session_opts.url = Some(listen.clone());
    let agent = Arc::new(Agent {
        store: store.clone(),
        opts: session_opts,
        in_flight: InFlight::default(),
    });
    info!(instance = %store.id(), %listen, "agent listening");
    println!(
        "{}",
        serde_json::json!({"event": "listening", "listen": listen, "instance": store.id()})
    );

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let ticker = {
        let agent = agent.clone();
        let statics = options.peers.clone();
        let mut stop = stop_rx.clone();
        let interval = options.interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        for addr in agent.known_addrs(&statics) {
                            agent.spawn_session(addr);
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        })
    };
    let notified = {
        let agent = agent.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(peer) = notify_rx.recv() => {
                        match agent.store.peer(&peer) {
                            Ok(Some(row)) if !row.url.is_empty() => agent.spawn_session(row.url),
                            _ => warn!(%peer, "notify from a peer without a known address"),
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        })
    };

    wait_for_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = stop_rx.changed().await;
    let _ = tokio::time::timeout(Duration::from_secs(3), running.stop()).await;
    let _ = control.stop();
    ticker.abort();
    notified.abort();
    if let Err(e) = store.flush() {
        warn!(error = %e, "flush on shutdown failed");
    }
    control::remove_agent_file(store.dir());
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
