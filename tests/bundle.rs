//! Sync by USB stick, end to end with real `fieldsync` processes: bundles carried A → B → C
//! with edits, deletes and a conflict on the way, then C and A sync over mutual TLS and exchange
//! only what is new; refused bundles (altered, truncated, another deployment's, a revoked
//! writer's) apply nothing; reading twice or an older bundle changes nothing; a read killed
//! with SIGKILL between pages finishes on the next read without doubling anything.

mod common;

use common::agent::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use uuid::Uuid;

/// `bundle write FILE --for ID` (or `--all` for `None`) from `dir`; the printed summary.
#[track_caller]
fn write_bundle(dir: &Path, file: &Path, target: Option<&str>) -> Value {
    ensure_member(dir);
    let f = file.to_str().unwrap();
    let out = match target {
        Some(t) => run(dir, &["bundle", "write", f, "--for", t]),
        None => run(dir, &["bundle", "write", f, "--all"]),
    };
    out.ok().json()
}

/// `bundle read FILE` on `dir`: the report (panics unless it succeeds).
#[track_caller]
fn read_bundle(dir: &Path, file: &Path) -> Value {
    ensure_member(dir);
    run(dir, &["bundle", "read", file.to_str().unwrap()])
        .ok()
        .json()
}

/// `bundle read FILE` on `dir`, expected to be refused with exit code 2 and `words` in the
/// one-line error; checks nothing of it was applied.
#[track_caller]
fn refused(dir: &Path, file: &Path, words: &[&str]) {
    ensure_member(dir);
    let before = digest(dir);
    let out = run(dir, &["bundle", "read", file.to_str().unwrap()]).code(2);
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "one line: {out}");
    for w in words {
        assert!(err.contains(w), "{w:?} not in {err:?}");
    }
    assert!(!err.contains("{ "), "no debug format: {err}");
    assert_eq!(digest(dir), before, "a refused bundle changed the data");
}

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::new_v4()).collect()
}

#[test]
fn a_stick_carries_changes_a_to_b_to_c_and_the_next_network_sync_sends_only_what_is_new() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, c) = (data_dir(root, "a"), data_dir(root, "c"));
    // B writes one record per page: what C learns about A must not depend on A's records
    // being in the bundle's last page.
    let b = root.join("b");
    write_config(&b, "", "page_records = 1");
    for d in [&a, &b, &c] {
        ensure_member(d);
    }
    let (ib, ic) = (instance_id(&b), instance_id(&c));
    let name_a = status(&a)["name"].as_str().unwrap().to_string();
    let r = ids(6);
    for (i, id) in r.iter().take(5).enumerate() {
        put(&a, "person", id, &person(i));
    }

    // A → stick → B.
    let stick1 = root.join("a-for-b-1.fsbundle");
    let w = write_bundle(&a, &stick1, Some(&ib));
    assert_eq!(w["records"], 5, "{w}");
    let got = read_bundle(&b, &stick1);
    assert_eq!(
        (&got["records"], &got["applied"], &got["conflicts"]),
        (&json!(5), &json!(5), &json!(0)),
        "{got}"
    );
    assert_eq!(got["from_name"], name_a.as_str(), "{got}");
    assert_eq!(got["positions_adopted"], true, "{got}");
    // The same bundle again changes nothing (its pages are already in).
    let again = read_bundle(&b, &stick1);
    assert_eq!(again["applied"], 0, "{again}");
    assert_eq!(again["pages_skipped"], again["pages"], "{again}");

    // Concurrent edits of r[2] on A and B; B also edits, deletes and creates.
    patch(&a, "person", &r[2], &json!({"status": "from_a"}));
    patch(&b, "person", &r[2], &json!({"status": "from_b"}));
    patch(&b, "person", &r[0], &json!({"age": 99}));
    delete(&b, "person", &r[1]);

    // A writes the next stick while its agent runs, B reads it while its agent runs.
    let mut agent_a = Agent::start(&a);
    let stick2 = root.join("a-for-b-2.fsbundle");
    write_bundle(&a, &stick2, Some(&ib));
    let mut agent_b = Agent::start(&b);
    let got = read_bundle(&b, &stick2);
    assert_eq!(got["applied"], 1, "only r[2] changed: {got}");
    assert_eq!(got["conflicts"], 1, "{got}");
    put(&b, "person", &r[5], &person(5));
    // An older bundle afterwards is harmless.
    let before = digest(&b);
    let old = read_bundle(&b, &stick1);
    assert_eq!(old["applied"], 0, "{old}");
    assert_eq!(digest(&b), before);
    // Human output names the writer and the counts.
    let human = run(&b, &["--human", "bundle", "read", stick2.to_str().unwrap()]).ok();
    assert!(
        human.stdout.starts_with(&format!(
            "Read {} from {name_a} (written ",
            stick2.display()
        )),
        "{human}"
    );
    agent_b.stop();

    // B → stick → C: B's bundle for C carries A's changes too.
    let stick3 = root.join("b-for-c.fsbundle");
    write_bundle(&b, &stick3, Some(&ic));
    let got = read_bundle(&c, &stick3);
    assert_eq!(
        (&got["records"], &got["applied"]),
        (&json!(6), &json!(6)),
        "{got}"
    );
    assert_eq!(get(&c, "person", &r[0]).unwrap()["fields"]["age"], 99);
    assert!(!alive(&c, "person", &r[1]), "B's delete reached C");
    assert!(alive(&c, "person", &r[5]));
    let open: Vec<Value> = conflicts(&c)
        .into_iter()
        .filter(|x| x["record"] == r[2].to_string() && x["resolved"].is_null())
        .collect();
    assert_eq!(open.len(), 1, "the conflict travelled to C: {open:?}");

    // A edits once more, then C and A sync over the network: C gets only that edit, A gets
    // only B's four changes (r[0], r[1], r[2], r[5]); nothing already carried is sent twice.
    patch(&a, "person", &r[3], &json!({"notes": "new at A"}));
    let s = sync(&c, agent_a.addr());
    assert_eq!(s.received.records, 1, "C received: {:?}", s.received.raw);
    assert_eq!(s.sent.records, 4, "C sent: {:?}", s.sent.raw);
    assert_eq!(digest(&a), digest(&c), "A and C converged");
    assert_eq!(
        get(&c, "person", &r[3]).unwrap()["fields"]["notes"],
        "new at A"
    );
    // A second sync moves nothing.
    assert_eq!(sync(&c, agent_a.addr()).moved(), 0);
    agent_a.stop();
}

