//! Deployment commands: `init` (joining) and `mesh create|enroll|revoke|show`.

use super::{invalid, CliError, Io};
use crate::app::App;
use crate::merge::Edit;
use crate::mesh;
use crate::model;
use crate::store::LocalOp;
use clap::Subcommand;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Subcommands of `mesh`.
#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Create a deployment CA on the coordinator's laptop (which joins it too).
    ///
    /// Writes the CA (certificate and private key) to --out, default mesh-ca.fsca in the data
    /// directory. Keep it safe: whoever holds it can enroll and revoke laptops.
    /// With --join-file, also writes a file that lets any laptop enroll itself (see README).
    ///
    /// Example: fieldsync mesh create --name "Flood response 2026"
    Create {
        /// Deployment name.
        #[arg(long)]
        name: String,
        /// Where to write the CA file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write a self-enrolment join file here (it carries the CA key).
        #[arg(long, value_name = "FILE")]
        join_file: Option<PathBuf>,
    },
    /// Issue a credential file for one laptop, to carry over on a USB stick.
    ///
    /// Example: fieldsync mesh enroll --out laptop7.fsmesh --name laptop7
    Enroll {
        /// Credential file to write.
        #[arg(long)]
        out: PathBuf,
        /// Display name of the laptop.
        #[arg(long, default_value = "")]
        name: String,
        /// Enroll an existing instance id (a laptop that already has data); default: a new one.
        #[arg(long)]
        instance: Option<String>,
        /// The CA file (default: mesh-ca.fsca in the data directory).
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Revoke a lost or stolen laptop: every node that syncs afterwards refuses it.
    ///
    /// INSTANCE is an instance id, or the name of exactly one known peer (`fieldsync peers`).
    ///
    /// Example: fieldsync mesh revoke 6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b --reason stolen
    Revoke {
        /// The instance id (or known peer name) to shut out.
        instance: String,
        /// Why (kept in the signed revocation).
        #[arg(long, default_value = "")]
        reason: String,
        /// The CA file (default: mesh-ca.fsca in the data directory).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Revoke even this instance itself (the coordinator): every other laptop then refuses
        /// it, so it can no longer sync or hand out later revocations over the network.
        #[arg(long)]
        force: bool,
    },
    /// Show the deployment, this node's certificate and the revoked nodes.
    Show,
}

/// `init`: instance details, and joining a deployment with `--mesh FILE`; prints
/// `{"instance","name","owner","contact"}`.
pub fn init(
    app: &App,
    name: Option<String>,
    owner: Option<String>,
    contact: Option<String>,
    file: Option<PathBuf>,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let store = app.store();
    // A laptop that had a name of its own and gets another says so: the name is how the other
    // laptops' `peers` and conflicts show it (a newcomer's second `init --name` renamed the
    // laptop without a word). The host name it starts with is not a name it was given.
    let before = store.instance().name;
    // The deployment joined by this command, said to a person (a newcomer could not tell
    // whether `init --mesh` had joined anything).
    let mut joined: Option<String> = None;
    if let Some(file) = file {
        let path = io.cwd.join(file);
        let cred = match mesh::load_mesh_file(&path).map_err(invalid)? {
            mesh::MeshFile::Credential(c) => c,
            mesh::MeshFile::Join(ca) => {
                let n = name.clone().unwrap_or_else(|| store.instance().name);
                ca.enroll(store.id(), &n).map_err(invalid)?
            }
        };
        // One credential on two laptops makes two data directories share an instance id:
        // refuse one that a peer of this laptop already uses.
        if let Some(peer) = store.peer(&cred.instance)? {
            return Err(CliError::Invalid(format!(
                "{} is the credential of instance {}, which peer \"{}\" already uses: \
                 each laptop needs its own; on the coordinator run `fieldsync mesh \
                 enroll --name NAME --out NEW.fsmesh` and use NEW.fsmesh here",
                path.display(),
                cred.instance,
                peer.name
            )));
        }
        store.adopt_instance(cred.instance)?;
        mesh::save(&store.dir().join(mesh::CREDENTIAL_FILE), &cred).map_err(invalid)?;
        joined = Some(cred.deployment.clone());
        let name = name.or_else(|| (!cred.name.is_empty()).then(|| cred.name.clone()));
        store.set_instance_info(name, owner, contact)?;
        if app.agent().is_some() {
            eprintln!("fieldsync: joined; restart the agent to sync with TLS");
        }
    } else {
        store.set_instance_info(name, owner, contact)?;
    }
    let me = store.instance();
    if io.human {
        let owner = if me.owner.is_empty() {
            String::new()
        } else {
            format!(", owner {}", me.owner)
        };
        let joined = joined.map_or(String::new(), |d| {
            format!(" It joined the deployment \"{d}\": start it with `fieldsync run` to sync.")
        });
        let renamed = if me.name != before && before != crate::store::default_name() {
            format!(" (renamed from {before})")
        } else {
            String::new()
        };
        return writeln!(
            io.out,
            "This laptop is {}{renamed}{owner} (instance {}).{joined}",
            me.name, me.id
        )
        .map_err(CliError::Output);
    }
    let v = serde_json::json!({"instance": me.id, "name": me.name, "owner": me.owner, "contact": me.contact});
    writeln!(io.out, "{v}").map_err(CliError::Output)
}

