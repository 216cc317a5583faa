//! Checks shared by the fuzz targets in `fuzz/` and `tests/fuzz_corpus.rs`.
//!
//! Each entry point takes arbitrary bytes, feeds them to the code that handles what a peer
//! sends, and panics when a property is violated, so libFuzzer and a plain `cargo test` over
//! the committed corpus report the same failures. Nothing here touches sled or the network:
//! the store-side steps that matter for a received change (validation, the clock observing the
//! remote stamps, the merge) are pure and are called directly.

use crate::clock::{Clock, Hlc};
use crate::merge::{local_edit, merge_remote, Edit, MergeKind};
use crate::model::{check_fields, validate_table, FieldState, RecordState};
use crate::protocol::{self, codes, Page, ENC_JSON, ENC_ZSTD};
use crate::store::RemoteChange;
use base64::Engine;
use serde_json::{json, Value};
use uuid::Uuid;

/// Wall clock used by the checks (epoch milliseconds): fixed so a failure replays exactly.
const WALL_MS: u64 = 1_700_000_000_000;

/// Target (a): bytes as a sync page, in every way a peer could send them.
///
/// The bytes are tried as a whole `Page` (JSON), as the `data` of a `json` page, as the base64
/// payload of a `msgpack+zstd` page (so zstd sees them raw), and zstd-compressed as that payload
/// (so the packed MessagePack layout, `protocol::pack`, sees them raw).
pub fn page_bytes(data: &[u8]) {
    if let Ok(page) = serde_json::from_slice::<Page>(data) {
        check_page(&page);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        let count = v.as_array().map_or(0, |a| a.len() as u32);
        check_page(&page_of(ENC_JSON, v, count));
    }
    let b64 = |b: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    let count = u32::from(data.first().copied().unwrap_or(0) & 0x0f);
    check_page(&page_of(ENC_ZSTD, b64(data), count));
    if let Ok(packed) = zstd::bulk::compress(data, 1) {
        check_page(&page_of(ENC_ZSTD, b64(&packed), count));
        // The packed layout's row count is its table column: try the count it implies too.
        if let Ok(changes) = protocol::pack::unpack(data) {
            check_page(&page_of(ENC_ZSTD, b64(&packed), changes.len() as u32));
        }
    }
}

fn page_of(encoding: &str, data: Value, count: u32) -> Page {
    Page {
        since: 0,
        next: 1,
        more: false,
        count,
        encoding: encoding.to_string(),
        data,
        proofs: None,
        knowledge: None,
    }
}

/// Decodes a page as a receiver does; whatever decodes must survive the receiver's next steps.
pub fn check_page(page: &Page) {
    let changes = match protocol::decode_changes(page) {
        Ok(c) => c,
        Err(e) => {
            assert!(
                e.code == codes::INVALID_PAGE || e.code == codes::PAGE_TOO_LARGE,
                "a bad page is refused as invalid or too large, not with {e}"
            );
            return;
        }
    };
    assert_eq!(changes.len(), page.count as usize, "count is checked");
    assert!(page.next >= page.since, "direction is checked");
    // What one instance decodes it can send on in either encoding, unchanged.
    for enc in [ENC_JSON, ENC_ZSTD] {
        let data = protocol::encode_changes(&changes, enc).expect("decoded changes encode");
        let again = protocol::decode_changes(&page_of(enc, data, changes.len() as u32))
            .expect("re-encoded changes decode");
        assert_eq!(again, changes, "{enc} round trip");
    }
    for ch in &changes {
        receive(ch);
    }
}

/// The pure part of `Store::apply_remote` for one change, with its properties.
fn receive(ch: &RemoteChange) {
    if validate_table(&ch.table).is_err() || check_fields(&ch.state.live_fields()).is_err() {
        return; // refused as a whole page by the store
    }
    let mut state = ch.state.clone();
    for f in state.fields.values_mut() {
        if f.value == Some(Value::Null) {
            f.value = None;
        }
    }
    let inserted = merge_remote(None, &state);
    assert_eq!(inserted.kind, MergeKind::Insert);
    assert_eq!(
        inserted.state, state,
        "an unknown record is stored as received"
    );
    let again = merge_remote(Some(&inserted.state), &state);
    assert_eq!(
        again.kind,
        MergeKind::NoOp,
        "receiving a change twice changes nothing"
    );
    clock_moves_past(&[&state]);
}

