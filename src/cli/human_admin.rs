//! Output for people of the coordinator's commands: `mesh create`, `mesh show`, `import`,
//! `backup` and `doctor`. Each takes the same JSON value the command prints for scripts
//! (`--json`, or stdout not a terminal), so the two never say different things.

use super::human::{bytes, count};
use serde_json::Value;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `mesh create`: the deployment made, where its CA is, and the next step.
pub fn mesh_created(v: &Value, laptop: &str) -> String {
    let mut t = format!(
        "Created the deployment \"{}\" (mesh id {}).\n",
        s(&v["deployment"]),
        s(&v["mesh_id"])
    );
    t += &format!(
        "Its CA, which enrolls and revokes laptops, is in {}: keep it private and back it up \
         (`fieldsync backup FILE --passphrase-file PASS` includes it).\n",
        s(&v["ca_file"])
    );
    if let Some(j) = v["join_file"].as_str() {
        t += &format!("Join file (the CA certificate, no private key): {j}\n");
    }
    t += &format!(
        "This laptop ({laptop}) is the deployment's first member. Next, for each laptop: \
         `fieldsync mesh enroll --name NAME --out NAME.fsmesh`, then on that laptop \
         `fieldsync init --mesh NAME.fsmesh`.\n"
    );
    if let Some(next) = v["next"].as_str() {
        let mut c = next.chars();
        let first = c.next().map(|f| f.to_uppercase().collect::<String>());
        t += &format!("{}{}.\n", first.unwrap_or_default(), c.as_str());
    }
    t
}

/// `mesh show`: the deployment this laptop belongs to, its certificate, revoked laptops.
/// One revoked laptop for people: `laptopC (instance …), revoked 2026-12-04 17:09: lost`, the
/// time local; `id_key`/`at_key` name the fields (`mesh show` and `mesh revoke` differ).
fn revoked_line(r: &Value, id_key: &str, at_key: &str) -> String {
    let id = s(&r[id_key]);
    let who = match r["name"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => format!("{n} (instance {id})"),
        None => format!("instance {id}"),
    };
    let at = r[at_key]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(
            || s(&r[at_key]).to_string(),
            |t| {
                t.with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M")
                    .to_string()
            },
        );
    let why = r["reason"]
        .as_str()
        .filter(|w| !w.is_empty())
        .unwrap_or("no reason given");
    format!("{who}, revoked {at}: {why}")
}

/// `mesh revoke`: who was shut out and what happens next; `already`: it was revoked before
/// (the retry changed nothing).
pub fn revoked(v: &Value, already: bool) -> String {
    let line = revoked_line(v, "revoked", "at");
    if already {
        return format!("Already revoked, nothing changed: {line}.\n");
    }
    format!(
        "Revoked {line}. Every laptop refuses it once the revocation reaches it: it travels \
         with this laptop's next syncs (`fieldsync sync NAME`, or the agent's own).\n"
    )
}

pub fn mesh_show(v: &Value) -> String {
    if v["joined"] != Value::Bool(true) {
        return format!(
            "This laptop (instance {}) has not joined a deployment: join with `fieldsync init \
             --mesh FILE` (a file from the coordinator's `fieldsync mesh enroll`).\n",
            s(&v["instance"])
        );
    }
    let cert = &v["certificate"];
    let mut t = format!(
        "Deployment: {} (mesh id {})\n",
        s(&v["deployment"]),
        s(&v["mesh_id"])
    );
    t += &match v["name"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => format!("This laptop: {n} (instance {})\n", s(&v["instance"])),
        None => format!("This laptop: instance {}\n", s(&v["instance"])),
    };
    if let Some(until) = cert["not_after"].as_str() {
        t += &format!("Certificate: valid until {until}\n");
    }
    t += if v["holds_ca"] == Value::Bool(true) {
        "Coordinator: yes, this laptop holds the deployment CA (it enrolls and revokes)\n"
    } else {
        "Coordinator: no (enrolling and revoking happen on the coordinator's laptop)\n"
    };
    let revoked = v["revoked"].as_array().cloned().unwrap_or_default();
    if revoked.is_empty() {
        t += "Revoked laptops: none\n";
    } else {
        t += "Revoked laptops:\n";
        for r in &revoked {
            t += &format!("  {}\n", revoked_line(r, "instance", "revoked_at"));
        }
    }
    if v["bundles"] == Value::Bool(false) {
        t += "This credential predates USB bundles: ask the coordinator to enroll this laptop \
              again to use `fieldsync bundle`.\n";
    }
    t
}

