//! What the console's pages show that no other door needs in this shape: the overview (this
//! laptop and every peer in words), live sessions, and warnings. Plain reads; no writes.

use super::{App, AppError};
use crate::store::PeerRow;
use chrono::Utc;
use serde_json::{json, Value};

/// A clock offset from a peer larger than this (ms) is a warning: its edits would win or lose
/// against ours for the wrong reason.
pub const CLOCK_WARN_MS: i64 = 60_000;

/// Pending changes are counted up to this many (a count past it shows as "more than").
const PENDING_CAP: u64 = 1_000_000;

impl App {
    /// This laptop (name, owner, deployment) and every peer: online, last sync, how many of our
    /// changes it has not received yet (`pending`, null when unknown: no session with it since
    /// the agent started), and its trouble in words (`problem`).
    pub fn overview(&self) -> Result<Value, AppError> {
        let store = &self.store;
        let me = store.instance();
        let cred = crate::mesh::load_credential(store.dir()).ok().flatten();
        let revoked = self.revocations();
        let head = store.seq();
        let now = Utc::now();
        let mut peers = Vec::new();
        for p in self.peers()? {
            let revoked_at = revoked.get(&p.instance).copied();
            let pending = match crate::progress::sent_upto(&p.instance) {
                // A revoked laptop receives nothing more: no count that looks like a backlog.
                _ if revoked_at.is_some() => None,
                Some(upto) if upto >= head => Some(0),
                Some(upto) => Some(store.feed_len_after(upto, PENDING_CAP)?),
                None => None,
            };
            let reason = revoked_at.map(|_| self.revocation_reason(&p.instance));
            peers.push(json!({
                "instance": p.instance, "name": display_name(&p), "owner": p.owner,
                "contact": p.contact, "online": p.online, "address": p.url,
                "last_sync": p.last_update, "sync_count": p.sync_count,
                "last_attempt": p.last_attempt, "last_error": p.last_error,
                "clock_offset_ms": p.clock_offset_ms, "pending": pending,
                "revoked": revoked_at, "revoked_reason": reason,
                "problem": problem(&p, revoked_at.is_some(), reason.as_deref()),
            }));
        }
        let agent = self.agent.as_ref().map(|a| a.live.to_json());
        Ok(json!({
            "now": now,
            "instance": me.id, "name": me.name, "owner": me.owner, "contact": me.contact,
            "deployment": cred.as_ref().map(|c| c.deployment.clone()),
            "sync_enabled": self.agent.as_ref().map(|a| a.sync_enabled),
            "feed_head": head,
            "unresolved_conflicts": store.conflicts()?.iter().filter(|c| c.resolved.is_none()).count(),
            "peers": peers,
            "agent": agent,
        }))
    }

    /// Sessions this agent runs, in flight and recently finished (see [`crate::progress`]).
    pub fn sessions(&self) -> Value {
        let (running, finished) = crate::progress::snapshot();
        json!({"running": running, "finished": finished})
    }

    /// Things a coordinator should look at: clocks off by more than a minute, discovery's
    /// diagnosis, failing peers.
    pub fn warnings(&self) -> Result<Value, AppError> {
        let peers = self.store.peers()?;
        let revoked = self.revocations();
        let clocks: Vec<Value> = peers
            .iter()
            .filter(|p| p.sync_count > 0 && p.clock_offset_ms.abs() > CLOCK_WARN_MS)
            .map(|p| {
                let secs = p.clock_offset_ms / 1000;
                let (how, by) = if secs > 0 {
                    ("ahead of", secs)
                } else {
                    ("behind", -secs)
                };
                json!({"instance": p.instance, "name": display_name(p),
                       "offset_ms": p.clock_offset_ms,
                       "message": format!("{}'s clock is {} {how} this laptop's: fix the \
                           clock on the wrong one, or edits there win or lose for the wrong reason",
                           display_name(p), human_secs(by))})
            })
            .collect();
        let failing: Vec<Value> = peers
            .iter()
            // A revoked laptop is shut out, not failing (the overview says it is revoked).
            .filter(|p| !revoked.contains_key(&p.instance))
            .filter_map(|p| {
                p.last_error.as_ref().map(|e| {
                    json!({"instance": p.instance, "name": display_name(p), "error": e,
                           "last_attempt": p.last_attempt})
                })
            })
            .collect();
        let discovery = self
            .agent
            .as_ref()
            .map(|a| a.live.to_json()["discovery"].clone())
            .unwrap_or(Value::Null);
        Ok(json!({
            "clock_warn_ms": CLOCK_WARN_MS, "clocks": clocks, "failing": failing,
            "discovery": discovery, "held": self.holds()?,
        }))
    }
}

