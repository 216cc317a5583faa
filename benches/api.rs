//! HTTP API benchmark (issue #13): the API server of `fieldsync run` (`fieldsync::http::start`
//! over a real sled store on disk) on 127.0.0.1, spoken to by plain HTTP/1.1 keep-alive
//! clients on their own threads. Run with `cargo bench --bench api`; prints the rows for
//! bench/RESULTS.md ("HTTP API").
//!
//! - writes: 8 clients, each PUTting FIELDSYNC_BENCH_API_WRITES (default 250) new records one
//!   at a time; every write is durable before its answer (group commit shares the fsyncs).
//!   Reports writes/s, p50/p99 latency and how many flushes the writes took.
//! - change from a peer → long poll and SSE: a record written on a second store is merged
//!   into the served store as a peer's change (`Store::apply_remote`, the commit a sync page
//!   makes), FIELDSYNC_BENCH_API_EVENTS (default 30) times; latency from the start of that
//!   commit (its fsync included) to the long-poll answer and to the SSE event.
//! - reads: 8 clients GETting random records, FIELDSYNC_BENCH_API_READS (default 2500) each.
//!
//! Every answer is checked (status, and the record read back); a failed check panics before
//! any number is printed.

use fieldsync::app::App;
use fieldsync::config::Config;
use fieldsync::merge::Edit;
use fieldsync::store::{Knowledge, LocalOp, Store};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(60);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    r: BufReader<TcpStream>,
    host: String,
    token: String,
}

impl Conn {
    fn open(host: &str, token: &str) -> Conn {
        let s = TcpStream::connect(host).expect("connect to the API");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            r: BufReader::new(s),
            host: host.to_string(),
            token: token.to_string(),
        }
    }

    fn send(&mut self, method: &str, path: &str, body: &[u8]) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            self.token,
            body.len()
        );
        let s = self.r.get_mut();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
    }

    /// Status line and headers: (status, content length, chunked).
    fn head(&mut self) -> (u16, Option<usize>, bool) {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let (mut len, mut chunked) = (None, false);
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                return (status, len, chunked);
            }
            let (k, v) = h.split_once(':').expect("header line");
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            }
            if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
        }
    }

    fn req(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        self.send(method, path, body);
        let (status, len, chunked) = self.head();
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut line = String::new();
                self.r.read_line(&mut line).unwrap();
                let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
                let mut chunk = vec![0; n + 2];
                self.r.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(len.expect("content-length"), 0);
            self.r.read_exact(&mut body).unwrap();
        }
        (status, body)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn person(i: usize) -> Value {
    json!({"name": format!("Person {i}"), "age": i % 90, "status": "missing",
           "notes": "Last seen near the market, blue jacket.", "updated_by": "bench"})
}

