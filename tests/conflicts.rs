//! Conflicts told from the side of the laptop reading them (issue #12): each side by the laptop
//! that wrote it (name and id), its value and time, which side the record holds and why; name
//! clashes with both records; a name clash cleared by `conflicts resolve` renaming this laptop's
//! record. Real processes, real mutual TLS on 127.0.0.1.

mod common;

use common::agent::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Two named laptops `laptopA`/`laptopB` (B runs an agent), with `config` as fieldsync.toml.
fn two_laptops(root: &Path, config: &str) -> (PathBuf, PathBuf, Agent) {
    let (a, b) = (root.join("a"), root.join("b"));
    for (d, name) in [(&a, "laptopA"), (&b, "laptopB")] {
        write_config(d, config, "");
        run(d, &["init", "--name", name, "--owner", "Team North"]).ok();
    }
    let agent_b = Agent::start(&b);
    (a, b, agent_b)
}

fn open_of(dir: &Path, id: &Uuid) -> Vec<Value> {
    conflicts(dir)
        .into_iter()
        .filter(|c| c["record"] == id.to_string() && c["resolved"].is_null())
        .collect()
}

fn all_of(dir: &Path, id: &Uuid) -> Vec<Value> {
    conflicts(dir)
        .into_iter()
        .filter(|c| c["record"] == id.to_string())
        .collect()
}

fn side<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["sides"]
        .as_array()
        .expect("sides")
        .iter()
        .find(|s| s["side"] == name)
        .unwrap_or_else(|| panic!("no side {name} in {c}"))
}

fn human(dir: &Path, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--human");
    run(dir, &all).ok().stdout
}