fn display_name(p: &PeerRow) -> String {
    if p.name.is_empty() {
        p.instance.to_string()
    } else {
        p.name.clone()
    }
}

impl App {
    /// Laptops the deployment revoked, and when (empty outside a deployment).
    pub(crate) fn revocations(
        &self,
    ) -> std::collections::HashMap<uuid::Uuid, chrono::DateTime<Utc>> {
        crate::mesh::load_credential(self.store.dir())
            .ok()
            .flatten()
            .map(|c| crate::mesh::load_revocations(&self.store, &c.ca_cert))
            .unwrap_or_default()
    }

    /// The reason the coordinator gave when revoking `id`.
    pub(crate) fn revocation_reason(&self, id: &uuid::Uuid) -> String {
        self.store
            .get(crate::mesh::REVOCATIONS, id)
            .ok()
            .flatten()
            .and_then(|r| {
                r.state
                    .value("reason")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "no reason given".into())
    }
}

/// A peer's trouble in one sentence, or null: revoked, its identity used by two laptops, or
/// its last sync failed (in that order: the first explains the others).
pub(crate) fn problem(p: &PeerRow, revoked: bool, reason: Option<&str>) -> Value {
    if revoked {
        return json!(format!(
            "revoked by the coordinator ({}): it can no longer sync",
            reason.unwrap_or("no reason given")
        ));
    }
    if p.duplicate.is_some() {
        // The incarnations seen are in `duplicate_identity`; people get the fix by name.
        return json!(format!(
            "two laptops use this identity, so its syncs are refused. Fix: {}",
            super::identity::copied_identity_fix(&p.name)
        ));
    }
    let refused_me = p.last_error.as_deref().is_some_and(|e| {
        e.contains(&format!(
            "(code {})",
            crate::protocol::codes::DUPLICATE_INSTANCE
        ))
    });
    if refused_me {
        return json!(
            "refuses this laptop: another data directory uses this laptop's identity too \
             (`fieldsync status` says how to fix it)"
        );
    }
    // Records dropped from this peer are otherwise seen only in the JSON and the agent log,
    // while `verify` keeps finding them different.
    let dropped = (p.quarantined > 0).then(|| {
        format!(
            "{} it sent failed the checks and {} dropped (quarantined; the agent log says why)",
            if p.quarantined == 1 {
                "1 record".to_string()
            } else {
                format!("{} records", p.quarantined)
            },
            if p.quarantined == 1 { "was" } else { "were" }
        )
    });
    match (&p.last_error, dropped) {
        (Some(e), Some(d)) => json!(format!("the last sync failed: {e}; {d}")),
        (Some(e), None) => json!(format!("the last sync failed: {e}")),
        (None, Some(d)) => json!(d),
        // Known by name only (`App::peers`): nothing else is known about it here yet.
        (None, None) if p.first_seen.is_none() => json!(
            "has not synced with this laptop yet (known from enrolling it or from its writes \
             that other laptops passed on)"
        ),
        (None, None) => Value::Null,
    }
}

/// `95` → "1 min 35 s"; `7200` → "2 h".
pub fn human_secs(s: i64) -> String {
    match s {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records dropped from a peer are a problem people see beside it (a trial found them
    /// only in the JSON and the log, while `verify` kept finding them different).
    #[test]
    fn dropped_records_are_a_peers_problem() {
        let mut p = PeerRow {
            quarantined: 3,
            first_seen: Some(chrono::Utc::now()),
            ..PeerRow::default()
        };
        assert_eq!(
            problem(&p, false, None),
            json!("3 records it sent failed the checks and were dropped (quarantined; the agent log says why)")
        );
        p.last_error = Some("connection refused".into());
        assert!(problem(&p, false, None)
            .as_str()
            .unwrap()
            .starts_with("the last sync failed: connection refused; 3 records"));
        p.quarantined = 0;
        p.last_error = None;
        assert_eq!(problem(&p, false, None), Value::Null);
        // Known by name only (enrolled here, or its certificate came with its writes).
        p.first_seen = None;
        assert!(problem(&p, false, None)
            .as_str()
            .unwrap()
            .starts_with("has not synced with this laptop yet"));
    }
}
