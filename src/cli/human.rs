//! Output for people: what commands print on a terminal (or with `--human`), instead
//! of JSON. Aligned tables and sentences, names instead of ids, local times with "3 min ago".
//! `--json`, and any stdout that is not a terminal, keep the JSON output scripts rely on.

use crate::app::records::WriteOutcome;
use chrono::{DateTime, Local, Utc};
use serde_json::Value;

/// `2026-12-03 14:02 (3 min ago)` in the local time zone, or `never`.
pub fn when(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        None => "never".into(),
        Some(t) => format!(
            "{} ({})",
            t.with_timezone(&Local).format("%Y-%m-%d %H:%M"),
            ago(t, now)
        ),
    }
}

/// `just now`, `42 s ago`, `3 min ago`, `5 h ago`, `2 days ago`.
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    match s {
        0..=4 => "just now".into(),
        5..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// `1 page`, `3 pages`: a count with the word for one or for many.
pub fn count(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Rows of cells as columns padded to the widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(c);
            if i + 1 < n {
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// An RFC 3339 time in a JSON value.
fn time_of(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A peer row's name, or its instance id when it never told one.
fn row_name(p: &Value) -> String {
    match p["name"].as_str() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => p["instance"].as_str().unwrap_or("?").to_string(),
    }
}

/// `peers`: one aligned row per laptop (rows as `peers --json` prints them), then the
/// connections the agent refused lately (`status`'s `agent.refused_recent`), ids replaced by
/// the names of known laptops.
pub fn peers(rows: &[Value], refused: &Value, agent: bool, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out += "No peers yet: none has synced with this laptop.\n";
    } else {
        let body: Vec<Vec<String>> = rows
            .iter()
            .map(|p| {
                let revoked = &p["revoked"];
                let (state, problem) = if revoked.is_object() {
                    let at = time_of(&revoked["at"]).map_or_else(String::new, |t| {
                        t.with_timezone(&Local).format("%Y-%m-%d %H:%M").to_string()
                    });
                    let why = revoked["reason"].as_str().unwrap_or("no reason given");
                    ("revoked", format!("revoked {at}: {why}"))
                } else {
                    // Only a running agent watches the network: without one, "offline" would
                    // be a guess (and wrong for a laptop sitting beside this one).
                    let state = if !agent {
                        "unknown"
                    } else if p["online"] == true {
                        "online"
                    } else {
                        "offline"
                    };
                    (state, p["problem"].as_str().unwrap_or("").to_string())
                };
                vec![
                    row_name(p),
                    match p["owner"].as_str().unwrap_or("") {
                        // A laptop known only by name (enrolled, or its writes passed on) has
                        // not told its owner yet: a blank read as "has none" (trial 9b).
                        "" if p["first_seen"].is_null() && p["sync_count"] == 0 => {
                            "not known yet".to_string()
                        }
                        o => o.to_string(),
                    },
                    state.into(),
                    when(time_of(&p["last_update"]), now),
                    p["sync_count"].to_string(),
                    problem,
                ]
            })
            .collect();
        out += &table(
            &["LAPTOP", "OWNER", "STATE", "LAST SYNC", "SYNCS", "PROBLEM"],
            &body,
        );
        if !agent {
            out += "Which laptops are on the network is known only while the agent runs \
                    (`fieldsync run`).\n";
        }
    }
    let refused = refused.as_array().map_or(&[][..], Vec::as_slice);
    if !refused.is_empty() {
        out += "\nRefused connections (newest first):\n";
        let body: Vec<Vec<String>> = refused
            .iter()
            .map(|r| {
                let mut why = r["reason"].as_str().unwrap_or("").to_string();
                for p in rows {
                    if let (Some(id), Some(n)) = (p["instance"].as_str(), p["name"].as_str()) {
                        if !n.is_empty() {
                            why = why.replace(&format!("instance {id}"), n);
                        }
                    }
                }
                vec![
                    when(time_of(&r["at"]), now),
                    r["addr"].as_str().unwrap_or("").to_string(),
                    why,
                ]
            })
            .collect();
        out += &table(&["WHEN", "FROM", "WHY"], &body);
    }
    out
}

/// `status`'s word on the credential: nothing when it is fine; "none" and how to join when
/// there is none (more pointedly when the laptop has synced before: a restore from a backup
/// without keys leaves it so); otherwise the problem and its fix, as `doctor` says them.
fn credential_line(c: &Value, known_peers: u64, name: &str, instance: &str) -> String {
    if c["ok"] != false {
        return String::new();
    }
    let detail = c["detail"].as_str().unwrap_or("");
    let fix = c["fix"].as_str().unwrap_or("");
    if detail.starts_with("no ") && detail.contains("has not joined a deployment") {
        if known_peers == 0 {
            return "Deployment: none: this laptop holds no credential, so no deployment's laptop \
                    will sync with it (`fieldsync init --mesh FILE` joins one, with a credential \
                    from the coordinator).\n"
                .into();
        }
        // A laptop that took a lost one's identity over from a backup without keys: the
        // coordinator enrolls that same identity again (not a new one, and without revoking
        // it, which would shut this laptop out too).
        let file = format!("{}.fsmesh", if name.is_empty() { "laptop" } else { name });
        return format!(
            "Credential: none, although this laptop has synced before (restored from a backup \
             without keys?), so its peers will refuse it. On the coordinator's laptop run \
             `fieldsync mesh enroll --name {name} --instance {instance} --out {file}`, then \
             here `fieldsync init --mesh {file}`.\n"
        );
    }
    format!("Credential problem: {detail}. Fix: {fix}.\n")
}

/// `status`: who this laptop is, its tables, its peers and its agent, in sentences.
pub fn status(v: &Value, now: DateTime<Utc>) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let mut out = format!("This laptop: {}", s("name"));
    if !s("owner").is_empty() {
        out += &format!(", owner {}", s("owner"));
    }
    out += &format!("\nData: {}\n", s("data_dir"));
    // An agent running `--insecure-plaintext` syncs without credentials by design: no word.
    let plaintext = v["agent"]["transport"]
        .as_str()
        .is_some_and(|t| t.starts_with("plaintext"));
    out += &credential_line(
        if plaintext {
            &Value::Null
        } else {
            &v["credential"]
        },
        v["peers"]["known"].as_u64().unwrap_or(0),
        &s("name"),
        &s("instance"),
    );
    // Which deployment this laptop syncs in, once it is in one (a newcomer who had joined saw
    // the "Deployment: none" line go and nothing say where it was now).
    if let (Some(d), true) = (v["deployment"].as_str(), v["credential"]["ok"] == true) {
        out += &format!("Deployment: {d}\n");
    }
    if let Some(t) = v["tables"].as_object().filter(|t| !t.is_empty()) {
        let rows: Vec<Vec<String>> = t
            .iter()
            .map(|(name, c)| {
                vec![
                    name.clone(),
                    c["live"].to_string(),
                    c["deleted"].to_string(),
                ]
            })
            .collect();
        out += &table(&["TABLE", "RECORDS", "DELETED"], &rows);
    } else {
        out += "No records yet.\n";
    }
    let n = v["unresolved_conflicts"].as_u64().unwrap_or(0);
    out += &match n {
        0 => "No unresolved conflicts.\n".to_string(),
        1 => "1 unresolved conflict: see `fieldsync conflicts`.\n".to_string(),
        n => format!("{n} unresolved conflicts: see `fieldsync conflicts`.\n"),
    };
    let held = v["held"].as_array().map_or(&[][..], Vec::as_slice);
    if !held.is_empty() {
        out += &format!(
            "{} by the mass-delete brake (`fieldsync held list` to approve or reject):\n",
            count(
                held.len() as u64,
                "delete batch held",
                "delete batches held"
            )
        );
        for h in held {
            out += &format!("  {}\n", h["message"].as_str().unwrap_or(""));
        }
    }
    let p = &v["peers"];
    let last = p["last_sync"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let online = if v["agent"]["running"] == true {
        format!("{} online", p["online"])
    } else {
        "online unknown while the agent is not running".to_string()
    };
    // A revoked laptop stays known (history names it) but never syncs again: said, so "known"
    // is not read as laptops that may still come back.
    let revoked = match p["revoked"].as_u64().unwrap_or(0) {
        0 => String::new(),
        n => format!(" ({n} revoked)"),
    };
    out += &format!(
        "Peers: {} known{revoked}, {online}; last sync {}.\n",
        p["known"],
        when(last, now)
    );
    let dropped = p["quarantined"].as_u64().unwrap_or(0);
    if dropped > 0 {
        out += &format!(
            "Dropped from peers: {} that failed the checks (quarantined); `fieldsync peers` \
             shows from which laptop, the agent log why.\n",
            count(dropped, "record", "records")
        );
    }
    let me = v["instance"].as_str().unwrap_or("");
    let shared = v["identity_problems"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    for x in shared {
        let id = x["instance"].as_str().unwrap_or("");
        let line = crate::app::identity::copied_identity_line(
            x["name"].as_str().unwrap_or(""),
            uuid::Uuid::parse_str(id).unwrap_or_else(|_| uuid::Uuid::nil()),
            id == me,
        );
        out += &format!("  {line}\n");
    }
    let duplicate = format!("(code {})", crate::protocol::codes::DUPLICATE_INSTANCE);
    for f in p["failing"].as_array().into_iter().flatten() {
        // A refusal for a shared identity is said once, above, with its fix.
        if !shared.is_empty() && f["error"].as_str().is_some_and(|e| e.contains(&duplicate)) {
            continue;
        }
        out += &format!(
            "  {} is failing: {}\n",
            f["name"].as_str().unwrap_or(""),
            f["error"].as_str().unwrap_or("")
        );
    }
    let a = &v["agent"];
    if a["running"] == true {
        // An agent of a laptop not in a deployment listens nowhere: its transport says why
        // (a newcomer read "sync on ?, none: sync is off ..." as a fault).
        out += &match a["listen"].as_str() {
            Some(listen) => format!(
                "Agent: running (pid {}), sync on {listen}, {}",
                a["pid"],
                a["transport"].as_str().unwrap_or("")
            ),
            // Joined (a credential, `mesh create` or `init --mesh`) since the agent started
            // without one: its sync stays off until it starts again.
            None if v["credential"]["ok"] == true => format!(
                "Agent: running (pid {pid}); sync is off: the agent started before this laptop \
                 joined a deployment. Stop it (Ctrl-C where it runs, or `kill {pid}`) and start \
                 it again with `fieldsync --data-dir {dir} run` to sync",
                pid = a["pid"],
                dir = s("data_dir")
            ),
            None => format!(
                "Agent: running (pid {}); {}",
                a["pid"],
                a["transport"]
                    .as_str()
                    .and_then(|t| t.strip_prefix("none: "))
                    .unwrap_or("sync is off")
            ),
        };
        if let Some(api) = a["api"].as_str() {
            out += &format!("; console and API on {api}");
        }
        out += ".\n";
        for s in a["sessions"].as_array().into_iter().flatten() {
            out += &format!("  {}\n", session_progress(s));
        }
    } else {
        out += "Agent: not running (start it with `fieldsync run`).\n";
    }
    out
}

/// One in-flight session as `syncing with laptopA (started here): 45% — received 9000 of about
/// 20000 records (3.1 MB), sent 0 of about 0 records (1.2 KB), 900 records/s, about 12 s left`;
/// a session the peer started says `(started by laptopA)`.
pub fn session_progress(s: &Value) -> String {
    let name = s["peer_name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or(s["addr"].as_str())
        .unwrap_or("?");
    let by = if s["role"] == "responder" {
        format!("started by {name}")
    } else {
        "started here".into()
    };
    let pct = (s["fraction"].as_f64().unwrap_or(0.0) * 100.0).floor();
    let dir = |d: &Value| {
        format!(
            "{} of about {} records ({})",
            d["records"],
            d["records_expected"],
            bytes(d["bytes"].as_u64().unwrap_or(0))
        )
    };
    let left = [&s["received"], &s["sent"]]
        .iter()
        .filter(|d| d["done"] != true)
        .filter_map(|d| d["eta_secs"].as_f64())
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let left = left.map_or_else(String::new, |s| {
        format!(
            ", about {} left",
            crate::app::console::human_secs(s.ceil() as i64)
        )
    });
    let rate =
        s["received"]["rate"].as_f64().unwrap_or(0.0) + s["sent"]["rate"].as_f64().unwrap_or(0.0);
    let rate = if rate >= 1.0 {
        format!(", {} records/s", rate.round())
    } else {
        String::new()
    };
    // Before any record is under way (a hello, a verify's comparison) there is no share to
    // give: "0% — received 0 of about 0 records" read like a stalled sync.
    let quiet = |d: &Value| {
        d["records"].as_u64().unwrap_or(0) == 0 && d["records_expected"].as_u64().unwrap_or(0) == 0
    };
    if quiet(&s["received"]) && quiet(&s["sent"]) {
        let sent_bytes =
            s["received"]["bytes"].as_u64().unwrap_or(0) + s["sent"]["bytes"].as_u64().unwrap_or(0);
        return format!(
            "connected to {name} ({by}): comparing, no records to move so far ({})",
            bytes(sent_bytes)
        );
    }
    format!(
        "syncing with {name} ({by}): {pct}% — received {}, sent {}{rate}{left}",
        dir(&s["received"]),
        dir(&s["sent"]),
    )
}

/// `1.5 MB`, `300 KB`, `12 B`.
pub fn bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KB", n as f64 / 1024.0),
        _ => format!("{:.1} MB", n as f64 / 1_048_576.0),
    }
}

/// `sync`: the line `run` prints too, from the sync operation's output
/// (`{"peer","peer_name","received","sent"}`).
pub fn sync(v: &Value) -> String {
    let name = v["peer_name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or(v["peer"].as_str())
        .unwrap_or("?");
    let n = |d: &str, k: &str| v[d][k].as_u64().unwrap_or(0);
    let held: Vec<crate::app::held::HoldView> =
        serde_json::from_value(v["held"].clone()).unwrap_or_default();
    let peer = v["peer"]
        .as_str()
        .and_then(|p| uuid::Uuid::parse_str(p).ok())
        .unwrap_or_else(uuid::Uuid::nil);
    crate::agent::session_line(
        name,
        n("received", "records"),
        n("sent", "records"),
        crate::agent::session_conflicts(n("received", "conflicts"), n("sent", "conflicts")),
        n("received", "ms") + n("sent", "ms"),
    ) + &crate::app::held::held_note(&held, peer)
        + "\n"
}

/// `held approve|reject ID`: what deciding the hold did, in a sentence.
pub fn hold_decided(d: &crate::app::held::HoldDecision) -> String {
    let conflicts = match d.conflicts {
        0 => String::new(),
        n => format!(
            " ({} logged: see `fieldsync conflicts`)",
            count(n, "conflict", "conflicts")
        ),
    };
    let reach = match (d.everywhere, d.decision == "rejected") {
        (true, false) => {
            "The coordinator's approval travels: every laptop holding these deletes applies \
             them when it syncs.\n"
        }
        (true, true) => {
            "The coordinator's rejection travels: every laptop holding these deletes keeps the \
             records once the restore reaches it.\n"
        }
        (false, false) => {
            "Approved here only: other laptops that hold these deletes decide on their own; \
             the coordinator's approval applies everywhere.\n"
        }
        (false, true) => {
            "Rejected here only: the restore syncs to every laptop, but other laptops that \
             hold these deletes still list them until someone decides there.\n"
        }
    };
    let head = if d.decision == "rejected" {
        format!(
            "Rejected hold {}: {} kept alive with a new revision that syncs to every laptop{conflicts}.\n",
            d.id,
            count(d.restored, "record", "records")
        )
    } else {
        format!(
            "Approved hold {}: {} applied{conflicts}.\n",
            d.id,
            count(d.applied, "held change", "held changes")
        )
    };
    head + reach
}

/// `held list`: the deletes the mass-delete brake holds, one row each, and how to decide;
/// "No held deletes." when there are none.
pub fn held(holds: &[crate::app::held::HoldView], now: DateTime<Utc>) -> String {
    if holds.is_empty() {
        return "No held deletes.\n".into();
    }
    let rows: Vec<Vec<String>> = holds
        .iter()
        .map(|h| vec![h.id.to_string(), when(Some(h.at), now), h.message.clone()])
        .collect();
    table(&["ID", "HELD SINCE", "WHAT"], &rows)
        + "Apply the deletes with `fieldsync held approve ID`, or keep the records everywhere \
           with `fieldsync held reject ID`.\n"
}

/// `put`/`patch`/`delete`: what was done to which record. The feed position (`seq`) stays in
/// the JSON: said on every write it read as noise (a newcomer trial), and as a bare number it
/// was misread as a count of the record's revisions.
pub fn write(verb: &str, o: &WriteOutcome) -> String {
    if o.written {
        format!("{verb} {} {}.\n", o.table, o.id)
    } else {
        format!(
            "No change: {} {} already has these values.\n",
            o.table, o.id
        )
    }
}

/// A field value for people: strings without quotes, everything else as compact JSON.
pub fn value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// At most `max` characters, the rest cut to "…" (a table cell must stay on its line).
fn cut(s: &str, max: usize) -> String {
    let one_line = s.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        one_line.chars().take(max - 1).collect::<String>() + "…"
    }
}

/// Widest a cell of `list` may be.
const CELL: usize = 30;
/// Most field columns `list` shows (the others are counted in the last column).
const COLUMNS: usize = 6;

/// Which [`COLUMNS`] of `names` a table without `--fields` shows: `name` and `title` first, then
/// the fields most records have, and among those the shortest on average, so that a long
/// free-text field (notes) is the one left to `get`, not a short one like `status` (a
/// newcomer missed `status` when columns were cut alphabetically).
fn columns_kept(records: &[Value], names: &[String]) -> std::collections::BTreeSet<String> {
    let mut ranked: Vec<(bool, std::cmp::Reverse<usize>, usize, &String)> = names
        .iter()
        .map(|n| {
            let lens: Vec<usize> = records
                .iter()
                .filter_map(|r| r["fields"].get(n.as_str()))
                .map(|v| value(v).chars().count())
                .collect();
            let avg = lens.iter().sum::<usize>() / lens.len().max(1);
            let named = n == "name" || n == "title";
            (!named, std::cmp::Reverse(lens.len()), avg, n)
        })
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .take(COLUMNS)
        .map(|(_, _, _, n)| n.clone())
        .collect()
}

/// `list`: records as a table, one row per record: the id, then the fields (`only`, in its
/// order, when given; else at most six chosen by [`columns_kept`], `name` and `title` first and
/// the others sorted by name, a record's
/// other fields counted and the footer saying which were left out and how to see them), and `deleted` when
/// shown. `more` records were left out.
pub fn list(table_name: &str, records: &[Value], more: u64, only: &[String]) -> String {
    if records.is_empty() {
        return format!("No records in table {table_name}.\n");
    }
    let mut names: Vec<String> = records
        .iter()
        .filter_map(|r| r["fields"].as_object())
        .flat_map(|f| f.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    let mut left_out: Vec<String> = Vec::new();
    if !only.is_empty() {
        names = only.to_vec();
    } else if names.len() > COLUMNS {
        let keep = columns_kept(records, &names);
        left_out = names
            .iter()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        names.retain(|n| keep.contains(n));
    }
    if only.is_empty() {
        // A person is found by name or title: those columns come right after the id (a stable
        // sort keeps the others in name order).
        names.sort_by_key(|n| n != "name" && n != "title");
    }
    let extra = !left_out.is_empty();
    let any_deleted = records.iter().any(|r| r["deleted"] == true);
    let mut header: Vec<String> = vec!["ID".into()];
    header.extend(names.iter().map(|n| n.to_uppercase()));
    if extra {
        header.push("OTHER FIELDS".into());
    }
    if any_deleted {
        header.push("STATE".into());
    }
    let mut rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let f = r["fields"].as_object();
            let mut row = vec![r["id"].as_str().unwrap_or("").to_string()];
            for n in &names {
                row.push(
                    f.and_then(|f| f.get(n))
                        .map_or_else(String::new, |v| cut(&value(v), CELL)),
                );
            }
            if extra {
                let others = f.map_or(0, |f| f.keys().filter(|k| !names.contains(k)).count());
                row.push(if others == 0 {
                    String::new()
                } else {
                    format!("{others} more")
                });
            }
            if any_deleted {
                row.push(if r["deleted"] == true { "deleted" } else { "" }.into());
            }
            row
        })
        .collect();
    // The whole table is read in its first column's order (the name or title when it has
    // one), as a person looks a record up, not in id order; rows without one come last.
    if more == 0 && !names.is_empty() {
        rows.sort_by_cached_key(|r| (r[1].is_empty(), r[1].to_lowercase(), r[0].clone()));
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut out = table(&header, &rows);
    let n = records.len() as u64;
    out += &match more {
        0 if n == 1 => "1 record.\n".to_string(),
        0 => format!("{n} records.\n"),
        m => format!(
            "{n} records shown, {m} more: use `fieldsync list {table_name} --json` or `export` for all.\n"
        ),
    };
    if extra {
        const NAMED: usize = 8;
        let mut which = left_out[..left_out.len().min(NAMED)].join(", ");
        if left_out.len() > NAMED {
            which += &format!(" and {} more", left_out.len() - NAMED);
        }
        let example: Vec<&str> = left_out.iter().take(3).map(String::as_str).collect();
        out += &format!(
            "{} not shown ({which}): choose the columns with `fieldsync list {table_name} \
             --fields {}`, or see a whole record with `fieldsync get {table_name} ID`.\n",
            count(left_out.len() as u64, "field", "fields"),
            example.join(",")
        );
    }
    out
}

/// `get`: the record's fields, one per line, names aligned; with `--meta` ([`meta`]) who
/// wrote each field and when, by laptop name (`names` maps instance ids, as for `history`).
pub fn record(
    v: &Value,
    names: &std::collections::HashMap<uuid::Uuid, String>,
    now: DateTime<Utc>,
) -> String {
    let mut out = format!(
        "{} {}{}\n",
        v["table"].as_str().unwrap_or(""),
        v["id"].as_str().unwrap_or(""),
        if v["deleted"] == true {
            " (deleted)"
        } else {
            ""
        }
    );
    let fields = v["fields"].as_object();
    match fields.filter(|f| !f.is_empty()) {
        None => out += "  (no fields)\n",
        Some(f) => {
            let w = f.keys().map(|k| k.chars().count()).max().unwrap_or(0);
            for (k, val) in f {
                let pad = " ".repeat(w - k.chars().count());
                out += &format!("  {k}{pad}  {}\n", value(val));
            }
        }
    }
    if !v["meta"].is_null() {
        out += &meta(&v["meta"], names, now);
    }
    out
}

/// A laptop by name (`names`, as [`history`] gets them), else by its instance id.
fn laptop(names: &std::collections::HashMap<uuid::Uuid, String>, id: &str) -> String {
    uuid::Uuid::parse_str(id)
        .ok()
        .and_then(|u| names.get(&u).cloned())
        .unwrap_or_else(|| format!("laptop {id}"))
}

/// The time of a stamp as `get --meta --json` prints it (`2026-12-04T14:01:45.916Z#0001@ID`).
/// The line above a record `get --at` shows: which revision it is, and when it was made.
pub fn as_of(rev: &str, now: DateTime<Utc>) -> String {
    format!(
        "As it was after the revision of {} (not as it is now):\n",
        when(stamp_time(rev), now)
    )
}

fn stamp_time(stamp: &str) -> Option<DateTime<Utc>> {
    let t = stamp.split('#').next()?;
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `get --meta` for people (the JSON of `get --meta --json` is `m`): per field the laptop
/// that wrote its value and when; the changes the record includes per laptop (its version
/// vector, as local times); its place in this laptop's log; its conflicts. Stamps and vector
/// numbers stay in `--json`.
pub fn meta(
    m: &Value,
    names: &std::collections::HashMap<uuid::Uuid, String>,
    now: DateTime<Utc>,
) -> String {
    let mut out = String::new();
    if let Some(f) = m["fields"].as_object().filter(|f| !f.is_empty()) {
        out += "Written:\n";
        let rows: Vec<Vec<String>> = f
            .iter()
            .map(|(k, s)| {
                let by = laptop(names, s["instance"].as_str().unwrap_or("?"));
                let at = when(s["at"].as_str().and_then(stamp_time), now);
                let what = if s["removed"] == true {
                    "removed by"
                } else {
                    "by"
                };
                vec![format!("  {k}"), format!("{what} {by}, {at}")]
            })
            .collect();
        out += &table(&["", ""], &rows)[1..];
    }
    if let Some(d) = m["deleted"].as_str() {
        let by = d.rsplit('@').next().unwrap_or("?");
        out += &format!(
            "Deleted by {}, {}.\n",
            laptop(names, by),
            when(stamp_time(d), now)
        );
    }
    if let Some(vv) = m["vv"].as_object().filter(|v| !v.is_empty()) {
        out += "Includes the changes made:\n";
        let mut rows: Vec<Vec<String>> = vv
            .iter()
            .map(|(id, ts)| {
                let t = ts.as_u64().map(|ts| {
                    crate::clock::Hlc {
                        ts,
                        node: uuid::Uuid::nil(),
                    }
                    .time()
                });
                vec![
                    format!("  on {}", laptop(names, id)),
                    format!("up to {}", when(t, now)),
                ]
            })
            .collect();
        // By laptop name, not by instance id (which reads as random).
        rows.sort();
        out += &table(&["", ""], &rows)[1..];
    }
    if let Some(seq) = m["seq"].as_u64() {
        out += &format!(
            "Last changed here as change {seq} in this laptop's log (which counts changes from \
             every laptop and table).\n"
        );
    }
    let conflicts: Vec<String> = m["conflicts"]
        .as_array()
        .map(|a| a.iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    if !conflicts.is_empty() {
        out += &format!(
            "{} logged for this record (id {}): see `fieldsync conflicts`.\n",
            count(conflicts.len() as u64, "conflict", "conflicts"),
            conflicts.join(", ")
        );
    }
    out + "The exact stamps: `--json`.\n"
}

/// `history`: each revision, oldest first, as a readable diff: when (local time), what, by
/// which laptop (by name: `names` maps instance ids, this laptop marked), then per field
/// `name: old → new`.
///
/// A record created on two laptops before they met has two "created" revisions: the later
/// says why they are one record: `key`, the import key its id was derived from
/// ([`crate::import::key_behind`]), else the same record id.
pub fn history(
    table_name: &str,
    id: &str,
    entries: &[crate::store::HistoryEntry],
    names: &std::collections::HashMap<uuid::Uuid, String>,
    key: Option<&[(String, String)]>,
    now: DateTime<Utc>,
) -> String {
    use crate::merge::{Cause, RevisionKind};
    let n = entries.len();
    let mut out = format!(
        "{table_name} {id}: {n} revision{}, oldest first\n",
        if n == 1 { "" } else { "s" }
    );
    let mut created = false;
    for e in entries {
        let r = &e.revision;
        let by = names
            .get(&r.at.node)
            .cloned()
            .unwrap_or_else(|| format!("laptop {}", r.at.node));
        let what = match r.kind {
            RevisionKind::Create => "created",
            RevisionKind::Update => "changed",
            RevisionKind::Delete => "deleted",
            RevisionKind::Restore => "restored",
        };
        let why = match r.cause {
            Cause::Edit => "",
            Cause::Resolution => " (a conflict resolution)",
        };
        // One record created on two laptops before they synced has two "created" revisions:
        // the later one is the same record, not a duplicate. "Same key" only when the id is
        // provably an import key's; any two laptops may write one id (`put --id`, a file's
        // id column).
        let too = match (r.kind == RevisionKind::Create && created, key) {
            (false, _) => String::new(),
            (true, Some(k)) => {
                let k: Vec<String> = k
                    .iter()
                    .map(|(f, v)| format!("{f} {}", Value::String(v.clone())))
                    .collect();
                format!(" too (same import key: {})", k.join(", "))
            }
            (true, None) => " too (same record id)".into(),
        };
        created |= r.kind == RevisionKind::Create;
        out += &format!(
            "\n{} — {what} by {by}{too}{why}\n",
            when(Some(r.at.time()), now)
        );
        // Keeping a record alive in a delete-vs-edit conflict re-asserts a field with its own
        // value (so the decision travels): no change to show as "69 → 69".
        let shown: Vec<_> = r
            .changes
            .iter()
            .filter(|c| !(r.cause == Cause::Resolution && c.old.is_some() && c.old == c.new))
            .collect();
        if shown.is_empty() && !r.changes.is_empty() {
            out += "  kept the record as it was (no value changed)\n";
        }
        let w = shown
            .iter()
            .map(|c| c.field.chars().count())
            .max()
            .unwrap_or(0);
        for c in shown {
            let pad = " ".repeat(w - c.field.chars().count());
            let line = match (&c.old, &c.new) {
                (None, Some(new)) if r.kind == RevisionKind::Create => value(new),
                (None, Some(new)) => format!("set to {}", value(new)),
                (Some(old), None) => format!("removed (was {})", value(old)),
                (Some(old), Some(new)) => format!("{} → {}", value(old), value(new)),
                (None, None) => "unchanged".into(),
            };
            out += &format!("  {}{pad}  {line}\n", c.field);
        }
    }
    out
}

/// `tables`: one row per table with its live and deleted record counts.
pub fn tables(rows: &[(String, u64, u64)]) -> String {
    if rows.is_empty() {
        return "No tables yet: `fieldsync put TABLE JSON` or `fieldsync import` creates one.\n"
            .into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(t, live, deleted)| vec![t.clone(), live.to_string(), deleted.to_string()])
        .collect();
    table(&["TABLE", "RECORDS", "DELETED"], &cells)
}

/// `verify`: per table, in sync or which records differ (`checks` as the JSON lines print
/// them: `{"table","in_sync","local_count","remote_count","differing"}`).
pub fn verify(peer: &str, name: Option<&str>, checks: &[Value]) -> String {
    // "laptopB (127.0.0.1:7437)" when an address is a known laptop's; the command names it.
    let (said, cmd) = match name {
        Some(n) if n.contains(char::is_whitespace) => (format!("{n} ({peer})"), format!("\"{n}\"")),
        Some(n) => (format!("{n} ({peer})"), n.to_string()),
        None => (peer.to_string(), peer.to_string()),
    };
    const SHOWN: usize = 10;
    let mut out = String::new();
    // A difference that held deletes do not explain, which a sync may move.
    let mut unexplained = false;
    for c in checks {
        let t = own_table_words(c["table"].as_str().unwrap_or("?"));
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        if c["in_sync"] == true {
            // The counts are of every record id, deleted records included (a delete syncs
            // like any change): said, so they are not read as `list`'s live count.
            out += &format!(
                "{t}: in sync ({}, deleted ones included).\n",
                count(n("local_count"), "record", "records")
            );
            continue;
        }
        let ids: Vec<&str> = c["differing"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out += &format!(
            "{t}: differs: {} here, {} on {} (deleted records included); {}",
            n("local_count"),
            n("remote_count"),
            name.unwrap_or(peer),
            count(ids.len() as u64, "record differs", "records differ")
        );
        if !ids.is_empty() {
            let more = ids.len().saturating_sub(SHOWN);
            out += &format!(": {}", ids[..ids.len().min(SHOWN)].join(", "));
            if more > 0 {
                out += &format!(" and {more} more (`--json` lists all)");
            }
        }
        out += ".\n";
        let held = c["held_here"].as_array().map_or(&[][..], Vec::as_slice);
        let explained: u64 = held
            .iter()
            .map(|h| h["records"].as_u64().unwrap_or(0))
            .sum();
        for h in held {
            out += &format!(
                "  This laptop holds {} of {t} from {} (hold {}, mass-delete brake): a sync does \
                 not move them; approve or reject them here (`fieldsync held approve {}`), or \
                 approve on the coordinator's laptop, which decides for every laptop.\n",
                count(h["records"].as_u64().unwrap_or(0), "delete", "deletes"),
                h["from"].as_str().unwrap_or("?"),
                h["hold"],
                h["hold"],
            );
        }
        let there = c["held_there"].as_array().map_or(&[][..], Vec::as_slice);
        let peer_name = name.unwrap_or(peer);
        for h in there {
            out += &format!(
                "  {peer_name} holds {} of {t} from {} (mass-delete brake): a sync does not move \
                 them; approve them there, or approve on the coordinator's laptop, which decides \
                 for every laptop.\n",
                count(h["deletes"].as_u64().unwrap_or(0), "delete", "deletes"),
                h["from"].as_str().unwrap_or("?"),
            );
        }
        if explained < ids.len() as u64 && there.is_empty() {
            unexplained = true;
        }
    }
    if checks.is_empty() {
        out += "No tables to compare.\n";
    } else if checks.iter().all(|c| c["in_sync"] == true) {
        out += &format!("In sync with {said}.\n");
    } else if !unexplained {
        out += &format!(
            "Not in sync with {said}: the difference is deletes held by the mass-delete brake, \
             which a sync does not move (see above).\n"
        );
    } else {
        out +=
            &format!("Not in sync with {said}: `fieldsync sync {cmd}` brings both up to date.\n");
    }
    out
}

/// A table as a person reads it: fieldsync's own replicated tables in words ("import keys
/// (fieldsync's own)"), not their `fs_` names; any other table as named.
fn own_table_words(table: &str) -> String {
    match table {
        crate::model::REVOCATIONS_TABLE => "laptop revocations (fieldsync's own)".into(),
        crate::model::IMPORT_KEYS_TABLE => "import keys (fieldsync's own)".into(),
        t => t.to_string(),
    }
}

/// `mesh enroll`: who was enrolled, where the credential is, and the step on that laptop.
pub fn enrolled(name: &str, id: &str, file: &str) -> String {
    format!(
        "Enrolled {name} (instance {id}): its credential is {file}. Carry it to that laptop \
         and run `fieldsync init --mesh {file}` there; keep it private (it lets a laptop join).\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `verify` names fieldsync's own tables in words, not `fs_import_keys` (a newcomer read
    /// the internal name among their own tables), and a person's tables as they are named.
    #[test]
    fn verify_names_fieldsyncs_own_tables_in_words() {
        let checks = [
            json!({"table": "person", "in_sync": true, "local_count": 20, "remote_count": 20,
                   "differing": []}),
            json!({"table": crate::model::IMPORT_KEYS_TABLE, "system": true, "in_sync": true,
                   "local_count": 1, "remote_count": 1, "differing": []}),
            json!({"table": crate::model::REVOCATIONS_TABLE, "system": true, "in_sync": false,
                   "local_count": 1, "remote_count": 0, "differing": [uuid::Uuid::nil()]}),
        ];
        let text = verify("127.0.0.1:7437", Some("b"), &checks);
        assert!(
            text.contains("person: in sync (20 records, deleted ones included).")
                && text.contains("import keys (fieldsync's own): in sync (1 record")
                && text.contains("laptop revocations (fieldsync's own): differs: 1 here, 0 on b"),
            "{text}"
        );
        assert!(!text.contains("fs_"), "{text}");
    }

    /// An agent of a laptop outside any deployment says sync is off, without the "sync on ?"
    /// a newcomer took for a fault.
    #[test]
    fn an_agent_with_sync_off_says_so_without_a_question_mark() {
        let v = serde_json::json!({"agent": {
            "running": true, "pid": 7, "listen": null,
            "transport": "none: sync is off until this laptop joins a deployment",
        }});
        let text = status(&v, Utc::now());
        assert!(
            text.contains(
                "Agent: running (pid 7); sync is off until this laptop joins a deployment."
            ),
            "{text}"
        );
        assert!(!text.contains('?'), "{text}");
    }

    /// An agent started before `mesh create` (or `init --mesh`) keeps sync off until it starts
    /// again: status says so and how, instead of "until this laptop joins" (a newcomer had
    /// joined and was told to join).
    #[test]
    fn an_agent_started_before_joining_says_to_restart_it() {
        let v = serde_json::json!({
        "data_dir": "/home/ana/fieldsync",
        "credential": {"ok": true, "check": "credential", "detail": "member of Flood"},
        "agent": {
            "running": true, "pid": 7, "listen": null,
            "transport": "none: sync is off until this laptop joins a deployment",
        }});
        let text = status(&v, Utc::now());
        assert!(
            !text.contains("Deployment:"),
            "no deployment name given: {text}"
        );
        let mut named = v.clone();
        named["deployment"] = serde_json::json!("Flood");
        assert!(status(&named, Utc::now()).contains("\nDeployment: Flood\n"));
        assert!(
            text.contains(
                "Agent: running (pid 7); sync is off: the agent started before this laptop \
                 joined a deployment. Stop it (Ctrl-C where it runs, or `kill 7`) and start it \
                 again with `fieldsync --data-dir /home/ana/fieldsync run` to sync."
            ),
            "{text}"
        );
        assert!(!text.contains("until this laptop joins"), "{text}");
    }

    /// Seven fields, six columns: the long free-text field is the one left out, not `status`
    /// (which the alphabetical cut dropped in a newcomer trial).
    #[test]
    fn a_list_leaves_out_the_longest_field_not_status() {
        let rec = |i: u32| {
            json!({"id": format!("id{i}"), "fields": {
                "age": 30 + i, "case_number": format!("A-{i}"), "name": format!("Person {i}"),
                "notes": "seen near the river on the morning of the flood, with two children",
                "phone": "+2348000001", "shelter": "North school", "status": "missing"}})
        };
        let out = list("person", &[rec(1), rec(2)], 0, &[]);
        let header = out.lines().next().unwrap();
        assert!(
            header.contains("STATUS") && header.contains("NAME"),
            "{out}"
        );
        assert!(!header.contains("NOTES"), "{out}");
        assert!(out.contains("1 field not shown (notes)"), "{out}");
    }

    /// `status` with two sessions in flight, one we started and one a peer started (a live
    /// agent cannot be caught at a fixed percentage, so the status is given here).
    #[test]
    fn status_says_when_the_credential_is_missing_or_wrong_and_nothing_when_it_is_fine() {
        let missing = json!({"ok": false, "check": "credential",
            "detail": "no mesh.fscred in /d: this laptop has not joined a deployment, and sync is refused without one",
            "fix": "ask the coordinator for a credential file (`fieldsync mesh enroll`) and run `fieldsync init --mesh FILE`"});
        assert!(credential_line(&missing, 0, "a", "b")
            .starts_with("Deployment: none: this laptop holds no credential"));
        let line = credential_line(&missing, 2, "laptopA", "831411aa");
        assert!(
            line.starts_with("Credential: none, although this laptop has synced before")
                && line.contains(
                    "`fieldsync mesh enroll --name laptopA --instance 831411aa --out \
                     laptopA.fsmesh`, then here `fieldsync init --mesh laptopA.fsmesh`"
                ),
            "{line}"
        );
        let expired = json!({"ok": false, "detail": "the certificate expired on 2026-01-01",
            "fix": "ask the coordinator for a new credential"});
        assert_eq!(
            credential_line(&expired, 2, "a", "b"),
            "Credential problem: the certificate expired on 2026-01-01. Fix: ask the coordinator for a new credential.\n"
        );
        assert_eq!(credential_line(&json!({"ok": true}), 2, "a", "b"), "");
        // An agent running --insecure-plaintext needs none: status says nothing about it.
        let status_of = |transport: &str| {
            status(
                &json!({"name": "laptopA", "instance": "831411aa", "data_dir": "/d",
                        "credential": missing, "peers": {"known": 1, "online": 1},
                        "agent": {"running": true, "pid": 42, "listen": "127.0.0.1:7437",
                                  "transport": transport, "sessions": []}}),
                Utc::now(),
            )
        };
        assert!(!status_of("plaintext (insecure)").contains("Credential"));
        let dropped = status(
            &json!({"name": "laptopA", "instance": "831411aa", "data_dir": "/d",
                    "credential": {"ok": true}, "peers": {"known": 1, "online": 1, "quarantined": 3},
                    "agent": {"running": false}}),
            Utc::now(),
        );
        assert!(
            dropped.contains("Dropped from peers: 3 records that failed the checks (quarantined)"),
            "{dropped}"
        );
        assert!(status_of("mutual TLS").contains("Credential: none, although"));
    }

    #[test]
    fn status_shows_sessions_of_both_roles() {
        let now = Utc::now();
        let dir = |records: u64, expected: u64, bytes: u64, eta: Option<f64>| {
            json!({"records": records, "records_expected": expected, "bytes": bytes,
                   "done": false, "eta_secs": eta, "rate": records as f64 / 10.0})
        };
        let v = json!({
            "name": "laptopB", "owner": "Team South", "data_dir": "/data/b",
            "tables": {"person": {"live": 9000, "deleted": 2}},
            "unresolved_conflicts": 1,
            "peers": {"known": 2, "online": 2, "last_sync": null, "failing": []},
            "agent": {"running": true, "pid": 42, "listen": "127.0.0.1:7437",
                      "transport": "mutual TLS", "api": "http://127.0.0.1:7438",
                      "sessions": [
                {"role": "initiator", "peer_name": "laptopA", "addr": "127.0.0.1:7441",
                 "fraction": 0.45, "received": dir(9000, 20000, 3_250_000, Some(11.2)),
                 "sent": dir(0, 0, 1200, None)},
                {"role": "responder", "peer_name": "laptopC", "addr": "127.0.0.1:50322",
                 "fraction": 0.1, "received": dir(0, 0, 800, None),
                 "sent": dir(500, 5000, 150_000, Some(95.0))}
            ]}
        });
        insta::assert_snapshot!(status(&v, now));
    }

    /// Held deletes and a shared identity are in the people's `status`, one line each with
    /// what to do; the refusal they cause is not repeated as a failing peer.
    #[test]
    fn status_names_held_deletes_and_a_shared_identity_with_the_fix() {
        let now = Utc::now();
        let me = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        let b = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
        let v = json!({
            "instance": me, "name": "laptopA", "owner": "", "data_dir": "/data/a",
            "tables": {"person": {"live": 100, "deleted": 0}}, "unresolved_conflicts": 0,
            "held": [{"id": 1, "message": "laptopB wants to delete 80 of 100 person records"}],
            "identity_problems": [{"instance": b, "name": "laptopB", "problem": "…", "fix": "…"}],
            "peers": {"known": 1, "online": 0, "last_sync": null, "failing": [
                {"name": "laptopB", "error": "peer refused: instance … (code 1011)"}]},
            "agent": {"running": false}
        });
        let text = status(&v, now);
        assert!(
            text.contains(
                "1 delete batch held by the mass-delete brake (`fieldsync held list` to approve \
                 or reject):\n  laptopB wants to delete 80 of 100 person records\n"
            ),
            "{text}"
        );
        let line = format!(
            "  laptopB (instance {b}) is used by two data directories at once (a copied data \
             folder or credential): both are refused. Fix: on the coordinator run `fieldsync \
             mesh enroll --name laptopB-2 --out laptopB-2.fsmesh`;"
        );
        assert!(text.contains(&line), "{text}");
        assert!(!text.contains("is failing"), "{text}");
    }

    /// A session with no record under way yet (a verify, a hello) gives no percentage.
    #[test]
    fn a_session_moving_no_records_yet_says_so_without_a_percentage() {
        let quiet = json!({"records": 0, "records_expected": 0, "bytes": 254, "done": false});
        let s = json!({"peer_name": "laptopA", "role": "initiator", "fraction": 0.0,
                       "received": quiet, "sent": quiet});
        assert_eq!(
            session_progress(&s),
            "connected to laptopA (started here): comparing, no records to move so far (508 B)"
        );
    }

    /// The sync line says what the brake holds from that peer; nothing when nothing is held.
    #[test]
    fn the_sync_line_names_held_deletes() {
        let b = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
        let dir = json!({"records": 81, "conflicts": 0, "ms": 400});
        let hold = json!({"id": 1, "peer": b, "peer_name": "laptopB", "table": "person",
            "deletes": 80, "live": 100, "at": "2026-12-03T09:15:00Z",
            "message": "laptopB wants to delete 80 of 100 person records"});
        let v = json!({"peer": b, "peer_name": "laptopB", "received": dir, "sent": dir,
                       "held": [hold]});
        assert_eq!(
            sync(&v),
            "synced with laptopB: received 81, sent 81, 0 conflicts, 0.8 s; held by the \
             mass-delete brake: laptopB wants to delete 80 of 100 person records (see \
             `fieldsync held list`)\n"
        );
        let none = json!({"peer": b, "peer_name": "laptopB", "received": dir, "sent": dir,
                          "held": []});
        assert!(sync(&none).ends_with("0.8 s\n"));
    }

    #[test]
    fn deciding_a_hold_is_a_sentence() {
        use crate::app::held::HoldDecision;
        let d = |decision: &str, conflicts, everywhere| HoldDecision {
            id: 3,
            decision: decision.into(),
            applied: 80,
            restored: 80,
            conflicts,
            everywhere,
        };
        assert_eq!(
            hold_decided(&d("approved", 0, false)),
            "Approved hold 3: 80 held changes applied.\nApproved here only: other laptops that \
             hold these deletes decide on their own; the coordinator's approval applies \
             everywhere.\n"
        );
        assert_eq!(
            hold_decided(&d("approved", 0, true)),
            "Approved hold 3: 80 held changes applied.\nThe coordinator's approval travels: \
             every laptop holding these deletes applies them when it syncs.\n"
        );
        assert!(hold_decided(&d("rejected", 1, false)).starts_with(
            "Rejected hold 3: 80 records kept alive with a new revision that syncs to every \
             laptop (1 conflict logged: see `fieldsync conflicts`).\n"
        ));
    }

    #[test]
    fn peers_marks_revoked_laptops_and_lists_refusals_by_name() {
        let now = Utc::now();
        let at = (now - chrono::Duration::minutes(3)).to_rfc3339();
        let c = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
        let rows = vec![
            json!({"instance": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "name": "laptopA",
                   "owner": "Team North", "online": true, "last_update": null,
                   "sync_count": 3, "revoked": null, "problem": null}),
            json!({"instance": c, "name": "laptopC", "owner": "", "online": false,
                   "last_update": null, "sync_count": 1,
                   "revoked": {"at": "2026-12-03T09:15:00Z", "reason": "stolen"},
                   "problem": "revoked by the coordinator (stolen): it can no longer sync"}),
            json!({"instance": "f0e1d2c3-b4a5-4968-8776-655443322110", "name": "",
                   "owner": "", "online": false, "last_update": null, "sync_count": 0,
                   "revoked": null, "problem": "the last sync failed: connection refused"}),
        ];
        let refused = json!([{"at": at, "addr": "192.0.2.9:50001",
            "reason": format!("a revoked laptop (instance {c} has been revoked by the deployment)")}]);
        insta::with_settings!({filters => vec![
            // As long as the time it masks, so columns stay aligned.
            (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", "YYYY-MM-DD hh:mm"),
        ]}, {
            insta::assert_snapshot!(peers(&rows, &refused, true, now));
            let without = peers(&rows, &refused, false, now);
            let a = without.lines().find(|l| l.starts_with("laptopA")).unwrap_or("");
            assert!(
                a.split("  ").map(str::trim).any(|w| w == "unknown"),
                "{without}"
            );
            assert!(without.contains("known only while the agent runs"), "{without}");
        });
    }
}
