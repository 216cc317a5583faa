//! Bytes on the wire (issues #17 and #12): a sync that moves nothing stays under 2 KB counted
//! at the responder's sockets (TLS and HTTP included), a new connection resumes the TLS session
//! instead of sending both certificates again, resumption never lets a revoked laptop back in
//! (either side), and two sessions asked for at once with one peer do not push the same pages
//! twice.
//!
//! Real stores on disk, the real JSON-RPC server and client over mutual TLS on 127.0.0.1
//! (port 0), credentials made by the real CLI; the last test runs two real agents.

mod common;

use common::agent::{data_dir, ensure_member, import, people, status, Agent};
use fieldsync::config::Config;
use fieldsync::protocol::client::REVOKED_BY_PEER;
use fieldsync::protocol::server::{self, Running};
use fieldsync::store::Store;
use fieldsync::sync::{self, Responder, SessionOptions, SyncError};
use fieldsync::tls::{Identity, Revoked, Transport};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use uuid::Uuid;

/// The no-op target of issue #17, in bytes at the responder's sockets.
const NO_OP_BYTES: u64 = 2_000;

struct Laptop {
    store: Arc<Store>,
    transport: Transport,
    revoked: Arc<Revoked>,
}

/// Opens a member data directory made by the CLI in this process, with its TLS identity.
fn open(dir: &Path) -> Laptop {
    let store = Arc::new(Store::open(dir, Config::parse("", "wire test").unwrap()).unwrap());
    let cred = fieldsync::mesh::load_credential(dir)
        .unwrap()
        .expect("a member");
    let identity = Arc::new(Identity::from_credential(&cred).unwrap());
    let revoked = Arc::new(Revoked::default());
    Laptop {
        store,
        transport: Transport::Tls {
            identity,
            revoked: revoked.clone(),
        },
        revoked,
    }
}

/// Two members of one test deployment (made by the CLI), opened here.
fn two_members(root: &Path) -> (Laptop, Laptop) {
    let (a, b) = (data_dir(root, "a"), data_dir(root, "b"));
    ensure_member(&a);
    ensure_member(&b);
    (open(&a), open(&b))
}

