//! `bundle write|read|show`: sync by USB stick. While an agent holds the database these run
//! inside it (argv forwarding through the control endpoint, like `import` and `backup`), so a
//! bundle is read through the agent's store while it keeps syncing.

use super::{print, resolve_transport, CliError, Io};
use crate::app::App;
use crate::bundle::{self, BundleError};
use crate::sync::bundle::{BundleTarget, ReadReport};
use chrono::Local;
use clap::Subcommand;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// `fieldsync bundle ...`.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Write every change a laptop has not received from this one (as far as this laptop
    /// knows) into FILE, encrypted to the deployment and signed by this laptop.
    ///
    /// Example: fieldsync bundle write /media/usb/for-camp-b.fsbundle --for camp-b
    Write {
        /// The bundle file to write (replaced if it exists).
        file: PathBuf,
        /// The laptop it is for: a known peer's name or an instance id (a laptop never met
        /// gets everything).
        #[arg(long = "for", value_name = "PEER_NAME_OR_ID", conflicts_with = "all")]
        target: Option<String>,
        /// Everything this laptop holds, for any laptop of the deployment.
        #[arg(long)]
        all: bool,
    },
    /// Check FILE and apply it: records, conflicts, deletes as a sync would; prints what it did.
    /// Reading the same bundle again, or an older one, changes nothing.
    ///
    /// Example: fieldsync bundle read /media/usb/for-camp-b.fsbundle
    Read {
        /// The bundle file.
        file: PathBuf,
    },
    /// Describe FILE (who wrote it, for whom, when, how many records) and whether this laptop
    /// would accept it, without applying anything.
    Show {
        /// The bundle file.
        file: PathBuf,
    },
}

fn bundle_err(e: BundleError) -> CliError {
    match e {
        BundleError::Io(m) => CliError::Io(m),
        other => CliError::Invalid(other.to_string()),
    }
}

fn credential(app: &App) -> Result<crate::mesh::Credential, CliError> {
    crate::mesh::load_credential(app.store().dir())
        .map_err(|e| CliError::Invalid(e.to_string()))?
        .ok_or_else(|| {
            CliError::Invalid(
                "this laptop has not joined a deployment, and bundles are encrypted to one: run \
                 `fieldsync init --mesh FILE` with a credential from the coordinator first"
                    .into(),
            )
        })
}

fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| {
        CliError::Io(format!(
            "cannot read {}: {e}: check the path and that the stick is mounted",
            path.display()
        ))
    })
}

/// `bundle write|read|show`.
pub fn bundle(app: &App, cmd: BundleCommand, io: &mut Io<'_>) -> Result<(), CliError> {
    match cmd {
        BundleCommand::Write { file, target, all } => {
            write(app, &io.cwd.join(file), target, all, io)
        }
        BundleCommand::Read { file } => read(app, &io.cwd.join(file), io),
        BundleCommand::Show { file } => show(app, &io.cwd.join(file), io),
    }
}

fn write(
    app: &App,
    path: &Path,
    target: Option<String>,
    all: bool,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let instance = match (target, all) {
        (Some(t), _) => Some(app.resolve_instance(&t).map_err(|e| match e {
            // A stick for everyone needs no name at all.
            crate::app::AppError::NotFound {
                code,
                message,
                field,
            } => crate::app::AppError::NotFound {
                code,
                message: format!("{message}; or write a bundle for every laptop with --all"),
                field,
            },
            other => other,
        })?),
        (None, true) => None,
        (None, false) => {
            return Err(CliError::Invalid(
                "say whom the bundle is for: --for PEER_NAME_OR_ID (what it lacks), or --all \
                 (everything, for any laptop)"
                    .into(),
            ))
        }
    };
    if instance == Some(app.store().id()) {
        return Err(CliError::Invalid(
            "--for names this laptop itself: name the laptop that will read the bundle".into(),
        ));
    }
    // A revoked laptop gets nothing more from the deployment, by network or by stick (trial
    // 10: a laptop revoked as lost read everything from a bundle written for it).
    if let Some(id) = instance {
        if let Some(at) = app.revocations().get(&id) {
            return Err(CliError::Invalid(format!(
                "{} was revoked by the deployment on {} ({}): no bundle is written for it; write \
                 one for the laptop that replaces it",
                app.laptop(id)
                    .map(|l| l.label())
                    .unwrap_or_else(|_| id.to_string()),
                at.format("%Y-%m-%d %H:%M UTC"),
                app.revocation_reason(&id)
            )));
        }
    }
    let cred = credential(app)?;
    let bytes = crate::sync::bundle::write(app.store(), &cred, &BundleTarget { instance })
        .map_err(bundle_err)?;
    crate::fsutil::write_private_atomic(path, &bytes).map_err(|e| {
        CliError::Io(format!(
            "cannot write {}: {e}: check the stick is mounted and has room",
            path.display()
        ))
    })?;
    let (h, _) = bundle::read_header(&bytes, &path.display().to_string()).map_err(bundle_err)?;
    let v = json!({
        "file": path, "bytes": bytes.len(), "pages": h.pages, "records": h.records,
        "for": h.target, "for_name": h.target_name, "written_at": h.written_at,
    });
    if io.human {
        let whom = match (&h.target, &h.target_name) {
            (None, _) => "any laptop of the deployment (everything)".to_string(),
            (Some(id), Some(n)) => format!("{n} ({id})"),
            // A laptop enrolled here but never met is named as enrolled (trial 10).
            (Some(id), None) => match app.laptop(*id).map(|l| l.name) {
                Ok(n) if !n.is_empty() => format!("{n} ({id}, never met: everything)"),
                _ => format!("{id} (never met: everything)"),
            },
        };
        return writeln!(
            io.out,
            "Wrote {}: {} in {}, {}, for {whom}.",
            path.display(),
            super::human::count(h.records, "record", "records"),
            super::human::count(h.pages, "page", "pages"),
            super::human::bytes(bytes.len() as u64)
        )
        .map_err(CliError::Output);
    }
    print(io.out, &v)
}