/// `import`: how many rows, and what each did to the table.
pub fn imported(v: &Value) -> String {
    let rows = u(&v["records"]);
    let mut parts = vec![
        format!("{} new", u(&v["inserted"])),
        format!("{} changed", u(&v["updated"])),
        format!("{} already as in the file", u(&v["unchanged"])),
    ];
    let edited = u(&v["kept_rows"]);
    if edited > 0 {
        // Rows, where the list below counts fields (a row may keep several, and a changed
        // row may keep one too): two numbers side by side read as a contradiction (trial 10).
        // "Fields edited in the field" read as a pun on two meanings of field (a newcomer).
        parts.push(format!(
            "{} to keep corrections made since (below)",
            count(edited, "row left as it is", "rows left as they are")
        ));
    }
    let kept = u(&v["deleted_kept"]);
    if kept > 0 {
        parts.push(format!(
            "{kept} left deleted (deleted earlier, here or on another laptop; an import never brings a record back)"
        ));
    }
    let empty = rows == 0;
    let (rows, table, what) = (count(rows, "row", "rows"), s(&v["table"]), parts.join(", "));
    let mut t = if v["dry_run"] == true {
        format!("Dry run, nothing written: importing {rows} into {table} would make {what}.\n")
    } else {
        format!("Imported {rows} into {table}: {what}.\n")
    };
    // No value is "(empty)", not JSON's null, for a person.
    let said = |v: &serde_json::Value| {
        if v.is_null() {
            "(empty)".to_string()
        } else {
            v.to_string()
        }
    };
    let who = |c: &serde_json::Value| {
        c["key"]
            .as_str()
            .map_or_else(|| s(&c["record"]).to_string(), str::to_string)
    };
    if empty {
        t += "The file holds no rows (only a header?): nothing to import.\n";
    }
    // Edits the file would have undone: said first, since a person may want them undone.
    let kept = u(&v["kept_edited"]);
    if let Some(list) = v["kept"].as_array().filter(|c| !c.is_empty()) {
        t += &format!(
            "Kept {} edited since the file's value (the file has the value before the edit; \
             `--overwrite` writes the file's){}:\n",
            count(kept, "field", "fields"),
            if (list.len() as u64) < kept {
                format!(", the first {}", list.len())
            } else {
                String::new()
            }
        );
        for c in list {
            // The same digits as text and as a number read as "kept X (the file has X)": say
            // which is which, and how to keep such a column as text.
            let as_text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
            let types = if c["kept"] == c["file"] || as_text(&c["kept"]) != as_text(&c["file"]) {
                String::new()
            } else if c["file"].is_string() {
                // The record holds the number an earlier import made of it: --text is no help
                // here (a newcomer had passed it and was told to pass it).
                " as text, the record as a number".to_string()
            } else {
                format!(
                    " as a number; `--text {}` reads that column as text",
                    s(&c["field"])
                )
            };
            t += &format!(
                "  {}: {} kept {} (the file has {}{types})\n",
                who(c),
                s(&c["field"]),
                said(&c["kept"]),
                said(&c["file"])
            );
        }
    }
    // A key made deployment-wide by this import: said, since it binds every laptop from now
    // on (a newcomer's one `--key name` made person names unique everywhere, unannounced).
    if let Some(key) = v["new_key"].as_array().filter(|k| !k.is_empty()) {
        let fields: Vec<&str> = key.iter().filter_map(Value::as_str).collect();
        let (what, them) = if fields.len() == 1 {
            (fields[0].to_string(), "it")
        } else {
            (fields.join(" + "), "them")
        };
        let made = if v["dry_run"] == true {
            "Importing would make"
        } else {
            "This import made"
        };
        t += &format!(
            "{made} {what} the import key of {table} on every laptop of the deployment: another \
             record of {table} with the same {what} is refused there, or logged as a name clash \
             when laptops meet; import this list again by {them} (`--key {k}`); \
             `fieldsync import-keys drop {table} {k}` makes it no key again (the records \
             stay).\n",
            k = fields.join(",")
        );
        let shared = u(&v["key_clashes"]);
        if shared > 0 {
            t += &format!(
                "{} of {what} {} already shared by several records of {table}: each {} a name \
                 clash on every laptop (`fieldsync conflicts`). If they are the same person \
                 twice, settle them there; if {what} may repeat (names), the key is wrong: drop \
                 it as above.\n",
                count(shared, "value", "values"),
                if shared == 1 { "was" } else { "were" },
                if v["dry_run"] == true {
                    "would be"
                } else {
                    "is now"
                },
            );
        }
    }
    // Columns the type rules read half as numbers, half as text: said, since a postcode or a
    // decimal-comma column split that way is rarely meant (a newcomer's European CSV).
    if let Some(mixed) = v["mixed_types"].as_array().filter(|m| !m.is_empty()) {
        let cols: Vec<String> = mixed
            .iter()
            .map(|m| {
                let commas = match u(&m["decimal_commas"]) {
                    0 => String::new(),
                    n => format!(", {n} of them with a decimal comma"),
                };
                format!(
                    "{} ({} as numbers, {} as text{commas})",
                    s(&m["field"]),
                    u(&m["numbers"]),
                    u(&m["texts"])
                )
            })
            .collect();
        t += &format!(
            "Read as numbers in some rows and as text in others: {}. ",
            cols.join(", ")
        );
        // A decimal comma is a number to its writer: say how to have it read as one, rather
        // than only offering --text (a newcomer's weights).
        if mixed.iter().any(|m| u(&m["decimal_commas"]) > 0) {
            t += "Numbers are read with a decimal point: write 70,5 as 70.5 (or save the file \
                  with a point as decimal separator) to have them as numbers. ";
        }
        // The --text example is a column that is not decimal commas (those want a point).
        match mixed.iter().find(|m| u(&m["decimal_commas"]) == 0) {
            Some(m) => {
                t += &format!(
                    "A column meant as text (postcodes, phone numbers, codes) is read whole as \
                     text, as written, with `--text {}`.\n",
                    s(&m["field"])
                )
            }
            None => t = t.trim_end().to_string() + "\n",
        }
    }
    // What a re-import overwrote, so a person notices a settled value put back to the list's.
    if let Some(changes) = v["changes"].as_array().filter(|c| !c.is_empty()) {
        let shown = changes.len();
        // The summary holds at most CHANGES_SHOWN: a full list may have been cut there.
        t += &if shown >= crate::import::CHANGES_SHOWN {
            format!("Changed fields (the first {shown}; `history` shows every record's):\n")
        } else {
            "Changed fields:\n".to_string()
        };
        for c in changes {
            t += &format!(
                "  {}: {} {} → {}\n",
                who(c),
                s(&c["field"]),
                said(&c["old"]),
                said(&c["new"])
            );
        }
    }
    t
}

