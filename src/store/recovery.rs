//! Getting a data directory into a state sled can open, and recognising one it cannot.
//!
//! Runs around `sled::Config::open` in [`super::Store::open`]:
//! 1. before sled sees the directory, any leftover `db/snap.<lsn>.generating` file is moved
//!    aside (never deleted) into `moved-aside/` (see [`move_aside_incomplete_snapshots`]);
//! 2. a `sled::Error::Corruption` at open becomes [`super::StoreError::Damaged`], one line
//!    naming the data directory and pointing at `fieldsync repair`;
//! 3. after opening, the store's format version is checked and older formats are migrated
//!    (see [`check_format`]).
//!
//! Layout of what this module owns in the data directory:
//!
//! | path                                   | what                                              |
//! |----------------------------------------|---------------------------------------------------|
//! | `db/`                                  | sled's own directory (`conf`, `db`, `snap.*`)     |
//! | `moved-aside/<UTC stamp>-<name>`       | files taken out of `db/` before sled opened it    |
//! | `damaged/db-<UTC stamp>/`              | a whole `db/` that `repair` replaced              |
//! | `db.format-<N>.old/`                   | copy of `db/` kept while a migration from format N runs |
//!
//! Meta key `M format` (rmp u32): the store format version; absent means format 1 (the first
//! one, written before the key existed).

use super::{decode, encode, keys, StoreError};
use std::path::{Path, PathBuf};

/// The store format this build writes, and the newest it reads.
///
/// | format | what changed                                                                  |
/// |--------|-------------------------------------------------------------------------------|
/// | 1      | the first (also every store without the `format` key)                         |
/// | 2      | history entries rebuilt before protocol 2 are marked `reconstructed` (`legacy.rs`) |
/// | 3      | range fingerprints: the `Z` entries of `fingerprint.rs` (`migrate_add_fingerprints`) |
/// | 4      | record values (`R`) are written zstd-compressed (`write::encode_record`); plain ones stay readable |
/// | 5      | signed commits: the `K`/`W` entries of `commits.rs`; a legacy commit over the own writes (`migrate_legacy_commit`) |
/// | 6      | record and history values may be compressed with their table's dictionary (`A` entries, `dict.rs`); older values stay readable |
pub const FORMAT_VERSION: u32 = 6;

/// Where files taken out of `db/` go, inside the data directory.
pub const MOVED_ASIDE_DIR: &str = "moved-aside";

/// Where `repair` puts a damaged `db/`, inside the data directory.
pub const DAMAGED_DIR: &str = "damaged";

/// One migration step: rewrites a store of format `from` into format `from + 1` by adding its
/// changes to `batch` (it reads `tree`, which still holds the old format).
pub(crate) type Migration = fn(&sled::Tree, &mut sled::Batch) -> Result<(), StoreError>;

/// The migrations, each with the format it starts from (`(1, f)` migrates format 1 to 2).
pub(crate) const MIGRATIONS: &[(u32, Migration)] = &[
    (1, super::legacy::migrate_1_to_2),
    (2, super::fingerprint::migrate_add_fingerprints),
    (3, records_compressed_from_now_on),
    (4, super::commits::migrate_legacy_commit),
    (5, dictionaries_from_now_on),
];

/// Format 3 to 4: nothing to rewrite. Records written from now on are compressed and the plain
/// ones read as before (rewriting a million records would be one huge batch for a few hundred
/// MB of disk); the version bump keeps an older fieldsync, which cannot read the compressed
/// ones, from opening the store.
fn records_compressed_from_now_on(_: &sled::Tree, _: &mut sled::Batch) -> Result<(), StoreError> {
    Ok(())
}

/// Format 5 to 6: nothing to rewrite, like 3 to 4. A table gets its dictionary the next time
/// one of its records is written (`dict.rs`); the values already stored stay as they are. The
/// bump keeps an older fieldsync, which cannot read values compressed with a dictionary, from
/// opening the store.
fn dictionaries_from_now_on(_: &sled::Tree, _: &mut sled::Batch) -> Result<(), StoreError> {
    Ok(())
}

