//! Whole-database snapshots for `fieldsync backup` and `fieldsync restore`.
//!
//! A snapshot is every key/value pair of the tree, read while the writer lock is held, so no
//! batch commits in the middle of it. A restore replaces the tree in one batch and rewrites
//! what describes the *old* instance's place among its peers rather than the data itself (see
//! [`Store::restore`]).

use super::{
    decode, decode_record, encode, keys, write::encode_record, ConflictEntry, InstanceInfo,
    Lineage, PeerRow, Store, StoreError, WriterState,
};
use crate::clock::Clock;
use serde::{Deserialize, Serialize};
use std::sync::MutexGuard;
use uuid::Uuid;

/// How many entries of each kind a snapshot holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCounts {
    /// Every key/value pair.
    pub keys: u64,
    /// Records, live and deleted.
    pub records: u64,
    /// History revisions.
    pub history: u64,
    /// Conflict log entries.
    pub conflicts: u64,
    /// `sync_instance` rows.
    pub peers: u64,
    /// Meta entries (instance, clock, feed head, knowledge, ...).
    pub meta: u64,
}

impl SnapshotCounts {
    fn add(&mut self, key: &[u8]) {
        self.keys += 1;
        match key.first() {
            Some(&keys::RECORD) => self.records += 1,
            Some(&keys::HISTORY) => self.history += 1,
            Some(&keys::CONFLICT) => self.conflicts += 1,
            Some(&keys::PEER) => self.peers += 1,
            Some(&keys::META) => self.meta += 1,
            _ => {}
        }
    }
}

/// The database as of one moment: readable only while the writer lock is held.
///
/// Store methods that take the writer lock (writes, [`Store::seq`], [`Store::position`],
/// [`Store::clock_now`]) must not be called through [`ConsistentView::store`]: they would wait
/// for this view forever.
pub struct ConsistentView<'a> {
    store: &'a Store,
    writer: MutexGuard<'a, WriterState>,
}

impl ConsistentView<'_> {
    /// The store, for lock-free reads (records, tables, digest) of this same state.
    pub fn store(&self) -> &Store {
        self.store
    }

    /// Feed head of this state.
    pub fn seq(&self) -> u64 {
        self.writer.seq
    }

    /// True while another thread waits for the writer lock this view holds (a write, a peer's
    /// hello): a reader that may stop early (an automatic snapshot) gives way.
    pub fn writer_waiting(&self) -> bool {
        self.store.writer_waiting()
    }

    /// Every key/value pair, in key order.
    pub fn entries(&self) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        self.store.tree().iter().map(|kv| {
            kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(Into::into)
        })
    }

    /// Closes and reopens sled under this view (nothing writes meanwhile, the content stays
    /// the same), giving back what sled kept of everything read so far: sled 0.34 keeps what it
    /// paged in until it closes (`handles.rs`), so one read of a 1,000,000-record database
    /// (`fieldsync backup`: three passes, 16.8 s) peaked at 515 MB. A long read calls this
    /// every [`SHED_EVERY`] entries, holding no iterator of its own; if another reader holds
    /// the tree for more than 100 ms (a session serving a pull), nothing is closed and the read
    /// goes on: it holds the writer lock meanwhile, and writers must not wait for that.
    pub fn shed(&self) -> Result<(), StoreError> {
        // A writer waits: an automatic snapshot gives way at its next question, so a reopen
        // (~150 ms at 1,000,000 records) would only make the writer wait longer.
        if self.writer_waiting() {
            return Ok(());
        }
        let wait = std::time::Duration::from_millis(100);
        let done = self.store.reopen_holding(&self.writer, wait)?;
        tracing::debug!(?done, "sled reopened in a long read");
        Ok(())
    }

    /// Calls `f` with every key and value in key order, as [`ConsistentView::entries`], sled
    /// reopened every [`SHED_EVERY`] entries or [`SHED_BYTES`] of keys and values
    /// ([`ConsistentView::shed`]); stops early when `f` answers `false`. Returns whether it
    /// read every entry.
    pub fn for_each_entry<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, E>,
    ) -> Result<bool, E> {
        use std::ops::Bound;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (mut read, mut bytes) = (0u64, 0usize);
            {
                let tree = self.store.tree();
                let from = match after.take() {
                    Some(k) => Bound::Excluded(k),
                    None => Bound::Unbounded,
                };
                for kv in tree.range::<Vec<u8>, _>((from, Bound::Unbounded)) {
                    let (k, v) = kv.map_err(StoreError::from)?;
                    if !f(&k, &v)? {
                        return Ok(false);
                    }
                    read += 1;
                    bytes += k.len() + v.len();
                    if read == shed_every() || bytes >= SHED_BYTES {
                        after = Some(k.to_vec());
                        break;
                    }
                }
            }
            if after.is_none() {
                return Ok(true);
            }
            self.shed()?;
        }
    }

    /// Counts every entry by kind (one pass over the tree).
    pub fn counts(&self) -> Result<SnapshotCounts, StoreError> {
        Ok(self
            .counts_until(&|| false)?
            .expect("a count that never stops completes"))
    }

    /// [`ConsistentView::counts`], stopping early with `None` once `stop` answers true (asked
    /// every [`crate::formats::STOP_EVERY`] entries), for a reader that gives way to writers:
    /// the pass reads every key of the database (about 2.5 per record), so without the
    /// question a write that came during it waited for all of it (255 ms for 100,000 records,
    /// 253,675 keys: a sync's hello waited ~180 ms for an automatic snapshot, session 12).
    pub fn counts_until(
        &self,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<SnapshotCounts>, StoreError> {
        let mut c = SnapshotCounts::default();
        let mut n = 0u64;
        let all = self.for_each_entry(|k, _| -> Result<bool, StoreError> {
            c.add(k);
            n += 1;
            Ok(n % crate::formats::STOP_EVERY != 0 || !stop())
        })?;
        Ok(all.then_some(c))
    }
}

