//! A disk that lies: sled's log loses or garbles its last bytes. fieldsync says so in one line,
//! `doctor` names the fix, `repair` moves the damaged database aside, restores the newest
//! automatic snapshot (kept by the agent), and the next sync brings back everything the peer
//! holds, without resurrecting what was deleted.

mod common;

use common::agent::{
    alive, data_dir, delete, digest, get, instance_id, put, run, sync, wait_until, write_config,
    Agent,
};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "fsbackup"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Flips the last `n` written bytes of sled's log file (its newest writes).
fn garble_log_tail(dir: &Path, n: usize) {
    let path = dir.join("db").join("db");
    let mut data = std::fs::read(&path).unwrap();
    let last = data
        .iter()
        .rposition(|b| *b != 0)
        .expect("the log holds data");
    for b in &mut data[last + 1 - n.min(last)..=last] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, data).unwrap();
}

#[test]
fn agent_keeps_the_last_three_snapshots_and_repair_brings_everything_back() {
    let root = tempfile::tempdir().unwrap();
    let a = data_dir(root.path(), "a");
    let b = data_dir(root.path(), "b");
    write_config(&a, "[snapshots]\nevery_changes = 2", "");
    let id = |_: usize| Uuid::new_v4();
    let (a1, a2, a3, a4, a5, b1) = (id(1), id(2), id(3), id(4), id(5), id(6));
    let rec = |n: u64| json!({"name": format!("r{n}"), "n": n});
    put(&a, "t", &a1, &rec(1));
    put(&a, "t", &a2, &rec(2));
    put(&a, "t", &a3, &rec(3));
    delete(&a, "t", &a3);
    put(&b, "t", &b1, &rec(6));

    let mut agent_b = Agent::start(&b);
    let mut agent_a = Agent::start(&a);
    // The agent snapshots a laptop that has data and no snapshot yet right away.
    wait_until(
        "a first automatic snapshot",
        Duration::from_secs(30),
        || !snapshots(&a).is_empty(),
    );
    let first = snapshots(&a)[0].clone();
    sync(&a, agent_b.addr());
    // Writes through the agent: every 2 changes a snapshot; only the last 3 are kept.
    for n in 0..8u64 {
        put(&a, "t", &Uuid::new_v4(), &rec(100 + n));
    }
    put(&a, "t", &a4, &rec(4));
    delete(&a, "t", &a2);
    wait_until("snapshots roll over", Duration::from_secs(30), || {
        let s = snapshots(&a);
        s.len() == 3 && !s.contains(&first)
    });
    sync(&a, agent_b.addr());
    agent_a.stop();
    // Known to neither the peer nor a snapshot: the one change a lying disk may cost.
    put(&a, "t", &a5, &rec(5));
    let snaps = snapshots(&a);
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    for s in &snaps {
        fieldsync::backup::read_backup(s).expect("every kept snapshot reads back whole");
    }
    let (newest, _) = fieldsync::backup::read_backup(snaps.last().unwrap()).unwrap();
    let before = digest(&a);
    let instance = instance_id(&a);

    // The disk garbles the newest writes.
    let status_before = run(&a, &["status"]).ok().json();
    garble_log_tail(&a, 16);
    let out = run(&a, &["status"]);
    assert_eq!(out.code, 3, "{out}");
    let msg = out.stderr.trim_end();
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(
        msg.contains(&a.display().to_string()) && msg.contains("fieldsync repair"),
        "{msg}"
    );
    assert!(
        !msg.contains("Corruption {") && !msg.contains("backtrace"),
        "{msg}"
    );
    let doctor = run(&a, &["doctor"]);
    assert_eq!(doctor.code, 1);
    let db_check = doctor
        .lines()
        .into_iter()
        .find(|c| c["check"] == "database")
        .unwrap();
    assert_eq!(db_check["ok"], false);
    assert!(
        db_check["fix"]
            .as_str()
            .unwrap()
            .contains("fieldsync repair"),
        "{db_check}"
    );

    // Repair: moved aside (kept), newest snapshot restored, same identity, new incarnation.
    let r = run(&a, &["repair"]).ok().json();
    let moved = PathBuf::from(r["damaged_database_moved_to"].as_str().unwrap());
    assert!(moved.join("db").is_file(), "the damaged database is kept");
    assert_eq!(
        r["restored_snapshot"].as_str().unwrap(),
        snaps.last().unwrap().to_str().unwrap()
    );
    assert_eq!(r["instance"], instance.as_str());
    let before_incarnation = status_before["incarnation"]["id"].clone();
    assert!(
        r["incarnation"].as_str().is_some_and(|s| s.len() == 36),
        "a new incarnation id: {r}"
    );
    assert_ne!(
        r["incarnation"], before_incarnation,
        "repair starts a new incarnation"
    );
    assert_eq!(r["sha256"], newest.sha256);
    assert_eq!(digest(&a)["sha256"], newest.sha256.as_str());
    assert_ne!(digest(&a), before, "a5 was only on the garbled disk");
    // A healthy database is not "repaired" again.
    let again = run(&a, &["repair"]);
    assert_eq!(again.code, 2, "{again}");
    assert!(again.stderr.contains("nothing to repair"), "{again}");

    // The next sync brings back what the peer holds; deletes stay deleted on both sides.
    sync(&a, agent_b.addr());
    for r in [a1, a4, b1] {
        assert!(alive(&a, "t", &r), "{r} is back");
    }
    for (name, r) in [("a2", a2), ("a3", a3)] {
        assert!(
            !alive(&a, "t", &r),
            "{name} stays deleted on A: A {:?}, B {:?}, snapshot {}",
            get(&a, "t", &r),
            get(&b, "t", &r),
            newest.feed_seq
        );
        assert!(!alive(&b, "t", &r), "{r} stays deleted on B");
    }
    assert!(get(&a, "t", &a5).is_none(), "a5 reached no one");
    assert_eq!(digest(&a), digest(&b));
    assert_eq!(digest(&a)["count"], 11, "a1, a4, b1 and 8 more");
    // And it syncs on as the same laptop, with writes.
    put(&a, "t", &a5, &rec(5));
    sync(&a, agent_b.addr());
    assert!(alive(&b, "t", &a5));
    agent_b.stop();
}