/// Runs `per_client` requests on each of 8 connections at once; each call of `one(client, n)`
/// returns (method, path, body, expected status). Returns every latency and the wall time.
fn hammer(
    host: &str,
    token: &str,
    per_client: usize,
    one: impl Fn(usize, usize) -> (&'static str, String, Vec<u8>, u16) + Send + Sync + 'static,
) -> (Vec<Duration>, Duration) {
    let one = Arc::new(one);
    let barrier = Arc::new(std::sync::Barrier::new(CLIENTS + 1));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (one, barrier) = (one.clone(), barrier.clone());
            let mut conn = Conn::open(host, token);
            std::thread::spawn(move || {
                barrier.wait();
                let mut lat = Vec::with_capacity(per_client);
                for n in 0..per_client {
                    let (method, path, body, want) = one(c, n);
                    let t = Instant::now();
                    let (status, resp) = conn.req(method, &path, &body);
                    lat.push(t.elapsed());
                    assert_eq!(
                        status,
                        want,
                        "{method} {path}: {}",
                        String::from_utf8_lossy(&resp)
                    );
                }
                lat
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    let mut all = Vec::new();
    for th in threads {
        all.extend(th.join().expect("a client failed"));
    }
    let wall = t.elapsed();
    all.sort();
    (all, wall)
}

fn main() {
    let writes = env_usize("FIELDSYNC_BENCH_API_WRITES", 250);
    let reads = env_usize("FIELDSYNC_BENCH_API_READS", 2500);
    let events = env_usize("FIELDSYNC_BENCH_API_EVENTS", 30);
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&tmp.path().join("a"), Config::default()).unwrap());
    let peer = Store::open(&tmp.path().join("b"), Config::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt
        .block_on(fieldsync::http::start(
            App::new(store.clone(), None),
            "127.0.0.1:0",
        ))
        .unwrap();
    let host = api.url.trim_start_matches("http://").to_string();
    let token = fieldsync::http::read_api_file(store.dir()).unwrap().token;

    // Writes: 8 clients, single-record PUTs of new records.
    let ids: Arc<Vec<Vec<uuid::Uuid>>> = Arc::new(
        (0..CLIENTS)
            .map(|_| (0..writes).map(|_| uuid::Uuid::new_v4()).collect())
            .collect(),
    );
    let flushes = store.group_flushes();
    let w_ids = ids.clone();
    let (lat, wall) = hammer(&host, &token, writes, move |c, n| {
        let body = person(c * 100_000 + n).to_string().into_bytes();
        let path = format!("/v1/tables/person/records/{}", w_ids[c][n]);
        ("PUT", path, body, 200)
    });
    let flushes = store.group_flushes() - flushes;
    let total = CLIENTS * writes;
    let live = store.tables().unwrap();
    assert_eq!(
        live.iter()
            .find(|(t, _)| t == "person")
            .map(|(_, c)| c.live),
        Some(total as u64),
        "every acknowledged write is a record"
    );
    println!(
        "| API writes, 8 clients × {writes} PUTs (new records, each durable before its answer) \
         | {:.0} writes/s, p50 {:.1} ms, p99 {:.1} ms, {flushes} fsyncs for {total} writes \
         | ≥ 2,000/s: {}, p99 ≤ 25 ms: {} |",
        total as f64 / wall.as_secs_f64(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        met(total as f64 / wall.as_secs_f64() >= 2000.0),
        met(percentile(&lat, 0.99) <= Duration::from_millis(25)),
    );

    // A peer's change → long poll and SSE.
    let (lp_tx, lp_rx) = mpsc::channel::<(u64, Instant)>();
    let (sse_tx, sse_rx) = mpsc::channel::<(u64, Instant)>();
    let (ask_tx, ask_rx) = mpsc::channel::<u64>();
    {
        let mut conn = Conn::open(&host, &token);
        std::thread::spawn(move || {
            while let Ok(since) = ask_rx.recv() {
                let path = format!("/v1/changes?since={since}&feed=longpoll&timeout_ms=30000");
                let (status, body) = conn.req("GET", &path, b"");
                let at = Instant::now();
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                let page: Value = serde_json::from_slice(&body).unwrap();
                let seq = page["last_seq"].as_u64().unwrap_or(0);
                if lp_tx.send((seq, at)).is_err() {
                    return;
                }
            }
        });
    }
    {
        let mut conn = Conn::open(&host, &token);
        let since = store.seq();
        conn.send("GET", &format!("/v1/changes?since={since}&feed=sse"), b"");
        let (status, _, _) = conn.head();
        assert_eq!(status, 200);
        std::thread::spawn(move || {
            // An event is `id:`, `event:` and `data:` lines ended by a blank line; the chunked
            // framing's size lines and trailers are skipped. The event counts on arrival of
            // its end.
            let mut line = String::new();
            let (mut seq, mut change) = (None, false);
            loop {
                line.clear();
                if conn.r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let l = line.trim_end();
                if l == "event: change" {
                    change = true;
                } else if let Some(id) = l.strip_prefix("id: ").or(l.strip_prefix("id:")) {
                    seq = id.trim().parse::<u64>().ok();
                } else if l.is_empty() {
                    if let (Some(s), true) = (seq, change) {
                        if sse_tx.send((s, Instant::now())).is_err() {
                            return;
                        }
                    }
                    (seq, change) = (None, false);
                }
            }
        });
    }
    let mut lp = Vec::new();
    let mut sse = Vec::new();
    for i in 0..events {
        let id = uuid::Uuid::new_v4();
        let mut fields = fieldsync::model::Fields::new();
        fields.insert("name".into(), json!(format!("From the peer {i}")));
        peer.write_one(LocalOp {
            table: "person".into(),
            id,
            edit: Edit::Put(fields),
        })
        .unwrap();
        let change = peer
            .outgoing_change("person", &id, &Knowledge::new())
            .unwrap()
            .expect("the peer has the record");
        ask_tx.send(store.seq()).unwrap();
        // Let the long poll reach the server and start waiting.
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        let stats = store.apply_remote(Some(peer.id()), &[change]).unwrap();
        assert_eq!(stats.applied, 1);
        let seq = store.seq();
        let (lseq, lat) = lp_rx.recv_timeout(TIMEOUT).expect("long poll answered");
        assert_eq!(lseq, seq, "the long poll returns the peer's change");
        lp.push(lat.saturating_duration_since(t0));
        loop {
            let (sseq, at) = sse_rx.recv_timeout(TIMEOUT).expect("SSE event");
            if sseq == seq {
                sse.push(at.saturating_duration_since(t0));
                break;
            }
        }
    }
    lp.sort();
    sse.sort();
    println!(
        "| peer change → long poll, {events} changes (from the start of the commit, fsync \
         included) | p50 {:.1} ms, max {:.1} ms | ≤ 100 ms: {} |",
        ms(percentile(&lp, 0.5)),
        ms(*lp.last().unwrap()),
        met(*lp.last().unwrap() <= Duration::from_millis(100)),
    );
    println!(
        "| peer change → SSE event, {events} changes (same) | p50 {:.1} ms, max {:.1} ms | \
         ≤ 100 ms: {} |",
        ms(percentile(&sse, 0.5)),
        ms(*sse.last().unwrap()),
        met(*sse.last().unwrap() <= Duration::from_millis(100)),
    );

    // Reads: 8 clients, random records written above.
    let r_ids = ids.clone();
    let (lat, wall) = hammer(&host, &token, reads, move |c, n| {
        // A cheap deterministic spread over every client's records.
        let k = (c * 7919 + n * 104_729) % (CLIENTS * writes);
        let id = r_ids[k % CLIENTS][k / CLIENTS];
        (
            "GET",
            format!("/v1/tables/person/records/{id}"),
            Vec::new(),
            200,
        )
    });
    let total = CLIENTS * reads;
    println!(
        "| API reads, 8 clients × {reads} GETs of single records | {:.0} reads/s, p50 {:.2} ms, \
         p99 {:.2} ms | ≥ 20,000/s: {} |",
        total as f64 / wall.as_secs_f64(),
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        met(total as f64 / wall.as_secs_f64() >= 20_000.0),
    );
    rt.block_on(api.stop());
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}
