//! What `conflicts` and `conflicts resolve` print for people: one block per conflict, its sides
//! as an aligned table by laptop name (this laptop's first), local times, which side the record
//! holds and why, and the command that settles it. Scripts get [`ConflictView`] JSON instead.

use super::human::{table, when};
use crate::app::conflicts::{ConflictView, SideView};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Longest value shown in a cell; longer ones are cut with `…` (`--json` has them whole).
const VALUE_WIDTH: usize = 60;

/// `conflicts`: every entry as a block, or one sentence when there are none.
pub fn list(list: &[ConflictView], all: bool, now: DateTime<Utc>) -> String {
    if list.is_empty() {
        return if all {
            "No conflicts.\n".into()
        } else {
            "No unresolved conflicts.\n".into()
        };
    }
    let open = list.iter().filter(|c| !c.resolved()).count();
    let mut out = match open {
        0 => String::new(),
        1 => "1 unresolved conflict.\n\n".into(),
        n => format!("{n} unresolved conflicts.\n\n"),
    };
    for (i, c) in list.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&block(c, now));
    }
    out
}

/// `conflicts resolve`: what was done, then the entry as it stands now.
pub fn resolved(c: &ConflictView, now: DateTime<Utc>) -> String {
    let how = c
        .entry
        .get("resolved")
        .and_then(|r| r.get("how"))
        .and_then(Value::as_str)
        .unwrap_or("resolved");
    format!(
        "Conflict {} resolved: {how}. The change syncs to the other laptops.\n\n{}",
        c.id(),
        block(c, now)
    )
}

fn text(c: &ConflictView, key: &str) -> String {
    c.entry
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn cut(s: String) -> String {
    if s.chars().count() <= VALUE_WIDTH {
        s
    } else {
        s.chars().take(VALUE_WIDTH - 1).collect::<String>() + "…"
    }
}

fn laptop(s: &SideView) -> String {
    if s.laptop.this_laptop {
        format!("{} (this laptop)", s.laptop.label())
    } else {
        s.laptop.label()
    }
}

fn value(s: &SideView) -> String {
    match (&s.value, s.side.as_str()) {
        (_, "deleted") => "(deleted)".into(),
        (None, _) => "(no value)".into(),
        // The record's fields as `key: value`, strings unquoted (`--json` has the JSON), the
        // fields the unseen edit wrote first and marked: they are what the decision is about.
        (Some(Value::Object(m)), "alive") => {
            let pair = |k: &String, v: &Value| match v {
                Value::String(s) => format!("{k}: {s}"),
                other => format!("{k}: {other}"),
            };
            let edited = m
                .iter()
                .filter(|(k, _)| s.edited.contains(k))
                .map(|(k, v)| format!("{} (edited)", pair(k, v)));
            let rest = m
                .iter()
                .filter(|(k, _)| !s.edited.contains(k))
                .map(|(k, v)| pair(k, v));
            cut(edited.chain(rest).collect::<Vec<_>>().join(", "))
        }
        (Some(v), _) => cut(v.to_string()),
    }
}

/// The record for people: `"Chidi Eze" (6aa4a492)` when it has a name or title, else its id.
fn record(c: &ConflictView) -> String {
    let id = text(c, "record");
    match &c.record_name {
        Some(n) => format!("\"{n}\" ({})", id.get(..8).unwrap_or(&id)),
        None => id,
    }
}

/// One conflict: title line, detection line, sides table, where the record stands, next step.
fn block(c: &ConflictView, now: DateTime<Utc>) -> String {
    let kind = c.kind();
    let title = match kind {
        "field" => format!(
            "field \"{}\" set to different values on two laptops",
            text(c, "field")
        ),
        "delete_edit" => "deleted on one laptop, edited on another".into(),
        "name_clash" => format!(
            "two records share the unique value {} = {}",
            text(c, "field"),
            c.entry
                .get("value")
                .map(Value::to_string)
                .unwrap_or_default()
        ),
        other => other.to_string(),
    };
    let state = if c.resolved() { "resolved" } else { "open" };
    let detected = c
        .entry
        .get("detected_at")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let mut out = format!(
        "Conflict {} ({state}): {} record {}: {title}\n  detected {} by {}\n",
        c.id(),
        text(c, "table"),
        record(c),
        when(detected, now),
        c.detected_by_laptop.label()
    );
    let rows: Vec<Vec<String>> = c
        .sides
        .iter()
        .map(|s| {
            let mut row = vec![s.side.clone()];
            if kind == "name_clash" {
                row.push(s.record.map(|r| r.to_string()).unwrap_or_default());
            }
            row.extend([
                laptop(s),
                value(s),
                when(Some(s.at), now),
                if s.in_record && kind != "name_clash" {
                    "← in the record".into()
                } else {
                    String::new()
                },
            ]);
            row
        })
        .collect();
    let header: &[&str] = if kind == "name_clash" {
        &["SIDE", "RECORD", "WRITTEN BY", "VALUE", "WRITTEN", ""]
    } else {
        &["SIDE", "WRITTEN BY", "VALUE", "WRITTEN", ""]
    };
    for line in table(header, &rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    let holder = c
        .sides
        .iter()
        // By the side flagged in the record, not by its label: on a third laptop both sides
        // of a field conflict are `theirs`.
        .find(|s| s.in_record && Some(s.laptop.id) == c.in_record_by)
        .map(|s| format!(" ({})", s.laptop.label()))
        .unwrap_or_default();
    let state_line = match c.in_record.as_str() {
        "both" => format!("  Both records are kept: {}.\n", c.why),
        side => format!("  In the record: {side}{holder}: {}.\n", c.why),
    };
    out.push_str(&state_line);
    if let Some(r) = c.entry.get("resolved").filter(|r| !r.is_null()) {
        let at = r
            .get("at")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        out.push_str(&format!(
            "  Resolved {}: {}.\n",
            when(at, now),
            r.get("how").and_then(Value::as_str).unwrap_or("")
        ));
    } else {
        let id = c.id();
        let how = match kind {
            "field" if c.sides.iter().any(|s| s.laptop.this_laptop) => {
                "--keep mine | --keep theirs | --keep-value JSON".to_string()
            }
            "field" => "--keep-from NAME | --keep-value JSON".to_string(),
            "delete_edit" => "--keep deleted | --keep alive".to_string(),
            // A laptop that wrote exactly one of the two records renames its own; any other
            // (neither, as on a third laptop, or both) must say which: `--record` takes it.
            _ if c.sides.iter().filter(|s| s.laptop.this_laptop).count() == 1 => {
                "--keep-value NEW_VALUE (renames this laptop's record), or delete one of the two"
                    .to_string()
            }
            _ => "--record ID --keep-value NEW_VALUE (renames record ID, one of the two), or \
                  delete one of the two"
                .to_string(),
        };
        out.push_str(&format!(
            "  Resolve: fieldsync conflicts resolve {id} {how}\n"
        ));
    }
    out
}
