//! The coordinator decides a held mass delete once, for the deployment: real `fieldsync`
//! processes, real mutual TLS on 127.0.0.1. The newcomer trial's case (session 8, finding 2):
//! laptop A deletes all 60 `tent2` records; the brake holds them on the coordinator and on B;
//! the coordinator's `held approve` travels as a CA-signed decision and B applies its own hold
//! after a sync. A member's approval stays on that laptop, and a decision not signed by the
//! deployment's CA is quarantined.

#[path = "common/security.rs"]
mod helpers;

use fieldsync::protocol::{self, Page, PushRequest, ENC_JSON};
use helpers::*;
use serde_json::{json, Value};
use uuid::Uuid;

/// Three laptops of one deployment (the coordinator `hq` holds the CA), with agents on hq and
/// B; A wrote 60 `tent2` records, synced them to both, then deleted all 60 (`apply --yes`)
/// and synced again: both hold the 60 deletes.
/// M got the 60 records from hq before the deletes and then stays away.
struct Trial {
    hq: Node,
    a: Node,
    b: Node,
    m: Node,
    agent_hq: Agent,
    agent_b: Agent,
}

fn live(n: &Node) -> u64 {
    n.digest(&["tent2"]).0
}

fn holds(n: &Node) -> Vec<Value> {
    n.json(&["held", "list"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ops(n: &Node, lines: &[Value]) {
    let file = n.file(&format!("ops-{}.jsonl", Uuid::new_v4().simple()));
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).unwrap();
    n.ok(&["apply", "--yes", file.to_str().unwrap()]);
}

fn trial() -> Trial {
    let hq = Node::new("hq");
    hq.create_mesh("Relief");
    let a = hq.enroll("laptopA");
    let b = hq.enroll("laptopB2");
    let m = hq.enroll("laptopM");
    let agent_hq = hq.start(&[]);
    let agent_b = b.start(&[]);
    let ids: Vec<Uuid> = (0..60).map(|_| Uuid::new_v4()).collect();
    let puts: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"op": "put", "table": "tent2", "id": id, "fields": {"n": i}}))
        .collect();
    ops(&a, &puts);
    a.ok(&["sync", &agent_hq.addr]);
    a.ok(&["sync", &agent_b.addr]);
    m.ok(&["sync", &agent_hq.addr]);
    assert_eq!((live(&hq), live(&b), live(&m)), (60, 60, 60));
    let deletes: Vec<Value> = ids
        .iter()
        .map(|id| json!({"op": "delete", "table": "tent2", "id": id}))
        .collect();
    ops(&a, &deletes);
    a.ok(&["sync", &agent_hq.addr]);
    a.ok(&["sync", &agent_b.addr]);
    assert_eq!(
        (live(&a), live(&hq), live(&b)),
        (0, 60, 60),
        "held on hq and B"
    );
    for n in [&hq, &b] {
        let h = holds(n);
        assert_eq!((h.len(), h[0]["deletes"].as_u64()), (1, Some(60)), "{h:?}");
    }
    Trial {
        hq,
        a,
        b,
        m,
        agent_hq,
        agent_b,
    }
}

/// The trial's example: approving on the coordinator's laptop applies the deletes there, and
/// B, which never met A again, applies its own hold after one sync with the coordinator, with
/// one log line saying so. Both are then in sync.
#[test]
fn the_coordinators_approval_applies_the_held_deletes_on_every_laptop() {
    let t = trial();
    let id = holds(&t.hq)[0]["id"].as_u64().unwrap().to_string();
    let out = t.hq.json(&["held", "approve", &id]);
    assert_eq!(
        (out["applied"].as_u64(), out["everywhere"].as_bool()),
        (Some(60), Some(true)),
        "{out}"
    );
    let people = t.hq.ok(&["held", "list", "--human"]);
    assert_eq!(people, "No held deletes.\n");
    assert_eq!(live(&t.hq), 0);

    t.b.ok(&["sync", &t.agent_hq.addr]);
    assert_eq!(live(&t.b), 0, "B applied the coordinator's approval");
    assert!(holds(&t.b).is_empty(), "{:?}", holds(&t.b));
    let log = t.agent_b.log();
    assert!(
        log.contains(
            "60 deletes of tent2 from laptopA held here were applied: approved by the \
             coordinator (hq) on"
        ),
        "{log}"
    );
    let v = t.b.ok(&["verify", &t.agent_hq.addr, "--human"]);
    assert!(v.contains("In sync"), "{v}");

    // M meets the deletes only now, after the approval: they are applied, not held.
    t.m.ok(&["sync", &t.agent_hq.addr]);
    assert_eq!(live(&t.m), 0);
    assert!(holds(&t.m).is_empty(), "{:?}", holds(&t.m));
}

/// The coordinator's rejection settles B's hold too: the restore keeps the 60 records alive
/// there (it is newer than the deletes), and nothing stays listed for a person on B.
#[test]
fn the_coordinators_rejection_settles_the_same_hold_elsewhere() {
    let t = trial();
    let id = holds(&t.hq)[0]["id"].as_u64().unwrap().to_string();
    let out = t.hq.json(&["held", "reject", &id]);
    assert_eq!(
        (out["restored"].as_u64(), out["everywhere"].as_bool()),
        (Some(60), Some(true)),
        "{out}"
    );
    t.b.ok(&["sync", &t.agent_hq.addr]);
    assert_eq!(live(&t.b), 60);
    assert!(holds(&t.b).is_empty(), "{:?}", holds(&t.b));
    assert!(
        t.agent_b.log().contains(
            "60 deletes of tent2 from laptopA held here were settled: rejected by the \
             coordinator (hq)"
        ),
        "{}",
        t.agent_b.log()
    );
    // A takes the restore too: every laptop has the 60 records again.
    t.a.ok(&["sync", &t.agent_hq.addr]);
    assert_eq!(live(&t.a), 60);
}

