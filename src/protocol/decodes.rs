//! A process-wide cap on page decodes running at once.
//!
//! Decoding a `msgpack+zstd` page decompresses up to `MAX_PAGE_BYTES` (64 MiB) before the
//! allocation-free pre-scan can refuse it, so each decode in flight may hold that much memory.
//! Every connection may push, so without a cap eight hostile pages in parallel cost 8 × 64 MiB;
//! with it, at most [`MAX_CONCURRENT_DECODES`] buffers exist and further decodes wait (on their
//! blocking thread) for a slot. Decoding is CPU-bound, so more than one per core gains nothing.

use std::sync::{Condvar, Mutex};

/// Most page decodes in flight in this process.
pub const MAX_CONCURRENT_DECODES: usize = 2;

static IN_FLIGHT: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

/// A decode slot, given back when dropped.
pub(crate) struct DecodeSlot(());

/// Waits for a decode slot. Call only on a thread that may block.
pub(crate) fn acquire() -> DecodeSlot {
    let mut n = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    while *n >= MAX_CONCURRENT_DECODES {
        n = FREED.wait(n).unwrap_or_else(|e| e.into_inner());
    }
    *n += 1;
    DecodeSlot(())
}

impl Drop for DecodeSlot {
    fn drop(&mut self) {
        let mut n = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        FREED.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn never_more_than_the_cap_at_once() {
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (now, peak) = (now.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _slot = acquire();
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    now.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Other tests in this process may hold slots too, so the peak here is at most the cap.
        let p = peak.load(Ordering::SeqCst);
        assert!((1..=MAX_CONCURRENT_DECODES).contains(&p), "peak {p}");
    }
}