#[test]
fn each_side_is_told_by_its_laptop_with_value_time_and_why_on_both_laptops() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, agent_b) = two_laptops(tmp.path(), "");
    let (ia, ib) = (instance_id(&a), agent_b.instance().to_string());
    let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
    put(&a, "person", &x, &json!({"s": "start"}));
    put(
        &a,
        "person",
        &y,
        &json!({"name": "Yan", "status": "missing"}),
    );
    sync(&a, agent_b.addr());
    // B writes first, A later: A's value is newer and wins everywhere.
    patch(&b, "person", &x, &json!({"s": "fromB"}));
    std::thread::sleep(std::time::Duration::from_millis(5));
    patch(&a, "person", &x, &json!({"s": "fromA"}));
    delete(&b, "person", &y);
    patch(&a, "person", &y, &json!({"status": "found"}));
    sync(&a, agent_b.addr());

    // The field conflict, on both laptops: "mine" is the reader's own value.
    for (dir, me, mine, other, theirs, other_id) in [
        (&a, "laptopA", "fromA", "laptopB", "fromB", &ib),
        (&b, "laptopB", "fromB", "laptopA", "fromA", &ia),
    ] {
        let cs = open_of(dir, &x);
        assert_eq!(cs.len(), 1, "{me}: {cs:?}");
        let c = &cs[0];
        assert_eq!(c["type"], "field");
        assert_eq!(c["sides"][0]["side"], "mine", "{me}: own side first: {c}");
        let (m, t) = (side(c, "mine"), side(c, "theirs"));
        assert_eq!(m["laptop"]["name"], me);
        assert_eq!(m["laptop"]["this_laptop"], true);
        assert_eq!(m["value"], mine);
        assert_eq!(t["laptop"]["name"], other);
        assert_eq!(&t["laptop"]["id"], other_id);
        assert_eq!(t["value"], theirs);
        for s in [m, t] {
            let at = s["at"].as_str().expect("at");
            chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339 time");
        }
        // A's later write is in the record, by the newer-edit rule.
        let holder = if me == "laptopA" { "mine" } else { "theirs" };
        assert_eq!(c["in_record"], holder, "{me}: {c}");
        assert_eq!(side(c, holder)["in_record"], true);
        // The reader's terms throughout: what the merge kept, who detected it (never null).
        assert_eq!(c["merge_kept"], holder, "{me}: {c}");
        assert!(c["detected_by"].is_string(), "{me}: {c}");
        assert_eq!(c["detected_by"], c["detected_by_laptop"]["id"], "{me}: {c}");
        assert!(
            c["why"].as_str().unwrap().contains("newer edit wins"),
            "{me}: {c}"
        );
        // For people: aligned, laptops by name, local times, the next step.
        let text = human(dir, &["conflicts"]);
        assert!(text.contains(&format!("{me} (this laptop)")), "{text}");
        assert!(text.contains(other), "{text}");
        assert!(
            !text.contains(other_id.as_str()),
            "laptops by name, not id: {text}"
        );
        assert!(
            text.contains("\"fromA\"") && text.contains("\"fromB\""),
            "{text}"
        );
        assert!(text.contains("newer edit wins"), "{text}");
        assert!(text.contains("--keep mine"), "{text}");
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"fromA\"") || l.contains("\"fromB\""))
            .collect();
        assert_eq!(rows.len(), 2, "{text}");
        let col = |l: &str| l.find('"').unwrap();
        assert_eq!(col(rows[0]), col(rows[1]), "values aligned:\n{text}");
    }

    // The delete/edit conflict on B (B deleted, A's edit keeps Y alive).
    let cs = open_of(&b, &y);
    assert_eq!(cs.len(), 1, "{cs:?}");
    let c = &cs[0];
    assert_eq!(c["type"], "delete_edit");
    let (d, l) = (side(c, "deleted"), side(c, "alive"));
    assert_eq!(d["laptop"]["name"], "laptopB");
    assert_eq!(l["laptop"]["name"], "laptopA");
    assert_eq!(l["value"]["status"], "found");
    assert_eq!(c["in_record"], "alive");
    assert_eq!(c["merge_kept"], "alive", "{c}");
    assert!(c["why"].as_str().unwrap().contains("had not seen"), "{c}");
    let text = human(&b, &["conflicts"]);
    assert!(text.contains("--keep deleted | --keep alive"), "{text}");
    // Newcomer item 11: the record by its name with the id shortened; the alive side as fields.
    let short = &y.to_string()[..8];
    assert!(
        text.contains(&format!("person record \"Yan\" ({short})")),
        "{text}"
    );
    assert!(!text.contains(&y.to_string()), "{text}");
    // The field the unseen edit wrote first, marked: it is what the decision is about.
    assert!(text.contains("status: found (edited), name: Yan"), "{text}");
    assert_eq!(l["edited"], json!(["status"]), "{c}");
    assert!(!text.contains("{\"name\""), "{text}");

    // Resolved on B: the field to B's value, Y deleted. After a sync both laptops say so and
    // who decided.
    let cid = open_of(&b, &x)[0]["id"].to_string();
    let r = run(&b, &["conflicts", "resolve", &cid, "--keep", "mine"])
        .ok()
        .json();
    assert_eq!(r["in_record"], "mine", "{r}");
    assert_eq!(r["why"], "resolved by laptopB", "{r}");
    let did = open_of(&b, &y)[0]["id"].to_string();
    let r = run(&b, &["conflicts", "resolve", &did, "--keep", "deleted"])
        .ok()
        .json();
    assert_eq!(r["in_record"], "deleted", "{r}");
    sync(&a, agent_b.addr());
    let on_a = all_of(&a, &x);
    assert_eq!(on_a.len(), 1, "{on_a:?}");
    assert_eq!(on_a[0]["in_record"], "theirs", "{}", on_a[0]);
    assert!(
        on_a[0]["why"]
            .as_str()
            .unwrap()
            .contains("resolved by laptopB"),
        "{}",
        on_a[0]
    );
    assert_eq!(get(&a, "person", &x).unwrap()["fields"]["s"], "fromB");
    let dy = all_of(&a, &y);
    assert!(!alive(&a, "person", &y));
    if let Some(c) = dy.first() {
        assert_eq!(c["in_record"], "deleted", "{c}");
        assert_eq!(c["why"], "resolved by laptopB", "{c}");
        assert_eq!(c["resolved"]["how"], "laptopB kept the delete", "{c}");
    }
}

