//! Sync commands: `run` (the agent, with its control endpoint and HTTP API), `sync`, `verify`.

use super::{executor, print, resolve_transport, CliError, Io};
use crate::app::{AgentCtx, App};
use crate::store::Store;
use crate::tls::Transport;
use serde_json::json;
use std::sync::Arc;

/// The options of `run`.
pub struct RunArgs {
    /// Sync listen address.
    pub listen: Option<String>,
    /// Extra static peers.
    pub peers: Vec<String>,
    /// No mDNS.
    pub no_discovery: bool,
    /// Plaintext sync (debugging).
    pub insecure_plaintext: bool,
    /// HTTP API address.
    pub api_listen: Option<String>,
    /// No HTTP API.
    pub no_api: bool,
}

/// `run`: the agent, until SIGINT/SIGTERM/SIGHUP.
pub fn run_agent(
    store: Arc<Store>,
    args: RunArgs,
    rt: &tokio::runtime::Handle,
) -> Result<(), CliError> {
    // A laptop that has not joined a deployment still runs (the CLI works through the
    // agent), with sync off: plaintext is never the fallback.
    let not_joined =
        !args.insecure_plaintext && matches!(crate::mesh::load_credential(store.dir()), Ok(None));
    let transport = if not_joined {
        eprintln!(
            "fieldsync: sync is off: this laptop has not joined a deployment, and plaintext \
             sync is refused. Join with `fieldsync init --mesh FILE` (a credential from \
             `fieldsync mesh enroll` on the coordinator's laptop, or a join file) and restart; \
             on the coordinator's own laptop, `fieldsync mesh create --name NAME` starts a \
             deployment and joins it. --insecure-plaintext is for debugging only"
        );
        Transport::Plaintext
    } else {
        resolve_transport(&store, args.insecure_plaintext)?
    };
    let sync = &store.config().sync;
    let mut all = sync.peers.clone();
    all.extend(args.peers);
    let dc = &store.config().discovery;
    let ctx = AgentCtx {
        live: crate::agent::LiveStatus::default(),
        transport: transport.clone(),
        clients: Arc::<crate::sync::ClientCache>::default(),
        sync_enabled: !not_joined,
        api_url: Default::default(),
    };
    let opts = crate::agent::AgentOptions {
        listen: args.listen.unwrap_or_else(|| sync.listen.clone()),
        peers: all,
        interval: std::time::Duration::from_secs(sync.interval_secs.max(1)),
        discovery: (dc.enabled && !args.no_discovery).then(|| dc.clone()),
        live: ctx.live.clone(),
        transport,
        clients: ctx.clients.clone(),
        sync_enabled: !not_joined,
    };
    let app = App::new(store.clone(), Some(ctx.clone()));
    let exec = executor(rt.clone(), ctx);
    let api_cfg = store.config().api.clone();
    rt.block_on(async move {
        let explicit = args.api_listen.or(api_cfg.listen);
        let api = if args.no_api || !api_cfg.enabled {
            None
        } else {
            let addr = explicit
                .clone()
                .unwrap_or_else(|| crate::http::DEFAULT_LISTEN.to_string());
            match crate::http::start(app, &addr).await {
                Ok(h) => Some(h),
                // The default port may be taken (a second agent on this machine): the agent
                // still syncs; an explicitly configured address must work.
                Err(e @ crate::http::HttpError::Bind { .. }) if explicit.is_none() => {
                    eprintln!("fieldsync: the HTTP API is off: {e}");
                    None
                }
                Err(e) => return Err(CliError::Invalid(e.to_string())),
            }
        };
        let r = crate::agent::run(store, opts, exec)
            .await
            .map_err(|e| CliError::Io(e.to_string()));
        if let Some(h) = api {
            h.stop().await;
        }
        r
    })
}

/// The transport for a one-shot session: the agent's inside it, else this laptop's own.
fn transport(app: &App, insecure: bool) -> Result<Option<Transport>, CliError> {
    match app.agent() {
        Some(_) => Ok(None),
        None => resolve_transport(app.store(), insecure).map(Some),
    }
}

/// `sync PEER`: one session; a summary line per direction.
pub fn sync(app: &App, peer: &str, insecure: bool, io: &mut Io<'_>) -> Result<(), CliError> {
    let t = transport(app, insecure)?;
    // In the agent, the bar is drawn by the CLI that forwarded the command (see `forward`).
    let bar =
        (io.human && app.agent().is_none()).then(|| super::bar::Bar::start(super::bar::local()));
    let r = io.rt.block_on(app.sync(peer, t));
    drop(bar);
    let r = r?;
    if io.human {
        return write!(io.out, "{}", super::human::sync(&r)).map_err(CliError::Output);
    }
    for (direction, d) in [("received", r.received), ("sent", r.sent)] {
        let mut v = serde_json::to_value(d).unwrap_or_default();
        v["direction"] = json!(direction);
        v["peer"] = json!(r.peer.instance);
        v["peer_name"] = json!(r.peer.name);
        print(io.out, &v)?;
    }
    Ok(())
}

/// `verify PEER`: a line per table; exit code 1 when something differs.
pub fn verify(app: &App, peer: &str, insecure: bool, io: &mut Io<'_>) -> Result<(), CliError> {
    let t = transport(app, insecure)?;
    let checks = io.rt.block_on(app.verify(peer, t))?;
    for c in &checks {
        print(io.out, &serde_json::to_value(c).unwrap_or_default())?;
    }
    if checks.iter().all(|c| c.in_sync) {
        Ok(())
    } else {
        Err(CliError::Differs(peer.to_string()))
    }
}
