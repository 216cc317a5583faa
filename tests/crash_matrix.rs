//! Crash matrix: real `fieldsync` processes killed with SIGKILL (a power cut, as far as the
//! process can tell) at random, seeded moments of every phase of a database's life, checked
//! after each kill against a model the test keeps itself.
//!
//! Phases on laptop A (B is a peer whose agent runs during the sync phases):
//! `snapshot` (the first open after a write, killed the moment sled's `snap.*.generating`
//! appears: issue #10's failure), `open` (a read command after a write, killed at a random
//! moment), `write`
//! (put/patch/delete), `apply` (an op file), `import`, `backup`, `restore`, `agent_start`,
//! `agent_stop` (SIGTERM, then SIGKILL during the shutdown flush), `agent_write` (a write through
//! the agent's control endpoint, then the *agent* is killed: acknowledged means durable), and
//! `sync` (an incoming sync from B's agent, pages of 7 records).
//!
//! After every kill: the database opens; an acknowledged write (exit 0) is there; a batch is
//! all or nothing (A's records equal the model before or after it; a sync leaves a prefix of
//! B's feed, whole pages); `fieldsync digest` equals the digest the test computes from its
//! model; a backup file, if present, reads back whole. Every round ends with a full sync that
//! must converge: A and B hold exactly the union model, nothing deleted comes back.
//!
//! CI: at least 300 kill points (about a minute on 2 cores). `FIELDSYNC_CRASH_SOAK=1` runs
//! 3,000; `FIELDSYNC_CRASH_POINTS=N` any number; `FIELDSYNC_CRASH_SEED=S` replays a run.

mod common;

use common::{command, wait_with_deadline, Background, COMMAND_TIMEOUT};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The one table the matrix writes.
const TABLE: &str = "t";
/// Records per sync page on B (small, so a sync spans several pages).
const PAGE: usize = 7;

type Fields = BTreeMap<String, Value>;
type Model = BTreeMap<Uuid, Fields>;

/// splitmix64: a small seeded generator, so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(
            (u128::from(self.next()) << 64 | u128::from(self.next())).to_be_bytes(),
        )
        .into_uuid()
    }
    fn fields(&mut self) -> Fields {
        let mut f = Fields::new();
        f.insert("n".into(), json!(self.below(1_000_000)));
        f.insert("s".into(), json!(format!("v{}", self.below(1000))));
        if self.below(2) == 0 {
            f.insert("x".into(), json!(self.below(100)));
        }
        f
    }
}

/// The digest `fieldsync digest t` must print for `m`, computed independently of fieldsync:
/// SHA-256 over `id:{"fields":{..},"table":"t"}\n` lines in id order, keys sorted.
fn model_digest(m: &Model) -> (u64, String) {
    let mut h = Sha256::new();
    for (id, fields) in m {
        // BTreeMap keys are sorted; values are plain numbers and ASCII strings.
        let line = format!(
            "{id}:{{\"fields\":{},\"table\":\"{TABLE}\"}}\n",
            serde_json::to_string(fields).unwrap()
        );
        h.update(line.as_bytes());
    }
    (m.len() as u64, hex::encode(h.finalize()))
}

/// A finished or killed process: exit code (None when killed) and stdout.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = r.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    })
}

/// Runs a command and SIGKILLs it after `delay` unless it has exited by then.
fn run_and_kill(mut cmd: std::process::Command, delay: Duration) -> Ran {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fieldsync starts");
    let out = reader(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let code = wait_until_or_kill(&mut child, delay);
    let took = started.elapsed();
    Ran {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        took,
    }
}

/// Runs a command and SIGKILLs it as soon as `moment()` holds (polled as fast as possible),
/// unless it exits first.
fn run_and_kill_when(mut cmd: std::process::Command, mut moment: impl FnMut() -> bool) -> Ran {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fieldsync starts");
    let out = reader(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let code = loop {
        if moment() {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s.code().unwrap_or(-1));
        }
        assert!(started.elapsed() < COMMAND_TIMEOUT, "command hangs");
    };
    Ran {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        took: started.elapsed(),
    }
}

/// True while sled is writing a snapshot in `db_dir` (`snap.<lsn>.generating` exists).
fn generating(db_dir: &std::path::Path) -> bool {
    std::fs::read_dir(db_dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".generating"))
    })
}