#[test]
fn a_third_laptop_names_the_side_in_the_record_by_its_laptop() {
    // Newcomer item 1: A and B both edit a field, A resolves keeping its own value; on C both
    // sides are "theirs", so the side in the record must be told by laptop (and instance id).
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, agent_b) = two_laptops(tmp.path(), "");
    let c = tmp.path().join("c");
    write_config(&c, "", "");
    run(&c, &["init", "--name", "laptopC", "--owner", "Team North"]).ok();
    let agent_c = Agent::start(&c);
    let ia = instance_id(&a);
    let x = Uuid::new_v4();
    put(&a, "person", &x, &json!({"status": "missing"}));
    sync(&a, agent_b.addr());
    sync(&a, agent_c.addr());
    patch(&a, "person", &x, &json!({"status": "in_shelter"}));
    std::thread::sleep(std::time::Duration::from_millis(5));
    // B's edit is newer: the merge keeps B's. C sees both edits and logs the conflict itself.
    patch(&b, "person", &x, &json!({"status": "found"}));
    sync(&a, agent_c.addr());
    sync(&b, agent_c.addr());
    sync(&a, agent_b.addr());
    // A resolves keeping its own value; the resolution reaches C.
    let cid = open_of(&a, &x)[0]["id"].to_string();
    run(&a, &["conflicts", "resolve", &cid, "--keep", "mine"]).ok();
    sync(&a, agent_c.addr());
    assert_eq!(
        get(&c, "person", &x).unwrap()["fields"]["status"],
        "in_shelter"
    );

    let cs = all_of(&c, &x);
    assert_eq!(cs.len(), 1, "{cs:?}");
    let v = &cs[0];
    assert_eq!(v["in_record_by"], ia, "{v}");
    let holder = v["sides"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["in_record"] == true)
        .expect("a side in the record");
    assert_eq!(holder["laptop"]["name"], "laptopA", "{v}");
    assert_eq!(holder["value"], "in_shelter", "{v}");
    let text = human(&c, &["conflicts", "--all"]);
    let line = text
        .lines()
        .find(|l| l.contains("In the record:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("laptopA"), "{text}");
    assert!(!line.contains("laptopB"), "{text}");
    let arrow = text
        .lines()
        .find(|l| l.contains("← in the record"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(arrow.contains("laptopA"), "{text}");
    // Newcomer item 2: C is told who resolved it and how, not a stamp.
    assert_eq!(v["resolved"]["how"], "laptopA kept its own value", "{v}");
    assert!(text.contains("laptopA kept its own value"), "{text}");
    sync(&a, agent_b.addr());
    let on_b = all_of(&b, &x);
    assert_eq!(
        on_b[0]["resolved"]["how"], "laptopA kept its own value",
        "{on_b:?}"
    );
}

#[test]
fn a_name_clash_is_cleared_by_renaming_this_laptops_record_in_conflicts_resolve() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, agent_b) = two_laptops(tmp.path(), "unique = [\"person.case_number\"]");
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
    sync(&a, agent_b.addr());
    let clash = |dir: &Path| -> Vec<Value> {
        conflicts(dir)
            .into_iter()
            .filter(|c| c["type"] == "name_clash" && c["resolved"].is_null())
            .collect()
    };
    for (name, dir, mine, theirs) in [("A", &a, id_a, id_b), ("B", &b, id_b, id_a)] {
        let o = clash(dir);
        assert_eq!(o.len(), 1, "{name}: {o:?}");
        assert_eq!(o[0]["value"], "K");
        assert_eq!(o[0]["in_record"], "both");
        // Both records, each with its id, its value and the laptop that wrote it.
        assert_eq!(side(&o[0], "mine")["record"], mine.to_string(), "{name}");
        assert_eq!(
            side(&o[0], "theirs")["record"],
            theirs.to_string(),
            "{name}"
        );
        assert_eq!(side(&o[0], "mine")["value"], "K");
        assert_eq!(side(&o[0], "theirs")["value"], "K");
    }
    let text = human(&b, &["conflicts"]);
    assert!(
        text.contains(&id_a.to_string()) && text.contains(&id_b.to_string()),
        "both records: {text}"
    );
    assert!(
        text.contains("laptopA") && text.contains("laptopB (this laptop)"),
        "{text}"
    );

    // On B the clash entry's own record is A's (B received it); renaming still renames B's.
    let cid = clash(&b)[0]["id"].to_string();
    // A value that is not JSON is told in --keep-value's words (it said "not a side: --keep
    // takes …"), and changes nothing (newcomer trial 8, finding 13).
    let bad = run(&b, &["conflicts", "resolve", &cid, "--keep-value", "K2"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("--keep-value takes a JSON value, and `K2` is not one: quote a string"),
        "{}",
        bad.stderr
    );
    assert!(!bad.stderr.contains("not a side"), "{}", bad.stderr);
    assert_eq!(clash(&b).len(), 1, "nothing resolved");
    let r = run(
        &b,
        &["conflicts", "resolve", &cid, "--keep-value", "\"K2\""],
    )
    .ok()
    .json();
    assert!(!r["resolved"].is_null(), "{r}");
    assert!(clash(&b).is_empty(), "B: {:?}", conflicts(&b));
    sync(&a, agent_b.addr());
    for (name, dir) in [("A", &a), ("B", &b)] {
        assert!(clash(dir).is_empty(), "{name}: {:?}", conflicts(dir));
        assert!(alive(dir, "person", &id_a) && alive(dir, "person", &id_b));
        assert_eq!(
            get(dir, "person", &id_a).unwrap()["fields"]["case_number"],
            "K",
            "{name}"
        );
        assert_eq!(
            get(dir, "person", &id_b).unwrap()["fields"]["case_number"],
            "K2",
            "{name}"
        );
    }
    // The rename is a revision with cause "resolution" on both laptops.
    for dir in [&a, &b] {
        let h = history(dir, "person", &id_b);
        assert_eq!(h.last().unwrap()["cause"], "resolution", "{h:?}");
    }
}

/// One request to the agent's HTTP API (api.json in `dir`): (status, JSON body).
fn api(dir: &Path, method: &str, path: &str, body: &Value) -> (u16, Value) {
    use std::io::{Read, Write};
    let f: Value = serde_json::from_slice(&std::fs::read(dir.join("api.json")).expect("api.json"))
        .expect("api.json is JSON");
    let addr = f["url"].as_str().unwrap().trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let body = body.to_string();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        f["token"].as_str().unwrap(),
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, rest) = raw.split_once("\r\n\r\n").expect("head and body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(rest).unwrap_or(Value::Null))
}

#[test]
fn the_http_resolve_endpoint_takes_every_option_of_the_cli_and_names_the_bad_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (d, name) in [(&a, "laptopA"), (&b, "laptopB")] {
        write_config(d, "", "");
        run(d, &["init", "--name", name, "--owner", "Team North"]).ok();
    }
    let agent_b = Agent::start_with(&b, &["--api-listen", "127.0.0.1:0"]);
    // Six field conflicts (mine, theirs, keep_from A, keep_from B, keep_value, a spare for bad
    // input) and two delete/edit conflicts (deleted, alive).
    let xs: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let ys: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
    for id in xs.iter().chain(&ys) {
        put(&a, "person", id, &json!({"s": "start"}));
    }
    sync(&a, agent_b.addr());
    for x in &xs {
        patch(&a, "person", x, &json!({"s": "fromA"}));
        patch(&b, "person", x, &json!({"s": "fromB"}));
    }
    for y in &ys {
        patch(&a, "person", y, &json!({"s": "editedOnA"}));
        delete(&b, "person", y);
    }
    sync(&a, agent_b.addr());
    let (status, list) = api(&b, "GET", "/v1/conflicts", &Value::Null);
    assert_eq!(status, 200);
    let cid = |id: &Uuid| -> u64 {
        let c = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["record"] == id.to_string())
            .unwrap_or_else(|| panic!("a conflict on {id}: {list}"));
        // The API lists conflicts from this laptop's side too.
        assert!(c["sides"][0]["laptop"]["this_laptop"] == true, "{c}");
        c["id"].as_u64().unwrap()
    };
    let resolve = |id: &Uuid, body: Value| -> (u16, Value) {
        api(
            &b,
            "POST",
            &format!("/v1/conflicts/{}/resolve", cid(id)),
            &body,
        )
    };

    // Bad input first: 400 naming the field, nothing written.
    let spare = &xs[5];
    for (body, code, field) in [
        (json!({"keep": "maybe"}), "INVALID_KEEP", "keep"),
        (json!({"keep": 3}), "INVALID_KEEP", "keep"),
        (json!({}), "INVALID_KEEP", "keep"),
        (
            json!({"keep": "mine", "keep_value": 1}),
            "INVALID_KEEP",
            "keep",
        ),
        (json!({"keep_from": 7}), "INVALID_KEEP_FROM", "keep_from"),
        (
            json!({"keep_from": "nobody"}),
            "INVALID_KEEP_FROM",
            "keep_from",
        ),
        (json!({"keep": "deleted"}), "BAD_RESOLUTION", "keep"),
        (
            json!({"keep_value": "x", "record": "nope"}),
            "INVALID_RECORD",
            "record",
        ),
        (
            json!({"record": Uuid::new_v4()}),
            "INVALID_RECORD",
            "record",
        ),
        (
            json!({"keep_value": "x", "record": Uuid::new_v4()}),
            "INVALID_RECORD",
            "record",
        ),
        (json!({"kep": "mine"}), "UNKNOWN_FIELD", "kep"),
        (json!(["mine"]), "INVALID_BODY", "body"),
    ] {
        let (status, e) = resolve(spare, body.clone());
        assert_eq!(status, 400, "{body}: {e}");
        assert_eq!(e["code"], code, "{body}: {e}");
        assert_eq!(e["field"], field, "{body}: {e}");
        assert!(!e["message"].as_str().unwrap_or("").is_empty(), "{e}");
    }
    assert_eq!(get(&b, "person", spare).unwrap()["fields"]["s"], "fromB");
    let (status, _) = api(
        &b,
        "POST",
        "/v1/conflicts/999/resolve",
        &json!({"keep": "mine"}),
    );
    assert_eq!(status, 404);

    // Every option, relative to B (the laptop the API belongs to).
    let want = [
        (&xs[0], json!({"keep": "mine"}), "fromB"),
        (&xs[1], json!({"keep": "theirs"}), "fromA"),
        (&xs[2], json!({"keep_from": "laptopA"}), "fromA"),
        (&xs[3], json!({"keep_from": agent_b.instance()}), "fromB"),
        (&xs[4], json!({"keep_value": "agreed"}), "agreed"),
    ];
    for (n, (id, body, _)) in want.iter().enumerate() {
        let (status, c) = resolve(id, body.clone());
        assert_eq!(status, 200, "{body}: {c}");
        assert!(c["resolved"].is_object(), "{c}");
        assert_eq!(c["why"], "resolved by laptopB", "{c}");
        // Laptops by name (or "this laptop"), never by instance id.
        let how = match n {
            2 => Some("kept the value written by laptopA"),
            3 => Some("kept the value written by this laptop"),
            // The new value is in the log: no side of the view holds it.
            4 => Some("set a new value: \"agreed\""),
            _ => None,
        };
        if let Some(how) = how {
            assert_eq!(c["resolved"]["how"], how, "{c}");
        }
    }
    let (status, c) = resolve(&ys[0], json!({"keep": "deleted"}));
    assert_eq!((status, &c["in_record"]), (200, &json!("deleted")), "{c}");
    let (status, c) = resolve(&ys[1], json!({"keep": "alive"}));
    assert_eq!((status, &c["in_record"]), (200, &json!("alive")), "{c}");
    // Resolving twice is refused, naming the option.
    let (status, e) = resolve(&ys[1], json!({"keep": "alive"}));
    assert_eq!(
        (status, e["code"].as_str()),
        (400, Some("BAD_RESOLUTION")),
        "{e}"
    );

    sync(&a, agent_b.addr());
    for dir in [&a, &b] {
        for (id, _, value) in &want {
            assert_eq!(
                get(dir, "person", id).unwrap()["fields"]["s"],
                *value,
                "{id}"
            );
        }
        assert!(!alive(dir, "person", &ys[0]), "kept deleted");
        assert!(alive(dir, "person", &ys[1]), "kept alive");
        assert_eq!(
            get(dir, "person", &ys[1]).unwrap()["fields"]["s"],
            "editedOnA"
        );
    }
}

