//! The mass-delete brake end to end: real `fieldsync` processes, real mutual TLS on 127.0.0.1.
//! B deletes 80 of 100 records; a sync brings A everything else but holds the 80 deletes until
//! a person approves (20 live everywhere) or rejects them (100 live everywhere, the restore
//! syncing back to B).

mod common;

use common::agent::*;
use serde_json::{json, Value};
use std::path::Path;
use uuid::Uuid;

/// Deletes `ids` in one `apply --yes` batch (through B's agent while it runs).
fn delete_all(dir: &Path, ids: &[Uuid]) {
    let file = dir.with_extension(format!("ops-{}.jsonl", Uuid::new_v4().simple()));
    let text: String = ids
        .iter()
        .map(|id| format!("{}\n", json!({"op": "delete", "table": "person", "id": id})))
        .collect();
    std::fs::write(&file, text).expect("write op file");
    let path = file.to_str().expect("utf-8");
    let before = live_count(dir, "person");
    let refused = run(dir, &["apply", path]);
    if ids.len() >= 50 {
        // Locally too, a mass delete needs confirmation (no terminal here: --yes).
        assert_ne!(refused.code, 0, "{refused}");
        let want = format!(
            "this batch deletes {} of {before} person records",
            ids.len()
        );
        assert!(refused.stderr.contains(&want), "{refused}");
        assert!(refused.stderr.contains("--yes"), "{refused}");
        assert_eq!(live_count(dir, "person"), before, "nothing was written");
        run(dir, &["apply", "--yes", path]).ok();
    } else {
        refused.ok();
    }
    let _ = std::fs::remove_file(file);
}

fn held(dir: &Path) -> Vec<Value> {
    run(dir, &["held", "list"]).ok().lines()
}

/// A with 100 people synced to B (agent running); B then deletes 80 of them and A syncs.
fn eighty_of_a_hundred_deleted_on_b(root: &Path) -> (std::path::PathBuf, Agent, Vec<Uuid>) {
    let (a, b) = (data_dir(root, "a"), data_dir(root, "b"));
    let recs = people(100);
    import(&a, "person", &recs);
    let agent_b = Agent::start(&b);
    sync(&a, agent_b.addr());
    assert_eq!(live_count(&b, "person"), 100);
    let doomed: Vec<Uuid> = recs.iter().take(80).map(|r| r.0).collect();
    delete_all(&b, &doomed);
    assert_eq!(live_count(&b, "person"), 20);
    // B also edits a record it keeps: that edit must arrive although the deletes are held.
    patch(&b, "person", &recs[90].0, &json!({"status": "reunited"}));

    let s = sync(&a, agent_b.addr());
    assert_eq!(s.received.records, 81, "{s:?}");
    assert_eq!(live_count(&a, "person"), 100, "the 80 deletes are held");
    assert_eq!(
        get(&a, "person", &recs[90].0).unwrap()["fields"]["status"],
        "reunited",
        "everything else in the session was applied"
    );
    let h = held(&a);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(
        (h[0]["deletes"].as_u64(), h[0]["live"].as_u64()),
        (Some(80), Some(100))
    );
    assert_eq!(h[0]["table"], "person");
    let msg = format!(
        "{} wants to delete 80 of 100 person records",
        h[0]["peer_name"].as_str().unwrap()
    );
    assert_eq!(h[0]["message"], msg.as_str());
    let st = status(&a);
    assert_eq!(st["held"][0]["message"], msg.as_str(), "{st}");
    // People see it in `status` and `held list`, with what to do.
    let people = run(&a, &["status", "--human"]).ok().stdout;
    assert!(
        people.contains("1 delete batch held by the mass-delete brake") && people.contains(&msg),
        "{people}"
    );
    let list = run(&a, &["held", "list", "--human"]).ok().stdout;
    assert!(
        list.contains(&msg) && list.contains("fieldsync held approve ID"),
        "{list}"
    );
    assert!(
        agent_b.log_text().is_empty() || !agent_b.log_text().contains("panick"),
        "B's agent is fine"
    );

    // Nothing stalls and nothing is held twice: a new record from B arrives, the hold stays one
    // hold of 80, and A still keeps the 80 alive.
    let fresh = Uuid::new_v4();
    put(&b, "person", &fresh, &person(1000));
    let s = sync(&a, agent_b.addr());
    assert_eq!(s.received.records, 1, "{s:?}");
    assert!(alive(&a, "person", &fresh));
    let h2 = held(&a);
    assert_eq!(h2.len(), 1, "{h2:?}");
    assert_eq!(h2[0]["deletes"], 80);
    // The sync line says what stays held from that peer.
    let mut args = peer_args("sync", &a, agent_b.addr());
    args.push("--human");
    let line = run(&a, &args).ok().stdout;
    assert!(
        line.contains(&format!(
            "; held by the mass-delete brake: {msg} (see `fieldsync held list`)"
        )),
        "{line}"
    );
    assert_eq!(live_count(&a, "person"), 101);
    (a, agent_b, doomed)
}

