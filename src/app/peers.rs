//! Sync and verify with a peer named by instance id, display name or address.

use super::{App, AppError};
use crate::store::PeerRow;
use crate::sync::{SessionReport, SyncError, TableCheck};
use crate::tls::Transport;
use uuid::Uuid;

fn sync_error(e: SyncError) -> AppError {
    match e {
        SyncError::Store(e) => e.into(),
        other => AppError::Peer(other.to_string()),
    }
}

/// An address that is not a known peer's name must be HOST:PORT: say which part is missing
/// instead of letting the HTTP client try port 80 or a DNS lookup of a mistyped name.
fn check_address(peer: &str) -> Result<(), AppError> {
    let host = peer
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let has_port = host.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']'))
    });
    if has_port {
        return Ok(());
    }
    let looks_like_host =
        host.parse::<std::net::IpAddr>().is_ok() || host.contains('.') || host == "localhost";
    if looks_like_host {
        Err(AppError::invalid(
            "PEER_ADDRESS",
            "peer",
            format!(
                "{peer} has no port: use HOST:PORT, e.g. {peer}:7437 (the port its \
                 `fieldsync run` listens on)"
            ),
        ))
    } else {
        Err(AppError::NotFound {
            field: Some("peer".into()),
            code: "PEER_NOT_FOUND",
            message: format!(
                "no known peer is named {peer:?}, and it is not an address: use a name from \
                 `fieldsync peers` or HOST:PORT"
            ),
        })
    }
}

/// Whether `peer` could be an address rather than a laptop's name: it has a port, or looks
/// like a host (an IP, a dotted name, `localhost`).
fn looks_like_address(peer: &str) -> bool {
    let host = peer
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    host.contains(':')
        || host.contains('.')
        || host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok()
}

/// The known peers a name means: those named exactly so; if none, those whose name differs
/// only in letter case (people type `laptopc` for `laptopC`, and names are chosen by people,
/// not by the program, so case carries no meaning worth an error).
pub fn named_peers<'a>(rows: &'a [PeerRow], name: &str) -> Vec<&'a PeerRow> {
    let name = name.trim();
    let exact: Vec<_> = rows.iter().filter(|r| r.name == name).collect();
    if !exact.is_empty() {
        return exact;
    }
    rows.iter()
        .filter(|r| !r.name.is_empty() && r.name.to_lowercase() == name.to_lowercase())
        .collect()
}

/// What to say after "no known peer is named X": the closest known names (a typo), else the
/// known names, so that nobody has to look an instance id up. Empty names are skipped.
fn name_hint(rows: &[PeerRow], name: &str) -> String {
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    if names.iter().all(|n| n.is_empty()) {
        return ": no peer has synced with this laptop yet; use its instance id or HOST:PORT"
            .into();
    }
    name_hint_among(&names, name)
}

/// [`name_hint`] where only a laptop, not an address, will do (a bundle's recipient, a
/// conflict's side): a laptop never met is named by its instance id, which `fieldsync status`
/// on that laptop shows.
fn instance_hint(rows: &[PeerRow], name: &str) -> String {
    const ID: &str = "use its instance id (`fieldsync status` on that laptop shows it)";
    if rows.iter().all(|r| r.name.is_empty()) {
        return format!(": no laptop is known here by name yet; {ID}");
    }
    format!(
        "{}; for a laptop never met here, {ID}",
        name_hint(rows, name)
    )
}

/// The name in `names` closest to a mistyped `name`, if one is close: Jaro-Winkler ≥ 0.85
/// ignoring case, as clap suggests subcommands with strsim. For laptop names and table names.
pub(crate) fn closest_name<'a>(names: &[&'a str], name: &str) -> Option<&'a str> {
    let lower = name.to_lowercase();
    names
        .iter()
        .map(|n| (strsim::jaro_winkler(&lower, &n.to_lowercase()), *n))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n)
}

