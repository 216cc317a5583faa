//! `fieldsync repair`: the way back when the disk lost or garbled what the database had written.
//!
//! The damaged `db/` is moved into `damaged/` (never deleted), a fresh database is created and
//! the newest automatic snapshot that reads back intact is restored into it under this laptop's
//! own identity (see [`crate::store::Store::restore`], take-over mode): knowledge and peer
//! positions are reset, feed positions move far past any handed out before, and a new
//! incarnation is recorded, so the next syncs bring back everything the peers hold, and what
//! was deleted stays deleted (tombstones travel like any change). Without a usable snapshot the
//! new database starts empty under the same identity (from the credential or `agent.json`),
//! and everything comes back from peers.

use crate::autosnapshot;
use crate::backup::{self, BackupError};
use crate::config::Config;
use crate::store::{recovery, InstanceInfo, Store, StoreError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Failures of `repair`.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// The database opens: there is nothing to repair.
    #[error(
        "the database in {0} opens and is not damaged: nothing to repair (to go back to an \
         earlier state, use `fieldsync restore --force FILE`)"
    )]
    NotDamaged(PathBuf),
    /// There is no database at all.
    #[error(
        "no fieldsync database at {0}: nothing to repair (run `fieldsync init` to create one)"
    )]
    NoDatabase(PathBuf),
    /// The store failed (including "in use by the agent").
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Restoring the snapshot failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
}

/// What `repair` did.
#[derive(Clone, Debug, Serialize)]
pub struct Repaired {
    /// Where the damaged database went.
    pub moved_to: PathBuf,
    /// Why it was moved: the error opening it gave.
    pub damage: String,
    /// The snapshot restored, if any.
    pub snapshot: Option<PathBuf>,
    /// Snapshots that could not be read back (newest first), with why.
    pub unusable_snapshots: Vec<(PathBuf, String)>,
    /// This laptop's instance id (unchanged).
    pub instance: Uuid,
    /// The new incarnation.
    pub incarnation: uuid::Uuid,
    /// Live records after the repair.
    pub live_records: u64,
    /// Digest of all tables after the repair.
    pub sha256: String,
}

/// Repairs the database in `dir` (see the module documentation). Refuses a database that
/// opens, and one held by a running agent.
pub fn repair(dir: &Path, config: Config) -> Result<Repaired, RepairError> {
    if !dir.join("db").is_dir() {
        return Err(RepairError::NoDatabase(dir.to_path_buf()));
    }
    let damage = match Store::open(dir, config.clone()) {
        Ok(_) => return Err(RepairError::NotDamaged(dir.to_path_buf())),
        Err(e @ (StoreError::Locked(_) | StoreError::NewerFormat { .. })) => return Err(e.into()),
        Err(e) => e.to_string(),
    };
    // Who this laptop is, from what survives outside the database.
    let known_id = crate::mesh::load_credential(dir)
        .ok()
        .flatten()
        .map(|c| c.instance)
        .or_else(|| {
            crate::control::read_agent_file(dir)
                .ok()
                .map(|a| a.instance)
        });
    let moved_to = recovery::move_damaged_db(dir)?;
    let store = Store::open_for_restore(dir, config)?;
    let mut unusable = Vec::new();
    let mut restored = None;
    for snap in autosnapshot::list(dir).into_iter().rev() {
        // Take over the snapshot's identity (this laptop's own), replacing anything in the new
        // database; a damaged file is refused before anything is written.
        match backup::restore(&store, &snap.path, true, true) {
            Ok(_) => {
                restored = Some(snap.path);
                break;
            }
            Err(BackupError::Store(e)) => return Err(e.into()),
            Err(e) => unusable.push((snap.path, e.to_string())),
        }
    }
    if restored.is_none() {
        // An empty "snapshot" of this laptop: the restore still resets what peers know about
        // its feed, and its id stays the one its credential was issued for.
        let info = InstanceInfo {
            id: known_id.unwrap_or_else(|| store.id()),
            ..store.instance()
        };
        store.restore_identity(&info)?;
    }
    let tables: Vec<String> = store.tables()?.into_iter().map(|(t, _)| t).collect();
    let (live_records, sha256) = crate::formats::digest(&store, &tables)?;
    Ok(Repaired {
        moved_to,
        damage,
        snapshot: restored,
        unusable_snapshots: unusable,
        instance: store.id(),
        incarnation: store.incarnation().id,
        live_records,
        sha256,
    })
}
