//! End-to-end sync benchmark: two real `fieldsync` agents (release build, sled on disk, mutual
//! TLS) on 127.0.0.1. Run with `cargo bench --bench sync`; writes bench/RESULTS.md.
//!
//! Environment: FIELDSYNC_BENCH_N (comma list, default "10000,100000"), FIELDSYNC_BENCH_RUNS
//! (default 3), FIELDSYNC_BENCH_MILLION=1 adds the no-op sync at N = 1,000,000.
//! Data comes from `../shared/gen.py` when present (to compare with the reference figures there),
//! else from `fieldsync generate` (same record format). Every run checks counts and content
//! digests on both sides before any number is reported.

mod common;

use common::{fs_ok, json, median, mesh, sync, verified, Agent, BIN};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn gen_data(dir: &Path, n: usize) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let recs = dir.join(format!("p{n}.jsonl"));
    let ops = dir.join(format!("ops{n}.jsonl"));
    let conf_a = dir.join(format!("ca{n}.jsonl"));
    let conf_b = dir.join(format!("cb{n}.jsonl"));
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/gen.py");
    let edits = (n / 100).to_string();
    let deletes = (n / 5000).max(1).to_string();
    if shared.exists() {
        let py = |args: &[&str]| {
            let st = Command::new("python3")
                .arg(&shared)
                .args(args)
                .stderr(Stdio::null())
                .status();
            assert!(st.expect("python3").success(), "gen.py {args:?}");
        };
        py(&[
            "--records",
            &n.to_string(),
            "--seed",
            "42",
            "--out",
            recs.to_str().unwrap(),
        ]);
        py(&[
            "--mutate",
            &edits,
            "--deletes",
            &deletes,
            "--from",
            recs.to_str().unwrap(),
            "--seed",
            "7",
            "--out",
            ops.to_str().unwrap(),
        ]);
        for (seed, out) in [("11", &conf_a), ("12", &conf_b)] {
            py(&[
                "--mutate",
                "100",
                "--deletes",
                "0",
                "--ids-seed",
                "99",
                "--from",
                recs.to_str().unwrap(),
                "--seed",
                seed,
                "--out",
                out.to_str().unwrap(),
            ]);
        }
    } else {
        let gen = |args: &[&str], out: &Path| {
            let o = Command::new(BIN)
                .arg("generate")
                .args(args)
                .output()
                .expect("generate");
            assert!(o.status.success(), "generate {args:?}");
            std::fs::write(out, o.stdout).unwrap();
        };
        gen(
            &["records", "--count", &n.to_string(), "--seed", "42"],
            &recs,
        );
        gen(
            &[
                "ops",
                "--from",
                recs.to_str().unwrap(),
                "--count",
                &edits,
                "--deletes",
                &deletes,
                "--seed",
                "7",
            ],
            &ops,
        );
        for (seed, out) in [("11", &conf_a), ("12", &conf_b)] {
            gen(
                &[
                    "ops",
                    "--from",
                    recs.to_str().unwrap(),
                    "--count",
                    "100",
                    "--deletes",
                    "0",
                    "--ids-seed",
                    "99",
                    "--seed",
                    seed,
                ],
                out,
            );
        }
    }
    (recs, ops, conf_a, conf_b)
}

#[derive(Default)]
struct Run {
    import_rps: f64,
    initial_ms: f64,
    initial_bytes: u64,
    initial_rss_a: u64,
    initial_rss_b: u64,
    reverse_ms: f64,
    reverse_bytes: u64,
    incr_ms: f64,
    incr_bytes: u64,
    noop_ms: f64,
    noop_bytes: u64,
    conflict_ms: f64,
    conflicts: u64,
    idle_rss_b: u64,
}

