//! Helpers for integration tests that run the real `fieldsync` binary on temporary data
//! directories: run a command with a time limit, read its JSON output, keep a long-running
//! process (an agent) under control, wait for conditions with a deadline.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Longest any single command may run before the test fails: generous, because the machine
/// running tests may be slow and busy, but finite, so a hang fails instead of blocking CI.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fieldsync"))
}

/// A `fieldsync` command with an environment that cannot leak the developer's own data in:
/// no `$FIELDSYNC_DIR`, `$HOME` pointing at `home`, quiet logging.
pub fn command(home: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("FIELDSYNC_DIR")
        .env_remove("XDG_DATA_HOME")
        .env_remove("RUST_LOG")
        .env("HOME", home);
    c
}

/// The commands that run on a data directory holding no database; every other one refuses it
/// ("no fieldsync database at PATH").
pub const WITHOUT_DATABASE: &[&str] = &[
    "init", "run", "restore", "doctor", "generate", "repair", "console",
];

/// A fresh test data directory starts the way a user starts one: `fieldsync init` runs first
/// when `args` (a whole command line, `--data-dir DIR` included) is a command that needs a
/// database and DIR has none yet. Commands on other directories are left alone.
pub fn init_if_needed(args: &[&std::ffi::OsStr]) {
    let Some(pos) = args.iter().position(|a| *a == "--data-dir") else {
        return;
    };
    let Some(dir) = args.get(pos + 1).map(Path::new) else {
        return;
    };
    if dir.join("db").is_dir() {
        return;
    }
    let word = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != pos + 1)
        .map(|(_, a)| a.to_string_lossy())
        .find(|a| !a.starts_with('-'));
    match word.as_deref() {
        None => {}
        Some(w) if WITHOUT_DATABASE.contains(&w) => {}
        Some(_) => {
            let mut c = Command::new(bin());
            c.env_remove("FIELDSYNC_DIR")
                .arg("--data-dir")
                .arg(dir)
                .args(["--json", "init"]);
            let o = run(c, None);
            assert_eq!(o.code, 0, "init of a test data directory: {o:?}");
        }
    }
}

/// What a finished command did.
#[derive(Debug)]
pub struct Output {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Asserts exit code 0 and returns self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }

    /// Asserts the exit code and a one-line stderr message containing every one of `words`.
    #[track_caller]
    pub fn fails(&self, code: i32, words: &[&str]) {
        assert_eq!(self.code, code, "wrong exit code: {self:?}");
        let msg = self.stderr.trim_end();
        assert!(
            !msg.is_empty() && !msg.contains('\n'),
            "expected a one-line error, got {msg:?}"
        );
        for w in words {
            assert!(msg.contains(w), "error {msg:?} does not mention {w:?}");
        }
    }

    /// Stdout parsed as one JSON value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {:?}", self.stdout))
    }

    /// Stdout parsed as JSON lines.
    #[track_caller]
    pub fn lines(&self) -> Vec<Value> {
        parse_lines(&self.stdout)
    }

    /// Stdout without the trailing newline.
    pub fn text(&self) -> &str {
        self.stdout.trim_end()
    }

    /// The id a write or `init` printed: `id` (put/patch/delete) or `instance` (init) of its
    /// JSON object.
    #[track_caller]
    pub fn id(&self) -> String {
        let v = self.json();
        v.get("id")
            .or_else(|| v.get("instance"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no id in {v}"))
            .to_string()
    }
}

/// The items of a list a command printed: one JSON array (`conflicts`, `peers`, `tables`,
/// `history`, `held list`) or JSON lines (`list`, `export`, `sync`, `verify`, `doctor`),
/// failing the test on a line that is not JSON.
#[track_caller]
pub fn parse_lines(text: &str) -> Vec<Value> {
    if let Ok(Value::Array(items)) = serde_json::from_str(text.trim()) {
        return items;
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l:?}")))
        .collect()
}

/// Runs a command to completion with `stdin` as input, killing it after [`COMMAND_TIMEOUT`].
#[track_caller]
pub fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the fieldsync binary starts");
    // Writers and readers on their own threads: a child that fills one pipe while we block on
    // another would otherwise deadlock.
    let writer = stdin.map(|data| {
        let data = data.to_vec();
        let mut pipe = child.stdin.take().expect("stdin is piped");
        std::thread::spawn(move || {
            // The child may exit without reading everything (an error); that is its answer.
            let _ = pipe.write_all(&data);
        })
    });
    let out = read_to_end_thread(child.stdout.take().expect("stdout is piped"));
    let err = read_to_end_thread(child.stderr.take().expect("stderr is piped"));
    let status = wait_with_deadline(&mut child, COMMAND_TIMEOUT)
        .unwrap_or_else(|| panic!("{cmd:?} still running after {COMMAND_TIMEOUT:?}; killed"));
    if let Some(w) = writer {
        w.join().expect("stdin writer thread");
    }
    Output {
        code: status.code().unwrap_or(-1),
        stdout: out.join().expect("stdout reader thread"),
        stderr: err.join().expect("stderr reader thread"),
    }
}

