//! Whole sync sessions between two temporary stores in one process, through an in-memory
//! [`Peer`] that calls the other store's [`Responder`] directly (every request and reply still
//! goes through its JSON form, as on the wire). No socket, no TLS, no child process: what is
//! tested is the session logic itself — pages and positions, interruption and resume, the gap
//! refusal, knowledge raising, no echo — on real sled stores on disk.

use fieldsync::change::RemoteChange;
use fieldsync::config::Config;
use fieldsync::formats;
use fieldsync::merge::Edit;
use fieldsync::protocol::client::CallError;
use fieldsync::protocol::server::{Caller, SyncService};
use fieldsync::protocol::{
    codes, DigestReply, DigestRequest, Hello, HelloReply, Page, PullRequest, PushReply,
    PushRequest, ENC_JSON,
};
use fieldsync::store::{LocalOp, Store};
use fieldsync::sync::{session, Peer, Responder, SessionOptions, SessionReport, SyncError};
use fieldsync::tls::Transport;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use uuid::Uuid;

const PERSON: &str = "person";
/// Small pages, so a few dozen records make a multi-page session.
const PAGE: usize = 7;

struct Node {
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse("", "session test").unwrap();
    let store = Arc::new(Store::open(dir.path(), config).unwrap());
    Node { store, _dir: dir }
}

fn put(s: &Store, id: Uuid, fields: serde_json::Value) {
    let serde_json::Value::Object(f) = fields else {
        panic!("fields must be an object")
    };
    s.write_one(LocalOp {
        table: PERSON.into(),
        id,
        edit: Edit::Put(f),
    })
    .unwrap();
}

fn write_many(s: &Store, n: usize, tag: &str) -> Vec<Uuid> {
    (0..n)
        .map(|i| {
            let id = Uuid::new_v4();
            put(s, id, json!({"name": format!("{tag}{i}")}));
            id
        })
        .collect()
}

fn export(s: &Store) -> String {
    let mut out = Vec::new();
    formats::export_jsonl(s, PERSON, true, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn count(s: &Store) -> usize {
    s.changes_since(0, usize::MAX).unwrap().len()
}

/// A value through its JSON form, as it crosses the wire.
fn wire<T: Serialize + DeserializeOwned>(v: &T) -> T {
    serde_json::from_value(serde_json::to_value(v).unwrap()).unwrap()
}

/// A hello as sent, with the reply's `knowledge_hash` or the refusal's code.
type SeenHello = (Hello, Result<Option<String>, i32>);

/// The other store, answering in memory. `cut_pull`/`cut_push`: the n-th such request (1-based)
/// fails as if the connection dropped before it reached the responder.
struct MemPeer {
    responder: Responder,
    cut_pull: Option<usize>,
    cut_push: Option<usize>,
    /// The n-th push (1-based) is refused as a gap, writing nothing, as a responder that does
    /// not wait for a pipelined page's turn refuses a page that came before the one ahead.
    gap_push: Option<usize>,
    pulls: AtomicUsize,
    pushes: AtomicUsize,
    /// Every hello as sent, with the reply's `knowledge_hash` (or the refusal's code).
    hellos: std::sync::Mutex<Vec<SeenHello>>,
    /// Every push's `knowledge` given or not.
    push_knowledge: std::sync::Mutex<Vec<bool>>,
    /// Records in the largest page pushed.
    largest_push: AtomicUsize,
}

impl MemPeer {
    fn new(to: &Node) -> Self {
        Self {
            responder: Responder::new(to.store.clone(), None, None, Transport::Plaintext),
            cut_pull: None,
            cut_push: None,
            gap_push: None,
            pulls: AtomicUsize::new(0),
            pushes: AtomicUsize::new(0),
            hellos: Default::default(),
            push_knowledge: Default::default(),
            largest_push: AtomicUsize::new(0),
        }
    }

    fn cut(n: &AtomicUsize, at: Option<usize>) -> Result<(), CallError> {
        let this = n.fetch_add(1, Ordering::SeqCst) + 1;
        match at {
            Some(at) if this == at => Err(CallError::Transport("connection dropped".into())),
            _ => Ok(()),
        }
    }
}

fn answer<T: Serialize + DeserializeOwned>(
    r: Result<T, fieldsync::protocol::ProtocolError>,
) -> Result<T, CallError> {
    r.map(|v| wire(&v)).map_err(CallError::Protocol)
}

impl Peer for MemPeer {
    async fn hello(&self, h: &Hello) -> Result<HelloReply, CallError> {
        let r = answer(self.responder.hello(wire(h), Caller::default()));
        let seen = match &r {
            Ok(reply) => Ok(reply.knowledge_hash.clone()),
            Err(CallError::Protocol(e)) => Err(e.code),
            Err(_) => Err(0),
        };
        self.hellos.lock().unwrap().push((h.clone(), seen));
        r
    }

    async fn pull(&self, r: &PullRequest) -> Result<Page, CallError> {
        Self::cut(&self.pulls, self.cut_pull)?;
        answer(self.responder.pull(wire(r), Caller::default()))
    }

    async fn push(&self, r: &PushRequest) -> Result<PushReply, CallError> {
        if self.gap_push == Some(self.pushes.load(Ordering::SeqCst) + 1) {
            self.pushes.fetch_add(1, Ordering::SeqCst);
            return Err(CallError::Protocol(
                fieldsync::protocol::ProtocolError::new(
                    codes::POSITION_GAP,
                    "page came before the one ahead of it",
                ),
            ));
        }
        Self::cut(&self.pushes, self.cut_push)?;
        self.largest_push
            .fetch_max(r.page.count as usize, Ordering::SeqCst);
        self.push_knowledge
            .lock()
            .unwrap()
            .push(r.knowledge.is_some());
        answer(self.responder.push(wire(r), Caller::default()))
    }

    async fn digest(&self, r: &DigestRequest) -> Result<DigestReply, CallError> {
        answer(self.responder.digest(wire(r), Caller::default()))
    }
}

fn opts(s: &Store) -> SessionOptions {
    let mut o = SessionOptions::from_store(s, Transport::Plaintext);
    o.page_records = PAGE;
    o
}

/// Runs one session from `a` with `peer` (bounded: a session is a bounded loop of requests).
fn run(a: &Node, peer: &MemPeer) -> Result<SessionReport, SyncError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            session::run(&a.store, peer, "in-memory peer", &opts(&a.store)),
        )
        .await
        .expect("a session in memory finishes within a minute")
    })
}

