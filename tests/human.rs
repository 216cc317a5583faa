//! The CLI's output for people, as insta snapshots (tests/snapshots/human__*.snap): what a
//! terminal shows. `--human` forces it where stdout is not a terminal (CI, pipes); ids, times,
//! durations, ports, pids and paths are masked by insta filters. JSON output, which scripts
//! use, is checked by tests/cli.rs and every other test (and here: `--json` wins).
//!
//! To review a change of the output: `cargo insta review` (or rerun with
//! `INSTA_UPDATE=always` and read the diff of the .snap files).

mod common;

use common::agent::*;
use regex::Regex;
use serde_json::{json, Value};
use std::path::Path;

const ID: &str = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
const ID2: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const ID3: &str = "f0e1d2c3-b4a5-4968-8776-655443322110";

/// What differs between runs, as insta filters.
fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        // As long as an id, so columns stay aligned in the snapshot.
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "<-------------- id ---------------->",
        ),
        (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", "<time>"),
        (r"\((just now|\d+ s ago|\d+ min ago)\)", "(<ago>)"),
        (r"\d+\.\d s\b", "<secs> s"),
        (r"pid \d+", "pid <pid>"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:<port>"),
        (r"change \d+ in", "change <n> in"),
    ]
}

/// `fieldsync ARGS --human` on `dir`, as a transcript entry: the command, then its output.
fn human(dir: &Path, root: &Path, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--human");
    let out = run(dir, &all).ok().stdout;
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') || a.contains('{') {
                format!("'{a}'")
            } else {
                a.to_string()
            }
        })
        .collect();
    format!(
        "$ fieldsync {}\n{}\n",
        shown.join(" "),
        out.replace(root.to_str().unwrap(), "<root>")
    )
}

macro_rules! snapshot {
    ($name:expr, $text:expr) => {
        insta::with_settings!({filters => filters(), prepend_module_to_snapshot => true}, {
            insta::assert_snapshot!($name, $text);
        })
    };
}

