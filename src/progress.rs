//! Progress of sync sessions this process takes part in, for people watching: the console's
//! Live sessions page, `status`, and `sync`'s progress bar. Both roles show: sessions this
//! process starts (`role: initiator`, reported by [`crate::sync::sync_with`]) and sessions
//! peers start with it (`role: responder`, reported by [`crate::sync::Responder`]).
//!
//! The session code reports through a small hook: [`start`] (or [`start_inbound`]) when a
//! session begins, then [`Tracker::direction`] and [`Tracker::page`] per page, and
//! [`Tracker::finish`]. Everything here is in memory only (one board per process, so per
//! agent): a restarted agent starts with an empty board, like its online state.
//!
//! Bytes: with [`Tracker::socket`] a session reads the byte counters of its connection
//! ([`crate::protocol::counters`]) whenever it is looked at, so bytes move while a page is
//! still on the wire; without (in-process tests), the encoded page sizes are added per page.
//! A responder cannot tell an initiator that vanished from a slow one: a session with no word
//! for [`STALE_AFTER`] is shown as failed.
//!
//! "Expected" is estimated from feed positions: a pull from position `since` up to the peer's
//! feed head `head` covers `head - since` positions, and the feed holds one entry per record at
//! its latest change, so the records still to come are at most the positions still to go.
//! `fraction` is therefore position-based and reaches exactly 1.0 when the last page is in.
//! Expected bytes extrapolate the bytes per position seen so far.

use crate::protocol::counters::ByteCounters;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

/// Finished sessions kept for display.
const KEEP_FINISHED: usize = 20;

/// A session in flight with no page, hello or push for this long is shown as failed (longer
/// than a request may take, [`crate::protocol::server::REQUEST_DEADLINE`]).
pub const STALE_AFTER: Duration = Duration::from_secs(150);

/// A session a peer started that has had its hello and nothing since for this long is ended:
/// the peer's next request follows its hello at once, so it was a `verify` (hello, then
/// digests), a refusal on the peer's side (this laptop's certificate, a revocation), or the peer
/// stopped; shown "syncing, 0 %" until [`STALE_AFTER`] before (seen in a trial for minutes).
pub const HELLO_ONLY_AFTER: Duration = Duration::from_secs(20);

/// One direction of a session in flight.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DirectionProgress {
    /// Records moved so far.
    pub records: u64,
    /// Bytes moved so far: counted at the connection while a page is in flight when the
    /// session has a socket, else encoded page bytes.
    pub bytes: u64,
    /// Feed position where this direction started.
    pub from: u64,
    /// Feed position reached.
    pub at: u64,
    /// Feed position it must reach (the sender's feed head when the session started).
    pub to: u64,
    /// Estimated records in all (done plus at most the positions still to go).
    pub records_expected: u64,
    /// Estimated bytes in all (bytes per position so far times positions in all).
    pub bytes_expected: u64,
    /// Done, from 0.0 to 1.0, by feed position.
    pub fraction: f64,
    /// Records per second so far.
    pub rate: f64,
    /// Estimated seconds left, when there is a rate.
    pub eta_secs: Option<f64>,
    /// True once the last page of this direction is through.
    pub done: bool,
}

/// Which way records move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// From the peer to us.
    Pull,
    /// From us to the peer.
    Push,
}

