//! Which peers are online: the one truth `peers`, `status` and the console show, kept in
//! memory by the agent process (never on disk, so a restarted agent starts with everyone
//! offline and a crash cannot leave a stale "online" behind).
//!
//! A peer is online while any of these holds:
//! - mDNS discovery sees it (until it is lost);
//! - a session with it is in flight, whoever started it ([`crate::progress`]);
//! - it was in contact (a session finished, or it said hello or notified us) within the last
//!   [`FRESH`], and no attempt to reach it failed since.
//!
//! So a static peer is online while it answers and mid-session, and offline after a failed
//! attempt or [`FRESH`] of silence. Revoked laptops are filtered out by the application layer
//! (`app`), which knows the revocations; this module knows only contacts.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a contact keeps a peer online without discovery or a session: a few periodic
/// sync intervals (60 s by default), so one missed round does not flap the state.
pub const FRESH: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Seen {
    discovered: bool,
    contact: Option<Instant>,
    /// True when the last attempt to reach it failed after the last contact.
    failed: bool,
}

fn map() -> std::sync::MutexGuard<'static, HashMap<Uuid, Seen>> {
    static M: OnceLock<Mutex<HashMap<Uuid, Seen>>> = OnceLock::new();
    M.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// mDNS found (`true`) or lost (`false`) the peer.
pub fn discovered(peer: Uuid, yes: bool) {
    map().entry(peer).or_default().discovered = yes;
}

/// The peer answered or spoke to us: a finished session, a hello, a notify.
pub fn contact(peer: Uuid) {
    let mut m = map();
    let e = m.entry(peer).or_default();
    e.contact = Some(Instant::now());
    e.failed = false;
}

/// An attempt to reach the peer failed at the transport (refused, timed out, unreachable).
pub fn unreachable(peer: Uuid) {
    map().entry(peer).or_default().failed = true;
}

/// True while the peer counts as online (see the module doc).
pub fn is_online(peer: &Uuid) -> bool {
    if crate::progress::in_session_with(peer) {
        return true;
    }
    map().get(peer).is_some_and(|s| {
        s.discovered || (!s.failed && s.contact.is_some_and(|t| t.elapsed() < FRESH))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_makes_online_and_a_failed_attempt_offline() {
        let p = Uuid::new_v4();
        assert!(!is_online(&p), "never seen");
        contact(p);
        assert!(is_online(&p));
        unreachable(p);
        assert!(!is_online(&p), "the last attempt failed");
        discovered(p, true);
        assert!(is_online(&p), "mDNS sees it");
        discovered(p, false);
        assert!(!is_online(&p));
        contact(p);
        assert!(is_online(&p), "answered again");
    }
}