/// After observing remote states, the next local stamp orders after every stamp in them
/// (otherwise a later local edit would lose to an older remote one).
fn clock_moves_past(states: &[&RecordState]) -> Hlc {
    let node = Uuid::from_u128(0xfeed);
    let mut clock = Clock::new(node, 0);
    let max = states.iter().map(|s| s.max_ts()).max().unwrap_or(0);
    for s in states {
        clock.observe(s.max_ts());
    }
    let at = clock.tick(WALL_MS);
    assert!(
        at.ts > max,
        "local stamp {} is not after remote {max}",
        at.ts
    );
    at
}

/// Reads fuzz bytes as choices; past the end every choice is 0, so any input is complete.
struct Choices<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn below(&mut self, n: u8) -> u8 {
        self.byte() % n
    }
}

const NODES: [u128; 3] = [1, 2, 3];
const FIELDS: [&str; 4] = ["a", "b", "c", "d"];

fn node(c: &mut Choices<'_>) -> Uuid {
    Uuid::from_u128(NODES[c.below(NODES.len() as u8) as usize])
}

/// Mostly small clock values (so states overlap and conflict), sometimes extreme ones: both
/// sides of the largest stamp a receiver accepts, and the top of the range.
fn ts(c: &mut Choices<'_>) -> u64 {
    match c.byte() {
        249 => u64::MAX,
        250 => protocol::MAX_STAMP_TS + 1,
        251 => protocol::MAX_STAMP_TS,
        252 => protocol::MAX_STAMP_TS - 1,
        253 => crate::clock::ts_from_millis(WALL_MS),
        254 => crate::clock::ts_from_millis(WALL_MS) + 1,
        b => u64::from(b % 12) + 1,
    }
}

fn stamp(c: &mut Choices<'_>) -> Hlc {
    Hlc {
        ts: ts(c),
        node: node(c),
    }
}

/// The value one write put into one field: a stamp names one event everywhere, so it always
/// carries the same value (two states disagreeing on that cannot come from real instances).
fn value_for(field: &str, at: &Hlc) -> Option<Value> {
    let h = at
        .ts
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(at.node.as_u128() as u64)
        .wrapping_add(field.as_bytes()[0] as u64);
    match h % 5 {
        0 => None,
        1 => Some(json!(h % 1000)),
        2 => Some(json!(format!("{field}{}", h % 97))),
        3 => Some(json!({"n": h % 7, "l": [1, null]})),
        _ => Some(json!(h % 2 == 0)),
    }
}

/// A record state as an instance could hold it: every write and delete it reflects is in its
/// version vector, and what deleters had seen is at most that.
fn state(c: &mut Choices<'_>) -> RecordState {
    let mut s = RecordState::default();
    for _ in 0..c.below(5) {
        let name = FIELDS[c.below(4) as usize];
        let at = stamp(c);
        s.fields.insert(
            name.to_string(),
            FieldState {
                value: value_for(name, &at),
                stamp: at,
            },
        );
    }
    for n in NODES {
        if c.byte() & 1 == 1 {
            s.vv.insert(Uuid::from_u128(n), ts(c));
        }
    }
    if c.byte() & 3 == 0 {
        let d = stamp(c);
        s.deleted = Some(d);
        note(&mut s.vv, &d);
        s.del_seen = s.vv.clone();
        // Some edits the deleter had not seen.
        for _ in 0..c.below(3) {
            let name = FIELDS[c.below(4) as usize];
            let at = stamp(c);
            s.fields.insert(
                name.to_string(),
                FieldState {
                    value: value_for(name, &at),
                    stamp: at,
                },
            );
        }
    }
    let stamps: Vec<Hlc> = s.fields.values().map(|f| f.stamp).collect();
    for at in stamps {
        note(&mut s.vv, &at);
    }
    s
}