/// `apply`: how many operations, and how many wrote something (`v` is `apply --json`'s
/// `{"ops","written","unchanged"}`).
pub fn applied(v: &Value) -> String {
    let ops = u(&v["ops"]);
    let unchanged = u(&v["unchanged"]);
    let mut text = format!(
        "Applied {} all at once: {} written",
        count(ops, "operation", "operations"),
        u(&v["written"])
    );
    if unchanged > 0 {
        text += &format!(", {unchanged} changed nothing (the record already had those values)");
    }
    text + ".\n"
}

/// `backup`: the record count once, the digest to check a restore against, and what else the
/// file holds in words (the JSON's `entries` counts deleted records and the other kinds).
/// `own`: fieldsync's own live records among `count` and their words
/// (`records::own_records`), said apart from the records people wrote.
pub fn backed_up(v: &Value, own: (u64, String)) -> String {
    let live = u(&v["count"]);
    let e = &v["entries"];
    let deleted = u(&e["records"]).saturating_sub(live);
    let mut t = format!(
        "Backed up {}{} of {} to {} ({}{}).\n",
        count(live.saturating_sub(own.0), "record", "records"),
        own.1,
        if s(&v["name"]).is_empty() {
            s(&v["instance"])
        } else {
            s(&v["name"])
        },
        s(&v["backup"]),
        bytes(u(&v["bytes"])),
        if v["encrypted"] == Value::Bool(true) {
            ", encrypted"
        } else {
            ""
        }
    );
    let mut also = vec![
        // `entries.history` counts earlier revisions only; `history` shows each record's
        // current one too, so the sum is what a person counting `history` lines expects.
        count(
            u(&e["records"]) + u(&e["history"]),
            "revision in the records' histories (the current ones included)",
            "revisions in the records' histories (the current ones included)",
        ),
        count(u(&e["conflicts"]), "conflict", "conflicts"),
        count(u(&e["peers"]), "peer", "peers"),
    ];
    if deleted > 0 {
        also.insert(
            0,
            count(
                deleted,
                "deleted record (kept so the delete syncs)",
                "deleted records (kept so the deletes sync)",
            ),
        );
    }
    t += &format!("It also holds {}.\n", also.join(", "));
    let keys: Vec<&str> = v["keys"]
        .as_array()
        .map(|k| k.iter().map(s).collect())
        .unwrap_or_default();
    if !keys.is_empty() {
        t += &format!(
            "Keys and settings included, encrypted: {}.\n",
            keys.join(", ")
        );
    }
    t += &format!(
        "Digest {}: `fieldsync digest` on a laptop restored from it prints the same.\n",
        s(&v["sha256"])
    );
    t
}

