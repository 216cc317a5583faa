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

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_fieldsync");
const START: &str = "<!-- benches/history.rs: start -->";
const END: &str = "<!-- benches/history.rs: end -->";

fn fs(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run fieldsync");
    assert!(
        out.status.success(),
        "fieldsync {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_line(s: &str) -> Value {
    serde_json::from_str(s.lines().next().unwrap_or("null")).expect("json output")
}

/// An agent of the data dir, killed by PID when dropped.
struct Agent {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(dir)
            .args(["run", "--listen", "127.0.0.1:0", "--no-discovery"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start agent");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("listening line");
        let addr = json_line(&line)["listen"]
            .as_str()
            .expect("listen")
            .to_string();
        Agent {
            child,
            dir: dir.to_path_buf(),
            addr,
        }
    }

    /// Bytes through this agent's server sockets so far (both directions).
    fn wire_bytes(&self) -> u64 {
        let a = &json_line(&fs(&self.dir, &["status"]))["agent"];
        a["bytes_received"].as_u64().unwrap_or(0) + a["bytes_sent"].as_u64().unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sync` from `from`'s agent to `to`: (session ms as reported, bytes at `to`'s sockets).
fn sync(from: &Agent, to: &Agent) -> (f64, u64) {
    let before = to.wire_bytes();
    let out = fs(&from.dir, &["sync", &to.addr]);
    let ms: f64 = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|l| l["ms"].as_f64().unwrap_or(0.0))
        .sum();
    (ms, to.wire_bytes() - before)
}

fn digest(dir: &Path) -> String {
    let d = json_line(&fs(dir, &["digest", "person"]));
    format!("{} {}", d["count"], d["sha256"])
}

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
    let (a_dir, b_dir) = (root.join("a"), root.join("b"));
    fs(&a_dir, &["init", "--name", "bench-a"]);
    fs(&a_dir, &["mesh", "create", "--name", "bench"]);
    let cred = root.join("b.fsmesh");
    let cred = cred.to_str().unwrap();
    fs(
        &a_dir,
        &["mesh", "enroll", "--out", cred, "--name", "bench-b"],
    );
    fs(&b_dir, &["init", "--mesh", cred]);

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
    fs(&a_dir, &["import", "person", recs.to_str().unwrap()]);

    let a = Agent::start(&a_dir);
    let b = Agent::start(&b_dir);
    let (initial_ms, initial_bytes) = sync(&a, &b);
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
        fs(&a_dir, &["apply", f.to_str().unwrap()]);
    };
    apply("one.jsonl", patches(one, 1));
    let (one_ms, one_bytes) = sync(&a, &b);
    assert_eq!(
        digest(&a_dir),
        digest(&b_dir),
        "content differs after one patch"
    );
    apply("three.jsonl", patches(three, 3));
    let (three_ms, three_bytes) = sync(&a, &b);
    assert_eq!(
        digest(&a_dir),
        digest(&b_dir),
        "content differs after three patches"
    );
    // Every revision arrived, with its exact values.
    let h: Vec<Value> = fs(&b_dir, &["history", "person", &three[0]])
        .lines()
        .map(json_line)
        .collect();
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
         | measurement | result | target |\n|---|---|---|\n{rows}{END}\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        fs(&a_dir, &["--version"]).trim(),
        if cfg!(debug_assertions) {
            "debug (NOT representative: use `cargo bench`)"
        } else {
            "release"
        },
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(START), old.find(END)) {
        (Some(s), Some(e)) if e > s => {
            let rest = old[e + END.len()..].trim_start_matches('\n');
            format!("{}{section}{rest}", &old[..s])
        }
        _ => format!("{}\n{section}", old.trim_end()),
    };
    std::fs::write(&path, new).expect("write bench/RESULTS.md");
    println!("{section}");
}
