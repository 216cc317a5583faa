//! Range-based set reconciliation and anti-entropy between two real on-disk stores, one served
//! by the real JSON-RPC server on a loopback port (plaintext, port 0), reached with the real
//! client: `verify` finds exactly the records that differ, an in-sync pair costs a few hundred
//! bytes, a protocol-2 peer is refused by name, and one anti-entropy round repairs what a wrong
//! knowledge claim hid from normal sessions; and the agent runs such rounds by itself.

mod common;

use fieldsync::config::Config;
use fieldsync::formats;
use fieldsync::merge::Edit;
use fieldsync::protocol::client::CallError;
use fieldsync::protocol::server::{self, Running};
use fieldsync::protocol::{
    DigestReply, DigestRequest, FetchRequest, Hello, HelloReply, Page, PullRequest, PushReply,
    PushRequest, ReconcileReply, ReconcileRequest,
};
use fieldsync::store::{LocalOp, Store};
use fieldsync::sync::{self, Peer, Responder, RpcPeer, SessionOptions};
use fieldsync::tls::Transport;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use uuid::Uuid;

const PERSON: &str = "person";

struct Node {
    store: Arc<Store>,
    _dir: tempfile::TempDir,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse("", "reconcile test").unwrap();
    let store = Arc::new(Store::open(dir.path(), config).unwrap());
    Node { store, _dir: dir }
}

/// Serves `n` on 127.0.0.1, port 0.
async fn serve(n: &Node) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let responder = Responder::new(n.store.clone(), None, None, Transport::Plaintext);
    server::start(listener, responder, None).await.unwrap()
}

fn opts(s: &Store) -> SessionOptions {
    SessionOptions::from_store(s, Transport::Plaintext)
}

/// `n` new records in one batch.
fn import(s: &Store, n: usize) -> Vec<Uuid> {
    common::agent::import_into(s, PERSON, n)
}

fn write(s: &Store, id: Uuid, edit: Edit) {
    s.write_one(LocalOp {
        table: PERSON.into(),
        id,
        edit,
    })
    .unwrap();
}

fn patch(s: &Store, id: Uuid, v: serde_json::Value) {
    write(s, id, Edit::Patch(v.as_object().unwrap().clone()));
}