/// A UTC time stamp usable in a file name, sortable as text.
fn stamp() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

/// Moves every `snap.*.generating` file out of sled's directory `db_dir` into
/// `<data_dir>/moved-aside/`, and returns where each went.
///
/// Why this is safe and needed (sled 0.34.7, `src/pagecache/snapshot.rs`):
/// - `write_snapshot` (snapshot.rs:512) writes the snapshot into `snap.<lsn>.generating`
///   (snapshot.rs:531-548), appends length and CRC, `sync_all`s it (snapshot.rs:556) and only
///   then renames it to `snap.<lsn>` (snapshot.rs:561); older snapshots are removed only after
///   that rename (snapshot.rs:566-581). So while a `.generating` file exists, the previous
///   complete snapshot (or none, on a first open) is still there and, together with the log,
///   describes the whole database: a `.generating` file is never needed.
/// - `read_snapshot` (snapshot.rs:458) takes the name that sorts last among every file starting
///   with `snap.` (`RunningConfig::get_snapshot_files`, config.rs:823-855, skips only
///   `.in___motion`), which is the `.generating` one when a process died while writing it; a
///   truncated file fails its length or CRC check (snapshot.rs:472-491) and
///   `read_snapshot_or_default` (snapshot.rs:442) turns that into
///   `Error::Corruption { at: None }`: "Read corrupted data at file offset None" on every later
///   open. The file must leave `db/` entirely (any name there starting with `snap.` is read).
pub fn move_aside_incomplete_snapshots(
    db_dir: &Path,
    data_dir: &Path,
) -> Result<Vec<PathBuf>, StoreError> {
    if incomplete_snapshots(db_dir)?.is_empty() {
        return Ok(Vec::new());
    }
    // A process that holds sled's lock (`Config::open`, config.rs:342-355, takes it in
    // `open_file`/`try_lock`, config.rs:556-610: `flock(LOCK_EX | LOCK_NB)` on `db/db`, before
    // `Db::start_inner` reads or writes any snapshot) may be writing
    // that very file right now. Only a directory nobody has open is touched: the lock is held
    // while moving and released before sled opens it.
    let lock_path = db_dir.join("db");
    let _lock = match std::fs::File::open(&lock_path) {
        Ok(f) => {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock(2) on a file descriptor we own for the duration of the call.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                return Ok(Vec::new());
            }
            Some(f)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&lock_path)(e)),
    };
    let mut moved = Vec::new();
    for (name, path) in incomplete_snapshots(db_dir)? {
        let aside = data_dir.join(MOVED_ASIDE_DIR);
        std::fs::create_dir_all(&aside).map_err(io_err(&aside))?;
        let to = aside.join(format!("{}-{name}", stamp()));
        std::fs::rename(&path, &to).map_err(io_err(&to))?;
        tracing::warn!(
            "moved the incomplete database snapshot {} to {}: a process was stopped while \
             writing it (power cut or kill), and the database opens from the previous snapshot \
             and its log; the file is kept only for inspection",
            path.display(),
            to.display()
        );
        moved.push(to);
    }
    if !moved.is_empty() {
        // The rename must be durable before sled writes a new snapshot of the same name.
        sync_dir(db_dir)?;
        sync_dir(&data_dir.join(MOVED_ASIDE_DIR))?;
    }
    Ok(moved)
}