/// [`name_hint`] over any list of laptop names (peers, laptops enrolled by this coordinator):
/// `: did you mean "laptopC"?` when one name is close (Jaro-Winkler ≥ 0.85 ignoring case, as
/// clap suggests subcommands with strsim), else `: known laptops are "a", "b"` (at most 8).
pub(crate) fn name_hint_among(names: &[&str], name: &str) -> String {
    let mut names: Vec<&str> = names.iter().copied().filter(|n| !n.is_empty()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return ": no laptop is known here by name; use its instance id".into();
    }
    if let Some(best) = closest_name(&names, name) {
        return format!(": did you mean {best:?}?");
    }
    const SHOWN: usize = 8;
    let mut list = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        list += &format!(" and {} more (`fieldsync peers`)", names.len() - SHOWN);
    }
    format!(": known peers are {list}")
}

/// Two or more peers share a name: the ids tell them apart.
fn ambiguous(peer: &str, named: &[&PeerRow]) -> AppError {
    let ids: Vec<String> = named.iter().map(|r| r.instance.to_string()).collect();
    AppError::invalid(
        "AMBIGUOUS_PEER",
        "peer",
        format!(
            "{} known peers are named {peer:?}: use one of their instance ids ({})",
            named.len(),
            ids.join(", ")
        ),
    )
}

/// The revoked laptop's own message (exit 3): when, why, and the one way back.
pub fn revoked_message(revocation: Option<&(chrono::DateTime<chrono::Utc>, String)>) -> String {
    format!(
        "{}: ask the coordinator for a new credential",
        revoked_fact(revocation)
    )
}

/// The fact of [`revoked_message`] without its advice, for places that give the next step
/// apart (`doctor` and `status`: "… Fix: …").
pub fn revoked_fact(revocation: Option<&(chrono::DateTime<chrono::Utc>, String)>) -> String {
    match revocation {
        Some((at, reason)) => format!(
            "this laptop was revoked by the deployment on {} ({reason})",
            at.format("%Y-%m-%d %H:%M UTC")
        ),
        None => "this laptop was revoked by the deployment (a peer refused its certificate as \
                 revoked)"
            .into(),
    }
}

impl App {
    /// The instance a peer reference names: an instance id, or the display name of exactly one
    /// known peer (from the sync_instance table; see [`named_peers`] for how names match).
    ///
    /// Errors: `PEER_NOT_FOUND` (names the closest known names and lists the others),
    /// `AMBIGUOUS_PEER` (two peers share the name: the instance ids are given).
    pub fn resolve_instance(&self, peer: &str) -> Result<Uuid, AppError> {
        if let Ok(id) = Uuid::parse_str(peer.trim()) {
            return Ok(id);
        }
        // Laptops enrolled here count too (`App::known_rows`): a coordinator resolves a conflict
        // `--keep-from` a laptop it enrolled but never met.
        let rows = self.known_rows()?;
        match named_peers(&rows, peer).as_slice() {
            [one] => Ok(one.instance),
            [] => Err(AppError::NotFound {
                field: Some("peer".into()),
                code: "PEER_NOT_FOUND",
                message: format!(
                    "no known peer is named {peer:?}{}",
                    instance_hint(&rows, peer)
                ),
            }),
            many => Err(ambiguous(peer, many)),
        }
    }

