//! Convergence of the merge rules under random concurrent edits, deletes and gossip.
//!
//! Part A drives the pure functions (`local_edit`, `merge_remote`) with several replicas and
//! checks every single outcome against an independent event model: each event remembers which
//! events its writer had seen (its causal context), and each replica's copy of a record must be
//! exactly what that set of events implies. Part B runs the same kind of scenario on real sled
//! stores and compares their exports byte for byte.
//!
//! The model is deliberately not written in terms of version vectors: "seen" is a plain set of
//! event ids, so a mistake in how the engine summarises causality shows up as a disagreement.

use fieldsync::clock::{Clock, Hlc};
use fieldsync::config::Config;
use fieldsync::formats::{self, canonical_json};
use fieldsync::merge::conflicts::{fingerprint, superseded_by, unseen_sides};
use fieldsync::merge::{local_edit, merge_remote, Conflict, Edit, EditError, MergeKind, Side};
use fieldsync::model::{FieldState, Fields, RecordState};
use fieldsync::store::{
    ApplyStats, ConflictDetail, LocalOp, OpResult, RemoteChange, Store, StoreError,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{
    Config as RunConfig, FileFailurePersistence, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The independent model
// ---------------------------------------------------------------------------------------------

/// A set of event indices (events of one record are numbered from 0).
#[derive(Clone, Debug, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn insert(&mut self, i: usize) {
        let w = i / 64;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }

    fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| (w >> (i % 64)) & 1 == 1)
    }

    fn union_with(&mut self, other: &Bits) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    fn is_subset(&self, other: &Bits) -> bool {
        self.0
            .iter()
            .enumerate()
            .all(|(i, w)| w & !other.0.get(i).copied().unwrap_or(0) == 0)
    }

    fn same(&self, other: &Bits) -> bool {
        self.is_subset(other) && other.is_subset(self)
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.0.len() * 64).filter(|i| self.contains(*i))
    }
}

/// One local edit that changed something.
#[derive(Clone, Debug)]
struct Event {
    stamp: Hlc,
    delete: bool,
    /// Field values this event wrote (`None`: removed).
    writes: Vec<(String, Option<Value>)>,
    /// Every event of the record its writer had seen when it made this one.
    ctx: Bits,
}

/// All events ever made on one record, on any replica.
#[derive(Clone, Debug, Default)]
struct History {
    events: Vec<Event>,
}

impl History {
    fn add(&mut self, e: Event) -> usize {
        self.events.push(e);
        self.events.len() - 1
    }

    fn by_stamp(&self, s: &Hlc) -> usize {
        self.events
            .iter()
            .position(|e| e.stamp == *s)
            .expect("every stamp in a state belongs to an event")
    }

    /// Events some delete in `seen` had seen, the deletes themselves included.
    fn deleters_saw(&self, seen: &Bits) -> Bits {
        let mut u = Bits::default();
        for i in seen.iter().filter(|i| self.events[*i].delete) {
            u.union_with(&self.events[i].ctx);
            u.insert(i);
        }
        u
    }

    /// Rules 5 and 6, stated without version vectors: alive iff some edit was seen by no delete.
    fn alive(&self, seen: &Bits) -> bool {
        let u = self.deleters_saw(seen);
        seen.iter()
            .any(|i| !self.events[i].delete && !u.contains(i))
    }

    fn has_delete_outside(&self, seen: &Bits, other: &Bits) -> bool {
        seen.iter()
            .any(|i| self.events[i].delete && !other.contains(i))
    }

    /// The state a replica must hold once it has seen exactly `seen`: each field from its latest
    /// write, the latest event per instance, what the deleters saw, the latest delete.
    fn expected(&self, seen: &Bits) -> RecordState {
        let mut s = RecordState::default();
        for i in seen.iter() {
            let e = &self.events[i];
            for (f, v) in &e.writes {
                if s.fields.get(f).is_none_or(|old| old.stamp < e.stamp) {
                    let fs = FieldState {
                        value: v.clone(),
                        stamp: e.stamp,
                    };
                    s.fields.insert(f.clone(), fs);
                }
            }
            let ts = s.vv.entry(e.stamp.node).or_insert(0);
            *ts = (*ts).max(e.stamp.ts);
            if e.delete {
                s.deleted = s.deleted.max(Some(e.stamp));
            }
        }
        for i in self.deleters_saw(seen).iter() {
            let e = &self.events[i];
            let ts = s.del_seen.entry(e.stamp.node).or_insert(0);
            *ts = (*ts).max(e.stamp.ts);
        }
        s
    }
}

/// A small deterministic generator for choices inside one step (subsets, orders, duplicates).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Part A: in-process replicas on the pure merge functions
// ---------------------------------------------------------------------------------------------

const REPLICAS: usize = 5;
/// Few ids, fields and values, so that concurrent writes to the same field and concurrent
/// deletes of the same record are the common case rather than the exception.
const IDS: usize = 8;
const FIELDS: [&str; 4] = ["name", "status", "notes", "tags"];
const VALUES: usize = 5;
const START_MS: u64 = 1_800_000_000_000;

fn value(i: usize) -> Value {
    match i {
        0 => json!("a"),
        1 => json!("b"),
        2 => json!(1),
        3 => json!(2.5),
        _ => json!({"k": [1, "Müller"]}),
    }
}

fn node_id(r: usize) -> Uuid {
    Uuid::from_u128(0xF1E1_D000 + r as u128)
}

#[derive(Clone, Debug)]
enum Step {
    Put {
        r: usize,
        id: usize,
        fields: Vec<(usize, usize)>,
    },
    Patch {
        r: usize,
        id: usize,
        fields: Vec<(usize, Option<usize>)>,
    },
    Delete {
        r: usize,
        id: usize,
    },
    /// One sync session: both sides send a snapshot taken before either receives anything.
    Exchange {
        a: usize,
        b: usize,
        seed: u64,
    },
    /// An old state from the archive turns up again (a slow peer, a retried page).
    Stale {
        to: usize,
        pick: Index,
    },
    Tick {
        ms: u64,
    },
}

