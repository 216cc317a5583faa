//! Administration commands: `status`, `peers`, `generate`, `backup`, `restore`.

use super::{invalid, open_input, print, CliError, Door, Io};
use crate::app::App;
use crate::control::Op;
use crate::mesh;
use clap::Subcommand;
use serde_json::{json, Value};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

/// Subcommands of `generate` (the formats of shared/gen.py).
#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Person records, one {"table","id","fields"} object a line, about 330 bytes each.
    ///
    /// The same count and seed always give the same bytes.
    ///
    /// Example: fieldsync generate records --count 100000 --seed 42 > p100k.jsonl
    Records {
        /// How many records.
        #[arg(long)]
        count: u64,
        /// Seed of everything generated.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Edits of a records file for `fieldsync apply`: COUNT puts, then deletes of other ids.
    ///
    /// Each put is the whole record with status, notes and updated_by changed. Ids are chosen
    /// with --ids-seed, so two op files with the same --ids-seed and different --seed edit the
    /// same records differently (for concurrent-edit and conflict tests).
    ///
    /// Example: fieldsync generate ops --from p100k.jsonl --count 1000 --seed 7 > ops.jsonl
    Ops {
        /// The records file to edit (`-` for stdin).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// How many puts.
        #[arg(long)]
        count: usize,
        /// Seed of the new values.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seed that picks the ids (default: --seed).
        #[arg(long)]
        ids_seed: Option<u64>,
        /// How many deletes (default: max(1, COUNT/50)).
        #[arg(long)]
        deletes: Option<usize>,
    },
}

/// `status`: who am I, counts, conflicts, peers, the agent (and its API URL) when running.
pub fn status(door: &Door<'_>, io: &mut Io<'_>) -> Result<(), CliError> {
    let v: serde_json::Value = door.call(Op::Status, io)?;
    if io.human {
        let text = super::human::status(&v, chrono::Utc::now());
        return write!(io.out, "{text}").map_err(CliError::Output);
    }
    print(io.out, &v)
}

/// `held list | approve ID | reject ID`: deletes held by the mass-delete brake.
pub fn held(app: &App, cmd: super::HeldCommand, io: &mut Io<'_>) -> Result<(), CliError> {
    use super::HeldCommand;
    let v = match cmd {
        HeldCommand::List => {
            let holds = app.holds()?;
            if io.human {
                let text = super::human::held(&holds, chrono::Utc::now());
                return write!(io.out, "{text}").map_err(CliError::Output);
            }
            // One JSON array (the HTTP API has them in `/v1/warnings`' `held`).
            return print(
                io.out,
                &serde_json::to_value(holds).map_err(super::invalid)?,
            );
        }
        HeldCommand::Approve { id } => app.approve_hold(id)?,
        HeldCommand::Reject { id } => app.reject_hold(id)?,
    };
    if io.human {
        return write!(io.out, "{}", super::human::hold_decided(&v)).map_err(CliError::Output);
    }
    let v = serde_json::to_value(v);
    print(io.out, &v.map_err(super::invalid)?)
}

/// `import-keys list|drop`.
pub fn import_keys(
    app: &App,
    cmd: super::ImportKeysCommand,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    use super::ImportKeysCommand;
    match cmd {
        ImportKeysCommand::List => {
            let keys = app.import_keys()?;
            if io.human {
                let text = if keys.is_empty() {
                    "No import keys: no table was imported with --key.\n".to_string()
                } else {
                    let mut t = String::from(
                        "Import keys (every laptop keeps each unique in its table):\n",
                    );
                    for (table, key) in &keys {
                        t += &format!("  {table}: {}\n", key.join(", "));
                    }
                    t
                };
                return write!(io.out, "{text}").map_err(CliError::Output);
            }
            let v: Vec<serde_json::Value> = keys
                .iter()
                .map(|(table, key)| serde_json::json!({"table": table, "key": key}))
                .collect();
            print(io.out, &serde_json::json!(v))
        }
        ImportKeysCommand::Drop { table, key } => {
            app.drop_import_key(&table, &key)?;
            let key = key.join(",");
            if io.human {
                return writeln!(
                    io.out,
                    "{key} is no longer an import key of {table}: records of {table} may share \
                     its values again, here now and on every other laptop once it syncs. Name \
                     clashes already logged for it stay in `fieldsync conflicts` until settled."
                )
                .map_err(CliError::Output);
            }
            print(
                io.out,
                &serde_json::json!({"table": table, "key": key.split(',').collect::<Vec<_>>(), "dropped": true}),
            )
        }
    }
}

