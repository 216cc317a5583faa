//! The local database: records, change feed, history, conflict log, unique index, peers.
//!
//! One sled tree holds everything under prefixed keys (see [`keys`]); every write goes through
//! the single writer lock and one atomic batch, then an fsync, before it is acknowledged.
//! The merge decisions themselves are made by [`crate::merge`]; this module only loads,
//! persists and indexes.

pub mod commits;
pub mod dict;
pub mod fingerprint;
mod group;
mod handles;
mod held;
mod incarnation;
mod keys;
mod legacy;
pub mod recovery;
mod release;
mod replication;
mod rollback;
mod snapshot;
pub(crate) mod staging;
mod txn;
pub mod unique;
mod warm;
mod write;
pub(crate) use write::{SETTLED_BY_RESOLUTION, SUPERSEDED};

pub use crate::change::{ApplyStats, RemoteChange, ReportedConflict};
pub use crate::merge::Keep;
pub use handles::Reopen;
pub use held::{Decided, Hold, HoldVerdict, HoldVerdictSigner, VERDICT_PART};
pub use incarnation::{dir_key, judge, DirKey, Incarnation, Lineage, Verdict};
pub use replication::{CommitError, Committed, Knowledge, OutgoingPage, PageCommit, Position};
pub(crate) use snapshot::shed_every;
#[cfg(test)]
pub(crate) use snapshot::SHED_EVERY_IN_TEST;
pub use snapshot::{ConsistentView, RestoreReport, SnapshotCounts, SHED_BYTES, SHED_EVERY};
pub use staging::{ImportCounts, ImportRow, RowOutcome, StagedImport, UpdateMode};
pub use txn::Txn;
pub(crate) use write::decode_record;
pub(crate) use write::{trim_heap, trim_heap_soon};
pub use write::{LocalOp, OpResult};

use crate::clock::{Clock, Hlc};
use crate::config::Config;
use crate::merge::{self, Revision, Side};
use crate::model::{RecordState, ValidationError};
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use uuid::Uuid;

/// Everything that can go wrong in the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (usually a running agent) has the database open.
    #[error(
        "the database in {0} is in use by another fieldsync process (is `fieldsync run` running?)"
    )]
    Locked(PathBuf),
    /// No such record.
    #[error("record {table}/{id} not found: {table} has no record with that id here (`fieldsync list {table}` shows them)")]
    NotFound {
        /// Table.
        table: String,
        /// Record id.
        id: Uuid,
    },
    /// The record exists but is deleted.
    #[error("{}", deleted_words(table, id, *edit))]
    Deleted {
        /// Table.
        table: String,
        /// Record id.
        id: Uuid,
        /// The write refused (`"patch"`, `"delete"`), or None for a read.
        edit: Option<&'static str>,
    },
    /// A local write would give a unique field a value another record already has.
    #[error("{table}.{field} = {value} is already used by record {other}: give another value, or change that record's {field} first (`fieldsync get {table} {other}` shows it)")]
    UniqueClash {
        /// Table.
        table: String,
        /// The unique field.
        field: String,
        /// The value (JSON).
        value: String,
        /// The record holding it.
        other: Uuid,
    },
    /// No conflict with that id.
    #[error("conflict {0} not found")]
    ConflictNotFound(u64),
    /// No pending hold with that id.
    #[error("no pending hold {0}: `fieldsync held list` shows the pending ones")]
    HoldNotFound(u64),
    /// A `--keep` that does not fit the conflict.
    #[error("{0}")]
    BadResolution(String),
    /// A received revision that is not an event of the record it came with.
    #[error("invalid history: {0}")]
    BadHistory(String),
    /// A table that must not be synced.
    #[error("table {0:?} is local-only on this instance and is not accepted from peers")]
    LocalOnly(String),
    /// Invalid input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// One operation of a batch failed; nothing of the batch was written.
    #[error("operation {}: {source}", index + 1)]
    Op {
        /// Zero-based index of the failing operation.
        index: usize,
        /// What went wrong.
        source: Box<StoreError>,
    },
    /// The database itself failed.
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value could not be decoded (corruption or a newer format).
    #[error("stored data could not be decoded: {0}")]
    Decode(String),
    /// sled found its files damaged (a disk that lost or garbled recent writes).
    #[error(
        "the database in {0} is damaged (the disk lost or garbled data it had accepted, usually \
         in a power cut): run `fieldsync repair --data-dir {0}` to move it aside and restore the \
         newest automatic snapshot"
    )]
    Damaged(PathBuf),
    /// The database is older than its own newest automatic snapshot: the disk lost writes.
    #[error(
        "the database in {dir} lost writes the disk had accepted (usually in a power cut): it \
         is at feed position {seq}, its newest automatic snapshot at {snapshot_seq}: run \
         `fieldsync repair --data-dir {dir}` to move it aside and restore that snapshot"
    )]
    LostWrites {
        /// The data directory.
        dir: PathBuf,
        /// The database's feed head.
        seq: u64,
        /// The newest snapshot's.
        snapshot_seq: u64,
    },
    /// The data directory was written by a newer fieldsync.
    #[error(
        "the database in {dir} has store format {found}, written by a newer fieldsync; this \
         fieldsync reads formats up to {supported}: install the newer fieldsync again (nothing \
         was changed)"
    )]
    NewerFormat {
        /// The data directory.
        dir: PathBuf,
        /// The format version found.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// Filesystem trouble around the database.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// What [`StoreError::Deleted`] says: for a read, how to see the record anyway; for a write,
/// that it changes nothing and how the record comes back (a put restores a deleted record).
fn deleted_words(table: &str, id: &Uuid, edit: Option<&str>) -> String {
    const BACK: &str = "to bring it back, put it again with all its fields (`get \
                        --include-deleted` shows its last ones)";
    match edit {
        None => format!("record {table}/{id} is deleted (use --include-deleted to see it)"),
        Some("delete") => format!(
            "record {table}/{id} is already deleted: deleting it again changes nothing; {BACK}"
        ),
        Some(e) => format!("record {table}/{id} is deleted, so a {e} cannot change it; {BACK}"),
    }
}

impl StoreError {
    /// True for "the thing asked for does not exist" (CLI exit code 1).
    pub fn is_not_found(&self) -> bool {
        match self {
            StoreError::NotFound { .. }
            | StoreError::Deleted { .. }
            | StoreError::ConflictNotFound(_) => true,
            StoreError::Op { source, .. } => source.is_not_found(),
            _ => false,
        }
    }

    /// True for input the user or a peer got wrong (CLI exit code 2).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            StoreError::Invalid(_)
            | StoreError::UniqueClash { .. }
            | StoreError::BadResolution(_)
            | StoreError::BadHistory(_)
            | StoreError::LocalOnly(_) => true,
            StoreError::Op { source, .. } => source.is_invalid_input(),
            _ => false,
        }
    }
}

