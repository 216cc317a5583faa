//! Power cut during an import: a process killed with SIGKILL at any moment must leave a
//! database that opens and holds either none or all of the imported records. An import of up to
//! one chunk is one atomic batch; a larger one is staged, marked committed and rolled forward,
//! and the next open finishes it (all) or discards it (none).

mod common;

use common::Instance;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Enough records that an import runs for seconds in a debug build (about 2 s here for 8,000).
/// Most of that time builds the batch in memory; sled writes it out in the last ~15%.
const RECORDS: u64 = 8_000;

/// `import person FILE` as one batch: chunks larger than the file, so nothing is staged.
fn one_batch_import(inst: &Instance, file: &str) -> std::process::Command {
    let mut c = inst.cmd(&["import", "person", file]);
    c.env("FIELDSYNC_IMPORT_CHUNK_ROWS", (RECORDS + 1).to_string());
    c
}

/// SHA-256 of nothing: the digest of an empty table.
const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// When to pull the plug.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// After this fraction of a complete import's duration: while the batch is being built.
    Time(f64),
    /// Once sled's data file has grown to this fraction of a complete import's: while the
    /// batch is being written, a window too short to hit reliably by time alone.
    Written(f64),
}

fn db_file_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("db").join("db")).map_or(0, |m| m.len())
}