#[test]
fn a_session_moves_both_ways_in_pages_raises_knowledge_and_echoes_nothing() {
    let (a, b) = (node(), node());
    write_many(&a.store, 30, "a");
    write_many(&b.store, 20, "b");

    let r = run(&a, &MemPeer::new(&b)).unwrap();
    assert_eq!(r.peer.instance, b.store.id());
    assert_eq!((r.received.records, r.received.applied), (20, 20));
    assert_eq!(r.received.pages, 3, "20 records in pages of {PAGE}");
    // No echo: what A just pulled from B is not pushed back.
    assert_eq!((r.sent.records, r.sent.applied), (30, 30));
    assert_eq!(r.sent.pages, 5, "30 records in pages of {PAGE}");
    assert_eq!(export(&a.store), export(&b.store));
    assert_eq!(count(&a.store), 50);

    // Knowledge was raised on both sides: each now knows everything the other had.
    let (ka, kb) = (
        a.store.position().unwrap().knowledge,
        b.store.position().unwrap().knowledge,
    );
    assert!(ka.contains_key(&b.store.id()), "{ka:?}");
    assert!(kb.contains_key(&a.store.id()), "{kb:?}");

    // Both sides count the session once.
    assert_eq!(a.store.peer(&b.store.id()).unwrap().unwrap().sync_count, 1);
    assert_eq!(b.store.peer(&a.store.id()).unwrap().unwrap().sync_count, 1);

    // A second session has nothing to move in either direction, and writes no record.
    let (seq_a, seq_b) = (a.store.seq(), b.store.seq());
    let r = run(&a, &MemPeer::new(&b)).unwrap();
    assert_eq!((r.received.records, r.sent.records), (0, 0));
    assert_eq!((a.store.seq(), b.store.seq()), (seq_a, seq_b));

    // One new edit on B travels alone.
    put(&b.store, Uuid::new_v4(), json!({"name": "late"}));
    let r = run(&a, &MemPeer::new(&b)).unwrap();
    assert_eq!((r.received.records, r.sent.records), (1, 0));
    assert_eq!(export(&a.store), export(&b.store));
}

