//! The sync use cases end to end: real `fieldsync` processes on temp data dirs, real TCP on
//! 127.0.0.1, checked the way a user would check them (export, digest, verify, history,
//! conflicts).

mod common;

use common::agent::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// The `at` stamps of a record's history, oldest first.
fn stamps(h: &[Value]) -> Vec<String> {
    h.iter()
        .map(|e| e["at"].as_str().expect("at").to_string())
        .collect()
}

/// The conflict log entries about one record.
fn conflicts_of<'a>(cs: &'a [Value], id: &Uuid) -> Vec<&'a Value> {
    cs.iter()
        .filter(|c| c["record"] == id.to_string())
        .collect()
}

fn fields_of(dir: &Path, id: &Uuid) -> Value {
    get(dir, "person", id).expect("record exists")["fields"].clone()
}

#[test]
fn first_sync_copies_records_and_histories_with_the_same_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    let recs = people(300);
    import(&a, "person", &recs);
    // Histories with more than one revision, and a tombstone, must travel too.
    let (edited, deleted) = (recs[0].0, recs[1].0);
    patch(
        &a,
        "person",
        &edited,
        &json!({"status": "reunited", "age": 41}),
    );
    delete(&a, "person", &deleted);
    let a_id = instance_id(&a);

    let agent_b = Agent::start(&b);
    let s = sync(&a, agent_b.addr());
    assert_eq!(s.sent.records, 300, "{:?}", s.sent.raw);
    assert_eq!(s.sent.applied, 300);
    assert_eq!(s.received.records, 0);

    assert_same(&a, &b, agent_b.addr());
    assert_eq!(export(&a, "person"), export(&b, "person"));
    assert_eq!(digest(&b)["count"], 299);
    assert!(!alive(&b, "person", &deleted));

    for id in [edited, deleted, recs[2].0, recs[150].0, recs[299].0] {
        let (ha, hb) = (history(&a, "person", &id), history(&b, "person", &id));
        assert_eq!(stamps(&ha), stamps(&hb), "history of {id} on A and B");
        assert!(
            hb.iter().all(|e| e["instance"] == a_id.as_str()),
            "every revision of {id} on B is A's: {hb:?}"
        );
        let meta = &get(&b, "person", &id).unwrap()["meta"];
        let fields = meta["fields"].as_object().unwrap();
        assert!(fields.values().all(|f| f["instance"] == a_id.as_str()));
    }
    let kinds = |id| -> Vec<Value> {
        history(&b, "person", &id)
            .iter()
            .map(|e| e["kind"].clone())
            .collect()
    };
    assert_eq!(kinds(edited), vec![json!("create"), json!("update")]);
    assert_eq!(kinds(deleted), vec![json!("create"), json!("delete")]);
}

/// What every laptop must print alike of a history: stamp, maker, kind, cause and changes
/// (`source` and `applied_at` say how and when the revision reached this laptop).
fn replicated(h: &[Value]) -> Vec<Value> {
    h.iter()
        .map(|e| json!([e["at"], e["instance"], e["kind"], e["cause"], e["changes"]]))
        .collect()
}

#[test]
fn every_revision_travels_with_its_exact_old_and_new_values() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        data_dir(tmp.path(), "a"),
        data_dir(tmp.path(), "b"),
        data_dir(tmp.path(), "c"),
    );
    let doc = Uuid::new_v4();
    put(&a, "doc", &doc, &json!({"b": 1, "c": "x"}));
    patch(&a, "doc", &doc, &json!({"c": "y"}));
    let notes = Uuid::new_v4();
    put(&a, "person", &notes, &json!({"notes": "rev1"}));
    patch(
        &a,
        "person",
        &notes,
        &json!({"notes": "rev2", "status": "found"}),
    );
    patch(&a, "person", &notes, &json!({"notes": "rev3"}));
    let single = Uuid::new_v4();
    put(&a, "person", &single, &json!({"notes": "only"}));

    let (agent_b, agent_c) = (Agent::start(&b), Agent::start(&c));
    sync(&a, agent_b.addr());
    let hb = history(&b, "doc", &doc);
    let changes: Vec<(Value, Value)> = hb
        .iter()
        .map(|e| (e["kind"].clone(), e["changes"].clone()))
        .collect();
    assert_eq!(
        changes,
        vec![
            (
                json!("create"),
                json!([{"field": "b", "old": null, "new": 1},
                       {"field": "c", "old": null, "new": "x"}])
            ),
            (
                json!("update"),
                json!([{"field": "c", "old": "x", "new": "y"}])
            ),
        ],
        "B's history of doc: {hb:?}"
    );
    assert_eq!(replicated(&hb), replicated(&history(&a, "doc", &doc)));
    let diff = run(&b, &["history", "doc", &doc.to_string(), "--diff"]).ok();
    let text = &diff.stdout;
    assert!(text.contains("+ b: 1\n+ c: \"x\"\n"), "{text}");
    assert!(text.contains("- c: \"x\"\n+ c: \"y\"\n"), "{text}");
    let notes_b: Vec<Value> = history(&b, "person", &notes)
        .iter()
        .map(|e| e["changes"].clone())
        .collect();
    assert_eq!(
        notes_b,
        vec![
            json!([{"field": "notes", "old": null, "new": "rev1"}]),
            json!([{"field": "notes", "old": "rev1", "new": "rev2"},
                   {"field": "status", "old": null, "new": "found"}]),
            json!([{"field": "notes", "old": "rev2", "new": "rev3"}]),
        ]
    );
    assert_eq!(history(&b, "person", &single).len(), 1);

    // A→B→C, then A↔C directly: the same revisions everywhere, none twice.
    patch(&b, "doc", &doc, &json!({"b": 2}));
    sync(&c, agent_b.addr());
    sync(&a, agent_c.addr());
    sync(&c, agent_b.addr());
    let ha = replicated(&history(&a, "doc", &doc));
    assert_eq!(ha.len(), 3, "{ha:?}");
    for (name, dir) in [("B", &b), ("C", &c)] {
        for (table, id) in [("doc", doc), ("person", notes), ("person", single)] {
            assert_eq!(
                replicated(&history(dir, table, &id)),
                replicated(&history(&a, table, &id)),
                "{name}: history of {table}/{id}"
            );
        }
    }
    // `get --at` shows the record as it was after a revision, on a laptop that never had it.
    let at = history(&c, "doc", &doc)[0]["at"]
        .as_str()
        .unwrap()
        .to_string();
    let then = run(&c, &["get", "doc", &doc.to_string(), "--at", &at])
        .ok()
        .json();
    assert_eq!(then["fields"], json!({"b": 1, "c": "x"}), "{then}");
    // On a terminal it says it is an earlier state, and of when (trial 10: it printed like the
    // record as it is); without --at, no such line.
    let said = run(
        &c,
        &["get", "doc", &doc.to_string(), "--at", &at, "--human"],
    )
    .ok()
    .stdout;
    assert!(
        said.starts_with("As it was after the revision of ") && said.contains("(not as it is now)"),
        "{said}"
    );
    let now = run(&c, &["get", "doc", &doc.to_string(), "--human"])
        .ok()
        .stdout;
    assert!(!now.contains("As it was"), "{now}");
}

