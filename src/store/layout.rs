//! How sled is driven: its segment size and cache, and moving a database into a new segment
//! size (sled refuses to reopen a directory with another one).
//!
//! sled settings this store opens every database with:
//!
//! | setting          | value   | why                                                         |
//! |------------------|---------|-------------------------------------------------------------|
//! | `segment_size`   | 128 KiB | sled keeps whole segments of written nodes and its io buffers in memory while writes are flushed: sled's default 512 KiB made a 100,000-record sync peak at ~2× the memory (bench/RESULTS.md); disk use is the same |
//! | `cache_capacity` | [`super::CACHE_BYTES`] | see there                              |
//! | `flush_every_ms` | 1000    | data writes fsync explicitly; this bounds bookkeeping only  |
//!
//! sled records the segment size in `db/conf` (`segment_size: <bytes>` on a line of its own,
//! then a CRC) and refuses to open with any other. A database written with another segment
//! size (every one before store format 6: sled's default 512 KiB) is opened with the size it
//! has, and then copied, tree by tree, into a new sled directory with [`SEGMENT_BYTES`]
//! ([`relayout`]). Files this module owns in the data directory:
//!
//! | path                    | what                                                          |
//! |-------------------------|---------------------------------------------------------------|
//! | `db.relayout.building/` | the new sled directory while it is filled (incomplete: removed at the next open) |
//! | `db.relayout.new/`      | the new directory, complete and durable, waiting to replace `db/` |
//! | `db.relayout.old/`      | the previous `db/`, kept until the new one is in place        |
//!
//! Crash safety: the new directory becomes `db.relayout.new` (one rename) only after it is
//! flushed, closed and its directory entries fsynced; `db/` is then renamed to
//! `db.relayout.old` and `db.relayout.new` to `db/`, each rename fsynced, and only then is the
//! old one removed. [`recover`] runs before sled sees `db/` and finishes whichever step a
//! crash interrupted, so an open finds the old database whole or the new one whole.

use super::{decode, encode, incarnation, keys, release, StoreError, CACHE_BYTES};
use std::path::{Path, PathBuf};

/// sled's segment size for every database this build creates or migrates (bytes).
pub const SEGMENT_BYTES: usize = 128 << 10;

/// Entries copied per `apply_batch` while moving a database: bounded, so memory stays flat
/// whatever the database's size.
const COPY_BATCH: usize = 1_000;

const BUILDING: &str = "db.relayout.building";
const NEW: &str = "db.relayout.new";
const OLD: &str = "db.relayout.old";

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

/// Opens sled on `db_dir` the way the store does, with the given segment size.
pub(crate) fn open_sled(db_dir: &Path, segment_bytes: usize) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(db_dir)
        .cache_capacity(CACHE_BYTES)
        .segment_size(segment_bytes)
        // Data writes fsync explicitly before they are acknowledged; this only bounds how long
        // peer bookkeeping (positions without data, last-seen times) stays in memory.
        .flush_every_ms(Some(1000))
        .open()
}

/// The segment size sled recorded for the database in `db_dir` (`None`: no database yet).
pub fn stored_segment_size(db_dir: &Path) -> Result<Option<usize>, StoreError> {
    let path = db_dir.join("conf");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    // The text lines, then a 4-byte CRC that may look like anything.
    let text = String::from_utf8_lossy(&bytes);
    let size = text
        .lines()
        .find_map(|l| l.strip_prefix("segment_size: "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match size {
        Some(s) => Ok(Some(s)),
        // An empty or cut-off conf: sled rewrites it on open (no segment was written with a
        // size it names), so the current size applies.
        None if !text.contains("segment_size") => Ok(None),
        None => Err(StoreError::Damaged(
            db_dir.parent().unwrap_or(db_dir).to_path_buf(),
        )),
    }
}

/// An exclusive `flock` on the data directory itself, held while [`recover`] or [`relayout`]
/// moves directories: another process opening the same data directory meanwhile must neither
/// move them too nor let sled create an empty database where `db/` is missing for a moment.
pub(crate) struct DirLock {
    /// The lock goes when this is closed.
    _file: std::fs::File,
}

impl DirLock {
    /// Takes the lock, or says the directory is in use ([`StoreError::Locked`]).
    pub(crate) fn take(data_dir: &Path) -> Result<DirLock, StoreError> {
        use std::os::unix::io::AsRawFd;
        let f = std::fs::File::open(data_dir).map_err(io_err(data_dir))?;
        // SAFETY: flock(2) on a descriptor this guard owns; released when it is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StoreError::Locked(data_dir.to_path_buf()));
        }
        Ok(DirLock { _file: f })
    }
}

/// Finishes or undoes a [`relayout`] a crash interrupted, before sled opens `data_dir/db`.
/// Does nothing when none was under way. The caller holds the [`DirLock`].
pub(crate) fn recover(data_dir: &Path, _lock: &DirLock) -> Result<(), StoreError> {
    let db = data_dir.join("db");
    let building = data_dir.join(BUILDING);
    let new = data_dir.join(NEW);
    let old = data_dir.join(OLD);
    if building.exists() {
        // Never completed: `db/` is still the database.
        std::fs::remove_dir_all(&building).map_err(io_err(&building))?;
        sync_dir(data_dir)?;
    }
    if new.exists() {
        if db.exists() {
            if old.exists() {
                return Err(StoreError::Decode(format!(
                    "{} holds db/, {NEW}/ and {OLD}/ at once, which fieldsync never leaves: \
                     move the two db.relayout.* directories out of the data directory and \
                     open it again",
                    data_dir.display()
                )));
            }
            std::fs::rename(&db, &old).map_err(io_err(&old))?;
            sync_dir(data_dir)?;
        }
        std::fs::rename(&new, &db).map_err(io_err(&db))?;
        sync_dir(data_dir)?;
    }
    if old.exists() {
        if db.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        } else {
            // Not left by fieldsync (it renames new into place first); the only copy there is.
            std::fs::rename(&old, &db).map_err(io_err(&db))?;
        }
        sync_dir(data_dir)?;
    }
    Ok(())
}

