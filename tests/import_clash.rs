//! The same person registered by hand on one laptop and imported with `--key` on another
//! (trial 8, finding 1): the import's key travels in the replicated table `fs_import_keys`, so
//! every laptop keeps it unique like a configured unique field and the two records become a
//! name clash on every laptop, never two silent copies. Real binaries, real agents, mutual TLS
//! on 127.0.0.1.

mod common;

use common::agent::{self, Agent};
use serde_json::{json, Value};
use std::path::Path;
use uuid::Uuid;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Panics unless `out` exited with `code` and its stderr holds every word of `words`.
#[track_caller]
fn fails(out: agent::Output, code: i32, words: &[&str]) {
    let out = out.code(code);
    for w in words {
        assert!(out.stderr.contains(w), "{w:?} missing:\n{out}");
    }
}

/// The open name clashes of `dir`.
fn clashes(dir: &Path) -> Vec<Value> {
    agent::conflicts(dir)
        .into_iter()
        .filter(|c| c["type"] == "name_clash" && c["resolved"].is_null())
        .collect()
}

/// The two records a name clash names, in id order.
fn pair(c: &Value) -> Vec<String> {
    let mut p = vec![
        c["record"].as_str().expect("record").to_string(),
        c["other_record"]
            .as_str()
            .expect("other_record")
            .to_string(),
    ];
    p.sort();
    p
}

/// The records of `table` whose `field` is `value`.
fn with(dir: &Path, table: &str, field: &str, value: &str) -> Vec<Value> {
    common::parse_lines(&agent::export(dir, table))
        .into_iter()
        .filter(|r| r["fields"][field] == value)
        .collect()
}