#[test]
fn writes_and_init_print_sentences() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = data_dir(root, "a");
    let put = ["put", "person", "--id", ID, r#"{"name":"Amina"}"#];
    let mut t = human(
        &a,
        root,
        &["init", "--name", "laptopA", "--owner", "Team North"],
    );
    t += &human(&a, root, &put);
    t += &human(&a, root, &put);
    t += &human(&a, root, &["patch", "person", ID, r#"{"age":34}"#]);
    t += &human(&a, root, &["delete", "person", ID]);
    t += &human(&a, root, &["peers"]);
    t += &human(&a, root, &["list", "person"]);
    // A second init renames the laptop: the old name is said, and only when it changes.
    t += &human(&a, root, &["init", "--name", "laptopA2"]);
    t += &human(&a, root, &["init", "--name", "laptopA2"]);
    snapshot!("writes", t);

    // --json wins over --human, and a pipe gets JSON: what scripts parse.
    let v = run(
        &a,
        &["put", "person", r#"{"name":"B"}"#, "--json", "--human"],
    )
    .ok()
    .json();
    assert_eq!(v["table"], "person");
    assert_eq!(v["written"], true);
}

#[test]
fn records_read_as_tables_and_history_as_diffs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = data_dir(root, "a");
    run(&a, &["init", "--name", "laptopA"]).ok();
    let people = [
        (ID, r#"{"name":"Amina Okafor","age":34,"status":"missing"}"#),
        (
            ID2,
            r#"{"name":"Bo","village":"North Hill","notes":"line one\nline two"}"#,
        ),
        (ID3, r#"{"name":"Chen","age":7}"#),
    ];
    for (id, fields) in people {
        run(&a, &["put", "person", "--id", id, fields]).ok();
    }
    run(
        &a,
        &[
            "patch",
            "person",
            ID,
            r#"{"status":"found","age":null,"shelter":"S-4"}"#,
        ],
    )
    .ok();
    run(&a, &["delete", "person", ID3]).ok();

    let mut t = human(&a, root, &["list", "person"]);
    t += &human(&a, root, &["list", "person", "--include-deleted"]);
    t += &human(&a, root, &["get", "person", ID]);
    t += &human(&a, root, &["get", "person", ID3, "--include-deleted"]);
    t += &human(&a, root, &["history", "person", ID]);
    t += &human(&a, root, &["history", "person", ID3]);
    t += &human(&a, root, &["list", "nothing_here"]);
    // `digest` for comparing two laptops by eye: the fingerprint is the JSON's `sha256`.
    let digest = human(&a, root, &["digest", "person"]);
    let sha = run(&a, &["digest", "person"]).ok().stdout;
    let sha: Value = serde_json::from_str(sha.trim()).unwrap();
    assert!(digest.contains(sha["sha256"].as_str().unwrap()), "{digest}");
    t += &digest;
    snapshot!("records", t);

    // `tables` as a table: one row per table, live and deleted counts.
    let tables = run(&a, &["tables", "--human"]).ok().stdout;
    let rows: Vec<Vec<&str>> = tables
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["TABLE", "RECORDS", "DELETED"],
            vec!["person", "2", "1"]
        ],
        "{tables}"
    );
}

/// `put` says what its number is; `mesh enroll` says the next step; `--help` and the README
/// name the same commands that print for people.
#[test]
fn put_enroll_and_help_speak_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = data_dir(root, "a");
    run(&a, &["init", "--name", "laptopA"]).ok();
    let put = run(&a, &["put", "person", r#"{"name":"Amina"}"#, "--human"])
        .ok()
        .stdout;
    // What was done to which record, and nothing else (no feed position, no revision).
    assert!(
        Regex::new(r"^Saved person [0-9a-f-]{36}\.\n$")
            .unwrap()
            .is_match(&put),
        "{put}"
    );

    // `apply` says what the op file did, in a sentence.
    let ops = root.join("ops.jsonl");
    let op = format!(r#"{{"op":"put","table":"person","id":"{ID}","fields":{{"name":"Bo"}}}}"#);
    std::fs::write(&ops, format!("{op}\n{op}\n")).unwrap();
    let applied = run(&a, &["apply", ops.to_str().unwrap(), "--human"])
        .ok()
        .stdout;
    assert_eq!(
        applied,
        "Applied 2 operations all at once: 1 written, 1 changed nothing (the record already \
         had those values).\n"
    );

    let ca = root.join("team.fsca");
    run(
        &a,
        &[
            "mesh",
            "create",
            "--name",
            "Relief",
            "--out",
            ca.to_str().unwrap(),
        ],
    )
    .ok();
    let cred = root.join("laptop7.fsmesh");
    let cred_s = cred.to_str().unwrap();
    let out = run(
        &a,
        &[
            "mesh",
            "enroll",
            "--name",
            "laptop7",
            "--out",
            cred_s,
            "--ca",
            ca.to_str().unwrap(),
            "--human",
        ],
    )
    .ok()
    .stdout;
    assert!(out.starts_with("Enrolled laptop7 (instance "), "{out}");
    assert!(
        out.contains(&format!("run `fieldsync init --mesh {cred_s}` there")),
        "{out}"
    );

    // The commands named as printing for people, in `--help` and in the README.
    let named = |text: &str| -> Vec<String> {
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let start = flat.find("On a terminal, ").expect("the sentence") + "On a terminal, ".len();
        let end = start + flat[start..].find(" print for people").expect("its end");
        let mut v: Vec<String> = flat[start..end]
            .replace(" and ", ", ")
            .split(", ")
            .map(|c| c.trim_matches('`').to_string())
            .collect();
        v.sort();
        v
    };
    let help = fieldsync(&["--help"]).ok().stdout;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert_eq!(named(&help), named(&readme));
    for c in [
        "tables",
        "verify",
        "mesh enroll",
        "conflicts",
        "bundle",
        "apply",
    ] {
        assert!(named(&help).iter().any(|n| n == c), "{c}: {help}");
    }
}

#[test]
fn sync_peers_status_and_history_name_laptops() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b) = (data_dir(root, "a"), data_dir(root, "b"));
    run(&a, &["init", "--name", "laptopA", "--owner", "Team North"]).ok();
    run(&b, &["init", "--name", "laptopB", "--owner", "Team South"]).ok();
    run(&a, &["put", "person", "--id", ID, r#"{"name":"Amina"}"#]).ok();
    run(&a, &["patch", "person", ID, r#"{"status":"found"}"#]).ok();
    // No HTTP API: the status line stays the same whichever ports are free. No notifies
    // either: B's agent tells A its address in the first session, and A would then pull B's
    // edit below on its own, before `verify` can show the difference.
    for dir in [&a, &b] {
        std::fs::write(dir.join("fieldsync.toml"), "[sync]\nnotify = false\n").unwrap();
    }
    let agent_a = Agent::start_with(&a, &["--no-api"]);
    let agent_b = Agent::start_with(&b, &["--no-api"]);

    // Forwarded to B's agent, which prints as the terminal asked.
    let mut t = human(&b, root, &["sync", agent_a.addr()]);
    let peers = run(&b, &["peers", "--human"]).ok().stdout;
    // Aligned: each column starts where its header does.
    let lines: Vec<&str> = peers.lines().collect();
    for (head, cell) in [("OWNER", "Team North"), ("STATE", "online"), ("SYNCS", "1")] {
        assert_eq!(lines[0].find(head), lines[1].rfind(cell), "{peers}");
    }
    t += &human(&b, root, &["peers"]);
    t += &human(&b, root, &["status"]);
    // B patches A's record: the history names both laptops, B as this laptop.
    run(&b, &["patch", "person", ID, r#"{"status":"in_shelter"}"#]).ok();
    t += &human(&b, root, &["history", "person", ID]);
    // `get --meta`: who wrote each field and when, by laptop name and local time; no stamps
    // or clock numbers (those stay in `--json`).
    let meta = human(&b, root, &["get", "person", ID, "--meta"]);
    assert!(
        meta.contains("by laptopA, ") && meta.contains("by laptopB (this laptop), "),
        "{meta}"
    );
    assert!(
        !Regex::new(r"\d{12,}|#\d{4}@").unwrap().is_match(&meta),
        "{meta}"
    );
    t += &meta;
    // `verify` for people: per table, then the verdict and the next step.
    let differs = run(&b, &["verify", agent_a.addr(), "--human"]).code(1);
    // Said once, on stdout: stderr does not repeat "not in sync".
    assert!(differs.stderr.trim().is_empty(), "{differs}");
    let v = differs.stdout;
    assert!(
        v.contains("person: differs: 1 here, 1 on laptopA (deleted records included); ")
            && v.contains(&format!("1 record differs: {ID}."))
            && v.contains(&format!("Not in sync with laptopA ({}): ", agent_a.addr()))
            && v.contains("`fieldsync sync laptopA` brings both up to date."),
        "{v}"
    );
    run(&b, &["sync", agent_a.addr()]).ok();
    let v = run(&b, &["verify", agent_a.addr(), "--human"]).ok().stdout;
    assert!(
        v.contains(&format!(
            "person: in sync (1 record, deleted ones included).\nIn sync with laptopA ({}).",
            agent_a.addr()
        )),
        "{v}"
    );
    // `doctor` names the port the running agent listens on (not the configured default).
    let doctor = run(&b, &["doctor"]).stdout;
    let port = doctor
        .lines()
        .find(|l| l.contains("\"check\":\"port\""))
        .unwrap_or_else(|| panic!("{doctor}"));
    let agent_port = agent_b.addr().rsplit(':').next().unwrap();
    assert!(
        port.contains(&format!(":{agent_port}: the port of")),
        "{port}"
    );
    // Masked times vary in length, and so does the padding after them: collapsed.
    let t = Regex::new(" {2,}").unwrap().replace_all(&t, "  ");
    snapshot!("sync_peers_status", t.as_ref());
}

/// One conflict met in a session is said as one, although both laptops detect it: the line
/// `sync` prints agrees with what `conflicts` lists.
#[test]
fn a_sync_line_counts_a_conflict_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    run(
        &a,
        &["put", "person", "--id", ID, r#"{"status":"missing"}"#],
    )
    .ok();
    let agent_a = Agent::start_with(&a, &["--no-api"]);
    run(&b, &["sync", agent_a.addr()]).ok();
    drop(agent_a);
    // The same field changed on both laptops before they meet again.
    run(&a, &["patch", "person", ID, r#"{"status":"found"}"#]).ok();
    run(&b, &["patch", "person", ID, r#"{"status":"in_shelter"}"#]).ok();
    let agent_a = Agent::start_with(&a, &["--no-api"]);
    let line = run(&b, &["sync", agent_a.addr(), "--human"]).ok().stdout;
    assert!(line.contains(", 1 conflict, "), "{line}");
    let listed = run(&b, &["conflicts"]).ok().stdout;
    assert_eq!(
        listed.lines().filter(|l| l.contains(ID)).count(),
        1,
        "{listed}"
    );
    // Said as what happened, whether the values came from edits or from imports of one list.
    let said = run(&b, &["conflicts", "--human"]).ok().stdout;
    assert!(
        said.contains("field \"status\" set to different values on two laptops"),
        "{said}"
    );
}

/// What a newcomer following the README tripped over, told in one line each: a restore that
/// keeps this laptop's identity says so and names the other choice; a failed restore leaves
/// nothing behind; a name enrolled twice and a revoke away from the coordinator are refused
/// with the fix; `held list` says when nothing is held; `list` says which columns it left out
/// and `--fields` chooses them.
#[test]
fn restore_enroll_revoke_held_and_list_tell_a_newcomer_what_happened() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = data_dir(root, "a");
    run(&a, &["init", "--name", "laptopA"]).ok();
    run(&a, &["mesh", "create", "--name", "Relief"]).ok();
    let wide = r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":"eight"}"#;
    run(&a, &["put", "person", "--id", ID, wide]).ok();
    run(&a, &["put", "person", "--id", ID2, r#"{"a":10,"h":"x"}"#]).ok();

    // `list`: six columns, a footer naming the rest; `--fields` picks columns (and JSON fields).
    let mut t = human(&a, root, &["list", "person"]);
    t += &human(&a, root, &["list", "person", "--fields", "h,a"]);
    let only = run(&a, &["list", "person", "--fields", "h", "--json"])
        .ok()
        .lines();
    let row = only.iter().find(|r| r["id"] == ID).unwrap();
    assert_eq!(row["fields"], json!({"h": "eight"}));
    // Nothing held: said, not silence.
    t += &human(&a, root, &["held", "list"]);
    // `history --diff` names the laptop, as `history` does.
    let diff = run(&a, &["history", "person", ID, "--diff"]).ok().stdout;
    assert!(
        diff.starts_with("@ ")
            && diff.contains(" created by laptopA (this laptop)\n  revision ")
            && !diff.contains(") ("),
        "{diff}"
    );

    // Enrolling a name twice is refused with the laptop's id and the fix.
    let cred = root.join("b.fsmesh");
    let cred_s = cred.to_str().unwrap();
    let first = run(
        &a,
        &[
            "mesh", "enroll", "--name", "laptopB", "--out", cred_s, "--json",
        ],
    )
    .ok()
    .json();
    let b_id = first["instance"].as_str().unwrap();
    let spare = root.join("spare.fsmesh");
    let spare = spare.to_str().unwrap();
    let again = run(&a, &["mesh", "enroll", "--name", "laptopB", "--out", spare]).code(2);
    assert!(
        again.stderr.contains(&format!(
            "a laptop named \"laptopB\" is already enrolled (instance {b_id})"
        )) && again
            .stderr
            .contains(&format!("fieldsync mesh revoke {b_id}"))
            && again.stderr.contains("another --name"),
        "{again}"
    );
    // The coordinator's own name is taken too; enrolling the same instance again is not a clash.
    run(&a, &["mesh", "enroll", "--name", "laptopA", "--out", spare]).code(2);
    run(
        &a,
        &[
            "mesh",
            "enroll",
            "--name",
            "laptopB",
            "--instance",
            b_id,
            "--out",
            spare,
        ],
    )
    .ok();

    // Revoking from a laptop that is not the coordinator says where to run it.
    // Joining says which deployment it joined.
    let b = data_dir(root, "b");
    let joined = run(&b, &["init", "--mesh", cred_s, "--human"]).ok().stdout;
    assert!(
        joined.contains("It joined the deployment \"Relief\""),
        "{joined}"
    );
    let revoke = run(&b, &["mesh", "revoke", "laptopA"]).code(2);
    assert!(
        revoke.stderr.contains("this laptop is not the coordinator")
            && revoke.stderr.contains("`fieldsync mesh create`")
            && !revoke.stderr.contains("no such file"),
        "{revoke}"
    );

    // A backup with keys; a wrong passphrase creates nothing, in a new or an empty directory.
    let (good, bad) = (root.join("pass"), root.join("wrong"));
    std::fs::write(&good, "correct horse\n").unwrap();
    std::fs::write(&bad, "wrong horse\n").unwrap();
    let backup = root.join("a.fsbackup");
    let backup_s = backup.to_str().unwrap();
    run(
        &a,
        &[
            "backup",
            backup_s,
            "--passphrase-file",
            good.to_str().unwrap(),
        ],
    )
    .ok();
    let fresh = root.join("fresh");
    let empty = root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    for target in [&fresh, &empty] {
        let out = run(
            target,
            &[
                "restore",
                backup_s,
                "--take-over-identity",
                "--passphrase-file",
                bad.to_str().unwrap(),
            ],
        )
        .code(2);
        assert!(out.stderr.contains("passphrase"), "{out}");
        // Without init or --take-over-identity this laptop has no identity of its own: refused
        // with both ways on (not a laptop named after the machine that cannot sync).
        let out = run(target, &["restore", backup_s]).code(1);
        assert!(
            out.stderr.contains("init --mesh")
                && out
                    .stderr
                    .contains("--take-over-identity --passphrase-file FILE`")
                && out.stderr.contains("no fieldsync database"),
            "{out}"
        );
        // The command offered works as given: with the passphrase file the person named.
        let pass = good.to_str().unwrap();
        let out = run(target, &["restore", backup_s, "--passphrase-file", pass]).code(1);
        assert!(
            out.stderr
                .contains(&format!("--take-over-identity --passphrase-file {pass}`")),
            "{out}"
        );
    }
    assert!(
        !fresh.exists(),
        "a failed restore created {}",
        fresh.display()
    );
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "nothing left in it"
    );

    // Restoring without --take-over-identity says what happened and the other choice: for
    // people on stdout, beside JSON on stderr.
    run(&fresh, &["init", "--name", "laptopC"]).ok();
    run(&empty, &["init", "--name", "laptopD"]).ok();
    t += &human(
        &fresh,
        root,
        &[
            "restore",
            backup_s,
            "--passphrase-file",
            good.to_str().unwrap(),
        ],
    );
    let out = run(
        &empty,
        &[
            "restore",
            backup_s,
            "--passphrase-file",
            good.to_str().unwrap(),
            "--json",
        ],
    )
    .ok();
    let notice = out.json()["notice"].as_str().unwrap().to_string();
    assert!(out.stderr.contains(&notice), "{out}");
    // The notice is all a person reads on stderr: no developer log line before it.
    let log_line = |l: &str| {
        // `13:06:21 warning: …` (a log event for people, `fieldsync::logfmt`) or tracing's own.
        l.split_once(' ')
            .is_some_and(|(_, rest)| rest.starts_with("warning:") || rest.starts_with("info:"))
            || l.contains("WARN")
    };
    assert!(
        !out.stderr.lines().any(log_line) && !out.stderr.contains("fieldsync::store"),
        "{out}"
    );
    assert!(notice.contains("--take-over-identity"), "{notice}");
    let t = t
        .replace(backup_s, "<backup>")
        .replace(root.to_str().unwrap(), "<root>");
    snapshot!("newcomer", t);
}

/// Data directories `a` and `b` under `root`, initialised as laptopA and laptopB.
fn laptops_a_and_b(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (data_dir(root, "a"), data_dir(root, "b"));
    run(&a, &["init", "--name", "laptopA"]).ok();
    run(&b, &["init", "--name", "laptopB"]).ok();
    (a, b)
}

/// `run`'s output (often a log file) says a session with a peer once, then only sessions that
/// moved something: periodic sessions that move nothing do not fill it, and a failure's log
/// line carries no empty `peer= name=` fields (found by a newcomer trial).
#[test]
fn the_agents_output_says_only_sessions_that_moved_something() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b) = laptops_a_and_b(root);
    // B's agent syncs with every known peer each second.
    std::fs::write(b.join("fieldsync.toml"), "[sync]\ninterval_secs = 1\n").unwrap();
    let agent_a = Agent::start_with(&a, &["--no-api"]);
    let agent_b = Agent::start_with(&b, &["--no-api"]);
    run(&b, &["sync", agent_a.addr()]).ok();
    let syncs = || -> u64 {
        run(&b, &["peers", "--json"])
            .ok()
            .lines()
            .iter()
            .filter_map(|v| v["sync_count"].as_u64())
            .max()
            .unwrap_or(0)
    };
    // Several periodic sessions that move nothing (bounded: 60 s).
    wait_until(
        "B's agent to run four more sessions with A",
        std::time::Duration::from_secs(60),
        || (syncs() >= 5).then_some(()),
    );
    let idle = |log: &str| {
        log.lines()
            .filter(|l| l.starts_with("synced with laptopA: received 0, sent 0, 0 conflicts"))
            .count()
    };
    let log = agent_b.log_text();
    assert!(idle(&log) <= 1, "a line per idle session:\n{log}");
    assert!(
        !log.contains("peer=None") && !log.contains("peer= "),
        "{log}"
    );
    // Something moves: that session is said.
    run(&a, &["put", "person", r#"{"name":"Amina"}"#]).ok();
    wait_until(
        "B's agent to say it received the record",
        std::time::Duration::from_secs(60),
        || {
            agent_b
                .log_text()
                .lines()
                .any(|l| l.starts_with("synced with laptopA: received 1,"))
                .then_some(())
        },
    );
}

/// A laptop given with `--peer` that is not up yet: `run` says the failure once with its next
/// try, tries again then (not at the next periodic round, a minute away), and says when the
/// laptop is back, although it is by then known by its id rather than its address (a newcomer
/// saw neither the retry nor the "back" line).
#[test]
fn a_peer_that_comes_up_later_is_retried_when_announced_and_said_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b) = laptops_a_and_b(root);
    ensure_member(&b);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let b_addr = format!("127.0.0.1:{port}");
    let agent_a = Agent::start_with(&a, &["--no-api", "--peer", &b_addr]);
    // A line of A's output, within 30 s.
    let a_says = |what: &str, line: &dyn Fn(&str) -> bool| {
        wait_until(what, std::time::Duration::from_secs(30), || {
            agent_a.log_text().lines().any(line).then_some(())
        })
    };
    a_says("A to say B cannot be reached", &|l| {
        l.starts_with(&format!("sync with {b_addr} failed")) && l.contains("next try in")
    });
    let log_b = root.join("b.log");
    let mut agent_b = std::process::Command::new(bin())
        .args([
            "--data-dir",
            b.to_str().unwrap(),
            "run",
            "--listen",
            &b_addr,
        ])
        .args(["--no-discovery", "--no-api"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_b).unwrap())
        .spawn()
        .expect("start B");
    // Bounded well under the periodic round (`[sync] interval_secs`, 60 s): only the announced
    // retry (back-off 2, 4, 8 s) can make it in time.
    let said = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a_says("A to say B is back", &|l| {
            l.starts_with("synced with laptopB") && l.contains("(reachable again)")
        })
    }));
    let _ = agent_b.kill();
    let _ = agent_b.wait();
    if said.is_err() {
        panic!(
            "A's log:\n{}\nB's log:\n{}",
            agent_a.log_text(),
            std::fs::read_to_string(&log_b).unwrap_or_default()
        );
    }
}

/// Polls `f` every 200 ms until it gives a value; panics naming `what` after `limit`.
fn wait_until<T>(what: &str, limit: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The coordinator's commands on a terminal: `mesh create`, `mesh show`, `import`, `backup`
/// and `doctor` print sentences and one line per check, not JSON; `--json` (and any stdout
/// that is not a terminal) keeps the JSON scripts read.
#[test]
fn coordinator_commands_print_sentences() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = data_dir(root, "a");
    run(&a, &["init", "--name", "hq"]).ok();
    let mut t = human(
        &a,
        root,
        &["mesh", "create", "--name", "Flood response 2026"],
    );
    t += &human(&a, root, &["mesh", "show"]);
    let csv = root.join("people.csv");
    std::fs::write(&csv, "case_number,name\nA-1,Amina\nA-2,Chidi\nA-3,Mu\n").unwrap();
    let csv_s = csv.to_str().unwrap();
    t += &human(
        &a,
        root,
        &["import", "person", csv_s, "--key", "case_number"],
    );
    // The same file again changes nothing: said as such.
    t += &human(
        &a,
        root,
        &["import", "person", csv_s, "--key", "case_number"],
    );
    let ids: Vec<String> = run(&a, &["list", "person"])
        .ok()
        .lines()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    run(&a, &["delete", "person", &ids[0]]).ok();
    let pass = root.join("pass");
    std::fs::write(&pass, "correct horse\n").unwrap();
    let backup = root.join("hq.fsbackup");
    t += &human(
        &a,
        root,
        &[
            "backup",
            backup.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
    );
    let mesh_id = run(&a, &["mesh", "show"]).ok().json()["mesh_id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = t
        .replace(&mesh_id, "<mesh id>")
        .replace(root.to_str().unwrap(), "<root>");
    let t = Regex::new(r"valid until [^\n]+")
        .unwrap()
        .replace_all(&t, "valid until <date>");
    let t = Regex::new(r"\d+\.\d KB|\d+ B\b")
        .unwrap()
        .replace_all(&t, "<size>");
    let t = Regex::new(r"Digest [0-9a-f]{64}")
        .unwrap()
        .replace_all(&t, "Digest <sha256>");
    snapshot!("coordinator", t.to_string());

    // JSON for scripts, exactly as before: with --json and into a pipe.
    for extra in [&["--json"][..], &[][..]] {
        let mut args = vec!["backup", "--no-keys"];
        let file = root.join(format!("plain{}.fsbackup", extra.len()));
        args.push(file.to_str().unwrap());
        args.extend(extra);
        let v = run(&a, &args).ok().json();
        // Two people, one deleted, and the import key the keyed import recorded
        // (`fs_import_keys`, fieldsync's own table: it syncs and is backed up like records).
        assert_eq!(
            (v["count"].as_u64(), v["entries"]["records"].as_u64()),
            (Some(3), Some(4)),
            "{v}"
        );
        let v = run(&a, &[&["mesh", "show"][..], extra].concat())
            .ok()
            .json();
        assert_eq!(v["mesh_id"], mesh_id.as_str());
    }

    // doctor: one line per check, ok or FAILED, the fix under a failed one; exit 1 still.
    let b = data_dir(root, "b");
    run(&b, &["init", "--name", "laptopB"]).ok();
    let out = run(&b, &["doctor", "--human"]).code(1);
    // The summary is said once, on stdout (stderr repeated it on a terminal).
    assert!(out.stderr.trim().is_empty(), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let cred = lines
        .iter()
        .position(|l| l.starts_with("FAILED  credential: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(lines[cred + 1].starts_with("        fix: "), "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("ok      config: ")),
        "{out}"
    );
    assert!(
        lines.iter().all(|l| l.starts_with("ok      ")
            || l.starts_with("FAILED  ")
            || l.starts_with("        fix: ")
            || l.ends_with("run `fieldsync doctor` again.")),
        "{out}"
    );
    assert!(!out.stdout.contains('{'), "no JSON for people: {out}");
    let json = run(&b, &["doctor"]).code(1);
    for l in json.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["check"].is_string() && v["ok"].is_boolean(), "{l}");
    }
}

/// A laptop that restores another laptop's backup (keeping its own identity) does not show
/// that laptop's sync history as its own: `never` and 0 syncs until it syncs itself.
#[test]
fn a_restore_keeping_this_identity_starts_with_no_sync_history() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (hq, a, c) = (
        data_dir(root, "hq"),
        data_dir(root, "a"),
        data_dir(root, "c"),
    );
    run(&hq, &["init", "--name", "hq"]).ok();
    run(&a, &["init", "--name", "laptopA"]).ok();
    run(&c, &["init", "--name", "laptopC"]).ok();
    run(&a, &["put", "person", r#"{"name":"Amina"}"#]).ok();
    let agent = Agent::start_plaintext(&hq);
    for _ in 0..2 {
        run(&a, &["sync", agent.addr(), "--insecure-plaintext"]).ok();
    }
    let a_peers = run(&a, &["peers"]).ok().lines();
    assert_eq!(a_peers[0]["sync_count"], 2, "{a_peers:?}");
    let file = root.join("a.fsbackup");
    run(&a, &["backup", file.to_str().unwrap(), "--no-keys"]).ok();

    run(&c, &["restore", file.to_str().unwrap()]).ok();
    let peers = run(&c, &["peers"]).ok().lines();
    let named = |peers: &[Value], name: &str| -> Value {
        peers
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no peer {name}: {peers:?}"))
    };
    assert_eq!(peers.len(), 2, "{peers:?}");
    let hq_row = named(&peers, "hq");
    assert_eq!(
        (&hq_row["sync_count"], &hq_row["last_update"]),
        (&json!(0), &Value::Null),
        "the peer stays known by name: {peers:?}"
    );
    // The backup's own laptop is known by name too, never synced with (newcomer trial 8,
    // finding 8: history, conflicts and `mesh show` named it by its instance id).
    let a_row = named(&peers, "laptopA");
    assert_eq!(
        (&a_row["sync_count"], &a_row["last_update"]),
        (&json!(0), &Value::Null),
        "{peers:?}"
    );
    let list = run(&c, &["list", "person"]).ok().lines();
    let amina = list[0]["id"].as_str().unwrap().to_string();
    let history = run(&c, &["history", "person", &amina, "--human"])
        .ok()
        .stdout;
    assert!(history.contains("created by laptopA"), "{history}");
    let status = run(&c, &["status"]).ok().json();
    assert_eq!(status["peers"]["last_sync"], Value::Null, "{status}");
    let shown = run(&c, &["peers", "--human"]).ok().stdout;
    assert!(shown.contains("never"), "{shown}");

    // Its own first sync counts as one, and brings nothing new but loses nothing.
    run(&c, &["sync", agent.addr(), "--insecure-plaintext"]).ok();
    let peers = run(&c, &["peers"]).ok().lines();
    assert_eq!(named(&peers, "hq")["sync_count"], 1, "{peers:?}");
    assert_eq!(
        run(&c, &["digest"]).ok().json(),
        run(&a, &["digest"]).ok().json()
    );

    // `doctor` run by the agent that holds the database prints for people too (no credential
    // here: it fails, exit 1, with the fix).
    let out = run(&hq, &["doctor", "--human"]).code(1);
    assert!(
        out.stdout
            .contains("ok      database: held by the running agent")
            && out.stdout.contains("FAILED  credential: ")
            && !out.stdout.contains('{'),
        "{out}"
    );
}

/// `run` on a terminal says in a sentence that the laptop runs, where it syncs and what to do
/// next (a newcomer got the JSON line scripts read); with sync off it says that instead.
#[test]
fn run_says_in_a_sentence_that_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // The first line `run --human` prints, read as it comes (bounded), then a clean stop.
    let started = |dir: &Path, api: &[&str]| -> String {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin())
            .args(["--data-dir", dir.to_str().unwrap(), "run", "--human"])
            .args(["--listen", "127.0.0.1:0", "--no-discovery"])
            .args(api)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start fieldsync run");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (rest_tx, rest_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // What it says once stopped, up to the end of its output.
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
            let _ = rest_tx.send(rest);
        });
        let line = rx.recv_timeout(std::time::Duration::from_secs(60));
        // SIGTERM, as Ctrl-C would; killed if it does not stop (bounded).
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        let rest = rest_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_default();
        // Ctrl-C ended it without a word before: a clean stop is said.
        let name = if line.as_ref().is_ok_and(|l| l.starts_with("laptopA")) {
            "laptopA"
        } else {
            "laptopB"
        };
        assert_eq!(
            rest,
            format!("{name} stopped: every change it holds is on disk.\n")
        );
        line.expect("the agent's first line within 60 s")
    };
    let off = data_dir(root, "off");
    run(&off, &["init", "--name", "laptopA"]).ok();
    assert_eq!(
        started(&off, &["--no-api"]),
        "laptopA is running with sync off (see above): the commands work on this laptop. \
         Ctrl-C stops it.\n"
    );
    let on = data_dir(root, "on");
    run(&on, &["init", "--name", "laptopB"]).ok();
    ensure_member(&on);
    let out = started(&on, &["--api-listen", "127.0.0.1:0"]);
    // Discovery is off here, so the sentence must not promise laptops found on the network.
    let said = Regex::new(
        r"^laptopB is running: it syncs on 127\.0\.0\.1:\d+ with the peers it knows or is given \(discovery is off\)\. `fieldsync status` and `fieldsync peers` show them\. The console and the HTTP API are on http://127\.0\.0\.1:\d+ \(`fieldsync console` opens the console\)\. Ctrl-C stops it\.\n$",
    )
    .unwrap();
    assert!(said.is_match(&out), "{out:?}");
}

/// The coordinator names every laptop it enrolled, met or not (trial 9, finding 5): in a chain
/// hq ↔ laptopA ↔ laptopB, hq named laptopB's writes by UUID in conflicts and history, refused
/// `--keep-from laptopB` ("no known peer is named"), and listed only laptopA among its peers.
#[test]
fn the_coordinator_names_laptops_it_enrolled_but_never_met() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let hq = data_dir(root, "hq");
    run(&hq, &["init", "--name", "hq"]).ok();
    run(&hq, &["mesh", "create", "--name", "Relief"]).ok();
    let [a, b] = [("a", "laptopA"), ("b", "laptopB")].map(|(d, name)| {
        let cred = root.join(format!("{name}.fsmesh"));
        let cred_s = cred.to_str().unwrap();
        run(&hq, &["mesh", "enroll", "--name", name, "--out", cred_s]).ok();
        let dir = data_dir(root, d);
        run(&dir, &["init", "--mesh", cred_s]).ok();
        dir
    });
    let b_id = run(&b, &["status", "--json"]).ok().json()["instance"]
        .as_str()
        .unwrap()
        .to_string();
    let agent_a = Agent::start(&a);
    run(
        &hq,
        &["put", "person", "--id", ID, r#"{"status":"missing"}"#],
    )
    .ok();
    sync(&hq, agent_a.addr());
    sync(&b, agent_a.addr());
    // Both change the record apart; laptopB's edit reaches hq through laptopA only.
    run(&hq, &["patch", "person", ID, r#"{"status":"found"}"#]).ok();
    run(&b, &["patch", "person", ID, r#"{"status":"in shelter"}"#]).ok();
    sync(&b, agent_a.addr());
    sync(&hq, agent_a.addr());

    let said = run(&hq, &["conflicts", "--human"]).ok().stdout;
    assert!(
        said.contains("laptopB") && !said.contains(&b_id),
        "hq names laptopB:\n{said}"
    );
    let history = run(&hq, &["history", "person", ID, "--human"]).ok().stdout;
    assert!(
        history.contains("laptopB") && !history.contains(&b_id),
        "{history}"
    );
    let peers = run(&hq, &["peers", "--json"]).ok().lines();
    let row = peers
        .iter()
        .find(|p| p["name"] == "laptopB")
        .unwrap_or_else(|| panic!("hq lists laptopB: {peers:?}"));
    assert!(
        row["problem"]
            .as_str()
            .unwrap()
            .starts_with("has not synced with this laptop yet"),
        "{row}"
    );
    // On a terminal its owner, not told yet, is said so, not left blank as if it had none.
    let table = run(&hq, &["peers", "--human"]).ok().stdout;
    let line = table
        .lines()
        .find(|l| l.starts_with("laptopB"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("not known yet"), "{table}");
    // laptopB never met hq either: it names hq by the name hq's certificate carries.
    let hq_id = run(&hq, &["status", "--json"]).ok().json()["instance"]
        .as_str()
        .unwrap()
        .to_string();
    let on_b = run(&b, &["history", "person", ID, "--human"]).ok().stdout;
    assert!(on_b.contains("hq") && !on_b.contains(&hq_id), "{on_b}");
    let id = run(&hq, &["conflicts", "--json"]).ok().lines()[0]["id"].to_string();
    run(
        &hq,
        &["conflicts", "resolve", &id, "--keep-from", "laptopB"],
    )
    .ok();
    assert_eq!(
        run(&hq, &["get", "person", ID]).ok().json()["fields"]["status"],
        "in shelter"
    );
}