/// A session, in flight or finished.
#[derive(Clone, Debug, Serialize)]
pub struct SessionProgress {
    /// Session number in this process.
    pub id: u64,
    /// `initiator` (this process started it) or `responder` (the peer did).
    pub role: &'static str,
    /// The peer's address.
    pub addr: String,
    /// The peer's instance, once it said hello.
    pub peer: Option<Uuid>,
    /// The peer's display name, once it said hello.
    pub peer_name: String,
    /// When it started (RFC 3339).
    pub started: chrono::DateTime<chrono::Utc>,
    /// Seconds since it started (or its length, once finished).
    pub elapsed_secs: f64,
    /// `running`, `finished` or `failed`.
    pub state: &'static str,
    /// Why it failed, in words.
    pub error: Option<String>,
    /// Conflicts logged on both sides.
    pub conflicts: u64,
    /// Records received.
    pub received: DirectionProgress,
    /// Records sent.
    pub sent: DirectionProgress,
    /// Done overall, 0.0 to 1.0.
    pub fraction: f64,
    #[serde(skip)]
    clock: Option<Instant>,
    #[serde(skip)]
    dir_clock: [Option<Instant>; 2],
    /// Last word from the session (for [`STALE_AFTER`]).
    #[serde(skip)]
    touched: Option<Instant>,
    /// A page went through (a responder session without one is ended after
    /// [`HELLO_ONLY_AFTER`]).
    #[serde(skip)]
    paged: bool,
    /// The connection's counters and their `(read, written)` when the session began.
    #[serde(skip)]
    socket: Option<(Arc<ByteCounters>, u64, u64)>,
}

impl SessionProgress {
    /// Bytes from the connection's counters, and the expected bytes extrapolated from them.
    fn read_socket(&mut self) {
        let Some((c, r0, w0)) = &self.socket else {
            return;
        };
        let (r, w) = c.get();
        for (d, n) in [
            (&mut self.received, r.saturating_sub(*r0)),
            (&mut self.sent, w.saturating_sub(*w0)),
        ] {
            d.bytes = n;
            d.bytes_expected = if d.done || d.fraction >= 1.0 {
                n
            } else if d.fraction > 0.0 {
                (n as f64 / d.fraction) as u64
            } else {
                0
            };
        }
    }
}

#[derive(Default)]
struct Inner {
    next: u64,
    running: HashMap<u64, SessionProgress>,
    finished: VecDeque<SessionProgress>,
    /// Per peer: our feed position it has received up to (from its hello reply), as of the
    /// last session this process ran with it.
    sent_upto: HashMap<Uuid, u64>,
}

struct Board {
    inner: Mutex<Inner>,
    /// Bumped on every change, so watchers (SSE streams) wake up.
    version: watch::Sender<u64>,
}

fn board() -> &'static Board {
    static B: OnceLock<Board> = OnceLock::new();
    B.get_or_init(|| Board {
        inner: Mutex::new(Inner::default()),
        version: watch::channel(0).0,
    })
}

fn with<T>(f: impl FnOnce(&mut Inner) -> T) -> T {
    let b = board();
    let out = f(&mut b.inner.lock().unwrap_or_else(|e| e.into_inner()));
    b.version.send_modify(|v| *v += 1);
    out
}

/// Wakes on every progress change (value: a change counter).
pub fn subscribe() -> watch::Receiver<u64> {
    board().version.subscribe()
}

/// Sessions in flight, oldest first, then up to 20 finished ones, newest first.
pub fn snapshot() -> (Vec<SessionProgress>, Vec<SessionProgress>) {
    let b = board();
    let mut g = b.inner.lock().unwrap_or_else(|e| e.into_inner());
    // Not through `with`: looking must not wake the watchers (an SSE stream looks on wake).
    let stale: Vec<u64> = g
        .running
        .values()
        .filter(|s| s.touched.is_some_and(|t| t.elapsed() > STALE_AFTER))
        .map(|s| s.id)
        .collect();
    for id in stale {
        let msg = format!(
            "no word from the peer for {} s: it stopped or lost the connection",
            STALE_AFTER.as_secs()
        );
        end_in(&mut g, id, Err(msg));
    }
    let hello_only: Vec<u64> = g
        .running
        .values()
        .filter(|s| s.role == "responder" && !s.paged)
        .filter(|s| s.touched.is_some_and(|t| t.elapsed() > HELLO_ONLY_AFTER))
        .map(|s| s.id)
        .collect();
    for id in hello_only {
        let msg = "the peer sent nothing after its hello (a verify, a refusal on its side, or \
                   it stopped)"
            .to_string();
        end_in(&mut g, id, Err(msg));
    }
    let mut running: Vec<SessionProgress> = g
        .running
        .values()
        .cloned()
        .map(|mut s| {
            s.elapsed_secs = s.clock.map_or(0.0, |c| c.elapsed().as_secs_f64());
            s.read_socket();
            s
        })
        .collect();
    running.sort_by_key(|s| s.id);
    (running, g.finished.iter().cloned().collect())
}

