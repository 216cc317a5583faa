//! Conflicts told from the side of the laptop reading them, and the one way to say how to settle
//! one.
//!
//! The conflict log keeps each entry as its detector saw it (`local`/`remote`). A person on any
//! laptop needs the sides named by the laptop that wrote them, with its value and time, which
//! side is in the record now and why. [`ConflictView`] is that, built from the log entry, the
//! record's current state and its history; the CLI, the control endpoint, the HTTP API and the
//! console all show it. [`ResolveRequest`] is how every door says what to keep (the CLI's
//! `--keep`, `--keep-from`, `--keep-value`, `--record`; the HTTP body; the control operation).

use super::{App, AppError};
use crate::clock::Hlc;
use crate::merge::{Cause, Conflict, Side};
use crate::model::covers;
use crate::store::{ConflictDetail, ConflictEntry, Keep, StoredRecord};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// How to settle a conflict, relative to the laptop that settles it. Exactly one of `keep`,
/// `keep_from`, `keep_value` is given; `record` only with `keep_value` on a name clash.
///
/// JSON (HTTP body and control endpoint): `{"keep": "mine"}`, `{"keep_from": "laptopA"}`,
/// `{"keep_value": V}` (V may be `null`: the field is removed), `{"keep_value": "K2",
/// "record": "<uuid>"}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// `mine` | `theirs` (field conflicts: the side this laptop wrote, or the other one),
    /// `deleted` | `alive` (delete-vs-edit conflicts), or `local` | `remote` (the detector's
    /// orientation: accepted only on the laptop that detected the conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<String>,
    /// Keep the side written by this laptop (a peer's name or instance id, or this laptop's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_from: Option<String>,
    /// Write this value instead (field conflicts), or rename a record of a name clash to it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Object)]
    pub keep_value: Option<Value>,
    /// Name clash: which of the two records `keep_value` renames (default: the one whose
    /// unique value this laptop wrote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Uuid>,
}

/// `Some(null)` for an explicit `null`, so `{"keep_value": null}` (remove the field) differs
/// from an absent key.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl ResolveRequest {
    /// Reads a request body, refusing anything else with a 400 naming the field at fault.
    pub fn from_json(body: Value) -> Result<Self, AppError> {
        let Value::Object(m) = body else {
            return Err(AppError::invalid(
                "INVALID_BODY",
                "body",
                "the body must be a JSON object such as {\"keep\": \"mine\"}",
            ));
        };
        let mut req = ResolveRequest::default();
        for (k, v) in m {
            match (k.as_str(), v) {
                ("keep", Value::String(s)) => req.keep = Some(s),
                ("keep", _) => {
                    return Err(AppError::invalid(
                        "INVALID_KEEP",
                        "keep",
                        "keep must be one of \"mine\", \"theirs\", \"deleted\", \"alive\", \
                         \"local\", \"remote\"; to write a value use {\"keep_value\": V}",
                    ))
                }
                ("keep_from", Value::String(s)) => req.keep_from = Some(s),
                ("keep_from", _) => {
                    return Err(AppError::invalid(
                        "INVALID_KEEP_FROM",
                        "keep_from",
                        "keep_from must be a laptop's name or instance id (a string)",
                    ))
                }
                ("keep_value", v) => req.keep_value = Some(v),
                ("record", Value::String(s)) => {
                    req.record = Some(Uuid::parse_str(&s).map_err(|_| {
                        AppError::invalid(
                            "INVALID_RECORD",
                            "record",
                            format!("record {s:?} is not a record id (a UUID)"),
                        )
                    })?)
                }
                ("record", _) => {
                    return Err(AppError::invalid(
                        "INVALID_RECORD",
                        "record",
                        "record must be a record id (a UUID string)",
                    ))
                }
                (other, _) => {
                    return Err(AppError::invalid(
                        "UNKNOWN_FIELD",
                        other,
                        format!(
                            "unknown field {other:?}: give one of keep, keep_from, keep_value \
                             (and record with keep_value)"
                        ),
                    ))
                }
            }
        }
        req.check()?;
        Ok(req)
    }

    /// Exactly one choice, and `record` only with `keep_value`.
    fn check(&self) -> Result<(), AppError> {
        let given = [
            self.keep.is_some(),
            self.keep_from.is_some(),
            self.keep_value.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if self.record.is_some() && self.keep_value.is_none() {
            return Err(AppError::invalid(
                "INVALID_RECORD",
                "record",
                "record names which record of a name clash keep_value renames; give keep_value too",
            ));
        }
        if given != 1 {
            return Err(AppError::invalid(
                "INVALID_KEEP",
                "keep",
                "say what to keep with exactly one of keep (mine, theirs, deleted, alive), \
                 keep_from (a laptop) or keep_value (a JSON value)",
            ));
        }
        Ok(())
    }
}