#[test]
fn altered_truncated_foreign_and_revoked_bundles_are_refused_and_apply_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("camp");
    std::fs::create_dir_all(&root).unwrap();
    let (a, c) = (data_dir(&root, "a"), data_dir(&root, "c"));
    ensure_member(&a);
    ensure_member(&c);
    let ic = instance_id(&c);
    for (i, id) in ids(3).iter().enumerate() {
        put(&a, "person", id, &person(i));
    }
    let good = root.join("good.fsbundle");
    write_bundle(&a, &good, Some(&ic));
    let bytes = std::fs::read(&good).unwrap();
    let name = |n: &str| root.join(n);

    // A flipped byte in the pages, in the header, in the signature.
    for (file, at) in [
        ("body.fsbundle", bytes.len() - 120),
        ("sig.fsbundle", bytes.len() - 3),
    ] {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        std::fs::write(name(file), &b).unwrap();
        refused(&c, &name(file), &["altered", "nothing applied"]);
    }
    let text = String::from_utf8_lossy(&bytes);
    let at = text.find("\"written_at\":\"").unwrap() + 16;
    let mut b = bytes.clone();
    b[at] = if b[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(name("header.fsbundle"), &b).unwrap();
    refused(
        &c,
        &name("header.fsbundle"),
        &["altered", "nothing applied"],
    );

    // Cut short (a stick pulled out while copying).
    std::fs::write(name("cut.fsbundle"), &bytes[..bytes.len() * 6 / 10]).unwrap();
    refused(&c, &name("cut.fsbundle"), &["truncated", "nothing applied"]);
    std::fs::write(name("cut-header.fsbundle"), &bytes[..30]).unwrap();
    refused(&c, &name("cut-header.fsbundle"), &["truncated"]);
    // Not a bundle at all.
    std::fs::write(name("notes.txt"), "shopping list").unwrap();
    refused(&c, &name("notes.txt"), &["not a fieldsync bundle"]);

    // Another deployment's laptop (its own CA: another test root).
    let other_root = tmp.path().join("other");
    std::fs::create_dir_all(&other_root).unwrap();
    let x = data_dir(&other_root, "x");
    put(&x, "person", &Uuid::new_v4(), &person(9));
    let foreign = root.join("foreign.fsbundle");
    write_bundle(&x, &foreign, None);
    refused(&c, &foreign, &["another deployment", "nothing applied"]);

    // The intact bundle still reads.
    assert_eq!(read_bundle(&c, &good)["applied"], 3);
    assert_eq!(live_count(&c, "person"), 3);

    // The coordinator revokes A; its revocation reaches C on a stick; A's next bundle is
    // refused there.
    let coordinator = root.join(".coordinator");
    let ia = instance_id(&a);
    let ca = root.join("test-ca.fsca");
    run(
        &coordinator,
        &[
            "mesh",
            "revoke",
            &ia,
            "--ca",
            ca.to_str().unwrap(),
            "--reason",
            "stolen",
        ],
    )
    .ok();
    let revocation = root.join("revocation.fsbundle");
    write_bundle(&coordinator, &revocation, Some(&ic));
    read_bundle(&c, &revocation);
    put(&a, "person", &Uuid::new_v4(), &person(4));
    let later = root.join("later.fsbundle");
    write_bundle(&a, &later, Some(&ic));
    refused(&c, &later, &["revoked", "nothing applied"]);
    assert_eq!(live_count(&c, "person"), 3);

    // Nor is anything written for the revoked laptop (trial 10: a laptop revoked as lost read
    // a whole deployment from a bundle written for it), by the coordinator or by C, which
    // holds the revocation.
    for dir in [&coordinator, &c] {
        let for_a = root.join("for-a.fsbundle");
        let o = run(
            dir,
            &["bundle", "write", for_a.to_str().unwrap(), "--for", &ia],
        );
        let o = o.code(2);
        for w in [
            "was revoked by the deployment",
            "stolen",
            "no bundle is written",
        ] {
            assert!(o.stderr.contains(w), "{}", o.stderr);
        }
        assert!(!o.stderr.contains("  "), "one plain line: {}", o.stderr);
        assert!(!for_a.exists(), "nothing was written");
    }
}