#[test]
fn a_record_edited_before_its_first_sync_arrives_whole_in_a_multi_page_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_config(&a, "", "page_records = 500");
    write_config(&b, "", "page_records = 500");
    let recs = people(1000);
    import(&a, "person", &recs);
    // The edit moves the record's feed entry from position 1 to 1001, i.e. onto the second
    // page, while its untouched fields still carry position 1.
    let edited = recs[0].0;
    patch(&a, "person", &edited, &json!({"status": "reunited"}));

    let agent_b = Agent::start(&b);
    let s = sync(&a, agent_b.addr());
    assert_eq!(s.sent.records, 1000, "{:?}", s.sent.raw);
    assert_eq!(
        fields_of(&b, &edited),
        fields_of(&a, &edited),
        "fields lost"
    );
    assert_same(&a, &b, agent_b.addr());
}

#[test]
fn edits_on_both_sides_merge_by_field_and_same_field_edits_are_logged_conflicts() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    let recs = people(20);
    import(&a, "person", &recs);
    let agent_b = Agent::start(&b);
    sync(&a, agent_b.addr());

    let (merged, clashed) = (recs[0].0, recs[1].0);
    // Different fields of one record: both edits survive.
    patch(&a, "person", &merged, &json!({"status": "reunited"}));
    patch(&b, "person", &merged, &json!({"phone": "+1 555 0199"}));
    // The same field on both sides: one value wins everywhere, and the clash is logged.
    patch(&a, "person", &clashed, &json!({"status": "in_hospital"}));
    patch(&b, "person", &clashed, &json!({"status": "deceased"}));
    // New records on each side travel the other way.
    let (new_a, new_b) = (Uuid::new_v4(), Uuid::new_v4());
    put(&a, "person", &new_a, &person(1000));
    put(&b, "person", &new_b, &person(1001));

    let s = sync(&a, agent_b.addr());
    assert_eq!(s.received.records, 3, "B's changes: {:?}", s.received.raw);
    assert_eq!(s.received.conflicts, 1);
    assert_same(&a, &b, agent_b.addr());

    for dir in [&a, &b] {
        let f = fields_of(dir, &merged);
        assert_eq!(f["status"], "reunited", "A's edit kept");
        assert_eq!(f["phone"], "+1 555 0199", "B's edit kept");
        assert!(alive(dir, "person", &new_a) && alive(dir, "person", &new_b));
    }
    assert!(conflicts_of(&conflicts(&a), &merged).is_empty());
    assert!(conflicts_of(&conflicts(&b), &merged).is_empty());

    // The initiator merged first, so it logs the conflict; B receives an already merged state.
    let ca = conflicts(&a);
    let logged = conflicts_of(&ca, &clashed);
    assert_eq!(logged.len(), 1, "A's conflict log: {ca:?}");
    let c = logged[0];
    assert_eq!(c["type"], "field");
    assert_eq!(c["field"], "status");
    assert_eq!(c["peer"], agent_b.instance());
    let winner = &c[c["chosen"].as_str().unwrap()]["value"];
    assert!(winner == "in_hospital" || winner == "deceased", "{c}");
    assert_eq!(&fields_of(&a, &clashed)["status"], winner);
    assert_eq!(&fields_of(&b, &clashed)["status"], winner);
    let meta = &get(&a, "person", &clashed).unwrap()["meta"];
    assert_eq!(meta["conflicts"], json!([c["id"]]));
    eprintln!(
        "same-field conflict logged on A (initiator): {}, on B (responder): {}",
        logged.len(),
        conflicts_of(&conflicts(&b), &clashed).len()
    );

    // Repeating the sync neither moves anything nor logs the conflict again.
    let again = sync(&a, agent_b.addr());
    assert_eq!(again.moved(), 0, "{again:?}");
    assert_eq!(conflicts_of(&conflicts(&a), &clashed).len(), 1);
}