/// A laptop as people know it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Laptop {
    /// Instance id.
    pub id: Uuid,
    /// Its name (empty if this laptop has never synced with it).
    pub name: String,
    /// True for the laptop reading the conflict.
    pub this_laptop: bool,
}

impl Laptop {
    /// The name, or the id when the name is unknown.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.id.to_string()
        } else {
            self.name.clone()
        }
    }
}

/// One side of a conflict as the reader sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideView {
    /// `mine` | `theirs` (a field conflict, or the records of a name clash, by who wrote the
    /// value), `deleted` | `alive` (delete-vs-edit).
    pub side: String,
    /// The laptop that wrote it (for `alive`: the latest edit the deleter had not seen).
    pub laptop: Laptop,
    /// The value (`null`: the field removed; `deleted`: null; `alive`: the record's fields now;
    /// name clash: the record's unique value now).
    pub value: Option<Value>,
    /// When it was written (the write's hybrid-clock time, UTC).
    pub at: DateTime<Utc>,
    /// The write's stamp (as `history` and `get --at` show it).
    pub stamp: String,
    /// True if this side is what the record holds now.
    pub in_record: bool,
    /// Name clash: the record this side is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Uuid>,
    /// Name clash: that record's name (its `name` or `title`, as `record_name` reads it), so a
    /// person tells the two records apart (trial 10: the console showed two equal key values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_name: Option<String>,
    /// How to keep this side (absent for name clashes: both records are kept; rename one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<ResolveRequest>,
    /// `alive` side of a delete-vs-edit conflict: the fields the edit(s) the deleter had not
    /// seen wrote, by name (what is at stake when deciding); absent when none or elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edited: Vec<String>,
}

/// A conflict log entry told from this laptop's side: the log entry's JSON (as scripts have
/// read it so far: `id`, `table`, `record`, `type`, `field`, `local`/`remote`, `chosen`,
/// `reason`, `resolved`, ...) plus the sides by laptop, which is in the record and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictView {
    /// The log entry as [`super::admin::conflict_json`] prints it.
    #[serde(flatten)]
    pub entry: Map<String, Value>,
    /// The laptop that detected it.
    pub detected_by_laptop: Laptop,
    /// The sides, this laptop's first.
    pub sides: Vec<SideView>,
    /// Which side the record holds now: a side's `side`, `both` (name clash), or `neither`.
    /// On a third laptop both sides of a field conflict are `theirs`; `in_record_by` tells
    /// them apart.
    pub in_record: String,
    /// The instance id of the laptop that wrote the side the record holds (null: `both` or
    /// `neither`).
    #[serde(default)]
    pub in_record_by: Option<Uuid>,
    /// Why, in words: the merge rule, or who resolved it.
    pub why: String,
    /// The record's `name` (else `title`) field when it has one, for naming it to people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_name: Option<String>,
}

impl ConflictView {
    /// The conflict id.
    pub fn id(&self) -> u64 {
        self.entry.get("id").and_then(Value::as_u64).unwrap_or(0)
    }

    /// `field`, `delete_edit` or `name_clash`.
    pub fn kind(&self) -> &str {
        self.entry.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// Whether it is settled.
    pub fn resolved(&self) -> bool {
        self.entry.get("resolved").is_some_and(|r| !r.is_null())
    }
}

impl App {
    /// The laptop `id` with its name as this laptop knows it.
    pub fn laptop(&self, id: Uuid) -> Result<Laptop, AppError> {
        let me = self.store.instance();
        if id == me.id {
            return Ok(Laptop {
                id,
                name: me.name,
                this_laptop: true,
            });
        }
        // A conflict names several laptops: a met peer is one read of its row; only the
        // others need the enrolled list and the certificates (`App::known_rows`).
        let name = match self.store.peer(&id)? {
            Some(row) if !row.name.is_empty() => row.name,
            _ => self
                .known_rows()?
                .into_iter()
                .find(|p| p.instance == id)
                .map(|p| p.name)
                .unwrap_or_default(),
        };
        Ok(Laptop {
            id,
            name,
            this_laptop: false,
        })
    }

