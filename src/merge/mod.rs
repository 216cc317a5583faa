//! The merge rules: pure functions from (local state, edit or incoming state) to an outcome.
//!
//! No sled, no tokio, no clock reads: time arrives as a stamp parameter. The store calls these
//! inside its write transaction and persists whatever they return (new state, revisions for the
//! history, conflicts for the log). The rules are written down in ARCHITECTURE.md; in short:
//! each field is a last-writer-wins register ordered by HLC, version vectors tell "newer" from
//! "concurrent" so that only truly concurrent different writes are logged as conflicts, and a
//! delete only wins over edits its deleter had seen. The rules about conflicts once they are
//! logged (identity, supersession, unique-field clashes, resolutions) are in [`conflicts`].

pub mod conflicts;

pub use conflicts::Keep;

use crate::clock::Hlc;
use crate::model::{covers, vv_join, FieldState, Fields, RecordState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A local change a user asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Replace the record's fields with exactly these (create if missing or deleted).
    Put(Fields),
    /// Change only these fields; a JSON `null` removes the field (RFC 7396 at the top level).
    Patch(Fields),
    /// Tombstone the record.
    Delete,
    /// Set one field with a fresh stamp even if the value is unchanged, so that a decision
    /// (resolving a conflict) replicates and supersedes both conflicting writes.
    Reassert(String, Option<Value>),
}

/// Why a local edit could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// Patch or delete of an id that was never written here.
    #[error("no such record")]
    NotFound,
    /// Patch or delete of a deleted record.
    #[error("record is deleted")]
    Deleted,
}

/// Which side of a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// This instance's copy.
    Local,
    /// The incoming copy.
    Remote,
}

/// What kind of revision a history entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevisionKind {
    /// The record came into existence.
    Create,
    /// Fields changed on a live record.
    Update,
    /// The record was tombstoned.
    Delete,
    /// A deleted record came back (a put after delete, or an edit that won over a delete).
    Restore,
}

/// Why an instance made a revision. Replicates with it (wire and disk: names spelled out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    /// A person or program edited the record (put, patch, delete, import).
    #[default]
    #[serde(rename = "edit")]
    Edit,
    /// A person settled a conflict (`conflicts resolve`): the kept value, rewritten with a
    /// fresh stamp so the decision replicates.
    #[serde(rename = "resolution")]
    Resolution,
}

/// One field's change inside a revision. Part of the wire (history travels with records) and
/// disk formats: serde names are spelled out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Field name.
    #[serde(rename = "field")]
    pub field: String,
    /// Value before, on the instance that made the revision (`None`: was not set).
    #[serde(rename = "old")]
    pub old: Option<Value>,
    /// Value after (`None`: removed).
    #[serde(rename = "new")]
    pub new: Option<Value>,
}

/// One revision of a record, keyed in the history by its stamp (unique across instances).
///
/// A revision is made once, by the instance whose stamp it carries, and then copied as is to
/// every instance that gets the record: merges make none of their own (a merge is not an event;
/// its result is the join of revisions that all travel), so no instance ever invents one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    /// The stamp of the event; `at.node` is the instance that made it.
    #[serde(rename = "at")]
    pub at: Hlc,
    /// What happened.
    #[serde(rename = "kind")]
    pub kind: RevisionKind,
    /// Fields whose value changed, with their values before and after on the maker.
    #[serde(rename = "changes")]
    pub changes: Vec<FieldChange>,
    /// Why it was made. With a default, so histories stored before it was added decode.
    #[serde(rename = "cause", default)]
    pub cause: Cause,
    /// True for a revision that a fieldsync older than protocol 2 rebuilt from a merged state
    /// instead of receiving it from its maker: its grouping and old values may be invented or
    /// incomplete. Set by the store-format migration 1 → 2 (`store/legacy.rs`), and on receipt
    /// for a revision whose writes the page's signed commits do not prove (`sync/signed.rs`),
    /// and kept as the revision travels, so no laptop presents it as exact. Last, with a default, and left out
    /// when false, so exact revisions encode exactly as before (wire and disk).
    #[serde(rename = "reconstructed", default, skip_serializing_if = "is_false")]
    pub reconstructed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A conflict detected while merging; the store logs it with ids and times. Part of the wire
