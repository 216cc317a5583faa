//! History on the wire (issue #12): what replicating every revision costs. Two real `fieldsync`
//! agents (sled on disk, mutual TLS) on 127.0.0.1:
//! 1. initial sync of N records (each with one revision, its creation: nothing extra travels);
//! 2. an incremental sync after 1% of the records got one patch each (the reference);
//! 3. an incremental sync after another 1% got three patches each (three revisions per record
//!    travel, each with only the field it changed).
//!
//! Run with `cargo bench --bench history` (release build). Environment: FIELDSYNC_BENCH_N
//! (default 100000). Writes its rows into the "History" section of bench/RESULTS.md (between
//! the markers below, leaving the rest of the file alone) and prints them. Every sync is checked
//! (content digests equal, and a three-patch record's history on B lists all three revisions
//! with their exact values) before a number is reported.

mod common;

use common::{digest, fs_ok, json as json_line, mesh, sync, Agent, BIN};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
const START: &str = "<!-- benches/history.rs: start -->";
const END: &str = "<!-- benches/history.rs: end -->";

/// Patches of `ids` (one op a line for `apply`): `rounds` patches each, round r writing
/// `notes` = "round r of ID" and, in the last round, `status` too.
fn patches(ids: &[String], rounds: usize) -> String {
    let mut out = String::new();
    for r in 1..=rounds {
        for id in ids {
            let mut fields = json!({"notes": format!("round {r} of {id}")});
            if r == rounds {
                fields["status"] = json!("found_alive");
            }
            out.push_str(
                &json!({"op": "patch", "table": "person", "id": id, "fields": fields}).to_string(),
            );
            out.push('\n');
        }
    }
    out
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only for bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::var("FIELDSYNC_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (a_dir, b_dir) = mesh(root);

    let recs = root.join("records.jsonl");
    let out = Command::new(BIN)
        .args([
            "generate",
            "records",
            "--count",
            &n.to_string(),
            "--seed",
            "42",
        ])
        .output()
        .expect("generate");
    assert!(out.status.success());
    std::fs::write(&recs, &out.stdout).unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| json_line(l)["id"].as_str().unwrap().to_string())
        .collect();
    fs_ok(&a_dir, &["import", "person", recs.to_str().unwrap()]);

    let a = Agent::start(&a_dir);
    let b = Agent::start(&b_dir);
    let (initial_ms, initial_bytes, _) = sync(&a, &b);
    // Where the initial sync's bytes went (B serves it): calls and JSON bytes per method.
    let by_method = b.status()["agent"]["bytes_by_method"].clone();
    let methods: Vec<String> = by_method
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    format!(
                        "{k} {} calls, {:.2} MB in, {:.2} MB out",
                        v["calls"],
                        v["request"].as_f64().unwrap_or(0.0) / 1e6,
                        v["response"].as_f64().unwrap_or(0.0) / 1e6
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    assert_eq!(
        digest(&a_dir),
        digest(&b_dir),
        "content differs after the initial sync"
    );

    // 1% with one patch each, then another 1% with three.
    let one = &ids[..n / 100];
    let three = &ids[n / 100..2 * (n / 100)];
    let apply = |name: &str, text: String| {
        let f = root.join(name);
        std::fs::write(&f, text).unwrap();
        fs_ok(&a_dir, &["apply", f.to_str().unwrap()]);
    };
    apply("one.jsonl", patches(one, 1));
    let (one_ms, one_bytes, _) = sync(&a, &b);
    assert_eq!(
        digest(&a_dir),
        digest(&b_dir),
        "content differs after one patch"
    );
    apply("three.jsonl", patches(three, 3));
    let (three_ms, three_bytes, _) = sync(&a, &b);
    assert_eq!(
        digest(&a_dir),
        digest(&b_dir),
        "content differs after three patches"
    );
    // Every revision arrived, with its exact values.
    // `history` prints one JSON array.
    let h: Vec<Value> = match json_line(&fs_ok(&b_dir, &["history", "person", &three[0]])) {
        Value::Array(items) => items,
        other => panic!("history is not a JSON array: {other}"),
    };
    let notes: Vec<String> = h
        .iter()
        .flat_map(|e| e["changes"].as_array().unwrap().iter())
        .filter(|c| c["field"] == "notes")
        .map(|c| c["new"].as_str().unwrap_or("").to_string())
        .collect();
    let want: Vec<String> = (1..=3)
        .map(|r| format!("round {r} of {}", three[0]))
        .collect();
    assert_eq!(h.len(), 4, "creation + three patches on B: {h:?}");
    assert_eq!(notes[notes.len() - 3..], want[..], "{h:?}");
    drop((a, b));

    let pct = n / 100;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let rows = format!(
        "| initial sync A→B, {n} records (one revision each) | {initial_ms:.0} ms, {:.2} MB | ≤ 8 MB: {} |\n\
         | incremental: {pct} records × 1 patch (reference) | {one_ms:.1} ms, {:.1} KB | ≤ 100 ms, ≤ 100 KB: {} |\n\
         | incremental: {pct} records × 3 patches (3 revisions each travel) | {three_ms:.1} ms, {:.1} KB | ≤ 3 × the one-patch sync and ≤ 300 ms, ≤ 300 KB: {} |\n",
        initial_bytes as f64 / 1e6,
        verdict(initial_bytes as f64 <= 8e6),
        one_bytes as f64 / 1e3,
        verdict(one_ms <= 100.0 && one_bytes as f64 <= 100e3),
        three_bytes as f64 / 1e3,
        verdict(
            three_ms <= 300.0
                && three_bytes as f64 <= 300e3
                && three_bytes <= 3 * one_bytes.max(1)
        ),
    );
    let section = format!(
        "{START}\n## History on the wire (issue #12)\n\n\
         Measured {} with `cargo bench --bench history` (FIELDSYNC_BENCH_N={n}), {}. \
         Two agents of the {} build on 127.0.0.1, sled on disk, mutual TLS; \
         one run. Times are the initiating agent's session times; bytes are counted at the \
         responder's sockets (both directions, TLS and HTTP framing included). Each sync was \
         checked (content digests, and all three revisions of a patched record on B) first.\n\n\
         | measurement | result | target |\n|---|---|---|\n{rows}\n\
         Initial sync by method at B (JSON-RPC bodies; `status` → `agent.bytes_by_method`): {}. \
         Load average when the run ended (1, 5, 15 min): {}.\n{END}\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        fs_ok(&a_dir, &["--version"]).trim(),
        if cfg!(debug_assertions) {
            "debug (NOT representative: use `cargo bench`)"
        } else {
            "release"
        },
        methods.join("; "),
        load.join(" "),
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(START), old.find(END)) {
        (Some(s), Some(e)) if e > s => {
            let rest = old[e + END.len()..].trim_start_matches('\n');
            format!("{}{section}\n{rest}", &old[..s])
        }
        _ => format!("{}\n{section}", old.trim_end()),
    };
    std::fs::write(&path, new).expect("write bench/RESULTS.md");
    println!("{section}");
}