#[derive(Clone, Debug)]
struct Scenario {
    /// Per-replica wall clock offset in ms; equal offsets make equal stamps (tie-breaks) likely.
    skews: Vec<i64>,
    steps: Vec<Step>,
    seed: u64,
}

fn step() -> impl Strategy<Value = Step> {
    let r = 0..REPLICAS;
    let id = 0..IDS;
    prop_oneof![
        4 => (r.clone(), id.clone(), prop::collection::vec((0..FIELDS.len(), 0..VALUES), 0..=3))
            .prop_map(|(r, id, fields)| Step::Put { r, id, fields }),
        4 => (
            r.clone(),
            id.clone(),
            prop::collection::vec((0..FIELDS.len(), prop::option::weighted(0.8, 0..VALUES)), 1..=2)
        )
            .prop_map(|(r, id, fields)| Step::Patch { r, id, fields }),
        2 => (r.clone(), id).prop_map(|(r, id)| Step::Delete { r, id }),
        3 => (r.clone(), 1..REPLICAS, any::<u64>()).prop_map(|(a, off, seed)| Step::Exchange {
            a,
            b: (a + off) % REPLICAS,
            seed
        }),
        1 => (r, any::<Index>()).prop_map(|(to, pick)| Step::Stale { to, pick }),
        2 => (0..=20u64).prop_map(|ms| Step::Tick { ms }),
    ]
}

fn scenario(steps: std::ops::Range<usize>) -> impl Strategy<Value = Scenario> {
    let skew = prop::sample::select(vec![0i64, 0, 0, -1_500, 40, 7_000, 3_600_000]);
    (
        prop::collection::vec(skew, REPLICAS),
        prop::collection::vec(step(), steps),
        any::<u64>(),
    )
        .prop_map(|(skews, steps, seed)| Scenario { skews, steps, seed })
}

/// A record state as it was on some replica at some moment, with the events it reflects.
#[derive(Clone, Debug)]
struct Snap {
    id: usize,
    state: RecordState,
    seen: Bits,
    /// The sender's open conflicts on the record, reported with it (as pages carry them).
    reported: Vec<Conflict>,
}

/// One replica's conflict log for one record: by fingerprint, the conflict and whether it is
/// settled.
type Log = BTreeMap<[u8; 32], (Conflict, bool)>;

fn open_conflicts(log: Option<&Log>) -> Vec<Conflict> {
    log.into_iter()
        .flat_map(|l| l.values())
        .filter(|(_, settled)| !settled)
        .map(|(c, _)| c.clone())
        .collect()
}

/// The store's supersession pass: every field conflict not resolved by a person is re-judged
/// against the record's state and log; returns how many became settled.
fn supersede(log: &mut Log, state: &RecordState) -> u64 {
    let known: Vec<Conflict> = log.values().map(|(c, _)| c.clone()).collect();
    let mut n = 0;
    for (c, settled) in log.values_mut() {
        let now = superseded_by(c, state, &known).is_some();
        n += u64::from(now && !*settled);
        *settled = now;
    }
    n
}

struct Replica {
    clock: Clock,
    skew: i64,
    recs: BTreeMap<usize, (RecordState, Bits)>,
    logs: BTreeMap<usize, Log>,
}

impl Replica {
    fn snaps(&self) -> Vec<Snap> {
        self.recs
            .iter()
            .map(|(id, (state, seen))| Snap {
                id: *id,
                state: state.clone(),
                seen: seen.clone(),
                reported: open_conflicts(self.logs.get(id)),
            })
            .collect()
    }

    /// The live records as canonical JSON lines: what an export of this replica would contain.
    fn export(&self) -> String {
        let mut out = String::new();
        for (id, (state, _)) in self.recs.iter().filter(|(_, (s, _))| s.is_alive()) {
            let line = json!({"id": id, "fields": Value::Object(state.live_fields())});
            out.push_str(&canonical_json(&line));
            out.push('\n');
        }
        out
    }
}

/// Counts that show the scenarios actually exercised what they are meant to.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    cases: u64,
    steps: u64,
    edits: u64,
    refused: u64,
    deliveries: u64,
    inserts: u64,
    noops: u64,
    fast_forwards: u64,
    merges: u64,
    field_conflicts: u64,
    tie_breaks: u64,
    delete_edit_conflicts: u64,
    reported_conflicts_logged: u64,
    superseded: u64,
    open_at_end: u64,
    ended_deleted: u64,
    ended_alive_after_delete: u64,
    stale_rechecks: u64,
    commutativity_checks: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.cases += o.cases;
        self.steps += o.steps;
        self.edits += o.edits;
        self.refused += o.refused;
        self.deliveries += o.deliveries;
        self.inserts += o.inserts;
        self.noops += o.noops;
        self.fast_forwards += o.fast_forwards;
        self.merges += o.merges;
        self.field_conflicts += o.field_conflicts;
        self.tie_breaks += o.tie_breaks;
        self.delete_edit_conflicts += o.delete_edit_conflicts;
        self.reported_conflicts_logged += o.reported_conflicts_logged;
        self.superseded += o.superseded;
        self.open_at_end += o.open_at_end;
        self.ended_deleted += o.ended_deleted;
        self.ended_alive_after_delete += o.ended_alive_after_delete;
        self.stale_rechecks += o.stale_rechecks;
        self.commutativity_checks += o.commutativity_checks;
    }
}

struct World {
    reps: Vec<Replica>,
    hist: Vec<History>,
    /// Every state any replica ever held, for stale re-delivery and the final checks.
    archive: Vec<Snap>,
    wall: u64,
    tally: Tally,
}

type Check = Result<(), TestCaseError>;

fn check_state(h: &History, state: &RecordState, seen: &Bits) -> Check {
    let want = h.expected(seen);
    prop_assert_eq!(state, &want, "state differs from what its events imply");
    prop_assert_eq!(
        state.is_alive(),
        h.alive(seen),
        "alive/deleted differs from the event model"
    );
    Ok(())
}

