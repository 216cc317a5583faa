//! End-to-end LAN tests: real `fieldsync run` agents in network namespaces on one bridge,
//! finding each other with real mDNS multicast; no peer address is configured unless a test
//! says so. Needs root (see tests/common/netns.rs); skipped locally otherwise, fails in CI.
//!
//! Run with `cargo test --test lan -- --nocapture` to see the measured times.

#[path = "common/netns.rs"]
mod netns;

use netns::{poll, Lab};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Generous bound for anything that should happen "within seconds".
const SETTLE: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_millis(100);

/// `fieldsync digest` of host `i`: (live record count, sha256).
fn digest(lab: &Lab, i: usize) -> (u64, String) {
    let v = lab.cli_json(i, &["digest"]);
    (
        v["count"].as_u64().expect("count"),
        v["sha256"].as_str().expect("sha256").to_string(),
    )
}

/// Waits until every host in `hosts` has the same digest with `count` records; returns it.
fn converge(lab: &Lab, hosts: &[usize], count: u64, what: &str) -> (u64, String) {
    let mut last = Vec::new();
    poll(SETTLE, EVERY, || {
        last = hosts.iter().map(|&i| digest(lab, i)).collect::<Vec<_>>();
        let same = last.windows(2).all(|w| w[0] == w[1]);
        (same && last[0].0 == count).then(|| last[0].clone())
    })
    .unwrap_or_else(|| panic!("{what}: hosts {hosts:?} did not converge on {count} records within {SETTLE:?}; digests: {last:?}"))
}

/// Waits until host `i` has `count` live records; returns how long it took.
fn wait_count(lab: &Lab, i: usize, count: u64, what: &str) -> Duration {
    let t = Instant::now();
    let mut last = 0;
    poll(SETTLE, EVERY, || {
        last = digest(lab, i).0;
        (last == count).then_some(())
    })
    .unwrap_or_else(|| {
        panic!("{what}: host {i} has {last} records, not {count}, after {SETTLE:?}")
    });
    t.elapsed()
}

/// `fieldsync peers` of host `i`.
fn peers(lab: &Lab, i: usize) -> Vec<Value> {
    let out = lab.cli(i, &["peers"]);
    assert_eq!(out.code, 0, "peers: {}", out.stderr);
    out.json_lines()
}

fn put(lab: &Lab, i: usize, table: &str, id: &str, fields: Value) {
    lab.cli_ok(i, &["put", table, "--id", id, &fields.to_string()]);
}

fn patch(lab: &Lab, i: usize, table: &str, id: &str, fields: Value) {
    lab.cli_ok(i, &["patch", table, id, &fields.to_string()]);
}

fn get(lab: &Lab, i: usize, table: &str, id: &str) -> Value {
    lab.cli_json(i, &["get", table, id])["fields"].clone()
}

const R: &str = "00000000-0000-4000-8000-00000000000a";
const A: &str = "00000000-0000-4000-8000-0000000000a1";
const B: &str = "00000000-0000-4000-8000-0000000000b1";
const C: &str = "00000000-0000-4000-8000-0000000000c1";

/// Three agents discover each other; a record written on the first reaches the others;
/// concurrent edits on two nodes (different records, different fields of one record)
/// converge everywhere without conflicts.
#[test]
fn three_nodes_discover_and_converge() {
    let Some(lab) = Lab::new("three_nodes_discover_and_converge", 3) else {
        return;
    };
    // Written before the agents start: what reaches the others is discovery's doing.
    put(&lab, 0, "person", R, json!({"name": "Amina Okafor"}));
    let started = Instant::now();
    let ids: Vec<String> = (0..3).map(|i| lab.start(i, &[])).collect();
    wait_count(&lab, 1, 1, "first record on host 1");
    let first_1 = started.elapsed();
    wait_count(&lab, 2, 1, "first record on host 2");
    let first_2 = started.elapsed();
    println!(
        "time to first sync (agent start -> record on host 1 / host 2): {:.2} s / {:.2} s",
        first_1.as_secs_f64(),
        first_2.as_secs_f64()
    );
    assert_eq!(get(&lab, 2, "person", R), json!({"name": "Amina Okafor"}));

    // Concurrent edits on hosts 1 and 2, agents running.
    let edits = Instant::now();
    put(&lab, 1, "person", A, json!({"name": "Bo"}));
    patch(&lab, 1, "person", R, json!({"phone": "+1 555 0100"}));
    put(&lab, 2, "person", B, json!({"name": "Chen"}));
    patch(&lab, 2, "person", R, json!({"status": "found_alive"}));
    converge(&lab, &[0, 1, 2], 3, "edits on hosts 1 and 2");
    println!(
        "time to converge after concurrent edits on two nodes: {:.2} s",
        edits.elapsed().as_secs_f64()
    );
    for i in 0..3 {
        assert_eq!(
            get(&lab, i, "person", R),
            json!({"name": "Amina Okafor", "phone": "+1 555 0100", "status": "found_alive"}),
            "host {i}"
        );
        let conflicts = lab.cli(i, &["conflicts"]).json_lines();
        assert!(
            conflicts.is_empty(),
            "host {i}: edits of different fields are not conflicts: {conflicts:?}"
        );
        // Every host knows the two others, online.
        let rows = peers(&lab, i);
        for (j, id) in ids.iter().enumerate().filter(|(j, _)| *j != i) {
            let row = rows
                .iter()
                .find(|r| r["instance"] == id.as_str())
                .unwrap_or_else(|| panic!("host {i} does not list host {j}: {rows:?}"));
            assert_eq!(row["online"], true, "host {i} sees host {j} online: {row}");
            assert!(!row["last_update"].is_null(), "host {i} synced with {j}");
        }
    }
}