#[test]
fn a_record_put_on_one_laptop_and_imported_on_another_is_a_name_clash_on_every_laptop() {
    let tmp = tempfile::tempdir().unwrap();
    let [a, b, c]: [_; 3] = agent::members(tmp.path(), &["a", "b", "c"])
        .try_into()
        .unwrap();
    // On B, while apart: the person is registered at the camp gate (a random id).
    let put_b = Uuid::new_v4();
    agent::put(
        &b,
        "person",
        &put_b,
        &json!({"case_number": "C-0008", "name": "Ladi Pam", "notes": "registered at camp gate"}),
    );
    // On A: the registry arrives and is imported by case number.
    let list = tmp.path().join("registry-c8.csv");
    std::fs::write(
        &list,
        "case_number,name,phone\nC-0007,Musa Bello,08071110000\nC-0008,Ladi Pam,08071112222\n",
    )
    .unwrap();
    let first = agent::run(
        &a,
        &["import", "person", path_str(&list), "--key", "case_number"],
    )
    .ok()
    .json();
    assert_eq!(first["inserted"], 2, "{first}");
    let imported = with(&a, "person", "case_number", "C-0008")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(clashes(&a).is_empty(), "nothing to clash with yet on A");

    let agent_b = Agent::start(&b);
    agent::sync(&a, agent_b.addr());
    let both = {
        let mut p = vec![imported.clone(), put_b.to_string()];
        p.sort();
        p
    };
    // Both records stay (both are real writes), and each laptop logs the same clash: the same
    // two records, key field and value.
    for (name, dir) in [("A", &a), ("B", &b)] {
        assert_eq!(
            with(dir, "person", "case_number", "C-0008").len(),
            2,
            "{name}"
        );
        let open = clashes(dir);
        assert_eq!(open.len(), 1, "{name}: {open:?}");
        assert_eq!(pair(&open[0]), both, "{name}: {open:?}");
        assert_eq!(open[0]["field"], "case_number", "{name}");
        assert_eq!(open[0]["value"], "C-0008", "{name}");
        let sides: Vec<&str> = open[0]["sides"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["record"].as_str().unwrap())
            .collect();
        assert!(
            sides.contains(&imported.as_str()) && sides.contains(&put_b.to_string().as_str()),
            "{name}: both records listed: {open:?}"
        );
        // Each side names its record, so a person tells the two apart (the console shows it).
        assert!(
            open[0]["sides"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["record_name"] == "Ladi Pam"),
            "{name}: {open:?}"
        );
        // `status` counts it.
        let st = agent::status(dir);
        assert_eq!(st["unresolved_conflicts"], 1, "{name}: {st}");
        // Reaching a record by the key does not silently pick one of the two (trial 10).
        let out = agent::run(dir, &["get", "person", "C-0008"]).code(2);
        assert!(
            out.stderr
                .contains("2 records of person have the key \"C-0008\"")
                && out.stderr.contains(&format!("{imported} \"Ladi Pam\""))
                && out.stderr.contains(&put_b.to_string()),
            "{name}: {out}"
        );
    }
    // `verify` lists the table of import keys, fieldsync's own, apart from the person's
    // (`system`), and says it in words to a person, not as `fs_import_keys`.
    let out = agent::run(&a, &["verify", agent_b.addr()]);
    let checks = common::parse_lines(&out.stdout);
    let of_table = |t: &str| checks.iter().find(|c| c["table"] == t).cloned();
    let keys_row = of_table("fs_import_keys").unwrap_or_else(|| panic!("{out}"));
    assert_eq!(keys_row["system"], true, "{out}");
    let person_row = of_table("person").unwrap_or_else(|| panic!("{out}"));
    assert!(person_row.get("system").is_none(), "{out}");
    let said = agent::run(&a, &["verify", agent_b.addr(), "--human"]).stdout;
    assert!(
        said.contains("import keys (fieldsync's own): in sync") && !said.contains("fs_"),
        "{said}"
    );

    // A record written with `put` (at the gate) is reached by its key like an imported one.
    let gate = Uuid::new_v4();
    agent::put(
        &b,
        "person",
        &gate,
        &json!({"case_number": "G-0001", "name": "Amina Okafor"}),
    );
    let got = agent::run(&b, &["get", "person", "G-0001"]).ok().json();
    assert_eq!(got["id"], gate.to_string().as_str(), "{got}");

    // Re-importing the registry on a laptop holding both refuses, naming both ids.
    let before = agent::export(&b, "person");
    let out = agent::run(
        &b,
        &["import", "person", path_str(&list), "--key", "case_number"],
    );
    fails(out, 2, &[imported.as_str(), &put_b.to_string(), "C-0008"]);
    assert_eq!(agent::export(&b, "person"), before, "nothing was written");

    // The key reaches a third laptop with the records: the same clash there, and a second
    // C-0008 written there by hand is refused like a configured unique field's.
    // C also registered C-0007 by hand before it ever synced: B, which knows the key, logs
    // that clash as the record arrives; C as the key arrives.
    let gate_c = Uuid::new_v4();
    agent::put(
        &c,
        "person",
        &gate_c,
        &json!({"case_number": "C-0007", "name": "Musa Bello"}),
    );
    agent::sync(&c, agent_b.addr());
    let of = |dir: &Path, v: &str| -> Vec<Value> {
        clashes(dir)
            .into_iter()
            .filter(|c| c["value"] == v)
            .collect()
    };
    let open = of(&c, "C-0008");
    assert_eq!(open.len(), 1, "C: {open:?}");
    assert_eq!(pair(&open[0]), both, "C: {open:?}");
    for (name, dir) in [("B", &b), ("C", &c)] {
        let open = of(dir, "C-0007");
        assert_eq!(open.len(), 1, "{name}: {:?}", clashes(dir));
        assert!(pair(&open[0]).contains(&gate_c.to_string()), "{name}");
    }
    let again = agent::run(
        &c,
        &[
            "put",
            "person",
            r#"{"case_number":"C-0008","name":"again"}"#,
        ],
    );
    assert_ne!(again.code, 0, "{again}");
    assert!(again.stderr.contains("C-0008"), "{again}");
    // C wrote neither C-0008 record: its hint names the record to rename (it offered renaming
    // "this laptop's record", which is then refused), and the refusal is in the CLI's words.
    let cid = open[0]["id"].to_string();
    let shown = agent::run(&c, &["conflicts", "--human"]).ok().stdout;
    assert!(
        shown.contains(&format!(
            "Resolve: fieldsync conflicts resolve {cid} --record ID --keep-value NEW_VALUE \
             (renames record ID, one of the two), or delete one of the two"
        )),
        "{shown}"
    );
    let refused = agent::run(
        &c,
        &["conflicts", "resolve", &cid, "--keep-value", "\"C-0008x\""],
    );
    assert_eq!(refused.code, 2, "{refused}");
    assert!(
        refused
            .stderr
            .contains("this laptop wrote neither of the two records")
            && refused
                .stderr
                .contains("say which one to rename with --record ID")
            && !refused.stderr.contains("HTTP"),
        "{refused}"
    );
    // `--keep mine` is said not to fit a name clash, with the clash's own ways out (a newcomer
    // got the options of every kind of conflict).
    let mine = agent::run(&c, &["conflicts", "resolve", &cid, "--keep", "mine"]);
    assert_eq!(mine.code, 2, "{mine}");
    assert!(
        mine.stderr.contains(&format!(
            "conflict {cid} is a name clash: two records of person share case_number \"C-0008\""
        )) && mine.stderr.contains("rename one record with --keep-value")
            && mine.stderr.contains("fieldsync delete person ID"),
        "{mine}"
    );

    // Settling it on one laptop settles it everywhere: B deletes its gate record.
    agent::delete(&b, "person", &put_b);
    assert_eq!(
        agent::run(&b, &["get", "person", "C-0008"]).ok().json()["id"],
        imported.as_str(),
        "one record has the key again"
    );
    agent::sync(&a, agent_b.addr());
    agent::sync(&c, agent_b.addr());
    for (name, dir) in [("A", &a), ("B", &b), ("C", &c)] {
        assert!(of(dir, "C-0008").is_empty(), "{name}: {:?}", clashes(dir));
        assert!(!agent::alive(dir, "person", &put_b), "{name}");
        let kept = Uuid::parse_str(&imported).unwrap();
        assert!(agent::alive(dir, "person", &kept), "{name}");
    }
}