#[test]
fn a_no_op_session_is_one_hello_that_leaves_out_knowledge_the_peer_holds() {
    let (a, b) = (node(), node());
    write_many(&a.store, 3, "a");
    write_many(&b.store, 2, "b");
    let first = MemPeer::new(&b);
    run(&a, &first).unwrap();
    // The first hello between them carries both knowledge vectors in full.
    let h = first.hellos.lock().unwrap();
    assert_eq!(h.len(), 1);
    assert!(!h[0].0.knowledge.is_empty() && h[0].0.knowledge_hash.is_none());
    assert_eq!(h[0].1, Ok(None), "the reply carries B's knowledge");
    drop(h);
    // That session raised both knowledge vectors (each learned the other's writes): the next
    // hello and reply carry them again.
    let settle = MemPeer::new(&b);
    run(&a, &settle).unwrap();
    assert!(settle.hellos.lock().unwrap()[0].0.knowledge_hash.is_none());
    assert_eq!(a.store.peer(&b.store.id()).unwrap().unwrap().sync_count, 2);

    // Nothing changed: the hello and its reply name their knowledge by hash, and B ends the
    // session in its reply: nothing is pulled or pushed.
    let (seq_a, seq_b) = (a.store.seq(), b.store.seq());
    let noop = MemPeer::new(&b);
    let r = run(&a, &noop).unwrap();
    assert_eq!((r.received.records, r.sent.records), (0, 0));
    assert_eq!((a.store.seq(), b.store.seq()), (seq_a, seq_b));
    let h = noop.hellos.lock().unwrap();
    assert_eq!(h.len(), 1);
    assert!(h[0].0.knowledge.is_empty(), "{:?}", h[0].0);
    assert_eq!(
        h[0].0.knowledge_hash.as_deref(),
        Some(fieldsync::protocol::knowledge_hash(&a.store.position().unwrap().knowledge).as_str())
    );
    assert_eq!(
        h[0].1,
        Ok(Some(fieldsync::protocol::knowledge_hash(
            &b.store.position().unwrap().knowledge
        )))
    );
    assert_eq!(noop.pulls.load(Ordering::SeqCst), 0, "nothing to pull");
    assert_eq!(noop.pushes.load(Ordering::SeqCst), 0, "nothing to push");
    drop(h);
    assert_eq!(b.store.peer(&a.store.id()).unwrap().unwrap().sync_count, 3);

    // A new write on A: its knowledge changed, so the hello carries it again, and it travels.
    put(&a.store, Uuid::new_v4(), json!({"name": "late"}));
    let changed = MemPeer::new(&b);
    let r = run(&a, &changed).unwrap();
    assert_eq!((r.received.records, r.sent.records), (0, 1));
    let h = changed.hellos.lock().unwrap();
    assert!(!h[0].0.knowledge.is_empty() && h[0].0.knowledge_hash.is_none());
    drop(h);
    // Its last push carried A's knowledge (B lacked A's new event).
    assert_eq!(*changed.push_knowledge.lock().unwrap(), vec![true]);

    // B no longer holds what A told it (restored, say): B refuses the hash, and the session
    // says hello again in full and completes.
    b.store
        .update_peer(&a.store.id(), |row| row.knowledge.clear())
        .unwrap();
    let lost = MemPeer::new(&b);
    let r = run(&a, &lost).unwrap();
    assert_eq!((r.received.records, r.sent.records), (0, 0));
    let h = lost.hellos.lock().unwrap();
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[0].1, Err(codes::KNOWLEDGE_NEEDED));
    assert!(h[0].0.knowledge.is_empty());
    assert!(!h[1].0.knowledge.is_empty() && h[1].0.knowledge_hash.is_none());
    assert!(h[1].1.is_ok());
    assert_eq!(export(&a.store), export(&b.store));
}

#[test]
fn the_sync_right_after_one_that_pushed_records_is_one_hello() {
    let (a, b) = (node(), node());
    write_many(&a.store, 20, "a");
    let r = run(&a, &MemPeer::new(&b)).unwrap();
    assert_eq!(r.sent.records, 20);
    // B's feed moved past A's position for it (the 20 records are in B's feed now), but all
    // of it came from A: B ends the next session in its hello reply, nothing is pulled or
    // pushed, and both sides count the session.
    assert!(b.store.seq() >= 20);
    let next = MemPeer::new(&b);
    let r = run(&a, &next).unwrap();
    assert_eq!((r.received.records, r.sent.records), (0, 0));
    assert_eq!(next.hellos.lock().unwrap().len(), 1);
    assert_eq!(next.pulls.load(Ordering::SeqCst), 0, "nothing to pull");
    assert_eq!(next.pushes.load(Ordering::SeqCst), 0, "nothing to push");
    assert_eq!(b.store.peer(&a.store.id()).unwrap().unwrap().sync_count, 2);
    assert_eq!(a.store.peer(&b.store.id()).unwrap().unwrap().sync_count, 2);
    // A write on B is still pulled by the next session (the reply is not `done` then).
    put(&b.store, Uuid::new_v4(), json!({"name": "late"}));
    let r = run(&a, &MemPeer::new(&b)).unwrap();
    assert_eq!((r.received.records, r.sent.records), (1, 0));
    assert_eq!(export(&a.store), export(&b.store));
}

/// A caller's `nothing_past` (its feed holds nothing the named knowledge lacks past that
/// position) ends the session in the hello reply only when the knowledge it names is the
/// responder's current one and the position is within what the responder received; then the
/// responder counts the caller's feed as received to its head. Otherwise nothing changes.
#[test]
fn nothing_past_counts_only_for_the_responders_current_knowledge() {
    use fieldsync::protocol::knowledge_hash;
    let (a, b) = (node(), node());
    write_many(&a.store, 20, "a");
    run(&a, &MemPeer::new(&b)).unwrap();
    // B's hello back to A, as its session sends it (the push after it never arrives).
    let to_a = MemPeer {
        cut_push: Some(1),
        ..MemPeer::new(&a)
    };
    assert!(run(&b, &to_a).is_err());
    let mut h = to_a.hellos.lock().unwrap()[0].0.clone();
    let a_row = |s: &Store| s.peer(&b.store.id()).unwrap().unwrap().received_upto;
    assert_eq!(a_row(&a.store), 0, "A has received nothing of B's feed");
    let theirs = a.store.position().unwrap().knowledge;
    h.received_upto = Some(b.store.peer(&a.store.id()).unwrap().unwrap().received_upto);
    h.nothing_past = Some(0);
    let responder = Responder::new(a.store.clone(), None, None, Transport::Plaintext);
    let hello = |h: &Hello| responder.hello(wire(h), Caller::default()).unwrap();

    // Another knowledge named (A's as it was before some write, say): not done, nothing moved.
    h.peer_knowledge_hash = Some(knowledge_hash(&Default::default()));
    assert!(!hello(&h).done);
    assert_eq!(a_row(&a.store), 0);
    // A claim from past what A received: not done either.
    h.peer_knowledge_hash = Some(knowledge_hash(&theirs));
    h.nothing_past = Some(b.store.seq());
    assert!(!hello(&h).done);
    assert_eq!(a_row(&a.store), 0);
    // A's current knowledge, from a position A has: done, and B's feed counts as received.
    h.nothing_past = Some(0);
    let r = hello(&h);
    assert!(r.done);
    assert_eq!(r.received_upto, b.store.seq());
    assert_eq!(a_row(&a.store), b.store.seq());
    assert_eq!(export(&a.store), export(&b.store));
}