#[test]
fn bundle_show_describes_a_bundle_without_applying_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("camp");
    std::fs::create_dir_all(&root).unwrap();
    let (a, c) = (data_dir(&root, "a"), data_dir(&root, "c"));
    ensure_member(&a);
    ensure_member(&c);
    let (ia, ic) = (instance_id(&a), instance_id(&c));
    let name_a = status(&a)["name"].as_str().unwrap().to_string();
    for (i, id) in ids(4).iter().enumerate() {
        put(&a, "person", id, &person(i));
    }
    let file = root.join("for-c.fsbundle");
    write_bundle(&a, &file, Some(&ic));
    let v = run(&c, &["bundle", "show", file.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(v["writer"], ia.as_str(), "{v}");
    assert_eq!(v["writer_name"], name_a.as_str(), "{v}");
    assert_eq!(v["for"], ic.as_str(), "{v}");
    assert_eq!(v["records"], 4, "{v}");
    assert_eq!(v["readable_here"], true, "{v}");
    assert_eq!(v["format"], 2, "{v}");
    assert!(v["knowledge"][&ia].as_u64().unwrap() > 0, "{v}");
    assert_eq!(live_count(&c, "person"), 0, "show applies nothing");
    // The record contents are not in the file in the clear.
    let bytes = std::fs::read(&file).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("Red Cross Team B"));
    // Shown on the laptop that wrote it: described, with the reason it would be refused.
    let own = run(&a, &["bundle", "show", file.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(own["readable_here"], false, "{own}");
    assert!(
        own["problem"]
            .as_str()
            .unwrap()
            .contains("written by this laptop"),
        "{own}"
    );
    // On a laptop outside any deployment: described, with the reason it cannot be read.
    let outsider = plaintext_data_dir(&root, "outsider");
    let v = run(&outsider, &["bundle", "show", file.to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(
        (&v["records"], &v["readable_here"]),
        (&json!(4), &json!(false)),
        "{v}"
    );
    assert!(v["problem"].as_str().unwrap().contains("not joined"), "{v}");
    // Read by a laptop it was not written for: records merged, no position adopted.
    let b = data_dir(&root, "b");
    let got = read_bundle(&b, &file);
    assert_eq!(got["applied"], 4, "{got}");
    assert_eq!(got["positions_adopted"], false, "{got}");
    assert!(
        got["note"].as_str().unwrap().contains("not this laptop"),
        "{got}"
    );
    let human = run(&c, &["--human", "bundle", "show", file.to_str().unwrap()]).ok();
    assert!(
        human.stdout.contains(&format!("from {name_a} (")),
        "{human}"
    );
    assert!(human.stdout.contains("4 records in 1 page ("), "{human}");
    // A person's time (local, to the minute), not the exact RFC 3339 nanoseconds.
    let exact = v["written_at"].as_str().unwrap();
    assert!(!human.stdout.contains(exact), "{human}");
    let minute = chrono::DateTime::parse_from_rfc3339(exact)
        .unwrap()
        .with_timezone(&chrono::Local)
        .format("written %Y-%m-%d %H:%M,")
        .to_string();
    assert!(human.stdout.contains(&minute), "{human}");
}

/// Kills a `bundle read` after `pages` pages were committed (SIGKILL); returns when dead.
fn read_and_kill_after(dir: &Path, file: &Path, pages: usize) {
    let mut child = Command::new(bin())
        .args(["--data-dir", dir.to_str().unwrap(), "bundle", "read"])
        .arg(file)
        .env("FIELDSYNC_BUNDLE_PAGE_DELAY_MS", "400")
        .env("RUST_LOG", "fieldsync=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bundle read");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("bundle page applied") && tx.send(()).is_err() {
                break;
            }
        }
    });
    let mut seen = 0;
    while seen < pages {
        if rx.recv_timeout(CLI_TIMEOUT).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bundle read committed only {seen} pages");
        }
        seen += 1;
    }
    child.kill().expect("SIGKILL the reader");
    child.wait().expect("reap the reader");
    drop(rx);
    let _ = reader.join();
}

