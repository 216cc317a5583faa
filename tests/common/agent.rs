//! Real-process harness for the sync tests: `fieldsync run` agents on 127.0.0.1 with ports read
//! from their "listening" line, CLI runs with bounded waits, and small helpers to make and
//! inspect data. Every child is killed on drop, so a failing test leaves no process behind.

// Each test binary compiles this module on its own and uses a different subset of it.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long an agent may take to print its listening line (debug builds, busy CI machines).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one CLI command may run; generous because the 20k-record sync runs in debug builds.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a stopped agent may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fieldsync")
}

/// What a finished command printed and returned.
#[derive(Clone, Debug)]
pub struct Output {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The command line, for failure messages.
    pub what: String,
}

impl Output {
    /// Panics with the full output unless the exit code is 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{} failed:\n{self}", self.what);
        self
    }

    /// Panics with the full output unless the exit code is `code`.
    #[track_caller]
    pub fn code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "{}: unexpected exit code:\n{self}",
            self.what
        );
        self
    }

    /// Stdout as one JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}):\n{self}", self.what))
    }

    /// The items of a list on stdout: one JSON array, or JSON lines (see
    /// `common::parse_lines`).
    #[track_caller]
    pub fn lines(&self) -> Vec<Value> {
        if let Ok(Value::Array(items)) = serde_json::from_str(self.stdout.trim()) {
            return items;
        }
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: line {l:?} is not JSON ({e})", self.what))
            })
            .collect()
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            truncate(&self.stdout),
            truncate(&self.stderr)
        )
    }
}