#[test]
fn a_delete_propagates_unless_the_other_side_edited_the_record_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    let recs = people(10);
    import(&a, "person", &recs);
    let agent_b = Agent::start(&b);
    sync(&a, agent_b.addr());

    let (plain, contested) = (recs[0].0, recs[1].0);
    delete(&a, "person", &plain);
    delete(&a, "person", &contested);
    patch(&b, "person", &contested, &json!({"status": "reunited"}));

    sync(&a, agent_b.addr());
    assert_same(&a, &b, agent_b.addr());
    assert!(!alive(&a, "person", &plain) && !alive(&b, "person", &plain));
    assert!(
        get(&b, "person", &plain).is_some(),
        "the tombstone is kept on B"
    );
    for dir in [&a, &b] {
        assert!(
            alive(dir, "person", &contested),
            "the edit wins over the delete"
        );
        assert_eq!(fields_of(dir, &contested)["status"], "reunited");
    }
    let (ca, cb) = (conflicts(&a), conflicts(&b));
    let de: Vec<&Value> = ca
        .iter()
        .chain(cb.iter())
        .filter(|c| c["type"] == "delete_edit")
        .collect();
    assert!(
        !de.is_empty(),
        "a delete-vs-edit conflict is logged: A {ca:?} B {cb:?}"
    );
    assert!(de.iter().all(|c| c["record"] == contested.to_string()));
    // A merged B's edit into its own delete, so A is the side that logs it.
    assert_eq!(conflicts_of(&ca, &contested).len(), 1, "{ca:?}");
    assert_eq!(conflicts_of(&ca, &contested)[0]["deleted_on"], "local");
    eprintln!(
        "delete-vs-edit conflict logged on A (deleter, initiator): {}, on B (editor): {}",
        conflicts_of(&ca, &contested).len(),
        conflicts_of(&cb, &contested).len()
    );
    assert!(conflicts_of(&ca, &plain).is_empty() && conflicts_of(&cb, &plain).is_empty());
}

#[test]
fn a_deleted_record_is_not_resurrected_by_peers_holding_the_old_version() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b, c) = (
        data_dir(root, "a"),
        data_dir(root, "b"),
        data_dir(root, "c"),
    );
    let recs = people(10);
    import(&a, "person", &recs);
    let (agent_a, agent_b, agent_c) = (Agent::start(&a), Agent::start(&b), Agent::start(&c));
    sync(&a, agent_b.addr());
    // C gets the old version straight from A and never hears of the delete until later.
    sync(&c, agent_a.addr());

    let gone = recs[3].0;
    delete(&b, "person", &gone);
    for round in 0..3 {
        sync(&a, agent_b.addr());
        sync(&b, agent_a.addr());
        assert!(!alive(&a, "person", &gone), "round {round}: back on A");
        assert!(!alive(&b, "person", &gone), "round {round}: back on B");
    }
    sync(&c, agent_b.addr());
    sync(&b, agent_c.addr());
    sync(&c, agent_a.addr());
    for (name, dir) in [("A", &a), ("B", &b), ("C", &c)] {
        assert!(!alive(dir, "person", &gone), "resurrected on {name}");
        assert_eq!(digest(dir)["count"], 9, "{name}");
        assert!(conflicts(dir).is_empty(), "{name}: {:?}", conflicts(dir));
    }
    assert_same(&a, &b, agent_b.addr());
    assert_same(&c, &b, agent_b.addr());
}

#[test]
fn three_instances_propagate_through_the_middle_without_duplicates_or_echo() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b, c) = (
        data_dir(root, "a"),
        data_dir(root, "b"),
        data_dir(root, "c"),
    );
    let from_a = people(30);
    let from_c = people(10);
    import(&a, "person", &from_a);
    import(&c, "person", &from_c);
    let a_id = instance_id(&a);
    let (agent_a, agent_b, agent_c) = (Agent::start(&a), Agent::start(&b), Agent::start(&c));

    // B meets C first, then A, then C again: A's records reach C only through B.
    sync(&b, agent_c.addr());
    sync(&b, agent_a.addr());
    let rec = from_a[0].0;
    patch(&a, "person", &rec, &json!({"status": "registered"}));
    sync(&a, agent_b.addr());
    sync(&c, agent_b.addr());

    let got = get(&c, "person", &rec).expect("A's record reached C");
    assert_eq!(got["fields"]["status"], "registered");
    for f in got["meta"]["fields"].as_object().unwrap().values() {
        assert_eq!(f["instance"], a_id.as_str(), "origin of {rec} on C");
    }
    let hc = history(&c, "person", &rec);
    assert!(hc.iter().all(|e| e["instance"] == a_id.as_str()), "{hc:?}");
    assert!(hc
        .iter()
        .all(|e| e["source"] == format!("peer {}", agent_b.instance())));

    // A and C meet directly for the first time: they already have everything.
    let direct = sync(&a, agent_c.addr());
    assert_eq!(direct.moved(), 0, "A<->C moved records: {direct:?}");
    let direct = sync(&c, agent_a.addr());
    assert_eq!(direct.moved(), 0, "C<->A moved records: {direct:?}");

    for id in [rec, from_a[1].0, from_c[0].0] {
        let h: Vec<Vec<String>> = [&a, &b, &c]
            .iter()
            .map(|d| stamps(&history(d, "person", &id)))
            .collect();
        let unique: BTreeSet<&String> = h[2].iter().collect();
        assert_eq!(unique.len(), h[2].len(), "duplicate revisions on C: {h:?}");
        assert!(
            h[0] == h[1] && h[1] == h[2],
            "histories of {id} differ: {h:?}"
        );
    }
    for (name, dir) in [("A", &a), ("B", &b), ("C", &c)] {
        assert!(conflicts(dir).is_empty(), "{name}: {:?}", conflicts(dir));
        assert_eq!(digest(dir)["count"], 40, "{name}");
    }
    assert_same(&a, &c, agent_c.addr());
    assert_same(&b, &c, agent_c.addr());
}