#[test]
fn import_killed_at_any_moment_leaves_none_or_all_records() {
    let reference = Instance::new();
    let file = reference.scratch("big.jsonl");
    let mut w = BufWriter::new(std::fs::File::create(&file).unwrap());
    fieldsync::gen::write_records(RECORDS, 77, &mut w).unwrap();
    w.flush().unwrap();
    drop(w);
    let file = file.to_str().unwrap();

    let started = Instant::now();
    common::run(one_batch_import(&reference, file), None).ok();
    let full_time = started.elapsed();
    let full = reference.digest(&["person"]);
    assert_eq!(full.0, RECORDS);
    let full_len = db_file_len(&reference.dir());
    // An empty database's file, to tell "writing the batch" from "just opened".
    let empty_len = {
        let e = Instance::new();
        e.ok(&["status"]);
        db_file_len(&e.dir())
    };
    assert!(full_len > 4 * empty_len, "{full_len} vs {empty_len}");

    let points = [
        KillAt::Time(0.05),
        KillAt::Time(0.4),
        KillAt::Written(0.05),
        KillAt::Written(0.5),
        KillAt::Written(0.95),
    ];
    let mut outcomes = Vec::new();
    for (n, at) in points.into_iter().enumerate() {
        let inst = Instance::new();
        let mut import = common::Background::spawn(one_batch_import(&inst, file));
        match at {
            KillAt::Time(f) => std::thread::sleep(full_time.mul_f64(f)),
            KillAt::Written(f) => {
                let target = empty_len + ((full_len - empty_len) as f64 * f) as u64;
                let deadline = Instant::now() + common::COMMAND_TIMEOUT;
                while import.running()
                    && db_file_len(&inst.dir()) < target
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let len_at_kill = db_file_len(&inst.dir());
        let killed_mid_import = import.kill9();

        // The database opens, and the table is all or nothing.
        let tables = inst.ok(&["tables"]).lines();
        let (count, sha) = inst.digest(&["person"]);
        let state = if count == 0 {
            assert_eq!(sha, EMPTY_SHA);
            assert!(
                tables.iter().all(|t| t["live"] == 0 && t["deleted"] == 0),
                "counts say records exist while the table is empty: {tables:?}"
            );
            "empty"
        } else {
            assert_eq!(
                (count, &sha),
                (full.0, &full.1),
                "killed at {at:?}: a partial import survived"
            );
            assert_eq!(
                tables,
                vec![serde_json::json!({"table": "person", "live": RECORDS, "deleted": 0})]
            );
            "complete"
        };
        outcomes.push((at, killed_mid_import, len_at_kill, state));

        if n == 3 {
            // A recovered database also takes writes: the same import completes.
            inst.ok(&["import", "person", file]);
            assert_eq!(inst.digest(&["person"]), full);
        }
    }
    eprintln!(
        "import of {RECORDS} records: {full_time:?}, db file {empty_len} -> {full_len} bytes; \
         kills (when, mid-import, db bytes at kill, result): {outcomes:?}"
    );
    let mid = outcomes.iter().filter(|o| o.1).count();
    assert!(
        mid >= 3,
        "fewer than 3 kills landed during an import: {outcomes:?}"
    );
    let mid_write = outcomes
        .iter()
        .filter(|o| o.1 && o.2 > empty_len && o.2 < full_len)
        .count();
    assert!(
        mid_write >= 1,
        "no kill landed while the batch was written: {outcomes:?}"
    );
}

/// The name sled gives a snapshot of log position `lsn`.
fn snap_name(lsn: u64) -> String {
    format!("snap.{lsn:016X}")
}

/// sled's complete snapshots in `db/`, as (lsn, path).
fn snapshots(dir: &Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut out: Vec<_> = std::fs::read_dir(dir.join("db"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let lsn = u64::from_str_radix(name.strip_prefix("snap.")?, 16).ok()?;
            Some((lsn, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Issue #10's observed failure, made deterministic: a command killed while sled writes its
/// snapshot leaves `snap.B.generating` (cut off) beside the complete `snap.A`. sled 0.34 reads
/// the `.generating` one and refuses to open ("Read corrupted data at file offset None");
/// fieldsync moves it aside first, so the database opens with every record, and keeps the file.
#[test]
fn a_snapshot_cut_off_by_a_kill_is_moved_aside_and_the_database_opens() {
    let inst = Instance::new();
    let a = inst.put("person", r#"{"name":"Amina"}"#);
    let b = inst.put("person", r#"{"name":"Bo"}"#);
    // The open after the writes snapshots them.
    let before = inst.digest(&["person"]);
    let snaps = snapshots(&inst.dir());
    let (lsn, newest) = snaps.last().expect("sled wrote a snapshot");
    let full = std::fs::read(newest).unwrap();
    // What SIGKILL leaves mid-write: a prefix of the next snapshot, under its temporary name.
    let generating = inst
        .dir()
        .join("db")
        .join(format!("{}.generating", snap_name(lsn + 1)));
    std::fs::write(&generating, &full[..full.len() / 2]).unwrap();

    let out = inst.run(&["get", "person", &a]);
    assert_eq!(out.code, 0, "the database must open: {out:?}");
    assert_eq!(out.json()["fields"]["name"], "Amina");
    assert_eq!(inst.digest(&["person"]), before);
    inst.ok(&["get", "person", &b]);
    assert!(!generating.exists(), "the incomplete snapshot left db/");
    let aside: Vec<_> = std::fs::read_dir(inst.dir().join("moved-aside"))
        .expect("moved-aside/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(aside[0].ends_with(&format!("{}.generating", snap_name(lsn + 1))));
    // Kept, not deleted: the same bytes.
    let kept = std::fs::read(inst.dir().join("moved-aside").join(&aside[0])).unwrap();
    assert_eq!(kept, &full[..full.len() / 2]);
    // And it takes writes again.
    inst.put("person", r#"{"name":"Chen"}"#);
    assert_eq!(inst.digest(&["person"]).0, 3);
}

/// Rows per chunk for the staged-import test (the default): an 8,000-row file is staged in 8
/// chunks and rolled forward in 8 batches.
const SMALL_CHUNK: &str = "1000";

/// An import process whose log lines (stderr) arrive on a channel with their arrival time.
struct LoggedImport {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<(Instant, String)>,
}

impl LoggedImport {
    fn spawn(inst: &Instance, file: &str) -> LoggedImport {
        let mut cmd = inst.cmd(&["import", "person", file]);
        cmd.env("RUST_LOG", "fieldsync=debug")
            .env("FIELDSYNC_IMPORT_CHUNK_ROWS", SMALL_CHUNK)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("the fieldsync binary starts");
        let err = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        LoggedImport { child, lines }
    }

    /// Waits (bounded) for the log line saying the import committed; its arrival time.
    fn committed(&self) -> Option<Instant> {
        let deadline = Instant::now() + common::COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, l)) if l.contains("import committed") => return Some(at),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// SIGKILL; whether it was still running.
    fn kill9(&mut self) -> bool {
        let running = matches!(self.child.try_wait(), Ok(None));
        let _ = self.child.kill();
        let _ = self.child.wait();
        running
    }
}

impl Drop for LoggedImport {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When to kill a staged import.
#[derive(Clone, Copy, Debug)]
enum StagedKill {
    /// This fraction of the time from start to the commit marker: while staging.
    Staging(f64),
    /// This fraction of the roll-forward's duration after the commit marker.
    RollForward(f64),
}

#[test]
fn staged_import_killed_before_its_commit_leaves_none_and_after_it_all() {
    let reference = Instance::new();
    let file = reference.scratch("big.jsonl");
    let mut w = BufWriter::new(std::fs::File::create(&file).unwrap());
    fieldsync::gen::write_records(RECORDS, 78, &mut w).unwrap();
    w.flush().unwrap();
    drop(w);
    let file = file.to_str().unwrap();

    let started = Instant::now();
    let mut full_run = LoggedImport::spawn(&reference, file);
    let committed_at = full_run
        .committed()
        .expect("a staged import logs its commit");
    let status = full_run.child.wait().unwrap();
    assert!(status.success(), "reference import failed: {status:?}");
    let (to_commit, roll_forward) = (committed_at - started, committed_at.elapsed());
    let full = reference.digest(&["person"]);
    assert_eq!(full.0, RECORDS);

    let points = [
        StagedKill::Staging(0.3),
        StagedKill::Staging(0.8),
        StagedKill::RollForward(0.0),
        StagedKill::RollForward(0.3),
        StagedKill::RollForward(0.7),
    ];
    let mut outcomes = Vec::new();
    for at in points {
        let inst = Instance::new();
        let mut import = LoggedImport::spawn(&inst, file);
        match at {
            StagedKill::Staging(f) => std::thread::sleep(to_commit.mul_f64(f)),
            StagedKill::RollForward(f) => {
                import.committed().expect("the import commits");
                std::thread::sleep(roll_forward.mul_f64(f));
            }
        }
        let killed_mid_import = import.kill9();

        // The next command opens the database: it finishes a committed import, or discards
        // an uncommitted one.
        // What it did is said by default, in a sentence (trial 9, finding 3: nothing said
        // that an import reported as failed had in fact been finished).
        let opened = common::run(inst.cmd(&["tables"]), None).ok();
        let recovered = opened
            .stderr
            .contains("was cut off after it committed: finishing it now")
            && opened.stderr.contains("is finished: all its rows are in");
        let (count, sha) = inst.digest(&["person"]);
        let state = if count == 0 {
            assert_eq!(sha, EMPTY_SHA);
            assert!(
                !opened.stderr.contains("all its rows are in"),
                "nothing imported, nothing said to be in: {}",
                opened.stderr
            );
            assert!(
                opened
                    .lines()
                    .iter()
                    .all(|t| t["live"] == 0 && t["deleted"] == 0),
                "counts say records exist while the table is empty: {:?}",
                opened.stdout
            );
            "empty"
        } else {
            assert_eq!(
                (count, &sha),
                (full.0, &full.1),
                "killed at {at:?}: a partial import survived"
            );
            "complete"
        };
        if let StagedKill::RollForward(_) = at {
            assert_eq!(state, "complete", "killed after the commit marker: {at:?}");
        }
        outcomes.push((at, killed_mid_import, recovered, state));
    }
    eprintln!(
        "staged import of {RECORDS} records: {to_commit:?} to commit, {roll_forward:?} to roll \
         forward; kills (when, mid-import, recovered on open, result): {outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| o.1 && o.3 == "empty" && matches!(o.0, StagedKill::Staging(_))),
        "no kill landed while staging: {outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|o| o.1 && o.2 && o.3 == "complete"),
        "no kill landed mid roll-forward and was finished on open: {outcomes:?}"
    );
}

/// The agent killed while a CLI `import` runs through it (trial 9, finding 3): the CLI said
/// "the database … is in use by another process, and the running agent did not answer: client
/// error (SendRequest)" whether or not the import had committed, and nothing said later. Now it
/// says the agent stopped and how to find out; the next open finishes or discards the import
/// and says which, and the table holds all the rows or none, as said.
#[test]
fn an_import_whose_agent_is_killed_says_so_and_the_next_open_says_what_became_of_it() {
    use common::agent::{self, Agent};
    let tmp = tempfile::tempdir().unwrap();
    let dir = agent::data_dir(tmp.path(), "a");
    agent::run(&dir, &["init", "--name", "laptopA"]).ok();
    let file = tmp.path().join("big.jsonl");
    let mut w = BufWriter::new(std::fs::File::create(&file).unwrap());
    fieldsync::gen::write_records(RECORDS * 4, 78, &mut w).unwrap();
    w.flush().unwrap();
    drop(w);
    let mut a = Agent::start_with(&dir, &["--no-api"]);
    let import = agent::spawn(&dir, &["import", "person", file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(700));
    a.kill9();
    let out = import.wait(Duration::from_secs(60));
    if out.code == 0 {
        // The import won the race: nothing to check this time (said, not silently passed).
        eprintln!("the import finished before the kill");
        return;
    }
    assert_eq!(out.code, 3, "{out}");
    assert!(
        out.stderr.contains("the agent stopped before it answered")
            && out.stderr.contains("check whether the command took effect")
            && !out.stderr.contains("SendRequest"),
        "{out}"
    );
    let opened = agent::run(&dir, &["tables"]).ok();
    let live = agent::live_count(&dir, "person");
    if opened.stderr.contains("all its rows are in") {
        assert_eq!(live, RECORDS * 4, "{opened}");
    } else {
        assert!(
            live == 0 || live == RECORDS * 4,
            "all or nothing, {live} rows: {opened}"
        );
    }
}