/// Entries a long read under the writer lock reads between two reopens of sled
/// ([`ConsistentView::shed`]). A reopen inside a backup of a 1,000,000-record database took
/// 140–190 ms; with this and [`SHED_BYTES`] that backup reopens about 20 times (21.7 → 23.0 s).
/// Reads that take no writer lock and read only records (`fieldsync digest`, `export`) peaked
/// at ~125 MB on that database without reopening, so they are left as they are.
pub const SHED_EVERY: u64 = 250_000;

/// Bytes of keys and values a long read reads between two reopens of sled, whatever the
/// number of entries: the signed commits (`K`, `commits.rs`) of a 1,000,000-row import are
/// 1,000 values of 352 KB, side by side, and reading them in one stretch took a backup of that
/// database from ~120 MB to 308 MB.
pub const SHED_BYTES: usize = 64 << 20;

/// [`SHED_EVERY`], or what a test of this thread set (so tests reopen within small stores).
pub(crate) fn shed_every() -> u64 {
    #[cfg(test)]
    if let Some(n) = SHED_EVERY_IN_TEST.with(|c| c.get()) {
        return n;
    }
    SHED_EVERY
}

#[cfg(test)]
thread_local! {
    /// A test's [`shed_every`].
    pub(crate) static SHED_EVERY_IN_TEST: std::cell::Cell<Option<u64>> =
        const { std::cell::Cell::new(None) };
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// The instance the backup was taken from.
    pub backup_instance: Uuid,
    /// This database's instance id after the restore.
    pub instance: Uuid,
    /// Whether this database took over the backup's instance id.
    pub took_over_identity: bool,
    /// The incarnation this database now lives (peers see it in `hello`).
    pub incarnation: Uuid,
    /// How far the restored feed positions were moved up (see [`Store::restore`]).
    pub feed_shift: u64,
    /// Peer rows whose sync positions were reset.
    pub peers_reset: u64,
    /// Entries written.
    pub counts: SnapshotCounts,
    /// Whether this database had changes of its own (under an id that stays) that the restore
    /// discarded; peers that received them send them back (the new incarnation claims none).
    pub discarded_own_changes: bool,
}

/// Feed positions of a taken-over instance restart this far above the backup's feed head.
/// Peers may have received positions the old laptop handed out after the backup was taken;
/// starting far beyond them means no peer skips a restored record or a new change as "already
/// received" (a laptop does not make 2^32 changes between a backup and its replacement).
const TAKE_OVER_FEED_GAP: u64 = 1 << 32;