/// kill -9 of one node; edits elsewhere; on restart (same data dir) it catches up by itself.
#[test]
fn killed_node_catches_up_after_restart() {
    let Some(lab) = Lab::new("killed_node_catches_up_after_restart", 3) else {
        return;
    };
    let ids: Vec<String> = (0..3).map(|i| lab.start(i, &[])).collect();
    put(&lab, 0, "person", R, json!({"name": "Amina"}));
    converge(&lab, &[0, 1, 2], 1, "seed record");

    let status = lab.kill9(2);
    assert!(!status.success(), "kill -9: {status}");
    put(&lab, 0, "person", A, json!({"name": "Bo"}));
    patch(&lab, 1, "person", R, json!({"status": "injured"}));
    put(&lab, 1, "person", B, json!({"name": "Chen"}));
    let (_, sha) = converge(&lab, &[0, 1], 3, "edits while host 2 is down");
    assert_eq!(digest(&lab, 2).0, 1, "host 2 is down and has only the seed");

    let restarted = Instant::now();
    lab.start(2, &[]);
    let took = wait_count(&lab, 2, 3, "host 2 catching up after restart");
    assert_eq!(digest(&lab, 2).1, sha, "host 2 has the same records");
    println!(
        "restarted node caught up in {:.2} s",
        restarted.elapsed().as_secs_f64().max(took.as_secs_f64())
    );
    assert_eq!(
        get(&lab, 2, "person", R),
        json!({"name": "Amina", "status": "injured"})
    );
    // Everyone shows everyone online again.
    for i in 0..3 {
        let mut rows = Vec::new();
        poll(SETTLE, Duration::from_millis(250), || {
            rows = peers(&lab, i);
            let online = |j: usize| {
                rows.iter()
                    .any(|r| r["instance"] == ids[j].as_str() && r["online"] == true)
            };
            (0..3).filter(|&j| j != i).all(online).then_some(())
        })
        .unwrap_or_else(|| panic!("host {i} does not show the others online: {rows:?}"));
    }
}

/// An agent of another deployment (mesh) on the same bridge is ignored both ways.
#[test]
fn other_deployment_is_ignored() {
    let Some(lab) = Lab::new("other_deployment_is_ignored", 3) else {
        return;
    };
    let fast = "[sync]\ninterval_secs = 2\n";
    lab.write_config(0, fast);
    lab.write_config(1, fast);
    lab.write_config(2, &format!("{fast}[discovery]\nmesh = \"other\"\n"));
    // The outsider has a record of its own in a table nobody else has.
    put(&lab, 2, "outsider", C, json!({"secret": true}));
    let ids: Vec<String> = (0..3).map(|i| lab.start(i, &[])).collect();
    put(&lab, 0, "person", A, json!({"name": "Bo"}));
    put(&lab, 1, "person", B, json!({"name": "Chen"}));
    converge(&lab, &[0, 1], 2, "hosts 0 and 1");

    // "For a while": several periodic rounds and mDNS announcements.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        let tables = lab.cli_json(2, &["digest", "person"]);
        assert_eq!(tables["count"], 0, "the outsider received records");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(digest(&lab, 2).0, 1, "the outsider has only its own record");
    for i in 0..2 {
        assert_eq!(
            digest(&lab, i).0,
            2,
            "host {i} received the outsider's record"
        );
        let rows = peers(&lab, i);
        assert!(
            rows.iter().all(|r| r["instance"] != ids[2].as_str()),
            "host {i} lists the outsider: {rows:?}"
        );
        let status = lab.cli_json(i, &["status"]);
        assert!(
            status["agent"]["discovery"]["ignored"].as_u64() >= Some(1),
            "host {i} saw and ignored the outsider: {}",
            status["agent"]["discovery"]
        );
    }
    assert!(peers(&lab, 2).is_empty(), "the outsider knows nobody");
}