    /// The address to reach a peer at: an instance id or a known peer's name is looked up in
    /// the sync_instance table; anything else is taken as `host:port`.
    ///
    /// Errors: `PEER_NOT_FOUND` as [`App::resolve_instance`], and [`AppError::Peer`] for a
    /// laptop the deployment revoked (when and why: nobody syncs with it any more, so its
    /// address is not worth trying). Revoked laptops are not offered as "did you mean".
    pub fn resolve_peer_addr(&self, peer: &str) -> Result<String, AppError> {
        let by_id = Uuid::parse_str(peer.trim()).ok();
        let revoked = self.revocations();
        let (rows, shut_out): (Vec<PeerRow>, Vec<PeerRow>) = self
            .store
            .peers()?
            .into_iter()
            .partition(|r| !revoked.contains_key(&r.instance));
        let names_revoked = |r: &PeerRow| {
            Some(r.instance) == by_id
                || (!r.name.is_empty() && r.name.to_lowercase() == peer.trim().to_lowercase())
        };
        if let Some(r) = shut_out.iter().find(|r| names_revoked(r)) {
            let who = if r.name.is_empty() {
                format!("laptop {}", r.instance)
            } else {
                r.name.clone()
            };
            return Err(AppError::Peer(format!(
                "{who} was revoked by the deployment on {} ({}): no laptop syncs with it any more",
                revoked[&r.instance].format("%Y-%m-%d %H:%M UTC"),
                self.revocation_reason(&r.instance)
            )));
        }
        let row = match by_id {
            Some(id) => rows.iter().find(|r| r.instance == id),
            None => {
                let named = named_peers(&rows, peer);
                if named.len() > 1 {
                    return Err(ambiguous(peer, &named));
                }
                if named.is_empty() && !looks_like_address(peer) {
                    // A laptop this coordinator enrolled but never met: known by name, but
                    // not where it is.
                    let enrolled = crate::mesh::read_enrolled(self.store.dir()).unwrap_or_default();
                    if let Some(n) = enrolled
                        .values()
                        .find(|n| n.to_lowercase() == peer.trim().to_lowercase())
                    {
                        return Err(AppError::NotFound {
                            field: Some("peer".into()),
                            code: "PEER_NOT_FOUND",
                            message: format!(
                                "{n} was enrolled here but has never synced with this laptop, so \
                                 its address is unknown: give its HOST:PORT instead of its name \
                                 (e.g. 192.0.2.7:7437, the port its `fieldsync run` listens on), \
                                 or let the agents find each other on the network"
                            ),
                        });
                    }
                    return Err(AppError::NotFound {
                        field: Some("peer".into()),
                        code: "PEER_NOT_FOUND",
                        message: format!(
                            "no known peer is named {peer:?}, and it is not an address (HOST:PORT){}",
                            name_hint(&rows, peer)
                        ),
                    });
                }
                named.first().copied()
            }
        };
        match row {
            Some(r) => {
                let addr = Some(r.url.clone())
                    .filter(|u| !u.is_empty())
                    .or_else(|| r.addresses.first().cloned());
                addr.ok_or_else(|| AppError::NotFound {
                    field: Some("peer".into()),
                    code: "PEER_NOT_FOUND",
                    message: format!(
                        "peer {peer} has no known address: pass its HOST:PORT instead"
                    ),
                })
            }
            None if by_id.is_some() => Err(AppError::NotFound {
                field: Some("peer".into()),
                code: "PEER_NOT_FOUND",
                message: format!("instance {peer} is not a known peer: pass its HOST:PORT instead"),
            }),
            None => check_address(peer).map(|()| peer.to_string()),
        }
    }

    /// The transport for a session: the agent's own when inside it, else `given`.
    fn transport(&self, given: Option<Transport>) -> Result<Transport, AppError> {
        match (&self.agent, given) {
            (Some(a), _) if !a.sync_enabled => Err(AppError::Unavailable(
                "sync is off: this laptop has not joined a deployment; join with `fieldsync \
                 init --mesh FILE` and restart the agent"
                    .into(),
            )),
            (Some(a), _) => Ok(a.transport.clone()),
            (None, Some(t)) => Ok(t),
            (None, None) => Err(AppError::Unavailable(
                "no sync transport: run this inside the agent or pass one".into(),
            )),
        }
    }

