//! Incarnations: which life of an instance this data directory is living, and what it may have
//! lost of its own past.
//!
//! An instance id lives as long as its credential; a data directory that is restored from a
//! backup, rolled back (VM snapshot, lost log tail, a directory copied back) or copied to a
//! second laptop starts a new *incarnation*: a random id, ordered by `since`, naming its
//! predecessor. Peers see it in `hello` and (see `sync::receive::note_hello`):
//! - a newer incarnation (larger `since`, with a parent) is a restore: they forget what they
//!   believed the instance holds (echo suppression, its feed position) and send everything;
//! - an older or retired one appearing again, or a fresh one (no parent) while another is
//!   known, means two data directories share one identity: both are refused from then on.
//!
//! After a new incarnation begins, this instance's own events in `(lo, hi]` may be missing
//! (`missing`): it claims only `lo` of itself in its knowledge until a completed sync brings a
//! peer's knowledge of it past `hi`, and its clock is moved past `hi` so no stamp is reused.
//!
//! | key (see `keys.rs`)  | value (rmp-serde, named) | written                                  |
//! |----------------------|--------------------------|------------------------------------------|
//! | `M` `lineage`        | [`Lineage`]              | with every batch (it is writer state)    |
//! | `M` `forked`         | `[(table, id, own ts)]`  | by a restore; removed once rewritten     |
//!
//! `Lineage = { current: Incarnation {id, since, parent}, dir_key: [dev, inode, born] | nil,
//!              missing: (lo, hi) | nil }`.
//!
//! `forked` lists records whose newest own event only the restored backup held although this
//! directory had issued later own stamps (a write made on a line of its history that was
//! rolled back before any peer got it): once `missing` closes, those still at that event are
//! written again with fresh stamps (`Store::rewrite_forked`), since peers' knowledge already
//! covers the old stamp. A backup's own `lineage` is honoured by a restore: it claims only
//! what that lineage held.

use serde::{Deserialize, Serialize};
use std::path::Path;
use uuid::Uuid;

pub use crate::model::Incarnation;

/// This data directory's incarnation and what it may be missing of its own events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The current incarnation.
    pub current: Incarnation,
    /// The database directory's [`DirKey`] when the incarnation began: a copy of the data
    /// directory has another, so it starts a new incarnation when opened.
    pub dir_key: Option<DirKey>,
    /// Own events with `lo < ts <= hi` may be missing here (after a restore or rollback).
    pub missing: Option<(u64, u64)>,
}

impl Lineage {
    /// A fresh data directory's lineage.
    pub fn fresh(now_ms: u64, dir_key: Option<DirKey>) -> Self {
        Self {
            current: Incarnation {
                id: Uuid::new_v4(),
                since: now_ms,
                parent: None,
            },
            dir_key,
            missing: None,
        }
    }

    /// Begins the next incarnation: own events after `held` up to `issued` may be missing.
    /// Pure apart from the random id.
    pub fn successor(&self, now_ms: u64, held: u64, issued: u64, dir_key: Option<DirKey>) -> Self {
        let (lo, hi) = match self.missing {
            Some((lo, hi)) => (lo.min(held), hi.max(issued)),
            None => (held, issued),
        };
        Self {
            current: Incarnation {
                id: Uuid::new_v4(),
                since: now_ms.max(self.current.since + 1),
                parent: Some(self.current.id),
            },
            dir_key,
            missing: (lo < hi).then_some((lo, hi)),
        }
    }

    /// What this instance claims of its own events in its knowledge: everything up to
    /// `own_last` unless some may be missing, then only the events up to `lo`.
    pub fn own_claim(&self, own_last: u64) -> u64 {
        match self.missing {
            Some((lo, _)) => lo,
            None => own_last,
        }
    }

    /// A peer that had every one of our events up to `peer_has` sent us all it had: raise
    /// `lo`, and once it reaches `hi` nothing is missing any more. Returns the stamp up to
    /// which every own event is now held, when that closed the gap (the caller raises its
    /// newest-own-event mark to it, so the claim does not fall back).
    pub fn refetched(&mut self, peer_has: u64) -> Option<u64> {
        let (lo, hi) = self.missing?;
        let lo = lo.max(peer_has);
        self.missing = (lo < hi).then_some((lo, hi));
        self.missing.is_none().then_some(hi)
    }
}