/// `peers`: every peer instance (a JSON array), or a table for people.
pub fn peers(door: &Door<'_>, io: &mut Io<'_>) -> Result<(), CliError> {
    let rows: Vec<serde_json::Value> = door.call(Op::Peers, io)?;
    if io.human {
        // Refused connection attempts are the agent's (in memory), shown under the table.
        let status: serde_json::Value = door.call(Op::Status, io)?;
        let refused = &status["agent"]["refused_recent"];
        let agent = status["agent"]["running"] == true;
        let text = super::human::peers(&rows, refused, agent, chrono::Utc::now());
        return write!(io.out, "{text}").map_err(CliError::Output);
    }
    // One JSON array, as `GET /v1/peers` answers.
    print(io.out, &serde_json::Value::Array(rows))
}

fn backup_error(e: crate::backup::BackupError) -> CliError {
    use crate::backup::BackupError;
    match e {
        BackupError::Io { .. } => CliError::Io(e.to_string()),
        BackupError::Invalid { .. } => CliError::Invalid(e.to_string()),
        BackupError::Store(e) => CliError::Store(e),
    }
}

/// `repair`: moves a damaged database aside and restores the newest automatic snapshot.
pub fn repair(
    dir: &Path,
    config: crate::config::Config,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use crate::repair::RepairError;
    let r = crate::repair::repair(dir, config).map_err(|e| match e {
        RepairError::NotDamaged(_) => CliError::Invalid(e.to_string()),
        RepairError::NoDatabase(_) => CliError::NotFound(e.to_string()),
        RepairError::Store(e) => CliError::Store(e),
        RepairError::Backup(e) => backup_error(e),
    })?;
    let unusable: Vec<Value> = r
        .unusable_snapshots
        .iter()
        .map(|(p, why)| json!({"file": p, "error": why}))
        .collect();
    let v = json!({
        "repaired": dir, "damaged_database_moved_to": r.moved_to, "damage": r.damage,
        "restored_snapshot": r.snapshot, "unusable_snapshots": unusable,
        "instance": r.instance, "incarnation": r.incarnation,
        "count": r.live_records, "sha256": r.sha256,
        "next": if r.snapshot.is_some() {
            "start the agent (`fieldsync run`) and let it sync with its peers before making \
             changes: the next syncs bring back what peers hold"
        } else {
            "no automatic snapshot was usable: the database is empty; start the agent \
             (`fieldsync run`) and everything comes back from peers"
        },
    });
    writeln!(out, "{v}").map_err(CliError::Output)
}