    /// The conflict log as [`App::conflicts`] filters it, each entry told from this laptop.
    pub fn conflict_views(
        &self,
        table: Option<&str>,
        all: bool,
    ) -> Result<Vec<ConflictView>, AppError> {
        self.conflicts(table, all)?
            .iter()
            .map(|c| self.conflict_view(c))
            .collect()
    }

    /// One entry told from this laptop: sides by laptop, which is in the record, why.
    pub fn conflict_view(&self, c: &ConflictEntry) -> Result<ConflictView, AppError> {
        let mut entry = match super::admin::conflict_json(c) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let me = self.store.id();
        let detected_by_laptop = self.laptop(c.reported_by.unwrap_or(me))?;
        let rec = self.store.get(&c.table, &c.record)?;
        let (mut sides, in_record, why) = match &c.detail {
            ConflictDetail::Merge {
                conflict:
                    Conflict::Field {
                        field,
                        local,
                        remote,
                        chosen,
                        ..
                    },
            } => {
                let now = rec
                    .as_ref()
                    .filter(|r| r.state.is_alive())
                    .and_then(|r| r.state.fields.get(field));
                let mut sides = Vec::new();
                for s in [local, remote] {
                    let mine = s.stamp.node == me;
                    sides.push(SideView {
                        side: if mine { "mine" } else { "theirs" }.into(),
                        laptop: self.laptop(s.stamp.node)?,
                        value: s.value.clone(),
                        at: s.stamp.time(),
                        stamp: s.stamp.to_string(),
                        // By value: a resolution rewrites the kept value with a new stamp.
                        in_record: now.is_some_and(|n| n.value == s.value),
                        record: None,
                        record_name: None,
                        keep: Some(ResolveRequest {
                            keep_from: Some(s.stamp.node.to_string()),
                            ..Default::default()
                        }),
                        edited: Vec::new(),
                    });
                }
                let winner = if *chosen == Side::Local {
                    local
                } else {
                    remote
                };
                let (label, why) = match now {
                    None if rec.as_ref().is_some_and(|r| !r.state.is_alive()) => (
                        "neither".to_string(),
                        "the record was deleted since".to_string(),
                    ),
                    None => ("neither".to_string(), format!("{field} was removed since")),
                    Some(n) => {
                        let label = sides
                            .iter()
                            .find(|s| s.in_record)
                            .map_or("neither".to_string(), |s| s.side.clone());
                        let by = self.laptop(n.stamp.node)?.label();
                        let why = if self.is_resolution(c, n.stamp)? {
                            format!("resolved by {by}")
                        } else if n.stamp == winner.stamp {
                            field_rule(&self.laptop(n.stamp.node)?, local.stamp, remote.stamp)
                        } else if n.stamp == local.stamp || n.stamp == remote.stamp {
                            "its write is in the record".to_string()
                        } else {
                            format!("a later edit by {by} (made after seeing both) replaced it")
                        };
                        (label, why)
                    }
                };
                (sides, label, why)
            }
            ConflictDetail::Merge {
                conflict: Conflict::DeleteEdit { deleted, .. },
            } => self.delete_edit_sides(c, rec.as_ref(), *deleted)?,
            ConflictDetail::NameClash {
                field,
                value,
                other,
            } => {
                let mut sides = Vec::new();
                for rid in [c.record, *other] {
                    let r = self.store.get(&c.table, &rid)?;
                    let w = r
                        .as_ref()
                        .filter(|r| r.state.is_alive())
                        .and_then(|r| crate::store::unique::clash_write(&r.state, field));
                    let stamp = w.as_ref().map(|w| w.stamp);
                    let node = stamp.map_or(Uuid::nil(), |s| s.node);
                    sides.push(SideView {
                        side: if node == me { "mine" } else { "theirs" }.into(),
                        laptop: self.laptop(node)?,
                        value: w.and_then(|w| w.value),
                        at: stamp.map_or(c.detected_at, |s| s.time()),
                        stamp: stamp.map(|s| s.to_string()).unwrap_or_default(),
                        in_record: r.as_ref().is_some_and(|r| r.state.is_alive()),
                        record: Some(rid),
                        record_name: r
                            .as_ref()
                            .and_then(|r| super::records::record_name(&r.state.live_fields())),
                        keep: None,
                        edited: Vec::new(),
                    });
                }
                let why = match &c.resolved {
                    Some(r) => self.in_names(&r.how)?,
                    None => {
                        format!("both have {field} = {value} until one of them is renamed")
                    }
                };
                (sides, "both".to_string(), why)
            }
        };
        // This laptop's side first.
        sides.sort_by_key(|s| !s.laptop.this_laptop);
        // The reader's terms beside the detector's (`local`/`remote`/`chosen`, kept for
        // scripts): who detected it, never null, and what the merge rule kept, as `sides` says.
        let merge_kept = match &c.detail {
            ConflictDetail::Merge {
                conflict:
                    Conflict::Field {
                        local,
                        remote,
                        chosen,
                        ..
                    },
            } => {
                let w = if *chosen == Side::Local {
                    local
                } else {
                    remote
                };
                if w.stamp.node == me {
                    "mine"
                } else {
                    "theirs"
                }
            }
            ConflictDetail::Merge {
                conflict: Conflict::DeleteEdit { .. },
            } => "alive",
            ConflictDetail::NameClash { .. } => "both",
        };
        entry.insert("detected_by".into(), json!(detected_by_laptop.id));
        entry.insert("merge_kept".into(), json!(merge_kept));
        if let Some(r) = &c.resolved {
            let how = match Self::resolved_elsewhere(&r.how, &why, &sides) {
                Some(told) => told,
                None => self.in_names(&r.how)?,
            };
            if let Some(Value::Object(m)) = entry.get_mut("resolved") {
                m.insert("how".into(), json!(how));
            }
        }
        let in_record_by = match in_record.as_str() {
            "both" | "neither" => None,
            _ => sides.iter().find(|s| s.in_record).map(|s| s.laptop.id),
        };
        let record_name = rec
            .as_ref()
            .and_then(|r| super::records::record_name(&r.state.live_fields()));
        Ok(ConflictView {
            entry,
            detected_by_laptop,
            sides,
            in_record,
            in_record_by,
            why,
            record_name,
        })
    }