/// Who this instance is. Created once, on first use or by `init`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The instance id (UUID v4), stable for the life of the database.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Who is responsible for this laptop.
    pub owner: String,
    /// How to reach them.
    pub contact: String,
    /// When the instance was created.
    pub created: DateTime<Utc>,
}

/// A record as stored: the replicated state plus local bookkeeping for the feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// The replicated state.
    pub state: RecordState,
    /// Feed position of the last change to this record.
    pub seq: u64,
    /// Feed position of the latest conflict logged for this record (0: none).
    pub conflict_seq: u64,
    /// The creating revision's stamp and origin. Its field values are not stored: `history`
    /// rebuilds them from the current state by undoing the later revisions, which saves one
    /// write per new record (the bulk of an import or an initial sync).
    pub created: Option<Created>,
}

/// Where and when a record was created (see [`StoredRecord::created`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Created {
    /// The creating event.
    pub at: Hlc,
    /// How it arrived here.
    pub source: Source,
    /// Local wall time when it was applied here.
    pub applied_at: DateTime<Utc>,
}

/// Where a revision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Written on this instance.
    Local,
    /// Received from this peer (the origin instance is in the revision's stamp).
    Peer(Uuid),
    /// A merge of data received from a peer.
    Merge(Uuid),
}

/// One entry of a record's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The revision.
    pub revision: Revision,
    /// How it arrived here.
    pub source: Source,
    /// Local wall time when it was applied here.
    pub applied_at: DateTime<Utc>,
}

/// What a conflict log entry is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConflictDetail {
    /// A conflict found by the merge rules.
    Merge {
        /// The details.
        conflict: merge::Conflict,
    },
    /// Two different records with the same value of a unique field.
    NameClash {
        /// The unique field.
        field: String,
        /// The shared value.
        value: Value,
        /// The other record.
        other: Uuid,
    },
}

/// How a conflict was settled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    /// When.
    pub at: DateTime<Utc>,
    /// What was kept or why it is settled.
    pub how: String,
}

/// One entry of the conflict log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictEntry {
    /// Local conflict id.
    pub id: u64,
    /// Table of the record.
    pub table: String,
    /// The record.
    pub record: Uuid,
    /// When it was detected here.
    pub detected_at: DateTime<Utc>,
    /// The peer whose data caused it, if any.
    pub peer: Option<Uuid>,
    /// What it is.
    pub detail: ConflictDetail,
    /// Set once settled.
    pub resolved: Option<Resolution>,
    /// Feed position of the record when the conflict was logged (so it travels with the record).
    pub seq: u64,
    /// The instance that detected it, when it arrived from a peer rather than being found here.
    pub reported_by: Option<Uuid>,
}

/// A row of the `sync_instance` table: what we know about one peer instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    /// The peer's instance id.
    pub instance: Uuid,
    /// Its display name.
    pub name: String,
    /// Its owner.
    pub owner: String,
    /// Its contact.
    pub contact: String,
    /// The address we last reached it at.
    pub url: String,
    /// When we first heard of it.
    pub first_seen: Option<DateTime<Utc>>,
    /// When a sync with it last succeeded.
    pub last_update: Option<DateTime<Utc>>,
    /// Successful sync sessions.
    pub sync_count: u64,
    /// The peer's feed position we have received and applied up to.
    pub received_upto: u64,
    /// Observed clock offset (peer minus us), in milliseconds.
    pub clock_offset_ms: i64,
    /// The last error with this peer, if the last attempt failed.
    pub last_error: Option<String>,
    /// When we last tried.
    pub last_attempt: Option<DateTime<Utc>>,
    /// Whether the agent currently sees it on the network.
    #[serde(default)]
    pub online: bool,
    /// When it was last seen on the network or contacted us.
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    /// Addresses it was last reachable at (tried on restart).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The peer's latest incarnation seen in its hello (see `incarnation.rs`).
    #[serde(default)]
    pub incarnation: Option<Incarnation>,
    /// Earlier incarnations it moved on from (restores): seeing one again means two data
    /// directories share its instance id.
    #[serde(default)]
    pub retired: Vec<Uuid>,
    /// Our feed position when its current incarnation was first seen: feed entries at or
    /// below it may be marked as received from an earlier incarnation, whose data the peer
    /// may no longer hold, so they are never skipped as echoes when sending to it.
    #[serde(default)]
    pub echo_from: u64,
    /// Set when two data directories were seen using this instance id: it is refused from
    /// then on, until one of them gets a new credential.
    #[serde(default)]
    pub duplicate: Option<DuplicateIdentity>,
    /// The knowledge it reported in its last hello. Knowledge never decreases within an
    /// incarnation, so a hello reporting less means it was rolled back unannounced.
    #[serde(default)]
    pub knowledge: crate::model::VersionVector,
    /// Records from this peer dropped because they failed validation (quarantined), in total.
    #[serde(default)]
    pub quarantined: u64,
}

