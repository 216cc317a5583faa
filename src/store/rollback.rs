//! Rollbacks nobody announced, told by records rather than by knowledge.
//!
//! A data directory copied back from an old image (a lost log tail, a VM snapshot, a stick)
//! lost own events that peers may hold. `note_self_claim` tells that from a peer's knowledge
//! while the claim falls inside the window of the current open; once the laptop has written
//! newer events and a peer that never had the lost ones adopted its newer claim, knowledge can
//! no longer tell (issue #19, seed 47514). Records can: an instance always holds its own latest
//! event on every record it wrote (`vv[me]`), so a peer's copy of a record carrying an own
//! event newer than ours proves this directory lost it. Every page merged from a peer (a
//! session's pages and the records an anti-entropy exchange moves) is checked for that in
//! `merge_changes`; a loss outside what the lineage already knows to be missing starts a new
//! incarnation (`Store::note_lost_own`), logged with the reason, so every peer resends what
//! this laptop lacks.
//!
//! To find such records at all, the first session with each peer after the database was
//! opened, and after any incarnation change this laptop learns of (its own, or a peer's new
//! incarnation or rollback seen in `hello`), also compares records by range reconciliation
//! (`sync::session`): which peers were compared since is kept in memory ([`Checked`]), so a
//! restarted agent compares again. Nothing here is written to disk but the new incarnation.

use super::{Incarnation, Store, StoreError};
use crate::model::RecordState;
use std::collections::HashSet;
use std::sync::Mutex;
use uuid::Uuid;

/// Peers whose records were compared with ours since the database was opened or since the
/// last incarnation change this laptop learned of (memory only).
#[derive(Default)]
pub(crate) struct Checked(Mutex<HashSet<Uuid>>);

impl Checked {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Own events an incoming page carried that this directory did not hold: stamps from `first`
/// to `last`, one record among them named for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LostOwn {
    /// The oldest own stamp seen missing here.
    pub(crate) first: u64,
    /// The newest own stamp seen missing here.
    pub(crate) last: u64,
    /// A record that carried one (table, id).
    pub(crate) record: (String, Uuid),
}

impl LostOwn {
    /// The own events of `me` that `incoming` carries and `held` (our copy of the record, if
    /// any) lacks. Pure. `vv[me]` is our latest event on the record, and we hold it as long as
    /// this directory was not rolled back; the oldest lost stamp is the oldest own field write
    /// or delete past our `vv[me]` (or `vv[me]` itself when a later write replaced them).
    pub(crate) fn of(
        me: &Uuid,
        held: Option<&RecordState>,
        incoming: &RecordState,
        table: &str,
        id: Uuid,
    ) -> Option<Self> {
        let ours = held.and_then(|h| h.vv.get(me).copied()).unwrap_or(0);
        let theirs = incoming.vv.get(me).copied().filter(|t| *t > ours)?;
        let first = incoming
            .fields
            .values()
            .map(|f| f.stamp)
            .chain(incoming.deleted)
            .filter(|h| h.node == *me && h.ts > ours)
            .map(|h| h.ts)
            .min()
            .unwrap_or(theirs);
        Some(Self {
            first: first.min(theirs),
            last: theirs,
            record: (table.to_string(), id),
        })
    }

    /// Widens `acc` by `other` (the record named stays the first one found).
    pub(crate) fn join(acc: &mut Option<Self>, other: Self) {
        match acc {
            Some(a) => {
                a.first = a.first.min(other.first);
                a.last = a.last.max(other.last);
            }
            None => *acc = Some(other),
        }
    }
}

impl Store {
    /// True if this session with `peer` should also compare records (range reconciliation):
    /// not done yet since the database was opened or since an incarnation changed.
    pub fn rollback_check_due(&self, peer: &Uuid) -> bool {
        !self.checked.lock().contains(peer)
    }

    /// Records that this laptop's records were compared with `peer`'s.
    pub fn rollback_checked(&self, peer: Uuid) {
        self.checked.lock().insert(peer);
    }

    /// An incarnation changed (ours, or a peer's new incarnation or rollback was seen): compare
    /// records with every peer once more, since some may now hold what others lack.
    pub fn forget_rollback_checks(&self) {
        self.checked.lock().clear();
    }