#[test]
fn an_interrupted_pull_resumes_after_the_last_committed_page() {
    let (a, b) = (node(), node());
    write_many(&b.store, 25, "b");

    // The third pull never reaches B: two pages (2 × PAGE records) are in, with their position.
    let peer = MemPeer {
        cut_pull: Some(3),
        ..MemPeer::new(&b)
    };
    let e = run(&a, &peer).unwrap_err();
    assert!(matches!(e, SyncError::Transport { .. }), "{e}");
    assert_eq!(count(&a.store), 2 * PAGE);
    let row = a.store.peer(&b.store.id()).unwrap().unwrap();
    assert!(row.received_upto > 0);
    // Knowledge is only raised with the last page: nothing about B is claimed yet.
    assert!(!a
        .store
        .position()
        .unwrap()
        .knowledge
        .contains_key(&b.store.id()));

    // The next session starts at the stored position: only the rest is pulled.
    let r = run(&a, &MemPeer::new(&b)).unwrap();
    assert_eq!(r.received.records as usize, 25 - 2 * PAGE);
    assert_eq!(export(&a.store), export(&b.store));
}

#[test]
fn an_interrupted_push_resumes_after_the_last_committed_page() {
    let (a, b) = (node(), node());
    write_many(&a.store, 25, "a");

    let peer = MemPeer {
        cut_push: Some(2),
        ..MemPeer::new(&b)
    };
    let e = run(&a, &peer).unwrap_err();
    assert!(matches!(e, SyncError::Transport { .. }), "{e}");
    assert_eq!(count(&b.store), PAGE);
    let row = b.store.peer(&a.store.id()).unwrap().unwrap();
    assert_eq!(row.sync_count, 0, "the session did not finish");

    let r = run(&a, &MemPeer::new(&b)).unwrap();
    assert_eq!(r.sent.records as usize, 25 - PAGE);
    assert_eq!(export(&a.store), export(&b.store));
    assert_eq!(b.store.peer(&a.store.id()).unwrap().unwrap().sync_count, 1);
}

/// A page for `to` holding all of `from`'s records, claimed to start at `since`.
fn page_of(from: &Store, since: u64, next: u64) -> Page {
    let all = from.changes_since(0, usize::MAX).unwrap().len();
    records_page(from, 0..all, since, next, false)
}

/// `from`'s records in `range` (feed order) as a page claimed to run from `since` to `next`.
fn records_page(
    from: &Store,
    range: std::ops::Range<usize>,
    since: u64,
    next: u64,
    more: bool,
) -> Page {
    let changes: Vec<RemoteChange> = from.changes_since(0, usize::MAX).unwrap()[range]
        .iter()
        .map(|(_, table, id, rec)| RemoteChange {
            table: table.clone(),
            id: *id,
            state: rec.state.clone(),
            conflicts: vec![],
            history: vec![],
        })
        .collect();
    Page {
        since,
        next,
        more,
        count: changes.len() as u32,
        data: fieldsync::protocol::encode_changes(&changes, ENC_JSON).unwrap(),
        encoding: ENC_JSON.into(),
        proofs: None,
        knowledge: None,
    }
}