/// What an agent that started before this laptop joined a deployment needs (this process is
/// that agent: the CLI forwarded the command to it).
fn restart_to_sync(dir: &std::path::Path) -> String {
    let pid = std::process::id();
    format!(
        "the agent (pid {pid}) started before this laptop was in a deployment, so its sync is \
         off: stop it (Ctrl-C where it runs, or `kill {pid}`) and start it again with \
         `fieldsync --data-dir {} run` (and the options it had) to sync",
        dir.display()
    )
}

/// `mesh create|enroll|revoke|show`.
pub fn mesh_command(app: &App, m: MeshCommand, io: &mut Io<'_>) -> Result<(), CliError> {
    let store = app.store();
    let cwd = &io.cwd;
    let default_ca = store.dir().join(mesh::CA_FILE);
    let ca_path = |p: Option<PathBuf>| p.map_or_else(|| default_ca.clone(), |p| cwd.join(p));
    let v = match m {
        MeshCommand::Create {
            name,
            out: file,
            join_file,
        } => {
            let path = ca_path(file);
            if path.exists() {
                return Err(invalid(format!(
                    "{} already exists: a deployment CA is made once, and this laptop holds \
                     one (`fieldsync mesh show` shows its deployment; `fieldsync mesh enroll` adds \
                     laptops to it)",
                    path.display()
                )));
            }
            let ca = mesh::CaFile::create(&name).map_err(invalid)?;
            mesh::save(&path, &ca).map_err(invalid)?;
            if let Some(j) = &join_file {
                mesh::save(&cwd.join(j), &ca.as_join_file()).map_err(invalid)?;
            }
            // The coordinator's laptop is the first member.
            let cred = ca
                .enroll(store.id(), &store.instance().name)
                .map_err(invalid)?;
            mesh::save(&store.dir().join(mesh::CREDENTIAL_FILE), &cred).map_err(invalid)?;
            let mut v = json!({"deployment": name, "mesh_id": ca.mesh_id().map_err(invalid)?,
                   "ca_file": path, "join_file": join_file.map(|j| cwd.join(j)),
                   "instance": store.id()});
            // Run inside an agent that started with sync off (no credential then): it keeps
            // sync off until it starts again, which nothing else would tell the coordinator.
            if app
                .agent()
                .is_some_and(|a| a.live.to_json()["listen"].is_null())
            {
                v["next"] = json!(restart_to_sync(store.dir()));
            }
            if io.human {
                let text = super::human_admin::mesh_created(&v, &store.instance().name);
                return write!(io.out, "{text}").map_err(CliError::Output);
            }
            v
        }
        MeshCommand::Enroll {
            out: file,
            name,
            instance,
            ca,
        } => {
            let (given, ca_file) = (ca.is_some(), ca_path(ca));
            let ca = mesh::load_ca(&ca_file).map_err(|e| not_coordinator(&ca_file, given, e))?;
            let id = match instance {
                Some(s) => model::parse_id(&s)?,
                None => Uuid::new_v4(),
            };
            // Two laptops under one name cannot be told apart in `peers`, `sync NAME` or
            // `mesh revoke NAME`: a name stays with its laptop until that one is revoked.
            if let Some(other) = laptop_named(app, &ca.ca_cert, &name)?.filter(|o| *o != id) {
                return Err(invalid(format!(
                    "a laptop named {name:?} is already enrolled (instance {other}): choose \
                     another --name; if a spare took that laptop's identity over (`restore \
                     --take-over-identity`), enroll that identity again (`fieldsync mesh enroll \
                     --name {name} --instance {other} --out FILE`); if that laptop is lost and \
                     nothing took it over, revoke it first (`fieldsync mesh revoke {other} \
                     --reason replaced`) and enroll again"
                )));
            }
            let cred = ca.enroll(id, &name).map_err(invalid)?;
            let path = cwd.join(file);
            mesh::save(&path, &cred).map_err(invalid)?;
            // Remembered here so `mesh revoke NAME` works before the coordinator ever synced
            // with that laptop (a laptop lost on its way to the field).
            note_enrolled(store.dir(), id, &name)?;
            if io.human {
                let text =
                    super::human::enrolled(&name, &id.to_string(), &path.display().to_string());
                return write!(io.out, "{text}").map_err(CliError::Output);
            }
            json!({"instance": id, "name": name, "credential": path, "deployment": ca.deployment})
        }
        MeshCommand::Revoke {
            instance,
            reason,
            ca,
            force,
        } => {
            let (given, ca_file) = (ca.is_some(), ca_path(ca));
            let ca = mesh::load_ca(&ca_file).map_err(|e| not_coordinator(&ca_file, given, e))?;
            // An instance id, or the name of one laptop known here: a peer, a laptop enrolled
            // here, or this coordinator (`member_named`).
            let revoked = mesh::load_revocations(store, &ca.ca_cert);
            let id = match Uuid::parse_str(instance.trim()) {
                Ok(id) => id,
                Err(_) => member_named(app, &revoked, &instance)?,
            };
            if let Some(at) = revoked.get(&id) {
                // Revoking twice is a retry, not a mistake: said, and nothing changes.
                let name = names_of(app)?.remove(&id).unwrap_or_default();
                let reason = store
                    .get(mesh::REVOCATIONS, &id)?
                    .and_then(|r| r.state.live_fields().get("reason").cloned())
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let v = json!({"revoked": id, "name": name, "at": at, "reason": reason,
                                "already": true});
                if io.human {
                    let text = super::human_admin::revoked(&v, true);
                    return write!(io.out, "{text}").map_err(CliError::Output);
                }
                return writeln!(io.out, "{v}").map_err(CliError::Output);
            }
            if id == store.id() && !force {
                return Err(invalid(format!(
                    "{id} is this instance: revoking it shuts the coordinator itself out of \
                     the deployment (every laptop that hears of it refuses its connections, and \
                     it can no longer spread revocations); run again with --force if you mean it"
                )));
            }
            let fields = ca.revoke(id, &reason).map_err(invalid)?;
            store.write_system(&[LocalOp {
                table: mesh::REVOCATIONS.into(),
                id,
                edit: Edit::Put(fields.clone()),
            }])?;
            let name = names_of(app)?.remove(&id).unwrap_or_default();
            let v = json!({"revoked": id, "name": name, "at": fields.get("revoked_at"),
                           "reason": reason});
            if io.human {
                let text = super::human_admin::revoked(&v, false);
                return write!(io.out, "{text}").map_err(CliError::Output);
            }
            v
        }
        MeshCommand::Show => {
            let cred = mesh::load_credential(store.dir()).map_err(invalid)?;
            let revoked: Vec<Value> = match &cred {
                Some(c) => {
                    let names = names_of(app)?;
                    let mut all: Vec<_> = mesh::load_revocations(store, &c.ca_cert)
                        .into_iter()
                        .collect();
                    all.sort_by_key(|(_, at)| *at);
                    all.into_iter()
                        .map(|(id, at)| {
                            let reason = store
                                .get(mesh::REVOCATIONS, &id)
                                .ok()
                                .flatten()
                                .and_then(|r| r.state.live_fields().get("reason").cloned())
                                .unwrap_or(Value::Null);
                            json!({"instance": id, "name": names.get(&id), "revoked_at": at,
                                   "reason": reason})
                        })
                        .collect()
                }
                None => vec![],
            };
            let v = match cred {
                None => json!({"joined": false, "instance": store.id(),
                               "hint": "join with `fieldsync init --mesh FILE`"}),
                Some(c) => json!({
                    "joined": true, "deployment": c.deployment,
                    "mesh_id": mesh::mesh_id(&c.ca_cert).map_err(invalid)?,
                    "instance": c.instance, "name": store.instance().name,
                    "certificate": mesh::describe_cert(&c.cert),
                    "holds_ca": default_ca.exists(), "revoked": revoked,
                    // False for a credential enrolled before USB bundles: enroll it again.
                    "bundles": c.bundle_key.is_some(),
                }),
            };
            if io.human {
                let text = super::human_admin::mesh_show(&v);
                return write!(io.out, "{text}").map_err(CliError::Output);
            }
            v
        }
    };
    writeln!(io.out, "{v}").map_err(CliError::Output)
}