fn one_run(root: &Path, n: usize, data: &(PathBuf, PathBuf, PathBuf, PathBuf)) -> Run {
    let (recs, ops, conf_a, conf_b) = data;
    let (a_dir, b_dir) = mesh(root);
    let mut r = Run::default();
    let t = Instant::now();
    fs_ok(&a_dir, &["import", "person", recs.to_str().unwrap()]);
    r.import_rps = n as f64 / t.elapsed().as_secs_f64();
    let a = Agent::start(&a_dir);
    let b = Agent::start(&b_dir);
    let (ms, bytes, _) = sync(&a, &b);
    r.initial_ms = ms;
    r.initial_bytes = bytes;
    r.initial_rss_a = a.rss_kb("VmHWM:");
    r.initial_rss_b = b.rss_kb("VmHWM:");
    verified(&a, &b);
    let (ms, bytes, _) = sync(&b, &a);
    r.reverse_ms = ms;
    r.reverse_bytes = bytes;
    fs_ok(&a_dir, &["apply", ops.to_str().unwrap()]);
    let (ms, bytes, _) = sync(&a, &b);
    r.incr_ms = ms;
    r.incr_bytes = bytes;
    verified(&a, &b);
    let (ms, bytes, _) = sync(&a, &b);
    r.noop_ms = ms;
    r.noop_bytes = bytes;
    fs_ok(&a_dir, &["apply", conf_a.to_str().unwrap()]);
    fs_ok(&b_dir, &["apply", conf_b.to_str().unwrap()]);
    let before = json(&fs_ok(&b_dir, &["status"]))["unresolved_conflicts"]
        .as_u64()
        .unwrap_or(0);
    let (ms, _, _) = sync(&a, &b);
    r.conflict_ms = ms;
    verified(&a, &b);
    let after = json(&fs_ok(&b_dir, &["status"]))["unresolved_conflicts"]
        .as_u64()
        .unwrap_or(0);
    r.conflicts = after - before;
    std::thread::sleep(Duration::from_secs(2));
    r.idle_rss_b = b.rss_kb("VmRSS:");
    r
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only for bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let ns: Vec<usize> = std::env::var("FIELDSYNC_BENCH_N")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs: usize = std::env::var("FIELDSYNC_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut report = String::new();
    for &n in &ns {
        let data = gen_data(tmp.path(), n);
        let mut all = Vec::new();
        for i in 0..runs {
            let root = tmp.path().join(format!("n{n}-r{i}"));
            let r = one_run(&root, n, &data);
            eprintln!(
                "N={n} run {i}: import {:.0} rec/s, initial {:.0} ms {} B, reverse {:.1} ms {} B, \
                 incr {:.1} ms {} B, noop {:.1} ms {} B, conflicts {} in {:.1} ms, RSS A/B {}/{} kB, idle {} kB",
                r.import_rps, r.initial_ms, r.initial_bytes, r.reverse_ms, r.reverse_bytes,
                r.incr_ms, r.incr_bytes, r.noop_ms, r.noop_bytes, r.conflicts, r.conflict_ms,
                r.initial_rss_a, r.initial_rss_b, r.idle_rss_b
            );
            all.push(r);
            let _ = std::fs::remove_dir_all(&root);
        }
        report.push_str(&table(n, &all));
    }
    if std::env::var("FIELDSYNC_BENCH_MILLION").is_ok() {
        report.push_str(&million(tmp.path()));
    }
    write_results(&report);
    println!("{report}");
}

fn table(n: usize, runs: &[Run]) -> String {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let initial_ms = m(&|r| r.initial_ms);
    let rows: Vec<(String, String, String)> = vec![
        (
            "local import".into(),
            format!("{:.0} records/s", m(&|r| r.import_rps)),
            target(n, m(&|r| r.import_rps) >= 100_000.0, "≥ 100,000 records/s"),
        ),
        (
            "initial sync A→B".into(),
            format!(
                "{:.0} ms, {:.0} records/s",
                initial_ms,
                n as f64 / initial_ms * 1000.0
            ),
            target(
                n,
                initial_ms <= 1500.0 && n as f64 / initial_ms * 1000.0 >= 65_000.0,
                "≤ 1.5 s, ≥ 65,000 records/s",
            ),
        ),
        (
            "initial sync bytes on the wire".into(),
            format!("{:.2} MB", m(&|r| r.initial_bytes as f64) / 1e6),
            target(n, m(&|r| r.initial_bytes as f64) <= 10e6, "≤ 10 MB"),
        ),
        (
            "peak RSS during initial sync (A / B)".into(),
            format!(
                "{:.0} / {:.0} MB",
                m(&|r| r.initial_rss_a as f64) / 1024.0,
                m(&|r| r.initial_rss_b as f64) / 1024.0
            ),
            target(
                n,
                m(&|r| r.initial_rss_a.max(r.initial_rss_b) as f64) <= 60.0 * 1024.0,
                "≤ 60 MB each",
            ),
        ),
        (
            "first reverse sync B→A".into(),
            format!(
                "{:.1} ms, {:.1} KB",
                m(&|r| r.reverse_ms),
                m(&|r| r.reverse_bytes as f64) / 1e3
            ),
            target(
                n,
                m(&|r| r.reverse_ms) <= 50.0 && m(&|r| r.reverse_bytes as f64) <= 4e3,
                "≤ 50 ms, ≤ 4 KB",
            ),
        ),
        (
            "incremental sync (1% edited, 0.02% deleted)".into(),
            format!(
                "{:.1} ms, {:.1} KB",
                m(&|r| r.incr_ms),
                m(&|r| r.incr_bytes as f64) / 1e3
            ),
            target(
                n,
                m(&|r| r.incr_ms) <= 100.0 && m(&|r| r.incr_bytes as f64) <= 100e3,
                "≤ 100 ms, ≤ 100 KB",
            ),
        ),
        (
            "no-op sync".into(),
            format!(
                "{:.1} ms, {:.2} KB",
                m(&|r| r.noop_ms),
                m(&|r| r.noop_bytes as f64) / 1e3
            ),
            target(
                n,
                m(&|r| r.noop_ms) <= 5.0 && m(&|r| r.noop_bytes as f64) <= 2e3,
                "≤ 5 ms, ≤ 2 KB",
            ),
        ),
        (
            "two-way, 100 records edited on both sides".into(),
            format!(
                "{:.1} ms, {:.0} conflicts logged, verified in sync",
                m(&|r| r.conflict_ms),
                m(&|r| r.conflicts as f64)
            ),
            "—".into(),
        ),
        (
            "idle agent RSS after sync".into(),
            format!("{:.1} MB", m(&|r| r.idle_rss_b as f64) / 1024.0),
            target(n, m(&|r| r.idle_rss_b as f64) <= 20.0 * 1024.0, "≤ 20 MB"),
        ),
    ];
    let mut s = format!("\n### N = {n} (median of {} runs)\n\n| measurement | result | target (N = 100,000) |\n|---|---|---|\n", runs.len());
    for (a, b, c) in rows {
        s.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    s
}

fn target(n: usize, met: bool, what: &str) -> String {
    if n != 100_000 {
        return format!("({what})");
    }
    format!("{what}: {}", if met { "met" } else { "NOT met" })
}

fn million(tmp: &Path) -> String {
    let root = tmp.join("million");
    let (a_dir, b_dir) = mesh(&root);
    let recs = root.join("m.jsonl");
    let o = Command::new(BIN)
        .args(["generate", "records", "--count", "1000000", "--seed", "1"])
        .output()
        .expect("generate");
    std::fs::write(&recs, o.stdout).unwrap();
    fs_ok(&a_dir, &["import", "person", recs.to_str().unwrap()]);
    let a = Agent::start(&a_dir);
    let b = Agent::start(&b_dir);
    sync(&a, &b);
    verified(&a, &b);
    let noop: Vec<(f64, u64)> = (0..5)
        .map(|_| {
            let (ms, b2, _) = sync(&a, &b);
            (ms, b2)
        })
        .collect();
    let ms = median(noop.iter().map(|x| x.0).collect());
    let bytes = median(noop.iter().map(|x| x.1 as f64).collect());
    format!("\n### N = 1,000,000: no-op sync\n\n| measurement | result | target |\n|---|---|---|\n| no-op sync | {ms:.1} ms, {:.2} KB | ≤ 5 ms, ≤ 2 KB: {} |\n",
        bytes / 1e3, if ms <= 5.0 && bytes <= 2e3 { "met" } else { "NOT met" })
}

fn write_results(report: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let version = fs_ok(Path::new("/tmp"), &["--version"]);
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let data = if Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/gen.py")
        .exists()
    {
        "shared/gen.py"
    } else {
        "fieldsync generate"
    };
    let text = format!(
        "# Benchmark results\n\nMeasured {date} with `cargo bench --bench sync` on {cpu} ({cores} cores), {rustc}, {}.\n\
         Two agents of the release build on 127.0.0.1, sled on disk, mutual TLS 1.3, pages msgpack+zstd.\n\
         Data: {data} person records (~330 bytes each). Times are sync-session times reported by\n\
         the initiating agent; bytes are counted at the responder's sockets (both directions, TLS and\n\
         HTTP framing included); RSS is VmHWM (peak) and VmRSS (idle) from /proc. Every run checked\n\
         record counts, content digests and `verify` on both sides before reporting.\n{report}",
        version.trim()
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
    std::fs::write(&path, text).expect("write bench/RESULTS.md");
    eprintln!("wrote {}", path.display());
}
