//! Status, peers and the conflict log.

use super::{App, AppError};
use crate::merge::Conflict;
use crate::model::FieldState;
use crate::store::{side_name, ConflictDetail, ConflictEntry, Keep, PeerRow};
use serde_json::{json, Value};

/// How `keep` of a conflict resolution is given: `local`, `remote` (the detecting laptop's
/// words, kept for scripts), or a JSON value; the error names the reader's words.
pub fn parse_keep(keep: &str) -> Result<Keep, AppError> {
    Ok(match keep {
        "local" => Keep::Local,
        "remote" => Keep::Remote,
        // The parser's own words ("expected value at line 1 column 1") tell a person nothing:
        // say what is accepted instead.
        other => Keep::Value(serde_json::from_str(other).map_err(|_| {
            AppError::invalid(
                "INVALID_KEEP",
                "keep",
                format!(
                    "`{other}` is not a side: --keep takes mine, theirs, deleted or alive; to keep \
                     a value use --keep-value JSON (quote strings: '\"text\"')"
                ),
            )
        })?),
    })
}

impl App {
    /// This instance, record counts, conflicts, a peers summary and the agent's live state.
    pub fn status(&self) -> Result<Value, AppError> {
        let store = &self.store;
        let tables: serde_json::Map<String, Value> = store
            .tables()?
            .into_iter()
            .filter(|(t, _)| !t.starts_with(crate::model::SYSTEM_PREFIX))
            .map(|(t, c)| (t, json!({"live": c.live, "deleted": c.deleted})))
            .collect();
        let unresolved = store
            .conflicts()?
            .iter()
            .filter(|c| c.resolved.is_none())
            .count();
        let peers = self.peers()?;
        let revoked = self.revocations();
        let last_sync = peers.iter().filter_map(|p| p.last_update).max();
        let online: Vec<_> = peers
            .iter()
            .filter(|p| p.online)
            .map(|p| p.instance)
            .collect();
        let failing: Vec<Value> = peers
            .iter()
            // A revoked laptop is not failing: it is shut out (`peers` says so).
            .filter(|p| p.last_error.is_some() && !revoked.contains_key(&p.instance))
            .map(|p| json!({"instance": p.instance, "name": p.name, "error": p.last_error}))
            .collect();
        let mut agent = match &self.agent {
            Some(a) => a.live.to_json(),
            None => json!({"running": false}),
        };
        if let (Some(url), Some(m)) = (
            self.agent.as_ref().and_then(|a| a.api_url.get().cloned()),
            agent.as_object_mut(),
        ) {
            m.insert("api".into(), json!(url));
        }
        if let (Some(_), Some(m)) = (&self.agent, agent.as_object_mut()) {
            // Sessions in flight, with progress (records, bytes, expected, time left).
            m.insert("sessions".into(), json!(crate::progress::snapshot().0));
            // The same truth as `peers` ([`crate::presence`], revoked laptops never).
            m.insert("online_peers".into(), json!(online));
            m.insert(
                "refused_recent".into(),
                json!(crate::protocol::server::recent_refusals()),
            );
        }
        let quarantined: u64 = peers.iter().map(|p| p.quarantined).sum();
        let info = store.instance();
        let held: Vec<Value> = store
            .holds()?
            .iter()
            .map(|h| json!({"id": h.id, "message": h.describe()}))
            .collect();
        Ok(json!({
            "instance": info.id, "name": info.name, "owner": info.owner,
            "contact": info.contact, "data_dir": store.dir(), "feed_seq": store.seq(),
            "tables": tables, "unresolved_conflicts": unresolved, "held": held,
            "peers": {"known": peers.len(), "online": online.len(), "last_sync": last_sync,
                      "revoked": peers.iter().filter(|p| revoked.contains_key(&p.instance)).count(),
                      "failing": failing, "quarantined": quarantined},
            "incarnation": store.incarnation(),
            "identity_problems": crate::sync::identity_problems(store)?,
            "credential": crate::doctor::credential_status(store),
            // The deployment this laptop's credential belongs to (none outside one).
            "deployment": crate::mesh::load_credential(store.dir())
                .ok()
                .flatten()
                .map(|c| c.deployment),
            "agent": agent,
        }))
    }

    /// The sync_instance table: one row per peer instance, with `online` from
    /// [`crate::presence`] — false without an agent (nobody watches the network) and always
    /// false for a revoked laptop.
    ///
    /// It also lists the laptops that never synced with this one but are known by name: on
    /// the coordinator's laptop those it enrolled (`enrolled.json`), and on every laptop those
    /// whose signed writes it holds (the name in their certificate). Such a row has no
    /// `first_seen` and nothing else known. In a chain (hq ↔ A ↔ B) hq named B's writes by
    /// UUID in conflicts and history, refused `--keep-from laptopB`, and its console did not
    /// show B at all (trial 9, finding 5).
    pub fn peers(&self) -> Result<Vec<PeerRow>, AppError> {
        let revoked = self.revocations();
        let mut rows = self.known_rows()?;
        for r in &mut rows {
            r.online = self.agent.is_some()
                && !revoked.contains_key(&r.instance)
                && crate::presence::is_online(&r.instance);
        }
        Ok(rows)
    }