    /// A stored how-string ("kept the value written by <instance id>") with each instance id
    /// told as the reader knows it: `this laptop`, or the laptop's name from the peers table
    /// (the id where no name is known).
    fn in_names(&self, how: &str) -> Result<String, AppError> {
        let mut out = Vec::new();
        for word in how.split(' ') {
            let core = word.trim_end_matches([':', ',', ';', '.', ')']);
            match Uuid::parse_str(core) {
                Ok(id) if core.len() == 36 => {
                    let l = self.laptop(id)?;
                    let name = if l.this_laptop {
                        "this laptop".to_string()
                    } else {
                        l.label()
                    };
                    out.push(format!("{name}{}", &word[core.len()..]));
                }
                _ => out.push(word.to_string()),
            }
        }
        Ok(out.join(" "))
    }

    /// A conflict another laptop resolved reaches this one as "superseded by a later write
    /// (STAMP)" or "settled by a later conflict resolution (STAMP)" (store/write.rs): told
    /// instead as who kept what, e.g. `laptopA kept its own value`, when `why` says a
    /// resolution wrote what the record holds. None: keep the stored words.
    fn resolved_elsewhere(how: &str, why: &str, sides: &[SideView]) -> Option<String> {
        if !how.starts_with(crate::store::SUPERSEDED)
            && !how.starts_with(crate::store::SETTLED_BY_RESOLUTION)
        {
            return None;
        }
        let by = why.strip_prefix("resolved by ")?;
        let holder = sides.iter().find(|s| s.in_record);
        Some(match holder.map(|s| s.side.as_str()) {
            Some("deleted") => format!("{by} kept the delete"),
            Some("alive") => format!("{by} kept the record"),
            Some(_) => {
                let h = holder?;
                if h.laptop.label() == by {
                    format!("{by} kept its own value")
                } else {
                    format!("{by} kept {}'s value", h.laptop.label())
                }
            }
            None => format!("resolved by {by}"),
        })
    }