fn export(s: &Store) -> String {
    let mut out = Vec::new();
    formats::export_jsonl(s, PERSON, true, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn bytes(r: &Running) -> u64 {
    r.traffic.read.load(Ordering::Relaxed) + r.traffic.written.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_exactly_the_scattered_differences_and_an_in_sync_pair_costs_little() {
    let (a, b) = (node(), node());
    let ids = import(&a.store, 3000);
    let served = serve(&a).await;
    let addr = served.addr.to_string();
    sync::sync_with(b.store.clone(), &addr, &opts(&b.store))
        .await
        .unwrap();

    let before = bytes(&served);
    let checks = sync::verify_with(b.store.clone(), &addr, &Transport::Plaintext)
        .await
        .unwrap();
    let in_sync_bytes = bytes(&served) - before;
    assert_eq!(checks.len(), 1);
    assert!(checks[0].in_sync, "{checks:?}");
    assert_eq!(
        (checks[0].local_count, checks[0].remote_count),
        (3000, 3000)
    );
    // Hello and one round with one fingerprint: not the 3,000 records or their hashes.
    assert!(
        in_sync_bytes < 6_000,
        "in-sync verify moved {in_sync_bytes} bytes"
    );

    // Differences of every kind, scattered: edits on each side, a delete, records only one
    // side has.
    let mut want = BTreeSet::new();
    for (k, id) in ids.iter().enumerate().filter(|(k, _)| k % 300 == 7) {
        patch(&a.store, *id, json!({"n": -1}));
        want.insert(*id);
        if k % 600 == 7 {
            patch(&b.store, ids[k + 1], json!({"name": "edited on b"}));
            want.insert(ids[k + 1]);
        }
    }
    write(&b.store, ids[2999], Edit::Delete);
    want.insert(ids[2999]);
    want.extend(import(&a.store, 3));
    want.extend(import(&b.store, 2));

    let before = bytes(&served);
    let checks = sync::verify_with(b.store.clone(), &addr, &Transport::Plaintext)
        .await
        .unwrap();
    let diff_bytes = bytes(&served) - before;
    let found: BTreeSet<Uuid> = checks[0].differing.iter().copied().collect();
    assert_eq!(found, want, "exactly the differing records");
    assert!(!checks[0].in_sync);
    assert_eq!(
        (checks[0].local_count, checks[0].remote_count),
        (3002, 3003)
    );
    assert!(
        diff_bytes < 40_000,
        "verify of {} differences moved {diff_bytes} bytes",
        want.len()
    );

    // Nothing was moved by verify: a sync then makes them agree.
    sync::sync_with(b.store.clone(), &addr, &opts(&b.store))
        .await
        .unwrap();
    let checks = sync::verify_with(b.store.clone(), &addr, &Transport::Plaintext)
        .await
        .unwrap();
    assert!(checks[0].in_sync, "{checks:?}");
    assert_eq!(export(&a.store), export(&b.store));
    served.stop().await;
}

/// A peer that answers like a fieldsync of protocol 2.
struct OldPeer(RpcPeer);

impl Peer for OldPeer {
    async fn hello(&self, h: &Hello) -> Result<HelloReply, CallError> {
        let mut r = self.0.hello(h).await?;
        r.protocol = 2;
        Ok(r)
    }
    async fn pull(&self, r: &PullRequest) -> Result<Page, CallError> {
        self.0.pull(r).await
    }
    async fn push(&self, r: &PushRequest) -> Result<PushReply, CallError> {
        self.0.push(r).await
    }
    async fn digest(&self, r: &DigestRequest) -> Result<DigestReply, CallError> {
        self.0.digest(r).await
    }
    async fn reconcile(&self, r: &ReconcileRequest) -> Result<ReconcileReply, CallError> {
        self.0.reconcile(r).await
    }
    async fn fetch(&self, r: &FetchRequest) -> Result<Page, CallError> {
        self.0.fetch(r).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_refuses_a_protocol_2_peer_naming_both_versions() {
    let (a, b) = (node(), node());
    import(&a.store, 3);
    let served = serve(&a).await;
    let addr = served.addr.to_string();
    let old = OldPeer(RpcPeer::connect(&addr, &Transport::Plaintext).unwrap());
    let e = sync::verify(&b.store, &old, &addr).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("protocol 2") && msg.contains("need 3") && msg.contains("upgrade"),
        "{msg}"
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_anti_entropy_round_repairs_what_a_wrong_knowledge_claim_hid() {
    let (a, b) = (node(), node());
    let ids = import(&a.store, 200);
    let served = serve(&a).await;
    let addr = served.addr.to_string();
    let o = opts(&b.store);
    sync::sync_with(b.store.clone(), &addr, &o).await.unwrap();

    // New writes on both sides after that session...
    patch(&a.store, ids[10], json!({"n": 1000}));
    let only_a = import(&a.store, 2);
    let only_b = import(&b.store, 2);
    write(&a.store, ids[20], Edit::Delete);
    // ...that each side's knowledge wrongly claims the other already has.
    let a_claim = a.store.position().unwrap().knowledge[&a.store.id()];
    let b_claim = b.store.position().unwrap().knowledge[&b.store.id()];
    b.store.raise_knowledge(a.store.id(), a_claim).unwrap();
    a.store.raise_knowledge(b.store.id(), b_claim).unwrap();

    // A normal session moves nothing.
    let r = sync::sync_with(b.store.clone(), &addr, &o).await.unwrap();
    assert_eq!(
        (r.received.records, r.sent.records),
        (0, 0),
        "knowledge hides the changes"
    );
    assert_ne!(export(&a.store), export(&b.store));

    // One anti-entropy round: both directions, through the normal receive path.
    let report = sync::anti_entropy_with(b.store.clone(), &addr, &o)
        .await
        .unwrap();
    assert_eq!(report.differing, 6, "{report:?}");
    assert!(
        report.applied >= 4 && report.applied_there >= 2,
        "{report:?}"
    );
    assert_eq!(export(&a.store), export(&b.store));
    let checks = sync::verify_with(b.store.clone(), &addr, &Transport::Plaintext)
        .await
        .unwrap();
    assert!(checks.iter().all(|c| c.in_sync), "{checks:?}");
    for id in only_a.iter().chain(&only_b) {
        assert!(a.store.get(PERSON, id).unwrap().is_some());
        assert!(b.store.get(PERSON, id).unwrap().is_some());
    }
    assert!(!b
        .store
        .get(PERSON, &ids[20])
        .unwrap()
        .unwrap()
        .state
        .is_alive());

    // A second round finds nothing and moves nothing.
    let again = sync::anti_entropy_with(b.store.clone(), &addr, &o)
        .await
        .unwrap();
    assert_eq!((again.differing, again.fetched, again.pushed), (0, 0, 0));
    served.stop().await;
}

/// End to end with real agents over mutual TLS: a knowledge claim poisoned on B's disk hides a
/// record of A's from a session's pages; the records comparison of the first session after B's
/// database opened repairs it (`store/rollback.rs`), and so does B's agent, with
/// `anti_entropy_secs = 1`, by itself.
#[test]
fn the_agent_repairs_by_periodic_anti_entropy_what_sessions_do_not_move() {
    use common::agent::{self as ag, Agent};
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (ag::data_dir(tmp.path(), "a"), ag::data_dir(tmp.path(), "b"));
    ag::write_config(&a, "", "anti_entropy_secs = 0");
    ag::write_config(&b, "", "anti_entropy_secs = 0");
    ag::import(&a, PERSON, &ag::people(30));
    let mut agent_a = Agent::start(&a);
    ag::sync(&b, agent_a.addr());
    agent_a.stop();

    // A writes a record; B's knowledge then claims it has every event of A's up to it.
    let hidden = Uuid::new_v4();
    ag::put(&a, PERSON, &hidden, &json!({"name": "hidden"}));
    let (a_id, claim) = {
        let s = Store::open(&a, Config::default()).unwrap();
        (s.id(), s.position().unwrap().knowledge[&s.id()])
    };
    Store::open(&b, Config::default())
        .unwrap()
        .raise_knowledge(a_id, claim)
        .unwrap();

    let mut agent_a = Agent::start(&a);
    let s = ag::sync(&b, agent_a.addr());
    assert_eq!(s.received.records, 0, "the session's pages do not move it");
    assert!(
        ag::get(&b, PERSON, &hidden).is_some(),
        "comparing records on the first session since B's database opened moves it"
    );
    agent_a.stop();

    // Once more, for the agent's own rounds.
    let hidden = Uuid::new_v4();
    ag::put(&a, PERSON, &hidden, &json!({"name": "hidden 2"}));
    let claim = Store::open(&a, Config::default())
        .unwrap()
        .position()
        .unwrap()
        .knowledge[&a_id];
    Store::open(&b, Config::default())
        .unwrap()
        .raise_knowledge(a_id, claim)
        .unwrap();
    let agent_a = Agent::start(&a);

    ag::write_config(&b, "", "anti_entropy_secs = 1");
    let agent_b = Agent::start_with(&b, &["--peer", agent_a.addr()]);
    ag::wait_until(
        "B's agent repairs the hidden record",
        std::time::Duration::from_secs(60),
        || ag::get(&b, PERSON, &hidden).is_some(),
    );
    // By its first session's records comparison, or by a periodic round if that came first.
    let log = agent_b.log_text();
    assert!(
        log.contains("some differed although the session had finished")
            || log.contains("anti-entropy with"),
        "{log}"
    );
    assert_eq!(ag::export(&a, PERSON), ag::export(&b, PERSON));
}

/// A member whose reconcile answers never converge (every sub-range "differs").
struct LiarPeer(RpcPeer);

impl Peer for LiarPeer {
    async fn hello(&self, h: &Hello) -> Result<HelloReply, CallError> {
        self.0.hello(h).await
    }
    async fn pull(&self, r: &PullRequest) -> Result<Page, CallError> {
        self.0.pull(r).await
    }
    async fn push(&self, r: &PushRequest) -> Result<PushReply, CallError> {
        self.0.push(r).await
    }
    async fn digest(&self, r: &DigestRequest) -> Result<DigestReply, CallError> {
        self.0.digest(r).await
    }
    async fn reconcile(&self, r: &ReconcileRequest) -> Result<ReconcileReply, CallError> {
        use base64::Engine;
        let children = base64::engine::general_purpose::STANDARD.encode([0xffu8; 128]);
        Ok(ReconcileReply {
            ranges: r
                .ranges
                .iter()
                .map(|_| fieldsync::protocol::RangeAnswer {
                    count: 5,
                    children: Some(children.clone()),
                    ..Default::default()
                })
                .collect(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_stops_a_peer_whose_answers_never_converge() {
    let (a, b) = (node(), node());
    import(&a.store, 3);
    import(&b.store, 3);
    let served = serve(&a).await;
    let addr = served.addr.to_string();
    let liar = LiarPeer(RpcPeer::connect(&addr, &Transport::Plaintext).unwrap());
    let e = sync::verify(&b.store, &liar, &addr).await.unwrap_err();
    assert!(e.to_string().contains("keep differing"), "{e}");
    served.stop().await;
}