fn read(app: &App, path: &Path, io: &mut Io<'_>) -> Result<(), CliError> {
    let cred = credential(app)?;
    let transport = match app.agent() {
        Some(a) if matches!(a.transport, crate::tls::Transport::Tls { .. }) => a.transport.clone(),
        _ => resolve_transport(app.store(), false)?,
    };
    let bytes = read_file(path)?;
    let file = path.display().to_string();
    // Undocumented: lets the kill -9 test stop a read between pages.
    let delay = std::env::var("FIELDSYNC_BUNDLE_PAGE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let r = crate::sync::bundle::read(app.store(), &transport, &cred, &bytes, &file, |i, n| {
        tracing::info!(page = i, of = n, "bundle page applied");
        if let Some(ms) = delay {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    })
    .map_err(bundle_err)?;
    if io.human {
        return write!(io.out, "{}", human_read(&file, &r)).map_err(CliError::Output);
    }
    let mut v = serde_json::to_value(&r).expect("plain struct");
    v["file"] = json!(file);
    print(io.out, &v)
}

fn human_read(file: &str, r: &ReadReport) -> String {
    let when = r
        .written_at
        .map(|t| t.with_timezone(&Local).format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default();
    // Every page was here already (the bundle was read before, or a sync brought it): "0
    // records" would read as an empty bundle (a newcomer's second read of the same file).
    if r.pages > 0 && r.pages_skipped == r.pages {
        return format!(
            "Read {file} from {} (written {when}): nothing new, {} already here (this \
             bundle was read before, or a sync brought the same changes).\n",
            r.from_name,
            if r.pages == 1 {
                "its 1 page was".to_string()
            } else {
                format!("all {} of its pages were", r.pages)
            }
        );
    }
    let mut s = format!(
        "Read {file} from {} (written {when}): {}, {} changed here, {}.\n",
        r.from_name,
        super::human::count(r.records, "record", "records"),
        r.applied,
        super::human::count(r.conflicts, "conflict", "conflicts"),
    );
    if r.pages_skipped > 0 {
        s += &format!(
            "{} of {} already here (read before).\n",
            r.pages_skipped,
            super::human::count(r.pages, "page was", "pages were")
        );
    }
    if r.held > 0 {
        s += &format!(
            "{} held for a person to decide: `fieldsync held list`.\n",
            super::human::count(r.held, "delete is", "deletes are")
        );
    }
    if r.conflicts > 0 {
        s += "See them with `fieldsync conflicts`.\n";
    }
    if let Some(n) = &r.note {
        s += &format!("Note: {n}.\n");
    }
    s
}

fn show(app: &App, path: &Path, io: &mut Io<'_>) -> Result<(), CliError> {
    let bytes = read_file(path)?;
    let file = path.display().to_string();
    // A laptop that cannot read bundles still sees what one is, and why it cannot.
    let (header, problem) = match credential(app).and_then(|cred| {
        let transport = resolve_transport(app.store(), false)?;
        Ok((cred, transport))
    }) {
        Ok((cred, transport)) => {
            let revoked = |id: &uuid::Uuid| match &transport {
                crate::tls::Transport::Tls { revoked, .. } => revoked.get(id),
                crate::tls::Transport::Plaintext => None,
            };
            let c = bundle::check(&bytes, &file, &cred, &revoked).map_err(bundle_err)?;
            let problem = c.verdict.as_ref().err().map(|e| e.to_string());
            (c.header, problem)
        }
        Err(e) => {
            let (h, _) = bundle::read_header(&bytes, &file).map_err(bundle_err)?;
            (h, Some(e.to_string()))
        }
    };
    let h = &header;
    let v = json!({
        "file": file,
        "format": bundle::FORMAT_VERSION,
        "deployment": h.deployment,
        "deployment_name": h.deployment_name,
        "writer": h.writer.instance,
        "writer_name": h.writer.name,
        "written_at": h.written_at,
        "for": h.target,
        "for_name": h.target_name,
        "for_this_laptop": h.target == Some(app.store().id()),
        "since": h.since,
        "next": h.next,
        "head": h.head,
        "knowledge": h.knowledge,
        "for_knowledge": h.target_knowledge,
        "pages": h.pages,
        "records": h.records,
        "bytes": bytes.len(),
        "cipher": h.cipher,
        "readable_here": problem.is_none(),
        "problem": problem,
    });
    if io.human {
        return write!(io.out, "{}", human_show(&v)).map_err(CliError::Output);
    }
    print(io.out, &v)
}

fn human_show(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let whom = match v["for"].as_str() {
        None => "any laptop (everything)".to_string(),
        Some(id) if v["for_this_laptop"] == true => format!("this laptop ({id})"),
        Some(id) => format!("{} ({id})", v["for_name"].as_str().unwrap_or("never met")),
    };
    // Written at: a local minute, as everywhere else for people (the JSON keeps the exact time).
    let written = chrono::DateTime::parse_from_rfc3339(&s("written_at")).map_or_else(
        |_| s("written_at"),
        |t| t.with_timezone(&Local).format("%Y-%m-%d %H:%M").to_string(),
    );
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut out = format!(
        "Bundle {} from {} ({}), written {written}, for {whom}: {} in {} ({}), deployment \
         {} ({}).\n",
        s("file"),
        s("writer_name"),
        s("writer"),
        super::human::count(n("records"), "record", "records"),
        super::human::count(n("pages"), "page", "pages"),
        super::human::bytes(v["bytes"].as_u64().unwrap_or(0)),
        s("deployment_name"),
        s("deployment"),
    );
    match v["problem"].as_str() {
        None => out += "This laptop can read it: `fieldsync bundle read FILE`.\n",
        Some(p) => out += &format!("This laptop would refuse it: {p}\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts agree with their nouns: "1 record", "1 delete is held" (trial 10 read
    /// "1 records").
    #[test]
    fn a_read_says_one_record_in_the_singular() {
        let r = ReadReport {
            from_name: "hq".into(),
            pages: 1,
            records: 1,
            applied: 1,
            held: 1,
            ..Default::default()
        };
        let said = human_read("stick.fsbundle", &r);
        assert!(
            said.contains(": 1 record, 1 changed here, 0 conflicts.")
                && said.contains("1 delete is held for a person to decide"),
            "{said}"
        );
    }

    /// A bundle read a second time says nothing new came, not "0 records" (a newcomer read
    /// that as an empty bundle); one partly read before says how much of it was.
    #[test]
    fn a_bundle_read_again_says_nothing_new_came() {
        let again = ReadReport {
            from_name: "hq".into(),
            pages: 3,
            pages_skipped: 3,
            ..Default::default()
        };
        let said = human_read("stick.fsbundle", &again);
        assert!(
            said.contains("nothing new, all 3 of its pages were already here"),
            "{said}"
        );
        assert!(!said.contains("0 records"), "{said}");
        let partly = ReadReport {
            pages_skipped: 1,
            records: 40,
            applied: 40,
            ..again
        };
        let said = human_read("stick.fsbundle", &partly);
        assert!(
            said.contains("40 records, 40 changed here")
                && said.contains("1 of 3 pages were already here"),
            "{said}"
        );
    }

    /// A bundle written for the laptop that shows it says "this laptop", not "never met" (a
    /// newcomer's `bundle show` on the recipient).
    #[test]
    fn a_bundle_for_this_laptop_says_so() {
        let id = uuid::Uuid::new_v4().to_string();
        let v = serde_json::json!({"for": id, "for_name": null, "for_this_laptop": true,
            "written_at": "2026-12-05T10:00:00Z"});
        let shown = human_show(&v);
        assert!(shown.contains(&format!("this laptop ({id})")), "{shown}");
        assert!(!shown.contains("never met"), "{shown}");
    }
}