/// Waits up to `delay` for an exit (its code), else SIGKILLs and reaps (None).
fn wait_until_or_kill(child: &mut Child, delay: Duration) -> Option<i32> {
    let deadline = Instant::now() + delay;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s.code().unwrap_or(-1));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
}

/// One laptop: its data directory, and its running agent if any.
struct Laptop {
    root: PathBuf,
    agent: Option<(Background, String)>,
}

impl Laptop {
    fn new(root: PathBuf, config: &str) -> Laptop {
        let l = Laptop { root, agent: None };
        std::fs::create_dir_all(l.dir()).unwrap();
        std::fs::write(l.dir().join("fieldsync.toml"), config).unwrap();
        l
    }
    fn dir(&self) -> PathBuf {
        self.root.join("data")
    }
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = command(&self.root);
        c.arg("--data-dir").arg(self.dir()).args(args);
        common::init_if_needed(&c.get_args().collect::<Vec<_>>());
        c
    }
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let r = run_and_kill(self.cmd(args), COMMAND_TIMEOUT);
        assert_eq!(
            r.code,
            Some(0),
            "fieldsync {args:?} failed: {}{}",
            r.stdout,
            r.stderr
        );
        r.stdout
    }
    /// The live records, as `fieldsync export` prints them.
    #[track_caller]
    fn records(&self) -> Result<Model, String> {
        let r = run_and_kill(self.cmd(&["export", TABLE]), COMMAND_TIMEOUT);
        if r.code != Some(0) {
            return Err(format!("export failed ({:?}): {}", r.code, r.stderr.trim()));
        }
        let mut m = Model::new();
        for line in r.stdout.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            let id: Uuid = v["id"].as_str().unwrap_or_default().parse().unwrap();
            let f = v["fields"].as_object().cloned().unwrap_or_default();
            m.insert(id, f.into_iter().collect());
        }
        Ok(m)
    }
    fn digest(&self) -> (u64, String) {
        let v: Value = serde_json::from_str(self.ok(&["digest", TABLE]).trim()).unwrap();
        (
            v["count"].as_u64().unwrap(),
            v["sha256"].as_str().unwrap().to_string(),
        )
    }
    /// Starts the agent and waits for its listening line (address).
    fn start_agent(&mut self) -> String {
        let bg = Background::spawn(self.cmd(&[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--no-discovery",
            "--insecure-plaintext",
        ]));
        let line = bg
            .wait_for_line(Duration::from_secs(30), |l| l.contains("listening"))
            .expect("the agent prints its listening line");
        let v: Value = serde_json::from_str(&line).unwrap();
        let addr = v["listen"].as_str().unwrap().to_string();
        self.agent = Some((bg, addr.clone()));
        addr
    }
    /// Stops the agent with SIGTERM and waits for it (bounded).
    fn stop_agent(&mut self) {
        if let Some((bg, _)) = self.agent.take() {
            sigterm(bg.id());
            let (code, err) = bg
                .wait(Duration::from_secs(30))
                .expect("the agent stops on SIGTERM");
            assert_eq!(code, 0, "agent exit: {err}");
        }
    }
}

