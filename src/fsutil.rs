//! Small filesystem helpers shared by the modules that write files beside the database.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically and readable only by its owner (mode 0600): into
/// `PATH.tmp` (created new, so a stale one is removed first), fsynced, then renamed over `path`.
/// A crash leaves the old file or the new one, never a half-written one; token and credential
/// files hold secrets, so they are never world-readable even for a moment.
///
/// Errors: any I/O error of the create, write, sync or rename.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp: PathBuf = path.as_os_str().to_owned().into();
    tmp.as_mut_os_string().push(".tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
