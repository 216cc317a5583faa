//! Sync commands: `run` (the agent, with its control endpoint and HTTP API), `sync`, `verify`.

use super::{executor, print, resolve_transport, CliError, Door, Io};
use crate::app::{AgentCtx, App};
use crate::control::Op;
use crate::store::Store;
use crate::tls::Transport;
use serde_json::{json, Value};
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
    /// Say the agent started in a sentence instead of the JSON "listening" line.
    pub human: bool,
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
             deployment and joins it. --insecure-plaintext is for debugging only."
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
        human: args.human,
        api: None,
    };
    let api_url = ctx.api_url.clone();
    let app = App::new(store.clone(), Some(ctx));
    let exec = executor(rt.clone(), app.clone());
    let api_cfg = store.config().api.clone();
    rt.block_on(async move {
        let mut opts = opts;
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
        opts.api = api_url.get().cloned();
        let r = crate::agent::run(store, opts, exec)
            .await
            .map_err(|e| CliError::Io(e.to_string()));
        if let Some(h) = api {
            h.stop().await;
        }
        r
    })
}

/// `sync PEER`: one session; a summary line per direction.
pub fn sync(door: &Door<'_>, peer: &str, io: &mut Io<'_>) -> Result<(), CliError> {
    // On a terminal, a progress bar follows the session where it runs: in the agent, or here.
    let source = match door {
        Door::Agent(dir) => Some(super::bar::agent(dir)),
        Door::Local { app, .. } if app.agent().is_none() => Some(super::bar::local()),
        Door::Local { .. } => None,
    };
    let bar = source.filter(|_| io.human).map(super::bar::Bar::start);
    let r: Result<Value, CliError> = door.call(
        Op::Sync {
            peer: peer.to_string(),
        },
        io,
    );
    drop(bar);
    let r = r?;
    if io.human {
        return write!(io.out, "{}", super::human::sync(&r)).map_err(CliError::Output);
    }
    for direction in ["received", "sent"] {
        let mut v = r[direction].clone();
        v["direction"] = json!(direction);
        v["peer"] = r["peer"].clone();
        v["peer_name"] = r["peer_name"].clone();
        print(io.out, &v)?;
    }
    Ok(())
}

/// The name of the laptop at `HOST:PORT`, once that address is a known laptop's (verify's hello
/// has just told this laptop who answers there); `None` for a name or an id.
fn address_name(door: &Door<'_>, peer: &str, io: &mut Io<'_>) -> Option<String> {
    if !peer.contains(':') {
        return None;
    }
    let rows: Vec<Value> = door.call(Op::Peers, io).unwrap_or_default();
    rows.iter()
        .find(|r| {
            r["url"] == peer
                || r["addresses"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == peer))
        })
        .and_then(|r| r["name"].as_str())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// `verify PEER`: a line per table; exit code 1 when something differs.
pub fn verify(door: &Door<'_>, peer: &str, io: &mut Io<'_>) -> Result<(), CliError> {
    let checks: Vec<Value> = door.call(
        Op::Verify {
            peer: peer.to_string(),
        },
        io,
    )?;
    if io.human {
        let name = address_name(door, peer, io);
        let text = super::human::verify(peer, name.as_deref(), &checks);
        write!(io.out, "{text}").map_err(CliError::Output)?;
    } else {
        for c in &checks {
            print(io.out, c)?;
        }
    }
    if checks.iter().all(|c| c["in_sync"] == true) {
        Ok(())
    } else if io.human {
        // "Not in sync with …" is the summary's last line already.
        Err(CliError::Said(Box::new(CliError::Differs(
            peer.to_string(),
        ))))
    } else {
        Err(CliError::Differs(peer.to_string()))
    }
}