#[test]
fn the_same_unique_name_on_two_instances_keeps_both_records_and_logs_a_clash() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        write_config(d, "unique = [\"person.name\"]", "");
    }
    let (id_a, id_b) = (Uuid::new_v4(), Uuid::new_v4());
    put(
        &a,
        "person",
        &id_a,
        &json!({"name": "Amina Okafor", "age": 34}),
    );
    put(
        &b,
        "person",
        &id_b,
        &json!({"name": "Amina Okafor", "age": 35}),
    );
    // The unique index does refuse a local duplicate, so the clash can only come from a peer.
    let dup = run(&a, &["put", "person", r#"{"name":"Amina Okafor","age":1}"#]);
    assert_eq!(dup.code, 2, "{dup}");
    assert!(dup.stderr.contains("already used"), "{dup}");

    let agent_b = Agent::start(&b);
    sync(&a, agent_b.addr());
    assert_same(&a, &b, agent_b.addr());
    for dir in [&a, &b] {
        assert!(alive(dir, "person", &id_a) && alive(dir, "person", &id_b));
        assert_eq!(fields_of(dir, &id_a)["age"], 34);
        assert_eq!(fields_of(dir, &id_b)["age"], 35);
    }
    let (ca, cb) = (conflicts(&a), conflicts(&b));
    let clashes = |cs: &[Value]| -> usize {
        cs.iter()
            .filter(|c| c["type"] == "name_clash" && c["field"] == "name")
            .count()
    };
    assert!(clashes(&ca) + clashes(&cb) >= 1, "A {ca:?} B {cb:?}");
    // Each side received the other's record as new, so each side logs the clash.
    assert_eq!(clashes(&ca), 1, "{ca:?}");
    assert_eq!(clashes(&cb), 1, "{cb:?}");
    let c = ca.iter().find(|c| c["type"] == "name_clash").unwrap();
    assert_eq!(c["record"], id_b.to_string());
    assert_eq!(c["other_record"], id_a.to_string());
    assert_eq!(c["value"], "Amina Okafor");
}

#[test]
fn a_name_clash_clears_on_both_laptops_once_one_record_is_renamed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        write_config(d, "unique = [\"person.case_number\"]", "");
    }
    let (id_a, id_b) = (Uuid::new_v4(), Uuid::new_v4());
    put(
        &a,
        "person",
        &id_a,
        &json!({"case_number": "K", "name": "Ana"}),
    );
    put(
        &b,
        "person",
        &id_b,
        &json!({"case_number": "K", "name": "Bo"}),
    );
    let agent_b = Agent::start(&b);
    sync(&a, agent_b.addr());
    let open = |dir: &Path| -> Vec<Value> {
        conflicts(dir)
            .into_iter()
            .filter(|c| c["type"] == "name_clash" && c["resolved"].is_null())
            .collect()
    };
    for (name, dir) in [("A", &a), ("B", &b)] {
        let o = open(dir);
        assert_eq!(o.len(), 1, "{name}: {o:?}");
        assert_eq!(o[0]["value"], "K");
        let both: BTreeSet<String> = [&o[0]["record"], &o[0]["other_record"]]
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let want: BTreeSet<String> = [id_a, id_b].iter().map(Uuid::to_string).collect();
        assert_eq!(both, want, "{name}: {o:?}");
        assert!(alive(dir, "person", &id_a) && alive(dir, "person", &id_b));
    }
    // B renames its record by a plain patch: the clash clears on B at once, on A by the sync.
    patch(&b, "person", &id_b, &json!({"case_number": "K2"}));
    assert!(open(&b).is_empty(), "B: {:?}", open(&b));
    sync(&a, agent_b.addr());
    for (name, dir) in [("A", &a), ("B", &b)] {
        assert!(open(dir).is_empty(), "{name}: {:?}", conflicts(dir));
        assert_eq!(fields_of(dir, &id_b)["case_number"], "K2");
        assert_eq!(fields_of(dir, &id_a)["case_number"], "K");
    }
}

#[test]
fn conflicts_are_resolved_from_the_readers_side_and_clear_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    let (x, y, z) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    put(&a, "person", &x, &json!({"s": "start"}));
    put(
        &a,
        "person",
        &z,
        &json!({"name": "Zoe", "status": "missing"}),
    );
    put(
        &a,
        "person",
        &y,
        &json!({"name": "Yan", "status": "missing"}),
    );
    let agent_b = Agent::start(&b);
    sync(&a, agent_b.addr());
    // Concurrent writes of one field, and a delete on B while A edits.
    patch(&a, "person", &x, &json!({"s": "fromA"}));
    patch(&b, "person", &x, &json!({"s": "fromB"}));
    patch(&a, "person", &y, &json!({"status": "found"}));
    delete(&b, "person", &y);
    patch(&b, "person", &z, &json!({"status": "found"}));
    delete(&a, "person", &z);
    sync(&a, agent_b.addr());
    assert!(alive(&a, "person", &y) && alive(&b, "person", &y));
    let open_on = |dir: &Path, id: &Uuid| -> Vec<Value> {
        conflicts_of(&conflicts(dir), id)
            .into_iter()
            .filter(|c| c["resolved"].is_null())
            .cloned()
            .collect()
    };
    let on_b = open_on(&b, &x);
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    let cid = on_b[0]["id"].to_string();
    // On B, "mine" is B's value, whoever detected the conflict.
    run(&b, &["conflicts", "resolve", &cid, "--keep", "mine"]).ok();
    let dy = open_on(&b, &y);
    assert_eq!(dy.len(), 1, "{dy:?}");
    let did = dy[0]["id"].to_string();
    run(&b, &["conflicts", "resolve", &did, "--keep", "deleted"]).ok();
    // Z: deleted on A, edited on B; B keeps it alive (a decision that changes no value).
    let dz = open_on(&b, &z);
    assert_eq!(dz.len(), 1, "{dz:?}");
    let zid = dz[0]["id"].to_string();
    run(&b, &["conflicts", "resolve", &zid, "--keep", "alive"]).ok();
    assert!(
        open_on(&a, &z).len() == 1,
        "A's copy is open until it hears of the decision"
    );
    sync(&a, agent_b.addr());
    for (name, dir) in [("A", &a), ("B", &b)] {
        assert_eq!(fields_of(dir, &x)["s"], "fromB", "{name}");
        assert!(
            open_on(dir, &x).is_empty(),
            "{name}: {:?}",
            open_on(dir, &x)
        );
        assert!(!alive(dir, "person", &y), "{name}: Y is still alive");
        // Both delete-vs-edit decisions settled the entry on every laptop.
        assert!(
            open_on(dir, &y).is_empty(),
            "{name}: {:?}",
            open_on(dir, &y)
        );
        assert!(
            open_on(dir, &z).is_empty(),
            "{name}: {:?}",
            open_on(dir, &z)
        );
        assert!(alive(dir, "person", &z), "{name}: Z was kept alive");
        assert_eq!(fields_of(dir, &z)["status"], "found", "{name}");
    }
    // A hears of B's decision with the record: it says who decided and what the edit was, not
    // "the edit wins" and a raw stamp (newcomer trial 8, finding 5), and the decision's
    // re-asserted field is no "69 → 69" change in the history.
    let all = conflicts(&a);
    let cz = conflicts_of(&all, &z)[0].clone();
    let alive_side = cz["sides"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["side"] == "alive")
        .unwrap()
        .clone();
    assert_eq!(alive_side["laptop"]["id"], agent_b.instance(), "{cz}");
    let b_name = alive_side["laptop"]["name"].as_str().unwrap().to_string();
    assert_eq!(cz["why"], format!("resolved by {b_name}"), "{cz}");
    assert_eq!(
        cz["resolved"]["how"],
        format!("{b_name} kept the record"),
        "{cz}"
    );
    assert_eq!(alive_side["edited"], json!(["status"]), "{cz}");
    let history = run(&a, &["history", "person", &z.to_string(), "--human"])
        .ok()
        .stdout;
    assert!(
        history.contains("(a conflict resolution)\n  kept the record as it was (no value changed)"),
        "{history}"
    );
    let diff = run(&a, &["history", "person", &z.to_string(), "--diff"])
        .ok()
        .stdout;
    assert!(
        diff.contains("kept the record as it was (no value changed)")
            && !diff.contains("- name: \"Zoe\"\n+ name: \"Zoe\""),
        "{diff}"
    );
}