#[test]
fn approving_a_held_mass_delete_applies_exactly_the_held_deletes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, mut agent_b, doomed) = eighty_of_a_hundred_deleted_on_b(tmp.path());
    let id = held(&a)[0]["id"].as_u64().unwrap().to_string();
    let out = run(&a, &["held", "approve", &id]).ok().json();
    assert_eq!(
        (out["decision"].as_str(), out["applied"].as_u64()),
        (Some("approved"), Some(80))
    );
    assert!(held(&a).is_empty());
    assert_eq!(
        run(&a, &["held", "list", "--human"]).ok().stdout,
        "No held deletes.\n"
    );
    assert!(status(&a)["held"].as_array().unwrap().is_empty());
    assert_eq!(live_count(&a, "person"), 21);
    assert!(doomed.iter().all(|id| !alive(&a, "person", id)));
    let s = sync(&a, agent_b.addr());
    assert_eq!(s.moved(), 0, "approving sends nothing back: {s:?}");
    assert_eq!(live_count(agent_b.dir(), "person"), 21);
    assert_same(&a, agent_b.dir(), agent_b.addr());
    // Deciding twice is a clear error naming the next step.
    let again = run(&a, &["held", "approve", &id]);
    assert_ne!(again.code, 0);
    assert!(
        again.stderr.contains(&format!("no pending hold {id}")),
        "{again}"
    );
    assert!(again.stderr.contains("fieldsync held list"), "{again}");
    agent_b.stop();
}

#[test]
fn rejecting_a_held_mass_delete_keeps_the_records_alive_on_both_laptops() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, mut agent_b, doomed) = eighty_of_a_hundred_deleted_on_b(tmp.path());
    let id = held(&a)[0]["id"].as_u64().unwrap().to_string();
    let out = run(&a, &["held", "reject", &id]).ok().json();
    assert_eq!(out["decision"], "rejected");
    assert_eq!(out["restored"], 80);
    assert!(held(&a).is_empty());
    assert_eq!(live_count(&a, "person"), 101);
    // History on A shows the delete and the restore after it.
    let h = history(&a, "person", &doomed[0]);
    let kinds: Vec<&str> = h.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(
        kinds.ends_with(&["delete", "restore"]),
        "history shows both: {h:?}"
    );
    let s = sync(&a, agent_b.addr());
    assert_eq!(s.sent.records, 80, "the restores sync back: {s:?}");
    assert_eq!(live_count(agent_b.dir(), "person"), 101);
    assert!(doomed
        .iter()
        .take(3)
        .all(|id| alive(agent_b.dir(), "person", id)));
    assert_same(&a, agent_b.dir(), agent_b.addr());

    // A small delete (10 of 101) is not held.
    delete_all(agent_b.dir(), &doomed[..10]);
    sync(&a, agent_b.addr());
    assert_eq!(live_count(&a, "person"), 91);
    assert!(held(&a).is_empty());
    agent_b.stop();
}