impl World {
    fn new(skews: &[i64]) -> Self {
        World {
            reps: skews
                .iter()
                .enumerate()
                .map(|(r, skew)| Replica {
                    clock: Clock::new(node_id(r), 0),
                    skew: *skew,
                    recs: BTreeMap::new(),
                    logs: BTreeMap::new(),
                })
                .collect(),
            hist: vec![History::default(); IDS],
            archive: Vec::new(),
            wall: START_MS,
            tally: Tally::default(),
        }
    }

    fn local(&mut self, r: usize, id: usize, edit: Edit) -> Check {
        let rep = &mut self.reps[r];
        let h = &mut self.hist[id];
        let at = rep.clock.tick(self.wall.saturating_add_signed(rep.skew));
        let cur = rep.recs.get(&id);
        let alive = cur.map(|(_, seen)| h.alive(seen));
        let is_put = matches!(edit, Edit::Put(_));
        match local_edit(cur.map(|c| &c.0), &edit, at) {
            Err(EditError::NotFound) => {
                prop_assert!(cur.is_none() && !is_put);
                self.tally.refused += 1;
            }
            Err(EditError::Deleted) => {
                prop_assert!(alive == Some(false) && !is_put);
                self.tally.refused += 1;
            }
            Ok(None) => {
                prop_assert!(alive == Some(true) && !matches!(edit, Edit::Delete));
            }
            Ok(Some(out)) => {
                prop_assert_eq!(out.revision.at, at);
                let want: Fields = match &edit {
                    Edit::Put(f) => f.clone(),
                    Edit::Patch(p) => {
                        let mut f = cur.map(|c| c.0.live_fields()).unwrap_or_default();
                        for (k, v) in p {
                            match v {
                                Value::Null => f.remove(k),
                                v => f.insert(k.clone(), v.clone()),
                            };
                        }
                        f
                    }
                    _ => out.state.live_fields(),
                };
                prop_assert_eq!(out.state.live_fields(), want);
                let ctx = cur.map(|c| c.1.clone()).unwrap_or_default();
                let e = h.add(Event {
                    stamp: at,
                    delete: matches!(edit, Edit::Delete),
                    writes: out
                        .revision
                        .changes
                        .iter()
                        .map(|c| (c.field.clone(), c.new.clone()))
                        .collect(),
                    ctx: ctx.clone(),
                });
                let mut seen = ctx;
                seen.insert(e);
                check_state(h, &out.state, &seen)?;
                // A local edit of a field settles its conflicts if this replica had seen both
                // sides (its own state is the writer's context).
                let log = rep.logs.entry(id).or_default();
                self.tally.superseded += supersede(log, &out.state);
                self.archive.push(Snap {
                    id,
                    state: out.state.clone(),
                    seen: seen.clone(),
                    reported: open_conflicts(Some(log)),
                });
                rep.recs.insert(id, (out.state, seen));
                self.tally.edits += 1;
            }
        }
        Ok(())
    }

    /// Delivers one state to a replica; returns whether its copy changed.
    fn deliver(&mut self, to: usize, snap: &Snap) -> Result<bool, TestCaseError> {
        let rep = &mut self.reps[to];
        // As the store does: later local stamps must order after anything received.
        rep.clock.observe(snap.state.max_ts());
        let local = rep.recs.get(&snap.id).cloned();
        let local = local.as_ref();
        let h = &self.hist[snap.id];
        let out = merge_remote(local.map(|l| &l.0), &snap.state);
        let lseen = local.map(|l| l.1.clone()).unwrap_or_default();
        let mut seen = lseen.clone();
        seen.union_with(&snap.seen);
        self.tally.deliveries += 1;

        let kind = match local {
            None => MergeKind::Insert,
            Some(_) if snap.seen.is_subset(&lseen) => MergeKind::NoOp,
            Some(_) if lseen.is_subset(&snap.seen) => MergeKind::FastForward,
            Some(_) => MergeKind::Merge,
        };
        prop_assert_eq!(out.kind, kind);
        match kind {
            // Rules 1 and 2: taken as received, same stamps and origins.
            MergeKind::Insert | MergeKind::FastForward => prop_assert_eq!(&out.state, &snap.state),
            // Rule 3 (and 6: an older copy of a deleted record changes nothing).
            MergeKind::NoOp => prop_assert_eq!(Some(&out.state), local.map(|l| &l.0)),
            MergeKind::Merge => {}
        }
        check_state(h, &out.state, &seen)?;

        // Rule 3: the same state again is a no-op.
        let again = merge_remote(Some(&out.state), &snap.state);
        prop_assert_eq!(again.kind, MergeKind::NoOp);
        prop_assert_eq!(&again.state, &out.state);
        prop_assert!(again.conflicts.is_empty(), "{:?}", again.conflicts);

        self.check_conflicts(local.map(|l| &l.0), &lseen, snap, &seen, &out.conflicts)?;

        let rep = &mut self.reps[to];
        // As the store does: conflicts found by this merge and those reported with the state
        // are logged once each (by the writes involved); a state that changes nothing is still
        // taken when it brings a conflict this replica has not logged.
        let log = rep.logs.entry(snap.id).or_default();
        let known: Vec<Conflict> = log.values().map(|(c, _)| c.clone()).collect();
        let found: Vec<Conflict> = out
            .conflicts
            .iter()
            .cloned()
            .chain(if out.kind == MergeKind::NoOp {
                Vec::new()
            } else {
                unseen_sides(&known, &snap.state, &out.state)
            })
            .filter(|c| !log.contains_key(&fingerprint(c)))
            .collect();
        // As pages do: a record travels with its open conflicts, also to a receiver that has
        // all its writes when conflicts were logged after the receiver's position (sending only
        // to receivers that lack a write does not converge: different laptops log different
        // pairs of the same concurrent writes, depending on the order they met them).
        let reported: Vec<&Conflict> = snap
            .reported
            .iter()
            .filter(|c| !log.contains_key(&fingerprint(c)))
            .collect();
        let changed = out.kind != MergeKind::NoOp || !reported.is_empty() || !found.is_empty();
        if changed {
            self.tally.reported_conflicts_logged += reported.len() as u64;
            for c in found.iter().chain(reported) {
                log.entry(fingerprint(c)).or_insert((c.clone(), false));
            }
            self.tally.superseded += supersede(log, &out.state);
        }
        match out.kind {
            MergeKind::Insert => self.tally.inserts += 1,
            MergeKind::NoOp => self.tally.noops += 1,
            MergeKind::FastForward => self.tally.fast_forwards += 1,
            MergeKind::Merge => self.tally.merges += 1,
        }
        if changed {
            self.archive.push(Snap {
                id: snap.id,
                state: out.state.clone(),
                seen: seen.clone(),
                reported: open_conflicts(rep.logs.get(&snap.id)),
            });
            rep.recs.insert(snap.id, (out.state, seen));
        }
        Ok(changed)
    }