impl Store {
    /// Runs `f` on a consistent view of the whole database: the writer lock is held throughout,
    /// so writes (local, from peers, bookkeeping) wait and no batch is half in.
    pub fn read_consistent<R>(&self, f: impl FnOnce(&ConsistentView<'_>) -> R) -> R {
        let view = ConsistentView {
            store: self,
            writer: self.lock(),
        };
        f(&view)
    }

    /// Restores an empty database that is the instance `info` (a take-over of a backup holding
    /// only that identity): for `repair` without a usable snapshot.
    pub fn restore_identity(&self, info: &InstanceInfo) -> Result<RestoreReport, StoreError> {
        self.restore(vec![(keys::meta("instance"), encode(info))], true)
    }

    /// True when the database holds nothing but this instance's identity (no record, peer,
    /// conflict or history yet), so a restore loses nothing.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        for k in self.tree().iter().keys() {
            if k?.first() != Some(&keys::META) {
                return Ok(false);
            }
        }
        Ok(self.seq() == 0)
    }

    /// Replaces the whole database with `entries` (a snapshot taken on any instance) in one
    /// batch.
    ///
    /// The records, history and conflicts come back as they were, with their original stamps.
    /// What describes the old instance's place among its peers is rewritten, so the next sync
    /// with each peer is a full one (idempotent: merging what a side already has changes
    /// nothing):
    /// - identity: this database keeps its own instance id (and name) unless `take_over`;
    /// - the knowledge vector is cleared and every peer's `received_upto` is reset to 0, so
    ///   nothing is skipped as "already known" on the strength of the old instance's sessions;
    ///   a row for this instance itself is dropped;
    /// - restoring another laptop's backup while keeping this identity keeps this database's
    ///   own peer rows (its sync history) and takes only names and addresses from the
    ///   backup's rows: their last sync, sync count, clock offset, knowledge and echo marks
    ///   were the backup laptop's, so peers new to this laptop show "never" and 0 syncs, and
    ///   every restored feed entry is sent to each peer again (echo marks notwithstanding);
    /// - feed positions move up past every position this instance may have handed out to peers
    ///   (its own old feed head; for a take-over, [`TAKE_OVER_FEED_GAP`] above the backup's),
    ///   so a peer resuming "after position N" gets every restored record again;
    /// - a new incarnation begins (see `incarnation.rs`): peers that see it in `hello` forget
    ///   what they believed this instance holds (echo marks, its feed position) and send back
    ///   everything the backup lacks, own writes and deletes included, because this instance
    ///   claims of its own events only those the backup holds until a peer brought the rest;
    /// - the clock resumes after both the backup's and this database's (never a stamp twice);
    /// - a backup taken while own events were still missing claims only what its own lineage
    ///   held, and own writes only the backup holds from a rolled-back line of this laptop's
    ///   history are written again once peers sent back the rest (`M forked`, see
    ///   `incarnation.rs`).
    pub fn restore(
        &self,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        take_over: bool,
    ) -> Result<RestoreReport, StoreError> {
        let meta_of = |name: &str| {
            let k = keys::meta(name);
            entries.iter().find(|(ek, _)| *ek == k).map(|(_, v)| v)
        };
        let backup_info: InstanceInfo = decode(
            meta_of("instance")
                .ok_or_else(|| StoreError::Decode("the backup has no instance entry".into()))?,
        )?;
        let u64_of = |name: &str| -> Result<u64, StoreError> {
            meta_of(name).map_or(Ok(0), |v| decode::<u64>(v))
        };
        let (backup_seq, backup_clock) = (u64_of("seq")?, u64_of("clock")?);
        let next_conflict = u64_of("next_conflict")?.max(1);

        let mut w = self.lock();
        let mut cur = self.instance.write().unwrap_or_else(|e| e.into_inner());
        // Restoring a laptop's own backup continues that instance's line, like a take-over.
        let continues_backup = take_over || cur.id == backup_info.id;
        let (info, shift) = if continues_backup {
            let info = if take_over { &backup_info } else { &*cur };
            (info.clone(), TAKE_OVER_FEED_GAP.max(w.seq))
        } else {
            // This instance's feed positions already in peers' hands stay used.
            (cur.clone(), w.seq)
        };
        // The clock never goes back: stamps this directory or the backup handed out stay used.
        let clock = backup_clock.max(w.clock.last());
        // (and past every own stamp that may be missing; see `issued` below)
        // Own events this database held and the backup lacks are still with peers: the new
        // incarnation claims only what the backup holds of them, so peers send them back.
        let discarded_own_changes = !continues_backup && w.own_last > 0;
        let backup_own_last = if continues_backup {
            u64_of("own_last")?
        } else {
            0
        };
        // A backup taken while this instance still lacked own events (after an earlier
        // restore or rollback, before a peer sent them back) holds a newest own event past
        // them: it holds for sure only what its own lineage claimed, and the gap it recorded
        // may hold stamps already issued (an own delete a peer holds). Found by the randomized
        // restore run (seed 15838).
        let backup_lineage: Option<Lineage> = match meta_of("lineage") {
            Some(v) if continues_backup => Some(decode(v)?),
            _ => None,
        };
        let backup_held = backup_lineage
            .as_ref()
            .map_or(backup_own_last, |l| l.own_claim(backup_own_last));
        let backup_gap_end = backup_lineage
            .as_ref()
            .and_then(|l| l.missing)
            .map_or(0, |m| m.1);
        // The newest own stamp that may have been issued: on this database, its own mark; for a
        // take-over, anything the old laptop made before now.
        let issued = if take_over {
            crate::clock::ts_from_millis(crate::clock::wall_millis()).max(backup_clock)
        } else if info.id == cur.id {
            w.own_last
        } else {
            0
        };
        let base = match (take_over, &backup_lineage) {
            (true, Some(l)) => l.clone(),
            _ => w.lineage.clone(),
        };
        let lineage = base.successor(
            crate::clock::wall_millis(),
            backup_held,
            issued.max(backup_own_last).max(backup_gap_end),
            super::dir_key(&self.dir.join("db")),
        );
        let seq = backup_seq + shift;

        // Own events of the backup that this database, which went on after it was taken, does
        // not hold although it had issued later ones: the backup may come from a line of this
        // instance's history that was rolled back (a disk image copied back, nobody told)
        // before they reached any peer. Peers' knowledge of our events already covers their
        // stamps, so no peer would ever take them (found by the randomized restore run, seed
        // 23757). They may as well have reached peers before the rollback, followed there by
        // newer own writes: so they are kept as *candidates* (`M forked`) and written again
        // with fresh stamps only once peers sent back every own event this restore may lack
        // (`Store::rewrite_forked`), and only those no newer own write replaced meanwhile.
        // Own events this database knows to be missing (its lineage's gap) are with peers
        // and come back as usual.
        let gap = w.lineage.missing;
        let may_fork = continues_backup && !take_over && w.own_last > 0;
        let mut forked: Vec<(String, Uuid, u64)> = Vec::new();
        // A restore that keeps this laptop's identity keeps its own rows of the peers it knew
        // (its sync history); the backup's rows describe another laptop's syncs.
        let own_peer_rows: std::collections::HashMap<Uuid, PeerRow> = if continues_backup {
            Default::default()
        } else {
            self.peers()?.into_iter().map(|r| (r.instance, r)).collect()
        };
        let mut batch = sled::Batch::default();
        for k in self.tree().iter().keys() {
            batch.remove(k?);
        }
        let mut counts = SnapshotCounts::default();
        let mut peers_reset = 0;
        let mut backup_peers = std::collections::HashSet::new();
        // Fingerprints are rebuilt from the restored records (a backup may predate them).
        let mut restored_records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // The backup's record dictionaries, met before its records (`dict.rs`).
        let mut restored_dicts = std::collections::HashMap::new();
        for (k, v) in entries {
            let (k, v) = match k.first() {
                Some(&super::dict::DICT) => {
                    let (table, dict) = super::dict::register_restored(&k, &v)?;
                    restored_dicts.insert(table, dict);
                    (k, v)
                }
                Some(&super::fingerprint::FINGERPRINT) => continue,
                Some(&keys::META) => match &k[1..] {
                    b"instance" => (k, encode(&info)),
                    b"seq" => (k, encode(&seq)),
                    b"clock" => (k, encode(&clock)),
                    b"knowledge" | b"lineage" => continue,
                    // What follows is migrated to the current format (history below).
                    b"format" => (k, encode(&super::recovery::FORMAT_VERSION)),
                    // The newest own event of the backup's instance is ours only if we become it.
                    b"own_last" if !continues_backup => (k, encode(&0u64)),
                    _ => (k, v),
                },
                // A backup of an older store: mark the history it rebuilt (format 1 → 2).
                Some(&keys::HISTORY) if super::legacy::rebuilt_by_an_older_version(&v)? => {
                    let mut e = super::write::decode_history(&v)?;
                    e.revision.reconstructed = true;
                    (k, super::encode_compact(&e))
                }
                Some(&keys::FEED) if shift > 0 => {
                    let at = k
                        .get(1..9)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or_else(|| StoreError::Decode("bad feed key in backup".into()))?;
                    (keys::feed(at + shift), v)
                }
                Some(&keys::RECORD) if shift > 0 => {
                    let mut r = decode_record(&v)?;
                    if may_fork {
                        let own = r.state.vv.get(&info.id).copied().unwrap_or(0);
                        let here = match self.tree().get(&k)? {
                            Some(p) => decode_record(&p)?.state.vv.get(&info.id).copied(),
                            None => None,
                        }
                        .unwrap_or(0);
                        let in_gap = gap.is_some_and(|(lo, hi)| own > lo && own <= hi);
                        if own > here && own <= w.own_last && !in_gap {
                            if let Some((table, id)) = keys::parse_record_suffix(&k[1..]) {
                                forked.push((table, id, own));
                            }
                        }
                    }
                    r.seq += shift;
                    if r.conflict_seq > 0 {
                        r.conflict_seq += shift;
                    }
                    let table = keys::parse_record_suffix(&k[1..]).map(|(t, _)| t);
                    let dict = table.and_then(|t| restored_dicts.get(&t));
                    (k, encode_record(&r, dict.map(|d| &**d)))
                }
                Some(&keys::CONFLICT) => {
                    let mut c: ConflictEntry = decode(&v)?;
                    if c.seq > 0 {
                        c.seq += shift;
                    }
                    // Found by the backup's instance, which this one may no longer be.
                    if c.reported_by.is_none() && info.id != backup_info.id {
                        c.reported_by = Some(backup_info.id);
                    }
                    (k, encode(&c))
                }
                Some(&keys::PEER) => {
                    let mut row: PeerRow = decode(&v)?;
                    if row.instance == info.id {
                        continue;
                    }
                    backup_peers.insert(row.instance);
                    if !continues_backup {
                        row = match own_peer_rows.get(&row.instance) {
                            Some(own) => own.clone(),
                            None => as_never_synced(row, seq),
                        };
                        row.echo_from = row.echo_from.max(seq);
                    }
                    row.received_upto = 0;
                    row.online = false;
                    row.last_error = None;
                    peers_reset += 1;
                    (k, encode(&row))
                }
                _ => (k, v),
            };
            counts.add(&k);
            if k.first() == Some(&keys::RECORD) {
                restored_records.push((k.clone(), v.clone()));
            }
            batch.insert(k, v);
        }
        let backup_laptop_known_here = own_peer_rows.contains_key(&backup_info.id);
        // Peers this laptop knew and the backup did not: kept, their positions reset too.
        for (id, row) in own_peer_rows {
            if backup_peers.contains(&id) || id == info.id {
                continue;
            }
            let mut row = row;
            row.echo_from = row.echo_from.max(seq);
            row.received_upto = 0;
            row.online = false;
            row.last_error = None;
            peers_reset += 1;
            let k = keys::peer(&id);
            counts.add(&k);
            batch.insert(k, encode(&row));
        }
        // The backup's own laptop, when this one stays a laptop of its own: known by name from
        // now on (history, conflicts and `mesh show` here named it by its instance id only),
        // as a laptop this one has never synced with.
        if backup_info.id != info.id
            && !backup_peers.contains(&backup_info.id)
            && !backup_laptop_known_here
        {
            let row = PeerRow {
                instance: backup_info.id,
                name: backup_info.name.clone(),
                owner: backup_info.owner.clone(),
                contact: backup_info.contact.clone(),
                echo_from: seq,
                ..PeerRow::default()
            };
            let k = keys::peer(&backup_info.id);
            counts.add(&k);
            batch.insert(k, encode(&row));
        }
        let sums = super::fingerprint::build_from_records(restored_records.into_iter().map(Ok))?;
        for (k, v) in sums {
            counts.add(&k);
            batch.insert(k, v);
        }
        batch.insert(keys::meta("lineage"), encode(&lineage));
        if !forked.is_empty() {
            batch.insert(keys::meta("forked"), encode(&forked));
        }
        batch.insert(
            keys::meta("format"),
            encode(&super::recovery::FORMAT_VERSION),
        );
        self.tree().apply_batch(batch)?;
        self.tree().flush()?;
        self.reload_dicts()?;
        let meta_u64 = |name: &str| -> Result<u64, StoreError> {
            Ok(match self.tree().get(keys::meta(name))? {
                Some(v) => decode(&v)?,
                None => 0,
            })
        };
        let own_last = if continues_backup {
            meta_u64("own_last")?
        } else {
            0
        };
        let holdings = match self.tree().get(keys::meta("holdings"))? {
            Some(v) => decode(&v)?,
            None => Default::default(),
        };
        *w = WriterState {
            seq,
            clock: Clock::new(info.id, clock.max(lineage.missing.map_or(0, |m| m.1))),
            next_conflict,
            own_last,
            holdings,
            conflict_head: seq,
            lineage: lineage.clone(),
            opened: (
                own_last,
                (clock + 1).max(crate::clock::ts_from_millis(crate::clock::wall_millis())),
            ),
        };
        // Info, not a warning: `restore` tells the person in words what this means.
        tracing::info!(incarnation = %lineage.current.id, missing_from = backup_held,
            "restored from a backup: new incarnation, peers will send back what the backup lacks");
        *cur = info.clone();
        drop(cur);
        self.publish(&w)?;
        drop(w);
        self.changed.send_replace(seq);
        if lineage.missing.is_none() {
            self.rewrite_forked()?;
        }
        Ok(RestoreReport {
            backup_instance: backup_info.id,
            instance: info.id,
            took_over_identity: take_over,
            incarnation: lineage.current.id,
            feed_shift: shift,
            peers_reset,
            counts,
            discarded_own_changes,
        })
    }
}