/// Renaming one record of a key clash (`--keep-value`) clears it on both laptops; a key of two
/// fields clashes on both values together and is renamed with one value per field.
#[test]
fn a_key_clash_of_two_fields_clears_on_both_laptops_once_one_record_is_renamed() {
    let tmp = tempfile::tempdir().unwrap();
    let [a, b]: [_; 2] = agent::members(tmp.path(), &["a", "b"]).try_into().unwrap();
    // Its short id has letters: one of eight digits only would be a conflict number (a
    // random id's is, one time in 40).
    let gate = Uuid::parse_str("a1b2c3d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d").unwrap();
    agent::put(
        &b,
        "person",
        &gate,
        &json!({"name": "Ann", "district": "North", "age": 34}),
    );
    // Same name in another district: no clash.
    let other = Uuid::new_v4();
    agent::put(
        &b,
        "person",
        &other,
        &json!({"name": "Ann", "district": "South"}),
    );
    let list = tmp.path().join("camps.csv");
    std::fs::write(&list, "name,district,status\nAnn,North,missing\n").unwrap();
    agent::run(
        &a,
        &[
            "import",
            "person",
            path_str(&list),
            "--key",
            "name,district",
        ],
    )
    .ok();
    let agent_b = Agent::start(&b);
    agent::sync(&a, agent_b.addr());
    for (name, dir) in [("A", &a), ("B", &b)] {
        let open = clashes(dir);
        assert_eq!(open.len(), 1, "{name}: {open:?}");
        assert_eq!(open[0]["field"], "name,district", "{name}");
        assert_eq!(open[0]["value"], json!(["Ann", "North"]), "{name}");
        assert!(pair(&open[0]).contains(&gate.to_string()), "{name}");
    }
    let cid = clashes(&b)[0]["id"].to_string();
    // One value for a key of two fields is refused, naming the key.
    let wrong = agent::run(
        &b,
        &["conflicts", "resolve", &cid, "--keep-value", r#""Ann B.""#],
    );
    assert_ne!(wrong.code, 0, "{wrong}");
    assert!(wrong.stderr.contains("name,district"), "{wrong}");
    // The record's short id, as `conflicts` shows it, is not a conflict number (trial 10: the
    // parser's "invalid digit found in string"), and is taken by --record; one that is neither
    // record of the clash is named as such.
    let short = gate.to_string()[..8].to_string();
    let mistaken = agent::run(&b, &["conflicts", "resolve", &short, "--keep", "mine"]).code(2);
    assert!(
        mistaken.stderr.contains("is not a conflict number")
            && !mistaken.stderr.contains("invalid digit"),
        "{mistaken}"
    );
    let rename = |record: &str| {
        agent::run(
            &b,
            &[
                "conflicts",
                "resolve",
                &cid,
                "--keep-value",
                r#"["Ann B.","North"]"#,
                "--record",
                record,
            ],
        )
    };
    let neither = rename(&other.to_string()[..8]).code(2);
    assert!(
        neither
            .stderr
            .contains("is not one of the records of conflict")
            && neither.stderr.contains(&gate.to_string()),
        "{neither}"
    );
    rename(&short).ok();
    agent::sync(&a, agent_b.addr());
    for (name, dir) in [("A", &a), ("B", &b)] {
        assert!(
            clashes(dir).is_empty(),
            "{name}: {:?}",
            agent::conflicts(dir)
        );
        let g = agent::get(dir, "person", &gate).unwrap();
        assert_eq!(g["fields"]["name"], "Ann B.", "{name}: {g}");
        assert_eq!(g["fields"]["district"], "North", "{name}: {g}");
    }
}

/// A key made by mistake (`--key name`: two people may share a name) is dropped on one laptop
/// and the drop reaches the others by sync: each accepts a second record with that name
/// again. Importing by the same key later makes it a key again, with its index built afresh
/// (a second newcomer found no way back from one `--key name`).
#[test]
fn an_import_key_dropped_on_one_laptop_is_dropped_on_every_laptop() {
    let tmp = tempfile::tempdir().unwrap();
    let [a, b]: [_; 2] = agent::members(tmp.path(), &["a", "b"]).try_into().unwrap();
    let list = tmp.path().join("people.csv");
    std::fs::write(&list, "case_number,name\nC-1,Ann Lee\nC-2,Bo Sani\n").unwrap();
    let by_name = agent::run(&a, &["import", "person", path_str(&list), "--key", "name"])
        .ok()
        .json();
    assert_eq!(by_name["new_key"], json!(["name"]), "{by_name}");
    let agent_b = Agent::start(&b);
    agent::sync(&a, agent_b.addr());
    let listed = agent::run(&b, &["import-keys", "list"]).ok().json();
    assert_eq!(
        listed,
        json!([{"table": "person", "key": ["name"]}]),
        "{listed}"
    );
    // B refuses a second Ann Lee while the key stands.
    let second = json!({"case_number": "C-9", "name": "Ann Lee"}).to_string();
    let refused = agent::run(&b, &["put", "person", &second]);
    assert_eq!(refused.code, 2, "{refused}");
    assert!(
        refused.stderr.contains("already used by record"),
        "{refused}"
    );

    // Dropped on A; a key the table does not have is named as such.
    fails(
        agent::run(&a, &["import-keys", "drop", "person", "case_number"]),
        1,
        &["case_number is not an import key of person: its import keys are name"],
    );
    let said = agent::run(&a, &["import-keys", "drop", "person", "name", "--human"])
        .ok()
        .stdout;
    assert!(
        said.starts_with("name is no longer an import key of person"),
        "{said}"
    );
    agent::sync(&a, agent_b.addr());
    for (who, dir) in [("A", &a), ("B", &b)] {
        let keys = agent::run(dir, &["import-keys", "list"]).ok().json();
        assert_eq!(keys, json!([]), "{who}: {keys}");
    }
    agent::run(&b, &["put", "person", &second]).ok();
    assert_eq!(with(&b, "person", "name", "Ann Lee").len(), 2);

    // A list imported by name again on A once B's second Ann Lee has arrived: a key again,
    // its index built from the records as they are now, so the two Ann Lees are a name clash
    // (not a stale index entry refusing or missing one). (The first list again is refused:
    // its row Ann Lee cannot tell which of the two it updates.)
    agent::sync(&a, agent_b.addr());
    fails(
        agent::run(&a, &["import", "person", path_str(&list), "--key", "name"]),
        2,
        &["both have this key, so the row cannot tell which to update"],
    );
    // Meanwhile Bo Sani was renamed: an index entry left from the dropped key would refuse a
    // new Bo Sani once the key is back.
    let bo = with(&a, "person", "name", "Bo Sani")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    agent::run(&a, &["patch", "person", &bo, r#"{"name":"Bob Sani"}"#]).ok();
    let more = tmp.path().join("more.csv");
    std::fs::write(
        &more,
        "case_number,name
C-3,Cy Obi
",
    )
    .unwrap();
    let again = agent::run(&a, &["import", "person", path_str(&more), "--key", "name"])
        .ok()
        .json();
    assert_eq!(again["new_key"], json!(["name"]), "{again}");
    let open = clashes(&a);
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["value"], "Ann Lee", "{open:?}");
    let new_bo = json!({"case_number": "C-4", "name": "Bo Sani"}).to_string();
    agent::run(&a, &["put", "person", &new_bo]).ok();

    // Two people named Ann Lee: keeping both cannot be said while name is a key (nothing
    // would carry it to B); dropping the key settles the clash on both laptops.
    agent::sync(&a, agent_b.addr());
    assert_eq!(
        clashes(&b).len(),
        1,
        "B learned the key and logged the clash"
    );
    let cid = clashes(&a)[0]["id"].to_string();
    fails(
        agent::run(&a, &["conflicts", "resolve", &cid, "--keep", "alive"]),
        2,
        &["is a name clash", "fieldsync import-keys drop person name"],
    );
    agent::run(&a, &["import-keys", "drop", "person", "name"]).ok();
    agent::sync(&a, agent_b.addr());
    for (who, dir) in [("A", &a), ("B", &b)] {
        assert!(clashes(dir).is_empty(), "{who}: {:?}", clashes(dir));
        let all = agent::conflicts(dir);
        assert!(
            all.iter().any(|c| c["resolved"]["how"]
                == "settled: name is no longer an import key of person (dropped)"),
            "{who}: {all:?}"
        );
    }
}