fn sigterm(pid: u32) {
    // SAFETY: kill(2) on a child process id we own and have not reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

/// Per phase: kill points, how many landed while the process ran, outcomes.
#[derive(Default)]
struct Tally {
    points: u64,
    killed: u64,
    outcomes: BTreeMap<&'static str, u64>,
    /// Typical duration of an uninterrupted run, to spread kill moments over it.
    typical: Option<Duration>,
    /// The current point runs to completion.
    calibrating: bool,
}

struct Matrix {
    rng: Rng,
    a: Laptop,
    b: Laptop,
    /// What A holds (live records).
    model: Model,
    /// Ids A created (only these are edited on A, so the union with B's is unambiguous).
    a_ids: Vec<Uuid>,
    /// Records created on B.
    b_own: Model,
    /// Their ids in B's feed order.
    b_order: Vec<Uuid>,
    /// A complete backup of A and the records it holds.
    backup: Option<(PathBuf, Model)>,
    tally: BTreeMap<&'static str, Tally>,
    /// Points checked.
    n: u64,
    /// Points where the process was SIGKILLed while it ran: the kill points.
    killed: u64,
}

impl Matrix {
    /// A kill moment for `phase`: uniform over 1.3 times its typical run (at least 40 ms).
    fn delay(&mut self, phase: &'static str) -> Duration {
        let t = self
            .tally
            .get(phase)
            .and_then(|t| t.typical)
            .unwrap_or(Duration::from_millis(40))
            .max(Duration::from_millis(10));
        let span = t.mul_f64(1.3).as_micros() as u64;
        Duration::from_micros(self.rng.below(span))
    }

    /// Like [`Self::delay`], but every fifth point of a phase runs to completion instead
    /// (a calibration run: runs cut short would bias the typical duration low).
    fn delay_or_calibrate(&mut self, phase: &'static str) -> Duration {
        let t = self.tally.entry(phase).or_default();
        if t.points % 5 == 0 {
            t.calibrating = true;
            return COMMAND_TIMEOUT;
        }
        t.calibrating = false;
        self.delay(phase)
    }

    fn note_duration(&mut self, phase: &'static str, ran: &Ran) {
        let t = self.tally.entry(phase).or_default();
        if ran.code.is_some() && std::mem::take(&mut t.calibrating) {
            let t = self.tally.entry(phase).or_default();
            t.typical = Some(match t.typical {
                None => ran.took,
                Some(old) => (old * 3 + ran.took) / 4,
            });
        }
    }

    /// Checks A after a kill: it opens, holds one of `candidates` (the first is "before"),
    /// and its digest matches. Returns the index of the candidate it holds.
    #[track_caller]
    fn check(
        &mut self,
        phase: &'static str,
        delay: Duration,
        ran: &Ran,
        candidates: &[(&'static str, &Model)],
    ) -> usize {
        self.n += 1;
        let got = self.a.records().unwrap_or_else(|e| {
            panic!(
                "kill point {} ({phase}, after {delay:?}): the database does not open: {e}",
                self.n
            )
        });
        // The last match: "after" when a batch changed nothing visible.
        let Some(i) = candidates.iter().rposition(|(_, m)| **m == got) else {
            let diff: Vec<String> = candidates
                .iter()
                .map(|(name, m)| format!("{name}: {} records", m.len()))
                .collect();
            panic!(
                "kill point {} ({phase}, after {delay:?}, exit {:?}): A holds {} records, \
                 none of the allowed states ({diff:?}); a batch was half applied or an \
                 acknowledged write was lost.\nstderr: {}",
                self.n,
                ran.code,
                got.len(),
                ran.stderr
            )
        };
        assert_eq!(
            self.a.digest(),
            model_digest(&got),
            "kill point {} ({phase}): digest differs from the model",
            self.n
        );
        self.record(phase, delay, ran, candidates[i].0);
        self.model = got;
        i
    }

    fn record(&mut self, phase: &'static str, delay: Duration, ran: &Ran, outcome: &'static str) {
        let t = self.tally.entry(phase).or_default();
        t.points += 1;
        t.killed += u64::from(ran.code.is_none());
        *t.outcomes.entry(outcome).or_default() += 1;
        self.killed += u64::from(ran.code.is_none());
        let at = if delay >= COMMAND_TIMEOUT {
            "no kill".to_string()
        } else {
            format!("{:.1} ms", delay.as_secs_f64() * 1000.0)
        };
        eprintln!(
            "point {:>4}  {phase:<12} kill at {at:>9}  {:<10} -> {outcome}",
            self.n,
            match ran.code {
                None => "killed".to_string(),
                Some(c) => format!("exit {c}"),
            }
        );
    }

    fn pick_a_id(&mut self) -> Option<Uuid> {
        let live: Vec<Uuid> = self
            .a_ids
            .iter()
            .filter(|id| self.model.contains_key(id))
            .copied()
            .collect();
        (!live.is_empty()).then(|| live[self.rng.below(live.len() as u64) as usize])
    }

    fn phase_open(&mut self) {
        // A write first, so the killed open is the one that writes sled's snapshot.
        let id = self.rng.uuid();
        let f = self.rng.fields();
        self.a
            .ok(&["put", TABLE, "--id", &id.to_string(), &json!(f).to_string()]);
        self.a_ids.push(id);
        self.model.insert(id, f);
        let delay = self.delay_or_calibrate("open");
        let cmd = if self.rng.below(2) == 0 {
            "status"
        } else {
            "tables"
        };
        let ran = run_and_kill(self.a.cmd(&[cmd]), delay);
        self.note_duration("open", &ran);
        let before = self.model.clone();
        self.check("open", delay, &ran, &[("unchanged", &before)]);
    }

    /// The failure of issue #10: a write, then the next command killed the moment sled's
    /// snapshot file `snap.<lsn>.generating` appears (the first open after writes makes one).
    fn phase_snapshot(&mut self) {
        let id = self.rng.uuid();
        let f = self.rng.fields();
        self.a
            .ok(&["put", TABLE, "--id", &id.to_string(), &json!(f).to_string()]);
        self.a_ids.push(id);
        self.model.insert(id, f);
        let db = self.a.dir().join("db");
        let ran = run_and_kill_when(self.a.cmd(&["status"]), || generating(&db));
        let before = self.model.clone();
        self.check("snapshot", ran.took, &ran, &[("unchanged", &before)]);
    }

    fn phase_write(&mut self) {
        let before = self.model.clone();
        let mut after = before.clone();
        let (args, id) = match (self.rng.below(3), self.pick_a_id()) {
            (1, Some(id)) => {
                let mut patch = Map::new();
                patch.insert("s".into(), json!(format!("p{}", self.rng.below(1000))));
                patch.insert("x".into(), Value::Null);
                let f = after.get_mut(&id).unwrap();
                f.insert("s".into(), patch["s"].clone());
                f.remove("x");
                (
                    vec![
                        "patch".to_string(),
                        TABLE.into(),
                        id.to_string(),
                        Value::Object(patch).to_string(),
                    ],
                    id,
                )
            }
            (2, Some(id)) => {
                after.remove(&id);
                (vec!["delete".into(), TABLE.into(), id.to_string()], id)
            }
            _ => {
                let id = self.rng.uuid();
                let f = self.rng.fields();
                let args = vec![
                    "put".into(),
                    TABLE.into(),
                    "--id".into(),
                    id.to_string(),
                    json!(f).to_string(),
                ];
                after.insert(id, f);
                self.a_ids.push(id);
                (args, id)
            }
        };
        let _ = id;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let delay = self.delay_or_calibrate("write");
        let ran = run_and_kill(self.a.cmd(&args), delay);
        self.note_duration("write", &ran);
        let acked = ran.code == Some(0);
        let i = self.check(
            "write",
            delay,
            &ran,
            &[("before", &before), ("after", &after)],
        );
        assert!(
            !acked || i == 1,
            "kill point {}: an acknowledged write is missing",
            self.n
        );
    }

    /// An op file of puts (new and existing), patches and deletes, and the model after it.
    fn ops(&mut self, count: usize) -> (String, Model) {
        let mut after = self.model.clone();
        let mut text = String::new();
        for _ in 0..count {
            let line = match (self.rng.below(4), self.pick_a_id()) {
                (1, Some(id)) if after.contains_key(&id) => {
                    let f = self.rng.fields();
                    let e = after.get_mut(&id).unwrap();
                    for (k, v) in &f {
                        e.insert(k.clone(), v.clone());
                    }
                    json!({"op":"patch","table":TABLE,"id":id,"fields":f})
                }
                (2, Some(id)) if after.contains_key(&id) => {
                    after.remove(&id);
                    json!({"op":"delete","table":TABLE,"id":id})
                }
                _ => {
                    let id = self.rng.uuid();
                    self.a_ids.push(id);
                    let f = self.rng.fields();
                    after.insert(id, f.clone());
                    json!({"op":"put","table":TABLE,"id":id,"fields":f})
                }
            };
            text.push_str(&line.to_string());
            text.push('\n');
        }
        (text, after)
    }

    fn phase_batch(&mut self, phase: &'static str) {
        let before = self.model.clone();
        let file = self.a.root.join(format!("{phase}.jsonl"));
        let (text, after) = if phase == "apply" {
            self.ops(40)
        } else {
            let mut after = before.clone();
            let mut text = String::new();
            for _ in 0..60 {
                let id = self.rng.uuid();
                let f = self.rng.fields();
                text.push_str(&json!({"table":TABLE,"id":id,"fields":f}).to_string());
                text.push('\n');
                self.a_ids.push(id);
                after.insert(id, f);
            }
            (text, after)
        };
        std::fs::write(&file, text).unwrap();
        let f = file.to_str().unwrap();
        let args: Vec<&str> = if phase == "apply" {
            vec!["apply", f]
        } else {
            vec!["import", TABLE, f]
        };
        let delay = self.delay_or_calibrate(phase);
        let ran = run_and_kill(self.a.cmd(&args), delay);
        self.note_duration(phase, &ran);
        let i = self.check(phase, delay, &ran, &[("none", &before), ("all", &after)]);
        assert!(ran.code != Some(0) || i == 1, "acknowledged batch missing");
    }

    fn phase_backup(&mut self) {
        let file = self.a.root.join("a.fsbackup");
        let delay = self.delay_or_calibrate("backup");
        let ran = run_and_kill(
            self.a.cmd(&["backup", file.to_str().unwrap(), "--no-keys"]),
            delay,
        );
        self.note_duration("backup", &ran);
        let before = self.model.clone();
        self.check("backup", delay, &ran, &[("unchanged", &before)]);
        // The file is the previous complete backup or the new one, never a partial file.
        if file.exists() {
            let (h, _) = fieldsync::backup::read_backup(&file).unwrap_or_else(|e| {
                panic!("kill point {}: a partial backup file is left: {e}", self.n)
            });
            let fresh = (h.live_records, h.sha256.clone()) == model_digest(&before);
            let old = self
                .backup
                .as_ref()
                .is_some_and(|(_, m)| (h.live_records, h.sha256.clone()) == model_digest(m));
            assert!(fresh || old, "the backup holds neither state");
            if fresh {
                self.backup = Some((file, before));
            }
        }
        assert!(
            ran.code != Some(0) || self.backup.is_some(),
            "an acknowledged backup is missing"
        );
    }

    fn phase_restore(&mut self) {
        let Some((file, restored)) = self.backup.clone() else {
            return;
        };
        let before = self.model.clone();
        let delay = self.delay_or_calibrate("restore");
        let ran = run_and_kill(
            self.a.cmd(&["restore", "--force", file.to_str().unwrap()]),
            delay,
        );
        self.note_duration("restore", &ran);
        let i = self.check(
            "restore",
            delay,
            &ran,
            &[("before", &before), ("restored", &restored)],
        );
        assert!(
            ran.code != Some(0) || i == 1,
            "acknowledged restore missing"
        );
    }

    fn phase_agent_start(&mut self) {
        let delay = self.delay("agent_start");
        let ran = run_and_kill(
            self.a.cmd(&[
                "run",
                "--listen",
                "127.0.0.1:0",
                "--no-discovery",
                "--insecure-plaintext",
            ]),
            delay,
        );
        // The agent never exits by itself: its "typical" run is the time to its listening
        // line, learnt from `agent_stop`.
        let before = self.model.clone();
        self.check("agent_start", delay, &ran, &[("unchanged", &before)]);
    }

    fn phase_agent_stop_and_write(&mut self) {
        let started = Instant::now();
        self.a.start_agent();
        let t = self.tally.entry("agent_start").or_default();
        let took = started.elapsed();
        t.typical = Some(t.typical.map_or(took, |o| (o * 3 + took) / 4));
        // A write through the agent, then the agent dies at a random moment around it.
        let id = self.rng.uuid();
        let f = self.rng.fields();
        let mut after = self.model.clone();
        after.insert(id, f.clone());
        self.a_ids.push(id);
        let before = self.model.clone();
        let mut put = self
            .a
            .cmd(&["put", TABLE, "--id", &id.to_string(), &json!(f).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = self.delay("agent_write");
        std::thread::sleep(delay);
        let (bg, _) = self.a.agent.take().unwrap();
        let was_running = bg.kill9();
        let code = wait_with_deadline(&mut put, COMMAND_TIMEOUT).and_then(|s| s.code());
        let ran = Ran {
            code: if was_running { None } else { Some(-1) },
            stdout: String::new(),
            stderr: String::new(),
            took: delay,
        };
        let i = self.check(
            "agent_write",
            delay,
            &ran,
            &[("before", &before), ("after", &after)],
        );
        assert!(
            code != Some(0) || i == 1,
            "kill point {}: a write the agent acknowledged is gone after it was killed",
            self.n
        );
        if code == Some(0) {
            let t = self.tally.entry("agent_write").or_default();
            t.typical = Some(t.typical.map_or(delay, |o| (o * 3 + delay) / 4));
        }

        // Shutdown: SIGTERM, then SIGKILL during the shutdown flush.
        self.a.start_agent();
        let (bg, _) = self.a.agent.take().unwrap();
        // Every fifth point lets the shutdown finish and measures it (a kill that comes after
        // the exit says nothing about how long the shutdown takes), so the kill points of the
        // others spread over the real shutdown, however fast it becomes.
        // Random kills fall within the first two thirds of a typical shutdown (delays span
        // 1.3×), so most land while it still runs even when it takes a few milliseconds.
        let delay = match self.delay_or_calibrate("agent_stop") {
            COMMAND_TIMEOUT => COMMAND_TIMEOUT,
            d => d / 2,
        };
        let stop_started = Instant::now();
        sigterm(bg.id());
        let code = if delay == COMMAND_TIMEOUT {
            // Polled finely: a shutdown can take under a millisecond. Bounded by the timeout.
            let mut bg = bg;
            while bg.running() && stop_started.elapsed() < COMMAND_TIMEOUT {
                std::thread::sleep(Duration::from_micros(100));
            }
            (!bg.kill9()).then_some(0)
        } else {
            std::thread::sleep(delay);
            (!bg.kill9()).then_some(0)
        };
        let ran = Ran {
            code,
            stdout: String::new(),
            stderr: String::new(),
            took: stop_started.elapsed(),
        };
        self.note_duration("agent_stop", &ran);
        let before = self.model.clone();
        self.check("agent_stop", delay, &ran, &[("unchanged", &before)]);
    }

    /// B creates records; A's `sync` with B's agent is killed at a random moment: A holds
    /// its own records plus a prefix (in B's feed order) of B's new ones.
    fn phase_sync(&mut self, addr: &str) {
        let mut fresh: Vec<(Uuid, Fields)> = Vec::new();
        let mut text = String::new();
        for _ in 0..(2 * PAGE + 3) {
            let id = self.rng.uuid();
            let f = self.rng.fields();
            text.push_str(&json!({"op":"put","table":TABLE,"id":id,"fields":f}).to_string());
            text.push('\n');
            fresh.push((id, f));
        }
        let file = self.b.root.join("b-ops.jsonl");
        std::fs::write(&file, text).unwrap();
        self.b.ok(&["apply", file.to_str().unwrap()]);
        for (id, f) in &fresh {
            self.b_own.insert(*id, f.clone());
            self.b_order.push(*id);
        }
        // What A may hold: its records plus a prefix, in B's feed order, of B's records it does
        // not have yet (an earlier killed sync may have brought some).
        let pending: Vec<Uuid> = self
            .b_order
            .iter()
            .filter(|id| !self.model.contains_key(id))
            .copied()
            .collect();
        let before = self.model.clone();
        let mut states = vec![before.clone()];
        for id in &pending {
            let mut m = states.last().unwrap().clone();
            m.insert(*id, self.b_own[id].clone());
            states.push(m);
        }
        let delay = self.delay_or_calibrate("sync");
        let ran = run_and_kill(self.a.cmd(&["sync", addr, "--insecure-plaintext"]), delay);
        self.note_duration("sync", &ran);
        let names: Vec<&'static str> = (0..states.len())
            .map(|k| match k {
                0 => "none",
                k if k == pending.len() => "all pages",
                k if k % PAGE == 0 => "whole pages",
                _ => "part page",
            })
            .collect();
        let cands: Vec<(&'static str, &Model)> = names.iter().copied().zip(states.iter()).collect();
        let i = self.check("sync", delay, &ran, &cands);
        assert!(
            ran.code != Some(0) || i == pending.len(),
            "a completed sync left records behind"
        );
        assert!(
            i == pending.len() || i % PAGE == 0,
            "kill point {}: {i} of B's records arrived: a page was half applied",
            self.n
        );
    }

    /// A full sync must converge: A and B both hold exactly the union of the models.
    fn converge(&mut self, addr: &str) {
        self.a.ok(&["sync", addr, "--insecure-plaintext"]);
        // After a restore A is a new incarnation that claims less of its own history, so B's
        // mass-delete brake holds every delete A sends until a person decides; a coordinator
        // would approve them (tests/brake.rs covers the brake itself).
        let held: Vec<serde_json::Value> =
            serde_json::from_str(self.b.ok(&["held", "list"]).trim())
                .expect("held list prints one JSON array");
        for h in held {
            let id = h["id"].to_string();
            self.b.ok(&["held", "approve", &id]);
        }
        let mut union = self.model.clone();
        for (id, f) in &self.b_own {
            union.insert(*id, f.clone());
        }
        // A's deletes win on B; B never edits A's records.
        let a_got = self.a.records().expect("A opens");
        let b_got = self.b.records().expect("B opens");
        assert_eq!(a_got, union, "A did not converge to the union model");
        assert_eq!(b_got, union, "B did not converge to the union model");
        assert_eq!(self.a.digest(), model_digest(&union));
        assert_eq!(self.b.digest(), model_digest(&union));
        self.model = union;
        eprintln!("converged: A and B hold the same {} records", a_got.len());
    }
}

#[test]
fn sigkill_at_random_moments_never_loses_an_acknowledged_write_or_half_a_batch() {
    let soak = std::env::var("FIELDSYNC_CRASH_SOAK").is_ok_and(|v| v == "1");
    let target: u64 = std::env::var("FIELDSYNC_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if soak { 3000 } else { 300 });
    let seed: u64 = std::env::var("FIELDSYNC_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!(
        "crash matrix: seed {seed} (replay with FIELDSYNC_CRASH_SEED={seed}), {target} kill points"
    );
    let tmp = tempfile::Builder::new()
        .prefix("fieldsync-crash-")
        .tempdir()
        .unwrap();
    // Frequent automatic snapshots on A, so kills land in them too.
    let a = Laptop::new(
        tmp.path().join("a"),
        "[snapshots]\nevery_changes = 3\n[sync]\ninterval_secs = 3600\n",
    );
    let b = Laptop::new(
        tmp.path().join("b"),
        &format!("[sync]\npage_records = {PAGE}\ninterval_secs = 3600\n"),
    );
    let mut m = Matrix {
        rng: Rng(seed),
        a,
        b,
        model: Model::new(),
        a_ids: Vec::new(),
        b_own: Model::new(),
        b_order: Vec::new(),
        backup: None,
        tally: BTreeMap::new(),
        n: 0,
        killed: 0,
    };
    m.a.ok(&["init", "--name", "a"]);
    m.b.ok(&["init", "--name", "b"]);
    let started = Instant::now();
    // Never unbounded: a hung or slow machine fails instead of blocking CI.
    let limit = Duration::from_secs(if soak { 6 * 3600 } else { 900 });
    let mut round = 0;
    while m.killed < target {
        assert!(
            started.elapsed() < limit,
            "only {} kill points in {limit:?}",
            m.killed
        );
        round += 1;
        eprintln!("round {round}");
        let addr = m.b.start_agent();
        m.converge(&addr);
        // A restore goes back at most to this round's converged state: B holds that, so the
        // union model stays exact.
        m.backup = None;
        let _ = std::fs::remove_file(m.a.root.join("a.fsbackup"));
        for _ in 0..2 {
            m.phase_sync(&addr);
        }
        m.b.stop_agent();
        for _ in 0..4 {
            m.phase_snapshot();
            m.phase_open();
            m.phase_write();
            m.phase_write();
        }
        m.phase_batch("apply");
        m.phase_batch("import");
        m.phase_batch("apply");
        for _ in 0..3 {
            m.phase_backup();
        }
        if m.backup.is_none() {
            // Every round restores something: a complete backup if no killed one finished.
            let file = m.a.root.join("a.fsbackup");
            m.a.ok(&["backup", file.to_str().unwrap(), "--no-keys"]);
            m.backup = Some((file, m.model.clone()));
        }
        m.phase_write();
        for _ in 0..2 {
            m.phase_restore();
        }
        m.phase_agent_start();
        m.phase_agent_stop_and_write();
    }
    let addr = m.b.start_agent();
    m.converge(&addr);
    m.b.stop_agent();

    let mut report = String::new();
    for (phase, t) in &m.tally {
        report.push_str(&format!(
            "  {phase:<12} {:>4} points, {:>4} killed mid-run, typical run {:>7.1} ms, outcomes {:?}\n",
            t.points,
            t.killed,
            t.typical.unwrap_or_default().as_secs_f64() * 1000.0,
            t.outcomes
        ));
    }
    eprintln!(
        "crash matrix: seed {seed}, {} kill points ({} points checked) in {round} rounds, \
         {:.1} s\n{report}",
        m.killed,
        m.n,
        started.elapsed().as_secs_f64()
    );
    for phase in [
        "snapshot",
        "open",
        "write",
        "apply",
        "import",
        "backup",
        "restore",
        "agent_start",
        "agent_stop",
        "agent_write",
        "sync",
    ] {
        let t = &m.tally[phase];
        assert!(t.killed > 0, "no kill landed in phase {phase}");
    }
}