fn truncate(s: &str) -> &str {
    // Failure messages with a whole 20k-record export in them are unreadable.
    match s.char_indices().nth(4000) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A CLI process running in the background (for the tests that kill it mid-way).
pub struct Running {
    child: Option<Child>,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
    what: String,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// True once the process has exited (reaps it).
    pub fn finished(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Waits for the process, killing it and panicking after `timeout`.
    #[track_caller]
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let mut child = self.child.take().expect("not waited yet");
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    // Where it stopped, before killing it loses that.
                    let stacks = super::threads::dump(child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    let partial = self.collect(-1);
                    panic!(
                        "{} did not finish within {timeout:?}:\n{partial}\n--- its threads:\n{stacks}",
                        self.what
                    );
                }
            }
        };
        self.collect(status.code().unwrap_or(-1))
    }

    /// SIGKILLs the process and returns what it printed until then.
    pub fn kill9(mut self) -> Output {
        let mut child = self.child.take().expect("not waited yet");
        let _ = child.kill();
        let status = child.wait().ok();
        self.collect(status.and_then(|s| s.code()).unwrap_or(-1))
    }

    fn collect(&mut self, code: i32) -> Output {
        let join =
            |h: Option<JoinHandle<String>>| h.and_then(|h| h.join().ok()).unwrap_or_default();
        Output {
            code,
            stdout: join(self.out.take()),
            stderr: join(self.err.take()),
            what: self.what.clone(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `fieldsync ARGS` in the background.
pub fn spawn_fieldsync(args: &[&str]) -> Running {
    super::init_if_needed(&args.iter().map(std::ffi::OsStr::new).collect::<Vec<_>>());
    let what = format!("fieldsync {}", args.join(" "));
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let out = child.stdout.take().map(spawn_reader);
    let err = child.stderr.take().map(spawn_reader);
    Running {
        child: Some(child),
        out,
        err,
        what,
    }
}

/// Runs `fieldsync ARGS` to completion (bounded by [`CLI_TIMEOUT`]).
#[track_caller]
pub fn fieldsync(args: &[&str]) -> Output {
    spawn_fieldsync(args).wait(CLI_TIMEOUT)
}

/// `fieldsync --data-dir DIR ARGS` in the background.
pub fn spawn(dir: &Path, args: &[&str]) -> Running {
    if matches!(args.first(), Some(&"sync") | Some(&"verify")) {
        ensure_member(dir);
    }
    let d = dir.to_str().expect("utf-8 temp path");
    let mut all = vec!["--data-dir", d];
    all.extend_from_slice(args);
    spawn_fieldsync(&all)
}

/// Runs `fieldsync --data-dir DIR ARGS` to completion. While an agent runs on DIR the CLI
/// forwards the command to it, exactly as a user's command would be.
#[track_caller]
pub fn run(dir: &Path, args: &[&str]) -> Output {
    spawn(dir, args).wait(CLI_TIMEOUT)
}

/// A `fieldsync run` agent on a data directory, listening on a free port of 127.0.0.1.
pub struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    addr: String,
    instance: String,
    log: PathBuf,
    drain: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts an agent on `dir` and waits (bounded) for its listening line.
    #[track_caller]
    pub fn start(dir: &Path) -> Agent {
        Self::start_with(dir, &[])
    }

    /// Starts a plaintext agent (`--insecure-plaintext`) for raw JSON-RPC tests.
    #[track_caller]
    pub fn start_plaintext(dir: &Path) -> Agent {
        Self::start_with(dir, &["--insecure-plaintext"])
    }

    /// Starts an agent with extra `run` arguments.
    #[track_caller]
    pub fn start_with(dir: &Path, extra: &[&str]) -> Agent {
        Self::start_with_env(dir, extra, &[])
    }

    /// Starts an agent with extra `run` arguments and environment variables (e.g. `RUST_LOG`).
    #[track_caller]
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        std::fs::create_dir_all(dir).expect("create data dir");
        if !extra.contains(&"--insecure-plaintext") {
            ensure_member(dir);
        }
        // Beside the data dir, not in it, so the log is never mistaken for database content.
        let log = dir.with_extension(format!("agent-{}.log", Uuid::new_v4().simple()));
        let log_file = std::fs::File::create(&log).expect("create agent log");
        let mut child = Command::new(bin())
            .args(["--data-dir", dir.to_str().expect("utf-8 temp path")])
            .args(["run", "--listen", "127.0.0.1:0", "--no-discovery"])
            .args(extra)
            .envs(env.iter().copied())
            // Agents of parallel tests must not race for the HTTP API's default port (the
            // loser logs "the HTTP API is off"); tests that use the API name their own.
            .args(if extra.contains(&"--api-listen") {
                &[][..]
            } else {
                &["--api-listen", "127.0.0.1:0"][..]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start fieldsync run");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let drain = std::thread::spawn(move || read_listening(stdout, tx));
        let mut agent = Agent {
            child: Some(child),
            dir: dir.to_path_buf(),
            addr: String::new(),
            instance: String::new(),
            log,
            drain: Some(drain),
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(line)) => line,
            other => {
                let log = agent.log_text();
                agent.kill9();
                panic!("agent on {dir:?} did not print its listening line ({other:?}):\n{log}");
            }
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("listening line {line:?} is not JSON: {e}"));
        assert_eq!(v["event"], "listening", "{line}");
        agent.addr = v["listen"].as_str().expect("listen address").to_string();
        agent.instance = v["instance"].as_str().expect("instance id").to_string();
        agent
    }

    /// The sync address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The instance id from the listening line.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// What the agent logged on stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) for a clean exit; panics if it does not exit with 0.
    #[track_caller]
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if sent && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break None,
            }
        };
        self.join_drain();
        match status {
            Some(s) => assert!(
                s.success(),
                "agent exited with {s} after SIGTERM:\n{}",
                self.log_text()
            ),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agent did not exit within {STOP_TIMEOUT:?} of SIGTERM:\n{}",
                    self.log_text()
                );
            }
        }
    }

    /// SIGKILL (no chance to clean up), and reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_drain();
    }

    fn join_drain(&mut self) {
        if let Some(h) = self.drain.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() && std::thread::panicking() {
            eprintln!(
                "--- log of agent {} on {:?} ---\n{}",
                self.addr,
                self.dir,
                self.log_text()
            );
        }
        self.kill9();
    }
}

/// Sends the first stdout line, then keeps reading so the agent never writes into a closed pipe.
fn read_listening(stdout: ChildStdout, tx: mpsc::Sender<Option<String>>) {
    let mut r = BufReader::new(stdout);
    let mut line = String::new();
    let first = match r.read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim().to_string()),
        _ => None,
    };
    let _ = tx.send(first);
    let mut sink = Vec::new();
    let _ = r.read_to_end(&mut sink);
}

/// Polls `cond` every 20 ms until it holds; panics after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Data directories and data.

/// Writes `fieldsync.toml`: `top` lines first (e.g. `unique = [...]`), then a `[sync]` table
/// with `sync` lines. Periodic syncs are pushed out to an hour so that only the sessions a test
/// starts run, and what each test observes is deterministic.
pub fn write_config(dir: &Path, top: &str, sync: &str) {
    std::fs::create_dir_all(dir).expect("create data dir");
    let text = format!("{top}\n[sync]\ninterval_secs = 3600\n{sync}\n");
    std::fs::write(dir.join("fieldsync.toml"), text).expect("write fieldsync.toml");
}

