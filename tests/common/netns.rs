//! A throw-away LAN of network namespaces for end-to-end tests of the real agent.
//!
//! [`Lab::new`] builds one "switch" namespace holding a bridge and N host namespaces, each
//! joined to the bridge by a veth pair (`eth0` in the host, `pI` on the switch). Hosts get
//! addresses from the documentation range 198.51.100.0/24 (host I is `198.51.100.{I+1}`), no
//! default route, and `lo` up (the CLI reaches a running agent over 127.0.0.1). Nothing is
//! configured in the caller's namespace, so no traffic leaves 127.0.0.0/8 and the lab.
//!
//! Namespace names carry the test process id and a per-process counter, so tests run in
//! parallel; leftovers of a crashed run with the same names (or of any dead test process) are
//! removed first. `Drop` kills every process the lab started and deletes the namespaces
//! (which deletes their veths). Every wait is bounded.
//!
//! Set `FIELDSYNC_LAB_KEEP=1` to keep the data directories and agent logs after the test.
//!
//! Needs root (network namespaces, nftables): without it the lab is not built and the test
//! is skipped with a message, except under CI (`CI` set), where it fails.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "threads.rs"]
mod threads;

/// The agent's default sync port (what `fieldsync run` listens on).
pub const PORT: u16 = 7437;
/// Longest a CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest an agent may take to print its `listening` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// All lab namespaces start with this.
const NS_PREFIX: &str = "fsl";
/// All lab temp dirs start with this, then the test process id.
const TMP_PREFIX: &str = "fieldsync-lab-";
/// Marks a temp dir kept on purpose (`FIELDSYNC_LAB_KEEP`): never swept.
const KEPT: &str = "KEPT";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The `fieldsync` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fieldsync")
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Out {
    /// Exit code (-1: killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// Stdout parsed as one JSON value.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} (stderr {:?})",
                self.stdout, self.stderr
            )
        })
    }

    /// The items of a list on stdout: one JSON array, or JSON lines.
    pub fn json_lines(&self) -> Vec<Value> {
        if let Ok(Value::Array(items)) = serde_json::from_str(self.stdout.trim()) {
            return items;
        }
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect()
    }
}

/// A running (or finished) agent started by the lab.
struct AgentProc {
    child: Child,
}

/// A switch and N hosts; see the module docs.
pub struct Lab {
    name: String,
    switch: String,
    hosts: Vec<String>,
    tmp: tempfile::TempDir,
    agents: Mutex<HashMap<usize, AgentProc>>,
    /// Logs of every agent run, oldest first, for failure reports.
    logs: Mutex<Vec<(usize, PathBuf)>>,
    runs: AtomicU32,
}

/// Why the lab cannot run here, or `None` when it can.
fn unsupported() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() != Some("0") {
        return Some(format!(
            "network-namespace tests need root (effective uid {})",
            euid.as_deref().unwrap_or("unknown")
        ));
    }
    for (tool, flag) in [("ip", "-V"), ("nft", "-v")] {
        let found = Command::new(tool)
            .arg(flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed (iproute2 / nftables)"));
        }
    }
    None
}

