//! `fieldsync doctor`: is this laptop ready to sync, and if not, what to do about it.
//!
//! Prints one JSON line per check, `{"check","ok","detail","fix"}` (`fix` is null when the
//! check passed; for people one line per check, see `cli::human_admin::doctor`), and fails with exit code 1 if any check failed. When a running agent holds
//! the database, the checks run inside the agent (through the control endpoint), which can
//! answer for the database and the port it holds.

use crate::agent::LiveStatus;
use crate::cli::CliError;
use crate::config::Config;
use crate::control;
use crate::mesh;
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// One check's result, printed as a JSON line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// What was checked.
    pub check: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about a failure (null when it passed).
    pub fix: Option<String>,
}

fn pass(check: &'static str, detail: impl Into<String>) -> Check {
    Check {
        check,
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        check,
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// `fieldsync doctor` from the command line: opens the database itself, or asks the running
/// agent that holds it to run the checks.
pub fn run(
    data_dir: Option<PathBuf>,
    out: &mut dyn Write,
    rt: &tokio::runtime::Handle,
    human: bool,
) -> Result<(), CliError> {
    let dir = match crate::cli::resolve_data_dir(data_dir) {
        Ok(d) => d,
        Err(e) => {
            let mut checks = vec![fail(
                "data_dir",
                e.to_string(),
                "pass --data-dir DIR or set FIELDSYNC_DIR",
            )];
            checks.extend(environment_checks(&Config::default(), None, false));
            return report(&checks, out, human);
        }
    };
    let mut checks = dir_checks(&dir);
    // A directory without a database (a mistyped --data-dir, a laptop not set up yet) is
    // reported, never given a new database: only `init`, `run` and `restore` make one.
    if !crate::cli::has_database(&dir) {
        checks.push(fail(
            "database",
            format!("no database in {} yet", dir.display()),
            "run `fieldsync init` (it creates the data directory and this laptop's identity)",
        ));
        checks.push(credential_check(&dir, None));
        checks.extend(environment_checks(&Config::default(), None, false));
        return report(&checks, out, human);
    }
    let config = match Config::load(&dir) {
        Ok(c) => {
            checks.push(pass("config", config_detail(&dir)));
            c
        }
        Err(e) => {
            checks.push(fail(
                "config",
                e.to_string(),
                "correct fieldsync.toml in the data directory (see README, Configuration)",
            ));
            Config::default()
        }
    };
    match Store::open(&dir, config.clone()) {
        Ok(store) => {
            checks.push(pass("database", database_detail(&store)));
            checks.push(credential_check(&dir, Some(store.id())));
            checks.push(identity_check(&store));
            checks.push(revocation_check(&store));
            drop(store);
            checks.extend(environment_checks(&config, None, has_config_file(&dir)));
        }
        Err(StoreError::Locked(_)) => {
            let req = control::RunRequest {
                token: String::new(),
                // The agent's stdout is not the terminal: it is told how to print.
                args: if human {
                    vec!["doctor".into(), "--human".into()]
                } else {
                    vec!["doctor".into()]
                },
                stdin: None,
                cwd: std::env::current_dir().unwrap_or_default(),
            };
            match rt.block_on(control::forward(&dir, req)) {
                Ok(reply) => {
                    // The agent's view of the same data directory is the answer.
                    out.write_all(reply.stdout.as_bytes())
                        .map_err(CliError::Output)?;
                    return match reply.code {
                        0 => Ok(()),
                        code => Err(CliError::Forwarded {
                            code,
                            message: reply.stderr,
                        }),
                    };
                }
                Err(e) => {
                    let agent = control::read_agent_file(&dir).ok();
                    let pid = agent
                        .as_ref()
                        .map_or_else(|| "unknown".to_string(), |a| a.pid.to_string());
                    checks.push(fail(
                        "database",
                        format!(
                            "the database is held by another process that does not answer \
                             ({e})"
                        ),
                        format!(
                            "if `fieldsync run` is not supposed to be running, stop the process \
                             holding it (agent.json names pid {pid}) and run doctor again"
                        ),
                    ));
                    let listen = agent.as_ref().map(|a| a.listen.clone());
                    checks.push(credential_check(&dir, agent.map(|a| a.instance)));
                    checks.extend(environment_checks(&config, listen, has_config_file(&dir)));
                }
            }
        }
        Err(e) => {
            let fix = match e {
                StoreError::Damaged(_) | StoreError::LostWrites { .. } => format!(
                    "run `fieldsync repair --data-dir {}`: it moves the damaged database aside \
                     (kept in damaged/), restores the newest automatic snapshot, and the next \
                     syncs bring back what peers hold",
                    dir.display()
                ),
                StoreError::NewerFormat { .. } => {
                    "use the newer fieldsync that wrote this data directory".to_string()
                }
                // Not damage: a restore would not help, the owner or mode is the fix.
                StoreError::Io { ref source, .. }
                | StoreError::Sled(sled::Error::Io(ref source))
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    crate::cli::problems::io_message(source.kind(), &dir).unwrap_or_default()
                }
                _ => "if it is damaged, move the data directory aside and `fieldsync restore` \
                      the latest backup into a new one"
                    .to_string(),
            };
            checks.push(fail(
                "database",
                format!("the database does not open: {e}"),
                fix,
            ));
            checks.push(credential_check(&dir, None));
            checks.extend(environment_checks(&config, None, has_config_file(&dir)));
        }
    }
    report(&checks, out, human)
}

/// `fieldsync doctor` with the store already open (inside the agent, `live` is its status).
pub fn run_with_store(
    store: &Store,
    live: Option<&LiveStatus>,
    out: &mut dyn Write,
    human: bool,
) -> Result<(), CliError> {
    let dir = store.dir();
    let mut checks = dir_checks(dir);
    checks.push(pass("config", config_detail(dir)));
    let live = live.map(|l| l.to_json());
    let db = match &live {
        Some(l) => format!(
            "held by the running agent (pid {}), which answers; {}",
            l["pid"],
            database_detail(store)
        ),
        None => database_detail(store),
    };
    checks.push(pass("database", db));
    checks.push(credential_check(dir, Some(store.id())));
    checks.push(identity_check(store));
    checks.push(revocation_check(store));
    let agent_listen = live
        .as_ref()
        .and_then(|l| l["listen"].as_str().map(str::to_string));
    checks.extend(environment_checks(
        store.config(),
        agent_listen,
        has_config_file(dir),
    ));
    report(&checks, out, human)
}

/// `status`'s word on this laptop's credential: the revocation when the deployment revoked
/// this laptop (a credential that is still within its dates is worthless then: every peer
/// refuses it), else [`credential_check`].
pub(crate) fn credential_status(store: &Store) -> Check {
    let revoked = revocation_check(store);
    if revoked.ok {
        credential_check(store.dir(), Some(store.id()))
    } else {
        revoked
    }
}

/// Fails when the deployment revoked this laptop: its own signed revocation reached it, or a
/// peer refused its certificate as revoked (`revoked-notice.json`).
fn revocation_check(store: &Store) -> Check {
    const FIX: &str = "ask the coordinator for a new credential (`fieldsync mesh enroll --name \
                       NAME --out NEW.fsmesh`) and join with it from a new data directory: \
                       `fieldsync --data-dir NEWDIR init --mesh NEW.fsmesh`";
    if let Some(r) = crate::mesh::own_revocation(store) {
        return fail("revocation", crate::app::peers::revoked_fact(Some(&r)), FIX);
    }
    if let Some((at, peer)) = crate::mesh::refused_as_revoked(store.dir()) {
        return fail(
            "revocation",
            format!(
                "this laptop was revoked by the deployment: the peer at {peer} refused its \
                 certificate as revoked on {}",
                at.format("%Y-%m-%d %H:%M UTC")
            ),
            FIX,
        );
    }
    pass(
        "revocation",
        "this laptop is not revoked as far as it knows",
    )
}

/// Fails when an instance id was seen used by two data directories (a peer we refuse, or
/// this laptop refused by a peer), with the fix.
fn identity_check(store: &Store) -> Check {
    match crate::sync::identity_problems(store) {
        Ok(p) if p.is_empty() => pass(
            "identity",
            format!(
                "no instance id seen in use by two data directories (incarnation {})",
                store.incarnation().id
            ),
        ),
        Ok(p) => {
            // In words with the laptop's name; the fix for the first (one pair at a time).
            use crate::app::identity::{copied_identity_fix, copied_identity_problem};
            let me = store.id();
            let detail = p
                .iter()
                .map(|x| copied_identity_problem(&x.name, x.instance, x.instance == me))
                .collect::<Vec<_>>()
                .join("; ");
            fail("identity", detail, copied_identity_fix(&p[0].name))
        }
        Err(e) => fail(
            "identity",
            format!("cannot read the peer list: {e}"),
            "run `fieldsync doctor` again; if it persists, restore the latest backup",
        ),
    }
}

/// Prints the checks (JSON lines, or for people one line each with the fix) and fails with
/// the failed checks' names.
fn report(checks: &[Check], out: &mut dyn Write, human: bool) -> Result<(), CliError> {
    if human {
        let text = crate::cli::human_admin::doctor(checks);
        write!(out, "{text}").map_err(CliError::Output)?;
    } else {
        for c in checks {
            let line = serde_json::to_string(c).expect("plain struct");
            writeln!(out, "{line}").map_err(CliError::Output)?;
        }
    }
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.check).collect();
    if failed.is_empty() {
        Ok(())
    } else if human {
        // The summary above said it; stderr repeating it printed it twice on a terminal.
        Err(CliError::Said(Box::new(CliError::Unhealthy(
            failed.join(", "),
        ))))
    } else {
        Err(CliError::Unhealthy(failed.join(", ")))
    }
}