#[test]
fn a_read_killed_between_pages_finishes_on_the_next_read_and_nothing_is_doubled() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a: PathBuf = root.join("a");
    write_config(&a, "", "page_records = 50");
    let c = data_dir(root, "c");
    ensure_member(&a);
    ensure_member(&c);
    let ic = instance_id(&c);
    let records = people(600);
    import(&a, "person", &records);
    let (probe, _) = records[599];
    patch(&a, "person", &probe, &json!({"age": 1}));
    let file = root.join("big.fsbundle");
    let w = write_bundle(&a, &file, Some(&ic));
    assert!(w["pages"].as_u64().unwrap() >= 12, "{w}");

    read_and_kill_after(&c, &file, 3);
    let partial = live_count(&c, "person");
    assert!(
        (150..600).contains(&partial),
        "killed mid-read: {partial} records"
    );

    let got = read_bundle(&c, &file);
    assert!(got["pages_skipped"].as_u64().unwrap() >= 3, "{got}");
    assert_eq!(got["applied"].as_u64().unwrap(), 600 - partial, "{got}");
    assert_eq!(live_count(&c, "person"), 600);
    assert_eq!(
        history(&c, "person", &probe).len(),
        2,
        "created, patched: once each"
    );
    assert_eq!(digest(&a), digest(&c));
    let again = read_bundle(&c, &file);
    assert_eq!(again["applied"], 0, "{again}");
    assert_eq!(digest(&a), digest(&c));
}

#[test]
fn a_credential_from_before_bundles_gets_a_clear_fix_and_works_after_enrolling_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, c) = (data_dir(root, "a"), data_dir(root, "c"));
    ensure_member(&a);
    ensure_member(&c);
    let ic = instance_id(&c);
    put(&a, "person", &Uuid::new_v4(), &person(1));
    let file = root.join("for-c.fsbundle");
    write_bundle(&a, &file, Some(&ic));
    // C's credential as `mesh enroll` wrote it before bundles existed: no bundle key.
    let cred_path = c.join("credential.fsmesh");
    let mut cred: Value = serde_json::from_str(&std::fs::read_to_string(&cred_path).unwrap())
        .expect("credential is JSON");
    cred.as_object_mut().unwrap().remove("bundle_key");
    std::fs::write(&cred_path, cred.to_string()).unwrap();
    let out = run(&c, &["bundle", "read", file.to_str().unwrap()]).code(2);
    assert!(
        out.stderr
            .contains(&format!("fieldsync mesh enroll --instance {ic}")),
        "{out}"
    );
    assert_eq!(live_count(&c, "person"), 0);
    // The documented fix: enrolled again under the same instance id, same data.
    let new = root.join("c-again.fsmesh");
    let ca = root.join("test-ca.fsca");
    run(
        &root.join(".coordinator"),
        &[
            "mesh",
            "enroll",
            "--instance",
            &ic,
            "--out",
            new.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
    )
    .ok();
    run(&c, &["init", "--mesh", new.to_str().unwrap()]).ok();
    assert_eq!(instance_id(&c), ic);
    assert_eq!(read_bundle(&c, &file)["applied"], 1);
}
