//! The conflict rules, as pure functions: how a conflict is identified across instances, when a
//! later write supersedes a field conflict, what a unique-field clash does, and how a
//! resolution becomes an edit. The store applies them inside its write batch; the proptest
//! model (tests/convergence.rs) checks that, with them, every replica ends with the same open
//! conflicts.

use super::{Conflict, Edit, Side};
use crate::clock::Hlc;
use crate::model::{covers, RecordState};
use serde_json::Value;

/// Identifies a conflict by the writes involved, whichever instance detected it (and on which
/// side): a field conflict by its field and its two stamps in order, a delete-vs-edit conflict
/// by the delete's stamp. Part of the store's dedupe key, so it must never change.
pub fn fingerprint(c: &Conflict) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    match c {
        Conflict::Field {
            field,
            local,
            remote,
            ..
        } => {
            let (a, b) = ordered(local.stamp, remote.stamp);
            h.update(b"field\0");
            h.update(field.as_bytes());
            h.update(a.to_key_bytes());
            h.update(b.to_key_bytes());
        }
        Conflict::DeleteEdit { deleted, .. } => {
            h.update(b"delete_edit\0");
            h.update(deleted.to_key_bytes());
        }
    }
    h.finalize().into()
}

fn ordered(a: Hlc, b: Hlc) -> (Hlc, Hlc) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// True if `c` is a field conflict on `field` between the writes `x` and `y` (either order).
fn pairs(c: &Conflict, field: &str, x: Hlc, y: Hlc) -> bool {
    matches!(c, Conflict::Field { field: f, local, remote, .. }
        if f == field && ordered(local.stamp, remote.stamp) == ordered(x, y))
}

/// Conflicts between an incoming write and the sides of conflicts already logged on the
/// record, which [`super::merge_remote`] cannot see because it compares only with the current
/// value: a write `w` that becomes the field's value here, arriving in a state that has not
/// seen a side `x` of a logged conflict on that field, was made concurrently with `x`; if the
/// values differ that is a conflict too (`x` lost to `w`). `log` is the record's conflict log,
/// `incoming` the state as received, `merged` the result of the merge. Only a merge that
/// changed the record consults it: an old copy changes nothing, not even the log (rule 6).
///
/// Without it a write made without seeing a lost value would look like a decision taken by
/// someone who had seen it, and settle its conflict (see [`superseded_by`]).
pub fn unseen_sides<'a>(
    log: impl IntoIterator<Item = &'a Conflict>,
    incoming: &RecordState,
    merged: &RecordState,
) -> Vec<Conflict> {
    let mut out: Vec<Conflict> = Vec::new();
    for c in log {
        let Conflict::Field {
            field,
            local,
            remote,
            ..
        } = c
        else {
            continue;
        };
        let Some(w) = incoming.fields.get(field) else {
            continue;
        };
        if merged.fields.get(field).map(|m| m.stamp) != Some(w.stamp) {
            continue;
        }
        for x in [local, remote] {
            if x.stamp == w.stamp || covers(&incoming.vv, &x.stamp) || x.value == w.value {
                continue;
            }
            let found = Conflict::Field {
                field: field.clone(),
                local: x.clone(),
                remote: w.clone(),
                chosen: if w.stamp > x.stamp {
                    Side::Remote
                } else {
                    Side::Local
                },
                reason: if w.stamp.ts == x.stamp.ts {
                    "concurrent edits with equal clocks; the higher instance id wins".to_string()
                } else {
                    "concurrent edits; the later write (hybrid logical clock) wins".to_string()
                },
            };
            if !out.iter().any(|o| fingerprint(o) == fingerprint(&found)) {
                out.push(found);
            }
        }
    }
    out
}

/// When a field conflict is settled by a later write: the record's current write to the field
/// (in `state`) is neither side, and no known conflict (`known`: the record's conflict log,
/// reported ones included) says that write was made without seeing one of the sides. Returns
/// that write's stamp. A delete-vs-edit conflict is never superseded.
///
/// Judged from the record's state and log only, so replicas that end with the same state and
/// the same log agree; a replica re-judges on every change of the record (evidence that the
/// write was blind can arrive after the write). A write by someone who had seen both sides
/// (a resolution, a later edit) can never be paired with a side in a logged conflict, so it
/// settles the conflict everywhere; a concurrent write that merely won by clock cannot, because
/// wherever it met a side, that meeting was logged ([`super::merge_remote`], [`unseen_sides`]).
pub fn superseded_by<'a>(
    c: &Conflict,
    state: &RecordState,
    known: impl IntoIterator<Item = &'a Conflict>,
) -> Option<Hlc> {
    let Conflict::Field {
        field,
        local,
        remote,
        ..
    } = c
    else {
        return None;
    };
    let now = state.fields.get(field)?.stamp;
    if now == local.stamp || now == remote.stamp {
        return None;
    }
    let blind = known
        .into_iter()
        .any(|k| pairs(k, field, now, local.stamp) || pairs(k, field, now, remote.stamp));
    (!blind).then_some(now)
}

/// What a write that gives a unique field a value another record already has does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClashOutcome {
    /// A local write is refused: the user can pick another value now.
    Refuse,
    /// A remote record is stored anyway and a name clash is logged: refusing it would make the
    /// instances diverge forever, and both records are real.
    StoreAndLog,
}

/// The name-clash rule: refuse a local write, keep a remote one and log the clash.
pub fn on_unique_clash(local_write: bool) -> ClashOutcome {
    if local_write {
        ClashOutcome::Refuse
    } else {
        ClashOutcome::StoreAndLog
    }
}