/// What tells one database directory from a copy of it: `[device, inode, birth time in
/// nanoseconds (0 where the file system keeps none)]`. The birth time matters: a directory
/// deleted and copied back often gets the freed inode number again.
pub type DirKey = [u64; 3];

/// The [`DirKey`] of a directory, if it can be read.
pub fn dir_key(dir: &Path) -> Option<DirKey> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir).ok()?;
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    Some([m.dev(), m.ino(), born])
}

/// How a peer's hello incarnation relates to the one we knew (see [`judge`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The same incarnation (or the first one we see).
    Known,
    /// A successor: the instance was restored or rolled back; resend everything.
    Newer,
    /// Two data directories use one instance id; the reason names what was seen.
    Duplicate(String),
}

/// Judges the incarnation a peer shows against what we knew of it: `known` (the latest seen)
/// and `retired` (earlier ones it moved on from). Pure.
pub fn judge(known: Option<&Incarnation>, retired: &[Uuid], seen: &Incarnation) -> Verdict {
    let Some(k) = known else {
        return Verdict::Known;
    };
    if k.id == seen.id {
        return Verdict::Known;
    }
    if retired.contains(&seen.id) {
        return Verdict::Duplicate(format!(
            "incarnation {} came back after its successor {} was seen: both are active",
            seen.id, k.id
        ));
    }
    if seen.parent.is_none() {
        return Verdict::Duplicate(format!(
            "a second data directory (incarnation {}, not a restore) appeared while {} is known",
            seen.id, k.id
        ));
    }
    if seen.since <= k.since {
        return Verdict::Duplicate(format!(
            "incarnation {} is not newer than {}, which is already active",
            seen.id, k.id
        ));
    }
    Verdict::Newer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(since: u64, parent: Option<Uuid>) -> Incarnation {
        Incarnation {
            id: Uuid::new_v4(),
            since,
            parent,
        }
    }

    #[test]
    fn a_restore_moves_forward_and_an_old_or_fresh_incarnation_is_a_duplicate() {
        let first = inc(10, None);
        assert_eq!(judge(None, &[], &first), Verdict::Known);
        assert_eq!(judge(Some(&first), &[], &first), Verdict::Known);
        let restored = inc(20, Some(first.id));
        assert_eq!(judge(Some(&first), &[], &restored), Verdict::Newer);
        // The original running on after the restore: it was retired.
        assert!(matches!(
            judge(Some(&restored), &[first.id], &first),
            Verdict::Duplicate(_)
        ));
        // One credential given to `init --mesh` on a second laptop.
        assert!(matches!(
            judge(Some(&first), &[], &inc(30, None)),
            Verdict::Duplicate(_)
        ));
        // Not newer than the active one.
        assert!(matches!(
            judge(Some(&restored), &[first.id], &inc(15, Some(first.id))),
            Verdict::Duplicate(_)
        ));
    }

    #[test]
    fn a_successor_claims_only_what_it_holds_until_a_peer_brings_the_rest() {
        let l = Lineage::fresh(5, None);
        assert_eq!(l.own_claim(100), 100);
        let mut s = l.successor(4, 40, 100, None);
        assert!(s.current.since > l.current.since, "always moves forward");
        assert_eq!(s.current.parent, Some(l.current.id));
        assert_eq!(s.own_claim(200), 40);
        assert_eq!(s.refetched(70), None);
        assert_eq!(s.own_claim(200), 70);
        assert_eq!(s.refetched(100), Some(100));
        assert_eq!(s.missing, None);
        assert_eq!(s.own_claim(200), 200);
        // A second restore before the first was refetched keeps the wider gap.
        let t = s.successor(9, 30, 50, None).successor(9, 60, 80, None);
        assert_eq!(t.missing, Some((30, 80)));
    }
}