const BIG: usize = 20_000;
const PAGE: &str = "page_records = 500";
/// The page size `PAGE` sets.
const PAGE_RECORDS: u64 = 500;
/// Where the big syncs are interrupted.
const HALF: u64 = BIG as u64 / 2;

/// Waits until `dir` (an agent's, so the CLI is forwarded) has at least `at_least` but not all
/// `total` records, i.e. the session is that far along and not finished; returns the count.
fn wait_mid_session(dir: &Path, session: &mut Running, at_least: u64, total: u64) -> u64 {
    let mut seen = 0;
    wait_until(
        "the session to get far enough",
        Duration::from_secs(120),
        || {
            assert!(
                !session.finished(),
                "the sync ended before it could be interrupted"
            );
            seen = live_count(dir, "person");
            seen >= at_least
        },
    );
    assert!(seen < total, "already complete: nothing to interrupt");
    seen
}

fn big_pair(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (root.join("a"), root.join("b"));
    write_config(&a, "", PAGE);
    write_config(&b, "", PAGE);
    (a, b)
}

#[test]
fn an_interrupted_big_sync_resumes_after_the_initiating_cli_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = big_pair(tmp.path());
    let recs = people(BIG);
    import(&a, "person", &recs);
    // Edited before any sync: its feed entry moves from position BIG/4 to the end, past
    // where the session will be interrupted, while its other fields keep position BIG/4.
    let moved = recs[BIG / 4].0;
    patch(&a, "person", &moved, &json!({"status": "in_hospital"}));
    let agent_b = Agent::start(&b);

    let mut session = spawn(&a, &["sync", agent_b.addr()]);
    let seen = wait_mid_session(&b, &mut session, HALF, BIG as u64);
    let killed = session.kill9();
    let had = live_count(&b, "person");
    eprintln!(
        "initiator killed (exit {}) after B had {seen}..{had} of {BIG}",
        killed.code
    );
    assert!(
        had < BIG as u64,
        "the kill came too late to interrupt anything"
    );

    // Edits before the re-run on both sides of the interruption point: records go out in
    // import order, so the first ones reached B and the last ones did not.
    let (sent, unsent) = (recs[0].0, recs[BIG - 1].0);
    assert!(alive(&b, "person", &sent) && get(&b, "person", &unsent).is_none());
    patch(&a, "person", &sent, &json!({"status": "reunited"}));
    patch(&a, "person", &unsent, &json!({"status": "registered"}));
    delete(&a, "person", &recs[1].0);
    delete(&a, "person", &recs[BIG - 2].0);

    let rerun = sync(&a, agent_b.addr());
    assert!(
        rerun.sent.records < BIG as u64,
        "the re-run started over instead of resuming: {:?}",
        rerun.sent.raw
    );
    // Pushes are pipelined two pages deep: up to two pages may still have been applied by B
    // after the kill (their requests had fully arrived), so B can hold two pages more than
    // `had` said.
    assert!(
        rerun.sent.records + 2 * PAGE_RECORDS >= BIG as u64 - had,
        "{:?}",
        rerun.sent.raw
    );
    let d = assert_same(&a, &b, agent_b.addr());
    assert_eq!(d["count"], BIG - 2);
    assert_eq!(fields_of(&b, &sent)["status"], "reunited");
    assert_eq!(fields_of(&b, &unsent)["status"], "registered");
    assert_eq!(fields_of(&b, &moved), fields_of(&a, &moved));
    assert!(!alive(&b, "person", &recs[1].0) && !alive(&b, "person", &recs[BIG - 2].0));
}