    /// A page from `peer` (called `name`) carried own events this directory did not hold. Unless
    /// the lineage already knows them missing (a restore being refetched), this directory was
    /// rolled back: a new incarnation starts, logged with the reason, claiming only the own
    /// events held for sure, so every peer sends back what it holds after that. Returns the new
    /// incarnation, if one started.
    pub(super) fn note_lost_own(
        &self,
        peer: &Uuid,
        name: &str,
        lost: &LostOwn,
    ) -> Result<Option<Incarnation>, StoreError> {
        let mut w = self.lock();
        if let Some((lo, hi)) = w.lineage.missing {
            if lost.first > lo && lost.last <= hi {
                return Ok(None);
            }
        }
        // Held for sure: the own events up to what the opened state had, what we claim, and
        // anything older than the oldest one found missing.
        let held = w
            .opened
            .0
            .min(w.lineage.own_claim(w.own_last))
            .min(lost.first.saturating_sub(1));
        let at = crate::clock::millis_to_time(lost.last >> 16);
        let reason = format!(
            "this laptop was rolled back (its data directory was restored from an image, a VM \
             snapshot or an old copy): peer {name} ({peer}) holds writes this laptop made up to \
             {} (record {}/{} among them) that it no longer had; peers will send them back",
            at.format("%Y-%m-%d %H:%M:%S UTC"),
            lost.record.0,
            lost.record.1
        );
        self.start_incarnation_locked(&mut w, &reason, held, lost.last)
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Hlc;
    use crate::model::FieldState;

    fn state(
        fields: &[(&str, u64, Uuid)],
        vv: &[(Uuid, u64)],
        deleted: Option<Hlc>,
    ) -> RecordState {
        RecordState {
            fields: fields
                .iter()
                .map(|(f, ts, node)| {
                    (
                        f.to_string(),
                        FieldState {
                            value: Some(serde_json::json!(1)),
                            stamp: Hlc {
                                ts: *ts,
                                node: *node,
                            },
                        },
                    )
                })
                .collect(),
            vv: vv.iter().copied().collect(),
            del_seen: Default::default(),
            deleted,
        }
    }

    #[test]
    fn an_own_event_newer_than_ours_is_lost_and_others_events_are_not() {
        let (me, other) = (Uuid::new_v4(), Uuid::new_v4());
        let id = Uuid::new_v4();
        // We never had the record; a peer holds our write at 10 and our edit at 20.
        let theirs = state(&[("a", 10, me), ("b", 20, me)], &[(me, 20)], None);
        let l = LostOwn::of(&me, None, &theirs, "t", id).unwrap();
        assert_eq!((l.first, l.last), (10, 20));
        // We hold our write at 10: only the edit at 20 is lost.
        let ours = state(&[("a", 10, me)], &[(me, 10)], None);
        let l = LostOwn::of(&me, Some(&ours), &theirs, "t", id).unwrap();
        assert_eq!((l.first, l.last), (20, 20));
        // Our delete at 30, lost: told by the delete stamp.
        let gone = state(
            &[("a", 10, me)],
            &[(me, 30)],
            Some(Hlc { ts: 30, node: me }),
        );
        let l = LostOwn::of(&me, Some(&ours), &gone, "t", id).unwrap();
        assert_eq!((l.first, l.last), (30, 30));
        // Someone else's newer write, or an older copy of ours: nothing of ours is lost.
        let edited = state(&[("a", 40, other)], &[(me, 10), (other, 40)], None);
        assert_eq!(LostOwn::of(&me, Some(&ours), &edited, "t", id), None);
        assert_eq!(LostOwn::of(&me, Some(&theirs), &ours, "t", id), None);
        // Our lost write was overwritten by another's: told by vv alone.
        let over = state(&[("a", 50, other)], &[(me, 25), (other, 50)], None);
        let l = LostOwn::of(&me, Some(&ours), &over, "t", id).unwrap();
        assert_eq!((l.first, l.last), (25, 25));
        let mut acc = None;
        LostOwn::join(&mut acc, LostOwn::of(&me, None, &theirs, "t", id).unwrap());
        LostOwn::join(&mut acc, l);
        let acc = acc.unwrap();
        assert_eq!((acc.first, acc.last, acc.record.1), (10, 25, id));
    }
}