/// Which value a conflict resolution keeps.
#[derive(Clone, Debug, PartialEq)]
pub enum Keep {
    /// The local side's value, as the detecting instance saw it (only unambiguous on that
    /// instance: the store refuses it for a conflict received from a peer).
    Local,
    /// The remote side's value, as the detecting instance saw it (same restriction).
    Remote,
    /// This value instead.
    Value(Value),
    /// The value written by this instance (the side whose writer is this instance).
    From(uuid::Uuid),
    /// Delete-vs-edit: the record deleted.
    Deleted,
    /// Delete-vs-edit: the record alive, with the edit.
    Alive,
    /// Name clash: give this record (one of the two) this value of the unique field.
    Rename(uuid::Uuid, Value),
}

/// A resolution turned into what to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    /// The edit that carries the decision to every instance (`None`: nothing to write).
    pub edit: Option<Edit>,
    /// What was done, for the log.
    pub how: String,
}

/// A `--keep` that does not fit the conflict; the message names what does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeepMismatch(pub String);

/// How resolving a merge conflict becomes an edit. A field conflict writes the kept value with a
/// fresh stamp even when it is already the current one ([`Edit::Reassert`]), so the decision
/// replicates and supersedes the conflict on every instance (its writer has seen both sides).
/// A delete-vs-edit conflict kept on the delete's side deletes the record; kept on the edit's
/// side the record simply stays.
pub fn resolve(c: &Conflict, keep: &Keep) -> Result<Resolution, KeepMismatch> {
    let done = |edit, how: &str| Resolution {
        edit,
        how: how.to_string(),
    };
    Ok(match (c, keep) {
        (Conflict::Field { field, local, .. }, Keep::Local) => done(
            Some(Edit::Reassert(field.clone(), local.value.clone())),
            "kept the local value",
        ),
        (Conflict::Field { field, remote, .. }, Keep::Remote) => done(
            Some(Edit::Reassert(field.clone(), remote.value.clone())),
            "kept the remote value",
        ),
        (Conflict::Field { field, .. }, Keep::Value(v)) => done(
            Some(Edit::Reassert(
                field.clone(),
                (!v.is_null()).then(|| v.clone()),
            )),
            // The value in the log: the conflict view shows no side holding it.
            &format!("set a new value: {v}"),
        ),
        (Conflict::DeleteEdit { deleted_on, .. }, k @ (Keep::Local | Keep::Remote)) => {
            let side = if *k == Keep::Local {
                Side::Local
            } else {
                Side::Remote
            };
            if side == *deleted_on {
                done(Some(Edit::Delete), "kept the delete: record deleted")
            } else {
                done(None, "kept the edit: record stays")
            }
        }
        (
            Conflict::Field {
                field,
                local,
                remote,
                ..
            },
            Keep::From(n),
        ) => {
            let side = [local, remote].into_iter().find(|s| s.stamp.node == *n);
            match side {
                Some(s) => done(
                    Some(Edit::Reassert(field.clone(), s.value.clone())),
                    &format!("kept the value written by {n}"),
                ),
                None => {
                    return Err(KeepMismatch(format!(
                        "neither side of this conflict was written by {n}: the sides were \
                         written by {} and {}; use --keep-from with one of them or \
                         --keep-value JSON",
                        local.stamp.node, remote.stamp.node
                    )))
                }
            }
        }
        (Conflict::Field { .. }, Keep::Deleted | Keep::Alive) => {
            return Err(KeepMismatch(
                "--keep deleted | alive is for delete-vs-edit conflicts; for a field conflict \
                 use --keep mine | theirs, --keep-from NAME_OR_ID or --keep-value JSON"
                    .into(),
            ))
        }
        (Conflict::DeleteEdit { .. }, Keep::Deleted) => {
            done(Some(Edit::Delete), "kept the delete: record deleted")
        }
        (Conflict::DeleteEdit { .. }, Keep::Alive) => done(None, "kept the edit: record stays"),
        (_, Keep::Rename(..)) => {
            return Err(KeepMismatch(
                "renaming a record is for name clashes; this conflict is about one record's \
                 values"
                    .into(),
            ))
        }
        (Conflict::DeleteEdit { .. }, Keep::Value(_) | Keep::From(_)) => {
            return Err(KeepMismatch(
                "a delete-vs-edit conflict takes --keep deleted or --keep alive".into(),
            ))
        }
    })
}

/// How resolving a name clash becomes an edit: a new value renames a record (the store applies
/// the patch to the record `Keep::Rename` names, or to the entry's record for `Keep::Value`);
/// keeping either side keeps both records as they are. A clash on an import key of several
/// fields (`field` is `F,G`) takes an array of one value per field, in the key's order.
pub fn resolve_name_clash(field: &str, keep: &Keep) -> Resolution {
    match keep {
        Keep::Value(v) | Keep::Rename(_, v) => {
            let mut patch = serde_json::Map::new();
            let parts: Vec<&str> = field.split(',').collect();
            match v.as_array() {
                Some(values) if parts.len() > 1 && values.len() == parts.len() => {
                    for (f, v) in parts.iter().zip(values) {
                        patch.insert(f.to_string(), v.clone());
                    }
                }
                _ => {
                    patch.insert(field.to_string(), v.clone());
                }
            }
            Resolution {
                edit: Some(Edit::Patch(patch)),
                how: format!("renamed: {field} set to {v}"),
            }
        }
        _ => Resolution {
            edit: None,
            how: "kept both records".to_string(),
        },
    }
}
