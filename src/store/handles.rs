//! The store's sled handles, and closing and reopening sled under a running store.
//!
//! Why: sled 0.34 keeps a structure for every page it has paged in or out for as long as the
//! database stays open (spacejam/sled#1093), so an agent that received 100,000 records sits at
//! ~130 MB long after the session, while a fresh open of the same database takes 40–49 MB
//! (bench/RESULTS.md, sessions 4 and 5). Nothing but closing sled gives that memory back.
//!
//! How: every use of the tree takes a [`TreeRef`] (a counted reference to the open handles)
//! for as long as it needs them; an iterator carries its own ([`Iter`]), so a pull serving
//! pages keeps the handles it iterates. [`Sled::reopen`] (called with the writer lock held, so
//! nothing writes) marks the handles closed so that new readers wait, waits until the last
//! reference is gone, flushes, drops them, waits for sled's directory lock to go
//! (`release.rs`), opens the database again and publishes the new handles. No reader ever
//! holds a closed tree or sees a half state: the old handles stay fully open until nobody
//! references them, and the content is the same before and after (nothing writes meanwhile).
//! A reader that holds a reference and waits for something the reopen holds (the writer lock)
//! would wait forever, so the reopen waits for references only a bounded time and, if they
//! do not go, republishes the old handles and reports [`Reopen::Busy`] (try again later).
//! A crash during the reopen is a crash like any other: everything was flushed, and sled
//! recovers its log at the next open.

use super::StoreError;
use std::ops::{Deref, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One open sled database and the store's tree in it.
pub(crate) struct Handles {
    pub(crate) db: sled::Db,
    pub(crate) tree: sled::Tree,
    /// Entries read through iterators since this open: reading pages sled in as writing does
    /// (an automatic snapshot, a peer's initial pull), so it counts toward a reopen.
    read: AtomicU64,
}

/// A counted reference to the open handles: while one exists, a reopen waits for it. Derefs
/// to the tree; its own `scan_prefix`, `range` and `iter` return iterators that carry a
/// reference of their own (sled's iterators would otherwise outlive the count).
#[derive(Clone)]
pub(crate) struct TreeRef(Arc<Handles>);

impl Deref for TreeRef {
    type Target = sled::Tree;
    fn deref(&self) -> &sled::Tree {
        &self.0.tree
    }
}

impl TreeRef {
    /// Like `sled::Tree::scan_prefix`, counted.
    pub(crate) fn scan_prefix<P: AsRef<[u8]>>(&self, prefix: P) -> Iter {
        Iter {
            inner: self.0.tree.scan_prefix(prefix),
            _open: self.0.clone(),
        }
    }

    /// Like `sled::Tree::range`, counted.
    pub(crate) fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        Iter {
            inner: self.0.tree.range(range),
            _open: self.0.clone(),
        }
    }

    /// Like `sled::Tree::iter`, counted.
    pub(crate) fn iter(&self) -> Iter {
        Iter {
            inner: self.0.tree.iter(),
            _open: self.0.clone(),
        }
    }
}

/// A sled iterator with the reference to the handles it reads.
pub(crate) struct Iter {
    inner: sled::Iter,
    _open: Arc<Handles>,
}

impl Iterator for Iter {
    type Item = sled::Result<(sled::IVec, sled::IVec)>;
    fn next(&mut self) -> Option<Self::Item> {
        let kv = self.inner.next()?;
        self._open.read.fetch_add(1, Ordering::Relaxed);
        Some(kv)
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        let kv = self.inner.next_back()?;
        self._open.read.fetch_add(1, Ordering::Relaxed);
        Some(kv)
    }
}

impl Iter {
    /// The keys only.
    pub(crate) fn keys(self) -> impl DoubleEndedIterator<Item = sled::Result<sled::IVec>> {
        self.map(|kv| kv.map(|(k, _)| k))
    }

    /// The values only.
    #[cfg(test)]
    pub(crate) fn values(self) -> impl DoubleEndedIterator<Item = sled::Result<sled::IVec>> {
        self.map(|kv| kv.map(|(_, v)| v))
    }
}

enum Slot {
    Open(Arc<Handles>),
    /// A reopen is under way: readers wait.
    Reopening,
}

/// The swappable handles of one store.
pub(crate) struct Sled {
    slot: Mutex<Slot>,
    swapped: Condvar,
}

