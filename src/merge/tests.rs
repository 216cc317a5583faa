//! One small readable case per merge rule (the numbered rules are in ARCHITECTURE.md).

use super::*;
use crate::clock::Clock;
use serde_json::json;
use uuid::Uuid;

/// Both replicas receive the other's state as it was before the exchange (one sync session).
fn exchange(a: &mut Replica, b: &mut Replica) -> (MergeOutcome, MergeOutcome) {
    let (sa, sb) = (a.state.clone().unwrap(), b.state.clone().unwrap());
    (a.recv_state(sb), b.recv_state(sa))
}

/// One replica's copy of a single record, with its own clock.
struct Replica {
    clock: Clock,
    state: Option<RecordState>,
    wall: u64,
}

impl Replica {
    fn new(n: u128) -> Self {
        Self {
            clock: Clock::new(Uuid::from_u128(n), 0),
            state: None,
            wall: 1_000,
        }
    }

    fn edit(&mut self, e: Edit) -> Option<LocalOutcome> {
        self.wall += 10;
        let at = self.clock.tick(self.wall);
        let out = local_edit(self.state.as_ref(), &e, at).expect("edit applies");
        if let Some(o) = &out {
            self.state = Some(o.state.clone());
        }
        out
    }

    fn put(&mut self, v: serde_json::Value) {
        self.edit(Edit::Put(v.as_object().unwrap().clone()));
    }

    fn patch(&mut self, v: serde_json::Value) {
        self.edit(Edit::Patch(v.as_object().unwrap().clone()));
    }

    fn recv(&mut self, from: &Replica) -> MergeOutcome {
        self.recv_state(from.state.clone().unwrap())
    }

    fn recv_state(&mut self, remote: RecordState) -> MergeOutcome {
        self.clock.observe(remote.max_ts());
        let out = merge_remote(self.state.as_ref(), &remote);
        self.state = Some(out.state.clone());
        out
    }

    fn fields(&self) -> serde_json::Value {
        serde_json::Value::Object(self.state.as_ref().unwrap().live_fields())
    }

    fn alive(&self) -> bool {
        self.state.as_ref().unwrap().is_alive()
    }
}

#[test]
fn rule1_unknown_record_is_inserted_with_its_stamps() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"name": "Amina", "age": 30}));
    let out = b.recv(&a);
    assert_eq!(out.kind, MergeKind::Insert);
    assert_eq!(b.state, a.state, "same fields, same stamps, same origin");
}

#[test]
fn rule2_change_that_saw_every_local_change_fast_forwards() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"name": "Amina", "status": "missing"}));
    b.recv(&a);
    b.patch(json!({"status": "found_alive"}));
    let out = a.recv(&b);
    assert_eq!(out.kind, MergeKind::FastForward);
    assert!(out.conflicts.is_empty());
    assert_eq!(
        a.fields(),
        json!({"name": "Amina", "status": "found_alive"})
    );
}

#[test]
fn rule3_old_or_duplicate_changes_are_no_ops_in_any_order() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"v": 1}));
    let old = Replica {
        state: a.state.clone(),
        clock: Clock::new(Uuid::from_u128(9), 0),
        wall: 0,
    };
    a.patch(json!({"v": 2}));
    b.recv(&a);
    assert_eq!(b.recv(&a).kind, MergeKind::NoOp, "same change twice");
    assert_eq!(b.recv(&old).kind, MergeKind::NoOp, "older change");
    assert_eq!(b.fields(), json!({"v": 2}));
    // Reversed order gives the same state.
    let mut c = Replica::new(3);
    c.recv(&old);
    c.recv(&a);
    assert_eq!(c.state, b.state);
}

#[test]
fn rule4_concurrent_edits_of_different_fields_merge_without_conflict() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"name": "Wei", "status": "missing", "notes": ""}));
    b.recv(&a);
    a.patch(json!({"status": "sighted"}));
    b.patch(json!({"notes": "near the market"}));
    let (on_a, on_b) = exchange(&mut a, &mut b);
    assert_eq!(on_a.kind, MergeKind::Merge);
    assert_eq!(on_b.kind, MergeKind::Merge);
    assert!(on_a.conflicts.is_empty() && on_b.conflicts.is_empty());
    let want = json!({"name": "Wei", "status": "sighted", "notes": "near the market"});
    assert_eq!(a.fields(), want);
    assert_eq!(b.fields(), want);
    assert_eq!(a.state, b.state);
}

#[test]
fn rule4_same_field_concurrently_is_a_logged_conflict_with_the_later_write_chosen() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"status": "missing"}));
    b.recv(&a);
    a.patch(json!({"status": "sighted"}));
    b.wall += 100; // b writes later in wall time
    b.patch(json!({"status": "found_alive"}));
    let (on_a, on_b) = exchange(&mut a, &mut b);
    assert_eq!(a.state, b.state, "both sides choose the same result");
    assert_eq!(a.fields(), json!({"status": "found_alive"}));
    for (out, chosen) in [(&on_a, Side::Remote), (&on_b, Side::Local)] {
        assert_eq!(out.conflicts.len(), 1);
        match &out.conflicts[0] {
            Conflict::Field {
                field,
                chosen: c,
                local,
                remote,
                ..
            } => {
                assert_eq!(field, "status");
                assert_eq!(*c, chosen);
                // The losing value is kept in the log.
                let vals = [local.value.clone(), remote.value.clone()];
                assert!(vals.contains(&Some(json!("sighted"))));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The loser is in a's history too: a's own revision wrote "sighted".
}

#[test]
fn rule4_equal_clocks_tie_break_by_instance_id() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"x": 0}));
    b.recv(&a);
    // Force identical ts on both sides.
    let ts = a.clock.last().max(b.clock.last()) + 5;
    a.clock = Clock::new(Uuid::from_u128(1), ts);
    b.clock = Clock::new(Uuid::from_u128(2), ts);
    a.wall = 0;
    b.wall = 0;
    a.patch(json!({"x": "from a"}));
    b.patch(json!({"x": "from b"}));
    let out = a.recv(&b);
    b.recv(&a);
    assert_eq!(
        a.fields(),
        json!({"x": "from b"}),
        "higher instance id wins"
    );
    assert_eq!(a.state, b.state);
    assert!(
        matches!(&out.conflicts[0], Conflict::Field { reason, .. } if reason.contains("instance id"))
    );
}

