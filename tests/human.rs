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
        (r"revision \d+", "revision <n>"),
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
    snapshot!("records", t);
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
    // No HTTP API: the status line stays the same whichever ports are free.
    let agent_a = Agent::start_with(&a, &["--no-api"]);
    let _agent_b = Agent::start_with(&b, &["--no-api"]);

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
    // Masked times vary in length, and so does the padding after them: collapsed.
    let t = Regex::new(" {2,}").unwrap().replace_all(&t, "  ");
    snapshot!("sync_peers_status", t.as_ref());
}