/// Skips (locally) or fails (in CI) when the lab cannot run; `true` when it can.
pub fn supported(test: &str) -> bool {
    match unsupported() {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {why}; CI must run these tests as root")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// Runs a command to completion within `timeout`, killing it if it takes longer.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Out {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped")));
    let err = reader(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            // Where it stopped, and what it said, before killing it loses both.
            let stacks = threads::dump(child.id());
            let _ = child.kill();
            let _ = child.wait();
            let said = err.join().unwrap_or_default();
            panic!(
                "{shown} did not finish within {timeout:?}\n--- its stderr:\n{}\n--- its threads:\n{stacks}",
                threads::tail(&said, 60)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs a setup command (`ip`, `nft`), panicking with its stderr when it fails.
pub fn sh(args: &[&str]) {
    let out = run_bounded(
        Command::new(args[0]).args(&args[1..]),
        Duration::from_secs(20),
    );
    assert!(
        out.code == 0,
        "{} failed ({}): {}",
        args.join(" "),
        out.code,
        out.stderr.trim()
    );
}

/// Runs a cleanup command, ignoring failure.
fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn netns_exists(ns: &str) -> bool {
    Path::new("/var/run/netns").join(ns).exists()
}

/// Kills every process inside `ns` and deletes it (its veths go with it).
fn destroy_netns(ns: &str) {
    if !netns_exists(ns) {
        return;
    }
    for _ in 0..20 {
        let out = run_bounded(
            Command::new("ip").args(["netns", "pids", ns]),
            Duration::from_secs(10),
        );
        let pids: Vec<&str> = out.stdout.split_whitespace().collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            sh_quiet(&["kill", "-9", pid]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sh_quiet(&["ip", "netns", "del", ns]);
}

/// True if `name` is `<prefix><pid><sep>...` for a process id that no longer runs.
fn of_dead_process(name: &str, prefix: &str, sep: char) -> bool {
    let Some((pid, _)) = name.strip_prefix(prefix).and_then(|r| r.split_once(sep)) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what test processes that no longer run (a crashed run) left: namespaces, with the
/// agents still running in them, and temp dirs.
fn sweep_stale() {
    if let Ok(dir) = std::fs::read_dir("/var/run/netns") {
        for e in dir.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            // fsl<pid>x<counter><suffix>
            if of_dead_process(&name, NS_PREFIX, 'x') {
                destroy_netns(&name);
            }
        }
    }
    let tmp = std::env::temp_dir();
    if let Ok(dir) = std::fs::read_dir(&tmp) {
        for e in dir.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            let kept = tmp.join(&name).join(KEPT).exists();
            if of_dead_process(&name, TMP_PREFIX, '-') && !kept {
                let _ = std::fs::remove_dir_all(tmp.join(&name));
            }
        }
    }
}

impl Lab {
    /// Builds a lab with `hosts` hosts, or `None` (test skipped) when not root outside CI.
    /// `test` names the test in messages.
    pub fn new(test: &str, hosts: usize) -> Option<Lab> {
        assert!((1..=200).contains(&hosts), "1..=200 hosts");
        if !supported(test) {
            return None;
        }
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{NS_PREFIX}{}x{n}", std::process::id());
        let switch = format!("{name}s");
        let host_names: Vec<String> = (0..hosts).map(|i| format!("{name}h{i}")).collect();
        // Leftovers of a crashed run of the same process id.
        for ns in host_names.iter().chain([&switch]) {
            destroy_netns(ns);
        }
        let lab = Lab {
            name,
            switch: switch.clone(),
            hosts: host_names.clone(),
            tmp: tempfile::Builder::new()
                .prefix(&format!("{TMP_PREFIX}{}-", std::process::id()))
                .tempdir()
                .expect("temp dir"),
            agents: Mutex::default(),
            logs: Mutex::default(),
            runs: AtomicU32::new(0),
        };
        // From here on, Drop cleans up whatever was created if a step fails.
        sh(&["ip", "netns", "add", &switch]);
        sh(&["ip", "-n", &switch, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &switch, "link", "set", "br0", "up"]);
        for (i, ns) in host_names.iter().enumerate() {
            let port = format!("p{i}");
            sh(&["ip", "netns", "add", ns]);
            sh(&[
                "ip", "link", "add", "name", &port, "netns", &switch, "type", "veth", "peer",
                "name", "eth0", "netns", ns,
            ]);
            sh(&["ip", "-n", &switch, "link", "set", &port, "master", "br0"]);
            sh(&["ip", "-n", &switch, "link", "set", &port, "up"]);
            let cidr = format!("{}/24", lab.ip(i));
            sh(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            std::fs::create_dir_all(lab.dir(i)).expect("data dir");
        }
        Some(lab)
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// The namespace of host `i`.
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// IPv4 address of host `i`.
    pub fn ip(&self, i: usize) -> String {
        format!("198.51.100.{}", i + 1)
    }

    /// `ip:7437` of host `i`, for `--peer` or `[sync] peers`.
    pub fn sync_addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.ip(i))
    }

    /// Data directory of host `i` (kept across agent restarts).
    pub fn dir(&self, i: usize) -> PathBuf {
        self.tmp.path().join(format!("h{i}"))
    }

    /// A scratch path inside the lab's temp dir.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Enrolls host `i` (keeping its instance id) in the lab's deployment, so agents sync over
    /// mutual TLS. A host whose config names another `mesh` gets a CA of its own, making it a
    /// different deployment (TLS deployments derive their mDNS id from the CA).
    pub fn ensure_member(&self, i: usize) {
        let dir = self.dir(i);
        if dir.join("credential.fsmesh").exists() {
            return;
        }
        let config = std::fs::read_to_string(dir.join("fieldsync.toml")).unwrap_or_default();
        let mesh = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("mesh = "))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "lab".into());
        let ca = self.scratch(&format!("ca-{mesh}.fsca"));
        let coord = self.scratch(&format!("coordinator-{mesh}"));
        let direct = |args: &[&str]| {
            let mut cmd = Command::new(bin());
            cmd.args(args).env_remove("FIELDSYNC_DIR");
            let out = run_bounded(&mut cmd, CLI_TIMEOUT);
            assert_eq!(out.code, 0, "fieldsync {args:?}: {}", out.stderr);
            out
        };
        let (c, ca_s) = (coord.to_str().unwrap(), ca.to_str().unwrap());
        if !ca.exists() {
            direct(&["--data-dir", c, "init"]);
            direct(&[
                "--data-dir",
                c,
                "mesh",
                "create",
                "--name",
                &mesh,
                "--out",
                ca_s,
            ]);
        }
        let d = dir.to_str().unwrap();
        let status = direct(&["--data-dir", d, "init"]).json();
        let id = status["instance"].as_str().expect("instance").to_string();
        let cred = self.scratch(&format!("h{i}.fsmesh"));
        let cred_s = cred.to_str().unwrap();
        direct(&[
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
        ]);
        direct(&["--data-dir", d, "init", "--mesh", cred_s]);
    }

    /// Writes `fieldsync.toml` of host `i`.
    pub fn write_config(&self, i: usize, toml: &str) {
        std::fs::write(self.dir(i).join("fieldsync.toml"), toml).expect("write config");
    }

    /// Runs `fieldsync --data-dir <dir of i> ARGS` inside host `i` (forwarded to its agent
    /// when one runs), bounded by a minute.
    pub fn cli(&self, i: usize, args: &[&str]) -> Out {
        let dir = self.dir(i);
        // Commands other than init/run/restore refuse a directory with no database: a fresh
        // host starts with `init`, as a user's laptop does.
        let needs_db = !matches!(
            args.first(),
            Some(&("init" | "run" | "restore" | "doctor" | "generate" | "repair"))
        );
        if needs_db && !dir.join("db").is_dir() {
            let mut init = Command::new(bin());
            init.arg("--data-dir")
                .arg(&dir)
                .args(["--json", "init"])
                .env_remove("FIELDSYNC_DIR");
            let out = run_bounded(&mut init, CLI_TIMEOUT);
            assert_eq!(out.code, 0, "host {i}: init: {}", out.stderr);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(i), bin(), "--data-dir"])
            .arg(&dir)
            .args(args)
            .env_remove("FIELDSYNC_DIR");
        run_bounded(&mut cmd, CLI_TIMEOUT)
    }

    /// Like [`Lab::cli`], panicking unless it exits 0; returns stdout.
    pub fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.cli(i, args);
        assert!(
            out.code == 0,
            "host {i}: fieldsync {} exited {}: {}",
            args.join(" "),
            out.code,
            out.stderr.trim()
        );
        out.stdout
    }

    /// Like [`Lab::cli_ok`], stdout parsed as one JSON value.
    pub fn cli_json(&self, i: usize, args: &[&str]) -> Value {
        let s = self.cli_ok(i, args);
        serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}"))
    }

    /// Starts `fieldsync run EXTRA` in host `i` and waits for its `listening` line; returns
    /// the instance id it printed. Logs go to a file shown when a test fails.
    pub fn start(&self, i: usize, extra: &[&str]) -> String {
        assert!(
            !self.running(i),
            "host {i} already runs an agent; stop it first"
        );
        if !extra.contains(&"--insecure-plaintext") {
            self.ensure_member(i);
        }
        let run = self.runs.fetch_add(1, Ordering::SeqCst);
        let out_path = self.scratch(&format!("agent-h{i}-{run}.out"));
        let log = self.scratch(&format!("agent-h{i}-{run}.log"));
        let file = |p: &Path| std::fs::File::create(p).expect("log file");
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "fieldsync=debug".into());
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns(i), bin(), "--data-dir"])
            .arg(self.dir(i))
            .arg("run")
            .args(extra)
            .env_remove("FIELDSYNC_DIR")
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file(&out_path))
            .stderr(file(&log))
            .spawn()
            .expect("start agent");
        // `ip netns exec` execs the program: this pid is the agent's.
        lock(&self.agents).insert(i, AgentProc { child });
        lock(&self.logs).push((i, log.clone()));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            if let Some(v) = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["event"] == "listening")
            {
                return v["instance"].as_str().expect("instance").to_string();
            }
            if let Some(status) = self.exited(i) {
                panic!(
                    "agent on host {i} exited ({status}) before listening:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent on host {i} did not print its listening line within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether host `i` has an agent that has not exited.
    pub fn running(&self, i: usize) -> bool {
        let mut agents = lock(&self.agents);
        match agents.get_mut(&i) {
            Some(a) => a.child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    fn exited(&self, i: usize) -> Option<ExitStatus> {
        lock(&self.agents)
            .get_mut(&i)
            .and_then(|a| a.child.try_wait().ok().flatten())
    }

    /// Process id of host `i`'s agent.
    pub fn pid(&self, i: usize) -> u32 {
        lock(&self.agents)
            .get(&i)
            .map(|a| a.child.id())
            .unwrap_or_else(|| panic!("host {i} has no agent"))
    }

    /// Kills host `i`'s agent with SIGKILL and reaps it.
    pub fn kill9(&self, i: usize) -> ExitStatus {
        let mut a = lock(&self.agents)
            .remove(&i)
            .unwrap_or_else(|| panic!("host {i} has no agent"));
        let _ = a.child.kill();
        a.child.wait().expect("reap agent")
    }

    /// Sends SIGTERM to host `i`'s agent and waits up to `timeout` for it to exit; returns
    /// its exit status and how long it took, or `None` (agent then killed) if it did not exit.
    pub fn sigterm(&self, i: usize, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let mut a = lock(&self.agents)
            .remove(&i)
            .unwrap_or_else(|| panic!("host {i} has no agent"));
        let started = Instant::now();
        sh(&["kill", "-TERM", &a.child.id().to_string()]);
        loop {
            if let Some(s) = a.child.try_wait().expect("wait") {
                return Some((s, started.elapsed()));
            }
            if started.elapsed() > timeout {
                let _ = a.child.kill();
                let _ = a.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Drops mDNS (224.0.0.251 and ff02::fb, both directions) inside host `i` with nftables,
    /// like a host firewall that blocks multicast.
    pub fn block_multicast(&self, i: usize) {
        let rules = "table inet fsblock {\n\
             chain out { type filter hook output priority 0; policy accept;\n\
               ip daddr 224.0.0.251 drop\n  ip6 daddr ff02::fb drop\n }\n\
             chain in { type filter hook input priority 0; policy accept;\n\
               ip daddr 224.0.0.251 drop\n  ip6 daddr ff02::fb drop\n }\n\
             }\n";
        let file = self.scratch(&format!("block-h{i}.nft"));
        std::fs::write(&file, rules).expect("write nft rules");
        let f = file.to_string_lossy().into_owned();
        sh(&["ip", "netns", "exec", self.ns(i), "nft", "-f", &f]);
    }

    /// Every agent log of this lab, last `lines` lines each, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for (i, p) in lock(&self.logs).iter() {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            s.push_str(&format!(
                "----- host {i} ({}) -----\n{}\n",
                p.display(),
                tail.join("\n")
            ));
        }
        s
    }

    /// The full log of host `i`'s agent runs, concatenated.
    pub fn log_of(&self, i: usize) -> String {
        lock(&self.logs)
            .iter()
            .filter(|(h, _)| *h == i)
            .map(|(_, p)| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("agent logs of lab {}:\n{}", self.name, self.logs(80));
        }
        if std::env::var_os("FIELDSYNC_LAB_KEEP").is_some() {
            self.tmp.disable_cleanup(true);
            let _ = std::fs::write(self.tmp.path().join(KEPT), "FIELDSYNC_LAB_KEEP\n");
            eprintln!(
                "lab {}: data and logs kept in {}",
                self.name,
                self.tmp.path().display()
            );
        }
        for (_, mut a) in lock(&self.agents).drain() {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        for ns in self.hosts.iter().chain([&self.switch]) {
            destroy_netns(ns);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `f` every `every` until it returns `Some`, at most `timeout`; `None` on timeout.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let max_rounds = (timeout.as_millis() / every.as_millis().max(1)) as usize + 2;
    for _ in 0..max_rounds {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(every);
    }
    None
}