/// True when `dir` holds a fieldsync.toml (otherwise every setting is its default).
fn has_config_file(dir: &Path) -> bool {
    dir.join(crate::config::CONFIG_FILE).exists()
}

fn config_detail(dir: &Path) -> String {
    let path = dir.join(crate::config::CONFIG_FILE);
    if has_config_file(dir) {
        format!("{} is valid", path.display())
    } else {
        "no fieldsync.toml: defaults apply".into()
    }
}

fn database_detail(store: &Store) -> String {
    let info = store.instance();
    let (mut live, mut tables) = (0, 0);
    if let Ok(t) = store.tables() {
        // As `status` and `tables` count: fieldsync's own tables (revocations) left out.
        let users = t
            .iter()
            .filter(|(name, _)| !name.starts_with(crate::model::SYSTEM_PREFIX));
        tables = users.clone().count();
        live = users.map(|(_, c)| c.live).sum::<u64>();
    }
    let records = if live == 1 { "record" } else { "records" };
    let tables_word = if tables == 1 { "table" } else { "tables" };
    format!(
        "opens: instance {} ({}), {live} live {records} in {tables} {tables_word}",
        info.id, info.name
    )
}

/// Exists, is a directory we can write in, is private to its owner, who is us.
fn dir_checks(dir: &Path) -> Vec<Check> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => {
            return vec![fail(
                "data_dir",
                format!("{} is not a directory", dir.display()),
                "move that file away, or pass --data-dir with a directory",
            )]
        }
        Err(e) => {
            return vec![fail(
                "data_dir",
                format!("{}: {e}", dir.display()),
                "run `fieldsync init` to create it, or pass --data-dir with the right directory",
            )]
        }
    };
    let probe = dir.join(format!(".doctor-probe-{}", std::process::id()));
    let writable = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map(|_| std::fs::remove_file(&probe));
    let mut out = vec![match writable {
        Ok(_) => pass(
            "data_dir",
            format!("{} exists and is writable", dir.display()),
        ),
        Err(e) => fail(
            "data_dir",
            format!("{} is not writable: {e}", dir.display()),
            "run fieldsync as the user who owns the data directory, or fix its owner \
             (chown -R USER DIR)",
        ),
    }];
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = meta.permissions().mode() & 0o777;
    let me = effective_uid();
    out.push(if me.is_some_and(|u| u != meta.uid()) {
        fail(
            "data_dir_permissions",
            format!(
                "{} belongs to uid {}, not to you (uid {}): files you create there may be \
                 unreadable for the agent",
                dir.display(),
                meta.uid(),
                me.unwrap_or_default()
            ),
            "run fieldsync as the directory's owner (e.g. `sudo -u fieldsync fieldsync ...` \
             for the system service)",
        )
    } else if mode & 0o077 != 0 {
        fail(
            "data_dir_permissions",
            format!(
                "{} has mode {mode:04o}: other users of this computer can read the records",
                dir.display()
            ),
            format!(
                "chmod 700 {} (on a FAT or exFAT USB stick the mount decides; then this can \
                 be ignored)",
                dir.display()
            ),
        )
    } else {
        pass(
            "data_dir_permissions",
            format!("mode {mode:04o}, owned by you"),
        )
    });
    out
}

