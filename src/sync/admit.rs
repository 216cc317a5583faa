//! Admission: what of an incoming page this deployment accepts, decided before anything is
//! written.
//!
//! Rules, in order:
//! - A change to the replicated revocation table is kept only if it is a whole, live record
//!   whose CA signature verifies *and* names the record's own id (a signed body moved under
//!   another id would un-revoke that id), and only if we do not already hold a verified
//!   revocation for that id: a verified revocation is immutable, never replaced, merged field
//!   by field or deleted by sync. Anything else is *quarantined*: dropped from the page, logged
//!   with the reason and counted in the sender's peer row (`quarantined`, shown by `peers` and
//!   `status`). The rest of the page is still taken, so one bad record cannot block a laptop's
//!   data for good.
//! - A change to the replicated table of hold decisions (`fs_hold_decisions`, the coordinator's
//!   approvals and rejections of held mass deletes, `store/held.rs`) is admitted by the same
//!   rules: whole, live, CA-signed over a body naming its own record id, immutable once
//!   verified. So one member, tampered or not, cannot approve deletes for everyone.
//! - Without a credential (plaintext) no revocation or hold decision is accepted at all.
//! - Changes written by a revoked instance after its revocation are dropped.

use crate::change::RemoteChange;
use crate::mesh;
use crate::store::Store;
use crate::tls::Transport;
use std::collections::HashMap;
use tracing::warn;
use uuid::Uuid;

/// What admission removed from a page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// Changes dropped because a revoked instance wrote them after its revocation.
    pub revoked_writes: usize,
    /// Records dropped because they failed validation (see the module doc).
    pub quarantined: usize,
}

/// Why a signed record (a revocation or a hold decision) is not taken, or `None` if it is.
fn signed_refusal(store: &Store, transport: &Transport, ch: &RemoteChange) -> Option<String> {
    let what = if ch.table == mesh::REVOCATIONS {
        "revocation"
    } else {
        "hold decision"
    };
    let Transport::Tls { identity, .. } = transport else {
        return Some(format!("a {what} is only accepted within a deployment"));
    };
    let s = &ch.state;
    if s.deleted.is_some() || !s.del_seen.is_empty() {
        return Some(format!("a {what} cannot be deleted"));
    }
    if s.fields.is_empty() || s.fields.values().any(|f| f.value.is_none()) {
        return Some(format!("a {what} travels whole: fields are missing"));
    }
    // Whether `fields` verify as this record (the CA's signature, naming this record id).
    let verifies = |fields: &serde_json::Map<String, serde_json::Value>| -> Result<(), String> {
        if ch.table != mesh::REVOCATIONS {
            return mesh::verify_hold_decision(&identity.ca_pem, ch.id, fields)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        match mesh::verify_revocation(&identity.ca_pem, fields) {
            Err(e) => Err(e.to_string()),
            Ok((who, _)) if who != ch.id => Err(format!(
                "the signed revocation of {who} was sent as record {}",
                ch.id
            )),
            Ok(_) => Ok(()),
        }
    };
    let fields = s.live_fields();
    if let Err(e) = verifies(&fields) {
        return Some(e);
    }
    // Immutable once verified: an identical copy is a harmless re-send, anything else is not.
    match store.get(&ch.table, &ch.id) {
        Ok(Some(local)) => {
            let held = local.state.live_fields();
            let verified = verifies(&held).is_ok();
            if verified && !local.state.is_alive() {
                // Deleted before this rule existed: the signed body is still the revocation.
                return Some(format!("a verified {what} is already held (immutable)"));
            }
            if verified && (held != fields || local.state.vv != s.vv) {
                return Some(format!("a verified {what} is already held (immutable)"));
            }
            None
        }
        Ok(None) => None,
        Err(e) => Some(format!("could not read the held {what}: {e}")),
    }
}

/// Admits a page (see the module doc): drops quarantined revocation records and changes a
/// revoked instance wrote after its revocation, logging each, and says how many went.
pub fn admit(store: &Store, transport: &Transport, changes: &mut Vec<RemoteChange>) -> Admitted {
    let mut out = Admitted::default();
    changes.retain_mut(|ch| {
        if !crate::model::is_signed_table(&ch.table) {
            return true;
        }
        match signed_refusal(store, transport, ch) {
            Some(reason) => {
                warn!(table = %ch.table, id = %ch.id, %reason,
                      "quarantined a record from a peer: dropped, the rest of the page is taken");
                out.quarantined += 1;
                false
            }
            None => {
                // Conflicts on a signed record can only be made up; they are not logged.
                ch.conflicts.clear();
                true
            }
        }
    });
    let Transport::Tls { revoked, .. } = transport else {
        return out;
    };
    let all = revoked.all();
    if all.is_empty() {
        return out;
    }
    let cutoff: HashMap<Uuid, u64> = all
        .iter()
        .map(|(id, at)| {
            (
                *id,
                crate::clock::ts_from_millis(at.timestamp_millis().max(0) as u64),
            )
        })
        .collect();
    let before = changes.len();
    changes.retain(|ch| {
        !ch.state
            .vv
            .iter()
            .any(|(node, ts)| cutoff.get(node).is_some_and(|c| ts > c))
    });
    out.revoked_writes = before - changes.len();
    if out.revoked_writes > 0 {
        warn!(
            dropped = out.revoked_writes,
            "refused changes written by revoked instances after their revocation"
        );
    }
    out
}