/// Two data directories seen using one instance id (see [`PeerRow::duplicate`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DuplicateIdentity {
    /// When it was detected.
    pub detected_at: DateTime<Utc>,
    /// The incarnations seen.
    pub incarnations: Vec<Uuid>,
    /// What was seen, in words.
    pub reason: String,
}

/// Live and deleted record counts of one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCounts {
    /// Records that are alive.
    pub live: u64,
    /// Tombstoned records.
    pub deleted: u64,
}

#[derive(Clone)]
pub(crate) struct WriterState {
    pub(crate) seq: u64,
    pub(crate) clock: Clock,
    pub(crate) next_conflict: u64,
    /// The stamp of our newest own event (our entry in the knowledge vector).
    pub(crate) own_last: u64,
    /// Per origin, the newest event held in a synced table (an upper bound of what we have).
    pub(crate) holdings: crate::model::VersionVector,
    /// Feed position of the latest batch that logged a conflict (in memory: the feed head when
    /// the store was opened, so the first sessions after a start look at the feed once).
    pub(crate) conflict_head: u64,
    /// This data directory's incarnation and what it may be missing of its own events.
    pub(crate) lineage: Lineage,
    /// `(own_last, floor)` when the database was opened (not persisted): every own stamp
    /// issued since is >= `floor` (the clock and the wall clock then), so a peer that knows an
    /// own event of ours strictly between the two proves the opened state lost it (rolled
    /// back), even after we wrote newer events.
    pub(crate) opened: (u64, u64),
}

/// What readers see of the writer's state, published after each commit (and its fsync): the
/// feed head, our newest own event, what we hold and what we know. Readers (`seq`, `position`,
/// a pull's fast path) read this and never take the writer's lock, so a peer's pull is answered
/// while another peer's page is being written and flushed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) holdings: crate::model::VersionVector,
    pub(crate) knowledge: replication::Knowledge,
    pub(crate) conflict_head: u64,
    /// Our own entry in the knowledge we report: our newest own event, or less after a restore
    /// or rollback (see `incarnation.rs`).
    pub(crate) own_claim: u64,
    /// This data directory's incarnation (writer state, published here so a hello reads it
    /// without the writer lock: see [`Store::incarnation`]).
    pub(crate) incarnation: Option<crate::model::Incarnation>,
    /// Batches applied when it was taken (see `group.rs`): a head is never replaced by an
    /// older one.
    pub(crate) gen: u64,
}

/// Handle to an open database. Cheap to share behind an `Arc`.
pub struct Store {
    /// sled's database and tree, closed and reopened by [`Store::reopen`] (`handles.rs`).
    sled: handles::Sled,
    /// An exclusive lock on [`DIR_LOCK`], held as long as this store is open — also while
    /// [`Store::reopen`] has sled closed and its own lock released, when another process
    /// (a CLI command deciding whether an agent runs) could otherwise open the database.
    _dir_lock: std::fs::File,
    dir: PathBuf,
    instance: RwLock<InstanceInfo>,
    config: Arc<Config>,
    writer: Mutex<WriterState>,
    /// Threads waiting for the writer lock now (see [`Store::writer_waiting`]).
    waiting: std::sync::atomic::AtomicUsize,
    head: RwLock<Arc<Head>>,
    changed: tokio::sync::watch::Sender<u64>,
    group: group::GroupCommit,
    /// Peers whose records were compared with ours since this database was opened or since
    /// an incarnation changed (see `rollback.rs`).
    checked: rollback::Checked,
    /// The record compression dictionaries, by table (`dict.rs`).
    dicts: dict::Dicts,
    /// Feed head when sled was last opened, and reopens done (see [`Store::reopen`]).
    opened_at: std::sync::atomic::AtomicU64,
    reopens: std::sync::atomic::AtomicU64,
    /// Rests since the store was opened ([`Store::rest_if_free`]).
    rests: std::sync::atomic::AtomicU64,
    /// Last field, so it is dropped after the sled handles: waits for sled's lock to go.
    _release: release::SledRelease,
}

/// sled's page cache, in bytes (`sled::Config::cache_capacity`): 16 MiB, set deliberately
/// rather than left at sled's 1 GiB default. Field laptops are old and the agent runs for days
/// beside other programs, so its memory must stay small (the targets are ≤ 80 MB peak during a
/// 100,000-record sync and ≤ 40 MB idle); a sync or an import writes in pages of bounded size
/// and reads mostly what it just wrote, so a larger cache buys little speed (measured by the
/// sled-floor probe in `benches/sync.rs`, which uses this same value). It does not bound sled's
/// memory: 2 to 64 MiB made the same peak and idle RSS within noise in session 4's measurements
/// (bench/RESULTS.md), because what sled keeps grows with the pages it has touched, not with
/// this setting; smaller values only cost reads (session 6: 4 MiB lowered the sender's peak of
/// a 100,000-record sync by 16 MB, raised the receiver's by 17 MB and made the sync 2.6× as
/// long; session 7: 8 MiB lowered the receiver's peak of a 300,000-record sync by 6 MB and
/// cost it 18 % more CPU time). Public so that the benchmark's probe opens sled exactly like
/// the store does.
pub const CACHE_BYTES: u64 = 16 << 20;

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("in-memory values always encode")
}