    /// Rules 4 and 5: exactly the conflicts the event model predicts are reported.
    fn check_conflicts(
        &mut self,
        local: Option<&RecordState>,
        lseen: &Bits,
        snap: &Snap,
        seen: &Bits,
        got: &[Conflict],
    ) -> Check {
        let h = &self.hist[snap.id];
        let Some(local) = local else {
            prop_assert!(got.is_empty(), "conflicts on insert: {:?}", got);
            return Ok(());
        };
        // A field changed on both sides: each side's latest write unseen by the other side.
        let mut want_fields = Vec::new();
        for (name, r) in &snap.state.fields {
            let Some(l) = local.fields.get(name) else {
                continue;
            };
            let concurrent =
                !snap.seen.contains(h.by_stamp(&l.stamp)) && !lseen.contains(h.by_stamp(&r.stamp));
            if l.stamp != r.stamp && concurrent && l.value != r.value {
                let chosen = if r.stamp > l.stamp {
                    Side::Remote
                } else {
                    Side::Local
                };
                want_fields.push((name.clone(), l.clone(), r.clone(), chosen));
            }
        }
        let mut got_fields = Vec::new();
        let mut got_deletes = Vec::new();
        for c in got {
            match c {
                Conflict::Field {
                    field,
                    local,
                    remote,
                    chosen,
                    reason,
                } => {
                    let tie = local.stamp.ts == remote.stamp.ts;
                    prop_assert_eq!(tie, reason.contains("instance id"), "{}", reason);
                    self.tally.tie_breaks += u64::from(tie);
                    got_fields.push((field.clone(), local.clone(), remote.clone(), *chosen));
                }
                Conflict::DeleteEdit {
                    deleted,
                    deleted_on,
                    ..
                } => {
                    prop_assert!(h.events[h.by_stamp(deleted)].delete);
                    got_deletes.push(*deleted_on);
                }
            }
        }
        prop_assert_eq!(&got_fields, &want_fields, "field conflicts");
        self.tally.field_conflicts += got_fields.len() as u64;

        // An edit kept the record alive over a delete that had not seen it.
        let alive = h.alive(seen);
        let mut want_deletes = Vec::new();
        if alive && !h.alive(&snap.seen) && h.has_delete_outside(&snap.seen, lseen) {
            want_deletes.push(Side::Remote);
        }
        if alive && !h.alive(lseen) && h.has_delete_outside(lseen, &snap.seen) {
            want_deletes.push(Side::Local);
        }
        prop_assert_eq!(&got_deletes, &want_deletes, "delete-vs-edit conflicts");
        self.tally.delete_edit_conflicts += got_deletes.len() as u64;
        Ok(())
    }

    fn exchange(&mut self, a: usize, b: usize, seed: u64) -> Check {
        let mut rng = Mix(seed);
        let mut queue: Vec<(usize, Snap)> = Vec::new();
        for (from, to) in [(a, b), (b, a)] {
            let mut list: Vec<Snap> = self.reps[from]
                .snaps()
                .into_iter()
                .filter(|_| rng.below(4) != 0)
                .collect();
            for _ in 0..rng.below(3) {
                if !list.is_empty() {
                    let dup = list[rng.below(list.len())].clone();
                    list.push(dup);
                }
            }
            for _ in 0..rng.below(3) {
                if !self.archive.is_empty() {
                    list.push(self.archive[rng.below(self.archive.len())].clone());
                }
            }
            queue.extend(list.into_iter().map(|s| (to, s)));
        }
        rng.shuffle(&mut queue);
        for (to, snap) in &queue {
            self.deliver(*to, snap)?;
        }
        Ok(())
    }

    fn apply(&mut self, step: &Step) -> Check {
        let fields = |v: Vec<(String, Value)>| -> Fields { v.into_iter().collect() };
        match step {
            Step::Put { r, id, fields: f } => {
                let f = fields(
                    f.iter()
                        .map(|(k, v)| (FIELDS[*k].to_string(), value(*v)))
                        .collect(),
                );
                self.local(*r, *id, Edit::Put(f))
            }
            Step::Patch { r, id, fields: f } => {
                let f = fields(
                    f.iter()
                        .map(|(k, v)| (FIELDS[*k].to_string(), v.map_or(Value::Null, value)))
                        .collect(),
                );
                self.local(*r, *id, Edit::Patch(f))
            }
            Step::Delete { r, id } => self.local(*r, *id, Edit::Delete),
            Step::Exchange { a, b, seed } => self.exchange(*a, *b, *seed),
            Step::Stale { to, pick } => {
                if self.archive.is_empty() {
                    return Ok(());
                }
                let snap = self.archive[pick.index(self.archive.len())].clone();
                self.deliver(*to, &snap).map(|_| ())
            }
            Step::Tick { ms } => {
                self.wall += ms;
                Ok(())
            }
        }
    }

    /// Everyone sends everything to everyone until a whole round changes nothing.
    fn gossip_until_quiet(&mut self) -> Check {
        // One round already spreads everything (the last sender has heard from all others);
        // the bound leaves room for a second, silent round and fails loudly if that never comes.
        for _round in 0..=REPLICAS {
            let mut changed = false;
            for a in 0..REPLICAS {
                for b in (0..REPLICAS).filter(|b| *b != a) {
                    for snap in self.reps[a].snaps() {
                        changed |= self.deliver(b, &snap)?;
                    }
                }
            }
            if !changed {
                return Ok(());
            }
        }
        Err(TestCaseError::fail("gossip did not become quiet"))
    }