#[test]
fn a_push_that_would_leave_a_gap_or_comes_before_hello_is_refused_and_writes_nothing() {
    let (a, b) = (node(), node());
    write_many(&a.store, 5, "a");
    let peer = MemPeer::new(&b);
    let push = |since, next| PushRequest {
        from: a.store.id(),
        page: page_of(&a.store, since, next),
        knowledge: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let Err(CallError::Protocol(e)) = rt.block_on(peer.push(&push(0, 5))) else {
        panic!("a push before hello must be refused")
    };
    assert_eq!(e.code, codes::UNKNOWN_PEER, "{e}");
    assert_eq!(count(&b.store), 0);

    // After a hello B has received nothing from A, so a page starting at 3 would skip 1..=3.
    // (B holds nothing, so the session does not pull: its first push is cut.)
    let r = run(
        &a,
        &MemPeer {
            cut_push: Some(1),
            ..MemPeer::new(&b)
        },
    );
    assert!(r.is_err());
    let seq = b.store.seq();
    let Err(CallError::Protocol(e)) = rt.block_on(peer.push(&push(3, 5))) else {
        panic!("a push with a gap must be refused")
    };
    assert_eq!(e.code, codes::POSITION_GAP, "{e}");
    assert!(e.message.contains("resend from 0"), "{e}");
    assert_eq!((count(&b.store), b.store.seq()), (0, seq));
    assert_eq!(
        b.store.peer(&a.store.id()).unwrap().unwrap().received_upto,
        0
    );

    // From the right position the same page is taken, with its position.
    let r = rt.block_on(peer.push(&push(0, 5))).unwrap();
    assert_eq!((r.received_upto, r.stats.applied), (5, 5));
    assert_eq!(export(&a.store), export(&b.store));
}

/// `from`'s records `lo..hi` (in feed order) as the page from position `lo` to `hi`.
fn slice_page(from: &Store, lo: usize, hi: usize, more: bool) -> Page {
    records_page(from, lo..hi, lo as u64, hi as u64, more)
}

#[test]
fn a_pipelined_push_waits_for_the_page_before_it_and_both_are_taken_in_order() {
    let (a, b) = (node(), node());
    write_many(&a.store, 10, "a");
    // A hello from A (its session's first push is cut): B now knows A, has received nothing.
    let cut = MemPeer {
        cut_push: Some(1),
        ..MemPeer::new(&b)
    };
    assert!(run(&a, &cut).is_err());
    let peer = MemPeer::new(&b);
    let push = |lo, hi, more| PushRequest {
        from: a.store.id(),
        page: slice_page(&a.store, lo, hi, more),
        knowledge: None,
    };
    let (first, second) = (push(0, 5, true), push(5, 10, false));
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let wait = std::time::Duration::from_millis(200);
    let (r1, r2) = std::thread::scope(|s| {
        // A local write on B holds its writer lock while both pages arrive, so page 1 cannot
        // commit before page 2 is in: page 2 must wait for its turn, not be refused as a gap.
        let held = b.store.clone();
        let writer = s.spawn(move || {
            held.write_one_with(PERSON, Uuid::new_v4(), |_| {
                locked_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(std::time::Duration::from_secs(30));
                let serde_json::Value::Object(f) = json!({"name": "local"}) else {
                    unreachable!()
                };
                Ok::<_, fieldsync::store::StoreError>(Edit::Put(f))
            })
        });
        locked_rx.recv().unwrap();
        let one = s.spawn(|| peer.responder.push(wire(&first), Caller::default()));
        // Page 1 is decoded and waits for the writer lock; then page 2 arrives.
        std::thread::sleep(wait);
        let two = s.spawn(|| peer.responder.push(wire(&second), Caller::default()));
        std::thread::sleep(wait);
        release_tx.send(()).unwrap();
        writer.join().unwrap().unwrap();
        (one.join().unwrap(), two.join().unwrap())
    });
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!((r1.received_upto, r1.stats.applied), (5, 5));
    assert_eq!((r2.received_upto, r2.stats.applied), (10, 5));
    assert_eq!(count(&b.store), 11, "A's ten records and B's own write");
    assert_eq!(
        b.store.peer(&a.store.id()).unwrap().unwrap().received_upto,
        10
    );
}

#[test]
fn a_pipelined_page_refused_as_a_gap_is_sent_again_and_the_session_completes() {
    let (a, b) = (node(), node());
    write_many(&a.store, 30, "a");
    // The second page goes out before the first is answered; an older responder refuses it.
    let peer = MemPeer {
        gap_push: Some(2),
        ..MemPeer::new(&b)
    };
    let r = run(&a, &peer).unwrap();
    assert_eq!((r.sent.records, r.sent.applied), (30, 30));
    assert_eq!(r.sent.pages, 5, "30 records in pages of {PAGE}");
    assert_eq!(
        peer.pushes.load(Ordering::SeqCst),
        6,
        "five pages, the refused one twice"
    );
    assert_eq!(export(&a.store), export(&b.store));
    assert_eq!(
        b.store.peer(&a.store.id()).unwrap().unwrap().received_upto,
        30
    );
}

/// A store's unresolved merge conflicts, by the writes involved (whoever detected them).
fn unresolved(s: &Store) -> std::collections::BTreeSet<String> {
    use fieldsync::merge::Conflict;
    use fieldsync::store::ConflictDetail;
    s.conflicts()
        .unwrap()
        .into_iter()
        .filter(|c| c.resolved.is_none())
        .map(|c| match c.detail {
            ConflictDetail::Merge {
                conflict:
                    Conflict::Field {
                        field,
                        local,
                        remote,
                        ..
                    },
            } => {
                let mut v = [local.value, remote.value].map(|v| v.unwrap_or_default().to_string());
                v.sort();
                format!("{field}: {} vs {}", v[0], v[1])
            }
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn three_laptops_writing_one_field_end_with_the_same_unresolved_conflicts() {
    // A, B and C each write "a", "b", "c" (in that order) to the same field of one record,
    // without having seen each other's write. Then A syncs with B, and B with C.
    let (a, b, c) = (node(), node(), node());
    let id = Uuid::new_v4();
    for (n, v) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        put(&n.store, id, json!({"name": v}));
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    run(&a, &MemPeer::new(&b)).unwrap();
    run(&b, &MemPeer::new(&c)).unwrap();
    assert_eq!(export(&b.store), export(&c.store));
    // B and C hold every write; both must show the same open conflicts. Each of the three
    // writes was made without seeing the other two, so every pair is a conflict, and none is
    // settled: "c" won by clock, but its writer had seen neither "a" nor "b".
    let on_c = unresolved(&c.store);
    assert_eq!(unresolved(&b.store), on_c);
    let pairs = [
        "name: \"a\" vs \"b\"",
        "name: \"a\" vs \"c\"",
        "name: \"b\" vs \"c\"",
    ];
    assert_eq!(on_c, pairs.map(String::from).into_iter().collect());

    // Once everyone has synced with everyone, every laptop shows the same open conflicts.
    run(&a, &MemPeer::new(&c)).unwrap();
    run(&a, &MemPeer::new(&b)).unwrap();
    for n in [&a, &b, &c] {
        assert_eq!(export(&n.store), export(&a.store));
        assert_eq!(unresolved(&n.store), on_c);
    }

    // Resolving one of them on one laptop settles the field everywhere: the kept value is a
    // later write by someone who had seen every side, so it supersedes the other one too.
    let open = a.store.conflicts().unwrap();
    let first = open.iter().find(|e| e.resolved.is_none()).unwrap();
    a.store
        .resolve_conflict(first.id, fieldsync::store::Keep::Value(json!("abc")))
        .unwrap();
    assert!(
        unresolved(&a.store).is_empty(),
        "{:?}",
        unresolved(&a.store)
    );
    run(&a, &MemPeer::new(&b)).unwrap();
    run(&b, &MemPeer::new(&c)).unwrap();
    for n in [&a, &b, &c] {
        assert_eq!(export(&n.store), export(&a.store));
        assert!(
            unresolved(&n.store).is_empty(),
            "{:?}",
            unresolved(&n.store)
        );
    }
}

#[test]
fn a_pull_is_answered_while_a_write_holds_the_writer_lock() {
    // A commit holds the store's writer lock while it writes and fsyncs its batch (a big page
    // from another peer takes seconds on an old laptop). Readers use the head published by the
    // last completed write, so a pull is answered meanwhile, from what is durable.
    let (a, b) = (node(), node());
    write_many(&b.store, 10, "b");
    let peer = MemPeer::new(&b);
    let req = PullRequest {
        from: a.store.id(),
        since: 0,
        limit: 100,
        max_bytes: 1 << 20,
        knowledge: Default::default(),
        encoding: ENC_JSON.into(),
        local_only: vec![],
    };
    let writing = b.store.hold_writer();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(peer.responder.pull(req, Caller::default()));
        });
        let answered = rx.recv_timeout(std::time::Duration::from_secs(20));
        // Release before asserting, so the reader thread ends even if it was blocked.
        drop(writing);
        let page = answered
            .expect("the pull was answered while the writer lock was held")
            .unwrap();
        assert_eq!((page.count, page.next, page.more), (10, 10, false));
    });
    assert_eq!(b.store.position().unwrap().head, 10);
}