/// A fresh data dir `name` under `root`, with the default test config. It joins the test's
/// deployment (one CA per parent directory) the first time it runs an agent or a sync, so
/// agents and syncs use real mutual TLS.
pub fn data_dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    write_config(&d, "", "");
    d
}

/// Fresh data dirs named `names` under `root`, each already a member of the test deployment
/// (an import's derived ids depend on the deployment, so members join before importing).
pub fn members(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let d = data_dir(root, n);
            ensure_member(&d);
            d
        })
        .collect()
}

/// A fresh data dir that never joins a deployment: it syncs only with `--insecure-plaintext`
/// (the raw JSON-RPC tests speak plain HTTP to it).
pub fn plaintext_data_dir(root: &Path, name: &str) -> PathBuf {
    let d = data_dir(root, name);
    std::fs::write(d.join(".plaintext"), "").expect("mark plaintext");
    d
}

/// Makes `dir` a member of its parent directory's test deployment (keeping its instance id),
/// unless it is a plaintext dir or already a member.
pub fn ensure_member(dir: &Path) {
    if dir.join(mesh_file()).exists() || dir.join(".plaintext").exists() {
        return;
    }
    let root = dir.parent().expect("data dirs live in a test root");
    let coordinator = root.join(".coordinator");
    let ca = root.join("test-ca.fsca");
    let (c, ca_s) = (coordinator.to_str().unwrap(), ca.to_str().unwrap());
    if !ca.exists() {
        fieldsync(&[
            "--data-dir",
            c,
            "mesh",
            "create",
            "--name",
            "test",
            "--out",
            ca_s,
        ])
        .ok();
    }
    let id = spawn_fieldsync(&["--data-dir", dir.to_str().unwrap(), "status"])
        .wait(CLI_TIMEOUT)
        .ok()
        .json()["instance"]
        .as_str()
        .expect("status names the instance")
        .to_string();
    let cred = dir.with_extension("fsmesh");
    let cred_s = cred.to_str().unwrap();
    fieldsync(&[
        "--data-dir",
        c,
        "mesh",
        "enroll",
        "--out",
        cred_s,
        "--ca",
        ca_s,
        "--instance",
        &id,
    ])
    .ok();
    spawn_fieldsync(&[
        "--data-dir",
        dir.to_str().unwrap(),
        "init",
        "--mesh",
        cred_s,
    ])
    .wait(CLI_TIMEOUT)
    .ok();
}

fn mesh_file() -> &'static str {
    "credential.fsmesh"
}

/// Copies a stopped instance's data directory (a backup, or a restore from one).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy target");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// A person record of roughly 330 bytes, like the field data the tool is built for.
pub fn person(i: usize) -> Value {
    let status = ["missing", "found_alive", "in_shelter", "unknown"][i % 4];
    json!({
        "name": format!("Person {i:05} {}", Uuid::new_v4().simple()),
        "age": (i * 7) % 90,
        "status": status,
        "district": format!("district-{}", i % 37),
        "phone": format!("+1 555 {:07}", i),
        "shelter": format!("shelter-{}", i % 11),
        "reported_by": "Red Cross Team B",
        "notes": "Last seen near the river crossing with two children; needs insulin, \
                  speaks Swahili and French.",
    })
}

/// `n` new person records with fresh ids.
pub fn people(n: usize) -> Vec<(Uuid, Value)> {
    (0..n).map(|i| (Uuid::new_v4(), person(i))).collect()
}