    fn check_converged(&mut self, seed: u64) -> Check {
        let first = &self.reps[0];
        let ids: Vec<usize> = first.recs.keys().copied().collect();
        let export = first.export();
        for rep in &self.reps[1..] {
            prop_assert_eq!(rep.recs.keys().copied().collect::<Vec<_>>(), ids.clone());
            for id in &ids {
                prop_assert_eq!(&rep.recs[id].0, &first.recs[id].0, "record {}", id);
            }
            prop_assert_eq!(rep.export(), export.clone(), "exports differ");
        }
        // Every replica holds the same open conflicts (by the writes involved).
        let open = |r: &Replica, id: &usize| -> Vec<[u8; 32]> {
            let mut v: Vec<_> = open_conflicts(r.logs.get(id))
                .iter()
                .map(fingerprint)
                .collect();
            v.sort();
            v
        };
        for id in &ids {
            let want = open(first, id);
            self.tally.open_at_end += want.len() as u64;
            for (n, rep) in self.reps.iter().enumerate().skip(1) {
                prop_assert_eq!(
                    open(rep, id),
                    want.clone(),
                    "replica {} holds other open conflicts on record {} than replica 0",
                    n,
                    id
                );
            }
        }
        for (id, h) in self.hist.iter().enumerate() {
            let mut all = Bits::default();
            (0..h.events.len()).for_each(|i| all.insert(i));
            if h.events.is_empty() {
                prop_assert!(!first.recs.contains_key(&id));
                continue;
            }
            let (state, seen) = &first.recs[&id];
            prop_assert!(seen.same(&all), "record {} missed events", id);
            check_state(h, state, &all)?;
            let deleted = h.events.iter().any(|e| e.delete);
            self.tally.ended_deleted += u64::from(!state.is_alive());
            self.tally.ended_alive_after_delete += u64::from(deleted && state.is_alive());
        }

        // Rule 6 (and 3): after convergence no old state changes anything anywhere.
        for snap in &self.archive {
            for rep in &self.reps {
                let cur = &rep.recs[&snap.id].0;
                let out = merge_remote(Some(cur), &snap.state);
                prop_assert_eq!(out.kind, MergeKind::NoOp, "stale state of {}", snap.id);
                prop_assert_eq!(&out.state, cur);
                prop_assert!(out.conflicts.is_empty());
                self.tally.stale_rechecks += 1;
            }
        }

        // Rule 3: merging any set of states in two different orders gives the same state.
        let mut rng = Mix(seed);
        for _ in 0..6 {
            let id = rng.below(IDS);
            let mut pool: Vec<&Snap> = self.archive.iter().filter(|s| s.id == id).collect();
            if pool.is_empty() {
                continue;
            }
            rng.shuffle(&mut pool);
            pool.truncate(1 + rng.below(16));
            let fold = |order: &[&Snap]| {
                order.iter().fold(None::<RecordState>, |acc, s| {
                    Some(merge_remote(acc.as_ref(), &s.state).state)
                })
            };
            let one = fold(&pool);
            rng.shuffle(&mut pool);
            let two = fold(&pool);
            prop_assert_eq!(&one, &two, "merge order changed the result");
            let mut seen = Bits::default();
            pool.iter().for_each(|s| seen.union_with(&s.seen));
            check_state(
                &self.hist[id],
                one.as_ref().expect("pool is not empty"),
                &seen,
            )?;
            self.tally.commutativity_checks += 1;
        }
        Ok(())
    }
}

fn run_scenario(sc: &Scenario) -> Result<Tally, TestCaseError> {
    let mut w = World::new(&sc.skews);
    for step in &sc.steps {
        w.apply(step)?;
    }
    w.gossip_until_quiet()?;
    w.check_converged(sc.seed)?;
    w.tally.cases = 1;
    w.tally.steps = sc.steps.len() as u64;
    Ok(w.tally)
}

fn run_cases(mut runner: TestRunner, steps: std::ops::Range<usize>, what: &str) -> Tally {
    let total = RefCell::new(Tally::default());
    let started = Instant::now();
    let result = runner.run(&scenario(steps), |sc| {
        let t = run_scenario(&sc)?;
        total.borrow_mut().add(&t);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{what}: {e}");
    }
    let t = total.into_inner();
    println!("{what}: {t:#?}\n{what}: {:.1?}", started.elapsed());
    t
}

/// Random cases, new ones every run; failures are kept in proptest-regressions/ and replayed.
#[test]
fn replicas_converge_random_cases() {
    let config = RunConfig {
        cases: 24,
        source_file: Some(file!()),
        // `SourceParallel` only works beside a lib.rs or main.rs, not in tests/.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/convergence.txt",
        ))),
        max_shrink_iters: 4096,
        ..RunConfig::default()
    };
    run_cases(TestRunner::new(config), 50..600, "random");
}

/// The same property on a fixed seed with longer scenarios: reproducible in every run, and
/// checked to have actually produced the situations the rules are about.
#[test]
fn replicas_converge_fixed_seed() {
    let config = RunConfig {
        cases: 8,
        failure_persistence: None,
        ..RunConfig::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[0x5e; 32]);
    let t = run_cases(
        TestRunner::new_with_rng(config, rng),
        1_000..1_500,
        "fixed seed",
    );
    assert!(t.edits >= 4_000, "{t:?}");
    assert!(t.field_conflicts > 0, "{t:?}");
    assert!(t.tie_breaks > 0, "{t:?}");
    assert!(t.reported_conflicts_logged > 0, "{t:?}");
    assert!(t.superseded > 0, "{t:?}");
    assert!(t.open_at_end > 0, "{t:?}");
    assert!(t.delete_edit_conflicts > 0, "{t:?}");
    assert!(
        t.ended_deleted > 0 && t.ended_alive_after_delete > 0,
        "{t:?}"
    );
    assert!(t.fast_forwards > 0 && t.merges > 0 && t.noops > 0, "{t:?}");
}