/// One replicated record with every part a page carries: a live field, a removed field, a
/// version vector with two writers, delete knowledge, a delete stamp and a reported conflict.
fn golden_change() -> RemoteChange {
    use fieldsync::change::ReportedConflict;
    use fieldsync::clock::Hlc;
    use fieldsync::merge::{Cause, Conflict, FieldChange, Revision, RevisionKind, Side};
    use fieldsync::model::{FieldState, RecordState};
    let (n1, n2) = (Uuid::from_u128(0x11), Uuid::from_u128(0x22));
    let stamp = |ts, node| Hlc { ts, node };
    let field = |v: Option<serde_json::Value>, ts, node| FieldState {
        value: v,
        stamp: stamp(ts, node),
    };
    let mut state = RecordState::default();
    state
        .fields
        .insert("name".into(), field(Some(json!("Ana")), 7 << 16, n1));
    state
        .fields
        .insert("gone".into(), field(None, (5 << 16) + 1, n2));
    state.vv.insert(n1, 7 << 16);
    state.vv.insert(n2, 9 << 16);
    state.del_seen.insert(n2, 3 << 16);
    state.deleted = Some(stamp(3 << 16, n2));
    RemoteChange {
        table: PERSON.into(),
        id: Uuid::from_u128(0xabc),
        state,
        conflicts: vec![ReportedConflict {
            detected_by: n2,
            conflict: Conflict::Field {
                field: "name".into(),
                local: field(Some(json!("Ann")), 6 << 16, n2),
                remote: field(Some(json!("Ana")), 7 << 16, n1),
                chosen: Side::Remote,
                reason: "r".into(),
            },
        }],
        // The revisions the receiver lacks travel with the record, as their maker wrote them.
        history: vec![
            Revision {
                at: stamp(2 << 16, n1),
                kind: RevisionKind::Create,
                changes: vec![],
                cause: Cause::Edit,
                reconstructed: false,
            },
            Revision {
                at: stamp(7 << 16, n1),
                kind: RevisionKind::Update,
                changes: vec![FieldChange {
                    field: "name".into(),
                    old: Some(json!("An")),
                    new: Some(json!("Ana")),
                }],
                cause: Cause::Resolution,
                reconstructed: false,
            },
        ],
    }
}