/// What [`Sled::reopen`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reopen {
    /// Closed and opened again; readers arriving meanwhile waited this long at most.
    Done(Duration),
    /// Some reference did not go within the wait: nothing was closed, try later.
    Busy,
}

/// Longest wait for the last reference to go before giving up (readers are quick; an
/// iterator outliving this is a long scan, and the reopen tries again later).
pub(crate) const WAIT_FOR_READERS: Duration = Duration::from_secs(2);

/// Attempts to open the database again after closing it; each first waits up to 5 s for
/// sled's lock (`release.rs`), so a slow pool thread under load is waited for, not an error.
const OPEN_ATTEMPTS: u32 = 6;

impl Sled {
    pub(crate) fn new(db: sled::Db, tree: sled::Tree) -> Self {
        Sled {
            slot: Mutex::new(Slot::Open(Arc::new(Handles {
                db,
                tree,
                read: AtomicU64::new(0),
            }))),
            swapped: Condvar::new(),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // The slot is replaced whole at every step, so a panic cannot leave half of it.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reference to the open handles, waiting while a reopen is under way.
    pub(crate) fn get(&self) -> TreeRef {
        let mut s = self.slot();
        loop {
            match &*s {
                Slot::Open(h) => return TreeRef(h.clone()),
                Slot::Reopening => {
                    s = self.swapped.wait(s).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// Entries read through iterators since sled was last opened (0 while a reopen is under
    /// way: never waits, so a status tick on an async thread does not block).
    pub(crate) fn reads(&self) -> u64 {
        match &*self.slot() {
            Slot::Open(h) => h.read.load(Ordering::Relaxed),
            Slot::Reopening => 0,
        }
    }

    fn publish(&self, h: Arc<Handles>) {
        *self.slot() = Slot::Open(h);
        self.swapped.notify_all();
    }

    /// Closes sled and opens it again with `open`; `db_dir` is the directory whose lock sled
    /// must let go of first. The caller holds the store's writer lock (nothing writes). Waits
    /// for readers' references to go at most `wait` ([`WAIT_FOR_READERS`] unless the caller
    /// holds the lock for a long read and must not keep writers waiting that long). Fails
    /// only when the flush before closing fails (nothing closed then). If the database cannot
    /// be opened again, the process stops with a message (see the module doc: every write was
    /// flushed; readers must not be left waiting forever nor handed a closed tree).
    pub(crate) fn reopen(
        &self,
        db_dir: &std::path::Path,
        wait: Duration,
        open: impl Fn() -> Result<(sled::Db, sled::Tree), StoreError>,
    ) -> Result<Reopen, StoreError> {
        let start = Instant::now();
        let old = match std::mem::replace(&mut *self.slot(), Slot::Reopening) {
            Slot::Open(h) => h,
            // The writer lock makes reopens one at a time.
            Slot::Reopening => unreachable!("two reopens at once"),
        };
        // Nothing can take a new reference now; wait for the existing ones to go.
        while Arc::strong_count(&old) > 1 {
            if start.elapsed() > wait {
                self.publish(old);
                return Ok(Reopen::Busy);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Err(e) = old.db.flush() {
            self.publish(old);
            return Err(e.into());
        }
        // The only reference: dropping it closes sled (its Drop flushes and joins its threads).
        drop(old);
        super::write::trim_heap();
        let mut last = None;
        for attempt in 0..OPEN_ATTEMPTS {
            if !super::release::wait_released(db_dir) {
                tracing::debug!(attempt, "sled still holds its lock; waiting again");
            }
            match open() {
                Ok((db, tree)) => {
                    self.publish(Arc::new(Handles {
                        db,
                        tree,
                        read: AtomicU64::new(0),
                    }));
                    return Ok(Reopen::Done(start.elapsed()));
                }
                Err(e) => last = Some(e),
            }
        }
        let why = last.map_or_else(String::new, |e| e.to_string());
        tracing::error!(db = %db_dir.display(), error = %why,
            "could not reopen the database after closing it to free memory");
        eprintln!(
            "fieldsync: could not reopen the database in {} after closing it to free memory \
             ({why}); every write was saved: start fieldsync again",
            db_dir.display()
        );
        std::process::exit(1);
    }
}