/// Found by the model above: two concurrent deletes, and a restore by one deleter that never saw
/// the other delete. The losing delete must be logged; it used to be logged nowhere when the
/// restore reached the other instances through a replica that already held both deletes.
#[test]
fn a_delete_undone_by_an_edit_that_never_saw_it_is_logged_even_when_a_later_delete_was_seen() {
    let mut clocks: Vec<Clock> = (1..=3).map(|n| Clock::new(node_id(n), 0)).collect();
    let mut edit = |r: usize, wall: u64, cur: Option<&RecordState>, e: Edit| {
        let at = clocks[r - 1].tick(wall);
        local_edit(cur, &e, at).unwrap().unwrap().state
    };
    let created = edit(1, 1_000, None, Edit::Put(fields(json!({"n": 1}))));
    let deleted_b = edit(2, 2_000, Some(&created), Edit::Delete);
    let deleted_c = edit(3, 3_000, Some(&created), Edit::Delete); // the later delete
    let restored_c = edit(
        3,
        4_000,
        Some(&deleted_c),
        Edit::Put(fields(json!({"n": 1}))),
    );

    // A holds both deletes, then gets C's restore, which never saw B's delete.
    let on_a = merge_remote(Some(&deleted_b), &deleted_c).state;
    assert!(!on_a.is_alive());
    let out = merge_remote(Some(&on_a), &restored_c);
    assert!(
        out.state.is_alive(),
        "the edit wins over the delete it never saw"
    );
    // B then hears about it only through A, whose state already contains B's delete.
    let on_b = merge_remote(Some(&deleted_b), &out.state);
    assert!(on_b.state.is_alive());
    let logged = |c: &[Conflict]| c.iter().any(|c| matches!(c, Conflict::DeleteEdit { .. }));
    assert!(
        logged(&out.conflicts) || logged(&on_b.conflicts),
        "B's delete lost to an edit that never saw it, and no instance logged it"
    );
    assert!(matches!(
        out.conflicts[..],
        [Conflict::DeleteEdit {
            deleted_on: Side::Local,
            ..
        }]
    ));
}

// ---------------------------------------------------------------------------------------------
// Part B: real stores on disk
// ---------------------------------------------------------------------------------------------

const PERSON: &str = "person";

struct Node {
    store: Store,
    _dir: tempfile::TempDir,
}

fn open_nodes(n: usize) -> Vec<Node> {
    let config = Config::parse("unique = [\"person.name\"]\n", "convergence test").unwrap();
    (0..n)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), config.clone()).unwrap();
            Node { store, _dir: dir }
        })
        .collect()
}

/// Everything a store has, as a peer would receive it.
fn snapshot(s: &Store) -> Vec<RemoteChange> {
    s.changes_since(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, table, id, rec)| RemoteChange {
            table,
            id,
            state: rec.state,
            conflicts: vec![],
        })
        .collect()
}

/// Everything a store has, as a pull from position 0 by a peer that knows nothing sends it:
/// each record whole, with its open conflicts.
fn page_all(s: &Store) -> Vec<RemoteChange> {
    s.outgoing(
        0,
        usize::MAX,
        usize::MAX,
        &Default::default(),
        &Default::default(),
        None,
    )
    .unwrap()
    .changes
}

fn send(from: &Store, to: &Store, changes: &[RemoteChange]) -> ApplyStats {
    to.apply_remote(Some(from.instance().id), changes)
        .expect("remote changes apply")
}

fn sync_all(nodes: &[Node]) {
    for _round in 0..=nodes.len() {
        let mut applied = 0;
        for a in nodes {
            for b in nodes
                .iter()
                .filter(|b| b.store.instance().id != a.store.instance().id)
            {
                applied += send(&a.store, &b.store, &page_all(&a.store)).applied;
            }
        }
        if applied == 0 {
            return;
        }
    }
    panic!("stores did not become quiet");
}