#[test]
fn page_encodings_are_pinned_byte_for_byte() {
    // Renaming a Rust field in the merge engine or the replicated types must not change what
    // travels: peers of other versions decode these bytes. A change here is a protocol change.
    let ch = [golden_change()];
    let json_page = fieldsync::protocol::encode_changes(&ch, ENC_JSON).unwrap();
    let packed = fieldsync::protocol::pack::pack(&ch).unwrap();
    assert_eq!(json_page.to_string(), GOLDEN_JSON);
    assert_eq!(hex::encode(&packed), GOLDEN_PACK);
    // And they decode to the same change.
    assert_eq!(fieldsync::protocol::pack::unpack(&packed).unwrap(), ch);
}

const GOLDEN_JSON: &str = r#"[{"conflicts":[{"conflict":{"chosen":"remote","field":"name","kind":"field","local":{"stamp":{"node":"00000000-0000-0000-0000-000000000022","ts":393216},"value":"Ann"},"reason":"r","remote":{"stamp":{"node":"00000000-0000-0000-0000-000000000011","ts":458752},"value":"Ana"}},"detected_by":"00000000-0000-0000-0000-000000000022"}],"history":[{"at":{"node":"00000000-0000-0000-0000-000000000011","ts":131072},"cause":"edit","changes":[],"kind":"create"},{"at":{"node":"00000000-0000-0000-0000-000000000011","ts":458752},"cause":"resolution","changes":[{"field":"name","new":"Ana","old":"An"}],"kind":"update"}],"id":"00000000-0000-0000-0000-000000000abc","state":{"del_seen":{"00000000-0000-0000-0000-000000000022":196608},"deleted":{"node":"00000000-0000-0000-0000-000000000022","ts":196608},"fields":{"gone":{"stamp":{"node":"00000000-0000-0000-0000-000000000022","ts":327681},"value":null},"name":{"stamp":{"node":"00000000-0000-0000-0000-000000000011","ts":458752},"value":"Ana"}},"vv":{"00000000-0000-0000-0000-000000000011":458752,"00000000-0000-0000-0000-000000000022":589824}},"table":"person"}]"#;
const GOLDEN_PACK: &str = concat!(
    "9a92c41000000000000000000000000000000011c4100000000000000000000000000000002291a6",
    "706572736f6e9100c41000000000000000000000000000000abc91929200ce000700009201ce0009",
    "000091919201ce000300009192ce0003000001919192c41000000000000000000000000000000022",
    "96a56669656c64a46e616d6592a3416e6e92ce00060000c410000000000000000000000000000000",
    "2292a3416e6192ce00070000c41000000000000000000000000000000011a672656d6f7465a17292",
    "94a4676f6e65910091c0919201ce0005000194a46e616d65910091a3416e61919200c09192009294",
    "92ce00020000c41000000000000000000000000000000011a663726561746590a4656469749492ce",
    "00070000c41000000000000000000000000000000011a67570646174659193a46e616d65a2416ea3",
    "416e61aa7265736f6c7574696f6e",
);

#[test]
fn laptops_that_already_hold_every_write_still_exchange_their_open_conflicts() {
    // Which pairs of concurrent writes a laptop logs depends on the order it met them. Two
    // laptops that end up holding every write (so no record needs sending between them) must
    // still end up showing the same open conflicts: a record whose conflicts were logged after
    // the receiver's position travels with them even when the receiver has all its writes.
    let (a, b, c, d) = (node(), node(), node(), node());
    let id = Uuid::new_v4();
    for (n, v) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        put(&n.store, id, json!({"name": v}));
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // A meets B then C; D meets C then B then A.
    run(&a, &MemPeer::new(&b)).unwrap();
    run(&a, &MemPeer::new(&c)).unwrap();
    run(&d, &MemPeer::new(&c)).unwrap();
    run(&d, &MemPeer::new(&b)).unwrap();
    run(&d, &MemPeer::new(&a)).unwrap();
    // Everyone with everyone, twice: bounded, and more than enough to spread everything.
    let all = [&a, &b, &c, &d];
    for _ in 0..2 {
        for x in all {
            for y in all {
                if x.store.id() != y.store.id() {
                    run(x, &MemPeer::new(y)).unwrap();
                }
            }
        }
    }
    let want = unresolved(&a.store);
    assert!(!want.is_empty());
    for n in all {
        assert_eq!(export(&n.store), export(&a.store));
        assert_eq!(unresolved(&n.store), want);
    }
}