/// Imports records into `table` with `fieldsync import` (one all-or-nothing batch).
#[track_caller]
pub fn import(dir: &Path, table: &str, records: &[(Uuid, Value)]) {
    let file = dir.with_extension(format!("import-{}.jsonl", Uuid::new_v4().simple()));
    let mut text = String::with_capacity(records.len() * 400);
    for (id, fields) in records {
        let line = json!({"table": table, "id": id.to_string(), "fields": fields});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(&file, text).expect("write import file");
    let out = run(dir, &["import", table, file.to_str().expect("utf-8")]).ok();
    assert_eq!(out.json()["records"], records.len(), "{out}");
    let _ = std::fs::remove_file(file);
}

/// `put TABLE --id ID JSON`.
#[track_caller]
pub fn put(dir: &Path, table: &str, id: &Uuid, fields: &Value) {
    run(
        dir,
        &["put", table, "--id", &id.to_string(), &fields.to_string()],
    )
    .ok();
}

/// `patch TABLE ID JSON`.
#[track_caller]
pub fn patch(dir: &Path, table: &str, id: &Uuid, fields: &Value) {
    run(dir, &["patch", table, &id.to_string(), &fields.to_string()]).ok();
}

/// `delete TABLE ID`.
#[track_caller]
pub fn delete(dir: &Path, table: &str, id: &Uuid) {
    run(dir, &["delete", table, &id.to_string()]).ok();
}

/// `get TABLE ID --meta --include-deleted`, or `None` if the record does not exist at all.
#[track_caller]
pub fn get(dir: &Path, table: &str, id: &Uuid) -> Option<Value> {
    let out = run(
        dir,
        &["get", table, &id.to_string(), "--meta", "--include-deleted"],
    );
    match out.code {
        0 => Some(out.json()),
        1 => None,
        _ => panic!("get failed:\n{out}"),
    }
}

/// True if the record exists and is not deleted.
#[track_caller]
pub fn alive(dir: &Path, table: &str, id: &Uuid) -> bool {
    get(dir, table, id).is_some_and(|v| v.get("deleted").is_none())
}

/// `history TABLE ID` as JSON lines.
#[track_caller]
pub fn history(dir: &Path, table: &str, id: &Uuid) -> Vec<Value> {
    run(dir, &["history", table, &id.to_string()]).ok().lines()
}

/// Every conflict log entry, resolved ones too.
#[track_caller]
pub fn conflicts(dir: &Path) -> Vec<Value> {
    run(dir, &["conflicts", "--all"]).ok().lines()
}

/// `digest` of every table: `{"count","sha256","tables"}`.
#[track_caller]
pub fn digest(dir: &Path) -> Value {
    run(dir, &["digest"]).ok().json()
}

/// `status`.
#[track_caller]
pub fn status(dir: &Path) -> Value {
    run(dir, &["status"]).ok().json()
}

/// The instance id of a data dir (creates the instance on first use).
#[track_caller]
pub fn instance_id(dir: &Path) -> String {
    status(dir)["instance"]
        .as_str()
        .expect("instance in status")
        .to_string()
}

/// Live records of `table` (0 when the table does not exist yet).
#[track_caller]
pub fn live_count(dir: &Path, table: &str) -> u64 {
    let out = run(dir, &["tables"]).ok();
    out.lines()
        .iter()
        .find(|t| t["table"] == table)
        .and_then(|t| t["live"].as_u64())
        .unwrap_or(0)
}

/// `export TABLE --include-deleted` as text (canonical JSON lines in id order).
#[track_caller]
pub fn export(dir: &Path, table: &str) -> String {
    run(dir, &["export", table, "--include-deleted"])
        .ok()
        .stdout
}

/// One direction of a `sync` summary.
#[derive(Clone, Debug)]
pub struct Direction {
    /// Records transferred.
    pub records: u64,
    /// Records that changed on the receiving side.
    pub applied: u64,
    /// Conflicts logged on the receiving side.
    pub conflicts: u64,
    /// The raw summary line.
    pub raw: Value,
}

/// What `fieldsync sync` reported.
#[derive(Clone, Debug)]
pub struct SyncSummary {
    /// Pulled from the peer.
    pub received: Direction,
    /// Pushed to the peer.
    pub sent: Direction,
}

impl SyncSummary {
    /// Records moved in both directions.
    pub fn moved(&self) -> u64 {
        self.received.records + self.sent.records
    }
}

/// Parses the two summary lines of a successful `sync`.
#[track_caller]
pub fn summary(out: &Output) -> SyncSummary {
    let lines = out.lines();
    let dir = |name: &str| {
        let v = lines
            .iter()
            .find(|l| l["direction"] == name)
            .unwrap_or_else(|| panic!("no {name:?} line in sync output:\n{out}"))
            .clone();
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        Direction {
            records: n("records"),
            applied: n("applied"),
            conflicts: n("conflicts"),
            raw: v.clone(),
        }
    };
    SyncSummary {
        received: dir("received"),
        sent: dir("sent"),
    }
}

/// `sync ADDR` from `dir`; panics unless it succeeds.
#[track_caller]
pub fn sync(dir: &Path, addr: &str) -> SyncSummary {
    summary(&run(dir, &peer_args("sync", dir, addr)).ok())
}

/// `CMD [--insecure-plaintext] ADDR`: plaintext only for a data dir in no deployment.
pub fn peer_args<'a>(cmd: &'a str, dir: &Path, addr: &'a str) -> Vec<&'a str> {
    if dir.join(".plaintext").exists() {
        vec![cmd, "--insecure-plaintext", addr]
    } else {
        vec![cmd, addr]
    }
}

/// `verify ADDR` from `dir`: the exit code and the per-table lines.
#[track_caller]
pub fn verify(dir: &Path, addr: &str) -> (i32, Vec<Value>) {
    let out = run(dir, &peer_args("verify", dir, addr));
    assert!(
        out.code == 0 || out.code == 1,
        "verify failed to run:\n{out}"
    );
    (out.code, out.lines())
}

/// Asserts that `verify` says in sync and that both sides have the same digest and table
/// counts; returns the digest.
#[track_caller]
pub fn assert_same(a: &Path, b: &Path, b_addr: &str) -> Value {
    let (code, lines) = verify(a, b_addr);
    assert_eq!(code, 0, "verify says not in sync: {lines:?}");
    assert!(lines.iter().all(|l| l["in_sync"] == true), "{lines:?}");
    let d = digest(a);
    assert_eq!(d, digest(b), "digests differ");
    let (ta, tb) = (
        run(a, &["tables"]).ok().stdout,
        run(b, &["tables"]).ok().stdout,
    );
    assert_eq!(ta, tb, "table counts differ");
    d
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP, for feeding the sync endpoint what a well-behaved client never sends.

/// The HTTP status and body of a raw HTTP/1.1 POST of `body` to `addr` (bounded by timeouts).
#[track_caller]
pub fn http_post(addr: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    s.set_write_timeout(Some(Duration::from_secs(60))).ok();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write request head");
    s.write_all(body).expect("write request body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response head in {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    // Bounded by the input: every round consumes at least one line.
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A JSON-RPC call with `params` as the single positional parameter; returns the parsed reply
/// (`{"result": ..}` or `{"error": ..}`) after checking it is HTTP 200 and JSON.
#[track_caller]
pub fn rpc(addr: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": [params]});
    rpc_raw(addr, body.to_string().as_bytes())
}

/// POSTs raw bytes as a JSON-RPC request and parses the reply.
#[track_caller]
pub fn rpc_raw(addr: &str, body: &[u8]) -> Value {
    let (status, text) = http_post(addr, body);
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("HTTP {status}: reply is not JSON ({e}): {text:?}"));
    assert_eq!(status, 200, "HTTP status for a JSON-RPC reply: {v}");
    v
}

/// A stand-in "peer" on 127.0.0.1 that answers every HTTP request with whatever `answer`
/// returns for the request body (raw bytes, HTTP head included). Serves until dropped.
pub struct FakePeer {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

impl FakePeer {
    /// Starts serving.
    pub fn start(answer: impl Fn(&str) -> Vec<u8> + Send + 'static) -> FakePeer {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake peer");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + CLI_TIMEOUT;
            let mut served = 0;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).ok();
                        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                        let body = read_http_body(&mut s);
                        let _ = s.write_all(&answer(&body));
                        let _ = s.flush();
                        served += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            served
        });
        FakePeer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Its address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Stops serving and returns how many requests it answered.
    pub fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP request and returns its body (by Content-Length; empty on any trouble).
fn read_http_body(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Bounded by the read timeout and by a size cap.
    while buf.len() < (1 << 20) {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::new()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An HTTP 200 response carrying a JSON body.
pub fn http_json(body: &Value) -> Vec<u8> {
    let text = body.to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    )
    .into_bytes()
}

/// `n` new records (`{"name": "p<i>", "n": i}`) written into `table` of an open store in one
/// batch, as an import does; returns their ids.
pub fn import_into(store: &fieldsync::store::Store, table: &str, n: usize) -> Vec<Uuid> {
    use fieldsync::store::{ImportRow, UpdateMode};
    let rows: Vec<ImportRow> = (0..n)
        .map(|i| ImportRow {
            id: Uuid::new_v4(),
            line: i as u64 + 1,
            fields: json!({"name": format!("p{i}"), "n": i})
                .as_object()
                .unwrap()
                .clone(),
            update: UpdateMode::Replace,
        })
        .collect();
    store.import_rows(table, &rows).unwrap();
    rows.into_iter().map(|r| r.id).collect()
}