/// Serves `l` over mutual TLS on 127.0.0.1, port 0.
async fn serve(l: &Laptop) -> Running {
    let Transport::Tls { identity, revoked } = &l.transport else {
        unreachable!()
    };
    let cfg = fieldsync::tls::server_config(identity, revoked.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let responder = Responder::new(l.store.clone(), None, None, l.transport.clone());
    server::start(listener, responder, Some(Arc::new(cfg)))
        .await
        .unwrap()
}

fn records(s: &Store, n: usize) {
    common::agent::import_into(s, "person", n);
}

/// Options with a new connection cache: every session opens a new connection.
fn fresh(l: &Laptop) -> SessionOptions {
    SessionOptions::from_store(&l.store, l.transport.clone())
}

fn bytes(r: &Running) -> u64 {
    r.traffic.read.load(Ordering::Relaxed) + r.traffic.written.load(Ordering::Relaxed)
}

/// A session that moves nothing, over a new connection: the bytes at the server's sockets.
async fn no_op(store: &Arc<Store>, served: &Running, transport: Transport) -> u64 {
    let before = bytes(served);
    let o = SessionOptions::from_store(store, transport);
    let r = sync::sync_with(store.clone(), &served.addr.to_string(), &o)
        .await
        .unwrap();
    assert_eq!((r.received.records, r.sent.records), (0, 0));
    bytes(served) - before
}

fn revoke(set: &Revoked, who: Uuid) {
    set.set(HashMap::from([(who, chrono::Utc::now())]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_resumes_the_tls_session_without_certificates_and_never_for_the_revoked() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = two_members(root.path());
    records(&a.store, 50);
    let served = serve(&b).await;
    let addr = served.addr.to_string();
    let resumed = || served.traffic.resumed.load(Ordering::Relaxed);

    // The first connection is a full handshake (both certificates).
    let r = sync::sync_with(a.store.clone(), &addr, &fresh(&a))
        .await
        .unwrap();
    assert_eq!(r.sent.records, 50);
    // Exactly one full handshake: a second connection of the same session (pipelined pages)
    // already resumes the first's.
    assert_eq!(served.traffic.full_handshakes.load(Ordering::Relaxed), 1);
    let first = resumed();
    // Settles both knowledge vectors (B's grew by A's records).
    sync::sync_with(a.store.clone(), &addr, &fresh(&a))
        .await
        .unwrap();
    // At least one: a session with pipelined pushes may open a second connection (resumed too).
    let settled = resumed();
    assert!(
        settled > first,
        "the second connection resumes the first's session"
    );

    // A no-op over a new connection with a full handshake (another client config: a new
    // revoked set, so no ticket), then over a new connection that resumes: the resumed one
    // does without both certificates.
    let Transport::Tls { identity, .. } = &a.transport else {
        unreachable!()
    };
    let other = Transport::Tls {
        identity: identity.clone(),
        revoked: Arc::new(Revoked::default()),
    };
    let full = no_op(&a.store, &served, other).await;
    assert_eq!(resumed(), settled);
    // A no-op is one request: exactly one more resumed connection.
    let short = no_op(&a.store, &served, a.transport.clone()).await;
    assert_eq!(resumed(), settled + 1);
    assert!(
        short + 1_000 <= full,
        "a resumed no-op took {short} bytes, one with a full handshake {full}"
    );

    // Revoked on B: A's next connection offers its ticket, B holds no session any more, and
    // the full handshake refuses A with the revoked alert A reads as such.
    let refused = served.traffic.refused.load(Ordering::Relaxed);
    revoke(&b.revoked, a.store.id());
    let e = sync::sync_with(a.store.clone(), &addr, &fresh(&a))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SyncError::Transport { message, .. } if message == REVOKED_BY_PEER),
        "{e}"
    );
    assert_eq!(
        resumed(),
        settled + 1,
        "a revoked laptop's session is never resumed"
    );
    assert_eq!(served.traffic.refused.load(Ordering::Relaxed), refused + 1);

    // Lifted again (only a test does that): a full handshake, then resumption works again.
    b.revoked.set(HashMap::new());
    sync::sync_with(a.store.clone(), &addr, &fresh(&a))
        .await
        .unwrap();
    sync::sync_with(a.store.clone(), &addr, &fresh(&a))
        .await
        .unwrap();
    let lifted = resumed();
    assert!(lifted > settled + 1, "resumption works again");

    // Revoked on A: A must not resume its session with B either; the full handshake makes
    // A's own verifier refuse B's certificate.
    revoke(&a.revoked, b.store.id());
    let e = sync::sync_with(a.store.clone(), &addr, &fresh(&a)).await;
    assert!(e.is_err(), "a session with a revoked peer must fail");
    assert_eq!(
        resumed(),
        lifted,
        "no session with a revoked peer is resumed"
    );
    served.stop().await;
}

/// The first sync back after one that moved records (B → A right after A pushed B its
/// records) is one hello: B's feed moved by the echoes of A's records alone, B says so
/// (`Hello::nothing_past`), A counts B's feed as received and ends the session in its reply,
/// and no page travels. What either writes afterwards still reaches the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sync_back_after_records_moved_is_one_hello() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = two_members(root.path());
    records(&a.store, 300);
    let (served_a, served_b) = (serve(&a).await, serve(&b).await);
    let (addr_a, addr_b) = (served_a.addr.to_string(), served_b.addr.to_string());
    // A tells B where it listens, as an agent does, so B knows it by that address.
    let mut o = fresh(&a);
    o.url = Some(addr_a.clone());
    let r = sync::sync_with(a.store.clone(), &addr_b, &o).await.unwrap();
    assert_eq!(r.sent.records, 300);
    assert!(
        b.store.seq() >= 300,
        "B's feed holds the echoes of A's records"
    );
    // A verify in between (as the benchmark makes): A keeps B's hello reply as a session
    // would, so B's next hello may name its knowledge by hash.
    let checks = sync::verify_with(a.store.clone(), &addr_b, &a.transport)
        .await
        .unwrap();
    assert!(checks.iter().all(|c| c.in_sync));

    let before = bytes(&served_a);
    let r = sync::sync_with(b.store.clone(), &addr_a, &fresh(&b))
        .await
        .unwrap();
    assert_eq!(
        (r.received.pages, r.sent.pages),
        (0, 0),
        "one hello: no page either way"
    );
    let back = bytes(&served_a) - before;
    println!("first sync back: {back} B at A's sockets (full TLS handshake included)");
    // One hello each way on a new connection: a hello refused for naming knowledge A did not
    // keep, then a full one and an empty push, made it ~5.3 KB.
    assert!(back <= 4_096, "first sync back took {back} B");
    let row = a.store.peer(&b.store.id()).unwrap().unwrap();
    assert_eq!(
        row.received_upto,
        b.store.seq(),
        "A counts B's feed as received to its head, as the empty push did"
    );

    // A record written on B afterwards is pushed from there.
    let new = common::agent::import_into(&b.store, "person", 1)[0];
    let r = sync::sync_with(b.store.clone(), &addr_a, &fresh(&b))
        .await
        .unwrap();
    assert_eq!(r.sent.records, 1);
    assert!(a.store.get("person", &new).unwrap().is_some());

    // A wrote since: the session moves A's record to B and still ends with B's feed counted
    // as received to its head.
    let theirs = common::agent::import_into(&a.store, "person", 1)[0];
    let r = sync::sync_with(b.store.clone(), &addr_a, &fresh(&b))
        .await
        .unwrap();
    assert_eq!(r.received.records, 1);
    assert!(b.store.get("person", &theirs).unwrap().is_some());
    let row = a.store.peer(&b.store.id()).unwrap().unwrap();
    assert_eq!(row.received_upto, b.store.seq());
    served_a.stop().await;
    served_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_asked_for_at_once_push_each_record_once() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = two_members(root.path());
    records(&a.store, 1_000);
    let served = serve(&b).await;
    let addr = served.addr.to_string();
    // One agent: one connection cache, small pages so a session takes many requests.
    let mut o = fresh(&a);
    o.page_records = 50;
    let (r1, r2) = tokio::join!(
        sync::sync_with(a.store.clone(), &addr, &o),
        sync::sync_with(a.store.clone(), &addr, &o)
    );
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!(
        r1.sent.records + r2.sent.records,
        1_000,
        "each record is pushed once: {} + {}",
        r1.sent.records,
        r2.sent.records
    );
    assert_eq!(b.store.seq(), 1_000);
    served.stop().await;
}

