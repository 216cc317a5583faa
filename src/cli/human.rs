//! Output for people: what commands print on a terminal (or with the hidden `--human`), instead
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
pub fn peers(rows: &[Value], refused: &Value, now: DateTime<Utc>) -> String {
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
                    let state = if p["online"] == true {
                        "online"
                    } else {
                        "offline"
                    };
                    let problem = p["last_error"]
                        .as_str()
                        .map_or_else(String::new, |e| format!("failing: {e}"));
                    (state, problem)
                };
                vec![
                    row_name(p),
                    p["owner"].as_str().unwrap_or("").to_string(),
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

/// `status`: who this laptop is, its tables, its peers and its agent, in sentences.
pub fn status(v: &Value, now: DateTime<Utc>) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let mut out = format!("This laptop: {}", s("name"));
    if !s("owner").is_empty() {
        out += &format!(", owner {}", s("owner"));
    }
    out += &format!("\nData: {}\n", s("data_dir"));
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
    let p = &v["peers"];
    let last = p["last_sync"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    out += &format!(
        "Peers: {} known, {} online; last sync {}.\n",
        p["known"],
        p["online"],
        when(last, now)
    );
    for f in p["failing"].as_array().into_iter().flatten() {
        out += &format!(
            "  {} is failing: {}\n",
            f["name"].as_str().unwrap_or(""),
            f["error"].as_str().unwrap_or("")
        );
    }
    let a = &v["agent"];
    if a["running"] == true {
        out += &format!(
            "Agent: running (pid {}), sync on {}, {}",
            a["pid"],
            a["listen"].as_str().unwrap_or("?"),
            a["transport"].as_str().unwrap_or("")
        );
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

/// One in-flight session as `syncing with laptopA: 45% — received 9000 of about 20000 records
/// (3.1 MB), sent 0`.
pub fn session_progress(s: &Value) -> String {
    let name = s["peer_name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or(s["addr"].as_str())
        .unwrap_or("?");
    let pct = (s["fraction"].as_f64().unwrap_or(0.0) * 100.0).floor();
    let r = &s["received"];
    format!(
        "syncing with {name}: {pct}% — received {} of about {} records ({}), sent {}",
        r["records"],
        r["records_expected"],
        bytes(r["bytes"].as_u64().unwrap_or(0)),
        s["sent"]["records"]
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
    crate::agent::session_line(
        name,
        n("received", "records"),
        n("sent", "records"),
        n("received", "conflicts") + n("sent", "conflicts"),
        n("received", "ms") + n("sent", "ms"),
    ) + "\n"
}

/// `put`/`patch`/`delete`.
pub fn write(verb: &str, o: &WriteOutcome) -> String {
    if o.written {
        format!("{verb} {} {} (revision {}).\n", o.table, o.id, o.seq)
    } else {
        format!(
            "No change: {} {} already has these values.\n",
            o.table, o.id
        )
    }
}
