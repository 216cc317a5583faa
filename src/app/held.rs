//! Deletes held by the mass-delete brake (`store/held.rs`): list them, approve one (apply
//! exactly the held deletes) or reject one (keep the records alive everywhere).

use super::{App, AppError};
use crate::merge::Edit;
use crate::store::{Decided, Hold, HoldVerdict, LocalOp};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// A pending hold as a person sees it (without the held record states).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldView {
    /// Its id, for `held approve ID` / `held reject ID`.
    pub id: u64,
    /// The instance the deletes came from.
    pub peer: Uuid,
    /// Its name.
    pub peer_name: String,
    /// The table.
    pub table: String,
    /// Records the held changes would delete.
    pub deletes: u64,
    /// Live records of the table when the hold was made.
    pub live: u64,
    /// When the hold was made.
    pub at: DateTime<Utc>,
    /// One line: "laptopB wants to delete 80 of 100 person records".
    pub message: String,
}

impl From<&Hold> for HoldView {
    fn from(h: &Hold) -> Self {
        HoldView {
            id: h.id,
            peer: h.peer,
            peer_name: h.peer_name.clone(),
            table: h.table.clone(),
            deletes: h.changes.len() as u64,
            live: h.live,
            at: h.at,
            message: h.describe(),
        }
    }
}

/// What approving or rejecting a hold did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldDecision {
    /// The hold.
    pub id: u64,
    /// `approved` or `rejected`.
    pub decision: String,
    /// Records the held changes changed here when merged.
    pub applied: u64,
    /// Records restored after the deletes (reject).
    pub restored: u64,
    /// Conflicts logged while merging.
    pub conflicts: u64,
    /// Decided for the whole deployment: this laptop holds the deployment CA, so the signed
    /// decision travels and every laptop holding these deletes settles them the same way.
    /// `false`: decided on this laptop only.
    #[serde(default)]
    pub everywhere: bool,
}

fn decision(id: u64, what: &str, d: Decided) -> HoldDecision {
    HoldDecision {
        id,
        decision: what.into(),
        applied: d.merged.applied,
        restored: d.restored,
        conflicts: d.merged.conflicts,
        everywhere: d.everywhere,
    }
}

/// What the people's sync line adds for deletes from `peer` that the brake holds (pending
/// now, from this session or an earlier one): `; held by the mass-delete brake: laptopB wants
/// to delete 80 of 100 person records (see `fieldsync held list`)`, or nothing.
pub fn held_note(holds: &[HoldView], peer: Uuid) -> String {
    let lines: Vec<&str> = holds
        .iter()
        .filter(|h| h.peer == peer)
        .map(|h| h.message.as_str())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "; held by the mass-delete brake: {} (see `fieldsync held list`)",
        lines.join(", ")
    )
}