#[test]
fn history_tells_a_record_created_on_two_laptops_as_the_same_record() {
    // Newcomer item 12: one keyed record created on A and B before they synced.
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, agent_b) = two_laptops(tmp.path(), "");
    let x = Uuid::new_v4();
    put(&a, "person", &x, &json!({"name": "Chidi Eze"}));
    put(&b, "person", &x, &json!({"name": "Chidi Eze", "age": 41}));
    sync(&a, agent_b.addr());
    let text = human(&a, &["history", "person", &x.to_string()]);
    let created: Vec<&str> = text.lines().filter(|l| l.contains("created by")).collect();
    assert_eq!(created.len(), 2, "{text}");
    assert!(!created[0].contains("too"), "{text}");
    // The id was given (`put --id`), not derived from an import key: no "same key".
    assert!(
        created[1].ends_with("created by laptopB too (same record id)"),
        "{text}"
    );

    // The same row imported with --key on both: its id is the key's, and history says so.
    let csv = tmp.path().join("people.csv");
    std::fs::write(&csv, "case_number,name\nA-1,Ngozi Obi\n").unwrap();
    for d in [&a, &b] {
        run(
            d,
            &[
                "import",
                "person",
                csv.to_str().unwrap(),
                "--key",
                "case_number",
            ],
        )
        .ok();
    }
    sync(&a, agent_b.addr());
    let id = run(&a, &["list", "person"])
        .ok()
        .lines()
        .into_iter()
        .find(|r| r["fields"]["case_number"] == "A-1")
        .expect("the imported record")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let text = human(&a, &["history", "person", &id]);
    let created: Vec<&str> = text.lines().filter(|l| l.contains("created by")).collect();
    assert_eq!(created.len(), 2, "{text}");
    assert!(
        created[1].ends_with("created by laptopB too (same import key: case_number \"A-1\")"),
        "{text}"
    );
}