fn export(s: &Store, include_deleted: bool) -> String {
    let mut out = Vec::new();
    formats::export_jsonl(s, PERSON, include_deleted, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn assert_converged(nodes: &[Node]) {
    let first = &nodes[0].store;
    let states = |s: &Store| -> BTreeMap<Uuid, RecordState> {
        snapshot(s).into_iter().map(|c| (c.id, c.state)).collect()
    };
    let tables = [PERSON.to_string()];
    for n in &nodes[1..] {
        assert_eq!(export(&n.store, false), export(first, false));
        assert_eq!(export(&n.store, true), export(first, true));
        assert_eq!(
            formats::digest(&n.store, &tables).unwrap(),
            formats::digest(first, &tables).unwrap()
        );
        assert_eq!(states(&n.store), states(first));
        assert_eq!(open_merge_conflicts(&n.store), open_merge_conflicts(first));
    }
}

/// Open merge conflicts by the writes involved (name clashes are per instance: its index).
fn open_merge_conflicts(s: &Store) -> Vec<[u8; 32]> {
    let mut v: Vec<[u8; 32]> = s
        .conflicts()
        .unwrap()
        .into_iter()
        .filter(|e| e.resolved.is_none())
        .filter_map(|e| match e.detail {
            ConflictDetail::Merge { conflict } => Some(fingerprint(&conflict)),
            ConflictDetail::NameClash { .. } => None,
        })
        .collect();
    v.sort();
    v
}

fn conflicts_of(s: &Store, id: Uuid) -> Vec<ConflictDetail> {
    s.conflicts()
        .unwrap()
        .into_iter()
        .filter(|c| c.record == id)
        .map(|c| c.detail)
        .collect()
}

fn fields(v: Value) -> Fields {
    v.as_object().expect("an object").clone()
}

fn write(s: &Store, id: Uuid, edit: Edit) -> Result<OpResult, StoreError> {
    s.write_one(LocalOp {
        table: PERSON.into(),
        id,
        edit,
    })
}

fn record(s: &Store, id: Uuid) -> RecordState {
    s.get(PERSON, &id).unwrap().expect("record exists").state
}

#[test]
fn stores_log_conflicts_keep_unseen_edits_and_both_clashing_names() {
    let nodes = open_nodes(5);
    let s: Vec<&Store> = nodes.iter().map(|n| &n.store).collect();
    let [p, q, r, x, y] = [1, 2, 3, 4, 5].map(|n| Uuid::from_u128(0xC0FFEE00 + n));

    // Rule 4: both sides change `status` concurrently.
    write(
        s[0],
        p,
        Edit::Put(fields(json!({"name": "Pat", "status": "missing"}))),
    )
    .unwrap();
    send(s[0], s[1], &snapshot(s[0]));
    write(s[0], p, Edit::Patch(fields(json!({"status": "sighted"})))).unwrap();
    write(
        s[1],
        p,
        Edit::Patch(fields(json!({"status": "found_alive"}))),
    )
    .unwrap();
    let (c0, c1) = (snapshot(s[0]), snapshot(s[1]));
    send(s[0], s[1], &c0);
    send(s[1], s[0], &c1);
    for store in [s[0], s[1]] {
        let logged = conflicts_of(store, p);
        assert!(
            logged.iter().any(|c| matches!(c,
                ConflictDetail::Merge { conflict: Conflict::Field { field, local, remote, .. } }
                    if field == "status"
                        && [&local.value, &remote.value].contains(&&Some(json!("sighted")))
                        && [&local.value, &remote.value].contains(&&Some(json!("found_alive"))))),
            "{logged:?}"
        );
    }
    assert_eq!(record(s[0], p), record(s[1], p));

    // Rule 5: a delete and an edit the deleter never saw, in one sync session.
    write(
        s[2],
        q,
        Edit::Put(fields(json!({"name": "Quinn", "status": "missing"}))),
    )
    .unwrap();
    send(s[2], s[3], &snapshot(s[2]));
    write(s[2], q, Edit::Delete).unwrap();
    write(s[3], q, Edit::Patch(fields(json!({"status": "found"})))).unwrap();
    let (c2, c3) = (snapshot(s[2]), snapshot(s[3]));
    send(s[2], s[3], &c2);
    send(s[3], s[2], &c3);
    for (store, side) in [(s[2], Side::Local), (s[3], Side::Remote)] {
        assert!(record(store, q).is_alive());
        assert_eq!(record(store, q).value("status"), Some(&json!("found")));
        let logged = conflicts_of(store, q);
        assert!(
            logged.iter().any(|c| matches!(c,
                ConflictDetail::Merge { conflict: Conflict::DeleteEdit { deleted_on, .. } }
                    if *deleted_on == side)),
            "{logged:?}"
        );
    }

    // Rule 6: an old copy kept by s0 reaches the deleter and the deleted record's origin.
    write(s[4], r, Edit::Put(fields(json!({"name": "Rosa"})))).unwrap();
    let old: Vec<RemoteChange> = snapshot(s[4]).into_iter().filter(|c| c.id == r).collect();
    send(s[4], s[0], &old);
    send(s[4], s[1], &old);
    write(s[1], r, Edit::Delete).unwrap();
    send(s[1], s[4], &snapshot(s[1]));
    let held = snapshot(s[0]);
    for store in [s[1], s[4]] {
        let before = record(store, r);
        assert!(!before.is_alive());
        assert_eq!(send(s[0], store, &held).applied, 0);
        assert_eq!(record(store, r), before);
    }

    // Rule 7: two ids made independently with the same unique name.
    write(s[3], x, Edit::Put(fields(json!({"name": "Dup", "n": 1})))).unwrap();
    write(s[4], y, Edit::Put(fields(json!({"name": "Dup", "n": 2})))).unwrap();

    sync_all(&nodes);
    assert_converged(&nodes);
    for store in &s {
        assert_eq!(record(store, q).value("status"), Some(&json!("found")));
        assert!(record(store, q).is_alive());
        assert!(!record(store, r).is_alive());
        for id in [x, y] {
            assert!(record(store, id).is_alive());
            assert_eq!(record(store, id).value("name"), Some(&json!("Dup")));
        }
        let clashes: Vec<ConflictDetail> = [x, y]
            .into_iter()
            .flat_map(|id| conflicts_of(store, id))
            .filter(
                |c| matches!(c, ConflictDetail::NameClash { value, .. } if *value == json!("Dup")),
            )
            .collect();
        assert!(
            !clashes.is_empty(),
            "no name clash logged on {}",
            store.instance().id
        );
        // A local write still may not take a name that is already used.
        let e = write(
            store,
            Uuid::new_v4(),
            Edit::Put(fields(json!({"name": "Dup"}))),
        )
        .unwrap_err();
        assert!(matches!(e, StoreError::UniqueClash { .. }), "{e}");
    }
}

/// One store's view in the event model: which events of each record it has seen.
type StoreSeen = BTreeMap<Uuid, Bits>;

/// A change as sent, with the events the sender's copy reflected.
type Sent = (RemoteChange, Bits);

#[test]
fn random_ops_on_five_stores_converge() {
    let started = Instant::now();
    let mut totals = (0u64, 0u64, 0u64, 0u64);
    let mut open = 0;
    for seed in [7u64, 1_234_567] {
        let t = run_store_scenario(seed, 400);
        totals = (
            totals.0 + t.0,
            totals.1 + t.1,
            totals.2 + t.2,
            totals.3 + t.3,
        );
        open += t.4;
    }
    // The stores ended with open merge conflicts, and all five showed the same ones.
    assert!(open > 0, "no open conflict left to compare");
    println!(
        "stores: 2 scenarios of 400 steps, {} local writes, {} refused, {} exchanges, {} conflicts logged, {:.1?}",
        totals.0,
        totals.1,
        totals.2,
        totals.3,
        started.elapsed()
    );
}

/// Returns (writes, refused writes, exchanges, conflicts logged, open merge conflicts at the end).
fn run_store_scenario(seed: u64, steps: usize) -> (u64, u64, u64, u64, u64) {
    const N: usize = 5;
    let nodes = open_nodes(N);
    let ids: Vec<Uuid> = (0..IDS as u128)
        .map(|i| Uuid::from_u128(0xAB00 + i))
        .collect();
    let mut rng = Mix(seed);
    let mut hist: BTreeMap<Uuid, History> = BTreeMap::new();
    let mut seen: Vec<StoreSeen> = vec![BTreeMap::new(); N];
    let mut archive: Vec<Sent> = Vec::new();
    let (mut writes, mut refused, mut exchanges) = (0, 0, 0);

    let pick = |rng: &mut Mix, choices: &[&str]| json!(choices[rng.below(choices.len())]);
    let random_fields = |rng: &mut Mix| {
        let mut f = Fields::new();
        if rng.below(4) != 0 {
            f.insert(
                "name".into(),
                pick(rng, &["Ana", "Bo", "Cy", "Dana", "Eli"]),
            );
        }
        if rng.below(2) == 0 {
            f.insert("status".into(), pick(rng, &["missing", "found"]));
        }
        if rng.below(2) == 0 {
            f.insert("notes".into(), pick(rng, &["x", "y", "Zoë"]));
        }
        f
    };

    for _ in 0..steps {
        let a = rng.below(N);
        let store = &nodes[a].store;
        match rng.below(20) {
            0..=13 => {
                let id = ids[rng.below(ids.len())];
                let edit = match rng.below(7) {
                    0..=2 => Edit::Put(random_fields(&mut rng)),
                    3..=5 => {
                        let mut f = random_fields(&mut rng);
                        if rng.below(4) == 0 {
                            f.insert("notes".into(), Value::Null);
                        }
                        Edit::Patch(f)
                    }
                    _ => Edit::Delete,
                };
                let h = hist.entry(id).or_default();
                let ctx = seen[a].get(&id).cloned();
                match write(store, id, edit.clone()) {
                    Ok(OpResult::Written(_)) => {
                        let state = record(store, id);
                        let ts = state.vv[&store.instance().id];
                        let stamp = Hlc {
                            ts,
                            node: store.instance().id,
                        };
                        let e = h.add(Event {
                            stamp,
                            delete: edit == Edit::Delete,
                            writes: state
                                .fields
                                .iter()
                                .filter(|(_, f)| f.stamp == stamp)
                                .map(|(k, f)| (k.clone(), f.value.clone()))
                                .collect(),
                            ctx: ctx.clone().unwrap_or_default(),
                        });
                        let mine = seen[a].entry(id).or_default();
                        mine.insert(e);
                        assert_eq!(state, h.expected(mine));
                        writes += 1;
                    }
                    Ok(OpResult::Unchanged) => {}
                    Err(StoreError::NotFound { .. }) => {
                        assert!(ctx.is_none());
                        refused += 1;
                    }
                    Err(StoreError::Deleted { .. }) => {
                        assert!(!h.alive(&ctx.expect("a deleted record was seen")));
                        refused += 1;
                    }
                    Err(StoreError::UniqueClash { .. }) => refused += 1,
                    Err(e) => panic!("unexpected error from a local write: {e}"),
                }
            }
            14..=18 => {
                let b = (a + 1 + rng.below(N - 1)) % N;
                exchanges += 1;
                // Both snapshots first: the two directions of one session cross on the wire.
                let outgoing: Vec<(usize, usize, Vec<Sent>)> = [(a, b), (b, a)]
                    .into_iter()
                    .map(|(from, to)| {
                        let mut list: Vec<Sent> = snapshot(&nodes[from].store)
                            .into_iter()
                            .filter(|_| rng.below(4) != 0)
                            .map(|c| {
                                let s = seen[from][&c.id].clone();
                                (c, s)
                            })
                            .collect();
                        archive.extend(list.iter().cloned());
                        if !list.is_empty() {
                            let dup = list[rng.below(list.len())].clone();
                            list.push(dup);
                        }
                        for _ in 0..rng.below(3) {
                            if !archive.is_empty() {
                                list.push(archive[rng.below(archive.len())].clone());
                            }
                        }
                        rng.shuffle(&mut list);
                        (from, to, list)
                    })
                    .collect();
                for (from, to, list) in outgoing {
                    // Several pages, so that duplicates land both within a batch and across.
                    let cut = rng.below(list.len() + 1);
                    for page in [&list[..cut], &list[cut..]] {
                        let changes: Vec<RemoteChange> = page.iter().map(|p| p.0.clone()).collect();
                        send(&nodes[from].store, &nodes[to].store, &changes);
                        for (c, s) in page {
                            seen[to].entry(c.id).or_default().union_with(s);
                        }
                        for (c, _) in page {
                            let want = hist[&c.id].expected(&seen[to][&c.id]);
                            assert_eq!(record(&nodes[to].store, c.id), want);
                        }
                    }
                }
            }
            _ => {
                // A stale copy of some record arrives from a random peer.
                if !archive.is_empty() {
                    let (c, s) = archive[rng.below(archive.len())].clone();
                    let from = &nodes[(a + 1) % N].store;
                    send(from, store, std::slice::from_ref(&c));
                    seen[a].entry(c.id).or_default().union_with(&s);
                    assert_eq!(record(store, c.id), hist[&c.id].expected(&seen[a][&c.id]));
                }
            }
        }
    }

    sync_all(&nodes);
    assert_converged(&nodes);
    for (id, h) in &hist {
        let mut all = Bits::default();
        (0..h.events.len()).for_each(|i| all.insert(i));
        for n in &nodes {
            let state = record(&n.store, *id);
            assert_eq!(state, h.expected(&all));
            assert_eq!(state.is_alive(), h.alive(&all));
        }
    }
    // Rule 6 on disk: nothing ever sent before changes anything now.
    for n in &nodes {
        let changes: Vec<RemoteChange> = archive.iter().map(|a| a.0.clone()).collect();
        assert_eq!(send(&nodes[0].store, &n.store, &changes).applied, 0);
    }
    let conflicts = nodes
        .iter()
        .map(|n| n.store.conflicts().unwrap().len() as u64)
        .sum();
    let open = open_merge_conflicts(&nodes[0].store).len() as u64;
    (writes, refused, exchanges, conflicts, open)
}