/// Moves the database in `data_dir/db`, written with segments of `from_segment` bytes, into a
/// new sled directory with segments of `to_segment` bytes (normally [`SEGMENT_BYTES`]): every
/// tree and entry copied unchanged, except that the lineage's directory key follows the move
/// (the new directory is the same database, not a copy: see `incarnation.rs`). Crash safe (the
/// module comment); needs free disk space for a second copy of the database while it runs.
/// The database must be closed; the caller holds the [`DirLock`].
pub(crate) fn relayout(
    data_dir: &Path,
    from_segment: usize,
    to_segment: usize,
    lock: &DirLock,
) -> Result<(), StoreError> {
    recover(data_dir, lock)?;
    let db_dir = data_dir.join("db");
    let building = data_dir.join(BUILDING);
    let damaged = |e: sled::Error| match e {
        sled::Error::Corruption { .. } => StoreError::Damaged(data_dir.to_path_buf()),
        other => StoreError::Sled(other),
    };
    let copied = {
        let old = open_sled(&db_dir, from_segment).map_err(damaged)?;
        let new = open_sled(&building, to_segment)?;
        let mut copied = 0u64;
        for name in old.tree_names() {
            let from = old.open_tree(&name).map_err(damaged)?;
            let to = new.open_tree(&name)?;
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for kv in from.iter() {
                let (k, v) = kv.map_err(damaged)?;
                batch.insert(k, v);
                n += 1;
                if n == COPY_BATCH {
                    to.apply_batch(std::mem::take(&mut batch))?;
                    copied += n as u64;
                    n = 0;
                }
            }
            to.apply_batch(batch)?;
            copied += n as u64;
            if &*name == b"fieldsync" {
                follow_lineage(&to, &db_dir, &building)?;
            }
        }
        new.flush()?;
        copied
    };
    // Both closed (sled's pool may hold a lock a moment longer).
    release::wait_released(&building);
    release::wait_released(&db_dir);
    sync_dir(&building)?;
    let new = data_dir.join(NEW);
    std::fs::rename(&building, &new).map_err(io_err(&new))?;
    sync_dir(data_dir)?;
    recover(data_dir, lock)?;
    tracing::warn!(
        "moved the database in {} to {} KiB segments ({copied} entries copied; was {} KiB)",
        data_dir.display(),
        to_segment >> 10,
        from_segment >> 10
    );
    Ok(())
}

/// The lineage names the directory it began in; the moved database is the same one, so it
/// takes the new directory's key — unless it already named another (a copy not yet opened
/// since), which must still be seen as a copy.
fn follow_lineage(to: &sled::Tree, old_dir: &Path, new_dir: &Path) -> Result<(), StoreError> {
    let Some(v) = to.get(keys::meta("lineage"))? else {
        return Ok(());
    };
    let mut l: incarnation::Lineage = decode(&v)?;
    let was = incarnation::dir_key(old_dir);
    if l.dir_key.is_some() && l.dir_key == was {
        l.dir_key = incarnation::dir_key(new_dir);
        to.insert(keys::meta("lineage"), encode(&l))?;
    }
    Ok(())
}