/// Our feed position a peer had received up to at its last session with this process.
pub fn sent_upto(peer: &Uuid) -> Option<u64> {
    board()
        .inner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .sent_upto
        .get(peer)
        .copied()
}

/// True while some session is in flight (its bytes may be moving).
pub fn any_running() -> bool {
    !board()
        .inner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .running
        .is_empty()
}

/// True while a session with `peer` (either role) is in flight.
pub fn in_session_with(peer: &Uuid) -> bool {
    board()
        .inner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .running
        .values()
        .any(|s| s.peer.as_ref() == Some(peer))
}

/// Starts tracking a session this process starts with the peer at `addr`.
pub fn start(addr: &str) -> Tracker {
    begin(addr, "initiator")
}

/// Starts tracking a session a peer (calling from `addr`) started with us.
pub fn start_inbound(addr: &str) -> Tracker {
    begin(addr, "responder")
}

fn begin(addr: &str, role: &'static str) -> Tracker {
    let id = with(|g| {
        g.next += 1;
        let id = g.next;
        g.running.insert(
            id,
            SessionProgress {
                id,
                role,
                addr: addr.to_string(),
                peer: None,
                peer_name: String::new(),
                started: chrono::Utc::now(),
                elapsed_secs: 0.0,
                state: "running",
                error: None,
                conflicts: 0,
                received: DirectionProgress::default(),
                sent: DirectionProgress::default(),
                fraction: 0.0,
                clock: Some(Instant::now()),
                dir_clock: [None, None],
                touched: Some(Instant::now()),
                paged: false,
                socket: None,
            },
        );
        id
    });
    Tracker { id, ended: false }
}

/// The handle a session reports through; a session dropped without [`Tracker::finish`] (an
/// error returned early) is recorded as failed.
pub struct Tracker {
    id: u64,
    ended: bool,
}

impl Tracker {
    fn update(&self, f: impl FnOnce(&mut SessionProgress)) {
        with(|g| {
            if let Some(s) = g.running.get_mut(&self.id) {
                f(s);
                s.fraction = overall(s);
                s.touched = Some(Instant::now());
            }
        });
    }

    /// The peer said hello: who it is, and our feed position it has received up to.
    pub fn peer(&self, instance: Uuid, name: &str, has_ours_upto: u64) {
        let name = name.to_string();
        with(|g| {
            g.sent_upto.insert(instance, has_ours_upto);
        });
        self.update(|s| {
            s.peer = Some(instance);
            s.peer_name = name;
        });
    }

    /// From now on, the session's bytes are what `counters` (its connection's) count.
    pub fn socket(&self, counters: Arc<ByteCounters>) {
        let (r, w) = counters.get();
        self.update(|s| s.socket = Some((counters, r, w)));
    }

    /// True while the session is on the board (not finished, failed or given up as stale).
    pub fn running(&self) -> bool {
        board()
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .running
            .contains_key(&self.id)
    }

    /// The peer (as the responder sees it after hello): who it is, without a claim about our
    /// feed; see [`Tracker::peer_has`].
    pub fn peer_named(&self, instance: Uuid, name: &str) {
        let name = name.to_string();
        self.update(|s| {
            s.peer = Some(instance);
            s.peer_name = name;
        });
    }

    /// The peer has our feed up to `upto` (as a responder learns it from the peer's requests).
    pub fn peer_has(&self, upto: u64) {
        let id = self.id;
        with(|g| {
            if let Some(p) = g.running.get(&id).and_then(|s| s.peer) {
                let e = g.sent_upto.entry(p).or_insert(0);
                *e = (*e).max(upto);
            }
        });
    }