/// A disk that silently drops everything since some point (sled cuts a garbled log tail after
/// its own last snapshot as an interrupted write): the database opens consistent but older than
/// its newest automatic snapshot. fieldsync refuses it in one line, and `repair` restores the
/// snapshot.
#[test]
fn a_database_older_than_its_newest_snapshot_is_refused_and_repaired() {
    let root = tempfile::tempdir().unwrap();
    let a = data_dir(root.path(), "a");
    let (r1, r2, r3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    put(&a, "t", &r1, &json!({"n": 1}));
    common::agent::copy_dir(&a.join("db"), &root.path().join("old-db"));
    put(&a, "t", &r2, &json!({"n": 2}));
    put(&a, "t", &r3, &json!({"n": 3}));
    let mut agent = Agent::start(&a);
    wait_until("an automatic snapshot", Duration::from_secs(30), || {
        !snapshots(&a).is_empty()
    });
    agent.stop();
    let full = digest(&a);
    std::fs::remove_dir_all(a.join("db")).unwrap();
    common::agent::copy_dir(&root.path().join("old-db"), &a.join("db"));

    let out = run(&a, &["get", "t", &r1.to_string()]);
    assert_eq!(out.code, 3, "{out}");
    let msg = out.stderr.trim_end();
    assert!(!msg.contains('\n'), "one line: {msg}");
    for w in ["lost writes", "fieldsync repair", &a.display().to_string()] {
        assert!(msg.contains(w), "{msg} lacks {w}");
    }
    let r = run(&a, &["repair"]).ok().json();
    assert_eq!(r["count"], 3);
    assert_eq!(digest(&a), full);
    for id in [r1, r2, r3] {
        assert!(alive(&a, "t", &id));
    }
}
