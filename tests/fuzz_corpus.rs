//! The fuzz targets' checks (`fieldsync::fuzzing`) under plain `cargo test`: every committed
//! corpus and regression file, a set of well-formed pages built here, and a few thousand
//! deterministic pseudo-random inputs. No cargo-fuzz or nightly toolchain is needed.
//!
//! The checks run on threads with the stack size of the agent's threads (tokio's 2 MiB), so an
//! input that only overflows a small stack fails here as it would in the agent.
//! `FIELDSYNC_WRITE_SEEDS=1 cargo test --test fuzz_corpus` rewrites the seed and regression
//! files in `fuzz/` from the pages built here.

use fieldsync::clock::Hlc;
use fieldsync::fuzzing::{merge_bytes, page_bytes, pseudo_random_inputs};
use fieldsync::merge::{Conflict, Side};
use fieldsync::model::{FieldState, RecordState};
use fieldsync::protocol::pack::pack;
use fieldsync::protocol::{encode_changes, Page, ENC_JSON, ENC_ZSTD};
use fieldsync::store::{RemoteChange, ReportedConflict};
use serde_json::json;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The stack a tokio worker or blocking thread has.
const AGENT_STACK: usize = 2 << 20;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file under `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
fn committed(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_file() {
                out.push((p.clone(), std::fs::read(&p).expect("read corpus file")));
            }
        }
    }
    out.sort();
    out
}

/// Runs `check` over every input on an agent-sized stack, naming the input that fails.
fn run_all(name: &str, inputs: Vec<(String, Vec<u8>)>, check: fn(&[u8])) {
    let n = inputs.len();
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(AGENT_STACK)
        .spawn(move || {
            for (label, data) in &inputs {
                let r = std::panic::catch_unwind(|| check(data));
                if r.is_err() {
                    panic!("{label} fails ({} bytes: {:02x?})", data.len(), data);
                }
            }
        })
        .expect("thread");
    handle.join().expect("all inputs pass");
    assert!(n > 0, "no inputs for {name}");
}

fn labelled(files: Vec<(PathBuf, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    files
        .into_iter()
        .map(|(p, d)| (p.display().to_string(), d))
        .collect()
}

fn random(seed: u64, count: usize, max_len: usize) -> Vec<(String, Vec<u8>)> {
    pseudo_random_inputs(seed, count, max_len)
        .into_iter()
        .enumerate()
        .map(|(i, d)| (format!("pseudo-random input {i} (seed {seed})"), d))
        .collect()
}

/// Well-formed pages of the kinds peers send: plain records, deletes, reported conflicts,
/// revocation-shaped records, in both encodings, as whole pages and as raw payloads.
fn seed_pages() -> Vec<(String, Vec<u8>)> {
    let a = Uuid::from_u128(0xa);
    let b = Uuid::from_u128(0xb);
    let at = |ts, node| Hlc { ts, node };
    let mut live = RecordState::default();
    live.fields.insert(
        "name".into(),
        FieldState {
            value: Some(json!("José")),
            stamp: at(70, a),
        },
    );
    live.fields.insert(
        "tags".into(),
        FieldState {
            value: Some(json!({"k": [1, 2.5, null, true]})),
            stamp: at(71, b),
        },
    );
    live.fields.insert(
        "gone".into(),
        FieldState {
            value: None,
            stamp: at(72, a),
        },
    );
    live.vv.insert(a, 72);
    live.vv.insert(b, 71);
    let mut deleted = live.clone();
    deleted.deleted = Some(at(80, b));
    deleted.vv.insert(b, 80);
    deleted.del_seen = deleted.vv.clone();
    let conflict = ReportedConflict {
        detected_by: b,
        conflict: Conflict::Field {
            field: "name".into(),
            local: FieldState {
                value: Some(json!("x")),
                stamp: at(60, b),
            },
            remote: FieldState {
                value: Some(json!("José")),
                stamp: at(70, a),
            },
            chosen: Side::Remote,
            reason: "concurrent edits".into(),
        },
    };
    let changes = [
        RemoteChange {
            table: "person".into(),
            id: Uuid::from_u128(1),
            state: live.clone(),
            conflicts: vec![conflict],
            history: vec![],
        },
        RemoteChange {
            table: "shelter_2".into(),
            id: Uuid::from_u128(2),
            state: deleted,
            conflicts: vec![],
            history: vec![],
        },
        RemoteChange {
            table: "fs_revocations".into(),
            id: a,
            state: live,
            conflicts: vec![],
            history: vec![],
        },
    ];
    let mut out = Vec::new();
    for n in [1, changes.len()] {
        let chs = &changes[..n];
        for enc in [ENC_JSON, ENC_ZSTD] {
            let page = Page {
                since: 3,
                next: 3 + n as u64,
                more: n == 1,
                count: n as u32,
                encoding: enc.into(),
                data: encode_changes(chs, enc).unwrap(),
                proofs: None,
                knowledge: None,
            };
            out.push((
                format!("seed-page-{enc}-{n}"),
                serde_json::to_vec(&page).unwrap(),
            ));
        }
        out.push((
            format!("seed-data-json-{n}"),
            serde_json::to_vec(chs).unwrap(),
        ));
        // The packed layout uncompressed: `page_bytes` compresses it itself.
        out.push((format!("seed-packed-{n}"), pack(chs).unwrap()));
    }
    out
}

/// Pages that broke the receiver before it was fixed; `fuzz/regressions/sync_page` holds the
/// same bytes, so `cargo fuzz run sync_page fuzz/regressions/sync_page` replays them.
fn regression_pages() -> Vec<(String, Vec<u8>)> {
    let node = Uuid::from_u128(0xa);
    let one = |ts: u64, value: serde_json::Value| {
        let mut state = RecordState::default();
        state.fields.insert(
            "n".into(),
            FieldState {
                value: Some(value),
                stamp: Hlc { ts, node },
            },
        );
        state.vv.insert(node, ts);
        vec![RemoteChange {
            table: "person".into(),
            id: Uuid::from_u128(1),
            state,
            conflicts: vec![],
            history: vec![],
        }]
    };
    let json_page = |changes: &[RemoteChange]| {
        let page = Page {
            since: 0,
            next: 1,
            more: false,
            count: 1,
            encoding: ENC_JSON.into(),
            data: encode_changes(changes, ENC_JSON).unwrap(),
            proofs: None,
            knowledge: None,
        };
        serde_json::to_vec(&page).unwrap()
    };
    // A value nested 1000 deep (just inside MessagePack's own limit of 1024) in the packed
    // layout: decoding it overflowed a 2 MiB stack and aborted the agent.
    let packed = pack(&one(70, json!("DEEP"))).unwrap();
    let at = packed
        .windows(5)
        .position(|w| w == b"\xa4DEEP")
        .expect("the marker string");
    let mut deep = packed[..at].to_vec();
    deep.extend(std::iter::repeat_n(0x91, 1000));
    deep.push(0xc0);
    deep.extend_from_slice(&packed[at + 5..]);
    vec![
        ("regression-deep-packed".into(), deep),
        // The receiver's clock observed u64::MAX and overflowed on its next local edit.
        (
            "regression-stamp-u64-max".into(),
            json_page(&one(u64::MAX, json!(1))),
        ),
        // Over i64::MAX the packed layout's ts deltas overflow when the record is sent on.
        (
            "regression-stamp-past-i64".into(),
            json_page(&one(1 << 63, json!(1))),
        ),
    ]
}

fn write_seeds(target: &str, seeds: &[(String, Vec<u8>)]) {
    write_files("corpus", target, seeds);
}

fn write_files(kind: &str, target: &str, seeds: &[(String, Vec<u8>)]) {
    if std::env::var_os("FIELDSYNC_WRITE_SEEDS").is_none() {
        return;
    }
    let dir = fuzz_dir().join(kind).join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in seeds {
        std::fs::write(dir.join(name), data).unwrap();
    }
}

#[test]
fn sync_page_corpus_and_regressions() {
    let seeds = seed_pages();
    write_seeds("sync_page", &seeds);
    let regressions = regression_pages();
    write_files("regressions", "sync_page", &regressions);
    let mut inputs = labelled(committed("sync_page"));
    inputs.extend(seeds);
    inputs.extend(regressions);
    run_all("sync_page corpus", inputs, page_bytes);
}

#[test]
fn sync_page_pseudo_random_inputs() {
    run_all(
        "sync_page random",
        random(0x5eed_0001, 3000, 256),
        page_bytes,
    );
}

#[test]
fn merge_corpus_and_regressions() {
    let files = committed("merge");
    run_all("merge corpus", labelled(files), merge_bytes);
}

#[test]
fn merge_pseudo_random_inputs() {
    run_all("merge random", random(0x5eed_0002, 5000, 96), merge_bytes);
}

/// Mutations of the well-formed pages: flipped bytes reach deeper than random bytes do.
#[test]
fn sync_page_mutated_seeds() {
    let mut inputs = Vec::new();
    let noise = pseudo_random_inputs(0x5eed_0003, 2000, 8);
    for (i, n) in noise.iter().enumerate() {
        let seeds = seed_pages();
        let (name, mut data) = seeds[i % seeds.len()].clone();
        for pair in n.chunks(2) {
            if let [pos, val] = pair {
                let at = (*pos as usize * 7919 + i) % data.len();
                data[at] = *val;
            }
        }
        inputs.push((format!("{name} mutated #{i}"), data));
    }
    run_all("sync_page mutated", inputs, page_bytes);
}