    /// A direction starts: from feed position `from` to `to`.
    pub fn direction(&self, way: Way, from: u64, to: u64) {
        self.update(|s| {
            let (d, i) = dir(s, way);
            *d = DirectionProgress {
                from,
                at: from,
                to: to.max(from),
                // At most one record per position still to go, as in `page`.
                records_expected: to.saturating_sub(from),
                ..Default::default()
            };
            s.dir_clock[i] = Some(Instant::now());
        });
    }

    /// A page went through: `records` records, `bytes` encoded bytes, position now `at`;
    /// `last` when it was the direction's last page.
    pub fn page(&self, way: Way, records: u64, bytes: u64, conflicts: u64, at: u64, last: bool) {
        let id = self.id;
        if way == Way::Push {
            // The peer applied this page: it has our feed up to `at`.
            with(|g| {
                if let Some(p) = g.running.get(&id).and_then(|s| s.peer) {
                    let e = g.sent_upto.entry(p).or_insert(0);
                    *e = (*e).max(at);
                }
            });
        }
        self.update(|s| {
            s.paged = true;
            s.conflicts += conflicts;
            let started = s.dir_clock[if way == Way::Pull { 0 } else { 1 }];
            let (d, _) = dir(s, way);
            d.records += records;
            d.bytes += bytes;
            d.at = at.max(d.at);
            if d.at > d.to {
                d.to = d.at;
            }
            if last {
                d.done = true;
                d.to = d.at;
            }
            let span = d.to.saturating_sub(d.from);
            let went = d.at.saturating_sub(d.from);
            let left = d.to.saturating_sub(d.at);
            // Past the head the sender had at hello, and not last: its feed grew meanwhile (a
            // relay still receiving), so how much is left is unknown. Never "100 %" before the
            // end (trial 9, finding 7: "100% done … 3500 of about 3500" with 26,500 to come).
            let open_ended = !d.done && d.at >= d.to;
            d.fraction = if d.done {
                1.0
            } else if open_ended || span == 0 {
                0.99
            } else {
                (went as f64 / span as f64).min(0.99)
            };
            d.records_expected = if d.done { d.records } else { d.records + left };
            d.bytes_expected = if d.done || went == 0 {
                d.bytes
            } else {
                d.bytes + (d.bytes as f64 / went as f64 * left as f64) as u64
            };
            let secs = started.map_or(0.0, |c| c.elapsed().as_secs_f64());
            d.rate = if secs > 0.0 {
                d.records as f64 / secs
            } else {
                0.0
            };
            d.eta_secs = if d.done {
                Some(0.0)
            } else if open_ended {
                None
            } else if d.fraction > 0.0 && secs > 0.0 {
                Some(secs * (1.0 - d.fraction) / d.fraction)
            } else {
                None
            };
        });
    }

    /// The session ended: `Ok` or the reason it failed.
    pub fn finish(mut self, result: Result<(), String>) {
        self.end(result);
    }

    fn end(&mut self, result: Result<(), String>) {
        self.ended = true;
        let id = self.id;
        with(|g| end_in(g, id, result));
    }
}

fn end_in(g: &mut Inner, id: u64, result: Result<(), String>) {
    if let Some(mut s) = g.running.remove(&id) {
        s.elapsed_secs = s.clock.map_or(0.0, |c| c.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                s.state = "finished";
                s.fraction = 1.0;
                for d in [&mut s.received, &mut s.sent] {
                    d.done = true;
                    d.fraction = 1.0;
                    d.eta_secs = Some(0.0);
                }
            }
            Err(e) => {
                s.state = "failed";
                s.error = Some(e);
            }
        }
        s.read_socket();
        // Finished sessions keep their final counts, not the connection's later ones.
        s.socket = None;
        g.finished.push_front(s);
        g.finished.truncate(KEEP_FINISHED);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.ended {
            self.end(Err("the session stopped".into()));
        }
    }
}

fn dir(s: &mut SessionProgress, way: Way) -> (&mut DirectionProgress, usize) {
    match way {
        Way::Pull => (&mut s.received, 0),
        Way::Push => (&mut s.sent, 1),
    }
}