    /// Whether the write `at` on the conflict's record was a conflict resolution.
    fn is_resolution(&self, c: &ConflictEntry, at: Hlc) -> Result<bool, AppError> {
        Ok(self
            .store
            .history(&c.table, &c.record)?
            .iter()
            .any(|h| h.revision.at == at && h.revision.cause == Cause::Resolution))
    }

    /// The two sides of a delete-vs-edit conflict: the delete, and the edits its deleter had
    /// not seen (which keep the record alive).
    fn delete_edit_sides(
        &self,
        c: &ConflictEntry,
        rec: Option<&StoredRecord>,
        deleted: Hlc,
    ) -> Result<(Vec<SideView>, String, String), AppError> {
        let alive = rec.is_some_and(|r| r.state.is_alive());
        // Keeping the record alive re-asserts one field with a resolution revision (so that
        // the decision travels, store/write.rs): that write is the decision, not the edit.
        let resolutions: std::collections::HashSet<Hlc> = self
            .store
            .history(&c.table, &c.record)?
            .iter()
            .filter(|h| h.revision.cause == Cause::Resolution)
            .map(|h| h.revision.at)
            .collect();
        // The edit side: the latest write the delete(s) had not seen, a resolution aside; once
        // everything was deleted after all, the latest write there is.
        let edit = rec.and_then(|r| {
            let fields = r.state.fields.values();
            let unseen = fields
                .clone()
                .filter(|f| !covers(&r.state.del_seen, &f.stamp))
                .map(|f| f.stamp)
                .filter(|at| !resolutions.contains(at))
                .max();
            unseen.or_else(|| fields.map(|f| f.stamp).max())
        });
        // What the unseen edits wrote: shown first, so the person deciding sees what is at stake.
        let edited: Vec<String> = rec
            .filter(|_| alive)
            .map(|r| {
                r.state
                    .fields
                    .iter()
                    .filter(|(_, f)| {
                        !covers(&r.state.del_seen, &f.stamp) && !resolutions.contains(&f.stamp)
                    })
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        // A resolution after the delete that kept the record: who decided.
        let kept_by = rec
            .filter(|_| alive)
            .and_then(|r| r.state.fields.values().map(|f| f.stamp).max())
            .filter(|at| *at > deleted && resolutions.contains(at));
        let edit_at = edit.unwrap_or(deleted);
        let live = rec.map(|r| Value::Object(r.state.live_fields()));
        let sides = vec![
            SideView {
                side: "deleted".into(),
                laptop: self.laptop(deleted.node)?,
                value: None,
                at: deleted.time(),
                stamp: deleted.to_string(),
                in_record: !alive,
                record: None,
                record_name: None,
                keep: Some(ResolveRequest {
                    keep: Some("deleted".into()),
                    ..Default::default()
                }),
                edited: Vec::new(),
            },
            SideView {
                side: "alive".into(),
                laptop: self.laptop(edit_at.node)?,
                value: live,
                at: edit_at.time(),
                stamp: edit.map(|e| e.to_string()).unwrap_or_default(),
                in_record: alive,
                record: None,
                record_name: None,
                keep: Some(ResolveRequest {
                    keep: Some("alive".into()),
                    ..Default::default()
                }),
                edited,
            },
        ];
        let (label, why) = if alive {
            let how = c.resolved.as_ref().map(|r| r.how.as_str()).unwrap_or("");
            if how.starts_with("kept the edit") {
                (
                    "alive".to_string(),
                    "resolved on this laptop: the edit is kept".to_string(),
                )
            } else if let Some(at) = kept_by {
                // Decided on another laptop: its resolution revision arrived with the record.
                (
                    "alive".to_string(),
                    format!("resolved by {}", self.laptop(at.node)?.label()),
                )
            } else {
                (
                    "alive".to_string(),
                    format!(
                        "the edit wins: the delete on {} had not seen it (a delete removes only \
                         what its deleter had seen)",
                        self.laptop(deleted.node)?.label()
                    ),
                )
            }
        } else {
            let last = rec.and_then(|r| r.state.deleted).unwrap_or(deleted);
            // (The record's resolution revisions were read above.)
            if resolutions.contains(&last) {
                (
                    "deleted".to_string(),
                    format!("resolved by {}", self.laptop(last.node)?.label()),
                )
            } else {
                (
                    "deleted".to_string(),
                    format!(
                        "deleted by {} after seeing the edit",
                        self.laptop(last.node)?.label()
                    ),
                )
            }
        };
        Ok((sides, label, why))
    }

    /// Turns a request into what the store keeps, relative to this laptop (see
    /// [`App::parse_keep_for`] for `keep` and `keep_from`).
    pub fn keep_of(&self, id: u64, req: &ResolveRequest) -> Result<Keep, AppError> {
        req.check()?;
        if let Some(k) = &req.keep {
            return match k.as_str() {
                "mine" | "theirs" | "deleted" | "alive" | "local" | "remote" => {
                    self.parse_keep_for(id, k)
                }
                other => Err(AppError::invalid(
                    "INVALID_KEEP",
                    "keep",
                    format!(
                        "keep {other:?} is not one of mine, theirs, deleted, alive (local, \
                         remote on the laptop that detected it); for a value use keep_value"
                    ),
                )),
            };
        }
        if let Some(who) = &req.keep_from {
            return self
                .parse_keep_for(id, &format!("from:{who}"))
                .map_err(|e| match e {
                    AppError::NotFound { message, .. } => {
                        AppError::invalid("INVALID_KEEP_FROM", "keep_from", message)
                    }
                    other => other,
                });
        }
        let v = req.keep_value.clone().unwrap_or(Value::Null);
        let c = self.store.conflict(id)?;
        if let ConflictDetail::NameClash { field, other, .. } = &c.detail {
            let target = match req.record {
                Some(r) if r == c.record || r == *other => r,
                Some(r) => {
                    return Err(AppError::invalid(
                        "INVALID_RECORD",
                        "record",
                        format!(
                            "record {r} is not one of the two records of name clash {id} ({} \
                             and {other})",
                            c.record
                        ),
                    ))
                }
                None => self.own_clash_record(&c, field, *other)?,
            };
            return Ok(Keep::Rename(target, v));
        }
        if req.record.is_some() {
            return Err(AppError::invalid(
                "INVALID_RECORD",
                "record",
                format!("record is only for name clashes; conflict {id} is about one record"),
            ));
        }
        Ok(Keep::Value(v))
    }

    /// The record of a name clash whose unique value this laptop wrote (the one a person here
    /// renames); refused when that is not exactly one of the two.
    fn own_clash_record(
        &self,
        c: &ConflictEntry,
        field: &str,
        other: Uuid,
    ) -> Result<Uuid, AppError> {
        let me = self.store.id();
        let mut mine = Vec::new();
        for rid in [c.record, other] {
            let written_here = self
                .store
                .get(&c.table, &rid)?
                .and_then(|r| crate::store::unique::clash_write(&r.state, field))
                .map(|f| f.stamp.node == me)
                .unwrap_or(false);
            if written_here {
                mine.push(rid);
            }
        }
        match mine.as_slice() {
            [one] => Ok(*one),
            _ => Err(AppError::invalid(
                "INVALID_RECORD",
                "record",
                format!(
                    "this laptop wrote {} of the two records of name clash {} ({} and {other}): \
                     say which one to rename with --record ID",
                    if mine.is_empty() { "neither" } else { "both" },
                    c.id,
                    c.record
                ),
            )),
        }
    }

    /// Settles conflict `id` as `req` says (relative to this laptop) and returns the entry as
    /// this laptop now tells it.
    pub fn resolve_with(&self, id: u64, req: &ResolveRequest) -> Result<ConflictView, AppError> {
        let keep = self.keep_of(id, req)?;
        // A choice that does not fit the conflict names the option that was given.
        let given = if req.keep_from.is_some() {
            "keep_from"
        } else if req.keep_value.is_some() {
            "keep_value"
        } else {
            "keep"
        };
        let entry = self.resolve(id, keep).map_err(|e| match e {
            AppError::Invalid {
                code: "BAD_RESOLUTION",
                message,
                ..
            } => AppError::invalid("BAD_RESOLUTION", given, message),
            other => other,
        })?;
        self.conflict_view(&entry)
    }
}

/// The merge rule that picked a field conflict's side, in words.
fn field_rule(winner: &Laptop, a: Hlc, b: Hlc) -> String {
    if a.ts == b.ts {
        format!(
            "same clock time: the higher laptop id wins ({}'s value; neither edit had seen the \
             other)",
            winner.label()
        )
    } else {
        "newer edit wins (neither edit had seen the other)".to_string()
    }
}
