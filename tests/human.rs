//! The CLI's output for people (what a terminal shows; `--human` forces it in a pipe), as
//! snapshots with ids, times, durations, ports and paths masked. JSON output, which scripts
//! use, is checked by tests/cli.rs and every other test.

mod common;

use common::agent::*;
use regex::Regex;
use std::path::Path;

const ID: &str = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";

/// Replaces what differs between runs with placeholders.
fn mask(text: &str, root: &Path) -> String {
    let t = text.replace(root.to_str().unwrap(), "<root>");
    let rules = [
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "<id>",
        ),
        (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", "<time>"),
        (r"\((just now|\d+ s ago|\d+ min ago)\)", "(<ago>)"),
        (r"\d+\.\d s$", "<secs> s"),
        (r"pid \d+", "pid <pid>"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:<port>"),
        (r"revision \d+", "revision <n>"),
    ];
    let mut t = t;
    for (re, with) in rules {
        let re = Regex::new(&format!("(?m){re}")).unwrap();
        t = re.replace_all(&t, with).into_owned();
    }
    t
}

fn human(dir: &Path, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--human");
    run(dir, &all).ok().stdout
}

#[test]
fn writes_and_init_print_sentences() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let a = data_dir(root, "a");
    let m = |s: String| mask(&s, root);
    assert_eq!(
        m(human(
            &a,
            &["init", "--name", "laptopA", "--owner", "Team North"]
        )),
        "This laptop is laptopA, owner Team North (instance <id>).\n"
    );
    let put = ["put", "person", "--id", ID, r#"{"name":"Amina"}"#];
    assert_eq!(m(human(&a, &put)), "Saved person <id> (revision <n>).\n");
    assert_eq!(
        m(human(&a, &put)),
        "No change: person <id> already has these values.\n"
    );
    assert_eq!(
        m(human(&a, &["patch", "person", ID, r#"{"age":34}"#])),
        "Changed person <id> (revision <n>).\n"
    );
    assert_eq!(
        m(human(&a, &["delete", "person", ID])),
        "Deleted person <id> (revision <n>).\n"
    );
    assert_eq!(
        human(&a, &["peers"]),
        "No peers yet: none has synced with this laptop.\n"
    );
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
fn sync_peers_and_status_read_as_sentences_and_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (a, b) = (data_dir(root, "a"), data_dir(root, "b"));
    run(&a, &["init", "--name", "laptopA", "--owner", "Team North"]).ok();
    run(&b, &["init", "--name", "laptopB", "--owner", "Team South"]).ok();
    import(&a, "person", &people(3));
    // No HTTP API: the status line stays the same whichever ports are free.
    let agent_a = Agent::start_with(&a, &["--no-api"]);
    let _agent_b = Agent::start_with(&b, &["--no-api"]);
    let m = |s: String| mask(&s, root);

    // Forwarded to B's agent, which prints as the terminal asked.
    assert_eq!(
        m(human(&b, &["sync", agent_a.addr()])),
        "synced with laptopA: received 3, sent 0, 0 conflicts, <secs> s\n"
    );
    let peers = human(&b, &["peers"]);
    // Aligned: each column starts where its header does.
    let lines: Vec<&str> = peers.lines().collect();
    for (head, cell) in [("OWNER", "Team North"), ("STATE", "online"), ("SYNCS", "1")] {
        assert_eq!(lines[0].find(head), lines[1].rfind(cell), "{peers}");
    }
    // Masked times vary in length: compare with the padding collapsed.
    let spaces = Regex::new(" {2,}").unwrap();
    assert_eq!(
        spaces.replace_all(&m(peers), "  "),
        "LAPTOP  OWNER  STATE  LAST SYNC  SYNCS  PROBLEM\n\
         laptopA  Team North  online  <time> (<ago>)  1\n"
    );
    assert_eq!(
        m(human(&b, &["status"])),
        "This laptop: laptopB, owner Team South\n\
         Data: <root>/b\n\
         TABLE   RECORDS  DELETED\n\
         person  3        0\n\
         No unresolved conflicts.\n\
         Peers: 1 known, 1 online; last sync <time> (<ago>).\n\
         Agent: running (pid <pid>), sync on 127.0.0.1:<port>, mutual TLS.\n"
    );
}