/// A member's approval is its own: B applies the deletes, says so, and the coordinator still
/// holds them after syncing with B.
#[test]
fn a_members_approval_does_not_travel() {
    let t = trial();
    let id = holds(&t.b)[0]["id"].as_u64().unwrap().to_string();
    let said = t.b.ok(&["held", "approve", &id, "--human"]);
    assert!(
        said.contains(
            "Approved here only: other laptops that hold these deletes decide on their own; \
             the coordinator's approval applies everywhere."
        ),
        "{said}"
    );
    assert_eq!(live(&t.b), 0);
    t.hq.ok(&["sync", &t.agent_b.addr]);
    assert_eq!(live(&t.hq), 60, "the coordinator still holds them");
    assert_eq!(holds(&t.hq).len(), 1);
    assert_eq!(
        t.b.digest(&["fs_hold_decisions"]).0,
        0,
        "no decision was written"
    );

    // `verify` names the held deletes on either side instead of advising a sync that moves
    // nothing.
    let here = text(&t.hq.run(&["verify", &t.agent_b.addr, "--human"]).stdout);
    assert!(
        here.contains("This laptop holds 60 deletes of tent2 from laptopA")
            && here.contains("the difference is deletes held by the mass-delete brake")
            && !here.contains("brings both up to date"),
        "{here}"
    );
    let there = text(&t.b.run(&["verify", &t.agent_hq.addr, "--human"]).stdout);
    assert!(
        there.contains("holds 60 deletes of tent2 from laptopA")
            && there.contains("approve them there, or approve on the coordinator's laptop")
            && !there.contains("brings both up to date"),
        "{there}"
    );
}

/// A record of the decisions table not signed by this deployment's CA — signed by another
/// CA, or the real CA's signature over a tampered body — is quarantined and logged; B keeps
/// holding the deletes.
#[test]
fn a_forged_or_tampered_approval_is_ignored_and_logged() {
    let t = trial();
    let h = holds(&t.b)[0].clone();
    // The held deletes as the coordinator would name them (record id and delete stamp): read
    // from A, which deleted them.
    let list = t.a.ok(&["list", "tent2", "--include-deleted"]);
    let deletes: Vec<String> = list
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(deletes.len(), 60);
    let (a_id, hq_id) = (t.a.id(), t.hq.id());
    let body = |ca: &fieldsync::mesh::CaFile, record: Uuid| {
        let fields = json!({
            "decision": "approve", "table": "tent2",
            "origin": h["peer"], "origin_name": "laptopA",
            "by": hq_id, "by_name": "hq",
            "decided_at": chrono::Utc::now().to_rfc3339(),
            // Stamps a forger would have to guess do not matter here: the signature is
            // refused before anything is matched.
            "deletes": deletes.iter().map(|d| format!("{d} 1 {a_id}")).collect::<Vec<_>>(),
        });
        ca.sign_hold_decision(record, fields.as_object().unwrap().clone())
            .unwrap()
    };
    let other = fieldsync::mesh::CaFile::create("Elsewhere").unwrap();
    let real = fieldsync::mesh::load_ca(&t.hq.dir().join("mesh-ca.fsca")).unwrap();
    let (r1, r2) = (Uuid::new_v4(), Uuid::new_v4());
    let foreign = body(&other, r1);
    let mut tampered = body(&real, r2);
    tampered.insert("by_name".into(), json!("someone else"));
    // Pushed by M, a member B never met (a crafted hello of A would look like a copy of A).
    let m_id = t.m.id();
    let page = [
        crafted_change("fs_hold_decisions", r1, &m_id, Value::Object(foreign), 0),
        crafted_change("fs_hold_decisions", r2, &m_id, Value::Object(tampered), 0),
    ];
    let cfg = tls_client(&t.m.credential(), false);
    let mut inc = *m_id.parse::<Uuid>().unwrap().as_bytes();
    inc[0] ^= 0xff;
    let r = rpc_tls(
        &cfg,
        "127.0.0.1",
        t.agent_b.sock(),
        "fieldsync_hello",
        &crafted_hello(&m_id, Uuid::from_bytes(inc)),
    )
    .expect("hello answered");
    assert!(r["result"].is_object(), "{r}");
    let push = serde_json::to_value(PushRequest {
        from: m_id.parse().unwrap(),
        page: Page {
            since: 0,
            next: page.len() as u64,
            more: false,
            count: page.len() as u32,
            encoding: ENC_JSON.into(),
            data: protocol::encode_changes(&page, ENC_JSON).unwrap(),
            proofs: sign_as(&m_id, &page),
            knowledge: None,
        },
        knowledge: None,
    })
    .unwrap();
    let res =
        rpc_tls(&cfg, "127.0.0.1", t.agent_b.sock(), "fieldsync_push", &push).expect("an answer");
    assert!(res["result"].is_object(), "{res}");
    let log = t.agent_b.log();
    assert!(
        log.matches("quarantined").count() >= 2 && log.contains("hold decision"),
        "{log}"
    );
    assert_eq!(t.b.digest(&["fs_hold_decisions"]).0, 0);
    assert_eq!((live(&t.b), holds(&t.b).len()), (60, 1), "still held");
}