    /// [`App::peers`] without `online`: the peer rows, then the laptops known by name only.
    pub(crate) fn known_rows(&self) -> Result<Vec<PeerRow>, AppError> {
        let mut rows = self.store.peers()?;
        let me = self.store.id();
        let enrolled = crate::mesh::read_enrolled(self.store.dir()).unwrap_or_default();
        // And every laptop whose signed writes reached this one, by the name its certificate
        // was enrolled under (certificates from session 9 on carry it): in a chain, laptops
        // two hops away are named, not shown as UUIDs.
        let certified = self
            .store
            .member_certs()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|der| {
                let id = crate::mesh::instance_of_der(&der)?;
                Some((id, crate::mesh::laptop_name_of_der(&der)?))
            });
        for (id, name) in enrolled.into_iter().chain(certified) {
            if id != me && !rows.iter().any(|r| r.instance == id) {
                rows.push(PeerRow {
                    instance: id,
                    name,
                    first_seen: None,
                    ..Default::default()
                });
            }
        }
        Ok(rows)
    }

    /// [`App::peers`] as printed and served ([`peer_json`]), plus `revoked`: `{"at","reason"}`
    /// when the deployment revoked the laptop, else null.
    pub fn peer_list(&self) -> Result<Vec<Value>, AppError> {
        let revoked = self.revocations();
        Ok(self
            .peers()?
            .iter()
            .map(|r| {
                let mut v = peer_json(r);
                let reason = revoked
                    .contains_key(&r.instance)
                    .then(|| self.revocation_reason(&r.instance));
                v["revoked"] = revoked
                    .get(&r.instance)
                    .map_or(Value::Null, |at| json!({"at": at, "reason": reason}));
                v["problem"] = super::console::problem(r, reason.is_some(), reason.as_deref());
                v
            })
            .collect())
    }

    /// The conflict log (unresolved first), optionally one table, optionally resolved ones too.
    pub fn conflicts(
        &self,
        table: Option<&str>,
        all: bool,
    ) -> Result<Vec<ConflictEntry>, AppError> {
        if let Some(t) = table {
            crate::model::validate_table(t)?;
        }
        Ok(self
            .store
            .conflicts()?
            .into_iter()
            .filter(|c| table.is_none_or(|t| t == c.table) && (all || c.resolved.is_none()))
            .collect())
    }

    /// Settles a conflict by writing the kept value as a new revision.
    /// Reads a `keep` relative to this laptop (the reader) for conflict `id`: `mine` (the side
    /// this instance wrote), `theirs` (the other side), `deleted` | `alive` (delete-vs-edit),
    /// `from:NAME_OR_ID` (the side a given laptop wrote), or what [`parse_keep`] takes.
    pub fn parse_keep_for(&self, id: u64, keep: &str) -> Result<Keep, AppError> {
        let me = self.store.id();
        let bad = |m: String| AppError::invalid("BAD_RESOLUTION", "keep", m);
        Ok(match keep {
            "deleted" => Keep::Deleted,
            "alive" => Keep::Alive,
            "mine" | "theirs" => {
                let entry = self.store.conflict(id)?;
                let (a, b) = match &entry.detail {
                    ConflictDetail::Merge {
                        conflict: Conflict::Field { local, remote, .. },
                    } => (local.stamp.node, remote.stamp.node),
                    // Said for what the conflict is, with its own way out (a newcomer got the
                    // options of every other kind for a name clash).
                    ConflictDetail::NameClash { field, value, .. } => {
                        let e_g = match value {
                            serde_json::Value::String(v) => format!(", e.g. '\"{v}b\"'"),
                            _ => String::new(),
                        };
                        return Err(bad(format!(
                            "conflict {id} is a name clash: two records of {} share {field} \
                             {value}, and both stay until one changes; --keep {keep} chooses \
                             between two values of one field, so it does not apply: rename one \
                             record with --keep-value JSON (its new value{e_g}; add --record \
                             ID to say which), or delete one of the two with `fieldsync delete \
                             {} ID`",
                            entry.table, entry.table
                        )));
                    }
                    ConflictDetail::Merge { .. } => {
                        return Err(bad(format!(
                            "conflict {id} is a delete and an edit of one record, not two \
                             values of a field: keep the record with --keep alive, or delete it \
                             with --keep deleted"
                        )))
                    }
                };
                let other = match (a == me, b == me) {
                    (true, false) => b,
                    (false, true) => a,
                    _ => {
                        return Err(bad(format!(
                            "this laptop ({me}) wrote neither side of conflict {id} (written by \
                             {a} and {b}): use --keep-from NAME_OR_ID or --keep-value JSON"
                        )))
                    }
                };
                Keep::From(if keep == "mine" { me } else { other })
            }
            k if k.starts_with("from:") => {
                let who = &k[5..];
                let own = self.store.instance();
                if who == own.name || who == me.to_string() {
                    Keep::From(me)
                } else {
                    Keep::From(self.resolve_instance(who)?)
                }
            }
            other => parse_keep(other)?,
        })
    }

    /// Every import key of this laptop's tables (`import --key`, any laptop's): `(table,
    /// fields)`, in table order.
    pub fn import_keys(&self) -> Result<Vec<(String, Vec<String>)>, AppError> {
        Ok(self.store.import_keys()?)
    }

    /// Drops `fields` as an import key of `table` on every laptop of the deployment (the drop
    /// travels by sync like a delete): records of the table may share those values again.
    /// `NOT_FOUND` (field `key`) naming the table's keys when it is not one.
    pub fn drop_import_key(&self, table: &str, fields: &[String]) -> Result<(), AppError> {
        crate::model::validate_table(table)?;
        if self.store.drop_import_key(table, fields)? {
            return Ok(());
        }
        let keys: Vec<String> = self
            .store
            .import_keys()?
            .into_iter()
            .filter(|(t, _)| t == table)
            .map(|(_, k)| k.join(","))
            .collect();
        Err(AppError::NotFound {
            code: "NOT_FOUND",
            field: Some("key".into()),
            message: format!(
                "{} is not an import key of {table}: {}",
                fields.join(","),
                if keys.is_empty() {
                    format!("{table} has none (`fieldsync import-keys` lists every table's)")
                } else {
                    format!("its import keys are {}", keys.join("; "))
                }
            ),
        })
    }

    /// Settles conflict `id` by `keep` (see [`crate::store::Store::resolve_conflict`]).
    pub fn resolve(&self, id: u64, keep: Keep) -> Result<ConflictEntry, AppError> {
        Ok(self.store.resolve_conflict(id, keep)?)
    }
}

