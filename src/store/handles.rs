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
    /// A reopen (or the open that ends a rest) is under way: readers wait.
    Reopening,
    /// Closed while the agent is idle ([`Sled::rest`]): the next reader opens it again.
    Resting,
}

/// Opens the store's database and tree (the store's own `open_sled`).
pub(crate) type Opener = Box<dyn Fn() -> Result<(sled::Db, sled::Tree), StoreError> + Send + Sync>;

/// The swappable handles of one store.
pub(crate) struct Sled {
    slot: Mutex<Slot>,
    swapped: Condvar,
    /// The directory whose lock sled must let go of before it is opened again.
    db_dir: std::path::PathBuf,
    open: Opener,
    /// Rests ended by a reader since the store was opened.
    wakes: AtomicU64,
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
    /// Handles over the open `db` and `tree`; `open` opens them again (after a reopen's close
    /// or a rest) once sled has let go of `db_dir`'s lock.
    pub(crate) fn new(
        db: sled::Db,
        tree: sled::Tree,
        db_dir: std::path::PathBuf,
        open: Opener,
    ) -> Self {
        Sled {
            slot: Mutex::new(Slot::Open(Arc::new(Handles {
                db,
                tree,
                read: AtomicU64::new(0),
            }))),
            swapped: Condvar::new(),
            db_dir,
            open,
            wakes: AtomicU64::new(0),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // The slot is replaced whole at every step, so a panic cannot leave half of it.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reference to the open handles, waiting while a reopen is under way. A resting
    /// database is opened again here, by the first reader to come (the others wait for it);
    /// if it cannot be, the process stops with a message, as after a reopen.
    pub(crate) fn get(&self) -> TreeRef {
        let mut s = self.slot();
        loop {
            match &*s {
                Slot::Open(h) => return TreeRef(h.clone()),
                Slot::Reopening => {
                    s = self.swapped.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                Slot::Resting => {
                    *s = Slot::Reopening;
                    drop(s);
                    let start = Instant::now();
                    let h = self.open_again();
                    // Counted before readers see it open, so no rest follows unseen.
                    self.wakes.fetch_add(1, Ordering::SeqCst);
                    self.publish(h.clone());
                    tracing::info!(
                        ms = start.elapsed().as_millis() as u64,
                        "opened the database again after resting"
                    );
                    return TreeRef(h);
                }
            }
        }
    }

    /// Entries read through iterators since sled was last opened (0 while a reopen is under
    /// way or the database rests: never waits, so a status tick on an async thread does not
    /// block, and never opens a resting database).
    pub(crate) fn reads(&self) -> u64 {
        match &*self.slot() {
            Slot::Open(h) => h.read.load(Ordering::Relaxed),
            Slot::Reopening | Slot::Resting => 0,
        }
    }

    /// Whether the database rests now ([`Sled::rest`]).
    pub(crate) fn resting(&self) -> bool {
        matches!(&*self.slot(), Slot::Resting)
    }

    /// Rests that a reader ended (by opening the database again) since the store was opened.
    pub(crate) fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::SeqCst)
    }

    /// The handles, taken out of the slot for a close or an open: the slot says `Reopening`
    /// (readers wait) until the caller publishes or rests again. `None` if the database
    /// rested. Waits while another open is under way (a reader ending a rest takes no writer
    /// lock, so it may overlap a caller that holds it).
    fn take(&self) -> Option<Arc<Handles>> {
        let mut s = self.slot();
        loop {
            match std::mem::replace(&mut *s, Slot::Reopening) {
                Slot::Open(h) => return Some(h),
                Slot::Resting => return None,
                Slot::Reopening => {
                    s = self.swapped.wait(s).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// Puts the slot back to resting (after [`Sled::take`] found it so, or after a close).
    fn back_to_rest(&self) {
        *self.slot() = Slot::Resting;
        // Readers that waited open the database themselves.
        self.swapped.notify_all();
    }

    /// Waits up to `wait` for every other reference to `old` to go, then flushes and drops it
    /// (closing sled). `false`, with `old` published again, if a reference stayed; an error,
    /// with `old` published again, if the flush failed.
    fn close(&self, old: Arc<Handles>, start: Instant, wait: Duration) -> Result<bool, StoreError> {
        // Nothing can take a new reference now; wait for the existing ones to go.
        while Arc::strong_count(&old) > 1 {
            if start.elapsed() > wait {
                self.publish(old);
                return Ok(false);
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
        Ok(true)
    }

    /// Opens the database again once sled has let go of its lock. If it cannot be opened, the
    /// process stops with a message (see the module doc: every write was flushed; readers must
    /// not be left waiting forever nor handed a closed tree).
    fn open_again(&self) -> Arc<Handles> {
        let mut last = None;
        for attempt in 0..OPEN_ATTEMPTS {
            if !super::release::wait_released(&self.db_dir) {
                tracing::debug!(attempt, "sled still holds its lock; waiting again");
            }
            match (self.open)() {
                Ok((db, tree)) => {
                    return Arc::new(Handles {
                        db,
                        tree,
                        read: AtomicU64::new(0),
                    })
                }
                Err(e) => last = Some(e),
            }
        }
        let why = last.map_or_else(String::new, |e| e.to_string());
        let db_dir = self.db_dir.display();
        tracing::error!(db = %db_dir, error = %why,
            "could not open the database again after closing it to free memory");
        eprintln!(
            "fieldsync: could not open the database in {db_dir} again after closing it to free \
             memory ({why}); every write was saved: start fieldsync again"
        );
        std::process::exit(1);
    }

    fn publish(&self, h: Arc<Handles>) {
        *self.slot() = Slot::Open(h);
        self.swapped.notify_all();
    }

    /// Closes sled and opens it again. The caller holds the store's writer lock (nothing
    /// writes). Waits for readers' references to go at most `wait` ([`WAIT_FOR_READERS`]
    /// unless the caller holds the lock for a long read and must not keep writers waiting that
    /// long). A resting database is simply opened. Fails only when the flush before closing
    /// fails (nothing closed then). If the database cannot be opened again, the process stops
    /// with a message ([`Sled::get`]).
    pub(crate) fn reopen(&self, wait: Duration) -> Result<Reopen, StoreError> {
        let start = Instant::now();
        // A resting database is simply opened (`take` holds readers off meanwhile).
        if let Some(old) = self.take() {
            if !self.close(old, start, wait)? {
                return Ok(Reopen::Busy);
            }
        }
        let h = self.open_again();
        self.publish(h);
        Ok(Reopen::Done(start.elapsed()))
    }

    /// Closes sled and leaves it closed until the next reader ([`Sled::get`] opens it again):
    /// an idle agent holds none of sled's memory. The caller holds the store's writer lock.
    /// Waits for readers' references to go at most `wait`, else [`Reopen::Busy`] and nothing
    /// changes; `Busy` too if a reader ended a rest since the caller saw `wakes_seen`
    /// ([`Sled::wakes`]); `Done` (zero) if it rests already. Fails only when the flush before closing
    /// fails (nothing closed then).
    pub(crate) fn rest(&self, wait: Duration, wakes_seen: u64) -> Result<Reopen, StoreError> {
        let start = Instant::now();
        let Some(old) = self.take() else {
            self.back_to_rest();
            return Ok(Reopen::Done(Duration::ZERO));
        };
        if self.wakes() != wakes_seen {
            // Somebody ended a rest since the caller looked: the database is in use again.
            self.publish(old);
            return Ok(Reopen::Busy);
        }
        if !self.close(old, start, wait)? {
            return Ok(Reopen::Busy);
        }
        self.back_to_rest();
        Ok(Reopen::Done(start.elapsed()))
    }
}