/// Where the module keeps its directories.
#[cfg(test)]
pub(crate) fn relayout_dirs(data_dir: &Path) -> [PathBuf; 3] {
    [BUILDING, NEW, OLD].map(|n| data_dir.join(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::merge::Edit;
    use crate::store::recovery::{copy_dir, stored_format, FORMAT_VERSION};
    use crate::store::{LocalOp, Store};
    use uuid::Uuid;

    /// sled's default, which every store before format 6 has.
    const OLD_SEGMENT: usize = 512 << 10;

    fn put(s: &Store, table: &str, n: usize) {
        for i in 0..n {
            let serde_json::Value::Object(fields) = serde_json::json!({"name": format!("n{i}")})
            else {
                unreachable!()
            };
            s.write_one(LocalOp {
                table: table.into(),
                id: Uuid::new_v4(),
                edit: Edit::Put(fields),
            })
            .unwrap();
        }
    }

    /// Every entry of every tree, read with sled directly (the lineage left out: it names the
    /// directory, which a move changes).
    fn raw(data_dir: &Path) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let db_dir = data_dir.join("db");
        let seg = stored_segment_size(&db_dir).unwrap().unwrap();
        let db = open_sled(&db_dir, seg).unwrap();
        let mut out = Vec::new();
        for name in db.tree_names() {
            for kv in db.open_tree(&name).unwrap().iter() {
                let (k, v) = kv.unwrap();
                if *k != *keys::meta("lineage") {
                    out.push((name.to_vec(), k.to_vec(), v.to_vec()));
                }
            }
        }
        drop(db);
        release::wait_released(&db_dir);
        out
    }

    fn set_format(data_dir: &Path, v: u32) {
        let db_dir = data_dir.join("db");
        let seg = stored_segment_size(&db_dir).unwrap().unwrap();
        let db = open_sled(&db_dir, seg).unwrap();
        let t = db.open_tree("fieldsync").unwrap();
        t.insert(keys::meta("format"), encode(&v)).unwrap();
        db.flush().unwrap();
        drop((t, db));
        release::wait_released(&db_dir);
    }

    fn move_to(data_dir: &Path, from: usize, to: usize) {
        let lock = DirLock::take(data_dir).unwrap();
        relayout(data_dir, from, to, &lock).unwrap();
    }

    fn no_leftovers(data_dir: &Path) {
        for d in relayout_dirs(data_dir) {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }

    /// The data directory of tests/fixtures/store-format-5 (written by fieldsync 960be4c,
    /// store format 5, sled's default segments; see the NOTE.md there) unpacked into `to`.
    fn unpack_format_5(to: &Path) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-format-5");
        let db = to.join("db");
        std::fs::create_dir_all(db.join("blobs")).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            let Some(name) = p
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .strip_suffix(".zst")
            else {
                continue;
            };
            let bytes = zstd::decode_all(std::fs::File::open(&p).unwrap()).unwrap();
            std::fs::write(db.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn a_format_5_store_written_by_the_previous_fieldsync_opens_in_the_new_segments_whole() {
        let dir = tempfile::tempdir().unwrap();
        unpack_format_5(dir.path());
        let db_dir = dir.path().join("db");
        assert_eq!(stored_segment_size(&db_dir).unwrap(), Some(OLD_SEGMENT));
        let person = "bb2edb20-035b-4399-bfd4-235992edcf45".parse().unwrap();
        let incarnation = {
            let s = Store::open(dir.path(), Config::default()).unwrap();
            assert_eq!(stored_segment_size(&db_dir).unwrap(), Some(SEGMENT_BYTES));
            assert_eq!(stored_format(&s.tree).unwrap(), FORMAT_VERSION);
            // What the fixture's NOTE.md says fieldsync 960be4c printed for it.
            assert_eq!(s.id().to_string(), "730dc2b3-c544-4216-9c31-5ebcfbb4c035");
            assert_eq!(s.seq(), 43);
            let tables = ["person".to_string(), "place".to_string()];
            assert_eq!(
                crate::formats::digest(&s, &tables).unwrap(),
                (
                    40,
                    "236c094815ba22bf804691561ce765ea40df2fbb62c89a1d62ee394b97b56f7b".into()
                )
            );
            let counts: Vec<_> = s
                .tables()
                .unwrap()
                .into_iter()
                .map(|(t, c)| (t, c.live, c.deleted))
                .collect();
            assert_eq!(
                counts,
                [("person".into(), 39, 1), ("place".to_string(), 1, 0)]
            );
            assert_eq!(s.history("person", &person).unwrap().len(), 2);
            put(&s, "person", 3);
            s.incarnation()
        };
        no_leftovers(dir.path());
        assert!(!dir.path().join("db.format-5.old").exists());
        // Reopened: no second move, the same incarnation (the move is not a copy), the writes.
        let s = Store::open(dir.path(), Config::default()).unwrap();
        assert_eq!(s.incarnation(), incarnation);
        assert_eq!(s.seq(), 46);
        assert_eq!(s.tables().unwrap()[0].1.live, 42);
    }

    #[test]
    fn moving_a_store_keeps_every_entry_and_its_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let incarnation = {
            let s = Store::open(dir.path(), Config::default()).unwrap();
            put(&s, "person", 2_500);
            s.incarnation()
        };
        let before = raw(dir.path());
        // Back to sled's default segments as format 5 was, then opened by this build.
        move_to(dir.path(), SEGMENT_BYTES, OLD_SEGMENT);
        set_format(dir.path(), 5);
        assert_eq!(
            stored_segment_size(&dir.path().join("db")).unwrap(),
            Some(OLD_SEGMENT)
        );
        let s = Store::open(dir.path(), Config::default()).unwrap();
        assert_eq!(s.incarnation(), incarnation, "a move is not a copy");
        drop(s);
        assert_eq!(
            stored_segment_size(&dir.path().join("db")).unwrap(),
            Some(SEGMENT_BYTES)
        );
        assert_eq!(raw(dir.path()), before);
        no_leftovers(dir.path());
    }

    #[test]
    fn a_move_interrupted_at_any_step_is_finished_or_redone_at_the_next_open() {
        let base = tempfile::tempdir().unwrap();
        let old_dir = base.path().join("old");
        let new_dir = base.path().join("new");
        // The same store in the old segments (format 5) and, moved, in the new ones.
        {
            let s = Store::open(&old_dir, Config::default()).unwrap();
            put(&s, "person", 50);
        }
        move_to(&old_dir, SEGMENT_BYTES, OLD_SEGMENT);
        set_format(&old_dir, 5);
        copy_dir(&old_dir, &new_dir).unwrap();
        move_to(&new_dir, OLD_SEGMENT, SEGMENT_BYTES);
        let want = raw(&new_dir);
        let want: Vec<_> = want
            .into_iter()
            .filter(|(_, k, _)| *k != keys::meta("format"))
            .collect();

        // Each state a crash can leave, as (db/, building, new, old) sources.
        type State<'a> = (
            Option<&'a Path>,
            Option<&'a Path>,
            Option<&'a Path>,
            Option<&'a Path>,
        );
        let states: [(&str, State); 5] = [
            (
                "filling the new directory",
                (Some(&old_dir), Some(&new_dir), None, None),
            ),
            (
                "new directory complete",
                (Some(&old_dir), None, Some(&new_dir), None),
            ),
            (
                "old one renamed away",
                (None, None, Some(&new_dir), Some(&old_dir)),
            ),
            (
                "new one in place",
                (Some(&new_dir), None, None, Some(&old_dir)),
            ),
            ("not started", (Some(&old_dir), None, None, None)),
        ];
        for (what, (db, building, new, old)) in states {
            let dir = tempfile::tempdir().unwrap();
            let [b, n, o] = relayout_dirs(dir.path());
            for (src, to) in [
                (db, dir.path().join("db")),
                (building, b),
                (new, n),
                (old, o),
            ] {
                if let Some(src) = src {
                    copy_dir(&src.join("db"), &to).unwrap();
                }
            }
            if building.is_some() {
                // Cut off mid-copy: its log is shorter than sled wrote it.
                let log = dir.path().join(BUILDING).join("db");
                let len = std::fs::metadata(&log).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&log)
                    .unwrap()
                    .set_len(len / 3)
                    .unwrap();
            }
            let s = Store::open(dir.path(), Config::default())
                .unwrap_or_else(|e| panic!("{what}: the store does not open: {e}"));
            assert_eq!(stored_format(&s.tree).unwrap(), FORMAT_VERSION, "{what}");
            assert_eq!(s.tables().unwrap()[0].1.live, 50, "{what}");
            drop(s);
            let got: Vec<_> = raw(dir.path())
                .into_iter()
                .filter(|(_, k, _)| *k != keys::meta("format"))
                .collect();
            assert_eq!(got, want, "{what}");
            assert_eq!(
                stored_segment_size(&dir.path().join("db")).unwrap(),
                Some(SEGMENT_BYTES),
                "{what}"
            );
            no_leftovers(dir.path());
        }
    }

    #[test]
    fn a_store_in_use_by_another_process_is_not_moved() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DirLock::take(dir.path()).unwrap();
        // flock locks belong to open files: a second open of the directory is refused even
        // in the same process, as it would be in another.
        let e = Store::open(dir.path(), Config::default())
            .err()
            .expect("refused while another holder moves directories");
        assert!(matches!(e, StoreError::Locked(_)), "{e}");
    }
}
