//! [`Store::reopen`] and [`Store::rest_if_free`] on a real sled on disk while readers, writers
//! and long-lived iterators run: nobody sees a closed tree or a half state, every acknowledged
//! write stays, a resting database opens again for whoever comes next, and a reference that
//! does not go makes the reopen give way instead of waiting forever.

use super::*;
use crate::merge::Edit;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn open(dir: &Path) -> Store {
    Store::open(dir, Config::parse("", "test").unwrap()).unwrap()
}

fn op(n: u64) -> LocalOp {
    let fields = match json!({ "name": format!("person {n}"), "n": n }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    LocalOp {
        table: "person".into(),
        id: Uuid::new_v4(),
        edit: Edit::Put(fields),
    }
}

fn live(s: &Store) -> u64 {
    s.tables()
        .unwrap()
        .into_iter()
        .find(|(t, _)| t == "person")
        .map_or(0, |(_, c)| c.live)
}

/// Bound on every loop below: the test fails rather than hangs.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn reopens_while_readers_writers_and_iterators_run_lose_and_show_nothing_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    const PRELOAD: u64 = 1_000;
    let ops: Vec<LocalOp> = (0..PRELOAD).map(op).collect();
    store.write_local(&ops).unwrap();
    const PER_WRITER: u64 = 120;
    let writers_done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let done_reopens = AtomicU64::new(0);
    let start = Instant::now();
    let written: Vec<Vec<Uuid>> = std::thread::scope(|sc| {
        // Writers: one record at a time, each read back at once (across reopens).
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let (store, writers_done) = (&store, &writers_done);
                sc.spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..PER_WRITER {
                        let o = op(10_000 * (w + 1) + i);
                        let id = o.id;
                        store.write_one(o).unwrap();
                        let got = store
                            .get("person", &id)
                            .unwrap()
                            .expect("acknowledged write");
                        assert!(got.state.is_alive());
                        ids.push(id);
                    }
                    writers_done.fetch_add(1, Ordering::SeqCst);
                    ids
                })
            })
            .collect();
        // Readers: whole-table scans and feed reads, never fewer records than preloaded.
        for _ in 0..2 {
            let (store, stop) = (&store, &stop);
            sc.spawn(move || {
                let mut last = 0;
                while !stop.load(Ordering::SeqCst) && start.elapsed() < LIMIT {
                    let mut n = 0;
                    for r in store.scan_table("person") {
                        r.unwrap();
                        n += 1;
                    }
                    assert!(
                        n >= PRELOAD && n >= last,
                        "a scan saw {n} records after {last}"
                    );
                    last = n;
                    assert!(store.changes_since(0, 50).unwrap().len() == 50);
                }
            });
        }
        // A slow iterator, as a pull serving pages holds one: reopens wait for it (or give
        // way), and it reads on unharmed either way.
        {
            let (store, stop) = (&store, &stop);
            sc.spawn(move || {
                while !stop.load(Ordering::SeqCst) && start.elapsed() < LIMIT {
                    let mut seen = 0;
                    for r in store.scan_table("person").take(40) {
                        r.unwrap();
                        seen += 1;
                        std::thread::sleep(Duration::from_millis(3));
                    }
                    assert_eq!(seen, 40);
                }
            });
        }
        // The reopener.
        {
            let (store, stop, done_reopens, writers_done) =
                (&store, &stop, &done_reopens, &writers_done);
            sc.spawn(move || {
                for i in 0..20 {
                    if start.elapsed() > LIMIT {
                        break;
                    }
                    if i % 2 == 0 {
                        if let Reopen::Done(_) = store.reopen().unwrap() {
                            done_reopens.fetch_add(1, Ordering::SeqCst);
                        }
                    } else {
                        // A rest: closed until the next reader or writer opens it again
                        // (they come at once here). Busy while someone holds the writer
                        // lock or woke it meanwhile: tried again a bounded number of times.
                        for _ in 0..200 {
                            if let Reopen::Done(_) = store.rest_if_free(store.rests().1).unwrap() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(15));
                }
                // Writers and readers keep going after the last reopen for a moment.
                while writers_done.load(Ordering::SeqCst) < 2 && start.elapsed() < LIMIT {
                    std::thread::sleep(Duration::from_millis(5));
                }
                stop.store(true, Ordering::SeqCst);
            });
        }
        writers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(start.elapsed() < LIMIT, "the test ran into its time bound");
    let reopened = done_reopens.load(Ordering::SeqCst);
    assert!(reopened >= 1, "no reopen completed while the others ran");
    assert_eq!(store.reopens(), reopened);
    let (rests, wakes) = store.rests();
    assert!(rests >= 1, "no rest completed while the others ran");
    assert!(
        wakes >= 1,
        "no reader or writer opened a resting database ({rests} rests)"
    );
    assert_eq!(live(&store), PRELOAD + 2 * PER_WRITER);
    assert!(store.check_fingerprints().unwrap().is_empty());
    // Durable across a real close too.
    let seq = store.seq();
    drop(store);
    let again = open(dir.path());
    assert_eq!(again.seq(), seq);
    assert_eq!(live(&again), PRELOAD + 2 * PER_WRITER);
    for id in written.iter().flatten() {
        assert!(again.get("person", id).unwrap().is_some());
    }
}