/// The `snap.*.generating` files in sled's directory, as (name, path).
fn incomplete_snapshots(db_dir: &Path) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let entries = match std::fs::read_dir(db_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(db_dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(db_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

/// The format version recorded in the tree (absent: 1, the format before the key existed).
pub(crate) fn stored_format(tree: &sled::Tree) -> Result<u32, StoreError> {
    Ok(match tree.get(keys::meta("format"))? {
        Some(v) => decode(&v)?,
        None => 1,
    })
}

/// What [`check_format`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FormatCheck {
    /// The store is in the current format (the key is written if it was missing).
    Current,
    /// The store is older and must be migrated from this version.
    Older(u32),
}

/// Refuses a store written by a newer fieldsync (nothing is written then); records the version
/// in a store that lacks the key; reports an older one for [`migrate`].
pub(crate) fn check_format(
    db: &sled::Db,
    tree: &sled::Tree,
    dir: &Path,
) -> Result<FormatCheck, StoreError> {
    // A new database (no instance yet) has nothing to migrate: it starts in the current format.
    let fresh =
        tree.get(keys::meta("format"))?.is_none() && tree.get(keys::meta("instance"))?.is_none();
    let found = if fresh {
        FORMAT_VERSION
    } else {
        stored_format(tree)?
    };
    if found > FORMAT_VERSION {
        return Err(StoreError::NewerFormat {
            dir: dir.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    if found < FORMAT_VERSION {
        return Ok(FormatCheck::Older(found));
    }
    if tree.get(keys::meta("format"))?.is_none() {
        tree.insert(keys::meta("format"), encode(&FORMAT_VERSION))?;
        db.flush()?;
    }
    Ok(FormatCheck::Current)
}

/// Migrates the store in `data_dir/db` from format `from` to format `to` with `steps`
/// (normally [`MIGRATIONS`]): all steps and the new version go into one batch, so a crash
/// leaves the old format or the new one. The sled directory is copied to
/// `db.format-<from>.old/` first and that copy is removed only once the migrated batch is
/// durable. `open` reopens sled on the directory (the copy is taken while it is closed).
pub(crate) fn migrate(
    data_dir: &Path,
    from: u32,
    to: u32,
    steps: &[(u32, Migration)],
    open: impl Fn() -> Result<(sled::Db, sled::Tree), StoreError>,
) -> Result<(sled::Db, sled::Tree), StoreError> {
    let db_dir = data_dir.join("db");
    let old = data_dir.join(format!("db.format-{from}.old"));
    if old.exists() {
        // An earlier migration was interrupted: its copy is the untouched original.
        std::fs::remove_dir_all(&db_dir).map_err(io_err(&db_dir))?;
        copy_dir(&old, &db_dir)?;
    } else {
        let tmp = data_dir.join(format!("db.format-{from}.copying"));
        let _ = std::fs::remove_dir_all(&tmp);
        copy_dir(&db_dir, &tmp)?;
        std::fs::rename(&tmp, &old).map_err(io_err(&old))?;
        sync_dir(data_dir)?;
    }
    let (db, tree) = open()?;
    let mut batch = sled::Batch::default();
    for v in from..to {
        let (_, step) = steps.iter().find(|(f, _)| *f == v).ok_or_else(|| {
            StoreError::Decode(format!("no migration from store format {v} to {}", v + 1))
        })?;
        step(&tree, &mut batch)?;
    }
    batch.insert(keys::meta("format"), encode(&to));
    tree.apply_batch(batch)?;
    db.flush()?;
    tracing::warn!(
        "migrated the database in {} from store format {from} to {to}",
        data_dir.display()
    );
    std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    Ok((db, tree))
}

/// Copies a directory of plain files (sled's), fsyncing each file and the target directory.
fn copy_dir(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(to).map_err(io_err(to))?;
    for entry in std::fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(io_err(from))?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(io_err(&target))?;
            std::fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&target))?;
        }
    }
    sync_dir(to)
}

/// Refuses a database whose feed head `seq` is behind the newest automatic snapshot of the same
/// data directory: the disk lost writes it had acknowledged (sled treats a garbled log tail
/// after its own last snapshot as an interrupted write and silently drops it). Feed positions
/// only grow, even across a restore (see `Store::restore`), so this never fires on a healthy
/// database.
pub(crate) fn check_not_behind_snapshots(data_dir: &Path, seq: u64) -> Result<(), StoreError> {
    match crate::autosnapshot::list(data_dir).last() {
        Some(newest) if newest.feed_seq > seq => Err(StoreError::LostWrites {
            dir: data_dir.to_path_buf(),
            seq,
            snapshot_seq: newest.feed_seq,
        }),
        _ => Ok(()),
    }
}

/// Moves a damaged `data_dir/db` into `data_dir/damaged/db-<UTC stamp>` (never deletes it)
/// and returns where it went.
pub fn move_damaged_db(data_dir: &Path) -> Result<PathBuf, StoreError> {
    let db_dir = data_dir.join("db");
    let damaged = data_dir.join(DAMAGED_DIR);
    std::fs::create_dir_all(&damaged).map_err(io_err(&damaged))?;
    let to = damaged.join(format!("db-{}", stamp()));
    std::fs::rename(&db_dir, &to).map_err(io_err(&to))?;
    sync_dir(&damaged)?;
    sync_dir(data_dir)?;
    tracing::warn!(
        "moved the damaged database {} to {}",
        db_dir.display(),
        to.display()
    );
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::merge::Edit;
    use crate::store::{LocalOp, Store};
    use uuid::Uuid;

    fn store_with_a_record(dir: &Path) -> Store {
        let s = Store::open(dir, Config::default()).unwrap();
        let serde_json::Value::Object(fields) = serde_json::json!({"name": "Amina"}) else {
            unreachable!()
        };
        s.write_one(LocalOp {
            table: "person".into(),
            id: Uuid::new_v4(),
            edit: Edit::Put(fields),
        })
        .unwrap();
        s
    }

    /// Every key/value pair of the tree, read with sled directly.
    fn raw(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let db = sled::open(dir.join("db")).unwrap();
        let t = db.open_tree("fieldsync").unwrap();
        let all = t
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        drop((t, db));
        super::super::release::wait_released(&dir.join("db"));
        all
    }

    fn set_raw_format(dir: &Path, v: Option<u32>) {
        let db = sled::open(dir.join("db")).unwrap();
        let t = db.open_tree("fieldsync").unwrap();
        match v {
            Some(v) => t.insert(keys::meta("format"), encode(&v)).unwrap(),
            None => t.remove(keys::meta("format")).unwrap(),
        };
        db.flush().unwrap();
        drop((t, db));
        // sled's pool may hold the directory lock a moment after the drop (`release.rs`); the
        // next raw open in a test failed on it once under a parallel suite's load.
        super::super::release::wait_released(&dir.join("db"));
    }

    #[test]
    fn a_new_store_records_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Config::default()).unwrap();
        assert_eq!(stored_format(&s.tree()).unwrap(), FORMAT_VERSION);
        assert!(s.tree().get(keys::meta("format")).unwrap().is_some());
    }

    #[test]
    fn a_store_from_a_newer_fieldsync_is_refused_with_both_versions_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        drop(store_with_a_record(dir.path()));
        set_raw_format(dir.path(), Some(FORMAT_VERSION + 1));
        let before = raw(dir.path());
        let e = Store::open(dir.path(), Config::default())
            .err()
            .expect("a newer format is refused");
        assert!(matches!(e, StoreError::NewerFormat { found, supported, .. }
            if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION));
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("format {}", FORMAT_VERSION + 1))
                && msg.contains(&format!("up to {FORMAT_VERSION}"))
                && msg.contains(&dir.path().display().to_string())
                && !msg.contains('\n'),
            "{msg}"
        );
        assert_eq!(raw(dir.path()), before, "nothing was written");
    }

    #[test]
    fn a_first_format_store_is_migrated_and_gets_its_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let digest = {
            let s = store_with_a_record(dir.path());
            crate::formats::digest(&s, &["person".to_string()]).unwrap()
        };
        // What a format-1 store looks like: no version key, no fingerprint entries.
        set_raw_format(dir.path(), None);
        {
            let db = sled::open(dir.path().join("db")).unwrap();
            let t = db.open_tree("fieldsync").unwrap();
            for k in t.scan_prefix([b'Z']).keys() {
                t.remove(k.unwrap()).unwrap();
            }
            db.flush().unwrap();
        }
        super::super::release::wait_released(&dir.path().join("db"));
        let s = Store::open(dir.path(), Config::default()).unwrap();
        assert_eq!(
            crate::formats::digest(&s, &["person".to_string()]).unwrap(),
            digest
        );
        // Format 1, migrated on open to the current one.
        let v: u32 = decode(&s.tree().get(keys::meta("format")).unwrap().unwrap()).unwrap();
        assert_eq!(v, FORMAT_VERSION);
        assert_eq!(s.range_sum("person", &[]).unwrap().count, 1);
        assert!(s.check_fingerprints().unwrap().is_empty());
        assert!(!dir.path().join("db.format-1.old").exists());
    }

    #[test]
    fn an_incomplete_snapshot_is_moved_only_when_no_process_has_the_database_open() {
        let dir = tempfile::tempdir().unwrap();
        let db_dir = dir.path().join("db");
        let store = store_with_a_record(dir.path());
        let gen = db_dir.join("snap.00000000000FFFFF.generating");
        std::fs::write(&gen, b"cut off").unwrap();
        // The holder may be writing it right now: hands off.
        assert!(move_aside_incomplete_snapshots(&db_dir, dir.path())
            .unwrap()
            .is_empty());
        assert!(gen.exists());
        drop(store);
        let moved = move_aside_incomplete_snapshots(&db_dir, dir.path()).unwrap();
        assert_eq!(moved.len(), 1);
        assert!(!gen.exists());
        assert_eq!(std::fs::read(&moved[0]).unwrap(), b"cut off");
        assert!(moved[0].starts_with(dir.path().join(MOVED_ASIDE_DIR)));
    }

    fn add_marker(tree: &sled::Tree, batch: &mut sled::Batch) -> Result<(), StoreError> {
        assert!(
            tree.get(keys::meta("instance"))?.is_some(),
            "reads the old store"
        );
        batch.insert(keys::meta("migrated"), encode(&true));
        Ok(())
    }

    fn fail_step(_: &sled::Tree, _: &mut sled::Batch) -> Result<(), StoreError> {
        Err(StoreError::Decode("test step fails".into()))
    }

    fn opener(dir: &Path) -> impl Fn() -> Result<(sled::Db, sled::Tree), StoreError> + '_ {
        move || {
            let db = sled::open(dir.join("db"))?;
            let t = db.open_tree("fieldsync")?;
            Ok((db, t))
        }
    }

    #[test]
    fn a_migration_commits_in_one_step_and_drops_the_old_copy_only_after_success() {
        let dir = tempfile::tempdir().unwrap();
        drop(store_with_a_record(dir.path()));
        set_raw_format(dir.path(), Some(7));
        let before = raw(dir.path());
        let old = dir.path().join("db.format-7.old");

        // A failing step writes nothing and keeps the copy of the old format.
        let e = migrate(dir.path(), 7, 8, &[(7, fail_step)], opener(dir.path()))
            .expect_err("the step fails");
        assert!(e.to_string().contains("test step fails"));
        assert_eq!(raw(dir.path()), before);
        assert!(
            old.is_dir(),
            "the old copy is kept until a migration succeeds"
        );

        // Retried (after an interruption the copy is the original): done in one batch.
        let (db, tree) = migrate(dir.path(), 7, 8, &[(7, add_marker)], opener(dir.path())).unwrap();
        assert_eq!(stored_format(&tree).unwrap(), 8);
        assert!(tree.get(keys::meta("migrated")).unwrap().is_some());
        drop((db, tree));
        assert!(
            !old.exists(),
            "the copy goes once the migrated store is durable"
        );
        let after = raw(dir.path());
        assert_eq!(after.len(), before.len() + 1);

        // A missing step is an error, not a silent version bump.
        set_raw_format(dir.path(), Some(3));
        let e = migrate(dir.path(), 3, 5, &[(3, add_marker)], opener(dir.path()))
            .expect_err("no step from 4");
        assert!(e.to_string().contains("from store format 4"), "{e}");
    }
}
