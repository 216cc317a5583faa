//! The agent's task that gives back the memory sled keeps after a large session, import or
//! restore: once sled has written or read [`REOPEN_AFTER`] entries since it was opened and the
//! store has been quiet for [`QUIET`], it closes and reopens the database
//! ([`Store::reopen_if_free`], `store/handles.rs`); once the store has been quiet for
//! [`REST_AFTER`], it closes the database and leaves it closed until the next read or write
//! opens it ([`Store::rest_if_free`]), so an idle agent holds none of sled's memory.
//!
//! Why then and not otherwise: sled 0.34 keeps memory for every page it touched while open
//! (an agent that received 100,000 records idles at ~130 MB; a fresh open of the same
//! database takes ~40 MB), and only closing it gives that back. A reopen makes readers that
//! arrive meanwhile wait for it (about a second per 100,000 records, measured in
//! bench/RESULTS.md, session 5) and writers wait for the writer lock, so it runs only when
//! nobody is likely to notice: no session in flight either way, no commit for [`QUIET`], and
//! nobody holding the writer lock (an automatic snapshot, which reads every record after a
//! large change and gives way to waiting writers, is never made to start over; its reads
//! count toward the next reopen if it ran after this one). Small stores never reopen: below
//! [`REOPEN_AFTER`] entries, what sled keeps is small and a reopen would buy nothing.

use crate::store::{Reopen, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, warn};

/// Entries written or read through sled since it was opened before a reopen is worth its
/// pause: at 10,000 records sled holds ~10–20 MB more than a fresh open (bench/RESULTS.md,
/// session 4: 40 → 90 MB at 20,000), and the reopen takes a few hundred milliseconds.
pub const REOPEN_AFTER: u64 = 10_000;

/// How long the store must have been quiet (no commit, no session in flight) first. Sessions
/// come in bursts (a session, the anti-entropy round after it, a peer's own session back), so
/// a few seconds without any is the end of the burst rather than a gap inside it.
pub const QUIET: Duration = Duration::from_secs(5);

/// How long the store must have been quiet (no commit, no session in flight either way) before
/// the agent closes sled altogether ([`Store::rest_if_free`]) until the next read or write.
/// A reopen gives back what sled kept of past work, but sled 0.34 still holds memory for every
/// page of the database merely to have it open (74 MB for 1,000,000 records against 10.9 MB
/// for an empty one, bench/RESULTS.md, session 12); only a closed database holds none. Long
/// enough that the sessions of one burst (a sync, its anti-entropy round, the peer's own
/// session back) do not pay the open that ends a rest (0.2–0.5 s at 1,000,000 records), short
/// enough that a laptop alone in the field gives its memory back soon after its last sync.
pub const REST_AFTER: Duration = Duration::from_secs(30);

/// How often the task looks.
const TICK: Duration = Duration::from_secs(1);

/// Whether a reopen is due now by the work sled did (the quiet spell aside).
pub fn due(store: &Store) -> bool {
    store.touched_since_open() >= REOPEN_AFTER
}

/// The agent's reopen task, until `stop` turns true. Failures are logged and tried again
/// after the next quiet spell; they never stop the agent.
pub async fn run(store: Arc<Store>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    let mut seq = store.seq();
    let mut quiet_since = Instant::now();
    let mut wakes = store.rests().1;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = store.seq();
        // A read that ended a rest is use too: resting again at once would make every
        // occasional reader (a `status`, an API read) pay an open.
        let woke = store.rests().1;
        if now != seq || crate::progress::any_running() || woke != wakes {
            (seq, wakes) = (now, woke);
            quiet_since = Instant::now();
            continue;
        }
        let resting_due = quiet_since.elapsed() >= REST_AFTER && !store.resting();
        if !resting_due && (quiet_since.elapsed() < QUIET || !due(&store)) {
            continue;
        }
        let s = store.clone();
        let done = tokio::task::spawn_blocking(move || {
            if resting_due {
                s.rest_if_free(wakes)
            } else {
                s.reopen_if_free()
            }
        })
        .await;
        let what = if resting_due {
            "close the idle database"
        } else {
            "reopen the database"
        };
        match done {
            // Logged by the store.
            Ok(Ok(Reopen::Done(_))) => {}
            Ok(Ok(Reopen::Busy)) => {
                debug!("the database was busy; will {what} later");
                quiet_since = Instant::now();
            }
            Ok(Err(e)) => {
                warn!(error = %e, "could not {what} to give back memory; trying later");
                quiet_since = Instant::now();
            }
            Err(_) => return,
        }
    }
}