/// With multicast blocked, discovery finds nothing and `status` says why; a static peer
/// address still syncs, both ways.
#[test]
fn blocked_multicast_is_diagnosed_and_static_peer_syncs() {
    let Some(lab) = Lab::new("blocked_multicast_is_diagnosed_and_static_peer_syncs", 2) else {
        return;
    };
    for i in 0..2 {
        lab.block_multicast(i);
        lab.write_config(i, "[sync]\ninterval_secs = 2\n");
    }
    let started = Instant::now();
    lab.start(0, &[]);
    lab.start(1, &["--peer", &lab.sync_addr(0)]);
    put(&lab, 0, "person", A, json!({"name": "Bo"}));
    wait_count(&lab, 1, 1, "static peer: host 0 -> host 1");
    put(&lab, 1, "person", B, json!({"name": "Chen"}));
    converge(&lab, &[0, 1], 2, "static peer: host 1 -> host 0");

    // The diagnosis appears after ~10 s without any peer advert.
    for i in 0..2 {
        let mut last = Value::Null;
        let diagnosis = poll(SETTLE, Duration::from_millis(500), || {
            last = lab.cli_json(i, &["status"])["agent"]["discovery"].clone();
            last["diagnosis"].as_str().map(str::to_string)
        })
        .unwrap_or_else(|| {
            panic!(
                "host {i}: no discovery diagnosis {:?} after start: {last}",
                started.elapsed()
            )
        });
        assert_eq!(last["peers_heard"], 0, "host {i}: discovery found nothing");
        assert!(
            diagnosis.contains("blocked") && diagnosis.contains("firewall"),
            "host {i}: diagnosis should blame blocked multicast: {diagnosis}"
        );
        assert!(
            !lab.cli(i, &["status"]).json()["peers"]["last_sync"].is_null(),
            "host {i}: synced with its static peer"
        );
    }
}

/// SIGTERM during a large initial sync: the agent exits 0 within 5 s, keeps what it received,
/// and after a restart resumes and finishes.
#[test]
fn sigterm_during_large_sync_then_resume() {
    let Some(lab) = Lab::new("sigterm_during_large_sync_then_resume", 2) else {
        return;
    };
    const N: u64 = 20_000;
    // Small pages so the transfer has many steps to interrupt.
    let config = "[sync]\ninterval_secs = 2\npage_records = 200\n";
    lab.write_config(0, config);
    lab.write_config(1, config);
    let file = lab.scratch("people.jsonl");
    let lines: String = (0..N)
        .map(|n| {
            format!(
                "{}\n",
                json!({"name": format!("person {n}"), "n": n, "notes": "x".repeat(200)})
            )
        })
        .collect();
    std::fs::write(&file, lines).expect("write import file");
    let imported = lab.cli_json(
        0,
        &["import", "person", &file.to_string_lossy(), "--key", "n"],
    );
    assert_eq!(imported["inserted"], N);
    // The digest counts the import key the keyed import recorded (`fs_import_keys`) too.
    let all = N + 1;
    let (_, sha) = digest(&lab, 0);
    let host0 = lab.start(0, &[]);
    let started = Instant::now();
    lab.start(1, &[]);

    // Interrupt well into the transfer (a tenth of it is through), not at its first page.
    let seen = poll(SETTLE, Duration::from_millis(20), || {
        let n = digest(&lab, 1).0;
        (n >= N / 10).then_some(n)
    })
    .unwrap_or_else(|| panic!("the large sync did not get going within {SETTLE:?}"));
    assert!(
        seen < all,
        "the sync finished before it could be interrupted ({:.2} s); make it larger",
        started.elapsed().as_secs_f64()
    );
    let (status, took) = lab
        .sigterm(1, Duration::from_secs(10))
        .expect("agent did not exit within 10 s of SIGTERM");
    println!(
        "SIGTERM after {seen} of {N} records: exited {status} in {:.2} s",
        took.as_secs_f64()
    );
    assert_eq!(status.code(), Some(0), "clean exit on SIGTERM");
    assert!(took < Duration::from_secs(5), "exit took {took:?}");

    // No agent now: the CLI opens the store itself.
    let kept = digest(&lab, 1).0;
    assert!(
        kept >= seen && kept <= all,
        "records lost on shutdown: saw {seen}, kept {kept}"
    );
    // The position reached in host 0's feed was saved with (never ahead of) the records, so
    // the next session resumes there instead of starting over.
    let row = peers(&lab, 1)
        .into_iter()
        .find(|r| r["instance"] == host0.as_str())
        .expect("host 1 knows host 0");
    let upto = row["received_upto"].as_u64().expect("received_upto");
    assert!(
        upto > 0 && upto <= kept,
        "saved position {upto} does not match the {kept} records kept"
    );
    let resume = Instant::now();
    lab.start(1, &[]);
    wait_count(&lab, 1, all, "resumed large sync");
    assert_eq!(digest(&lab, 1).1, sha, "same records as host 0");
    println!(
        "resumed from position {upto} with {kept} of {N} records kept; finished in {:.2} s",
        resume.elapsed().as_secs_f64()
    );
}