/// (reported with pages) and disk (conflict log) formats: serde names are spelled out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Conflict {
    /// Both sides changed one field concurrently to different values.
    Field {
        /// Field name.
        #[serde(rename = "field")]
        field: String,
        /// The local write.
        #[serde(rename = "local")]
        local: FieldState,
        /// The incoming write.
        #[serde(rename = "remote")]
        remote: FieldState,
        /// The side whose value was kept.
        #[serde(rename = "chosen")]
        chosen: Side,
        /// Why that side was chosen.
        #[serde(rename = "reason")]
        reason: String,
    },
    /// A delete and an edit the deleter had not seen: the record stays alive.
    DeleteEdit {
        /// The delete that lost.
        #[serde(rename = "deleted")]
        deleted: Hlc,
        /// Where the delete came from.
        #[serde(rename = "deleted_on")]
        deleted_on: Side,
        /// Explanation for the log.
        #[serde(rename = "reason")]
        reason: String,
    },
}

/// Result of a local edit that changed something.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalOutcome {
    /// The record's new state.
    pub state: RecordState,
    /// The history entry for this edit.
    pub revision: Revision,
    /// Fields whose stored state changed (to be sent to peers).
    pub touched: Vec<String>,
}

/// Applies a local edit stamped `at`. `Ok(None)` means nothing changed (nothing to write or sync).
pub fn local_edit(
    current: Option<&RecordState>,
    edit: &Edit,
    at: Hlc,
) -> Result<Option<LocalOutcome>, EditError> {
    let was_alive = current.is_some_and(RecordState::is_alive);
    let mut state = current.cloned().unwrap_or_default();
    let mut changes = Vec::new();
    let mut set = |state: &mut RecordState, field: &str, new: Option<Value>, force: bool| {
        let old = state.value(field).cloned();
        if old != new || force {
            changes.push(FieldChange {
                field: field.to_string(),
                old,
                new: new.clone(),
            });
            state.fields.insert(
                field.to_string(),
                FieldState {
                    value: new,
                    stamp: at,
                },
            );
        }
    };
    let kind = match edit {
        Edit::Put(fields) => {
            let removed: Vec<String> = state
                .live_fields()
                .keys()
                .filter(|k| fields.get(*k).is_none_or(Value::is_null))
                .cloned()
                .collect();
            for k in removed {
                set(&mut state, &k, None, false);
            }
            // A null field is the same as an absent one (as in a patch), so put is idempotent.
            for (k, v) in fields.iter().filter(|(_, v)| !v.is_null()) {
                set(&mut state, k, Some(v.clone()), false);
            }
            match (current, was_alive) {
                (None, _) => RevisionKind::Create,
                (Some(_), false) => RevisionKind::Restore,
                (Some(_), true) => RevisionKind::Update,
            }
        }
        Edit::Patch(fields) => {
            check_alive(current)?;
            for (k, v) in fields {
                set(&mut state, k, (!v.is_null()).then(|| v.clone()), false);
            }
            RevisionKind::Update
        }
        Edit::Delete => {
            check_alive(current)?;
            RevisionKind::Delete
        }
        Edit::Reassert(field, value) => {
            check_alive(current)?;
            set(&mut state, field, value.clone(), true);
            RevisionKind::Update
        }
    };
    // A put on a live record with identical fields, or a patch that changes nothing, is no event.
    if changes.is_empty() && kind == RevisionKind::Update {
        return Ok(None);
    }
    state.vv.insert(at.node, at.ts);
    if kind == RevisionKind::Delete {
        let seen = state.vv.clone();
        vv_join(&mut state.del_seen, &seen);
        state.deleted = state.deleted.max(Some(at));
    }
    let touched = changes.iter().map(|c| c.field.clone()).collect();
    Ok(Some(LocalOutcome {
        state,
        revision: Revision {
            at,
            kind,
            changes,
            cause: Cause::Edit,
            reconstructed: false,
        },
        touched,
    }))
}

fn check_alive(current: Option<&RecordState>) -> Result<(), EditError> {
    match current {
        None => Err(EditError::NotFound),
        Some(s) if !s.is_alive() => Err(EditError::Deleted),
        Some(_) => Ok(()),
    }
}

/// How an incoming state related to the local one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeKind {
    /// Unknown record: inserted as received.
    Insert,
    /// Nothing new: the local copy already had it all.
    NoOp,
    /// The incoming copy had seen every local change: taken as is.
    FastForward,
    /// Concurrent histories: merged field by field.
    Merge,
}

/// Result of merging an incoming record state into the local one.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeOutcome {
    /// The merged state (equal to the local one for `NoOp`).
    pub state: RecordState,
    /// How the two related.
    pub kind: MergeKind,
    /// Fields whose stored state changed (to be forwarded to other peers).
    pub touched: Vec<String>,
    /// Conflicts to log.
    pub conflicts: Vec<Conflict>,
}

