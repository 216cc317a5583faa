//! Deletes held by the mass-delete brake (`store/held.rs`): list them, approve one (apply
//! exactly the held deletes) or reject one (keep the records alive everywhere).

use super::{App, AppError};
use crate::store::{Decided, Hold};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
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
}

fn decision(id: u64, what: &str, d: Decided) -> HoldDecision {
    HoldDecision {
        id,
        decision: what.into(),
        applied: d.merged.applied,
        restored: d.restored,
        conflicts: d.merged.conflicts,
    }
}

impl App {
    /// Pending holds, oldest first.
    pub fn holds(&self) -> Result<Vec<HoldView>, AppError> {
        Ok(self.store.holds()?.iter().map(HoldView::from).collect())
    }

    /// Applies exactly the held deletes of hold `id`. Errors: `HOLD_NOT_FOUND`.
    pub fn approve_hold(&self, id: u64) -> Result<HoldDecision, AppError> {
        Ok(decision(id, "approved", self.store.approve_hold(id)?))
    }

    /// Applies the held deletes of hold `id` and restores every record they deleted with a new
    /// revision, so the records stay alive everywhere. Errors: `HOLD_NOT_FOUND`.
    pub fn reject_hold(&self, id: u64) -> Result<HoldDecision, AppError> {
        Ok(decision(id, "rejected", self.store.reject_hold(id)?))
    }
}