#[test]
fn a_reopen_gives_way_to_an_iterator_that_stays_and_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .write_local(&(0..50).map(op).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(store.written_since_open(), 50);
    let mut held = store.scan_table("person");
    held.next().unwrap().unwrap();
    // Waits for the iterator a bounded time, then leaves everything as it was.
    assert_eq!(store.reopen().unwrap(), Reopen::Busy);
    assert_eq!(store.reopens(), 0);
    assert_eq!(held.count(), 49);
    store.write_one(op(99)).unwrap();
    match store.reopen().unwrap() {
        Reopen::Done(_) => {}
        Reopen::Busy => panic!("nothing held the store, yet the reopen gave way"),
    }
    assert_eq!(store.reopens(), 1);
    assert_eq!(store.written_since_open(), 0);
    assert_eq!(live(&store), 51);
    // The reopened store writes and flushes as before.
    store.write_one(op(100)).unwrap();
    assert_eq!(store.written_since_open(), 1);
    assert_eq!(live(&store), 52);
}

/// While the store reopens sled (its lock in `db/` let go for a moment) or rests (sled closed),
/// another open of the same data directory — a CLI command deciding whether an agent runs — is still refused as
/// `Locked`: it must never open the database under the agent (it found it open in CI).
#[test]
fn another_open_during_reopens_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    store.write_local(&[op(1)]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let opener = {
        let (dir, stop) = (dir.path().to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let (mut tries, start) = (0u64, Instant::now());
            while !stop.load(Ordering::SeqCst) && start.elapsed() < LIMIT {
                match Store::open(&dir, Config::parse("", "test").unwrap()) {
                    Err(StoreError::Locked(_)) => tries += 1,
                    Ok(_) => return Err("opened the database under the open store".to_string()),
                    Err(e) => return Err(format!("unexpected error: {e}")),
                }
            }
            Ok(tries)
        })
    };
    for _ in 0..20 {
        store.reopen().unwrap();
        // Resting (sled closed) holds the data directory's lock just the same.
        store.rest_if_free(store.rests().1).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(live(&store), 1);
    }
    stop.store(true, Ordering::SeqCst);
    let tries = opener.join().unwrap().unwrap();
    assert!(tries > 0, "the other open never ran");
    assert_eq!(live(&store), 1);
}

/// An idle agent's rest: sled closed, every record still there for the next reader, which
/// opens it again; a write ends a rest too; a rest never follows a read the caller did not
/// see; a held iterator makes it give way; everything is on disk after a real close.
#[test]
fn a_resting_database_opens_again_for_the_next_read_or_write_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ops: Vec<LocalOp> = (0..30).map(op).collect();
    let first = ops[0].id;
    store.write_local(&ops).unwrap();
    assert!(!store.resting());
    let (_, seen) = store.rests();
    assert!(matches!(store.rest_if_free(seen).unwrap(), Reopen::Done(_)));
    assert!(store.resting());
    assert_eq!(store.rests(), (1, 0));
    assert_eq!(store.written_since_open(), 0);
    // A read opens it again and finds the record as written.
    let got = store.get("person", &first).unwrap().expect("record kept");
    assert_eq!(got.state.value("n"), Some(&json!(0)));
    assert!(!store.resting());
    assert_eq!(store.rests(), (1, 1));
    // A rest asked for by someone who had not seen that read gives way.
    assert_eq!(store.rest_if_free(seen).unwrap(), Reopen::Busy);
    assert!(!store.resting());
    // A write ends a rest as well, and is read back.
    assert!(matches!(
        store.rest_if_free(store.rests().1).unwrap(),
        Reopen::Done(_)
    ));
    let late = op(31);
    let late_id = late.id;
    store.write_one(late).unwrap();
    assert_eq!(store.rests(), (2, 2));
    assert!(store.get("person", &late_id).unwrap().is_some());
    // An iterator in hand keeps it open (the rest gives way after its bounded wait).
    let mut held = store.scan_table("person");
    held.next().unwrap().unwrap();
    assert_eq!(store.rest_if_free(store.rests().1).unwrap(), Reopen::Busy);
    assert_eq!(held.count(), 30);
    // A reopen of a resting database just opens it.
    assert!(matches!(
        store.rest_if_free(store.rests().1).unwrap(),
        Reopen::Done(_)
    ));
    assert!(matches!(store.reopen().unwrap(), Reopen::Done(_)));
    assert!(!store.resting());
    assert_eq!(live(&store), 31);
    assert!(store.check_fingerprints().unwrap().is_empty());
    // Left resting, then closed for real: all of it is on disk.
    assert!(matches!(
        store.rest_if_free(store.rests().1).unwrap(),
        Reopen::Done(_)
    ));
    let seq = store.seq();
    drop(store);
    let again = open(dir.path());
    assert_eq!(again.seq(), seq);
    assert_eq!(live(&again), 31);
}
