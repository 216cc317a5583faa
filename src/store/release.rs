//! Waiting for sled to let go of a closed database's directory lock.
//!
//! sled 0.34 takes an exclusive `flock` on `<db dir>/db` when it opens and drops it only when
//! the last handle to its log file closes. Dropping `sled::Db` flushes and joins the flusher
//! thread, but a log write already handed to sled's process-wide thread pool still holds the
//! file until that pool thread gets round to finishing it — under load (parallel tests, a busy
//! laptop) a noticeable moment later. Until then a second open in the same process fails with
//! "could not acquire lock", which the store reports as another program using the directory.
//! A store therefore waits, when it is dropped, until the lock is free (bounded), so that
//! whatever opens the directory next in this process (a test, a migration, a restore) finds
//! it closed, as it would after the process exited.

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest wait for sled's pool to close the file (it normally takes microseconds to a few
/// milliseconds; a stuck pool must not hang a shutdown).
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Dropped after the store's sled handles (it is the last field of `Store`): waits until
/// sled's lock on `<db dir>/db` is released.
pub(crate) struct SledRelease(pub(crate) PathBuf);

impl Drop for SledRelease {
    fn drop(&mut self) {
        wait_released(&self.0);
    }
}

/// Waits (at most [`MAX_WAIT`]) until nothing holds sled's lock on the database in `db_dir`.
/// Returns whether it is free; a missing database counts as free.
pub(crate) fn wait_released(db_dir: &Path) -> bool {
    let path = db_dir.join("db");
    let start = Instant::now();
    loop {
        let Ok(file) = std::fs::File::open(&path) else {
            return true;
        };
        // SAFETY: flock on a file descriptor this function owns; no memory is involved. The
        // lock, if taken, goes with the descriptor when `file` is dropped.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        drop(file);
        if taken {
            return true;
        }
        if start.elapsed() >= MAX_WAIT {
            tracing::debug!(db = %path.display(), "sled still holds its lock after the store closed");
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