/// Merges an incoming record state (whole, or a delta with a subset of fields) into the local one.
///
/// Commutative, associative and idempotent on the resulting state: every field takes the write
/// with the largest stamp, and the version vectors and delete knowledge take pointwise maxima.
pub fn merge_remote(local: Option<&RecordState>, remote: &RecordState) -> MergeOutcome {
    let empty = RecordState::default();
    let base = local.unwrap_or(&empty);
    let was_alive = local.is_some_and(RecordState::is_alive);
    let mut state = base.clone();
    let mut conflicts = Vec::new();
    let mut touched = Vec::new();

    for (name, r) in &remote.fields {
        let l = base.fields.get(name);
        if l.is_some_and(|l| l.stamp == r.stamp) {
            continue;
        }
        if let Some(l) = l {
            let concurrent = !covers(&remote.vv, &l.stamp) && !covers(&base.vv, &r.stamp);
            if concurrent && l.value != r.value {
                let chosen = if r.stamp > l.stamp {
                    Side::Remote
                } else {
                    Side::Local
                };
                let reason = if r.stamp.ts == l.stamp.ts {
                    "concurrent edits with equal clocks; the higher instance id wins".to_string()
                } else {
                    "concurrent edits; the later write (hybrid logical clock) wins".to_string()
                };
                conflicts.push(Conflict::Field {
                    field: name.clone(),
                    local: l.clone(),
                    remote: r.clone(),
                    chosen,
                    reason,
                });
            }
            if r.stamp < l.stamp {
                continue;
            }
        }
        touched.push(name.clone());
        state.fields.insert(name.clone(), r.clone());
    }
    vv_join(&mut state.vv, &remote.vv);
    vv_join(&mut state.del_seen, &remote.del_seen);
    state.deleted = state.deleted.max(remote.deleted);
    let is_alive = state.is_alive();

    if local.is_some() && is_alive {
        if let Some(d) = remote.deleted {
            if !remote.is_alive() && state.del_seen != base.del_seen {
                conflicts.push(Conflict::DeleteEdit {
                    deleted: d,
                    deleted_on: Side::Remote,
                    reason: "deleted elsewhere, but this copy has edits the deleter had not \
                             seen: the edit wins and the record stays"
                        .to_string(),
                });
            }
        }
        // Any delete known here that the remote never saw lost to its edits, not only the latest
        // one: the remote may have seen (and undone) a later concurrent delete. A deleter's whole
        // context is in `del_seen`, so an entry the remote's vv lacks is such a delete.
        let unseen_delete = base
            .del_seen
            .iter()
            .any(|(node, ts)| remote.vv.get(node).copied().unwrap_or(0) < *ts);
        if let Some(d) = base.deleted.filter(|_| !was_alive && unseen_delete) {
            conflicts.push(Conflict::DeleteEdit {
                deleted: d,
                deleted_on: Side::Local,
                reason: "deleted here, but edited elsewhere by someone who had not seen the \
                         delete: the edit wins and the record is restored"
                    .to_string(),
            });
        }
    }

    let kind = if local.is_none() {
        MergeKind::Insert
    } else if state == *base {
        MergeKind::NoOp
    } else if remote
        .vv
        .iter()
        .all(|(n, ts)| *ts >= base.vv.get(n).copied().unwrap_or(0))
        && base.vv.keys().all(|n| remote.vv.contains_key(n))
    {
        MergeKind::FastForward
    } else {
        MergeKind::Merge
    };

    MergeOutcome {
        state,
        kind,
        touched,
        conflicts,
    }
}

/// What must be sent of a record to a peer whose knowledge is `known`; `None` if the peer has
/// it all.
///
/// Fields whose write the peer already has (its own, or received through any instance in a
/// completed session) are left out, so an edit of one field sends that field. Knowledge is the
/// only safe filter: feed positions are not, because a record's feed entry moves with every
/// change, so a field's old position says nothing about whether the peer ever got it. The
/// version vector and delete knowledge always travel whole: they are small.
pub fn outgoing_delta(
    state: &RecordState,
    known: &crate::model::VersionVector,
) -> Option<RecordState> {
    if state
        .vv
        .iter()
        .all(|(n, ts)| known.get(n).is_some_and(|k| k >= ts))
    {
        return None;
    }
    let fields = state
        .fields
        .iter()
        .filter(|(_, f)| !covers(known, &f.stamp))
        .map(|(k, f)| (k.clone(), f.clone()))
        .collect();
    Some(RecordState {
        fields,
        vv: state.vv.clone(),
        del_seen: state.del_seen.clone(),
        deleted: state.deleted,
    })
}

/// The stamp of the newest event reflected in a state.
pub fn latest_event(s: &RecordState) -> Hlc {
    s.vv.iter()
        .map(|(node, ts)| Hlc {
            ts: *ts,
            node: *node,
        })
        .max()
        .unwrap_or(Hlc {
            ts: 0,
            node: uuid::Uuid::nil(),
        })
}

#[cfg(test)]
mod tests;