#[test]
fn a_no_op_sync_from_the_cli_stays_under_2_kb_and_is_one_hello() {
    let root = tempfile::tempdir().unwrap();
    let (da, db) = (data_dir(root.path(), "a"), data_dir(root.path(), "b"));
    import(&da, "person", &people(20));
    let a = Agent::start(&da);
    let b = Agent::start(&db);
    let wire = || {
        let s = &status(&db)["agent"];
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        (
            n("bytes_received") + n("bytes_sent"),
            s["bytes_by_method"].clone(),
        )
    };
    // The first sync moves the records; the second settles both knowledge vectors.
    for _ in 0..2 {
        common::agent::sync(&da, b.addr());
    }
    let (before, methods_before) = wire();
    let s = common::agent::sync(&da, b.addr());
    let (after, methods) = wire();
    assert_eq!((s.received.records, s.sent.records), (0, 0));
    assert!(
        after - before <= NO_OP_BYTES,
        "a no-op `fieldsync sync` took {} bytes at the peer's sockets",
        after - before
    );
    // What it took: one hello, which B answered by ending the session; no pull, no push.
    let calls = |m: &serde_json::Value, k: &str| m[k]["calls"].as_u64().unwrap_or(0);
    for (method, more) in [
        ("fieldsync_hello", 1),
        ("fieldsync_pull", 0),
        ("fieldsync_push", 0),
    ] {
        assert_eq!(
            calls(&methods, method),
            calls(&methods_before, method) + more,
            "{method}: {methods}"
        );
    }
    drop((a, b));
}
