//! Automatic snapshots: the agent's rolling backup inside the data directory, the way back
//! (`fieldsync repair`) when the disk loses or garbles what the database had written.
//!
//! Layout (inside the data directory):
//!
//! | path                                        | what                                      |
//! |---------------------------------------------|-------------------------------------------|
//! | `snapshots/auto-<UTC stamp>-<feed seq>.fsbackup` | a backup file (format of `backup.rs`)  |
//!
//! Names sort by time; the feed position lets the agent tell "anything changed since" without
//! reading the file. Each file is written atomically by [`crate::backup::write_backup`]
//! (temporary name, fsync, rename, fsync of the directory), so a crash leaves the previous set
//! intact; the oldest beyond `keep` are removed only after a new one is in place.
//!
//! When: see [`run`]. A snapshot is never taken while a sync session is in flight (either
//! role), and when sled is due for a reopen (`reopen::due`) it is reopened first, so that
//! reading every record does not add to what a large session left in memory (measured in
//! bench/RESULTS.md, session 6).

use crate::backup::{self, BackupError};
use crate::config::SnapshotConfig;
use crate::store::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// Directory of the automatic snapshots, inside the data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// One automatic snapshot file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AutoSnapshot {
    /// Its name (sorts by time).
    pub name: String,
    /// Feed position of the store when it was taken.
    pub feed_seq: u64,
    /// Full path.
    pub path: PathBuf,
}

fn parse(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("auto-")?.strip_suffix(".fsbackup")?;
    rest.rsplit_once('-')?.1.parse().ok()
}

/// The automatic snapshots of a data directory, oldest first (none if the directory is
/// missing). Temporary files of an interrupted write (dot-names) are not listed.
pub fn list(data_dir: &Path) -> Vec<AutoSnapshot> {
    let Ok(entries) = std::fs::read_dir(data_dir.join(SNAPSHOT_DIR)) else {
        return Vec::new();
    };
    let mut out: Vec<AutoSnapshot> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            let feed_seq = parse(&name)?;
            Some(AutoSnapshot {
                path: e.path(),
                name,
                feed_seq,
            })
        })
        .collect();
    out.sort();
    out
}

/// Takes one snapshot now and removes the oldest beyond `keep`. Returns the new file.
pub fn take(store: &Store, keep: usize) -> Result<AutoSnapshot, BackupError> {
    match take_with(store, keep, false)? {
        Some(s) => Ok(s),
        None => unreachable!("a snapshot that does not give way completes"),
    }
}

/// [`take`], giving way to writers (`backup::write_backup_giving_way`): `None` when a write,
/// a sync page or a peer's hello came while it read; nothing was written then.
pub fn try_take(store: &Store, keep: usize) -> Result<Option<AutoSnapshot>, BackupError> {
    take_with(store, keep, true)
}

fn take_with(
    store: &Store,
    keep: usize,
    give_way: bool,
) -> Result<Option<AutoSnapshot>, BackupError> {
    let dir = store.dir().join(SNAPSHOT_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| BackupError::Io {
        path: dir.clone(),
        source,
    })?;
    // Temporary files of a write a crash interrupted (only one agent uses this directory).
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".auto-") && n.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let seq = store.seq();
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let name = format!("auto-{stamp}-{seq}.fsbackup");
    let path = dir.join(&name);
    let header = if give_way {
        match backup::write_backup_giving_way(store, &path)? {
            Some(h) => h,
            None => return Ok(None),
        }
    } else {
        backup::write_backup(store, &path)?
    };
    // Reading every record went through the allocator (sled's node copies, decoded records):
    // hand what was freed back, so an agent idle after a snapshot is small again.
    crate::store::trim_heap();
    // The name carries the feed head read before the snapshot; the header has the exact one.
    let exact = format!("auto-{stamp}-{}.fsbackup", header.feed_seq);
    let path = if exact != name {
        let to = dir.join(&exact);
        std::fs::rename(&path, &to).map_err(|source| BackupError::Io {
            path: to.clone(),
            source,
        })?;
        to
    } else {
        path
    };
    let all = list(store.dir());
    for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        if let Err(e) = std::fs::remove_file(&old.path) {
            warn!(file = %old.path.display(), error = %e, "could not remove an old automatic snapshot");
        }
    }
    info!(file = %path.display(), feed_seq = header.feed_seq, "automatic snapshot written");
    Ok(Some(AutoSnapshot {
        name: exact,
        feed_seq: header.feed_seq,
        path,
    }))
}

/// How many times in a row an automatic snapshot gives way to writers before it is taken
/// whatever waits (a store written without pause for that long still gets its snapshots).
pub const MAX_GIVE_WAY: u32 = 5;