    /// One sync session with a peer, both directions.
    pub async fn sync(
        &self,
        peer: &str,
        transport: Option<Transport>,
    ) -> Result<SessionReport, AppError> {
        let addr = self.resolve_peer_addr(peer)?;
        let transport = self.transport(transport)?;
        // A revoked laptop is told, not left to read refusals as network trouble: from the
        // signed revocation it holds, or from a peer's `certificate_revoked` alert.
        if let Some(r) = crate::mesh::own_revocation(&self.store) {
            return Err(AppError::Peer(revoked_message(Some(&r))));
        }
        let mut opts = crate::sync::SessionOptions::from_store(&self.store, transport);
        if let Some(a) = &self.agent {
            opts.clients = a.clients.clone();
            // Like the agent's own sessions: the peer learns where to reach us (without it, a
            // peer we synced with by hand could not answer our notifies until it found us).
            opts.url = a.live.sync_url();
        }
        let r = crate::sync::sync_with(self.store.clone(), &addr, &opts)
            .await
            .map_err(|e| {
                crate::sync::note_failure(&self.store, None, &e);
                if e.to_string()
                    .contains(crate::protocol::client::REVOKED_BY_PEER)
                {
                    crate::mesh::note_refused_as_revoked(self.store.dir(), &addr);
                    let own = crate::mesh::own_revocation(&self.store);
                    return AppError::Peer(revoked_message(own.as_ref()));
                }
                sync_error(e)
            })?;
        // A peer that had not heard of the revocation let this session through, and it may
        // have brought the revocation along: the data exchanged stays, the laptop is told.
        if let Some(rev) = crate::mesh::own_revocation(&self.store) {
            return Err(AppError::Peer(revoked_message(Some(&rev))));
        }
        if self.agent.is_some() {
            // Online now: `sync_with` told `presence` (only an agent's process is asked).
            let _ = self.store.update_peer(&r.peer.instance, |row| {
                row.last_seen = Some(chrono::Utc::now());
            });
        }
        Ok(r)
    }

    /// Compares every table with a peer; returns per table whether it is in sync.
    pub async fn verify(
        &self,
        peer: &str,
        transport: Option<Transport>,
    ) -> Result<Vec<TableCheck>, AppError> {
        let addr = self.resolve_peer_addr(peer)?;
        let transport = self.transport(transport)?;
        crate::sync::verify_with(self.store.clone(), &addr, &transport)
            .await
            .map_err(sync_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> PeerRow {
        PeerRow {
            instance: Uuid::new_v4(),
            name: name.into(),
            ..PeerRow::default()
        }
    }

    #[test]
    fn a_name_in_another_letter_case_means_that_peer_unless_one_matches_exactly() {
        let rows = [row("laptopC"), row("laptopB")];
        assert_eq!(named_peers(&rows, "laptopc")[0].instance, rows[0].instance);
        assert_eq!(
            named_peers(&rows, " LAPTOPB ")[0].instance,
            rows[1].instance
        );
        let both = [row("Ann"), row("ann")];
        let exact = named_peers(&both, "ann");
        assert_eq!(exact.len(), 1);
        assert_eq!(exact[0].instance, both[1].instance);
        assert_eq!(named_peers(&both, "ANN").len(), 2, "ambiguous, not a guess");
    }

    #[test]
    fn a_mistyped_name_is_answered_with_the_closest_known_name() {
        let rows = [row("laptopA"), row("laptopC"), row("registry-desk")];
        assert_eq!(name_hint(&rows, "laptpC"), ": did you mean \"laptopC\"?");
        assert_eq!(
            name_hint(&rows, "zebra"),
            ": known peers are \"laptopA\", \"laptopC\", \"registry-desk\""
        );
        assert!(name_hint(&[], "x").contains("no peer has synced"));
        let many: Vec<PeerRow> = (0..10).map(|i| row(&format!("unit{i:02}"))).collect();
        let hint = name_hint(&many, "zebra");
        assert!(hint.ends_with("and 2 more (`fieldsync peers`)"), "{hint}");
    }

    /// Where only a laptop will do (a bundle's recipient), the hint never offers HOST:PORT,
    /// and names the instance id's source for a laptop never met (a newcomer got "use its
    /// instance id or HOST:PORT" from `bundle write --for`).
    #[test]
    fn a_laptop_not_known_by_name_is_named_by_its_instance_id() {
        let empty = instance_hint(&[], "hq");
        assert!(!empty.contains("HOST:PORT"), "{empty}");
        assert!(
            empty.contains("`fieldsync status` on that laptop"),
            "{empty}"
        );
        let rows = [row("laptopB")];
        let known = instance_hint(&rows, "hq");
        assert!(
            known.starts_with(": known peers are \"laptopB\""),
            "{known}"
        );
        assert!(
            known.contains("never met here, use its instance id"),
            "{known}"
        );
    }
}