/// `backup FILE`.
pub fn backup(
    app: &App,
    file: &Path,
    passphrase_file: Option<&Path>,
    no_keys: bool,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    use crate::backup_keys as keys;
    let (store, file) = (app.store(), &io.cwd.join(file));
    let dir = store.dir();
    let (h, sealed_keys) = match passphrase_file {
        None if !no_keys && keys::holds_private_keys(dir) => {
            return Err(CliError::Invalid(format!(
                "{} holds this laptop's private keys ({}): pass --passphrase-file FILE to include them encrypted, or --no-keys to back up the data without them",
                dir.display(),
                keys::KEY_FILES[..2]
                    .iter()
                    .filter(|f| dir.join(f).exists())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        None => (
            crate::backup::write_backup(store, file).map_err(backup_error)?,
            Vec::new(),
        ),
        Some(pf) => {
            let pass = keys::read_passphrase(&io.cwd.join(pf)).map_err(invalid)?;
            let files = keys::key_files(dir).map_err(|e| CliError::Io(e.to_string()))?;
            // The plain backup exists only inside the (private) data directory, briefly.
            let tmp = dir.join(".backup-plain.tmp");
            let h = crate::backup::write_backup(store, &tmp).map_err(backup_error);
            let sealed = h.as_ref().ok().map(|_| keys::seal(&tmp, &files, pass, file));
            let _ = std::fs::remove_file(&tmp);
            let h = h?;
            sealed
                .expect("sealed after a written backup")
                .map_err(|e| CliError::Io(e.to_string()))?;
            (h, files.into_keys().collect())
        }
    };
    let bytes = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let v = json!({
        "backup": file, "bytes": bytes, "instance": h.instance, "name": h.instance_name,
        "created_at": h.created_at.to_rfc3339(), "feed_seq": h.feed_seq,
        "count": h.live_records, "sha256": h.sha256, "entries": h.counts,
        "encrypted": passphrase_file.is_some(), "keys": sealed_keys,
    });
    let out = &mut *io.out;
    if io.human {
        let own = super::records::own_records(store, |_| true)?;
        let text = super::human_admin::backed_up(&v, own);
        return write!(out, "{text}").map_err(CliError::Output);
    }
    writeln!(out, "{v}").map_err(CliError::Output)
}

/// `restore FILE` (refused inside a running agent).
pub fn restore(
    app: &App,
    file: &Path,
    force: bool,
    take_over: bool,
    passphrase_file: Option<&Path>,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    use crate::backup_keys as keys;
    if app.agent().is_some() {
        // This runs inside the agent (the CLI forwarded the command), so its pid is ours.
        let pid = std::process::id();
        return Err(CliError::Io(format!(
            "restore replaces the database, and the agent (pid {pid}) is running on it: stop \
             the agent first (Ctrl-C where it was started, or `kill {pid}`), then restore again"
        )));
    }
    let (store, file) = (app.store(), &io.cwd.join(file));
    let sealed = keys::is_sealed(file).map_err(invalid)?;
    let (r, key_files) = if sealed {
        let pf = passphrase_file.ok_or_else(|| {
            CliError::Invalid(format!(
                "{} is encrypted (it holds keys): pass --passphrase-file FILE with its \
                 passphrase",
                file.display()
            ))
        })?;
        let pass = keys::read_passphrase(&io.cwd.join(pf)).map_err(invalid)?;
        let tmp = store.dir().join(".restore-plain.tmp");
        let files = keys::open(file, pass, &tmp).map_err(|e| match e {
            keys::KeysError::Io { .. } => CliError::Io(e.to_string()),
            other => invalid(other),
        })?;
        let r = crate::backup::restore(store, &tmp, take_over, force).map_err(backup_error);
        let _ = std::fs::remove_file(&tmp);
        (r?, files)
    } else {
        let r = crate::backup::restore(store, file, take_over, force).map_err(backup_error)?;
        (r, Default::default())
    };
    let out = &mut *io.out;
    let mut warnings = Vec::new();
    let mut keys_restored = Vec::new();
    for (name, text) in &key_files {
        let path = store.dir().join(name);
        if path.exists() {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                warnings.push(format!(
                    "kept this laptop's own {name}; the backup's differs (left out)"
                ));
            }
            continue;
        }
        // A credential belongs to one instance: restored only onto that instance.
        if name == mesh::CREDENTIAL_FILE {
            let owner = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v["instance"].as_str().map(str::to_string));
            if owner.as_deref() != Some(r.report.instance.to_string().as_str()) {
                warnings.push(
                    "the backup's credential is for the instance it was taken from: left out \
                     (use --take-over-identity to become that laptop)"
                        .to_string(),
                );
                continue;
            }
        }
        crate::fsutil::write_private_atomic(&path, text.as_bytes())
            .map_err(|e| CliError::Io(format!("{}: {e}", path.display())))?;
        keys_restored.push(name.clone());
    }
    // Said once, when it can still be acted on (trial 10: one boot of the old disk after a
    // take-over got both refused for good, which is right, since neither can be trusted).
    if r.report.took_over_identity {
        let name = if r.header.instance_name.is_empty() {
            "the laptop this backup was taken from".to_string()
        } else {
            r.header.instance_name.clone()
        };
        warnings.push(format!(
            "this laptop is now {name}: {name}'s old disk must never run fieldsync again (wipe \
             it); if it does, the deployment refuses both laptops for good and this one needs \
             a new identity"
        ));
    }
    if r.report.discarded_own_changes {
        warnings.push(
            "this laptop's own changes that were not in the backup are gone here; peers that \
             received them send them back on the next sync"
                .to_string(),
        );
    }
    match mesh::load_credential(store.dir()) {
        // Taken over from a backup without keys (or whose credential was left out): said now,
        // with the way back, rather than at the first refused sync.
        Ok(None) if r.report.took_over_identity => {
            let name = &r.header.instance_name;
            let file = format!("{}.fsmesh", if name.is_empty() { "laptop" } else { name });
            warnings.push(format!(
                "this laptop now holds no credential, so its peers will refuse it: on the \
                 coordinator's laptop run `fieldsync mesh enroll --name {name} --instance {} \
                 --out {file}`, then `fieldsync init --mesh {file}` here",
                r.report.instance
            ));
        }
        Ok(Some(c)) if c.instance != r.report.instance => warnings.push(format!(
            "the credential here is for instance {}, not {}: on the coordinator's laptop run \
             `fieldsync mesh enroll --instance {} --out FILE`, then `fieldsync init --mesh FILE` \
             here",
            c.instance, r.report.instance, r.report.instance
        )),
        _ => {}
    }
    // Restoring another laptop's backup without --take-over-identity keeps this laptop's own
    // identity: said in one line, with the other choice, because a person restoring "the lost
    // laptop" onto a new one usually means the other choice.
    let own_identity = (!r.report.took_over_identity
        && r.report.backup_instance != r.report.instance)
        .then(|| {
            restored_as_own_laptop(
                &r.header.instance_name,
                r.report.instance,
                store.dir(),
                file,
                passphrase_file,
            )
        });
    if io.human {
        let from = if r.header.instance_name.is_empty() {
            r.report.backup_instance.to_string()
        } else {
            r.header.instance_name.clone()
        };
        // fieldsync's own records (import keys, revocations) are in the backup's count but
        // not records a person wrote: said apart, as `digest` and `backup` say them.
        let (own, plus) = super::records::own_records(app.store(), |_| true)?;
        let mut text = format!(
            "Restored {}{plus} from {from}'s backup of {}.\n",
            super::human::count(r.live_records.saturating_sub(own), "record", "records"),
            super::human::when(Some(r.header.created_at), chrono::Utc::now())
        );
        // The lines are the JSON's words; for people, each is a sentence.
        for line in own_identity.iter().chain(&warnings) {
            let mut c = line.chars();
            let first = c.next().map(|f| f.to_uppercase().collect::<String>());
            text += &format!("{}{}.\n", first.unwrap_or_default(), c.as_str());
        }
        return write!(io.out, "{text}").map_err(CliError::Output);
    }
    if let Some(line) = &own_identity {
        eprintln!("fieldsync: {line}");
    }
    let v = json!({
        "restored": file, "instance": r.report.instance, "notice": own_identity,
        "backup_instance": r.report.backup_instance,
        "took_over_identity": r.report.took_over_identity,
        "backup_created_at": r.header.created_at.to_rfc3339(),
        "count": r.live_records, "sha256": r.sha256, "entries": r.report.counts,
        "peers_reset": r.report.peers_reset, "incarnation": r.report.incarnation,
        "keys_restored": keys_restored, "warnings": warnings,
    });
    writeln!(out, "{v}").map_err(CliError::Output)
}

/// What a data directory held before a command created a database in it, so a failed
/// `restore` can leave it as it found it.
pub struct DirBefore {
    existed: bool,
    entries: std::collections::BTreeSet<std::ffi::OsString>,
}

impl DirBefore {
    /// Notes what `dir` holds now.
    pub fn note(dir: &Path) -> Self {
        let entries = std::fs::read_dir(dir)
            .map(|it| it.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
            .unwrap_or_default();
        DirBefore {
            existed: dir.exists(),
            entries,
        }
    }

    /// Removes what was created in `dir` since [`DirBefore::note`] (and `dir` itself if it
    /// did not exist). Best effort: the command's own error is what the person reads.
    pub fn restore(self, dir: &Path) {
        if !self.existed {
            let _ = std::fs::remove_dir_all(dir);
            return;
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if self.entries.contains(&e.file_name()) {
                continue;
            }
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// The one line `restore` says when this laptop kept its own identity while restoring the
/// backup of the laptop `backup_name`: what happened, and the take-over command, with this
/// data directory spelt out (pasted without it, the command restored into the default one and
/// made a second copy of the lost laptop). Taking over a revoked identity shuts this laptop
/// out, so the line says that revoking and taking over are the two different ways.
fn restored_as_own_laptop(
    backup_name: &str,
    instance: uuid::Uuid,
    dir: &Path,
    file: &Path,
    passphrase_file: Option<&Path>,
) -> String {
    let name = if backup_name.is_empty() {
        "the backup's laptop"
    } else {
        backup_name
    };
    let pass = passphrase_file.map_or_else(String::new, |p| {
        format!(" --passphrase-file {}", p.display())
    });
    format!(
        "this laptop stays a laptop of its own (instance {instance}) holding the data of \
         {name}, which keeps its identity (if {name} is lost, revoke it on the coordinator's \
         laptop); to become {name} instead (it is lost or broken, will never run again, and is \
         not revoked: a revoked identity is refused everywhere), run `fieldsync --data-dir {} \
         restore {} --take-over-identity --force{pass}`",
        dir.display(),
        file.display()
    )
}

/// `generate records|ops` (no database needed).
pub fn generate(
    what: GenerateCommand,
    out: &mut dyn Write,
    stdin: &mut Option<String>,
    cwd: &Path,
) -> Result<(), CliError> {
    use crate::gen::{self, GenError, OpsSpec};
    let result = match what {
        GenerateCommand::Records { count, seed } => {
            gen::write_records(count, seed, out).map_err(GenError::Io)
        }
        GenerateCommand::Ops {
            from,
            count,
            seed,
            ids_seed,
            deletes,
        } => {
            let spec = OpsSpec {
                count,
                seed,
                ids_seed,
                deletes,
            };
            gen::write_ops(BufReader::new(open_input(&from, stdin, cwd)?), &spec, out).map(|_| ())
        }
    };
    match result {
        Ok(()) => Ok(()),
        // `generate records --count 1000000 | head` is a normal way to stop it.
        Err(GenError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(GenError::Io(e)) => Err(CliError::Io(format!("generate: {e}"))),
        Err(e) => Err(CliError::Invalid(e.to_string())),
    }
}