/// How long the store must have been quiet (no commit) before a snapshot due by change count
/// is taken, once the database is past [`QUIET_FROM`] feed positions.
pub const QUIET: Duration = Duration::from_secs(2);

/// Feed head from which a snapshot due by change count waits for [`QUIET`]. A snapshot reads
/// every record, so during a long sync or import (a page committed every few hundred
/// milliseconds) taking one every `every_changes` changes re-reads the growing database again
/// and again: measured on an initial sync of 100,000 records, the receiver spent 85 % of its
/// CPU in snapshots (bench/flamegraphs/NOTE.md). Below this a snapshot takes milliseconds and
/// is taken at once, as before.
pub const QUIET_FROM: u64 = 10_000;

/// The agent's snapshot task: a snapshot after `every_changes` changes (in a database past
/// [`QUIET_FROM`] feed positions, once no commit came for [`QUIET`]), or `every_secs` after the
/// last one when anything changed (even while changes keep coming), until `stop` turns true.
/// Failures are logged and retried at the next trigger; they never stop the agent.
pub async fn run(store: Arc<Store>, cfg: SnapshotConfig, mut stop: watch::Receiver<bool>) {
    if !cfg.enabled {
        return;
    }
    let mut last = list(store.dir()).last().map(|s| s.feed_seq);
    let mut changes = store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.every_secs.max(1)));
    tick.tick().await;
    if last.is_none() && store.seq() > 0 {
        // A laptop with data and no snapshot yet (first agent start since upgrading, or right
        // after an import): taken at once, giving way to the first sessions like any other.
        match giving_way(&store, &cfg, &mut changes, &mut tick, &mut stop).await {
            Some(taken) => last = taken.or(last),
            None => return,
        }
    }
    loop {
        let timed = tokio::select! {
            r = changes.changed() => { if r.is_err() { return } false }
            _ = tick.tick() => true,
            _ = stop.changed() => return,
        };
        let seq = *changes.borrow_and_update();
        // A restore moves feed positions up, so "changed" is "different", not "greater".
        let due = match last {
            None => seq > 0,
            Some(l) if timed => seq != l,
            Some(l) => seq.abs_diff(l) >= cfg.every_changes,
        };
        if !due {
            continue;
        }
        if !timed && seq > QUIET_FROM {
            // Wait for a quiet spell: every commit restarts it; the periodic tick still wins.
            loop {
                tokio::select! {
                    r = changes.changed() => { if r.is_err() { return } }
                    _ = tokio::time::sleep(QUIET) => break,
                    _ = tick.tick() => break,
                    _ = stop.changed() => return,
                }
            }
        }
        match giving_way(&store, &cfg, &mut changes, &mut tick, &mut stop).await {
            Some(taken) => last = taken.or(last),
            None => return,
        }
    }
}

/// Takes a snapshot, giving way to writers: the snapshot holds the writer lock while it reads
/// every record (seconds at 100,000 records), so it gives way to anyone who waits for that lock
/// (a sync that starts, a local write) and is taken again after the next quiet spell (or the
/// periodic tick), the [`MAX_GIVE_WAY`]th attempt in a row without giving way. Returns the feed
/// position of the snapshot taken (`Some(None)` if it failed, logged), or `None` when `stop`
/// turned true or the store closed.
async fn giving_way(
    store: &Arc<Store>,
    cfg: &SnapshotConfig,
    changes: &mut watch::Receiver<u64>,
    tick: &mut tokio::time::Interval,
    stop: &mut watch::Receiver<bool>,
) -> Option<Option<u64>> {
    for attempt in 1..=MAX_GIVE_WAY {
        if !after_sessions(tick, stop).await {
            return None;
        }
        let (s, keep) = (store.clone(), cfg.keep);
        let give_way = attempt < MAX_GIVE_WAY;
        let taken = move || {
            reopen_first(&s);
            take_with(&s, keep, give_way)
        };
        match tokio::task::spawn_blocking(taken).await {
            Ok(Ok(Some(snap))) => {
                tick.reset();
                return Some(Some(snap.feed_seq));
            }
            Ok(Ok(None)) => {
                info!(
                    attempt,
                    "automatic snapshot gave way to a write; taken again once quiet"
                );
                // Every commit restarts the quiet spell; the periodic tick still wins.
                loop {
                    tokio::select! {
                        r = changes.changed() => { if r.is_err() { return None } }
                        _ = tokio::time::sleep(QUIET) => break,
                        _ = tick.tick() => break,
                        _ = stop.changed() => return None,
                    }
                }
            }
            Ok(Err(e)) => {
                warn!(error = %e, "automatic snapshot failed");
                return Some(None);
            }
            Err(e) => {
                warn!(error = %e, "automatic snapshot task failed");
                return Some(None);
            }
        }
    }
    Some(None)
}

