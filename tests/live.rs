//! Syncs you can see: while a 20,000-record sync runs between two real agents, `status` on
//! both laptops shows the session in flight — on the one that started it and on the one that
//! answers — with byte counters that have already moved, and the agent's totals too.

mod common;

use common::agent::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// How long the whole sync may take (debug build, 2 busy cores).
const LIMIT: Duration = Duration::from_secs(120);

fn status(dir: &std::path::Path) -> Value {
    run(dir, &["status", "--json"]).ok().json()
}

/// The in-flight session of `role` in a status, if any.
fn session<'a>(s: &'a Value, role: &str) -> Option<&'a Value> {
    s["agent"]["sessions"]
        .as_array()?
        .iter()
        .find(|x| x["role"] == role && x["state"] == "running")
}

#[test]
fn status_shows_both_ends_of_a_session_with_bytes_moving() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b) = (data_dir(root, "a"), data_dir(root, "b"));
    // Small pages, so the session runs long enough to be looked at several times.
    for d in [&a, &b] {
        write_config(d, "", "page_records = 1000");
    }
    run(&a, &["init", "--name", "laptopA"]).ok();
    run(&b, &["init", "--name", "laptopB"]).ok();
    import(&a, "person", &people(20_000));
    let agent_a = Agent::start_with(&a, &["--no-api"]);
    let _agent_b = Agent::start_with(&b, &["--no-api"]);

    let mut syncing = spawn(&b, &["sync", agent_a.addr()]);
    let (mut initiator, mut responder): (Option<Value>, Option<Value>) = (None, None);
    let mut b_total = 0;
    let start = Instant::now();
    while !syncing.finished() && start.elapsed() < LIMIT {
        let sb = status(&b);
        if let Some(s) = session(&sb, "initiator") {
            let moving = s["received"]["bytes"].as_u64() > Some(0);
            if moving && s["received"]["records"].as_u64() > Some(0) && initiator.is_none() {
                initiator = Some(s.clone());
                b_total = sb["agent"]["bytes_received"].as_u64().unwrap_or(0);
            }
        }
        let sa = status(&a);
        if let Some(s) = session(&sa, "responder") {
            let moving = s["sent"]["bytes"].as_u64() > Some(0);
            if moving && s["sent"]["records"].as_u64() > Some(0) && responder.is_none() {
                responder = Some(s.clone());
            }
        }
        if initiator.is_some() && responder.is_some() {
            break;
        }
    }
    let done = summary(&syncing.wait(LIMIT).ok());
    assert_eq!(done.received.records, 20_000, "{done:?}");

    // B started it: it sees A by name, bytes received before the end, records on their way.
    let s = initiator.expect("B's status showed its session in flight with bytes received");
    assert_eq!(s["peer_name"], "laptopA", "{s}");
    let got = s["received"]["records"].as_u64().unwrap();
    assert!(got < 20_000, "seen before the end: {s}");
    let expected = s["received"]["records_expected"].as_u64().unwrap();
    assert!(
        (20_000..20_010).contains(&expected),
        "expected records come from the feed positions: {s}"
    );
    assert!(
        b_total > 0,
        "the agent's bytes_received moved during the sync"
    );

    // A answered: the session a peer started shows too, with what A is sending.
    let r = responder.expect("A's status showed the session laptopB started");
    assert_eq!(r["peer_name"], "laptopB", "{r}");
    assert!(r["sent"]["records"].as_u64().unwrap() < 20_000, "{r}");

    // Once over, nothing is in flight on either side.
    assert!(
        wait_until(Duration::from_secs(10), || {
            session(&status(&a), "responder").is_none()
                && session(&status(&b), "initiator").is_none()
        }),
        "sessions leave the in-flight list when they end"
    );
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