/// The effective uid, from /proc (no libc call needed for one number).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Present, for this instance, and valid today (node certificate and deployment CA). Also
/// `status`'s `credential` (a laptop restored from a backup without keys has none, and its
/// coordinator should not need `doctor` to find out).
pub(crate) fn credential_check(dir: &Path, instance: Option<Uuid>) -> Check {
    let cred = match mesh::load_credential(dir) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return fail(
                "credential",
                format!(
                    "no {} in {}: this laptop has not joined a deployment, and sync is refused \
                     without one",
                    mesh::CREDENTIAL_FILE,
                    dir.display()
                ),
                "ask the coordinator for a credential file (`fieldsync mesh enroll`) and run \
                 `fieldsync init --mesh FILE`",
            )
        }
        Err(e) => {
            return fail(
                "credential",
                e.to_string(),
                "ask the coordinator for a new credential and run `fieldsync init --mesh FILE`",
            )
        }
    };
    if let Some(id) = instance.filter(|id| *id != cred.instance) {
        return fail(
            "credential",
            format!(
                "the credential is for instance {}, but this data directory is instance {id}",
                cred.instance
            ),
            format!(
                "on the coordinator's laptop: `fieldsync mesh enroll --instance {id} --out \
                 FILE`; here: `fieldsync init --mesh FILE`"
            ),
        );
    }
    let now = Utc::now();
    let mut until = None;
    for (what, pem) in [
        ("certificate", &cred.cert),
        ("deployment CA", &cred.ca_cert),
    ] {
        match validity(pem) {
            Err(e) => {
                return fail(
                    "credential",
                    format!("the {what} in the credential cannot be read: {e}"),
                    "ask the coordinator for a new credential",
                )
            }
            Ok((from, _)) if now < from => {
                return fail(
                    "credential",
                    format!("the {what} is not valid before {from} (the clock says {now})"),
                    "check the system clock; if it is right, ask the coordinator for a new \
                     credential",
                )
            }
            Ok((_, to)) if now > to => {
                return fail(
                    "credential",
                    format!("the {what} expired on {to}"),
                    "ask the coordinator for a new credential (`fieldsync mesh enroll`)",
                )
            }
            Ok((_, to)) => until = Some(until.map_or(to, |u: DateTime<Utc>| u.min(to))),
        }
    }
    pass(
        "credential",
        format!(
            "deployment {:?}, instance {}, valid until {}",
            cred.deployment,
            cred.instance,
            until.map_or_else(String::new, |u| u.to_rfc3339())
        ),
    )
}