/// A CA file that cannot be read (`given`: named with --ca). The default one missing means this
/// is not the coordinator's laptop (the one that ran `mesh create`): enrolling and revoking
/// happen there.
fn not_coordinator(ca_file: &Path, given: bool, e: mesh::MeshError) -> CliError {
    // A CA file named with --ca that is missing is just that (the error says so).
    if given || ca_file.exists() {
        return invalid(e);
    }
    invalid(format!(
        "this laptop is not the coordinator: there is no deployment CA at {}. Enroll and \
         revoke laptops on the coordinator's laptop (the one that ran `fieldsync mesh \
         create`); a revocation made there reaches this laptop with the next sync. If you hold \
         the CA file, pass it with --ca FILE",
        ca_file.display()
    ))
}

/// The laptop (not revoked) that goes by `name`: this coordinator itself, a laptop enrolled
/// here, or a known peer. `None` for an empty name.
fn laptop_named(app: &App, ca_cert: &str, name: &str) -> Result<Option<Uuid>, CliError> {
    if name.is_empty() {
        return Ok(None);
    }
    let store = app.store();
    let revoked = mesh::load_revocations(store, ca_cert);
    let me = store.instance();
    let enrolled = read_enrolled(store.dir())?;
    let peers = store.peers()?;
    let candidates = std::iter::once((me.id, me.name.clone()))
        .chain(enrolled)
        .chain(peers.into_iter().map(|p| (p.instance, p.name)));
    for (id, n) in candidates {
        if n == name && !revoked.contains_key(&id) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

fn read_enrolled(dir: &Path) -> Result<std::collections::BTreeMap<Uuid, String>, CliError> {
    mesh::read_enrolled(dir).map_err(|e| match e {
        mesh::MeshError::Invalid(m) => invalid(m),
        other => CliError::Io(other.to_string()),
    })
}

fn note_enrolled(dir: &Path, id: Uuid, name: &str) -> Result<(), CliError> {
    let mut all = read_enrolled(dir)?;
    all.insert(id, name.to_string());
    let path = dir.join(mesh::ENROLLED_FILE);
    let bytes = serde_json::to_vec_pretty(&all).expect("a map of strings");
    crate::fsutil::write_private_atomic(&path, &bytes)
        .map_err(|e| CliError::Io(format!("{}: {e}", path.display())))
}

/// Every laptop this one knows by name, by instance: itself, the laptops enrolled here, and its
/// peers (a peer's own name wins over the one it was enrolled under).
fn names_of(app: &App) -> Result<std::collections::HashMap<Uuid, String>, CliError> {
    let store = app.store();
    let mut names: std::collections::HashMap<Uuid, String> =
        read_enrolled(store.dir())?.into_iter().collect();
    for p in store.peers()? {
        if !p.name.is_empty() {
            names.insert(p.instance, p.name);
        }
    }
    let me = store.instance();
    names.insert(me.id, me.name);
    Ok(names)
}

/// The laptop `mesh revoke NAME` means: the one known here under that name (exactly, else in
/// any letter case) that is not revoked yet, else the revoked one (revoking twice is a retry).
/// A name known nowhere is answered with the closest known name among the laptops not revoked
/// (never a revoked one, and never a guess: the coordinator types the name again).
fn member_named(
    app: &App,
    revoked: &std::collections::HashMap<Uuid, chrono::DateTime<chrono::Utc>>,
    name: &str,
) -> Result<Uuid, CliError> {
    let names = names_of(app)?;
    let name = name.trim();
    let mut ids: Vec<Uuid> = names
        .iter()
        .filter(|(_, n)| n.as_str() == name)
        .map(|(id, _)| *id)
        .collect();
    if ids.is_empty() {
        let lower = name.to_lowercase();
        ids = names
            .iter()
            .filter(|(_, n)| n.to_lowercase() == lower)
            .map(|(id, _)| *id)
            .collect();
    }
    let live: Vec<Uuid> = ids
        .iter()
        .copied()
        .filter(|id| !revoked.contains_key(id))
        .collect();
    match (live.as_slice(), ids.first()) {
        ([one], _) => Ok(*one),
        ([], Some(gone)) => Ok(*gone),
        ([], None) => {
            let known: Vec<&str> = names
                .iter()
                .filter(|(id, _)| !revoked.contains_key(id))
                .map(|(_, n)| n.as_str())
                .collect();
            Err(CliError::NotFound(format!(
                "no laptop is known here as {name:?}{}",
                crate::app::peers::name_hint_among(&known, name)
            )))
        }
        (many, _) => Err(invalid(format!(
            "{} laptops are known as {name:?}: revoke by instance id ({})",
            many.len(),
            many.iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
