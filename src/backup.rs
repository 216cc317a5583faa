//! `fieldsync backup` and `fieldsync restore`: the whole database in one file.
//!
//! File format, version 2 (1 is the same with plain record values): one zstd frame (with its content checksum, so a damaged or cut-off
//! file is refused) holding a sequence of MessagePack values: a [`Header`], then exactly
//! `header.counts.keys` entries, each a two-element array `[key, value]` of binary strings
//! (the raw pairs of the database tree; their layout is documented in `store/keys.rs`).
//! Version 2 marks that record values may be zstd-compressed (store format 4), which a
//! fieldsync that reads only version 1 cannot decode: it refuses the file up front, naming both
//! versions, instead of failing on the first compressed record. Version 3 (store format 6)
//! marks that record values may be compressed with their table's dictionary, which the file
//! holds under its `A` key (`store/dict.rs`), before the records in key order.
//!
//! The snapshot is read under the store's writer lock (see [`Store::read_consistent`]) and
//! compressed straight into a file beside its final name (memory stays flat), so writes wait
//! only for reading, compressing and handing the bytes to the OS, not for a slow USB stick: the
//! file is fsynced and renamed into place after the lock is released. An automatic snapshot
//! ([`write_backup_giving_way`]) does not make them wait even that long: it stops as soon as
//! another thread waits for the lock, and is taken again later.

use crate::formats;
use crate::store::{RestoreReport, SnapshotCounts, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::io::Read;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The `format` marker of a backup header.
pub const FORMAT: &str = "fieldsync-backup";
/// The newest format version this build reads and the one it writes.
pub const FORMAT_VERSION: u32 = 3;
/// zstd level: fast enough that writes are held up briefly, and records compress well.
const ZSTD_LEVEL: i32 = 3;

/// Failures of backup and restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not a usable backup.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a backup holds, written first in the file and printed by `backup`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Version of the fieldsync that wrote it.
    pub fieldsync: String,
    /// The instance the backup was taken from.
    pub instance: Uuid,
    /// Its display name.
    pub instance_name: String,
    /// When the snapshot was taken.
    pub created_at: DateTime<Utc>,
    /// The feed head at the snapshot.
    pub feed_seq: u64,
    /// Entries by kind.
    pub counts: SnapshotCounts,
    /// Live records (what `fieldsync digest` counts).
    pub live_records: u64,
    /// `fieldsync digest` of every table at the snapshot.
    pub sha256: String,
}

struct Bin<'a>(&'a [u8]);

impl Serialize for Bin<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a binary string")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Writes a consistent snapshot of the whole database to `path` (atomically: a reader never
/// sees a partial file under that name) and returns its header.
///
/// The compressed stream goes straight into a temporary file beside `path` while the writer
/// lock is held (writes into the OS page cache, not to the disk), so memory stays flat whatever
/// the database's size; the fsync and the rename into place happen after the lock is released.
pub fn write_backup(store: &Store, path: &Path) -> Result<Header, BackupError> {
    write_backup_with(store, path, false)?
        .ok_or_else(|| invalid(path, "the backup was interrupted"))
}

/// [`write_backup`] that gives way to writers: while it reads (holding the writer lock), it
/// checks every [`formats::STOP_EVERY`] records or entries whether another thread waits for
/// that lock (a sync page, a local write, a peer's hello), and if so stops, removes its
/// temporary file and returns `None` — the caller takes it again later. An automatic snapshot
/// of 100,000 records reads for seconds; a sync started meanwhile waited all of it (measured:
/// an incremental sync of 1,020 records waited ~40 s for the receiver's snapshot under load).
pub fn write_backup_giving_way(store: &Store, path: &Path) -> Result<Option<Header>, BackupError> {
    write_backup_with(store, path, true)
}