impl App {
    /// Refuses a local batch that would delete more of a table's live records than `[brake]`
    /// allows, unless `confirmed` (`--yes`, a terminal confirmation, or the API's
    /// `confirm_mass_delete`). Errors: `MASS_DELETE` (a conflict: nothing was written).
    pub fn check_mass_delete(&self, ops: &[LocalOp], confirmed: bool) -> Result<(), AppError> {
        if confirmed {
            return Ok(());
        }
        let mut doomed: BTreeMap<&str, BTreeSet<Uuid>> = BTreeMap::new();
        for op in ops.iter().filter(|o| matches!(o.edit, Edit::Delete)) {
            let live = self
                .store
                .get(&op.table, &op.id)?
                .is_some_and(|r| r.state.is_alive());
            if live {
                doomed.entry(op.table.as_str()).or_default().insert(op.id);
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        let counts: BTreeMap<String, u64> = self
            .store
            .tables()?
            .into_iter()
            .map(|(t, c)| (t, c.live))
            .collect();
        for (table, ids) in doomed {
            let live = counts.get(table).copied().unwrap_or(0);
            let n = ids.len() as u64;
            let brake = &self.store.config().brake;
            let rule = brake.rule(table);
            if brake.trips(table, n, live) {
                return Err(AppError::Conflict {
                    code: "MASS_DELETE",
                    message: format!(
                        "this batch deletes {n} of {live} {table} records, more than the \
                         mass-delete brake allows (over {} % of a table, from {} records; \
                         `[brake]` in fieldsync.toml): nothing was written; run it again with \
                         --yes (API: \"confirm_mass_delete\": true) if that is what you want",
                        rule.percent, rule.min_records
                    ),
                    field: None,
                });
            }
        }
        Ok(())
    }

    /// Pending holds, oldest first.
    pub fn holds(&self) -> Result<Vec<HoldView>, AppError> {
        Ok(self.store.holds()?.iter().map(HoldView::from).collect())
    }

    /// Applies exactly the held deletes of hold `id`. On the coordinator's laptop (it holds
    /// this deployment's CA) the approval is also signed and travels, so every laptop holding
    /// these deletes applies them. Errors: `HOLD_NOT_FOUND`.
    pub fn approve_hold(&self, id: u64) -> Result<HoldDecision, AppError> {
        Ok(decision(id, "approved", self.decide_hold(id, false)?))
    }

    /// Applies the held deletes of hold `id` and restores every record they deleted with a new
    /// revision, so the records stay alive everywhere. On the coordinator's laptop the
    /// rejection is also signed and travels (laptops holding the same deletes settle them once
    /// the restore reaches them). Errors: `HOLD_NOT_FOUND`.
    pub fn reject_hold(&self, id: u64) -> Result<HoldDecision, AppError> {
        Ok(decision(id, "rejected", self.decide_hold(id, true)?))
    }

    fn decide_hold(&self, id: u64, reject: bool) -> Result<Decided, AppError> {
        let Some(ca) = self.deployment_ca() else {
            return Ok(if reject {
                self.store.reject_hold(id)?
            } else {
                self.store.approve_hold(id)?
            });
        };
        let sign = |verdicts: &[HoldVerdict]| {
            verdicts
                .iter()
                .map(|v| {
                    let record = Uuid::new_v4();
                    ca.sign_hold_decision(record, v.to_fields())
                        .map(|f| (record, f))
                        .map_err(|e| format!("signing the decision failed: {e}"))
                })
                .collect()
        };
        Ok(self.store.decide_for_all(id, reject, &sign)?)
    }

    /// The deployment CA when this laptop holds it (the coordinator's laptop: `mesh-ca.fsca`
    /// in its data directory) and it is the CA of this laptop's own credential; a CA file of
    /// another deployment would sign decisions nobody here accepts.
    fn deployment_ca(&self) -> Option<crate::mesh::CaFile> {
        let dir = self.store.dir();
        let path = dir.join(crate::mesh::CA_FILE);
        if !path.exists() {
            return None;
        }
        let ca = crate::mesh::load_ca(&path).ok()?;
        let cred = crate::mesh::load_credential(dir).ok().flatten()?;
        (cred.ca_cert.trim() == ca.ca_cert.trim()).then_some(ca)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::records::BatchOp;
    use crate::config::Config;
    use crate::store::Store;
    use serde_json::json;
    use std::sync::Arc;

    fn op(op: &str, id: &Uuid) -> BatchOp {
        BatchOp {
            op: op.into(),
            table: "person".into(),
            id: Some(id.to_string()),
            fields: (op == "put").then(|| json!({"name": id.to_string()})),
        }
    }

    #[test]
    fn a_local_batch_deleting_over_the_limit_needs_confirmation_and_writes_nothing_without() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Config::default()).unwrap();
        let app = App::new(Arc::new(store), None);
        let ids: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
        app.batch(ids.iter().map(|i| op("put", i)).collect(), false)
            .unwrap();
        let deletes = |r: std::ops::Range<usize>| ids[r].iter().map(|i| op("delete", i)).collect();
        let e = app.batch(deletes(0..60), false).unwrap_err();
        assert_eq!(e.code(), "MASS_DELETE");
        assert!(
            e.to_string()
                .starts_with("this batch deletes 60 of 100 person records"),
            "{e}"
        );
        assert_eq!(app.tables().unwrap()[0].live, 100, "nothing written");
        // Under the limit (20 of 100), or confirmed, it goes through.
        app.batch(deletes(0..20), false).unwrap();
        assert_eq!(app.tables().unwrap()[0].live, 80);
        let e = app.batch(deletes(20..80), false).unwrap_err();
        assert!(e.to_string().contains("60 of 80"), "{e}");
        app.batch(deletes(20..80), true).unwrap();
        assert_eq!(app.tables().unwrap()[0].live, 20);
    }
}
