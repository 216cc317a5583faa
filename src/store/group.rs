//! Group commit: concurrent writers share one fsync.
//!
//! A durable write applies its batch under the writer lock (so an If-Match check and the write
//! it guards stay one step), releases the lock, and then waits until a flush that started
//! after its batch was applied has finished. One waiter at a time is the *leader*: it notes how
//! many batches have been applied so far, flushes, and marks all of them durable, so writers
//! that applied their batches while an earlier flush ran are made durable by one flush
//! together. sled's log is written in order and recovered as a prefix, so a flush makes every
//! batch applied before it durable; no writer is acknowledged before that.
//!
//! What readers see is published by the leader after its flush (the head it snapshotted under
//! the writer lock before flushing), so the feed head, long polls and change notifications
//! move only to durable states. Heads carry the applied-batch count they reflect (`gen`) and
//! are installed only forward, because a leader's head can be overtaken by one published
//! under the lock in the meantime (a batch that is not flushed on its own: peer bookkeeping, an
//! import's roll-forward chunks).

use super::{Head, Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

/// The group-commit state of one store.
#[derive(Default)]
pub(crate) struct GroupCommit {
    /// Batches applied to the tree so far; bumped under the writer lock.
    applied: AtomicU64,
    state: Mutex<Flushes>,
    done: Condvar,
    /// Serializes telling subscribers the head (`install_head`).
    announce: Mutex<()>,
    /// Woken on every applied batch ([`Store::wait_applied`]), before its flush.
    applied_lock: Mutex<()>,
    applied_cv: Condvar,
    /// Makes the next leader's flush panic (tests of what a panicking flush leaves behind).
    #[cfg(test)]
    pub(crate) panic_next_flush: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Flushes {
    /// Every batch up to this count is durable.
    durable: u64,
    /// A leader is flushing.
    flushing: bool,
    /// Flushes done (for tests and the debug log).
    count: u64,
}

impl GroupCommit {
    /// Counts one applied batch; called with the writer lock held. Its ticket for
    /// [`Store::wait_durable`].
    pub(crate) fn applied_one(&self) -> u64 {
        let n = self.applied.fetch_add(1, Ordering::SeqCst) + 1;
        // Under the lock, so a waiter that saw the old count is asleep when told (no lost wake).
        let _g = self.applied_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.applied_cv.notify_all();
        n
    }

    /// Batches applied so far.
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Flushes> {
        // The state is two counters and a flag, consistent at every step.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Held by the leader while it flushes and forgotten when the flush returns: dropped only by
/// an unwinding panic, when it clears `flushing` and wakes the waiters (one of them leads).
struct Leading<'a>(&'a Store);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.group.lock().flushing = false;
        self.0.group.done.notify_all();
    }
}

impl Store {
    /// Returns once the batch with this ticket (from [`GroupCommit::applied_one`]) is durable
    /// and published, leading a flush if none is running. Must be called without the writer
    /// lock held (the leader takes it briefly to snapshot the head).
    pub(crate) fn wait_durable(&self, ticket: u64) -> Result<(), StoreError> {
        let mut g = self.group.lock();
        loop {
            if g.durable >= ticket {
                return Ok(());
            }
            if g.flushing {
                g = self.group.done.wait(g).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            g.flushing = true;
            drop(g);
            // Should the flush panic (a caller's thread may survive it: tokio catches a
            // blocking task's panic), the flag must not stay set, or every later durable write
            // on this store would wait for a flush that never ends.
            let unwinding = Leading(self);
            let led = self.lead_flush();
            std::mem::forget(unwinding);
            g = self.group.lock();
            g.flushing = false;
            match led {
                Ok(upto) => {
                    g.durable = g.durable.max(upto);
                    g.count += 1;
                    self.group.done.notify_all();
                }
                Err(e) => {
                    // Let a waiter try again (its own flush may succeed); this writer fails.
                    self.group.done.notify_all();
                    return Err(e);
                }
            }
        }
    }

    /// One flush for every batch applied so far; publishes the head as of those batches.
    /// Returns how many batches it made durable.
    fn lead_flush(&self) -> Result<u64, StoreError> {
        let (upto, head) = {
            let w = self.lock();
            (self.group.applied(), self.head_of(&w)?)
        };
        let t = std::time::Instant::now();
        #[cfg(test)]
        if self.group.panic_next_flush.swap(false, Ordering::SeqCst) {
            panic!("a flush panics (injected by a test)");
        }
        self.tree().flush()?;
        tracing::trace!(
            upto,
            flush_us = t.elapsed().as_micros() as u64,
            "group flush"
        );
        self.install_head(head);
        Ok(upto)
    }

    /// Batches applied to the tree so far (durable or not): a generation for
    /// [`Store::wait_applied`].
    pub(crate) fn applied_batches(&self) -> u64 {
        self.group.applied()
    }

    /// Waits until a batch beyond generation `seen` (from [`Store::applied_batches`]) is
    /// applied, or `timeout` passes; true if one was. Applied means visible to readers of the
    /// tree, not yet durable: a pushed page waiting for its turn behind the page before it
    /// (`sync::responder`) starts merging while that one's flush runs (group commit).
    pub(crate) fn wait_applied(&self, seen: u64, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self
            .group
            .applied_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while self.group.applied() <= seen {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .group
                .applied_cv
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Flushes led so far (each made one or more writers' batches durable).
    #[doc(hidden)]
    pub fn group_flushes(&self) -> u64 {
        self.group.lock().count
    }

    /// Installs `head` for readers unless a newer one is already there, and tells subscribers
    /// the feed head moved.
    pub(crate) fn install_head(&self, head: Head) {
        {
            let mut cur = self.head.write().unwrap_or_else(|e| e.into_inner());
            if cur.gen > head.gen {
                return;
            }
            *cur = std::sync::Arc::new(head);
        }
        // Subscribers are told the head that is installed *now*, read and sent as one step:
        // a leader's install (made without the writer lock) and one made under it can run at
        // once, and sending each its own head could tell them in the wrong order and leave
        // subscribers on the older one. Not under the head's lock: a subscriber may read the
        // head while it holds the channel's value.
        let _one = self
            .group
            .announce
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let seq = self.head().seq;
        self.changed
            .send_if_modified(|s| std::mem::replace(s, seq) != seq);
    }
}