/// Compact (array) encoding, for the bulky values: records and history.
pub(crate) fn encode_compact<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec(v).expect("in-memory values always encode")
}

pub(crate) fn decode_compact<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(b).map_err(|e| StoreError::Decode(e.to_string()))
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(b).map_err(|e| StoreError::Decode(e.to_string()))
}

impl Store {
    /// Opens (creating if needed) the database under `dir`, creating the instance on first use.
    ///
    /// Before sled sees the directory, an incomplete sled snapshot is moved aside; a database
    /// sled finds damaged, or one behind its own newest automatic snapshot (lost writes), is
    /// refused with a message pointing at `fieldsync repair`; a newer store format is refused
    /// and an older one migrated (see [`recovery`]).
    pub fn open(dir: &Path, config: Config) -> Result<Store, StoreError> {
        Self::open_with(dir, config, true)
    }

    /// Like [`Store::open`], but without comparing the database with the automatic snapshots:
    /// for `repair`, which creates a new, empty database beside them before restoring one.
    pub fn open_for_restore(dir: &Path, config: Config) -> Result<Store, StoreError> {
        Self::open_with(dir, config, false)
    }

    fn open_with(dir: &Path, config: Config, check_snapshots: bool) -> Result<Store, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        // The records are personal data: a new data directory is private to its owner.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        let dir_lock = lock_dir(dir)?;
        let db_dir = dir.join("db");
        recovery::move_aside_incomplete_snapshots(&db_dir, dir)?;
        let open_db = || open_sled(&db_dir, dir);
        let (mut db, mut tree) = open_db()?;
        if let recovery::FormatCheck::Older(from) = recovery::check_format(&db, &tree, dir)? {
            drop((db, tree));
            // sled's pool may hold the lock a moment longer (`release.rs`).
            release::wait_released(&db_dir);
            (db, tree) = recovery::migrate(
                dir,
                from,
                recovery::FORMAT_VERSION,
                recovery::MIGRATIONS,
                open_db,
            )?;
        }
        let instance = match tree.get(keys::meta("instance"))? {
            Some(v) => decode(&v)?,
            None => {
                let info = InstanceInfo {
                    id: Uuid::new_v4(),
                    name: default_name(),
                    owner: String::new(),
                    contact: String::new(),
                    created: Utc::now(),
                };
                tree.insert(keys::meta("instance"), encode(&info))?;
                db.flush()?;
                info
            }
        };
        let get_u64 = |name: &str| -> Result<u64, StoreError> {
            Ok(match tree.get(keys::meta(name))? {
                Some(v) => decode(&v)?,
                None => 0,
            })
        };
        let seq = get_u64("seq")?;
        // A database older than its own newest automatic snapshot lost acknowledged writes:
        // refuse it before anything (a new incarnation for a moved directory included) is
        // written, so `repair` finds it as the disk left it.
        if check_snapshots {
            recovery::check_not_behind_snapshots(dir, seq)?;
        }
        let own_last = get_u64("own_last")?;
        let here = incarnation::dir_key(&dir.join("db"));
        let lineage = match tree.get(keys::meta("lineage"))? {
            None => {
                let l = Lineage::fresh(crate::clock::wall_millis(), here);
                tree.insert(keys::meta("lineage"), encode(&l))?;
                db.flush()?;
                l
            }
            Some(v) => {
                let l: Lineage = decode(&v)?;
                if l.dir_key.is_some() && here.is_some() && l.dir_key != here {
                    // Another directory's database: a copy (the original may live on) or a
                    // directory copied back from an old stick. A new incarnation makes peers
                    // resend what this copy lacks and tells them apart from the original.
                    // Every own event the original issued is older than now: until a peer
                    // proves it held them all, claim only what the copy holds.
                    let now = crate::clock::wall_millis();
                    let issued = crate::clock::ts_from_millis(now).max(get_u64("clock")?);
                    let next = l.successor(now, l.own_claim(own_last), issued, here);
                    tracing::warn!(dir = %dir.display(), incarnation = %next.current.id,
                        "this data directory was copied or moved: starting a new incarnation \
                         so peers resend whatever it lacks");
                    tree.insert(keys::meta("lineage"), encode(&next))?;
                    db.flush()?;
                    next
                } else {
                    l
                }
            }
        };
        // The clock never falls behind what may be missing of our own events.
        let clock = get_u64("clock")?.max(lineage.missing.map_or(0, |m| m.1));
        let writer = WriterState {
            seq,
            conflict_head: seq,
            clock: Clock::new(instance.id, clock),
            next_conflict: get_u64("next_conflict")?.max(1),
            own_last,
            holdings: match tree.get(keys::meta("holdings"))? {
                Some(v) => decode(&v)?,
                None => Default::default(),
            },
            opened: (
                own_last,
                (clock + 1).max(crate::clock::ts_from_millis(crate::clock::wall_millis())),
            ),
            lineage,
        };
        let dicts = dict::Dicts::load(&tree)?;
        let store = Store {
            sled: handles::Sled::new(db, tree, db_dir.clone(), {
                let (db_dir, dir) = (db_dir.clone(), dir.to_path_buf());
                Box::new(move || open_sled(&db_dir, &dir))
            }),
            _dir_lock: dir_lock,
            dir: dir.to_path_buf(),
            instance: RwLock::new(instance),
            config: Arc::new(config),
            changed: tokio::sync::watch::Sender::new(writer.seq),
            head: RwLock::default(),
            writer: Mutex::new(writer),
            waiting: Default::default(),
            group: Default::default(),
            checked: Default::default(),
            dicts,
            opened_at: seq.into(),
            reopens: Default::default(),
            rests: Default::default(),
            _release: release::SledRelease(db_dir.clone()),
        };
        store.publish(&store.lock())?;
        // An import a crash interrupted is finished (committed) or discarded (not committed).
        staging::recover(&store)?;
        Ok(store)
    }

    /// The tree, for as long as the returned reference lives (a reopen waits for it, and it
    /// waits for a reopen under way; see `handles.rs`). Iterators made from it carry their
    /// own reference.
    pub(crate) fn tree(&self) -> handles::TreeRef {
        self.sled.get()
    }

    /// Closes sled and opens the database again, giving back the memory sled 0.34 keeps for
    /// every page it touched while open (~90 MB after receiving 100,000 records; a fresh
    /// open of the same database holds ~40 MB). Takes the writer lock (writes wait), waits for
    /// readers and iterators in flight (at most 2 s, else [`Reopen::Busy`] and nothing
    /// changes), flushes, closes, reopens; readers arriving meanwhile wait. Every write stays
    /// as it was. The agent calls it once a large session or import has ended and the store
    /// has been quiet for a while (`src/reopen.rs`, started by `agent.rs`). Errors: the flush before
    /// closing failed (nothing was closed). If the database cannot be opened again the
    /// process exits with a message (every write was saved).
    pub fn reopen(&self) -> Result<Reopen, StoreError> {
        self.reopen_with(self.lock())
    }

    /// [`Store::reopen`] only if nobody holds the writer lock now ([`Reopen::Busy`] otherwise,
    /// at once): what the agent calls, so that a reopen never makes an automatic snapshot,
    /// which gives way to anyone waiting for that lock, start over.
    pub fn reopen_if_free(&self) -> Result<Reopen, StoreError> {
        match self.writer.try_lock() {
            Ok(w) => self.reopen_with(w),
            Err(std::sync::TryLockError::Poisoned(e)) => self.reopen_with(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Ok(Reopen::Busy),
        }
    }

    fn reopen_with(&self, w: std::sync::MutexGuard<'_, WriterState>) -> Result<Reopen, StoreError> {
        let done = self.reopen_holding(&w, handles::WAIT_FOR_READERS)?;
        drop(w);
        if let Reopen::Done(took) = done {
            trim_heap();
            tracing::info!(
                ms = took.as_millis() as u64,
                "reopened the database to give back the memory sled held"
            );
        }
        Ok(done)
    }

    /// Closes and reopens sled for a caller that holds the writer lock (`w`, so nothing
    /// writes) and goes on holding it: a long read under the lock (a snapshot, see
    /// `ConsistentView::shed`) gives back what sled kept of the part it has read.
    /// The caller must hold no iterator or tree reference of its own: the reopen waits up to
    /// `wait` for other readers' references to go, then reports [`Reopen::Busy`].
    pub(crate) fn reopen_holding(
        &self,
        w: &WriterState,
        wait: std::time::Duration,
    ) -> Result<Reopen, StoreError> {
        use std::sync::atomic::Ordering;
        let done = self.sled.reopen(wait)?;
        if let Reopen::Done(_) = done {
            self.opened_at.store(w.seq, Ordering::SeqCst);
            self.reopens.fetch_add(1, Ordering::SeqCst);
        }
        Ok(done)
    }

    /// Closes sled and leaves it closed until something reads or writes again (the first
    /// reader opens it, ~0.2–0.5 s at 1,000,000 records, measured in bench/RESULTS.md): how an
    /// idle agent gives back all of sled's memory, which a reopen cannot (sled 0.34 keeps ~63
    /// MB merely open on a 1,000,000-record database; session 12). Only if nobody holds the
    /// writer lock now ([`Reopen::Busy`] otherwise, at once, as [`Store::reopen_if_free`]) and
    /// nobody ended a rest since the caller read `wakes_seen` (the second of [`Store::rests`]:
    /// `Busy` too, so a rest never follows a read it did not see); waits for readers in
    /// flight at most 2 s (else `Busy`, nothing changed). Every write was
    /// flushed before. `Done(0)` if the database rests already. Errors: the flush before
    /// closing failed (nothing was closed).
    pub fn rest_if_free(&self, wakes_seen: u64) -> Result<Reopen, StoreError> {
        use std::sync::atomic::Ordering;
        let w = match self.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(Reopen::Busy),
        };
        if self.sled.resting() {
            return Ok(Reopen::Done(std::time::Duration::ZERO));
        }
        let done = self.sled.rest(handles::WAIT_FOR_READERS, wakes_seen)?;
        if let Reopen::Done(took) = done {
            // Nothing of this open is left in memory: a reopen is not due any more.
            self.opened_at.store(w.seq, Ordering::SeqCst);
            self.rests.fetch_add(1, Ordering::SeqCst);
            drop(w);
            tracing::info!(
                ms = took.as_millis() as u64,
                "the database rests while nothing uses it (sled's memory given back); it opens again at the next read or write"
            );
        }
        Ok(done)
    }

    /// Whether the database rests now ([`Store::rest_if_free`]).
    pub fn resting(&self) -> bool {
        self.sled.resting()
    }

    /// Rests since the store was opened, and how many of them a read or write ended.
    pub fn rests(&self) -> (u64, u64) {
        (
            self.rests.load(std::sync::atomic::Ordering::SeqCst),
            self.sled.wakes(),
        )
    }

    /// Entries sled wrote or read through iterators since it was last opened (by
    /// [`Store::open`] or [`Store::reopen`]): what sled's memory grows with, and so what
    /// decides whether a reopen is worth it.
    pub fn touched_since_open(&self) -> u64 {
        self.written_since_open() + self.sled.reads()
    }

    /// Feed entries written since sled was last opened (by [`Store::open`] or
    /// [`Store::reopen`]): what decides whether a reopen is worth it.
    pub fn written_since_open(&self) -> u64 {
        self.seq()
            .saturating_sub(self.opened_at.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Reopens done since the store was opened.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// This instance.
    pub fn instance(&self) -> InstanceInfo {
        self.instance
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// This instance's id.
    pub fn id(&self) -> Uuid {
        self.instance().id
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A receiver that sees the feed head after every committed change (for change notifications).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Current feed position (the sequence number of the latest change). Does not wait for a
    /// write in progress: it is the head as of the last completed one.
    pub fn seq(&self) -> u64 {
        self.head().seq
    }

    /// The head published by the last completed write.
    pub(crate) fn head(&self) -> Arc<Head> {
        self.head.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes the writer's state for readers; called with the writer lock held, after a
    /// batch is committed and flushed (so readers only see what is durable). Durable writes
    /// publish through their group flush instead (`group.rs`).
    pub(crate) fn publish(&self, w: &WriterState) -> Result<(), StoreError> {
        let mut head = self.head_of(w)?;
        // A generation of its own, so a group flush's head taken before this change (a
        // restore, a new incarnation) can never replace it.
        head.gen = self.group.applied_one();
        let mut cur = self.head.write().unwrap_or_else(|e| e.into_inner());
        if cur.gen <= head.gen {
            *cur = Arc::new(head);
        }
        Ok(())
    }

    /// The head readers should see for this writer state; called with the writer lock held.
    pub(crate) fn head_of(&self, w: &WriterState) -> Result<Head, StoreError> {
        let knowledge = match self.tree().get(keys::meta("knowledge"))? {
            Some(v) => decode(&v)?,
            None => replication::Knowledge::new(),
        };
        Ok(Head {
            seq: w.seq,
            holdings: w.holdings.clone(),
            knowledge,
            conflict_head: w.conflict_head,
            own_claim: w.lineage.own_claim(w.own_last),
            incarnation: Some(w.lineage.current),
            gen: self.group.applied(),
        })
    }

    /// Holds the writer's lock until the guard is dropped, exactly as a write does while it
    /// commits and flushes. For tests that show readers do not wait for writes.
    #[doc(hidden)]
    pub fn hold_writer(&self) -> impl Drop + '_ {
        self.lock()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        use std::sync::atomic::Ordering;
        // A panic while holding the lock cannot leave a half-written batch (nothing is applied
        // before commit), so the state behind a poisoned lock is still consistent.
        match self.writer.try_lock() {
            Ok(g) => return g,
            Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        // Counted while waiting, so a long holder that can step aside (an automatic snapshot)
        // sees that someone waits.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let g = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        g
    }

    /// True while another thread waits for the writer lock (a write, a peer's hello, a group
    /// flush): what an automatic snapshot, which holds the lock for as long as it reads the
    /// whole database, checks to give way (`autosnapshot.rs`).
    pub(crate) fn writer_waiting(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Counts one more thread as waiting for the writer lock until the returned guard drops,
    /// as a blocked write would. For tests of readers that give way to writers.
    #[doc(hidden)]
    pub fn pretend_writer_waiting(&self) -> impl Drop + '_ {
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Waiting(&self.waiting)
    }

    /// Updates name, owner and contact of this instance (only the given ones).
    pub fn set_instance_info(
        &self,
        name: Option<String>,
        owner: Option<String>,
        contact: Option<String>,
    ) -> Result<InstanceInfo, StoreError> {
        let _w = self.lock();
        let mut cur = self.instance.write().unwrap_or_else(|e| e.into_inner());
        let mut info = cur.clone();
        info.name = name.unwrap_or(info.name);
        info.owner = owner.unwrap_or(info.owner);
        info.contact = contact.unwrap_or(info.contact);
        if info != *cur {
            self.tree().insert(keys::meta("instance"), encode(&info))?;
            self.tree().flush()?;
            *cur = info.clone();
        }
        Ok(info)
    }

    /// Takes the instance id a deployment credential was issued for. Only possible before
    /// anything was written, since every stored change is stamped with the instance id.
    pub fn adopt_instance(&self, id: Uuid) -> Result<InstanceInfo, StoreError> {
        let mut w = self.lock();
        let mut cur = self.instance.write().unwrap_or_else(|e| e.into_inner());
        if cur.id == id {
            return Ok(cur.clone());
        }
        if w.seq > 0 {
            return Err(StoreError::BadResolution(format!(
                "this laptop already has data stamped with instance {}: enroll it with \
                 `fieldsync mesh enroll --instance {}` instead",
                cur.id, cur.id
            )));
        }
        let mut info = cur.clone();
        info.id = id;
        self.tree().insert(keys::meta("instance"), encode(&info))?;
        self.tree().flush()?;
        w.clock = Clock::new(id, w.clock.last());
        *cur = info.clone();
        Ok(info)
    }

    /// One record, deleted or not.
    pub fn get(&self, table: &str, id: &Uuid) -> Result<Option<StoredRecord>, StoreError> {
        let k = keys::record(&keys::record_suffix(table, id));
        self.tree().get(k)?.map(|v| decode_record(&v)).transpose()
    }

    /// The records of a table in id order (deleted ones too; filter with `is_alive`).
    pub fn scan_table(
        &self,
        table: &str,
    ) -> impl Iterator<Item = Result<(Uuid, StoredRecord), StoreError>> + '_ {
        let prefix = keys::table_records(table);
        let plen = prefix.len();
        self.tree().scan_prefix(prefix).map(move |kv| {
            let (k, v) = kv?;
            let id = Uuid::from_slice(&k[plen..]).map_err(|e| StoreError::Decode(e.to_string()))?;
            Ok((id, decode_record(&v)?))
        })
    }

    /// The records of a table with ids after `after` (all when `None`), in id order: a page of
    /// a listing starts where the last one ended instead of reading from the table's start.
    pub fn scan_table_after(
        &self,
        table: &str,
        after: Option<Uuid>,
    ) -> impl Iterator<Item = Result<(Uuid, StoredRecord), StoreError>> + '_ {
        use std::ops::Bound;
        let prefix = keys::table_records(table);
        let plen = prefix.len();
        let start = match after {
            Some(id) => {
                let mut k = prefix.clone();
                k.extend_from_slice(id.as_bytes());
                Bound::Excluded(k)
            }
            None => Bound::Included(prefix.clone()),
        };
        self.tree()
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take_while(move |kv| kv.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(move |kv| {
                let (k, v) = kv?;
                let id =
                    Uuid::from_slice(&k[plen..]).map_err(|e| StoreError::Decode(e.to_string()))?;
                Ok((id, decode_record(&v)?))
            })
    }

    /// The records of a table whose id bytes start with `prefix`, in id order.
    pub fn scan_ids(
        &self,
        table: &str,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Uuid, StoredRecord), StoreError>> + '_ {
        let mut p = keys::table_records(table);
        let plen = p.len();
        p.extend_from_slice(prefix);
        self.tree().scan_prefix(p).map(move |kv| {
            let (k, v) = kv?;
            let id = Uuid::from_slice(&k[plen..]).map_err(|e| StoreError::Decode(e.to_string()))?;
            Ok((id, decode_record(&v)?))
        })
    }

    /// Every table with its counts, by name.
    pub fn tables(&self) -> Result<Vec<(String, TableCounts)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree().scan_prefix([keys::TABLE]) {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            out.push((name, decode(&v)?));
        }
        Ok(out)
    }

    /// The history of a record, oldest first.
    pub fn history(&self, table: &str, id: &Uuid) -> Result<Vec<HistoryEntry>, StoreError> {
        let prefix = keys::history_of(&keys::record_suffix(table, id));
        let mut stored: Vec<HistoryEntry> = self
            .tree()
            .scan_prefix(prefix)
            .map(|kv| write::decode_history(&kv?.1))
            .collect::<Result<_, _>>()?;
        let Some(rec) = self.get(table, id)? else {
            return Ok(stored);
        };
        if let Some(c) = &rec.created {
            // Stored whole when another instance created the same id concurrently.
            if !stored.iter().any(|e| e.revision.at == c.at) {
                stored.insert(0, creation_entry(&rec, c, &stored));
            }
        }
        Ok(stored)
    }

    /// The conflict log, unresolved first, then by id.
    pub fn conflicts(&self) -> Result<Vec<ConflictEntry>, StoreError> {
        let mut all: Vec<ConflictEntry> = self
            .tree()
            .scan_prefix([keys::CONFLICT])
            .map(|kv| decode(&kv?.1))
            .collect::<Result<_, _>>()?;
        all.sort_by_key(|c| (c.resolved.is_some(), c.id));
        Ok(all)
    }

    /// One conflict log entry.
    pub fn conflict(&self, id: u64) -> Result<ConflictEntry, StoreError> {
        match self.tree().get(keys::conflict(id))? {
            Some(v) => decode(&v),
            None => Err(StoreError::ConflictNotFound(id)),
        }
    }

    /// Ids of the conflicts logged for one record.
    pub fn conflicts_of(&self, table: &str, id: &Uuid) -> Result<Vec<u64>, StoreError> {
        let prefix = keys::conflicts_of(&keys::record_suffix(table, id));
        let plen = prefix.len();
        self.tree()
            .scan_prefix(prefix)
            .map(|kv| {
                let k = kv?.0;
                let b: [u8; 8] = k[plen..].try_into().map_err(|_| {
                    StoreError::Decode("conflict index key has the wrong length".into())
                })?;
                Ok(u64::from_be_bytes(b))
            })
            .collect()
    }

    /// The `sync_instance` table.
    pub fn peers(&self) -> Result<Vec<PeerRow>, StoreError> {
        self.tree()
            .scan_prefix([keys::PEER])
            .map(|kv| decode(&kv?.1))
            .collect()
    }

    /// One peer's row, if known.
    pub fn peer(&self, id: &Uuid) -> Result<Option<PeerRow>, StoreError> {
        self.tree()
            .get(keys::peer(id))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Reads, changes and writes one peer's row under the writer lock, so bookkeeping never
    /// overwrites a position a page advanced concurrently. Creates the row if needed. Not
    /// fsynced (sled flushes within a second): losing it only costs a re-send, never data.
    pub fn update_peer<T>(
        &self,
        id: &Uuid,
        f: impl FnOnce(&mut PeerRow) -> T,
    ) -> Result<T, StoreError> {
        self.update_peer_with(id, |row, _| (f(row), false))
    }

    /// Like [`Store::update_peer`], but `f` also gets the feed head and says whether the row
    /// must be durable before returning (rare, important changes: a new incarnation seen, a
    /// duplicate identity).
    pub fn update_peer_with<T>(
        &self,
        id: &Uuid,
        f: impl FnOnce(&mut PeerRow, u64) -> (T, bool),
    ) -> Result<T, StoreError> {
        let w = self.lock();
        let mut row = match self.tree().get(keys::peer(id))? {
            Some(v) => decode(&v)?,
            None => PeerRow {
                instance: *id,
                first_seen: Some(Utc::now()),
                ..Default::default()
            },
        };
        let (out, durable) = f(&mut row, w.seq);
        row.instance = *id;
        self.tree().insert(keys::peer(id), encode(&row))?;
        if durable {
            self.tree().flush()?;
        }
        Ok(out)
    }

    /// Records changed after feed position `after`, in feed order, at most `limit` of them.
    pub fn changes_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String, Uuid, StoredRecord)>, StoreError> {
        let mut out = Vec::new();
        for kv in self
            .tree()
            .range(keys::feed(after.saturating_add(1))..keys::feed(u64::MAX))
        {
            let (k, v) = kv?;
            let seq = u64::from_be_bytes(k[1..9].try_into().expect("feed keys are 9 bytes"));
            let (table, id) = keys::parse_feed_value(&v)
                .and_then(|(_, suffix)| keys::parse_record_suffix(suffix))
                .ok_or_else(|| StoreError::Decode("bad feed entry".into()))?;
            let rec = self.get(&table, &id)?.ok_or_else(|| {
                StoreError::Decode(format!("feed points at missing {table}/{id}"))
            })?;
            out.push((seq, table, id, rec));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// How many feed entries (records changed) lie after position `after`, counting at most
    /// `cap` (keys only; no record is read).
    pub fn feed_len_after(&self, after: u64, cap: u64) -> Result<u64, StoreError> {
        let mut n = 0;
        for kv in self
            .tree()
            .range(keys::feed(after.saturating_add(1))..keys::feed(u64::MAX))
        {
            kv?;
            n += 1;
            if n >= cap {
                break;
            }
        }
        Ok(n)
    }

    /// Forces everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.tree().flush()?;
        Ok(())
    }

    /// Stamps the "now" of this instance (advances the clock; used by the sync hello).
    pub fn clock_now(&self) -> Hlc {
        let mut w = self.lock();
        w.clock.tick(crate::clock::wall_millis())
    }
}

/// Rebuilds the creating revision: undo every later revision's changes (newest first) on the
/// current values. Per field, changes were recorded in increasing stamp order (a change only
/// happens when a larger stamp wins), so this restores exactly the values the record was
/// created with.
pub(super) fn creation_entry(
    rec: &StoredRecord,
    c: &Created,
    later: &[HistoryEntry],
) -> HistoryEntry {
    let mut values: BTreeMap<String, Option<Value>> = rec
        .state
        .fields
        .iter()
        .map(|(k, f)| (k.clone(), f.value.clone()))
        .collect();
    for e in later.iter().rev() {
        for ch in e.revision.changes.iter().rev() {
            values.insert(ch.field.clone(), ch.old.clone());
        }
    }
    let changes = values
        .into_iter()
        .filter_map(|(field, v)| {
            v.map(|new| merge::FieldChange {
                field,
                old: None,
                new: Some(new),
            })
        })
        .collect();
    HistoryEntry {
        revision: Revision {
            at: c.at,
            kind: merge::RevisionKind::Create,
            changes,
            cause: merge::Cause::Edit,
            // Rebuilt by undoing the later revisions: if one of those was reconstructed by an
            // older version, so are these values.
            reconstructed: later.iter().any(|e| e.revision.reconstructed),
        },
        source: c.source,
        applied_at: c.applied_at,
    }
}

/// Describes a side for the conflict log.
pub fn side_name(s: Side) -> &'static str {
    match s {
        Side::Local => "local",
        Side::Remote => "remote",
    }
}

/// A sled error, with corruption reported as [`StoreError::Damaged`] of `dir`.
fn damaged(e: sled::Error, dir: &Path) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::Damaged(dir.to_path_buf()),
        other => StoreError::Sled(other),
    }
}