fn read_to_end_thread(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for a child to exit; kills it and returns `None` once `limit` has passed.
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            // Where it stopped, before killing it loses that (shown with the failing test's
            // output).
            eprintln!(
                "process {} did not exit within {limit:?}; its threads:\n{}",
                child.id(),
                threads::dump(child.id())
            );
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One fieldsync instance under test: its own temporary data directory (and `$HOME`), removed
/// when dropped. Two of them make two laptops.
pub struct Instance {
    tmp: TempDir,
}

impl Default for Instance {
    fn default() -> Self {
        Self::new()
    }
}

impl Instance {
    /// A fresh, empty instance.
    pub fn new() -> Self {
        Instance {
            tmp: tempfile::Builder::new()
                .prefix("fieldsync-test-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// The data directory (created by the first command).
    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// A scratch directory for input files, beside the data directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes a scratch file and returns its path.
    pub fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.scratch(name);
        std::fs::write(&p, contents).expect("write scratch file");
        p
    }

    /// Writes `fieldsync.toml` into the data directory.
    pub fn config(&self, text: &str) {
        std::fs::create_dir_all(self.dir()).expect("create data dir");
        std::fs::write(self.dir().join("fieldsync.toml"), text).expect("write config");
    }

    /// A command on this instance's data directory (`--data-dir`), not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = command(self.tmp.path());
        c.arg("--data-dir").arg(self.dir()).args(args);
        init_if_needed(&c.get_args().collect::<Vec<_>>());
        c
    }

    /// Runs a command on this instance.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Output {
        run(self.cmd(args), None)
    }

    /// Runs a command with `stdin` as input.
    #[track_caller]
    pub fn run_stdin(&self, args: &[&str], stdin: impl AsRef<[u8]>) -> Output {
        run(self.cmd(args), Some(stdin.as_ref()))
    }

    /// Runs a command that must succeed.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> Output {
        self.run(args).ok()
    }

    /// Starts a command in the background (an agent, or an import to interrupt).
    pub fn spawn(&self, args: &[&str]) -> Background {
        Background::spawn(self.cmd(args))
    }

    /// `fieldsync status` as JSON.
    #[track_caller]
    pub fn status(&self) -> Value {
        self.ok(&["status"]).json()
    }

    /// The feed position: moves on every write, so "unchanged" means nothing was written.
    #[track_caller]
    pub fn feed_seq(&self) -> u64 {
        self.status()["feed_seq"].as_u64().expect("feed_seq")
    }

    /// `fieldsync digest` as (count, sha256).
    #[track_caller]
    pub fn digest(&self, tables: &[&str]) -> (u64, String) {
        let mut args = vec!["digest"];
        args.extend_from_slice(tables);
        let v = self.ok(&args).json();
        (
            v["count"].as_u64().expect("count"),
            v["sha256"].as_str().expect("sha256").to_string(),
        )
    }

    /// Everything a failed command must leave untouched: feed position, digest, table counts.
    #[track_caller]
    pub fn snapshot(&self) -> (u64, (u64, String), Vec<Value>) {
        (
            self.feed_seq(),
            self.digest(&[]),
            self.ok(&["tables"]).lines(),
        )
    }

    /// Puts a record and returns its id.
    #[track_caller]
    pub fn put(&self, table: &str, json: &str) -> String {
        self.ok(&["put", table, json]).id()
    }
}

/// A process running in the background; killed when dropped, so a failing test leaves no
/// stray agents. Its stdout lines arrive on a channel so tests can wait for one.
pub struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Background {
    /// Starts `cmd` with piped output.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the fieldsync binary starts");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = read_to_end_thread(child.stderr.take().expect("stderr is piped"));
        Background {
            child,
            lines: rx,
            stderr,
        }
    }

    /// The process id (for signals).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for a stdout line matching `pred`; `None` on timeout or exit.
    pub fn wait_for_line(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return Some(l),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL (no chance to clean up, like a power cut) and reap. Returns whether the process
    /// was still running when killed.
    pub fn kill9(mut self) -> bool {
        let was_running = self.running();
        let _ = self.child.kill();
        let _ = self.child.wait();
        was_running
    }

    /// Waits up to `limit` for a normal exit; returns the exit code and stderr, or `None`
    /// (after killing it) on timeout.
    pub fn wait(mut self, limit: Duration) -> Option<(i32, String)> {
        let Some(status) = wait_with_deadline(&mut self.child, limit) else {
            // Killed: what it printed until then says how far it got.
            let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
            eprintln!("its stderr:\n{}", stderr.join().unwrap_or_default());
            return None;
        };
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        Some((
            status.code().unwrap_or(-1),
            stderr.join().unwrap_or_default(),
        ))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Agents and one-shot sync commands for the multi-process sync tests.
pub mod agent;
pub mod threads;