fn validity(pem: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let cert = p.parse_x509().map_err(|e| e.to_string())?;
    let v = cert.validity();
    let t = |a: &x509_parser::time::ASN1Time| {
        DateTime::from_timestamp(a.timestamp(), 0).ok_or_else(|| "date out of range".to_string())
    };
    Ok((t(&v.not_before)?, t(&v.not_after)?))
}

/// Checks that do not need the database: multicast, the sync port, the clock.
/// `from_file`: the config was read from fieldsync.toml (not defaults), so the checks name
/// the file as the source of its addresses only then and agree with the config check.
fn environment_checks(
    config: &Config,
    agent_listen: Option<String>,
    from_file: bool,
) -> Vec<Check> {
    vec![
        multicast_check(config),
        port_check(&config.sync.listen, agent_listen, from_file),
        clock_check(Utc::now()),
    ]
}

fn multicast_check(config: &Config) -> Check {
    if !config.discovery.enabled {
        // The list in words, not Rust's `["a", "b"]`.
        let peers = if config.sync.peers.is_empty() {
            "none (add them under [sync] peers)".to_string()
        } else {
            config.sync.peers.join(", ")
        };
        return pass(
            "multicast",
            format!("mDNS discovery is off in fieldsync.toml; static peers: {peers}"),
        );
    }
    let ifaces = crate::discovery::multicast_interfaces();
    if ifaces.is_empty() {
        fail(
            "multicast",
            "no network interface is up with multicast: other laptops will not be found \
             automatically",
            "connect to the team's network (Wi-Fi or cable); where multicast is blocked, list \
             peers under [sync] peers in fieldsync.toml",
        )
    } else {
        pass(
            "multicast",
            format!("interfaces with multicast: {}", ifaces.join(", ")),
        )
    }
}