/// A push of the big batch into B's agent, interrupted half-way by `interrupt(agent)`, then
/// re-run against B restarted on the same data.
/// `unflushed`: how many records counted while the agent ran may be missing after the
/// interruption. A count read from a running agent includes pages applied but not yet flushed
/// (group commit: readers see a batch before its shared fsync); those were never acknowledged,
/// so a kill -9 may drop them. A clean stop flushes them.
fn serving_agent_interrupted(interrupt: fn(&mut Agent), how: &str, unflushed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = big_pair(tmp.path());
    import(&a, "person", &people(BIG));
    let mut agent_b = Agent::start(&b);

    let mut session = spawn(&a, &["sync", agent_b.addr()]);
    let seen = wait_mid_session(&b, &mut session, HALF, BIG as u64);
    interrupt(&mut agent_b);
    let failed = session.wait(CLI_TIMEOUT);
    assert_ne!(
        failed.code, 0,
        "sync cannot succeed without its peer: {failed}"
    );
    assert!(failed.stderr.contains("cannot reach"), "{failed}");

    // Restarted on the same data, on a new port (the old one may still be in TIME_WAIT).
    let agent_b = Agent::start(&b);
    let had = live_count(&b, "person");
    eprintln!("server {how} after it had {seen}..{had} of {BIG}");
    assert!(had + unflushed >= seen && had < BIG as u64);
    let rerun = sync(&a, agent_b.addr());
    assert!(
        rerun.sent.records < BIG as u64,
        "the re-run started over instead of resuming: {:?}",
        rerun.sent.raw
    );
    let d = assert_same(&a, &b, agent_b.addr());
    assert_eq!(d["count"], BIG);
}

#[test]
fn an_interrupted_big_sync_resumes_after_the_serving_agent_is_killed() {
    // Pushes are pipelined two pages deep, so at most two pages were unflushed.
    serving_agent_interrupted(Agent::kill9, "killed", 2 * PAGE_RECORDS);
}

#[test]
fn an_interrupted_big_sync_resumes_after_the_serving_agent_is_stopped_mid_session() {
    // SIGTERM mid-session: the agent must still exit cleanly (stop() asserts exit code 0).
    serving_agent_interrupted(Agent::stop, "stopped", 0);
}

#[test]
fn an_interrupted_big_pull_resumes_after_the_initiating_agent_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = big_pair(tmp.path());
    import(&b, "person", &people(BIG));
    let agent_b = Agent::start(&b);
    let mut agent_a = Agent::start(&a);

    // Forwarded to A's agent: the agent is the initiator and the side receiving pages.
    let mut session = spawn(&a, &["sync", agent_b.addr()]);
    let seen = wait_mid_session(&a, &mut session, HALF, BIG as u64);
    agent_a.kill9();
    let failed = session.wait(CLI_TIMEOUT);
    assert_ne!(failed.code, 0, "{failed}");

    let had = live_count(&a, "person");
    eprintln!("initiating agent killed after it had {seen}..{had} of {BIG}");
    assert!(had >= seen && had < BIG as u64);
    let agent_a = Agent::start(&a);
    let rerun = sync(&a, agent_b.addr());
    assert!(
        rerun.received.records < BIG as u64,
        "the re-run started over instead of resuming: {:?}",
        rerun.received.raw
    );
    assert_same(&a, &b, agent_b.addr());
    let d = assert_same(&b, &a, agent_a.addr());
    assert_eq!(d["count"], BIG);
}

#[test]
fn writes_through_the_agent_during_a_big_sync_are_not_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = big_pair(tmp.path());
    // Both directions carry a large batch, so the puts overlap pulling and pushing.
    import(&a, "person", &people(5_000));
    import(&b, "person", &people(5_000));
    let (agent_a, agent_b) = (Agent::start(&a), Agent::start(&b));

    let mut session = spawn(&a, &["sync", agent_b.addr()]);
    // Once the first pulled page is in, the puts overlap applying pages and then pushing. Any
    // point before the session ends will do, so there is no upper bound to miss.
    wait_mid_session(&a, &mut session, 5_001, u64::MAX);
    let ids: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let mut during = 0;
    for (i, id) in ids.iter().enumerate() {
        put(&a, "person", id, &person(90_000 + i));
        during += usize::from(!session.finished());
    }
    let out = session.wait(CLI_TIMEOUT).ok();
    eprintln!(
        "{during} of 50 puts finished while the session ran: {:?}",
        summary(&out)
    );

    for id in &ids {
        assert!(alive(&a, "person", id), "put {id} lost on A");
    }
    assert_eq!(digest(&a)["count"], 10_050);
    sync(&b, agent_a.addr());
    for id in &ids {
        assert!(alive(&b, "person", id), "put {id} never reached B");
    }
    assert_same(&a, &b, agent_b.addr());
    assert_same(&b, &a, agent_a.addr());
}

#[test]
fn verify_names_exactly_the_record_edited_since_the_last_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    // Over 256 records, so verify has to bisect digest buckets rather than list records.
    let recs = people(700);
    import(&a, "person", &recs);
    let agent_b = Agent::start(&b);
    sync(&a, agent_b.addr());
    let (code, lines) = verify(&a, agent_b.addr());
    assert_eq!(code, 0, "{lines:?}");

    let edited = recs[123].0;
    patch(&a, "person", &edited, &json!({"age": 77}));
    let (code, lines) = verify(&a, agent_b.addr());
    assert_eq!(code, 1, "{lines:?}");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["table"], "person");
    assert_eq!(lines[0]["in_sync"], false);
    assert_eq!(lines[0]["differing"], json!([edited.to_string()]));
    assert_eq!(lines[0]["local_count"], 700);
    assert_eq!(lines[0]["remote_count"], 700);

    let s = sync(&a, agent_b.addr());
    assert_eq!(s.sent.records, 1, "{:?}", s.sent.raw);
    let (code, lines) = verify(&a, agent_b.addr());
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(lines[0]["differing"], json!([]));
}

