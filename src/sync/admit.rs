//! Revocation admission: what of an incoming page this deployment accepts, decided before
//! anything is written.
//!
//! Two rules, both only with a credential (mutual TLS): a change to the replicated revocation
//! table must carry the deployment CA's signature (else the whole page is refused), and changes
//! written by a revoked instance after its revocation are dropped from the page.

use crate::change::RemoteChange;
use crate::mesh;
use crate::protocol::{codes, ProtocolError};
use crate::tls::Transport;
use std::collections::HashMap;
use tracing::warn;
use uuid::Uuid;

/// Admits a page: revocations must be signed by the deployment CA (else the page is refused);
/// changes written by a revoked instance after its revocation are dropped. Returns how many
/// changes were dropped.
pub fn admit(
    transport: &Transport,
    changes: &mut Vec<RemoteChange>,
) -> Result<usize, ProtocolError> {
    let invalid = |m: String| ProtocolError::new(codes::INVALID_PAGE, m);
    for ch in changes.iter().filter(|c| c.table == mesh::REVOCATIONS) {
        let Transport::Tls { identity, .. } = transport else {
            return Err(invalid(
                "revocations are only accepted within a deployment".into(),
            ));
        };
        if ch.state.deleted.is_some() {
            return Err(invalid("a revocation cannot be deleted".into()));
        }
        mesh::verify_revocation(&identity.ca_pem, &ch.state.live_fields())
            .map_err(|e| invalid(format!("page refused: {e}")))?;
    }
    let Transport::Tls { revoked, .. } = transport else {
        return Ok(0);
    };
    let all = revoked.all();
    if all.is_empty() {
        return Ok(0);
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
    let dropped = before - changes.len();
    if dropped > 0 {
        warn!(
            dropped,
            "refused changes written by revoked instances after their revocation"
        );
    }
    Ok(dropped)
}