/// The file in a data directory whose exclusive `flock` marks the database as open by a
/// process ([`Store::open`]); sled's own lock in `db/` is let go while the store reopens sled.
pub const DIR_LOCK: &str = "store.lock";

/// Takes the exclusive lock on `dir`'s [`DIR_LOCK`] without waiting: `Locked` when another
/// open store (this process or another) holds it, as sled's own lock answers.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::io::AsRawFd;
    let path = dir.join(DIR_LOCK);
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock(2) on a descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Err(StoreError::Locked(dir.to_path_buf())),
            _ => Err(io(e)),
        };
    }
    Ok(file)
}

/// Opens sled in `db_dir` (the data directory `dir`'s `db/`) the way the store always does,
/// and the store's tree in it.
fn open_sled(db_dir: &Path, dir: &Path) -> Result<(sled::Db, sled::Tree), StoreError> {
    let db = sled::Config::new()
        .path(db_dir)
        .cache_capacity(CACHE_BYTES)
        // Data writes fsync explicitly before they are acknowledged; this only bounds
        // how long peer bookkeeping (positions without data, last-seen times) stays in
        // memory.
        .flush_every_ms(Some(1000))
        .open()
        .map_err(|e| match e {
            sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                StoreError::Locked(dir.to_path_buf())
            }
            sled::Error::Corruption { .. } => StoreError::Damaged(dir.to_path_buf()),
            other => StoreError::Sled(other),
        })?;
    let tree = db.open_tree("fieldsync").map_err(|e| damaged(e, dir))?;
    Ok((db, tree))
}

/// The name a laptop has until `init --name` gives it one: the host name (`/proc/sys/kernel/
/// hostname`), else "fieldsync".
pub(crate) fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "fieldsync".to_string())
}

#[cfg(test)]
mod reopen_tests;
#[cfg(test)]
mod tests;
