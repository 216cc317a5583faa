//! The agent's task that gives back the memory sled keeps after a large session, import or
//! restore: once sled has written or read [`REOPEN_AFTER`] entries since it was opened and the
//! store has been quiet for [`QUIET`], it closes and reopens the database
//! ([`Store::reopen_if_free`], `store/handles.rs`).
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
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = store.seq();
        if now != seq || crate::progress::any_running() {
            seq = now;
            quiet_since = Instant::now();
            continue;
        }
        if quiet_since.elapsed() < QUIET || !due(&store) {
            continue;
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.reopen_if_free()).await {
            // Logged by the store.
            Ok(Ok(Reopen::Done(_))) => {}
            Ok(Ok(Reopen::Busy)) => {
                debug!("the database was busy; reopening it later");
                quiet_since = Instant::now();
            }
            Ok(Err(e)) => {
                warn!(error = %e, "could not reopen the database to give back memory; trying later");
                quiet_since = Instant::now();
            }
            Err(_) => return,
        }
    }
}
