//! Facts fixed at build time (see build.rs): version, git commit, protocol, build date.

use std::sync::LazyLock;

/// The short git commit the binary was built from, or "unknown" outside a git checkout.
pub const GIT_COMMIT: &str = env!("FIELDSYNC_GIT_COMMIT");

/// Build date as Unix seconds (the commit date, or SOURCE_DATE_EPOCH): a lower bound for a sane
/// system clock.
pub const BUILD_EPOCH: &str = env!("FIELDSYNC_BUILD_EPOCH");

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

static VERSION_TEXT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{VERSION} (commit {GIT_COMMIT}, protocol {})",
        crate::protocol::PROTOCOL_VERSION
    )
});

/// What `fieldsync --version` prints after the program name.
pub fn version_text() -> &'static str {
    VERSION_TEXT.as_str()
}

/// The build date as seconds since the Unix epoch (0 if build.rs could not tell).
pub fn build_epoch() -> i64 {
    BUILD_EPOCH.parse().unwrap_or(0)
}