/// `doctor`: one line per check, `ok` or `FAILED`, with the fix under a failed one.
pub fn doctor(checks: &[crate::doctor::Check]) -> String {
    let mut t = String::new();
    for c in checks {
        t += &format!(
            "{:<6}  {}: {}\n",
            if c.ok { "ok" } else { "FAILED" },
            c.check,
            c.detail
        );
        if let Some(fix) = &c.fix {
            t += &format!("        fix: {fix}\n");
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    t += &if failed == 0 {
        "All checks passed: this laptop is ready to sync.\n".to_string()
    } else {
        format!(
            "{} failed: do the fix shown, then run `fieldsync doctor` again.\n",
            count(failed as u64, "check", "checks")
        )
    };
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A field kept as text whose file value is the same digits as a number says which is
    /// which and how to read the column as text (a newcomer read "postcode kept "75001" (the
    /// file has 75001)" as no difference at all); other kept values are said as before.
    #[test]
    fn a_kept_value_differing_only_in_type_says_so() {
        let v = json!({"table": "person", "records": 2, "inserted": 0, "updated": 0,
        "unchanged": 0, "deleted_kept": 0, "kept_rows": 2, "kept_edited": 2, "changes": [],
        "new_key": null,
        "kept": [
            {"record": "r1", "key": "C-1", "field": "postcode", "kept": "75001", "file": 75001},
            {"record": "r3", "key": "C-3", "field": "postcode", "kept": 75002, "file": "75002"},
            {"record": "r2", "key": "C-2", "field": "status", "kept": "found", "file": "missing"},
        ]});
        let said = imported(&v);
        assert!(
            said.contains(
                "  C-1: postcode kept \"75001\" (the file has 75001 as a number; `--text \
                 postcode` reads that column as text)\n"
            ) && said.contains("  C-2: status kept \"found\" (the file has \"missing\")\n")
                && said.contains(
                    "  C-3: postcode kept 75002 (the file has \"75002\" as text, the record as a \
                     number)\n"
                )
                && said.contains("2 rows left as they are to keep corrections made since"),
            "{said}"
        );
        assert!(!said.contains("import key"), "{said}");
        assert!(!said.contains("Read as numbers"), "{said}");
    }

    /// Columns read half as numbers and half as text are named, with counts and `--text`
    /// (never for a column of decimal commas, which want a point instead).
    #[test]
    fn columns_of_mixed_types_are_named() {
        let commas = json!({"table": "shelter", "records": 3, "mixed_types": [
            {"field": "weight", "numbers": 2, "texts": 1, "decimal_commas": 1}]});
        let said = imported(&commas);
        assert!(
            said.contains("weight (2 as numbers, 1 as text, 1 of them with a decimal comma)")
                && said.contains("to have them as numbers.\n")
                && !said.contains("--text"),
            "{said}"
        );
        let v = json!({"table": "shelter", "records": 20, "inserted": 20, "updated": 0,
            "unchanged": 0, "deleted_kept": 0, "kept_rows": 0, "kept_edited": 0, "changes": [],
            "kept": [], "new_key": null,
            "mixed_types": [{"field": "postcode", "numbers": 2, "texts": 18, "decimal_commas": 0},
                            {"field": "weight", "numbers": 15, "texts": 5, "decimal_commas": 5}]});
        let said = imported(&v);
        assert!(
            said.contains(
                "Read as numbers in some rows and as text in others: postcode (2 as numbers, 18 \
                 as text), weight (15 as numbers, 5 as text, 5 of them with a decimal comma). \
                 Numbers are read with a decimal point: write 70,5 as 70.5 (or save the file \
                 with a point as decimal separator) to have them as numbers. A column meant as \
                 text (postcodes, phone numbers, codes) is read whole as text, as written, with \
                 `--text postcode`.\n"
            ),
            "{said}"
        );
    }
}