/// Overall fraction: both directions weighted by their span of positions.
fn overall(s: &SessionProgress) -> f64 {
    let span = |d: &DirectionProgress| d.to.saturating_sub(d.from) as f64;
    let went = |d: &DirectionProgress| {
        if d.done {
            span(d)
        } else {
            d.at.saturating_sub(d.from) as f64
        }
    };
    let total = span(&s.received) + span(&s.sent);
    if total == 0.0 {
        if s.received.done && s.sent.done {
            1.0
        } else {
            0.0
        }
    } else {
        (went(&s.received) + went(&s.sent)) / total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay still receiving sends past the head it had at hello: never 100 % (or an ETA of
    /// 0 s) before its last page (trial 9, finding 7).
    #[test]
    fn a_direction_past_the_hello_head_is_not_done_before_its_last_page() {
        let t = start("127.0.0.1:2");
        let received = |id| {
            let (run, _) = snapshot();
            run.into_iter().find(|s| s.id == id).unwrap().received
        };
        t.direction(Way::Pull, 0, 3500);
        t.page(Way::Pull, 3500, 1000, 0, 3500, false);
        t.page(Way::Pull, 2000, 1000, 0, 5500, false);
        let r = received(t.id);
        assert!(r.fraction < 1.0, "{r:?}");
        assert_eq!(r.eta_secs, None);
        t.page(Way::Pull, 100, 10, 0, 5600, true);
        assert_eq!(received(t.id).fraction, 1.0);
        t.finish(Ok(()));
    }

    #[test]
    fn positions_drive_the_fraction_and_the_last_page_completes_it() {
        let t = start("127.0.0.1:1");
        t.direction(Way::Pull, 10, 110);
        t.page(Way::Pull, 40, 4000, 1, 60, false);
        let (run, _) = snapshot();
        let s = run.iter().find(|s| s.id == t.id).unwrap();
        assert_eq!(s.received.fraction, 0.5);
        assert_eq!(s.received.records_expected, 90);
        assert_eq!(s.received.bytes_expected, 8000);
        assert_eq!(s.conflicts, 1);
        // Sparse feed: the last page arrives before the head position is reached in count.
        t.page(Way::Pull, 10, 1000, 0, 110, true);
        t.direction(Way::Push, 5, 5);
        t.page(Way::Push, 0, 10, 0, 5, true);
        let id = t.id;
        t.finish(Ok(()));
        let (run, done) = snapshot();
        assert!(run.iter().all(|s| s.id != id));
        let s = done.iter().find(|s| s.id == id).unwrap();
        assert_eq!(
            (s.state, s.fraction, s.received.records),
            ("finished", 1.0, 50)
        );
    }

    #[test]
    fn a_responder_session_with_only_its_hello_ends_after_a_while() {
        let hello_only = start_inbound("127.0.0.1:3");
        let paging = start_inbound("127.0.0.1:4");
        paging.page(Way::Pull, 0, 10, 0, 0, false);
        let long_ago = Instant::now().checked_sub(HELLO_ONLY_AFTER + Duration::from_secs(1));
        with(|g| {
            for id in [hello_only.id, paging.id] {
                g.running.get_mut(&id).unwrap().touched = long_ago;
            }
        });
        let (run, done) = snapshot();
        assert!(
            run.iter().any(|s| s.id == paging.id),
            "a paging session runs on"
        );
        let s = done.iter().find(|s| s.id == hello_only.id).unwrap();
        assert_eq!(s.state, "failed");
        assert!(s
            .error
            .as_deref()
            .unwrap()
            .contains("nothing after its hello"));
    }

    #[test]
    fn a_dropped_tracker_is_a_failed_session() {
        let t = start("127.0.0.1:2");
        let id = t.id;
        drop(t);
        let (_, done) = snapshot();
        let s = done.iter().find(|s| s.id == id).unwrap();
        assert_eq!(s.state, "failed");
    }
}