#[test]
fn concurrent_identical_values_are_not_a_conflict() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"s": "missing"}));
    b.recv(&a);
    a.patch(json!({"s": "found"}));
    b.patch(json!({"s": "found"}));
    assert!(a.recv(&b).conflicts.is_empty());
    assert!(b.recv(&a).conflicts.is_empty());
    assert_eq!(a.state, b.state);
}

#[test]
fn rule5_delete_of_an_untouched_copy_is_applied() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"name": "Omar"}));
    b.recv(&a);
    a.edit(Edit::Delete);
    let out = b.recv(&a);
    assert!(!b.alive());
    assert!(out.conflicts.is_empty());
}

#[test]
fn rule5_edit_the_deleter_never_saw_wins_on_both_sides_and_is_logged() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"name": "Omar", "status": "missing"}));
    b.recv(&a);
    a.edit(Edit::Delete);
    b.patch(json!({"status": "found_alive"}));
    let (on_a, on_b) = exchange(&mut a, &mut b);
    assert!(a.alive() && b.alive());
    assert_eq!(a.state, b.state);
    assert_eq!(a.fields(), json!({"name": "Omar", "status": "found_alive"}));
    assert!(matches!(
        on_b.conflicts[..],
        [Conflict::DeleteEdit {
            deleted_on: Side::Remote,
            ..
        }]
    ));
    assert!(matches!(
        on_a.conflicts[..],
        [Conflict::DeleteEdit {
            deleted_on: Side::Local,
            ..
        }]
    ));
}

#[test]
fn rule5_delete_after_seeing_the_edit_wins() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"n": 1}));
    b.recv(&a);
    b.patch(json!({"n": 2}));
    a.recv(&b);
    a.edit(Edit::Delete);
    let out = b.recv(&a);
    assert!(!b.alive());
    assert!(out.conflicts.is_empty());
}

#[test]
fn rule6_an_older_version_never_resurrects_a_deleted_record() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    let mut c = Replica::new(3);
    a.put(json!({"n": 1}));
    c.recv(&a); // c keeps the old live version
    b.recv(&a);
    b.edit(Edit::Delete);
    let out = b.recv(&c);
    assert!(!b.alive());
    assert_eq!(out.kind, MergeKind::NoOp);
    // And via a third instance: a gets the delete, then the old version from c.
    a.recv(&b);
    a.recv(&c);
    assert!(!a.alive());
}

#[test]
fn put_after_delete_restores_and_that_restore_replicates_without_conflict() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"n": 1}));
    b.recv(&a);
    a.edit(Edit::Delete);
    b.recv(&a);
    let out = a.edit(Edit::Put(json!({"n": 1}).as_object().unwrap().clone()));
    assert_eq!(out.unwrap().revision.kind, RevisionKind::Restore);
    let on_b = b.recv(&a);
    assert!(b.alive());
    assert!(on_b.conflicts.is_empty(), "{:?}", on_b.conflicts);
}

#[test]
fn writing_the_value_a_field_already_has_is_no_change() {
    let mut a = Replica::new(1);
    a.put(json!({"a": 1, "b": "x"}));
    assert!(a
        .edit(Edit::Put(
            json!({"a": 1, "b": "x"}).as_object().unwrap().clone()
        ))
        .is_none());
    assert!(a
        .edit(Edit::Patch(json!({"a": 1}).as_object().unwrap().clone()))
        .is_none());
    let out = a
        .edit(Edit::Put(
            json!({"a": 1, "b": "y"}).as_object().unwrap().clone(),
        ))
        .unwrap();
    assert_eq!(
        out.touched,
        vec!["b".to_string()],
        "only the changed field gets a new stamp"
    );
}

#[test]
fn put_replaces_and_patch_null_removes() {
    let mut a = Replica::new(1);
    a.put(json!({"a": 1, "b": 2}));
    a.put(json!({"a": 1, "c": 3}));
    assert_eq!(a.fields(), json!({"a": 1, "c": 3}));
    a.patch(json!({"c": null, "d": 4}));
    assert_eq!(a.fields(), json!({"a": 1, "d": 4}));
}

#[test]
fn patch_or_delete_of_missing_or_deleted_records_is_refused() {
    let at = Clock::new(Uuid::from_u128(1), 0).tick(1);
    let patch = Edit::Patch(Default::default());
    assert_eq!(local_edit(None, &patch, at), Err(EditError::NotFound));
    let mut a = Replica::new(1);
    a.put(json!({"a": 1}));
    a.edit(Edit::Delete);
    assert_eq!(
        local_edit(a.state.as_ref(), &Edit::Delete, at),
        Err(EditError::Deleted)
    );
}

#[test]
fn removal_replicates_and_wins_over_an_older_value() {
    let mut a = Replica::new(1);
    let mut b = Replica::new(2);
    a.put(json!({"a": 1, "b": 2}));
    b.recv(&a);
    a.patch(json!({"b": null}));
    b.recv(&a);
    assert_eq!(b.fields(), json!({"a": 1}));
}
