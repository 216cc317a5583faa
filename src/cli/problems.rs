//! Disk and permission failures in words a person can act on: one line naming the path, what
//! happened and the next step, instead of the operating system's error (or its debug format).
//!
//! A failed write is one `sled::Batch` that was not acknowledged, so "nothing was written" holds
//! for every command that fails this way.

use super::CliError;
use crate::app::AppError;
use crate::formats::FormatError;
use crate::store::StoreError;
use std::io::ErrorKind;
use std::path::Path;

/// The OS error under a store error, and the path it names if it names one.
fn io_of(e: &StoreError) -> Option<(&std::io::Error, Option<&Path>)> {
    match e {
        StoreError::Io { path, source } => Some((source, Some(path))),
        StoreError::Sled(sled::Error::Io(io)) => Some((io, None)),
        StoreError::Op { source, .. } => io_of(source),
        _ => None,
    }
}

/// The person's message for an OS error while working on the data directory `dir`, when it is
/// one of those with a fix of its own (disk full, permission denied).
pub fn io_message(kind: ErrorKind, path: &Path) -> Option<String> {
    let p = path.display();
    match kind {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Some(format!(
            "disk full while writing {p}; nothing was written; free space and retry"
        )),
        ErrorKind::PermissionDenied => Some(format!(
            "permission denied on {p}: the data directory must belong to the user running \
             fieldsync and be writable (as its owner: `chown -R $(id -un) {p} && chmod 700 {p}`, \
             or run fieldsync as the user who owns it); nothing was written"
        )),
        _ => None,
    }
}

/// `e` rewritten for a person when it is a disk-full or permission failure on `dir`.
pub fn for_person(e: CliError, dir: &Path) -> CliError {
    let store = match &e {
        CliError::Store(s) | CliError::Format(FormatError::Store(s)) => Some(s),
        CliError::App(AppError::Store(s)) => Some(s),
        _ => None,
    };
    let msg = store
        .and_then(io_of)
        .and_then(|(io, path)| io_message(io.kind(), path.unwrap_or(dir)));
    match msg {
        Some(m) => CliError::Io(m),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_and_permission_denied_name_the_path_and_the_fix() {
        let dir = Path::new("/media/stick/fieldsync-data");
        let full = StoreError::Sled(sled::Error::Io(std::io::Error::from_raw_os_error(28)));
        assert_eq!(
            for_person(CliError::Store(full), dir).to_string(),
            "disk full while writing /media/stick/fieldsync-data; nothing was written; free \
             space and retry"
        );
        let denied = StoreError::Io {
            path: dir.join("db"),
            source: std::io::Error::from_raw_os_error(13),
        };
        let m = for_person(CliError::App(AppError::Store(denied)), dir).to_string();
        assert!(
            m.starts_with("permission denied on /media/stick/fieldsync-data/db:")
                && m.contains("chown -R")
                && m.contains("chmod 700")
                && !m.contains("backup"),
            "{m}"
        );
        // Anything else is left as it was.
        let other = CliError::Io("x".into());
        assert_eq!(for_person(other, dir).to_string(), "x");
    }
}