fn port_check(listen: &str, agent_listen: Option<String>, from_file: bool) -> Check {
    if let Some(addr) = agent_listen {
        // The agent's own address (agent.json / its live status), which differs from the
        // configured one when it was started with --listen or found that port taken.
        let configured = match (addr == listen, from_file) {
            (true, _) => String::new(),
            (false, true) => {
                format!(" (fieldsync.toml says {listen}; the agent was started on another address)")
            }
            (false, false) => format!(
                " (no fieldsync.toml, so the default is {listen}; the agent was started on \
                 another address)"
            ),
        };
        return pass(
            "port",
            format!("{addr}: the port of this data directory's running agent{configured}"),
        );
    }
    match std::net::TcpListener::bind(listen) {
        Ok(_) => pass("port", format!("{listen} is free for `fieldsync run`")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => fail(
            "port",
            format!("{listen} is in use by another program, so `fieldsync run` cannot start"),
            "stop that program (`ss -ltnp` shows which; another fieldsync agent with a \
             different data directory?), or set another address under [sync] listen in \
             fieldsync.toml",
        ),
        Err(e) => fail(
            "port",
            format!("cannot listen on {listen}: {e}"),
            "set a usable address under [sync] listen in fieldsync.toml",
        ),
    }
}

/// Latest year a field laptop's clock can plausibly show, relative to the build.
const PLAUSIBLE_YEARS_AFTER_BUILD: i64 = 30;

fn clock_check(now: DateTime<Utc>) -> Check {
    let built = DateTime::from_timestamp(crate::build_info::build_epoch(), 0).unwrap_or_default();
    // A day of slack: the build date is the commit date, made on someone else's clock.
    let too_early = now < built - chrono::Duration::days(1);
    let too_late = now > built + chrono::Duration::days(365 * PLAUSIBLE_YEARS_AFTER_BUILD);
    let fix = "set the date and time (`timedatectl set-time`, or the desktop's settings): a \
               wrong clock makes edits look older or newer than they are, so the wrong one wins";
    if too_early {
        fail(
            "clock",
            format!(
                "the system time {} is before this program was built ({})",
                now.to_rfc3339(),
                built.date_naive()
            ),
            fix,
        )
    } else if too_late {
        fail(
            "clock",
            format!(
                "the system time {} is implausibly far in the future",
                now.to_rfc3339()
            ),
            fix,
        )
    } else {
        pass(
            "clock",
            format!(
                "system time {} (built {})",
                now.to_rfc3339(),
                built.date_naive()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_before_the_build_or_decades_after_it_fails() {
        let built = DateTime::from_timestamp(crate::build_info::build_epoch(), 0).unwrap();
        assert!(clock_check(Utc::now()).ok);
        assert!(!clock_check(built - chrono::Duration::days(30)).ok);
        assert!(!clock_check(DateTime::from_timestamp(0, 0).unwrap()).ok);
        assert!(!clock_check(built + chrono::Duration::days(365 * 40)).ok);
    }

    /// With discovery off, the static peers are named as a person writes a list, not as
    /// Rust's `["…", "…"]`.
    #[test]
    fn discovery_off_lists_the_static_peers_in_words() {
        let mut config = Config::default();
        config.discovery.enabled = false;
        config.sync.peers = vec!["10.0.0.7:7437".into(), "laptop-b.local:7437".into()];
        let c = multicast_check(&config);
        assert!(c.ok, "{}", c.detail);
        assert!(
            c.detail
                .ends_with("static peers: 10.0.0.7:7437, laptop-b.local:7437"),
            "{}",
            c.detail
        );
        config.sync.peers.clear();
        let c = multicast_check(&config);
        assert!(
            c.detail
                .ends_with("static peers: none (add them under [sync] peers)"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn a_port_in_use_fails_and_a_free_one_passes() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap().to_string();
        let c = port_check(&addr, None, false);
        assert!(!c.ok && c.fix.is_some(), "{c:?}");
        drop(held);
        assert!(port_check(&addr, None, false).ok);
        assert!(port_check(&addr, Some(addr.clone()), false).ok);
        // The running agent's port is the one named, not the configured one.
        let c = port_check("0.0.0.0:7437", Some("127.0.0.1:45123".into()), true);
        assert!(c.ok, "{c:?}");
        assert!(
            c.detail.starts_with(
                "127.0.0.1:45123: the port of this data directory's running \
                                  agent (fieldsync.toml says 0.0.0.0:7437"
            ),
            "{c:?}"
        );
        // Without a fieldsync.toml (the config check says "defaults apply") the port check
        // does not claim the file says anything.
        let c = port_check("0.0.0.0:7437", Some("127.0.0.1:45123".into()), false);
        assert!(c.ok, "{c:?}");
        assert!(
            !c.detail.contains("fieldsync.toml says")
                && c.detail
                    .contains("no fieldsync.toml, so the default is 0.0.0.0:7437"),
            "{c:?}"
        );
    }
}