fn write_backup_with(
    store: &Store,
    path: &Path,
    give_way: bool,
) -> Result<Option<Header>, BackupError> {
    let io = |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = TempFile::create(path).map_err(io)?;
    let header = store.read_consistent(|view| -> Result<_, BackupError> {
        let s = view.store();
        let stop = || give_way && view.writer_waiting();
        let t = std::time::Instant::now();
        let tables: Vec<String> = s.tables()?.into_iter().map(|(t, _)| t).collect();
        let Some((live_records, sha256)) =
            formats::digest_until(s, &tables, &stop, &|| view.shed())?
        else {
            return Ok(None);
        };
        let digest_ms = t.elapsed().as_millis() as u64;
        let Some(counts) = view.counts_until(&stop)? else {
            return Ok(None);
        };
        let counts_ms = t.elapsed().as_millis() as u64 - digest_ms;
        let info = s.instance();
        let header = Header {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            fieldsync: crate::build_info::version_text().into(),
            instance: info.id,
            instance_name: info.name,
            created_at: Utc::now(),
            feed_seq: view.seq(),
            counts,
            live_records,
            sha256,
        };
        let out = std::io::BufWriter::with_capacity(1 << 16, tmp.file().map_err(io)?);
        let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(io)?;
        enc.include_checksum(true).map_err(io)?;
        let mut written = 0u64;
        rmp_serde::encode::write_named(&mut enc, &header).map_err(|e| invalid(path, e))?;
        let all = view.for_each_entry(|k, v| -> Result<bool, BackupError> {
            rmp_serde::encode::write(&mut enc, &(Bin(k), Bin(v))).map_err(|e| invalid(path, e))?;
            written += 1;
            Ok(written % formats::STOP_EVERY != 0 || !stop())
        })?;
        if !all {
            return Ok(None);
        }
        if written != header.counts.keys {
            return Err(invalid(
                path,
                "the database changed while it was being read",
            ));
        }
        enc.finish()
            .and_then(|out| out.into_inner().map_err(|e| e.into_error()))
            .map_err(io)?;
        // Each pass asks whether to give way; how long they take says how long one is.
        tracing::debug!(
            digest_ms,
            counts_ms,
            entries_ms = t.elapsed().as_millis() as u64 - digest_ms - counts_ms,
            keys = written,
            "snapshot read"
        );
        Ok(Some(header))
    })?;
    match header {
        Some(h) => {
            tmp.commit().map_err(io)?;
            Ok(Some(h))
        }
        // Dropped without a commit: the temporary file is removed.
        None => Ok(None),
    }
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> BackupError {
    BackupError::Invalid {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// A file being written beside its final name: [`TempFile::commit`] fsyncs it, renames it over
/// the final name and fsyncs the directory, so a crash leaves the old file or the new one;
/// dropped without a commit (an error on the way), it is removed.
struct TempFile {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    file: Option<std::fs::File>,
}

impl TempFile {
    fn create(path: &Path) -> std::io::Result<TempFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        // Backups hold every record: readable by their owner only, like the database.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        Ok(TempFile {
            tmp,
            path: path.to_path_buf(),
            dir,
            file: Some(file),
        })
    }

    /// A second handle on the open file, for a writer.
    fn file(&self) -> std::io::Result<std::fs::File> {
        self.file.as_ref().expect("open until commit").try_clone()
    }

    fn commit(mut self) -> std::io::Result<()> {
        let f = self.file.take().expect("open until commit");
        let result = f
            .sync_all()
            .and_then(|()| std::fs::rename(&self.tmp, &self.path))
            .and_then(|()| std::fs::File::open(&self.dir)?.sync_all());
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The raw key/value pairs of a database, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads and checks a whole backup file: header, every entry, the checksum at the end.
pub fn read_backup(path: &Path) -> Result<(Header, Entries), BackupError> {
    let file = std::fs::File::open(path).map_err(|source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let not_backup = |e: &dyn std::fmt::Display| {
        invalid(path, format!("not a fieldsync backup, or damaged ({e})"))
    };
    // Every backup starts as a zstd frame: anything else is some other file, which the
    // decoder's own words ("Unknown frame descriptor") would not tell a person.
    let mut magic = [0u8; 4];
    let head = std::io::Read::read(&mut &file, &mut magic).unwrap_or(0);
    if head < 4 || magic != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(invalid(
            path,
            "not a fieldsync backup (it does not start as one): give a file written by \
             `fieldsync backup FILE`, or an automatic snapshot from the data directory's \
             snapshots/",
        ));
    }
    use std::io::Seek;
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|source| BackupError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let dec = zstd::stream::read::Decoder::new(file).map_err(|e| not_backup(&e))?;
    let mut de = rmp_serde::Deserializer::new(dec);
    let header = Header::deserialize(&mut de).map_err(|e| not_backup(&e))?;
    if header.format != FORMAT {
        return Err(not_backup(&"wrong format marker"));
    }
    if header.format_version > FORMAT_VERSION {
        return Err(invalid(
            path,
            format!(
                "backup format {} was written by a newer fieldsync ({}); this one reads up to {}",
                header.format_version, header.fieldsync, FORMAT_VERSION
            ),
        ));
    }
    let mut entries = Vec::with_capacity(header.counts.keys.min(1 << 20) as usize);
    for _ in 0..header.counts.keys {
        let (ByteBuf(k), ByteBuf(v)) =
            <(ByteBuf, ByteBuf)>::deserialize(&mut de).map_err(|e| not_backup(&e))?;
        entries.push((k, v));
    }
    // Reading to the end makes zstd verify the frame's checksum.
    let mut rest = Vec::new();
    de.into_inner()
        .read_to_end(&mut rest)
        .map_err(|e| not_backup(&e))?;
    if !rest.is_empty() {
        return Err(not_backup(&"unexpected data after the last entry"));
    }
    Ok((header, entries))
}

/// What `fieldsync restore` did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Restored {
    /// The backup's header.
    pub header: Header,
    /// What the store did.
    pub report: RestoreReport,
    /// Live records after the restore.
    pub live_records: u64,
    /// `fieldsync digest` after the restore (equals the header's).
    pub sha256: String,
}

/// Replaces the store's contents with a backup (see [`Store::restore`] for what changes), then
/// checks that the restored records digest to what the backup captured.
pub fn restore(
    store: &Store,
    path: &Path,
    take_over: bool,
    force: bool,
) -> Result<Restored, BackupError> {
    let (header, entries) = read_backup(path)?;
    if !force && !store.is_empty()? {
        return Err(invalid(
            store.dir(),
            "the data directory already holds data; restore into an empty one, or pass \
             --force to replace everything in it",
        ));
    }
    let report = store.restore(entries, take_over)?;
    let tables: Vec<String> = store.tables()?.into_iter().map(|(t, _)| t).collect();
    let (live_records, sha256) = formats::digest(store, &tables)?;
    if (live_records, &sha256) != (header.live_records, &header.sha256) {
        return Err(invalid(
            path,
            format!(
                "restored {live_records} records with digest {sha256}, but the backup recorded \
                 {} with {}",
                header.live_records, header.sha256
            ),
        ));
    }
    Ok(Restored {
        header,
        report,
        live_records,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::merge::Edit;
    use crate::store::LocalOp;

    /// Rewrites a backup file with another header version (same entries).
    fn with_version(from: &Path, to: &Path, version: u32) {
        let (mut header, entries) = read_backup(from).unwrap();
        header.format_version = version;
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_checksum(true).unwrap();
        rmp_serde::encode::write_named(&mut enc, &header).unwrap();
        for (k, v) in &entries {
            rmp_serde::encode::write(&mut enc, &(Bin(k), Bin(v))).unwrap();
        }
        std::fs::write(to, enc.finish().unwrap()).unwrap();
    }

    /// Some other file given as a backup is named as such, without the decoder's words (a
    /// newcomer read "IO error while reading marker: Unknown frame descriptor"); an empty
    /// file too.
    #[test]
    fn a_file_that_is_not_a_backup_is_called_so_in_plain_words() {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [
            ("notes.txt", &b"shelter list, 3 rows\n"[..]),
            ("empty", b""),
        ] {
            let f = dir.path().join(name);
            std::fs::write(&f, body).unwrap();
            let e = read_backup(&f).unwrap_err().to_string();
            assert!(
                e.contains("not a fieldsync backup (it does not start as one)"),
                "{e}"
            );
            assert!(e.contains("fieldsync backup FILE"), "{e}");
            assert!(!e.contains("frame"), "{e}");
        }
    }

    #[test]
    fn a_backup_that_reopens_sled_as_it_reads_holds_exactly_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a"), Config::default()).unwrap();
        // Two tables, so the digest goes on after a reopen in each; deleted records too.
        let ops: Vec<LocalOp> = (0..1_200)
            .map(|i| LocalOp {
                table: if i % 3 == 0 { "shelter" } else { "person" }.into(),
                id: Uuid::new_v4(),
                edit: Edit::Put(
                    serde_json::from_value(serde_json::json!({"name": format!("p{i}")})).unwrap(),
                ),
            })
            .collect();
        s.write_local(&ops).unwrap();
        let deletes: Vec<LocalOp> = ops
            .iter()
            .step_by(7)
            .map(|o| LocalOp {
                edit: Edit::Delete,
                ..o.clone()
            })
            .collect();
        s.write_local(&deletes).unwrap();
        let tables = vec!["person".to_string(), "shelter".to_string()];
        let digest = formats::digest(&s, &tables).unwrap();
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            s.read_consistent(|v| v.entries().collect::<Result<_, _>>().unwrap());
        // What a snapshot of a large database does every SHED_EVERY entries, here every 100.
        crate::store::SHED_EVERY_IN_TEST.with(|c| c.set(Some(100)));
        let before = s.reopens();
        let path = dir.path().join("b.fsbackup");
        let header = write_backup(&s, &path).unwrap();
        crate::store::SHED_EVERY_IN_TEST.with(|c| c.set(None));
        let reopened = s.reopens() - before;
        // Digest: 1,028 live records (every 100th); counts and entries: every 100th entry.
        assert!(
            reopened > 2 * entries.len() as u64 / 100,
            "{reopened} reopens"
        );
        assert_eq!((header.live_records, header.sha256.clone()), digest);
        let (_, read) = read_backup(&path).unwrap();
        assert_eq!(read, entries, "every entry once, in order");
        assert_eq!(header.counts.keys, entries.len() as u64);
        // The store reads as before.
        assert_eq!(formats::digest(&s, &tables).unwrap(), digest);
    }

    #[test]
    fn a_snapshot_giving_way_stops_while_a_writer_waits_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a"), Config::default()).unwrap();
        let n = 3 * formats::STOP_EVERY as usize;
        let ops: Vec<LocalOp> = (0..n)
            .map(|i| LocalOp {
                table: "person".into(),
                id: Uuid::new_v4(),
                edit: Edit::Put(
                    serde_json::from_value(serde_json::json!({"name": format!("p{i}")})).unwrap(),
                ),
            })
            .collect();
        s.write_local(&ops).unwrap();
        let path = dir.path().join("auto.fsbackup");
        let files = || std::fs::read_dir(dir.path()).unwrap().flatten().count();
        {
            // Someone waits for the writer lock: the snapshot stops and nothing is left.
            let _waits = s.pretend_writer_waiting();
            assert!(write_backup_giving_way(&s, &path).unwrap().is_none());
            assert_eq!(files(), 1, "only the store: no backup, no temporary file");
            // A backup a person asked for never gives way.
            let asked = dir.path().join("asked.fsbackup");
            assert_eq!(write_backup(&s, &asked).unwrap().live_records, n as u64);
            std::fs::remove_file(&asked).unwrap();
        }
        // Nobody waits: it completes, with every record.
        let h = write_backup_giving_way(&s, &path)
            .unwrap()
            .expect("completes");
        assert_eq!(h.live_records, n as u64);
        assert_eq!(read_backup(&path).unwrap().0.live_records, n as u64);
    }

    #[test]
    fn backups_are_version_3_and_version_1_still_restores_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a"), Config::default()).unwrap();
        let fields: crate::model::Fields = serde_json::from_value(
            serde_json::json!({"name": "Ana Lopez", "status": "missing", "age": 31}),
        )
        .unwrap();
        s.write_one(LocalOp {
            table: "person".into(),
            id: Uuid::new_v4(),
            edit: Edit::Put(fields),
        })
        .unwrap();
        let v2 = dir.path().join("v2.fsbackup");
        let header = write_backup(&s, &v2).unwrap();
        assert_eq!(header.format_version, 3);
        assert_eq!(header.live_records, 1);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 2, "only the store and the backup");

        // A version-1 file (what fieldsync wrote before store format 4) restores.
        let v1 = dir.path().join("v1.fsbackup");
        with_version(&v2, &v1, 1);
        let b = Store::open(&dir.path().join("b"), Config::default()).unwrap();
        let r = restore(&b, &v1, false, false).unwrap();
        assert_eq!((r.live_records, &r.sha256), (1, &header.sha256));

        // A newer version is refused before anything is read, naming both versions.
        let v4 = dir.path().join("v4.fsbackup");
        with_version(&v2, &v4, 4);
        let e = read_backup(&v4).unwrap_err().to_string();
        assert!(
            e.contains("backup format 4") && e.contains("up to 3"),
            "{e}"
        );
    }
}