#[test]
fn a_conflict_logged_after_the_receivers_position_reaches_it_even_when_it_has_every_write() {
    use fieldsync::change::ReportedConflict;
    use fieldsync::clock::Hlc;
    use fieldsync::merge::{Conflict, Side};
    use fieldsync::model::FieldState;
    let (x, y) = (node(), node());
    let id = Uuid::new_v4();
    put(&x.store, id, json!({"name": "x"}));
    run(&y, &MemPeer::new(&x)).unwrap();
    assert!(unresolved(&y.store).is_empty());

    // X learns (from a third laptop Z, with no write X or Y lacks) that Z's concurrent "z" lost
    // to "x": X now shows an open conflict; Y already has every write of the record.
    let rec = x.store.get(PERSON, &id).unwrap().unwrap();
    let current = rec.state.fields["name"].clone();
    let z = Uuid::from_u128(0x2);
    let report = ReportedConflict {
        detected_by: z,
        conflict: Conflict::Field {
            field: "name".into(),
            local: FieldState {
                value: Some(json!("z")),
                stamp: Hlc {
                    ts: current.stamp.ts - 1,
                    node: z,
                },
            },
            remote: current,
            chosen: Side::Remote,
            reason: "concurrent edits; the later write (hybrid logical clock) wins".into(),
        },
    };
    let same = RemoteChange {
        table: PERSON.into(),
        id,
        state: rec.state.clone(),
        conflicts: vec![report],
        history: vec![],
    };
    let stats = x.store.apply_remote(Some(z), &[same]).unwrap();
    assert_eq!(stats.conflicts, 1);
    assert_eq!(unresolved(&x.store).len(), 1);

    // Y's next session pulls the record again for its conflict alone, and logs it.
    let r = run(&y, &MemPeer::new(&x)).unwrap();
    assert_eq!((r.received.records, r.received.conflicts), (1, 1));
    assert_eq!(unresolved(&y.store), unresolved(&x.store));
    assert_eq!(export(&y.store), export(&x.store));
    // And nothing moves once both logs agree.
    let r = run(&y, &MemPeer::new(&x)).unwrap();
    assert_eq!((r.received.records, r.sent.records), (0, 0));
}

/// `n` new person records, as local puts.
fn new_people(n: usize) -> Vec<LocalOp> {
    (0..n)
        .map(|i| LocalOp {
            table: PERSON.into(),
            id: Uuid::new_v4(),
            edit: Edit::Put(
                json!({"name": format!("p{i}")})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        })
        .collect()
}

/// One session from `store` with `peer`, with the store's default options (bounded: 2 min).
fn default_session(store: &std::sync::Arc<Store>, peer: &MemPeer) -> SessionReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let defaults = SessionOptions::from_store(store, Transport::Plaintext);
    rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(120),
            session::run(store, peer, "in-memory peer", &defaults),
        )
        .await
    })
    .expect("a session in memory finishes within two minutes")
    .unwrap()
}

/// The receiver applies each page as one sled batch, and sled keeps a copy of every leaf the
/// batch changes until the batch ends (bench/RESULTS.md, session 7): the default page is 1,000
/// records so that a large sync's receiver stays small. 5,000 records with the default options
/// go as 250, 500, then at most 1,000 a page, and arrive whole.
#[test]
fn default_pages_hold_at_most_a_thousand_records() {
    let (a, b) = (node(), node());
    a.store.write_local(&new_people(5_000)).unwrap();
    let peer = MemPeer::new(&b);
    let r = default_session(&a.store, &peer);
    assert_eq!((r.sent.records, r.sent.applied), (5_000, 5_000));
    assert_eq!(peer.largest_push.load(Ordering::SeqCst), 1_000);
    assert_eq!(r.sent.pages, 7, "250 + 500 + 4 × 1,000 + 250");
    assert_eq!(count(&b.store), 5_000);
    assert_eq!(export(&a.store), export(&b.store));
}

/// A small sync goes as one page although pages are kept at 1,000 records for long syncs: up to
/// two pages' worth (the 1 % incremental of 100,000 records is 1,020) is one batch, one commit
/// relearned and one fsync on the receiver, pulled or pushed.
#[test]
fn a_sync_of_up_to_two_pages_worth_goes_as_one_page_either_way() {
    let (a, b, c) = (node(), node(), node());
    a.store.write_local(&new_people(1_500)).unwrap();
    // Pushed: A sends its 1,500 records to C.
    let to_c = MemPeer::new(&c);
    let r = default_session(&a.store, &to_c);
    assert_eq!((r.sent.records, r.sent.pages), (1_500, 1));
    assert_eq!(to_c.largest_push.load(Ordering::SeqCst), 1_500);
    // Pulled: B asks A, whose responder sends them whole too.
    let r = default_session(&b.store, &MemPeer::new(&a));
    assert_eq!((r.received.records, r.received.pages), (1_500, 1));
    assert_eq!(export(&a.store), export(&b.store));
    assert_eq!(export(&a.store), export(&c.store));
}