fn note(vv: &mut crate::model::VersionVector, at: &Hlc) {
    let e = vv.entry(at.node).or_insert(0);
    *e = (*e).max(at.ts);
}

fn edit(c: &mut Choices<'_>) -> Edit {
    let mut fields = serde_json::Map::new();
    for _ in 0..c.below(3) {
        let name = FIELDS[c.below(4) as usize];
        let v = match c.below(3) {
            0 => Value::Null,
            1 => json!(c.byte()),
            _ => json!("x"),
        };
        fields.insert(name.to_string(), v);
    }
    match c.below(4) {
        0 => Edit::Put(fields),
        1 => Edit::Patch(fields),
        2 => Edit::Delete,
        _ => Edit::Reassert(FIELDS[c.below(4) as usize].to_string(), Some(json!(7))),
    }
}

fn merged(local: Option<&RecordState>, remote: &RecordState) -> RecordState {
    merge_remote(local, remote).state
}

/// Target (b): record states built from the bytes, merged every way, checked for the
/// properties convergence rests on.
pub fn merge_bytes(data: &[u8]) {
    let mut c = Choices { data, pos: 0 };
    let local = (c.byte() & 3 != 0).then(|| state(&mut c));
    let r1 = state(&mut c);
    let r2 = state(&mut c);
    let l = local.as_ref();
    if let Some(s) = l
        .into_iter()
        .chain([&r1, &r2])
        .find(|s| !protocol::stamps_in_range(s))
    {
        // Such a state never reaches the merge: a page carrying it is refused.
        let ch = [RemoteChange {
            table: "t".into(),
            id: Uuid::nil(),
            state: s.clone(),
            conflicts: vec![],
            history: vec![],
        }];
        for enc in [ENC_JSON, ENC_ZSTD] {
            let data = protocol::encode_changes(&ch, enc).expect("encodes");
            let page = page_of(enc, data, 1);
            assert!(
                protocol::decode_changes(&page).is_err(),
                "far-future stamp accepted"
            );
        }
        return;
    }

    // Idempotence: receiving the same state again is a no-op that records nothing.
    let once = merge_remote(l, &r1);
    let twice = merge_remote(Some(&once.state), &r1);
    assert_eq!(
        twice.kind,
        MergeKind::NoOp,
        "second merge of the same state"
    );
    assert_eq!(twice.state, once.state);
    assert!(twice.touched.is_empty());

    // Commutativity: the order two peers' states arrive in does not matter.
    let a = merged(Some(&merged(l, &r1)), &r2);
    let b = merged(Some(&merged(l, &r2)), &r1);
    assert_eq!(a, b, "r1 then r2 differs from r2 then r1");

    // Associativity: relayed through a third instance, the result is the same.
    let relayed = merged(l, &merged(Some(&r1), &r2));
    assert_eq!(a, relayed, "direct and relayed merges differ");

    // An unknown record is taken as received.
    assert_eq!(merged(None, &r1), r1);

    // A local edit after receiving r1 and r2 orders after them: sent back to an instance that
    // holds the merged state, it is taken as is, and the merged state adds nothing to it.
    let at = clock_moves_past(&[&once.state, &r1, &r2, &a]);
    if let Ok(Some(out)) = local_edit(Some(&a), &edit(&mut c), at) {
        let fwd = merge_remote(Some(&a), &out.state);
        assert_eq!(fwd.state, out.state, "the edit does not win on a peer");
        assert!(
            fwd.conflicts.is_empty(),
            "an edit made after seeing everything conflicts"
        );
        let back = merge_remote(Some(&out.state), &a);
        assert_eq!(
            back.kind,
            MergeKind::NoOp,
            "older state changes the edited one"
        );
    }
}

/// A deterministic pseudo-random byte source (xorshift), for runs without a fuzzer.
pub fn pseudo_random_inputs(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|_| {
            let len = (next() as usize) % (max_len + 1);
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}