#[test]
fn records_are_not_echoed_back_and_a_no_op_sync_moves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    let recs = people(500);
    import(&a, "person", &recs);
    let (agent_a, mut agent_b) = (Agent::start(&a), Agent::start(&b));

    let first = sync(&a, agent_b.addr());
    assert_eq!(first.sent.records, 500);
    // B now holds 500 records it got from A: none of them may go back, whether B syncs as a
    // one-shot CLI (its agent stopped) or through its running agent.
    agent_b.stop();
    let back = sync(&b, agent_a.addr());
    assert_eq!(back.moved(), 0, "B echoed A's records: {back:?}");
    let agent_b = Agent::start(&b);
    let back = sync(&b, agent_a.addr());
    assert_eq!(back.moved(), 0, "B's agent echoed A's records: {back:?}");
    let noop = sync(&a, agent_b.addr());
    assert_eq!(noop.moved(), 0, "{noop:?}");
    let noop = sync(&b, agent_a.addr());
    assert_eq!(noop.moved(), 0, "{noop:?}");

    // One edit on each side moves exactly one record each way, and then nothing again. B's
    // agent is stopped meanwhile: agent A announces its local change to B (notify), and B's
    // agent would pull it in a session of its own, racing the one counted here.
    let mut agent_b = agent_b;
    agent_b.stop();
    patch(&a, "person", &recs[0].0, &json!({"age": 1}));
    patch(&b, "person", &recs[1].0, &json!({"age": 2}));
    let s = sync(&b, agent_a.addr());
    assert_eq!((s.received.records, s.sent.records), (1, 1), "{s:?}");
    let agent_b = Agent::start(&b);
    assert_eq!(sync(&a, agent_b.addr()).moved(), 0);
    assert_eq!(sync(&b, agent_a.addr()).moved(), 0);
    assert_same(&a, &b, agent_b.addr());
}

#[test]
fn an_instance_restored_from_a_backup_converges_even_if_it_wrote_before_syncing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    let backup = tmp.path().join("b-backup");
    import(&b, "person", &people(50));
    copy_dir(&b, &backup);
    import(&b, "person", &people(50));
    let mut agent_b = Agent::start(&b);
    sync(&a, agent_b.addr());
    agent_b.stop();

    // The laptop is restored from the backup and 60 records are entered before the next sync:
    // its feed head (110) is past what A received from it (100), so A does not notice.
    std::fs::remove_dir_all(&b).unwrap();
    copy_dir(&backup, &b);
    import(&b, "person", &people(60));
    let agent_b = Agent::start(&b);
    sync(&a, agent_b.addr());
    sync(&a, agent_b.addr());
    // The copied-back directory is a new incarnation (other inodes): A resends B everything
    // it lacks and reads B's feed from the start, so both hold all 160 records.
    assert_same(&a, &b, agent_b.addr());
    assert_eq!(digest(&a)["count"], 160);
}

/// `backup FILE` on a stopped laptop.
fn backup(dir: &Path, file: &Path) {
    run(dir, &["backup", file.to_str().unwrap(), "--no-keys"]).ok();
}

/// `restore --force FILE` on a stopped laptop: its own backup, in place.
fn restore_force(dir: &Path, file: &Path) {
    run(dir, &["restore", "--force", file.to_str().unwrap()]).ok();
}