/// The backup's row of a peer as seen by a laptop that has never synced with it: what names
/// and reaches the peer (name, owner, contact, addresses, incarnations seen, a duplicate
/// identity) stays; the backup's laptop's sync history with it (last sync, sync count,
/// attempts, clock offset, quarantine count) goes, and so does what it knew of the peer's
/// knowledge and echoes, so the next sync asks for and sends everything (idempotent).
/// `feed_head` is the restored feed's head: every entry up to it is sent again.
fn as_never_synced(row: PeerRow, feed_head: u64) -> PeerRow {
    PeerRow {
        last_update: None,
        sync_count: 0,
        received_upto: 0,
        clock_offset_ms: 0,
        last_error: None,
        last_attempt: None,
        online: false,
        last_seen: None,
        echo_from: feed_head,
        knowledge: Default::default(),
        quarantined: 0,
        ..row
    }
}

impl Store {
    /// Writes again, with fresh stamps, the own writes a restore found only in its backup
    /// (`M forked`: table, id, the newest own stamp the backup held of the record) once no own
    /// event is missing any more: peers have sent back everything of ours they held, so a
    /// record whose newest own event is still the backup's holds a write peers may never take
    /// (their knowledge covers its stamp). A live record's own fields from then are reasserted
    /// (same values), an own delete is made again; a record a newer own write reached is left
    /// alone (that write is newer and already with peers). Returns how many records were
    /// written; the candidates are removed.
    pub(crate) fn rewrite_forked(&self) -> Result<u64, StoreError> {
        use crate::merge::Edit;
        let Some(v) = self.tree().get(keys::meta("forked"))? else {
            return Ok(0);
        };
        let forked: Vec<(String, Uuid, u64)> = decode(&v)?;
        let me = self.id();
        let mut n = 0;
        for (table, id, own) in &forked {
            if table.starts_with(crate::model::SYSTEM_PREFIX) {
                continue;
            }
            let Some(rec) = self.get(table, id)? else {
                continue;
            };
            let st = &rec.state;
            if st.vv.get(&me) != Some(own) {
                continue;
            }
            let op = |edit| super::LocalOp {
                table: table.clone(),
                id: *id,
                edit,
            };
            let ops: Vec<super::LocalOp> = if st.is_alive() {
                st.fields
                    .iter()
                    .filter(|(_, f)| f.stamp.node == me)
                    .map(|(k, f)| op(Edit::Reassert(k.clone(), f.value.clone())))
                    .collect()
            } else if st.deleted.is_some_and(|d| d.node == me) {
                // A delete is made again from the record's last values: put back, then delete,
                // in one batch (no peer ever sees it alive).
                let fields = st
                    .fields
                    .iter()
                    .filter_map(|(k, f)| f.value.clone().map(|v| (k.clone(), v)))
                    .collect();
                vec![op(Edit::Put(fields)), op(Edit::Delete)]
            } else {
                Vec::new()
            };
            if !ops.is_empty() {
                self.write_local(&ops)?;
                n += 1;
            }
        }
        self.tree().remove(keys::meta("forked"))?;
        self.tree().flush()?;
        if n > 0 {
            tracing::warn!(
                records = n,
                "own writes only the restored backup held (made on a rolled-back line of this \
                 laptop's history, never received by peers) were written again with new stamps"
            );
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::merge::Edit;
    use crate::store::{Knowledge, LocalOp};
    use serde_json::json;
    use tempfile::TempDir;

    fn open() -> (TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Config::default()).unwrap();
        (dir, store)
    }

    fn put_new(s: &Store, n: usize) {
        for i in 0..n {
            let serde_json::Value::Object(fields) = json!({"i": i}) else {
                unreachable!()
            };
            s.write_one(LocalOp {
                table: "t".into(),
                id: Uuid::new_v4(),
                edit: Edit::Put(fields),
            })
            .unwrap();
        }
    }

    fn snapshot(s: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        s.read_consistent(|v| v.entries().collect::<Result<_, _>>().unwrap())
    }

    fn clock(s: &Store) -> u64 {
        s.lock().clock.last()
    }

    fn digest(s: &Store) -> (u64, String) {
        crate::formats::digest(s, &["t".to_string()]).unwrap()
    }

    #[test]
    fn own_id_restore_moves_positions_past_the_old_ones_and_forgets_peer_state() {
        let (_a_dir, a) = open();
        let (_b_dir, b) = open();
        put_new(&a, 3);
        let stranger = Uuid::new_v4();
        for (instance, upto) in [(stranger, 9), (b.id(), 4)] {
            a.update_peer(&instance, |row| {
                row.received_upto = upto;
                row.online = true;
            })
            .unwrap();
        }
        let k: Knowledge = [(stranger, 123)].into_iter().collect();
        a.tree()
            .insert(keys::meta("knowledge"), encode(&k))
            .unwrap();
        let snap = snapshot(&a);
        put_new(&b, 5);
        let (b_id, b_clock) = (b.id(), clock(&b));

        let r = b.restore(snap, false).unwrap();
        assert_eq!((r.instance, r.backup_instance), (b_id, a.id()));
        assert!(r.discarded_own_changes, "b's own 5 records are gone");
        assert_eq!(r.feed_shift, 5);
        assert_eq!(digest(&b), digest(&a));
        assert_eq!(b.seq(), a.seq() + 5);
        // Peers resuming after any position b handed out before still get every record.
        assert_eq!(b.changes_since(5, 100).unwrap().len(), 3);
        for rec in b.scan_table("t") {
            let (_, rec) = rec.unwrap();
            assert!(rec.seq > 5, "{rec:?}");
        }
        let peers = b.peers().unwrap();
        assert_eq!(peers.len(), 2, "no row for b itself: {peers:?}");
        let s = peers.iter().find(|p| p.instance == stranger).unwrap();
        assert_eq!((s.received_upto, s.online), (0, false));
        // The backup's own laptop is known by name from now on (history and conflicts named it
        // by its instance id only), as a laptop b never synced with.
        let from = peers.iter().find(|p| p.instance == a.id()).unwrap();
        assert_eq!(
            (from.name.as_str(), from.sync_count, from.last_update),
            (a.instance().name.as_str(), 0, None)
        );
        assert_eq!(from.echo_from, b.seq());
        let pos = b.position().unwrap();
        assert_eq!(pos.knowledge.len(), 1, "knowledge of others is reset");
        // b holds none of its own events now, so it claims none: peers resend whatever of b's
        // they have.
        assert_eq!(pos.knowledge[&b_id], 0);
        assert!(
            clock(&b) >= b_clock.max(clock(&a)),
            "the clock never goes back"
        );
        // The next write follows the restored feed and is stamped by b.
        put_new(&b, 1);
        assert_eq!(b.seq(), a.seq() + 6);
        assert_eq!(
            b.changes_since(a.seq() + 5, 10).unwrap()[0]
                .3
                .state
                .vv
                .len(),
            1
        );
        assert!(b.changes_since(a.seq() + 5, 10).unwrap()[0].3.state.vv[&b_id] > 0);
    }

    #[test]
    fn keeping_this_identity_keeps_its_own_sync_history_not_the_backups() {
        let (_a_dir, a) = open();
        let (_b_dir, b) = open();
        put_new(&a, 2);
        let (hq, stranger, only_b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let synced = |s: &Store, id: &Uuid, name: &str, count: u64| {
            s.update_peer(id, |row| {
                row.name = name.into();
                row.addresses = vec!["127.0.0.1:7437".into()];
                row.sync_count = count;
                row.last_update = Some(chrono::Utc::now());
                row.last_attempt = row.last_update;
                row.received_upto = 40;
                row.clock_offset_ms = 1500;
            })
            .unwrap();
        };
        synced(&a, &hq, "hq", 23);
        synced(&a, &stranger, "laptopB", 21);
        synced(&b, &hq, "hq", 1);
        synced(&b, &only_b, "laptopD", 2);
        let snap = snapshot(&a);
        put_new(&b, 3);

        let r = b.restore(snap, false).unwrap();
        assert_eq!(r.peers_reset, 3);
        let rows: std::collections::HashMap<Uuid, PeerRow> = b
            .peers()
            .unwrap()
            .into_iter()
            .map(|r| (r.instance, r))
            .collect();
        let row = |id: &Uuid| {
            let r = &rows[id];
            (
                r.name.as_str(),
                r.sync_count,
                r.last_update.is_some(),
                r.received_upto,
            )
        };
        // A peer only the backup's laptop synced with: known by name and address, never synced.
        assert_eq!(row(&stranger), ("laptopB", 0, false, 0));
        let s = &rows[&stranger];
        assert_eq!(s.addresses, ["127.0.0.1:7437"]);
        assert_eq!((s.last_attempt, s.clock_offset_ms), (None, 0));
        assert_eq!(
            s.echo_from,
            b.seq(),
            "every restored entry is sent to it again"
        );
        // Peers this laptop synced with itself keep its history; every position is reset.
        assert_eq!(row(&hq), ("hq", 1, true, 0));
        assert_eq!(row(&only_b), ("laptopD", 2, true, 0));

        // Restoring a laptop's own backup keeps its history: it is its own.
        let own = snapshot(&a);
        a.restore(own, false).unwrap();
        assert_eq!(a.peer(&hq).unwrap().unwrap().sync_count, 23);
    }

    #[test]
    fn take_over_resumes_the_backup_instance_clock_and_jumps_its_feed() {
        let (_a_dir, a) = open();
        let (_c_dir, c) = open();
        put_new(&a, 3);
        let snap = snapshot(&a);
        let (a_clock, a_seq) = (clock(&a), a.seq());
        put_new(&a, 2);

        let r = c.restore(snap, true).unwrap();
        assert!(r.took_over_identity && !r.discarded_own_changes);
        assert_eq!((c.id(), c.instance().name), (a.id(), a.instance().name));
        assert_eq!(c.seq(), a_seq + TAKE_OVER_FEED_GAP);
        // Peers that received a's later positions still get every restored record.
        assert_eq!(c.changes_since(a.seq(), 100).unwrap().len(), 3);
        // Exactly the backup's clock: a's two later changes are not claimed, so they come back.
        assert_eq!(c.position().unwrap().knowledge[&a.id()], a_clock);
    }

    #[test]
    fn restoring_a_laptops_own_backup_does_not_claim_what_came_after_it() {
        let (_a_dir, a) = open();
        put_new(&a, 2);
        let snap = snapshot(&a);
        let (snap_clock, snap_digest) = (clock(&a), digest(&a));
        put_new(&a, 2);
        let old_seq = a.seq();

        let r = a.restore(snap, false).unwrap();
        assert!(!r.took_over_identity && !r.discarded_own_changes);
        assert_eq!(digest(&a), snap_digest);
        assert_eq!(a.position().unwrap().knowledge[&a.id()], snap_clock);
        assert!(a.seq() > old_seq, "positions never go back");
    }

    #[test]
    fn counting_the_entries_asks_whether_to_give_way_every_stop_every_keys() {
        let (_dir, s) = open();
        // Fewer records than keys (feed entries, fingerprints): over 2,048 keys in all.
        put_new(&s, 800);
        let all = s.read_consistent(|v| v.counts().unwrap());
        assert!(all.keys > 2 * crate::formats::STOP_EVERY, "{}", all.keys);
        let asked = std::cell::Cell::new(0u64);
        // Answers "a writer waits" the second time it is asked.
        let stop = || {
            asked.set(asked.get() + 1);
            asked.get() == 2
        };
        assert_eq!(s.read_consistent(|v| v.counts_until(&stop).unwrap()), None);
        assert_eq!(asked.get(), 2, "stopped at the second question");
        let never = s.read_consistent(|v| v.counts_until(&|| false).unwrap());
        assert_eq!(never, Some(all));
    }

    #[test]
    fn a_store_with_only_its_identity_is_empty() {
        let (_dir, s) = open();
        s.set_instance_info(Some("x".into()), None, None).unwrap();
        assert!(s.is_empty().unwrap());
        put_new(&s, 1);
        assert!(!s.is_empty().unwrap());
    }
}