/// How often [`after_sessions`] looks whether the sessions in flight have ended.
const SESSION_POLL: Duration = Duration::from_millis(250);

/// Waits while a sync session is in flight, either role (`progress::any_running`); the
/// periodic tick still wins. `false` when `stop` turned true.
///
/// Why: a snapshot reads every record, and a sending side takes no writer lock that it could
/// give way to, so on a laptop that starts its agent with data and no snapshot yet and syncs at
/// once, the two used to run side by side: the sender's highest point of a 100,000-record sync
/// was its snapshot on top of the session's own memory (bench/RESULTS.md, session 6).
async fn after_sessions(
    tick: &mut tokio::time::Interval,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    while crate::progress::any_running() {
        tokio::select! {
            _ = tokio::time::sleep(SESSION_POLL) => {}
            _ = tick.tick() => return true,
            _ = stop.changed() => return false,
        }
    }
    true
}

/// Before a snapshot, closes and reopens sled if a reopen is due anyway (`reopen::due`: a
/// large session or import since sled was opened), so the snapshot reads every record through
/// a fresh sled instead of on top of what sled kept of that work: the highest point of a
/// receiver after a 100,000-record sync was this snapshot (bench/RESULTS.md, sessions 5 and 6).
/// It runs when the agent's own reopen would soon (the store is quiet and no session is in
/// flight); the snapshot's own reads make the next reopen due, so the agent idles small after
/// it as before. A busy writer lock or a failure only skips it: the snapshot is taken anyway.
fn reopen_first(store: &Store) {
    if !crate::reopen::due(store) {
        return;
    }
    if let Err(e) = store.reopen_if_free() {
        warn!(error = %e, "could not reopen the database before an automatic snapshot");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::merge::Edit;
    use crate::store::LocalOp;
    use serde_json::{json, Value};
    use uuid::Uuid;

    fn people(store: &Store, n: u64) {
        let op = |i: u64| LocalOp {
            table: "person".into(),
            id: Uuid::new_v4(),
            edit: match json!({ "name": format!("person {i}"), "n": i }) {
                Value::Object(m) => Edit::Put(m),
                _ => unreachable!(),
            },
        };
        for chunk in (0..n).collect::<Vec<_>>().chunks(2_000) {
            let ops: Vec<LocalOp> = chunk.iter().map(|&i| op(i)).collect();
            store.write_local(&ops).unwrap();
        }
    }

    #[test]
    fn a_snapshot_after_a_large_change_reopens_sled_first_and_holds_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Config::parse("", "test").unwrap()).unwrap();
        let n = crate::reopen::REOPEN_AFTER;
        people(&store, n);
        assert!(crate::reopen::due(&store));
        reopen_first(&store);
        assert_eq!(
            store.reopens(),
            1,
            "a reopen was due: done before the snapshot"
        );
        assert!(!crate::reopen::due(&store));
        let snap = take(&store, 3).unwrap();
        let (header, _) = backup::read_backup(&snap.path).unwrap();
        assert_eq!(header.live_records, n);
        assert_eq!(header.feed_seq, store.seq());
        // The snapshot read every record through the fresh sled: the next reopen is due, so the
        // agent idles small after it; and nothing is due twice in a row without work between.
        assert!(crate::reopen::due(&store));
        reopen_first(&store);
        assert_eq!(store.reopens(), 2);
        reopen_first(&store);
        assert_eq!(store.reopens(), 2);
    }

    #[test]
    fn a_small_change_takes_its_snapshot_without_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Config::parse("", "test").unwrap()).unwrap();
        people(&store, 10);
        reopen_first(&store);
        assert_eq!(store.reopens(), 0);
        let snap = take(&store, 3).unwrap();
        assert_eq!(backup::read_backup(&snap.path).unwrap().0.live_records, 10);
    }

    #[tokio::test]
    async fn a_snapshot_waits_while_a_session_is_in_flight() {
        let mut tick = tokio::time::interval(Duration::from_secs(3_600));
        tick.tick().await;
        let (stop_tx, mut stop) = watch::channel(false);
        let session = crate::progress::start("127.0.0.1:9");
        let waiting = tokio::spawn(async move { after_sessions(&mut tick, &mut stop).await });
        tokio::time::sleep(SESSION_POLL * 4).await;
        assert!(!waiting.is_finished(), "went ahead during a session");
        drop(session);
        // Other tests of this binary may run sessions of their own meanwhile: bounded wait.
        let went = tokio::time::timeout(Duration::from_secs(120), waiting).await;
        assert!(went
            .expect("still waiting 120 s after the session ended")
            .unwrap());
        drop(stop_tx);
    }
}