#[test]
fn a_restored_laptop_gets_back_its_synced_writes_and_deletes_on_the_first_sync() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    let agent_a = Agent::start(&a);
    let x = Uuid::new_v4();
    put(&a, "person", &x, &person(1));
    sync(&b, agent_a.addr());
    let file = tmp.path().join("b.fsbackup");
    backup(&b, &file);

    // Case 1: B writes R and syncs; case 2: B deletes X and syncs. Then B is restored.
    let r = Uuid::new_v4();
    put(&b, "person", &r, &person(2));
    delete(&b, "person", &x);
    sync(&b, agent_a.addr());
    assert!(!alive(&a, "person", &x) && alive(&a, "person", &r));
    restore_force(&b, &file);
    assert!(alive(&b, "person", &x) && get(&b, "person", &r).is_none());

    let s = sync(&b, agent_a.addr());
    assert!(s.received.records >= 2, "{:?}", s.received.raw);
    assert!(alive(&b, "person", &r), "R is back on B");
    assert!(
        !alive(&b, "person", &x),
        "X is deleted on B after the first sync"
    );
    assert!(!alive(&a, "person", &x), "and still on A");
    assert_same(&b, &a, agent_a.addr());
    // B's patch now meets a deleted record, like any patch of a deleted record.
    let out = run(&b, &["patch", "person", &x.to_string(), r#"{"age": 3}"#]);
    assert_ne!(out.code, 0, "{out}");
    sync(&b, agent_a.addr());
    assert!(!alive(&a, "person", &x));
}

#[test]
fn a_copied_data_directory_is_refused_with_its_original_and_status_peers_doctor_say_how_to_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    let mut agent_a = Agent::start(&a);
    let w1 = Uuid::new_v4();
    put(&b, "person", &w1, &person(1));
    sync(&b, agent_a.addr());
    let b2 = tmp.path().join("b2");
    copy_dir(&b, &b2);
    let w2 = Uuid::new_v4();
    put(&b2, "person", &w2, &person(2));
    sync(&b2, agent_a.addr());
    let w3 = Uuid::new_v4();
    put(&b, "person", &w3, &person(3));

    let out = run(&b, &peer_args("sync", &b, agent_a.addr()));
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("used by two data directories"), "{out}");
    assert!(out.stderr.contains("fieldsync mesh enroll"), "{out}");
    assert!(!out.stderr.contains("Some("), "no debug format: {out}");
    // The fix's backup step runs as written on a laptop of a deployment (trial 10: without
    // --no-keys it was refused for holding the laptop's keys).
    let step = out
        .stderr
        .split('`')
        .find(|s| s.starts_with("fieldsync backup "))
        .unwrap_or_else(|| panic!("a backup step: {out}"));
    let saved = tmp.path().join("old.fsbackup");
    let args: Vec<&str> = step
        .split_whitespace()
        .skip(1)
        .map(|a| {
            if a == "old.fsbackup" {
                saved.to_str().unwrap()
            } else {
                a
            }
        })
        .collect();
    run(&b, &args).ok();
    assert!(saved.exists(), "{step}");
    let out = run(&b2, &peer_args("sync", &b2, agent_a.addr()));
    assert_ne!(out.code, 0, "the copy is refused too from now on: {out}");

    // A's coordinator view: status, peers and doctor name the problem and the fix.
    let st = status(&a);
    let problems = st["identity_problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{st}");
    assert!(problems[0]["fix"]
        .as_str()
        .unwrap()
        .contains("fieldsync mesh enroll --name NAME --out new.fsmesh"));
    let peers = run(&a, &["peers"]).ok().lines();
    let row = peers
        .iter()
        .find(|p| p["instance"] == instance_id(&b))
        .unwrap();
    assert!(row["duplicate_identity"]["reason"].is_string(), "{row}");
    // In words, as the console's overview says it (one function: `problem`).
    assert!(
        row["problem"]
            .as_str()
            .unwrap()
            .starts_with("two laptops use this identity"),
        "{row}"
    );
    let people = run(&a, &["peers", "--human"]).ok().stdout;
    assert!(
        people.contains("two laptops use this identity") && people.contains("mesh enroll"),
        "{people}"
    );
    let doc = run(&a, &["doctor"]);
    assert_ne!(doc.code, 0, "{doc}");
    let check = doc
        .lines()
        .into_iter()
        .find(|c| c["check"] == "identity")
        .unwrap();
    assert_eq!(check["ok"], false);
    assert!(check["fix"].as_str().unwrap().contains("init --mesh"));
    // The refused laptop sees it too.
    let doc = run(&b, &["doctor"]);
    let check = doc
        .lines()
        .into_iter()
        .find(|c| c["check"] == "identity")
        .unwrap();
    assert_eq!(check["ok"], false, "{doc}");

    // Nothing acknowledged is lost: synced writes are on A, the rest on the laptop that made
    // them; A's agent restarts and still refuses (the verdict is stored).
    assert!(alive(&a, "person", &w1) && alive(&a, "person", &w2));
    assert!(alive(&b, "person", &w3));
    agent_a.stop();
    let agent_a = Agent::start(&a);
    assert_ne!(run(&b, &peer_args("sync", &b, agent_a.addr())).code, 0);

    // `init --mesh` refuses a credential a known peer already uses.
    let c = data_dir(tmp.path(), "c");
    sync(&c, agent_a.addr());
    let cred = a.with_extension("fsmesh");
    let out = run(&c, &["init", "--mesh", cred.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("already uses"), "{out}");
}

/// A number is stored exactly or refused: the limits of 64-bit integers, an integer past 2^53,
/// the largest and smallest doubles, -0.0, 0.1 and 1.0 come back as written from `get` on the
/// laptop that wrote them, after a sync on the other one, and in its export; numbers a double
/// would change are refused (exit 2) naming the field and suggesting a string.
#[test]
fn numbers_round_trip_exactly_through_put_sync_and_export_or_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    let values = [
        ("i64_min", "-9223372036854775808"),
        ("i64_max", "9223372036854775807"),
        ("u64_max", "18446744073709551615"),
        ("two53_plus_1", "9007199254740993"),
        ("big", "1e308"),
        ("tiny", "5e-324"),
        ("neg_zero", "-0.0"),
        ("tenth", "0.1"),
        ("one", "1.0"),
    ];
    let body = format!(
        "{{{}}}",
        values
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let id = Uuid::new_v4().to_string();
    run(&a, &["--json", "put", "number", "--id", &id, &body]).ok();
    let patched = "{\"patched\":-9223372036854775808}";
    run(&a, &["--json", "patch", "number", &id, patched]).ok();
    // Compared as printed: the same value, and an integer stays an integer, a float a float
    // (1.0 is not 1), -0.0 keeps its sign.
    let has_all = |text: &str, whence: &str| {
        let line = text.lines().next().expect("one record");
        let v: Value = serde_json::from_str(line).unwrap();
        for (k, want) in values
            .iter()
            .chain([("patched", "-9223372036854775808")].iter())
        {
            let want: Value = serde_json::from_str(want).unwrap();
            assert_eq!(
                v["fields"][k].to_string(),
                want.to_string(),
                "{whence}: {k}: {line}"
            );
        }
    };
    has_all(
        &run(&a, &["--json", "get", "number", &id]).ok().stdout,
        "get on A",
    );
    let agent_b = Agent::start(&b);
    sync(&a, agent_b.addr());
    has_all(
        &run(&b, &["--json", "get", "number", &id]).ok().stdout,
        "get on B",
    );
    has_all(&export(&b, "number"), "export on B");
    drop(agent_b);
    has_all(&export(&a, "number"), "export on A");

    for (field, bad) in [
        ("phone", "123456789012345678901234567890"),
        ("weight", "0.10000000000000000001"),
        ("n", "18446744073709551616"),
        ("x", "9007199254740993.0"),
    ] {
        let o = run(&a, &["put", "number", &format!("{{\"{field}\":{bad}}}")]);
        assert_eq!(o.code, 2, "{field}={bad}: {o:?}");
        let msg = o.stderr.trim();
        assert!(
            !msg.contains('\n')
                && msg.contains(&format!("field \"{field}\""))
                && msg.contains(bad)
                && msg.contains("string"),
            "{msg}"
        );
    }
    assert_eq!(live_count(&a, "number"), 1, "nothing written by a refusal");
}
