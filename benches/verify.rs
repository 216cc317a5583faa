//! `verify` benchmark (issue #17): two real on-disk stores with the same records, one served by
//! the real JSON-RPC server on 127.0.0.1 (plaintext), the other verifying against it with the
//! real client. Measures wall time, bytes on the wire (both directions, HTTP framing included,
//! from the server's socket counters) and the process's peak RSS during the verify, for replicas
//! in sync and with 100 scattered differences; checks every result (in sync; exactly the 100
//! edited ids) before reporting a number. Writes its section of bench/RESULTS.md.
//!
//! Run: `cargo bench --bench verify`. Environment: FIELDSYNC_BENCH_N (comma list, default
//! 100000), FIELDSYNC_BENCH_RUNS (default 3),
//! FIELDSYNC_BENCH_MILLION=1 adds N = 1,000,000 (imports take minutes).

use fieldsync::config::Config;
use fieldsync::merge::Edit;
use fieldsync::protocol::server::{self, Running};
use fieldsync::store::{ImportRow, LocalOp, Store, UpdateMode};
use fieldsync::sync::{self, Responder};
use fieldsync::tls::Transport;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

const TABLE: &str = "person";
const DIFFS: usize = 100;

fn open(dir: &Path) -> Arc<Store> {
    Arc::new(Store::open(dir, Config::default()).expect("open store"))
}

/// The same `n` records (ids from a fixed seed) into a store, 10,000 per batch.
fn fill(s: &Store, n: usize) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n as u128)
        .map(|i| {
            // UUID v4 layout from a fixed mix of the index, so both stores get the same ids.
            let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ 0x5bd1_e995;
            uuid::Builder::from_random_bytes(x.to_be_bytes()).into_uuid()
        })
        .collect();
    for (c, chunk) in ids.chunks(10_000).enumerate() {
        let rows: Vec<ImportRow> = chunk
            .iter()
            .enumerate()
            .map(|(k, id)| {
                let i = c * 10_000 + k;
                ImportRow {
                    id: *id,
                    line: i as u64 + 1,
                    fields: json!({"name": format!("person {i}"), "age": i % 90,
                                   "district": format!("d{}", i % 40)})
                    .as_object()
                    .expect("object")
                    .clone(),
                    update: UpdateMode::Replace,
                }
            })
            .collect();
        s.import_rows(TABLE, &rows).expect("import");
    }
    ids
}

fn proc_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the process's peak RSS (VmHWM) to its current RSS (Linux `clear_refs` 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

struct Sample {
    ms: f64,
    bytes: u64,
    peak_kb: u64,
    rss_before_kb: u64,
}

fn bytes(r: &Running) -> u64 {
    r.traffic.read.load(Ordering::Relaxed) + r.traffic.written.load(Ordering::Relaxed)
}

async fn verify_once(b: &Arc<Store>, served: &Running, want: &BTreeSet<Uuid>) -> Sample {
    let addr = served.addr.to_string();
    let rss_before_kb = proc_kb("VmRSS:");
    reset_peak();
    let before = bytes(served);
    let t = Instant::now();
    let checks = sync::verify_with(b.clone(), &addr, &Transport::Plaintext)
        .await
        .expect("verify");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let sent = bytes(served) - before;
    let found: BTreeSet<Uuid> = checks.iter().flat_map(|c| c.differing.clone()).collect();
    assert_eq!(
        &found, want,
        "verify must name exactly the differing records"
    );
    Sample {
        ms,
        bytes: sent,
        peak_kb: proc_kb("VmHWM:"),
        rss_before_kb,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn bench(n: usize, runs: usize) -> Vec<String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (open(&tmp.path().join("a")), open(&tmp.path().join("b")));
    let t = Instant::now();
    let ids = fill(&a, n);
    fill(&b, n);
    eprintln!(
        "N = {n}: both stores filled in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let responder = Responder::new(a.clone(), None, None, Transport::Plaintext);
    let served = server::start(listener, responder, None)
        .await
        .expect("serve");

    let mut rows = Vec::new();
    let mut row = |case: &str, s: &[Sample], target: &str| {
        let ms = median(s.iter().map(|x| x.ms).collect());
        let bytes = median(s.iter().map(|x| x.bytes as f64).collect());
        let peak = s.iter().map(|x| x.peak_kb).max().unwrap_or(0);
        let base = s.iter().map(|x| x.rss_before_kb).max().unwrap_or(0);
        let line = format!(
            "| {n} | {case} | {ms:.1} ms | {:.1} KB | {:.1} MB (process before: {:.1} MB) | {target} |",
            bytes / 1000.0,
            peak as f64 / 1024.0,
            base as f64 / 1024.0
        );
        eprintln!("{line}");
        rows.push(line);
    };

    let none = BTreeSet::new();
    let mut s = Vec::new();
    for _ in 0..runs {
        s.push(verify_once(&b, &served, &none).await);
    }
    let target = if n >= 1_000_000 {
        "≤ 200 ms, ≤ 10 KB"
    } else {
        "(1M: ≤ 200 ms, ≤ 10 KB)"
    };
    row("in sync", &s, target);

    // 100 scattered differences: every (n / 100)-th record edited on A.
    let step = n / DIFFS;
    let mut want = BTreeSet::new();
    for k in 0..DIFFS {
        let id = ids[k * step + k % step.max(1)];
        a.write_one(LocalOp {
            table: TABLE.into(),
            id,
            edit: Edit::Patch(json!({"age": 1000 + k}).as_object().expect("obj").clone()),
        })
        .expect("edit");
        want.insert(id);
    }
    let mut s = Vec::new();
    for _ in 0..runs {
        s.push(verify_once(&b, &served, &want).await);
    }
    let target = if n >= 1_000_000 {
        "≤ 1 s, ≤ 100 KB"
    } else {
        "(1M: ≤ 1 s, ≤ 100 KB)"
    };
    row("100 scattered differences", &s, target);
    served.stop().await;
    rows
}

fn write_results(rows: &[String]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    const HEAD: &str = "## Verify by set reconciliation (issue #17)";
    let section = format!(
        "{HEAD}\n\nWritten by `cargo bench --bench verify` (benches/verify.rs) on {}: two on-disk \
         stores with the same N records in one process, one served over the real JSON-RPC \
         server on 127.0.0.1 (plaintext), `verify` from the other with the real client. Bytes \
         are both directions at the server's sockets, HTTP framing included; peak RSS is the \
         whole process's VmHWM during the verify (reset before it), which holds both stores' \
         caches. Median of the runs; every run checked that verify named exactly the edited \
         ids (none when in sync).\n\n\
         | N | case | time | bytes | peak RSS during verify | target |\n|---|---|---|---|---|---|\n{}\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        rows.join("\n")
    );
    let new = match old.find(HEAD) {
        Some(start) => {
            let rest = &old[start + HEAD.len()..];
            let end = rest
                .find("\n## ")
                .map_or(old.len(), |e| start + HEAD.len() + e + 1);
            format!("{}{}{}", &old[..start], section, &old[end..])
        }
        None => format!("{}\n\n{section}", old.trim_end()),
    };
    std::fs::write(&path, new).expect("write bench/RESULTS.md");
}

fn main() {
    let runs: usize = std::env::var("FIELDSYNC_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let mut ns: Vec<usize> = std::env::var("FIELDSYNC_BENCH_N")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000]);
    if std::env::var("FIELDSYNC_BENCH_MILLION").as_deref() == Ok("1") {
        ns.push(1_000_000);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    for n in ns {
        rows.extend(rt.block_on(bench(n, runs)));
    }
    write_results(&rows);
}
