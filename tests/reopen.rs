//! The agent gives back sled's memory after a large sync by closing and reopening its
//! database once it is quiet (`src/reopen.rs`): two real agents over mutual TLS on loopback,
//! real sled on disk. What a user would check: the receiving agent's `status` reports the
//! reopen, its resident memory went down with it, and it still holds, serves and takes every
//! record as before.

mod common;

use common::agent::*;
use std::time::Duration;

/// Resident memory of a process, in kB (`VmRSS` in /proc).
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS line")
}

fn reopens(dir: &std::path::Path) -> u64 {
    status(dir)["agent"]["store"]["reopens"]
        .as_u64()
        .expect("agent.store.reopens in status")
}

#[test]
fn after_a_large_sync_the_quiet_agent_reopens_its_database_and_holds_less_memory() {
    let root = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (data_dir(root.path(), "a"), data_dir(root.path(), "b"));
    // Just over what makes a reopen worth it (`fieldsync::reopen::REOPEN_AFTER`).
    let n = fieldsync::reopen::REOPEN_AFTER as usize + 2_000;
    import(&a_dir, "person", &people(n));
    let a = Agent::start(&a_dir);
    let b = Agent::start(&b_dir);
    assert_eq!(reopens(&b_dir), 0);
    let got = sync(&b_dir, a.addr());
    assert_eq!(got.moved(), n as u64);
    let before = rss_kb(b.pid());
    // The agent waits for a quiet spell of a few seconds, then reopens (the status it shows
    // is refreshed every second).
    wait_until("B reopens its database", Duration::from_secs(90), || {
        reopens(&b_dir) >= 1
    });
    let after = rss_kb(b.pid());
    // Everything is still there, served and written as before.
    assert_eq!(live_count(&b_dir, "person"), n as u64);
    let (id, fields) = people(1).remove(0);
    put(&b_dir, "person", &id, &fields);
    sync(&a_dir, b.addr());
    assert!(alive(&a_dir, "person", &id));
    assert_same(&a_dir, &b_dir, b.addr());
    // sled's per-page memory went with the old handles (the bench measures it at 100,000).
    assert!(
        after + 4_096 < before,
        "B's RSS did not drop by 4 MB with the reopen: {before} kB before, {after} kB after"
    );
}