fn stamp_json(f: &FieldState) -> Value {
    json!({"value": f.value, "at": f.stamp.to_string(), "instance": f.stamp.node})
}

/// A record's replication metadata as `get --meta` prints it.
pub fn record_meta(rec: &crate::store::StoredRecord, conflicts: &[u64]) -> Value {
    let s = &rec.state;
    let fields: serde_json::Map<String, Value> = s
        .fields
        .iter()
        .map(|(k, f)| {
            let mut v = stamp_json(f);
            v["removed"] = Value::Bool(f.value.is_none());
            v.as_object_mut().map(|m| m.remove("value"));
            (k.clone(), v)
        })
        .collect();
    let vv: serde_json::Map<String, Value> =
        s.vv.iter()
            .map(|(n, ts)| (n.to_string(), json!(ts)))
            .collect();
    json!({
        "alive": s.is_alive(), "seq": rec.seq, "fields": fields, "vv": vv,
        "deleted": s.deleted.map(|d| d.to_string()), "conflicts": conflicts,
    })
}

/// A conflict log entry as printed and served.
pub fn conflict_json(c: &ConflictEntry) -> Value {
    let mut v = json!({
        "id": c.id, "table": c.table, "record": c.record,
        "detected_at": c.detected_at.to_rfc3339(), "peer": c.peer,
        // "local"/"remote" below are as seen by the detecting instance (null: this one).
        "detected_by": c.reported_by,
        "resolved": c.resolved.as_ref().map(|r| json!({"at": r.at.to_rfc3339(), "how": r.how})),
    });
    let extra = match &c.detail {
        ConflictDetail::Merge {
            conflict:
                Conflict::Field {
                    field,
                    local,
                    remote,
                    chosen,
                    reason,
                },
        } => json!({
            "type": "field", "field": field, "local": stamp_json(local),
            "remote": stamp_json(remote), "chosen": side_name(*chosen), "reason": reason,
        }),
        ConflictDetail::Merge {
            conflict:
                Conflict::DeleteEdit {
                    deleted,
                    deleted_on,
                    reason,
                },
        } => json!({
            "type": "delete_edit", "deleted_at": deleted.to_string(),
            "deleted_by": deleted.node, "deleted_on": side_name(*deleted_on),
            "chosen": "edit", "reason": reason,
        }),
        ConflictDetail::NameClash {
            field,
            value,
            other,
        } => json!({
            "type": "name_clash", "field": field, "value": value, "other_record": other,
            "reason": "two different records share a unique value; both are kept",
        }),
    };
    if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
        m.extend(e);
    }
    v
}

/// A sync_instance row as printed and served.
pub fn peer_json(r: &PeerRow) -> Value {
    json!({
        "instance": r.instance, "name": r.name, "owner": r.owner, "contact": r.contact,
        "url": r.url, "first_seen": r.first_seen, "last_update": r.last_update,
        "sync_count": r.sync_count, "received_upto": r.received_upto,
        "clock_offset_ms": r.clock_offset_ms, "last_error": r.last_error,
        "last_attempt": r.last_attempt, "online": r.online, "last_seen": r.last_seen,
        "addresses": r.addresses, "incarnation": r.incarnation, "quarantined": r.quarantined,
        "duplicate_identity": r.duplicate.as_ref().map(|d| json!({
            "detected_at": d.detected_at, "incarnations": d.incarnations, "reason": d.reason,
            "fix": crate::sync::DUPLICATE_FIX,
        })),
    })
}
