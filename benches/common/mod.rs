//! What the end-to-end benchmarks share: running the `fieldsync` binary, an agent killed by PID
//! when dropped, a timed `sync` with the bytes at the receiver's sockets, content digests, and a
//! fresh two-laptop deployment. Each bench target uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_fieldsync");

pub fn fs(dir: &Path, args: &[&str]) -> (String, String, i32) {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run fieldsync");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

pub fn fs_ok(dir: &Path, args: &[&str]) -> String {
    let (out, err, code) = fs(dir, args);
    assert_eq!(code, 0, "fieldsync {args:?} failed: {err}");
    out
}

pub fn json(s: &str) -> Value {
    serde_json::from_str(s.lines().next().unwrap_or("null")).expect("json output")
}

pub struct Agent {
    pub child: Child,
    pub dir: PathBuf,
    pub addr: String,
}

impl Agent {
    pub fn start(dir: &Path) -> Agent {
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
        let addr = json(&line)["listen"].as_str().expect("listen").to_string();
        Agent {
            child,
            dir: dir.to_path_buf(),
            addr,
        }
    }

    pub fn status(&self) -> Value {
        json(&fs_ok(&self.dir, &["status"]))
    }

    /// Bytes through this agent's server sockets so far (both directions).
    pub fn wire_bytes(&self) -> u64 {
        let a = &self.status()["agent"];
        a["bytes_received"].as_u64().unwrap_or(0) + a["bytes_sent"].as_u64().unwrap_or(0)
    }

    /// Whether the agent's database rests now (`Store::rest_if_free`), told without asking the
    /// agent (a `status` reads the database, which ends a rest): sled's log flusher thread
    /// ("log flusher", sled 0.34) runs exactly while a database is open in the process.
    pub fn resting(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return false;
        };
        !tasks.flatten().any(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "log flusher")
        })
    }

    pub fn rss_kb(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
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

/// Runs `sync` from `from`'s agent to `to`, returns (session ms from the summary, wire bytes).
pub fn sync(from: &Agent, to: &Agent) -> (f64, u64, Value) {
    let before = to.wire_bytes();
    let out = fs_ok(&from.dir, &["sync", &to.addr]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ms: f64 = lines.iter().map(|l| l["ms"].as_f64().unwrap_or(0.0)).sum();
    let bytes = to.wire_bytes() - before;
    (ms, bytes, Value::Array(lines))
}

pub fn digest(dir: &Path) -> String {
    let d = json(&fs_ok(dir, &["digest", "person"]));
    format!("{} {}", d["count"], d["sha256"])
}

pub fn verified(a: &Agent, b: &Agent) {
    assert_eq!(digest(&a.dir), digest(&b.dir), "content differs after sync");
    let (_, err, code) = fs(&a.dir, &["verify", &b.addr]);
    assert_eq!(code, 0, "verify reports differences: {err}");
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A fresh deployment: coordinator A and member B, enrolled.
pub fn mesh(root: &Path) -> (PathBuf, PathBuf) {
    let a = root.join("a");
    let b = root.join("b");
    fs_ok(&a, &["init", "--name", "bench-a"]);
    fs_ok(&a, &["mesh", "create", "--name", "bench"]);
    let cred = root.join("b.fsmesh");
    fs_ok(
        &a,
        &[
            "mesh",
            "enroll",
            "--out",
            cred.to_str().unwrap(),
            "--name",
            "bench-b",
        ],
    );
    fs_ok(&b, &["init", "--mesh", cred.to_str().unwrap()]);
    (a, b)
}
