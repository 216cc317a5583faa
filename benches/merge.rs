//! Merge-engine micro-benchmark (criterion): how many incoming record states `merge_remote`
//! applies per second — inserts, fast-forwards, and concurrent edits that conflict.
//! Run with `cargo bench --bench merge`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fieldsync::clock::Clock;
use fieldsync::merge::{local_edit, merge_remote, Edit};
use fieldsync::model::{Fields, RecordState};
use serde_json::json;
use uuid::Uuid;

const N: usize = 1_000;

fn person(i: usize) -> Fields {
    json!({"name": format!("Person {i}"), "age": i % 90, "status": "missing",
           "notes": "Last seen at the market.", "lat": 49.99, "lon": 36.23})
    .as_object()
    .cloned()
    .unwrap()
}

fn edit(state: Option<&RecordState>, e: Edit, clock: &mut Clock, wall: u64) -> RecordState {
    local_edit(state, &e, clock.tick(wall))
        .expect("edit applies")
        .expect("edit changes something")
        .state
}

fn patch(status: &str) -> Edit {
    Edit::Patch(json!({"status": status}).as_object().cloned().unwrap())
}

/// (local, incoming) pairs of the given kind.
fn pairs(kind: &str) -> Vec<(Option<RecordState>, RecordState)> {
    let mut a = Clock::new(Uuid::from_u128(1), 0);
    let mut b = Clock::new(Uuid::from_u128(2), 0);
    (0..N)
        .map(|i| {
            let base = edit(None, Edit::Put(person(i)), &mut a, 1_000);
            match kind {
                "insert" => (None, base),
                "fast_forward" => {
                    let newer = edit(Some(&base), patch("found_alive"), &mut a, 2_000);
                    (Some(base), newer)
                }
                _ => {
                    let mine = edit(Some(&base), patch("sighted"), &mut a, 2_000);
                    let theirs = edit(Some(&base), patch("found_alive"), &mut b, 2_001);
                    (Some(mine), theirs)
                }
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge_remote");
    g.throughput(Throughput::Elements(N as u64));
    for kind in ["insert", "fast_forward", "conflicting"] {
        let input = pairs(kind);
        if kind == "conflicting" {
            let (l, r) = &input[0];
            assert_eq!(merge_remote(l.as_ref(), r).conflicts.len(), 1);
        }
        g.bench_function(kind, |bencher| {
            bencher.iter_batched(
                || input.clone(),
                |pairs| {
                    for (local, remote) in &pairs {
                        std::hint::black_box(merge_remote(local.as_ref(), remote));
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
